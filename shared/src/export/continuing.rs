//! A keyset export (`source.postgres.resume_key`) into one CSV or NDJSON object, across
//! invocations ([`crate::checkpoint`]).
//!
//! The rows come in the key's order ([`postgres::Keyset`]). When the invocation's time is
//! nearly up, or every `tuning.checkpoint_every_parts` parts, the stream is asked for a
//! boundary (the next place where the key changes), the chunk up to it is written, the
//! writer is suspended (a compressing writer ends its gzip member or zstd frame, so the
//! object stays one valid stream) and a checkpoint keeps the last key written. At the stop,
//! the statement is cancelled and the function answers `continue`; the next invocation runs
//! the query again for the rows after that key, without the CSV header. A periodic
//! checkpoint resumes the writer at once and reads on from the same statement.

use std::sync::Arc;

use futures::StreamExt;

use super::{ExportSource, ExportSpec, ExportSummary, Reporter, deadline_bytes, start_copy};
use crate::checkpoint::{Checkpoints, Continuation, Continue, JobScope, Loaded, Position};
use crate::error::{Error, Result};
use crate::job::{self, Invocation};
use crate::sink::{ObjectWriter, S3Target, UploadOptions, Uploaded};
use crate::source::postgres::{self, Boundary, ConnectionSettings};

/// What a keyset export's invocation wrote.
enum Wrote {
    /// The object, complete.
    Done(Uploaded),
    /// Not finished: the checkpoint to continue from, the parts and bytes uploaded so far.
    Continues(Continue, u32, u64),
}

/// The rows and source bytes of the whole job so far.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Figures {
    pub rows: u64,
    pub bytes_in: u64,
}

/// One keyset export's invocation: what it writes with.
pub(super) struct KeysetExport<'a> {
    pub spec: &'a ExportSpec,
    pub s3: &'a aws_sdk_s3::Client,
    pub invocation: &'a Invocation,
    pub settings: &'a ConnectionSettings,
    pub options: &'a UploadOptions,
    pub max_row_bytes: usize,
    /// The key column.
    pub column: &'a str,
    /// The destination key (rendered).
    pub key: &'a str,
}

/// How one stretch of rows ended.
enum Stretch {
    /// The end of the rows.
    Ended,
    /// A boundary; `true` when the invocation's time is up.
    Boundary(Boundary, bool),
}

impl KeysetExport<'_> {
    /// [`write`](Self::write), with the figures in `summary`: the completed upload, or `None`
    /// when the export continues (`summary` then holds the event that continues it).
    pub async fn write_summed(
        &self,
        target: S3Target,
        continuation: Option<&Continuation>,
        summary: &mut ExportSummary,
    ) -> Result<Option<Uploaded>> {
        let from = continuation.and_then(|c| c.from.as_ref());
        let (wrote, figures) = self.write(target, continuation).await?;
        summary.rows = figures.rows;
        summary.bytes_in = figures.bytes_in;
        summary.elapsed_before_ms = from.map_or(0, |l| l.checkpoint.elapsed_ms);
        let invocations = from.map_or(1, |l| l.checkpoint.invocations + 1);
        match wrote {
            Wrote::Done(uploaded) => {
                summary.invocations = (invocations > 1).then_some(invocations);
                Ok(Some(uploaded))
            }
            Wrote::Continues(next, parts, bytes) => {
                summary.next = Some(next.to_value());
                summary.invocations = Some(invocations);
                summary.parts = parts;
                summary.bytes_out = bytes;
                Ok(None)
            }
        }
    }

    /// Writes the rows after the checkpoint `continuation` resumes (all of them in a first
    /// invocation) into `target`, stopping at a boundary when the time is up. Without a
    /// `continuation` the export runs to its end in this invocation. Any failure aborts the
    /// upload and deletes the checkpoints this invocation saved.
    async fn write(
        &self,
        target: S3Target,
        continuation: Option<&Continuation>,
    ) -> Result<(Wrote, Figures)> {
        let from = continuation.and_then(|c| c.from.as_ref());
        let (after, before) = self.resume_point(from)?;
        let scope = JobScope {
            s3: self.s3,
            bucket: &self.spec.destination.bucket,
            options: self.options,
            tuning: &self.spec.tuning,
            invocation: self.invocation,
        };
        let first = Position::Keyset {
            column: self.column.to_owned(),
            after: String::new(),
            rows: 0,
        };
        let mut checkpoints = continuation.map(|c| Checkpoints::new(scope, c, self.key, first));
        let target = Arc::new(target);
        let mut writer = match from {
            Some(l) => ObjectWriter::resume(target.clone(), self.options, l.suspended())?,
            None => ObjectWriter::new(target.clone(), self.options)?,
        };
        let ExportSource::Postgres(pg) = &self.spec.source;
        let keyset = postgres::Keyset {
            column: self.column.to_owned(),
            after,
            before: (before.rows, before.bytes_in),
            null_probe: false,
        };
        let resumed = keyset.after.is_some();
        let deadline = self.options.deadline;
        let started = start_copy(
            pg,
            self.settings,
            self.spec.format,
            deadline,
            self.max_row_bytes,
            false,
            Some(keyset),
        );
        let (mut stream, canceller) = match started.await {
            Ok(s) => s,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        let progress = stream.progress();
        let mut reporter = Reporter::new(progress.clone(), Some(self.invocation.progress.clone()));
        loop {
            let parts_at_start = self.invocation.progress.snapshot().parts_done;
            let stretch = stretch(
                &mut stream,
                &mut writer,
                checkpoints.as_ref(),
                parts_at_start,
                &mut reporter,
            );
            let stretch = job::catch_panic("the export", job::within(deadline, stretch)).await;
            let (boundary, time_up) = match stretch {
                Ok(Stretch::Ended) => {
                    let figures = Figures {
                        rows: before.rows + progress.rows(),
                        bytes_in: before.bytes_in + progress.bytes(),
                    };
                    if resumed && let Err(e) = self.no_null_keys(figures.rows).await {
                        writer.abort().await;
                        delete_saved(checkpoints.as_ref()).await;
                        return Err(e);
                    }
                    let finished = writer.finish().await;
                    delete_saved(checkpoints.as_ref()).await;
                    return Ok((Wrote::Done(finished?), figures));
                }
                Ok(Stretch::Boundary(b, time_up)) => (b, time_up),
                Err(e) => {
                    canceller.cancel().await;
                    writer.abort().await;
                    delete_saved(checkpoints.as_ref()).await;
                    return Err(deadline_bytes(e, &progress));
                }
            };
            let figures = Figures {
                rows: before.rows + boundary.rows,
                bytes_in: before.bytes_in + boundary.bytes,
            };
            let suspended = match writer.suspend().await {
                Ok(s) => s,
                Err(e) => {
                    canceller.cancel().await;
                    delete_saved(checkpoints.as_ref()).await;
                    return Err(deadline_bytes(e, &progress));
                }
            };
            let position = Position::Keyset {
                column: self.column.to_owned(),
                after: boundary.after.clone(),
                rows: figures.rows,
            };
            let (parts, bytes) = (suspended.parts.len() as u32, suspended.bytes);
            let Some(checkpoints) = checkpoints.as_mut() else {
                canceller.cancel().await;
                return Err(Error::Internal {
                    message: "a keyset export stopped with nowhere to save its checkpoint".into(),
                });
            };
            let saved = checkpoints.save(position, figures.bytes_in, suspended.clone());
            let saved = match saved.await {
                Ok(saved) => saved,
                Err(e) => {
                    canceller.cancel().await;
                    return Err(e);
                }
            };
            if time_up {
                // The rows after the boundary are read again by the next invocation.
                canceller.cancel().await;
                tracing::info!(
                    checkpoint = %saved.checkpoint.key, rows = figures.rows, parts,
                    "stopped at a key before the deadline; the export continues in the next invocation"
                );
                return Ok((Wrote::Continues(saved, parts, bytes), figures));
            }
            tracing::debug!(checkpoint = %saved.checkpoint.key, rows = figures.rows, parts, "checkpoint");
            writer = match ObjectWriter::resume(target.clone(), self.options, suspended) {
                Ok(w) => w,
                Err(e) => {
                    canceller.cancel().await;
                    checkpoints.abandon().await;
                    return Err(e);
                }
            };
        }
    }

    /// Fails when some row's key is NULL: the statements after a key never return such rows
    /// (the first statement would have, last), so a continued export asks before it completes
    /// its object. `rows` were written.
    async fn no_null_keys(&self, rows: u64) -> Result<()> {
        let ExportSource::Postgres(pg) = &self.spec.source;
        let probe = postgres::Keyset {
            column: self.column.to_owned(),
            after: None,
            before: (0, 0),
            null_probe: true,
        };
        let deadline = self.options.deadline;
        let (mut stream, canceller) = start_copy(
            pg,
            self.settings,
            crate::format::Format::Csv,
            deadline,
            self.max_row_bytes,
            false,
            Some(probe),
        )
        .await?;
        let mut found = false;
        let read = job::within(deadline, async {
            while let Some(chunk) = stream.next().await {
                found |= !chunk?.is_empty();
            }
            Ok(())
        });
        if let Err(e) = read.await {
            canceller.cancel().await;
            return Err(e);
        }
        if found {
            return Err(Error::Records {
                url: format!("postgres://{}", self.settings.database),
                class: "bad resume key",
                offset: 0,
                record: None,
                message: format!(
                    "after {rows} rows: resume_key column {:?} is NULL in some rows, which a keyset export cannot order or continue past (filter NULLs out, or use a NOT NULL column)",
                    self.column
                ),
            });
        }
        Ok(())
    }

    /// Where the rows start: after the checkpoint's key, with its rows and bytes; from the
    /// first row in a first invocation.
    fn resume_point(&self, from: Option<&Loaded>) -> Result<(Option<String>, Figures)> {
        let Some(l) = from else {
            return Ok((None, Figures::default()));
        };
        match &l.checkpoint.position {
            Position::Keyset {
                column,
                after,
                rows,
            } if column == self.column => Ok((
                Some(after.clone()),
                Figures {
                    rows: *rows,
                    bytes_in: l.checkpoint.bytes_in,
                },
            )),
            other => Err(Error::spec(format!(
                "checkpoint {}: it is for {} and this export's resume_key is {:?}",
                l.reference.checkpoint.key,
                match other {
                    Position::Keyset { column, .. } => format!("resume_key {column:?}"),
                    other => other.kind().to_owned(),
                },
                self.column
            ))),
        }
    }
}

/// Writes the stream's chunks into `writer` until the end of the rows or a boundary. A
/// boundary is asked for once the stop is due, or once `every_parts` parts were uploaded
/// since `parts_at_start`; it comes where the key next changes.
async fn stretch(
    stream: &mut postgres::ExportStream,
    writer: &mut ObjectWriter,
    checkpoints: Option<&Checkpoints<'_>>,
    parts_at_start: u64,
    reporter: &mut Reporter,
) -> Result<Stretch> {
    let mut time_up = None;
    while let Some(chunk) = stream.next().await {
        crate::fault::point("export.chunk");
        reporter.report();
        writer.write(chunk?).await?;
        if let Some(boundary) = stream.take_boundary() {
            return Ok(Stretch::Boundary(boundary, time_up.unwrap_or(false)));
        }
        if let Some(checkpoints) = checkpoints
            && time_up.is_none()
        {
            let clock = &checkpoints.clock;
            if clock
                .due()
                .is_some_and(|at| tokio::time::Instant::now() >= at)
            {
                time_up = Some(true);
            } else if clock.progress.snapshot().parts_done
                >= parts_at_start + checkpoints.every_parts
            {
                time_up = Some(false);
            }
            if time_up.is_some() {
                stream.want_boundary();
            }
        }
    }
    reporter.report();
    Ok(Stretch::Ended)
}

async fn delete_saved(checkpoints: Option<&Checkpoints<'_>>) {
    if let Some(c) = checkpoints {
        c.delete_saved().await;
    }
}
