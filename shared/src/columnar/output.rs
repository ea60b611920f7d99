//! [`RecordOutput`]: the output object of a job that writes rows, as text or as Parquet.

use bytes::Bytes;

use super::writer::{ParquetSummary, ParquetWriter};
use super::{ColumnBuilder, ParquetOptions, TableSchema};
use crate::error::{Error, Result};
use crate::sink::{ObjectWriter, Uploaded};
use crate::transform::value::Value;

/// Where a job's rows go: rendered text (CSV, NDJSON) pushed into an [`ObjectWriter`], or a
/// [`ParquetWriter`] on top of one. Either way only [`finish`](Self::finish) completes the
/// object, and dropping it unfinished aborts the upload.
#[derive(Debug)]
pub enum RecordOutput {
    /// CSV or NDJSON bytes.
    Text(ObjectWriter),
    /// A Parquet output whose columns are not known yet (they follow from a CSV header, or
    /// from the first records); [`set_schema`](Self::set_schema) starts it.
    ParquetPending(ObjectWriter, ParquetOptions),
    /// Parquet row groups.
    Parquet(Box<ParquetWriter>),
    /// Spent: a call failed and the upload was aborted.
    Spent,
}

/// What a finished [`RecordOutput`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsWritten {
    /// The object.
    pub uploaded: Uploaded,
    /// For Parquet: rows, row groups and the largest row group.
    pub parquet: Option<ParquetSummary>,
}

impl RecordOutput {
    /// A Parquet output of `schema` into `out`.
    pub fn parquet(
        schema: &TableSchema,
        options: ParquetOptions,
        out: ObjectWriter,
    ) -> Result<Self> {
        Ok(RecordOutput::Parquet(Box::new(ParquetWriter::new(
            schema, options, out,
        )?)))
    }

    /// Starts a pending Parquet output with its columns; nothing for text, or when started.
    pub fn set_schema(&mut self, schema: &TableSchema) -> Result<()> {
        if !matches!(self, RecordOutput::ParquetPending(..)) {
            return Ok(());
        }
        let RecordOutput::ParquetPending(out, options) =
            std::mem::replace(self, RecordOutput::Spent)
        else {
            return Ok(());
        };
        *self = RecordOutput::Parquet(Box::new(ParquetWriter::new(schema, options, out)?));
        Ok(())
    }

    /// Appends rendered text. Parquet takes rows instead: an `Internal` error.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        match self {
            RecordOutput::Text(w) => w.write(data).await,
            _ => Err(Error::Internal {
                message: "text written to a Parquet output".into(),
            }),
        }
    }

    /// Appends one row of typed values (Parquet only; `Ok(false)` for text, which the
    /// caller renders itself). A value that does not fit its column is an `Internal` error
    /// (the row was typed against another schema) and aborts the upload.
    pub async fn row(&mut self, row: &[Value]) -> Result<bool> {
        let w = match self {
            RecordOutput::Parquet(w) => w,
            RecordOutput::Text(_) => return Ok(false),
            _ => return Err(not_started()),
        };
        let mut bytes = 0;
        let mut misfit = None;
        for (i, (c, v)) in w.columns().iter_mut().zip(row).enumerate() {
            bytes += match v {
                Value::Str(s) => s.len() + 4,
                _ => 8,
            };
            if let Err(e) = c.append_value(v) {
                misfit.get_or_insert((i, e));
            }
        }
        if let Some((i, e)) = misfit {
            return Err(Error::Internal {
                message: format!("Parquet output, column {}: {e}", i + 1),
            });
        }
        w.end_row(bytes).await?;
        Ok(true)
    }

    /// The Parquet column builders (for sources that append their own types), or `None`.
    pub fn columns(&mut self) -> Option<&mut [ColumnBuilder]> {
        match self {
            RecordOutput::Parquet(w) => Some(w.columns()),
            _ => None,
        }
    }

    /// Ends a row appended through [`columns`](Self::columns).
    pub async fn end_row(&mut self, bytes: usize) -> Result<()> {
        match self {
            RecordOutput::Parquet(w) => w.end_row(bytes).await,
            RecordOutput::Text(_) => Ok(()),
            _ => Err(not_started()),
        }
    }

    /// An upper bound of the object's size were it finished now
    /// ([`ObjectWriter::size_bound`], [`ParquetWriter::size_bound`]).
    pub fn size_bound(&self) -> u64 {
        match self {
            RecordOutput::Text(w) | RecordOutput::ParquetPending(w, _) => w.size_bound(),
            RecordOutput::Parquet(w) => w.size_bound(),
            RecordOutput::Spent => 0,
        }
    }

    /// Suspends a text output's upload for a checkpoint ([`ObjectWriter::suspend`]); the
    /// output is spent until [`resume_text`](Self::resume_text). A Parquet output cannot be
    /// suspended (an `Internal` error; its upload is aborted).
    pub async fn suspend(&mut self) -> Result<crate::sink::Suspended> {
        match std::mem::replace(self, RecordOutput::Spent) {
            RecordOutput::Text(w) => w.suspend().await,
            other => {
                other.abort().await;
                Err(Error::Internal {
                    message: "a Parquet output cannot be suspended".into(),
                })
            }
        }
    }

    /// A text output again, writing with `writer` (a resumed upload).
    pub fn resume_text(&mut self, writer: ObjectWriter) {
        *self = RecordOutput::Text(writer);
    }

    /// Whether this is a Parquet output.
    pub fn is_parquet(&self) -> bool {
        matches!(
            self,
            RecordOutput::Parquet(_) | RecordOutput::ParquetPending(..)
        )
    }

    /// For Parquet, encodes the last rows and the footer into the upload
    /// ([`ParquetWriter::close`]); text has nothing left to encode. Call it before completing
    /// anything that must land only with this object (a quarantine). On error the upload has
    /// been aborted.
    pub async fn seal(&mut self) -> Result<()> {
        match self {
            RecordOutput::Parquet(w) => w.close().await,
            RecordOutput::Text(_) => Ok(()),
            _ => Err(not_started()),
        }
    }

    /// Completes the object (for Parquet, after the last row group and the footer). The only
    /// call that does.
    pub async fn finish(self) -> Result<RecordsWritten> {
        match self {
            RecordOutput::Text(w) => Ok(RecordsWritten {
                uploaded: w.finish().await?,
                parquet: None,
            }),
            RecordOutput::Parquet(w) => {
                let written = w.finish().await?;
                Ok(RecordsWritten {
                    uploaded: written.uploaded,
                    parquet: Some(written.summary),
                })
            }
            RecordOutput::ParquetPending(w, _) => {
                w.abort().await;
                Err(not_started())
            }
            RecordOutput::Spent => Err(not_started()),
        }
    }

    /// Aborts the upload and waits until it is gone.
    pub async fn abort(self) {
        match self {
            RecordOutput::Text(w) | RecordOutput::ParquetPending(w, _) => w.abort().await,
            RecordOutput::Parquet(w) => w.abort().await,
            RecordOutput::Spent => {}
        }
    }
}

fn not_started() -> Error {
    Error::Internal {
        message: "a Parquet output was used before its columns were known".into(),
    }
}
