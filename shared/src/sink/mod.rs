//! The S3 sink: a stream of bytes becomes one S3 object, through a single `PutObject` when it
//! fits in one part and a multipart upload otherwise.
//!
//! [`upload`] owns chunking, bounded parts in flight with backpressure, the full-object
//! checksum and the failure rules: any error after `CreateMultipartUpload` aborts the upload
//! (and checks that no late part survived), a reader that fails is never completed, and an
//! upload dropped unfinished is aborted from a spawned task.

mod multipart;
mod target;

pub use multipart::{UploadOptions, Uploaded, upload};
pub use target::{ObjectMeta, ObjectTarget, PartReceipt, PutOutcome, S3Target};
