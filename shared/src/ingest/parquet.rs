//! Records written as Parquet: each record typed against the job's schema (declared, or
//! inferred from the first records), the ones that do not fit kept in a quarantine object.

use std::fmt;

use bytes::Bytes;
use std::collections::HashMap;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use std::sync::Arc;

use crate::checkpoint::ParquetRecordsResume;
use crate::columnar::{MAX_COLUMNS, ParquetOptions, RecordOutput, RecordsWritten, TableSchema};
use crate::error::{Error, Result};
use crate::partition::{
    FieldValue, Objects, PartitionObject, PartitionedSummary, Partitioner, PartitionsResume,
};
use crate::sink::{ObjectMeta, ObjectWriter, S3Target, Suspended, UploadOptions, Uploaded};
use crate::spec::{INFER_RECORDS, RecordSchema, RecordsQuarantine};
use crate::transform::RecordTyper;
use crate::transform::config::ColumnSpec;
use crate::transform::quarantine::Quarantine;
use crate::transform::reader::Position;
use crate::transform::steps::RowError;
use crate::transform::value::{ColType, Value};

/// The Parquet output of a records run, with its quarantine.
pub(super) struct ParquetRecords {
    /// The one file of an unpartitioned run (spent when partitioned).
    out: RecordOutput,
    /// A partitioned run's files, and the columns of its key's `{field:…}`.
    partitioned: Option<(Partitioner<ParquetObjects>, Vec<usize>)>,
    /// `None` while the first records are sampled for `"schema": "infer"`.
    typer: Option<Arc<RecordTyper>>,
    /// The columns inferred, once they are.
    inferred: Option<Vec<ColumnSpec>>,
    sample: Vec<(Bytes, Position)>,
    sample_bytes: usize,
    sample_cap: usize,
    quarantine: Quarantine,
    limits: RecordsQuarantine,
    row: Vec<Value>,
    records: u64,
    first_bad: Option<String>,
}

/// What a finished Parquet records run wrote.
pub(super) struct ParquetDone {
    pub written: ParquetWrote,
    /// Records quarantined, and the quarantine object when there was one.
    pub quarantined: u64,
    pub quarantine_key: Option<String>,
}

/// The files of a Parquet run.
pub(super) enum ParquetWrote {
    /// One file.
    One(RecordsWritten),
    /// A partitioned run's files.
    Partitioned(Vec<PartitionObject>, PartitionedSummary),
}

impl ParquetRecords {
    /// `out` is a [`RecordOutput::ParquetPending`], or, for a partitioned run,
    /// [`RecordOutput::Spent`] beside `partitioned`; with a declared schema it starts at once.
    pub fn new(
        out: RecordOutput,
        partitioned: Option<Partitioner<ParquetObjects>>,
        schema: &RecordSchema,
        quarantine: Quarantine,
        limits: RecordsQuarantine,
        sample_cap: usize,
    ) -> Result<Self> {
        let mut this = ParquetRecords {
            out,
            partitioned: partitioned.map(|p| (p, Vec::new())),
            typer: None,
            inferred: None,
            sample: Vec::new(),
            sample_bytes: 0,
            sample_cap,
            quarantine,
            limits,
            row: Vec::new(),
            records: 0,
            first_bad: None,
        };
        if let RecordSchema::Declared(columns) = schema {
            this.start(RecordTyper::new(columns))?;
        }
        Ok(this)
    }

    /// Starts the output with the typer's columns.
    fn start(&mut self, typer: RecordTyper) -> Result<()> {
        let schema = TableSchema::from_layout(&typer.layout());
        let typer = Arc::new(typer);
        match &mut self.partitioned {
            Some((router, columns)) => {
                let layout = typer.layout();
                *columns = router
                    .template()
                    .fields()
                    .iter()
                    .map(|f| {
                        layout.iter().position(|(name, _)| *name == f.name).ok_or_else(|| {
                            Error::spec(format!(
                                "destination.key: {{field:{}}} is not a column of the schema (columns: {})",
                                f.name,
                                layout.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                            ))
                        })
                    })
                    .collect::<Result<_>>()?;
                router.objects_mut().start(typer.clone(), schema);
            }
            None => self.out.set_schema(&schema)?,
        }
        self.typer = Some(typer);
        Ok(())
    }

    /// Takes one record (`offset`: bytes of its page received when it was read).
    pub async fn record(&mut self, record: &[u8], offset: u64) -> Result<()> {
        self.records += 1;
        let pos = Position {
            line: self.records,
            offset,
            record: self.records,
        };
        if self.typer.is_some() {
            return self.write(record, pos).await;
        }
        // A copy: a record sliced from the reader's buffer would pin the whole buffer.
        self.sample_bytes += record.len();
        self.sample.push((Bytes::copy_from_slice(record), pos));
        if self.sample.len() >= INFER_RECORDS || self.sample_bytes >= self.sample_cap {
            self.settle().await?;
        }
        Ok(())
    }

    async fn write(&mut self, record: &[u8], pos: Position) -> Result<()> {
        let Some(typer) = &self.typer else {
            return Err(Error::Internal {
                message: "a record was typed before the schema was known".into(),
            });
        };
        if let Err(e) = typer.type_record(record, &mut self.row) {
            return self.bad(pos, e, record).await;
        }
        let Some((router, columns)) = &mut self.partitioned else {
            self.out.row(&self.row).await?;
            return Ok(());
        };
        let template = router.template();
        let segments: std::result::Result<Vec<String>, RowError> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                template
                    .segment(i, &FieldValue::of(&self.row[*c]))
                    .map_err(|reason| RowError {
                        column: Some(template.fields()[i].name.clone()),
                        reason,
                    })
            })
            .collect();
        match segments {
            Ok(segments) => router.write(segments, record).await,
            Err(e) => self.bad(pos, e, record).await,
        }
    }

    /// Infers the schema from the sample, starts the output and writes the sample.
    async fn settle(&mut self) -> Result<()> {
        let columns = infer(self.sample.iter().map(|(r, _)| r.as_ref()))
            .map_err(|e| Error::spec(format!("schema \"infer\": {e}")))?;
        tracing::info!(
            records = self.sample.len(),
            bytes = self.sample_bytes,
            columns = ?columns.iter().map(|c| (c.name.as_str(), c.ty.name())).collect::<Vec<_>>(),
            "schema inferred"
        );
        self.start(RecordTyper::new(&columns).strict())?;
        self.inferred = Some(columns);
        for (record, pos) in std::mem::take(&mut self.sample) {
            self.write(&record, pos).await?;
        }
        self.sample_bytes = 0;
        Ok(())
    }

    async fn bad(&mut self, pos: Position, e: RowError, raw: &[u8]) -> Result<()> {
        self.quarantine
            .add(pos, e.column.as_deref(), &e.reason, raw)
            .await?;
        let described = describe(pos, &e);
        let first = self.first_bad.get_or_insert(described.clone()).clone();
        if let Some(max) = self.limits.max_bad_rows
            && self.quarantine.count() > max
        {
            return Err(Error::Records {
                url: self.quarantine_source(),
                class: "too many bad records",
                offset: pos.offset,
                record: Some(pos.record),
                message: format!(
                    "{} records quarantined, more than quarantine.max_bad_rows {max}; the first: {first}; the last: {described} (nothing is written for a failed run)",
                    self.quarantine.count()
                ),
            });
        }
        Ok(())
    }

    fn quarantine_source(&self) -> String {
        self.quarantine.source().to_owned()
    }

    /// Whether the files are partitioned (only then can the run stop between pages: a
    /// Parquet file cannot be suspended half-written).
    pub fn is_partitioned(&self) -> bool {
        self.partitioned.is_some()
    }

    /// The quarantine object's key.
    pub fn quarantine_key(&self) -> &str {
        self.quarantine.key()
    }

    /// Stops between two pages so that the run can go on in another invocation: the schema
    /// is inferred now if it is still being sampled, every open file is completed, and the
    /// quarantine is suspended. Returns the files' state, the quarantine's upload and the
    /// rest. On error the caller drops the run (its uploads are aborted) and deletes the
    /// files completed.
    pub async fn suspend(
        &mut self,
    ) -> Result<(PartitionsResume, Option<Suspended>, ParquetRecordsResume)> {
        if self.typer.is_none() {
            self.settle().await?;
        }
        let Some((router, _)) = &mut self.partitioned else {
            return Err(Error::Internal {
                message: "one Parquet file cannot stop between pages".into(),
            });
        };
        let files = router.suspend().await?;
        let quarantine = self.quarantine.suspend().await?;
        let rest = ParquetRecordsResume {
            inferred: self.inferred.clone(),
            records: self.records,
            quarantined: self.quarantine.count(),
            first_bad: self.first_bad.clone(),
        };
        Ok((files, quarantine, rest))
    }

    /// Goes on after [`suspend`](Self::suspend), in this invocation or another: the files'
    /// state (in another invocation), the quarantine's upload and the rest.
    pub fn resume(
        &mut self,
        files: Option<PartitionsResume>,
        quarantine: Option<Suspended>,
        rest: &ParquetRecordsResume,
    ) -> Result<()> {
        if let Some(files) = files {
            let Some((router, _)) = &mut self.partitioned else {
                return Err(Error::Internal {
                    message: "partitioned files resumed into one Parquet file".into(),
                });
            };
            router.resume(files);
        }
        if self.typer.is_none()
            && let Some(columns) = &rest.inferred
        {
            self.start(RecordTyper::new(columns).strict())?;
            self.inferred = Some(columns.clone());
        }
        self.quarantine.resume(quarantine, rest.quarantined)?;
        self.records = rest.records;
        self.first_bad = rest.first_bad.clone();
        Ok(())
    }

    /// After the last record: the schema (if still sampling), the bad-record ratio, then the
    /// quarantine and the output, completed in that order. On error both are aborted.
    pub async fn finish(mut self) -> Result<ParquetDone> {
        if let Err(e) = self.end().await {
            self.abort().await;
            return Err(e);
        }
        let quarantined = self.quarantine.count();
        if let Some((router, _)) = self.partitioned.take() {
            // The files first, then the quarantine; the caller deletes the files if the
            // quarantine fails.
            let (objects, summary) = match router.finish().await {
                Ok(done) => done,
                Err(e) => {
                    self.quarantine.abort().await;
                    return Err(e);
                }
            };
            let quarantine_key = self
                .quarantine
                .finish()
                .await?
                .map(|_| self.quarantine.key().to_owned());
            return Ok(ParquetDone {
                written: ParquetWrote::Partitioned(objects, summary),
                quarantined,
                quarantine_key,
            });
        }
        // The file's last bytes before the quarantine lands: a failure here leaves neither.
        if let Err(e) = self.out.seal().await {
            self.abort().await;
            return Err(e);
        }
        let quarantine_key = match self.quarantine.finish().await {
            Ok(q) => q.map(|_| self.quarantine.key().to_owned()),
            Err(e) => {
                self.out.abort().await;
                return Err(e);
            }
        };
        Ok(ParquetDone {
            written: ParquetWrote::One(self.out.finish().await?),
            quarantined,
            quarantine_key,
        })
    }

    async fn end(&mut self) -> Result<()> {
        if self.typer.is_none() {
            self.settle().await?;
        }
        if let Some(max) = self.limits.max_bad_ratio
            && self.records > 0
        {
            let ratio = self.quarantine.count() as f64 / self.records as f64;
            if ratio > max {
                return Err(Error::Records {
                    url: self.quarantine_source(),
                    class: "too many bad records",
                    offset: 0,
                    record: None,
                    message: format!(
                        "{} of {} records quarantined ({ratio:.4}), more than quarantine.max_bad_ratio {max}; the first: {} (nothing is written for a failed run)",
                        self.quarantine.count(),
                        self.records,
                        self.first_bad.as_deref().unwrap_or_default()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Aborts the output and the quarantine (the caller deletes a partitioned run's
    /// completed files).
    pub async fn abort(mut self) {
        self.quarantine.abort().await;
        if let Some((router, _)) = self.partitioned.take() {
            router.abort().await;
        }
        self.out.abort().await;
    }
}

/// The Parquet files of a partitioned records run: each record typed again (the typer is
/// deterministic, and a spilled record comes back as its JSON) into its file's columns.
pub(super) struct ParquetObjects {
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub meta: ObjectMeta,
    pub upload: UploadOptions,
    pub parquet: ParquetOptions,
    /// Set once the columns are known.
    pub typed: Option<(Arc<RecordTyper>, TableSchema)>,
    pub row: Vec<Value>,
}

impl ParquetObjects {
    fn start(&mut self, typer: Arc<RecordTyper>, schema: TableSchema) {
        self.typed = Some((typer, schema));
    }
}

impl Objects for ParquetObjects {
    type Object = RecordOutput;

    fn open(&mut self, key: &str) -> Result<RecordOutput> {
        let Some((_, schema)) = &self.typed else {
            return Err(Error::Internal {
                message: format!("{key}: a Parquet file opened before its columns were known"),
            });
        };
        let target = S3Target::new(self.s3.clone(), &self.bucket, key).with_meta(self.meta.clone());
        let writer = ObjectWriter::new(Arc::new(target), &self.upload)?;
        RecordOutput::parquet(schema, self.parquet, writer)
    }

    async fn write(&mut self, object: &mut RecordOutput, record: &[u8]) -> Result<()> {
        let Some((typer, _)) = &self.typed else {
            return Err(Error::Internal {
                message: "a record written before the columns were known".into(),
            });
        };
        typer
            .type_record(record, &mut self.row)
            .map_err(|e| Error::Internal {
                message: format!("a record typed before no longer fits: {}", e.reason),
            })?;
        object.row(&self.row).await?;
        Ok(())
    }

    fn size_bound(object: &RecordOutput) -> u64 {
        object.size_bound()
    }

    async fn finish(object: RecordOutput) -> Result<Uploaded> {
        Ok(object.finish().await?.uploaded)
    }

    async fn abort(object: RecordOutput) {
        object.abort().await;
    }
}

fn describe(pos: Position, e: &RowError) -> String {
    match &e.column {
        Some(c) => format!("record {}, column {c:?}: {}", pos.record, e.reason),
        None => format!("record {}: {}", pos.record, e.reason),
    }
}

/// What the sampled values of one key were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Null,
    Bool,
    Int,
    Float,
    Date,
    Timestamp,
    Text,
}

impl Seen {
    /// What a value is, from its JSON text: an object or an array is never built (a record
    /// small in bytes can be huge as a parse tree), only a string or a number is parsed.
    fn of(raw: &RawValue) -> Seen {
        let text = raw.get();
        match text.as_bytes().first() {
            None | Some(b'n') => Seen::Null,
            Some(b't' | b'f') => Seen::Bool,
            Some(b'{' | b'[') => Seen::Text,
            Some(b'"') => match serde_json::from_str::<std::borrow::Cow<'_, str>>(text) {
                Ok(s)
                    if s.len() == 10
                        && chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d").is_ok() =>
                {
                    Seen::Date
                }
                Ok(s) if chrono::DateTime::parse_from_rfc3339(&s).is_ok() => Seen::Timestamp,
                _ => Seen::Text,
            },
            Some(_) => match serde_json::from_str::<serde_json::Number>(text) {
                Ok(n) if n.is_i64() => Seen::Int,
                // A u64 past i64 would not fit an int column, and a float would round it.
                Ok(n) if n.is_u64() => Seen::Text,
                Ok(_) => Seen::Float,
                Err(_) => Seen::Text,
            },
        }
    }

    fn merge(self, other: Seen) -> Seen {
        match (self, other) {
            (a, b) if a == b => a,
            (Seen::Null, b) => b,
            (a, Seen::Null) => a,
            (Seen::Int, Seen::Float) | (Seen::Float, Seen::Int) => Seen::Float,
            _ => Seen::Text,
        }
    }

    fn col_type(self) -> ColType {
        match self {
            Seen::Bool => ColType::Bool,
            Seen::Int => ColType::Int,
            Seen::Float => ColType::Float,
            Seen::Date => ColType::Date,
            Seen::Timestamp => ColType::Timestamp,
            Seen::Null | Seen::Text => ColType::String,
        }
    }
}

/// Columns from sampled records: every top-level key in the order first seen, typed by what
/// all its sampled values fit (ints and floats make a float; anything mixed, nested or only
/// null is a string), all nullable. Records that are not objects are left to the typer. More
/// than [`MAX_COLUMNS`] distinct keys is an error (the keys past it are not even kept).
pub(super) fn infer<'a>(
    records: impl Iterator<Item = &'a [u8]>,
) -> std::result::Result<Vec<ColumnSpec>, String> {
    let mut columns: Vec<(String, Seen)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for record in records {
        let mut de = serde_json::Deserializer::from_slice(record);
        let Ok(fields) = de.deserialize_map(Fields) else {
            continue;
        };
        for (key, seen) in fields {
            match index.get(&key) {
                Some(&i) => columns[i].1 = columns[i].1.merge(seen),
                None => {
                    if columns.len() == MAX_COLUMNS {
                        return Err(format!(
                            "the sampled records have more than {MAX_COLUMNS} distinct keys, the most columns a Parquet output may have: declare a schema of the columns you need"
                        ));
                    }
                    index.insert(key.clone(), columns.len());
                    columns.push((key, seen));
                }
            }
        }
    }
    Ok(columns
        .into_iter()
        .map(|(name, seen)| ColumnSpec {
            name,
            ty: seen.col_type(),
            format: None,
            nullable: true,
            required: false,
            null_values: Vec::new(),
            path: None,
        })
        .collect())
}

/// A record's top-level keys in order, with what each value is; past [`MAX_COLUMNS`] + 1
/// distinct keys the rest are skipped (inference fails on them anyway).
struct Fields;

impl<'de> Visitor<'de> for Fields {
    type Value = Vec<(String, Seen)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out: Vec<(String, Seen)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.len() > MAX_COLUMNS && !index.contains_key(&key) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let seen = Seen::of(map.next_value::<&'de RawValue>()?);
            match index.get(&key) {
                Some(&i) => out[i].1 = seen,
                None => {
                    index.insert(key.clone(), out.len());
                    out.push((key, seen));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(records: &[&str]) -> Vec<(String, &'static str)> {
        infer(records.iter().map(|r| r.as_bytes()))
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.ty.name()))
            .collect()
    }

    #[test]
    fn types_are_inferred_in_key_order_and_widened() {
        let got = types(&[
            r#"{"id": 1, "price": 2, "ok": true, "day": "2026-01-02", "at": "2026-01-02T03:04:05Z", "tags": [1], "note": null}"#,
            r#"{"id": 2, "price": 2.5, "ok": false, "day": "2026-01-03", "at": "2026-01-02T03:04:05+01:00", "tags": {"a": 1}, "extra": "x"}"#,
            "[1, 2]",
            "not json",
        ]);
        assert_eq!(
            got,
            vec![
                ("id".into(), "int"),
                ("price".into(), "float"),
                ("ok".into(), "bool"),
                ("day".into(), "date"),
                ("at".into(), "timestamp"),
                ("tags".into(), "string"),
                ("note".into(), "string"),
                ("extra".into(), "string"),
            ]
        );
    }

    #[test]
    fn mixed_values_and_huge_integers_become_strings() {
        let got = types(&[
            r#"{"a": 1, "b": "2026-01-01", "c": 18446744073709551615}"#,
            r#"{"a": "x", "b": "2026-01-01T00:00:00Z"}"#,
        ]);
        assert_eq!(
            got,
            vec![
                ("a".into(), "string"),
                ("b".into(), "string"),
                ("c".into(), "string")
            ]
        );
    }

    #[test]
    fn a_record_of_a_million_keys_is_an_error_not_a_million_columns() {
        let mut record = String::from("{");
        for i in 0..1_000_000 {
            record.push_str(&format!("\"k{i}\":[{i}],"));
        }
        record.push_str("\"end\":1}");
        let started = std::time::Instant::now();
        let e = infer(std::iter::once(record.as_bytes())).unwrap_err();
        assert!(e.contains("more than 1000 distinct keys"), "{e}");
        // Linear in the keys, not quadratic (a generous bound for a debug build).
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
}
