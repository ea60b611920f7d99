//! Parquet output: typed rows become Arrow column builders, batches of them become Parquet
//! row groups, and each row group streams into the object's [`ObjectWriter`] as soon as it
//! is encoded — the file is never held whole.
//!
//! - [`TableSchema`] / [`ColumnType`]: the columns and their Parquet types (the transform's
//!   types, Postgres result types, a job's declared or inferred schema).
//! - [`ColumnBuilder`]: one column's values of the batch being built.
//! - [`ParquetWriter`]: the encoder layer over an [`ObjectWriter`]; row groups are flushed at
//!   [`ParquetOptions::row_group_bytes`] ([`MemoryBudget::row_group_cap`]: 8 MiB at
//!   256 MB, `tuning.row_group_mib` overrides it), pages carry min/max/null-count statistics
//!   and strings are dictionary-encoded while their dictionary stays small.
//!
//! Only [`ParquetWriter::finish`] writes the footer and completes the object; an error or a
//! writer dropped unfinished aborts the upload, as with every [`ObjectWriter`].
//!
//! [`ObjectWriter`]: crate::sink::ObjectWriter
//! [`MemoryBudget::row_group_cap`]: crate::MemoryBudget::row_group_cap

mod builder;
mod output;
mod schema;
mod writer;

pub use builder::{ColumnBuilder, date_days};
pub use output::{RecordOutput, RecordsWritten};
pub use schema::{Column, ColumnType, TableSchema};
pub use writer::{
    MAX_COLUMNS, ParquetCodec, ParquetOptions, ParquetSummary, ParquetWriter, ParquetWritten,
};

use crate::budget::MemoryBudget;
use crate::codec::Compression;
use crate::job::Tuning;

/// The options of a job's Parquet output: its `compression` as the page codec and its row
/// group cap from `tuning` and the memory budget.
pub fn options_for(
    compression: Option<Compression>,
    tuning: &Tuning,
    budget: &MemoryBudget,
) -> ParquetOptions {
    ParquetOptions {
        codec: ParquetCodec::from_spec(compression),
        ..ParquetOptions::new(tuning.row_group_cap(budget))
    }
}

#[cfg(test)]
mod tests;
