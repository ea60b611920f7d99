//! The benchmark of `make bench` (`sluice-bench`): sluice against the tools users would pick
//! instead, each run inside the same cgroups (an unconstrained box and "Lambda 128 MB",
//! "Lambda 256 MB" and "Lambda 3,538 MB" boxes), against the same nginx source and the same
//! Garage, every output verified.
//!
//! - [`cell`]: the boxes (memory + cpu + cpuacct cgroups) and processes run inside them.
//! - [`source`]: the generated JSON documents nginx serves, one per run, and their checksums.
//! - [`table`]: the transform cases' CSV source in S3, its expected output, the checks.
//! - [`pgtable`]: the export case's table in a throwaway local Postgres.
//! - [`plan`]: settings from the environment, the cases and tools, the run loop, the output
//!   checks (Parquet read back with pyarrow, `bench/peers/parquet_check.py`).
//! - [`report`]: medians, ratios, the JSON, Markdown and README outputs.
//! - [`limits`]: the runner's own sub-modes: the sink alone and the compressor alone.

pub mod cell;
pub mod limits;
pub mod pgtable;
pub mod plan;
pub mod report;
pub mod source;
pub mod table;
