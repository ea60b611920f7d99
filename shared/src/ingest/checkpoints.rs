//! The checkpoints one invocation of a continuing job writes ([`crate::checkpoint`]): when to
//! stop, the checkpoint to write next (built from the one the invocation resumed), and the
//! clean-up of the ones it saved.

use tokio::time::Instant;

use super::{Continuation, Prepared};
use crate::checkpoint::{self, Checkpoint, Continue, Position};
use crate::error::Result;
use crate::sink::Suspended;

/// The checkpoints one invocation writes.
pub(super) struct Checkpoints<'a> {
    p: &'a Prepared<'a>,
    /// When the invocation's time is up.
    pub clock: checkpoint::StopClock,
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
        p: &'a Prepared<'a>,
        continuation: &Continuation,
        key: &str,
        first: Position,
    ) -> Checkpoints<'a> {
        let counters = &p.ctx.invocation.progress;
        let schedule = p.options.schedule;
        let size = schedule.part_size(1);
        let pending = size.saturating_mul(schedule.max_in_flight(size) as u64 + 1);
        let started = Instant::now() - counters.snapshot().elapsed;
        let tuning = &p.spec.tuning;
        let clock = tuning.stop_clock(started, p.options.deadline, pending, counters.clone());
        let (next, elapsed_before_ms) = match &continuation.from {
            Some(l) => (l.checkpoint.resumed(), l.checkpoint.elapsed_ms),
            None => (
                Checkpoint::first(
                    continuation.function,
                    continuation.job.clone(),
                    &p.ctx.invocation,
                    key.to_owned(),
                    first,
                ),
                0,
            ),
        };
        Checkpoints {
            p,
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
        let next = &mut self.next;
        next.position = position;
        next.bytes_in = bytes_in;
        let elapsed = self.p.ctx.invocation.progress.snapshot().elapsed;
        next.elapsed_ms = self
            .elapsed_before_ms
            .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        let (s3, bucket) = (&self.p.ctx.s3, &self.p.spec.destination.bucket);
        match checkpoint::save(s3, bucket, next, suspended).await {
            Ok(saved) => {
                self.saved = true;
                Ok(saved)
            }
            Err(e) => {
                checkpoint::abort_upload(s3, bucket, next).await;
                self.delete_saved().await;
                Err(e)
            }
        }
    }

    /// Gives the job up after a checkpoint was saved: aborts the upload it names and deletes
    /// it (nothing else would end that upload before the bucket's lifecycle rule).
    pub async fn abandon(&self) {
        if self.saved {
            let (s3, bucket) = (&self.p.ctx.s3, &self.p.spec.destination.bucket);
            checkpoint::abort_upload(s3, bucket, &self.next).await;
        }
        self.delete_saved().await;
    }

    /// Deletes the checkpoint this invocation saved, if any.
    pub async fn delete_saved(&self) {
        if self.saved {
            let bucket = &self.p.spec.destination.bucket;
            checkpoint::delete(&self.p.ctx.s3, bucket, &self.next).await;
        }
    }
}
