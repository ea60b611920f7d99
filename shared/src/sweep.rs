//! Finding and aborting stale multipart uploads: the storage a killed uploader leaves behind,
//! invisible in listings and billed until someone aborts it.
//!
//! For each configured bucket and prefix, [`run`] pages through `ListMultipartUploads`, and
//! every upload initiated more than `max_age` ago is measured with `ListParts` (bytes and
//! parts) and aborted. Uploads under other prefixes are never touched. The summary says how
//! many uploads were found, how many were stale and aborted, the bytes their parts held and
//! the oldest age seen; [`emf_lines`] turns it into CloudWatch Embedded Metric Format lines.
//!
//! ```json
//! { "targets": [ { "bucket": "lake", "prefix": "raw/" } ], "max_age": "24h" }
//! ```
//!
//! `max_age` should stay well above the longest legitimate upload (15 minutes for a Lambda):
//! an upload still being written is indistinguishable from an abandoned one. The uploads of
//! jobs that continue across invocations are told apart: before a bucket is swept, the
//! checkpoints under [`checkpoint::PREFIX`](crate::checkpoint::PREFIX) written within
//! `max_age` are read, and the uploads they name are kept (counted as `continuing`), however
//! old. A checkpoint older than `max_age` is a job that stopped, and its upload is swept.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use futures::StreamExt;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::time::Instant;

use crate::error::{Error, Result, S3Operation};

/// Default `max_age`: 24 hours.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The largest `max_age`: 3650 days (about 10 years). S3 keeps no upload that long, so a
/// larger value could only be a mistake; it is refused rather than turned into a `Duration`
/// that overflows (`1e300` seconds).
pub const MAX_MAX_AGE: Duration = Duration::from_secs(3650 * 86400);
/// Stale uploads measured and aborted at once.
const CONCURRENCY: usize = 8;
/// Uploads listed by name per target in the summary (all are counted).
const LISTED_PER_TARGET: usize = 100;

/// The sweep's configuration: the event, or the `SWEEP_CONFIG` environment variable.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Bucket and prefix pairs to sweep. Only uploads whose key starts with the prefix are
    /// considered.
    #[schemars(length(min = 1, max = 100))]
    pub targets: Vec<SweepTarget>,
    /// Uploads initiated longer ago than this are aborted: seconds (`86400`) or a duration
    /// with a unit (`"24h"`, `"90m"`, `"2d"`, `"30s"`). Default 24 hours.
    #[serde(default)]
    pub max_age: MaxAge,
    /// Report what would be aborted without aborting. Default false.
    #[serde(default)]
    pub dry_run: bool,
    /// Uploads per `ListMultipartUploads` page, 1–1000. Default 1000.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub page_size: Option<i32>,
}

/// One bucket and prefix to sweep.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepTarget {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, e.g. `raw/`. Required; `""` sweeps the whole bucket.
    #[schemars(length(max = 1024))]
    pub prefix: String,
}

/// `max_age`: a duration given as seconds or with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge(pub Duration);

impl Default for MaxAge {
    fn default() -> Self {
        MaxAge(DEFAULT_MAX_AGE)
    }
}

impl MaxAge {
    /// `secs` seconds, if finite, not negative and at most [`MAX_MAX_AGE`]; the error names
    /// the value and the limit.
    pub fn from_secs_f64(secs: f64) -> std::result::Result<MaxAge, String> {
        // `1e300`, not its 301 digits.
        let shown = if secs.abs() >= 1e15 {
            format!("{secs:e}")
        } else {
            secs.to_string()
        };
        if secs.is_nan() || secs.is_infinite() {
            return Err(format!("max_age {shown} is not a number of seconds"));
        }
        if secs < 0.0 {
            return Err(format!("max_age {shown} must not be negative"));
        }
        if secs > MAX_MAX_AGE.as_secs_f64() {
            return Err(too_long(&shown));
        }
        // Finite and within 0..=MAX_MAX_AGE: the conversion cannot panic.
        Ok(MaxAge(Duration::from_secs_f64(secs)))
    }

    /// `secs` whole seconds, at most [`MAX_MAX_AGE`].
    pub fn from_secs(secs: u64) -> std::result::Result<MaxAge, String> {
        if secs > MAX_MAX_AGE.as_secs() {
            return Err(too_long(&secs.to_string()));
        }
        Ok(MaxAge(Duration::from_secs(secs)))
    }

    /// Parses `"24h"`, `"90m"`, `"2d"`, `"30s"`, `"1h30m"` or plain seconds `"3600"`.
    pub fn parse(text: &str) -> std::result::Result<MaxAge, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "max_age {text:?}: expected seconds or a duration like \"24h\", \"90m\", \"2d\""
            )
        };
        if let Ok(secs) = text.parse::<u64>() {
            return MaxAge::from_secs(secs);
        }
        let mut total = 0u64;
        let mut number = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return Err(bad()),
            };
            let n: u64 = number.parse().map_err(|_| bad())?;
            total = total.saturating_add(n.saturating_mul(unit));
            number.clear();
        }
        if !number.is_empty() || text.is_empty() {
            return Err(bad());
        }
        // `total` saturates at u64::MAX, which the limit refuses.
        MaxAge::from_secs(total).map_err(|_| too_long(&format!("{text:?}")))
    }
}

fn too_long(value: &str) -> String {
    format!(
        "max_age {value} is over the limit of 3650 days ({} seconds)",
        MAX_MAX_AGE.as_secs()
    )
}

impl<'de> Deserialize<'de> for MaxAge {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MaxAge;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("seconds, or a duration such as \"24h\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<MaxAge, E> {
                MaxAge::from_secs(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<MaxAge, E> {
                let v = u64::try_from(v)
                    .map_err(|_| E::custom(format!("max_age {v} must not be negative")))?;
                MaxAge::from_secs(v).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<MaxAge, E> {
                MaxAge::from_secs_f64(v).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<MaxAge, E> {
                MaxAge::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl SweepConfig {
    /// The configuration: the event when it is one, else `SWEEP_CONFIG`. An event that is null,
    /// `{}`, or an EventBridge scheduled event (it has `detail-type`) carries none. A top-level
    /// `"$schema"` string (an editor's pointer to `schemas/sweep-config.schema.json`) is ignored.
    pub fn from_event(event: serde_json::Value, env_config: Option<&str>) -> Result<SweepConfig> {
        let event = crate::schema::without_schema_key(event);
        let carries_none = match &event {
            serde_json::Value::Null => true,
            serde_json::Value::Object(map) => map.is_empty() || map.contains_key("detail-type"),
            _ => false,
        };
        if !carries_none {
            return SweepConfig::from_json(event);
        }
        let Some(text) = env_config else {
            return Err(Error::InvalidSpec {
                message: "no configuration: the event has no `targets` and SWEEP_CONFIG is not set"
                    .into(),
            });
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::InvalidSpec {
                message: format!("SWEEP_CONFIG is not JSON: {e}"),
            })?;
        SweepConfig::from_json(value).map_err(|e| match e {
            Error::InvalidSpec { message } => Error::InvalidSpec {
                message: format!("SWEEP_CONFIG: {message}"),
            },
            other => other,
        })
    }

    /// Parses and validates a configuration from JSON (a top-level `"$schema"` string is
    /// ignored).
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let value = crate::schema::without_schema_key(value);
        let config: SweepConfig =
            serde_json::from_value(value).map_err(|e| Error::spec(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.targets.is_empty() {
            return Err(Error::spec(
                "targets is empty: name at least one bucket and prefix",
            ));
        }
        if self.targets.len() > 100 {
            return Err(Error::spec("targets: at most 100 bucket/prefix pairs"));
        }
        for (i, t) in self.targets.iter().enumerate() {
            let b = &t.bucket;
            if b.len() < 3
                || b.len() > 63
                || !b
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
            {
                return Err(Error::spec(format!(
                    "targets[{i}].bucket {b:?} is not a valid bucket name"
                )));
            }
            if t.prefix.len() > 1024 {
                return Err(Error::spec(format!(
                    "targets[{i}].prefix is over 1024 bytes"
                )));
            }
        }
        if self.max_age.0.is_zero() {
            return Err(Error::spec("max_age must be more than 0 seconds"));
        }
        if let Some(n) = self.page_size
            && !(1..=1000).contains(&n)
        {
            return Err(Error::spec(format!("page_size {n} is outside 1..=1000")));
        }
        Ok(())
    }
}

/// What a sweep runs with.
#[derive(Debug, Clone)]
pub struct SweepContext {
    /// S3 client.
    pub s3: aws_sdk_s3::Client,
    /// The invocation: the sweep stops [`DEADLINE_MARGIN`](crate::job::DEADLINE_MARGIN) before
    /// its deadline and reports `partial`.
    pub invocation: crate::job::Invocation,
}

/// One stale upload and what became of it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StaleUpload {
    /// Object key.
    pub key: String,
    /// Upload id.
    pub upload_id: String,
    /// When it was initiated (RFC 3339).
    pub initiated: String,
    /// Age when found, in seconds.
    pub age_secs: f64,
    /// Parts it held.
    pub parts: u64,
    /// Bytes its parts held.
    pub bytes: u64,
    /// `aborted`, `vanished` (gone before the abort: completed or aborted by its owner),
    /// `failed`, or `would_abort` in a dry run.
    pub action: &'static str,
}

/// Per bucket and prefix.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct TargetSummary {
    /// Bucket.
    pub bucket: String,
    /// Prefix.
    pub prefix: String,
    /// Uploads in progress under the prefix.
    pub found: u64,
    /// Of those, older than `max_age`.
    pub stale: u64,
    /// Older than `max_age`, but named by a checkpoint written within it (a job that
    /// continues across invocations): kept.
    pub continuing: u64,
    /// Stale uploads aborted.
    pub aborted: u64,
    /// Stale uploads that were gone when aborted.
    pub vanished: u64,
    /// Stale uploads whose abort failed.
    pub failed: u64,
    /// Bytes the parts of stale uploads held (freed when aborted).
    pub bytes_stale: u64,
    /// Parts of stale uploads.
    pub parts_stale: u64,
    /// Age of the oldest upload found, in seconds.
    pub oldest_age_secs: Option<f64>,
    /// The stale uploads (the first 100).
    pub uploads: Vec<StaleUpload>,
    /// Why the target could not be swept completely, if it could not.
    pub error: Option<String>,
}

/// The answer of `sweep-uploads`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SweepSummary {
    /// `complete`, or `partial` when the deadline or an error stopped it early.
    pub status: &'static str,
    /// Whether this was a dry run (nothing aborted).
    pub dry_run: bool,
    /// The threshold, in seconds.
    pub max_age_secs: f64,
    /// Uploads found, all targets.
    pub found: u64,
    /// Stale uploads, all targets.
    pub stale: u64,
    /// Old uploads of continuing jobs, kept, all targets.
    pub continuing: u64,
    /// Aborted, all targets.
    pub aborted: u64,
    /// Vanished before the abort, all targets.
    pub vanished: u64,
    /// Aborts that failed, all targets.
    pub failed: u64,
    /// Bytes of stale uploads' parts, all targets.
    pub bytes_stale: u64,
    /// Oldest upload age found, in seconds.
    pub oldest_age_secs: Option<f64>,
    /// Per target.
    pub targets: Vec<TargetSummary>,
    /// Wall time.
    pub duration_ms: u64,
}

/// A sweep's summary, and the first error if anything failed (listing a target, an abort).
/// The summary is complete either way, so a function can log it and publish its metrics
/// before reporting the failure.
#[derive(Debug)]
pub struct SweepOutcome {
    /// What was found and done.
    pub summary: SweepSummary,
    /// The first failure.
    pub failure: Option<Error>,
}

fn s3_error<E>(
    operation: S3Operation,
    bucket: &str,
    key: &str,
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    crate::s3::sdk_error(operation, bucket, key, None, err)
}

fn is_no_such_upload<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    err.code() == Some("NoSuchUpload")
        || err
            .raw_response()
            .is_some_and(|r| r.status().as_u16() == 404)
}

/// Sweeps every target in turn. Never panics on S3 errors: they end up in the outcome.
pub async fn run(config: &SweepConfig, ctx: &SweepContext) -> SweepOutcome {
    let clock = std::time::Instant::now();
    let (deadline, mut failure) = match ctx.invocation.give_up_at(crate::job::DEADLINE_MARGIN) {
        Ok(deadline) => (deadline, None),
        Err(err) => (None, Some(err)),
    };
    // An invocation too short for the margin sweeps no target.
    let todo = if failure.is_some() {
        &[][..]
    } else {
        &config.targets[..]
    };
    let mut complete = failure.is_none();
    let mut targets = Vec::new();
    // The uploads of continuing jobs, per bucket.
    let mut live: HashMap<&str, HashSet<String>> = HashMap::new();
    for target in todo {
        let bucket = target.bucket.as_str();
        if !live.contains_key(bucket) {
            match live_uploads(&ctx.s3, bucket, config.max_age.0).await {
                Ok(uploads) => {
                    live.insert(bucket, uploads);
                }
                Err(err) => {
                    // Without the checkpoints, a continuing job's upload could be aborted.
                    tracing::error!(%bucket, error = %err, "could not read the checkpoints; the target is not swept");
                    complete = false;
                    targets.push(TargetSummary {
                        bucket: target.bucket.clone(),
                        prefix: target.prefix.clone(),
                        error: Some(err.to_string()),
                        ..TargetSummary::default()
                    });
                    failure.get_or_insert(err);
                    continue;
                }
            }
        }
        let (summary, err, finished) =
            sweep_target(config, ctx, target, deadline, &live[bucket]).await;
        complete &= finished && err.is_none();
        if failure.is_none() {
            failure = err;
        }
        targets.push(summary);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            complete = false;
            break;
        }
    }
    let sum = |f: fn(&TargetSummary) -> u64| targets.iter().map(f).sum::<u64>();
    let summary = SweepSummary {
        status: if complete { "complete" } else { "partial" },
        dry_run: config.dry_run,
        max_age_secs: config.max_age.0.as_secs_f64(),
        found: sum(|t| t.found),
        stale: sum(|t| t.stale),
        continuing: sum(|t| t.continuing),
        aborted: sum(|t| t.aborted),
        vanished: sum(|t| t.vanished),
        failed: sum(|t| t.failed),
        bytes_stale: sum(|t| t.bytes_stale),
        oldest_age_secs: targets
            .iter()
            .filter_map(|t| t.oldest_age_secs)
            .reduce(f64::max),
        targets,
        duration_ms: clock.elapsed().as_millis() as u64,
    };
    tracing::info!(
        found = summary.found,
        stale = summary.stale,
        aborted = summary.aborted,
        failed = summary.failed,
        bytes_stale = summary.bytes_stale,
        status = summary.status,
        "sweep finished"
    );
    SweepOutcome { summary, failure }
}

/// The uploads named by the checkpoints in `bucket` written within `max_age`: jobs that
/// continue across invocations, whose uploads stay open between them.
async fn live_uploads(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    max_age: Duration,
) -> Result<HashSet<String>> {
    #[derive(Deserialize)]
    struct Named {
        upload: NamedUpload,
        side: Option<NamedSide>,
    }
    #[derive(Deserialize)]
    struct NamedSide {
        upload: NamedUpload,
    }
    #[derive(Deserialize)]
    struct NamedUpload {
        upload_id: Option<String>,
    }
    let prefix = crate::checkpoint::PREFIX;
    let listing_error = |e: &SdkError<_, _>| s3_error(S3Operation::ListObjects, bucket, prefix, e);
    let mut live = HashSet::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let now = SystemTime::now();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| listing_error(&e))?;
        for object in page.contents() {
            let Some(key) = object.key().filter(|k| k.ends_with(".json")) else {
                continue;
            };
            let written = object
                .last_modified()
                .and_then(|t| SystemTime::try_from(*t).ok())
                .unwrap_or(now);
            if now.duration_since(written).unwrap_or_default() > max_age {
                continue;
            }
            let body = match crate::checkpoint::read_raw(s3, bucket, key).await {
                Ok(Some(body)) => body,
                // Deleted since the listing: its job ended.
                Ok(None) => continue,
                Err(e) => return Err(e),
            };
            match serde_json::from_slice::<Named>(&body) {
                Ok(named) => {
                    live.extend(named.upload.upload_id);
                    live.extend(named.side.and_then(|s| s.upload.upload_id));
                }
                Err(e) => tracing::warn!(%bucket, %key, error = %e, "not a checkpoint; ignored"),
            }
        }
    }
    Ok(live)
}

/// Returns the target's summary, its first error, and whether it was swept to the end.
/// Uploads in `live` are kept whatever their age.
async fn sweep_target(
    config: &SweepConfig,
    ctx: &SweepContext,
    target: &SweepTarget,
    deadline: Option<Instant>,
    live: &HashSet<String>,
) -> (TargetSummary, Option<Error>, bool) {
    let mut summary = TargetSummary {
        bucket: target.bucket.clone(),
        prefix: target.prefix.clone(),
        ..TargetSummary::default()
    };
    let mut first_error: Option<Error> = None;
    let mut key_marker: Option<String> = None;
    let mut upload_id_marker: Option<String> = None;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            summary.error = Some("stopped before the deadline".into());
            return (summary, first_error, false);
        }
        let page = ctx
            .s3
            .list_multipart_uploads()
            .bucket(&target.bucket)
            .prefix(&target.prefix)
            .set_max_uploads(config.page_size)
            .set_key_marker(key_marker.clone())
            .set_upload_id_marker(upload_id_marker.clone())
            .send()
            .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                let err = s3_error(
                    S3Operation::ListMultipartUploads,
                    &target.bucket,
                    &target.prefix,
                    &e,
                );
                tracing::error!(bucket = %target.bucket, prefix = %target.prefix, error = %err, "listing uploads failed");
                summary.error = Some(err.to_string());
                return (summary, Some(first_error.unwrap_or(err)), false);
            }
        };
        let now = SystemTime::now();
        let mut stale = Vec::new();
        for upload in page.uploads() {
            let (Some(key), Some(upload_id)) = (upload.key(), upload.upload_id()) else {
                continue;
            };
            // A guard against servers that ignore the prefix.
            if !key.starts_with(&target.prefix) {
                continue;
            }
            summary.found += 1;
            let initiated = upload
                .initiated()
                .and_then(|t| SystemTime::try_from(*t).ok())
                .unwrap_or(now);
            let age = now.duration_since(initiated).unwrap_or_default();
            let age_secs = (age.as_secs_f64() * 1000.0).round() / 1000.0;
            summary.oldest_age_secs = Some(summary.oldest_age_secs.unwrap_or(0.0).max(age_secs));
            if age > config.max_age.0 && live.contains(upload_id) {
                summary.continuing += 1;
            } else if age > config.max_age.0 {
                stale.push(StaleUpload {
                    key: key.to_owned(),
                    upload_id: upload_id.to_owned(),
                    initiated: chrono::DateTime::<chrono::Utc>::from(initiated).to_rfc3339(),
                    age_secs,
                    parts: 0,
                    bytes: 0,
                    action: "would_abort",
                });
            }
        }
        let handled: Vec<(StaleUpload, Option<Error>)> = futures::stream::iter(stale)
            .map(|u| handle_stale(ctx, &target.bucket, u, config.dry_run))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (upload, err) in handled {
            summary.stale += 1;
            summary.bytes_stale += upload.bytes;
            summary.parts_stale += upload.parts;
            match upload.action {
                "aborted" => summary.aborted += 1,
                "vanished" => summary.vanished += 1,
                "failed" => summary.failed += 1,
                _ => {}
            }
            if summary.uploads.len() < LISTED_PER_TARGET {
                summary.uploads.push(upload);
            }
            if first_error.is_none() {
                first_error = err;
            }
        }
        if page.is_truncated() != Some(true) {
            return (summary, first_error, true);
        }
        let next = (
            page.next_key_marker().map(str::to_owned),
            page.next_upload_id_marker().map(str::to_owned),
        );
        if next.0.is_none() || next == (key_marker.clone(), upload_id_marker.clone()) {
            let err = Error::S3 {
                operation: S3Operation::ListMultipartUploads,
                bucket: target.bucket.clone(),
                key: target.prefix.clone(),
                part_number: None,
                message: "truncated listing without a new marker; stopping to avoid a loop".into(),
                retryable: false,
            };
            summary.error = Some(err.to_string());
            return (summary, Some(first_error.unwrap_or(err)), false);
        }
        (key_marker, upload_id_marker) = next;
    }
}

/// Measures a stale upload with `ListParts`, then aborts it (unless `dry_run`).
async fn handle_stale(
    ctx: &SweepContext,
    bucket: &str,
    mut upload: StaleUpload,
    dry_run: bool,
) -> (StaleUpload, Option<Error>) {
    let mut marker: Option<String> = None;
    loop {
        let page = ctx
            .s3
            .list_parts()
            .bucket(bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .set_part_number_marker(marker.clone())
            .send()
            .await;
        match page {
            Ok(page) => {
                for part in page.parts() {
                    upload.parts += 1;
                    // S3 never reports a negative size; a listing cannot sum past u64.
                    let size = u64::try_from(part.size().unwrap_or(0)).unwrap_or(0);
                    upload.bytes = upload.bytes.saturating_add(size);
                }
                let next = page.next_part_number_marker().map(str::to_owned);
                if page.is_truncated() != Some(true) || next.is_none() || next == marker {
                    break;
                }
                marker = next;
            }
            Err(e) if is_no_such_upload(&e) => {
                upload.action = "vanished";
                return (upload, None);
            }
            Err(e) => {
                // Unmeasured, but still worth aborting.
                let err = s3_error(S3Operation::ListParts, bucket, &upload.key, &e);
                tracing::warn!(%bucket, key = %upload.key, error = %err, "could not list parts");
                break;
            }
        }
    }
    if dry_run {
        tracing::info!(%bucket, key = %upload.key, upload_id = %upload.upload_id, age_secs = upload.age_secs, bytes = upload.bytes, "stale upload (dry run)");
        return (upload, None);
    }
    match ctx
        .s3
        .abort_multipart_upload()
        .bucket(bucket)
        .key(&upload.key)
        .upload_id(&upload.upload_id)
        .send()
        .await
    {
        Ok(_) => {
            upload.action = "aborted";
            tracing::info!(%bucket, key = %upload.key, upload_id = %upload.upload_id, age_secs = upload.age_secs, bytes = upload.bytes, parts = upload.parts, "stale upload aborted");
            (upload, None)
        }
        Err(e) if is_no_such_upload(&e) => {
            upload.action = "vanished";
            (upload, None)
        }
        Err(e) => {
            let err = s3_error(S3Operation::AbortMultipartUpload, bucket, &upload.key, &e);
            tracing::error!(%bucket, key = %upload.key, upload_id = %upload.upload_id, error = %err, "abort failed");
            upload.action = "failed";
            (upload, Some(err))
        }
    }
}

/// CloudWatch Embedded Metric Format lines for `summary`, one per target, in `namespace`
/// with the dimensions `Bucket` and `Prefix`: `UploadsFound`, `StaleUploads`,
/// `UploadsAborted`, `AbortFailures` (Count), `StaleBytes` (Bytes) and
/// `OldestUploadAgeSeconds` (Seconds). Printed to stdout in Lambda, CloudWatch turns them
/// into metrics without any API call.
pub fn emf_lines(summary: &SweepSummary, namespace: &str, timestamp: SystemTime) -> Vec<String> {
    use crate::telemetry::{Emf, Unit};
    summary
        .targets
        .iter()
        .map(|t| {
            Emf::new(namespace, timestamp)
                .dimension_set(&["Bucket", "Prefix"])
                .dimension("Bucket", t.bucket.as_str())
                .dimension("Prefix", t.prefix.as_str())
                .property("DryRun", summary.dry_run)
                .metric("UploadsFound", Unit::Count, t.found)
                .metric("StaleUploads", Unit::Count, t.stale)
                .metric("UploadsAborted", Unit::Count, t.aborted)
                .metric("AbortFailures", Unit::Count, t.failed)
                .metric("StaleBytes", Unit::Bytes, t.bytes_stale)
                .metric(
                    "OldestUploadAgeSeconds",
                    Unit::Seconds,
                    t.oldest_age_secs.unwrap_or(0.0),
                )
                .to_line()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_or_environment() {
        let env = r#"{"targets": [{"bucket": "from-env", "prefix": ""}]}"#;
        let c = SweepConfig::from_event(
            json!({"targets": [{"bucket": "from-event", "prefix": "p/"}]}),
            Some(env),
        )
        .unwrap();
        assert_eq!(c.targets[0].bucket, "from-event");
        for empty in [
            json!(null),
            json!({}),
            json!({"detail-type": "Scheduled Event", "source": "aws.events"}),
        ] {
            assert_eq!(
                SweepConfig::from_event(empty, Some(env)).unwrap().targets[0].bucket,
                "from-env"
            );
        }
        let e = SweepConfig::from_event(json!({}), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SWEEP_CONFIG is not set"), "{e}");
        let e = SweepConfig::from_event(json!({}), Some("{"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("SWEEP_CONFIG is not JSON"), "{e}");
        // A typo in the event is an error, not a silent fallback to the environment.
        let e = SweepConfig::from_event(json!({"target": []}), Some(env))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `target`"), "{e}");
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn max_age_forms() {
        let parse = |v: serde_json::Value| {
            serde_json::from_value::<MaxAge>(v)
                .map(|m| m.0.as_secs())
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse(json!(86400)), Ok(86400));
        assert_eq!(parse(json!("24h")), Ok(86400));
        assert_eq!(parse(json!("1h30m")), Ok(5400));
        assert_eq!(parse(json!("2d")), Ok(172800));
        assert_eq!(parse(json!("45s")), Ok(45));
        assert_eq!(parse(json!("60")), Ok(60));
        assert!(parse(json!("1w")).unwrap_err().contains("max_age \"1w\""));
        assert!(parse(json!("h")).is_err());
        assert!(parse(json!("5h3")).is_err());
        assert!(parse(json!(-1)).is_err());
        assert_eq!(parse(json!(1.5)).map(|_| ()), Ok(()));
    }

    /// Regression: `max_age: 1e300` panicked in `Duration::from_secs_f64`; NaN, infinities,
    /// negatives and values past the limit are now errors naming the value and the limit.
    #[test]
    fn absurd_max_ages_are_refused_not_a_panic() {
        let parse = |v: serde_json::Value| {
            serde_json::from_value::<MaxAge>(v)
                .map(|m| m.0)
                .map_err(|e| e.to_string())
        };
        for (value, needle) in [
            (json!(1e300), "max_age 1e300 is over the limit of 3650 days"),
            (
                json!(1e20),
                "is over the limit of 3650 days (315360000 seconds)",
            ),
            (json!(-0.5), "max_age -0.5 must not be negative"),
            (json!(-3), "max_age -3 must not be negative"),
            (json!(u64::MAX), "is over the limit of 3650 days"),
            (
                json!("99999999999999999999d"),
                "max_age \"99999999999999999999d\"",
            ),
            (json!("3651d"), "is over the limit of 3650 days"),
        ] {
            let e = parse(value.clone()).unwrap_err();
            assert!(e.contains(needle), "{value}: {e}");
        }
        assert_eq!(parse(json!("3650d")), Ok(MAX_MAX_AGE));
        // NaN and infinities cannot be written in JSON; the constructor refuses them.
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = MaxAge::from_secs_f64(v).unwrap_err();
            assert!(e.contains("is not a number of seconds"), "{v}: {e}");
        }
        let e = SweepConfig::from_json(
            json!({"targets": [{"bucket": "lake", "prefix": ""}], "max_age": 1e300}),
        )
        .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("max_age 1e300"), "{e}");
    }

    #[test]
    fn config_defaults_and_errors() {
        let c = SweepConfig::from_json(json!({"targets": [{"bucket": "lake", "prefix": "raw/"}]}))
            .unwrap();
        assert_eq!(c.max_age, MaxAge(DEFAULT_MAX_AGE));
        assert!(!c.dry_run);
        let e = |v| SweepConfig::from_json(v).unwrap_err().to_string();
        assert!(e(json!({"targets": []})).contains("targets is empty"));
        assert!(e(json!({"targets": [{"bucket": "lake"}]})).contains("missing field `prefix`"));
        assert!(
            e(json!({"targets": [{"bucket": "Lake_1", "prefix": ""}]}))
                .contains("targets[0].bucket")
        );
        assert!(
            e(json!({"targets": [{"bucket": "lake", "prefix": ""}], "max_age": 0}))
                .contains("max_age must be more")
        );
        assert!(
            e(json!({"targets": [{"bucket": "lake", "prefix": ""}], "maxage": "1h"}))
                .contains("unknown field `maxage`")
        );
        assert!(
            e(json!({"targets": [{"bucket": "lake", "prefix": ""}], "page_size": 5000}))
                .contains("page_size 5000")
        );
    }

    #[test]
    fn emf_names_metrics_and_values() {
        let summary = SweepSummary {
            status: "complete",
            dry_run: false,
            max_age_secs: 1.0,
            found: 3,
            stale: 2,
            continuing: 0,
            aborted: 2,
            vanished: 0,
            failed: 0,
            bytes_stale: 10,
            oldest_age_secs: Some(5.5),
            targets: vec![TargetSummary {
                bucket: "lake".into(),
                prefix: "raw/".into(),
                found: 3,
                stale: 2,
                aborted: 2,
                bytes_stale: 10,
                oldest_age_secs: Some(5.5),
                ..TargetSummary::default()
            }],
            duration_ms: 1,
        };
        let lines = emf_lines(&summary, "sluice", SystemTime::UNIX_EPOCH);
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "sluice");
        assert_eq!(v["UploadsAborted"], 2);
        assert_eq!(v["StaleBytes"], 10);
        assert_eq!(v["OldestUploadAgeSeconds"], 5.5);
        let names: Vec<&str> = v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for name in names {
            assert!(v.get(name).is_some(), "metric {name} has no value");
        }
    }
}
