//! The `enrich` step: rows are posted in batches, as NDJSON, to an HTTP service that answers
//! one JSON object per row, in order; the declared fields of each answer are merged into its
//! row. Batches are bounded by rows and bytes, and at most `concurrency` are in flight, so
//! memory is bounded by about `max_batch_bytes × (concurrency + 1)` plus the answers.
//!
//! Requests go through the HTTP source's client (network policy, no redirects to private
//! addresses), its retry policy (connection failures, timeouts, 408, 429 and 5xx, with
//! exponential backoff and full jitter, waiting at least `Retry-After`) and, when configured,
//! a rate limit shared by every batch of the object.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::time::Instant;

use super::value::{ColType, Parser, Value};
use crate::error::{Error, Result};
use crate::job;
use crate::source::http::capped_body;
use crate::source::http::error_chain;
use crate::source::http::guard::find_blocked;
use crate::source::http::rate::{RateLimitSpec, RateLimiter};
use crate::source::http::retry::{RetryPolicy, RetrySpec, parse_retry_after, retryable_status};

/// `{"enrich": {...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichStep {
    /// The service's URL (`http` or `https`); each batch is one `POST`.
    pub url: String,
    /// Rows per batch. Default 10,000.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub batch_size: usize,
    /// Bytes of NDJSON per batch (a batch closes at whichever limit comes first). Default
    /// 4 MiB.
    #[serde(default = "default_batch_bytes")]
    #[schemars(range(min = 1024, max = 67_108_864))]
    pub max_batch_bytes: usize,
    /// Batches in flight at once, 1–16. Default 1.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 16))]
    pub concurrency: usize,
    /// Columns sent for each row. Default: every column at this step.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Fields taken from each answer, with their types; a missing field is null.
    #[schemars(length(min = 1))]
    pub fields: Vec<EnrichField>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Retry policy (as `source.http.retry`).
    #[serde(default)]
    pub retry: RetrySpec,
    /// Rate limit (as `source.http.rate_limit`).
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// Seconds to wait for one answer. Default 60.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// A field returned by the service.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichField {
    /// Key in the answer, and the column it becomes (replacing one of that name).
    pub name: String,
    /// Its type. Default string.
    #[serde(rename = "type", default = "string_type")]
    pub ty: ColType,
    /// chrono format for dates and timestamps given as strings.
    #[serde(default)]
    pub format: Option<String>,
}

fn string_type() -> ColType {
    ColType::String
}
fn default_batch_size() -> usize {
    10_000
}
fn default_batch_bytes() -> usize {
    4 << 20
}
fn default_concurrency() -> usize {
    1
}

impl EnrichStep {
    /// Checks limits and the URL's form.
    pub fn validate(&self, at: &str) -> Result<()> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| Error::spec(format!("{at}.url {:?}: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::spec(format!("{at}.url must be http or https")));
        }
        if self.batch_size == 0 || self.batch_size > 1_000_000 {
            return Err(Error::spec(format!("{at}.batch_size must be 1..=1000000")));
        }
        if self.max_batch_bytes < 1024 || self.max_batch_bytes > 64 << 20 {
            return Err(Error::spec(format!(
                "{at}.max_batch_bytes must be 1024..=67108864"
            )));
        }
        if !(1..=16).contains(&self.concurrency) {
            return Err(Error::spec(format!("{at}.concurrency must be 1..=16")));
        }
        if self.fields.is_empty() {
            return Err(Error::spec(format!("{at}.fields is empty")));
        }
        if let Some(r) = &self.rate_limit
            && (r.per_second.is_nan() || r.per_second <= 0.0)
        {
            return Err(Error::spec(format!(
                "{at}.rate_limit.per_second must be positive"
            )));
        }
        for f in &self.fields {
            Parser::new(f.ty, f.format.clone())
                .check_format()
                .map_err(|e| Error::spec(format!("{at}.fields {:?}: {e}", f.name)))?;
        }
        Ok(())
    }
}

/// The enrich step compiled: what to send and where answers go.
#[derive(Debug, Clone)]
pub struct EnrichPlan {
    /// The step.
    pub step: EnrichStep,
    /// `(name, index)` of the columns sent.
    pub send: Vec<(String, usize)>,
    /// For each field: its parser and the column it replaces (`None`: appended).
    pub fields: Vec<(String, Parser, Option<usize>)>,
}

impl EnrichPlan {
    /// Merges one answer into `row`; the error names the field.
    pub fn merge(
        &self,
        answer: &serde_json::Map<String, serde_json::Value>,
        row: &mut Vec<Value>,
    ) -> std::result::Result<(), (String, String)> {
        for (name, parser, into) in &self.fields {
            let v = match answer.get(name) {
                None => Value::Null,
                Some(v) => parser
                    .from_json(v)
                    .map_err(|e| (name.clone(), format!("enrichment field: {e}")))?,
            };
            match into {
                Some(i) => row[*i] = v,
                None => row.push(v),
            }
        }
        Ok(())
    }
}

/// Posts batches for one object.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    headers: BTreeMap<String, String>,
    retry: RetryPolicy,
    limiter: Option<Arc<RateLimiter>>,
    timeout: Duration,
    max_answer: usize,
    deadline: Option<Instant>,
}

/// How one attempt ended.
enum Sent {
    /// A success: the answer to read.
    Answer(reqwest::Response),
    /// A failure worth a retry, with the `Retry-After` the server asked for.
    Retry(Error, Option<Duration>),
    /// A failure a retry would not mend.
    Failed(Error),
}

impl Client {
    /// A client for `step`, using `http` (built with the network policy), giving up at
    /// `deadline`.
    pub fn new(step: &EnrichStep, http: reqwest::Client, deadline: Option<Instant>) -> Self {
        Client {
            http,
            url: step.url.clone(),
            headers: step.headers.clone(),
            retry: RetryPolicy::from(&step.retry),
            limiter: step
                .rate_limit
                .as_ref()
                .map(|r| Arc::new(RateLimiter::new(r))),
            timeout: Duration::from_secs(step.timeout_secs.unwrap_or(60)),
            max_answer: (step.max_batch_bytes * 4).max(16 << 20),
            deadline,
        }
    }

    /// Posts one batch (NDJSON, `rows` lines) and returns one object per row, in order.
    /// Failures are retried as the HTTP source retries them (connection failures, timeouts
    /// and [`retryable_status`], never a blocked address), waiting [`RetryPolicy::backoff`]
    /// (at least `Retry-After`). Everything is bounded by the job's deadline: a request still
    /// running then is [`Error::Deadline`], and a wait that would pass it is
    /// [`Error::RetryPastDeadline`] (both `Timeout`).
    pub async fn post(
        &self,
        body: bytes::Bytes,
        rows: usize,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        job::within(self.deadline, self.post_until_done(body, rows)).await
    }

    async fn post_until_done(
        &self,
        body: bytes::Bytes,
        rows: usize,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(l) = &self.limiter {
                l.acquire().await;
            }
            let (failure, retry_after) = match self.send(&body, attempt).await {
                Sent::Answer(resp) => return self.answer(resp, rows, attempt).await,
                Sent::Failed(e) => return Err(e),
                Sent::Retry(e, _) if attempt >= self.retry.max_attempts => return Err(e),
                Sent::Retry(e, retry_after) => (e, retry_after),
            };
            let wait = self.retry.backoff(attempt, retry_after);
            if self.deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return Err(Error::RetryPastDeadline {
                    url: self.url.clone(),
                    failure: failure.to_string(),
                    wait_ms: wait.as_millis() as u64,
                });
            }
            tracing::warn!(url = %self.url, attempt, failure = %failure,
                wait_ms = wait.as_millis() as u64, "enrichment batch failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: the answer of a success, or the error and whether it is worth a retry.
    async fn send(&self, body: &bytes::Bytes, attempt: u32) -> Sent {
        let mut req = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .header("content-type", "application/x-ndjson")
            .header("accept", "application/x-ndjson")
            .body(body.clone());
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => Sent::Answer(resp),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let e = Error::SourceStatus {
                    url: self.url.clone(),
                    attempts: attempt,
                    status,
                    body: capped_body(resp, self.timeout).await.replace('\n', " "),
                };
                if retryable_status(status) {
                    Sent::Retry(e, retry_after)
                } else {
                    Sent::Failed(e)
                }
            }
            Err(e) => {
                if let Some(reason) = find_blocked(&e) {
                    let url = self.url.clone();
                    return Sent::Failed(Error::Blocked { url, reason });
                }
                Sent::Retry(
                    Error::SourceRequest {
                        url: self.url.clone(),
                        attempts: attempt,
                        message: error_chain(&e),
                        timeout: e.is_timeout(),
                    },
                    None,
                )
            }
        }
    }

    async fn answer(
        &self,
        mut resp: reqwest::Response,
        rows: usize,
        attempts: u32,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let mut text = Vec::new();
        let read_error = |e: reqwest::Error| Error::SourceRequest {
            url: self.url.clone(),
            attempts,
            message: error_chain(&e),
            timeout: e.is_timeout(),
        };
        while let Some(chunk) = resp.chunk().await.map_err(read_error)? {
            text.extend_from_slice(&chunk);
            if text.len() > self.max_answer {
                return Err(self.bad(
                    text.len() as u64,
                    None,
                    format!("answer over {} bytes", self.max_answer),
                ));
            }
        }
        let mut out = Vec::with_capacity(rows);
        let mut offset = 0u64;
        for line in text.split(|b| *b == b'\n') {
            let start = offset;
            offset += line.len() as u64 + 1;
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let n = out.len() as u64 + 1;
            let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line)
                .map_err(|e| self.bad(start, Some(n), format!("not a JSON object: {e}")))?;
            out.push(obj);
        }
        if out.len() != rows {
            return Err(self.bad(
                offset,
                None,
                format!(
                    "{} answers for a batch of {rows} rows (one object per row, in order)",
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    fn bad(&self, offset: u64, record: Option<u64>, message: String) -> Error {
        Error::Records {
            url: self.url.clone(),
            class: "bad enrichment answer",
            offset,
            record,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::error::ErrorKind;

    /// A server that reads each request and answers with `answer` (raw HTTP), then holds the
    /// connection open: a body longer than it sends never ends.
    async fn server(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn.write_all(answer).await;
                    tokio::time::sleep(Duration::from_secs(600)).await;
                });
            }
        });
        format!("http://{addr}/score")
    }

    fn client(url: String, deadline: Duration) -> Client {
        let step: EnrichStep = serde_json::from_value(serde_json::json!({
            "url": url, "fields": [{"name": "risk"}], "timeout_secs": 300,
            "retry": {"max_attempts": 5, "base_delay_ms": 10}
        }))
        .unwrap();
        Client::new(
            &step,
            reqwest::Client::new(),
            Some(Instant::now() + deadline),
        )
    }

    /// A `Retry-After` past the deadline ends the batch at once as a `Timeout`, instead of
    /// sleeping through the deadline.
    #[tokio::test]
    async fn enrich_retry_after_past_the_deadline_is_a_timeout() {
        let url =
            server(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 120\r\ncontent-length: 4\r\n\r\nbusy")
                .await;
        let started = StdInstant::now();
        let e = client(url, Duration::from_secs(3))
            .post(bytes::Bytes::from_static(b"{}\n"), 1)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        let m = e.to_string();
        assert!(m.contains("HTTP 503") || m.contains("503"), "{m}");
        assert!(m.contains("would pass the deadline"), "{m}");
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    /// A request that gets no answer ends at the deadline as a `Timeout`, not at the step's
    /// timeout of each attempt.
    #[tokio::test]
    async fn enrich_request_without_answer_ends_at_the_deadline() {
        let url = server(b"").await;
        let started = StdInstant::now();
        let e = client(url, Duration::from_secs(1))
            .post(bytes::Bytes::from_static(b"{}\n"), 1)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(matches!(e, Error::Deadline { .. }), "{e}");
        assert!(started.elapsed() >= Duration::from_secs(1));
    }

    /// An error answer whose body never ends is read only up to the source's cap: the error
    /// comes at once, with the start of the body.
    #[tokio::test]
    async fn enrich_error_body_is_read_capped() {
        const ANSWER: &[u8] = concat!(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 1073741824\r\n\r\n",
            "bad batch: row 1 has no id. ",
            "................................................................",
            "................................................................",
            "................................................................",
            "................................................................",
            "................................................................",
            "................................................................",
            "................................................................",
            "................................................................",
            "................................................................",
        )
        .as_bytes();
        let url = server(ANSWER).await;
        let c = client(url, Duration::from_secs(120));
        let post = c.post(bytes::Bytes::from_static(b"{}\n"), 1);
        let e = tokio::time::timeout(Duration::from_secs(30), post)
            .await
            .expect("the error body is read up to its cap, not to its end")
            .unwrap_err();
        let Error::SourceStatus {
            status,
            body,
            attempts,
            ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!((*status, *attempts), (400, 1));
        assert!(body.starts_with("bad batch: row 1 has no id."), "{e}");
        assert!(body.len() <= 512, "{}", body.len());
    }
}
