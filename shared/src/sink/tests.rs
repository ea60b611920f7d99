//! Fakes that record and fakes that fail, to prove that only `finish` completes an object.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::*;
use crate::budget::{MIN_PART_SIZE, MemoryBudget};
use crate::checksum::{ChecksumAlgorithm, Crc};
use crate::codec::{Codec, Compression};
use crate::error::S3Operation;
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
    /// `PutObject` / `CompleteMultipartUpload` store the object at once but answer this late,
    /// as a server that did the work and then was slow to say so.
    commit_answer_delay_ms: u64,
    /// `PutObject` / `CompleteMultipartUpload` never land and never answer.
    commit_hangs: bool,
    /// `AbortMultipartUpload` and `ListParts` never answer.
    abort_hangs: bool,
    /// Full-object checksums of stored objects, as `HeadObject` reports them.
    checksums: Mutex<BTreeMap<String, String>>,
    /// When this part is sent, another writer completes the key and the server removes this
    /// upload with it (as Garage does): the part fails as `NoSuchUpload`.
    overtaken_at_part: Option<i32>,
    /// Parts are copied into this (at `(n - 1) × P`) and their bodies released, as a real
    /// server's request ends; `CompleteMultipartUpload` then stores nothing.
    assembled: Option<Mutex<Vec<u8>>>,
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
    fn put(&self, body: Bytes, checksum: Crc, _: bool) -> BoxFuture<'static, Result<PutOutcome>> {
        let f = self.0.clone();
        async move {
            f.record(Call::Put(body.len()));
            if f.commit_hangs {
                std::future::pending::<()>().await;
            }
            f.objects
                .lock()
                .unwrap()
                .insert("key".into(), body.to_vec());
            f.checksums
                .lock()
                .unwrap()
                .insert("key".into(), checksum.to_base64());
            tokio::time::sleep(Duration::from_millis(f.commit_answer_delay_ms)).await;
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
            if f.overtaken_at_part == Some(n) {
                f.objects
                    .lock()
                    .unwrap()
                    .insert("key".into(), b"theirs".to_vec());
                f.open_uploads.store(0, Ordering::SeqCst);
            }
            if f.fail_part == Some(n) || f.overtaken_at_part == Some(n) {
                return Err(Error::S3 {
                    operation: S3Operation::UploadPart,
                    bucket: "bucket".into(),
                    key: "key".into(),
                    part_number: Some(n),
                    message: "injected".into(),
                    retryable: true,
                });
            }
            if let Some(assembled) = &f.assembled {
                let at = (n as usize - 1) * P;
                assembled.lock().unwrap()[at..at + body.len()].copy_from_slice(&body);
            } else {
                f.parts.lock().unwrap().insert(n, body);
            }
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
            if f.commit_hangs {
                std::future::pending::<()>().await;
            }
            let whole: Vec<u8> = if f.assembled.is_some() {
                Vec::new()
            } else {
                let stored = f.parts.lock().unwrap();
                parts
                    .iter()
                    .flat_map(|p| stored[&p.part_number].to_vec())
                    .collect()
            };
            f.objects.lock().unwrap().insert("key".into(), whole);
            f.checksums
                .lock()
                .unwrap()
                .insert("key".into(), checksum.to_base64());
            f.open_uploads.fetch_sub(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(f.commit_answer_delay_ms)).await;
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
            if f.abort_hangs {
                std::future::pending::<()>().await;
            }
            if f.open_uploads.load(Ordering::SeqCst) > 0 {
                f.open_uploads.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(())
        }
        .boxed()
    }
    fn upload_exists(&self, _: &str) -> BoxFuture<'static, Result<bool>> {
        let f = self.0.clone();
        async move {
            if f.abort_hangs {
                std::future::pending::<()>().await;
            }
            Ok(f.open_uploads.load(Ordering::SeqCst) > 0)
        }
        .boxed()
    }
    fn head(&self) -> BoxFuture<'static, Result<Option<ObjectHead>>> {
        let f = self.0.clone();
        async move {
            let size = f.objects.lock().unwrap().get("key").map(Vec::len);
            Ok(size.map(|size| ObjectHead {
                size: size as u64,
                e_tag: Some("e".into()),
                crc64nvme: f.checksums.lock().unwrap().get("key").cloned(),
                crc32c: None,
            }))
        }
        .boxed()
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

/// Input that is there at once and uploads that take 20 ms: the writer waits on the network,
/// so the window grows to the budget's limit and no further.
#[tokio::test(start_paused = true)]
async fn in_flight_parts_grow_to_the_limit_when_uploads_are_slow() {
    let fake = Arc::new(Fake {
        part_delay_ms: 20,
        ..Fake::default()
    });
    // 128 MB: a limit of five, reached after 2 + 3 + 4 + 5 parts (one step per round of waits).
    // The clock is paused, so the process's CPU time says nothing about these waits: not
    // checked (`window_stays_while_the_process_is_cpu_bound` covers that).
    let o = UploadOptions::new(
        MemoryBudget::for_memory_mib(128)
            .with_part_size(MIN_PART_SIZE)
            .with_vcpu_millis(0)
            .schedule(),
    );
    let input = data(20 * P);
    upload(Arc::new(Shared(fake.clone())), &input[..], &o, io_err)
        .await
        .unwrap();
    assert_eq!(fake.objects.lock().unwrap()["key"], input);
    let limit = o.schedule.max_in_flight(MIN_PART_SIZE);
    let seen = fake.max_in_flight_seen.load(Ordering::SeqCst);
    assert!(limit > 2 && limit < 8, "limit {limit}");
    assert_eq!(seen, limit, "seen {seen}, limit {limit}");
}

/// A source that fills a part in 40 ms and uploads that take 44 ms: the writer waits 4 ms at
/// most for a slot, which one more buffer would not buy back, so it keeps two (one uploading
/// while one fills) where the fixed limit allowed seven.
#[tokio::test(start_paused = true)]
async fn in_flight_parts_stay_two_when_the_source_is_the_limit() {
    let fake = Arc::new(Fake {
        part_delay_ms: 44,
        ..Fake::default()
    });
    let input = data(12 * P);
    let mut w = writer(&fake, None);
    for chunk in input.chunks(P / 4) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    w.finish().await.unwrap();
    assert_eq!(fake.objects.lock().unwrap()["key"], input);
    let seen = fake.max_in_flight_seen.load(Ordering::SeqCst);
    assert_eq!(seen, 2, "seen {seen}");
}

/// A writer that waits for its uploads gets the finished part's buffer, once the request has
/// let go of it, for the next part: two buffers for the whole object instead of one fresh
/// allocation (whose pages must be faulted in and zeroed) per part. A body the target still
/// holds is never reused (the other tests' fake keeps them all and gets every byte back).
#[test]
fn finished_part_buffers_are_reused_while_the_writer_waits() {
    let input = data(12 * P);
    let fake = Arc::new(Fake {
        assembled: Some(Mutex::new(vec![0; input.len()])),
        part_delay_ms: 5,
        ..Fake::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let allocated = crate::source::http::state::alloc_meter::allocations_of_at_least(P, || {
        rt.block_on(async {
            let mut w = writer(&fake, None);
            for chunk in input.chunks(P / 4) {
                w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
            }
            w.finish().await.unwrap();
        });
    });
    assert_eq!(*fake.assembled.as_ref().unwrap().lock().unwrap(), input);
    assert!(
        allocated <= 3,
        "{allocated} part buffers allocated for 12 parts"
    );
}

#[test]
fn window_grows_only_on_long_waits_and_within_its_limit() {
    let mut w = parts::Window::new(4, 0);
    assert_eq!(w.slots(), 2);
    // No part filled yet: any wait grows it.
    w.waited(Duration::from_millis(1));
    assert_eq!(w.slots(), 3);
    w.limit(2);
    assert_eq!(w.slots(), 2);
    w.waited(Duration::from_secs(1));
    assert_eq!(w.slots(), 2, "never past the limit");
    assert_eq!(parts::Window::new(1, 0).slots(), 1);
    assert_eq!(parts::Window::new(0, 0).slots(), 1);
}

/// A 256 MB function (0.144 vCPU) that waits long for slots: it grows while its waits leave
/// the CPU idle, not while it used its whole share, and never on a span too short to tell.
#[tokio::test(start_paused = true)]
async fn window_stays_while_the_process_is_cpu_bound() {
    let mut w = parts::Window::new(6, 144);
    let start = tokio::time::Instant::now();
    let wait = Duration::from_millis(90);
    let at = |ms: u64| start + Duration::from_millis(ms);
    let cpu = |ms: u64| Some(Duration::from_millis(ms));
    // The first long wait begins the span; one 200 ms later is too early to say.
    w.waited_at(wait, at(100), cpu(14));
    w.waited_at(wait, at(300), cpu(15));
    assert_eq!(w.slots(), 2);
    // 400 ms in which the process used 46 ms: more than half its share (57.6 ms), CPU-bound.
    w.waited_at(wait, at(500), cpu(60));
    assert_eq!(w.slots(), 2);
    // The next 300 ms used 10 ms of the 43.2 its share allows: waiting on the network.
    w.waited_at(wait, at(800), cpu(70));
    assert_eq!(w.slots(), 3);
    // A short wait never grows it, idle or not.
    w.waited_at(Duration::ZERO, at(1200), cpu(71));
    assert_eq!(w.slots(), 3);
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
async fn dropped_copy_is_aborted() {
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

/// Random bytes: they do not compress, so a compressed stream still spans parts.
fn noise(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn writer(fake: &Arc<Fake>, compression: Option<Compression>) -> ObjectWriter {
    let mut o = opts();
    o.compression = compression;
    ObjectWriter::new(Arc::new(Shared(fake.clone())), &o).unwrap()
}

fn assert_aborted_never_completed(fake: &Fake) {
    let calls = fake.calls();
    assert!(calls.contains(&Call::Create), "{calls:?}");
    assert!(calls.contains(&Call::Abort), "{calls:?}");
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Complete(_) | Call::Put(_))),
        "{calls:?}"
    );
    assert_eq!(fake.open_uploads.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn pushed_bytes_round_trip_through_every_compression() {
    let input = noise(2 * P + 777);
    for compression in [
        None,
        Some(Compression::new(Codec::Gzip)),
        Some(Compression::new(Codec::Zstd)),
    ] {
        let fake = Arc::new(Fake::default());
        let mut w = writer(&fake, compression);
        for piece in input.chunks(100_003) {
            w.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        let out = w.finish().await.unwrap();
        let stored = fake.objects.lock().unwrap()["key"].clone();
        assert_eq!(out.bytes, stored.len() as u64);
        let mut plain = Vec::new();
        let mut decoder =
            crate::codec::Decoding::sniff(&stored).decoder(std::io::Cursor::new(stored));
        tokio::io::AsyncReadExt::read_to_end(&mut decoder, &mut plain)
            .await
            .unwrap();
        assert!(plain == input, "{compression:?}");
    }
}

#[tokio::test]
async fn nothing_is_sent_until_a_part_fills_or_finish() {
    let fake = Arc::new(Fake::default());
    let mut w = writer(&fake, None);
    w.write(Bytes::from(data(P - 1))).await.unwrap();
    assert!(fake.calls().is_empty());
    w.write(Bytes::from(data(1))).await.unwrap();
    assert_eq!(fake.calls()[0], Call::Create);
}

#[tokio::test]
async fn dropped_writer_is_aborted_before_settle_returns() {
    for compression in [None, Some(Compression::new(Codec::Gzip))] {
        let fake = Arc::new(Fake::default());
        let mut w = writer(&fake, compression);
        w.write(Bytes::from(noise(2 * P))).await.unwrap();
        drop(w);
        settle_aborts().await;
        assert_aborted_never_completed(&fake);
    }
}

/// Regression: a producer that panicked used to look like the end of the input, and the
/// object was completed with what had arrived.
#[tokio::test]
async fn producer_panic_aborts_and_never_completes() {
    for compression in [None, Some(Compression::new(Codec::Zstd))] {
        let fake = Arc::new(Fake::default());
        let mut w = writer(&fake, compression);
        let producer = tokio::spawn(async move {
            w.write(Bytes::from(noise(2 * P))).await.unwrap();
            if std::hint::black_box(true) {
                panic!("producer bug");
            }
            w.finish().await
        });
        let joined = producer.await;
        assert!(joined.unwrap_err().is_panic());
        settle_aborts().await;
        assert_aborted_never_completed(&fake);
    }
}

#[tokio::test]
async fn explicit_abort_leaves_nothing() {
    let fake = Arc::new(Fake::default());
    let mut w = writer(&fake, Some(Compression::new(Codec::Gzip)));
    w.write(Bytes::from(noise(3 * P))).await.unwrap();
    w.abort().await;
    assert_aborted_never_completed(&fake);
}

#[tokio::test]
async fn failed_part_in_a_compressing_writer_fails_the_writes_or_finish() {
    let fake = Arc::new(Fake {
        fail_part: Some(1),
        ..Fake::default()
    });
    let mut w = writer(&fake, Some(Compression::new(Codec::Gzip)));
    let mut failed = None;
    for piece in noise(4 * P).chunks(P / 2) {
        if let Err(e) = w.write(Bytes::copy_from_slice(piece)).await {
            failed = Some(e);
            break;
        }
    }
    let err = match failed {
        Some(e) => e,
        None => w.finish().await.unwrap_err(),
    };
    assert!(err.to_string().contains("UploadPart (part 1)"), "{err}");
    assert_aborted_never_completed(&fake);
}

/// Regression: after the deadline, the abort and its `ListParts` checks had no time limit of
/// their own (5 SDK attempts of 120 s each, 4 rounds), so a function could be killed by Lambda
/// before it answered. They now stop `CLEANUP_GRACE` past the deadline.
#[tokio::test(start_paused = true)]
async fn abort_that_never_answers_stops_within_the_cleanup_grace() {
    let fake = Arc::new(Fake {
        part_delay_ms: 600_000,
        abort_hangs: true,
        ..Fake::default()
    });
    let mut o = opts();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(200);
    o.deadline = Some(deadline);
    let err = upload(Arc::new(Shared(fake.clone())), &data(3 * P)[..], &o, io_err)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Deadline { .. }), "{err}");
    assert!(fake.calls().contains(&Call::Abort));
    // Virtual time: exact, not a timing guess.
    let took = Instant::now() - started;
    assert!(
        took <= Duration::from_millis(200) + CLEANUP_GRACE + Duration::from_millis(10),
        "took {took:?}"
    );
}

/// Regression: a deadline that fired while `CompleteMultipartUpload` or `PutObject` was in
/// flight was reported as "nothing written", though the server had already written the object.
/// Now `HeadObject` decides: the object is there with this writer's checksum, so it is written.
#[tokio::test(start_paused = true)]
async fn deadline_during_a_completing_request_that_lands_reports_written() {
    for (len, compression) in [
        (3 * P, None),
        (1000, None),
        (3 * P, Some(Compression::new(Codec::Gzip))),
    ] {
        let fake = Arc::new(Fake {
            commit_answer_delay_ms: 600_000,
            ..Fake::default()
        });
        let mut o = opts();
        o.deadline = Some(Instant::now() + Duration::from_millis(200));
        o.compression = compression;
        let mut w = ObjectWriter::new(Arc::new(Shared(fake.clone())), &o).unwrap();
        let input = noise(len);
        w.write(Bytes::from(input.clone())).await.unwrap();
        let out = w.finish().await.unwrap();
        let stored = fake.objects.lock().unwrap()["key"].clone();
        assert!(matches!(out.outcome, PutOutcome::Written { .. }), "{out:?}");
        assert_eq!(out.bytes, stored.len() as u64);
        assert_eq!(out.checksum, ChecksumAlgorithm::Crc64nvme.checksum(&stored));
        if compression.is_none() {
            assert!(stored == input, "{len}");
        }
        assert_eq!(fake.open_uploads.load(Ordering::SeqCst), 0);
    }
}

/// The other side: the completing request never landed, so nothing was written, and the
/// upload is aborted.
#[tokio::test(start_paused = true)]
async fn deadline_during_a_completing_request_that_never_lands_is_nothing_written() {
    for len in [3 * P, 1000] {
        let fake = Arc::new(Fake {
            commit_hangs: true,
            ..Fake::default()
        });
        let mut o = opts();
        o.deadline = Some(Instant::now() + Duration::from_millis(200));
        let err = upload(Arc::new(Shared(fake.clone())), &data(len)[..], &o, io_err)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Deadline { .. }), "{len}: {err}");
        assert!(fake.objects.lock().unwrap().is_empty());
        assert_eq!(fake.open_uploads.load(Ordering::SeqCst), 0);
    }
}

/// An object with other bytes at the key (another writer's) is not ours: nothing written.
#[tokio::test(start_paused = true)]
async fn deadline_during_a_put_with_someone_elses_object_is_nothing_written() {
    let fake = Arc::new(Fake {
        commit_hangs: true,
        ..Fake::default()
    });
    fake.objects
        .lock()
        .unwrap()
        .insert("key".into(), vec![1; 1000]);
    fake.checksums
        .lock()
        .unwrap()
        .insert("key".into(), "AAAAAAAAAAE=".into());
    let mut o = opts();
    o.deadline = Some(Instant::now() + Duration::from_millis(200));
    let err = upload(Arc::new(Shared(fake.clone())), &data(1000)[..], &o, io_err)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Deadline { .. }), "{err}");
}

/// Of two writers racing under `If-None-Match: *`, the one whose upload the server removed
/// when the other completed ends as "already exists", never as an error and never completed;
/// without the condition the same failure is an error.
#[tokio::test]
async fn an_upload_removed_when_another_writer_completes_is_already_exists() {
    for if_none_match in [true, false] {
        let fake = Arc::new(Fake {
            overtaken_at_part: Some(2),
            ..Fake::default()
        });
        let mut o = opts();
        o.if_none_match = if_none_match;
        let result = upload(Arc::new(Shared(fake.clone())), &data(6 * P)[..], &o, io_err).await;
        let calls = fake.calls();
        assert!(
            !calls.iter().any(|c| matches!(c, Call::Complete(_))),
            "{calls:?}"
        );
        assert_eq!(fake.objects.lock().unwrap()["key"], b"theirs");
        match result {
            Ok(out) => {
                assert!(if_none_match, "completed without the condition: {out:?}");
                assert_eq!(out.outcome, PutOutcome::AlreadyExists);
            }
            Err(e) => {
                assert!(!if_none_match, "an error under If-None-Match: {e}");
                assert!(e.to_string().contains("UploadPart (part 2)"), "{e}");
            }
        }
    }
}

/// Decodes `stored` as its magic bytes say (every gzip member, every zstd frame).
async fn decoded(stored: Vec<u8>) -> Vec<u8> {
    let mut plain = Vec::new();
    let mut decoder = crate::codec::Decoding::sniff(&stored).decoder(std::io::Cursor::new(stored));
    tokio::io::AsyncReadExt::read_to_end(&mut decoder, &mut plain)
        .await
        .unwrap();
    plain
}

/// A writer suspended mid-way and another resuming its upload give one object of all the
/// input, as one writer would: one upload, parts numbered on, nothing completed or aborted
/// at the suspension, the full-object checksum of the whole, and (compressed) one valid
/// stream of two gzip members or zstd frames.
#[tokio::test]
async fn suspended_upload_resumes_into_one_object() {
    let input = noise(5 * P + 12_345);
    let cut = 2 * P + P / 3;
    for compression in [
        None,
        Some(Compression::new(Codec::Gzip)),
        Some(Compression::new(Codec::Zstd)),
    ] {
        let fake = Arc::new(Fake::default());
        let mut o = opts();
        o.compression = compression;
        let mut first = ObjectWriter::new(Arc::new(Shared(fake.clone())), &o).unwrap();
        for piece in input[..cut].chunks(100_003) {
            first.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        let suspended = first.suspend().await.unwrap();
        settle_aborts().await;
        let calls = fake.calls();
        assert!(
            !calls
                .iter()
                .any(|c| matches!(c, Call::Complete(_) | Call::Abort | Call::Put(_))),
            "{compression:?}: {calls:?}"
        );
        assert_eq!(fake.open_uploads.load(Ordering::SeqCst), 1);
        assert!((suspended.tail.len() as u64) < MIN_PART_SIZE);
        let parts = suspended.parts.len();
        assert!(parts >= 1, "{compression:?}");

        let mut second =
            ObjectWriter::resume(Arc::new(Shared(fake.clone())), &o, suspended).unwrap();
        for piece in input[cut..].chunks(100_003) {
            second.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        let out = second.finish().await.unwrap();
        let calls = fake.calls();
        assert_eq!(
            calls.iter().filter(|c| **c == Call::Create).count(),
            1,
            "{calls:?}"
        );
        let stored = fake.objects.lock().unwrap()["key"].clone();
        assert_eq!(out.bytes, stored.len() as u64);
        assert_eq!(out.checksum, ChecksumAlgorithm::Crc64nvme.checksum(&stored));
        assert!(decoded(stored).await == input, "{compression:?}");
        assert_eq!(fake.open_uploads.load(Ordering::SeqCst), 0);
    }
}

/// A resumed upload held for its checkpoint is left open by every way a writer can fail
/// (dropped, aborted, a failed part), and carried over by a suspension; one not held is
/// aborted, as any other.
#[tokio::test]
async fn a_held_upload_is_left_open_when_its_writer_fails() {
    async fn suspended_upload(fake: &Arc<Fake>, held: bool) -> Suspended {
        let mut first = writer(fake, None);
        first.write(Bytes::from(data(2 * P + 10))).await.unwrap();
        let mut suspended = first.suspend().await.unwrap();
        assert!(!suspended.held, "a writer's own suspension is not held");
        suspended.held = held;
        suspended
    }
    for held in [true, false] {
        // Dropped without a finish.
        let fake = Arc::new(Fake::default());
        let s = suspended_upload(&fake, held).await;
        let mut w = ObjectWriter::resume(Arc::new(Shared(fake.clone())), &opts(), s).unwrap();
        w.write(Bytes::from(data(P + 1))).await.unwrap();
        drop(w);
        settle_aborts().await;
        assert_eq!(
            fake.calls().contains(&Call::Abort),
            !held,
            "dropped, held {held}"
        );
        // Aborted on purpose.
        let fake = Arc::new(Fake::default());
        let s = suspended_upload(&fake, held).await;
        let w = ObjectWriter::resume(Arc::new(Shared(fake.clone())), &opts(), s).unwrap();
        w.abort().await;
        assert_eq!(
            fake.calls().contains(&Call::Abort),
            !held,
            "aborted, held {held}"
        );
        // A part fails; suspended again first, the hold goes with it.
        let fake = Arc::new(Fake {
            fail_part: Some(4),
            ..Fake::default()
        });
        let s = suspended_upload(&fake, held).await;
        let w = ObjectWriter::resume(Arc::new(Shared(fake.clone())), &opts(), s).unwrap();
        let again = w.suspend().await.unwrap();
        assert_eq!(again.held, held);
        let mut w = ObjectWriter::resume(Arc::new(Shared(fake.clone())), &opts(), again).unwrap();
        w.write(Bytes::from(data(2 * P))).await.unwrap_or(());
        assert!(w.finish().await.is_err(), "part 4 fails");
        settle_aborts().await;
        assert_eq!(
            fake.calls().contains(&Call::Abort),
            !held,
            "failed part, held {held}"
        );
        assert_eq!(fake.open_uploads.load(Ordering::SeqCst), usize::from(held));
    }
}

/// Less than a part before the suspension: no upload was started, the tail is everything,
/// and the resumed writer may still end in one `PutObject`.
#[tokio::test]
async fn suspended_before_the_first_part_has_only_a_tail() {
    let fake = Arc::new(Fake::default());
    let mut w = writer(&fake, None);
    w.write(Bytes::from(data(1000))).await.unwrap();
    let suspended = w.suspend().await.unwrap();
    assert_eq!(suspended.upload_id, None);
    assert_eq!(suspended.bytes, 1000);
    assert_eq!(suspended.tail.len(), 1000);
    assert!(fake.calls().is_empty());
    let mut w = ObjectWriter::resume(Arc::new(Shared(fake.clone())), &opts(), suspended).unwrap();
    w.write(Bytes::from(data(500))).await.unwrap();
    let out = w.finish().await.unwrap();
    assert_eq!(out.bytes, 1500);
    assert_eq!(fake.calls(), vec![Call::Put(1500)]);
}

/// A suspended state that cannot be continued is refused before anything is sent.
#[tokio::test]
async fn resume_refuses_a_state_it_cannot_continue() {
    let receipt = |n: i32| PartReceipt {
        part_number: n,
        e_tag: format!("e{n}"),
        checksum: ChecksumAlgorithm::Crc64nvme.checksum(b"x"),
    };
    let cases = [
        (
            Some("u"),
            vec![receipt(1), receipt(3)],
            100,
            0,
            "not numbered",
        ),
        (None, vec![receipt(1)], 100, 0, "no upload id"),
        (
            Some("u"),
            vec![receipt(1)],
            2 * P as u64,
            P,
            "not smaller than a part",
        ),
        (None, vec![], 10, 20, "does not cover its tail"),
    ];
    for (upload_id, parts, bytes, tail, expected) in cases {
        let fake = Arc::new(Fake::default());
        let suspended = Suspended {
            upload_id: upload_id.map(str::to_owned),
            parts,
            bytes,
            tail: Bytes::from(vec![0; tail]),
            held: false,
        };
        let err = ObjectWriter::resume(Arc::new(Shared(fake.clone())), &opts(), suspended)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(fake.calls().is_empty());
    }
}
