//! `sluice`: the jobs of the sluice Lambda functions, run from the command line with the same
//! core — to try a job on a laptop before scheduling it, or to run one where Lambda's 15
//! minutes or 10 GB are not enough (a container on ECS/Fargate or AWS Batch), with no other
//! code.
//!
//! ```text
//! sluice run ingest JOB.json                      # ingest-http's job spec (or a batch)
//! sluice run transform --pipeline P.json s3://bucket/key [s3://bucket/key ...]
//! sluice run export JOB.json                      # export-postgres's spec
//! sluice sweep [CONFIG.json] [--dry-run]          # sweep-uploads (else SWEEP_CONFIG)
//! sluice validate FILE [--kind ingest|export|pipeline|sweep|event]
//! ```
//!
//! Each job runs as its function runs it — the same parser and errors, the same network
//! policy (`SLUICE_ALLOWED_HOSTS`, `SLUICE_ALLOW_PRIVATE_NETWORKS`), the same S3 client
//! (credentials, region and endpoint from the standard AWS environment) — with three
//! differences: there is no deadline, the memory budget is the machine's (or `--memory-mb`),
//! and the run id is a fresh UUID (or `--run-id`, so a retried run reuses its keys).
//!
//! The summary is printed on stdout as JSON (pretty on a terminal, one line otherwise); logs
//! go to stderr (text on a terminal, JSON lines otherwise or with `--json`). A failure prints
//! `<ErrorType>: <message>` on stderr and exits with the code of its type ([`exit`]). A panic
//! is an `Internal` failure; a failure, a panic or Ctrl-C (SIGINT/SIGTERM) aborts every open
//! upload before the process exits, and never completes an object.

mod exit;
mod jobs;
mod logs;
mod memory;
mod progress;
mod s3url;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Runs the jobs of the sluice Lambda functions from the command line, with the same core.
///
/// The summary of a job is printed on stdout as JSON; logs and errors go to stderr. Exit codes:
/// 0 done; 2 bad command line; 3 InvalidInput; 4 Upstream; 5 Retryable; 6 Timeout;
/// 7 Internal; 130 interrupted by SIGINT, 143 by SIGTERM (open uploads aborted).
///
/// AWS credentials, region and endpoint come from the standard AWS environment
/// (AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_REGION, AWS_ENDPOINT_URL, ...). HTTP sources follow
/// SLUICE_ALLOWED_HOSTS and SLUICE_ALLOW_PRIVATE_NETWORKS as in ingest-http. Log level:
/// RUST_LOG (default info).
#[derive(Debug, Parser)]
#[command(name = "sluice", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: Common,
}

/// Flags every command takes.
#[derive(Debug, Args)]
struct Common {
    /// Memory of the run in MiB, from which the buffer budget, part size and uploads in flight
    /// follow as in a Lambda function of that size (128–10240). Default: the machine's — the
    /// cgroup's memory limit when one is set, else the total memory — capped at 10240.
    #[arg(long, global = true, env = "SLUICE_MEMORY_MB", value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(memory::MIN_MIB..=memory::MAX_MIB))]
    memory_mb: Option<u64>,

    /// Logs as JSON lines on stderr, even on a terminal (the default when stderr is not one).
    #[arg(long, global = true)]
    json: bool,

    /// The run id: `{run_id}` in keys. Default: a new UUID. Give the one of a failed run to
    /// retry it with the same keys.
    #[arg(long, global = true, env = "SLUICE_RUN_ID", value_name = "ID")]
    run_id: Option<String>,

    /// No progress bar, even on a terminal.
    #[arg(long, global = true)]
    no_progress: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a job: ingest (HTTP → S3), transform (S3 → S3) or export (Postgres → S3).
    #[command(subcommand)]
    Run(RunJob),

    /// Aborts stale multipart uploads under the configured bucket/prefix pairs, as
    /// sweep-uploads does, and prints what it found.
    Sweep {
        /// The sweep configuration (`{"targets": [...], "max_age": "24h"}`); `-` reads stdin.
        /// Default: the SWEEP_CONFIG environment variable.
        #[arg(value_name = "CONFIG.json")]
        config: Option<PathBuf>,

        /// Reports what would be aborted without aborting anything (sets the configuration's
        /// `dry_run`).
        #[arg(long)]
        dry_run: bool,
    },

    /// Checks a job spec, pipeline, sweep configuration or transform event with the parser of
    /// its function, and prints `FILE: valid KIND` (exit 0) or the function's error (exit 3).
    Validate {
        /// The file to check; `-` reads stdin.
        file: PathBuf,

        /// What the file is. Default: guessed from its keys (`targets`: sweep, `sources` or
        /// `source.http`: ingest, `source.postgres`: export, `input`/`steps`/`output`:
        /// pipeline, `Records` or `bucket`+`key`: event).
        #[arg(long, value_enum)]
        kind: Option<validate::Kind>,
    },
}

#[derive(Debug, Subcommand)]
enum RunJob {
    /// Streams an HTTP source into S3: ingest-http's job spec, or a batch of sources
    /// (`sources`).
    Ingest {
        /// The job spec (the event of ingest-http); `-` reads stdin.
        #[arg(value_name = "JOB.json")]
        job: PathBuf,
    },

    /// Transforms S3 objects with a pipeline, as transform-s3 does for each object of an
    /// event: typed, filtered rows to the output prefix, bad rows to the quarantine.
    Transform {
        /// The pipeline (transform-s3's PIPELINE). Default: PIPELINE (JSON) or PIPELINE_URI
        /// (s3://bucket/key), as transform-s3 reads them.
        #[arg(long, value_name = "P.json")]
        pipeline: Option<PathBuf>,

        /// The objects to transform, one after the other: `s3://bucket/key`, the key as it is
        /// (spaces and any Unicode allowed, no URL-decoding).
        #[arg(required = true, value_name = "s3://BUCKET/KEY")]
        objects: Vec<String>,
    },

    /// Streams a Postgres query into S3: export-postgres's spec. The connection comes from
    /// DATABASE_URL or from the secret the spec names.
    Export {
        /// The export spec (the event of export-postgres); `-` reads stdin.
        #[arg(value_name = "JOB.json")]
        job: PathBuf,
    },
}

fn main() -> ExitCode {
    // The allocator is set up before the runtime's threads start.
    match sluice::budget::runtime() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let bar = progress::Bar::new(!cli.common.no_progress);
    logs::init(cli.common.json, bar.clone());
    let job = match cli.command {
        Command::Validate { file, kind } => return validate::main(&file, kind),
        Command::Run(RunJob::Ingest { job }) => jobs::Job::Ingest(job),
        Command::Run(RunJob::Transform { pipeline, objects }) => {
            jobs::Job::Transform { pipeline, objects }
        }
        Command::Run(RunJob::Export { job }) => jobs::Job::Export(job),
        Command::Sweep { config, dry_run } => jobs::Job::Sweep { config, dry_run },
    };
    let settings = jobs::Settings::new(cli.common.memory_mb, cli.common.run_id);
    jobs::execute(job, settings, &bar).await.report()
}
