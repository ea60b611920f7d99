//! The multipart sink against real S3 servers: Garage (verifies part and full-object
//! checksums) and moto (enforces the 5 MiB minimum part size).

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use sluice::MemoryBudget;
use sluice::checksum::{ChecksumAlgorithm, Crc};
use sluice::error::{Error, S3Operation};
use sluice::sink::{
    self, ObjectHead, ObjectTarget, PartReceipt, PutOutcome, S3Target, UploadOptions,
};
use sluice_tests::{S3Server, body_stream, expected_crc64nvme, read_object, uploads_in_progress};
use tokio_util::io::StreamReader;

const MIB: u64 = 1024 * 1024;

fn options(part_size: u64) -> UploadOptions {
    UploadOptions::new(
        MemoryBudget::for_memory_mib(256)
            .with_part_size(part_size)
            .schedule(),
    )
}

fn read_err(e: std::io::Error) -> Error {
    Error::SourceRead {
        url: "generated".into(),
        offset: 0,
        class: "read failed",
        message: e.to_string(),
    }
}

async fn put_generated(
    server: &S3Server,
    bucket: &str,
    key: &str,
    size: u64,
    opts: &UploadOptions,
) -> sluice::Result<sink::Uploaded> {
    let client = server.client().await;
    let target = Arc::new(S3Target::new(client, bucket, key));
    let reader = StreamReader::new(Box::pin(body_stream(7, size)));
    sink::upload(target, reader, opts, read_err).await
}

/// Streams the object back and returns its CRC64NVME and length.
async fn crc_of_object(server: &S3Server, bucket: &str, key: &str) -> (u64, u64) {
    use tokio::io::AsyncReadExt;
    let client = server.client().await;
    let mut r = sluice_tests::object_stream(&client, bucket, key).await;
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        len += n as u64;
    }
    (digest.finalize(), len)
}

async fn single_put_and_empty(server: S3Server) {
    let bucket = server.fresh_bucket("sink-small").await.unwrap();
    let client = server.client().await;
    let out = put_generated(&server, &bucket, "small", 1000, &options(8 * MIB))
        .await
        .unwrap();
    assert_eq!((out.parts, out.bytes), (1, 1000));
    let body = read_object(&client, &bucket, "small").await;
    assert_eq!(body.len(), 1000);
    assert_eq!(ChecksumAlgorithm::Crc64nvme.checksum(&body), out.checksum);

    let out = put_generated(&server, &bucket, "empty", 0, &options(8 * MIB))
        .await
        .unwrap();
    assert_eq!(out.bytes, 0);
    assert!(read_object(&client, &bucket, "empty").await.is_empty());
}

#[tokio::test]
async fn garage_single_put_and_empty_object() {
    single_put_and_empty(S3Server::garage()).await;
}

#[tokio::test]
async fn moto_single_put_and_empty_object() {
    single_put_and_empty(S3Server::moto()).await;
}

async fn multipart_round_trip(server: S3Server, size: u64, part_size: u64) {
    let bucket = server.fresh_bucket("sink-multi").await.unwrap();
    let out = put_generated(&server, &bucket, "big", size, &options(part_size))
        .await
        .unwrap();
    assert_eq!(out.parts as u64, size.div_ceil(part_size));
    assert_eq!(out.bytes, size);
    let expected = expected_crc64nvme(7, size);
    assert_eq!(out.checksum.value(), expected);
    assert!(matches!(out.outcome, PutOutcome::Written { .. }));
    let (crc, len) = crc_of_object(&server, &bucket, "big").await;
    assert_eq!((crc, len), (expected, size), "object read back differs");
    let client = server.client().await;
    assert!(uploads_in_progress(&client, &bucket).await.is_empty());
}

#[tokio::test]
async fn garage_100_mib_passthrough_is_byte_identical() {
    multipart_round_trip(S3Server::garage(), 100 * MIB + 12_345, 8 * MIB).await;
}

#[tokio::test]
async fn moto_accepts_minimum_sized_parts() {
    // moto refuses non-final parts under 5 MiB, so this proves every non-final part is >= 5 MiB.
    multipart_round_trip(S3Server::moto(), 3 * 5 * MIB + 1, 5 * MIB).await;
}

#[tokio::test]
async fn garage_reports_the_full_object_checksum() {
    let server = S3Server::garage();
    let bucket = server.fresh_bucket("sink-crc").await.unwrap();
    let out = put_generated(&server, &bucket, "obj", 20 * MIB, &options(5 * MIB))
        .await
        .unwrap();
    let client = server.client().await;
    let head = client
        .head_object()
        .bucket(&bucket)
        .key("obj")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.checksum_crc64_nvme(),
        Some(out.checksum.to_base64().as_str())
    );
}

/// Delegates to S3 but fails one part, as a flaky network would after the SDK's retries.
struct FailingPart {
    inner: S3Target,
    fail: i32,
}

impl ObjectTarget for FailingPart {
    fn describe(&self) -> (String, String) {
        self.inner.describe()
    }
    fn put(&self, b: Bytes, c: Crc, n: bool) -> BoxFuture<'static, sluice::Result<PutOutcome>> {
        self.inner.put(b, c, n)
    }
    fn create_multipart(&self, a: ChecksumAlgorithm) -> BoxFuture<'static, sluice::Result<String>> {
        self.inner.create_multipart(a)
    }
    fn upload_part(
        &self,
        id: &str,
        n: i32,
        b: Bytes,
        c: Crc,
    ) -> BoxFuture<'static, sluice::Result<PartReceipt>> {
        if n == self.fail {
            let (bucket, key) = self.inner.describe();
            return async move {
                Err(Error::S3 {
                    operation: S3Operation::UploadPart,
                    bucket,
                    key,
                    part_number: Some(n),
                    message: "HTTP 503: SlowDown (injected)".into(),
                    retryable: true,
                })
            }
            .boxed();
        }
        self.inner.upload_part(id, n, b, c)
    }
    fn complete_multipart(
        &self,
        id: &str,
        p: Vec<PartReceipt>,
        c: Crc,
        n: bool,
    ) -> BoxFuture<'static, sluice::Result<PutOutcome>> {
        self.inner.complete_multipart(id, p, c, n)
    }
    fn abort_multipart(&self, id: &str) -> BoxFuture<'static, sluice::Result<()>> {
        self.inner.abort_multipart(id)
    }
    fn upload_exists(&self, id: &str) -> BoxFuture<'static, sluice::Result<bool>> {
        self.inner.upload_exists(id)
    }
    fn head(&self) -> BoxFuture<'static, sluice::Result<Option<ObjectHead>>> {
        self.inner.head()
    }
}

#[tokio::test]
async fn garage_part_failure_aborts_the_upload() {
    let server = S3Server::garage();
    let bucket = server.fresh_bucket("sink-fail").await.unwrap();
    let client = server.client().await;
    let target = Arc::new(FailingPart {
        inner: S3Target::new(client.clone(), &bucket, "partial"),
        fail: 3,
    });
    let reader = StreamReader::new(Box::pin(body_stream(7, 40 * MIB)));
    let err = sink::upload(target, reader, &options(5 * MIB), read_err)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UploadPart (part 3)"), "{err}");
    assert!(uploads_in_progress(&client, &bucket).await.is_empty());
    assert!(!sluice_tests::object_exists(&client, &bucket, "partial").await);
}

#[tokio::test]
async fn moto_no_overwrite_keeps_the_first_object() {
    // `If-None-Match: *` on PutObject and CompleteMultipartUpload, as AWS S3 implements it.
    // (Garage 2.5 ignores the header, so `ingest` also checks with HeadObject before starting.)
    let server = S3Server::moto();
    let bucket = server.fresh_bucket("sink-inm").await.unwrap();
    let mut opts = options(5 * MIB);
    opts.if_none_match = true;
    let first = put_generated(&server, &bucket, "k", 1000, &opts)
        .await
        .unwrap();
    assert!(matches!(first.outcome, PutOutcome::Written { .. }));
    let again = put_generated(&server, &bucket, "k", 10, &opts)
        .await
        .unwrap();
    assert_eq!(again.outcome, PutOutcome::AlreadyExists);
    let multi = put_generated(&server, &bucket, "k", 11 * MIB, &opts)
        .await
        .unwrap();
    assert_eq!(multi.outcome, PutOutcome::AlreadyExists);
    let (_, len) = crc_of_object(&server, &bucket, "k").await;
    assert_eq!(len, 1000);
    let client = server.client().await;
    assert!(uploads_in_progress(&client, &bucket).await.is_empty());
}

#[tokio::test]
async fn moto_state_write_refuses_a_lost_update() {
    // Two runs read the same state; the second to write must fail, not overwrite.
    let server = S3Server::moto();
    let bucket = server.fresh_bucket("state").await.unwrap();
    let client = server.client().await;
    let key = "state/job.json";
    let empty = sluice::source::http::state::read(&client, &bucket, key, "0")
        .await
        .unwrap();
    assert_eq!(
        (empty.watermark.as_str(), empty.e_tag.as_deref()),
        ("0", None)
    );
    sluice::source::http::state::write(&client, &bucket, key, &empty, "5", "run-a")
        .await
        .unwrap();
    // A second writer that also saw "no state" is refused.
    let err = sluice::source::http::state::write(&client, &bucket, key, &empty, "7", "run-b")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("changed by another run"), "{err}");
    let a = sluice::source::http::state::read(&client, &bucket, key, "0")
        .await
        .unwrap();
    let b = a.clone();
    sluice::source::http::state::write(&client, &bucket, key, &a, "9", "run-a")
        .await
        .unwrap();
    let err = sluice::source::http::state::write(&client, &bucket, key, &b, "8", "run-b")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("changed by another run"), "{err}");
    assert_eq!(
        sluice::source::http::state::read(&client, &bucket, key, "0")
            .await
            .unwrap()
            .watermark,
        "9"
    );
}

/// `HeadObject` reports the object's size and full-object checksum (what the sink compares
/// after a deadline dropped a completing request), for a multipart and a single-put object;
/// a missing key is `None`.
#[tokio::test]
async fn garage_head_reports_size_and_full_object_checksum() {
    let server = S3Server::garage();
    let bucket = server.fresh_bucket("sink-head").await.unwrap();
    let client = server.client().await;
    for (key, size) in [("multi", 12 * MIB + 5), ("single", 1000)] {
        let out = put_generated(&server, &bucket, key, size, &options(5 * MIB))
            .await
            .unwrap();
        let head = S3Target::new(client.clone(), &bucket, key)
            .head()
            .await
            .unwrap()
            .expect("the object exists");
        assert_eq!(head.size, size, "{key}");
        assert_eq!(
            head.checksum(ChecksumAlgorithm::Crc64nvme),
            Some(out.checksum.to_base64().as_str()),
            "{key}: {head:?}"
        );
    }
    let missing = S3Target::new(client, &bucket, "missing")
        .head()
        .await
        .unwrap();
    assert_eq!(missing, None);
}
