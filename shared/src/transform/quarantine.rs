//! The quarantine: rows that failed, as NDJSON records in their own S3 object, written through
//! a second multipart upload that starts only when the first bad row appears.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::io::StreamReader;

use super::reader::Position;
use crate::MemoryBudget;
use crate::budget::MIN_PART_SIZE;
use crate::error::{Error, Result};
use crate::sink::{self, ObjectMeta, S3Target, UploadOptions, Uploaded};

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

/// Writes bad rows to `bucket/key`; nothing is created until the first one.
pub struct Quarantine {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    source: String,
    raw_cap: usize,
    budget: MemoryBudget,
    sender: Option<mpsc::Sender<io::Result<Bytes>>>,
    task: Option<JoinHandle<Result<Uploaded>>>,
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
        Quarantine {
            s3,
            bucket,
            key,
            source,
            raw_cap,
            // Bad rows are expected to be few: one small part buffer, one part in flight.
            budget: budget.with_part_size(MIN_PART_SIZE).with_max_in_flight(1),
            sender: None,
            task: None,
            buf: Vec::with_capacity(CHUNK),
            count: 0,
        }
    }

    /// Rows quarantined so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The object's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Adds a row; starts the upload on the first one.
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
        serde_json::to_writer(&mut self.buf, &row).expect("writing to a Vec cannot fail");
        self.buf.push(b'\n');
        self.count += 1;
        if self.count == 1 {
            self.start();
        }
        if self.buf.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    fn start(&mut self) {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
        let target =
            S3Target::new(self.s3.clone(), &self.bucket, &self.key).with_meta(ObjectMeta {
                content_type: Some("application/x-ndjson".to_owned()),
            });
        let options = UploadOptions::new(self.budget.schedule());
        tracing::warn!(bucket = %self.bucket, key = %self.key, source = %self.source,
            "first bad row: writing the quarantine");
        self.task = Some(tokio::spawn(async move {
            let reader = StreamReader::new(tokio_stream(rx));
            sink::upload(Arc::new(target), reader, &options, |e| Error::SourceRead {
                url: "quarantine".into(),
                offset: 0,
                class: "quarantine stream failed",
                message: e.to_string(),
            })
            .await
        }));
        self.sender = Some(tx);
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        let Some(sender) = &self.sender else {
            return Ok(());
        };
        if sender.send(Ok(chunk)).await.is_err() {
            // The upload ended early: its error says why.
            return Err(self
                .join()
                .await
                .err()
                .unwrap_or_else(|| Error::SourceRead {
                    url: format!("s3://{}/{}", self.bucket, self.key),
                    offset: 0,
                    class: "quarantine upload ended early",
                    message: "the upload stopped reading".into(),
                }));
        }
        Ok(())
    }

    async fn join(&mut self) -> Result<Option<Uploaded>> {
        self.sender = None;
        match self.task.take() {
            None => Ok(None),
            Some(task) => match task.await {
                Ok(r) => r.map(Some),
                Err(e) => Err(Error::SourceRead {
                    url: format!("s3://{}/{}", self.bucket, self.key),
                    offset: 0,
                    class: "quarantine upload task failed",
                    message: e.to_string(),
                }),
            },
        }
    }

    /// Flushes and completes the object (if any row was added).
    pub async fn finish(&mut self) -> Result<Option<Uploaded>> {
        self.flush().await?;
        self.join().await
    }
}

/// A channel receiver as a stream.
pub(crate) fn tokio_stream<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + Unpin {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
