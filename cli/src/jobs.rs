//! The jobs, built as their functions build them (the clients of each `main.rs`, the steps of
//! each `handler.rs`), run with no deadline, and stopped cleanly by SIGINT or SIGTERM.
//!
//! A job runs inside [`sluice::lambda::answer`], as in the functions (the variant without the
//! EMF line on stdout, which here holds the summary): a panic is an `Internal` failure, and
//! every upload a failed job left open is aborted before the answer. A signal
//! drops the job — every writer it owned aborts its upload when dropped, and an object is only
//! ever completed by a writer's `finish` — then waits for those aborts
//! ([`sluice::sink::settle_aborts`]) before exiting. A second signal exits at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};
use sluice::ErrorKind;
use sluice::job::Invocation;
use sluice::lambda::{self, FunctionError};
use sluice::source::http::{self, guard::NetworkPolicy};
use sluice::{MemoryBudget, transform};
use tokio::signal::unix::{SignalKind, signal};

use crate::exit::{Outcome, Signal};
use crate::progress::Bar;
use crate::{memory, s3url, validate};

/// A job to run.
#[derive(Debug)]
pub enum Job {
    /// `sluice run ingest JOB.json`.
    Ingest(PathBuf),
    /// `sluice run transform [--pipeline P.json] s3://... ...`.
    Transform {
        /// The pipeline file; `None`: `PIPELINE` / `PIPELINE_URI`.
        pipeline: Option<PathBuf>,
        /// `s3://bucket/key` of each object.
        objects: Vec<String>,
    },
    /// `sluice run export JOB.json`.
    Export(PathBuf),
    /// `sluice sweep [CONFIG.json] [--dry-run]`.
    Sweep {
        /// The configuration file; `None`: `SWEEP_CONFIG`.
        config: Option<PathBuf>,
        /// Forces `dry_run`.
        dry_run: bool,
    },
}

impl Job {
    /// The function whose job this is (it names the job in the logs).
    fn function(&self) -> &'static str {
        match self {
            Job::Ingest(_) => "ingest-http",
            Job::Transform { .. } => "transform-s3",
            Job::Export(_) => "export-postgres",
            Job::Sweep { .. } => "sweep-uploads",
        }
    }

    async fn run(
        self,
        budget: MemoryBudget,
        invocation: Invocation,
    ) -> Result<Value, FunctionError> {
        match self {
            Job::Ingest(path) => ingest(&path, budget, invocation).await,
            Job::Transform { pipeline, objects } => {
                transform(pipeline.as_deref(), &objects, budget, invocation).await
            }
            Job::Export(path) => export(&path, budget, invocation).await,
            Job::Sweep { config, dry_run } => sweep(config.as_deref(), dry_run, invocation).await,
        }
    }
}

/// What every run is given: the memory plan and the run id.
#[derive(Debug)]
pub struct Settings {
    budget: MemoryBudget,
    memory_mib: u64,
    memory_source: memory::Source,
    run_id: String,
}

impl Settings {
    /// `--memory-mb` (else the machine's memory) and `--run-id` (else a new UUID v4).
    pub fn new(memory_mb: Option<u64>, run_id: Option<String>) -> Settings {
        let (budget, memory_mib, memory_source) = memory::budget(memory_mb);
        Settings {
            budget,
            memory_mib,
            memory_source,
            run_id: run_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        }
    }
}

/// Runs `job` to its outcome: the summary, the failure, or the signal that stopped it.
pub async fn execute(job: Job, settings: Settings, bar: &Bar) -> Outcome {
    // Listening from the start: a signal during set-up stops the run as cleanly as one later.
    let mut signals = match Signals::listen() {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Failed(FunctionError::new(
                ErrorKind::Internal,
                format!("cannot listen for SIGINT/SIGTERM: {e}"),
            ));
        }
    };
    let function = job.function();
    let budget = settings.budget;
    tracing::info!(
        function,
        run_id = %settings.run_id,
        memory_mib = settings.memory_mib,
        memory_from = settings.memory_source.name(),
        part_size_mib = budget.part_size() >> 20,
        max_in_flight = budget.max_in_flight(),
        "run"
    );
    let invocation = Invocation::new(settings.run_id, None);
    let tracking = bar.track(function, &invocation);
    let work = lambda::answer(function, job.run(budget, invocation));
    let outcome = tokio::select! {
        result = work => Outcome::from(result),
        signal = signals.next() => {
            // `work` is dropped here: its writers abort their uploads as they go.
            tracing::warn!(function, signal = signal.name(), "interrupted; aborting open uploads");
            tokio::spawn(async move {
                let again = signals.next().await;
                eprintln!("{}: exiting now; uploads still open are left to sweep-uploads and the bucket's lifecycle rule", again.name());
                std::process::exit(i32::from(again.code()));
            });
            sluice::sink::settle_aborts().await;
            Outcome::Interrupted(signal)
        }
    };
    drop(tracking);
    outcome
}

/// SIGINT and SIGTERM, once their handlers are installed.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
        }
    }
}

/// The job file's JSON; errors as `sluice validate` gives them.
fn read_json(path: &Path) -> Result<Value, FunctionError> {
    let text = validate::read_text(path)?;
    Ok(validate::parse_json(&text, &validate::origin(path))?)
}

/// The AWS configuration of the standard environment (profile, credentials, region,
/// `AWS_ENDPOINT_URL`), as every function loads it.
async fn aws() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

fn to_json<T: Serialize>(what: &str, value: T) -> Result<Value, FunctionError> {
    serde_json::to_value(value)
        .map_err(|e| FunctionError::new(ErrorKind::Internal, format!("{what} summary: {e}")))
}

/// ingest-http: its clients from `main.rs`, its steps from `handler.rs`.
async fn ingest(
    path: &Path,
    budget: MemoryBudget,
    invocation: Invocation,
) -> Result<Value, FunctionError> {
    let payload = read_json(path)?;
    let conf = aws().await;
    let policy = NetworkPolicy::from_env();
    let ctx = sluice::ingest::JobContext {
        s3: sluice::s3::client(&conf),
        http: http::client(&policy),
        http_same_host: http::same_host_client(&policy),
        policy,
        secrets: Arc::new(sluice::secret::SecretResolver::new(&conf)),
        budget,
        limiter: None,
        invocation,
    };
    if sluice::ingest::batch::is_batch(&payload) {
        return lambda::run_batch(payload, &ctx).await;
    }
    let spec = sluice::JobSpec::from_json(payload)?;
    ctx.invocation.name_job(spec.job_name());
    to_json("ingest", sluice::ingest::run(&spec, &ctx).await?)
}

/// transform-s3: the pipeline from the file (else from `PIPELINE`/`PIPELINE_URI` as the
/// function reads it at init), then each object as the handler runs each object of an event.
async fn transform(
    pipeline: Option<&Path>,
    urls: &[String],
    budget: MemoryBudget,
    invocation: Invocation,
) -> Result<Value, FunctionError> {
    let objects = urls
        .iter()
        .map(|u| s3url::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let conf = aws().await;
    let s3 = sluice::s3::client(&conf);
    let pipeline = match pipeline {
        Some(path) => transform::Pipeline::from_json_str(&validate::read_text(path)?)?,
        None => transform::Pipeline::from_env(&s3).await?,
    };
    let policy = NetworkPolicy::from_env();
    let ctx = transform::TransformContext {
        s3,
        budget,
        invocation,
        http: http::client(&policy),
        policy,
    };
    let summaries = lambda::transform_objects(&pipeline, &objects, &ctx).await?;
    Ok(json!({ "objects": summaries }))
}

/// export-postgres.
async fn export(
    path: &Path,
    budget: MemoryBudget,
    invocation: Invocation,
) -> Result<Value, FunctionError> {
    let payload = read_json(path)?;
    let conf = aws().await;
    let ctx = sluice::export::ExportContext {
        s3: sluice::s3::client(&conf),
        secrets: Arc::new(sluice::secret::SecretResolver::new(&conf)),
        budget,
        invocation,
    };
    let spec = sluice::export::ExportSpec::from_json(payload)?;
    ctx.invocation.name_job(spec.job_name());
    to_json("export", sluice::export::run(&spec, &ctx).await?)
}

/// sweep-uploads: the configuration from the file, else `SWEEP_CONFIG` (a file holding `{}`
/// falls back to it too, as the function's empty event does). The CloudWatch EMF lines the
/// function prints are left out: stdout holds the summary.
async fn sweep(
    config: Option<&Path>,
    dry_run: bool,
    invocation: Invocation,
) -> Result<Value, FunctionError> {
    let event = match config {
        Some(path) => read_json(path)?,
        None => Value::Null,
    };
    let env_config = std::env::var("SWEEP_CONFIG").ok();
    let mut config = sluice::sweep::SweepConfig::from_event(event, env_config.as_deref())?;
    config.dry_run |= dry_run;
    let ctx = sluice::sweep::SweepContext {
        s3: sluice::s3::client(&aws().await),
        invocation,
    };
    let outcome = sluice::sweep::run(&config, &ctx).await;
    match outcome.failure {
        None => to_json("sweep", &outcome.summary),
        Some(err) => {
            let summary = serde_json::to_string(&outcome.summary).unwrap_or_default();
            tracing::info!(%summary, "sweep failed; what it did");
            Err(err.into())
        }
    }
}
