//! The checkpoints one invocation of a continuing job writes: when to stop, the checkpoint
//! to write next (built from the one the invocation resumed), and the clean-up of the ones
//! it saved.

use tokio::time::Instant;

use super::{Checkpoint, Continue, Loaded, Position, StopClock};
use crate::error::{Error, ErrorKind, Result};
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
    /// Whether this invocation resumed a checkpoint (a retry of it resumes again).
    resumed: bool,
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
            resumed: continuation.from.is_some(),
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
        // What the stored document says, should this save fail and the job be kept for a
        // retry: a later roll-back spares exactly the objects it lists.
        let before = self.next.clone();
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
                // The save failed before or after its document: the one before stays whole.
                if self.keeps(&e) {
                    self.next = before;
                } else {
                    super::abort_upload(s3, bucket, &self.next).await;
                    self.delete_saved().await;
                }
                Err(e)
            }
        }
    }

    /// Whether a failure with `error` keeps the checkpoint for a retry ([`keeps_for_retry`]).
    fn keeps(&self, error: &Error) -> bool {
        self.resumed && keeps_for_retry(&self.next, error)
    }

    /// After a failure with `error`: aborts the upload the checkpoints name and deletes the
    /// ones this invocation saved (nothing else would end that upload before the bucket's
    /// lifecycle rule), unless the checkpoint is kept for a retry ([`keeps_for_retry`]).
    pub async fn give_up(&self, error: &Error) {
        if self.keeps(error) {
            return;
        }
        if self.saved {
            let (s3, bucket) = (self.scope.s3, self.scope.bucket);
            super::abort_upload(s3, bucket, &self.next).await;
        }
        self.delete_saved().await;
    }

    /// After a failure with `error`: deletes the objects in `written` the job completed (the
    /// earlier invocations' included), but when the checkpoint is kept for a retry
    /// ([`keeps_for_retry`]) those it lists, which the retry goes on from.
    pub async fn roll_back(&self, written: &crate::partition::Written, error: &Error) {
        let listed: std::collections::HashSet<&str> = match self.keeps(error) {
            true => self
                .next
                .position
                .partitions()
                .map(|p| p.objects.iter().map(|o| o.key.as_str()).collect())
                .unwrap_or_default(),
            false => Default::default(),
        };
        let (s3, bucket) = (self.scope.s3, self.scope.bucket);
        crate::partition::roll_back_sparing(s3, bucket, written, |key| listed.contains(key)).await;
    }

    /// At the end of a job that did not stop: deletes the checkpoint when it finished (so
    /// that nothing after, a manifest that cannot be written, say, is retried from it),
    /// [gives up](Self::give_up) when it failed.
    pub async fn end<T>(&self, result: &Result<T>) {
        match result {
            Ok(_) => self.delete_saved().await,
            Err(e) => self.give_up(e).await,
        }
    }

    /// Deletes the checkpoint this invocation saved or resumed, if any.
    pub async fn delete_saved(&self) {
        if self.saved || self.resumed {
            super::delete(self.scope.s3, self.scope.bucket, &self.next).await;
        }
    }
}

/// Whether a job whose invocation resumed `checkpoint` and failed with `error` keeps it, with
/// the upload it names, so that the same `continue` event sent again (the state machine's
/// `Retry` on `Retryable`) resumes from the last checkpoint saved: a transient failure
/// (`Retryable`: a lost connection, throttling, a 5xx). The writer left that upload open
/// ([`Suspended::held`](crate::sink::Suspended::held)); its parts past the checkpoint are
/// overwritten by number. A partitioned job deleted only the objects it completed after the
/// checkpoint ([`Checkpoints::roll_back`]). A job writing one object per page deletes every
/// page when it fails, so it is given up, as every other failure is.
pub fn keeps_for_retry(checkpoint: &Checkpoint, error: &Error) -> bool {
    error.kind() == ErrorKind::Retryable && !checkpoint.position.lists_pages()
}

/// After an invocation that resumed `from`: a job that continues keeps the checkpoint (the
/// invocation saved its own over it); one that finished deletes it; one that failed aborts
/// its upload (also when the failure came before the writer resumed it: a changed source,
/// say) and deletes it, unless the failure keeps it for a retry ([`keeps_for_retry`]).
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
        Err(e) if keeps_for_retry(&loaded.checkpoint, e) => tracing::warn!(
            checkpoint = %loaded.reference.checkpoint.key, error = %e,
            "a transient failure: the checkpoint and its upload are kept; the same continue event, sent again, resumes from the last checkpoint (an abort event gives the job up)"
        ),
        Err(_) => {
            super::abort_upload(s3, bucket, &loaded.checkpoint).await;
            super::delete(s3, bucket, &loaded.checkpoint).await;
        }
    }
}
