//! The multipart engine under [`ObjectWriter`](super::ObjectWriter): bytes pushed in are cut
//! into parts of the scheduled size, a few parts upload at once (a [`Window`] that grows only
//! when the writer waits on the network, up to the budget's `max_in_flight`), and the object
//! is completed only by [`Parts::finish`].
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
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::target::{ObjectTarget, PartReceipt, PutOutcome};
use super::writer::Uploaded;
use crate::budget::{MAX_PARTS, PartSchedule};
use crate::checksum::{ChecksumAlgorithm, Crc};
use crate::error::{Error, Result, S3Operation};
use crate::telemetry::Progress;

/// How long the clean-up after a failure (abort, `ListParts` checks, and the `HeadObject` check
/// after a dropped `CompleteMultipartUpload` or `PutObject`) may run past the writer's
/// deadline: 2 s. The default deadline margin is 3 s ([`crate::job::DEADLINE_MARGIN`]), so the
/// function still has 1 s to answer before Lambda stops it; `tuning.deadline_margin_ms` may not
/// be set below [`crate::job::MIN_DEADLINE_MARGIN`] for that reason.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(2);
/// The longest a clean-up may take when there is no deadline, or the deadline is far: 30 s.
/// Each SDK call can take up to 5 attempts of 120 s ([`crate::s3::client`]), so without a cap
/// one unanswered abort could hold an invocation for many minutes.
pub const CLEANUP_MAX: Duration = Duration::from_secs(30);

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
    /// Buffers of parts whose uploads finished while the writer waited for a slot, for the
    /// next parts of the same size: their pages are already mapped, where a fresh buffer's
    /// must each be faulted in and zeroed (a sixth of a byte copy's CPU). Each takes its
    /// finished upload's slot, so the buffers never outnumber the window; a writer that does
    /// not wait (its source is slower than its uploads) frees them as before, so an idle
    /// buffer never stays resident.
    spares: Arc<Spares>,
    /// Size of the part being filled.
    size: u64,
    /// Number of the part being filled (1-based).
    part_number: u32,
    upload_id: Option<String>,
    in_flight: JoinSet<PartResult>,
    /// How many part buffers may exist at once (the one filling and those uploading).
    window: Window,
    done: Vec<PartReceipt>,
    /// Bytes accepted so far (the object's size once finished).
    bytes: u64,
    /// When the writer gives up; bounds the clean-up ([`CLEANUP_GRACE`]).
    deadline: Option<Instant>,
    /// Set while a `CompleteMultipartUpload` or `PutObject` is awaited: if that request is
    /// dropped (the deadline), the object may exist anyway, and [`Parts::fail`] checks.
    committing: Option<Commit>,
    /// Parts, acknowledged bytes and completed objects are counted here.
    progress: Option<Arc<Progress>>,
    /// Under `If-None-Match: *`, another writer completed the key first and this upload was
    /// removed with it (some S3 servers end every other upload of a key on completion): the
    /// rest of the input is discarded and `finish` answers [`PutOutcome::AlreadyExists`].
    overtaken: bool,
    /// The upload belongs to the checkpoint this invocation resumed ([`Suspended::held`]):
    /// a failure leaves it open instead of aborting it.
    held: bool,
}

/// How many part buffers a writer may hold at once: the one filling and the ones uploading.
///
/// It starts at two (one part uploads while the next fills) and grows by one, up to the
/// budget's `max_in_flight`, each time the writer had to wait for a free slot for longer than
/// [`GROW_AFTER`] of the time it took to fill the part before, and only while the process
/// leaves most of its CPU idle ([`CPU_BOUND`], over spans of at least [`LOAD_SPAN`]): only then
/// would one more buffer have kept it busy. A writer limited by its CPU keeps two buffers: a
/// 256 MB function fills a part in a burst of its CPU share and is then throttled for the
/// rest of the 100 ms period, so it waits for a slot although more buffers would not move the
/// uploads (which need the same CPU to sign and checksum) any sooner. A writer limited by the
/// network waits with its CPU idle, and grows until the uploads keep up.
#[derive(Debug)]
pub(crate) struct Window {
    slots: usize,
    max: usize,
    /// When the part being filled got its buffer.
    filling_since: Option<Instant>,
    /// How long the last part took to fill.
    last_fill: Duration,
    /// The CPU the process may use, in thousandths of a vCPU (0: not known, not checked).
    vcpu_millis: u32,
    /// Start of the span over which the process's CPU use is measured: the time then and
    /// the process's CPU time then.
    span: Option<(Instant, Duration)>,
}

/// A wait longer than this share of a part's fill time grows the window: 1/4.
pub(crate) const GROW_AFTER: (u32, u32) = (1, 4);

/// A process that used more than this share of its CPU over the span is CPU-bound, and its
/// window does not grow: 1/2.
pub(crate) const CPU_BOUND: (u32, u32) = (1, 2);

/// The shortest span whose CPU use counts: several of the scheduler's 100 ms periods, so that
/// a burst and the throttled rest of a period average out.
pub(crate) const LOAD_SPAN: Duration = Duration::from_millis(300);

impl Window {
    pub(crate) fn new(max: usize, vcpu_millis: u32) -> Self {
        let max = max.max(1);
        Window {
            slots: max.min(2),
            max,
            filling_since: None,
            last_fill: Duration::ZERO,
            vcpu_millis,
            span: None,
        }
    }

    /// Buffers allowed now.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Lowers the limit (parts grow, so fewer fit the budget).
    pub(crate) fn limit(&mut self, max: usize) {
        self.max = max.max(1);
        self.slots = self.slots.min(self.max);
    }

    /// A part got its buffer.
    pub(crate) fn filling(&mut self) {
        self.filling_since = Some(Instant::now());
    }

    /// The part being filled is full (or the input ended).
    pub(crate) fn filled(&mut self) {
        if let Some(since) = self.filling_since.take() {
            self.last_fill = since.elapsed();
        }
    }

    /// The writer waited `wait` for a slot.
    pub(crate) fn waited(&mut self, wait: Duration) {
        self.waited_at(wait, Instant::now(), process_cpu_time());
    }

    /// [`Window::waited`] at `now`, the process having used `cpu` of CPU time so far.
    pub(crate) fn waited_at(&mut self, wait: Duration, now: Instant, cpu: Option<Duration>) {
        let (num, den) = GROW_AFTER;
        if self.slots >= self.max || wait * den <= self.last_fill * num {
            return;
        }
        if !self.cpu_idle(now, cpu) {
            return;
        }
        self.slots += 1;
        tracing::debug!(slots = self.slots, ?wait, fill = ?self.last_fill, "upload window grows");
    }

    /// Whether the process used less than [`CPU_BOUND`] of its CPU since the span began (yes
    /// when its CPU is not known). The first long wait begins a span; a span shorter than
    /// [`LOAD_SPAN`] says no; a longer one ends here and the next begins.
    fn cpu_idle(&mut self, now: Instant, cpu: Option<Duration>) -> bool {
        let Some(cpu) = cpu.filter(|_| self.vcpu_millis > 0) else {
            return true;
        };
        let Some((since, cpu_since)) = self.span else {
            self.span = Some((now, cpu));
            return false;
        };
        let wall = now.saturating_duration_since(since);
        if wall < LOAD_SPAN {
            return false;
        }
        self.span = Some((now, cpu));
        let used = cpu.saturating_sub(cpu_since).as_nanos();
        let available = wall.as_nanos() * u128::from(self.vcpu_millis) / 1000;
        let (num, den) = CPU_BOUND;
        let idle = used * u128::from(den) < available * u128::from(num);
        if !idle {
            let cpu = Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX));
            tracing::debug!(span = ?wall, ?cpu, "upload window stays: the process is CPU-bound");
        }
        idle
    }
}

/// The CPU time this process has used, on all its threads.
fn process_cpu_time() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| {
            Duration::new(
                u64::try_from(ts.tv_sec).unwrap_or(0),
                u32::try_from(ts.tv_nsec).unwrap_or(0),
            )
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Whether `parts` are numbered 1, 2, 3, ... in order.
/// When a copy stops reading: `None` for never, or an instant (one already past stops it at
/// once, even while the reader has data ready).
pub type StopAt<'a> = dyn Fn() -> Option<Instant> + Send + Sync + 'a;

/// One `read_buf` into `buf`, unless `stop` comes first: `Ok(None)`, with nothing read
/// (`read_buf` is cancel safe, so no byte is lost).
pub(crate) async fn read_before<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    stop: &StopAt<'_>,
) -> std::io::Result<Option<usize>> {
    match stop() {
        None => reader.read_buf(buf).await.map(Some),
        Some(at) if at <= Instant::now() => Ok(None),
        Some(at) => tokio::time::timeout_at(at, reader.read_buf(buf))
            .await
            .ok()
            .transpose(),
    }
}

fn contiguous(parts: &[PartReceipt]) -> bool {
    parts
        .iter()
        .enumerate()
        .all(|(i, p)| i32::try_from(i + 1) == Ok(p.part_number))
}

/// A multipart upload handed over unfinished by [`ObjectWriter::suspend`]: what another
/// writer, in this process or another, needs to continue it ([`ObjectWriter::resume`]).
///
/// [`ObjectWriter::suspend`]: super::ObjectWriter::suspend
/// [`ObjectWriter::resume`]: super::ObjectWriter::resume
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspended {
    /// The multipart upload, once one was started (a stream shorter than one part has none).
    pub upload_id: Option<String>,
    /// The parts uploaded, in order, each with its ETag and checksum: the full-object
    /// checksum is combined from them when the object completes.
    pub parts: Vec<PartReceipt>,
    /// Bytes accepted so far, the tail included.
    pub bytes: u64,
    /// Bytes accepted but not yet uploaded: less than one part, the start of the next.
    pub tail: Bytes,
    /// Whether the upload belongs to a saved checkpoint the invocation resumed: a writer
    /// that fails then leaves it open (parts in flight cancelled), and the invocation's end
    /// ([`checkpoint::settle`](crate::checkpoint::settle)) decides: it aborts the upload, or
    /// after a transient failure keeps it, with its checkpoint, for a retry of the same
    /// `continue` event. Carried over by [`ObjectWriter::suspend`].
    ///
    /// [`ObjectWriter::suspend`]: super::ObjectWriter::suspend
    pub held: bool,
}

impl Suspended {
    /// No upload: what a checkpoint holds when the job's objects are all complete (a
    /// partitioned job at a stop).
    pub fn none() -> Suspended {
        Suspended {
            upload_id: None,
            parts: Vec::new(),
            bytes: 0,
            tail: Bytes::new(),
            held: false,
        }
    }
}

/// Finished parts' buffers, kept while the writer waits for one ([`Parts`]).
#[derive(Debug, Default)]
struct Spares {
    /// Set while the writer waits for a slot.
    wanted: std::sync::atomic::AtomicBool,
    buffers: std::sync::Mutex<Vec<BytesMut>>,
}

impl Spares {
    /// An upload is over: its body's buffer is kept if the writer is waiting for one and
    /// nothing else holds it.
    fn offer(&self, body: Bytes) {
        if !self.wanted.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if let (Ok(mut buf), Ok(mut buffers)) = (body.try_into_mut(), self.buffers.lock()) {
            buf.clear();
            buffers.push(buf);
        }
    }

    /// A kept buffer, if any; the rest beyond `keep` are dropped.
    fn take(&self, keep: usize) -> Option<BytesMut> {
        let mut buffers = self.buffers.lock().ok()?;
        let buf = buffers.pop();
        buffers.truncate(keep);
        buf
    }
}

/// What a completing request would create, to recognise the object if it landed.
#[derive(Debug, Clone, Copy)]
struct Commit {
    checksum: Crc,
    bytes: u64,
    parts: u32,
}

impl Parts {
    pub(crate) fn new(
        target: Arc<dyn ObjectTarget>,
        schedule: PartSchedule,
        algorithm: ChecksumAlgorithm,
        if_none_match: bool,
        deadline: Option<Instant>,
        progress: Option<Arc<Progress>>,
    ) -> Self {
        Parts {
            target,
            schedule,
            algorithm,
            if_none_match,
            buf: None,
            spares: Arc::default(),
            size: 0,
            part_number: 1,
            upload_id: None,
            in_flight: JoinSet::new(),
            window: Window::new(
                schedule.max_in_flight(schedule.part_size(1)),
                schedule.vcpu_millis(),
            ),
            done: Vec::new(),
            bytes: 0,
            deadline,
            committing: None,
            progress,
            overtaken: false,
            held: false,
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
        while !data.is_empty() && !self.overtaken {
            let size = usize::try_from(self.size_of_next()).unwrap_or(usize::MAX);
            let buf = self.part_buffer().await?;
            // A buffer never holds more than its part size (it is sent once full).
            let room = size.saturating_sub(buf.len());
            // `n` is at most `data.len()`, so both slices are in bounds.
            let n = room.min(data.len());
            buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.bytes += n as u64;
            self.send_if_full().await?;
        }
        Ok(())
    }

    /// Reads `reader` straight into part buffers (no intermediate copy) until its end (`true`)
    /// or until the time `stop` gives passes (`false`), checked before each read and while a
    /// read waits: `read_buf` is cancel safe, so a read cut off took nothing.
    pub(crate) async fn fill_from<R, F>(
        &mut self,
        reader: &mut R,
        read_error: &F,
        stop: &StopAt<'_>,
    ) -> Result<bool>
    where
        R: AsyncRead + Unpin,
        F: Fn(std::io::Error) -> Error,
    {
        while !self.overtaken {
            let size = usize::try_from(self.size_of_next()).unwrap_or(usize::MAX);
            let buf = self.part_buffer().await?;
            // `read_buf` reads at most the spare capacity, so the buffer never grows past the
            // part size; a full buffer is sent before the next read.
            debug_assert!(buf.len() < size);
            let Some(n) = read_before(reader, buf, stop).await.map_err(read_error)? else {
                return Ok(false);
            };
            if n == 0 {
                return Ok(true);
            }
            self.bytes += n as u64;
            self.send_if_full().await?;
        }
        Ok(true)
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
            self.window.limit(self.schedule.max_in_flight(size));
            while let Some(finished) = self.in_flight.try_join_next() {
                self.settle(finished).await?;
            }
            if self.in_flight.len() >= self.window.slots() {
                let waiting = Instant::now();
                self.spares
                    .wanted
                    .store(true, std::sync::atomic::Ordering::Release);
                while self.in_flight.len() >= self.window.slots() {
                    match self.in_flight.join_next().await {
                        Some(finished) => self.settle(finished).await?,
                        None => break,
                    }
                }
                self.spares
                    .wanted
                    .store(false, std::sync::atomic::Ordering::Release);
                self.window.waited(waiting.elapsed());
                // Uploads that ended with the one awaited left their buffers too.
                while let Some(finished) = self.in_flight.try_join_next() {
                    self.settle(finished).await?;
                }
            }
            self.size = size;
            self.window.filling();
        }
        let capacity = usize::try_from(self.size).unwrap_or(usize::MAX);
        if self.buf.is_none() {
            let keep = self.window.slots().saturating_sub(self.in_flight.len() + 1);
            self.buf = self.spares.take(keep).filter(|b| b.capacity() == capacity);
        }
        Ok(self
            .buf
            .get_or_insert_with(|| BytesMut::with_capacity(capacity)))
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
        let Some(body) = self.buf.take().filter(|b| !b.is_empty() && !self.overtaken) else {
            return Ok(());
        };
        self.window.filled();
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
        // `part_buffer` refuses part numbers past MAX_PARTS (10,000), so this fits an i32.
        let part_number = i32::try_from(self.part_number).unwrap_or(i32::MAX);
        let body = body.freeze();
        let progress = self.progress.clone();
        if let Some(p) = &progress {
            p.part_started();
        }
        let spares = self.spares.clone();
        self.in_flight.spawn(async move {
            // Checksums are computed on the part's task so they run beside the writer.
            let checksum = algorithm.checksum(&body);
            let len = body.len() as u64;
            let keep = body.clone();
            let receipt = target
                .upload_part(&upload_id, part_number, body, checksum)
                .await;
            if let (Some(p), Ok(_)) = (&progress, &receipt) {
                p.add_bytes_out(len);
                p.part_done();
            }
            spares.offer(keep);
            receipt
        });
        self.part_number += 1;
        while let Some(finished) = self.in_flight.try_join_next() {
            self.settle(finished).await?;
        }
        tracing::debug!(
            part_number,
            in_flight = self.in_flight.len(),
            window = self.window.slots(),
            "part sent"
        );
        Ok(())
    }

    /// Hands the upload over unfinished: waits for the parts in flight and returns the upload
    /// id, the parts (in order), the bytes accepted and the tail not yet sent (less than one
    /// part), without completing or aborting anything. The upload is then the caller's:
    /// dropping this writer no longer aborts it. The caller aborts on error.
    pub(crate) async fn suspend(&mut self) -> Result<Suspended> {
        while let Some(finished) = self.in_flight.join_next().await {
            self.settle(finished).await?;
        }
        if self.overtaken {
            return Err(self.internal("another writer completed the key; nothing to continue"));
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number);
        if !contiguous(&parts) {
            return Err(self.internal("parts are not contiguous; not suspending"));
        }
        let tail = self.buf.take().map(BytesMut::freeze).unwrap_or_default();
        Ok(Suspended {
            upload_id: self.upload_id.take(),
            parts,
            bytes: self.bytes,
            tail,
            held: self.held,
        })
    }

    /// Continues a suspended upload ([`Parts::suspend`]) in this fresh writer: its next part
    /// follows the last one uploaded, and the tail is the start of that part.
    pub(crate) fn resume(&mut self, suspended: Suspended) -> Result<()> {
        let Suspended {
            upload_id,
            parts,
            bytes,
            tail,
            held,
        } = suspended;
        let next = u32::try_from(parts.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let size = self.schedule.part_size(next);
        let sent: u64 = bytes.saturating_sub(tail.len() as u64);
        let problem = if !contiguous(&parts) {
            Some("its parts are not numbered 1, 2, 3, ...")
        } else if upload_id.is_none() && !parts.is_empty() {
            Some("it has parts but no upload id")
        } else if tail.len() as u64 >= size {
            Some("its tail is not smaller than a part")
        } else if (tail.len() as u64) > bytes || (parts.is_empty() && sent != 0) {
            Some("its byte count does not cover its tail")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(self.internal(&format!("cannot continue the upload: {problem}")));
        }
        self.upload_id = upload_id;
        self.held = held;
        self.done = parts;
        self.part_number = next;
        self.bytes = bytes;
        if !tail.is_empty() {
            let mut buf = BytesMut::with_capacity(usize::try_from(size).unwrap_or(usize::MAX));
            buf.extend_from_slice(&tail);
            self.buf = Some(buf);
            self.size = size;
            self.window.filling();
        }
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
            self.settle(finished).await?;
        }
        if self.overtaken {
            return Ok(self.overtaken_outcome().await);
        }
        let mut done = std::mem::take(&mut self.done);
        done.sort_by_key(|p| p.part_number);
        if !contiguous(&done) {
            let (bucket, key) = self.target.describe();
            return Err(Error::Internal {
                message: format!("s3://{bucket}/{key}: parts are not contiguous; not completing"),
            });
        }
        let checksum = done
            .iter()
            .fold(self.algorithm.empty(), |acc, p| acc.append(p.checksum));
        // At most MAX_PARTS (10,000) receipts: part numbers are checked before each part.
        let parts = u32::try_from(done.len()).unwrap_or(u32::MAX);
        let Some(upload_id) = self.upload_id.clone() else {
            return Err(self.internal("no upload id at CompleteMultipartUpload"));
        };
        self.committing = Some(Commit {
            checksum,
            bytes: self.bytes,
            parts,
        });
        let outcome = self
            .target
            .complete_multipart(&upload_id, done, checksum, self.if_none_match)
            .await;
        // Reached only when the request was not dropped: its answer is the truth.
        self.committing = None;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) if self.was_overtaken().await => {
                tracing::debug!(error = %e, "CompleteMultipartUpload failed after the key was written");
                return Ok(self.overtaken_outcome().await);
            }
            Err(e) => return Err(e),
        };
        match &outcome {
            PutOutcome::Written { .. } => {
                self.upload_id = None;
                verify(self.target.as_ref(), &outcome, &checksum)?;
                if let Some(p) = &self.progress {
                    p.add_object();
                }
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
        self.committing = Some(Commit {
            checksum,
            bytes,
            parts: 1,
        });
        if let Some(p) = &self.progress {
            p.part_started();
        }
        let outcome = self.target.put(body, checksum, self.if_none_match).await;
        self.committing = None;
        let outcome = outcome?;
        verify(self.target.as_ref(), &outcome, &checksum)?;
        if let (Some(p), PutOutcome::Written { .. }) = (&self.progress, &outcome) {
            p.add_bytes_out(bytes);
            p.part_done();
            p.add_object();
        }
        Ok(Uploaded {
            outcome,
            bytes,
            parts: 1,
            checksum,
        })
    }

    /// Records a finished part: its receipt, or its error unless the upload was overtaken
    /// (see [`was_overtaken`](Self::was_overtaken)).
    async fn settle(
        &mut self,
        finished: std::result::Result<PartResult, tokio::task::JoinError>,
    ) -> Result<()> {
        match joined(finished, &self.target) {
            Ok(receipt) => self.done.push(receipt),
            Err(_) if self.overtaken => {}
            Err(e) if self.was_overtaken().await => {
                tracing::debug!(error = %e, "UploadPart failed after the key was written");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// After a failed request, whether another writer completed the key first: only under
    /// `If-None-Match: *`, and only when this upload is gone and an object now exists. Then
    /// the failure is that writer's success, not an error: [`PutOutcome::AlreadyExists`].
    async fn was_overtaken(&mut self) -> bool {
        if self.overtaken {
            return true;
        }
        let Some(upload_id) = self.upload_id.clone().filter(|_| self.if_none_match) else {
            return false;
        };
        let gone = matches!(self.target.upload_exists(&upload_id).await, Ok(false));
        if gone && matches!(self.target.head().await, Ok(Some(_))) {
            let (bucket, key) = self.target.describe();
            tracing::info!(%bucket, %key, %upload_id,
                "another writer completed the object first (If-None-Match); this upload was removed");
            self.overtaken = true;
        }
        self.overtaken
    }

    /// What `finish` answers once overtaken: nothing written by this writer.
    async fn overtaken_outcome(&mut self) -> Uploaded {
        self.abort().await;
        Uploaded {
            outcome: PutOutcome::AlreadyExists,
            bytes: self.bytes,
            parts: 0,
            checksum: self.algorithm.empty(),
        }
    }

    fn internal(&self, what: &str) -> Error {
        let (bucket, key) = self.target.describe();
        Error::Internal {
            message: format!("s3://{bucket}/{key}: {what}"),
        }
    }

    /// Cancels the parts in flight and aborts the upload, if one was started. Bounded in time
    /// ([`CLEANUP_GRACE`] past the deadline, at most [`CLEANUP_MAX`]). A held upload is left
    /// open for the checkpoint that names it ([`Suspended::held`]).
    pub(crate) async fn abort(&mut self) {
        self.buf = None;
        self.in_flight.shutdown().await;
        if let Some(upload_id) = self.release() {
            let budget = cleanup_budget(self.deadline);
            abort_within(self.target.as_ref(), &upload_id, budget).await;
        }
    }

    /// Takes the upload id away from this writer: `Some` when the writer must abort it,
    /// `None` when there is none or it is held for its checkpoint (logged).
    fn release(&mut self) -> Option<String> {
        let upload_id = self.upload_id.take()?;
        if self.held {
            let (bucket, key) = self.target.describe();
            tracing::info!(
                %bucket, %key, %upload_id,
                "the writer failed; its upload stays open for the checkpoint that names it"
            );
            return None;
        }
        Some(upload_id)
    }

    /// The way out after `err`: aborts (as [`abort`](Self::abort)), and when `err` dropped a
    /// `CompleteMultipartUpload` or `PutObject` in flight (the deadline), checks with
    /// `HeadObject` whether the object landed anyway, and reports what is true:
    /// - it exists with this writer's checksum and size: written (`Ok`), since it is ours;
    /// - it does not, or holds other bytes: `err` (nothing written by this writer);
    /// - the check failed or cannot tell: an error that says the object may exist.
    ///
    /// The abort and the check share one time budget ([`CLEANUP_GRACE`] past the deadline).
    pub(crate) async fn fail(&mut self, err: Error) -> Result<Uploaded> {
        let Some(commit) = self.committing.take() else {
            self.abort().await;
            return Err(err);
        };
        let budget = cleanup_budget(self.deadline);
        let started = Instant::now();
        self.buf = None;
        self.in_flight.shutdown().await;
        if let Some(upload_id) = self.release() {
            abort_within(self.target.as_ref(), &upload_id, budget).await;
        }
        let left = budget.saturating_sub(started.elapsed());
        let (bucket, key) = self.target.describe();
        let head = tokio::time::timeout(left, self.target.head()).await;
        let unknown = |why: String| Error::S3 {
            operation: S3Operation::HeadObject,
            bucket: bucket.clone(),
            key: key.clone(),
            part_number: None,
            message: format!(
                "{err}; the request that completes the object was in flight when it was \
                 dropped, and {why}: the object may exist"
            ),
            retryable: true,
        };
        match head {
            Err(_) => Err(unknown(format!(
                "checking it did not finish within {} ms",
                left.as_millis()
            ))),
            Ok(Err(e)) => Err(unknown(format!("checking it failed: {e}"))),
            Ok(Ok(None)) => Err(err),
            Ok(Ok(Some(found))) => {
                let ours = found.size == commit.bytes
                    && found.checksum(commit.checksum.algorithm())
                        == Some(commit.checksum.to_base64().as_str());
                if ours {
                    tracing::warn!(%bucket, %key, "the completing request was dropped, but the object landed with this writer's checksum: written");
                    return Ok(Uploaded {
                        outcome: PutOutcome::Written {
                            e_tag: found.e_tag.unwrap_or_default(),
                            checksum: Some(commit.checksum.to_base64()),
                        },
                        bytes: commit.bytes,
                        parts: commit.parts,
                        checksum: commit.checksum,
                    });
                }
                match found.checksum(commit.checksum.algorithm()) {
                    // Someone else's bytes are there: nothing of ours was written.
                    Some(_) => Err(err),
                    None if found.size != commit.bytes => Err(err),
                    None => Err(unknown(format!(
                        "an object of the same size ({} bytes) exists, but S3 reports no {} checksum to tell whether it is this writer's",
                        found.size,
                        commit.checksum.algorithm().s3_name()
                    ))),
                }
            }
        }
    }
}

/// The time a clean-up may take: until [`CLEANUP_GRACE`] past `deadline`, at most
/// [`CLEANUP_MAX`].
fn cleanup_budget(deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => (d.saturating_duration_since(Instant::now()) + CLEANUP_GRACE).min(CLEANUP_MAX),
        None => CLEANUP_MAX,
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        let Some(upload_id) = self.release() else {
            return;
        };
        // The parts in flight are cancelled when the JoinSet drops.
        let target = self.target.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                tracing::warn!(%upload_id, "upload dropped unfinished; aborting it");
                let budget = cleanup_budget(self.deadline);
                let abort = async move { abort_within(target.as_ref(), &upload_id, budget).await };
                handle.spawn(PENDING.track_future(abort));
            }
            Err(_) => {
                tracing::error!(%upload_id, "upload dropped outside a runtime; it stays open")
            }
        }
    }
}

/// [`abort_and_verify`] within `budget`; past it, logs an error saying the upload may remain
/// (the bucket's lifecycle rule `AbortIncompleteMultipartUpload` and `sweep-uploads` are the
/// backstop).
async fn abort_within(target: &dyn ObjectTarget, upload_id: &str, budget: Duration) {
    if tokio::time::timeout(budget, abort_and_verify(target, upload_id))
        .await
        .is_err()
    {
        let (bucket, key) = target.describe();
        tracing::error!(
            %bucket, %key, %upload_id, budget_ms = budget.as_millis() as u64,
            "ABORT NOT CONFIRMED: AbortMultipartUpload/ListParts did not finish within the clean-up budget; the upload may remain until the bucket's lifecycle rule (AbortIncompleteMultipartUpload) or sweep-uploads removes it"
        );
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
