//! The checkpoints one invocation of a continuing job writes: when to stop, the checkpoint
//! to write next (built from the one the invocation resumed), and the clean-up of the ones
//! it saved.

use tokio::time::Instant;

use super::{Checkpoint, Continue, Loaded, Position, StopClock};
use crate::error::Result;
use crate::job::{Invocation, Tuning};
use crate::sink::{Suspended, UploadOptions};

/// A job that may go on in another invocation: how it was given, for its checkpoint, and the
/// checkpoint this invocation resumes from.
#[derive(Debug, Clone)]
pub struct Continuation {
    /// The function that runs it: a checkpoint continues only there.
    pub function: &'static str,
    /// The job as given, kept in the checkpoint.
    pub job: serde_json::Value,
    /// The checkpoint this invocation resumes from; `None` in the first.
    pub from: Option<Loaded>,
}

/// What the checkpoints of one job's invocation are written with.
#[derive(Debug, Clone, Copy)]
pub struct JobScope<'a> {
    /// The S3 client.
    pub s3: &'a aws_sdk_s3::Client,
    /// The destination bucket (the checkpoints go there too).
    pub bucket: &'a str,
    /// The upload options of the object (part sizes, in flight, deadline).
    pub options: &'a UploadOptions,
    /// The job's tuning (`max_invocation_secs`, `checkpoint_margin_ms`,
    /// `checkpoint_every_parts`).
    pub tuning: &'a Tuning,
    /// The invocation.
    pub invocation: &'a Invocation,
}

/// The checkpoints one invocation writes.
pub struct Checkpoints<'a> {
    scope: JobScope<'a>,
    /// When the invocation's time is up.
    pub clock: StopClock,
    /// Parts between two checkpoints.
    pub every_parts: u64,
    /// The checkpoint to write next: this invocation's, built from the one it resumed.
    next: Checkpoint,
    /// Elapsed time of the invocations before this one.
    elapsed_before_ms: u64,
    /// Whether this invocation saved one (and so must delete it when the job ends).
    saved: bool,
}

impl<'a> Checkpoints<'a> {
    /// The checkpoints of job `continuation` writing `key`; `first` is the position of a
    /// first invocation's checkpoint (each save sets its own).
    pub fn new(
        scope: JobScope<'a>,
        continuation: &Continuation,
        key: &str,
        first: Position,
    ) -> Checkpoints<'a> {
        let counters = &scope.invocation.progress;
        let schedule = scope.options.schedule;
        let size = schedule.part_size(1);
        let pending = size.saturating_mul(schedule.max_in_flight(size) as u64 + 1);
        let started = Instant::now() - counters.snapshot().elapsed;
        let tuning = scope.tuning;
        let clock = tuning.stop_clock(started, scope.options.deadline, pending, counters.clone());
        let (next, elapsed_before_ms) = match &continuation.from {
            Some(l) => (l.checkpoint.resumed(), l.checkpoint.elapsed_ms),
            None => (
                Checkpoint::first(
                    continuation.function,
                    continuation.job.clone(),
                    scope.invocation,
                    key.to_owned(),
                    first,
                ),
                0,
            ),
        };
        Checkpoints {
            scope,
            clock,
            every_parts: u64::from(tuning.checkpoint_every_parts()),
            next,
            elapsed_before_ms,
            saved: false,
        }
    }

    /// Saves the suspended upload, with the source to go on at `position` after `bytes_in`
    /// bytes read. When the save fails, the upload is aborted: nothing could continue it.
    pub async fn save(
        &mut self,
        position: Position,
        bytes_in: u64,
        suspended: Suspended,
    ) -> Result<Continue> {
        self.save_with_side(position, bytes_in, suspended, None)
            .await
    }

    /// [`save`](Self::save), with a second suspended upload: `side` is its key and state.
    pub async fn save_with_side(
        &mut self,
        position: Position,
        bytes_in: u64,
        suspended: Suspended,
        side: Option<(String, Suspended)>,
    ) -> Result<Continue> {
        let next = &mut self.next;
        next.position = position;
        next.bytes_in = bytes_in;
        let elapsed = self.scope.invocation.progress.snapshot().elapsed;
        next.elapsed_ms = self
            .elapsed_before_ms
            .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        let (s3, bucket) = (self.scope.s3, self.scope.bucket);
        match super::save(s3, bucket, next, suspended, side).await {
            Ok(saved) => {
                self.saved = true;
                Ok(saved)
            }
            Err(e) => {
                super::abort_upload(s3, bucket, next).await;
                self.delete_saved().await;
                Err(e)
            }
        }
    }

    /// Gives the job up after a checkpoint was saved: aborts the upload it names and deletes
    /// it (nothing else would end that upload before the bucket's lifecycle rule).
    pub async fn abandon(&self) {
        if self.saved {
            let (s3, bucket) = (self.scope.s3, self.scope.bucket);
            super::abort_upload(s3, bucket, &self.next).await;
        }
        self.delete_saved().await;
    }

    /// Deletes the checkpoint this invocation saved, if any.
    pub async fn delete_saved(&self) {
        if self.saved {
            super::delete(self.scope.s3, self.scope.bucket, &self.next).await;
        }
    }
}

/// After an invocation that resumed `from`: a job that continues keeps the checkpoint (the
/// invocation saved its own over it); one that finished deletes it; one that failed aborts
/// its upload (also when the failure came before the writer resumed it: a changed source,
/// say) and deletes it.
pub async fn settle<T>(
    s3: &aws_sdk_s3::Client,
    from: Option<&Loaded>,
    result: &Result<T>,
    continues: impl Fn(&T) -> bool,
) {
    let Some(loaded) = from else {
        return;
    };
    let bucket = &loaded.reference.checkpoint.bucket;
    match result {
        Ok(s) if continues(s) => {}
        Ok(_) => super::delete(s3, bucket, &loaded.checkpoint).await,
        Err(_) => {
            super::abort_upload(s3, bucket, &loaded.checkpoint).await;
            super::delete(s3, bucket, &loaded.checkpoint).await;
        }
    }
}
