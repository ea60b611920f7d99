//! The quarantine: rows that failed, as NDJSON records in their own S3 object, written through
//! a second writer that starts only when the first bad row appears.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::reader::Position;
use crate::MemoryBudget;
use crate::budget::MIN_PART_SIZE;
use crate::error::{Error, Result};
use crate::sink::{ObjectMeta, ObjectWriter, S3Target, Suspended, UploadOptions, Uploaded};

const CHUNK: usize = 64 * 1024;

/// One quarantined row, as written (one JSON object per line).
#[derive(Debug, Serialize)]
pub struct BadRow<'a> {
    /// `s3://bucket/key` of the source.
    pub source: &'a str,
    /// 1-based line where the row starts in the decoded source.
    pub line: u64,
    /// Byte offset where the row starts in the decoded source.
    pub offset: u64,
    /// 1-based record number (a CSV header is record 1).
    pub record: u64,
    /// The column at fault, when there is one.
    pub column: Option<&'a str>,
    /// What is wrong.
    pub reason: &'a str,
    /// The row as read (invalid UTF-8 replaced by U+FFFD), cut to `max_raw_bytes`.
    pub raw: String,
    /// Whether `raw` was cut.
    pub raw_truncated: bool,
}

/// Writes bad rows to `bucket/key` through its own [`ObjectWriter`]; nothing is created until
/// the first one, and the object is completed only by [`Quarantine::finish`].
pub struct Quarantine {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    source: String,
    raw_cap: usize,
    options: UploadOptions,
    writer: Option<ObjectWriter>,
    buf: Vec<u8>,
    count: u64,
}

impl Quarantine {
    /// A quarantine for rows of `source` (for messages), at `bucket/key`.
    pub fn new(
        s3: aws_sdk_s3::Client,
        bucket: String,
        key: String,
        source: String,
        raw_cap: usize,
        budget: MemoryBudget,
    ) -> Self {
        // Bad rows are expected to be few: one small part buffer, one part in flight.
        let budget = budget.with_part_size(MIN_PART_SIZE).with_max_in_flight(1);
        Quarantine {
            s3,
            bucket,
            key,
            source,
            raw_cap,
            options: UploadOptions::new(budget.schedule()),
            writer: None,
            buf: Vec::with_capacity(CHUNK),
            count: 0,
        }
    }

    /// Gives up (aborting the object) at `deadline`, as the output does.
    pub fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.options.deadline = deadline;
        self
    }

    /// Rows quarantined so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The source the rows come from, as their records name it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The quarantine object's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Adds a row; opens the object's writer on the first one.
    pub async fn add(
        &mut self,
        pos: Position,
        column: Option<&str>,
        reason: &str,
        raw: &[u8],
    ) -> Result<()> {
        let cut = raw.len().min(self.raw_cap);
        let text = String::from_utf8_lossy(&raw[..cut]);
        let row = BadRow {
            source: &self.source,
            line: pos.line,
            offset: pos.offset,
            record: pos.record,
            column,
            reason,
            raw: text.trim_end_matches(['\n', '\r']).to_owned(),
            raw_truncated: raw.len() > self.raw_cap,
        };
        serde_json::to_writer(&mut self.buf, &row).map_err(|e| Error::Internal {
            message: format!("quarantine row of {}: {e}", self.source),
        })?;
        self.buf.push(b'\n');
        self.count += 1;
        crate::fault::point("transform.quarantine");
        if self.writer.is_none() {
            tracing::warn!(bucket = %self.bucket, key = %self.key, source = %self.source,
                "first bad row: writing the quarantine");
            self.writer = Some(ObjectWriter::new(Arc::new(self.target()), &self.options)?);
        }
        if self.buf.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let Some(writer) = &mut self.writer else {
            return Ok(());
        };
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        writer.write(chunk).await
    }

    /// Writes what is buffered and completes the object (if any row was added).
    pub async fn finish(&mut self) -> Result<Option<Uploaded>> {
        self.flush().await?;
        match self.writer.take() {
            None => Ok(None),
            Some(writer) => writer.finish().await.map(Some),
        }
    }

    /// Writes what is buffered and suspends the object's upload, for a checkpoint (`None`
    /// when no row came yet). [`resume`](Self::resume) goes on with it.
    pub async fn suspend(&mut self) -> Result<Option<Suspended>> {
        self.flush().await?;
        match self.writer.take() {
            None => Ok(None),
            Some(writer) => writer.suspend().await.map(Some),
        }
    }

    /// Goes on after `count` rows, with the upload `suspended` (from this job's checkpoint).
    pub fn resume(&mut self, suspended: Option<Suspended>, count: u64) -> Result<()> {
        self.count = count;
        if let Some(suspended) = suspended {
            let target = Arc::new(self.target());
            self.writer = Some(ObjectWriter::resume(target, &self.options, suspended)?);
        }
        Ok(())
    }

    fn target(&self) -> S3Target {
        S3Target::new(self.s3.clone(), &self.bucket, &self.key).with_meta(ObjectMeta {
            content_type: Some("application/x-ndjson".to_owned()),
        })
    }

    /// Aborts the object, if one was started.
    pub async fn abort(&mut self) {
        self.buf.clear();
        if let Some(writer) = self.writer.take() {
            writer.abort().await;
        }
    }
}
