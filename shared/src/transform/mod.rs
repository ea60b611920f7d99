//! Object transforms: when an object lands in S3, a typed, validated, filtered copy is
//! streamed into another prefix, and the rows that fail go to a quarantine object.
//!
//! ```text
//! GetObject (If-Match the version) -> decode by magic bytes (gzip, zstd) -> CSV or NDJSON
//!   -> typed rows -> steps -> CSV or NDJSON -> gzip/zstd -> multipart upload
//!                          \-> bad rows -> NDJSON quarantine (second upload, only if needed)
//! ```
//!
//! Memory is bounded whatever the object's size: one read buffer, one record, a few output
//! chunks in a bounded channel, and the part buffers of the two uploads.
//!
//! # Duplicate and older events
//!
//! The output key is a function of the source key, and `<output key>.manifest.json` records
//! the source version (ETag and Last-Modified) that produced it. For each object:
//!
//! 1. `HeadObject` the source. When the event names an ETag and the object now has another,
//!    the event is **superseded** (the newer version has its own event): nothing is done.
//! 2. When the manifest records the same source ETag, the event is a **duplicate**: nothing is
//!    done. When it records a source Last-Modified later than the object's, the event is
//!    **stale**: nothing is done, so an older version never overwrites newer output.
//! 3. Otherwise the output is written, reading the source with `If-Match` on its ETag (a
//!    version replaced mid-way ends as superseded): with `If-None-Match: *` when no output
//!    exists yet (of two concurrent deliveries, one writes and the other finds it there:
//!    **duplicate**), replacing the output of an older version otherwise. Then the manifest.
//!
//! `output.overwrite: false` never replaces an existing output (status **exists**).

pub mod config;
pub mod enrich;
mod parallel;
pub mod quarantine;
pub mod reader;
pub mod steps;
pub mod value;
pub mod writer;

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::io::StreamReader;

use crate::budget::MemoryBudget;
use crate::codec::{Compression, Decoding};
use crate::error::{Error, Result, S3Operation};
use crate::key::KeyVars;
use crate::sink::{self, ObjectMeta, PutOutcome, S3Target, UploadOptions};
use crate::source::s3::{self as s3src, Opened};
use crate::telemetry;

pub use config::{InputFormat, OutputFormat, Pipeline, SourceVars};
use quarantine::Quarantine;
use reader::{CsvReader, IoErrorMap, LineReader, Position};
use steps::{Layout, Outcome, Program};
use value::{ColType, Parser, Value};
use writer::RowWriter;

const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_millis(3000);
const OUT_CHUNK: usize = 128 * 1024;
const SOURCE_BUFFER: usize = 256 * 1024;
const CODEC_BUFFER: usize = 64 * 1024;

/// What a transform runs with.
#[derive(Debug, Clone)]
pub struct TransformContext {
    /// S3 client (source, output, quarantine, manifest).
    pub s3: aws_sdk_s3::Client,
    /// The function's memory plan.
    pub budget: MemoryBudget,
    /// The Lambda request id.
    pub run_id: String,
    /// When the invocation started (for `{date}` and friends).
    pub started: DateTime<Utc>,
    /// The invocation's deadline; the upload gives up a margin before it.
    pub deadline: Option<SystemTime>,
    /// HTTP client of the enrich step ([`crate::source::http::client`], with the network
    /// policy).
    pub http: reqwest::Client,
    /// The network policy, checked against the enrich step's URL.
    pub policy: crate::source::guard::NetworkPolicy,
}

/// The object to transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceObject {
    /// Bucket.
    pub bucket: String,
    /// Key (already URL-decoded).
    pub key: String,
    /// The ETag the event announced, when it did.
    pub e_tag: Option<String>,
}

/// Row counts of one object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Data rows read (a CSV header not counted).
    pub records_in: u64,
    /// Rows written to the output.
    pub records_out: u64,
    /// Rows dropped by a filter.
    pub filtered: u64,
    /// Rows written to the quarantine.
    pub quarantined: u64,
}

/// The answer for one object (and the body of its manifest).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ObjectSummary {
    /// `written`; or, with nothing written: `skipped` (not an input of this pipeline),
    /// `duplicate` (this source version was already transformed), `stale` (the output comes
    /// from a newer version), `superseded` (the object changed or vanished since the event),
    /// `exists` (`overwrite: false` and an output is there).
    pub status: &'static str,
    /// Why nothing was written, for every status but `written`.
    pub reason: Option<String>,
    /// `s3://bucket/key` of the source.
    pub source: String,
    /// The source version's ETag.
    pub source_etag: Option<String>,
    /// The source version's Last-Modified (RFC 3339).
    pub source_last_modified: Option<String>,
    /// Output bucket.
    pub bucket: String,
    /// Output key.
    pub key: Option<String>,
    /// Quarantine key, when rows were quarantined.
    pub quarantine_key: Option<String>,
    /// The manifest's key, when one was written.
    pub manifest: Option<String>,
    /// Row counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// Source bytes read (as stored, compressed or not).
    pub bytes_in: u64,
    /// Source bytes after decompression.
    pub bytes_decoded: u64,
    /// Times the source body broke off and was resumed with a ranged `GetObject`.
    pub source_resumes: u64,
    /// Bytes of the output object.
    pub bytes_out: u64,
    /// Bytes of the quarantine object.
    pub bytes_quarantined: u64,
    /// Output parts (1 for a single `PutObject`).
    pub parts: u32,
    /// Output compression.
    pub compression: Option<Compression>,
    /// The output object's ETag.
    pub e_tag: Option<String>,
    /// Wall time.
    pub duration_ms: u64,
    /// Rows read per second.
    pub rows_per_s: f64,
    /// Decoded source MiB per second.
    pub throughput_mib_s: f64,
    /// Peak resident memory of the process so far (`VmHWM`).
    pub peak_rss_bytes: Option<u64>,
}

/// Transforms one object with `pipeline`. Nothing is written when the object is not an input
/// of the pipeline, or was already transformed (see the module docs). On failure no output
/// object is completed and no upload stays open; rows quarantined so far are kept.
pub async fn run(
    pipeline: &Pipeline,
    src: &SourceObject,
    ctx: &TransformContext,
) -> Result<ObjectSummary> {
    let clock = std::time::Instant::now();
    let source = format!("s3://{}/{}", src.bucket, src.key);
    let out_bucket = pipeline
        .output
        .bucket
        .clone()
        .unwrap_or_else(|| src.bucket.clone());
    let mut summary = ObjectSummary {
        status: "skipped",
        reason: None,
        source: source.clone(),
        source_etag: None,
        source_last_modified: None,
        bucket: out_bucket.clone(),
        key: None,
        quarantine_key: None,
        manifest: None,
        counts: Counts::default(),
        bytes_in: 0,
        bytes_decoded: 0,
        source_resumes: 0,
        bytes_out: 0,
        bytes_quarantined: 0,
        parts: 0,
        compression: pipeline.output.compression,
        e_tag: None,
        duration_ms: 0,
        rows_per_s: 0.0,
        throughput_mib_s: 0.0,
        peak_rss_bytes: None,
    };
    let finish = |mut s: ObjectSummary, status: &'static str, reason: Option<String>| {
        let elapsed = clock.elapsed().as_secs_f64().max(1e-9);
        s.status = status;
        s.reason = reason;
        s.duration_ms = (elapsed * 1000.0) as u64;
        s.rows_per_s = (s.counts.records_in as f64 / elapsed).round();
        s.throughput_mib_s =
            ((s.bytes_decoded as f64 / (1024.0 * 1024.0) / elapsed) * 10.0).round() / 10.0;
        s.peak_rss_bytes = telemetry::peak_rss_bytes();
        if status != "written" {
            tracing::info!(%source, status, reason = s.reason.as_deref().unwrap_or(""),
                "object not transformed");
        }
        s
    };

    if let Some(reason) = pipeline.skip_reason(&src.key) {
        return Ok(finish(summary, "skipped", Some(reason)));
    }
    let vars = SourceVars {
        key: src.key.clone(),
        vars: KeyVars::new(ctx.started, ctx.run_id.clone()),
    };
    if let Some(steps::Step::Enrich(e)) = pipeline
        .steps
        .iter()
        .find(|s| matches!(s, steps::Step::Enrich(_)))
        && let Ok(url) = reqwest::Url::parse(&e.url)
    {
        ctx.policy.check_url(&url).map_err(|b| Error::Blocked {
            url: e.url.clone(),
            reason: b.0,
        })?;
    }
    let key = config::render_key("output.key", &pipeline.output.key, &vars)?;
    let qkey = config::render_key("quarantine.key", &pipeline.quarantine.key, &vars)?;
    summary.key = Some(key.clone());

    let Some(version) = s3src::head(&ctx.s3, &src.bucket, &src.key).await? else {
        return Ok(finish(
            summary,
            "superseded",
            Some("the object no longer exists".into()),
        ));
    };
    summary.source_etag = Some(version.e_tag.clone());
    summary.source_last_modified = version
        .last_modified
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    if let Some(announced) = &src.e_tag
        && unquote(announced) != unquote(&version.e_tag)
    {
        return Ok(finish(
            summary,
            "superseded",
            Some(format!(
                "the event is for ETag {announced}, the object now has {}",
                version.e_tag
            )),
        ));
    }
    let manifest_key = format!("{key}.manifest.json");
    if let Some(previous) = read_manifest(&ctx.s3, &out_bucket, &manifest_key).await? {
        let etag = previous.get("source_etag").and_then(|v| v.as_str());
        if etag.map(unquote) == Some(unquote(&version.e_tag)) {
            return Ok(finish(
                summary,
                "duplicate",
                Some(format!(
                    "s3://{out_bucket}/{key} was made from this version (ETag {})",
                    version.e_tag
                )),
            ));
        }
        let recorded = previous
            .get("source_last_modified")
            .and_then(|v| v.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.to_utc());
        if let (Some(recorded), Some(now)) = (recorded, version.last_modified)
            && recorded > now
        {
            return Ok(finish(
                summary,
                "stale",
                Some(format!(
                    "s3://{out_bucket}/{key} was made from a newer version (Last-Modified {recorded})"
                )),
            ));
        }
    }
    let target = S3Target::new(ctx.s3.clone(), &out_bucket, &key).with_meta(ObjectMeta {
        content_type: Some(match pipeline.output.compression {
            Some(c) => c.codec.content_type().to_owned(),
            None => pipeline.output.format.content_type().to_owned(),
        }),
    });
    let output_exists = target.exists().await?;
    if output_exists && !pipeline.output.overwrite {
        return Ok(finish(
            summary,
            "exists",
            Some(format!(
                "s3://{out_bucket}/{key} exists and output.overwrite is false"
            )),
        ));
    }

    let body = match s3src::open(&ctx.s3, &src.bucket, &src.key, Some(&version.e_tag)).await? {
        Opened::Body(body) => body,
        Opened::Changed => {
            return Ok(finish(
                summary,
                "superseded",
                Some("the object changed before it could be read".into()),
            ));
        }
    };
    let progress = body.progress();
    let mut buffered = BufReader::with_capacity(SOURCE_BUFFER, body);
    let head = buffered.fill_buf().await.map_err(|e| Error::SourceRead {
        url: source.clone(),
        offset: 0,
        class: "connection failed",
        message: e.to_string(),
    })?;
    let decoding = Decoding::sniff(head);
    let decoded = decoding.decoder(buffered);
    let map_io: IoErrorMap = {
        let progress = progress.clone();
        let source = source.clone();
        Box::new(move |e: io::Error, _decoded| {
            if progress.failed() || decoding.name().is_none() {
                Error::SourceRead {
                    url: source.clone(),
                    offset: progress.bytes(),
                    class: "connection failed",
                    message: e.to_string(),
                }
            } else {
                Error::Decode {
                    input: source.clone(),
                    codec: decoding.name().unwrap_or_default(),
                    offset: progress.bytes(),
                    source: e,
                }
            }
        })
    };

    let mut budget = ctx.budget;
    if let Some(mib) = pipeline.tuning.part_size_mib {
        budget = budget.with_part_size(mib * 1024 * 1024);
    }
    if let Some(n) = pipeline.tuning.max_in_flight {
        budget = budget.with_max_in_flight(n);
    }
    let cap = pipeline
        .tuning
        .max_record_mib
        .map(|m| m * 1024 * 1024)
        .unwrap_or_else(|| budget.record_cap()) as usize;
    let margin = pipeline
        .tuning
        .deadline_margin_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_DEADLINE_MARGIN);
    let deadline = ctx.deadline.map(|d| {
        Instant::now()
            + d.duration_since(SystemTime::now())
                .unwrap_or_default()
                .saturating_sub(margin)
    });
    tracing::info!(%source, etag = %version.e_tag, size = version.size,
        decoding = decoding.name().unwrap_or("identity"), bucket = %out_bucket, %key,
        "transform started");

    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let quarantine = Quarantine::new(
        ctx.s3.clone(),
        out_bucket.clone(),
        qkey,
        source.clone(),
        pipeline.quarantine.max_raw_bytes,
        budget,
    );
    let producer = tokio::spawn(produce(
        Arc::new(pipeline.clone()),
        source.clone(),
        decoded,
        map_io,
        cap,
        quarantine,
        tx,
        ctx.http.clone(),
    ));

    let stream: Box<dyn AsyncRead + Send + Unpin> =
        Box::new(StreamReader::new(quarantine::tokio_stream(rx)));
    let compression = pipeline.output.compression;
    let reader = match compression {
        Some(c) => c.encoder(BufReader::with_capacity(CODEC_BUFFER, stream)),
        None => stream,
    };
    let mut options = UploadOptions::new(budget.schedule());
    options.checksum = pipeline.output.checksum;
    options.if_none_match = !output_exists;
    options.deadline = deadline;
    let read_error = move |e: io::Error| match carried(e) {
        Ok(err) => err,
        Err(e) => Error::Encode {
            codec: compression.map_or("none", |c| c.codec.name()),
            offset: 0,
            source: e,
        },
    };
    let uploaded = sink::upload(Arc::new(target), reader, &options, read_error).await;
    let produced = producer.await.map_err(|e| Error::SourceRead {
        url: source.clone(),
        offset: progress.bytes(),
        class: "transform task failed",
        message: e.to_string(),
    })?;
    summary.counts = produced.counts;
    summary.bytes_in = progress.bytes();
    summary.source_resumes = progress.resumes();
    summary.bytes_decoded = produced.decoded;
    summary.bytes_quarantined = produced.quarantine.as_ref().map_or(0, |q| q.1);
    summary.quarantine_key = produced.quarantine.as_ref().map(|q| q.0.clone());
    if let Some(err) = produced.quarantine_error {
        // The output may be complete, but rows would be lost without their quarantine.
        return Err(err);
    }
    let uploaded = uploaded?;
    let e_tag = match uploaded.outcome {
        PutOutcome::Written { e_tag, .. } => e_tag,
        PutOutcome::AlreadyExists => {
            return Ok(finish(
                summary,
                "duplicate",
                Some(format!(
                    "s3://{out_bucket}/{key} was written meanwhile (If-None-Match)"
                )),
            ));
        }
    };
    summary.bytes_out = uploaded.bytes;
    summary.parts = uploaded.parts;
    summary.e_tag = Some(e_tag);
    let mut done = finish(summary, "written", None);
    if pipeline.output.manifest {
        done.manifest = Some(manifest_key.clone());
        write_manifest(ctx, &done, &manifest_key).await?;
    }
    tracing::info!(%source, key = %key, records_in = done.counts.records_in,
        records_out = done.counts.records_out, filtered = done.counts.filtered,
        quarantined = done.counts.quarantined, bytes_decoded = done.bytes_decoded,
        duration_ms = done.duration_ms, rows_per_s = done.rows_per_s,
        peak_rss_bytes = done.peak_rss_bytes, "transform finished");
    Ok(done)
}

fn unquote(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// An error sent down the output channel, or the io error itself.
fn carried(e: io::Error) -> std::result::Result<Error, io::Error> {
    let is_ours = e.get_ref().is_some_and(|inner| inner.is::<Error>());
    if !is_ours {
        return Err(e);
    }
    Ok(*e
        .into_inner()
        .expect("checked above")
        .downcast::<Error>()
        .expect("checked above"))
}

async fn read_manifest(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<serde_json::Value>> {
    let out = match s3src::open(s3, bucket, key, None).await? {
        Opened::Body(body) => body,
        Opened::Changed => return Ok(None),
    };
    let mut text = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(out, 1 << 20);
    tokio::io::AsyncReadExt::read_to_end(&mut limited, &mut text)
        .await
        .map_err(|e| Error::SourceRead {
            url: format!("s3://{bucket}/{key}"),
            offset: 0,
            class: "connection failed",
            message: e.to_string(),
        })?;
    // An unreadable manifest is treated as absent: the output is rewritten.
    Ok(serde_json::from_slice(&text).ok())
}

async fn write_manifest(ctx: &TransformContext, summary: &ObjectSummary, key: &str) -> Result<()> {
    let mut doc = serde_json::to_value(summary).expect("summary serializes");
    doc["run_id"] = serde_json::Value::String(ctx.run_id.clone());
    doc["started_at"] = serde_json::Value::String(ctx.started.to_rfc3339());
    doc["finished_at"] = serde_json::Value::String(Utc::now().to_rfc3339());
    let body = serde_json::to_vec_pretty(&doc).expect("manifest serializes");
    ctx.s3
        .put_object()
        .bucket(&summary.bucket)
        .key(key)
        .content_type("application/json")
        .body(body.into())
        .send()
        .await
        .map_err(|e| Error::S3 {
            operation: S3Operation::PutObject,
            bucket: summary.bucket.clone(),
            key: key.to_owned(),
            part_number: None,
            message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            retryable: true,
        })?;
    Ok(())
}

/// What the producer task ends with.
struct Produced {
    counts: Counts,
    decoded: u64,
    /// `(key, bytes)` of the quarantine object, when one was written.
    quarantine: Option<(String, u64)>,
    /// Completing the quarantine failed.
    quarantine_error: Option<Error>,
}

/// Reads, types, transforms and renders rows into `tx`. On failure the error goes down the
/// channel, so the upload aborts; the quarantine is completed either way.
#[allow(clippy::too_many_arguments)]
async fn produce(
    pipeline: Arc<Pipeline>,
    source: String,
    decoded: Box<dyn AsyncRead + Send + Unpin>,
    map_io: IoErrorMap,
    cap: usize,
    mut quarantine: Quarantine,
    tx: mpsc::Sender<io::Result<Bytes>>,
    http: reqwest::Client,
) -> Produced {
    let mut counts = Counts::default();
    let mut decoded_bytes = 0;
    let result = rows(
        &pipeline,
        &source,
        decoded,
        map_io,
        cap,
        &mut quarantine,
        &tx,
        &mut counts,
        &mut decoded_bytes,
        &http,
    )
    .await;
    counts.quarantined = quarantine.count();
    let (quarantine_done, quarantine_error) = match quarantine.finish().await {
        Ok(q) => (q.map(|u| (quarantine.key().to_owned(), u.bytes)), None),
        Err(e) => (None, Some(e)),
    };
    if let Err(err) = result {
        tracing::error!(%source, error = %err, "transform failed; aborting the output");
        let _ = tx.send(Err(io::Error::other(err))).await;
    } else if let Some(err) = &quarantine_error {
        let _ = tx
            .send(Err(io::Error::other(Error::SourceRead {
                url: source.clone(),
                offset: decoded_bytes,
                class: "quarantine failed",
                message: err.to_string(),
            })))
            .await;
    }
    Produced {
        counts,
        decoded: decoded_bytes,
        quarantine: quarantine_done,
        quarantine_error,
    }
}

/// How a column of the input becomes a value.
struct ColPlan {
    name: String,
    parser: Parser,
    nullable: bool,
    required: bool,
    null_values: Vec<String>,
    /// Declared in the schema (always checked) or used by a step.
    read: bool,
}

impl ColPlan {
    fn empty(&self) -> std::result::Result<Value, String> {
        if self.required {
            return Err("required value is empty".into());
        }
        if self.nullable {
            return Ok(Value::Null);
        }
        if self.parser.ty() == ColType::String {
            return Ok(Value::Str(String::new()));
        }
        Err(format!(
            "empty value in a {} column that is not nullable",
            self.parser.ty().name()
        ))
    }

    fn text(&self, text: &str) -> std::result::Result<Value, String> {
        if text.is_empty() || self.null_values.iter().any(|n| n == text) {
            return self.empty();
        }
        self.parser.parse(text)
    }

    fn json(&self, v: Option<&serde_json::Value>) -> std::result::Result<Value, String> {
        match v {
            None | Some(serde_json::Value::Null) => self.empty(),
            Some(serde_json::Value::String(s)) => self.text(s),
            Some(v) => self.parser.from_json(v),
        }
    }
}

fn plans(pipeline: &Pipeline, names: &[String]) -> Vec<ColPlan> {
    names
        .iter()
        .map(
            |name| match pipeline.input.schema.iter().find(|c| &c.name == name) {
                Some(c) => ColPlan {
                    name: name.clone(),
                    parser: c.parser(),
                    nullable: c.nullable,
                    required: c.required,
                    null_values: c.null_values.clone(),
                    read: true,
                },
                None => ColPlan {
                    name: name.clone(),
                    parser: Parser::new(ColType::String, None),
                    nullable: false,
                    required: false,
                    null_values: Vec::new(),
                    read: false,
                },
            },
        )
        .collect()
}

/// A row waiting for its enrichment answer: the row, where it was read, its raw text (capped).
type Held = (Vec<Value>, Position, Vec<u8>);
type Batch =
    tokio::task::JoinHandle<Result<(Vec<Held>, Vec<serde_json::Map<String, serde_json::Value>>)>>;

/// Batches of rows for the enrich step, and the batches in flight (in order).
struct Enricher {
    plan: enrich::EnrichPlan,
    client: enrich::Client,
    rows: Vec<Held>,
    body: Vec<u8>,
    in_flight: std::collections::VecDeque<Batch>,
    raw_cap: usize,
    scratch: String,
}

impl Enricher {
    fn push(&mut self, row: Vec<Value>, pos: Position, raw: &[u8]) {
        self.body.push(b'{');
        for (n, (name, i)) in self.plan.send.iter().enumerate() {
            if n > 0 {
                self.body.push(b',');
            }
            writer::json_string(name, &mut self.body);
            self.body.push(b':');
            writer::json_value(&row[*i], &mut self.scratch, &mut self.body);
        }
        self.body.extend_from_slice(b"}\n");
        let raw = raw[..raw.len().min(self.raw_cap)].to_vec();
        self.rows.push((row, pos, raw));
    }

    fn full(&self) -> bool {
        self.rows.len() >= self.plan.step.batch_size
            || self.body.len() >= self.plan.step.max_batch_bytes
    }

    fn dispatch(&mut self) {
        if self.rows.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.rows);
        let body = Bytes::from(std::mem::take(&mut self.body));
        let client = self.client.clone();
        self.in_flight.push_back(tokio::spawn(async move {
            let answers = client.post(body, rows.len()).await?;
            Ok((rows, answers))
        }));
    }
}

/// Output state shared by both input formats.
struct Sink<'a> {
    program: Program,
    writer: RowWriter,
    buf: Vec<u8>,
    tx: &'a mpsc::Sender<io::Result<Bytes>>,
    limits: &'a config::QuarantineSpec,
    source: &'a str,
    enricher: Option<Enricher>,
}

impl<'a> Sink<'a> {
    fn new(
        program: Program,
        pipeline: &'a Pipeline,
        tx: &'a mpsc::Sender<io::Result<Bytes>>,
        source: &'a str,
        http: &reqwest::Client,
    ) -> Self {
        let enricher = program.enrich().map(|plan| Enricher {
            client: enrich::Client::new(&plan.step, http.clone()),
            plan: plan.clone(),
            rows: Vec::new(),
            body: Vec::new(),
            in_flight: Default::default(),
            raw_cap: pipeline.quarantine.max_raw_bytes,
            scratch: String::new(),
        });
        Sink {
            writer: RowWriter::new(pipeline.output.format, program.output()),
            program,
            buf: Vec::with_capacity(OUT_CHUNK + 4096),
            tx,
            limits: &pipeline.quarantine,
            source,
            enricher,
        }
    }

    async fn send(&mut self) -> Result<()> {
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(OUT_CHUNK + 4096),
        ));
        self.tx
            .send(Ok(chunk))
            .await
            .map_err(|_| Error::SourceRead {
                url: self.source.to_owned(),
                offset: 0,
                class: "output closed",
                message: "the output upload stopped reading (it failed)".into(),
            })
    }

    /// Steps and output for a typed row, or the quarantine.
    #[allow(clippy::too_many_arguments)]
    async fn row(
        &mut self,
        row: &mut Vec<Value>,
        typed: std::result::Result<(), steps::RowError>,
        pos: Position,
        raw: &[u8],
        counts: &mut Counts,
        quarantine: &mut Quarantine,
    ) -> Result<()> {
        counts.records_in += 1;
        let outcome = match typed {
            Ok(()) => self.program.apply(row),
            Err(e) => Outcome::Bad(e),
        };
        match outcome {
            Outcome::Keep => match &mut self.enricher {
                None => self.keep(row, counts).await?,
                Some(en) => {
                    en.push(std::mem::take(row), pos, raw);
                    if en.full() {
                        en.dispatch();
                        if en.in_flight.len() >= en.plan.step.concurrency {
                            self.drain_one(counts, quarantine).await?;
                        }
                    }
                }
            },
            Outcome::Filtered => counts.filtered += 1,
            Outcome::Bad(e) => self.bad(pos, e, raw, quarantine).await?,
        }
        Ok(())
    }

    /// Appends rows rendered elsewhere.
    async fn emit(&mut self, rendered: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(rendered);
        if self.buf.len() >= OUT_CHUNK {
            self.send().await?;
        }
        Ok(())
    }

    async fn keep(&mut self, row: &[Value], counts: &mut Counts) -> Result<()> {
        counts.records_out += 1;
        self.writer.row(row, &mut self.buf);
        if self.buf.len() >= OUT_CHUNK {
            self.send().await?;
        }
        Ok(())
    }

    /// Waits for the oldest enrichment batch and finishes its rows, in order.
    async fn drain_one(&mut self, counts: &mut Counts, quarantine: &mut Quarantine) -> Result<()> {
        let Some(batch) = self.enricher.as_mut().and_then(|e| e.in_flight.pop_front()) else {
            return Ok(());
        };
        let (rows, answers) = batch.await.map_err(|e| Error::SourceRead {
            url: self.source.to_owned(),
            offset: 0,
            class: "enrichment task failed",
            message: e.to_string(),
        })??;
        for ((mut row, pos, raw), answer) in rows.into_iter().zip(answers) {
            let plan = &self.enricher.as_ref().expect("enricher present").plan;
            let outcome = match plan.merge(&answer, &mut row) {
                Ok(()) => self.program.apply_after_enrich(&mut row),
                Err((column, reason)) => Outcome::Bad(steps::RowError {
                    column: Some(column),
                    reason,
                }),
            };
            match outcome {
                Outcome::Keep => self.keep(&row, counts).await?,
                Outcome::Filtered => counts.filtered += 1,
                Outcome::Bad(e) => self.bad(pos, e, &raw, quarantine).await?,
            }
        }
        Ok(())
    }

    async fn bad(
        &mut self,
        pos: Position,
        e: steps::RowError,
        raw: &[u8],
        quarantine: &mut Quarantine,
    ) -> Result<()> {
        quarantine
            .add(pos, e.column.as_deref(), &e.reason, raw)
            .await?;
        if let Some(max) = self.limits.max_bad_rows
            && quarantine.count() > max
        {
            return Err(Error::Records {
                url: self.source.to_owned(),
                class: "too many bad rows",
                offset: pos.offset,
                record: Some(pos.record),
                message: format!(
                    "line {}: {} rows quarantined, more than quarantine.max_bad_rows {max}; \
                     the last: {}{}; see the quarantine {}",
                    pos.line,
                    quarantine.count(),
                    e.column
                        .map(|c| format!("column {c:?}: "))
                        .unwrap_or_default(),
                    e.reason,
                    quarantine.key()
                ),
            });
        }
        Ok(())
    }

    async fn end(
        &mut self,
        counts: &mut Counts,
        quarantine: &mut Quarantine,
        at: u64,
    ) -> Result<()> {
        if let Some(en) = &mut self.enricher {
            en.dispatch();
        }
        while self
            .enricher
            .as_ref()
            .is_some_and(|e| !e.in_flight.is_empty())
        {
            self.drain_one(counts, quarantine).await?;
        }
        if let Some(max) = self.limits.max_bad_ratio
            && counts.records_in > 0
        {
            let ratio = quarantine.count() as f64 / counts.records_in as f64;
            if ratio > max {
                return Err(Error::Records {
                    url: self.source.to_owned(),
                    class: "too many bad rows",
                    offset: at,
                    record: None,
                    message: format!(
                        "{} of {} rows quarantined ({:.4}), more than quarantine.max_bad_ratio \
                         {max}; see the quarantine {}",
                        quarantine.count(),
                        counts.records_in,
                        ratio,
                        quarantine.key()
                    ),
                });
            }
        }
        if !self.buf.is_empty() {
            self.send().await?;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn rows(
    pipeline: &Pipeline,
    source: &str,
    decoded: Box<dyn AsyncRead + Send + Unpin>,
    map_io: IoErrorMap,
    cap: usize,
    quarantine: &mut Quarantine,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    counts: &mut Counts,
    decoded_bytes: &mut u64,
    http: &reqwest::Client,
) -> Result<()> {
    let mut row: Vec<Value> = Vec::new();
    match pipeline.input.format {
        InputFormat::Csv => {
            let mut reader = CsvReader::new(
                decoded,
                source.to_owned(),
                map_io,
                pipeline.input.delimiter.map_or(b',', |c| c as u8),
                pipeline.input.quote.map_or(b'"', |c| c as u8),
                cap,
            );
            let header = match reader.next().await? {
                Some(h) => h,
                None => {
                    return Err(Error::Records {
                        url: source.to_owned(),
                        class: "no header",
                        offset: 0,
                        record: None,
                        message: "the CSV input is empty (a header row is required)".into(),
                    });
                }
            };
            let mut names = Vec::with_capacity(header.len());
            for i in 0..header.len() {
                let name = std::str::from_utf8(header.field(i)).map_err(|e| Error::Records {
                    url: source.to_owned(),
                    class: "invalid UTF-8",
                    offset: 0,
                    record: Some(1),
                    message: format!("header field {}: {e}", i + 1),
                })?;
                let name = if i == 0 {
                    name.trim_start_matches('\u{feff}')
                } else {
                    name
                };
                names.push(name.to_owned());
            }
            for c in &pipeline.input.schema {
                if !names.contains(&c.name) {
                    return Err(Error::Records {
                        url: source.to_owned(),
                        class: "missing column",
                        offset: 0,
                        record: Some(1),
                        message: format!(
                            "column {:?} of input.schema is not in the header {names:?}",
                            c.name
                        ),
                    });
                }
            }
            let mut plans = plans(pipeline, &names);
            let layout: Layout = plans
                .iter()
                .map(|p| (p.name.clone(), p.parser.ty()))
                .collect();
            let program = steps::compile(&pipeline.steps, &layout, false)
                .map_err(|e| Error::spec(format!("{source}: {e}")))?;
            for (p, needed) in plans.iter_mut().zip(program.needed()) {
                p.read |= *needed;
            }
            let mut sink = Sink::new(program, pipeline, tx, source, http);
            sink.writer.header(&mut sink.buf);
            let workers = pipeline.workers.unwrap_or(1);
            if workers > 1 && sink.program.enrich().is_none() {
                let shared = Arc::new(parallel::Shared {
                    plans,
                    program: sink.program.clone(),
                    format: pipeline.output.format,
                    raw_cap: pipeline.quarantine.max_raw_bytes,
                });
                parallel::run(&mut reader, shared, workers, &mut sink, counts, quarantine).await?;
                *decoded_bytes = reader.offset();
                return sink.end(counts, quarantine, reader.offset()).await;
            }
            let ncols = plans.len();
            while let Some(rec) = reader.next().await? {
                row.clear();
                let typed = if rec.len() != ncols {
                    Err(steps::RowError {
                        column: None,
                        reason: format!("ragged row: {} fields, the header has {ncols}", rec.len()),
                    })
                } else {
                    type_csv(&plans, |i| rec.field(i), &mut row)
                };
                let (pos, raw) = (rec.pos, rec.raw);
                sink.row(&mut row, typed, pos, raw, counts, quarantine)
                    .await?;
            }
            *decoded_bytes = reader.offset();
            sink.end(counts, quarantine, reader.offset()).await
        }
        InputFormat::Ndjson => {
            let mut reader = LineReader::new(decoded, source.to_owned(), map_io, cap);
            let names: Vec<String> = pipeline
                .input
                .schema
                .iter()
                .map(|c| c.name.clone())
                .collect();
            let plans = plans(pipeline, &names);
            let program = steps::compile(&pipeline.steps, &pipeline.schema_layout(), false)?;
            let mut sink = Sink::new(program, pipeline, tx, source, http);
            sink.writer.header(&mut sink.buf);
            while let Some(line) = reader.next().await? {
                row.clear();
                let typed = type_json(&plans, line.raw, &mut row);
                sink.row(&mut row, typed, line.pos, line.raw, counts, quarantine)
                    .await?;
            }
            *decoded_bytes = reader.offset();
            sink.end(counts, quarantine, reader.offset()).await
        }
    }
}

fn type_csv<'a>(
    plans: &[ColPlan],
    field: impl Fn(usize) -> &'a [u8],
    row: &mut Vec<Value>,
) -> std::result::Result<(), steps::RowError> {
    for (i, plan) in plans.iter().enumerate() {
        if !plan.read {
            row.push(Value::Null);
            continue;
        }
        let bytes = field(i);
        let text = std::str::from_utf8(bytes).map_err(|e| steps::RowError {
            column: Some(plan.name.clone()),
            reason: format!("invalid UTF-8 at byte {} of the field", e.valid_up_to()),
        })?;
        let v = plan.text(text).map_err(|reason| steps::RowError {
            column: Some(plan.name.clone()),
            reason,
        })?;
        row.push(v);
    }
    Ok(())
}

fn type_json(
    plans: &[ColPlan],
    raw: &[u8],
    row: &mut Vec<Value>,
) -> std::result::Result<(), steps::RowError> {
    let obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(raw).map_err(|e| steps::RowError {
            column: None,
            reason: format!("not a JSON object: {e}"),
        })?;
    for plan in plans {
        let v = plan
            .json(obj.get(&plan.name))
            .map_err(|reason| steps::RowError {
                column: Some(plan.name.clone()),
                reason,
            })?;
        row.push(v);
    }
    Ok(())
}
