//! The S3 sink: bytes pushed into an [`ObjectWriter`] become one S3 object, through a single
//! `PutObject` when they fit in one part and a multipart upload otherwise.
//!
//! The writer owns chunking, bounded parts in flight with backpressure, optional compression,
//! the full-object checksum and the failure rules: only [`ObjectWriter::finish`] completes an
//! object; any error after `CreateMultipartUpload` aborts the upload (and checks that no late
//! part survived); a writer dropped unfinished is aborted from a task that
//! [`settle_aborts`] waits for. [`upload`] copies an [`AsyncRead`](tokio::io::AsyncRead) through
//! a writer, for byte-for-byte copies.

mod parts;
mod target;
mod writer;

use std::sync::Arc;

pub(crate) use parts::pending_aborts;
pub use parts::{CLEANUP_GRACE, CLEANUP_MAX, StopAt, Suspended, settle_aborts};
pub use target::{ObjectHead, ObjectMeta, ObjectTarget, PartReceipt, PutOutcome, S3Target};
pub use writer::{Copied, ObjectWriter, UploadOptions, Uploaded};

use crate::error::{Error, Result};

/// Streams `reader` into `target` through an [`ObjectWriter`] and finishes it: the pull
/// adapter for byte copies. A read error is mapped with `read_error`, and the upload is
/// aborted; the object is completed only when the reader reached its end.
pub async fn upload<R, F>(
    target: Arc<dyn ObjectTarget>,
    reader: R,
    options: &UploadOptions,
    read_error: F,
) -> Result<Uploaded>
where
    R: tokio::io::AsyncRead + Unpin + Send,
    F: Fn(std::io::Error) -> Error,
{
    ObjectWriter::new(target, options)?
        .copy(reader, read_error)
        .await
}

#[cfg(test)]
mod tests;
