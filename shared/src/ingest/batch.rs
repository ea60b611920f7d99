//! Many endpoints in one job: `"sources": [...]` with `"concurrency": N`.
//!
//! ```json
//! { "sources": [ {"name": "users",  "http": {"url": "https://api.example.com/users"}},
//!                {"name": "orders", "http": {"url": "https://api.example.com/orders"},
//!                 "records": "$.items[*]"} ],
//!   "concurrency": 2,
//!   "records": "$.data[*]", "compression": "gzip",
//!   "destination": {"bucket": "lake", "key": "raw/{source}/dt={date}/{run_id}.ndjson.gz"} }
//! ```
//!
//! Every other field is shared; a source may override `records` and `input_format`. A
//! top-level `rate_limit` is one token bucket for every request of every source. Each
//! source is an ordinary job writing to its own key (`{source}` is its name, required in the
//! key), so one failing endpoint does not lose the others' outputs. The memory budget is split
//! between the sources that run at once, so N concurrent uploads still fit the function.

use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::budget::MIN_PART_SIZE;
use crate::error::{Error, ErrorKind, Result};
use crate::ingest::{self, JobContext, Summary};
use crate::source::http::rate::{RateLimitSpec, RateLimiter};
use crate::spec::JobSpec;

/// The outcome of one source of a batch.
#[derive(Debug, Clone, Serialize)]
pub struct SourceOutcome {
    /// The source's name.
    pub name: String,
    /// `written`, `exists` or `failed`.
    pub status: &'static str,
    /// The job summary, when it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// The Lambda error type, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<&'static str>,
    /// The error's class, when it failed.
    #[serde(skip)]
    pub kind: Option<ErrorKind>,
    /// The error, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer of a batch.
#[derive(Debug, Clone, Serialize)]
pub struct BatchSummary {
    /// Sources that succeeded.
    pub succeeded: usize,
    /// Sources that failed.
    pub failed: usize,
    /// Each source, in the order of the spec.
    pub sources: Vec<SourceOutcome>,
}

/// Whether an event is a batch (has `sources`).
pub fn is_batch(event: &Value) -> bool {
    event.get("sources").is_some()
}

/// A batch, expanded.
#[derive(Debug)]
pub struct Batch {
    /// One job per source, with its name.
    pub jobs: Vec<(String, JobSpec)>,
    /// Sources running at once.
    pub concurrency: usize,
    /// `rate_limit` of the batch, shared by every request of every source.
    pub rate_limit: Option<RateLimitSpec>,
}

/// Splits a batch event into one job spec per source (validated).
pub fn expand(event: Value) -> Result<Batch> {
    let Value::Object(mut shared) = event else {
        return Err(Error::spec("the event must be a JSON object"));
    };
    if shared.contains_key("source") {
        return Err(Error::spec("give either source or sources, not both"));
    }
    let sources = match shared.remove("sources") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => return Err(Error::spec("sources must be a non-empty array")),
    };
    let concurrency = match shared.remove("concurrency") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| Error::spec("concurrency must be 1..=64"))? as usize,
    };
    let rate_limit = shared
        .remove("rate_limit")
        .map(serde_json::from_value::<RateLimitSpec>)
        .transpose()
        .map_err(|e| Error::spec(format!("rate_limit: {e}")))?;
    let key = shared
        .get("destination")
        .and_then(|d| d.get("key"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !key.contains("{source}") {
        return Err(Error::spec(
            "destination.key must contain {source} when sources are given, so each source has its own object",
        ));
    }
    let mut jobs = Vec::with_capacity(sources.len());
    for (i, entry) in sources.into_iter().enumerate() {
        let Value::Object(mut entry) = entry else {
            return Err(Error::spec(format!("sources[{i}] must be an object")));
        };
        let name = match entry.remove("name") {
            Some(Value::String(n))
                if !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                n
            }
            _ => {
                return Err(Error::spec(format!(
                    "sources[{i}].name must be letters, digits, - or _"
                )));
            }
        };
        if jobs.iter().any(|(n, _)| n == &name) {
            return Err(Error::spec(format!(
                "sources[{i}].name {name:?} is used twice"
            )));
        }
        let mut job: Map<String, Value> = shared.clone();
        let http = entry
            .remove("http")
            .ok_or_else(|| Error::spec(format!("sources[{i}] ({name}): missing http")))?;
        job.insert("source".into(), serde_json::json!({ "http": http }));
        if entry.get("input_format").and_then(Value::as_str) == Some("ndjson") {
            // NDJSON lines are the records: the shared `records` path does not apply.
            job.remove("records");
        }
        for field in ["records", "input_format"] {
            if let Some(v) = entry.remove(field) {
                job.insert(field.into(), v);
            }
        }
        if let Some(extra) = entry.keys().next() {
            return Err(Error::spec(format!(
                "sources[{i}] ({name}): unknown field `{extra}` (a source has name, http, records, input_format)"
            )));
        }
        job["destination"]["key"] = Value::String(key.replace("{source}", &name));
        let spec = JobSpec::from_json(Value::Object(job)).map_err(|e| match e {
            Error::InvalidSpec { message } => {
                Error::spec(format!("sources[{i}] ({name}): {message}"))
            }
            other => other,
        })?;
        jobs.push((name, spec));
    }
    Ok(Batch {
        jobs,
        concurrency,
        rate_limit,
    })
}

/// Runs every source, `concurrency` at a time, each with its share of the memory budget.
/// Fails only when the batch itself is invalid; per-source failures are in the outcome.
pub async fn run(event: Value, ctx: &JobContext) -> Result<BatchSummary> {
    let Batch {
        jobs,
        concurrency,
        rate_limit,
    } = expand(event)?;
    let concurrency = concurrency.min(jobs.len());
    let share = ctx.budget.split(concurrency as u64);
    if share.buffer_bytes() < 2 * MIN_PART_SIZE {
        return Err(Error::spec(format!(
            "concurrency {concurrency} leaves {} MiB of buffers per source; at least 10 MiB each is needed (lower concurrency or raise the function's memory)",
            share.buffer_bytes() >> 20
        )));
    }
    let ctx = JobContext {
        budget: share,
        limiter: rate_limit.as_ref().map(|r| Arc::new(RateLimiter::new(r))),
        ..ctx.clone()
    };
    let ctx = &ctx;
    let sources: Vec<SourceOutcome> = futures::stream::iter(jobs)
        .map(|(name, spec)| async move {
            let ran = crate::job::catch_panic("source", ingest::run(&spec, ctx)).await;
            match ran {
                Ok(summary) => SourceOutcome {
                    name,
                    status: summary.status.as_str(),
                    summary: Some(summary),
                    error_type: None,
                    kind: None,
                    error: None,
                },
                Err(e) => {
                    tracing::error!(source = %name, error = %e, "source failed");
                    SourceOutcome {
                        name,
                        status: "failed",
                        summary: None,
                        error_type: Some(e.kind().as_str()),
                        kind: Some(e.kind()),
                        error: Some(e.to_string()),
                    }
                }
            }
        })
        .buffered(concurrency)
        .collect()
        .await;
    let failed = sources.iter().filter(|s| s.kind.is_some()).count();
    Ok(BatchSummary {
        succeeded: sources.len() - failed,
        failed,
        sources,
    })
}

impl BatchSummary {
    /// The error type to report when some sources failed: the first failure's.
    pub fn failure_kind(&self) -> Option<ErrorKind> {
        self.sources.iter().find_map(|s| s.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn batch(extra: Value) -> Value {
        let mut v = json!({
            "sources": [{"name": "users", "http": {"url": "http://h/u"}},
                        {"name": "orders", "http": {"url": "http://h/o"}, "records": "$.items[*]"}],
            "concurrency": 2, "records": "$.data[*]",
            "destination": {"bucket": "lake", "key": "raw/{source}/x.ndjson"}
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    }

    #[test]
    fn expands_with_overrides_and_own_keys() {
        let Batch {
            jobs,
            concurrency,
            rate_limit,
        } = expand(batch(json!({"rate_limit": {"per_second": 2}}))).unwrap();
        assert_eq!(concurrency, 2);
        assert_eq!(rate_limit.unwrap().per_second, 2.0);
        assert_eq!(jobs[0].1.destination.key, "raw/users/x.ndjson");
        assert_eq!(jobs[0].1.records.as_deref(), Some("$.data[*]"));
        assert_eq!(jobs[1].1.records.as_deref(), Some("$.items[*]"));
    }

    #[test]
    fn bad_batches_are_named() {
        let e = expand(batch(
            json!({"destination": {"bucket": "lake", "key": "raw/x"}}),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("{source}"), "{e}");
        let e = expand(batch(
            json!({"sources": [{"name": "a b", "http": {"url": "http://h/"}}]}),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("sources[0].name"), "{e}");
        let e = expand(batch(
            json!({"sources": [{"name": "a", "http": {"url": "http://h/"}, "urls": 1}]}),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `urls`"), "{e}");
        let e = expand(batch(
            json!({"sources": [{"name": "a", "http": {"url": "ftp://h/"}}]}),
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("sources[0] (a)") && e.to_string().contains("scheme"),
            "{e}"
        );
        let e = expand(batch(json!({"concurrency": 0}))).unwrap_err();
        assert!(e.to_string().contains("concurrency"), "{e}");
    }
}
