//! One export end to end: a Postgres query → CSV or NDJSON (optionally compressed) or Parquet
//! → S3, with the summary `export-postgres` answers. Mirrors [`crate::ingest`].
//!
//! ```json
//! {
//!   "source": { "postgres": { "query": "SELECT * FROM orders WHERE created_at >= $1",
//!               "params": ["2026-01-01"], "secret": "prod/lake-db" } },
//!   "format": "csv",
//!   "compression": "zstd",
//!   "destination": { "bucket": "lake", "key": "raw/orders/dt={date}/{run_id}.csv.zst" }
//! }
//! ```
//!
//! With `"format": "parquet"` the query's result columns become typed Parquet columns (the
//! mapping is [`postgres::TupleDecoder`]'s; a column of another type is refused before
//! anything is written) and `compression` names the page codec: `zstd` (default), `snappy`,
//! `gzip` or `none`.
//!
//! Partitioned output (`{field:NAME}` / `{field:NAME:STRFTIME}` in `destination.key` naming
//! result columns, `{part}`, and `max_object_mib` / `max_object_records`) writes each row into
//! the object of its partition, with one run manifest (`<prefix>_manifests/<run_id>.json`)
//! listing them; see [`partitioned`].
//!
//! Unknown fields are rejected. An object appears only when the whole query result was read
//! and committed; any failure after the first part aborts the multipart upload (and, for a
//! partitioned run, deletes the objects it completed).

mod continuing;
mod partitioned;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::budget::MemoryBudget;
use crate::checkpoint::{self, Continuation};
use crate::codec::Compression;
use crate::columnar::{self, ParquetSummary, RecordOutput};
use crate::error::{Error, Result};
use crate::format::Format;
use crate::job::{self, Invocation, Status};
use crate::key::{self, KeyVars};
use crate::partition::{KeyTemplate, PartitionObject, PartitionedSummary};
use crate::secret::SecretResolver;
use crate::sink::{ObjectMeta, ObjectWriter, PutOutcome, S3Target, UploadOptions};
use crate::source::postgres::{self, ConnectionSettings, ExportSettings, PostgresSourceSpec};
use crate::spec::{Destination, Tuning};
use crate::telemetry;

impl From<Format> for postgres::CopyFormat {
    fn from(format: Format) -> Self {
        match format {
            Format::Csv => postgres::CopyFormat::Csv,
            Format::Ndjson => postgres::CopyFormat::Ndjson,
            Format::Parquet => postgres::CopyFormat::Binary,
        }
    }
}

/// The source of an export, named by its kind: `{"postgres": {...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ExportSource {
    /// A Postgres query.
    Postgres(PostgresSourceSpec),
}

/// An export job: the event of `export-postgres`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// The query and where the database is.
    pub source: ExportSource,
    /// `"csv"` (default), `"ndjson"` or `"parquet"`: CSV as `COPY ... (FORMAT csv, HEADER)`
    /// writes it (NULL an empty field, an empty string `""`, values by the server's output
    /// functions); NDJSON as `row_to_json` renders each row (`numeric` with all its digits,
    /// `jsonb` nested); Parquet with a typed column per result column, decoded from binary
    /// COPY ([`postgres::TupleDecoder`] lists the types it takes).
    #[serde(default = "Format::csv")]
    pub format: Format,
    /// Output compression: `gzip` or `zstd` around CSV and NDJSON (default none). For Parquet
    /// the page codec: `zstd` (default, level 3), `snappy`, `gzip` or `none`.
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Where the object goes (as in every sluice job).
    pub destination: Destination,
    /// Overrides of the memory plan and the deadline margin.
    #[serde(default)]
    pub tuning: Tuning,
    /// The schedule's time (RFC 3339), e.g. EventBridge Scheduler's
    /// `<aws.scheduler.scheduled-time>`: date placeholders in the key use it, so a late or
    /// retried run writes the same key. Default: none (the clock).
    #[serde(default)]
    pub scheduled_time: Option<String>,
    /// The name of the job in its metrics (the `Job` dimension) and progress lines: 1 to 255
    /// characters of printable ASCII (space to `~`), not starting with `:`. Default: the
    /// destination bucket, `/`, and the key template up to its first `{`
    /// (`lake/raw/orders/`).
    #[serde(default)]
    pub job_name: Option<String>,
}

impl ExportSpec {
    /// `job_name`, or the default derived from the destination
    /// ([`default_job_name`](crate::telemetry::default_job_name)).
    pub fn job_name(&self) -> String {
        self.job_name.clone().unwrap_or_else(|| {
            crate::telemetry::default_job_name(&self.destination.bucket, &self.destination.key)
        })
    }

    /// The parsed `scheduled_time`.
    fn scheduled_time(&self) -> Result<Option<DateTime<Utc>>> {
        self.scheduled_time
            .as_deref()
            .map(|t| {
                DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| Error::spec(format!("scheduled_time {t:?} is not RFC 3339: {e}")))
            })
            .transpose()
    }

    /// Parses and validates an export spec from JSON. A top-level `"$schema"` string (an
    /// editor's pointer to `schemas/export-spec.schema.json`) is ignored.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let value = crate::schema::without_schema_key(value);
        let spec: ExportSpec =
            serde_json::from_value(value).map_err(|e| Error::spec(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks what can be checked before connecting.
    pub fn validate(&self) -> Result<()> {
        let ExportSource::Postgres(pg) = &self.source;
        pg.validate()?;
        if let Some(name) = &self.job_name {
            crate::telemetry::validate_job_name("job_name", name)?;
        }
        self.format
            .check_compression("compression", self.compression)?;
        self.scheduled_time()?;
        self.tuning.validate()?;
        if pg.resume_key.is_some()
            && self.format == Format::Parquet
            && !self.destination.is_partitioned()
        {
            return Err(Error::spec(
                "source.postgres.resume_key: a keyset export to Parquet continues by completing its file and writing the next {part}; set destination.max_object_mib (or partition the key with {field:…}) and put {part} in destination.key",
            ));
        }
        if self.destination.is_partitioned() && !self.destination.overwrite {
            return Err(Error::spec(
                "destination.overwrite: false is not available for a partitioned export ({field:…}, max_object_mib, max_object_records): a run's objects replace the keys they render to; put {run_id} in the key to keep every run's objects apart",
            ));
        }
        self.destination.validate()
    }
}

/// What an export runs with: clients built once per function instance, and per-invocation
/// facts.
#[derive(Debug, Clone)]
pub struct ExportContext {
    /// S3 client for the destination.
    pub s3: aws_sdk_s3::Client,
    /// Resolves the connection secret (`DATABASE_URL` or `source.postgres.secret`), with a
    /// cache shared by warm invocations.
    pub secrets: Arc<SecretResolver>,
    /// The function's memory plan.
    pub budget: MemoryBudget,
    /// The invocation: run id, start (for key templates), Lambda deadline
    /// (`statement_timeout` and the upload stop a margin before it).
    pub invocation: Invocation,
}

/// The JSON summary `export-postgres` answers with.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportSummary {
    /// `written`, or `exists` when `overwrite: false` found the object already there.
    pub status: Status,
    /// Destination bucket.
    pub bucket: String,
    /// Destination key (rendered).
    pub key: String,
    /// The database, `postgres://user@host:port/dbname` (no password).
    pub source: String,
    /// `csv`, `ndjson` or `parquet`.
    pub format: Format,
    /// Rows exported (the CSV header not counted).
    pub rows: u64,
    /// Bytes of CSV or NDJSON rendered (before compression); for Parquet, bytes of binary
    /// COPY data received.
    pub bytes_in: u64,
    /// Bytes written to S3 (the object's size).
    pub bytes_out: u64,
    /// Parts uploaded (1 for a single `PutObject`).
    pub parts: u32,
    /// Full-object checksum algorithm.
    pub checksum_algorithm: &'static str,
    /// Full-object checksum, base64, verified against S3's answer.
    pub checksum: Option<String>,
    /// The object's ETag.
    pub e_tag: Option<String>,
    /// Output compression, if any.
    pub compression: Option<Compression>,
    /// Wall time of the job, connection included.
    pub duration_ms: u64,
    /// Rows per second.
    pub rows_per_s: f64,
    /// Rendered MiB per second.
    pub throughput_mib_s: f64,
    /// Peak resident memory of the process so far (`VmHWM`).
    pub peak_rss_bytes: Option<u64>,
    /// For Parquet: rows, row groups, the largest row group, the page codec and the columns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parquet: Option<ParquetSummary>,
    /// A partitioned run: its run manifest's key, when one was written
    /// (`destination.manifest`, default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// A partitioned run (`{field:…}`, `max_object_mib`, `max_object_records`): objects,
    /// partitions and spill figures; the objects themselves are listed in the run manifest.
    /// `key` is then the template, and `checksum` and `e_tag` are per object (in the manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<PartitionedSummary>,
    /// With `"status": "continue"`: the event that continues the export
    /// ([`crate::checkpoint::Continue`]).
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub next: Option<serde_json::Value>,
    /// Invocations the export has taken so far, when more than one (or it continues).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invocations: Option<u32>,
    /// Wall time of the invocations before this one (`duration_ms` counts them too).
    #[serde(skip)]
    elapsed_before_ms: u64,
}

/// Runs one export in this invocation. On failure nothing is left at the destination key by
/// this run and no multipart upload stays open; the error carries the SQLSTATE when the
/// database sent one.
pub async fn run(spec: &ExportSpec, ctx: &ExportContext) -> Result<ExportSummary> {
    run_continuing(spec, ctx, None).await
}

/// Runs one export that may continue: a keyset export (`source.postgres.resume_key`) stops at
/// a key before the deadline (or `tuning.max_invocation_secs`), writes a checkpoint and
/// answers `"status": "continue"` ([`crate::checkpoint`]); it resumes from
/// `continuation.from` when that is set. The checkpoint read is deleted once the export
/// finished or failed, and a failure aborts its upload.
pub async fn run_continuing(
    spec: &ExportSpec,
    ctx: &ExportContext,
    continuation: Option<&Continuation>,
) -> Result<ExportSummary> {
    let result = run_job(spec, ctx, continuation).await;
    let from = continuation.and_then(|c| c.from.as_ref());
    checkpoint::settle(&ctx.s3, from, &result, |s| s.status == Status::Continue).await;
    result
}

async fn run_job(
    spec: &ExportSpec,
    ctx: &ExportContext,
    continuation: Option<&Continuation>,
) -> Result<ExportSummary> {
    spec.validate()?;
    let clock = std::time::Instant::now();
    let ExportSource::Postgres(pg) = &spec.source;
    let scheduled_time = spec.scheduled_time()?;
    let inv = &ctx.invocation;
    let vars = KeyVars {
        scheduled_time,
        ..KeyVars::new(scheduled_time.unwrap_or(inv.started), inv.run_id.clone())
    };
    let partitioned = spec.destination.is_partitioned();
    let key = if partitioned {
        spec.destination.key.clone()
    } else {
        key::render(&spec.destination.key, &vars)?
    };
    checkpoint::check_not_reserved("destination.key", &key)?;
    let from = continuation.and_then(|c| c.from.as_ref());
    if let Some(loaded) = from
        && (key != loaded.checkpoint.key || pg.resume_key.is_none())
    {
        return Err(Error::spec(format!(
            "checkpoint {}: it is for s3://{}/{}, {}; the export renders {key}{}",
            loaded.reference.checkpoint.key,
            spec.destination.bucket,
            loaded.checkpoint.key,
            loaded.checkpoint.position.kind(),
            if pg.resume_key.is_none() {
                " and has no resume_key"
            } else {
                ""
            }
        )));
    }
    let bucket = spec.destination.bucket.clone();
    let budget = spec.tuning.budget(ctx.budget)?;
    let deadline = inv.give_up_at(spec.tuning.deadline_margin())?;

    let options = upload_options(spec, &budget, deadline, inv);
    if partitioned {
        // The template and its {part} are checked before connecting.
        let template = KeyTemplate::compile("destination.key", &spec.destination.key, &vars)?;
        let out = partitioned::PartitionedExport::new(spec, &ctx.s3, template, &budget, &options)?;
        let run = Partitioned {
            spec,
            ctx,
            budget: &budget,
            options: &options,
            continuation,
            clock,
        };
        return run.run(out).await;
    }
    let settings = ConnectionSettings::resolve(pg.secret.as_ref(), &ctx.secrets).await?;
    tracing::info!(
        %bucket, %key, database = %settings.database, format = spec.format.name(),
        part_size = budget.part_size(), max_in_flight = budget.max_in_flight(),
        "export started"
    );
    let mut summary = ExportSummary::new(spec, &key, format!("postgres://{}", settings.database));
    let content_type = spec
        .destination
        .content_type
        .clone()
        .unwrap_or_else(|| spec.format.object_content_type(spec.compression).to_owned());
    let target = S3Target::new(ctx.s3.clone(), &bucket, &key).with_meta(ObjectMeta {
        content_type: Some(content_type),
    });
    // A continued export's upload is open: its `If-None-Match` completion is the check.
    if from.is_none() && !spec.destination.overwrite && target.exists().await? {
        tracing::info!(%bucket, %key, "object exists and overwrite is false; nothing to do");
        return Ok(summary.ended(clock, Status::Exists));
    }

    let max_row_bytes = spec.tuning.record_cap(&budget);
    let (uploaded, parquet) = if let Some(column) = &pg.resume_key {
        let export = continuing::KeysetExport {
            spec,
            s3: &ctx.s3,
            invocation: inv,
            settings: &settings,
            options: &options,
            max_row_bytes,
            column,
            key: &key,
        };
        match export
            .write_summed(target, continuation, &mut summary)
            .await?
        {
            Some(uploaded) => (uploaded, None),
            None => return Ok(summary.ended(clock, Status::Continue)),
        }
    } else {
        let (stream, canceller) = start_copy(
            pg,
            &settings,
            spec.format,
            deadline,
            max_row_bytes,
            false,
            None,
        )
        .await?;
        let progress = stream.progress();
        let parquet = columnar::options_for(spec.compression, &spec.tuning, &budget);
        let written = write_object(stream, target, &options, parquet, deadline).await;
        summary.rows = progress.rows();
        summary.bytes_in = progress.bytes();
        match written {
            Ok(written) => (written.uploaded, written.parquet),
            Err(e) => {
                // The server may still be computing rows nobody will read.
                canceller.cancel().await;
                return Err(deadline_bytes(e, &progress));
            }
        }
    };
    let PutOutcome::Written { e_tag, .. } = uploaded.outcome else {
        return Ok(summary.ended(clock, Status::Exists));
    };
    summary.bytes_out = uploaded.bytes;
    summary.parts = uploaded.parts;
    summary.checksum = Some(uploaded.checksum.to_base64());
    summary.e_tag = Some(e_tag);
    summary.parquet = parquet;
    let done = summary.ended(clock, Status::Written);
    tracing::info!(
        rows = done.rows,
        bytes_in = done.bytes_in,
        bytes_out = done.bytes_out,
        parts = done.parts,
        duration_ms = done.duration_ms,
        rows_per_s = done.rows_per_s,
        peak_rss_bytes = done.peak_rss_bytes,
        "export finished"
    );
    Ok(done)
}

/// The upload options of the export's object (for a partitioned run, before each object
/// gets its share of the budget).
fn upload_options(
    spec: &ExportSpec,
    budget: &MemoryBudget,
    deadline: Option<tokio::time::Instant>,
    inv: &Invocation,
) -> UploadOptions {
    let mut options = UploadOptions::new(budget.schedule());
    options.checksum = spec.destination.checksum;
    options.if_none_match = !spec.destination.overwrite;
    options.deadline = deadline;
    options.compression = spec.format.stream_compression(spec.compression);
    options.progress = Some(inv.progress.clone());
    options
}

/// A deadline error with the bytes the stream had read.
fn deadline_bytes(e: Error, progress: &postgres::Progress) -> Error {
    match e {
        Error::Deadline { .. } => Error::Deadline {
            bytes_in: progress.bytes(),
        },
        other => other,
    }
}

/// A partitioned export after its output was built: what it runs with.
struct Partitioned<'a> {
    spec: &'a ExportSpec,
    ctx: &'a ExportContext,
    budget: &'a MemoryBudget,
    options: &'a UploadOptions,
    continuation: Option<&'a Continuation>,
    clock: std::time::Instant,
}

impl Partitioned<'_> {
    /// Connects, streams every row into the objects of its partition, then writes the run
    /// manifest. A keyset export (`resume_key`) may stop at a key with every object completed
    /// and answer `continue`. On failure nothing of the run is left (open objects aborted,
    /// completed ones deleted, the earlier invocations' too, and the manifest).
    async fn run(self, mut out: partitioned::PartitionedExport) -> Result<ExportSummary> {
        let (spec, ctx) = (self.spec, self.ctx);
        let ExportSource::Postgres(pg) = &spec.source;
        let inv = &ctx.invocation;
        let bucket = &spec.destination.bucket;
        let deadline = self.options.deadline;
        let settings = ConnectionSettings::resolve(pg.secret.as_ref(), &ctx.secrets).await?;
        tracing::info!(
            %bucket, key = %spec.destination.key, database = %settings.database,
            format = spec.format.name(), "partitioned export started"
        );
        let mut summary = ExportSummary::new(
            spec,
            &spec.destination.key,
            format!("postgres://{}", settings.database),
        );
        let manifest_key = format!("{}_manifests/{}.json", out.static_prefix(), inv.run_id);
        let max_row_bytes = spec.tuning.record_cap(self.budget);
        let (objects, figures) = if let Some(column) = &pg.resume_key {
            let export = continuing::KeysetExport {
                spec,
                s3: &ctx.s3,
                invocation: inv,
                settings: &settings,
                options: self.options,
                max_row_bytes,
                column,
                key: &spec.destination.key,
            };
            let from = self.continuation.and_then(|c| c.from.as_ref());
            summary.elapsed_before_ms = from.map_or(0, |l| l.checkpoint.elapsed_ms);
            let invocations = from.map_or(1, |l| l.checkpoint.invocations + 1);
            let (wrote, rows) = export.write_partitioned(out, self.continuation).await?;
            summary.rows = rows.rows;
            summary.bytes_in = rows.bytes_in;
            summary.invocations = (invocations > 1).then_some(invocations);
            match wrote {
                continuing::PartsWrote::Done(objects, figures) => (objects, figures),
                continuing::PartsWrote::Continues(next, state) => {
                    summary.next = Some(next.to_value());
                    summary.invocations = Some(invocations);
                    summary.bytes_out = state.objects.iter().map(|o| o.bytes).sum();
                    summary.parts = state.objects.iter().map(|o| o.parts).sum();
                    summary.partitioned = Some(state.summary);
                    return Ok(summary.ended(self.clock, Status::Continue));
                }
            }
        } else {
            let describe = spec.format == Format::Ndjson;
            let started = start_copy(
                pg,
                &settings,
                spec.format,
                deadline,
                max_row_bytes,
                describe,
                None,
            );
            let (stream, canceller) = started.await?;
            let progress = stream.progress();
            if let Err(e) = out.start(&stream, &settings.database) {
                canceller.cancel().await;
                return Err(e);
            }
            let counters = Some(inv.progress.clone());
            let written = out.write(stream, &ctx.s3, bucket, deadline, counters).await;
            summary.rows = progress.rows();
            summary.bytes_in = progress.bytes();
            match written {
                Ok(done) => done,
                Err(e) => {
                    canceller.cancel().await;
                    return Err(deadline_bytes(e, &progress));
                }
            }
        };
        summary.bytes_out = objects.iter().map(|o| o.bytes).sum();
        summary.parts = objects.iter().map(|o| o.parts).sum();
        summary.partitioned = Some(figures);
        if spec.destination.manifest {
            summary.manifest = Some(manifest_key.clone());
            run_manifest(ctx, &manifest_key, &summary, &objects).await?;
        }
        let done = summary.ended(self.clock, Status::Written);
        tracing::info!(
            rows = done.rows,
            objects = objects.len(),
            bytes_out = done.bytes_out,
            duration_ms = done.duration_ms,
            peak_rss_bytes = done.peak_rss_bytes,
            "partitioned export finished"
        );
        Ok(done)
    }
}

/// Writes a partitioned run's manifest, `<the key's static prefix>_manifests/<run id>.json`:
/// the summary and every object with its partition values, records, bytes and checksum. When
/// it cannot be written the run's objects are deleted (all or nothing).
async fn run_manifest(
    ctx: &ExportContext,
    key: &str,
    summary: &ExportSummary,
    objects: &[PartitionObject],
) -> Result<()> {
    let inv = &ctx.invocation;
    let written = async {
        let mut doc = serde_json::to_value(summary).map_err(|e| Error::Internal {
            message: format!("summary of {key}: {e}"),
        })?;
        doc["manifest"] = key.into();
        doc["objects"] = serde_json::to_value(objects).map_err(|e| Error::Internal {
            message: format!("objects of {key}: {e}"),
        })?;
        job::write_manifest(&ctx.s3, inv, &summary.bucket, key, doc).await
    };
    if let Err(e) = written.await {
        let written = crate::partition::Written::new(objects.to_vec().into());
        crate::partition::roll_back(&ctx.s3, &summary.bucket, &written).await;
        return Err(e);
    }
    Ok(())
}

/// Connects and starts the `COPY`, both within the deadline. The server sends nothing of a
/// COPY until its first rows fill a buffer, so a slow query can reach the deadline while
/// starting; the statement is then cancelled before answering.
async fn start_copy(
    pg: &PostgresSourceSpec,
    settings: &ConnectionSettings,
    format: Format,
    deadline: Option<tokio::time::Instant>,
    max_row_bytes: usize,
    describe: bool,
    keyset: Option<postgres::Keyset>,
) -> Result<(postgres::ExportStream, postgres::Canceller)> {
    let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
    let export_settings = ExportSettings {
        // The server stops the statement at the same moment the upload gives up.
        statement_timeout: left.map(|l| l.max(Duration::from_secs(1))),
        timezone: pg.timezone.clone().unwrap_or_else(|| "UTC".to_owned()),
        max_row_bytes,
        describe,
        keyset,
    };
    let session = job::within(deadline, postgres::connect(settings)).await?;
    let canceller = session.canceller();
    let starting = postgres::export(
        session,
        &pg.query,
        &pg.params,
        postgres::CopyFormat::from(format),
        &export_settings,
    );
    match job::within(deadline, starting).await {
        Ok(stream) => Ok((stream, canceller)),
        Err(e) => {
            if matches!(e, Error::Deadline { .. }) {
                canceller.cancel().await;
            }
            Err(e)
        }
    }
}

/// Streams the rows into the object at `target`: the rendered text, or Parquet built from
/// the binary tuples with the columns the stream describes. Only a stream that ended after
/// `COMMIT` completes the object; any failure (a panic included) aborts the upload first.
async fn write_object(
    stream: postgres::ExportStream,
    target: S3Target,
    options: &UploadOptions,
    parquet: columnar::ParquetOptions,
    deadline: Option<tokio::time::Instant>,
) -> Result<columnar::RecordsWritten> {
    let writer = ObjectWriter::new(Arc::new(target), options)?;
    let counters = options.progress.clone();
    let decoder = stream.tuple_decoder().cloned();
    let mut output = match &decoder {
        Some(decoder) => RecordOutput::parquet(decoder.schema(), parquet, writer)?,
        None => RecordOutput::Text(writer),
    };
    let copied = job::catch_panic(
        "the export",
        copy_rows(stream, decoder.as_ref(), &mut output, deadline, counters),
    )
    .await;
    match copied {
        Ok(()) => output.finish().await,
        Err(e) => {
            output.abort().await;
            Err(e)
        }
    }
}

/// Writes every chunk of the COPY stream into `output` (for Parquet, each tuple decoded into
/// a row by `decoder`); the stream's end (after `COMMIT`) is the end of the rows. Waiting for
/// a chunk is bounded by the deadline. The stream's rows and bytes reach `counters` (the
/// invocation's) once per chunk, as records in and out and bytes in.
async fn copy_rows(
    mut stream: postgres::ExportStream,
    decoder: Option<&postgres::TupleDecoder>,
    output: &mut RecordOutput,
    deadline: Option<tokio::time::Instant>,
    counters: Option<Arc<crate::telemetry::Progress>>,
) -> Result<()> {
    let mut row = 0u64;
    let mut reporter = Reporter::new(stream.progress(), counters);
    while let Some(chunk) = job::within(deadline, async { Ok(stream.next().await) }).await? {
        crate::fault::point("export.chunk");
        reporter.report();
        let chunk = chunk?;
        let Some(decoder) = decoder else {
            output.write(chunk).await?;
            continue;
        };
        let mut tuples: &[u8] = &chunk;
        while !tuples.is_empty() {
            row += 1;
            let Some(columns) = output.columns() else {
                return Err(Error::Internal {
                    message: "export: binary tuples for an output without columns".into(),
                });
            };
            let bytes = decoder.decode_row(&mut tuples, columns, row)?;
            output.end_row(bytes).await?;
        }
    }
    reporter.report();
    Ok(())
}

/// Hands the stream's rows and bytes to the invocation's counters (records in and out, bytes
/// in), as the difference since the last report.
struct Reporter {
    copied: Arc<postgres::Progress>,
    counters: Option<Arc<crate::telemetry::Progress>>,
    reported: (u64, u64),
}

impl Reporter {
    fn new(
        copied: Arc<postgres::Progress>,
        counters: Option<Arc<crate::telemetry::Progress>>,
    ) -> Self {
        Reporter {
            copied,
            counters,
            reported: (0, 0),
        }
    }

    fn report(&mut self) {
        if let Some(c) = &self.counters {
            let (rows, bytes) = (self.copied.rows(), self.copied.bytes());
            c.add_records_in(rows - self.reported.0);
            c.add_records_out(rows - self.reported.0);
            c.add_bytes_in(bytes - self.reported.1);
            self.reported = (rows, bytes);
        }
    }
}

impl ExportSummary {
    /// A summary of nothing written yet.
    fn new(spec: &ExportSpec, key: &str, source: String) -> Self {
        ExportSummary {
            status: Status::Exists,
            bucket: spec.destination.bucket.clone(),
            key: key.to_owned(),
            source,
            format: spec.format,
            rows: 0,
            bytes_in: 0,
            bytes_out: 0,
            parts: 0,
            checksum_algorithm: spec.destination.checksum.s3_name(),
            checksum: None,
            e_tag: None,
            compression: spec.compression,
            duration_ms: 0,
            rows_per_s: 0.0,
            throughput_mib_s: 0.0,
            peak_rss_bytes: None,
            parquet: None,
            manifest: None,
            partitioned: None,
            next: None,
            invocations: None,
            elapsed_before_ms: 0,
        }
    }

    /// The summary with its status and the run's rates.
    fn ended(mut self, clock: std::time::Instant, status: Status) -> Self {
        let elapsed =
            (clock.elapsed().as_secs_f64() + self.elapsed_before_ms as f64 / 1000.0).max(1e-9);
        self.status = status;
        self.duration_ms = (elapsed * 1000.0) as u64;
        self.rows_per_s = (self.rows as f64 / elapsed).round();
        self.throughput_mib_s =
            ((self.bytes_in as f64 / (1024.0 * 1024.0) / elapsed) * 10.0).round() / 10.0;
        self.peak_rss_bytes = telemetry::peak_rss_bytes();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_parses_with_defaults() {
        let spec = ExportSpec::from_json(json!({
            "source": {"postgres": {"query": "select 1"}},
            "destination": {"bucket": "lake", "key": "k.csv"}
        }))
        .unwrap();
        assert_eq!(spec.format, Format::Csv);
        let ExportSource::Postgres(pg) = &spec.source;
        assert!(pg.secret.is_none() && pg.params.is_empty());
        let spec = ExportSpec::from_json(json!({
            "source": {"postgres": {"query": "select $1", "params": [1], "secret": "prod/db"}},
            "format": "ndjson", "compression": "zstd",
            "destination": {"bucket": "lake", "key": "k.ndjson.zst"}
        }))
        .unwrap();
        assert_eq!(spec.format, Format::Ndjson);
        let ExportSource::Postgres(pg) = &spec.source;
        assert_eq!(
            pg.secret.as_ref().unwrap().to_string(),
            r#"secrets_manager "prod/db""#
        );
        // Parquet: `compression` names the page codec, which never wraps the stream.
        for codec in ["zstd", "snappy", "gzip", "none"] {
            let spec = ExportSpec::from_json(json!({
                "source": {"postgres": {"query": "select 1"}},
                "format": "parquet", "compression": codec,
                "destination": {"bucket": "lake", "key": "k.parquet"}
            }))
            .unwrap();
            assert_eq!(spec.format, Format::Parquet);
            assert_eq!(spec.format.stream_compression(spec.compression), None);
            assert_eq!(
                spec.format.object_content_type(spec.compression),
                "application/vnd.apache.parquet"
            );
            assert_eq!(
                postgres::CopyFormat::from(spec.format),
                postgres::CopyFormat::Binary
            );
        }
    }

    #[test]
    fn bad_specs_are_named_without_echoing_secrets() {
        let base = json!({"source": {"postgres": {"query": "select 1"}},
                          "destination": {"bucket": "lake", "key": "k"}});
        let mut v = base.clone();
        v["format"] = json!("xml");
        let e = ExportSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("unknown variant `xml`"), "{e}");
        let mut v = base.clone();
        v["compression"] = json!("snappy");
        let e = ExportSpec::from_json(v).unwrap_err().to_string();
        assert!(
            e.contains("compression: snappy is a Parquet page codec"),
            "{e}"
        );
        let mut v = base.clone();
        v["source"]["postgres"]["qurey"] = json!("x");
        let e = ExportSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("unknown field `qurey`"), "{e}");
        let mut v = base.clone();
        v["source"]["postgres"]["query"] = json!("  ;  ");
        let e = ExportSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("query is empty"), "{e}");
        let mut v = base.clone();
        v["source"]["postgres"]["secret"] = json!("postgres://u:hunter2@h/db");
        let e = ExportSpec::from_json(v).unwrap_err().to_string();
        assert!(
            e.contains("must name a Secrets Manager secret") && !e.contains("hunter2"),
            "{e}"
        );
        let mut v = base.clone();
        v["scheduled_time"] = json!("yesterday");
        let e = ExportSpec::from_json(v).unwrap_err().to_string();
        assert!(
            e.contains("scheduled_time \"yesterday\" is not RFC 3339"),
            "{e}"
        );
        let mut v = base.clone();
        v["scheduled_time"] = json!("2026-11-22T06:00:00Z");
        assert!(
            ExportSpec::from_json(v)
                .unwrap()
                .scheduled_time()
                .unwrap()
                .is_some()
        );
        // Partitioned keys are taken; keeping existing objects is not.
        let mut v = base.clone();
        v["destination"]["key"] = json!("t/dt={field:day:%Y-%m-%d}/{part}.csv");
        v["destination"]["max_object_records"] = json!(1000);
        assert!(
            ExportSpec::from_json(v.clone())
                .unwrap()
                .destination
                .is_partitioned()
        );
        v["destination"]["overwrite"] = json!(false);
        let e = ExportSpec::from_json(v).unwrap_err().to_string();
        assert!(
            e.contains("overwrite: false is not available for a partitioned export"),
            "{e}"
        );
        let mut v = base;
        v["source"]["postgres"]["secret"] = json!({"value": "hunter2"});
        let e = ExportSpec::from_json(v).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
