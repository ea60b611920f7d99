//! The Parquet layer against an in-memory target: files read back by the parquet crate's
//! own reader, row groups within the cap, and an unfinished writer completing nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::checksum::{ChecksumAlgorithm, Crc};
use crate::error::Result;
use crate::sink::{ObjectHead, ObjectTarget, ObjectWriter, PartReceipt, PutOutcome, UploadOptions};
use crate::transform::value::Value;

/// Keeps what is written; `objects` holds only completed objects.
#[derive(Default)]
struct Memory {
    objects: Mutex<Option<Vec<u8>>>,
    parts: Mutex<BTreeMap<i32, Bytes>>,
    aborted: Mutex<bool>,
}

struct Target(Arc<Memory>);

impl ObjectTarget for Target {
    fn describe(&self) -> (String, String) {
        ("lake".into(), "t.parquet".into())
    }
    fn put(&self, body: Bytes, checksum: Crc, _: bool) -> BoxFuture<'static, Result<PutOutcome>> {
        *self.0.objects.lock().unwrap() = Some(body.to_vec());
        async move {
            Ok(PutOutcome::Written {
                e_tag: "\"e\"".into(),
                checksum: Some(checksum.to_base64()),
            })
        }
        .boxed()
    }
    fn create_multipart(&self, _: ChecksumAlgorithm) -> BoxFuture<'static, Result<String>> {
        async { Ok("u".to_owned()) }.boxed()
    }
    fn upload_part(
        &self,
        _: &str,
        n: i32,
        body: Bytes,
        checksum: Crc,
    ) -> BoxFuture<'static, Result<PartReceipt>> {
        self.0.parts.lock().unwrap().insert(n, body);
        async move {
            Ok(PartReceipt {
                part_number: n,
                e_tag: format!("p{n}"),
                checksum,
            })
        }
        .boxed()
    }
    fn complete_multipart(
        &self,
        _: &str,
        _: Vec<PartReceipt>,
        checksum: Crc,
        _: bool,
    ) -> BoxFuture<'static, Result<PutOutcome>> {
        let whole: Vec<u8> = self
            .0
            .parts
            .lock()
            .unwrap()
            .values()
            .flat_map(|b| b.to_vec())
            .collect();
        *self.0.objects.lock().unwrap() = Some(whole);
        async move {
            Ok(PutOutcome::Written {
                e_tag: "\"e-2\"".into(),
                checksum: Some(checksum.to_base64()),
            })
        }
        .boxed()
    }
    fn abort_multipart(&self, _: &str) -> BoxFuture<'static, Result<()>> {
        *self.0.aborted.lock().unwrap() = true;
        async { Ok(()) }.boxed()
    }
    fn upload_exists(&self, _: &str) -> BoxFuture<'static, Result<bool>> {
        async { Ok(false) }.boxed()
    }
    fn head(&self) -> BoxFuture<'static, Result<Option<ObjectHead>>> {
        async { Ok(None) }.boxed()
    }
}

fn schema() -> TableSchema {
    TableSchema::new(vec![
        Column::new("id", ColumnType::Int64),
        Column::new("amount", ColumnType::Float64),
        Column::new("state", ColumnType::String),
        Column::new("day", ColumnType::Date),
        Column::new("at", ColumnType::Timestamp { utc: true }),
    ])
}

fn writer(memory: &Arc<Memory>, row_group_bytes: usize) -> ParquetWriter {
    writer_with(memory, ParquetOptions::new(row_group_bytes))
}

fn writer_with(memory: &Arc<Memory>, parquet: ParquetOptions) -> ParquetWriter {
    let options = UploadOptions::new(crate::MemoryBudget::for_memory_mib(256).schedule());
    let out = ObjectWriter::new(Arc::new(Target(memory.clone())), &options).unwrap();
    ParquetWriter::new(&schema(), parquet, out).unwrap()
}

fn row(i: i64) -> Vec<Value> {
    let day =
        chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new((i % 365) as u64);
    vec![
        Value::Int(i),
        if i % 10 == 0 {
            Value::Null
        } else {
            Value::Float(i as f64 / 4.0)
        },
        Value::Str(["NJ", "NY", "CT"][(i % 3) as usize].into()),
        Value::Date(day),
        Value::Timestamp(chrono::DateTime::from_timestamp(1_700_000_000 + i, 0).unwrap()),
    ]
}

async fn write_rows(w: &mut ParquetWriter, n: i64) {
    for i in 0..n {
        for (c, v) in w.columns().iter_mut().zip(row(i)) {
            c.append_value(&v).unwrap();
        }
        w.end_row(40).await.unwrap();
    }
}

#[tokio::test]
async fn rows_read_back_with_their_types_and_row_groups_stay_within_the_cap() {
    let memory = Arc::new(Memory::default());
    let cap = 256 * 1024;
    let mut w = writer(&memory, cap);
    let n = 300_000;
    write_rows(&mut w, n).await;
    let written = w.finish().await.unwrap();
    assert_eq!(written.summary.rows, n as u64);
    assert!(written.summary.row_groups > 1, "{written:?}");
    let file = Bytes::from(memory.objects.lock().unwrap().clone().expect("completed"));
    assert_eq!(file.len() as u64, written.uploaded.bytes);
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let meta = builder.metadata().clone();
    assert_eq!(meta.file_metadata().num_rows(), n);
    for g in meta.row_groups() {
        // The cap counts buffered bytes; a row group is flushed once it passes it, so it
        // ends at most one batch over.
        assert!(
            (g.compressed_size() as usize) < 2 * cap,
            "row group of {}",
            g.compressed_size()
        );
        let stats = g.column(0).statistics().expect("statistics are written");
        assert!(stats.min_bytes_opt().is_some() && stats.max_bytes_opt().is_some());
    }
    assert_eq!(
        meta.row_group(0)
            .column(1)
            .statistics()
            .unwrap()
            .null_count_opt(),
        Some((meta.row_group(0).num_rows() as u64).div_ceil(10))
    );
    let (mut ids, mut sum, mut rows) = (0i64, 0f64, 0usize);
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        rows += batch.num_rows();
        ids += batch
            .column(0)
            .as_primitive::<Int64Type>()
            .iter()
            .flatten()
            .sum::<i64>();
        sum += batch
            .column(1)
            .as_primitive::<Float64Type>()
            .iter()
            .flatten()
            .sum::<f64>();
        let days = batch.column(3).as_primitive::<Date32Type>();
        assert_eq!(
            days.value(0),
            date_days(chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap())
                + (ids_at(&batch) % 365) as i32
        );
        let at = batch.column(4).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(at.value(0), (1_700_000_000 + ids_at(&batch)) * 1_000_000);
    }
    assert_eq!(rows, n as usize);
    assert_eq!(ids, (0..n).sum::<i64>());
    let expected: f64 = (0..n).filter(|i| i % 10 != 0).map(|i| i as f64 / 4.0).sum();
    assert_eq!(sum, expected);
}

fn ids_at(batch: &arrow_array::RecordBatch) -> i64 {
    batch.column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn a_writer_dropped_unfinished_completes_nothing() {
    let memory = Arc::new(Memory::default());
    // Uncompressed pages, so that the file passes a part (8 MiB) and an upload starts.
    let mut w = writer_with(
        &memory,
        ParquetOptions {
            codec: ParquetCodec::None,
            ..ParquetOptions::new(1 << 20)
        },
    );
    write_rows(&mut w, 600_000).await;
    // Parts upload on their own tasks.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !memory.parts.lock().unwrap().is_empty(),
        "row groups were uploading"
    );
    drop(w);
    crate::sink::settle_aborts().await;
    assert!(memory.objects.lock().unwrap().is_none());
    assert!(*memory.aborted.lock().unwrap());
}

#[tokio::test]
async fn an_empty_file_is_valid_parquet() {
    let memory = Arc::new(Memory::default());
    let w = writer(&memory, 1 << 20);
    let written = w.finish().await.unwrap();
    assert_eq!((written.summary.rows, written.summary.row_groups), (0, 0));
    let file = Bytes::from(memory.objects.lock().unwrap().clone().unwrap());
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    assert_eq!(builder.schema().fields().len(), 5);
}

#[test]
fn codecs_from_the_spec() {
    use crate::codec::{Codec, Compression};
    assert_eq!(ParquetCodec::from_spec(None), ParquetCodec::Zstd(3));
    assert_eq!(
        ParquetCodec::from_spec(Some(Compression::new(Codec::Snappy))),
        ParquetCodec::Snappy
    );
    assert_eq!(
        ParquetCodec::from_spec(Some(Compression::new(Codec::None))),
        ParquetCodec::None
    );
    assert_eq!(
        ParquetCodec::from_spec(Some(Compression::new(Codec::Gzip))),
        ParquetCodec::Gzip(1)
    );
}

#[test]
fn more_columns_than_the_cap_are_refused_naming_the_count() {
    let memory = Arc::new(Memory::default());
    let options = UploadOptions::new(crate::MemoryBudget::for_memory_mib(256).schedule());
    let out = ObjectWriter::new(Arc::new(Target(memory)), &options).unwrap();
    let wide = TableSchema::new(
        (0..=MAX_COLUMNS)
            .map(|i| Column::new(format!("c{i}"), ColumnType::Int64))
            .collect(),
    );
    let e = ParquetWriter::new(&wide, ParquetOptions::new(1 << 20), out).unwrap_err();
    assert!(
        e.to_string()
            .contains("at most 1000 columns; this one has 1001"),
        "{e}"
    );
}
