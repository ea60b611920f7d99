//! S3 objects as a source: `HeadObject` for the version facts, and a streaming `GetObject`
//! pinned to one version with `If-Match`, so the bytes read are those of the ETag recorded.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
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
    resumes: AtomicU64,
}

impl BodyProgress {
    /// Bytes of the body received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether reading the body itself failed for good (a transport error, as opposed to a
    /// decoder downstream failing on the bytes).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Times the body was re-requested from where it broke off.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }
}

type Stream = Pin<Box<dyn AsyncRead + Send>>;
type Opening = BoxFuture<'static, std::io::Result<Stream>>;
/// Opens the object again from a byte offset (a ranged, `If-Match` `GetObject`).
pub type Reopen = Arc<dyn Fn(u64) -> Opening + Send + Sync>;

/// How many times a body is resumed after a mid-body failure before giving up.
pub const MAX_RESUMES: u32 = 3;

enum State {
    Reading(Stream),
    Opening(Opening),
}

/// A streaming object body that counts its bytes and, when the connection breaks mid-body
/// (an error, or an end before `Content-Length`), asks again for the rest with
/// `Range: bytes=N-` and `If-Match` on the ETag, so the bytes still come from the same version.
pub struct S3Body {
    state: State,
    reopen: Option<Reopen>,
    offset: u64,
    size: u64,
    resumes_left: u32,
    progress: Arc<BodyProgress>,
    /// The invocation's counters: bytes in, resumes as retries.
    counters: Option<Arc<crate::telemetry::Progress>>,
}

impl S3Body {
    /// A body of `size` bytes read from `stream`, resumed with `reopen` (at most `resumes`
    /// times) when it breaks off.
    pub fn new(stream: Stream, size: u64, reopen: Option<Reopen>, resumes: u32) -> Self {
        S3Body {
            state: State::Reading(stream),
            reopen,
            offset: 0,
            size,
            resumes_left: resumes,
            progress: Arc::default(),
            counters: None,
        }
    }

    /// Also counts into `counters`: bytes read as bytes in, each resume as a retry. The total
    /// becomes the bytes already counted plus this object's size (objects read one after the
    /// other add up).
    pub fn counting(mut self, counters: Arc<crate::telemetry::Progress>) -> Self {
        counters.set_total_bytes(Some(counters.snapshot().bytes_in + self.size));
        self.counters = Some(counters);
        self
    }

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
        let this = &mut *self;
        loop {
            let failure = match &mut this.state {
                State::Opening(f) => match f.as_mut().poll(cx) {
                    Poll::Ready(Ok(stream)) => {
                        this.state = State::Reading(stream);
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        this.progress.failed.store(true, Ordering::Relaxed);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Reading(r) => {
                    let before = buf.filled().len();
                    let room = buf.remaining() > 0;
                    match r.as_mut().poll_read(cx, buf) {
                        Poll::Ready(Ok(())) => {
                            let n = buf.filled().len() - before;
                            if n == 0 && room && this.offset < this.size {
                                std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    format!(
                                        "the body ended after {} of {} bytes",
                                        this.offset, this.size
                                    ),
                                )
                            } else {
                                this.offset += n as u64;
                                this.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
                                if let Some(c) = &this.counters {
                                    c.add_bytes_in(n as u64);
                                }
                                return Poll::Ready(Ok(()));
                            }
                        }
                        Poll::Ready(Err(e)) => e,
                        Poll::Pending => return Poll::Pending,
                    }
                }
            };
            match &this.reopen {
                Some(reopen) if this.resumes_left > 0 => {
                    this.resumes_left -= 1;
                    this.progress.resumes.fetch_add(1, Ordering::Relaxed);
                    if let Some(c) = &this.counters {
                        c.add_retry();
                    }
                    tracing::warn!(offset = this.offset, size = this.size, error = %failure,
                        "object body broke off; resuming with a ranged GET");
                    this.state = State::Opening(reopen(this.offset));
                }
                _ => {
                    this.progress.failed.store(true, Ordering::Relaxed);
                    return Poll::Ready(Err(failure));
                }
            }
        }
    }
}

/// `GetObject` of `bucket/key`, streaming, with `If-Match: e_tag` when given. A missing object
/// or a failed precondition is [`Opened::Changed`], not an error. With an ETag, a body that
/// breaks off is resumed from where it stopped (up to [`MAX_RESUMES`] times).
pub async fn open(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    if_match: Option<&str>,
) -> Result<Opened> {
    open_from(client, bucket, key, if_match, 0).await
}

/// [`open`] from byte `from` of the object (`Range: bytes=<from>-`; an offset at or past the
/// end is an empty body).
pub async fn open_from(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    if_match: Option<&str>,
    from: u64,
) -> Result<Opened> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_if_match(if_match.map(str::to_owned))
        .set_range((from > 0).then(|| format!("bytes={from}-")))
        .send()
        .await;
    match out {
        Ok(out) => {
            let size = out.content_length().unwrap_or(0).max(0) as u64;
            let reopen: Option<Reopen> = if_match.map(|etag| {
                let (client, bucket, key, etag) = (
                    client.clone(),
                    bucket.to_owned(),
                    key.to_owned(),
                    etag.to_owned(),
                );
                Arc::new(move |read: u64| {
                    let (client, bucket, key, etag) =
                        (client.clone(), bucket.clone(), key.clone(), etag.clone());
                    let offset = from + read;
                    async move {
                        let out = client
                            .get_object()
                            .bucket(&bucket)
                            .key(&key)
                            .if_match(&etag)
                            .range(format!("bytes={offset}-"))
                            .send()
                            .await
                            .map_err(|e| {
                                let changed = matches!(status_of(&e), Some(404 | 412));
                                std::io::Error::other(if changed {
                                    format!(
                                        "resuming at byte {offset}: the object changed while being read"
                                    )
                                } else {
                                    format!(
                                        "resuming at byte {offset}: {}",
                                        DisplayErrorContext(&e)
                                    )
                                })
                            })?;
                        Ok(Box::pin(out.body.into_async_read()) as Stream)
                    }
                    .boxed()
                }) as Reopen
            });
            Ok(Opened::Body(S3Body::new(
                Box::pin(out.body.into_async_read()),
                size,
                reopen,
                MAX_RESUMES,
            )))
        }
        Err(e) if matches!(status_of(&e), Some(404 | 412)) => Ok(Opened::Changed),
        Err(e) if from > 0 && status_of(&e) == Some(416) => Ok(Opened::Body(S3Body::new(
            Box::pin(tokio::io::empty()),
            0,
            None,
            0,
        ))),
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
    crate::s3::sdk_error(operation, bucket, key, None, &err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A stream of `data[from..]` that fails with a reset after `cut` bytes (when given).
    fn stream(data: Arc<Vec<u8>>, from: usize, cut: Option<usize>) -> Stream {
        let end = cut.map_or(data.len(), |c| (from + c).min(data.len()));
        let good = std::io::Cursor::new(data[from..end].to_vec());
        match cut {
            None => Box::pin(good),
            Some(_) => Box::pin(good.chain(Failing)),
        }
    }

    struct Failing;
    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
        }
    }

    fn reopen(
        data: Arc<Vec<u8>>,
        cuts: Vec<Option<usize>>,
        asked: Arc<std::sync::Mutex<Vec<u64>>>,
    ) -> Reopen {
        let cuts = Arc::new(std::sync::Mutex::new(cuts.into_iter()));
        Arc::new(move |offset| {
            asked.lock().unwrap().push(offset);
            let cut = cuts.lock().unwrap().next().flatten();
            let s = stream(data.clone(), offset as usize, cut);
            async move { Ok(s) }.boxed()
        })
    }

    #[tokio::test]
    async fn resumes_from_where_the_body_broke_off() {
        let data: Arc<Vec<u8>> = Arc::new((0..200_000u32).map(|i| (i % 251) as u8).collect());
        let asked = Arc::default();
        let mut body = S3Body::new(
            stream(data.clone(), 0, Some(70_000)),
            data.len() as u64,
            Some(reopen(
                data.clone(),
                vec![Some(50_000), None],
                Arc::clone(&asked),
            )),
            3,
        );
        let mut out = Vec::new();
        body.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, *data);
        assert_eq!(*asked.lock().unwrap(), [70_000, 120_000]);
        assert_eq!(body.progress().resumes(), 2);
        assert!(!body.progress().failed());
    }

    #[tokio::test]
    async fn an_early_end_is_resumed_and_too_many_breaks_fail() {
        let data: Arc<Vec<u8>> = Arc::new(vec![7u8; 10_000]);
        // A clean end before Content-Length counts as a break.
        let short: Stream = Box::pin(std::io::Cursor::new(data[..4_000].to_vec()));
        let asked = Arc::default();
        let mut body = S3Body::new(
            short,
            10_000,
            Some(reopen(data.clone(), vec![None], Arc::clone(&asked))),
            3,
        );
        let mut out = Vec::new();
        body.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len(), 10_000);
        assert_eq!(*asked.lock().unwrap(), [4_000]);

        let asked = Arc::default();
        let mut body = S3Body::new(
            stream(data.clone(), 0, Some(1_000)),
            10_000,
            Some(reopen(
                data.clone(),
                vec![Some(1_000); 5],
                Arc::clone(&asked),
            )),
            2,
        );
        let err = body.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        assert_eq!(asked.lock().unwrap().len(), 2);
        assert!(body.progress().failed());
        assert_eq!(body.progress().bytes(), 3_000);
    }
}
