//! One job end to end: source → decode → (records) → compress → S3, a manifest beside the
//! object, and the summary a function returns.
//!
//! Byte-copy mode (no `records`): the body is decoded (`Content-Encoding`) and copied through
//! an [`ObjectWriter`], which compresses it when asked.
//!
//! Records mode (`records` or `input_format: ndjson`): [`records`] walks the pages
//! ([`Paginator`](http::paginate::Paginator)), extracts each page's records with a bounded
//! decoder and writes NDJSON in 64 KiB batches into the writer (one object, or one per page
//! with `{page}` in the key, see [`pages`]). The object is completed only after the last page
//! was read without error: a page that cannot be fetched after its retries, invalid JSON, a
//! record over the cap, a pagination loop or a panic aborts the upload, and a run writes all
//! its pages or nothing.
//!
//! Retries and records: a page whose request fails (connection, timeout, 408/429/5xx) is
//! retried before any of its records are written. Once its body streams into the output, a
//! failure ends the run (error type `Retryable`, upload aborted) rather than re-reading the
//! page, which could duplicate or lose records on an API whose pages shift.

pub mod batch;
mod copy;
mod pager;
mod pages;
mod parquet;
mod partitioned;
mod records;

use std::sync::Arc;

use serde::Serialize;

use crate::budget::MemoryBudget;
use crate::checkpoint;
use crate::codec::Compression;
use crate::columnar::{self, ParquetSummary, RecordOutput};
use crate::error::{Error, Result};
use crate::format::Format;
use crate::job::{self, Invocation, Status};
use crate::key::{self, KeyVars};
use crate::partition::{
    self, KeyTemplate, PartitionObject, PartitionedSummary, Partitioner, TextObjects,
};
use crate::secret::SecretResolver;
use crate::sink::{ObjectMeta, ObjectWriter, PutOutcome, S3Target, UploadOptions, Uploaded};
use crate::source::http::auth::{ResolvedAuth, redact_url};
use crate::source::http::guard::NetworkPolicy;
use crate::source::http::rate::RateLimiter;
use crate::source::http::state::{self, WatermarkTracker};
use crate::source::http::{self, HttpSourceSpec};
use crate::spec::{JobSpec, RecordsQuarantine, SourceSpec};
use crate::telemetry;
use crate::transform::quarantine::Quarantine;

use pager::{Pager, Stretch};
pub use pages::PageObject;
use records::{Output, PageStats, Paged, Producer};

/// What a job runs with: clients built once per function instance, and per-invocation facts.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// S3 client for the destination.
    pub s3: aws_sdk_s3::Client,
    /// HTTP client for sources ([`http::client`]), built with `policy`.
    pub http: reqwest::Client,
    /// The same, refusing cross-host redirects ([`http::same_host_client`]): used when an API
    /// key travels in a custom header.
    pub http_same_host: reqwest::Client,
    /// Where sources may connect ([`NetworkPolicy::from_env`]).
    pub policy: NetworkPolicy,
    /// Resolves the secrets of `auth` (env, Secrets Manager, SSM), with a cache.
    pub secrets: Arc<SecretResolver>,
    /// The function's memory plan ([`MemoryBudget::from_env`]).
    pub budget: MemoryBudget,
    /// A rate limiter shared with other jobs of the same batch: every request of the job takes
    /// a token of it as well as of the source's own `rate_limit`.
    pub limiter: Option<Arc<RateLimiter>>,
    /// The invocation: run id, start, Lambda deadline.
    pub invocation: Invocation,
}

/// The JSON summary a function answers with (and the manifest written beside the object).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// `written`, or `exists` when `overwrite: false` found the object already there.
    pub status: Status,
    /// Destination bucket.
    pub bucket: String,
    /// Destination key (rendered).
    pub key: String,
    /// Source URL (of the first page, after redirects).
    pub source: String,
    /// Body bytes received from the source (before any `Content-Encoding` decoding).
    pub bytes_in: u64,
    /// Bytes written to S3 (the object's size).
    pub bytes_out: u64,
    /// Records written; `null` for a byte-for-byte copy.
    pub records: Option<u64>,
    /// Pages fetched; `null` for a byte-for-byte copy.
    pub pages: Option<u32>,
    /// The last cursor sent (cursor pagination), for the record.
    pub last_cursor: Option<String>,
    /// True when paging stopped at `max_pages` rather than at the end of the data.
    pub truncated: bool,
    /// Parts uploaded (1 for a single `PutObject`).
    pub parts: u32,
    /// Full-object checksum algorithm (`CRC64NVME`, `CRC32C`).
    pub checksum_algorithm: &'static str,
    /// Full-object checksum, base64, verified against S3's answer.
    pub checksum: Option<String>,
    /// The object's ETag.
    pub e_tag: Option<String>,
    /// Output compression, if any.
    pub compression: Option<Compression>,
    /// The manifest's key, when one was written.
    pub manifest: Option<String>,
    /// Incremental runs: the watermark after this run (unchanged when no record passed it).
    pub watermark: Option<String>,
    /// Wall time of the job.
    pub duration_ms: u64,
    /// Source bytes per second, in MiB.
    pub throughput_mib_s: f64,
    /// Peak resident memory of the process so far (`VmHWM`).
    pub peak_rss_bytes: Option<u64>,
    /// With `{page}` in the key: every object written, in page order (`key` is then the
    /// template with `{page}` left in, and `checksum`, `e_tag`, `manifest` are per object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<PageObject>>,
    /// For a Parquet output: rows, row groups, the largest row group, codec and columns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parquet: Option<ParquetSummary>,
    /// For a Parquet output: records that did not fit the schema (in the quarantine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<u64>,
    /// The quarantine object, when a record went there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_key: Option<String>,
    /// A partitioned run (`{field:…}`, `max_object_mib`, `max_object_records`): objects,
    /// partitions and spill figures; the objects themselves are in the run manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<PartitionedSummary>,
    /// A partitioned run's objects, for its run manifest (not in the answer).
    #[serde(skip)]
    pub partition_objects: Vec<PartitionObject>,
    /// With `"status": "continue"`: the event that continues the job
    /// ([`crate::checkpoint::Continue`]).
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub next: Option<serde_json::Value>,
    /// Invocations the job has taken so far, when more than one (or it continues).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invocations: Option<u32>,
}

/// How a run was written.
enum Written {
    /// One object.
    Single(Uploaded),
    /// One object per non-empty page.
    Pages(Vec<PageObject>),
    /// One Parquet file (or a partitioned run's files), and its quarantine.
    Parquet(parquet::ParquetDone),
    /// A partitioned run's NDJSON objects.
    Partitioned(Vec<PartitionObject>, PartitionedSummary),
    /// Not finished: a checkpoint was written; the next invocation continues with this event.
    /// With the parts and bytes uploaded so far.
    Continues(checkpoint::Continue, u32, u64),
}

/// What one job resolved before writing: the facts the byte copy and the record producer
/// share.
struct Prepared<'a> {
    spec: &'a JobSpec,
    ctx: &'a JobContext,
    http_spec: HttpSourceSpec,
    vars: KeyVars,
    auth: Option<Arc<ResolvedAuth>>,
    budget: MemoryBudget,
    options: UploadOptions,
    incremental: Option<(state::State, Arc<WatermarkTracker>)>,
}

impl Prepared<'_> {
    /// The HTTP client: one that refuses cross-host redirects when an API key travels in a
    /// custom header.
    fn client(&self) -> &reqwest::Client {
        let key_in_header = self.http_spec.auth.as_ref().is_some_and(|a| {
            a.header_name()
                .is_some_and(|h| !h.eq_ignore_ascii_case("authorization"))
        });
        if key_in_header {
            &self.ctx.http_same_host
        } else {
            &self.ctx.http
        }
    }

    /// What the job's checkpoints are written with.
    fn scope(&self) -> checkpoint::JobScope<'_> {
        checkpoint::JobScope {
            s3: &self.ctx.s3,
            bucket: &self.spec.destination.bucket,
            options: &self.options,
            tuning: &self.spec.tuning,
            invocation: &self.ctx.invocation,
        }
    }

    /// The source's own rate limit inside the batch's shared one (either may be absent).
    fn limiter(&self) -> Option<Arc<RateLimiter>> {
        let shared = self.ctx.limiter.clone();
        match (&self.http_spec.rate_limit, shared) {
            (Some(own), Some(shared)) => Some(Arc::new(RateLimiter::new(own).with_parent(shared))),
            (Some(own), None) => Some(Arc::new(RateLimiter::new(own))),
            (None, shared) => shared,
        }
    }
}

pub use crate::checkpoint::Continuation;

/// Runs one job. On failure, nothing is left at the destination key by this run and no
/// multipart upload stays open.
pub async fn run(spec: &JobSpec, ctx: &JobContext) -> Result<Summary> {
    run_continuing(spec, ctx, None).await
}

/// Runs one job that may continue: a byte copy whose source can be read from an offset, or
/// paginated records ([`pager`]), stops before the deadline (or
/// `tuning.max_invocation_secs`), writes a checkpoint and answers `"status": "continue"`; the
/// job resumes from `continuation.from` when it is set.
/// The checkpoint read is deleted once the job finished or failed; a failure aborts its
/// upload (also when it came before the writer resumed it: a changed source, say).
pub async fn run_continuing(
    spec: &JobSpec,
    ctx: &JobContext,
    continuation: Option<&Continuation>,
) -> Result<Summary> {
    let result = run_job(spec, ctx, continuation).await;
    let from = continuation.and_then(|c| c.from.as_ref());
    checkpoint::settle(&ctx.s3, from, &result, |s| s.status == Status::Continue).await;
    result
}

async fn run_job(
    spec: &JobSpec,
    ctx: &JobContext,
    continuation: Option<&Continuation>,
) -> Result<Summary> {
    spec.validate()?;
    let from = continuation.and_then(|c| c.from.as_ref());
    let clock = std::time::Instant::now();
    let prepared = prepare(spec, ctx).await?;
    let per_page = spec.object_per_page();
    let partitioned = spec.destination.is_partitioned();
    let key = if partitioned {
        // Checks the template; the summary names it.
        KeyTemplate::compile("destination.key", &spec.destination.key, &prepared.vars)?;
        spec.destination.key.clone()
    } else if per_page {
        // Checks the template; the summary names the pattern.
        key::render(
            &spec.destination.key,
            &prepared.vars.clone().with("page", "00001"),
        )?;
        key::render(
            &spec.destination.key,
            &prepared.vars.clone().with("page", "{page}"),
        )?
    } else {
        key::render(&spec.destination.key, &prepared.vars)?
    };
    checkpoint::check_not_reserved("destination.key", &key)?;
    if let Some(loaded) = from {
        let kind = loaded.checkpoint.position.kind();
        let fits = match &loaded.checkpoint.position {
            checkpoint::Position::HttpRange { .. } => !spec.extracts_records() && !partitioned,
            checkpoint::Position::Pages {
                partitions,
                parquet,
                pages,
                ..
            } => {
                spec.extracts_records()
                    && parquet.is_some() == (spec.format == Some(Format::Parquet))
                    && partitions.is_some() == partitioned
                    && pages.is_some() == per_page
            }
            checkpoint::Position::Keyset { .. } | checkpoint::Position::Rows(_) => false,
        };
        if key != loaded.checkpoint.key || !fits {
            return Err(Error::spec(format!(
                "checkpoint {}: it is for s3://{}/{}, {kind}; the job renders {key}",
                loaded.reference.checkpoint.key, spec.destination.bucket, loaded.checkpoint.key
            )));
        }
    }
    let bucket = spec.destination.bucket.clone();
    tracing::info!(
        %bucket, %key, part_size = prepared.options.schedule.part_size(1),
        records = spec.records.as_deref().unwrap_or("-"), "job started"
    );
    let mut summary = Summary {
        status: Status::Exists,
        bucket: bucket.clone(),
        key: key.clone(),
        source: redact_url(&prepared.http_spec.url, prepared.auth.as_deref()),
        bytes_in: 0,
        bytes_out: 0,
        records: None,
        pages: None,
        last_cursor: None,
        truncated: false,
        parts: 0,
        checksum_algorithm: spec.destination.checksum.s3_name(),
        checksum: None,
        e_tag: None,
        compression: spec.compression,
        manifest: None,
        watermark: None,
        duration_ms: 0,
        throughput_mib_s: 0.0,
        peak_rss_bytes: None,
        objects: None,
        parquet: None,
        quarantined: None,
        quarantine_key: None,
        partitioned: None,
        partition_objects: Vec::new(),
        next: None,
        invocations: None,
    };
    let target = S3Target::new(ctx.s3.clone(), &bucket, &key);
    let single = !per_page && !partitioned;
    // A continued job's upload is open: its `If-None-Match` completion is the check.
    if single && from.is_none() && !spec.destination.overwrite && target.exists().await? {
        tracing::info!(%bucket, %key, "object exists and overwrite is false; nothing to do");
        summary.peak_rss_bytes = telemetry::peak_rss_bytes();
        return Ok(summary);
    }

    let (written, stats) = if spec.extracts_records() {
        write_records(&prepared, target, &summary, continuation).await?
    } else {
        copy::copy_body(&prepared, target, continuation, &key).await?
    };
    let elapsed = clock.elapsed()
        + from.map_or(std::time::Duration::ZERO, |l| {
            std::time::Duration::from_millis(l.checkpoint.elapsed_ms)
        });
    summary.bytes_in = stats.bytes_in;
    if let Some(url) = stats.first_url {
        summary.source = url;
    }
    if spec.extracts_records() {
        summary.records = Some(stats.records);
        summary.pages = Some(stats.pages);
        summary.last_cursor = stats.last_cursor;
        summary.truncated = stats.truncated;
    }
    summary.duration_ms = elapsed.as_millis() as u64;
    summary.peak_rss_bytes = telemetry::peak_rss_bytes();
    summary.throughput_mib_s =
        stats.bytes_in as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9);
    let invocations = from.map_or(1, |l| l.checkpoint.invocations + 1);
    if invocations > 1 || matches!(written, Written::Continues(..)) {
        summary.invocations = Some(invocations);
    }
    if !summary.record(written) {
        return Ok(summary);
    }
    finish(&prepared, &mut summary, per_page).await?;
    tracing::info!(
        bytes_in = summary.bytes_in,
        bytes_out = summary.bytes_out,
        records = summary.records,
        pages = summary.pages,
        parts = summary.parts,
        duration_ms = summary.duration_ms,
        peak_rss_bytes = summary.peak_rss_bytes,
        "job finished"
    );
    Ok(summary)
}

impl Summary {
    fn record_partitioned(&mut self, objects: Vec<PartitionObject>, figures: PartitionedSummary) {
        self.status = Status::Written;
        self.bytes_out = objects.iter().map(|o| o.bytes).sum();
        self.parts = objects.iter().map(|o| o.parts).sum();
        self.partitioned = Some(figures);
        self.partition_objects = objects;
    }

    /// Records how the run was written; `false` when the object was already there
    /// (no-overwrite), with nothing more to do.
    fn record(&mut self, written: Written) -> bool {
        let uploaded = match written {
            Written::Single(uploaded) => uploaded,
            Written::Parquet(done) => {
                self.quarantined = Some(done.quarantined);
                self.quarantine_key = done.quarantine_key;
                match done.written {
                    parquet::ParquetWrote::One(w) => {
                        self.parquet = w.parquet;
                        w.uploaded
                    }
                    parquet::ParquetWrote::Partitioned(objects, figures) => {
                        self.record_partitioned(objects, figures);
                        return true;
                    }
                }
            }
            Written::Partitioned(objects, figures) => {
                self.record_partitioned(objects, figures);
                return true;
            }
            Written::Continues(next, parts, bytes) => {
                self.status = Status::Continue;
                self.next = Some(next.to_value());
                self.parts = parts;
                self.bytes_out = bytes;
                return false;
            }
            Written::Pages(objects) => {
                if objects.is_empty() || objects.iter().any(|o| o.status == Status::Written) {
                    self.status = Status::Written;
                }
                self.bytes_out = objects.iter().map(|o| o.bytes_out).sum();
                self.parts = objects.iter().map(|o| o.parts).sum();
                self.objects = Some(objects);
                return true;
            }
        };
        let PutOutcome::Written { e_tag, .. } = uploaded.outcome else {
            return false;
        };
        self.status = Status::Written;
        self.e_tag = Some(e_tag);
        self.bytes_out = uploaded.bytes;
        self.parts = uploaded.parts;
        self.checksum_algorithm = uploaded.checksum.algorithm().s3_name();
        self.checksum = Some(uploaded.checksum.to_base64());
        true
    }
}

/// Resolves what the job needs before it writes: key variables, the incremental state and the
/// URL it implies, the secrets of `auth`, the upload options.
async fn prepare<'a>(spec: &'a JobSpec, ctx: &'a JobContext) -> Result<Prepared<'a>> {
    let scheduled_time = spec
        .scheduled_time
        .as_deref()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).map(|t| t.to_utc()))
        .transpose()
        .map_err(|e| Error::spec(format!("scheduled_time: {e}")))?;
    let inv = &ctx.invocation;
    let vars = KeyVars {
        scheduled_time,
        ..KeyVars::new(scheduled_time.unwrap_or(inv.started), inv.run_id.clone())
    };
    let SourceSpec::Http(http_spec) = &spec.source;
    let mut http_spec = http_spec.clone();
    let incremental = match &spec.incremental {
        Some(inc) => {
            let bucket = &spec.destination.bucket;
            let state = state::read(&ctx.s3, bucket, &inc.state_key, &inc.initial_value).await?;
            http_spec.url = http_spec
                .url
                .replace("{watermark}", &percent_encode(&state.watermark));
            if let Some(param) = &inc.param {
                let mut url = http::single_page(&http_spec)?.url;
                http::paginate::set_param(&mut url, param, &state.watermark);
                http_spec.url = url.to_string();
            }
            let tracker = Arc::new(WatermarkTracker::new(inc.field(spec.records.as_deref())?));
            tracing::info!(watermark = %state.watermark, state_key = %inc.state_key, "incremental run");
            Some((state, tracker))
        }
        None => None,
    };
    let auth = match &http_spec.auth {
        Some(a) => Some(Arc::new(a.resolve(&ctx.secrets).await?)),
        None => None,
    };
    let budget = spec.tuning.budget(ctx.budget)?;
    let mut options = UploadOptions::new(budget.schedule());
    options.checksum = spec.destination.checksum;
    options.if_none_match = !spec.destination.overwrite;
    options.deadline = inv.give_up_at(spec.tuning.deadline_margin())?;
    options.compression = spec
        .format
        .unwrap_or(Format::Ndjson)
        .stream_compression(spec.compression);
    options.progress = Some(inv.progress.clone());
    Ok(Prepared {
        spec,
        ctx,
        http_spec,
        vars,
        auth,
        budget,
        options,
        incremental,
    })
}

/// Records mode: the producer writes every page's records into one object or one per page.
/// Paginated records (into anything but one Parquet file) continue across invocations with
/// a `continuation`.
async fn write_records(
    p: &Prepared<'_>,
    target: S3Target,
    summary: &Summary,
    continuation: Option<&Continuation>,
) -> Result<(Written, PageStats)> {
    let spec = p.spec;
    let producer = Producer {
        http: p.client().clone(),
        spec: p.http_spec.clone(),
        policy: p.ctx.policy.clone(),
        limiter: p.limiter(),
        deadline: p.options.deadline,
        records: spec
            .records
            .as_deref()
            .map(|r| crate::codec::json_records::JsonPath::parse(r, true))
            .transpose()
            .map_err(Error::spec)?,
        input: spec.input_format,
        max_record: spec.tuning.record_cap(&p.budget),
        tracker: p.incremental.as_ref().map(|(_, t)| t.clone()),
        auth: p.auth.clone(),
        progress: p.ctx.invocation.progress.clone(),
    };
    let format = spec.format.unwrap_or(Format::Ndjson);
    let content_type = spec
        .destination
        .content_type
        .clone()
        .unwrap_or_else(|| format.object_content_type(spec.compression).to_owned());
    let meta = ObjectMeta {
        content_type: Some(content_type),
    };
    let written = pages::Written::default();
    let partition_written = partition::Written::default();
    let from = continuation.and_then(|c| c.from.as_ref());
    let target = Arc::new(target.with_meta(meta.clone()));
    let outputs = Outputs {
        target: &target,
        meta,
        summary,
        written: &written,
        partition_written: &partition_written,
    };
    let out = outputs.build(p, from)?;
    // Paginated records stop between pages, into anything but one Parquet file.
    let continuing = continuation.filter(|_| {
        let can = match &out {
            Output::Single(_) | Output::Partitioned(_) => true,
            Output::Parquet(records) => records.is_partitioned(),
            Output::PerPage(_) => true,
        };
        can && p.http_spec.paginate.is_some()
    });
    let mut paging = producer.paging(from.and_then(|l| match &l.checkpoint.position {
        checkpoint::Position::Pages { next, .. } => Some(next),
        checkpoint::Position::HttpRange { .. }
        | checkpoint::Position::Keyset { .. }
        | checkpoint::Position::Rows(_) => None,
    }))?;
    // Source bytes of the invocations before count in the job's figures.
    paging.stats.bytes_in = from.map_or(0, |l| l.checkpoint.bytes_in);
    let mut pager = match continuing {
        Some(c) => Some(Pager::new(p, c, &summary.key)?),
        None => None,
    };
    let mut out = out;
    let (produced, out, stats) = loop {
        let stop = pager.as_ref().map(Pager::stop);
        let (produced, back, paged) = match producer.clone().spawn(out, paging, stop).await {
            Ok(done) => done,
            Err(panicked) => {
                // The output went down with the task (its uploads are aborted); the objects
                // it completed are deleted here.
                let done = (&written, &partition_written);
                roll_back_failed(p, pager.as_ref(), done, &panicked).await;
                if let Some(pager) = &pager {
                    pager.checkpoints.give_up(&panicked).await;
                }
                return Err(panicked);
            }
        };
        paging = paged;
        let (time_up, stopped, pager) = match (produced, back, pager.as_mut()) {
            (Ok(Paged::Stopped { time_up }), back, Some(pager)) => (time_up, back, pager),
            (produced, back, _) => {
                // Only the end of the data finishes the output.
                let produced = produced.and_then(|paged| match paged {
                    Paged::Ended => Ok(()),
                    Paged::Stopped { .. } => Err(Error::Internal {
                        message: "the record producer stopped with nowhere to checkpoint".into(),
                    }),
                });
                break (produced, back, paging.stats);
            }
        };
        match pager.checkpoint(stopped, &paging, time_up, &target).await {
            Ok(Stretch::Continues(saved, parts, bytes)) => {
                return Ok((Written::Continues(saved, parts, bytes), paging.stats));
            }
            Ok(Stretch::Resumed(resumed)) => out = resumed,
            Err(e) => {
                let done = (&written, &partition_written);
                roll_back_failed(p, Some(&*pager), done, &e).await;
                return Err(e);
            }
        }
    };
    let result = settle(p, out, produced, &stats).await;
    if let Err(e) = &result {
        // A run writing one object per page deleted its pages itself.
        roll_back_failed(p, pager.as_ref(), (&written, &partition_written), e).await;
    }
    if let Some(pager) = &pager {
        pager.checkpoints.end(&result).await;
    }
    Ok((deadline_bytes(result, stats.bytes_in)?, stats))
}

/// After a failure with `error`: deletes the objects the run completed, its pages (with
/// their manifests) or its partitions' objects, sparing those the checkpoint kept for a retry
/// lists ([`Checkpoints::roll_back`](checkpoint::Checkpoints::roll_back)).
async fn roll_back_failed(
    p: &Prepared<'_>,
    pager: Option<&Pager<'_>>,
    (pages_written, partitions_written): (&pages::Written, &partition::Written),
    error: &Error,
) {
    let bucket = &p.spec.destination.bucket;
    pages::roll_back(p.ctx, bucket, pages_written).await;
    match pager {
        Some(pager) => pager.checkpoints.roll_back(partitions_written, error).await,
        None => partition::roll_back(&p.ctx.s3, bucket, partitions_written).await,
    }
}

/// What the output of a records run is built with.
struct Outputs<'o> {
    /// The one object's target.
    target: &'o Arc<S3Target>,
    meta: ObjectMeta,
    summary: &'o Summary,
    /// The objects of a run with one per page, as they complete.
    written: &'o pages::Written,
    /// The objects of a partitioned run, as they complete.
    partition_written: &'o partition::Written,
}

impl Outputs<'_> {
    /// The output of `p`: a Parquet file (or files), partitioned NDJSON objects, one object
    /// per page, or one object; a continued job's goes on from the checkpoint `from`.
    fn build(self, p: &Prepared<'_>, from: Option<&checkpoint::Loaded>) -> Result<Output> {
        let spec = p.spec;
        let format = spec.format.unwrap_or(Format::Ndjson);
        let partitioned = partitioning(p)?;
        if format == Format::Parquet {
            let target = (**self.target).clone();
            let mut out =
                parquet_output(p, target, self.summary, partitioned, self.partition_written)?;
            if let Some(l) = from
                && let checkpoint::Position::Pages {
                    partitions: Some(files),
                    parquet: Some(rest),
                    ..
                } = &l.checkpoint.position
            {
                out.resume(Some((**files).clone()), l.side_suspended(), rest)?;
            }
            return Ok(Output::Parquet(Box::new(out)));
        }
        if let Some((template, limits, options)) = partitioned {
            let objects = TextObjects {
                s3: p.ctx.s3.clone(),
                bucket: spec.destination.bucket.clone(),
                meta: self.meta,
                options,
                header: None,
            };
            let written = self.partition_written.clone();
            let mut router = Partitioner::new(objects, template, limits, written)?;
            if let Some(state) = from.and_then(|l| l.checkpoint.position.partitions()) {
                router.resume(state.clone());
            }
            return Ok(Output::Partitioned(Box::new(
                partitioned::PartitionedText::new(router),
            )));
        }
        if spec.object_per_page() {
            let pages = pages::PageWriter {
                ctx: p.ctx.clone(),
                destination: spec.destination.clone(),
                vars: p.vars.clone(),
                meta: self.meta,
                options: p.options.clone(),
                summary: self.summary.clone(),
                current: None,
                written: self.written.clone(),
            };
            if let Some(l) = from
                && let checkpoint::Position::Pages {
                    pages: Some(objects),
                    ..
                } = &l.checkpoint.position
            {
                pages.resume(objects);
            }
            return Ok(Output::PerPage(Box::new(pages)));
        }
        let writer = match from {
            Some(l) => ObjectWriter::resume(self.target.clone(), &p.options, l.suspended())?,
            None => ObjectWriter::new(self.target.clone(), &p.options)?,
        };
        Ok(Output::Single(writer))
    }
}

/// Finishes the output of a records run whose producer returned `produced`, or aborts it.
async fn settle(
    p: &Prepared<'_>,
    out: Output,
    produced: Result<()>,
    stats: &PageStats,
) -> Result<Written> {
    match out {
        Output::Single(writer) => match produced {
            Ok(()) => writer.finish().await.map(Written::Single),
            Err(e) => {
                writer.abort().await;
                Err(e)
            }
        },
        Output::PerPage(pages) => pages.close(produced).await.map(Written::Pages),
        Output::Partitioned(out) => match produced {
            Ok(()) => out
                .router
                .finish()
                .await
                .map(|(objects, figures)| Written::Partitioned(objects, figures)),
            Err(e) => {
                out.router.abort().await;
                Err(e)
            }
        },
        Output::Parquet(out) => match produced {
            Ok(()) => out.finish().await.map(|done| {
                let counters = &p.ctx.invocation.progress;
                counters.add_quarantined(done.quarantined);
                counters.add_records_out(stats.records.saturating_sub(done.quarantined));
                Written::Parquet(done)
            }),
            Err(e) => {
                out.abort().await;
                Err(e)
            }
        },
    }
}

/// A partitioned run's key template, limits and each object's upload options.
type Partitioning = (KeyTemplate, partition::Limits, UploadOptions);

/// A partitioned run's key template and limits, and each object's upload options (its share
/// of the memory budget); `None` when the run writes one object (or one per page).
fn partitioning(p: &Prepared<'_>) -> Result<Option<Partitioning>> {
    let spec = p.spec;
    if !spec.destination.is_partitioned() {
        return Ok(None);
    }
    let template = KeyTemplate::compile("destination.key", &spec.destination.key, &p.vars)?;
    let limits = spec.tuning.partition_limits(&spec.destination, &p.budget);
    let share = p.budget.split(limits.max_open as u64);
    let options = UploadOptions {
        schedule: share.schedule(),
        ..p.options.clone()
    };
    Ok(Some((template, limits, options)))
}

/// The Parquet output of a records run: its schema, row group cap and quarantine, in one
/// file or (`partitioned`) in the files of the run's partitions.
fn parquet_output(
    p: &Prepared<'_>,
    target: S3Target,
    summary: &Summary,
    partitioned: Option<Partitioning>,
    written: &partition::Written,
) -> Result<parquet::ParquetRecords> {
    let spec = p.spec;
    let options = columnar::options_for(spec.compression, &spec.tuning, &p.budget);
    let limits = spec.quarantine.clone().unwrap_or(RecordsQuarantine {
        key: None,
        max_bad_rows: None,
        max_bad_ratio: None,
        max_raw_bytes: 4096,
    });
    let key = match (&limits.key, &partitioned) {
        (Some(template), _) => key::render(template, &p.vars)?,
        // The key of a partitioned run is a pattern: the quarantine goes beside its manifests.
        (None, Some((template, ..))) => format!(
            "{}_quarantine/{}.ndjson",
            template.static_prefix(),
            p.ctx.invocation.run_id
        ),
        (None, None) => format!("{}.quarantine.ndjson", summary.key),
    };
    let mut quarantine = Quarantine::new(
        p.ctx.s3.clone(),
        spec.destination.bucket.clone(),
        key,
        summary.source.clone(),
        limits.max_raw_bytes,
        p.budget,
    );
    quarantine = quarantine.with_deadline(p.options.deadline);
    let schema = spec
        .schema
        .as_ref()
        .ok_or_else(|| Error::spec("format: parquet needs a schema"))?;
    let (out, router) = match partitioned {
        None => {
            let writer = ObjectWriter::new(Arc::new(target), &p.options)?;
            (RecordOutput::ParquetPending(writer, options), None)
        }
        Some((template, limits, upload)) => {
            let share = p.budget.split(limits.max_open as u64);
            let objects = parquet::ParquetObjects {
                s3: p.ctx.s3.clone(),
                bucket: spec.destination.bucket.clone(),
                meta: ObjectMeta {
                    content_type: Some(Format::Parquet.object_content_type(None).to_owned()),
                },
                upload,
                parquet: columnar::options_for(spec.compression, &spec.tuning, &share),
                typed: None,
                row: Vec::new(),
            };
            let router = Partitioner::new(objects, template, limits, written.clone())?;
            (RecordOutput::Spent, Some(router))
        }
    };
    parquet::ParquetRecords::new(
        out,
        router,
        schema,
        quarantine,
        limits,
        spec.tuning.record_cap(&p.budget),
    )
}

/// After the output: the manifest, then the incremental state.
async fn finish(p: &Prepared<'_>, summary: &mut Summary, per_page: bool) -> Result<()> {
    if let Some((state, tracker)) = &p.incremental {
        let inc = p.spec.incremental.as_ref().expect("incremental state read");
        let next = tracker
            .max()
            .filter(|m| state::advances(m, &state.watermark));
        summary.watermark = Some(next.clone().unwrap_or_else(|| state.watermark.clone()));
        if p.spec.destination.manifest && !per_page && summary.status == Status::Written {
            summary.manifest = Some(manifest(p, summary).await?);
        }
        // After the output and its manifest: a failure here leaves the old watermark, so the
        // next run repeats this one's records rather than skipping any.
        if let Some(next) = next {
            let bucket = &p.spec.destination.bucket;
            let run_id = &p.ctx.invocation.run_id;
            state::write(&p.ctx.s3, bucket, &inc.state_key, state, &next, run_id).await?;
        }
    } else if p.spec.destination.manifest && !per_page && summary.status == Status::Written {
        summary.manifest = Some(manifest(p, summary).await?);
    }
    Ok(())
}

/// The run's manifest: `<key>.manifest.json`, or for a partitioned run one run manifest,
/// `<the key's static prefix>_manifests/<run id>.json`, listing every object with its
/// partition values, records, bytes and checksum. A partitioned run whose manifest cannot be
/// written deletes its objects (all or nothing).
async fn manifest(p: &Prepared<'_>, summary: &Summary) -> Result<String> {
    if summary.partitioned.is_none() {
        return write_manifest(p.ctx, summary, None).await;
    }
    let template = KeyTemplate::compile("destination.key", &p.spec.destination.key, &p.vars)?;
    let key = format!(
        "{}_manifests/{}.json",
        template.static_prefix(),
        p.ctx.invocation.run_id
    );
    let written = || async {
        let mut doc = serde_json::to_value(summary).map_err(|e| Error::Internal {
            message: format!("summary of {key}: {e}"),
        })?;
        doc["manifest"] = key.clone().into();
        doc["objects"] =
            serde_json::to_value(&summary.partition_objects).map_err(|e| Error::Internal {
                message: format!("objects of {key}: {e}"),
            })?;
        job::write_manifest(&p.ctx.s3, &p.ctx.invocation, &summary.bucket, &key, doc).await
    };
    if let Err(e) = written().await {
        let objects = partition::Written::new(summary.partition_objects.clone().into());
        partition::roll_back(&p.ctx.s3, &summary.bucket, &objects).await;
        return Err(e);
    }
    Ok(key)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for `{watermark}` in a URL.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn deadline_bytes<T>(result: Result<T>, bytes_in: u64) -> Result<T> {
    result.map_err(|e| match e {
        Error::Deadline { .. } => Error::Deadline { bytes_in },
        other => other,
    })
}

/// Writes `<key>.manifest.json`: the summary (with the page's number when it describes one
/// page's object) plus when and by which run.
async fn write_manifest(ctx: &JobContext, summary: &Summary, page: Option<u32>) -> Result<String> {
    let key = job::manifest_key(&summary.key);
    let mut doc = serde_json::to_value(summary).map_err(|e| Error::Internal {
        message: format!("summary of {key}: {e}"),
    })?;
    doc["manifest"] = key.clone().into();
    if let Some(page) = page {
        doc["page"] = page.into();
    }
    job::write_manifest(&ctx.s3, &ctx.invocation, &summary.bucket, &key, doc).await?;
    Ok(key)
}
