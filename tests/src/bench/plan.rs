//! What the benchmark runs: settings from the environment, the cases and tools, and the loop
//! that runs each of them in every chosen box, verifies the output and records the figures.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, BufReader};

use super::cell::{BoxKind, Cell, Finished, Usage};
use super::pgtable::{self, PgTable};
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
    /// The boxes every configuration runs in, in the report's order (`BENCH_BOXES`,
    /// comma-separated box names such as `unconstrained,lambda-256mb`; default, smoke run
    /// included: all four).
    pub boxes: Vec<BoxKind>,
    /// A run still going after this long is killed and reported as timed out
    /// (`BENCH_TIMEOUT_SECS`, default 1800; smoke: 180, as dlt alone takes ~30 s of its 8 MiB
    /// at 14.5% of a core).
    pub timeout_secs: u64,
    /// The gzip level every tool uses in the equal-level mode (`BENCH_GZIP_LEVEL`, default 1,
    /// sluice's default).
    pub gzip_level: i32,
    /// Bytes of the source the compressor-alone limit compresses in memory (at most 64 MiB, so
    /// that input, output and page cache fit in the Lambda box).
    pub compress_sample: u64,
    /// The command line shown in the report (`BENCH_COMMAND`).
    pub command: String,
    /// The python of dlt's own venv (`BENCH_DLT_PYTHON`; dlt's `s3` extra pins a botocore
    /// that awscli v1 refuses, so dlt cannot share the peers' venv). Unset: dlt is not run.
    pub dlt_python: Option<PathBuf>,
    /// Why dlt is not run, when it is not (`BENCH_DLT_SKIPPED`, from `bench/run.sh`).
    pub dlt_skipped: Option<String>,
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
            boxes: BoxKind::parse_list(&std::env::var("BENCH_BOXES").unwrap_or_default())?,
            timeout_secs: env_or("BENCH_TIMEOUT_SECS", if smoke { 180 } else { 1800 })?,
            gzip_level,
            compress_sample: size.min(64 * MIB),
            command: std::env::var("BENCH_COMMAND").unwrap_or_else(|_| "bash bench/run.sh".into()),
            dlt_python: std::env::var_os("BENCH_DLT_PYTHON")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            dlt_skipped: std::env::var("BENCH_DLT_SKIPPED")
                .ok()
                .filter(|r| !r.trim().is_empty()),
        })
    }

    /// Why dlt is left out of this run, or `None` when it runs.
    pub fn dlt_reason(&self) -> Option<String> {
        match (&self.dlt_python, &self.dlt_skipped) {
            (Some(_), _) => None,
            (None, Some(reason)) => Some(reason.clone()),
            (None, None) => Some("BENCH_DLT_PYTHON is not set (run bench/run.sh)".into()),
        }
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
    /// `write_csv`, gzip, boto3 upload; to Parquet: `scan_csv` of the object on S3, expressions,
    /// `sink_parquet` to S3 on the streaming engine.
    Polars,
    /// Parquet peer: pyarrow (`json.loads` + `Table.from_pylist` batches for records, the
    /// streaming `open_csv` reader + `pyarrow.compute` for the transform) writing with
    /// `pq.ParquetWriter` on `pyarrow.fs.S3FileSystem`.
    Pyarrow,
    /// Parquet peer: DuckDB (`read_json` / `read_csv` of a downloaded copy, `COPY ... TO`
    /// a local Parquet file, boto3 upload).
    DuckDb,
    /// Records peer, to NDJSON and to Parquet: dlt's `rest_api` source, `filesystem`
    /// destination on S3, `loader_file_format="jsonl"` (gzip, at dlt's fixed level 9) or
    /// `"parquet"` ([`dlt_format`]).
    Dlt,
    /// Export peer: psycopg2 named (server-side) cursor, `fetchmany(10000)`, `csv.writer`,
    /// gzip, boto3 `upload_fileobj` over a file-like object: streaming end to end.
    PythonPg,
    /// Export peer: `psql -c "\copy (query) to stdout (csv, header)" | gzip -N | aws s3 cp -`.
    PsqlAwsCli,
    /// Limit: the source alone, `curl -o /dev/null`.
    SourceAlone,
    /// Limit: sluice's multipart sink alone, bytes generated in memory.
    SinkAlone,
    /// Limit: sluice's compressor alone, in memory, on the threads the box's memory buys
    /// ([`sluice::MemoryBudget::compress_threads`]).
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
            Tool::Pyarrow => "pyarrow",
            Tool::DuckDb => "duckdb",
            Tool::Dlt => "dlt",
            Tool::PythonPg => "psycopg2",
            Tool::PsqlAwsCli => "psql-awscli",
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
            Tool::Pyarrow => "pyarrow ParquetWriter on S3FileSystem",
            Tool::DuckDb => "DuckDB COPY TO parquet + boto3",
            Tool::Dlt => "dlt rest_api + filesystem",
            Tool::PythonPg => {
                "psycopg2 server-side cursor fetchmany + csv.writer + gzip + boto3 upload_fileobj"
            }
            Tool::PsqlAwsCli => "psql \\copy (csv) | gzip -N | aws s3 cp -",
            Tool::SourceAlone => "curl -o /dev/null (source alone)",
            Tool::SinkAlone => "sluice sink, bytes from memory (sink alone)",
            Tool::CompressorAlone => "sluice codec in memory (compressor alone)",
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
                | Tool::Pyarrow
                | Tool::DuckDb
                | Tool::Dlt
                | Tool::PythonPg
                | Tool::PsqlAwsCli
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
    /// `$.data[*]` of the document to Parquet (zstd), with the records' declared schema.
    RecordsParquet,
    /// The seed pipeline on the same gzip CSV, to Parquet (`output.format: parquet`, zstd).
    TransformParquet,
    /// A query of a table in a local Postgres ([`PgTable`]) to a gzip CSV (header) in S3.
    Export,
}

impl Case {
    /// Short id.
    pub fn id(self) -> &'static str {
        match self {
            Case::Limit => "limit",
            Case::Ingest => "ingest",
            Case::Records => "records",
            Case::Transform => "transform",
            Case::RecordsParquet => "records-parquet",
            Case::TransformParquet => "transform-parquet",
            Case::Export => "export",
        }
    }

    /// Whether the case writes Parquet.
    pub fn is_parquet(self) -> bool {
        matches!(self, Case::RecordsParquet | Case::TransformParquet)
    }

    /// Whether the case runs the seed pipeline on a CSV in S3.
    pub fn is_transform(self) -> bool {
        matches!(self, Case::Transform | Case::TransformParquet)
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

    /// What the tool does in this case, for tables.
    pub fn label(&self) -> &'static str {
        match (self.case, self.tool) {
            (Case::Transform | Case::TransformParquet, Tool::Sluice) => "sluice transform-s3",
            (Case::Export, Tool::Sluice) => "sluice export-postgres",
            (Case::RecordsParquet, Tool::Pyarrow) => {
                "json.loads + pyarrow from_pylist batches + ParquetWriter on S3FileSystem"
            }
            (Case::TransformParquet, Tool::Pyarrow) => {
                "pyarrow open_csv stream (S3FileSystem) + compute + ParquetWriter on S3FileSystem"
            }
            (Case::RecordsParquet, Tool::DuckDb) => {
                "download + DuckDB read_json + COPY TO parquet + boto3"
            }
            (Case::TransformParquet, Tool::DuckDb) => {
                "download + DuckDB read_csv + COPY TO parquet + boto3"
            }
            (Case::TransformParquet, Tool::Polars) => {
                "polars scan_csv (S3) + sink_parquet (S3), streaming engine"
            }
            (Case::RecordsParquet, Tool::Dlt) => "dlt rest_api + filesystem on S3 (s3fs), parquet",
            // dlt gzips jsonl with Python's gzip.open and no level: 9, not the case's level.
            (Case::Records, Tool::Dlt) => {
                "dlt rest_api + filesystem on S3 (s3fs), jsonl, gzip level 9 (dlt's, fixed)"
            }
            (_, tool) => tool.label(),
        }
    }

    /// [`Config::label`] in a `kind` box: the compressor alone says how many threads it
    /// compresses on there (what the box's memory buys: `MemoryBudget::compress_threads`).
    pub fn label_in(&self, kind: BoxKind) -> String {
        if self.tool == Tool::CompressorAlone {
            let threads = compress_threads(kind);
            let s = if threads == 1 { "" } else { "s" };
            format!("sluice codec in memory, {threads} thread{s} (compressor alone)")
        } else {
            self.label().to_owned()
        }
    }
}

/// The threads sluice's compressor uses in a `kind` box: those of a function of the box's
/// memory (one vCPU per 1,769 MB, at most the cores).
pub fn compress_threads(kind: BoxKind) -> u32 {
    sluice::MemoryBudget::for_memory_mib(kind.function_memory_mib()).compress_threads()
}

/// The zstd level every tool uses (each one's default).
pub const ZSTD_LEVEL: i32 = 3;
/// The mode of the Parquet cases: zstd pages at each writer's default level.
pub const PARQUET_MODE: &str = "zstd";
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
    for tool in [Tool::Sluice, Tool::PythonRecords, Tool::Dlt] {
        if tool != Tool::Dlt || settings.dlt_python.is_some() {
            all.push(Config::new(Case::Records, tool, &gzip));
        }
    }
    for tool in [Tool::Sluice, Tool::PythonCsv, Tool::Polars] {
        all.push(Config::new(Case::Transform, tool, &gzip));
    }
    for tool in [Tool::Sluice, Tool::Pyarrow, Tool::DuckDb, Tool::Dlt] {
        if tool != Tool::Dlt || settings.dlt_python.is_some() {
            all.push(Config::new(Case::RecordsParquet, tool, PARQUET_MODE));
        }
    }
    for tool in [Tool::Sluice, Tool::Pyarrow, Tool::Polars, Tool::DuckDb] {
        all.push(Config::new(Case::TransformParquet, tool, PARQUET_MODE));
    }
    for tool in [Tool::Sluice, Tool::PythonPg, Tool::PsqlAwsCli] {
        all.push(Config::new(Case::Export, tool, &gzip));
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
    /// A peer that gave up with its own out-of-memory error at the box's limit (DuckDB sizes
    /// its `memory_limit` from the cgroup's and stops there; Python's `MemoryError`).
    OutOfMemory,
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
    /// Source rows (records, transform, export).
    pub rows: Option<u64>,
    /// Source rows per second (records, transform, export; successful runs).
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
    /// What the Parquet output held, read back (Parquet cases, verified runs).
    pub parquet: Option<ParquetFacts>,
}

/// A Parquet output as pyarrow reads it back (`bench/peers/parquet_check.py`).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ParquetFacts {
    /// Rows, from the footers.
    pub rows: u64,
    /// Row groups.
    pub row_groups: u64,
    /// Files (dlt writes the table as one file per load job; everyone else one object).
    #[serde(default)]
    pub files: u64,
    /// Page codecs of the column chunks, as pyarrow names them (`ZSTD`).
    pub codecs: Vec<String>,
    /// Column names and arrow types.
    pub columns: Vec<(String, String)>,
}

/// The columns of the records case's Parquet: sluice's declared schema, what every peer
/// writes (`tags`, a JSON array in the source, as its compact JSON text).
const RECORD_COLUMNS: [(&str, &str, &str); 8] = [
    ("id", "int", "int64"),
    ("name", "string", "string"),
    ("kind", "string", "string"),
    ("ref", "string", "string"),
    ("value", "float", "double"),
    ("ts", "timestamp", "timestamp[us, tz=UTC]"),
    ("tags", "string", "string"),
    ("active", "bool", "bool"),
];

/// The columns of the seed pipeline's output.
const TRANSFORM_COLUMNS: [&str; 3] = ["vehicle_make", "issuing_agency", "address"];

/// The benchmark: settings, the S3 server and bucket, the current source file.
pub struct Bench {
    /// Settings.
    pub settings: Settings,
    server: S3Server,
    client: aws_sdk_s3::Client,
    bucket: String,
    source: Option<SourceFile>,
    /// The export case's table, generated at its first run and kept for the others.
    pg: Option<PgTable>,
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
            pg: None,
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
            (Case::Ingest | Case::Records | Case::RecordsParquet, _) => Some(self.fresh_source()?),
            (Case::Limit, Tool::SourceAlone | Tool::CompressorAlone) => Some(self.any_source()?),
            _ => None,
        };
        let table = if config.case.is_transform() {
            Some(self.fresh_table().await?)
        } else {
            None
        };
        if config.case == Case::Export && self.pg.is_none() {
            self.pg = Some(PgTable::create(self.settings.size).await?);
        }
        let key = match &table {
            Some(t) if config.case.is_parquet() => t.parquet_key.clone(),
            Some(t) => t.output_key.clone(),
            None if config.case == Case::Export => {
                format!("{}/{}/{}.csv.gz", config.id(), kind.name(), round)
            }
            None => format!("{}/{}/{}", config.id(), kind.name(), round),
        };
        let (source_bytes, rows) = self.source_figures(config, source.as_ref(), table.as_ref());
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
            source_bytes,
            rows,
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
            parquet: None,
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
            Ended::OutOfMemory(message) => {
                record.status = if usage.oom_killed {
                    Status::Killed
                } else {
                    Status::OutOfMemory
                };
                record.error = Some(format!("out of memory at the box's limit ({message})"));
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

    /// The bytes a run has to move and the rows it reads, when its case counts them.
    fn source_figures(
        &self,
        config: &Config,
        source: Option<&SourceFile>,
        table: Option<&TableSource>,
    ) -> (u64, Option<u64>) {
        match (table, source, &self.pg) {
            (Some(t), _, _) => (t.len, Some(t.rows)),
            (None, Some(s), _) => {
                let records = matches!(config.case, Case::Records | Case::RecordsParquet);
                (s.len, records.then_some(s.records))
            }
            (None, None, Some(pg)) if config.case == Case::Export => (pg.len, Some(pg.rows)),
            (None, None, _) => (self.settings.size, None),
        }
    }

    /// `ingest-http`'s job: the source document's URL, the mode's codec, `$.data[*]` for the
    /// records cases, the declared schema for Parquet.
    fn ingest_job(&self, config: &Config, source: &SourceFile, key: &str) -> anyhow::Result<Value> {
        let mut job = json!({
            "source": {"http": {"url": self.url(source)}},
            "destination": {"bucket": self.bucket, "key": key, "manifest": false},
        });
        if let Some((codec, level)) = config.mode.split_once('-') {
            job["compression"] = json!({"codec": codec, "level": level.parse::<i32>()?});
        }
        if matches!(config.case, Case::Records | Case::RecordsParquet) {
            job["records"] = json!("$.data[*]");
        }
        if config.case == Case::RecordsParquet {
            // No `compression`: the page codec defaults to zstd.
            job["format"] = json!("parquet");
            job["schema"] = RECORD_COLUMNS
                .iter()
                .map(|(name, ty, _)| json!({"name": name, "type": ty}))
                .collect();
        }
        Ok(job)
    }

    /// `export-postgres`'s job: the export query to a CSV (header) at the mode's gzip level,
    /// without the manifest (no peer writes one); the connection is `DATABASE_URL`.
    fn export_job(&self, config: &Config, key: &str) -> anyhow::Result<Value> {
        let Some(("gzip", level)) = config.mode.split_once('-') else {
            bail!("the export writes gzip CSV, not {}", config.mode);
        };
        Ok(json!({
            "source": {"postgres": {"query": pgtable::QUERY}},
            "format": "csv",
            "compression": {"codec": "gzip", "level": level.parse::<i32>()?},
            "destination": {"bucket": self.bucket, "key": key, "manifest": false},
        }))
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
        let (binary, job) = if config.case == Case::Export {
            let pg = self.pg.as_ref().context("no export table")?;
            env.push(("DATABASE_URL".into(), pg.url.clone()));
            ("export-postgres", self.export_job(config, key)?)
        } else if let Some(table) = table {
            env.push(("PIPELINE".into(), transform_pipeline(config)?.to_string()));
            (
                "transform-s3",
                json!({"bucket": self.bucket, "key": table.key}),
            )
        } else {
            let source = source.context("no source")?;
            ("ingest-http", self.ingest_job(config, source, key)?)
        };
        env.push(("SLUICE_ALLOW_PRIVATE_NETWORKS".into(), "true".into()));
        // The transform warns on its first bad row, which the data holds by design.
        // `BENCH_RUST_LOG` overrides it, to see what a run did (e.g. `sluice=debug`).
        let log = std::env::var("BENCH_RUST_LOG")
            .unwrap_or_else(|_| (if table.is_some() { "error" } else { "warn" }).into());
        env.push(("RUST_LOG".into(), log));
        if config.tool == Tool::SluiceUnsigned {
            env.push(("SLUICE_UNSIGNED_PAYLOAD".into(), "always".into()));
        }
        if let Some(vcpus) = cell.kind.sluice_vcpus() {
            env.push(("SLUICE_VCPUS".into(), vcpus));
        }
        let timeout = Duration::from_secs(self.settings.timeout_secs);
        let api = RuntimeApi::start().await;
        let start = Instant::now();
        // Configured with the box's memory, as Lambda configures a function of that size.
        let memory_mib = u32::try_from(cell.kind.function_memory_mib())?;
        let mut process =
            LambdaProcess::spawn_in(&binary_path(binary), &api, &env, memory_mib, &cell.procs())?;
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

    /// The program and arguments that run `config`'s tool (not sluice) on `url` (the source's
    /// URL, the transform's source key, the export's query) into `key`.
    fn command_line(
        &self,
        config: &Config,
        source: Option<&SourceFile>,
        table: Option<&TableSource>,
        url: &str,
        key: &str,
    ) -> anyhow::Result<(PathBuf, Vec<String>)> {
        let s = &self.settings;
        let quarantine_key = table.map(|t| t.quarantine_key.clone()).unwrap_or_default();
        let python = |script: &str, extra: &[&str]| -> (PathBuf, Vec<String>) {
            let mut args = vec![
                s.peers_dir.join(script).display().to_string(),
                url.to_owned(),
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
        Ok(match config.tool {
            Tool::Boto3 => python("boto3_stream.py", &[&config.mode]),
            Tool::SmartOpen => python("smart_open_stream.py", &[&config.mode]),
            Tool::PythonRecords => python("records_boto3.py", &["data", &config.mode]),
            Tool::PythonCsv => python("transform_csv.py", &[&quarantine_key, &config.mode]),
            Tool::Polars if config.case == Case::TransformParquet => {
                python("transform_polars_parquet.py", &[&quarantine_key])
            }
            Tool::Polars => python("transform_polars.py", &[&quarantine_key, &config.mode]),
            Tool::Pyarrow if config.case == Case::RecordsParquet => {
                python("records_pyarrow.py", &[])
            }
            Tool::Pyarrow => python("transform_pyarrow.py", &[&quarantine_key]),
            Tool::DuckDb if config.case == Case::RecordsParquet => python("records_duckdb.py", &[]),
            Tool::DuckDb => python("transform_duckdb.py", &[&quarantine_key]),
            Tool::Dlt => {
                let (format, _) = dlt_format(config.case)?;
                let (_, args) = python("records_dlt.py", &[format]);
                let dlt = s.dlt_python.clone().context("dlt's venv is not set up")?;
                (dlt, args)
            }
            Tool::AwsCli => pipeline(
                "\"$BENCH_AWS\" s3 cp - \"s3://$BENCH_BUCKET/$BENCH_KEY\" \
                 --endpoint-url \"$BENCH_S3_ENDPOINT\" --only-show-errors",
            ),
            Tool::Rclone => pipeline("rclone rcat \"garage:$BENCH_BUCKET/$BENCH_KEY\""),
            Tool::PythonPg => python("export_psycopg2.py", &[&config.mode]),
            Tool::PsqlAwsCli => (
                PathBuf::from("bash"),
                vec![
                    "-o".into(),
                    "pipefail".into(),
                    "-c".into(),
                    format!(
                        "\"$BENCH_PSQL\" \"$BENCH_PG_URL\" -X -q -v ON_ERROR_STOP=1 \
                         -c \"\\copy ($BENCH_URL) to stdout with (format csv, header)\" \
                         | {compressor}\"$BENCH_AWS\" s3 cp - \"s3://$BENCH_BUCKET/$BENCH_KEY\" \
                         --endpoint-url \"$BENCH_S3_ENDPOINT\" --only-show-errors"
                    ),
                ],
            ),
            Tool::SourceAlone => (
                PathBuf::from("curl"),
                vec![
                    "-sS".into(),
                    "--fail".into(),
                    "-o".into(),
                    "/dev/null".into(),
                    "-w".into(),
                    "%{size_download}".into(),
                    url.to_owned(),
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
        })
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
        // The transform peers get the source object's key, the export peers the query, where
        // the others get the URL.
        let url = match (table, source) {
            (Some(t), _) => t.key.clone(),
            (None, Some(src)) => self.url(src),
            (None, None) if config.case == Case::Export => pgtable::QUERY.to_owned(),
            (None, None) => String::new(),
        };
        let (program, args) = self.command_line(config, source, table, &url, key)?;
        let mut cmd = cell.command(&program, &args, &self.log_dir)?;
        // A CA bundle only matters for https; rclone refuses to start with one over plain http.
        cmd.command.env_remove("AWS_CA_BUNDLE");
        cmd.command.envs(self.peer_env());
        cmd.command
            .env("BENCH_URL", &url)
            .env("BENCH_BUCKET", &self.bucket)
            .env("BENCH_KEY", key)
            .env("BENCH_AWS", &s.aws);
        if let Some(pg) = self.pg.as_ref().filter(|_| config.case == Case::Export) {
            cmd.command
                .env("BENCH_PG_URL", &pg.url)
                .env("BENCH_PSQL", pg.bin_dir().join("psql"));
        }
        if matches!(config.tool, Tool::SinkAlone | Tool::CompressorAlone) {
            // sluice's own code plans its memory (part sizes, compressor threads) from this,
            // as in a function of the box's size.
            cmd.command.env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                cell.kind.function_memory_mib().to_string(),
            );
            if let Some(vcpus) = cell.kind.sluice_vcpus() {
                cmd.command.env("SLUICE_VCPUS", vcpus);
            }
        }
        // A scratch directory per run (Python's tempfile follows TMPDIR), removed afterwards:
        // a peer killed at the memory limit cannot clean up its downloads itself.
        let scratch = std::env::temp_dir().join(format!(
            "sluice-bench-tmp-{}-{}",
            std::process::id(),
            config.id().replace('/', "-")
        ));
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        cmd.command.env("TMPDIR", &scratch);
        let finished = tokio::task::block_in_place(|| {
            cmd.run(Duration::from_secs(self.settings.timeout_secs))
        });
        let _ = std::fs::remove_dir_all(&scratch);
        let finished: Finished = finished?;
        let secs = finished.elapsed.as_secs_f64();
        let result = if finished.status.is_none() {
            Ended::Timeout
        } else if !finished.success() {
            let message = format!(
                "{}: {}",
                finished.describe(),
                tail(&finished.stderr_tail, 600)
            );
            if config.tool.is_peer() && out_of_memory(&finished.stderr_tail) {
                Ended::OutOfMemory(message)
            } else {
                Ended::Error(message)
            }
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
                // The table's label says how many threads the box's memory buys.
                let want = compress_threads(record.box_kind);
                if v["threads"].as_u64() != Some(u64::from(want)) {
                    bail!(
                        "the compressor used {} thread(s), expected {want}",
                        v["threads"]
                    );
                }
                return Ok(());
            }
            _ => {}
        }
        if config.case.is_parquet() {
            return self
                .verify_parquet(config, source, table, key, stdout, record)
                .await;
        }
        if config.tool == Tool::Dlt {
            return self
                .verify_dlt_ndjson(config, source.context("no source")?, key, stdout, record)
                .await;
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
        if config.case == Case::Export {
            return self.verify_export(config, key, stdout).await;
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

    /// The records case's checks for dlt: its own count (`{"rows"}`), then every file of the
    /// `records` table, gunzipped, must add up to one NDJSON line per record of the document.
    /// dlt adds `_dlt_load_id` and `_dlt_id` to every record (and may split the table into
    /// several files), so its bytes cannot equal the expected NDJSON: lines are counted, as for
    /// Python's (whose `json.dumps` spacing differs).
    async fn verify_dlt_ndjson(
        &self,
        config: &Config,
        source: &SourceFile,
        key: &str,
        stdout: &str,
        record: &mut RunRecord,
    ) -> anyhow::Result<()> {
        check_record_counts(config, source, key, stdout)?;
        let files = self.dlt_table_files(config, key).await?;
        record.out_bytes = Some(files.iter().map(|(_, size)| size).sum());
        let mut lines = 0;
        for (file, _) in &files {
            // The case's mode (gzip): a file that is not gzip fails to decode.
            let (_, _, n) = self
                .decoded(file, &config.mode)
                .await
                .with_context(|| format!("decoding {file}"))?;
            lines += n;
        }
        if lines != source.records {
            bail!(
                "{lines} NDJSON lines decoded from {} file(s), the document has {} records",
                files.len(),
                source.records
            );
        }
        Ok(())
    }

    /// The files of dlt's `records` table (keys and sizes): dlt lays a table out as
    /// `<dataset>/<table>/<load id>.<file id>.<extension>` under the destination's URL, beside
    /// its own `_dlt_*` tables, which are not the records.
    async fn dlt_table_files(
        &self,
        config: &Config,
        key: &str,
    ) -> anyhow::Result<Vec<(String, u64)>> {
        let (_, extension) = dlt_format(config.case)?;
        let prefix = format!("{key}/bench/records/");
        let found: Vec<(String, u64)> = self
            .list(&prefix)
            .await?
            .into_iter()
            .filter(|(k, _)| k.ends_with(extension))
            .collect();
        if found.is_empty() {
            bail!("no {extension} file under {prefix}");
        }
        Ok(found)
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
        check_counts(config, table, key, stdout)?;
        let gz = read_object(&self.client, &self.bucket, key).await;
        let quarantine = self.quarantine(table).await;
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

    /// The export's checks: the tool's own count (sluice's summary, psycopg2's `{"rows"}`),
    /// then the object gunzipped: the query's header, then one line per row of the table (no
    /// field holds a newline).
    async fn verify_export(&self, config: &Config, key: &str, stdout: &str) -> anyhow::Result<()> {
        let want = self.pg.as_ref().context("no export table")?.rows;
        check_export_counts(config, want, key, stdout)?;
        let raw = BufReader::new(object_stream(&self.client, &self.bucket, key).await);
        let mut gz = GzipDecoder::new(raw);
        gz.multiple_members(true);
        let mut header = String::new();
        BufReader::new(gz)
            .read_line(&mut header)
            .await
            .context("reading the header back")?;
        if header.trim_end() != pgtable::HEADER {
            bail!("header {header:?}; expected {:?}", pgtable::HEADER);
        }
        let (_, _, lines) = self.decoded(key, &config.mode).await?;
        if lines != want + 1 {
            bail!("{lines} lines decoded; expected {want} rows + the header");
        }
        Ok(())
    }

    /// The quarantine object of a transform run, when one was written.
    async fn quarantine(&self, table: &TableSource) -> Option<Vec<u8>> {
        if object_exists(&self.client, &self.bucket, &table.quarantine_key).await {
            Some(read_object(&self.client, &self.bucket, &table.quarantine_key).await)
        } else {
            None
        }
    }

    /// The Parquet cases' checks: the tool's own counts, then the output read back with
    /// pyarrow (`bench/peers/parquet_check.py`): rows from the footers, zstd pages, the
    /// expected columns and types; for records, the sum of `id` (every record once); for the
    /// transform, the rows themselves in order and the quarantine.
    async fn verify_parquet(
        &self,
        config: &Config,
        source: Option<&SourceFile>,
        table: Option<&TableSource>,
        key: &str,
        stdout: &str,
        record: &mut RunRecord,
    ) -> anyhow::Result<()> {
        let objects = if config.tool == Tool::Dlt {
            self.dlt_table_files(config, key).await?
        } else {
            let head = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .with_context(|| format!("HeadObject {key}: no object"))?;
            vec![(key.to_owned(), head.content_length().unwrap_or(0) as u64)]
        };
        record.out_bytes = Some(objects.iter().map(|(_, size)| size).sum());
        let (want_rows, columns): (u64, Vec<(&str, &str)>) = match (config.case, source, table) {
            (Case::RecordsParquet, Some(source), _) => {
                check_record_counts(config, source, key, stdout)?;
                (
                    source.records,
                    RECORD_COLUMNS.iter().map(|(n, _, t)| (*n, *t)).collect(),
                )
            }
            (Case::TransformParquet, _, Some(table)) => {
                check_counts(config, table, key, stdout)?;
                (
                    table.expected.rows_out,
                    TRANSFORM_COLUMNS.iter().map(|n| (*n, "string")).collect(),
                )
            }
            _ => bail!("{}: no source for a Parquet check", config.id()),
        };
        let dir = std::env::temp_dir().join(format!(
            "sluice-bench-parquet-{}-{}",
            std::process::id(),
            record.round
        ));
        let checked = self
            .read_parquet(&dir, &objects, config.case == Case::TransformParquet)
            .await;
        let result = checked.and_then(|(check, rows_csv)| {
            let mut facts = check.facts;
            facts.files = objects.len() as u64;
            if facts.rows != want_rows {
                bail!(
                    "the Parquet holds {} rows (pyarrow, footers); expected {want_rows}",
                    facts.rows
                );
            }
            if facts.codecs != ["ZSTD"] {
                bail!("page codecs {:?}; expected ZSTD", facts.codecs);
            }
            // Arrow's large_string (polars) is the same Parquet column as string; dlt adds
            // `_dlt_load_id` and `_dlt_id` to every table.
            let got: Vec<(&str, &str)> = facts
                .columns
                .iter()
                .filter(|(n, _)| !(config.tool == Tool::Dlt && n.starts_with("_dlt_")))
                .map(|(n, t)| (n.as_str(), t.strip_prefix("large_").unwrap_or(t)))
                .collect();
            if got != columns {
                bail!("columns {got:?}; expected {columns:?}");
            }
            if config.case == Case::RecordsParquet {
                // The generator numbers the records from 0.
                let n = want_rows as i128;
                if check.sum != Some(n * (n - 1) / 2) {
                    bail!(
                        "sum of id {:?}; expected {} (every record once)",
                        check.sum,
                        n * (n - 1) / 2
                    );
                }
            }
            if let (Some(table), Some(csv)) = (table, rows_csv) {
                table::check_rows(&csv, &table.expected)?;
            }
            Ok(facts)
        });
        let _ = std::fs::remove_dir_all(&dir);
        let facts = result?;
        if let Some(table) = table {
            let quarantine = self.quarantine(table).await;
            table::check_quarantine(quarantine.as_deref(), &table.expected)?;
        }
        record.parquet = Some(facts);
        Ok(())
    }

    /// Downloads `objects` into `dir` and reads them with `parquet_check.py` (with the `id`
    /// sum for records, or every row as CSV for the transform).
    async fn read_parquet(
        &self,
        dir: &Path,
        objects: &[(String, u64)],
        rows_as_csv: bool,
    ) -> anyhow::Result<(ParquetCheck, Option<Vec<u8>>)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut files = Vec::new();
        for (i, (key, _)) in objects.iter().enumerate() {
            let path = dir.join(format!("{i}.parquet"));
            let mut body = object_stream(&self.client, &self.bucket, key).await;
            let mut file = tokio::fs::File::create(&path)
                .await
                .with_context(|| format!("creating {}", path.display()))?;
            tokio::io::copy(&mut body, &mut file)
                .await
                .with_context(|| format!("downloading {key}"))?;
            files.push(path);
        }
        let csv_path = dir.join("rows.csv");
        let mut cmd = std::process::Command::new(&self.settings.python);
        cmd.arg(self.settings.peers_dir.join("parquet_check.py"));
        if rows_as_csv {
            cmd.arg("--csv").arg(&csv_path);
        } else {
            cmd.args(["--sum", "id"]);
        }
        cmd.args(&files);
        let out =
            tokio::task::block_in_place(|| cmd.output()).context("running parquet_check.py")?;
        if !out.status.success() {
            bail!(
                "pyarrow could not read the Parquet: {}",
                tail(&String::from_utf8_lossy(&out.stderr), 600)
            );
        }
        let check: ParquetCheck = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "parquet_check.py's answer: {}",
                tail(&String::from_utf8_lossy(&out.stdout), 300)
            )
        })?;
        let csv = if rows_as_csv {
            Some(std::fs::read(&csv_path).context("reading the rows' CSV")?)
        } else {
            None
        };
        Ok((check, csv))
    }

    /// Keys and sizes of the objects under `prefix`.
    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .context("ListObjectsV2")?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    out.push((key.to_owned(), object.size().unwrap_or(0) as u64));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
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

    /// Removes the last source file and the bucket; stops the export case's Postgres.
    pub async fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(old) = self.source.take() {
            let _ = std::fs::remove_file(&old.path);
        }
        if let Some(pg) = self.pg.take() {
            tokio::task::block_in_place(|| drop(pg));
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

/// The seed pipeline for `transform-s3`, at the mode's gzip level (or to Parquet, whose page
/// codec defaults to zstd) and without the manifest (no peer writes one).
fn transform_pipeline(config: &Config) -> anyhow::Result<Value> {
    let mut pipeline: Value = serde_json::from_str(table::SEED_PIPELINE)?;
    if config.case == Case::TransformParquet {
        if config.mode != PARQUET_MODE {
            bail!(
                "the Parquet transform writes zstd pages, not {}",
                config.mode
            );
        }
        let output = pipeline["output"]
            .as_object_mut()
            .context("the seed pipeline has no output")?;
        output.remove("compression");
        output.insert("format".into(), json!("parquet"));
        output.insert("key".into(), json!("clean/{source_stem}.parquet"));
    } else {
        let Some(("gzip", level)) = config.mode.split_once('-') else {
            bail!("the transform writes gzip CSV, not {}", config.mode);
        };
        pipeline["output"]["compression"] =
            json!({"codec": "gzip", "level": level.parse::<i32>()?});
    }
    pipeline["output"]["manifest"] = json!(false);
    Ok(pipeline)
}

/// `parquet_check.py`'s answer.
#[derive(serde::Deserialize)]
struct ParquetCheck {
    #[serde(flatten)]
    facts: ParquetFacts,
    /// Sum of the `--sum` column.
    sum: Option<i128>,
}

/// dlt's `loader_file_format` in `case` and the extension of the table's files it writes:
/// jsonl, gzip-compressed (dlt's default, kept: the case is gzip for everyone; dlt has no
/// setting for the level and writes 9), for NDJSON; Parquet (zstd pages) for Parquet.
pub fn dlt_format(case: Case) -> anyhow::Result<(&'static str, &'static str)> {
    match case {
        Case::Records => Ok(("jsonl", ".jsonl.gz")),
        Case::RecordsParquet => Ok(("parquet", ".parquet")),
        _ => bail!("dlt runs in the records cases only, not {}", case.id()),
    }
}

/// A records tool's own report: sluice's summary to Parquet (records read, none quarantined,
/// the Parquet's rows and codec, the key), a peer's `{"rows"}` (the Parquet peers; dlt in both
/// records cases).
fn check_record_counts(
    config: &Config,
    source: &SourceFile,
    key: &str,
    stdout: &str,
) -> anyhow::Result<()> {
    let said: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("the tool's summary is not JSON: {}", tail(stdout, 300)))?;
    let want = source.records;
    if config.tool == Tool::Sluice {
        let parquet = &said["parquet"];
        let got = (
            said["records"].as_u64(),
            said["quarantined"].as_u64(),
            parquet["rows"].as_u64(),
            parquet["codec"].as_str(),
            said["key"].as_str(),
        );
        if got != (Some(want), Some(0), Some(want), Some("zstd"), Some(key)) {
            bail!(
                "summary: {said}; expected {want} records, none quarantined, {want} Parquet rows, \
                 codec zstd, key {key}"
            );
        }
    } else if said["rows"].as_u64() != Some(want) {
        bail!("the tool reports {said}; expected {want} rows");
    }
    Ok(())
}

/// The transform tool's own counts (sluice's summary, the peers' JSON line) against the
/// expected ones.
fn check_counts(
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
    Ok(())
}

/// The export tool's own count against the table's rows: sluice's summary (written, `rows`,
/// the key, CSV), psycopg2's `{"rows"}`; psql says nothing.
fn check_export_counts(config: &Config, want: u64, key: &str, stdout: &str) -> anyhow::Result<()> {
    if config.tool == Tool::PsqlAwsCli {
        return Ok(());
    }
    let said: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("the tool's summary is not JSON: {}", tail(stdout, 300)))?;
    if config.tool == Tool::Sluice {
        let got = (
            said["status"].as_str(),
            said["rows"].as_u64(),
            said["key"].as_str(),
            said["format"].as_str(),
        );
        if got != (Some("written"), Some(want), Some(key), Some("csv")) {
            bail!("summary: {said}; expected written, {want} rows, key {key}, csv");
        }
    } else if said["rows"].as_u64() != Some(want) {
        bail!("the tool reports {said}; expected {want} rows");
    }
    Ok(())
}

struct Outcome {
    secs: f64,
    result: Ended,
}

enum Ended {
    Done {
        stdout: String,
    },
    Error(String),
    /// A peer's own out-of-memory error.
    OutOfMemory(String),
    Timeout,
}

/// Whether a peer's error output ends in an out-of-memory error of its own (DuckDB's
/// `OutOfMemoryException`, Python's `MemoryError`), not a crash of another kind.
fn out_of_memory(stderr: &str) -> bool {
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    stderr.contains("OutOfMemoryException: Out of Memory Error") || last.starts_with("MemoryError")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_own_out_of_memory_error_is_told_from_other_errors() {
        let duckdb = "Traceback (most recent call last):\n  File \"records_duckdb.py\", line 50\n\
                      _duckdb.OutOfMemoryException: Out of Memory Error: failed to allocate data \
                      of size 512.0 MiB (0 bytes/204.7 MiB used)\n\nPossible solutions:\n\
                      * Reducing the number of threads (SET threads=X)";
        assert!(out_of_memory(duckdb));
        assert!(out_of_memory(
            "Traceback ...\n    x = json.loads(b)\nMemoryError\n"
        ));
        assert!(!out_of_memory(
            "Traceback ...\nKeyError: 'data'\n(a MemoryError is mentioned, but not raised)"
        ));
        assert!(!out_of_memory("curl: (7) Failed to connect"));
    }

    #[test]
    fn the_compressor_alone_says_how_many_threads_the_boxs_memory_buys() {
        let compressor = Config::new(Case::Limit, Tool::CompressorAlone, "zstd-3");
        for kind in [
            BoxKind::Unconstrained,
            BoxKind::Lambda128,
            BoxKind::Lambda256,
        ] {
            assert_eq!(compress_threads(kind), 1, "{kind:?}");
            assert_eq!(
                compressor.label_in(kind),
                "sluice codec in memory, 1 thread (compressor alone)"
            );
        }
        // Two vCPUs at 3,538 MB, at most the cores there are.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        assert_eq!(compress_threads(BoxKind::Lambda3538), 2.min(cores));
        if cores >= 2 {
            assert_eq!(
                compressor.label_in(BoxKind::Lambda3538),
                "sluice codec in memory, 2 threads (compressor alone)"
            );
        }
        let sluice = Config::new(Case::Ingest, Tool::Sluice, "none");
        assert_eq!(sluice.label_in(BoxKind::Lambda128), sluice.label());
    }

    fn settings(smoke: bool, dlt: bool, only: &[&str]) -> Settings {
        Settings {
            size: 8 * MIB,
            runs: 1,
            smoke,
            out_dir: PathBuf::from("/nonexistent"),
            data_dir: PathBuf::from("/nonexistent"),
            source_url: "http://127.0.0.1:1".into(),
            python: PathBuf::from("python"),
            peers_dir: PathBuf::from("bench/peers"),
            aws: PathBuf::from("aws"),
            aws_config_file: PathBuf::from("/nonexistent"),
            only: only.iter().map(|o| o.to_string()).collect(),
            boxes: BoxKind::ALL.to_vec(),
            timeout_secs: 180,
            gzip_level: 1,
            compress_sample: 8 * MIB,
            command: "bash bench/run.sh".into(),
            dlt_python: dlt.then(|| PathBuf::from("dlt-venv/bin/python")),
            dlt_skipped: (!dlt).then(|| "the install failed".to_owned()),
        }
    }

    fn ids(settings: &Settings) -> Vec<String> {
        configs(settings).iter().map(Config::id).collect()
    }

    #[test]
    fn the_records_cases_run_sluice_python_and_dlt_when_its_venv_is_there() {
        for smoke in [false, true] {
            let with_dlt = ids(&settings(smoke, true, &[]));
            for id in [
                "records/gzip-1/sluice",
                "records/gzip-1/python-json",
                "records/gzip-1/dlt",
                "records-parquet/zstd/sluice",
                "records-parquet/zstd/pyarrow",
                "records-parquet/zstd/duckdb",
                "records-parquet/zstd/dlt",
            ] {
                assert!(with_dlt.iter().any(|c| c == id), "smoke={smoke}: no {id}");
            }
            let records: Vec<String> = ids(&settings(smoke, true, &["records/"]));
            assert_eq!(
                records,
                [
                    "records/gzip-1/sluice",
                    "records/gzip-1/python-json",
                    "records/gzip-1/dlt"
                ],
                "smoke={smoke}"
            );
            // Without dlt's venv, dlt is left out of both cases, and the report says why.
            let without = settings(smoke, false, &[]);
            assert!(without.dlt_reason().is_some());
            let without = ids(&without);
            assert!(!without.iter().any(|c| c.ends_with("/dlt")), "{without:?}");
            assert!(without.iter().any(|c| c == "records/gzip-1/python-json"));
        }
    }

    #[test]
    fn the_export_case_runs_sluice_psycopg2_and_psql_in_full_and_smoke_runs() {
        for smoke in [false, true] {
            assert_eq!(
                ids(&settings(smoke, false, &["export"])),
                [
                    "export/gzip-1/sluice",
                    "export/gzip-1/psycopg2",
                    "export/gzip-1/psql-awscli"
                ],
                "smoke={smoke}"
            );
        }
        assert!(Tool::PythonPg.is_peer() && Tool::PsqlAwsCli.is_peer());
        let sluice = Config::new(Case::Export, Tool::Sluice, "gzip-1");
        assert_eq!(sluice.label(), "sluice export-postgres");
        // sluice's summary must say written, every row, the key and CSV; psycopg2 its rows.
        let ok = r#"{"status":"written","rows":7,"key":"k","format":"csv"}"#;
        check_export_counts(&sluice, 7, "k", ok).unwrap();
        for bad in [ok.replace("written", "exists"), ok.replace(":7", ":6")] {
            assert!(check_export_counts(&sluice, 7, "k", &bad).is_err(), "{bad}");
        }
        let python = Config::new(Case::Export, Tool::PythonPg, "gzip-1");
        check_export_counts(&python, 7, "k", r#"{"rows": 7}"#).unwrap();
        assert!(check_export_counts(&python, 7, "k", r#"{"rows": 8}"#).is_err());
        let psql = Config::new(Case::Export, Tool::PsqlAwsCli, "gzip-1");
        check_export_counts(&psql, 7, "k", "").unwrap();
    }

    #[test]
    fn dlt_writes_gzip_jsonl_for_records_and_parquet_for_records_parquet() {
        assert_eq!(dlt_format(Case::Records).unwrap(), ("jsonl", ".jsonl.gz"));
        assert_eq!(
            dlt_format(Case::RecordsParquet).unwrap(),
            ("parquet", ".parquet")
        );
        assert!(dlt_format(Case::Transform).is_err());
        let ndjson = Config::new(Case::Records, Tool::Dlt, "gzip-1");
        assert!(ndjson.label().contains("jsonl"), "{}", ndjson.label());
        assert!(
            ndjson.label().contains("gzip level 9"),
            "{}",
            ndjson.label()
        );
        let parquet = Config::new(Case::RecordsParquet, Tool::Dlt, PARQUET_MODE);
        assert!(parquet.label().contains("parquet"), "{}", parquet.label());
        assert!(Tool::Dlt.is_peer());
        // dlt's NDJSON is checked by its own count as well as by the lines.
        check_record_counts(&ndjson, &source(7), "k", r#"{"rows": 7}"#).unwrap();
        assert!(check_record_counts(&ndjson, &source(7), "k", r#"{"rows": 6}"#).is_err());
    }

    fn source(records: u64) -> SourceFile {
        SourceFile {
            path: PathBuf::from("/nonexistent"),
            name: "src-1.json".into(),
            seed: 1,
            len: 0,
            crc: 0,
            records,
            ndjson: (0, 0),
        }
    }

    #[test]
    fn record_counts_need_sluices_summary_or_the_peers_rows_to_match() {
        let sluice = Config::new(Case::RecordsParquet, Tool::Sluice, PARQUET_MODE);
        let peer = Config::new(Case::RecordsParquet, Tool::Pyarrow, PARQUET_MODE);
        let ok = r#"{"status":"written","key":"k","records":7,"quarantined":0,
                     "parquet":{"rows":7,"row_groups":1,"codec":"zstd"}}"#;
        check_record_counts(&sluice, &source(7), "k", ok).unwrap();
        for bad in [
            ok.replace(r#""quarantined":0"#, r#""quarantined":1"#),
            ok.replace(r#""rows":7"#, r#""rows":6"#),
            ok.replace("zstd", "snappy"),
            ok.replace(r#""key":"k""#, r#""key":"other""#),
        ] {
            assert!(
                check_record_counts(&sluice, &source(7), "k", &bad).is_err(),
                "{bad}"
            );
        }
        check_record_counts(&peer, &source(7), "k", r#"{"rows": 7}"#).unwrap();
        assert!(check_record_counts(&peer, &source(7), "k", r#"{"rows": 8}"#).is_err());
        assert!(check_record_counts(&peer, &source(7), "k", "not json").is_err());
    }
}
