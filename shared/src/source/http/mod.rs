//! Streaming HTTP source: one request, its status checked before anything is written, and its
//! body as a stream of chunks that never sits in memory whole.
//!
//! Everything only the HTTP source needs lives under it: [`auth`] (credentials and URL
//! redaction), [`paginate`] (the next request after a page), [`state`] (the incremental
//! watermark), [`guard`] (which hosts and addresses may be reached), [`rate`] (the shared
//! token bucket) and [`retry`] (attempts and backoff).

pub mod auth;
mod body;
pub mod guard;
pub mod paginate;
pub mod rate;
pub mod retry;
pub mod state;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use reqwest::Url;
use tokio::time::Instant;

pub use body::{HttpBody, SourceFailure};

use crate::codec::Decoding;
use crate::error::{Error, Result};
use auth::{AuthSpec, ResolvedAuth, redact_error, redact_url};
pub(crate) use body::capped_body;
use guard::{GuardedResolver, NetworkPolicy, find_blocked};
use paginate::{PageRequest, PaginateSpec};
use rate::{RateLimitSpec, RateLimiter};
use retry::{RetryPolicy, RetrySpec, parse_retry_after, retryable_status};

/// `source.http` in a job spec.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
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
    #[schemars(extend("exclusiveMinimum" = 0, "maximum" = 900))]
    pub read_timeout_secs: Option<f64>,
    /// Pagination ([`paginate`]). Default: one request.
    #[serde(default)]
    pub paginate: Option<PaginateSpec>,
    /// Retries of failed requests ([`RetrySpec`]). Default 5 attempts.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Requests per second, shared by every request of the job. Default unlimited.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// When set, a response whose `Content-Type` does not start with this (e.g.
    /// `application/json`) is an error, raised before anything is written.
    #[serde(default)]
    pub expect_content_type: Option<String>,
    /// Authentication ([`AuthSpec`]): bearer, basic, or an API key in a header or query
    /// parameter, the secret from an env var, Secrets Manager or SSM. Default none.
    #[serde(default)]
    pub auth: Option<AuthSpec>,
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
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        if let Some(r) = &self.rate_limit
            && !(r.per_second.is_finite() && r.per_second > 0.0)
        {
            return Err(Error::spec(
                "source.http.rate_limit.per_second must be positive",
            ));
        }
        if let Some(serde_json::Value::String(_)) = &self.body
            && self
                .paginate
                .as_ref()
                .and_then(|p| p.cursor.as_ref())
                .is_some_and(|c| c.location == paginate::ParamIn::Body)
        {
            return Err(Error::spec(
                "source.http.paginate.cursor.in = body needs a JSON object body",
            ));
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
/// decompression (done by [`Decoding`] with the rest of the codecs), at most 5 redirects, and
/// the [`NetworkPolicy`] applied to every resolved address and every redirect.
pub fn client(policy: &NetworkPolicy) -> reqwest::Client {
    build_client(policy, false)
}

/// Like [`client`], but refusing redirects to another origin (scheme, host or port). Used for
/// requests that carry an API key in a custom header: reqwest drops `Authorization` on a
/// cross-host redirect, but not other headers, so following one would hand the key to the
/// other host — or, from `https` to `http` on the same host, send it in clear text.
pub fn same_host_client(policy: &NetworkPolicy) -> reqwest::Client {
    build_client(policy, true)
}

/// Proxies from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`) are ignored: a
/// proxy resolves the target itself, which would bypass the [`GuardedResolver`] check of every
/// address.
fn build_client(policy: &NetworkPolicy, same_host_only: bool) -> reqwest::Client {
    let redirects = policy.clone();
    reqwest::Client::builder()
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver(policy.clone())))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error(TooManyRedirects);
            }
            if same_host_only
                && let Some(refused) = attempt
                    .previous()
                    .last()
                    .and_then(|from| cross_origin(from, attempt.url()))
            {
                return attempt.error(refused);
            }
            match redirects.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(blocked) => attempt.error(blocked),
            }
        }))
        .build()
        .expect("a TLS backend is compiled in")
}

/// Why a redirect from `from` to `to` leaves the origin (scheme, host and port, the port
/// defaulting by scheme), or `None` when it stays.
fn cross_origin(from: &Url, to: &Url) -> Option<guard::Blocked> {
    let why = if from.scheme() != to.scheme() {
        format!("from {} to {}", from.scheme(), to.scheme())
    } else if from.host_str() != to.host_str() {
        format!("to another host ({})", to.host_str().unwrap_or("?"))
    } else if from.port_or_known_default() != to.port_or_known_default() {
        let port = to.port_or_known_default();
        format!(
            "to another port ({})",
            port.map_or("?".into(), |p| p.to_string())
        )
    } else {
        return None;
    };
    Some(guard::Blocked(format!(
        "redirect {why} while an API key header is set"
    )))
}

#[derive(Debug, thiserror::Error)]
#[error("more than 5 redirects")]
struct TooManyRedirects;

/// Sends the requests of one source: retries, rate limit, deadline and network policy.
#[derive(Debug, Clone, Copy)]
pub struct Fetcher<'a> {
    /// The function's client ([`client`]).
    pub client: &'a reqwest::Client,
    /// The source.
    pub spec: &'a HttpSourceSpec,
    /// The network policy the client was built with (checked on the initial URL too).
    pub policy: &'a NetworkPolicy,
    /// The job's shared rate limiter.
    pub limiter: Option<&'a RateLimiter>,
    /// When to stop retrying (the job's deadline).
    pub deadline: Option<Instant>,
    /// Credentials applied to every request; URLs in errors and logs are redacted with them.
    pub auth: Option<&'a ResolvedAuth>,
    /// The invocation's counters: each retry, and the bytes of every body opened.
    pub progress: Option<&'a std::sync::Arc<crate::telemetry::Progress>>,
    /// Continue a body from a byte offset: `Range: bytes=<offset>-` and `If-Range:
    /// <validator>` on every request ([`HttpBody::validator`] of the first answer).
    pub resume_from: Option<(u64, &'a str)>,
}

/// Why one attempt failed, and whether another may follow.
struct Failure {
    error: Error,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    /// A failure another attempt could fix (no `Retry-After`).
    fn retryable(error: Error) -> Failure {
        Failure {
            error,
            retryable: true,
            retry_after: None,
        }
    }

    /// A failure no other attempt would fix.
    fn fatal(error: Error) -> Failure {
        Failure {
            error,
            retryable: false,
            retry_after: None,
        }
    }
}

impl Fetcher<'_> {
    /// Sends the request for `page` and checks the answer, retrying connection failures,
    /// timeouts, 408, 429 and 5xx up to `retry.max_attempts` with full-jitter backoff (at
    /// least `Retry-After`). A wait that would pass the deadline ends in
    /// [`Error::RetryPastDeadline`]. A non-success answer is an error carrying the status and
    /// the first bytes of the body; nothing downstream has started yet.
    pub async fn open(&self, page: &PageRequest) -> Result<HttpBody> {
        self.spec.validate()?;
        let shown = redact_url(page.url.as_str(), self.auth);
        self.policy
            .check_url(&page.url)
            .map_err(|b| Error::Blocked {
                url: shown.clone(),
                reason: b.0,
            })?;
        let policy = RetryPolicy::from(&self.spec.retry);
        let mut attempt = 1;
        loop {
            if let Some(limiter) = self.limiter {
                limiter.acquire().await;
            }
            match self.send_once(page, attempt).await {
                Ok(body) => return Ok(body.counting(self.progress.cloned())),
                Err(f) if f.retryable && attempt < policy.max_attempts => {
                    let wait = policy.backoff(attempt, f.retry_after);
                    if retry::wait_passes_deadline(self.deadline, wait) {
                        return Err(Error::RetryPastDeadline {
                            url: shown.clone(),
                            failure: f.error.to_string(),
                            wait_ms: wait.as_millis() as u64,
                        });
                    }
                    tracing::warn!(
                        url = %shown, attempt, wait_ms = wait.as_millis() as u64, error = %f.error,
                        "source request failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    if let Some(p) = self.progress {
                        p.add_retry();
                    }
                    attempt += 1;
                }
                Err(f) => return Err(f.error),
            }
        }
    }

    /// One attempt: the request sent, its status and headers checked, its body opened.
    async fn send_once(
        &self,
        page: &PageRequest,
        attempt: u32,
    ) -> std::result::Result<HttpBody, Failure> {
        let url = redact_url(page.url.as_str(), self.auth);
        let spec = self.spec;
        let method = reqwest::Method::from_bytes(spec.method.as_bytes()).map_err(|_| {
            Failure::fatal(Error::spec(format!("source.http.method {:?}", spec.method)))
        })?;
        let req = self.request(method, page);
        let read_timeout = spec.read_timeout();
        let resp = self.send(req, &url, attempt, read_timeout).await?;
        let resp = check_status(resp, &url, attempt, read_timeout).await?;
        self.checked_body(resp, url, read_timeout).await
    }

    /// The request for `page`: method, headers, credentials and body.
    fn request(&self, method: reqwest::Method, page: &PageRequest) -> reqwest::RequestBuilder {
        let spec = self.spec;
        let mut req = self.client.request(method, page.url.clone());
        for (name, value) in &spec.headers {
            req = req.header(name, value);
        }
        if let Some(auth) = self.auth {
            req = auth.apply(req);
        }
        if let Some((offset, validator)) = self.resume_from {
            req = req
                .header(reqwest::header::RANGE, format!("bytes={offset}-"))
                .header(reqwest::header::IF_RANGE, validator);
        }
        if let Some(body) = request_body(spec, page) {
            req = match body {
                serde_json::Value::String(s) => req.body(s),
                other => req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(other.to_string()),
            };
        }
        req
    }

    /// Sends `req` and waits at most `read_timeout` for the response headers. `url` is the
    /// redacted URL named in errors.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
        attempt: u32,
        read_timeout: Duration,
    ) -> std::result::Result<reqwest::Response, Failure> {
        match tokio::time::timeout(read_timeout, req.send()).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let e = redact_error(e, self.auth);
                if let Some(reason) = find_blocked(&e) {
                    let url = url.to_owned();
                    return Err(Failure::fatal(Error::Blocked { url, reason }));
                }
                Err(Failure::retryable(Error::SourceRequest {
                    url: url.to_owned(),
                    attempts: attempt,
                    message: error_chain(&e),
                    timeout: e.is_timeout(),
                }))
            }
            Err(_) => Err(Failure::retryable(Error::SourceRequest {
                url: url.to_owned(),
                attempts: attempt,
                message: format!("no response headers within {read_timeout:?}"),
                timeout: true,
            })),
        }
    }

    /// The body of a successful `resp`, once its `Content-Type` (when the spec expects one)
    /// and `Content-Encoding` are checked.
    async fn checked_body(
        &self,
        resp: reqwest::Response,
        url: String,
        read_timeout: Duration,
    ) -> std::result::Result<HttpBody, Failure> {
        let headers = resp.headers();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(expected) = &self.spec.expect_content_type {
            let actual = content_type.clone().unwrap_or_default();
            if !actual
                .to_ascii_lowercase()
                .starts_with(&expected.to_ascii_lowercase())
            {
                let body = capped_body(resp, read_timeout).await;
                return Err(Failure::fatal(Error::Records {
                    url,
                    class: "unexpected Content-Type",
                    offset: 0,
                    record: None,
                    message: format!("expected {expected}, got {actual:?}; body starts: {body:?}"),
                }));
            }
        }
        let content_encoding = headers
            .get(reqwest::header::CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let decoding =
            Decoding::from_content_encoding(content_encoding.as_deref()).map_err(|encoding| {
                Failure::fatal(Error::UnsupportedEncoding {
                    url: url.clone(),
                    encoding,
                })
            })?;
        let link = headers
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let final_url = redact_url(resp.url().as_str(), self.auth);
        Ok(HttpBody::new(
            resp,
            final_url,
            content_type,
            decoding,
            link,
            read_timeout,
        ))
    }
}

/// The body of the request for `page`: the spec's body, with the page's body field (body
/// pagination) set in it as an object.
fn request_body(spec: &HttpSourceSpec, page: &PageRequest) -> Option<serde_json::Value> {
    match (&spec.body, &page.body_field) {
        (None, None) => None,
        (Some(b), None) => Some(b.clone()),
        (b, Some((field, value))) => {
            let mut obj = match b {
                Some(serde_json::Value::Object(o)) => o.clone(),
                _ => serde_json::Map::new(),
            };
            obj.insert(field.clone(), value.clone());
            Some(serde_json::Value::Object(obj))
        }
    }
}

/// `resp` when its status is a success; otherwise an error with the status and the first
/// bytes of the body (read for at most `read_timeout`), retryable for 408, 429 and 5xx, and the
/// `Retry-After` it asked for.
async fn check_status(
    resp: reqwest::Response,
    url: &str,
    attempt: u32,
    read_timeout: Duration,
) -> std::result::Result<reqwest::Response, Failure> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    let body = capped_body(resp, read_timeout).await;
    Err(Failure {
        error: Error::SourceStatus {
            url: url.to_owned(),
            attempts: attempt,
            status: status.as_u16(),
            body,
        },
        retryable: retryable_status(status.as_u16()),
        retry_after,
    })
}

/// The first request of `spec` (its URL), for sources without pagination.
pub fn single_page(spec: &HttpSourceSpec) -> Result<PageRequest> {
    let url = Url::parse(&spec.url)
        .map_err(|e| Error::spec(format!("source.http.url {:?}: {e}", spec.url)))?;
    Ok(PageRequest {
        page: 1,
        url,
        body_field: None,
    })
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
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A raw HTTP/1.1 server on 127.0.0.1 that answers the n-th connection with `answers[n]`
    /// (the last one again after that) and closes it. Returns its address and a count of the
    /// connections it accepted.
    pub(crate) async fn canned_server(
        answers: Vec<Vec<u8>>,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let answer = answers[n.min(answers.len() - 1)].clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = conn.write_all(&answer).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        (addr, hits)
    }

    fn answer(head: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn local() -> NetworkPolicy {
        NetworkPolicy::default().with_private_networks(true)
    }

    #[tokio::test]
    async fn retry_after_of_u64_max_ends_in_a_timeout_not_a_panic() {
        let (addr, hits) = canned_server(vec![answer(
            "429 Too Many Requests\r\nRetry-After: 18446744073709551615",
            "slow down",
        )])
        .await;
        let spec = spec(serde_json::json!({"url": format!("http://{addr}/x")})).unwrap();
        let policy = local();
        let client = client(&policy);
        let fetcher = Fetcher {
            client: &client,
            spec: &spec,
            policy: &policy,
            limiter: None,
            deadline: Some(Instant::now() + Duration::from_secs(60)),
            auth: None,
            progress: None,
            resume_from: None,
        };
        let err = match fetcher.open(&single_page(&spec).unwrap()).await {
            Ok(_) => panic!("a 429 succeeded"),
            Err(e) => e,
        };
        assert!(matches!(err, Error::RetryPastDeadline { .. }), "{err}");
        assert_eq!(err.kind(), crate::ErrorKind::Timeout);
        assert!(err.to_string().contains("HTTP 429"), "{err}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn https_to_http_on_the_same_host_is_another_origin() {
        let u = |s: &str| Url::parse(s).unwrap();
        let why = |a: &str, b: &str| cross_origin(&u(a), &u(b)).map(|e| e.0);
        let down = why("https://api.example.com/a", "http://api.example.com/b").unwrap();
        assert!(down.contains("from https to http"), "{down}");
        let port = why("http://h:8080/a", "http://h:9090/b").unwrap();
        assert!(port.contains("another port (9090)"), "{port}");
        let host = why("http://h/a", "http://g/b").unwrap();
        assert!(host.contains("another host (g)"), "{host}");
        assert_eq!(why("https://h/a", "https://h:443/b?x=1"), None);
        assert_eq!(why("http://h:80/a", "http://h/b"), None);
    }

    #[tokio::test]
    async fn api_key_client_refuses_a_redirect_to_another_port() {
        let (target, target_hits) = canned_server(vec![answer("200 OK", "key goes here")]).await;
        let (addr, _) = canned_server(vec![answer(
            &format!("302 Found\r\nLocation: http://{target}/steal"),
            "",
        )])
        .await;
        let policy = local();
        let err = same_host_client(&policy)
            .get(format!("http://{addr}/start"))
            .header("X-Api-Key", "k")
            .send()
            .await
            .unwrap_err();
        let reason = guard::find_blocked(&err).expect("refused by the policy");
        assert!(reason.contains("another port"), "{reason}");
        assert_eq!(
            target_hits.load(Ordering::SeqCst),
            0,
            "the other port was contacted"
        );
    }

    /// Runs [`env_proxy_probe`] in a child process whose environment names a proxy: a proxy
    /// set in the environment must not be used (it would resolve the target itself, past the
    /// address check).
    #[tokio::test]
    async fn proxies_from_the_environment_are_ignored() {
        let (proxy, proxy_hits) = canned_server(vec![answer("200 OK", "via the proxy")]).await;
        let exe = std::env::current_exe().unwrap();
        let proxy_url = format!("http://{proxy}");
        let out = tokio::process::Command::new(exe)
            .args([
                "--ignored",
                "--exact",
                "source::http::tests::env_proxy_probe",
            ])
            .env("SLUICE_PROXY_PROBE", "1")
            .env("HTTP_PROXY", &proxy_url)
            .env("http_proxy", &proxy_url)
            .env("HTTPS_PROXY", &proxy_url)
            .env("ALL_PROXY", &proxy_url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "{text}");
        assert_eq!(proxy_hits.load(Ordering::SeqCst), 0, "the proxy was used");
    }

    /// See [`proxies_from_the_environment_are_ignored`]; does nothing unless run by it.
    #[tokio::test]
    #[ignore = "run by proxies_from_the_environment_are_ignored"]
    async fn env_proxy_probe() {
        if std::env::var_os("SLUICE_PROXY_PROBE").is_none() {
            return;
        }
        // `localhost` resolves to loopback, refused by the strict policy's resolver; through a
        // proxy it would never be resolved here.
        let err = client(&NetworkPolicy::default())
            .get("http://localhost:9/x")
            .send()
            .await
            .unwrap_err();
        let reason = guard::find_blocked(&err).unwrap_or_else(|| panic!("not refused: {err:?}"));
        assert!(reason.contains("refused address"), "{reason}");
    }

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
