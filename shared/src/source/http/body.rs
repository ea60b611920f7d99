//! The body of an open response: a stream of chunks with a stall timeout, its transport errors
//! told apart from decoder errors, a count of the bytes received, and the capped start of an
//! error response kept for messages.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::error_chain;
use crate::codec::Decoding;

/// Bytes of an error response body kept for the error message.
const ERROR_BODY_CAP: usize = 512;

/// An open response whose status was a success.
pub struct HttpBody {
    /// The final URL (after redirects).
    pub url: String,
    /// `Content-Length`, when the server sent one.
    pub content_length: Option<u64>,
    /// `Content-Type`, when the server sent one.
    pub content_type: Option<String>,
    /// How the body is encoded (from `Content-Encoding`).
    pub decoding: Decoding,
    /// The `Link` header, for pagination.
    pub link: Option<String>,
    /// The body. Errors carry a [`SourceFailure`] so callers can tell them from decoder errors.
    pub stream: BoxStream<'static, io::Result<Bytes>>,
    /// For a `206 Partial Content` answer, the first byte of its `Content-Range`.
    pub range_start: Option<u64>,
    /// What an `If-Range` could carry to continue this body later: its strong `ETag`, else
    /// its `Last-Modified`, when the server advertises `Accept-Ranges: bytes` and the body is
    /// not encoded in transit (offsets in it are then offsets in the resource).
    pub validator: Option<String>,
    received: Arc<AtomicU64>,
}

impl HttpBody {
    /// Body bytes received so far (before decoding).
    pub fn received(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }

    /// Also adds the bytes received to `counters` (bytes in), once per chunk.
    pub fn counting(mut self, counters: Option<Arc<crate::telemetry::Progress>>) -> HttpBody {
        if let Some(c) = counters {
            self.stream = self
                .stream
                .inspect_ok(move |chunk| c.add_bytes_in(chunk.len() as u64))
                .boxed();
        }
        self
    }

    /// The body of `resp`, whose status and headers were checked: `url` is its final URL
    /// (redacted), and a gap of more than `read_timeout` between chunks fails the stream.
    pub(super) fn new(
        resp: reqwest::Response,
        url: String,
        content_type: Option<String>,
        decoding: Decoding,
        link: Option<String>,
        read_timeout: Duration,
    ) -> HttpBody {
        let content_length = resp.content_length();
        let (range_start, validator) = ranges(&resp, decoding);
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let stream = body_stream(resp.bytes_stream(), read_timeout)
            .inspect_ok(move |chunk| {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            })
            .boxed();
        HttpBody {
            url,
            content_length,
            content_type,
            decoding,
            link,
            stream,
            range_start,
            validator,
            received,
        }
    }
}

/// The start of a `206` answer's `Content-Range` (`bytes <first>-<last>/<size>`), and the
/// validator a later `If-Range` could carry ([`HttpBody::validator`]).
fn ranges(resp: &reqwest::Response, decoding: Decoding) -> (Option<u64>, Option<String>) {
    use reqwest::header;
    let headers = resp.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let range_start = (resp.status() == reqwest::StatusCode::PARTIAL_CONTENT)
        .then(|| text(header::CONTENT_RANGE))
        .flatten()
        .and_then(|v| v.trim().strip_prefix("bytes "))
        .and_then(|v| v.split_once('-'))
        .and_then(|(first, _)| first.trim().parse().ok());
    let accepts = text(header::ACCEPT_RANGES).is_some_and(|v| {
        v.split(',')
            .any(|unit| unit.trim().eq_ignore_ascii_case("bytes"))
    });
    let validator = if !accepts || decoding != Decoding::Identity {
        None
    } else if let Some(tag) = text(header::ETAG).filter(|t| t.starts_with('"')) {
        // A weak tag (`W/"..."`) may not be sent in If-Range (RFC 9110, 13.1.5).
        Some(tag.to_owned())
    } else {
        text(header::LAST_MODIFIED).map(str::to_owned)
    };
    (range_start, validator)
}

/// A transport failure while reading the body, carried inside an [`io::Error`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceFailure {
    /// `connection failed`, `read timed out`, ...
    pub class: &'static str,
    /// The error with its causes.
    pub message: String,
}

/// The body as `io::Result` chunks: transport errors become [`SourceFailure`]s, and a gap of
/// more than `limit` between chunks fails the stream (a stalled source) and ends it.
fn body_stream<S>(
    inner: S,
    limit: Duration,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static
where
    S: futures::Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
{
    futures::stream::unfold(Some(inner), move |state| async move {
        let mut inner = state?;
        let failure = |class, message| io::Error::other(SourceFailure { class, message });
        match tokio::time::timeout(limit, inner.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(inner))),
            Ok(Some(Err(e))) => {
                // The URL (with any credential in it) is named by the caller, redacted.
                let e = e.without_url();
                let class = if e.is_timeout() {
                    "read timed out"
                } else {
                    "connection failed"
                };
                Some((Err(failure(class, error_chain(&e))), None))
            }
            Ok(None) => None,
            Err(_) => Some((
                Err(failure("read timed out", format!("no data for {limit:?}"))),
                None,
            )),
        }
    })
}

/// The first [`ERROR_BODY_CAP`] bytes of the body of `resp` (an error answer), as text: what
/// arrived within `limit`, so a server that sends an error status and then stalls cannot hold
/// the request.
pub(crate) async fn capped_body(resp: reqwest::Response, limit: Duration) -> String {
    let mut kept = Vec::with_capacity(ERROR_BODY_CAP);
    let stream = resp.bytes_stream();
    let until = tokio::time::Instant::now() + limit;
    let mut stream = std::pin::pin!(stream);
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(until, stream.next()).await {
        let room = ERROR_BODY_CAP - kept.len();
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if kept.len() >= ERROR_BODY_CAP {
            break;
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}
