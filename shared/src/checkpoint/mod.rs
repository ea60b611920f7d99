//! Jobs longer than one invocation: a checkpoint written before the deadline, and the
//! `continue` event that resumes from it in the next invocation.
//!
//! A job that can continue stops at a clean point when its time is nearly up
//! ([`StopClock`]): its [`ObjectWriter`](crate::sink::ObjectWriter) is suspended (the parts
//! uploaded stay in the open multipart upload; a compressing writer ends its gzip member or
//! zstd frame first), and a [`Checkpoint`] is written under [`PREFIX`] in the destination
//! bucket: the job as given, the upload id, every part's number, ETag and checksum, the bytes
//! written, the source position, and the unsent tail (less than one part) as an object of its
//! own. The function then answers `{"status": "continue", "continue": {"checkpoint": {...}}}`,
//! and the `continue` value, sent as the whole event of the next invocation, resumes there
//! ([`Continue`]). The invocation that completes the object deletes the checkpoint; one that
//! fails aborts the upload and deletes it too, unless the failure is transient and the same
//! `continue` event can resume from it ([`keeps_for_retry`]).
//!
//! Destination keys, state keys and quarantine keys may not start with [`RESERVED`], so no
//! output can overwrite a checkpoint (checked by [`check_not_reserved`]).

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::checksum::{ChecksumAlgorithm, Crc};
use crate::error::{Error, Result, S3Operation};
use crate::sink::{PartReceipt, Suspended};
use crate::source::http::paginate::PageResume;
use crate::telemetry::Progress;

mod run;

pub use run::{Checkpoints, Continuation, JobScope, keeps_for_retry, settle};

/// Keys under this prefix belong to sluice; no job may write its output there.
pub const RESERVED: &str = "_sluice/";
/// Where checkpoints are written, in the destination bucket.
pub const PREFIX: &str = "_sluice/checkpoints/";
/// The checkpoint format written and read.
const VERSION: u32 = 1;
/// Largest checkpoint document read (10,000 parts at about 200 bytes each fit).
const DOCUMENT_CAP: usize = 8 * 1024 * 1024;
/// Time kept, besides the parts in flight, to write the checkpoint and answer.
const CHECKPOINT_WRITE: Duration = Duration::from_secs(2);
/// The upload rate assumed before any part was acknowledged, in bytes per second.
const FLOOR_RATE: f64 = 1024.0 * 1024.0;

/// Fails when `key` (of `field`) is under [`RESERVED`].
pub fn check_not_reserved(field: &str, key: &str) -> Result<()> {
    if key.trim_start_matches('/').starts_with(RESERVED) {
        return Err(Error::spec(format!(
            "{field}: keys under {RESERVED} are reserved for sluice's checkpoints, got {key:?}"
        )));
    }
    Ok(())
}

/// The event that continues a job: `{"checkpoint": {"bucket": ..., "key": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Continue {
    /// Where the checkpoint is.
    pub checkpoint: ObjectRef,
}

/// A bucket and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
}

impl Continue {
    /// The continue event in `event`, when it is one (an object whose only field is
    /// `checkpoint`); `None` for anything else, such as a job spec.
    pub fn from_event(event: &Value) -> Option<Result<Continue>> {
        let obj = event.as_object()?;
        if !obj.contains_key("checkpoint") {
            return None;
        }
        Some(
            serde_json::from_value(event.clone())
                .map_err(|e| Error::spec(format!("continue event: {e}"))),
        )
    }

    /// As JSON, for the `continue` field of an answer.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a Continue serializes")
    }
}

/// Where the next invocation starts reading its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Position {
    /// An HTTP byte copy: `Range: bytes=<offset>-` with `If-Range: <validator>`, which must be
    /// answered `206` from exactly `offset`.
    HttpRange {
        /// Source bytes already written.
        offset: u64,
        /// The strong ETag or the `Last-Modified` of the first response.
        validator: String,
    },
    /// Paginated records: the next page's request, sent in place of the first.
    Pages {
        /// The next page and what the pages before it counted.
        next: PageResume,
        /// An incremental job: the watermark it started from and the largest one seen since.
        #[serde(default)]
        watermark: Option<WatermarkResume>,
        /// A partitioned job: the objects completed so far and each partition's next
        /// `{part}` (every stop completes the objects open).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partitions: Option<Box<crate::partition::PartitionsResume>>,
        /// Partitioned Parquet records: what the files do not hold (the quarantine is the
        /// side upload).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parquet: Option<Box<ParquetRecordsResume>>,
        /// One object per page (`{page}`): the pages' objects completed so far (each stop
        /// comes between two pages, so none is open).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pages: Option<Vec<crate::ingest::PageObject>>,
    },
    /// A transform (`transform-s3`): the source object again, from a row boundary.
    Rows(Box<RowsPosition>),
    /// A keyset export (`source.postgres.resume_key`): the rows whose key is larger than
    /// `after`, in the key's order.
    Keyset {
        /// The key column.
        column: String,
        /// The last key written (its text as the server prints it).
        after: String,
        /// Rows written so far.
        rows: u64,
        /// A partitioned or Parquet export: the objects completed so far and each
        /// partition's next `{part}` (every stop completes the objects open).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partitions: Option<Box<crate::partition::PartitionsResume>>,
        /// A partitioned CSV export: the header every object begins with (the statements
        /// after a key send none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
    },
}

/// Where a transform goes on: the row boundary it stopped at in the decoded source, the
/// gzip member or zstd frame to decode again from (at or before it), and what the rows
/// before it counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowsPosition {
    /// The source version read: every read of the next invocation is pinned to it
    /// (`If-Match`), so two versions are never spliced.
    pub etag: String,
    /// The source version's Last-Modified (RFC 3339), for the manifest.
    pub last_modified: Option<String>,
    /// How the source is decoded: `identity`, `gzip` or `zstd`.
    pub decoding: String,
    /// Where the member to decode again starts, in the stored source.
    pub member_compressed: u64,
    /// Where it starts in the decoded source.
    pub member_decoded: u64,
    /// Decoded bytes through the last row written (the rows go on there).
    pub decoded: u64,
    /// Lines (line breaks) through it.
    pub lines: u64,
    /// Records through it (a CSV header counted).
    pub records: u64,
    /// A CSV source's column names (the header is not read again).
    pub header: Option<Vec<String>>,
    /// The rows' counts so far.
    pub counts: crate::transform::Counts,
    /// Whether an output was there when the job started (it is replaced, not written with
    /// `If-None-Match`).
    pub output_exists: bool,
    /// The first quarantined row, for the message of a later failure.
    pub first_bad: Option<String>,
    /// A digest of the pipeline: a checkpoint continues only with the pipeline that wrote
    /// it.
    pub pipeline: String,
    /// A partitioned output's objects completed so far and each partition's next `{part}`
    /// (`None` for one object, which is the suspended upload instead).
    #[serde(default)]
    pub partitions: Option<Box<crate::partition::PartitionsResume>>,
}

/// Partitioned Parquet records between two invocations, besides their files: the schema
/// inferred before the first stop (a declared one comes from the job again), the records
/// and the quarantined ones so far, and the first bad record (for later errors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetRecordsResume {
    /// The columns inferred (`"schema": "infer"`).
    pub inferred: Option<Vec<crate::transform::config::ColumnSpec>>,
    /// Records read so far.
    pub records: u64,
    /// Records quarantined so far.
    pub quarantined: u64,
    /// The first quarantined record, described.
    pub first_bad: Option<String>,
}

/// An incremental job's watermark across invocations: the state must still hold `from` when
/// the job continues (another run that moved it means the job no longer knows its range), and
/// `seen` seeds the next invocation's tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkResume {
    /// The state's watermark when the job started.
    pub from: String,
    /// The largest value of the watermark field in the records written so far.
    pub seen: Option<Value>,
}

impl Position {
    /// A partitioned job's objects and partitions so far.
    pub fn partitions(&self) -> Option<&crate::partition::PartitionsResume> {
        match self {
            Position::Pages { partitions, .. } | Position::Keyset { partitions, .. } => {
                partitions.as_deref()
            }
            Position::Rows(rows) => rows.partitions.as_deref(),
            Position::HttpRange { .. } => None,
        }
    }

    /// Whether it lists the objects of a job writing one per page.
    pub fn lists_pages(&self) -> bool {
        matches!(self, Position::Pages { pages: Some(_), .. })
    }

    /// What kind of job continues from it, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Position::HttpRange { .. } => "a byte copy",
            Position::Pages { pages: Some(_), .. } => "paginated records into one object per page",
            Position::Pages {
                partitions: None, ..
            } => "paginated records into one object",
            Position::Pages { .. } => "paginated records into partitioned objects",
            Position::Keyset { .. } => "a keyset export",
            Position::Rows(_) => "a transform",
        }
    }
}

/// The state of an unfinished job between two invocations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// The function that wrote it (a checkpoint continues only in the same function).
    pub function: String,
    /// The job as it was given (secrets are references, never values).
    pub job: Value,
    /// The first invocation's run id: keys and manifests keep it.
    pub run_id: String,
    /// The first invocation's start (RFC 3339): `{date}` and friends render the same.
    pub started: String,
    /// Invocations so far, the one that wrote it included.
    pub invocations: u32,
    /// Checkpoints written so far (each names its own tail object).
    pub saves: u32,
    /// Wall time of those invocations, in milliseconds.
    pub elapsed_ms: u64,
    /// Source bytes read so far.
    pub bytes_in: u64,
    /// The destination key (rendered).
    pub key: String,
    /// The open multipart upload.
    pub upload: Upload,
    /// A second upload the job writes beside its output (a transform's quarantine), once it
    /// has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<SideUpload>,
    /// Where the source continues.
    pub position: Position,
}

/// A second open upload of a job, in the checkpoint's bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SideUpload {
    /// Its object's key.
    pub key: String,
    /// The open upload.
    pub upload: Upload,
}

impl Checkpoint {
    /// The first invocation's start.
    pub fn started(&self) -> Result<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.started)
            .map(|t| t.to_utc())
            .map_err(|e| Error::spec(format!("checkpoint started {:?}: {e}", self.started)))
    }

    /// The first checkpoint of a job: `function` runs `job` (as given), whose output is `key`;
    /// the run id and start are `invocation`'s. [`save`] fills in the upload.
    pub fn first(
        function: &str,
        job: Value,
        invocation: &crate::job::Invocation,
        key: String,
        position: Position,
    ) -> Checkpoint {
        Checkpoint {
            version: VERSION,
            function: function.to_owned(),
            job,
            run_id: invocation.run_id.clone(),
            started: invocation.started.to_rfc3339(),
            invocations: 1,
            saves: 0,
            elapsed_ms: 0,
            bytes_in: 0,
            key,
            upload: Upload::none(),
            side: None,
            position,
        }
    }

    /// The checkpoint the invocation that resumes this one writes (its position and
    /// upload are filled in by [`save`]).
    pub fn resumed(&self) -> Checkpoint {
        Checkpoint {
            invocations: self.invocations + 1,
            ..self.clone()
        }
    }

    /// Where the document is: `_sluice/checkpoints/<function>/<run id>.json`.
    pub fn document_key(&self) -> String {
        key_for(&self.function, &self.run_id)
    }
}

/// The open upload of a [`Checkpoint`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    /// Its id; `None` while the output is shorter than one part (all of it is the tail).
    pub upload_id: Option<String>,
    /// The parts uploaded, in order.
    pub parts: Vec<PartReceipt>,
    /// Bytes written (the tail included).
    pub bytes: u64,
    /// The tail object's key and the checksum of its bytes.
    pub tail_key: String,
    /// Checksum of the tail (it covers its length).
    pub tail: Crc,
}

impl Upload {
    /// The upload, suspended, with its `tail`; held for the checkpoint: a writer that fails
    /// leaves it to [`settle`](run::settle).
    fn suspended(&self, tail: Bytes) -> Suspended {
        Suspended {
            upload_id: self.upload_id.clone(),
            parts: self.parts.clone(),
            bytes: self.bytes,
            tail,
            held: true,
        }
    }

    /// No upload yet: what a first checkpoint starts from ([`save`] fills it in).
    pub fn none() -> Upload {
        Upload {
            upload_id: None,
            parts: Vec::new(),
            bytes: 0,
            tail_key: String::new(),
            tail: ChecksumAlgorithm::Crc64nvme.empty(),
        }
    }
}

/// A checkpoint read back, with its tail.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The event it was read for.
    pub reference: Continue,
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The unsent tail, verified against its checksum.
    pub tail: Bytes,
    /// The side upload's unsent tail, verified.
    pub side_tail: Option<Bytes>,
}

impl Loaded {
    /// The suspended upload to resume.
    pub fn suspended(&self) -> Suspended {
        self.checkpoint.upload.suspended(self.tail.clone())
    }

    /// The suspended side upload to resume, when there is one.
    pub fn side_suspended(&self) -> Option<Suspended> {
        let side = self.checkpoint.side.as_ref()?;
        Some(
            side.upload
                .suspended(self.side_tail.clone().unwrap_or_default()),
        )
    }
}

/// The checkpoint key of a run of `function`: `_sluice/checkpoints/<function>/<run id>.json`,
/// the run id reduced to characters safe in a key.
pub fn key_for(function: &str, run_id: &str) -> String {
    let safe: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{PREFIX}{function}/{safe}.json")
}

fn bad_checkpoint(reference: &ObjectRef, message: impl std::fmt::Display) -> Error {
    Error::spec(format!(
        "checkpoint s3://{}/{}: {message}",
        reference.bucket, reference.key
    ))
}

/// Writes `checkpoint` and its `tail` in `bucket` (and the tail of its `side` upload, keyed
/// by the side object's key): the tails first (new keys per save), then the document that
/// names them, then the previous tails are deleted. A checkpoint never names a tail that is
/// not there, so an invocation killed at any point leaves the last one whole.
pub async fn save(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    checkpoint: &mut Checkpoint,
    suspended: Suspended,
    side: Option<(String, Suspended)>,
) -> Result<Continue> {
    let key = checkpoint.document_key();
    let previous: Vec<String> = std::iter::once(&checkpoint.upload)
        .chain(checkpoint.side.as_ref().map(|s| &s.upload))
        .map(|u| u.tail_key.clone())
        .filter(|k| !k.is_empty())
        .collect();
    checkpoint.saves += 1;
    let stem = format!("{}.", key.trim_end_matches(".json"));
    let tail_key = format!("{stem}tail-{}", checkpoint.saves);
    // Filled in first: a caller that must abort after a failure here finds the upload ids.
    checkpoint.upload = Upload::of(&suspended, tail_key);
    checkpoint.side = side.as_ref().map(|(side_key, s)| SideUpload {
        key: side_key.clone(),
        upload: Upload::of(s, format!("{stem}side-tail-{}", checkpoint.saves)),
    });
    if let Some((upload, (_, s))) = checkpoint.side.as_ref().map(|d| &d.upload).zip(side) {
        put_tail(s3, bucket, upload, s.tail).await?;
    }
    put_tail(s3, bucket, &checkpoint.upload, suspended.tail).await?;
    let body = serde_json::to_vec(&checkpoint).map_err(|e| Error::Internal {
        message: format!("checkpoint {key}: {e}"),
    })?;
    if body.len() > DOCUMENT_CAP {
        // Read back, it would be refused: fail now, while the job can still clean up.
        return Err(Error::spec(format!(
            "checkpoint {key}: {} bytes, over the {DOCUMENT_CAP} a checkpoint may hold (a partitioned job lists every object it completed): fewer, larger objects (max_object_mib, a coarser {{field:…}}) or a longer max_invocation_secs",
            body.len()
        )));
    }
    s3.put_object()
        .bucket(bucket)
        .key(&key)
        .content_type("application/json")
        .body(body.into())
        .send()
        .await
        .map_err(|e| crate::s3::sdk_error(S3Operation::PutObject, bucket, &key, None, &e))?;
    let named = checkpoint.tail_keys();
    for old in previous.iter().filter(|old| !named.contains(old)) {
        delete_quietly(s3, bucket, old).await;
    }
    Ok(Continue {
        checkpoint: ObjectRef {
            bucket: bucket.to_owned(),
            key,
        },
    })
}

impl Upload {
    /// The upload `suspended` describes, its tail at `tail_key`.
    fn of(suspended: &Suspended, tail_key: String) -> Upload {
        Upload {
            upload_id: suspended.upload_id.clone(),
            parts: suspended.parts.clone(),
            bytes: suspended.bytes,
            tail_key,
            tail: ChecksumAlgorithm::Crc64nvme.checksum(&suspended.tail),
        }
    }
}

impl Checkpoint {
    /// The keys of the tails it names.
    fn tail_keys(&self) -> Vec<String> {
        std::iter::once(&self.upload)
            .chain(self.side.as_ref().map(|s| &s.upload))
            .map(|u| u.tail_key.clone())
            .filter(|k| !k.is_empty())
            .collect()
    }
}

/// Writes the tail of `upload` (its key and checksum are the upload's).
async fn put_tail(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    upload: &Upload,
    tail: Bytes,
) -> Result<()> {
    let key = &upload.tail_key;
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .checksum_crc64_nvme(upload.tail.to_base64())
        .body(ByteStream::from(tail))
        .send()
        .await
        .map_err(|e| crate::s3::sdk_error(S3Operation::PutObject, bucket, key, None, &e))?;
    Ok(())
}

/// Reads the checkpoint `reference` names, for `function`, and its tail (verified). A
/// checkpoint outside [`PREFIX`], of another function or format, or whose tail does not match
/// its checksum is refused.
pub async fn load(s3: &aws_sdk_s3::Client, function: &str, reference: Continue) -> Result<Loaded> {
    let at = &reference.checkpoint;
    let Some(checkpoint) = read_document(s3, function, at).await? else {
        return Err(bad_checkpoint(
            at,
            "not found: its job already ended (completed, failed or given up)",
        ));
    };
    let tail = read_tail(s3, at, &checkpoint.upload).await?;
    let side_tail = match &checkpoint.side {
        Some(side) => Some(read_tail(s3, at, &side.upload).await?),
        None => None,
    };
    Ok(Loaded {
        reference,
        checkpoint,
        tail,
        side_tail,
    })
}

/// The tail of `upload`, for the checkpoint at `at`, verified against its checksum.
async fn read_tail(s3: &aws_sdk_s3::Client, at: &ObjectRef, upload: &Upload) -> Result<Bytes> {
    let tail_key = &upload.tail_key;
    if !tail_key.starts_with(PREFIX) {
        return Err(bad_checkpoint(at, "its tail is not under the prefix"));
    }
    let want = upload.tail;
    let cap = usize::try_from(want.len()).unwrap_or(usize::MAX);
    let tail = get_capped(s3, &at.bucket, tail_key, cap).await?;
    let got = want.algorithm().checksum(&tail);
    if got != want {
        return Err(bad_checkpoint(
            at,
            format!(
                "its tail {tail_key} has {} bytes of checksum {}, the checkpoint says {} bytes of {}",
                got.len(),
                got.to_base64(),
                want.len(),
                want.to_base64()
            ),
        ));
    }
    Ok(Bytes::from(tail))
}

/// The checkpoint document at `at`, for `function`: under [`PREFIX`], of this format and
/// written by `function`, and where its own run id says. `None` when there is none.
async fn read_document(
    s3: &aws_sdk_s3::Client,
    function: &str,
    at: &ObjectRef,
) -> Result<Option<Checkpoint>> {
    if !at.key.starts_with(PREFIX) || at.key.contains("..") {
        return Err(bad_checkpoint(at, format!("not a key under {PREFIX}")));
    }
    let doc = match get_capped(s3, &at.bucket, &at.key, DOCUMENT_CAP).await {
        Err(Error::S3 { message, .. }) if message.starts_with("HTTP 404") => return Ok(None),
        found => found?,
    };
    let checkpoint: Checkpoint = serde_json::from_slice(&doc).map_err(|e| bad_checkpoint(at, e))?;
    if checkpoint.version != VERSION {
        return Err(bad_checkpoint(
            at,
            format!("format {} (this build reads {VERSION})", checkpoint.version),
        ));
    }
    if checkpoint.function != function {
        return Err(bad_checkpoint(
            at,
            format!("written by {}, not {function}", checkpoint.function),
        ));
    }
    if checkpoint.document_key() != at.key {
        return Err(bad_checkpoint(
            at,
            format!(
                "it names run {}, whose checkpoint is elsewhere",
                checkpoint.run_id
            ),
        ));
    }
    Ok(Some(checkpoint))
}

/// The event that gives a job up: `{"abort": {"checkpoint": {"bucket": ..., "key": ...}}}`,
/// sent by the state machine after a failure that may have left a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abort {
    /// The checkpoint of the job to give up.
    pub abort: Continue,
}

impl Abort {
    /// The abort event in `event`, when it is one (an object with an `abort` field).
    pub fn from_event(event: &Value) -> Option<Result<Abort>> {
        event.as_object()?.get("abort")?;
        Some(
            serde_json::from_value(event.clone())
                .map_err(|e| Error::spec(format!("abort event: {e}"))),
        )
    }
}

/// Gives a job up: aborts the upload its checkpoint names and deletes the checkpoint. A
/// checkpoint already gone (the job finished, or failed and cleaned up) is not an error. The
/// answer says which it was.
pub async fn abort(s3: &aws_sdk_s3::Client, function: &str, event: Abort) -> Result<Value> {
    let at = &event.abort.checkpoint;
    let Some(checkpoint) = read_document(s3, function, at).await? else {
        return Ok(serde_json::json!({"status": "gone", "checkpoint": at}));
    };
    abort_upload(s3, &at.bucket, &checkpoint).await;
    delete(s3, &at.bucket, &checkpoint).await;
    tracing::info!(
        bucket = %at.bucket, key = %checkpoint.key, checkpoint = %at.key,
        "job given up: upload aborted, checkpoint deleted"
    );
    Ok(serde_json::json!({
        "status": "aborted",
        "bucket": at.bucket,
        "key": checkpoint.key,
        "checkpoint": at,
        "invocations": checkpoint.invocations,
    }))
}

/// Deletes a checkpoint in `bucket` and its tail (after the object completed, or the job
/// failed). A failure is logged: the bucket's lifecycle rule on [`PREFIX`] removes what is
/// left.
pub async fn delete(s3: &aws_sdk_s3::Client, bucket: &str, checkpoint: &Checkpoint) {
    for tail in checkpoint.tail_keys() {
        delete_quietly(s3, bucket, &tail).await;
    }
    delete_quietly(s3, bucket, &checkpoint.document_key()).await;
}

/// Aborts the uploads of `checkpoint` in `bucket` (its output's and its side upload's, when
/// they have started) and deletes the objects a partitioned job (or one writing an object
/// per page, with their manifests) completed before it, for a job that cannot go on. An upload already gone (a failed writer aborted it) is not an
/// error; another failure is logged, and `sweep-uploads` or the lifecycle rule removes the
/// upload.
pub async fn abort_upload(s3: &aws_sdk_s3::Client, bucket: &str, checkpoint: &Checkpoint) {
    use crate::job::Status;
    if let Some(p) = checkpoint.position.partitions() {
        let keys = p
            .objects
            .iter()
            .filter(|o| o.status == Status::Written)
            .map(|o| o.key.as_str());
        crate::partition::delete(s3, bucket, keys, "the job given up").await;
    }
    if let Position::Pages {
        pages: Some(pages), ..
    } = &checkpoint.position
    {
        let keys = pages
            .iter()
            .filter(|o| o.status == Status::Written)
            .flat_map(|o| std::iter::once(o.key.as_str()).chain(o.manifest.as_deref()));
        crate::partition::delete(s3, bucket, keys, "the job given up").await;
    }
    let side = checkpoint.side.as_ref().map(|s| (&s.key, &s.upload));
    for (key, upload) in std::iter::once((&checkpoint.key, &checkpoint.upload)).chain(side) {
        if let Some(upload_id) = &upload.upload_id {
            abort_one(s3, bucket, key, upload_id).await;
        }
    }
}

async fn abort_one(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, upload_id: &str) {
    let aborted = s3
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(e) = aborted {
        let gone = e
            .as_service_error()
            .and_then(|s| aws_sdk_s3::error::ProvideErrorMetadata::code(s))
            == Some("NoSuchUpload");
        if !gone {
            tracing::warn!(
                %bucket, %key, error = %aws_sdk_s3::error::DisplayErrorContext(&e),
                "could not abort the upload; sweep-uploads or the lifecycle rule will"
            );
        }
    }
}

async fn delete_quietly(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    if let Err(e) = s3.delete_object().bucket(bucket).key(key).send().await {
        tracing::warn!(
            %bucket, %key, error = %aws_sdk_s3::error::DisplayErrorContext(&e),
            "could not delete a checkpoint object; the lifecycle rule will"
        );
    }
}

/// The bytes of the checkpoint document at `key` (at most its cap), or `None` when it is
/// gone: what `sweep-uploads` reads to keep the uploads of continuing jobs.
pub(crate) async fn read_raw(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    match get_capped(s3, bucket, key, DOCUMENT_CAP).await {
        Err(Error::S3 { message, .. }) if message.starts_with("HTTP 404") => Ok(None),
        found => found.map(Some),
    }
}

async fn get_capped(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    cap: usize,
) -> Result<Vec<u8>> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| crate::s3::sdk_error(S3Operation::GetObject, bucket, key, None, &e))?;
    match crate::source::http::state::read_capped(out.body, cap).await {
        Ok(Some(body)) => Ok(body),
        Ok(None) => Err(crate::s3::s3_error(
            S3Operation::GetObject,
            bucket,
            key,
            format!("over {cap} bytes"),
            false,
        )),
        Err(e) => Err(crate::s3::s3_error(
            S3Operation::GetObject,
            bucket,
            key,
            e.to_string(),
            true,
        )),
    }
}

/// When a job that can continue stops to write its checkpoint: the earlier of
/// `tuning.max_invocation_secs` after the invocation started, and the Lambda deadline less
/// the give-up margin and the checkpoint margin. The checkpoint margin is
/// `tuning.checkpoint_margin_ms`, or derived from what must still happen: the parts in flight
/// and the one being filled uploaded at the rate measured so far, plus two seconds to write
/// the checkpoint.
#[derive(Debug, Clone)]
pub struct StopClock {
    /// When the invocation started.
    pub started: Instant,
    /// The end of `max_invocation_secs`.
    pub limit: Option<Instant>,
    /// The Lambda deadline less the give-up margin (when the job would fail).
    pub give_up: Option<Instant>,
    /// `tuning.checkpoint_margin_ms`.
    pub margin: Option<Duration>,
    /// Bytes that may still be uploading when the stop comes (parts in flight and filling).
    pub pending_bytes: u64,
    /// The invocation's counters, for the upload rate.
    pub progress: std::sync::Arc<Progress>,
}

impl StopClock {
    /// The time to stop, as of now; `None`: no limit.
    pub fn due(&self) -> Option<Instant> {
        let before_deadline = self.give_up.map(|g| {
            // A derived margin takes at most half the invocation, so every invocation moves
            // the job on however slow its first parts were.
            let half = g.saturating_duration_since(self.started) / 2;
            let margin = self
                .margin
                .unwrap_or_else(|| self.derived_margin().min(half));
            g.checked_sub(margin).unwrap_or(g)
        });
        match (self.limit, before_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn derived_margin(&self) -> Duration {
        let s = self.progress.snapshot();
        let measured = s.bytes_out as f64 / s.elapsed.as_secs_f64().max(1e-3);
        let rate = measured.max(FLOOR_RATE);
        CHECKPOINT_WRITE + Duration::from_secs_f64(self.pending_bytes as f64 / rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_keys_are_refused() {
        assert!(check_not_reserved("destination.key", "_sluice/checkpoints/x").is_err());
        assert!(check_not_reserved("destination.key", "/_sluice/x").is_err());
        assert!(check_not_reserved("destination.key", "raw/_sluice/x").is_ok());
        assert!(check_not_reserved("destination.key", "_sluiced/x").is_ok());
    }

    #[test]
    fn run_ids_become_safe_keys() {
        assert_eq!(
            key_for("ingest-http", "a/b c"),
            "_sluice/checkpoints/ingest-http/a_b_c.json"
        );
        assert_eq!(
            key_for("ingest-http", "../.."),
            "_sluice/checkpoints/ingest-http/.._...json"
        );
    }

    #[test]
    fn continue_events_are_told_from_job_specs() {
        let spec = serde_json::json!({"source": {"http": {"url": "http://x"}}});
        assert!(Continue::from_event(&spec).is_none());
        let ok = serde_json::json!({"checkpoint": {"bucket": "b", "key": "_sluice/checkpoints/f/r.json"}});
        assert_eq!(
            Continue::from_event(&ok)
                .unwrap()
                .unwrap()
                .checkpoint
                .bucket,
            "b"
        );
        let extra = serde_json::json!({"checkpoint": {"bucket": "b", "key": "k"}, "x": 1});
        assert!(Continue::from_event(&extra).unwrap().is_err());
    }

    #[test]
    fn the_stop_leaves_time_for_the_parts_in_flight() {
        let now = Instant::now();
        let give_up = now + Duration::from_secs(600);
        let clock = StopClock {
            started: now,
            limit: None,
            give_up: Some(give_up),
            margin: None,
            pending_bytes: 64 * 1024 * 1024,
            progress: Default::default(),
        };
        // Nothing uploaded yet: the floor rate, 1 MiB/s, so 64 s for 64 MiB and 2 s more.
        let due = clock.due().unwrap();
        assert_eq!(give_up - due, Duration::from_secs(66));
        // A short invocation keeps at least half its time for the copy.
        let short = StopClock {
            give_up: Some(now + Duration::from_secs(20)),
            ..clock.clone()
        };
        assert_eq!(short.due().unwrap(), now + Duration::from_secs(10));
        let fixed = StopClock {
            margin: Some(Duration::from_secs(5)),
            limit: Some(now + Duration::from_secs(10)),
            ..clock
        };
        assert_eq!(fixed.due().unwrap(), now + Duration::from_secs(10));
    }
}
