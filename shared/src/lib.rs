//! # sluice — the streaming core
//!
//! Bytes flow from a source, through decoders and encoders, into an S3 object, with
//! backpressure end to end, so memory stays flat whatever the size of the data. Four jobs are
//! built from the same pieces, one per Lambda function:
//!
//! | job | source | output |
//! |---|---|---|
//! | [`ingest`] (`ingest-http`) | an HTTP API, paginated or not | the body as is, or its records as NDJSON |
//! | [`transform`] (`transform-s3`) | an S3 object (CSV or NDJSON, gzip/zstd) | typed, filtered rows; bad rows in a quarantine |
//! | [`export`] (`export-postgres`) | a Postgres query (`COPY ... TO STDOUT`) | CSV or NDJSON |
//! | [`sweep`] (`sweep-uploads`) | `ListMultipartUploads` | stale uploads aborted, a report |
//!
//! The pieces:
//!
//! - [`sink::ObjectWriter`] is the one way an object is written: bytes pushed in become one
//!   `PutObject` or a multipart upload with a full-object checksum, with bounded parts in
//!   flight and optional compression. Only [`ObjectWriter::finish`](sink::ObjectWriter::finish)
//!   completes an object; an error, the deadline or a writer dropped by a panicking producer
//!   aborts the upload.
//! - [`MemoryBudget`] turns the function's memory into a part size and upload concurrency,
//!   and [`PartSchedule`](budget::PartSchedule) grows parts so 1 TiB fits in 10,000.
//! - [`source`] opens HTTP bodies (retries, rate limits, network policy), S3 objects (pinned to
//!   a version, resumed after a reset) and Postgres `COPY` streams; [`codec`] decodes gzip and
//!   zstd with caps and frames records (JSON paths, NDJSON) with a maximum size.
//! - [`job`] holds what every job does the same way: the [`Invocation`](job::Invocation) and
//!   its deadline, destination and tuning checks, the [`Status`](job::Status) it ends with, its
//!   manifest, and [`catch_panic`](job::catch_panic), which turns a panic into
//!   [`Error::Internal`]. Every failure is one [`Error`] whose [`ErrorKind`] a function reports
//!   as its Lambda error type ([`lambda`], feature `lambda`).
//!
//! Writing an object by hand:
//!
//! ```no_run
//! # async fn example(s3: aws_sdk_s3::Client) -> sluice::Result<()> {
//! use std::sync::Arc;
//! use sluice::codec::{Codec, Compression};
//! use sluice::sink::{ObjectWriter, S3Target, UploadOptions};
//!
//! let mut options = UploadOptions::new(sluice::MemoryBudget::from_env().schedule());
//! options.compression = Some(Compression::new(Codec::Zstd));
//! let target = S3Target::new(s3, "lake", "raw/events.ndjson.zst");
//! let mut writer = ObjectWriter::new(Arc::new(target), &options)?;
//! for line in ["{\"a\":1}\n", "{\"a\":2}\n"] {
//!     writer.write(bytes::Bytes::from(line)).await?; // waits while parts are in flight
//! }
//! let uploaded = writer.finish().await?; // the only call that completes the object
//! println!("{} bytes in {} parts", uploaded.bytes, uploaded.parts);
//! # Ok(()) }
//! ```
//!
//! Running an ingest job (what `ingest-http` does with its event):
//!
//! ```no_run
//! # async fn example() -> sluice::Result<()> {
//! use sluice::{JobSpec, MemoryBudget, ingest, job::Invocation};
//!
//! let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let policy = sluice::source::http::guard::NetworkPolicy::from_env();
//! let ctx = ingest::JobContext {
//!     s3: aws_sdk_s3::Client::new(&conf),
//!     http: sluice::source::http::client(&policy),
//!     http_same_host: sluice::source::http::same_host_client(&policy),
//!     policy,
//!     secrets: std::sync::Arc::new(sluice::secret::SecretResolver::new(&conf)),
//!     budget: MemoryBudget::from_env(),
//!     limiter: None,
//!     invocation: Invocation::new("run-1", None),
//! };
//! let spec = JobSpec::from_json(serde_json::json!({
//!     "source": {"http": {"url": "https://example.com/big.json"}},
//!     "compression": "zstd",
//!     "destination": {"bucket": "lake", "key": "raw/{date}/{run_id}.json.zst"}
//! }))?;
//! let summary = ingest::run(&spec, &ctx).await?;
//! println!("{} bytes in {} parts", summary.bytes_out, summary.parts);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod budget;
pub mod checkpoint;
pub mod checksum;
pub mod codec;
pub mod columnar;
pub mod error;
pub mod export;
pub mod fault;
pub mod format;
pub mod ingest;
pub mod job;
pub mod key;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod partition;
pub mod s3;
pub mod schema;
pub mod secret;
pub mod sink;
pub mod source;
pub mod spec;
pub mod sweep;
pub mod telemetry;
pub mod transform;

pub use budget::MemoryBudget;
pub use error::{Error, ErrorKind, Result};
pub use format::Format;
pub use spec::JobSpec;
