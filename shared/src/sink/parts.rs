//! The multipart engine under [`ObjectWriter`](super::ObjectWriter): bytes pushed in are cut
//! into parts of the scheduled size, at most `max_in_flight` parts upload at once, and the
//! object is completed only by [`Parts::finish`].
//!
//! A stream shorter than the first part never starts a multipart upload: `finish` sends it as
//! one `PutObject`. Once an upload exists, every way out but a successful `finish` aborts it:
//! an error (the caller calls [`Parts::abort`]), or dropping the value, which spawns the abort
//! on the [`pending_aborts`] tracker so that the job can wait for it before answering.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use super::target::{ObjectTarget, PartReceipt, PutOutcome};
use super::writer::Uploaded;
use crate::budget::{MAX_PARTS, PartSchedule};
use crate::checksum::{ChecksumAlgorithm, Crc};
use crate::error::{Error, Result};

/// Aborts spawned for uploads that were dropped unfinished (a producer that panicked, a
/// cancelled job), and the tasks of compressing writers.
static PENDING: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// The tracker that background aborts and encoder tasks run on.
pub(crate) fn pending_aborts() -> &'static TaskTracker {
    &PENDING
}

/// Waits until every abort spawned for a dropped upload has run (and every compressing
/// writer's task has ended). A function calls this before it answers a failed invocation, so
/// that Lambda does not freeze the process with an upload still open.
pub async fn settle_aborts() {
    PENDING.close();
    PENDING.wait().await;
    PENDING.reopen();
}

type PartResult = Result<PartReceipt>;

/// One object's parts: the part being filled, the parts in flight and the parts done.
pub(crate) struct Parts {
    target: Arc<dyn ObjectTarget>,
    schedule: PartSchedule,
    algorithm: ChecksumAlgorithm,
    if_none_match: bool,
    /// The part being filled; allocated only when there are bytes for it and a slot is free.
    buf: Option<BytesMut>,
    /// Size of the part being filled.
    size: u64,
    /// Number of the part being filled (1-based).
    part_number: u32,
    upload_id: Option<String>,
    in_flight: JoinSet<PartResult>,
    done: Vec<PartReceipt>,
    /// Bytes accepted so far (the object's size once finished).
    bytes: u64,
}

impl Parts {
    pub(crate) fn new(
        target: Arc<dyn ObjectTarget>,
        schedule: PartSchedule,
        algorithm: ChecksumAlgorithm,
        if_none_match: bool,
    ) -> Self {
        Parts {
            target,
            schedule,
            algorithm,
            if_none_match,
            buf: None,
            size: 0,
            part_number: 1,
            upload_id: None,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            bytes: 0,
        }
    }

    /// Bytes accepted so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// `(bucket, key)` of the object.
    pub(crate) fn describe(&self) -> (String, String) {
        self.target.describe()
    }

    /// Appends `data`, uploading every part that fills; waits while the parts in flight are
    /// at their limit.
    pub(crate) async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let size = usize::try_from(self.size_of_next()).unwrap_or(usize::MAX);
            let buf = self.part_buffer().await?;
            let room = size - buf.len();
            let n = room.min(data.len());
            buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.bytes += n as u64;
            self.send_if_full().await?;
        }
        Ok(())
    }

    /// Reads `reader` to its end straight into part buffers (no intermediate copy).
    pub(crate) async fn fill_from<R, F>(&mut self, reader: &mut R, read_error: &F) -> Result<()>
    where
        R: AsyncRead + Unpin,
        F: Fn(std::io::Error) -> Error,
    {
        loop {
            let size = usize::try_from(self.size_of_next()).unwrap_or(usize::MAX);
            let buf = self.part_buffer().await?;
            // `read_buf` reads at most the spare capacity, so the buffer never grows past the
            // part size; a full buffer is sent before the next read.
            debug_assert!(buf.len() < size);
            let n = reader.read_buf(buf).await.map_err(read_error)?;
            if n == 0 {
                return Ok(());
            }
            self.bytes += n as u64;
            self.send_if_full().await?;
        }
    }

    /// The size of the part being filled, or of the next one.
    fn size_of_next(&self) -> u64 {
        match self.buf {
            Some(_) => self.size,
            None => self.schedule.part_size(self.part_number),
        }
    }

    /// The buffer of the part being filled. A new one is allocated only when a slot is free:
    /// that is the writer's backpressure.
    async fn part_buffer(&mut self) -> Result<&mut BytesMut> {
        if self.buf.is_none() {
            if self.part_number > MAX_PARTS {
                let (bucket, key) = self.target.describe();
                return Err(Error::TooManyParts {
                    bucket,
                    key,
                    bytes: self.bytes,
                });
            }
            let size = self.schedule.part_size(self.part_number);
            while self.in_flight.len() >= self.schedule.max_in_flight(size) {
                match self.in_flight.join_next().await {
                    Some(finished) => self.done.push(joined(finished, &self.target)?),
                    None => break,
                }
            }
            self.size = size;
            self.buf = Some(BytesMut::with_capacity(
                usize::try_from(size).unwrap_or(usize::MAX),
            ));
        }
        Ok(self.buf.as_mut().expect("allocated above"))
    }

    async fn send_if_full(&mut self) -> Result<()> {
        if self
            .buf
            .as_ref()
            .is_some_and(|b| b.len() as u64 >= self.size)
        {
            self.send_part().await?;
        }
        Ok(())
    }

    /// Uploads the part being filled (starting the multipart upload on the first one).
    async fn send_part(&mut self) -> Result<()> {
        // An empty buffer (allocated for a read that found the end) is not a part.
        let Some(body) = self.buf.take().filter(|b| !b.is_empty()) else {
            return Ok(());
        };
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self.target.create_multipart(self.algorithm).await?;
                tracing::debug!(upload_id = %id, "multipart upload created");
                self.upload_id = Some(id.clone());
                id
            }
        };
        let target = self.target.clone();
        let algorithm = self.algorithm;
        let part_number = self.part_number as i32;
        let body = body.freeze();
        self.in_flight.spawn(async move {
            // Checksums are computed on the part's task so they run beside the writer.
            let checksum = algorithm.checksum(&body);
            target
                .upload_part(&upload_id, part_number, body, checksum)
                .await
        });
        self.part_number += 1;
        while let Some(finished) = self.in_flight.try_join_next() {
            self.done.push(joined(finished, &self.target)?);
        }
        tracing::debug!(part_number, in_flight = self.in_flight.len(), "part sent");
        Ok(())
    }

    /// Completes the object: one `PutObject` when no part was sent, else the last part and
    /// `CompleteMultipartUpload`. The caller aborts on error.
    pub(crate) async fn finish(&mut self) -> Result<Uploaded> {
        if self.upload_id.is_none() {
            let body = self.buf.take().map(BytesMut::freeze).unwrap_or_default();
            return self.put(body).await;
        }
        self.send_part().await?;
        while let Some(finished) = self.in_flight.join_next().await {
            self.done.push(joined(finished, &self.target)?);
        }
        let mut done = std::mem::take(&mut self.done);
        done.sort_by_key(|p| p.part_number);
        if done
            .iter()
            .enumerate()
            .any(|(i, p)| p.part_number != i as i32 + 1)
        {
            let (bucket, key) = self.target.describe();
            return Err(Error::Internal {
                message: format!("s3://{bucket}/{key}: parts are not contiguous; not completing"),
            });
        }
        let checksum = done
            .iter()
            .fold(self.algorithm.empty(), |acc, p| acc.append(p.checksum));
        let parts = done.len() as u32;
        let upload_id = self.upload_id.clone().expect("checked above");
        let outcome = self
            .target
            .complete_multipart(&upload_id, done, checksum, self.if_none_match)
            .await?;
        match &outcome {
            PutOutcome::Written { .. } => {
                self.upload_id = None;
                verify(self.target.as_ref(), &outcome, &checksum)?;
            }
            // The object appeared meanwhile; our upload is still open and gets aborted.
            PutOutcome::AlreadyExists => self.abort().await,
        }
        Ok(Uploaded {
            outcome,
            bytes: self.bytes,
            parts,
            checksum,
        })
    }

    async fn put(&mut self, body: Bytes) -> Result<Uploaded> {
        let checksum = self.algorithm.checksum(&body);
        let bytes = body.len() as u64;
        let outcome = self.target.put(body, checksum, self.if_none_match).await?;
        verify(self.target.as_ref(), &outcome, &checksum)?;
        Ok(Uploaded {
            outcome,
            bytes,
            parts: 1,
            checksum,
        })
    }

    /// Cancels the parts in flight and aborts the upload, if one was started.
    pub(crate) async fn abort(&mut self) {
        self.buf = None;
        self.in_flight.shutdown().await;
        if let Some(upload_id) = self.upload_id.take() {
            abort_and_verify(self.target.as_ref(), &upload_id).await;
        }
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        // The parts in flight are cancelled when the JoinSet drops.
        let target = self.target.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                tracing::warn!(%upload_id, "upload dropped unfinished; aborting it");
                let abort = async move { abort_and_verify(target.as_ref(), &upload_id).await };
                handle.spawn(PENDING.track_future(abort));
            }
            Err(_) => {
                tracing::error!(%upload_id, "upload dropped outside a runtime; it stays open")
            }
        }
    }
}

/// Aborts, then checks the upload is gone: a part whose request was in flight when the abort
/// ran can land afterwards and recreate storage, so abort again until `ListParts` says
/// `NoSuchUpload` (a few tries; the bucket lifecycle rule is the backstop).
async fn abort_and_verify(target: &dyn ObjectTarget, upload_id: &str) {
    let (bucket, key) = target.describe();
    for attempt in 1..=4u32 {
        if let Err(err) = target.abort_multipart(upload_id).await {
            tracing::error!(%bucket, %key, %upload_id, attempt, error = %err, "abort failed");
        }
        match target.upload_exists(upload_id).await {
            Ok(false) => {
                tracing::info!(%bucket, %key, %upload_id, "multipart upload aborted");
                return;
            }
            Ok(true) => {
                tracing::warn!(%bucket, %key, %upload_id, attempt, "upload still listed after abort")
            }
            Err(err) => {
                tracing::warn!(%bucket, %key, %upload_id, error = %err, "cannot verify abort")
            }
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
    tracing::error!(%bucket, %key, %upload_id, "upload may remain; the lifecycle rule or sweep-uploads will remove it");
}

fn joined(
    finished: std::result::Result<PartResult, tokio::task::JoinError>,
    target: &Arc<dyn ObjectTarget>,
) -> Result<PartReceipt> {
    finished.unwrap_or_else(|join| {
        let (bucket, key) = target.describe();
        Err(Error::Internal {
            message: format!("s3://{bucket}/{key}: an UploadPart task failed: {join}"),
        })
    })
}

fn verify(target: &dyn ObjectTarget, outcome: &PutOutcome, expected: &Crc) -> Result<()> {
    if let PutOutcome::Written {
        checksum: Some(actual),
        ..
    } = outcome
    {
        let expected_b64 = expected.to_base64();
        if *actual != expected_b64 {
            let (bucket, key) = target.describe();
            return Err(Error::ChecksumMismatch {
                bucket,
                key,
                algorithm: expected.algorithm().s3_name(),
                expected: expected_b64,
                actual: actual.clone(),
            });
        }
    }
    Ok(())
}
