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

use super::value::{ColType, Parser, Value};
use crate::error::{Error, Result};
use crate::source::http::rate::{RateLimitSpec, RateLimiter};
use crate::source::http::retry::{RetryPolicy, RetrySpec, parse_retry_after, retryable_status};

/// `{"enrich": {...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrichStep {
    /// The service's URL (`http` or `https`); each batch is one `POST`.
    pub url: String,
    /// Rows per batch. Default 10,000.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Bytes of NDJSON per batch (a batch closes at whichever limit comes first). Default
    /// 4 MiB.
    #[serde(default = "default_batch_bytes")]
    pub max_batch_bytes: usize,
    /// Batches in flight at once, 1–16. Default 1.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Columns sent for each row. Default: every column at this step.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Fields taken from each answer, with their types; a missing field is null.
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
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
}

impl Client {
    /// A client for `step`, using `http` (built with the network policy).
    pub fn new(step: &EnrichStep, http: reqwest::Client) -> Self {
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
        }
    }

    /// Posts one batch (NDJSON, `rows` lines) and returns one object per row, in order.
    pub async fn post(
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
            let failure = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    return self.answer(resp, rows, attempt).await;
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    let text = resp.text().await.unwrap_or_default();
                    let mut text: String = text.chars().take(200).collect();
                    text = text.replace('\n', " ");
                    if !retryable_status(status) || attempt >= self.retry.max_attempts {
                        return Err(Error::SourceStatus {
                            url: self.url.clone(),
                            attempts: attempt,
                            status,
                            body: text,
                        });
                    }
                    (format!("HTTP {status}"), retry_after)
                }
                Err(e) => {
                    if attempt >= self.retry.max_attempts {
                        return Err(Error::SourceRequest {
                            url: self.url.clone(),
                            attempts: attempt,
                            message: error_chain(&e),
                            timeout: e.is_timeout(),
                        });
                    }
                    (error_chain(&e), None)
                }
            };
            let wait = self.retry.backoff(attempt, failure.1);
            tracing::warn!(url = %self.url, attempt, failure = %failure.0,
                wait_ms = wait.as_millis() as u64, "enrichment batch failed; retrying");
            tokio::time::sleep(wait).await;
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
