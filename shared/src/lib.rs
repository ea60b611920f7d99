//! # sluice — the streaming core
//!
//! Bytes flow from a source, through decoders and encoders, into an S3 object, with
//! backpressure end to end, so memory stays flat whatever the size of the data.
//!
//! - [`MemoryBudget`] turns the function's memory into a part size and upload concurrency,
//!   and [`PartSchedule`](budget::PartSchedule) grows parts so 1 TiB fits in 10,000.
//! - [`source::http`] opens a streaming HTTP body, checking its status before anything is written.
//! - [`codec`] decodes `Content-Encoding` (multi-member gzip, zstd) and compresses the output.
//! - [`sink::upload`] writes the stream as one `PutObject` or a multipart upload with a
//!   full-object checksum, aborting on every failure path.
//! - [`ingest::run`] ties them together for a [`JobSpec`] and returns a [`Summary`](ingest::Summary).
//!
//! ```no_run
//! # async fn example() -> sluice::Result<()> {
//! use sluice::{JobSpec, MemoryBudget, ingest};
//!
//! let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let policy = sluice::source::guard::NetworkPolicy::from_env();
//! let ctx = ingest::JobContext {
//!     s3: aws_sdk_s3::Client::new(&conf),
//!     http: sluice::source::http::client(&policy),
//!     http_same_host: sluice::source::http::same_host_client(&policy),
//!     policy,
//!     secrets: std::sync::Arc::new(sluice::secret::SecretResolver::new(&conf)),
//!     budget: MemoryBudget::from_env(),
//!     limiter: None,
//!     run_id: "run-1".into(),
//!     started: chrono::Utc::now(),
//!     deadline: None,
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

pub mod auth;
pub mod batch;
pub mod budget;
pub mod checksum;
pub mod codec;
pub mod error;
pub mod export;
pub mod fault;
pub mod ingest;
pub mod job;
pub mod key;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod paginate;
pub mod s3;
pub mod secret;
pub mod sink;
pub mod source;
pub mod spec;
pub mod state;
pub mod sweep;
pub mod telemetry;
pub mod transform;

pub use budget::MemoryBudget;
pub use error::{Error, ErrorKind, Result};
pub use spec::JobSpec;
