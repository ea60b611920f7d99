//! The text formats sluice writes rows and records in.

use serde::{Deserialize, Serialize};

/// An output format: every job that writes rows or records names one of these.
///
/// `ingest-http` writes records as NDJSON; `transform-s3` and `export-postgres` write CSV (their
/// default) or NDJSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON value per line.
    Ndjson,
}

impl Format {
    /// `csv` or `ndjson`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        }
    }

    /// The MIME type of an uncompressed file in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    /// The default of jobs that write tables: CSV.
    pub fn csv() -> Self {
        Format::Csv
    }
}
