//! What every job does the same way: its invocation (run id, start, deadline), validation of
//! the destination and the tuning, the memory plan with the job's overrides, the status it
//! ends with, its manifest, and turning a panic into an error.
//!
//! Each job (`ingest`, `export`, `transform`, `sweep`) reads as a short list of steps on top of
//! this module.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::budget::{MAX_PART_SIZE, MIN_PART_SIZE, MemoryBudget};
use crate::checksum::ChecksumAlgorithm;
use crate::error::{Error, Result, S3Operation};

/// How long before the Lambda deadline a job gives up, aborts and answers, unless
/// `tuning.deadline_margin_ms` says otherwise: time to abort the upload and send the error.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(3000);

/// One invocation of a function: the facts every job runs with.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The Lambda request id: Lambda's own retries reuse it, and so the same output keys.
    pub run_id: String,
    /// When the invocation started (`{date}` and friends in keys).
    pub started: DateTime<Utc>,
    /// The Lambda deadline (`Lambda-Runtime-Deadline-Ms`); `None`: no deadline.
    pub deadline: Option<SystemTime>,
}

impl Invocation {
    /// An invocation starting now.
    pub fn new(run_id: impl Into<String>, deadline: Option<SystemTime>) -> Self {
        Invocation {
            run_id: run_id.into(),
            started: Utc::now(),
            deadline,
        }
    }

    /// When the job must have given up: the Lambda deadline minus `margin`, as an [`Instant`].
    /// A deadline already closer than the margin gives an instant in the past: the job fails
    /// with [`Error::Deadline`] at its first wait.
    pub fn give_up_at(&self, margin: Duration) -> Option<Instant> {
        self.deadline.map(|d| {
            let left = d
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .saturating_sub(margin);
            Instant::now() + left
        })
    }
}

/// How a job (or one object of it) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The output was written.
    Written,
    /// `overwrite: false` found the output already there; nothing was changed.
    Exists,
    /// Not an input of this pipeline.
    Skipped,
    /// This source version was already processed (a duplicate event).
    Duplicate,
    /// The output comes from a newer source version.
    Stale,
    /// The source changed or vanished since the event.
    Superseded,
}

impl Status {
    /// The lowercase name, as in answers and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Written => "written",
            Status::Exists => "exists",
            Status::Skipped => "skipped",
            Status::Duplicate => "duplicate",
            Status::Stale => "stale",
            Status::Superseded => "superseded",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `destination` in a job spec.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Bucket name.
    pub bucket: String,
    /// Key template ([`crate::key`]).
    pub key: String,
    /// When false, an existing object is left alone: the job checks first and writes with
    /// `If-None-Match: *`, and reports `"status": "exists"`. Default true.
    #[serde(default = "yes")]
    pub overwrite: bool,
    /// Full-object checksum algorithm: `"crc64nvme"` (default) or `"crc32c"`.
    #[serde(default)]
    pub checksum: ChecksumAlgorithm,
    /// `Content-Type` of the object. Default: the codec's type when compressing, else the
    /// format's type (or, for a byte copy, the source's `Content-Type`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// Write `<key>.manifest.json` beside the object after it is complete. Default true.
    #[serde(default = "yes")]
    pub manifest: bool,
}

fn yes() -> bool {
    true
}

impl Destination {
    /// Checks the bucket name.
    pub fn validate(&self) -> Result<()> {
        validate_bucket("destination.bucket", &self.bucket)
    }
}

/// Checks an S3 bucket name (3–63 lowercase letters, digits, `-` and `.`); `field` names it in
/// the error.
pub fn validate_bucket(field: &str, bucket: &str) -> Result<()> {
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(Error::spec(format!(
            "{field} {bucket:?} is not a valid bucket name"
        )))
    }
}

/// `tuning` in a job spec or pipeline.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// First part size in MiB (5–5120). Default from the memory budget (8 at 256 MB).
    #[serde(default)]
    pub part_size_mib: Option<u64>,
    /// Parts uploading at once (1–64). Default from the memory budget (7 at 256 MB).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Milliseconds before the Lambda deadline at which the job gives up and aborts. Default
    /// [`DEADLINE_MARGIN`] (3000).
    #[serde(default)]
    pub deadline_margin_ms: Option<u64>,
    /// Largest record (or line) in MiB; a larger one is an error. Default from the memory
    /// budget (16 at 256 MB).
    #[serde(default)]
    pub max_record_mib: Option<u64>,
}

impl Tuning {
    /// Checks every override against its range.
    pub fn validate(&self) -> Result<()> {
        if let Some(mib) = self.part_size_mib {
            let bytes = mib.saturating_mul(1024 * 1024);
            if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&bytes) {
                return Err(Error::spec(format!(
                    "tuning.part_size_mib {mib} is outside S3's 5..=5120 MiB"
                )));
            }
        }
        if self.max_in_flight == Some(0) || self.max_in_flight > Some(64) {
            return Err(Error::spec("tuning.max_in_flight must be 1..=64"));
        }
        if self.max_record_mib == Some(0) {
            return Err(Error::spec("tuning.max_record_mib must be at least 1"));
        }
        Ok(())
    }

    /// The memory plan: the function's budget with these overrides.
    pub fn budget(&self, base: MemoryBudget) -> MemoryBudget {
        let mut b = base;
        if let Some(mib) = self.part_size_mib {
            b = b.with_part_size(mib.saturating_mul(1024 * 1024));
        }
        if let Some(n) = self.max_in_flight {
            b = b.with_max_in_flight(n);
        }
        b
    }

    /// The margin before the Lambda deadline.
    pub fn deadline_margin(&self) -> Duration {
        self.deadline_margin_ms
            .map(Duration::from_millis)
            .unwrap_or(DEADLINE_MARGIN)
    }

    /// The largest record accepted, in bytes.
    pub fn record_cap(&self, budget: &MemoryBudget) -> usize {
        let bytes = match self.max_record_mib {
            Some(mib) => mib.saturating_mul(1024 * 1024),
            None => budget.record_cap(),
        };
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }
}

/// `fut`, or [`Error::Deadline`] (with `bytes_in` 0, for the caller to fill) when `deadline`
/// comes first.
pub async fn within<T>(
    deadline: Option<Instant>,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, fut)
            .await
            .unwrap_or(Err(Error::Deadline { bytes_in: 0 })),
        None => fut.await,
    }
}

/// Runs `fut`; a panic inside it becomes [`Error::Internal`] naming `what`. Every writer the
/// future owned has been dropped by then, which aborts its upload (see
/// [`settle_aborts`](crate::sink::settle_aborts)).
pub async fn catch_panic<T>(what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            tracing::error!(what, panic = %message, "panic; failing the job");
            Err(Error::Internal {
                message: format!("{what} panicked: {message}"),
            })
        }
    }
}

/// A task that ended without its result (it panicked or was cancelled), as [`Error::Internal`].
pub fn join_error(what: &str, e: tokio::task::JoinError) -> Error {
    let message = if e.is_panic() {
        format!(
            "{what} panicked: {}",
            panic_message(e.into_panic().as_ref())
        )
    } else {
        format!("{what} was cancelled")
    };
    Error::Internal { message }
}

/// The text of a panic payload (`panic!` with a literal or a format string).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Writes `<key>.manifest.json`-style documents: `doc` plus the run's id and times, as pretty
/// JSON at `bucket`/`key`. Written only after the output it describes is complete.
pub async fn write_manifest(
    s3: &aws_sdk_s3::Client,
    invocation: &Invocation,
    bucket: &str,
    key: &str,
    mut doc: serde_json::Value,
) -> Result<()> {
    doc["run_id"] = invocation.run_id.clone().into();
    doc["started_at"] = invocation.started.to_rfc3339().into();
    doc["finished_at"] = Utc::now().to_rfc3339().into();
    let body = serde_json::to_vec_pretty(&doc).map_err(|e| Error::Internal {
        message: format!("manifest {key}: {e}"),
    })?;
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .body(body.into())
        .send()
        .await
        .map_err(|e| crate::s3::sdk_error(S3Operation::PutObject, bucket, key, None, &e))?;
    Ok(())
}

/// The manifest key of an output: `<key>.manifest.json`.
pub fn manifest_key(key: &str) -> String {
    format!("{key}.manifest.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_an_internal_error() {
        let err = catch_panic("producer", async {
            if std::hint::black_box(true) {
                panic!("boom {}", 7);
            }
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Internal { .. }), "{err}");
        assert_eq!(err.kind(), crate::ErrorKind::Internal);
        assert!(
            err.to_string().contains("producer panicked: boom 7"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_panicked_task_is_an_internal_error() {
        let task = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("worker died");
            }
        });
        let err = join_error("worker", task.await.unwrap_err());
        assert!(
            err.to_string().contains("worker panicked: worker died"),
            "{err}"
        );
    }

    #[test]
    fn tuning_ranges_are_checked() {
        for (tuning, needle) in [
            (r#"{"part_size_mib": 1}"#, "part_size_mib 1"),
            (r#"{"part_size_mib": 18446744073709551615}"#, "outside S3's"),
            (r#"{"max_in_flight": 0}"#, "max_in_flight must be 1..=64"),
            (
                r#"{"max_record_mib": 0}"#,
                "max_record_mib must be at least 1",
            ),
        ] {
            let t: Tuning = serde_json::from_str(tuning).unwrap();
            let e = t.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{tuning}: {e}");
        }
        assert!(validate_bucket("b", "Bad_Bucket").is_err());
        assert!(validate_bucket("b", "lake-01.raw").is_ok());
    }

    #[test]
    fn a_deadline_inside_the_margin_is_already_past() {
        let inv = Invocation::new("r", Some(SystemTime::now() + Duration::from_secs(1)));
        let at = inv.give_up_at(DEADLINE_MARGIN).unwrap();
        assert!(at <= Instant::now());
        assert!(
            Invocation::new("r", None)
                .give_up_at(DEADLINE_MARGIN)
                .is_none()
        );
    }
}
