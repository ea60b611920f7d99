use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumType, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::checksum::{ChecksumAlgorithm, Crc};
use crate::error::{Error, Result, S3Operation};

/// Metadata set on the object when it is created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `Content-Type` of the object.
    pub content_type: Option<String>,
}

/// A part that S3 accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartReceipt {
    /// 1-based part number.
    pub part_number: i32,
    /// The part's ETag, echoed in `CompleteMultipartUpload`.
    pub e_tag: String,
    /// The part's checksum, as sent.
    pub checksum: Crc,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Written {
        /// The object's ETag.
        e_tag: String,
        /// The full-object checksum S3 reports (base64), when it reports one.
        checksum: Option<String>,
    },
    /// Writing with no-overwrite found an object already there; nothing was changed.
    AlreadyExists,
}

/// What `HeadObject` says about an object that exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectHead {
    /// Size in bytes.
    pub size: u64,
    /// The object's ETag.
    pub e_tag: Option<String>,
    /// Its full-object CRC64NVME (base64), when S3 reports one.
    pub crc64nvme: Option<String>,
    /// Its full-object CRC32C (base64), when S3 reports one.
    pub crc32c: Option<String>,
}

impl ObjectHead {
    /// The checksum S3 reports in `algorithm`, if any.
    pub fn checksum(&self, algorithm: ChecksumAlgorithm) -> Option<&str> {
        match algorithm {
            ChecksumAlgorithm::Crc64nvme => self.crc64nvme.as_deref(),
            ChecksumAlgorithm::Crc32c => self.crc32c.as_deref(),
        }
    }
}

/// One destination object and the calls that write it.
///
/// Implemented for S3 by [`S3Target`]; tests use fakes that record calls or fail on demand.
/// Every future is `'static` so parts can upload on spawned tasks.
pub trait ObjectTarget: Send + Sync + 'static {
    /// `s3://bucket/key`, for messages.
    fn describe(&self) -> (String, String);
    /// Writes `body` as the whole object in one request.
    fn put(
        &self,
        body: Bytes,
        checksum: Crc,
        if_none_match: bool,
    ) -> BoxFuture<'static, Result<PutOutcome>>;
    /// Starts a multipart upload with a full-object checksum; returns the upload id.
    fn create_multipart(&self, algorithm: ChecksumAlgorithm) -> BoxFuture<'static, Result<String>>;
    /// Uploads one part.
    fn upload_part(
        &self,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
        checksum: Crc,
    ) -> BoxFuture<'static, Result<PartReceipt>>;
    /// Completes the upload from `parts` (in order) with the full-object checksum.
    fn complete_multipart(
        &self,
        upload_id: &str,
        parts: Vec<PartReceipt>,
        checksum: Crc,
        if_none_match: bool,
    ) -> BoxFuture<'static, Result<PutOutcome>>;
    /// Aborts the upload. An upload that no longer exists counts as aborted.
    fn abort_multipart(&self, upload_id: &str) -> BoxFuture<'static, Result<()>>;
    /// Whether the upload still exists (parts may have landed after an abort).
    fn upload_exists(&self, upload_id: &str) -> BoxFuture<'static, Result<bool>>;
    /// The object as it is now (`HeadObject`, with its checksums), or `None` when there is
    /// none: used after a completing request was dropped, to learn whether it landed.
    fn head(&self) -> BoxFuture<'static, Result<Option<ObjectHead>>>;
}

/// An S3 object written through the AWS SDK.
#[derive(Debug, Clone)]
pub struct S3Target {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    meta: ObjectMeta,
    /// Bodies go without a SigV4 payload hash ([`crate::s3::unsigned_payload`]).
    unsigned_payload: bool,
}

impl S3Target {
    /// The object `bucket`/`key`, written with `client`.
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        S3Target {
            unsigned_payload: crate::s3::unsigned_payload(),
            client,
            bucket: bucket.into(),
            key: key.into(),
            meta: ObjectMeta::default(),
        }
    }

    /// Sets the object metadata (default: none).
    pub fn with_meta(mut self, meta: ObjectMeta) -> Self {
        self.meta = meta;
        self
    }

    /// Whether the object exists now (`HeadObject`).
    pub async fn exists(&self) -> Result<bool> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(s3_error(
                S3Operation::HeadObject,
                &self.bucket,
                &self.key,
                None,
                e,
            )),
        }
    }
}

fn status_of<E, R>(err: &SdkError<E, R>) -> Option<u16>
where
    R: HasStatus,
{
    err.raw_response().map(|r| r.status_code())
}

trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn is_precondition_failed<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    status_of(err) == Some(412) || err.code() == Some("PreconditionFailed")
}

fn s3_error<E>(
    operation: S3Operation,
    bucket: &str,
    key: &str,
    part_number: Option<i32>,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    crate::s3::sdk_error(operation, bucket, key, part_number, &err)
}

fn missing(operation: S3Operation, bucket: &str, key: &str, what: &str) -> Error {
    // A 200 answer without the fields every success carries: S3 can answer
    // CompleteMultipartUpload with 200 and an <Error> body, so this is a failure.
    Error::S3 {
        operation,
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        part_number: None,
        message: format!("response had no {what}; treating it as a failed request"),
        retryable: true,
    }
}

/// Request builders that carry a full-object or part checksum, in either algorithm.
trait WithChecksum: Sized {
    fn crc64nvme(self, base64: String) -> Self;
    fn crc32c(self, base64: String) -> Self;

    fn with_checksum(self, checksum: &Crc) -> Self {
        match checksum.algorithm() {
            ChecksumAlgorithm::Crc64nvme => self.crc64nvme(checksum.to_base64()),
            ChecksumAlgorithm::Crc32c => self.crc32c(checksum.to_base64()),
        }
    }
}

macro_rules! with_checksum {
    ($($builder:ty),* $(,)?) => {$(
        impl WithChecksum for $builder {
            fn crc64nvme(self, base64: String) -> Self {
                self.checksum_crc64_nvme(base64)
            }
            fn crc32c(self, base64: String) -> Self {
                self.checksum_crc32_c(base64)
            }
        }
    )*};
}

with_checksum!(
    aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    aws_sdk_s3::operation::upload_part::builders::UploadPartFluentBuilder,
    aws_sdk_s3::operation::complete_multipart_upload::builders::CompleteMultipartUploadFluentBuilder,
    aws_sdk_s3::types::builders::CompletedPartBuilder,
);

/// The checksum S3 reports for `algorithm`, from a response's two checksum fields.
fn reported(
    algorithm: ChecksumAlgorithm,
    crc64nvme: Option<String>,
    crc32c: Option<String>,
) -> Option<String> {
    match algorithm {
        ChecksumAlgorithm::Crc64nvme => crc64nvme,
        ChecksumAlgorithm::Crc32c => crc32c,
    }
}

impl ObjectTarget for S3Target {
    fn describe(&self) -> (String, String) {
        (self.bucket.clone(), self.key.clone())
    }

    fn put(
        &self,
        body: Bytes,
        checksum: Crc,
        if_none_match: bool,
    ) -> BoxFuture<'static, Result<PutOutcome>> {
        let this = self.clone();
        async move {
            // A body is at most one part (5 GiB), far below i64::MAX.
            let len = i64::try_from(body.len()).unwrap_or(i64::MAX);
            let mut req = this
                .client
                .put_object()
                .bucket(&this.bucket)
                .key(&this.key)
                .content_length(len)
                .set_content_type(this.meta.content_type.clone())
                .body(ByteStream::from(body));
            req = req.with_checksum(&checksum);
            if if_none_match {
                req = req.if_none_match("*");
            }
            let mut req = req.customize();
            if this.unsigned_payload {
                req = req.disable_payload_signing();
            }
            match req.send().await {
                Ok(out) => {
                    let e_tag = out.e_tag.ok_or_else(|| {
                        missing(S3Operation::PutObject, &this.bucket, &this.key, "ETag")
                    })?;
                    let checksum = reported(
                        checksum.algorithm(),
                        out.checksum_crc64_nvme,
                        out.checksum_crc32_c,
                    );
                    Ok(PutOutcome::Written { e_tag, checksum })
                }
                Err(e) if if_none_match && is_precondition_failed(&e) => {
                    Ok(PutOutcome::AlreadyExists)
                }
                Err(e) => Err(s3_error(
                    S3Operation::PutObject,
                    &this.bucket,
                    &this.key,
                    None,
                    e,
                )),
            }
        }
        .boxed()
    }

    fn create_multipart(&self, algorithm: ChecksumAlgorithm) -> BoxFuture<'static, Result<String>> {
        let this = self.clone();
        async move {
            let out = this
                .client
                .create_multipart_upload()
                .bucket(&this.bucket)
                .key(&this.key)
                .set_content_type(this.meta.content_type.clone())
                .checksum_algorithm(algorithm.s3_name().into())
                .checksum_type(ChecksumType::FullObject)
                .send()
                .await
                .map_err(|e| {
                    s3_error(
                        S3Operation::CreateMultipartUpload,
                        &this.bucket,
                        &this.key,
                        None,
                        e,
                    )
                })?;
            out.upload_id.ok_or_else(|| {
                missing(
                    S3Operation::CreateMultipartUpload,
                    &this.bucket,
                    &this.key,
                    "UploadId",
                )
            })
        }
        .boxed()
    }

    fn upload_part(
        &self,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
        checksum: Crc,
    ) -> BoxFuture<'static, Result<PartReceipt>> {
        let this = self.clone();
        let upload_id = upload_id.to_owned();
        async move {
            let mut req = this
                .client
                .upload_part()
                .bucket(&this.bucket)
                .key(&this.key)
                .upload_id(upload_id)
                .part_number(part_number)
                .content_length(i64::try_from(body.len()).unwrap_or(i64::MAX))
                .body(ByteStream::from(body));
            req = req.with_checksum(&checksum);
            let mut req = req.customize();
            if this.unsigned_payload {
                req = req.disable_payload_signing();
            }
            let out = req.send().await.map_err(|e| {
                s3_error(
                    S3Operation::UploadPart,
                    &this.bucket,
                    &this.key,
                    Some(part_number),
                    e,
                )
            })?;
            let e_tag = out
                .e_tag
                .ok_or_else(|| missing(S3Operation::UploadPart, &this.bucket, &this.key, "ETag"))?;
            Ok(PartReceipt {
                part_number,
                e_tag,
                checksum,
            })
        }
        .boxed()
    }

    fn complete_multipart(
        &self,
        upload_id: &str,
        parts: Vec<PartReceipt>,
        checksum: Crc,
        if_none_match: bool,
    ) -> BoxFuture<'static, Result<PutOutcome>> {
        let this = self.clone();
        let upload_id = upload_id.to_owned();
        async move {
            let parts = parts
                .into_iter()
                .map(|p| {
                    CompletedPart::builder()
                        .part_number(p.part_number)
                        .e_tag(p.e_tag)
                        .with_checksum(&p.checksum)
                        .build()
                })
                .collect();
            let mut req = this
                .client
                .complete_multipart_upload()
                .bucket(&this.bucket)
                .key(&this.key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .checksum_type(ChecksumType::FullObject);
            req = req.with_checksum(&checksum);
            if if_none_match {
                req = req.if_none_match("*");
            }
            match req.send().await {
                Ok(out) => {
                    let e_tag = out.e_tag.ok_or_else(|| {
                        missing(
                            S3Operation::CompleteMultipartUpload,
                            &this.bucket,
                            &this.key,
                            "ETag",
                        )
                    })?;
                    let checksum = reported(
                        checksum.algorithm(),
                        out.checksum_crc64_nvme,
                        out.checksum_crc32_c,
                    );
                    Ok(PutOutcome::Written { e_tag, checksum })
                }
                Err(e) if if_none_match && is_precondition_failed(&e) => {
                    Ok(PutOutcome::AlreadyExists)
                }
                Err(e) => Err(s3_error(
                    S3Operation::CompleteMultipartUpload,
                    &this.bucket,
                    &this.key,
                    None,
                    e,
                )),
            }
        }
        .boxed()
    }

    fn abort_multipart(&self, upload_id: &str) -> BoxFuture<'static, Result<()>> {
        let this = self.clone();
        let upload_id = upload_id.to_owned();
        async move {
            match this
                .client
                .abort_multipart_upload()
                .bucket(&this.bucket)
                .key(&this.key)
                .upload_id(upload_id)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if status_of(&e) == Some(404) => Ok(()),
                Err(e) => Err(s3_error(
                    S3Operation::AbortMultipartUpload,
                    &this.bucket,
                    &this.key,
                    None,
                    e,
                )),
            }
        }
        .boxed()
    }

    fn head(&self) -> BoxFuture<'static, Result<Option<ObjectHead>>> {
        let this = self.clone();
        async move {
            match this
                .client
                .head_object()
                .bucket(&this.bucket)
                .key(&this.key)
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                .send()
                .await
            {
                Ok(out) => Ok(Some(ObjectHead {
                    // S3 never reports a negative length; treat one as unknown (0).
                    size: out
                        .content_length
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0),
                    e_tag: out.e_tag,
                    crc64nvme: out.checksum_crc64_nvme,
                    crc32c: out.checksum_crc32_c,
                })),
                Err(e) if status_of(&e) == Some(404) => Ok(None),
                Err(e) => Err(s3_error(
                    S3Operation::HeadObject,
                    &this.bucket,
                    &this.key,
                    None,
                    e,
                )),
            }
        }
        .boxed()
    }

    fn upload_exists(&self, upload_id: &str) -> BoxFuture<'static, Result<bool>> {
        let this = self.clone();
        let upload_id = upload_id.to_owned();
        async move {
            match this
                .client
                .list_parts()
                .bucket(&this.bucket)
                .key(&this.key)
                .upload_id(upload_id)
                .max_parts(1)
                .send()
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if status_of(&e) == Some(404) || e.code() == Some("NoSuchUpload") => {
                    Ok(false)
                }
                Err(e) => Err(s3_error(
                    S3Operation::ListParts,
                    &this.bucket,
                    &this.key,
                    None,
                    e,
                )),
            }
        }
        .boxed()
    }
}
