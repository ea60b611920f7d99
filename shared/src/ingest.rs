//! One job end to end: source → decode → (records) → compress → S3, a manifest beside the
//! object, and the summary a function returns.
//!
//! Byte-copy mode (no `records`): the body is decoded (`Content-Encoding`), optionally
//! compressed, and streamed into the object.
//!
//! Records mode (`records` or `input_format: ndjson`): a producer task walks the pages
//! ([`Paginator`]), extracts each page's records with a bounded decoder and sends NDJSON in
//! 64 KiB batches through a small channel to the sink, so extraction and compression run side
//! by side and memory stays bounded. Any failure — a page that cannot be fetched after its
//! retries, invalid JSON, a record over the cap, a pagination loop — travels down the channel
//! as the reader's error, and the sink aborts the upload: a run writes all its pages or nothing.
//!
//! Retries and records: a page whose request fails (connection, timeout, 408/429/5xx) is
//! retried before any of its records are written. Once its body streams into the output, a
//! failure ends the run (error type `Retryable`, upload aborted) rather than re-reading the
//! page, which could duplicate or lose records on an API whose pages shift.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::io::StreamReader;
use tokio_util::task::AbortOnDropHandle;

use crate::auth::{ResolvedAuth, redact_url};
use crate::budget::MemoryBudget;
use crate::codec::json_records::{
    Captures, JsonPath, JsonRecordsDecoder, NdjsonDecoder, RecordsError,
};
use crate::codec::{Compression, Decoding};
use crate::error::{Error, Result};
use crate::key::{self, KeyVars};
use crate::paginate::{PageOutcome, Paginator};
use crate::secret::SecretResolver;
use crate::sink::{self, ObjectMeta, PutOutcome, S3Target, UploadOptions};
use crate::source::guard::NetworkPolicy;
use crate::source::http::{self, Fetcher, HttpBody, HttpSourceSpec, SourceFailure};
use crate::source::rate::RateLimiter;
use crate::spec::{InputFormat, JobSpec, SourceSpec};
use crate::state::{self, WatermarkTracker};
use crate::telemetry;

const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_millis(3000);
/// Buffer between the decoder and the encoder.
const CODEC_BUFFER: usize = 64 * 1024;
/// NDJSON is handed to the sink in batches of about this size.
const BATCH: usize = 64 * 1024;
/// Batches queued between the record producer and the sink.
const QUEUE: usize = 8;

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
    /// A rate limiter shared with other jobs of the same batch; overrides the spec's own.
    pub limiter: Option<Arc<RateLimiter>>,
    /// The run's id: the Lambda request id, so Lambda's own retries reuse the same keys.
    pub run_id: String,
    /// When the run started (for key templates).
    pub started: DateTime<Utc>,
    /// The invocation's deadline; the job aborts a margin before it. `None`: no deadline.
    pub deadline: Option<SystemTime>,
}

/// The JSON summary a function answers with (and the manifest written beside the object).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// `written`, or `exists` when `overwrite: false` found the object already there.
    pub status: &'static str,
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
}

/// One object of a run that writes every page to its own object (`{page}` in the key).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PageObject {
    /// The page's number in this run, from 1 (`{page}` renders it zero-padded to 5 digits).
    pub page: u32,
    /// The object's key.
    pub key: String,
    /// `written`, or `exists` when `overwrite: false` found the object already there.
    pub status: &'static str,
    /// Records in the page.
    pub records: u64,
    /// The object's size.
    pub bytes_out: u64,
    /// Parts uploaded.
    pub parts: u32,
    /// Full-object checksum, base64.
    pub checksum: Option<String>,
    /// The object's ETag.
    pub e_tag: Option<String>,
    /// The page's manifest key, when one was written.
    pub manifest: Option<String>,
}

/// How a records run was written.
enum Written {
    /// One object.
    Single(sink::Uploaded),
    /// One object per non-empty page.
    Pages(Vec<PageObject>),
}

#[derive(Debug, Default, Clone)]
struct PageStats {
    pages: u32,
    records: u64,
    bytes_in: u64,
    last_cursor: Option<String>,
    truncated: bool,
    first_url: Option<String>,
    /// Records and source bytes of each page, in order.
    per_page: Vec<(u64, u64)>,
}

/// Runs one job. On failure, nothing is left at the destination key by this run and no
/// multipart upload stays open.
pub async fn run(spec: &JobSpec, ctx: &JobContext) -> Result<Summary> {
    spec.validate()?;
    let clock = std::time::Instant::now();
    let scheduled_time = spec
        .scheduled_time
        .as_deref()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).map(|t| t.with_timezone(&Utc)))
        .transpose()
        .map_err(|e| Error::spec(format!("scheduled_time: {e}")))?;
    let vars = KeyVars {
        scheduled_time,
        ..KeyVars::new(scheduled_time.unwrap_or(ctx.started), ctx.run_id.clone())
    };
    let per_page = spec.object_per_page();
    let key = if per_page {
        // Checks the template; the summary names the pattern.
        key::render(&spec.destination.key, &vars.clone().with("page", "00001"))?;
        key::render(&spec.destination.key, &vars.clone().with("page", "{page}"))?
    } else {
        key::render(&spec.destination.key, &vars)?
    };
    let bucket = spec.destination.bucket.clone();
    let budget = spec.budget(ctx.budget);
    let margin = spec
        .tuning
        .deadline_margin_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_DEADLINE_MARGIN);
    let deadline = ctx.deadline.map(|d| {
        let left = d
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(margin);
        Instant::now() + left
    });
    let SourceSpec::Http(http_spec) = &spec.source;
    let mut http_spec = http_spec.clone();
    let incremental = match &spec.incremental {
        Some(inc) => {
            let state = state::read(&ctx.s3, &bucket, &inc.state_key, &inc.initial_value).await?;
            http_spec.url = http_spec
                .url
                .replace("{watermark}", &percent_encode(&state.watermark));
            if let Some(param) = &inc.param {
                let mut url = http::single_page(&http_spec)?.url;
                crate::paginate::set_param(&mut url, param, &state.watermark);
                http_spec.url = url.to_string();
            }
            let tracker = Arc::new(WatermarkTracker::new(inc.field(spec.records.as_deref())?));
            tracing::info!(watermark = %state.watermark, state_key = %inc.state_key, "incremental run");
            Some((inc, state, tracker))
        }
        None => None,
    };
    let http_spec = &http_spec;
    let auth = match &http_spec.auth {
        Some(a) => Some(Arc::new(a.resolve(&ctx.secrets).await?)),
        None => None,
    };
    let key_in_header = http_spec.auth.as_ref().is_some_and(|a| {
        a.header_name()
            .is_some_and(|h| !h.eq_ignore_ascii_case("authorization"))
    });
    let http_client = if key_in_header {
        &ctx.http_same_host
    } else {
        &ctx.http
    };
    tracing::info!(
        %bucket, %key, part_size = budget.part_size(), max_in_flight = budget.max_in_flight(),
        records = spec.records.as_deref().unwrap_or("-"), "job started"
    );

    let mut summary = Summary {
        status: "exists",
        bucket: bucket.clone(),
        key: key.clone(),
        source: redact_url(&http_spec.url, auth.as_deref()),
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
    };
    let target = S3Target::new(ctx.s3.clone(), &bucket, &key);
    if !per_page && !spec.destination.overwrite && target.exists().await? {
        tracing::info!(%bucket, %key, "object exists and overwrite is false; nothing to do");
        summary.peak_rss_bytes = telemetry::peak_rss_bytes();
        return Ok(summary);
    }

    let mut options = UploadOptions::new(budget.schedule());
    options.checksum = spec.destination.checksum;
    options.if_none_match = !spec.destination.overwrite;
    options.deadline = deadline;
    let limiter = http_spec
        .rate_limit
        .as_ref()
        .map(|r| Arc::new(RateLimiter::new(r)));

    let (uploaded, stats) = if spec.extracts_records() {
        let producer = Producer {
            http: http_client.clone(),
            spec: http_spec.clone(),
            policy: ctx.policy.clone(),
            limiter,
            deadline,
            records: spec
                .records
                .as_deref()
                .map(|r| JsonPath::parse(r, true))
                .transpose()
                .map_err(Error::spec)?,
            input: spec.input_format,
            max_record: spec.max_record_bytes(&budget),
            stats: Arc::new(Mutex::new(PageStats::default())),
            tracker: incremental.as_ref().map(|(_, _, t)| t.clone()),
            auth: auth.clone(),
        };
        let stats = producer.stats.clone();
        let content_type = spec.destination.content_type.clone().or_else(|| {
            Some(match spec.compression {
                Some(c) => c.codec.content_type().to_owned(),
                None => "application/x-ndjson".to_owned(),
            })
        });
        let meta = ObjectMeta { content_type };
        if per_page {
            let (tx, rx) = mpsc::channel(1);
            let _producer = AbortOnDropHandle::new(tokio::spawn(producer.run(Output::PerPage(tx))));
            let pages = PageWriter {
                ctx,
                spec,
                vars: &vars,
                meta,
                options: &options,
                stats: &stats,
                summary: &summary,
            };
            let result = pages.write_all(rx).await;
            let stats = stats.lock().expect("not poisoned").clone();
            (
                Written::Pages(deadline_bytes(result, stats.bytes_in)?),
                stats,
            )
        } else {
            let target = target.with_meta(meta);
            let (tx, rx) = mpsc::channel(QUEUE);
            let _producer = AbortOnDropHandle::new(tokio::spawn(producer.run(Output::Single(tx))));
            let result = sink::upload(
                Arc::new(target),
                batch_reader(rx, spec),
                &options,
                carried_error,
            )
            .await;
            let stats = stats.lock().expect("not poisoned").clone();
            (
                Written::Single(deadline_bytes(result, stats.bytes_in)?),
                stats,
            )
        }
    } else {
        let fetcher = Fetcher {
            client: http_client,
            spec: http_spec,
            policy: &ctx.policy,
            limiter: limiter.as_deref(),
            deadline,
            auth: auth.as_deref(),
        };
        let first = http::single_page(http_spec)?;
        let opened = fetcher.open(&first);
        let body = match deadline {
            Some(d) => tokio::time::timeout_at(d, opened)
                .await
                .map_err(|_| Error::Deadline { bytes_in: 0 })??,
            None => opened.await?,
        };
        let content_type =
            spec.destination
                .content_type
                .clone()
                .or_else(|| match spec.compression {
                    Some(c) => Some(c.codec.content_type().to_owned()),
                    None => body.content_type.clone(),
                });
        let target = target.with_meta(ObjectMeta { content_type });
        let received = body.received();
        let url = body.url.clone();
        let decoding = body.decoding;
        let reader = compress(
            decoding.decoder(StreamReader::new(body.stream)),
            spec.compression,
        );
        let read_error = {
            let received = received.clone();
            let url = url.clone();
            let compression = spec.compression;
            move |e: io::Error| {
                classify_read_error(
                    e,
                    &url,
                    received.load(Ordering::Relaxed),
                    decoding,
                    compression,
                )
            }
        };
        let result = sink::upload(Arc::new(target), reader, &options, read_error).await;
        let bytes_in = received.load(Ordering::Relaxed);
        let stats = PageStats {
            bytes_in,
            first_url: Some(url),
            ..PageStats::default()
        };
        (Written::Single(deadline_bytes(result, bytes_in)?), stats)
    };

    let elapsed = clock.elapsed();
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
    match uploaded {
        Written::Single(uploaded) => {
            match uploaded.outcome {
                PutOutcome::AlreadyExists => return Ok(summary),
                PutOutcome::Written { e_tag, .. } => {
                    summary.status = "written";
                    summary.e_tag = Some(e_tag);
                }
            }
            summary.bytes_out = uploaded.bytes;
            summary.parts = uploaded.parts;
            summary.checksum_algorithm = uploaded.checksum.algorithm().s3_name();
            summary.checksum = Some(uploaded.checksum.to_base64());
        }
        Written::Pages(objects) => {
            if objects.is_empty() || objects.iter().any(|o| o.status == "written") {
                summary.status = "written";
            }
            summary.bytes_out = objects.iter().map(|o| o.bytes_out).sum();
            summary.parts = objects.iter().map(|o| o.parts).sum();
            summary.objects = Some(objects);
        }
    }
    summary.throughput_mib_s =
        stats.bytes_in as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9);
    if let Some((inc, state, tracker)) = &incremental {
        let next = tracker
            .max()
            .filter(|m| state::advances(m, &state.watermark));
        summary.watermark = Some(next.clone().unwrap_or_else(|| state.watermark.clone()));
        if spec.destination.manifest && !per_page {
            summary.manifest = Some(write_manifest(ctx, &summary).await?);
        }
        // After the output and its manifest: a failure here leaves the old watermark, so the
        // next run repeats this one's records rather than skipping any.
        if let Some(next) = next {
            state::write(&ctx.s3, &bucket, &inc.state_key, state, &next, &ctx.run_id).await?;
        }
    } else if spec.destination.manifest && !per_page {
        summary.manifest = Some(write_manifest(ctx, &summary).await?);
    }
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

fn compress<R>(reader: R, compression: Option<Compression>) -> Box<dyn AsyncRead + Send + Unpin>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    match compression {
        Some(c) => c.encoder(BufReader::with_capacity(CODEC_BUFFER, reader)),
        None => Box::new(reader),
    }
}

/// Writes `<key>.manifest.json`: the summary plus when and by which run.
async fn write_manifest(ctx: &JobContext, summary: &Summary) -> Result<String> {
    write_manifest_doc(ctx, summary, None).await
}

/// [`write_manifest`], with the page's number when the summary describes one page's object.
async fn write_manifest_doc(
    ctx: &JobContext,
    summary: &Summary,
    page: Option<u32>,
) -> Result<String> {
    let key = format!("{}.manifest.json", summary.key);
    let mut doc = serde_json::to_value(summary).expect("summary serializes");
    doc["manifest"] = serde_json::Value::String(key.clone());
    if let Some(page) = page {
        doc["page"] = page.into();
    }
    doc["run_id"] = serde_json::Value::String(ctx.run_id.clone());
    doc["started_at"] = serde_json::Value::String(ctx.started.to_rfc3339());
    doc["finished_at"] = serde_json::Value::String(Utc::now().to_rfc3339());
    let body = serde_json::to_vec_pretty(&doc).expect("manifest serializes");
    ctx.s3
        .put_object()
        .bucket(&summary.bucket)
        .key(&key)
        .content_type("application/json")
        .body(body.into())
        .send()
        .await
        .map_err(|e| Error::S3 {
            operation: crate::error::S3Operation::PutObject,
            bucket: summary.bucket.clone(),
            key: key.clone(),
            part_number: None,
            message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            retryable: true,
        })?;
    Ok(key)
}

/// The error a producer sent down the channel, or a generic one.
fn carried_error(e: io::Error) -> Error {
    let message = e.to_string();
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(error)) => *error,
        _ => Error::SourceRead {
            url: "record stream".into(),
            offset: 0,
            class: "read failed",
            message,
        },
    }
}

/// Fetches every page of one source and sends its records as NDJSON batches.
struct Producer {
    http: reqwest::Client,
    spec: HttpSourceSpec,
    policy: NetworkPolicy,
    limiter: Option<Arc<RateLimiter>>,
    deadline: Option<Instant>,
    records: Option<JsonPath>,
    input: InputFormat,
    max_record: usize,
    stats: Arc<Mutex<PageStats>>,
    tracker: Option<Arc<WatermarkTracker>>,
    auth: Option<Arc<ResolvedAuth>>,
}

impl Producer {
    async fn run(self, out: Output) {
        let mut current = None;
        if let Err(e) = self.pages(&out, &mut current).await {
            tracing::debug!(error = %e, "record producer failed");
            let e = io::Error::other(e);
            // The page being written fails with the error (so its upload aborts); between
            // pages, the run does.
            let _ = match (current, &out) {
                (Some(tx), _) => tx.send(Err(e)).await.is_ok(),
                (None, Output::Single(tx)) => tx.send(Err(e)).await.is_ok(),
                (None, Output::PerPage(pages)) => pages.send(Err(e)).await.is_ok(),
            };
        }
    }

    /// Fetches and forwards every page. `current` holds the channel of the page being
    /// written, for [`Producer::run`] to send a failure down.
    async fn pages(
        &self,
        out: &Output,
        current: &mut Option<mpsc::Sender<io::Result<Bytes>>>,
    ) -> Result<()> {
        let fetcher = Fetcher {
            client: &self.http,
            spec: &self.spec,
            policy: &self.policy,
            limiter: self.limiter.as_deref(),
            deadline: self.deadline,
            auth: self.auth.as_deref(),
        };
        let mut paginator = Paginator::new(
            self.spec.paginate.as_ref(),
            http::single_page(&self.spec)?.url,
        )?;
        let paths = paginator.capture_paths();
        let mut request = paginator.first();
        loop {
            let body = fetcher.open(&request).await?;
            let url = body.url.clone();
            let link = body.link.clone();
            let received = body.received();
            let tx = match out {
                Output::Single(tx) => tx.clone(),
                Output::PerPage(pages) => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    let number = paginator.pages();
                    pages
                        .send(Ok((number, rx)))
                        .await
                        .map_err(|_| cancelled(&url))?;
                    tx
                }
            };
            *current = Some(tx.clone());
            let tx = &tx;
            let (count, captures) = match self.input {
                InputFormat::Json => {
                    let records = self
                        .records
                        .clone()
                        .unwrap_or_else(|| JsonPath::parse("$[*]", true).expect("valid"));
                    let decoder = JsonRecordsDecoder::new(records, paths.clone(), self.max_record);
                    let captures = decoder.captures();
                    (
                        forward(body, decoder, tx, self.tracker.as_deref()).await?,
                        captures,
                    )
                }
                InputFormat::Ndjson => (
                    forward(
                        body,
                        NdjsonDecoder::new(self.max_record),
                        tx,
                        self.tracker.as_deref(),
                    )
                    .await?,
                    Captures::default(),
                ),
            };
            let next = paginator.next(&PageOutcome {
                records: count,
                captures: &captures,
                link: link.as_deref(),
            })?;
            {
                let mut s = self.stats.lock().expect("not poisoned");
                s.pages = paginator.pages();
                s.records += count;
                s.bytes_in += received.load(Ordering::Relaxed);
                s.last_cursor = paginator.last_cursor().map(str::to_owned);
                s.truncated = paginator.truncated();
                s.first_url.get_or_insert(url.clone());
                s.per_page.push((count, received.load(Ordering::Relaxed)));
            }
            // Ends this page's object (per-page output) once its figures are recorded.
            *current = None;
            tracing::debug!(page = request.page, records = count, %url, "page done");
            match next {
                Some(r) => request = r,
                None => return Ok(()),
            }
        }
    }
}

/// The producer's error when the upload side has gone away.
fn cancelled(url: &str) -> Error {
    Error::SourceRead {
        url: url.to_owned(),
        offset: 0,
        class: "cancelled",
        message: "the upload stopped".into(),
    }
}

/// Where the producer sends NDJSON batches.
enum Output {
    /// Every page into one stream.
    Single(mpsc::Sender<io::Result<Bytes>>),
    /// A stream per page, announced with the page's number.
    PerPage(mpsc::Sender<io::Result<PageBatches>>),
}

/// One page's number and its batches.
type PageBatches = (u32, mpsc::Receiver<io::Result<Bytes>>);

/// The batches of a channel as the (optionally compressed) reader the sink uploads.
fn batch_reader(
    mut rx: mpsc::Receiver<io::Result<Bytes>>,
    spec: &JobSpec,
) -> Box<dyn AsyncRead + Send + Unpin> {
    let batches = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    compress(StreamReader::new(batches), spec.compression)
}

/// Writes each page the producer announces to its own object, and its manifest.
struct PageWriter<'a> {
    ctx: &'a JobContext,
    spec: &'a JobSpec,
    vars: &'a KeyVars,
    meta: ObjectMeta,
    options: &'a UploadOptions,
    stats: &'a Mutex<PageStats>,
    summary: &'a Summary,
}

impl PageWriter<'_> {
    /// Writes every page; on any failure, deletes the objects this run wrote, so a run
    /// leaves all its pages or none.
    async fn write_all(
        &self,
        mut pages: mpsc::Receiver<io::Result<PageBatches>>,
    ) -> Result<Vec<PageObject>> {
        let mut written = Vec::new();
        let result = async {
            while let Some(page) = pages.recv().await {
                let (number, batches) = page.map_err(carried_error)?;
                if let Some(object) = self.write_page(number, batches).await? {
                    written.push(object);
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(written),
            Err(e) => {
                self.roll_back(&written).await;
                Err(e)
            }
        }
    }

    /// Writes one page, unless it has no records.
    async fn write_page(
        &self,
        number: u32,
        mut batches: mpsc::Receiver<io::Result<Bytes>>,
    ) -> Result<Option<PageObject>> {
        let first = match batches.recv().await {
            None => {
                tracing::debug!(page = number, "page has no records; no object");
                return Ok(None);
            }
            Some(first) => first.map_err(carried_error)?,
        };
        let key = key::render(
            &self.spec.destination.key,
            &self.vars.clone().with("page", format!("{number:05}")),
        )?;
        let target = S3Target::new(self.ctx.s3.clone(), &self.spec.destination.bucket, &key)
            .with_meta(self.meta.clone());
        let rest = futures::stream::poll_fn(move |cx| batches.poll_recv(cx));
        let stream = futures::stream::iter([Ok(first)]).chain(rest);
        let reader = compress(StreamReader::new(stream), self.spec.compression);
        let uploaded = sink::upload(Arc::new(target), reader, self.options, carried_error).await?;
        let (records, bytes_in) = self
            .stats
            .lock()
            .expect("not poisoned")
            .per_page
            .get(number as usize - 1)
            .copied()
            .unwrap_or_default();
        let mut object = PageObject {
            page: number,
            key: key.clone(),
            status: "exists",
            records,
            bytes_out: 0,
            parts: 0,
            checksum: None,
            e_tag: None,
            manifest: None,
        };
        let PutOutcome::Written { e_tag, .. } = uploaded.outcome else {
            return Ok(Some(object));
        };
        object.status = "written";
        object.bytes_out = uploaded.bytes;
        object.parts = uploaded.parts;
        object.checksum = Some(uploaded.checksum.to_base64());
        object.e_tag = Some(e_tag.clone());
        if self.spec.destination.manifest {
            let page_summary = Summary {
                status: "written",
                key,
                bytes_in,
                bytes_out: uploaded.bytes,
                records: Some(records),
                pages: Some(1),
                parts: uploaded.parts,
                checksum_algorithm: uploaded.checksum.algorithm().s3_name(),
                checksum: object.checksum.clone(),
                e_tag: Some(e_tag),
                objects: None,
                ..self.summary.clone()
            };
            object.manifest =
                Some(write_manifest_doc(self.ctx, &page_summary, Some(number)).await?);
        }
        tracing::info!(page = number, key = %object.key, records, bytes = object.bytes_out, "page object written");
        Ok(Some(object))
    }

    /// Deletes the objects (and manifests) of a failed run, best effort.
    async fn roll_back(&self, written: &[PageObject]) {
        let bucket = &self.spec.destination.bucket;
        for object in written.iter().filter(|o| o.status == "written") {
            for key in std::iter::once(&object.key).chain(object.manifest.as_ref()) {
                match self
                    .ctx
                    .s3
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                {
                    Ok(_) => tracing::info!(%bucket, %key, "deleted an object of the failed run"),
                    Err(e) => tracing::error!(
                        %bucket, %key, error = %aws_sdk_s3::error::DisplayErrorContext(&e),
                        "could not delete an object of the failed run; it stays"
                    ),
                }
            }
        }
    }
}

/// Streams one page's records into the channel as NDJSON batches; returns how many.
async fn forward<D>(
    body: HttpBody,
    decoder: D,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    tracker: Option<&WatermarkTracker>,
) -> Result<u64>
where
    D: Decoder<Item = Bytes, Error = io::Error>,
{
    let url = body.url.clone();
    let received = body.received();
    let decoding = body.decoding;
    let reader = decoding.decoder(StreamReader::new(body.stream));
    let mut frames = FramedRead::with_capacity(reader, decoder, CODEC_BUFFER);
    let mut batch = BytesMut::with_capacity(BATCH + 1024);
    let mut count = 0u64;
    let closed = || cancelled(&url);
    while let Some(item) = frames.next().await {
        let record = item.map_err(|e| {
            classify_read_error(e, &url, received.load(Ordering::Relaxed), decoding, None)
        })?;
        if let Some(t) = tracker {
            t.observe(&record);
        }
        batch.extend_from_slice(&record);
        batch.put_u8(b'\n');
        count += 1;
        if batch.len() >= BATCH {
            tx.send(Ok(batch.split().freeze()))
                .await
                .map_err(|_| closed())?;
            batch.reserve(BATCH + 1024);
        }
    }
    if !batch.is_empty() {
        tx.send(Ok(batch.freeze())).await.map_err(|_| closed())?;
    }
    Ok(count)
}

/// Tells a transport failure from bad records from corrupt compressed data from an encoder
/// failure.
fn classify_read_error(
    e: io::Error,
    url: &str,
    offset: u64,
    decoding: Decoding,
    compression: Option<Compression>,
) -> Error {
    if let Some(failure) = e.get_ref().and_then(|i| i.downcast_ref::<SourceFailure>()) {
        return Error::SourceRead {
            url: url.to_owned(),
            offset,
            class: failure.class,
            message: failure.message.clone(),
        };
    }
    if let Some(r) = RecordsError::find(&e) {
        return Error::Records {
            url: url.to_owned(),
            class: r.class,
            offset: r.offset,
            record: r.record,
            message: r.message.clone(),
        };
    }
    match (decoding.name(), compression) {
        (Some(codec), _) => Error::Decode {
            input: url.to_owned(),
            codec,
            offset,
            source: e,
        },
        (None, Some(c)) => Error::Encode {
            codec: c.codec.name(),
            offset,
            source: e,
        },
        (None, None) => Error::SourceRead {
            url: url.to_owned(),
            offset,
            class: "read failed",
            message: e.to_string(),
        },
    }
}
