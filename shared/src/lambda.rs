//! The Lambda face of every function (feature `lambda`): one error type that becomes the
//! runtime's `Diagnostic`, the [`Invocation`] read from the runtime's context, and
//! [`answer`], which runs a job so that a panic is an `Internal` error and no upload is left
//! open when the function answers.

use std::future::Future;
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use lambda_runtime::{Context, Diagnostic};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, ErrorKind};
use crate::job::{Invocation, panic_message};
use crate::telemetry::{self, emf, progress};
use crate::{checkpoint, ingest, transform};

/// A failed invocation, reported with an error type callers can branch on: `InvalidInput`,
/// `Upstream`, `Retryable`, `Timeout` or `Internal` ([`ErrorKind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionError {
    /// The class of the failure (the Lambda `errorType`).
    pub kind: ErrorKind,
    /// What failed, naming the input, the position and the class.
    pub message: String,
}

impl FunctionError {
    /// An error of `kind` with `message`: for failures that are not one core [`Error`], such
    /// as a batch where some sources failed.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        FunctionError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FunctionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl From<Error> for FunctionError {
    fn from(err: Error) -> Self {
        FunctionError {
            kind: err.kind(),
            message: err.to_string(),
        }
    }
}

impl From<FunctionError> for Diagnostic {
    fn from(err: FunctionError) -> Self {
        Diagnostic {
            error_type: err.kind.as_str().to_owned(),
            error_message: err.message,
        }
    }
}

/// The invocation described by the runtime's context: the request id as the run id (Lambda's
/// own retries reuse it), now as the start, and the deadline from
/// `Lambda-Runtime-Deadline-Ms` ([`deadline_from_header`]).
pub fn invocation(context: &Context) -> Invocation {
    let started = SystemTime::now();
    let deadline = deadline_from_header(context.deadline, started);
    if deadline.is_some_and(|d| context.deadline < EPOCH_MS_FLOOR && d > started) {
        tracing::warn!(
            deadline_ms = context.deadline,
            "Lambda-Runtime-Deadline-Ms is not a time since the epoch; read as a duration from \
             the start of the invocation, as local emulators such as cargo-lambda mean it"
        );
    }
    Invocation::new(context.request_id.clone(), deadline)
}

/// `Lambda-Runtime-Deadline-Ms` values below this (2001-09-09 in milliseconds since the
/// epoch) cannot be a deadline Lambda sends.
const EPOCH_MS_FLOOR: u64 = 1_000_000_000_000;

/// The deadline a `Lambda-Runtime-Deadline-Ms` value means for an invocation that `started`.
/// Lambda sends milliseconds since the epoch. A value too small to be one
/// (below [`EPOCH_MS_FLOOR`]) is read as a duration from the start: cargo-lambda's emulator
/// sends `600000`, meaning ten minutes, and taken as a time it is 1970 — every job would give up
/// before reading a byte. 0 (no header) is no deadline.
pub fn deadline_from_header(deadline_ms: u64, started: SystemTime) -> Option<SystemTime> {
    match deadline_ms {
        0 => None,
        ms if ms < EPOCH_MS_FLOOR => started.checked_add(Duration::from_millis(ms)),
        ms => SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms)),
    }
}

/// Runs a batch of sources ([`ingest::batch::run`]) and answers with its summary. When any
/// source failed, the answer is an error of the first failure's type whose message holds the
/// whole summary (`N of M sources failed: {...}`), so the outputs that were written are named
/// either way. ingest-http and the `sluice` command answer a batch with this.
pub async fn run_batch(payload: Value, ctx: &ingest::JobContext) -> Result<Value, FunctionError> {
    let summary = ingest::batch::run(payload, ctx).await?;
    let answer = serde_json::to_value(&summary)
        .map_err(|e| FunctionError::new(ErrorKind::Internal, format!("batch summary: {e}")))?;
    match summary.failure_kind() {
        None => Ok(answer),
        Some(kind) => Err(FunctionError::new(
            kind,
            format!(
                "{} of {} sources failed: {answer}",
                summary.failed,
                summary.sources.len()
            ),
        )),
    }
}

/// Transforms each of `objects` in turn with `pipeline` ([`transform::run`]), every one of
/// them even after a failure (which is logged with its object), and answers with the
/// summaries. When any object failed, the answer is an error of the first failure's type: its
/// message alone for one object, else `N of M objects failed: <each message, joined by "; ">`,
/// so that the event is retried (the objects already done are then duplicates).
/// transform-s3 and the `sluice` command run a transform's objects with this.
pub async fn transform_objects(
    pipeline: &transform::Pipeline,
    objects: &[transform::SourceObject],
    ctx: &transform::TransformContext,
) -> Result<Vec<transform::ObjectSummary>, FunctionError> {
    let mut summaries = Vec::new();
    let mut failures = Vec::new();
    for object in objects {
        match transform::run(pipeline, object, ctx).await {
            Ok(summary) => summaries.push(summary),
            Err(err) => {
                tracing::error!(bucket = %object.bucket, key = %object.key,
                    error_type = err.kind().as_str(), error = %err, "object failed");
                failures.push(err);
            }
        }
    }
    match objects_failed(objects.len(), &failures) {
        None => Ok(summaries),
        Some(err) => Err(err),
    }
}

/// The error of a transform of `objects` objects of which `failures` failed, in order (see
/// [`transform_objects`]); `None` when nothing failed.
fn objects_failed(objects: usize, failures: &[Error]) -> Option<FunctionError> {
    let first = failures.first()?;
    let detail: Vec<String> = failures.iter().map(|e| e.to_string()).collect();
    let message = if objects == 1 {
        detail.join("")
    } else {
        format!(
            "{} of {objects} objects failed: {}",
            failures.len(),
            detail.join("; ")
        )
    };
    Some(FunctionError::new(first.kind(), message))
}

/// Runs one invocation's `job` and turns its outcome into the function's answer: the summary
/// as JSON, or a [`FunctionError`]. A panic anywhere in the job becomes an `Internal` error;
/// before answering, every upload that a failed or panicking job left open is aborted
/// ([`settle_aborts`](crate::sink::settle_aborts)), so Lambda never freezes the process with
/// one in progress. Prints no metrics: the functions use [`answer_with_metrics`].
pub async fn answer<T, F>(function: &str, job: F) -> Result<Value, FunctionError>
where
    T: Serialize,
    F: Future<Output = Result<T, FunctionError>>,
{
    let result = match AssertUnwindSafe(job).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(FunctionError::from(Error::Internal {
            message: format!("{function} panicked: {}", panic_message(payload.as_ref())),
        })),
    };
    crate::sink::settle_aborts().await;
    let result = result.and_then(|summary| {
        serde_json::to_value(summary).map_err(|e| {
            FunctionError::new(
                ErrorKind::Internal,
                format!("the answer of {function}: {e}"),
            )
        })
    });
    if let Err(err) = &result {
        tracing::error!(function, error_type = err.kind.as_str(), error = %err.message, "invocation failed");
    }
    result
}

/// [`answer`], with the invocation's telemetry: while the job runs, a `progress` line of
/// `invocation.progress` every `SLUICE_PROGRESS_SECS` ([`progress::interval`]), which stops
/// with the job; at the end, success or failure, one CloudWatch EMF line of the invocation on
/// stdout ([`emf::invocation_line`]), named by `function` and the job name the job gave
/// ([`Invocation::name_job`]). Every function answers through this.
pub async fn answer_with_metrics<T, F>(
    function: &str,
    invocation: &Invocation,
    job: F,
) -> Result<Value, FunctionError>
where
    T: Serialize,
    F: Future<Output = Result<T, FunctionError>>,
{
    let run = answer(function, job);
    let result = match progress::interval() {
        None => run.await,
        Some(every) => {
            let ticker = report_progress(function, invocation, every);
            match futures::future::select(std::pin::pin!(run), std::pin::pin!(ticker)).await {
                futures::future::Either::Left((result, _)) => result,
                futures::future::Either::Right((never, _)) => match never {},
            }
        }
    };
    print_metrics(function, invocation, result.as_ref().err());
    result
}

/// Answers an `abort` event ([`checkpoint::Abort`]) for `function` when `payload` is one:
/// the job's upload is aborted and its checkpoint deleted.
pub async fn answer_abort(
    function: &'static str,
    s3: &aws_sdk_s3::Client,
    invocation: &Invocation,
    payload: &Value,
) -> Option<Result<Value, FunctionError>> {
    let event = checkpoint::Abort::from_event(payload)?;
    invocation.name_job("abort");
    let aborted = async { Ok::<_, FunctionError>(checkpoint::abort(s3, function, event?).await?) };
    Some(answer_with_metrics(function, invocation, aborted).await)
}

/// The job of `payload` for `function`: the job as given, or a `continue` event whose
/// checkpoint holds one. A continued job keeps its first invocation's run id and start, so
/// its key and manifest render the same: `invocation` takes them.
pub async fn continuation(
    s3: &aws_sdk_s3::Client,
    function: &'static str,
    invocation: &mut Invocation,
    payload: Value,
) -> Result<checkpoint::Continuation, Error> {
    let Some(event) = checkpoint::Continue::from_event(&payload) else {
        return Ok(checkpoint::Continuation {
            function,
            job: payload,
            from: None,
        });
    };
    let loaded = checkpoint::load(s3, function, event?).await?;
    invocation.started = loaded.checkpoint.started()?;
    invocation.run_id = loaded.checkpoint.run_id.clone();
    Ok(checkpoint::Continuation {
        function,
        job: loaded.checkpoint.job.clone(),
        from: Some(loaded),
    })
}

/// Logs a progress line every `every` (the first one `every` after the start) until dropped.
async fn report_progress(
    function: &str,
    invocation: &Invocation,
    every: Duration,
) -> std::convert::Infallible {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        progress::log_line(function, invocation.job(), &invocation.progress.snapshot());
    }
}

/// Prints the invocation's EMF line on stdout (where the Lambda runtime sends it to
/// CloudWatch Logs, which extracts the metrics).
fn print_metrics(function: &str, invocation: &Invocation, error: Option<&FunctionError>) {
    let facts = emf::InvocationFacts {
        function,
        job: invocation.job(),
        request_id: &invocation.run_id,
        error_type: error.map(|e| e.kind.as_str()),
        peak_rss_bytes: telemetry::peak_rss_bytes(),
    };
    let line = emf::invocation_line(
        &metrics_namespace(),
        &facts,
        &invocation.progress.snapshot(),
        SystemTime::now(),
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `SLUICE_METRICS_NAMESPACE`, read once per process.
pub fn metrics_namespace() -> String {
    static NAMESPACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAMESPACE.get_or_init(emf::namespace).clone()
}

/// Posts an init error to the Runtime API (`/runtime/init/error`), so that Lambda reports a
/// bad configuration rather than a bare exit. Best effort: a failure is logged.
pub async fn report_init_error(err: &Error) {
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let body =
        serde_json::json!({"errorType": err.kind().as_str(), "errorMessage": err.to_string()});
    let sent = reqwest::Client::new()
        .post(format!("http://{api}/2018-06-01/runtime/init/error"))
        .header("Lambda-Runtime-Function-Error-Type", "Runtime.InitError")
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    if let Err(e) = sent {
        tracing::error!(error = %e, "could not report the init error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_panic_is_answered_as_internal() {
        let err = answer_with_metrics("f", &Invocation::new("r", None), async {
            if std::hint::black_box(true) {
                panic!("bug");
            }
            Ok::<_, FunctionError>(json!({}))
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal);
        assert!(err.message.contains("f panicked: bug"), "{}", err.message);
        let d = Diagnostic::from(err);
        assert_eq!(d.error_type, "Internal");
    }

    #[test]
    fn objects_failed_names_every_failure_with_the_first_ones_type() {
        assert_eq!(objects_failed(3, &[]), None);
        let upstream = || Error::Internal {
            message: "a".into(),
        };
        let spec = || Error::spec("b");
        let one = objects_failed(1, &[spec()]).unwrap();
        assert_eq!(one, FunctionError::from(spec()));
        let two = objects_failed(3, &[spec(), upstream()]).unwrap();
        assert_eq!(two.kind, ErrorKind::InvalidInput);
        assert_eq!(
            two.message,
            format!("2 of 3 objects failed: {}; {}", spec(), upstream())
        );
    }

    /// Every sample in `events/` parses with the parser of the function its name starts with,
    /// so the samples never rot.
    #[test]
    fn every_sample_event_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../events");
        let mut seen = std::collections::BTreeMap::<&str, usize>::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = if name.starts_with("transform-s3") && name.contains(".pipeline") {
                crate::transform::Pipeline::from_json_str(&text).map(|_| "transform-s3 pipeline")
            } else {
                let value: Value = serde_json::from_str(&text).unwrap();
                if name.starts_with("ingest-http") {
                    if crate::ingest::batch::is_batch(&value) {
                        crate::ingest::batch::expand(value).map(|_| "ingest-http")
                    } else {
                        crate::JobSpec::from_json(value).map(|_| "ingest-http")
                    }
                } else if name.starts_with("export-postgres") {
                    crate::export::ExportSpec::from_json(value).map(|_| "export-postgres")
                } else if name.starts_with("sweep-uploads") {
                    crate::sweep::SweepConfig::from_event(value, None).map(|_| "sweep-uploads")
                } else if name.starts_with("transform-s3") {
                    crate::transform::event::objects(value).and_then(|(objects, _)| {
                        if name.contains("s3-put") && !objects[0].key.contains(' ') {
                            return Err(Error::spec("the S3 key was not URL-decoded"));
                        }
                        Ok(if objects.is_empty() {
                            "none"
                        } else {
                            "transform-s3"
                        })
                    })
                } else {
                    panic!("{name}: no function has this prefix")
                }
            };
            let function = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            *seen.entry(function).or_default() += 1;
        }
        for (function, at_least) in [
            ("ingest-http", 2),
            ("export-postgres", 2),
            ("sweep-uploads", 1),
            ("transform-s3", 3),
            ("transform-s3 pipeline", 1),
        ] {
            let n = seen.get(function).copied().unwrap_or(0);
            assert!(n >= at_least, "{function}: {n} samples in {dir}: {seen:?}");
        }
    }

    #[test]
    fn a_deadline_header_is_a_time_or_an_emulators_duration() {
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // Lambda: milliseconds since the epoch.
        let lambda = 1_800_000_000_000 + 900_000;
        assert_eq!(
            deadline_from_header(lambda, started),
            Some(started + Duration::from_secs(900))
        );
        // cargo-lambda's `600000`: ten minutes from the start, not 1970.
        assert_eq!(
            deadline_from_header(600_000, started),
            Some(started + Duration::from_secs(600))
        );
        assert_eq!(deadline_from_header(0, started), None);
        // Absurd values do not overflow.
        assert!(deadline_from_header(u64::MAX, started).is_some());
    }

    #[tokio::test]
    async fn errors_keep_their_type() {
        let err = answer("f", async {
            Err::<Value, _>(FunctionError::from(Error::Deadline { bytes_in: 5 }))
        })
        .await
        .unwrap_err();
        assert_eq!(Diagnostic::from(err).error_type, "Timeout");
        let ok = answer("f", async {
            Ok::<_, FunctionError>(json!({"status": "written"}))
        })
        .await
        .unwrap();
        assert_eq!(ok["status"], "written");
    }
}
