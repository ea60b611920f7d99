//! One job end to end: source → decode → compress → S3, with the summary a function returns.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::{AsyncRead, BufReader};
use tokio::time::Instant;
use tokio_util::io::StreamReader;

use crate::budget::MemoryBudget;
use crate::codec::{Compression, Decoding};
use crate::error::{Error, Result};
use crate::key::{self, KeyVars};
use crate::sink::{self, ObjectMeta, PutOutcome, S3Target, UploadOptions};
use crate::source::http::{self, SourceFailure};
use crate::spec::{JobSpec, SourceSpec};
use crate::telemetry;

const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_millis(3000);
/// Buffer between the decoder and the encoder.
const CODEC_BUFFER: usize = 64 * 1024;

/// What a job runs with: clients built once per function instance, and per-invocation facts.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// S3 client for the destination.
    pub s3: aws_sdk_s3::Client,
    /// HTTP client for sources ([`http::client`]).
    pub http: reqwest::Client,
    /// The function's memory plan ([`MemoryBudget::from_env`]).
    pub budget: MemoryBudget,
    /// The run's id: the Lambda request id, so Lambda's own retries reuse the same keys.
    pub run_id: String,
    /// When the run started (for key templates).
    pub started: DateTime<Utc>,
    /// The invocation's deadline; the job aborts a margin before it. `None`: no deadline.
    pub deadline: Option<SystemTime>,
}

/// The JSON summary a function answers with.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// `written`, or `exists` when `overwrite: false` found the object already there.
    pub status: &'static str,
    /// Destination bucket.
    pub bucket: String,
    /// Destination key (rendered).
    pub key: String,
    /// Source URL (final, after redirects).
    pub source: String,
    /// Body bytes received from the source (before any `Content-Encoding` decoding).
    pub bytes_in: u64,
    /// Bytes written to S3 (the object's size).
    pub bytes_out: u64,
    /// Records written; `null` for a byte-for-byte copy.
    pub records: Option<u64>,
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
    /// Wall time of the job.
    pub duration_ms: u64,
    /// Source bytes per second, in MiB.
    pub throughput_mib_s: f64,
    /// Peak resident memory of the process so far (`VmHWM`).
    pub peak_rss_bytes: Option<u64>,
}

/// Runs one job. On failure, nothing is left at the destination key by this run and no
/// multipart upload stays open.
pub async fn run(spec: &JobSpec, ctx: &JobContext) -> Result<Summary> {
    spec.validate()?;
    let clock = std::time::Instant::now();
    let vars = KeyVars {
        now: ctx.started,
        run_id: ctx.run_id.clone(),
    };
    let key = key::render(&spec.destination.key, &vars)?;
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
    tracing::info!(
        %bucket, %key, part_size = budget.part_size(), max_in_flight = budget.max_in_flight(),
        "job started"
    );

    let exists_summary = |source: String| Summary {
        status: "exists",
        bucket: bucket.clone(),
        key: key.clone(),
        source,
        bytes_in: 0,
        bytes_out: 0,
        records: None,
        parts: 0,
        checksum_algorithm: spec.destination.checksum.s3_name(),
        checksum: None,
        e_tag: None,
        compression: spec.compression,
        duration_ms: clock.elapsed().as_millis() as u64,
        throughput_mib_s: 0.0,
        peak_rss_bytes: telemetry::peak_rss_bytes(),
    };

    let mut target = S3Target::new(ctx.s3.clone(), &bucket, &key);
    if !spec.destination.overwrite && target.exists().await? {
        tracing::info!(%bucket, %key, "object exists and overwrite is false; nothing to do");
        return Ok(exists_summary(http_spec.url.clone()));
    }

    let opened = http::open(&ctx.http, http_spec);
    let body = match deadline {
        Some(d) => tokio::time::timeout_at(d, opened)
            .await
            .map_err(|_| Error::Deadline { bytes_in: 0 })??,
        None => opened.await?,
    };
    let content_type = spec
        .destination
        .content_type
        .clone()
        .or_else(|| match spec.compression {
            Some(c) => Some(c.codec.content_type().to_owned()),
            None => body.content_type.clone(),
        });
    target = target.with_meta(ObjectMeta { content_type });

    let received = body.received();
    let url = body.url.clone();
    let decoding = body.decoding;
    let reader: Box<dyn AsyncRead + Send + Unpin> = {
        let decoded = decoding.decoder(StreamReader::new(body.stream));
        match spec.compression {
            Some(c) => c.encoder(BufReader::with_capacity(CODEC_BUFFER, decoded)),
            None => decoded,
        }
    };
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

    let mut options = UploadOptions::new(budget.schedule());
    options.checksum = spec.destination.checksum;
    options.if_none_match = !spec.destination.overwrite;
    options.deadline = deadline;

    let uploaded = sink::upload(Arc::new(target), reader, &options, read_error)
        .await
        .map_err(|e| match e {
            Error::Deadline { .. } => Error::Deadline {
                bytes_in: received.load(Ordering::Relaxed),
            },
            other => other,
        })?;

    let bytes_in = received.load(Ordering::Relaxed);
    let elapsed = clock.elapsed();
    let (status, e_tag) = match uploaded.outcome {
        PutOutcome::Written { e_tag, .. } => ("written", Some(e_tag)),
        PutOutcome::AlreadyExists => return Ok(exists_summary(url)),
    };
    let summary = Summary {
        status,
        bucket,
        key,
        source: url,
        bytes_in,
        bytes_out: uploaded.bytes,
        records: None,
        parts: uploaded.parts,
        checksum_algorithm: uploaded.checksum.algorithm().s3_name(),
        checksum: Some(uploaded.checksum.to_base64()),
        e_tag,
        compression: spec.compression,
        duration_ms: elapsed.as_millis() as u64,
        throughput_mib_s: bytes_in as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9),
        peak_rss_bytes: telemetry::peak_rss_bytes(),
    };
    tracing::info!(
        bytes_in = summary.bytes_in,
        bytes_out = summary.bytes_out,
        parts = summary.parts,
        duration_ms = summary.duration_ms,
        peak_rss_bytes = summary.peak_rss_bytes,
        "job finished"
    );
    Ok(summary)
}

/// Tells a transport failure from corrupt compressed data from an encoder failure.
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
