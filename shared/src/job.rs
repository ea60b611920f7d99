//! What every job does the same way: its invocation (run id, start, deadline), validation of
//! the destination and the tuning, the memory plan with the job's overrides, the status it
//! ends with, its manifest, and turning a panic into an error.
//!
//! Each job (`ingest`, `export`, `transform`, `sweep`) reads as a short list of steps on top of
//! this module.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::budget::{MAX_PART_SIZE, MIN_PART_SIZE, MemoryBudget};
use crate::checksum::ChecksumAlgorithm;
use crate::error::{Error, Result, S3Operation};
use crate::telemetry::Progress;

/// How long before the Lambda deadline a job gives up, aborts and answers, unless
/// `tuning.deadline_margin_ms` says otherwise: time to abort the upload and send the error.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(3000);
/// The smallest `tuning.deadline_margin_ms`: 2,500 ms, the clean-up budget after the deadline
/// ([`CLEANUP_GRACE`](crate::sink::CLEANUP_GRACE), 2 s) plus 0.5 s to answer.
pub const MIN_DEADLINE_MARGIN: Duration = Duration::from_millis(2500);
/// The largest `tuning.deadline_margin_ms`: 900,000 ms, Lambda's longest timeout; a larger
/// margin would give up before starting.
pub const MAX_DEADLINE_MARGIN: Duration = Duration::from_secs(900);

/// The job name of an invocation whose spec could not be read.
pub const UNNAMED_JOB: &str = "unknown";

/// Distinct partitions a partitioned run may write unless `tuning.max_partitions` says.
pub const DEFAULT_MAX_PARTITIONS: usize = 10_000;
/// The most `tuning.max_partitions` may be.
pub const MAX_PARTITIONS: usize = 1_000_000;

/// One invocation of a function: the facts every job runs with.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The Lambda request id: Lambda's own retries reuse it, and so the same output keys.
    pub run_id: String,
    /// When the invocation started (`{date}` and friends in keys).
    pub started: DateTime<Utc>,
    /// The Lambda deadline (`Lambda-Runtime-Deadline-Ms`); `None`: no deadline.
    pub deadline: Option<SystemTime>,
    /// The live counters of this invocation (bytes, records, parts, retries), shared by its
    /// clones: the progress lines and the end-of-invocation metrics read them.
    pub progress: Arc<Progress>,
    /// The job's name in the metrics and progress lines, set once the spec is read
    /// ([`name_job`](Self::name_job)); shared by clones.
    pub job_name: Arc<OnceLock<String>>,
}

impl Invocation {
    /// An invocation starting now.
    pub fn new(run_id: impl Into<String>, deadline: Option<SystemTime>) -> Self {
        Invocation {
            run_id: run_id.into(),
            started: Utc::now(),
            deadline,
            progress: Arc::default(),
            job_name: Arc::default(),
        }
    }

    /// Names the job (the first name given stays).
    pub fn name_job(&self, name: impl Into<String>) {
        let _ = self.job_name.set(name.into());
    }

    /// The job's name, or [`UNNAMED_JOB`] before the spec was read (an event that is not a
    /// valid spec).
    pub fn job(&self) -> &str {
        self.job_name.get().map_or(UNNAMED_JOB, String::as_str)
    }

    /// When the job must have given up: the Lambda deadline minus `margin`, as an [`Instant`].
    /// A deadline already closer than the margin (earlier work of this invocation used the
    /// time) gives an instant in the past: the job fails with [`Error::Deadline`] at its first
    /// wait. An invocation whose whole time, from its start to its deadline, is not more than
    /// `margin` is [`Error::TimeBudget`]: no job could ever run in it, which is a configuration
    /// to fix (the function's timeout), not a timeout to retry.
    /// A deadline too far away to represent (an absurd `Lambda-Runtime-Deadline-Ms`) counts as
    /// none rather than overflowing.
    pub fn give_up_at(&self, margin: Duration) -> Result<Option<Instant>> {
        let Some(deadline) = self.deadline else {
            return Ok(None);
        };
        let budget = deadline
            .duration_since(SystemTime::from(self.started))
            .unwrap_or_default();
        if budget <= margin {
            return Err(Error::TimeBudget {
                budget_ms: u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
                margin_ms: u64::try_from(margin.as_millis()).unwrap_or(u64::MAX),
            });
        }
        let left = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(margin);
        Ok(Instant::now().checked_add(left))
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
    /// Not finished yet: a checkpoint was written, and the answer's `continue` value, sent as
    /// the next invocation's event, goes on from it ([`crate::checkpoint`]).
    Continue,
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
            Status::Continue => "continue",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `destination` in a job spec.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
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
    /// Write `<key>.manifest.json` beside the object after it is complete (for a partitioned
    /// run, one run manifest). Default true.
    #[serde(default = "yes")]
    pub manifest: bool,
    /// Finish an object before it passes this many MiB and go on in the next `{part}`.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_object_mib: Option<u64>,
    /// Finish an object when it holds this many records and go on in the next `{part}`.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_object_records: Option<u64>,
}

fn yes() -> bool {
    true
}

impl Destination {
    /// Checks the bucket name, the key (not under [`crate::checkpoint::RESERVED`]) and the
    /// rolling limits.
    pub fn validate(&self) -> Result<()> {
        crate::checkpoint::check_not_reserved("destination.key", &self.key)?;
        if self.max_object_mib == Some(0) || self.max_object_records == Some(0) {
            return Err(Error::spec(
                "destination.max_object_mib and max_object_records must be at least 1",
            ));
        }
        validate_bucket("destination.bucket", &self.bucket)
    }

    /// Whether the run may write several objects by record values or by size: `{field:…}`
    /// in the key, or a rolling limit ([`crate::partition`]).
    pub fn is_partitioned(&self) -> bool {
        self.key.contains("{field:")
            || self.max_object_mib.is_some()
            || self.max_object_records.is_some()
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

/// Parts between two checkpoints when `tuning.checkpoint_every_parts` is not set.
pub const DEFAULT_CHECKPOINT_EVERY_PARTS: u32 = 32;

/// `tuning` in a job spec or pipeline.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// First part size in MiB (5–5120). Default from the memory budget (8 at 256 MB).
    #[serde(default)]
    #[schemars(range(min = 5, max = 5120))]
    pub part_size_mib: Option<u64>,
    /// Parts uploading at once (1–64). Default from the memory budget (7 at 256 MB).
    #[serde(default)]
    #[schemars(range(min = 1, max = 64))]
    pub max_in_flight: Option<usize>,
    /// Milliseconds before the Lambda deadline at which the job gives up and aborts. Default
    /// [`DEADLINE_MARGIN`] (3000).
    #[serde(default)]
    #[schemars(range(min = 2500, max = 900_000))]
    pub deadline_margin_ms: Option<u64>,
    /// Largest record (or line) in MiB; a larger one is an error. Default from the memory
    /// budget (16 at 256 MB).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_record_mib: Option<u64>,
    /// Parquet output: flush a row group into the upload when it holds this many MiB
    /// (1 to half the part buffers, 32 at 256 MB). Default from the memory budget (8 at
    /// 256 MB, [`MemoryBudget::row_group_cap`]).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub row_group_mib: Option<u64>,
    /// Partitioned output: objects open at once (1 to the budget's limit, 10 at 256 MB).
    /// Default from the memory budget (5 at 256 MB, [`MemoryBudget::open_partitions`]).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_open_partitions: Option<usize>,
    /// Partitioned output: MiB of local disk (`/tmp`) for the records of partitions without
    /// an open object. Default 80% of what is free there, at most 10,240.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub spill_mib: Option<u64>,
    /// Partitioned output: distinct partitions one run may write (1–1,000,000, default
    /// 10,000). A run past it fails (nothing is left): a key on a column of unbounded values
    /// (an id, a timestamp to the second) would otherwise make an object per record.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_partitions: Option<usize>,
    /// Jobs that can continue in another invocation ([`crate::checkpoint`]): milliseconds,
    /// before the give-up margin, at which the job stops to write its checkpoint (1,000–
    /// 600,000). Default: the time the parts in flight need at the upload rate measured so
    /// far, plus 2 s.
    #[serde(default)]
    #[schemars(range(min = 1000, max = 600_000))]
    pub checkpoint_margin_ms: Option<u64>,
    /// Jobs that can continue: stop and checkpoint after this many seconds of an invocation
    /// even when its deadline is further (1–900). Default: only the deadline.
    #[serde(default)]
    #[schemars(range(min = 1, max = 900))]
    pub max_invocation_secs: Option<u64>,
    /// Jobs that can continue: also write a checkpoint after this many parts (1–10,000), so a
    /// killed invocation's retry resumes near where it died. Default 32.
    #[serde(default)]
    #[schemars(range(min = 1, max = 10_000))]
    pub checkpoint_every_parts: Option<u32>,
}

impl Tuning {
    /// Checks every override against its range and against the function's memory budget
    /// ([`MemoryBudget::from_env`]); see [`validate_for`](Self::validate_for).
    pub fn validate(&self) -> Result<()> {
        self.validate_for(&MemoryBudget::from_env())
    }

    /// Checks every override against its range and against `budget`, naming the field and
    /// the limit:
    /// - `part_size_mib`: S3's 5–5120 MiB, and two parts within the buffer budget `B`
    ///   ([`MemoryBudget::max_part_size`]: 32 MiB at 256 MB);
    /// - `max_in_flight`: 1–64, and `(max_in_flight + 1) × part size ≤ B`
    ///   ([`MemoryBudget::max_in_flight_for`]: 7 with 8 MiB parts at 256 MB);
    /// - `max_record_mib`: at least 1, at most `B / 2` ([`MemoryBudget::max_record_cap`]:
    ///   32 MiB at 256 MB);
    /// - `deadline_margin_ms`: [`MIN_DEADLINE_MARGIN`]–[`MAX_DEADLINE_MARGIN`] (2,500–900,000).
    pub fn validate_for(&self, budget: &MemoryBudget) -> Result<()> {
        const MIB: u64 = 1024 * 1024;
        let buffer_mib = budget.buffer_bytes() / MIB;
        let memory_mib = budget.memory_bytes() / MIB;
        let share = || {
            format!(
                "the part buffers get {buffer_mib} MiB (a quarter of the function's {memory_mib} MiB, shared between the sources running at once)"
            )
        };
        if let Some(mib) = self.part_size_mib {
            let bytes = mib.saturating_mul(MIB);
            if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&bytes) {
                return Err(Error::spec(format!(
                    "tuning.part_size_mib {mib} is outside S3's 5..=5120 MiB"
                )));
            }
            if bytes > budget.max_part_size() {
                return Err(Error::spec(format!(
                    "tuning.part_size_mib {mib} is over the limit of {} MiB: two parts (one uploading, one filling) must fit, and {}",
                    budget.max_part_size() / MIB,
                    share()
                )));
            }
        }
        if let Some(n) = self.max_in_flight {
            if !(1..=64).contains(&n) {
                return Err(Error::spec(format!(
                    "tuning.max_in_flight {n} must be 1..=64"
                )));
            }
            let part = self
                .part_size_mib
                .map_or(budget.part_size(), |m| m.saturating_mul(MIB));
            let limit = budget.max_in_flight_for(part);
            if n as u64 > limit {
                return Err(Error::spec(format!(
                    "tuning.max_in_flight {n} is over the limit of {limit} with {} MiB parts: (max_in_flight + 1) × part size must fit, and {}",
                    part / MIB,
                    share()
                )));
            }
        }
        if let Some(mib) = self.max_record_mib {
            let limit = budget.max_record_cap() / MIB;
            if mib == 0 {
                return Err(Error::spec("tuning.max_record_mib must be at least 1"));
            }
            if mib > limit {
                return Err(Error::spec(format!(
                    "tuning.max_record_mib {mib} is over the limit of {limit} MiB: half the part buffers, since a record buffer can briefly double while it grows; {}",
                    share()
                )));
            }
        }
        if let Some(mib) = self.row_group_mib {
            let limit = budget.max_row_group_cap() / MIB;
            if mib == 0 || mib > limit {
                return Err(Error::spec(format!(
                    "tuning.row_group_mib {mib} is outside 1..={limit}: a row group is held in memory while it fills and again while it is flushed; {}",
                    share()
                )));
            }
        }
        if let Some(n) = self.max_open_partitions {
            let limit = budget.max_open_partitions();
            if n == 0 || n > limit {
                return Err(Error::spec(format!(
                    "tuning.max_open_partitions {n} is outside 1..={limit}: each open object holds up to {} MiB (two 5 MiB parts and its encoder), and open objects may use half of the function's {memory_mib} MiB",
                    crate::budget::PARTITION_OBJECT_BYTES / MIB
                )));
            }
        }
        if let Some(n) = self.max_partitions
            && !(1..=MAX_PARTITIONS).contains(&n)
        {
            return Err(Error::spec(format!(
                "tuning.max_partitions {n} is outside 1..={MAX_PARTITIONS}"
            )));
        }
        if self.spill_mib == Some(0) {
            return Err(Error::spec("tuning.spill_mib must be at least 1"));
        }
        if let Some(ms) = self.checkpoint_margin_ms
            && !(1000..=600_000).contains(&ms)
        {
            return Err(Error::spec(format!(
                "tuning.checkpoint_margin_ms {ms} is outside 1000..=600000"
            )));
        }
        if let Some(n) = self.checkpoint_every_parts
            && !(1..=10_000).contains(&n)
        {
            return Err(Error::spec(format!(
                "tuning.checkpoint_every_parts {n} is outside 1..=10000"
            )));
        }
        if let Some(secs) = self.max_invocation_secs
            && !(1..=900).contains(&secs)
        {
            return Err(Error::spec(format!(
                "tuning.max_invocation_secs {secs} is outside 1..=900: Lambda's longest timeout is 15 minutes"
            )));
        }
        if let Some(ms) = self.deadline_margin_ms {
            let range = MIN_DEADLINE_MARGIN.as_millis()..=MAX_DEADLINE_MARGIN.as_millis();
            if !range.contains(&u128::from(ms)) {
                return Err(Error::spec(format!(
                    "tuning.deadline_margin_ms {ms} is outside {}..={}: the margin must leave 2 s to abort the upload and 0.5 s to answer, and cannot exceed Lambda's 15-minute timeout",
                    range.start(),
                    range.end()
                )));
            }
        }
        Ok(())
    }

    /// The memory plan: `base` with these overrides, once they are checked against it
    /// ([`validate_for`](Self::validate_for)) — `base` may be a share of the function's
    /// budget (several sources at once), smaller than what [`validate`](Self::validate) saw.
    pub fn budget(&self, base: MemoryBudget) -> Result<MemoryBudget> {
        self.validate_for(&base)?;
        let mut b = base;
        if let Some(mib) = self.part_size_mib {
            b = b.with_part_size(mib.saturating_mul(1024 * 1024));
        }
        if let Some(n) = self.max_in_flight {
            b = b.with_max_in_flight(n);
        }
        Ok(b)
    }

    /// When a job that can continue stops to checkpoint ([`crate::checkpoint::StopClock`]):
    /// `pending_bytes` may still be uploading then; `give_up` is the job's deadline.
    pub fn stop_clock(
        &self,
        invocation_started: tokio::time::Instant,
        give_up: Option<tokio::time::Instant>,
        pending_bytes: u64,
        progress: Arc<crate::telemetry::Progress>,
    ) -> crate::checkpoint::StopClock {
        crate::checkpoint::StopClock {
            started: invocation_started,
            limit: self
                .max_invocation_secs
                .map(|s| invocation_started + Duration::from_secs(s)),
            give_up,
            margin: self.checkpoint_margin_ms.map(Duration::from_millis),
            pending_bytes,
            progress,
        }
    }

    /// Parts between two checkpoints of a job that can continue.
    pub fn checkpoint_every_parts(&self) -> u32 {
        self.checkpoint_every_parts
            .unwrap_or(DEFAULT_CHECKPOINT_EVERY_PARTS)
    }

    /// The margin before the Lambda deadline.
    pub fn deadline_margin(&self) -> Duration {
        self.deadline_margin_ms
            .map(Duration::from_millis)
            .unwrap_or(DEADLINE_MARGIN)
    }

    /// The limits of a partitioned run ([`crate::partition`]) on `budget`: open objects,
    /// rolling, and the spill's directory (`SLUICE_SPILL_DIR`, else the temporary directory,
    /// a Lambda's `/tmp`) and budget.
    pub fn partition_limits(
        &self,
        destination: &Destination,
        budget: &MemoryBudget,
    ) -> crate::partition::Limits {
        self.object_limits(
            destination.max_object_mib,
            destination.max_object_records,
            budget,
        )
    }

    /// The limits of a partitioned run whose objects roll at `max_object_mib` /
    /// `max_object_records`.
    pub fn object_limits(
        &self,
        max_object_mib: Option<u64>,
        max_object_records: Option<u64>,
        budget: &MemoryBudget,
    ) -> crate::partition::Limits {
        const MIB: u64 = 1024 * 1024;
        let spill_dir = std::env::var_os("SLUICE_SPILL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let spill_bytes = match self.spill_mib {
            Some(mib) => mib.saturating_mul(MIB),
            None => crate::partition::default_spill_bytes(&spill_dir),
        };
        crate::partition::Limits {
            max_open: self
                .max_open_partitions
                .unwrap_or_else(|| budget.open_partitions()),
            max_partitions: self.max_partitions.unwrap_or(DEFAULT_MAX_PARTITIONS),
            max_object_bytes: max_object_mib.map(|m| m.saturating_mul(MIB)),
            max_object_records,
            spill_dir,
            spill_bytes,
            spill_buffer: usize::try_from(budget.buffer_bytes() / 16).unwrap_or(usize::MAX),
        }
    }

    /// The Parquet row group cap in bytes (`row_group_mib`, else the budget's).
    pub fn row_group_cap(&self, budget: &MemoryBudget) -> usize {
        let bytes = match self.row_group_mib {
            Some(mib) => mib.saturating_mul(1024 * 1024),
            None => budget.row_group_cap(),
        };
        usize::try_from(bytes).unwrap_or(usize::MAX)
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
            (r#"{"max_in_flight": 0}"#, "max_in_flight 0 must be 1..=64"),
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

    /// Regression: `part_size_mib` up to 5120 and `max_in_flight` up to 64 could ask for
    /// 325 GiB of part buffers, and `max_record_mib` had no upper bound at all. Each is now
    /// checked against the memory budget, and the error names the field and the limit.
    #[test]
    fn tuning_over_the_memory_budget_is_refused_naming_the_limit() {
        let b256 = MemoryBudget::for_memory_mib(256);
        for (tuning, needle) in [
            (
                r#"{"part_size_mib": 5120, "max_in_flight": 64}"#,
                "tuning.part_size_mib 5120 is over the limit of 32 MiB",
            ),
            (
                r#"{"part_size_mib": 33}"#,
                "tuning.part_size_mib 33 is over the limit of 32 MiB",
            ),
            (
                r#"{"max_in_flight": 64}"#,
                "tuning.max_in_flight 64 is over the limit of 7 with 8 MiB parts",
            ),
            (
                r#"{"part_size_mib": 16, "max_in_flight": 4}"#,
                "tuning.max_in_flight 4 is over the limit of 3 with 16 MiB parts",
            ),
            (
                r#"{"max_record_mib": 18446744073709551615}"#,
                "tuning.max_record_mib 18446744073709551615 is over the limit of 32 MiB",
            ),
            (r#"{"max_record_mib": 33}"#, "over the limit of 32 MiB"),
            (
                r#"{"deadline_margin_ms": 0}"#,
                "tuning.deadline_margin_ms 0 is outside 2500..=900000",
            ),
            (
                r#"{"deadline_margin_ms": 18446744073709551615}"#,
                "is outside 2500..=900000",
            ),
        ] {
            let t: Tuning = serde_json::from_str(tuning).unwrap();
            let e = t.validate_for(&b256).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
            let e = e.to_string();
            assert!(e.contains(needle), "{tuning}: {e}");
            assert!(t.budget(b256).is_err(), "{tuning}");
        }
        // What fits is accepted, and the plan keeps (F + 1) × P within the buffer budget.
        for tuning in [
            r#"{"part_size_mib": 16, "max_in_flight": 3}"#,
            r#"{"part_size_mib": 32}"#,
            r#"{"max_in_flight": 7, "max_record_mib": 32, "deadline_margin_ms": 2500}"#,
        ] {
            let t: Tuning = serde_json::from_str(tuning).unwrap();
            let b = t.budget(b256).unwrap();
            assert!(
                (b.max_in_flight() as u64 + 1) * b.part_size() <= b256.buffer_bytes(),
                "{tuning}: {b:?}"
            );
        }
        // A bigger function allows more.
        let t: Tuning =
            serde_json::from_str(r#"{"part_size_mib": 64, "max_in_flight": 15}"#).unwrap();
        assert!(t.validate_for(&MemoryBudget::for_memory_mib(4096)).is_ok());
        // A share of the budget (several sources at once) is checked as such.
        let t: Tuning = serde_json::from_str(r#"{"part_size_mib": 16}"#).unwrap();
        assert!(t.budget(b256.split(4)).is_err());
    }

    #[test]
    fn a_deadline_inside_the_margin_is_already_past() {
        // The invocation started 10 s before a deadline that is now 1 s away: its time was
        // used, so the job gives up at once (a timeout), not as a configuration error.
        let mut inv = Invocation::new("r", Some(SystemTime::now() + Duration::from_secs(1)));
        inv.started -= chrono::Duration::seconds(10);
        let at = inv.give_up_at(DEADLINE_MARGIN).unwrap().unwrap();
        assert!(at <= Instant::now());
        assert!(
            Invocation::new("r", None)
                .give_up_at(DEADLINE_MARGIN)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_whole_invocation_shorter_than_the_margin_is_a_configuration_error() {
        // Lambda's default timeout (3 s) against the default margin (3 s).
        let inv = Invocation::new("r", Some(SystemTime::now() + Duration::from_secs(3)));
        let err = inv.give_up_at(DEADLINE_MARGIN).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        let message = err.to_string();
        assert!(message.contains("deadline margin of 3000 ms"), "{message}");
        assert!(
            message.contains("raise the function's timeout"),
            "{message}"
        );
        // A deadline in the past at the start (a wrong clock, or an emulator's) is the same.
        let inv = Invocation::new("r", Some(SystemTime::UNIX_EPOCH + Duration::from_secs(600)));
        assert!(matches!(
            inv.give_up_at(DEADLINE_MARGIN),
            Err(Error::TimeBudget { budget_ms: 0, .. })
        ));
        // One with time to spare gives a future instant.
        let inv = Invocation::new("r", Some(SystemTime::now() + Duration::from_secs(60)));
        assert!(inv.give_up_at(DEADLINE_MARGIN).unwrap().unwrap() > Instant::now());
    }
}
