//! [`ParquetWriter`]: typed rows → Arrow batches → Parquet row groups → an [`ObjectWriter`].

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::builder::ColumnBuilder;
use super::schema::TableSchema;
use crate::codec::{Codec, Compression};
use crate::error::{Error, Result};
use crate::sink::{ObjectWriter, Uploaded};

/// The most columns a Parquet output may have: each costs a builder and an encoder (a few
/// KiB to tens of KiB) whatever the rows, so a schema — declared, inferred from records with
/// a million keys, or a query's — is held to a number that fits the smallest budget.
pub const MAX_COLUMNS: usize = 1000;

/// Rows gathered in the column builders before they are encoded as one Arrow batch.
const BATCH_ROWS: usize = 8192;
/// Page size limits: Parquet's usual 1 MiB, lowered for wide tables so that one page
/// buffer per column stays within a quarter of the row group cap.
const MAX_PAGE_BYTES: usize = 1024 * 1024;
const MIN_PAGE_BYTES: usize = 64 * 1024;

/// Encoded bytes go into chunks of this size, handed to the upload one by one: a row group
/// is never copied into one growing buffer (which would briefly hold it one and a half times
/// over while it reallocates).
const OUT_CHUNK: usize = 1024 * 1024;

/// The encoder's output: full chunks waiting for the upload, and the one filling.
#[derive(Default)]
struct Chunks {
    full: Vec<Bytes>,
    filling: Vec<u8>,
}

impl std::io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            if self.filling.capacity() == 0 {
                self.filling.reserve_exact(OUT_CHUNK);
            }
            let room = OUT_CHUNK - self.filling.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.filling.extend_from_slice(now);
            rest = later;
            if self.filling.len() == OUT_CHUNK {
                self.full
                    .push(Bytes::from(std::mem::take(&mut self.filling)));
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Chunks {
    /// Everything written so far, in order.
    fn take(&mut self) -> Vec<Bytes> {
        if !self.filling.is_empty() {
            self.full
                .push(Bytes::from(std::mem::take(&mut self.filling)));
        }
        std::mem::take(&mut self.full)
    }
}

/// The compression codec inside a Parquet file (it never wraps the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetCodec {
    /// Zstandard at a level (1–19); the default, at 3.
    Zstd(i32),
    /// Snappy.
    Snappy,
    /// gzip at a level (1–9).
    Gzip(i32),
    /// Uncompressed pages.
    None,
}

impl ParquetCodec {
    /// The codec a job's `compression` names: absent is zstd at 3.
    pub fn from_spec(compression: Option<Compression>) -> Self {
        match compression {
            None => ParquetCodec::Zstd(3),
            Some(c) => match c.codec {
                Codec::Zstd => ParquetCodec::Zstd(c.level),
                Codec::Gzip => ParquetCodec::Gzip(c.level),
                Codec::Snappy => ParquetCodec::Snappy,
                Codec::None => ParquetCodec::None,
            },
        }
    }

    /// `zstd`, `snappy`, `gzip` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            ParquetCodec::Zstd(_) => "zstd",
            ParquetCodec::Snappy => "snappy",
            ParquetCodec::Gzip(_) => "gzip",
            ParquetCodec::None => "none",
        }
    }

    fn parquet(self) -> Result<ParquetCompression> {
        let bad = |e: parquet::errors::ParquetError| Error::spec(format!("compression: {e}"));
        Ok(match self {
            ParquetCodec::Zstd(level) => {
                ParquetCompression::ZSTD(ZstdLevel::try_new(level).map_err(bad)?)
            }
            ParquetCodec::Gzip(level) => {
                ParquetCompression::GZIP(GzipLevel::try_new(level.unsigned_abs()).map_err(bad)?)
            }
            ParquetCodec::Snappy => ParquetCompression::SNAPPY,
            ParquetCodec::None => ParquetCompression::UNCOMPRESSED,
        })
    }
}

/// How a [`ParquetWriter`] lays out its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParquetOptions {
    /// The page codec. Default zstd at level 3.
    pub codec: ParquetCodec,
    /// A row group is flushed into the upload when its buffered size (encoded pages, open
    /// pages and dictionaries, as the encoder estimates them) reaches this many bytes.
    /// Default [`MemoryBudget::row_group_cap`](crate::MemoryBudget::row_group_cap).
    pub row_group_bytes: usize,
    /// ... or when it holds this many rows. Default 1,048,576.
    pub row_group_rows: usize,
}

impl ParquetOptions {
    /// Options with `row_group_bytes` and the defaults above.
    pub fn new(row_group_bytes: usize) -> Self {
        ParquetOptions {
            codec: ParquetCodec::Zstd(3),
            row_group_bytes: row_group_bytes.max(1),
            row_group_rows: 1 << 20,
        }
    }

    fn properties(&self, columns: usize) -> Result<WriterProperties> {
        let page =
            (self.row_group_bytes / 4 / columns.max(1)).clamp(MIN_PAGE_BYTES, MAX_PAGE_BYTES);
        Ok(WriterProperties::builder()
            .set_compression(self.codec.parquet()?)
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_dictionary_enabled(true)
            .set_dictionary_page_size_limit(page)
            .set_data_page_size_limit(page)
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)))
            .set_max_row_group_bytes(Some(self.row_group_bytes.max(1)))
            .set_created_by(format!("sluice {}", env!("CARGO_PKG_VERSION")))
            .build())
    }
}

/// What a finished [`ParquetWriter`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetWritten {
    /// The object, as the [`ObjectWriter`] completed it.
    pub uploaded: Uploaded,
    /// The file's layout.
    pub summary: ParquetSummary,
}

/// The Parquet figures of a job's summary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParquetSummary {
    /// Rows in the file.
    pub rows: u64,
    /// Row groups in the file.
    pub row_groups: usize,
    /// The largest row group, compressed, in bytes.
    pub max_row_group_bytes: u64,
    /// The page codec: `zstd`, `snappy`, `gzip` or `none`.
    pub codec: &'static str,
    /// `[name, type]` of every column.
    pub columns: Vec<(String, String)>,
}

/// Writes one Parquet file into an [`ObjectWriter`], row group by row group.
///
/// Rows are appended column by column to [`columns`](Self::columns) and closed with
/// [`end_row`](Self::end_row). Every [`BATCH_ROWS`] rows (or about a quarter of the row
/// group cap of values) the builders become one Arrow batch, which the Parquet encoder
/// takes; once its buffered row group reaches [`ParquetOptions::row_group_bytes`] (or
/// `row_group_rows`), the row group is encoded and its bytes go into the upload. Memory is so
/// about one row group, one batch and the upload's parts, whatever the number of rows.
///
/// As with the [`ObjectWriter`] underneath, only [`finish`](Self::finish) completes the
/// object (the Parquet footer is written then); an error aborts the upload, and dropping the
/// writer unfinished aborts it too.
pub struct ParquetWriter {
    columns: Vec<ColumnBuilder>,
    schema: SchemaRef,
    /// `None` once spent (finished or failed).
    encoder: Option<ArrowWriter<Chunks>>,
    out: Option<ObjectWriter>,
    options: ParquetOptions,
    described: Vec<(String, String)>,
    /// Set by [`close`](Self::close): the footer is written, only completing remains.
    closed: Option<ParquetSummary>,
    batch_rows: usize,
    batch_bytes: usize,
    rows: u64,
}

impl std::fmt::Debug for ParquetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetWriter")
            .field("columns", &self.columns.len())
            .field("rows", &self.rows)
            .field("out", &self.out)
            .finish()
    }
}

impl ParquetWriter {
    /// A writer of `schema` into `out`. Nothing is uploaded before the first row group fills.
    pub fn new(schema: &TableSchema, options: ParquetOptions, out: ObjectWriter) -> Result<Self> {
        if schema.columns.len() > MAX_COLUMNS {
            return Err(Error::spec(format!(
                "a Parquet output may have at most {MAX_COLUMNS} columns; this one has {} (select the columns it needs)",
                schema.columns.len()
            )));
        }
        let arrow = schema.arrow();
        let props = options.properties(schema.columns.len())?;
        let encoder = ArrowWriter::try_new(Chunks::default(), arrow.clone(), Some(props))
            .map_err(|e| parquet_error(&out, &e))?;
        Ok(ParquetWriter {
            columns: schema
                .columns
                .iter()
                .map(|c| ColumnBuilder::new(&c.ty))
                .collect(),
            schema: arrow,
            encoder: Some(encoder),
            out: Some(out),
            options,
            described: schema.describe(),
            closed: None,
            batch_rows: 0,
            batch_bytes: 0,
            rows: 0,
        })
    }

    /// The column builders; a row appends one value to each, then calls
    /// [`end_row`](Self::end_row).
    pub fn columns(&mut self) -> &mut [ColumnBuilder] {
        &mut self.columns
    }

    /// Rows ended so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// An upper bound of the file's size were it finished now: what is in the upload, the
    /// row group being encoded, the rows not yet encoded (at their value size) and room for
    /// the footer. Used to finish a file before it passes a size.
    pub fn size_bound(&self) -> u64 {
        let uploaded = self.out.as_ref().map_or(0, ObjectWriter::size_bound);
        let encoding = self.encoder.as_ref().map_or(0, |e| e.memory_size() as u64);
        let footer = 64 * 1024 + 1024 * self.columns.len() as u64;
        uploaded + encoding + self.batch_bytes as u64 + footer
    }

    /// Ends a row of about `bytes` bytes of values; encodes a batch and uploads a row group
    /// when they are due. On error the upload has been aborted.
    pub async fn end_row(&mut self, bytes: usize) -> Result<()> {
        self.rows += 1;
        self.batch_rows += 1;
        self.batch_bytes += bytes;
        if self.batch_rows >= BATCH_ROWS || self.batch_bytes >= self.options.row_group_bytes / 4 {
            self.encode_batch().await?;
        }
        Ok(())
    }

    /// Encodes the rows in the builders, and uploads what the encoder has flushed.
    async fn encode_batch(&mut self) -> Result<()> {
        if self.batch_rows == 0 {
            return Ok(());
        }
        crate::fault::point("parquet.batch");
        let arrays = self.columns.iter_mut().map(|c| c.finish()).collect();
        self.batch_rows = 0;
        self.batch_bytes = 0;
        let result = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| e.to_string())
            .and_then(|batch| {
                let encoder = self
                    .encoder
                    .as_mut()
                    .ok_or("write after the writer finished")?;
                encoder.write(&batch).map_err(|e| e.to_string())?;
                // The encoder's own byte limit counts encoded pages; this one also counts
                // the open pages and dictionaries it holds.
                if encoder.memory_size() >= self.options.row_group_bytes {
                    encoder.flush().map_err(|e| e.to_string())?;
                }
                Ok(())
            });
        if let Err(message) = result {
            return Err(self.fail(message).await);
        }
        self.upload_flushed().await
    }

    /// Moves the bytes the encoder has written (whole row groups) into the upload.
    async fn upload_flushed(&mut self) -> Result<()> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Err(self.fail("write after the writer finished".into()).await);
        };
        if let Err(e) = encoder.sync() {
            return Err(self.fail(e.to_string()).await);
        }
        for chunk in encoder.inner_mut().take() {
            let Some(out) = self.out.as_mut() else {
                return Err(self.fail("write after the writer finished".into()).await);
            };
            if let Err(e) = out.write(chunk).await {
                // The object writer aborted its upload already.
                self.out = None;
                self.encoder = None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Encodes the last rows and the footer into the upload, without completing it: after
    /// this only S3's `CompleteMultipartUpload` (or `PutObject`) remains, so a job can
    /// complete what must land first (a quarantine) knowing the file itself is whole. A panic
    /// in the encoder is [`Error::Internal`]; on any error the upload has been aborted.
    pub async fn close(&mut self) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        match crate::job::catch_panic("the Parquet encoder", self.close_inner()).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Some(out) = self.out.take() {
                    out.abort().await;
                }
                self.encoder = None;
                Err(e)
            }
        }
    }

    async fn close_inner(&mut self) -> Result<()> {
        self.encode_batch().await?;
        let closed = match self.encoder.as_mut() {
            Some(encoder) => encoder.finish().map_err(|e| e.to_string()),
            None => Err("close after the writer failed".into()),
        };
        let metadata = match closed {
            Ok(m) => m,
            Err(message) => return Err(self.fail(message).await),
        };
        self.upload_flushed().await?;
        let row_groups = metadata.row_groups();
        self.closed = Some(ParquetSummary {
            rows: self.rows,
            row_groups: row_groups.len(),
            max_row_group_bytes: row_groups
                .iter()
                .map(|g| u64::try_from(g.compressed_size()).unwrap_or(0))
                .max()
                .unwrap_or(0),
            codec: self.options.codec.name(),
            columns: std::mem::take(&mut self.described),
        });
        self.encoder = None;
        Ok(())
    }

    /// Writes the last rows and the footer ([`close`](Self::close), if not done yet) and
    /// completes the object. The only call that does.
    pub async fn finish(mut self) -> Result<ParquetWritten> {
        self.close().await?;
        let (Some(out), Some(summary)) = (self.out.take(), self.closed.take()) else {
            return Err(Error::Internal {
                message: "parquet: finish after the writer failed".into(),
            });
        };
        Ok(ParquetWritten {
            uploaded: out.finish().await?,
            summary,
        })
    }

    /// Aborts the upload and waits until it is gone.
    pub async fn abort(mut self) {
        self.encoder = None;
        if let Some(out) = self.out.take() {
            out.abort().await;
        }
    }

    async fn fail(&mut self, message: String) -> Error {
        self.encoder = None;
        let error = match &self.out {
            Some(out) => parquet_error(out, &message),
            None => Error::Internal {
                message: format!("parquet: {message}"),
            },
        };
        if let Some(out) = self.out.take() {
            out.abort().await;
        }
        error
    }
}

fn parquet_error(out: &ObjectWriter, e: &dyn std::fmt::Display) -> Error {
    let (bucket, key) = out.object();
    Error::Internal {
        message: format!("s3://{bucket}/{key}: the Parquet encoder failed: {e}"),
    }
}
