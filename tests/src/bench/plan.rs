//! What the benchmark runs: settings from the environment, the cases and tools, and the loop
//! that runs each of them in both boxes, verifies the output and records the figures.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, BufReader};

use super::cell::{BoxKind, Cell, Finished, Usage};
use super::source::{SourceFile, generate};
use super::table::{self, TableSource};
use crate::{
    Invocation, LambdaProcess, RuntimeApi, S3Server, binary_path, object_exists, object_stream,
    read_object,
};

const MIB: u64 = 1024 * 1024;
const GIB: f64 = (1u64 << 30) as f64;

/// Settings, from the environment (`bench/run.sh` sets them).
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// Requested source size in bytes (`BENCH_GIB`, default 2; `BENCH_SMOKE=1`: 8 MiB).
    pub size: u64,
    /// Runs of every case and box (`BENCH_RUNS`, default 3; smoke: 1).
    pub runs: usize,
    /// `BENCH_SMOKE=1`: every tool and box once, tiny size.
    pub smoke: bool,
    /// Where results go (`BENCH_OUT`).
    pub out_dir: PathBuf,
    /// Where source files are generated; nginx serves this directory (`BENCH_DATA`).
    pub data_dir: PathBuf,
    /// nginx's base URL, `http://127.0.0.1:PORT` (`BENCH_SOURCE_URL`).
    pub source_url: String,
    /// The venv's python (`BENCH_PYTHON`).
    pub python: PathBuf,
    /// `bench/peers` (`BENCH_PEERS`).
    pub peers_dir: PathBuf,
    /// awscli v1's `aws` (`BENCH_AWS`).
    pub aws: PathBuf,
    /// An AWS config file with path-style addressing (`BENCH_AWS_CONFIG`).
    pub aws_config_file: PathBuf,
    /// Only configurations whose id contains one of these (`BENCH_ONLY`, comma-separated).
    pub only: Vec<String>,
    /// A run still going after this long is killed and reported as timed out
    /// (`BENCH_TIMEOUT_SECS`, default 1800; smoke: 90).
    pub timeout_secs: u64,
    /// The gzip level every tool uses in the equal-level mode (`BENCH_GZIP_LEVEL`, default 1,
    /// sluice's default).
    pub gzip_level: i32,
    /// Bytes of the source the compressor-alone limit compresses in memory (at most 64 MiB, so
    /// that input, output and page cache fit in the Lambda box).
    pub compress_sample: u64,
    /// The command line shown in the report (`BENCH_COMMAND`).
    pub command: String,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set (run bench/run.sh)"))
}

impl Settings {
    /// Reads the settings from the environment.
    pub fn from_env() -> anyhow::Result<Settings> {
        let smoke = std::env::var("BENCH_SMOKE").is_ok_and(|v| v == "1");
        let size = if smoke {
            8 * MIB
        } else {
            let gib: f64 = env_or("BENCH_GIB", 2.0)?;
            if !(gib > 0.0 && gib <= 64.0) {
                bail!("BENCH_GIB={gib}: expected a size in GiB between 0 and 64");
            }
            (gib * GIB) as u64
        };
        let runs = if smoke { 1 } else { env_or("BENCH_RUNS", 3)? };
        if runs == 0 {
            bail!("BENCH_RUNS=0: at least one run is needed");
        }
        let gzip_level = env_or("BENCH_GZIP_LEVEL", 1)?;
        if !(1..=9).contains(&gzip_level) {
            bail!("BENCH_GZIP_LEVEL={gzip_level}: gzip levels are 1 to 9");
        }
        Ok(Settings {
            size,
            runs,
            smoke,
            out_dir: env_path("BENCH_OUT")?,
            data_dir: env_path("BENCH_DATA")?,
            source_url: std::env::var("BENCH_SOURCE_URL")
                .context("BENCH_SOURCE_URL is not set (run bench/run.sh)")?,
            python: env_path("BENCH_PYTHON")?,
            peers_dir: env_path("BENCH_PEERS")?,
            aws: env_path("BENCH_AWS")?,
            aws_config_file: env_path("BENCH_AWS_CONFIG")?,
            only: std::env::var("BENCH_ONLY")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            timeout_secs: env_or("BENCH_TIMEOUT_SECS", if smoke { 90 } else { 1800 })?,
            gzip_level,
            compress_sample: size.min(64 * MIB),
            command: std::env::var("BENCH_COMMAND").unwrap_or_else(|_| "bash bench/run.sh".into()),
        })
    }
}

/// A tool under test, or one of the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Tool {
    /// sluice `ingest-http`, the release bootstrap through the Runtime API emulator.
    Sluice,
    /// sluice `ingest-http` with `SLUICE_UNSIGNED_PAYLOAD=always`: bodies sent without a
    /// SHA-256 payload hash, as sluice sends them over HTTPS (the local Garage speaks HTTP).
    SluiceUnsigned,
    /// (a) `requests.get(stream=True)` + boto3 `upload_fileobj` (8 MiB parts, 4 threads).
    Boto3,
    /// (b) `smart_open` writing `iter_content` chunks.
    SmartOpen,
    /// (c) `curl | aws s3 cp -` (awscli v1 from PyPI).
    AwsCli,
    /// (d) `curl | rclone rcat`.
    Rclone,
    /// Records peer: `json.loads` of the page, `json.dumps` per record, boto3 upload.
    PythonRecords,
    /// Transform peer, the seed's approach: boto3 streaming body -> `csv.DictReader`
    /// generator -> `csv.writer` -> gzip -> `upload_fileobj`, streaming end to end.
    PythonCsv,
    /// Transform peer: polars `read_csv` of the whole gzip object in memory, expressions,
    /// `write_csv`, gzip, boto3 upload.
    Polars,
    /// Limit: the source alone, `curl -o /dev/null`.
    SourceAlone,
    /// Limit: sluice's multipart sink alone, bytes generated in memory.
    SinkAlone,
    /// Limit: sluice's compressor alone, in memory, one thread.
    CompressorAlone,
}

impl Tool {
    /// Short id.
    pub fn id(self) -> &'static str {
        match self {
            Tool::Sluice => "sluice",
            Tool::SluiceUnsigned => "sluice-unsigned",
            Tool::Boto3 => "boto3",
            Tool::SmartOpen => "smart_open",
            Tool::AwsCli => "awscli",
            Tool::Rclone => "rclone",
            Tool::PythonRecords => "python-json",
            Tool::PythonCsv => "python-csv",
            Tool::Polars => "polars",
            Tool::SourceAlone => "source-alone",
            Tool::SinkAlone => "sink-alone",
            Tool::CompressorAlone => "compressor-alone",
        }
    }

    /// What the tool is, for tables.
    pub fn label(self) -> &'static str {
        match self {
            Tool::Sluice => "sluice ingest-http",
            Tool::SluiceUnsigned => "sluice ingest-http, unsigned payload (its HTTPS behaviour)",
            Tool::Boto3 => "requests + boto3 upload_fileobj",
            Tool::SmartOpen => "requests + smart_open",
            Tool::AwsCli => "curl | aws s3 cp - (awscli v1)",
            Tool::Rclone => "curl | rclone rcat",
            Tool::PythonRecords => "json.loads + json.dumps + boto3",
            Tool::PythonCsv => "boto3 stream + csv.DictReader generator + upload_fileobj",
            Tool::Polars => "polars read_csv (in memory) + write_csv + boto3",
            Tool::SourceAlone => "curl -o /dev/null (source alone)",
            Tool::SinkAlone => "sluice sink, bytes from memory (sink alone)",
            Tool::CompressorAlone => "sluice codec in memory, 1 thread (compressor alone)",
        }
    }

    /// Whether this is a peer (not sluice, not a limit).
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            Tool::Boto3
                | Tool::SmartOpen
                | Tool::AwsCli
                | Tool::Rclone
                | Tool::PythonRecords
                | Tool::PythonCsv
                | Tool::Polars
        )
    }
}

/// A case: what is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    /// The machine's limits.
    Limit,
    /// A JSON document copied to S3 (optionally compressed).
    Ingest,
    /// `$.data[*]` of the document to NDJSON.
    Records,
    /// The seed pipeline (`events/transform-s3.pipeline.json`) on a gzip parking-violations
    /// CSV in S3, to a gzip CSV in S3.
    Transform,
}

impl Case {
    /// Short id.
    pub fn id(self) -> &'static str {
        match self {
            Case::Limit => "limit",
            Case::Ingest => "ingest",
            Case::Records => "records",
            Case::Transform => "transform",
        }
    }
}

/// One configuration: a case, a tool and a mode (`none`, `gzip-N`, `zstd-N`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Config {
    /// The case.
    pub case: Case,
    /// The tool.
    pub tool: Tool,
    /// `none`, `gzip-N` or `zstd-N`.
    pub mode: String,
}

impl Config {
    fn new(case: Case, tool: Tool, mode: &str) -> Config {
        Config {
            case,
            tool,
            mode: mode.to_owned(),
        }
    }

    /// `case/mode/tool`.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.case.id(), self.mode, self.tool.id())
    }
}

/// The zstd level every tool uses (each one's default).
pub const ZSTD_LEVEL: i32 = 3;
/// The gzip level the peers would use if left alone (gzip's and zlib's default).
pub const USUAL_GZIP_LEVEL: i32 = 6;

/// Every configuration of a full run, or the smoke selection (each tool once, every
/// compression path of the peers still covered).
pub fn configs(settings: &Settings) -> Vec<Config> {
    let gzip = format!("gzip-{}", settings.gzip_level);
    let usual = format!("gzip-{USUAL_GZIP_LEVEL}");
    let zstd = format!("zstd-{ZSTD_LEVEL}");
    let peers = [Tool::Boto3, Tool::SmartOpen, Tool::AwsCli, Tool::Rclone];
    let mut all = vec![
        Config::new(Case::Limit, Tool::SourceAlone, "none"),
        Config::new(Case::Limit, Tool::SinkAlone, "none"),
        Config::new(Case::Limit, Tool::CompressorAlone, &gzip),
    ];
    if settings.gzip_level != USUAL_GZIP_LEVEL {
        all.push(Config::new(Case::Limit, Tool::CompressorAlone, &usual));
    }
    all.push(Config::new(Case::Limit, Tool::CompressorAlone, &zstd));
    if settings.smoke {
        for mode in ["none", &gzip, &zstd] {
            all.push(Config::new(Case::Ingest, Tool::Sluice, mode));
        }
        all.push(Config::new(Case::Ingest, Tool::SluiceUnsigned, "none"));
        all.push(Config::new(Case::Ingest, Tool::Boto3, &gzip));
        all.push(Config::new(Case::Ingest, Tool::SmartOpen, &zstd));
        all.push(Config::new(Case::Ingest, Tool::AwsCli, &usual));
        all.push(Config::new(Case::Ingest, Tool::Rclone, &zstd));
    } else {
        for mode in ["none", &gzip, &zstd] {
            all.push(Config::new(Case::Ingest, Tool::Sluice, mode));
            if mode != zstd {
                all.push(Config::new(Case::Ingest, Tool::SluiceUnsigned, mode));
            }
            for peer in peers {
                all.push(Config::new(Case::Ingest, peer, mode));
            }
        }
        if settings.gzip_level != USUAL_GZIP_LEVEL {
            for peer in peers {
                all.push(Config::new(Case::Ingest, peer, &usual));
            }
        }
    }
    all.push(Config::new(Case::Records, Tool::Sluice, &gzip));
    all.push(Config::new(Case::Records, Tool::PythonRecords, &gzip));
    for tool in [Tool::Sluice, Tool::PythonCsv, Tool::Polars] {
        all.push(Config::new(Case::Transform, tool, &gzip));
    }
    if !settings.only.is_empty() {
        all.retain(|c| settings.only.iter().any(|o| c.id().contains(o.as_str())));
    }
    all
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Finished and its output verified.
    Ok,
    /// Killed by the OOM killer (memory limit).
    Killed,
    /// Still running at the timeout; killed.
    Timeout,
    /// Exited with an error, or its output was wrong.
    Failed,
}

/// One run and its figures.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    /// `case/mode/tool`.
    pub id: String,
    /// The configuration.
    pub config: Config,
    /// The box.
    #[serde(rename = "box")]
    pub box_kind: BoxKind,
    /// Which run of this configuration and box (1-based).
    pub round: usize,
    /// How it ended.
    pub status: Status,
    /// What went wrong, when it did.
    pub error: Option<String>,
    /// Wall time of the tool (from process start, interpreter and imports included, to exit;
    /// for sluice from spawning the bootstrap to its response; for the compressor the
    /// in-memory compression only).
    pub secs: f64,
    /// Source bytes the run had to move (transform: the uncompressed CSV).
    pub source_bytes: u64,
    /// Source rows (transform).
    pub rows: Option<u64>,
    /// Source rows per second (transform, successful runs).
    pub rows_per_s: Option<f64>,
    /// Size of what it wrote (the object; the compressed bytes for the compressor).
    pub out_bytes: Option<u64>,
    /// Peak memory of all its processes together (cgroup).
    pub peak_bytes: u64,
    /// CPU time of all its processes together (cgroup), nanoseconds.
    pub cpu_ns: u64,
    /// Source MiB per second (successful runs).
    pub mib_per_s: Option<f64>,
    /// CPU seconds per GiB of source.
    pub cpu_s_per_gib: f64,
    /// Seed of the source document (ingest and records).
    pub seed: Option<u64>,
    /// Wall time of the whole step (generation, run, verification, clean-up), for the ETA.
    pub step_secs: f64,
}

/// The benchmark: settings, the S3 server and bucket, the current source file.
pub struct Bench {
    /// Settings.
    pub settings: Settings,
    server: S3Server,
    client: aws_sdk_s3::Client,
    bucket: String,
    source: Option<SourceFile>,
    next_seed: u64,
    log_dir: PathBuf,
    self_exe: PathBuf,
}

impl Bench {
    /// Connects to Garage (the stack must be up) and creates the run's bucket.
    pub async fn new(settings: Settings) -> anyhow::Result<Bench> {
        let server = S3Server::garage();
        let client = server.client().await;
        let bucket = server.fresh_bucket("bench").await?;
        let log_dir = settings.out_dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let next_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            * 1000;
        Ok(Bench {
            settings,
            server,
            client,
            bucket,
            source: None,
            next_seed,
            log_dir,
            self_exe: std::env::current_exe()?,
        })
    }

    /// Generates a new source document (new seed, new content), deleting the previous one.
    fn fresh_source(&mut self) -> anyhow::Result<SourceFile> {
        if let Some(old) = self.source.take() {
            let _ = std::fs::remove_file(&old.path);
        }
        self.next_seed += 1;
        let file = tokio::task::block_in_place(|| {
            generate(&self.settings.data_dir, self.next_seed, self.settings.size)
        })?;
        self.source = Some(file.clone());
        Ok(file)
    }

    /// Generates a new CSV source (new seed) and uploads it into the bucket; the bucket's
    /// clean-up after the run deletes it.
    async fn fresh_table(&mut self) -> anyhow::Result<TableSource> {
        self.next_seed += 1;
        table::upload(
            &self.client,
            &self.bucket,
            self.next_seed,
            self.settings.size,
        )
        .await
    }

    /// The current source document, generating one if there is none.
    fn any_source(&mut self) -> anyhow::Result<SourceFile> {
        match &self.source {
            Some(s) => Ok(s.clone()),
            None => self.fresh_source(),
        }
    }

    fn url(&self, source: &SourceFile) -> String {
        format!("{}/{}", self.settings.source_url, source.name)
    }

    /// Environment for peers: credentials, region, endpoint, awscli and rclone settings.
    fn peer_env(&self) -> Vec<(String, String)> {
        let s = &self.server;
        let mut env: Vec<(String, String)> = s.lambda_env();
        env.extend(
            [
                ("BENCH_S3_ENDPOINT", s.endpoint.clone()),
                (
                    "AWS_CONFIG_FILE",
                    self.settings.aws_config_file.display().to_string(),
                ),
                ("RCLONE_CONFIG", "/dev/null".to_owned()),
                ("RCLONE_CONFIG_GARAGE_TYPE", "s3".to_owned()),
                ("RCLONE_CONFIG_GARAGE_PROVIDER", "Other".to_owned()),
                ("RCLONE_CONFIG_GARAGE_ENDPOINT", s.endpoint.clone()),
                (
                    "RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID",
                    s.access_key_id.clone(),
                ),
                (
                    "RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY",
                    s.secret_access_key.clone(),
                ),
                ("RCLONE_CONFIG_GARAGE_REGION", s.region.clone()),
                ("RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE", "true".to_owned()),
                ("PYTHONDONTWRITEBYTECODE", "1".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        env
    }

    /// Runs `config` once in a `kind` box and returns the record (errors of the harness itself,
    /// not of the tool, are returned as `Err`).
    pub async fn run_one(
        &mut self,
        config: &Config,
        kind: BoxKind,
        round: usize,
    ) -> anyhow::Result<RunRecord> {
        let step = Instant::now();
        let source = match (config.case, config.tool) {
            (Case::Ingest | Case::Records, _) => Some(self.fresh_source()?),
            (Case::Limit, Tool::SourceAlone | Tool::CompressorAlone) => Some(self.any_source()?),
            _ => None,
        };
        let table = match config.case {
            Case::Transform => Some(self.fresh_table().await?),
            _ => None,
        };
        let key = match &table {
            Some(t) => t.output_key.clone(),
            None => format!("{}/{}/{}", config.id(), kind.name(), round),
        };
        let label = format!("{}-{}", config.tool.id(), kind.name());
        let cell = Cell::create(kind, &label)?;
        let mut record = RunRecord {
            id: config.id(),
            config: config.clone(),
            box_kind: kind,
            round,
            status: Status::Ok,
            error: None,
            secs: 0.0,
            source_bytes: match (&table, &source) {
                (Some(t), _) => t.len,
                (None, Some(s)) => s.len,
                (None, None) => self.settings.size,
            },
            rows: table.as_ref().map(|t| t.rows),
            rows_per_s: None,
            out_bytes: None,
            peak_bytes: 0,
            cpu_ns: 0,
            mib_per_s: None,
            cpu_s_per_gib: 0.0,
            seed: table
                .as_ref()
                .map(|t| t.seed)
                .or(source.as_ref().map(|s| s.seed)),
            step_secs: 0.0,
        };
        let outcome = if matches!(config.tool, Tool::Sluice | Tool::SluiceUnsigned) {
            self.run_sluice(config, &cell, source.as_ref(), table.as_ref(), &key)
                .await?
        } else {
            self.run_process(config, &cell, source.as_ref(), table.as_ref(), &key)?
        };
        let usage: Usage = cell.usage();
        drop(cell);
        record.peak_bytes = usage.peak_bytes;
        record.cpu_ns = usage.cpu_ns;
        record.secs = outcome.secs;
        match outcome.result {
            Ended::Timeout => {
                record.status = Status::Timeout;
                record.error = Some(format!(
                    "still running after {} s: killed",
                    self.settings.timeout_secs
                ));
            }
            Ended::Error(message) => {
                record.status = if usage.oom_killed {
                    Status::Killed
                } else {
                    Status::Failed
                };
                record.error = Some(if usage.oom_killed {
                    format!("OOM-killed at the memory limit ({message})")
                } else {
                    message
                });
            }
            Ended::Done { stdout } => {
                match self
                    .verify(
                        config,
                        source.as_ref(),
                        table.as_ref(),
                        &key,
                        &stdout,
                        &mut record,
                    )
                    .await
                {
                    Ok(()) => {}
                    Err(e) => {
                        record.status = Status::Failed;
                        record.error = Some(format!("output check failed: {e:#}"));
                    }
                }
            }
        }
        if record.status == Status::Ok && record.secs > 0.0 {
            record.mib_per_s = Some(record.source_bytes as f64 / MIB as f64 / record.secs);
            record.rows_per_s = record.rows.map(|r| r as f64 / record.secs);
        }
        record.cpu_s_per_gib = record.cpu_ns as f64 / 1e9 / (record.source_bytes as f64 / GIB);
        self.clean_bucket().await?;
        record.step_secs = step.elapsed().as_secs_f64();
        Ok(record)
    }

    async fn run_sluice(
        &self,
        config: &Config,
        cell: &Cell,
        source: Option<&SourceFile>,
        table: Option<&TableSource>,
        key: &str,
    ) -> anyhow::Result<Outcome> {
        let mut env = self.server.lambda_env();
        let (binary, job) = if let Some(table) = table {
            // The seed pipeline, at the mode's gzip level and without the manifest (no peer
            // writes one); a direct invoke on the source object.
            let mut pipeline: Value = serde_json::from_str(table::SEED_PIPELINE)?;
            let Some(("gzip", level)) = config.mode.split_once('-') else {
                bail!("the transform writes gzip CSV, not {}", config.mode);
            };
            pipeline["output"]["compression"] =
                json!({"codec": "gzip", "level": level.parse::<i32>()?});
            pipeline["output"]["manifest"] = json!(false);
            env.push(("PIPELINE".into(), pipeline.to_string()));
            (
                "transform-s3",
                json!({"bucket": self.bucket, "key": table.key}),
            )
        } else {
            let source = source.context("no source")?;
            let mut job = json!({
                "source": {"http": {"url": self.url(source)}},
                "destination": {"bucket": self.bucket, "key": key, "manifest": false},
            });
            if let Some((codec, level)) = config.mode.split_once('-') {
                job["compression"] = json!({"codec": codec, "level": level.parse::<i32>()?});
            }
            if config.case == Case::Records {
                job["records"] = json!("$.data[*]");
            }
            ("ingest-http", job)
        };
        env.push(("SLUICE_ALLOW_PRIVATE_NETWORKS".into(), "true".into()));
        // The transform warns on its first bad row, which the data holds by design.
        let log = if table.is_some() { "error" } else { "warn" };
        env.push(("RUST_LOG".into(), log.into()));
        if config.tool == Tool::SluiceUnsigned {
            env.push(("SLUICE_UNSIGNED_PAYLOAD".into(), "always".into()));
        }
        let timeout = Duration::from_secs(self.settings.timeout_secs);
        let api = RuntimeApi::start().await;
        let start = Instant::now();
        let mut process =
            LambdaProcess::spawn_in(&binary_path(binary), &api, &env, 256, &cell.procs())?;
        let answer = tokio::time::timeout(timeout, api.invoke(job, timeout)).await;
        let secs = start.elapsed().as_secs_f64();
        let result = match answer {
            Err(_) => Ended::Timeout,
            Ok(Err(e)) => Ended::Error(format!(
                "{e:#}; exit: {:?}; last logs: {}",
                process.exited(),
                tail(&process.logs(), 600)
            )),
            Ok(Ok(Invocation::Error {
                error_type,
                error_message,
            })) => Ended::Error(format!("{error_type}: {error_message}")),
            Ok(Ok(Invocation::Response(summary))) => Ended::Done {
                stdout: summary.to_string(),
            },
        };
        process.kill();
        Ok(Outcome { secs, result })
    }

    fn run_process(
        &self,
        config: &Config,
        cell: &Cell,
        source: Option<&SourceFile>,
        table: Option<&TableSource>,
        key: &str,
    ) -> anyhow::Result<Outcome> {
        let s = &self.settings;
        // The transform peers get the source object's key where the others get the URL.
        let url = match (table, source) {
            (Some(t), _) => t.key.clone(),
            (None, Some(src)) => self.url(src),
            (None, None) => String::new(),
        };
        let quarantine_key = table.map(|t| t.quarantine_key.clone()).unwrap_or_default();
        let python = |script: &str, extra: &[&str]| -> (PathBuf, Vec<String>) {
            let mut args = vec![
                s.peers_dir.join(script).display().to_string(),
                url.clone(),
                self.bucket.clone(),
                key.to_owned(),
            ];
            args.extend(extra.iter().map(|a| a.to_string()));
            (s.python.clone(), args)
        };
        let compressor = match config.mode.split_once('-') {
            None => String::new(),
            Some(("gzip", level)) => format!("gzip -{level} -c | "),
            Some(("zstd", level)) => format!("zstd -{level} -c -q | "),
            Some(_) => bail!("unknown mode {}", config.mode),
        };
        let pipeline = |sink: &str| -> (PathBuf, Vec<String>) {
            (
                PathBuf::from("bash"),
                vec![
                    "-o".into(),
                    "pipefail".into(),
                    "-c".into(),
                    format!("curl -sS --fail \"$BENCH_URL\" | {compressor}{sink}"),
                ],
            )
        };
        let (program, args) = match config.tool {
            Tool::Boto3 => python("boto3_stream.py", &[&config.mode]),
            Tool::SmartOpen => python("smart_open_stream.py", &[&config.mode]),
            Tool::PythonRecords => python("records_boto3.py", &["data", &config.mode]),
            Tool::PythonCsv => python("transform_csv.py", &[&quarantine_key, &config.mode]),
            Tool::Polars => python("transform_polars.py", &[&quarantine_key, &config.mode]),
            Tool::AwsCli => pipeline(
                "\"$BENCH_AWS\" s3 cp - \"s3://$BENCH_BUCKET/$BENCH_KEY\" \
                 --endpoint-url \"$BENCH_S3_ENDPOINT\" --only-show-errors",
            ),
            Tool::Rclone => pipeline("rclone rcat \"garage:$BENCH_BUCKET/$BENCH_KEY\""),
            Tool::SourceAlone => (
                PathBuf::from("curl"),
                vec![
                    "-sS".into(),
                    "--fail".into(),
                    "-o".into(),
                    "/dev/null".into(),
                    "-w".into(),
                    "%{size_download}".into(),
                    url.clone(),
                ],
            ),
            Tool::SinkAlone => (
                self.self_exe.clone(),
                vec![
                    "sink-alone".into(),
                    self.bucket.clone(),
                    key.to_owned(),
                    s.size.to_string(),
                ],
            ),
            Tool::CompressorAlone => (
                self.self_exe.clone(),
                vec![
                    "compress".into(),
                    source.context("no source")?.path.display().to_string(),
                    s.compress_sample.to_string(),
                    config.mode.clone(),
                ],
            ),
            Tool::Sluice | Tool::SluiceUnsigned => unreachable!("run_sluice"),
        };
        let mut cmd = cell.command(&program, &args, &self.log_dir)?;
        // A CA bundle only matters for https; rclone refuses to start with one over plain http.
        cmd.command.env_remove("AWS_CA_BUNDLE");
        cmd.command.envs(self.peer_env());
        cmd.command
            .env("BENCH_URL", &url)
            .env("BENCH_BUCKET", &self.bucket)
            .env("BENCH_KEY", key)
            .env("BENCH_AWS", &s.aws);
        let finished: Finished = tokio::task::block_in_place(|| {
            cmd.run(Duration::from_secs(self.settings.timeout_secs))
        })?;
        let secs = finished.elapsed.as_secs_f64();
        let result = if finished.status.is_none() {
            Ended::Timeout
        } else if !finished.success() {
            Ended::Error(format!(
                "{}: {}",
                finished.describe(),
                tail(&finished.stderr_tail, 600)
            ))
        } else {
            Ended::Done {
                stdout: finished.stdout,
            }
        };
        Ok(Outcome { secs, result })
    }

    /// Checks the output of a run that exited cleanly, and fills `out_bytes` (and, for the
    /// compressor, its own timing).
    async fn verify(
        &self,
        config: &Config,
        source: Option<&SourceFile>,
        table: Option<&TableSource>,
        key: &str,
        stdout: &str,
        record: &mut RunRecord,
    ) -> anyhow::Result<()> {
        match config.tool {
            Tool::SourceAlone => {
                let got: u64 = stdout.trim().parse().context("curl's size_download")?;
                let want = source.context("no source")?.len;
                if got != want {
                    bail!("curl read {got} bytes, the file has {want}");
                }
                return Ok(());
            }
            Tool::CompressorAlone => {
                let v: Value = serde_json::from_str(stdout.trim()).context("compressor output")?;
                record.source_bytes = v["bytes_in"].as_u64().context("bytes_in")?;
                record.out_bytes = v["bytes_out"].as_u64();
                record.secs = v["secs"].as_f64().context("secs")?;
                return Ok(());
            }
            _ => {}
        }
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("HeadObject {key}: no object"))?;
        let size = head.content_length().unwrap_or(0) as u64;
        record.out_bytes = Some(size);
        if config.tool == Tool::SinkAlone {
            if size != self.settings.size {
                bail!("object has {size} bytes, {} were sent", self.settings.size);
            }
            return Ok(());
        }
        if let Some(table) = table {
            return self.verify_transform(config, table, key, stdout).await;
        }
        let source = source.context("no source")?;
        let (crc, len, lines) = self.decoded(key, &config.mode).await?;
        match config.case {
            Case::Records => {
                if lines != source.records {
                    bail!(
                        "{lines} NDJSON lines decoded, the document has {} records",
                        source.records
                    );
                }
                if config.tool == Tool::Sluice && (crc, len) != source.ndjson {
                    bail!(
                        "decoded NDJSON: {len} bytes, CRC64NVME {crc:016x}; expected {} bytes, \
                         {:016x}",
                        source.ndjson.1,
                        source.ndjson.0
                    );
                }
            }
            _ => {
                if (crc, len) != (source.crc, source.len) {
                    bail!(
                        "decoded object: {len} bytes, CRC64NVME {crc:016x}; source {} bytes, \
                         {:016x}",
                        source.len,
                        source.crc
                    );
                }
            }
        }
        Ok(())
    }

    /// The transform's checks: the tool's own counts (sluice's summary, the peers' JSON line),
    /// then the output object and the quarantine against the expected ones
    /// ([`table::check`]: same row count, sluice's bytes exactly, the peers' parsed rows).
    async fn verify_transform(
        &self,
        config: &Config,
        table: &TableSource,
        key: &str,
        stdout: &str,
    ) -> anyhow::Result<()> {
        let want = &table.expected;
        let said: Value = serde_json::from_str(stdout.trim())
            .with_context(|| format!("the tool's summary is not JSON: {}", tail(stdout, 300)))?;
        let said = if config.tool == Tool::Sluice {
            let objects = said["objects"]
                .as_array()
                .context("no `objects` in the summary")?;
            if objects.len() != 1 {
                bail!(
                    "{} objects in the summary, expected 1: {said}",
                    objects.len()
                );
            }
            let o = objects[0].clone();
            if o["status"] != "written" || o["key"] != key {
                bail!("summary: {o}");
            }
            o
        } else {
            said
        };
        let counts = (
            said["records_out"].as_u64().or(said["rows_out"].as_u64()),
            said["quarantined"].as_u64(),
        );
        if counts != (Some(want.rows_out), Some(want.quarantined)) {
            bail!(
                "the tool reports {counts:?} rows out and quarantined; expected {} and {}",
                want.rows_out,
                want.quarantined
            );
        }
        let gz = read_object(&self.client, &self.bucket, key).await;
        let quarantine = if object_exists(&self.client, &self.bucket, &table.quarantine_key).await {
            Some(read_object(&self.client, &self.bucket, &table.quarantine_key).await)
        } else {
            None
        };
        tokio::task::block_in_place(|| {
            table::check(
                &gz,
                quarantine.as_deref(),
                want,
                config.tool == Tool::Sluice,
            )
        })?;
        Ok(())
    }

    /// Streams `key` back through the decoder of `mode`: CRC64NVME, length and newline count
    /// of what comes out.
    async fn decoded(&self, key: &str, mode: &str) -> anyhow::Result<(u64, u64, u64)> {
        let raw = BufReader::with_capacity(
            1 << 20,
            object_stream(&self.client, &self.bucket, key).await,
        );
        let mut reader: Box<dyn AsyncRead + Unpin + Send> = match mode.split_once('-') {
            None => Box::new(raw),
            Some(("gzip", _)) => {
                let mut d = GzipDecoder::new(raw);
                d.multiple_members(true);
                Box::new(d)
            }
            Some(("zstd", _)) => Box::new(ZstdDecoder::new(raw)),
            Some(_) => bail!("unknown mode {mode}"),
        };
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        let mut buf = vec![0u8; 1 << 20];
        let (mut len, mut lines) = (0u64, 0u64);
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .context("reading the object back")?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
            len += n as u64;
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        Ok((digest.finalize(), len, lines))
    }

    /// Deletes every object of the bucket and aborts every upload left in progress (by a
    /// killed tool).
    async fn clean_bucket(&self) -> anyhow::Result<()> {
        for (key, upload_id) in crate::uploads_in_progress(&self.client, &self.bucket).await {
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .send()
                .await
                .with_context(|| format!("aborting the upload of {key}"))?;
        }
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .send()
                .await
                .context("ListObjectsV2")?;
            if page.contents().is_empty() {
                return Ok(());
            }
            for object in page.contents() {
                if let Some(key) = object.key() {
                    self.client
                        .delete_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .send()
                        .await
                        .with_context(|| format!("DeleteObject {key}"))?;
                }
            }
        }
    }

    /// Removes the last source file and the bucket.
    pub async fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(old) = self.source.take() {
            let _ = std::fs::remove_file(&old.path);
        }
        self.clean_bucket().await?;
        self.client
            .delete_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .with_context(|| format!("DeleteBucket {}", self.bucket))?;
        Ok(())
    }
}

struct Outcome {
    secs: f64,
    result: Ended,
}

enum Ended {
    Done { stdout: String },
    Error(String),
    Timeout,
}

fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    let cut = text.len().saturating_sub(max);
    let cut = (cut..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[cut..].replace('\n', " | ")
}

/// Where the log files of the runs go.
pub fn log_dir(settings: &Settings) -> PathBuf {
    settings.out_dir.join("logs")
}

/// `path` relative to the workspace root when it is inside it.
pub fn shown(path: &Path) -> String {
    let root = crate::workspace_root();
    path.strip_prefix(&root)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.display().to_string())
}
