//! Streaming HTTP source: one request, its status checked before anything is written, and its
//! body as a stream of chunks that never sits in memory whole.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;

use crate::codec::Decoding;
use crate::error::{Error, Result};

/// Bytes of an error response body kept for the error message.
const ERROR_BODY_CAP: usize = 512;

/// `source.http` in a job spec.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceSpec {
    /// The URL to fetch (`http` or `https`).
    pub url: String,
    /// HTTP method. Default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers. Default none. Setting `Accept-Encoding: gzip` lets the server compress
    /// the transfer; sluice decodes `Content-Encoding` gzip and zstd itself.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body, sent as is (a JSON value is serialized). Default none.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Seconds to wait for the response headers, and then for each next chunk of the body,
    /// before the source counts as stalled. Default 30. (Connecting has its own 10 s limit.)
    #[serde(default)]
    pub read_timeout_secs: Option<f64>,
}

fn default_method() -> String {
    "GET".to_owned()
}

impl HttpSourceSpec {
    /// Checks what can be checked without a request.
    pub fn validate(&self) -> Result<()> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| Error::spec(format!("source.http.url {:?}: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::spec(format!(
                "source.http.url {:?}: scheme must be http or https",
                self.url
            )));
        }
        reqwest::Method::from_bytes(self.method.as_bytes()).map_err(|_| {
            Error::spec(format!(
                "source.http.method {:?} is not a method",
                self.method
            ))
        })?;
        for (name, value) in &self.headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                Error::spec(format!("source.http.headers: bad header name {name:?}"))
            })?;
            reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                Error::spec(format!("source.http.headers.{name}: bad header value"))
            })?;
        }
        if let Some(v) = self.read_timeout_secs
            && !(v.is_finite() && v > 0.0 && v <= 900.0)
        {
            return Err(Error::spec(format!(
                "source.http.read_timeout_secs must be in (0, 900], got {v}"
            )));
        }
        Ok(())
    }

    fn read_timeout(&self) -> Duration {
        self.read_timeout_secs
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_READ_TIMEOUT)
    }
}

const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the HTTP client a function keeps for its lifetime: rustls, no automatic
/// decompression (done by [`Decoding`] with the rest of the codecs), at most 5 redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .expect("a TLS backend is compiled in")
}

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
    /// The body. Errors carry a [`SourceFailure`] so callers can tell them from decoder errors.
    pub stream: BoxStream<'static, io::Result<Bytes>>,
    received: Arc<AtomicU64>,
}

impl HttpBody {
    /// Body bytes received so far (before decoding).
    pub fn received(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }
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

/// Sends the request and checks the answer. A non-success status is an error carrying the
/// status and the first bytes of the body; nothing downstream has started yet.
pub async fn open(client: &reqwest::Client, spec: &HttpSourceSpec) -> Result<HttpBody> {
    spec.validate()?;
    let method = reqwest::Method::from_bytes(spec.method.as_bytes())
        .map_err(|_| Error::spec(format!("source.http.method {:?}", spec.method)))?;
    let mut req = client.request(method, &spec.url);
    for (name, value) in &spec.headers {
        req = req.header(name, value);
    }
    if let Some(body) = &spec.body {
        req = match body {
            serde_json::Value::String(s) => req.body(s.clone()),
            other => req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(other.to_string()),
        };
    }
    let url = spec.url.clone();
    let read_timeout = spec.read_timeout();
    let resp = match tokio::time::timeout(read_timeout, req.send()).await {
        Ok(sent) => sent.map_err(|e| Error::SourceRequest {
            url: url.clone(),
            message: error_chain(&e),
            timeout: e.is_timeout(),
        })?,
        Err(_) => {
            return Err(Error::SourceRequest {
                url,
                message: format!("no response headers within {read_timeout:?}"),
                timeout: true,
            });
        }
    };

    let status = resp.status();
    if !status.is_success() {
        let body = capped_body(resp).await;
        return Err(Error::SourceStatus {
            url,
            status: status.as_u16(),
            body,
        });
    }

    let headers = resp.headers();
    let content_encoding = headers
        .get(reqwest::header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let decoding =
        Decoding::from_content_encoding(content_encoding.as_deref()).map_err(|encoding| {
            Error::UnsupportedEncoding {
                url: url.clone(),
                encoding,
            }
        })?;
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_length = resp.content_length();
    let final_url = resp.url().to_string();

    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let stream = body_stream(resp.bytes_stream(), read_timeout)
        .inspect_ok(move |chunk| {
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        })
        .boxed();

    Ok(HttpBody {
        url: final_url,
        content_length,
        content_type,
        decoding,
        stream,
        received,
    })
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

async fn capped_body(resp: reqwest::Response) -> String {
    let mut kept = Vec::with_capacity(ERROR_BODY_CAP);
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = ERROR_BODY_CAP - kept.len();
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if kept.len() >= ERROR_BODY_CAP {
            break;
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// An error and its sources, joined: reqwest's top-level message alone rarely says what broke.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> std::result::Result<HttpSourceSpec, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_validation() {
        let s = spec(serde_json::json!({"url": "http://127.0.0.1:1/x"})).unwrap();
        assert_eq!(s.method, "GET");
        s.validate().unwrap();
        let bad = spec(serde_json::json!({"url": "ftp://host/x"})).unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("scheme must be http")
        );
        let bad = spec(serde_json::json!({"url": "not a url"})).unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("source.http.url")
        );
        let bad = spec(serde_json::json!({"url": "http://h/", "read_timeout_secs": 0})).unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("read_timeout_secs")
        );
        assert!(
            spec(serde_json::json!({"url": "http://h/", "verb": "GET"}))
                .unwrap_err()
                .contains("unknown field `verb`")
        );
    }
}
