//! [`ObjectWriter`]: the one way sluice writes an object.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::parts::{Parts, StopAt, Suspended, pending_aborts, read_before};
use super::target::{ObjectTarget, PutOutcome};
use crate::budget::PartSchedule;
use crate::checksum::{ChecksumAlgorithm, Crc};
use crate::codec::{Compression, Encoder};
use crate::error::{Error, Result};
use crate::job::within;
use crate::telemetry::Progress;

/// Chunks read from a source by [`ObjectWriter::copy`] when the writer compresses.
const COPY_CHUNK: usize = 64 * 1024;
/// Chunks queued between a compressing writer and its encoder task.
const ENCODER_QUEUE: usize = 4;
/// What an encoder may hold before it emits (a zstd block, a deflate window) plus its end of
/// stream: added to [`ObjectWriter::size_bound`] so the bound stays above the object's size.
const ENCODER_SLACK: u64 = 256 * 1024;

/// How an [`ObjectWriter`] writes.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Part sizes and parts in flight ([`MemoryBudget::schedule`](crate::MemoryBudget::schedule)).
    pub schedule: PartSchedule,
    /// The full-object checksum to compute, send and verify. Default CRC64NVME.
    pub checksum: ChecksumAlgorithm,
    /// Write only if no object exists at the key (`If-None-Match: *`). Default false.
    pub if_none_match: bool,
    /// When to give up: the upload is aborted and [`Error::Deadline`] returned. Default none.
    ///
    /// The clean-up after it (abort, checks) may take [`CLEANUP_GRACE`](super::CLEANUP_GRACE)
    /// (2 s) more. If the deadline cut a `CompleteMultipartUpload` or `PutObject` short, the
    /// object may still have been created: `HeadObject` decides, and an object with this
    /// writer's size and checksum is reported as written.
    pub deadline: Option<Instant>,
    /// Compress what is written (a layer the writer owns). Default none.
    pub compression: Option<Compression>,
    /// Counters to keep current: parts started and acknowledged, bytes acknowledged, objects
    /// completed ([`Progress`]). Default none.
    pub progress: Option<Arc<Progress>>,
}

impl UploadOptions {
    /// Options with the given schedule and the defaults above.
    pub fn new(schedule: PartSchedule) -> Self {
        UploadOptions {
            schedule,
            checksum: ChecksumAlgorithm::default(),
            if_none_match: false,
            deadline: None,
            compression: None,
            progress: None,
        }
    }
}

/// What a finished [`ObjectWriter`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// Whether the object was written or already existed (no-overwrite).
    pub outcome: PutOutcome,
    /// Bytes written (the object's size).
    pub bytes: u64,
    /// Parts: 1 for a single `PutObject`, else the multipart part count.
    pub parts: u32,
    /// The full-object checksum computed while streaming, verified against S3's answer.
    pub checksum: Crc,
}

/// Writes one S3 object from bytes pushed into it.
///
/// - [`write`](Self::write) appends bytes (compressed first when
///   [`UploadOptions::compression`] is set). It waits while the parts in flight are at the
///   schedule's limit, so a producer can never run ahead of S3 by more than
///   `(in flight + 1) × part size`.
/// - [`finish`](Self::finish) is the **only** call that completes an object: a stream shorter
///   than one part becomes one `PutObject`, a longer one a multipart upload with a full-object
///   checksum, verified against S3's answer.
/// - [`abort`](Self::abort), any error, the deadline, or dropping the writer unfinished (a
///   producer that panicked, a cancelled task) aborts the upload and checks with `ListParts`
///   that no late part survived. Drop cannot wait, so it spawns the abort on a tracker that
///   [`settle_aborts`](super::settle_aborts) waits for.
///
/// The end of the input is always something the producer says by calling `finish`; the writer
/// never infers it.
///
/// With compression, the encoder runs on its own task (fed through a small bounded queue), so
/// compressing overlaps with the producer's own work. That task, too, completes only on an
/// explicit finish message and aborts when the writer goes away without one.
#[derive(Debug)]
pub struct ObjectWriter {
    state: State,
    deadline: Option<Instant>,
    /// `(bucket, key)`, for messages.
    object: (String, String),
    /// Bytes given to [`write`](Self::write).
    sent: u64,
    /// For a compressing writer: what its encoder task has taken and put out.
    encoded: Arc<Encoded>,
}

/// Bytes a compressing writer's encoder task has consumed and produced so far.
#[derive(Debug, Default)]
struct Encoded {
    consumed: std::sync::atomic::AtomicU64,
    produced: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
enum State {
    /// Parts filled on the caller's task.
    Direct(Box<PartsSlot>),
    /// An encoder task owns the parts.
    Encoded {
        tx: mpsc::Sender<Message>,
        task: tokio::task::JoinHandle<Result<Ended>>,
    },
    /// A call failed; the upload was aborted.
    Failed,
}

/// [`Parts`] behind a box (it is large), with a `Debug` that says only what it writes.
struct PartsSlot(Parts);

impl std::fmt::Debug for PartsSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("object", &self.0.describe())
            .field("bytes", &self.0.bytes())
            .finish()
    }
}

/// What a compressing writer sends its encoder task.
#[derive(Debug)]
enum Message {
    Data(Bytes),
    /// The producer's explicit end of input.
    Finish,
    /// Hand the upload over unfinished, the encoder's output ended at a boundary.
    Suspend,
}

/// How [`ObjectWriter::copy_until`] ended.
#[derive(Debug)]
pub enum Copied {
    /// The reader ended and the object is complete.
    Finished(Uploaded),
    /// The stop came first.
    Stopped {
        /// The writer, still open.
        writer: ObjectWriter,
        /// Bytes it read from the reader.
        read: u64,
    },
}

/// How an encoder task ended well.
#[derive(Debug)]
enum Ended {
    Finished(Uploaded),
    Suspended(Suspended),
}

impl ObjectWriter {
    /// A writer for `target`. Nothing is sent to S3 until the first part fills or `finish`.
    pub fn new(target: Arc<dyn ObjectTarget>, options: &UploadOptions) -> Result<Self> {
        Self::start(target, options, None)
    }

    /// A writer that continues an upload another writer suspended ([`suspend`](Self::suspend)):
    /// its next part follows the last one uploaded, the tail comes first, and `finish`
    /// completes one object of everything both wrote. With compression, what this writer
    /// writes is a new gzip member or zstd frame after the suspended one's: together one
    /// valid stream.
    pub fn resume(
        target: Arc<dyn ObjectTarget>,
        options: &UploadOptions,
        suspended: Suspended,
    ) -> Result<Self> {
        Self::start(target, options, Some(suspended))
    }

    fn start(
        target: Arc<dyn ObjectTarget>,
        options: &UploadOptions,
        suspended: Option<Suspended>,
    ) -> Result<Self> {
        let object = target.describe();
        let encoded = Arc::new(Encoded::default());
        let mut parts = Parts::new(
            target,
            options.schedule,
            options.checksum,
            options.if_none_match,
            options.deadline,
            options.progress.clone(),
        );
        if let Some(suspended) = suspended {
            parts.resume(suspended)?;
        }
        encoded
            .produced
            .store(parts.bytes(), std::sync::atomic::Ordering::Relaxed);
        let state = match options.compression {
            None => State::Direct(Box::new(PartsSlot(parts))),
            Some(compression) => {
                let encoder = compression.encoder().map_err(|source| Error::Encode {
                    codec: compression.codec.name(),
                    offset: 0,
                    source,
                })?;
                let (tx, rx) = mpsc::channel(ENCODER_QUEUE);
                let task = pending_aborts().spawn(encode(
                    parts,
                    encoder,
                    rx,
                    options.deadline,
                    encoded.clone(),
                ));
                State::Encoded { tx, task }
            }
        };
        Ok(ObjectWriter {
            state,
            deadline: options.deadline,
            object,
            sent: 0,
            encoded,
        })
    }

    /// An upper bound of the object's size were it finished now: the bytes in its parts, plus
    /// (when compressing) the bytes still queued for the encoder and what the encoder may
    /// hold. Used to finish an object before it passes a size.
    pub fn size_bound(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        match &self.state {
            State::Direct(parts) => parts.0.bytes(),
            State::Encoded { .. } => {
                let queued = self
                    .sent
                    .saturating_sub(self.encoded.consumed.load(Relaxed));
                self.encoded.produced.load(Relaxed) + queued + ENCODER_SLACK
            }
            State::Failed => self.sent,
        }
    }

    /// `(bucket, key)` of the object.
    pub fn object(&self) -> &(String, String) {
        &self.object
    }

    /// Appends `data`. On error the upload has been aborted and the writer is spent.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        let deadline = self.deadline;
        self.sent += data.len() as u64;
        match &mut self.state {
            State::Direct(parts) => {
                let result = within(deadline, parts.0.write(&data)).await;
                self.fail_on_error(result).await
            }
            State::Encoded { tx, .. } => {
                if tx.send(Message::Data(data)).await.is_ok() {
                    return Ok(());
                }
                // The task stopped early: its result says why.
                Err(self.task_error().await)
            }
            State::Failed => Err(self.spent()),
        }
    }

    /// Reads `reader` to its end into the object and finishes it. A read error (mapped with
    /// `read_error`) aborts the upload: a source that failed is never completed.
    pub async fn copy<R, F>(self, reader: R, read_error: F) -> Result<Uploaded>
    where
        R: AsyncRead + Unpin + Send,
        F: Fn(io::Error) -> Error,
    {
        match self.copy_until(reader, read_error, &|| None).await? {
            Copied::Finished(done) => Ok(done),
            Copied::Stopped { writer, .. } => writer.finish().await,
        }
    }

    /// Like [`copy`](Self::copy), but stops reading once the time `stop` gives has passed
    /// (asked before each read, and a read still waiting then is cut off without losing
    /// bytes): the writer comes back open, with the count of bytes it read, to
    /// [`suspend`](Self::suspend) or go on. At the end of `reader` the object is finished.
    pub async fn copy_until<R, F>(
        mut self,
        mut reader: R,
        read_error: F,
        stop: &StopAt<'_>,
    ) -> Result<Copied>
    where
        R: AsyncRead + Unpin + Send,
        F: Fn(io::Error) -> Error,
    {
        let deadline = self.deadline;
        if let State::Direct(parts) = &mut self.state {
            let before = parts.0.bytes();
            let result = within(deadline, parts.0.fill_from(&mut reader, &read_error, stop)).await;
            let ended = self.fail_on_error(result).await?;
            if !ended {
                let read = match &self.state {
                    State::Direct(parts) => parts.0.bytes() - before,
                    _ => 0,
                };
                return Ok(Copied::Stopped { writer: self, read });
            }
            return self.finish().await.map(Copied::Finished);
        }
        // One read buffer, reclaimed by `reserve` once the encoder has dropped the last chunk.
        let mut chunk = BytesMut::with_capacity(COPY_CHUNK);
        let mut read = 0u64;
        loop {
            chunk.reserve(COPY_CHUNK);
            // `Some(true)`: the reader ended; `Some(false)`: the stop came.
            let mut end = None;
            while chunk.len() < COPY_CHUNK {
                let next = within(deadline, async {
                    read_before(&mut reader, &mut chunk, stop)
                        .await
                        .map_err(&read_error)
                });
                match next.await {
                    Ok(Some(0)) => end = Some(true),
                    Ok(Some(n)) => read += n as u64,
                    Ok(None) => end = Some(false),
                    Err(e) => {
                        self.abort().await;
                        return Err(e);
                    }
                }
                if end.is_some() {
                    break;
                }
            }
            if !chunk.is_empty() {
                self.write(chunk.split().freeze()).await?;
            }
            match end {
                Some(true) => return self.finish().await.map(Copied::Finished),
                Some(false) => return Ok(Copied::Stopped { writer: self, read }),
                None => {}
            }
        }
    }

    /// Completes the object. The only call that does.
    pub async fn finish(mut self) -> Result<Uploaded> {
        let deadline = self.deadline;
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Direct(mut parts) => match within(deadline, parts.0.finish()).await {
                Ok(done) => Ok(done),
                // Aborts; after a completing request dropped at the deadline, reports
                // whether the object landed.
                Err(e) => parts.0.fail(e).await,
            },
            State::Encoded { tx, task } => {
                // A failed send means the task already ended; its result says why.
                let _ = tx.send(Message::Finish).await;
                match joined(task, &self.object).await? {
                    Ended::Finished(done) => Ok(done),
                    Ended::Suspended(_) => Err(internal(&self.object, "suspended, not finished")),
                }
            }
            State::Failed => Err(self.spent()),
        }
    }

    /// Hands the upload over unfinished instead of completing it: waits for the parts in
    /// flight and returns what [`resume`](Self::resume) needs to continue it, here or in
    /// another invocation. A compressing writer first ends its gzip member or zstd frame, so
    /// that the bytes uploaded so far and the tail end at a boundary of the stream. Nothing is
    /// completed and nothing aborted: the upload stays open until a resumed writer finishes
    /// or aborts it (or the bucket's lifecycle rule and `sweep-uploads` remove it). On error
    /// the upload is aborted.
    pub async fn suspend(mut self) -> Result<Suspended> {
        let deadline = self.deadline;
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Direct(mut parts) => match within(deadline, parts.0.suspend()).await {
                Ok(suspended) => Ok(suspended),
                Err(e) => {
                    parts.0.abort().await;
                    Err(e)
                }
            },
            State::Encoded { tx, task } => {
                let _ = tx.send(Message::Suspend).await;
                match joined(task, &self.object).await? {
                    Ended::Suspended(suspended) => Ok(suspended),
                    Ended::Finished(_) => Err(internal(&self.object, "finished, not suspended")),
                }
            }
            State::Failed => Err(self.spent()),
        }
    }

    /// Aborts the upload (if one was started) and waits until it is gone.
    pub async fn abort(mut self) {
        self.abort_in_place().await;
    }

    async fn abort_in_place(&mut self) {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Direct(mut parts) => parts.0.abort().await,
            State::Encoded { tx, task } => {
                // Closing the queue without a finish message makes the task abort.
                drop(tx);
                let _ = task.await;
            }
            State::Failed => {}
        }
    }

    async fn fail_on_error<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.abort_in_place().await;
        }
        result
    }

    /// The error of an encoder task that stopped before its finish message.
    async fn task_error(&mut self) -> Error {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Encoded { task, .. } => match joined(task, &self.object).await {
                Err(e) => e,
                Ok(_) => internal(&self.object, "the encoder task ended without a message"),
            },
            _ => self.spent(),
        }
    }

    fn spent(&self) -> Error {
        internal(&self.object, "write after the writer failed or finished")
    }
}

fn internal(object: &(String, String), what: &str) -> Error {
    Error::Internal {
        message: format!("s3://{}/{}: {what}", object.0, object.1),
    }
}

async fn joined(
    task: tokio::task::JoinHandle<Result<Ended>>,
    object: &(String, String),
) -> Result<Ended> {
    match task.await {
        Ok(result) => result,
        Err(e) => Err(internal(object, &format!("the encoder task failed: {e}"))),
    }
}

/// The encoder task of a compressing writer: compresses each chunk into the parts, completes
/// the object on the finish message, and aborts on anything else (an error, the deadline, the
/// writer dropped without finishing).
async fn encode(
    mut parts: Parts,
    mut encoder: Encoder,
    mut rx: mpsc::Receiver<Message>,
    deadline: Option<Instant>,
    counts: Arc<Encoded>,
) -> Result<Ended> {
    use std::sync::atomic::Ordering::Relaxed;
    let run = within(deadline, async {
        while let Some(message) = rx.recv().await {
            match message {
                Message::Data(data) => {
                    let out = encoder.encode(&data)?;
                    parts.write(out).await?;
                    counts.consumed.fetch_add(data.len() as u64, Relaxed);
                    counts.produced.store(parts.bytes(), Relaxed);
                }
                Message::Finish => {
                    let out = encoder.finish()?;
                    parts.write(&out).await?;
                    return parts.finish().await.map(Ended::Finished);
                }
                Message::Suspend => {
                    let out = encoder.finish()?;
                    parts.write(&out).await?;
                    return parts.suspend().await.map(Ended::Suspended);
                }
            }
        }
        let (bucket, key) = parts.describe();
        tracing::warn!(%bucket, %key, "writer dropped before finish; aborting the upload");
        Err(Error::Internal {
            message: format!("s3://{bucket}/{key}: the writer was dropped before finish"),
        })
    });
    match run.await {
        Ok(ended) => Ok(ended),
        Err(e) => parts.fail(e).await.map(Ended::Finished),
    }
}
