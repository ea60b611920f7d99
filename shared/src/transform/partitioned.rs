//! A transform's rows written into the objects of their partitions ([`crate::partition`]):
//! `output.key` with `{field:NAME}` placeholders naming columns of the layout after the
//! steps, and objects rolled at `output.max_object_mib` / `max_object_records`.
//!
//! A row goes through the [`Partitioner`] as a compact binary encoding of its typed values
//! ([`encode_row`]), so that one spilled to local disk comes back exactly as it was typed;
//! each object renders it as CSV (after the object's own header), NDJSON or Parquet.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Datelike, NaiveDate};

use tokio::io::AsyncRead;

use super::continuing::Continuing;
use super::keep_quarantine;
use super::reader::IoErrorMap;
use super::rows::RowOut;
use super::rows::Rows;
use super::steps::{Layout, RowError};
use super::value::Value;
use super::writer::RowWriter;
use super::{Landed, ObjectSummary, Pipeline, Plan, TransformContext, WriteTo, Writing};
use crate::columnar::{self, ParquetOptions, RecordOutput, TableSchema};
use crate::error::{Error, Result};
use crate::format::Format;
use crate::job::{self, Status};
use crate::partition::{
    self, FieldValue, KeyTemplate, Objects, PartitionObject, PartitionedSummary, Partitioner,
    PartitionsResume, Written,
};
use crate::sink::{ObjectMeta, ObjectWriter, S3Target, UploadOptions, Uploaded};

/// Streams the rows into the objects of their partitions and completes them, then the
/// quarantine (at `w.quarantine_key`; `source` names the rows' source). On any failure (the
/// deadline, a panic) the open objects are aborted and the completed ones deleted, the
/// earlier invocations' included. A transform that is `continuing` may stop at a boundary
/// instead: every open object is completed and the checkpoint lists them, with each
/// partition's next `{part}`; the next invocation resumes the partitions from it.
pub(super) async fn write(
    pipeline: &Pipeline,
    ctx: &TransformContext,
    (w, source): (&Writing, &str),
    template: &KeyTemplate,
    (decoded, map_io): (Box<dyn AsyncRead + Send + Unpin>, IoErrorMap),
    summary: &mut ObjectSummary,
    continuing: Option<Continuing<'_>>,
) -> Result<Landed> {
    let from = continuing
        .as_ref()
        .and_then(|c| c.continuation.from.as_ref());
    let budget = pipeline.tuning.budget(ctx.budget)?;
    let deadline = ctx
        .invocation
        .give_up_at(pipeline.tuning.deadline_margin())?;
    let out = &pipeline.output;
    let limits = pipeline
        .tuning
        .object_limits(out.max_object_mib, out.max_object_records, &budget);
    // Each open object gets its share of the budget.
    let share = budget.split(limits.max_open as u64);
    let mut upload = UploadOptions::new(share.schedule());
    upload.checksum = out.checksum;
    // Keys carry the run id: one already there is another run's, never replaced.
    upload.if_none_match = true;
    upload.deadline = deadline;
    upload.compression = out.format.stream_compression(out.compression);
    upload.progress = Some(ctx.invocation.progress.clone());
    let objects = RowObjects {
        s3: ctx.s3.clone(),
        bucket: summary.bucket.clone(),
        meta: ObjectMeta {
            content_type: Some(super::content_type(pipeline)),
        },
        upload: upload.clone(),
        format: out.format,
        parquet: columnar::options_for(out.compression, &pipeline.tuning, &share),
        layout: None,
        row: Vec::new(),
    };
    let written = Written::default();
    let mut router = Partitioner::new(objects, template.clone(), limits, written.clone())?;
    if let Some(state) = from.and_then(|l| l.checkpoint.position.partitions()) {
        router.resume(state.clone());
    }
    let mut rows = PartitionedRows::new(router);
    let (mut quarantine, job) =
        super::row_job(pipeline, ctx, source, &w.quarantine_key, summary, deadline)?;
    if let Some(l) = from {
        quarantine.resume(l.side_suspended(), summary.counts.quarantined)?;
    }
    let bucket = summary.bucket.clone();
    let scope = ctx.scope(pipeline, &bucket, &upload);
    let mut saver = continuing.map(|c| c.saver(scope, w, None));
    let mut spent = RecordOutput::Spent;
    let out = RowOut {
        output: &mut spent,
        partitioned: Some(&mut rows),
        quarantine: &mut quarantine,
        counts: &mut summary.counts,
        decoded: &mut summary.bytes_decoded,
        saver: saver.as_mut(),
    };
    let result = job::catch_panic(
        "the transform",
        job::within(deadline, job.run(decoded, map_io, out)),
    )
    .await;
    summary.counts.quarantined = quarantine.count();
    let finished = match result {
        Ok(Rows::Stopped(next)) => {
            let (parts, bytes) = saver.as_ref().map_or((0, 0), |s| s.saved);
            return Ok(Landed::Continues(next, parts, bytes));
        }
        // The spilled rows and the last objects, then the quarantine.
        Ok(Rows::Ended) => match job::within(deadline, rows.finish()).await {
            Ok(done) => job::within(deadline, keep_quarantine(&mut quarantine, summary))
                .await
                .map(|()| done),
            Err(e) => Err(e),
        },
        Err(e) => {
            rows.abort().await;
            Err(e)
        }
    };
    if let Err(e) = &finished {
        quarantine.abort().await;
        match &saver {
            Some(s) => s.checkpoints.roll_back(&written, e).await,
            None => partition::roll_back(&ctx.s3, &summary.bucket, &written).await,
        }
        tracing::error!(%source, error = %e, "transform failed; its objects deleted, its uploads aborted");
    }
    if let Some(s) = &saver {
        s.checkpoints.end(&finished).await;
    }
    finished.map(|(objects, figures)| Landed::Partitioned(objects, figures))
}

/// After the objects: the manifest listing them, then the older version's objects go. A
/// delivery that finds this version's manifest already written (a concurrent delivery of the
/// same event finished first) deletes its own objects and answers `duplicate`. A manifest
/// that cannot be written deletes them too (all or nothing).
pub(super) async fn land(
    ctx: &TransformContext,
    w: &Writing,
    objects: Vec<PartitionObject>,
    figures: PartitionedSummary,
    mut summary: ObjectSummary,
    clock: std::time::Instant,
) -> Result<ObjectSummary> {
    let bucket = summary.bucket.clone();
    let ours = || objects.iter().map(|o| o.key.as_str());
    summary.bytes_out = objects.iter().map(|o| o.bytes).sum();
    summary.parts = objects.iter().map(|o| o.parts).sum();
    summary.partitioned = Some(figures);
    let previous: &[String] = match &w.to {
        WriteTo::Partitioned { previous, .. } => previous,
        WriteTo::One { .. } => &[],
    };
    let landed = async {
        if let Some(m) = super::read_manifest(&ctx.s3, &bucket, &w.manifest_key).await?
            && let Some(Plan::Skip(Status::Duplicate, reason)) =
                super::compare_manifest(&m, &w.version, &format!("s3://{bucket}/{}", w.key))
        {
            return Ok(Err(reason));
        }
        summary.replaced_objects = (!previous.is_empty()).then_some(previous.len());
        let mut done = summary.clone().ended(clock, Status::Written, None);
        done.manifest = Some(w.manifest_key.clone());
        let mut doc = serde_json::to_value(&done).map_err(|e| Error::Internal {
            message: format!("summary of {}: {e}", w.manifest_key),
        })?;
        doc["objects"] = serde_json::to_value(&objects).map_err(|e| Error::Internal {
            message: format!("objects of {}: {e}", w.manifest_key),
        })?;
        job::write_manifest(&ctx.s3, &ctx.invocation, &bucket, &w.manifest_key, doc).await?;
        Ok(Ok(done))
    };
    match landed.await {
        Ok(Ok(done)) => {
            let keep: std::collections::HashSet<&str> = ours().collect();
            let old = previous
                .iter()
                .map(String::as_str)
                .filter(|k| !keep.contains(k));
            partition::delete(&ctx.s3, &bucket, old, "the older version's output").await;
            Ok(done)
        }
        Ok(Err(reason)) => {
            partition::delete(&ctx.s3, &bucket, ours(), "a duplicate delivery").await;
            Ok(summary.ended(clock, Status::Duplicate, Some(reason)))
        }
        Err(e) => {
            partition::delete(&ctx.s3, &bucket, ours(), "the failed run").await;
            Err(e)
        }
    }
}

/// Rendered text reaches an object's writer in batches of this size.
const TEXT_BATCH: usize = 64 * 1024;

/// The partitioned output of one transform.
pub(super) struct PartitionedRows {
    router: Partitioner<RowObjects>,
    /// The layout column of each `{field:…}`, known once the layout is.
    columns: Vec<usize>,
    record: Vec<u8>,
}

impl PartitionedRows {
    /// Rows routed by `router`.
    pub fn new(router: Partitioner<RowObjects>) -> Self {
        PartitionedRows {
            router,
            columns: Vec::new(),
            record: Vec::new(),
        }
    }

    /// Starts the output with the layout after the steps: each `{field:…}` of the key must
    /// name one of its columns (a spec error listing them otherwise).
    pub fn start(&mut self, layout: &Layout) -> Result<()> {
        let template = self.router.template();
        self.columns = field_columns(template.fields().iter().map(|f| f.name.as_str()), layout)?;
        self.router.objects_mut().start(layout);
        Ok(())
    }

    /// Writes a kept row into its partition's object. `Ok(Err(_))` when the key cannot be
    /// made from the row's values (a `{field:…:FORMAT}` on a value that is not a date): the
    /// row belongs in the quarantine.
    pub async fn row(&mut self, row: &[Value]) -> Result<std::result::Result<(), RowError>> {
        let template = self.router.template();
        let mut segments = Vec::with_capacity(self.columns.len());
        for (i, c) in self.columns.iter().enumerate() {
            match template.segment(i, &FieldValue::of(&row[*c])) {
                Ok(s) => segments.push(s),
                Err(reason) => {
                    return Ok(Err(RowError {
                        column: Some(template.fields()[i].name.clone()),
                        reason,
                    }));
                }
            }
        }
        self.record.clear();
        encode_row(row, &mut self.record);
        self.router.write(segments, &self.record).await?;
        Ok(Ok(()))
    }

    /// Writes what was spilled and completes every object. On error the open objects have
    /// been aborted; the caller deletes the completed ones ([`crate::partition::roll_back`]).
    pub async fn finish(self) -> Result<(Vec<PartitionObject>, PartitionedSummary)> {
        self.router.finish().await
    }

    /// Completes every open object (what was spilled written first) so that the transform
    /// can stop here, and returns what the next invocation resumes with; the rows may also
    /// go on in this one. On error the open objects have been aborted; the caller deletes
    /// the completed ones.
    pub async fn suspend(&mut self) -> Result<PartitionsResume> {
        self.router.suspend().await
    }

    /// Aborts every open object (the caller deletes the completed ones).
    pub async fn abort(self) {
        self.router.abort().await;
    }
}

/// The layout column of each name, or a spec error naming the key's field and the columns.
pub(super) fn field_columns<'a>(
    names: impl Iterator<Item = &'a str>,
    layout: &Layout,
) -> Result<Vec<usize>> {
    names
        .map(|name| {
            layout.iter().position(|(n, _)| n == name).ok_or_else(|| {
                Error::spec(format!(
                    "output.key: {{field:{name}}} is not a column of the output (after the steps: {})",
                    layout
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        })
        .collect()
}

/// The objects of a partitioned transform: CSV, NDJSON or Parquet, each row decoded from
/// its [`encode_row`] form.
pub(super) struct RowObjects {
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub meta: ObjectMeta,
    /// Each object's upload (its share of the memory budget).
    pub upload: UploadOptions,
    pub format: Format,
    pub parquet: ParquetOptions,
    /// The renderer and the Parquet columns, set by [`PartitionedRows::start`].
    pub layout: Option<(RowWriter, TableSchema)>,
    pub row: Vec<Value>,
}

impl RowObjects {
    fn start(&mut self, layout: &Layout) {
        self.layout = Some((
            RowWriter::new(self.format, layout),
            TableSchema::from_layout(layout),
        ));
    }
}

/// One open object of a partitioned transform.
pub(super) struct RowObject {
    out: RecordOutput,
    /// Rendered text not yet handed to the writer.
    batch: Vec<u8>,
}

fn not_started(key: &str) -> Error {
    Error::Internal {
        message: format!("{key}: an object opened before the output's columns were known"),
    }
}

impl Objects for RowObjects {
    type Object = RowObject;

    fn open(&mut self, key: &str) -> Result<RowObject> {
        let Some((writer, schema)) = &mut self.layout else {
            return Err(not_started(key));
        };
        let target = S3Target::new(self.s3.clone(), &self.bucket, key).with_meta(self.meta.clone());
        let upload = ObjectWriter::new(Arc::new(target), &self.upload)?;
        let mut batch = Vec::new();
        let out = match self.format {
            Format::Parquet => RecordOutput::parquet(schema, self.parquet, upload)?,
            Format::Csv | Format::Ndjson => {
                writer.header(&mut batch);
                RecordOutput::Text(upload)
            }
        };
        Ok(RowObject { out, batch })
    }

    async fn write(&mut self, object: &mut RowObject, record: &[u8]) -> Result<()> {
        let Some((writer, _)) = &mut self.layout else {
            return Err(not_started("partitioned output"));
        };
        decode_row(record, &mut self.row).map_err(|e| Error::Internal {
            message: format!("a partitioned row could not be read back: {e}"),
        })?;
        if object.out.row(&self.row).await? {
            return Ok(());
        }
        writer.row(&self.row, &mut object.batch);
        if object.batch.len() >= TEXT_BATCH {
            let batch = Bytes::from(std::mem::take(&mut object.batch));
            object.out.write(batch).await?;
        }
        Ok(())
    }

    fn size_bound(object: &RowObject) -> u64 {
        object.out.size_bound() + object.batch.len() as u64
    }

    async fn finish(mut object: RowObject) -> Result<Uploaded> {
        if !object.batch.is_empty() {
            let batch = Bytes::from(std::mem::take(&mut object.batch));
            object.out.write(batch).await?;
        }
        object.out.seal().await?;
        Ok(object.out.finish().await?.uploaded)
    }

    async fn abort(object: RowObject) {
        object.out.abort().await;
    }
}

/// Appends `row` in a compact, lossless binary form: per value a tag byte, then its bytes
/// (little-endian; a string as its length and UTF-8).
pub(super) fn encode_row(row: &[Value], out: &mut Vec<u8>) {
    for v in row {
        match v {
            Value::Null => out.push(0),
            Value::Str(s) => {
                out.push(1);
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Int(i) => {
                out.push(2);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Float(f) => {
                out.push(3);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Bool(b) => out.extend_from_slice(&[4, u8::from(*b)]),
            Value::Date(d) => {
                out.push(5);
                out.extend_from_slice(&d.num_days_from_ce().to_le_bytes());
            }
            Value::Timestamp(t) => {
                out.push(6);
                out.extend_from_slice(&t.timestamp().to_le_bytes());
                out.extend_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
            }
        }
    }
}

/// Reads back a row of [`encode_row`] into `row` (cleared first).
pub(super) fn decode_row(
    mut bytes: &[u8],
    row: &mut Vec<Value>,
) -> std::result::Result<(), String> {
    fn take<const N: usize>(bytes: &mut &[u8]) -> std::result::Result<[u8; N], String> {
        let (head, rest) = bytes
            .split_first_chunk::<N>()
            .ok_or_else(|| "the row ends inside a value".to_owned())?;
        *bytes = rest;
        Ok(*head)
    }
    row.clear();
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        row.push(match tag {
            0 => Value::Null,
            1 => {
                let len = usize::try_from(u64::from_le_bytes(take::<8>(&mut bytes)?))
                    .map_err(|e| e.to_string())?;
                if len > bytes.len() {
                    return Err("the row ends inside a string".into());
                }
                let (s, rest) = bytes.split_at(len);
                bytes = rest;
                Value::Str(String::from_utf8(s.to_vec()).map_err(|e| e.to_string())?)
            }
            2 => Value::Int(i64::from_le_bytes(take::<8>(&mut bytes)?)),
            3 => Value::Float(f64::from_bits(u64::from_le_bytes(take::<8>(&mut bytes)?))),
            4 => Value::Bool(take::<1>(&mut bytes)?[0] != 0),
            5 => {
                let days = i32::from_le_bytes(take::<4>(&mut bytes)?);
                Value::Date(
                    NaiveDate::from_num_days_from_ce_opt(days)
                        .ok_or_else(|| format!("day {days} is out of range"))?,
                )
            }
            6 => {
                let secs = i64::from_le_bytes(take::<8>(&mut bytes)?);
                let nanos = u32::from_le_bytes(take::<4>(&mut bytes)?);
                Value::Timestamp(
                    DateTime::from_timestamp(secs, nanos)
                        .ok_or_else(|| format!("timestamp {secs}.{nanos} is out of range"))?,
                )
            }
            other => return Err(format!("unknown value tag {other}")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_the_encoding_exactly() {
        let row = vec![
            Value::Null,
            Value::Str("a,\"b\"\nc ✓".into()),
            Value::Str(String::new()),
            Value::Int(i64::MIN),
            Value::Float(-0.0),
            Value::Float(f64::MAX),
            Value::Bool(true),
            Value::Date(NaiveDate::from_ymd_opt(-204, 2, 29).unwrap()),
            Value::Timestamp(DateTime::from_timestamp(1_780_000_000, 123_456_789).unwrap()),
        ];
        let mut bytes = Vec::new();
        encode_row(&row, &mut bytes);
        let mut back = Vec::new();
        decode_row(&bytes, &mut back).unwrap();
        assert_eq!(back, row);
        assert!(matches!(back[4], Value::Float(f) if f.is_sign_negative()));
        // A NaN keeps its bits.
        encode_row(&[Value::Float(f64::NAN)], &mut bytes);
        decode_row(&bytes, &mut back).unwrap();
        assert!(matches!(back.last(), Some(Value::Float(f)) if f.is_nan()));
    }

    #[test]
    fn a_cut_or_corrupt_encoding_is_an_error_not_a_panic() {
        let mut bytes = Vec::new();
        encode_row(
            &[
                Value::Str("hello".into()),
                Value::Timestamp(DateTime::UNIX_EPOCH),
            ],
            &mut bytes,
        );
        let mut row = Vec::new();
        for cut in 0..bytes.len() {
            let _ = decode_row(&bytes[..cut], &mut row);
        }
        assert!(decode_row(&[9], &mut row).is_err());
        assert!(decode_row(&[1, 255, 255, 255, 255, 255, 255, 255, 255], &mut row).is_err());
        assert!(decode_row(&[1, 2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe], &mut row).is_err());
    }
}
