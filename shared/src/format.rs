//! The formats sluice writes rows and records in.

use serde::{Deserialize, Serialize};

use crate::codec::Compression;
use crate::error::{Error, Result};

/// An output format: every job that writes rows or records names one of these.
///
/// `ingest-http` writes records as NDJSON (default) or Parquet; `transform-s3` and
/// `export-postgres` write CSV (their default), NDJSON or Parquet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON value per line.
    Ndjson,
    /// Apache Parquet: typed columns, row groups streamed into the upload
    /// ([`crate::columnar`]); `compression` names the page codec.
    Parquet,
}

impl Format {
    /// `csv` or `ndjson`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
            Format::Parquet => "parquet",
        }
    }

    /// The MIME type of an uncompressed file in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Ndjson => "application/x-ndjson",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// The `Content-Type` of an object in this format with `compression` (a Parquet file
    /// compresses its pages, so it stays a Parquet file).
    pub fn object_content_type(self, compression: Option<Compression>) -> &'static str {
        match compression {
            Some(c) if self != Format::Parquet && c.codec.wraps_stream() => c.codec.content_type(),
            _ => self.content_type(),
        }
    }

    /// The compression that wraps the output stream: none for Parquet (its codec is inside the
    /// file) and for `"none"`.
    pub fn stream_compression(self, compression: Option<Compression>) -> Option<Compression> {
        compression.filter(|c| self != Format::Parquet && c.codec.wraps_stream())
    }

    /// Refuses a Parquet-only codec (`snappy`) for a text format, naming `field`.
    pub fn check_compression(self, field: &str, compression: Option<Compression>) -> Result<()> {
        match compression {
            Some(c) if self != Format::Parquet && c.codec == crate::codec::Codec::Snappy => {
                Err(Error::spec(format!(
                    "{field}: snappy is a Parquet page codec (format parquet); {} output takes gzip or zstd",
                    self.name()
                )))
            }
            _ => Ok(()),
        }
    }

    /// The default of jobs that write tables: CSV.
    pub fn csv() -> Self {
        Format::Csv
    }
}
