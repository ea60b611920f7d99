//! Partitioned output of an export ([`crate::partition`]): each row goes to the object of its
//! partition, named from its own columns (`orders/dt={field:created_at:%Y-%m-%d}/{part}.csv`),
//! and objects roll at `max_object_mib` / `max_object_records`.
//!
//! - CSV: the COPY output is split into records with [`CsvRecords`] (a quoted field may hold
//!   newlines); its first record is the header, which names the columns and begins every
//!   object.
//! - NDJSON: one row per line; the key's values are read from each line's top-level keys
//!   ([`partition::json_fields`]); the columns come from preparing the query.
//! - Parquet: the router's record is the row number and the raw binary tuple; the key's
//!   values are read from the tuple ([`TupleDecoder::field_value`]) and [`TupleObjects`]
//!   decodes it into its object's column builders.
//!
//! Any failure (a panic included) aborts the open objects and deletes the completed ones
//! ([`partition::roll_back`]): a failed run leaves nothing.

use std::sync::Arc;

use bytes::Bytes;

use super::{ExportSpec, Reporter};
use crate::budget::MemoryBudget;
use crate::codec::csv_records::CsvRecords;
use crate::columnar::{self, ParquetOptions, RecordOutput};
use crate::error::{Error, ErrorKind, Result};
use crate::format::Format;
use crate::job;
use crate::partition::{
    self, FieldValue, KeyTemplate, Objects, PartitionObject, PartitionedSummary, Partitioner,
    PartitionsResume, TextObjects,
};
use crate::sink::{ObjectMeta, ObjectWriter, S3Target, UploadOptions, Uploaded};
use crate::source::postgres::{self, TupleDecoder};

/// Bytes of the row number before each binary tuple in a Parquet run's records.
const ROW_PREFIX: usize = 8;

/// The Parquet files of a partitioned export: each record is a row number and a binary
/// tuple, decoded into its file's column builders.
pub(super) struct TupleObjects {
    s3: aws_sdk_s3::Client,
    bucket: String,
    meta: ObjectMeta,
    upload: UploadOptions,
    parquet: ParquetOptions,
    /// Set once the stream describes its columns.
    decoder: Option<TupleDecoder>,
}

impl Objects for TupleObjects {
    type Object = RecordOutput;

    fn open(&mut self, key: &str) -> Result<RecordOutput> {
        let Some(decoder) = &self.decoder else {
            return Err(Error::Internal {
                message: format!("{key}: a Parquet file opened before its columns were known"),
            });
        };
        let target = S3Target::new(self.s3.clone(), &self.bucket, key).with_meta(self.meta.clone());
        let writer = ObjectWriter::new(Arc::new(target), &self.upload)?;
        RecordOutput::parquet(decoder.schema(), self.parquet, writer)
    }

    async fn write(&mut self, object: &mut RecordOutput, record: &[u8]) -> Result<()> {
        let (Some(decoder), Some((row, mut tuple))) =
            (&self.decoder, record.split_first_chunk::<ROW_PREFIX>())
        else {
            return Err(Error::Internal {
                message: "a partitioned Parquet record without its columns or row number".into(),
            });
        };
        let row = u64::from_be_bytes(*row);
        let Some(columns) = object.columns() else {
            return Err(Error::Internal {
                message: "export: binary tuples for an output without columns".into(),
            });
        };
        let bytes = decoder.decode_row(&mut tuple, columns, row)?;
        object.end_row(bytes).await
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

enum Router {
    Text(Partitioner<TextObjects>),
    Parquet(Partitioner<TupleObjects>),
}

/// A partitioned export in progress: the router, and how rows are split and keyed.
pub(super) struct PartitionedExport {
    router: Router,
    format: Format,
    database: String,
    /// For each `{field:…}` of the key, its result column (once the columns are known).
    columns: Vec<usize>,
    /// The result's column names.
    names: Vec<String>,
    csv: CsvRecords,
    decoder: Option<TupleDecoder>,
    /// Rows routed (the CSV header not counted).
    row: u64,
    record: Vec<u8>,
    written: partition::Written,
}

impl PartitionedExport {
    /// The output of `spec` at the keys of `template`, built before connecting: a key
    /// without `{part}` is refused here. Each object's uploads and row groups get a share of
    /// `budget` (`budget.split(max_open)`).
    pub fn new(
        spec: &ExportSpec,
        s3: &aws_sdk_s3::Client,
        template: KeyTemplate,
        budget: &MemoryBudget,
        options: &UploadOptions,
    ) -> Result<Self> {
        let limits = spec.tuning.partition_limits(&spec.destination, budget);
        let share = budget.split(limits.max_open as u64);
        let upload = UploadOptions {
            schedule: share.schedule(),
            ..options.clone()
        };
        let meta =
            ObjectMeta {
                content_type: Some(spec.destination.content_type.clone().unwrap_or_else(|| {
                    spec.format.object_content_type(spec.compression).to_owned()
                })),
            };
        let bucket = spec.destination.bucket.clone();
        let written = partition::Written::default();
        let router = match spec.format {
            Format::Parquet => {
                let objects = TupleObjects {
                    s3: s3.clone(),
                    bucket,
                    meta,
                    upload,
                    parquet: columnar::options_for(spec.compression, &spec.tuning, &share),
                    decoder: None,
                };
                Router::Parquet(Partitioner::new(
                    objects,
                    template,
                    limits,
                    written.clone(),
                )?)
            }
            Format::Csv | Format::Ndjson => {
                let objects = TextObjects {
                    s3: s3.clone(),
                    bucket,
                    meta,
                    options: upload,
                    header: None,
                };
                Router::Text(Partitioner::new(
                    objects,
                    template,
                    limits,
                    written.clone(),
                )?)
            }
        };
        Ok(PartitionedExport {
            router,
            format: spec.format,
            database: String::new(),
            columns: Vec::new(),
            names: Vec::new(),
            csv: CsvRecords::new(spec.tuning.record_cap(budget)),
            decoder: None,
            row: 0,
            record: Vec::new(),
            written,
        })
    }

    /// The prefix every object of the run shares ([`KeyTemplate::static_prefix`]).
    pub fn static_prefix(&self) -> &str {
        self.template().static_prefix()
    }

    fn template(&self) -> &KeyTemplate {
        match &self.router {
            Router::Text(r) => r.template(),
            Router::Parquet(r) => r.template(),
        }
    }

    /// Takes what the started stream knows: for Parquet the tuple decoder, for NDJSON the
    /// result's columns (CSV's come with its header). A `{field:…}` that is no result column
    /// is an error listing the columns, before anything is written.
    pub fn start(&mut self, stream: &postgres::ExportStream, database: &str) -> Result<()> {
        self.database = database.to_owned();
        if let Some(decoder) = stream.tuple_decoder() {
            self.decoder = Some(decoder.clone());
            if let Router::Parquet(r) = &mut self.router {
                r.objects_mut().decoder = Some(decoder.clone());
            }
            let names = decoder.schema().columns.iter().map(|c| c.name.clone());
            self.set_columns(names.collect())?;
        } else if let Some(names) = stream.column_names() {
            self.set_columns(names.to_vec())?;
        } else if self.format == Format::Ndjson {
            return Err(Error::Internal {
                message: "partitioned NDJSON export: the stream does not name its columns".into(),
            });
        }
        Ok(())
    }

    fn set_columns(&mut self, names: Vec<String>) -> Result<()> {
        let template = self.template();
        let mut columns = Vec::new();
        for f in template.fields() {
            let Some(i) = names.iter().position(|n| *n == f.name) else {
                return Err(Error::spec(format!(
                    "{} {:?}: {{field:{}}} is not a column of the query's result (its columns: {})",
                    template.field_name(),
                    template.source(),
                    f.name,
                    names.join(", ")
                )));
            };
            columns.push(i);
        }
        self.columns = columns;
        self.names = names;
        Ok(())
    }

    /// Routes the rows of one chunk of the COPY stream.
    pub async fn chunk(&mut self, chunk: &[u8]) -> Result<()> {
        match self.format {
            Format::Csv => {
                let mut input = chunk;
                while self.csv.next(&mut input).map_err(|m| self.malformed(m))? {
                    self.csv_record().await?;
                }
                Ok(())
            }
            Format::Ndjson => {
                // The stream's chunks hold whole lines.
                for line in chunk.split(|&b| b == b'\n') {
                    if !line.is_empty() {
                        self.ndjson_record(line).await?;
                    }
                }
                Ok(())
            }
            Format::Parquet => self.tuples(chunk).await,
        }
    }

    /// After the last chunk: a CSV record without its newline.
    pub async fn end(&mut self) -> Result<()> {
        if self.format == Format::Csv && self.csv.finish().map_err(|m| self.malformed(m))? {
            self.csv_record().await?;
        }
        Ok(())
    }

    async fn csv_record(&mut self) -> Result<()> {
        if self.csv.records() == 1 {
            let names = (0..self.csv.len())
                .map(|i| String::from_utf8_lossy(self.csv.field(i).unwrap_or_default()).into())
                .collect();
            self.set_columns(names)?;
            let mut header = self.csv.record().to_vec();
            header.push(b'\n');
            if let Router::Text(r) = &mut self.router {
                r.objects_mut().header = Some(Bytes::from(header));
            }
            return Ok(());
        }
        self.row += 1;
        let values = self
            .columns
            .iter()
            .map(|&c| match self.csv.field(c) {
                // COPY writes NULL as an empty field; an empty string is the default partition too.
                None | Some(b"") => FieldValue::Null,
                Some(v) => FieldValue::Text(String::from_utf8_lossy(v).into_owned()),
            })
            .collect();
        let segments = self.segments(values)?;
        let Router::Text(r) = &mut self.router else {
            return Err(wrong_router());
        };
        r.write(segments, self.csv.record()).await
    }

    async fn ndjson_record(&mut self, line: &[u8]) -> Result<()> {
        self.row += 1;
        let names: Vec<&str> = self
            .columns
            .iter()
            .map(|&c| self.names[c].as_str())
            .collect();
        let values = partition::json_fields(line, &names).map_err(|m| self.malformed(m))?;
        let segments = self.segments(values)?;
        let Router::Text(r) = &mut self.router else {
            return Err(wrong_router());
        };
        r.write(segments, line).await
    }

    async fn tuples(&mut self, chunk: &[u8]) -> Result<()> {
        let Some(decoder) = self.decoder.clone() else {
            return Err(wrong_router());
        };
        let mut data = chunk;
        while !data.is_empty() {
            self.row += 1;
            let row = self.row;
            let tuple = decoder.next_tuple(&mut data, row)?;
            let values = self
                .columns
                .iter()
                .map(|&c| decoder.field_value(tuple, c, row))
                .collect::<Result<Vec<_>>>()?;
            let segments = self.segments(values)?;
            self.record.clear();
            self.record.extend_from_slice(&row.to_be_bytes());
            self.record.extend_from_slice(tuple);
            let Router::Parquet(r) = &mut self.router else {
                return Err(wrong_router());
            };
            r.write(segments, &self.record).await?;
        }
        Ok(())
    }

    /// The key segments of the current row's values, one per `{field:…}`. A value the key
    /// cannot format is an `InvalidInput` error naming the row and the column.
    fn segments(&self, values: Vec<FieldValue>) -> Result<Vec<String>> {
        let template = self.template();
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let v = match v {
                    FieldValue::Text(t) if template.fields()[i].format.is_some() => postgres_time(t),
                    other => other,
                };
                template.segment(i, &v).map_err(|m| Error::Postgres {
                    database: self.database.clone(),
                    stage: format!("row {}", self.row),
                    sqlstate: None,
                    message: format!(
                        "column \"{}\": {m}; the key {:?} cannot name its partition (nothing of the run is kept)",
                        template.fields()[i].name,
                        template.source()
                    ),
                    kind: ErrorKind::InvalidInput,
                })
            })
            .collect()
    }

    fn malformed(&self, message: String) -> Error {
        Error::Postgres {
            database: self.database.clone(),
            stage: format!("row {}", self.row + 1),
            sqlstate: None,
            message: format!("malformed {} COPY data: {message}", self.format.name()),
            kind: ErrorKind::Upstream,
        }
    }

    /// Completes every object (the spilled rows written first).
    pub(super) async fn finish(self) -> Result<(Vec<PartitionObject>, PartitionedSummary)> {
        match self.router {
            Router::Text(r) => r.finish().await,
            Router::Parquet(r) => r.finish().await,
        }
    }

    /// The objects completed so far, which a failed run deletes ([`partition::roll_back`]).
    pub(super) fn written(&self) -> partition::Written {
        self.written.clone()
    }

    /// Goes on from the objects and partitions of earlier invocations, after `rows` rows
    /// (errors number rows from there). A CSV run's `header` (the statements after a key
    /// send none) is read first, as the stream's would have been. Call after
    /// [`start`](Self::start).
    pub(super) async fn resume(
        &mut self,
        resume: PartitionsResume,
        header: Option<&str>,
        rows: u64,
    ) -> Result<()> {
        match &mut self.router {
            Router::Text(r) => r.resume(resume),
            Router::Parquet(r) => r.resume(resume),
        }
        if self.format == Format::Csv {
            let Some(header) = header else {
                return Err(Error::Internal {
                    message: "a partitioned CSV export's checkpoint without its header".into(),
                });
            };
            self.chunk(format!("{header}\n").as_bytes()).await?;
        }
        self.row = rows;
        Ok(())
    }

    /// Completes every open object (the spilled rows written first) so that the run can
    /// stop here: what the next invocation goes on from, and a CSV run's header line.
    pub(super) async fn suspend(&mut self) -> Result<(PartitionsResume, Option<String>)> {
        let resume = match &mut self.router {
            Router::Text(r) => r.suspend().await?,
            Router::Parquet(r) => r.suspend().await?,
        };
        let header =
            match &self.router {
                Router::Text(r) => r.objects().header.as_ref().map(|h| {
                    String::from_utf8_lossy(h.strip_suffix(b"\n").unwrap_or(h)).into_owned()
                }),
                Router::Parquet(_) => None,
            };
        Ok((resume, header))
    }

    /// Aborts the open objects (the caller deletes the completed ones).
    pub(super) async fn abort(self) {
        match self.router {
            Router::Text(r) => r.abort().await,
            Router::Parquet(r) => r.abort().await,
        }
    }

    /// Streams every row into the objects of its partition and completes them. Any failure,
    /// a panic included, aborts the open objects and deletes the completed ones.
    pub async fn write(
        mut self,
        stream: postgres::ExportStream,
        s3: &aws_sdk_s3::Client,
        bucket: &str,
        deadline: Option<tokio::time::Instant>,
        counters: Option<Arc<crate::telemetry::Progress>>,
    ) -> Result<(Vec<PartitionObject>, PartitionedSummary)> {
        let written = self.written.clone();
        let copied =
            job::catch_panic("the export", copy(stream, &mut self, deadline, counters)).await;
        let result = match copied {
            Ok(()) => self.finish().await,
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        };
        if result.is_err() {
            partition::roll_back(s3, bucket, &written).await;
        }
        result
    }
}

/// Every chunk of the stream into `out`, waiting for each within the deadline.
async fn copy(
    mut stream: postgres::ExportStream,
    out: &mut PartitionedExport,
    deadline: Option<tokio::time::Instant>,
    counters: Option<Arc<crate::telemetry::Progress>>,
) -> Result<()> {
    use futures::StreamExt;
    let mut reporter = Reporter::new(stream.progress(), counters);
    while let Some(chunk) = job::within(deadline, async { Ok(stream.next().await) }).await? {
        crate::fault::point("export.chunk");
        reporter.report();
        out.chunk(&chunk?).await?;
    }
    reporter.report();
    out.end().await
}

fn wrong_router() -> Error {
    Error::Internal {
        message: "partitioned export: rows of another format than its objects".into(),
    }
}

/// A text value for a formatted `{field:…}`: the date or timestamp Postgres prints
/// (`2026-11-28 10:00:00+00`, an offset of hours only, which RFC 3339 lacks) as a timestamp;
/// anything else as it is, for [`KeyTemplate::segment`] to parse.
fn postgres_time(text: String) -> FieldValue {
    if partition::template::parse_time(&text).is_none() {
        for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
            if let Ok(t) = chrono::DateTime::parse_from_str(&text, format) {
                return FieldValue::Timestamp(t.to_utc());
            }
        }
    }
    FieldValue::Text(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_timestamps_postgres_prints_are_read_in_utc() {
        let at = |h, m| {
            FieldValue::Timestamp(chrono::Utc.with_ymd_and_hms(2026, 11, 28, h, m, 0).unwrap())
        };
        assert_eq!(postgres_time("2026-11-28 10:00:00+00".into()), at(10, 0));
        assert_eq!(postgres_time("2026-11-28 05:30:00-05".into()), at(10, 30));
        assert_eq!(
            postgres_time("2026-11-28 15:30:00.25+05".into()),
            match at(10, 30) {
                FieldValue::Timestamp(t) =>
                    FieldValue::Timestamp(t + chrono::Duration::milliseconds(250)),
                other => other,
            }
        );
        // Forms parse_time reads stay text for it.
        let full = "2026-11-28 15:30:00+05:30";
        assert_eq!(postgres_time(full.into()), FieldValue::Text(full.into()));
        assert!(partition::template::parse_time(full).is_some());
        assert_eq!(
            postgres_time("2026-11-28".into()),
            FieldValue::Text("2026-11-28".into())
        );
        assert_eq!(
            postgres_time("soon".into()),
            FieldValue::Text("soon".into())
        );
    }
}
