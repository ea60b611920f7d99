use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::target::{ObjectTarget, PartReceipt, PutOutcome};
use crate::budget::{MAX_PARTS, PartSchedule};
use crate::checksum::{ChecksumAlgorithm, Crc};
use crate::error::{Error, Result, S3Operation};

/// How [`upload`] writes.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Part sizes and parts in flight ([`MemoryBudget::schedule`](crate::MemoryBudget::schedule)).
    pub schedule: PartSchedule,
    /// The full-object checksum to compute, send and verify. Default CRC64NVME.
    pub checksum: ChecksumAlgorithm,
    /// Write only if no object exists at the key (`If-None-Match: *`). Default false.
    pub if_none_match: bool,
    /// When to give up: the upload is aborted and [`Error::Deadline`] returned. Default none.
    pub deadline: Option<Instant>,
}

impl UploadOptions {
    /// Options with the given schedule and the defaults above.
    pub fn new(schedule: PartSchedule) -> Self {
        UploadOptions {
            schedule,
            checksum: ChecksumAlgorithm::default(),
            if_none_match: false,
            deadline: None,
        }
    }
}

/// What [`upload`] wrote.
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

/// Streams `reader` into `target`.
///
/// Parts are read one at a time into a buffer of the scheduled size; at most
/// `schedule.max_in_flight(size)` upload at once while the next one fills, so memory is bounded
/// by `(in flight + 1) × part size` whatever the stream's length. A stream shorter than the
/// first part goes up in one `PutObject` (an empty stream makes a 0-byte object).
///
/// Failure behaviour: a read error is mapped with `read_error` and returned; on any error (or the
/// deadline) after `CreateMultipartUpload` the upload is aborted before returning, and checked
/// with `ListParts` in case a part landed after the abort. A reader that failed is never
/// completed. If the returned future is dropped mid-way, the upload is aborted from a spawned
/// task.
pub async fn upload<R, F>(
    target: Arc<dyn ObjectTarget>,
    mut reader: R,
    options: &UploadOptions,
    read_error: F,
) -> Result<Uploaded>
where
    R: AsyncRead + Unpin + Send,
    F: Fn(io::Error) -> Error,
{
    let mut state = UploadState {
        target: target.clone(),
        upload_id: None,
        bytes: 0,
    };
    let work = drive(&mut state, &mut reader, options, &read_error);
    let result = match options.deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::Deadline { bytes_in: 0 }),
        },
        None => work.await,
    };
    // `work` is gone: its in-flight part tasks were cancelled with it.
    match result {
        Ok(done) => Ok(done),
        Err(err) => {
            if let Some(upload_id) = state.upload_id.take() {
                abort_and_verify(target.as_ref(), &upload_id).await;
            }
            Err(match err {
                Error::Deadline { .. } => Error::Deadline {
                    bytes_in: state.bytes,
                },
                other => other,
            })
        }
    }
}

/// Holds the upload id while a multipart upload is open; dropping it open aborts the upload.
struct UploadState {
    target: Arc<dyn ObjectTarget>,
    upload_id: Option<String>,
    bytes: u64,
}

impl Drop for UploadState {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let target = self.target.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                tracing::warn!(%upload_id, "upload dropped unfinished; aborting it");
                handle.spawn(async move { abort_and_verify(target.as_ref(), &upload_id).await });
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

async fn fill<R, F>(reader: &mut R, size: u64, bytes: &mut u64, read_error: &F) -> Result<BytesMut>
where
    R: AsyncRead + Unpin,
    F: Fn(io::Error) -> Error,
{
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let mut buf = BytesMut::with_capacity(size);
    // `read_buf` reads at most the spare capacity, so the buffer never grows past `size`.
    while buf.len() < size {
        let n = reader.read_buf(&mut buf).await.map_err(read_error)?;
        if n == 0 {
            break;
        }
        *bytes += n as u64;
    }
    Ok(buf)
}

type PartResult = Result<PartReceipt>;

async fn drive<R, F>(
    state: &mut UploadState,
    reader: &mut R,
    options: &UploadOptions,
    read_error: &F,
) -> Result<Uploaded>
where
    R: AsyncRead + Unpin,
    F: Fn(io::Error) -> Error,
{
    let target = state.target.clone();
    let schedule = options.schedule;
    let algorithm = options.checksum;

    let first_size = schedule.part_size(1);
    let first = fill(reader, first_size, &mut state.bytes, read_error).await?;
    if (first.len() as u64) < first_size {
        let body = first.freeze();
        let checksum = algorithm.checksum(&body);
        let bytes = body.len() as u64;
        let outcome = target.put(body, checksum, options.if_none_match).await?;
        verify(target.as_ref(), &outcome, &checksum)?;
        return Ok(Uploaded {
            outcome,
            bytes,
            parts: 1,
            checksum,
        });
    }

    let upload_id = target.create_multipart(algorithm).await?;
    state.upload_id = Some(upload_id.clone());
    tracing::debug!(%upload_id, "multipart upload created");

    let mut in_flight: JoinSet<PartResult> = JoinSet::new();
    let mut done: Vec<PartReceipt> = Vec::new();
    let mut part = first.freeze();
    let mut part_number: u32 = 1;
    loop {
        spawn_part(
            &mut in_flight,
            &target,
            &upload_id,
            part_number,
            part,
            algorithm,
        );
        while let Some(finished) = in_flight.try_join_next() {
            done.push(joined(finished, &target)?);
        }

        let next_number = part_number + 1;
        let size = schedule.part_size(next_number);
        // Backpressure: the next buffer is allocated only when a slot is free.
        while in_flight.len() >= schedule.max_in_flight(size) {
            if let Some(finished) = in_flight.join_next().await {
                done.push(joined(finished, &target)?);
            }
        }
        let next = fill(reader, size, &mut state.bytes, read_error).await?;
        if next.is_empty() {
            break;
        }
        if next_number > MAX_PARTS {
            let (bucket, key) = target.describe();
            return Err(Error::TooManyParts {
                bucket,
                key,
                bytes: state.bytes,
            });
        }
        let last = (next.len() as u64) < size;
        part = next.freeze();
        part_number = next_number;
        if last {
            spawn_part(
                &mut in_flight,
                &target,
                &upload_id,
                part_number,
                part,
                algorithm,
            );
            break;
        }
    }
    while let Some(finished) = in_flight.join_next().await {
        done.push(joined(finished, &target)?);
    }

    done.sort_by_key(|p| p.part_number);
    debug_assert!(
        done.iter()
            .enumerate()
            .all(|(i, p)| p.part_number == i as i32 + 1)
    );
    let checksum = done
        .iter()
        .fold(algorithm.empty(), |acc, p| acc.append(p.checksum));
    let parts = done.len() as u32;
    let outcome = target
        .complete_multipart(&upload_id, done, checksum, options.if_none_match)
        .await?;
    match &outcome {
        PutOutcome::Written { .. } => {
            state.upload_id = None;
            verify(target.as_ref(), &outcome, &checksum)?;
        }
        // The object appeared meanwhile; our upload is still open and gets aborted.
        PutOutcome::AlreadyExists => {
            abort_and_verify(target.as_ref(), &upload_id).await;
            state.upload_id = None;
        }
    }
    Ok(Uploaded {
        outcome,
        bytes: state.bytes,
        parts,
        checksum,
    })
}

fn spawn_part(
    in_flight: &mut JoinSet<PartResult>,
    target: &Arc<dyn ObjectTarget>,
    upload_id: &str,
    part_number: u32,
    body: Bytes,
    algorithm: ChecksumAlgorithm,
) {
    let target = target.clone();
    let upload_id = upload_id.to_owned();
    in_flight.spawn(async move {
        // Checksums are computed on the part's task so they run beside the reader.
        let checksum = algorithm.checksum(&body);
        target
            .upload_part(&upload_id, part_number as i32, body, checksum)
            .await
    });
}

fn joined(
    finished: std::result::Result<PartResult, tokio::task::JoinError>,
    target: &Arc<dyn ObjectTarget>,
) -> Result<PartReceipt> {
    finished.unwrap_or_else(|join| {
        let (bucket, key) = target.describe();
        Err(Error::S3 {
            operation: S3Operation::UploadPart,
            bucket,
            key,
            part_number: None,
            message: format!("part task failed: {join}"),
            retryable: false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{MIN_PART_SIZE, MemoryBudget};
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Put(usize),
        Create,
        Part(i32, usize),
        Complete(Vec<i32>),
        Abort,
    }

    /// Records every call; fails the calls it is told to.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<Call>>,
        objects: Mutex<BTreeMap<String, Vec<u8>>>,
        parts: Mutex<BTreeMap<i32, Bytes>>,
        fail_part: Option<i32>,
        part_delay_ms: u64,
        open_uploads: AtomicUsize,
        in_flight: AtomicUsize,
        max_in_flight_seen: AtomicUsize,
        corrupt_checksum: bool,
    }

    impl Fake {
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
        fn record(&self, c: Call) {
            self.calls.lock().unwrap().push(c);
        }
    }

    struct Shared(Arc<Fake>);

    impl ObjectTarget for Shared {
        fn describe(&self) -> (String, String) {
            ("bucket".into(), "key".into())
        }
        fn put(
            &self,
            body: Bytes,
            checksum: Crc,
            _: bool,
        ) -> BoxFuture<'static, Result<PutOutcome>> {
            let f = self.0.clone();
            async move {
                f.record(Call::Put(body.len()));
                f.objects
                    .lock()
                    .unwrap()
                    .insert("key".into(), body.to_vec());
                Ok(PutOutcome::Written {
                    e_tag: "e".into(),
                    checksum: Some(checksum.to_base64()),
                })
            }
            .boxed()
        }
        fn create_multipart(&self, _: ChecksumAlgorithm) -> BoxFuture<'static, Result<String>> {
            let f = self.0.clone();
            async move {
                f.record(Call::Create);
                f.open_uploads.fetch_add(1, Ordering::SeqCst);
                Ok("upload-1".into())
            }
            .boxed()
        }
        fn upload_part(
            &self,
            _: &str,
            n: i32,
            body: Bytes,
            checksum: Crc,
        ) -> BoxFuture<'static, Result<PartReceipt>> {
            let f = self.0.clone();
            async move {
                let now = f.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                f.max_in_flight_seen.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(f.part_delay_ms)).await;
                f.in_flight.fetch_sub(1, Ordering::SeqCst);
                f.record(Call::Part(n, body.len()));
                if f.fail_part == Some(n) {
                    return Err(Error::S3 {
                        operation: S3Operation::UploadPart,
                        bucket: "bucket".into(),
                        key: "key".into(),
                        part_number: Some(n),
                        message: "injected".into(),
                        retryable: true,
                    });
                }
                f.parts.lock().unwrap().insert(n, body);
                Ok(PartReceipt {
                    part_number: n,
                    e_tag: format!("e{n}"),
                    checksum,
                })
            }
            .boxed()
        }
        fn complete_multipart(
            &self,
            _: &str,
            parts: Vec<PartReceipt>,
            checksum: Crc,
            _: bool,
        ) -> BoxFuture<'static, Result<PutOutcome>> {
            let f = self.0.clone();
            async move {
                f.record(Call::Complete(
                    parts.iter().map(|p| p.part_number).collect(),
                ));
                let stored = f.parts.lock().unwrap();
                let whole: Vec<u8> = parts
                    .iter()
                    .flat_map(|p| stored[&p.part_number].to_vec())
                    .collect();
                f.objects.lock().unwrap().insert("key".into(), whole);
                f.open_uploads.fetch_sub(1, Ordering::SeqCst);
                let reported = if f.corrupt_checksum {
                    "AAAAAAAAAAE=".to_string()
                } else {
                    checksum.to_base64()
                };
                Ok(PutOutcome::Written {
                    e_tag: "e".into(),
                    checksum: Some(reported),
                })
            }
            .boxed()
        }
        fn abort_multipart(&self, _: &str) -> BoxFuture<'static, Result<()>> {
            let f = self.0.clone();
            async move {
                f.record(Call::Abort);
                if f.open_uploads.load(Ordering::SeqCst) > 0 {
                    f.open_uploads.fetch_sub(1, Ordering::SeqCst);
                }
                Ok(())
            }
            .boxed()
        }
        fn upload_exists(&self, _: &str) -> BoxFuture<'static, Result<bool>> {
            let f = self.0.clone();
            async move { Ok(f.open_uploads.load(Ordering::SeqCst) > 0) }.boxed()
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn opts() -> UploadOptions {
        UploadOptions::new(
            MemoryBudget::for_memory_mib(256)
                .with_part_size(MIN_PART_SIZE)
                .schedule(),
        )
    }

    fn io_err(e: io::Error) -> Error {
        Error::SourceRead {
            url: "test".into(),
            offset: 0,
            class: "read failed",
            message: e.to_string(),
        }
    }

    async fn run(fake: &Arc<Fake>, input: &[u8]) -> Result<Uploaded> {
        upload(Arc::new(Shared(fake.clone())), input, &opts(), io_err).await
    }

    const P: usize = MIN_PART_SIZE as usize;

    #[tokio::test]
    async fn small_stream_is_one_put() {
        let fake = Arc::new(Fake::default());
        let out = run(&fake, &data(1000)).await.unwrap();
        assert_eq!(fake.calls(), vec![Call::Put(1000)]);
        assert_eq!((out.parts, out.bytes), (1, 1000));
    }

    #[tokio::test]
    async fn empty_stream_is_a_zero_byte_put() {
        let fake = Arc::new(Fake::default());
        let out = run(&fake, &[]).await.unwrap();
        assert_eq!(fake.calls(), vec![Call::Put(0)]);
        assert_eq!(out.checksum.to_base64(), "AAAAAAAAAAA=");
    }

    #[tokio::test]
    async fn parts_are_contiguous_and_full_sized_but_the_last() {
        for len in [P, P + 1, 3 * P, 3 * P + 12_345] {
            let fake = Arc::new(Fake::default());
            let input = data(len);
            let out = run(&fake, &input).await.unwrap();
            let calls = fake.calls();
            let parts: BTreeMap<i32, usize> = calls
                .iter()
                .filter_map(|c| match c {
                    Call::Part(n, l) => Some((*n, *l)),
                    _ => None,
                })
                .collect();
            let expected_parts = len.div_ceil(P) as i32;
            assert_eq!(
                parts.keys().copied().collect::<Vec<_>>(),
                (1..=expected_parts).collect::<Vec<_>>()
            );
            for (n, l) in &parts {
                if *n < expected_parts {
                    assert_eq!(*l, P, "non-final part {n} of {len}");
                }
            }
            assert_eq!(
                calls.last(),
                Some(&Call::Complete((1..=expected_parts).collect()))
            );
            assert_eq!(fake.objects.lock().unwrap()["key"], input);
            assert_eq!(out.checksum, ChecksumAlgorithm::Crc64nvme.checksum(&input));
            assert_eq!(out.bytes, len as u64);
        }
    }

    #[tokio::test]
    async fn in_flight_parts_are_bounded() {
        let fake = Arc::new(Fake {
            part_delay_ms: 20,
            ..Fake::default()
        });
        run(&fake, &data(20 * P)).await.unwrap();
        let limit = opts().schedule.max_in_flight(MIN_PART_SIZE);
        let seen = fake.max_in_flight_seen.load(Ordering::SeqCst);
        assert!(seen <= limit && seen > 1, "seen {seen}, limit {limit}");
    }

    #[tokio::test]
    async fn failed_part_aborts_and_never_completes() {
        let fake = Arc::new(Fake {
            fail_part: Some(2),
            ..Fake::default()
        });
        let err = run(&fake, &data(4 * P)).await.unwrap_err();
        assert!(err.to_string().contains("UploadPart (part 2)"), "{err}");
        let calls = fake.calls();
        assert!(calls.contains(&Call::Abort));
        assert!(!calls.iter().any(|c| matches!(c, Call::Complete(_))));
        assert_eq!(fake.open_uploads.load(Ordering::SeqCst), 0);
    }

    /// A reader that yields `good` bytes and then fails.
    struct Failing {
        left: Vec<u8>,
    }

    impl AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if self.left.is_empty() {
                return std::task::Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "reset",
                )));
            }
            let n = buf.remaining().min(self.left.len());
            let rest = self.left.split_off(n);
            buf.put_slice(&self.left);
            self.left = rest;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn source_error_after_every_byte_is_out_is_never_completed() {
        // Exactly two parts of data went out before the reader failed.
        let fake = Arc::new(Fake::default());
        let reader = Failing { left: data(2 * P) };
        let err = upload(Arc::new(Shared(fake.clone())), reader, &opts(), io_err)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::SourceRead { .. }), "{err}");
        let calls = fake.calls();
        assert!(calls.contains(&Call::Abort));
        assert!(!calls.iter().any(|c| matches!(c, Call::Complete(_))));
        // And a failure before the first part fills never creates an upload.
        let fake = Arc::new(Fake::default());
        let reader = Failing { left: data(100) };
        upload(Arc::new(Shared(fake.clone())), reader, &opts(), io_err)
            .await
            .unwrap_err();
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn checksum_mismatch_is_an_error() {
        let fake = Arc::new(Fake {
            corrupt_checksum: true,
            ..Fake::default()
        });
        let err = run(&fake, &data(2 * P)).await.unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    }

    #[tokio::test]
    async fn deadline_aborts() {
        let fake = Arc::new(Fake {
            part_delay_ms: 10_000,
            ..Fake::default()
        });
        let mut o = opts();
        o.deadline = Some(Instant::now() + Duration::from_millis(200));
        let err = upload(Arc::new(Shared(fake.clone())), &data(3 * P)[..], &o, io_err)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Deadline { .. }), "{err}");
        assert!(fake.calls().contains(&Call::Abort));
        assert_eq!(fake.open_uploads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn dropped_upload_is_aborted() {
        let fake = Arc::new(Fake {
            part_delay_ms: 10_000,
            ..Fake::default()
        });
        let target: Arc<dyn ObjectTarget> = Arc::new(Shared(fake.clone()));
        let input = data(3 * P);
        let o = opts();
        let fut = upload(target, &input[..], &o, io_err);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), fut)
                .await
                .is_err()
        );
        for _ in 0..50 {
            if fake.calls().contains(&Call::Abort) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(fake.calls().contains(&Call::Abort));
    }
}
