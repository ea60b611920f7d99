//! S3 objects as a source: `HeadObject` for the version facts, and a streaming `GetObject`
//! pinned to one version with `If-Match`, so the bytes read are those of the ETag recorded.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, ReadBuf};

use crate::error::{Error, Result, S3Operation};

/// What identifies one version of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    /// The ETag, quotes included, as S3 sends it.
    pub e_tag: String,
    /// `Last-Modified`.
    pub last_modified: Option<DateTime<Utc>>,
    /// Size in bytes.
    pub size: u64,
}

/// `HeadObject`: the current version of `bucket/key`, or `None` when there is no such object.
pub async fn head(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<ObjectVersion>> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(out) => Ok(Some(ObjectVersion {
            e_tag: out.e_tag().unwrap_or_default().to_owned(),
            last_modified: out
                .last_modified()
                .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
            size: out.content_length().unwrap_or(0).max(0) as u64,
        })),
        Err(e) if status_of(&e) == Some(404) => Ok(None),
        Err(e) => Err(get_error(S3Operation::HeadObject, bucket, key, e)),
    }
}

/// How opening an object ended.
pub enum Opened {
    /// The body, streaming.
    Body(S3Body),
    /// The object is gone, or no longer has the ETag asked for (`If-Match` failed).
    Changed,
}

/// Counters of a body being read.
#[derive(Debug, Default)]
pub struct BodyProgress {
    bytes: AtomicU64,
    failed: AtomicBool,
}

impl BodyProgress {
    /// Bytes of the body received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether reading the body itself failed (a transport error, as opposed to a decoder
    /// downstream failing on the bytes).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// A streaming object body that counts its bytes.
pub struct S3Body {
    inner: Pin<Box<dyn AsyncRead + Send>>,
    progress: Arc<BodyProgress>,
}

impl S3Body {
    /// The shared counters.
    pub fn progress(&self) -> Arc<BodyProgress> {
        self.progress.clone()
    }
}

impl AsyncRead for S3Body {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match this.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.progress.failed.store(true, Ordering::Relaxed);
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `GetObject` of `bucket/key`, streaming, with `If-Match: e_tag` when given. A missing object
/// or a failed precondition is [`Opened::Changed`], not an error.
pub async fn open(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    if_match: Option<&str>,
) -> Result<Opened> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_if_match(if_match.map(str::to_owned))
        .send()
        .await;
    match out {
        Ok(out) => Ok(Opened::Body(S3Body {
            inner: Box::pin(out.body.into_async_read()),
            progress: Arc::default(),
        })),
        Err(e) if matches!(status_of(&e), Some(404 | 412)) => Ok(Opened::Changed),
        Err(e) => Err(get_error(S3Operation::GetObject, bucket, key, e)),
    }
}

fn status_of<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

fn get_error<E>(
    operation: S3Operation,
    bucket: &str,
    key: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = status_of(&err);
    let retryable = matches!(
        err,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    ) || status.is_some_and(|s| s >= 500 || s == 429)
        || matches!(
            err.code(),
            Some("SlowDown" | "RequestTimeout" | "InternalError")
        );
    let mut message = DisplayErrorContext(&err).to_string();
    if let Some(status) = status {
        message = format!("HTTP {status}: {message}");
    }
    Error::S3 {
        operation,
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        part_number: None,
        message,
        retryable,
    }
}
