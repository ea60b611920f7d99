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
mod continuing;
pub mod enrich;
#[cfg(feature = "lambda")]
pub mod event;
mod output;
mod parallel;
mod partitioned;
pub mod quarantine;
pub mod reader;
mod rows;
mod single;
pub mod steps;
pub mod value;
pub mod writer;

use std::io;
use std::sync::Arc;

use chrono::DateTime;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::budget::MemoryBudget;
use crate::checkpoint::{Continuation, Continue, RowsPosition};
use crate::codec::{Compression, Decoding, MemberDecoder, MemberStart};
use crate::columnar::{ParquetSummary, RecordsWritten};
use crate::error::{Error, Result};
use crate::job::{self, Invocation, Status};
use crate::key::KeyVars;
use crate::partition::{KeyTemplate, PartitionObject, PartitionedSummary};
use crate::sink::{ObjectMeta, PutOutcome, S3Target};
use crate::source::s3::{self as s3src, ObjectVersion, Opened};
use crate::telemetry;

pub use config::{InputFormat, Pipeline, SourceVars};
use continuing::{Continuing, can_continue, resume_point, resumed_writing};
use quarantine::Quarantine;
use reader::{IoErrorMap, ReadPoint};
pub use rows::RecordTyper;
use rows::RowJob;

const SOURCE_BUFFER: usize = 256 * 1024;

/// What a transform runs with.
#[derive(Debug, Clone)]
pub struct TransformContext {
    /// S3 client (source, output, quarantine, manifest).
    pub s3: aws_sdk_s3::Client,
    /// The function's memory plan.
    pub budget: MemoryBudget,
    /// The invocation: run id, start (for `{date}` and friends), Lambda deadline (the upload
    /// gives up a margin before it).
    pub invocation: Invocation,
    /// HTTP client of the enrich step ([`crate::source::http::client`], with the network
    /// policy).
    pub http: reqwest::Client,
    /// The network policy, checked against the enrich step's URL.
    pub policy: crate::source::http::guard::NetworkPolicy,
}

impl TransformContext {
    /// What the checkpoints of a transform of `pipeline` writing into `bucket` with
    /// `options` are written with.
    fn scope<'a>(
        &'a self,
        pipeline: &'a Pipeline,
        bucket: &'a str,
        options: &'a crate::sink::UploadOptions,
    ) -> crate::checkpoint::JobScope<'a> {
        crate::checkpoint::JobScope {
            s3: &self.s3,
            bucket,
            options,
            tuning: &pipeline.tuning,
            invocation: &self.invocation,
        }
    }
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    pub status: Status,
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
    /// Output compression (for Parquet, the page codec).
    pub compression: Option<Compression>,
    /// For a Parquet output: rows, row groups, the largest row group, codec and columns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parquet: Option<ParquetSummary>,
    /// For a partitioned output: objects, partitions and spill figures (the objects
    /// themselves are listed in the manifest; `key` is the pattern of their keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<PartitionedSummary>,
    /// For a partitioned output replacing an older version's: the objects of that version
    /// deleted once this one's were all written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_objects: Option<usize>,
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
    /// With status `continue`: the event that goes on (`{"checkpoint": ...}`).
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub next: Option<serde_json::Value>,
    /// Invocations the object took, when more than one (or it continues).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invocations: Option<u32>,
    /// Wall time of the invocations before this one (a continued transform's figures are
    /// the whole job's).
    #[serde(skip)]
    elapsed_before_ms: u64,
}

/// What [`run`] decided before reading the source.
enum Plan {
    /// Nothing to do, with the status and the reason.
    Skip(Status, String),
    /// Write the output of this source version.
    Write(Box<Writing>),
}

/// An output to write: its keys and the source version it comes from.
struct Writing {
    key: String,
    quarantine_key: String,
    manifest_key: String,
    version: ObjectVersion,
    to: WriteTo,
}

/// One output object, or the objects of its partitions.
enum WriteTo {
    One {
        target: S3Target,
        /// An output (of an older version) is there: replace it rather than `If-None-Match`.
        output_exists: bool,
    },
    Partitioned {
        template: KeyTemplate,
        /// The objects of the older version's output, deleted once this one's are written.
        previous: Vec<String>,
    },
}

/// Transforms one object with `pipeline`. Nothing is written when the object is not an input
/// of the pipeline, or was already transformed (see the module docs). On failure (a bad
/// input, too many bad rows, the deadline, a panic) neither the output nor the quarantine is
/// completed and no upload stays open.
pub async fn run(
    pipeline: &Pipeline,
    src: &SourceObject,
    ctx: &TransformContext,
) -> Result<ObjectSummary> {
    run_continuing(pipeline, src, ctx, None).await
}

/// [`run`], for a job that may go on in another invocation (`continuation`: the event's
/// job, and the checkpoint it resumes from). When the time is nearly up, the rows stop at a
/// boundary, the output and the quarantine are suspended into a checkpoint and the summary
/// has status `continue` with the event that goes on ([`continuing`]). A pipeline whose
/// output is Parquet or partitioned runs in one invocation.
pub async fn run_continuing(
    pipeline: &Pipeline,
    src: &SourceObject,
    ctx: &TransformContext,
    continuation: Option<&Continuation>,
) -> Result<ObjectSummary> {
    let clock = std::time::Instant::now();
    let source = format!("s3://{}/{}", src.bucket, src.key);
    let out_bucket = pipeline
        .output
        .bucket
        .clone()
        .unwrap_or_else(|| src.bucket.clone());
    let mut summary = ObjectSummary::new(source.clone(), out_bucket.clone(), pipeline);
    let continuation = continuation.filter(|c| can_continue(pipeline, c));
    let from = continuation.and_then(|c| c.from.as_ref());
    let resume = from.map(|l| resume_point(pipeline, l)).transpose()?;
    let w = match resume {
        Some(at) => resumed_writing(pipeline, src, ctx, at, &mut summary).await?,
        None => match plan(pipeline, src, ctx, &mut summary).await? {
            Plan::Skip(status, reason) => return Ok(summary.ended(clock, status, Some(reason))),
            Plan::Write(w) => w,
        },
    };
    let opened = open_input(
        ctx,
        src,
        &source,
        &w.version.e_tag,
        resume,
        continuation.is_some(),
    );
    let Some(Input {
        mut decoded,
        map_io,
        progress,
        decoding,
        starts,
        member,
    }) = opened.await?
    else {
        let reason = "the object changed before it could be read".to_owned();
        return Ok(summary.ended(clock, Status::Superseded, Some(reason)));
    };
    tracing::info!(%source, etag = %w.version.e_tag, size = w.version.size,
        decoding = decoding.name().unwrap_or("identity"), bucket = %out_bucket, key = %w.key,
        resumed_at = resume.map(|at| at.decoded), "transform started");
    if let Some(at) = resume {
        let skipped = continuing::skip(&mut *decoded, at.decoded - member.decoded, |e| {
            map_io(e, member.decoded)
        });
        skipped.await?;
        summary.counts = at.counts;
    }
    let continuing = continuation.map(|c| Continuing {
        continuation: c,
        base: resume
            .cloned()
            .unwrap_or_else(|| continuing::first_position(pipeline, &w, decoding, &summary)),
        starts,
        member,
        resumed: resume.map(|at| ReadPoint {
            offset: at.decoded,
            lines: at.lines,
            records: at.records,
        }),
        bytes_before: from.map_or(0, |l| l.checkpoint.bytes_in),
        bytes_read: progress.clone(),
    });

    let written = match &w.to {
        WriteTo::One { .. } => {
            let input = (decoded, map_io);
            single::write(pipeline, ctx, &source, &w, input, &mut summary, continuing).await
        }
        WriteTo::Partitioned { template, .. } => {
            let input = (decoded, map_io);
            let to = (&*w, source.as_str());
            let summary = &mut summary;
            partitioned::write(pipeline, ctx, to, template, input, summary, continuing).await
        }
    };
    summary.bytes_in = from.map_or(0, |l| l.checkpoint.bytes_in) + progress.bytes();
    if let Some(l) = from {
        summary.invocations = Some(l.checkpoint.invocations + 1);
        summary.elapsed_before_ms = l.checkpoint.elapsed_ms;
    }
    summary.source_resumes = progress.resumes();
    let written = written.map_err(|e| match e {
        Error::Deadline { .. } => Error::Deadline {
            bytes_in: summary.bytes_in,
        },
        e => e,
    })?;
    let done = match written {
        Landed::Continues(next, parts, bytes) => {
            summary.next = Some(next.to_value());
            summary.invocations = Some(summary.invocations.unwrap_or(1));
            summary.parts = parts;
            summary.bytes_out = bytes;
            summary.ended(clock, Status::Continue, None)
        }
        Landed::One(records) => land(pipeline, ctx, &w, records, summary, clock).await?,
        Landed::Partitioned(objects, figures) => {
            partitioned::land(ctx, &w, objects, figures, summary, clock).await?
        }
    };
    if done.status == Status::Written {
        tracing::info!(%source, key = %w.key, records_in = done.counts.records_in,
            records_out = done.counts.records_out, filtered = done.counts.filtered,
            quarantined = done.counts.quarantined, bytes_decoded = done.bytes_decoded,
            duration_ms = done.duration_ms, rows_per_s = done.rows_per_s,
            peak_rss_bytes = done.peak_rss_bytes, "transform finished");
    }
    Ok(done)
}

/// The decoded source of one invocation, and what reading it reports.
struct Input {
    decoded: Box<dyn AsyncRead + Send + Unpin>,
    map_io: IoErrorMap,
    progress: Arc<s3src::BodyProgress>,
    decoding: Decoding,
    /// The member starts of a compressed source that may continue.
    starts: Option<crate::codec::MemberStarts>,
    /// The member it decodes from (the start, unless `resume`).
    member: MemberStart,
}

/// Opens the source version `etag` and its decoder: from its start, or for a resumed
/// transform from the member before its boundary (the decoding the checkpoint names). A
/// transform that may continue (`continuing`) decodes member by member. `None`: the object
/// changed before it could be read (for a resumed transform, an error: it changed between
/// two invocations).
async fn open_input(
    ctx: &TransformContext,
    src: &SourceObject,
    source: &str,
    etag: &str,
    resume: Option<&RowsPosition>,
    continuing: bool,
) -> Result<Option<Input>> {
    let member = resume.map_or(MemberStart::default(), |at| MemberStart {
        compressed: at.member_compressed,
        decoded: at.member_decoded,
    });
    let opened = s3src::open_from(
        &ctx.s3,
        &src.bucket,
        &src.key,
        Some(etag),
        member.compressed,
    );
    let body = match opened.await? {
        Opened::Body(body) => body,
        Opened::Changed if resume.is_some() => {
            return Err(Error::SourceChanged {
                url: source.to_owned(),
                message: format!(
                    "it no longer has ETag {etag} (overwritten or deleted between two invocations)"
                ),
            });
        }
        Opened::Changed => return Ok(None),
    };
    let progress = body.progress();
    let body = body.counting(ctx.invocation.progress.clone());
    let mut buffered = BufReader::with_capacity(SOURCE_BUFFER, body);
    let head = buffered.fill_buf().await.map_err(|e| Error::SourceRead {
        url: source.to_owned(),
        offset: 0,
        class: "connection failed",
        message: e.to_string(),
    })?;
    let decoding = match resume {
        Some(at) => continuing::decoding_of(&at.decoding)?,
        None => Decoding::sniff(head),
    };
    let mut starts = None;
    let decoded: Box<dyn AsyncRead + Send + Unpin> = match continuing {
        true => {
            let window = ctx.budget.zstd_window_log_max();
            let d = MemberDecoder::resume(buffered, decoding, window, member);
            starts = (decoding != Decoding::Identity).then(|| d.starts());
            Box::new(d)
        }
        false => decoding.decoder(buffered),
    };
    let map_io: IoErrorMap = {
        let progress = progress.clone();
        let source = source.to_owned();
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
    Ok(Some(Input {
        decoded,
        map_io,
        progress,
        decoding,
        starts,
        member,
    }))
}

/// What the rows were written into.
enum Landed {
    One(RecordsWritten),
    /// Not finished: the event that continues, and the parts and bytes uploaded so far.
    Continues(Continue, u32, u64),
    Partitioned(Vec<PartitionObject>, PartitionedSummary),
}

/// The summary of one output object, and its manifest; `duplicate` when another delivery of
/// the event wrote the object first (`If-None-Match`).
async fn land(
    pipeline: &Pipeline,
    ctx: &TransformContext,
    w: &Writing,
    written: RecordsWritten,
    mut summary: ObjectSummary,
    clock: std::time::Instant,
) -> Result<ObjectSummary> {
    let RecordsWritten { uploaded, parquet } = written;
    summary.parquet = parquet;
    let PutOutcome::Written { e_tag, .. } = uploaded.outcome else {
        let reason = format!(
            "s3://{}/{} was written meanwhile (If-None-Match)",
            summary.bucket, w.key
        );
        return Ok(summary.ended(clock, Status::Duplicate, Some(reason)));
    };
    summary.bytes_out = uploaded.bytes;
    summary.parts = uploaded.parts;
    summary.e_tag = Some(e_tag);
    let mut done = summary.ended(clock, Status::Written, None);
    if pipeline.output.manifest {
        done.manifest = Some(w.manifest_key.clone());
        let doc = serde_json::to_value(&done).map_err(|e| Error::Internal {
            message: format!("summary of {}: {e}", w.key),
        })?;
        job::write_manifest(&ctx.s3, &ctx.invocation, &done.bucket, &w.manifest_key, doc).await?;
    }
    Ok(done)
}

impl ObjectSummary {
    /// The summary of `source` before anything is known of it, for an output in `bucket`.
    fn new(source: String, bucket: String, pipeline: &Pipeline) -> ObjectSummary {
        ObjectSummary {
            status: Status::Skipped,
            reason: None,
            source,
            source_etag: None,
            source_last_modified: None,
            bucket,
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
            parquet: None,
            partitioned: None,
            replaced_objects: None,
            e_tag: None,
            duration_ms: 0,
            rows_per_s: 0.0,
            throughput_mib_s: 0.0,
            peak_rss_bytes: None,
            next: None,
            invocations: None,
            elapsed_before_ms: 0,
        }
    }

    /// The summary with its status and the run's figures.
    fn ended(
        mut self,
        clock: std::time::Instant,
        status: Status,
        reason: Option<String>,
    ) -> ObjectSummary {
        let before = self.elapsed_before_ms as f64 / 1000.0;
        let elapsed = (before + clock.elapsed().as_secs_f64()).max(1e-9);
        self.status = status;
        self.reason = reason;
        self.duration_ms = (elapsed * 1000.0) as u64;
        self.rows_per_s = (self.counts.records_in as f64 / elapsed).round();
        self.throughput_mib_s =
            ((self.bytes_decoded as f64 / (1024.0 * 1024.0) / elapsed) * 10.0).round() / 10.0;
        self.peak_rss_bytes = telemetry::peak_rss_bytes();
        if status != Status::Written && status != Status::Continue {
            tracing::info!(source = %self.source, %status,
                reason = self.reason.as_deref().unwrap_or(""), "object not transformed");
        }
        self
    }
}

/// Decides whether to write, from the pipeline, the source's current version, the manifest of
/// an earlier output and whether an output is there (see the module docs).
async fn plan(
    pipeline: &Pipeline,
    src: &SourceObject,
    ctx: &TransformContext,
    summary: &mut ObjectSummary,
) -> Result<Plan> {
    if let Some(reason) = pipeline.skip_reason(&src.key) {
        return Ok(Plan::Skip(Status::Skipped, reason));
    }
    let vars = SourceVars {
        key: src.key.clone(),
        vars: KeyVars::new(ctx.invocation.started, ctx.invocation.run_id.clone()),
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
    let template = match pipeline.is_partitioned() {
        true => Some(pipeline.partition_template(&vars)?),
        false => None,
    };
    let key = match &template {
        Some(t) => t.pattern(),
        None => config::render_key("output.key", &pipeline.output.key, &vars)?,
    };
    let quarantine_key = config::render_key("quarantine.key", &pipeline.quarantine.key, &vars)?;
    summary.key = Some(key.clone());
    let out_bucket = summary.bucket.clone();

    let Some(version) = s3src::head(&ctx.s3, &src.bucket, &src.key).await? else {
        return Ok(Plan::Skip(
            Status::Superseded,
            "the object no longer exists".into(),
        ));
    };
    summary.source_etag = Some(version.e_tag.clone());
    summary.source_last_modified = version
        .last_modified
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    if let Some(announced) = &src.e_tag
        && unquote(announced) != unquote(&version.e_tag)
    {
        return Ok(Plan::Skip(
            Status::Superseded,
            format!(
                "the event is for ETag {announced}, the object now has {}",
                version.e_tag
            ),
        ));
    }
    let manifest_key = match &template {
        Some(_) => partitioned_manifest_key(pipeline, &src.key),
        None => job::manifest_key(&key),
    };
    let previous = read_manifest(&ctx.s3, &out_bucket, &manifest_key).await?;
    if let Some(skip) = previous
        .as_ref()
        .and_then(|m| compare_manifest(m, &version, &format!("s3://{out_bucket}/{key}")))
    {
        return Ok(skip);
    }
    let to = match template {
        Some(template) => {
            if previous.is_some() && !pipeline.output.overwrite {
                return Ok(Plan::Skip(
                    Status::Exists,
                    format!(
                        "s3://{out_bucket}/{manifest_key} lists an output and output.overwrite is false"
                    ),
                ));
            }
            WriteTo::Partitioned {
                template,
                previous: previous.as_ref().map(manifest_objects).unwrap_or_default(),
            }
        }
        None => {
            let target = S3Target::new(ctx.s3.clone(), &out_bucket, &key).with_meta(ObjectMeta {
                content_type: Some(content_type(pipeline)),
            });
            let output_exists = target.exists().await?;
            if output_exists && !pipeline.output.overwrite {
                return Ok(Plan::Skip(
                    Status::Exists,
                    format!("s3://{out_bucket}/{key} exists and output.overwrite is false"),
                ));
            }
            WriteTo::One {
                target,
                output_exists,
            }
        }
    };
    Ok(Plan::Write(Box::new(Writing {
        key,
        quarantine_key,
        manifest_key,
        version,
        to,
    })))
}

fn content_type(pipeline: &Pipeline) -> String {
    pipeline
        .output
        .format
        .object_content_type(pipeline.output.compression)
        .to_owned()
}

/// The manifest of a partitioned output of `source_key`:
/// `<manifest prefix>/<source key>.json` ([`Pipeline::manifest_prefix`], never read as input).
fn partitioned_manifest_key(pipeline: &Pipeline, source_key: &str) -> String {
    format!("{}{source_key}.json", pipeline.manifest_prefix())
}

/// The keys of the objects a partitioned output's manifest lists.
fn manifest_objects(manifest: &serde_json::Value) -> Vec<String> {
    manifest["objects"]
        .as_array()
        .map(|objects| {
            objects
                .iter()
                .filter_map(|o| o["key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the output `what` described by `manifest` makes this version's event a duplicate
/// (it was made from this version) or stale (from a newer one).
fn compare_manifest(
    manifest: &serde_json::Value,
    version: &ObjectVersion,
    what: &str,
) -> Option<Plan> {
    let etag = manifest.get("source_etag").and_then(|v| v.as_str());
    if etag.map(unquote) == Some(unquote(&version.e_tag)) {
        return Some(Plan::Skip(
            Status::Duplicate,
            format!("{what} was made from this version (ETag {})", version.e_tag),
        ));
    }
    let recorded = manifest
        .get("source_last_modified")
        .and_then(|v| v.as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.to_utc());
    if let (Some(recorded), Some(now)) = (recorded, version.last_modified)
        && recorded > now
    {
        return Some(Plan::Skip(
            Status::Stale,
            format!("{what} was made from a newer version (Last-Modified {recorded})"),
        ));
    }
    None
}

/// The quarantine of one object (at `quarantine_key`, its records naming `source`) and the
/// job that reads, types and transforms its rows.
fn row_job<'a>(
    pipeline: &'a Pipeline,
    ctx: &'a TransformContext,
    source: &'a str,
    quarantine_key: &str,
    summary: &ObjectSummary,
    deadline: Option<tokio::time::Instant>,
) -> Result<(Quarantine, RowJob<'a>)> {
    let budget = pipeline.tuning.budget(ctx.budget)?;
    let quarantine = Quarantine::new(
        ctx.s3.clone(),
        summary.bucket.clone(),
        quarantine_key.to_owned(),
        source.to_owned(),
        pipeline.quarantine.max_raw_bytes,
        budget,
    )
    .with_deadline(deadline);
    let job = RowJob {
        pipeline,
        source,
        cap: pipeline.tuning.record_cap(&budget),
        http: &ctx.http,
        deadline,
        progress: Some(ctx.invocation.progress.clone()),
    };
    Ok((quarantine, job))
}

/// Completes the quarantine (if a row went there) and records it in the summary.
async fn keep_quarantine(quarantine: &mut Quarantine, summary: &mut ObjectSummary) -> Result<()> {
    match quarantine.finish().await {
        Ok(Some(q)) => {
            summary.bytes_quarantined = q.bytes;
            summary.quarantine_key = Some(quarantine.key().to_owned());
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            tracing::error!(key = quarantine.key(), error = %e, "quarantine failed");
            Err(e)
        }
    }
}

fn unquote(etag: &str) -> &str {
    etag.trim_matches('"')
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
