//! A keyset export (`source.postgres.resume_key`) across invocations
//! ([`crate::checkpoint`]): into one CSV or NDJSON object, or into partitioned objects
//! (Parquet among them) that continue in the next `{part}`.
//!
//! The rows come in the key's order ([`postgres::Keyset`]). When the invocation's time is
//! nearly up, or every `tuning.checkpoint_every_parts` parts, the stream is asked for a
//! boundary (the next place where the key changes), the chunk up to it is written, the
//! writer is suspended (a compressing writer ends its gzip member or zstd frame, so the
//! object stays one valid stream) and a checkpoint keeps the last key written. At the stop,
//! the statement is cancelled and the function answers `continue`; the next invocation runs
//! the query again for the rows after that key, without the CSV header. A periodic
//! checkpoint resumes the writer at once and reads on from the same statement.
//!
//! A partitioned export ([`write_partitioned`](KeysetExport::write_partitioned)) cannot
//! suspend a Parquet file, so at each boundary it completes every open object instead, and
//! the checkpoint lists them with each partition's next `{part}`.

use std::sync::Arc;

use futures::StreamExt;

use bytes::Bytes;

use super::partitioned::PartitionedExport;
use super::{ExportSource, ExportSpec, ExportSummary, Reporter, deadline_bytes, start_copy};
use crate::checkpoint::{Checkpoints, Continuation, Continue, JobScope, Loaded, Position};
use crate::error::{Error, Result};
use crate::format::Format;
use crate::job::{self, Invocation};
use crate::partition::{self, PartitionObject, PartitionedSummary, PartitionsResume};
use crate::sink::{ObjectWriter, S3Target, Suspended, UploadOptions, Uploaded};
use crate::source::postgres::{self, Boundary, ConnectionSettings};

/// What a keyset export's invocation wrote.
enum Wrote {
    /// The object, complete.
    Done(Uploaded),
    /// Not finished: the checkpoint to continue from, the parts and bytes uploaded so far.
    Continues(Continue, u32, u64),
}

/// What a partitioned keyset export's invocation wrote.
pub(super) enum PartsWrote {
    /// Every object, completed, and the run's figures.
    Done(Vec<PartitionObject>, PartitionedSummary),
    /// Not finished: the checkpoint to continue from, and the objects and figures so far.
    Continues(Continue, Box<PartitionsResume>),
}

/// How the rows of a partitioned invocation ended.
enum Partitioned {
    /// The end of the rows (the objects still open).
    Ended,
    /// The time was up: every object completed, the checkpoint saved.
    Stopped(Continue, PartitionsResume),
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
    /// upload and deletes the checkpoints this invocation saved, unless it keeps them for a
    /// retry ([`Checkpoints::give_up`]).
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
        let first = self.position(String::new(), 0, None);
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
                        give_up(checkpoints.as_ref(), &e).await;
                        return Err(e);
                    }
                    let finished = writer.finish().await;
                    if let Some(c) = &checkpoints {
                        c.end(&finished).await;
                    }
                    return Ok((Wrote::Done(finished?), figures));
                }
                Ok(Stretch::Boundary(b, time_up)) => (b, time_up),
                Err(e) => {
                    canceller.cancel().await;
                    writer.abort().await;
                    let e = deadline_bytes(e, &progress);
                    give_up(checkpoints.as_ref(), &e).await;
                    return Err(e);
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
                    let e = deadline_bytes(e, &progress);
                    give_up(checkpoints.as_ref(), &e).await;
                    return Err(e);
                }
            };
            let position = self.position(boundary.after.clone(), figures.rows, None);
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
                    checkpoints.give_up(&e).await;
                    return Err(e);
                }
            };
        }
    }

    /// The checkpoint's position after key `after`, `rows` rows written; a partitioned
    /// run's objects and partitions, and its CSV header, with it.
    fn position(
        &self,
        after: String,
        rows: u64,
        partitions: Option<(PartitionsResume, Option<String>)>,
    ) -> Position {
        let (partitions, header) = match partitions {
            Some((p, header)) => (Some(Box::new(p)), header),
            None => (None, None),
        };
        Position::Keyset {
            column: self.column.to_owned(),
            after,
            rows,
            partitions,
            header,
        }
    }

    /// Writes the rows after the checkpoint `continuation` resumes (all of them in a first
    /// invocation) into the objects of their partitions. At each boundary every open object
    /// is completed, and the checkpoint lists the objects with each partition's next
    /// `{part}`; when the time is up the export stops there. Any failure, a panic included,
    /// aborts the open objects and deletes every object of the job, the earlier
    /// invocations' too.
    pub async fn write_partitioned(
        &self,
        mut out: PartitionedExport,
        continuation: Option<&Continuation>,
    ) -> Result<(PartsWrote, Figures)> {
        let from = continuation.and_then(|c| c.from.as_ref());
        let (after, before) = self.resume_point(from)?;
        let resume = match from.map(|l| (l, &l.checkpoint.position)) {
            Some((
                _,
                Position::Keyset {
                    partitions: Some(p),
                    header,
                    ..
                },
            )) => Some(((**p).clone(), header.clone())),
            Some((l, _)) => {
                return Err(Error::spec(format!(
                    "checkpoint {}: it is for an export into one object, and this one is partitioned",
                    l.reference.checkpoint.key
                )));
            }
            None => None,
        };
        let scope = JobScope {
            s3: self.s3,
            bucket: &self.spec.destination.bucket,
            options: self.options,
            tuning: &self.spec.tuning,
            invocation: self.invocation,
        };
        let first = self.position(String::new(), 0, None);
        let mut checkpoints = continuation.map(|c| Checkpoints::new(scope, c, self.key, first));
        let written = out.written();
        let rows = self.partitioned_rows(&mut out, after, before, resume, checkpoints.as_mut());
        let result = match job::catch_panic("the export", rows).await {
            Ok((Partitioned::Stopped(next, state), figures)) => {
                return Ok((PartsWrote::Continues(next, Box::new(state)), figures));
            }
            Ok((Partitioned::Ended, figures)) => out
                .finish()
                .await
                .map(|(objects, summary)| (PartsWrote::Done(objects, summary), figures)),
            Err(e) => {
                out.abort().await;
                Err(e)
            }
        };
        if let Err(e) = &result {
            match &checkpoints {
                Some(c) => c.roll_back(&written, e).await,
                None => {
                    partition::roll_back(self.s3, &self.spec.destination.bucket, &written).await
                }
            }
        }
        if let Some(c) = &checkpoints {
            c.end(&result).await;
        }
        result
    }

    /// The rows of [`write_partitioned`](Self::write_partitioned), to their end or to the
    /// boundary where the time is up (the objects then completed and the checkpoint saved).
    async fn partitioned_rows(
        &self,
        out: &mut PartitionedExport,
        after: Option<String>,
        before: Figures,
        resume: Option<(PartitionsResume, Option<String>)>,
        mut checkpoints: Option<&mut Checkpoints<'_>>,
    ) -> Result<(Partitioned, Figures)> {
        let ExportSource::Postgres(pg) = &self.spec.source;
        let resumed = after.is_some();
        let keyset = postgres::Keyset {
            column: self.column.to_owned(),
            after,
            before: (before.rows, before.bytes_in),
            null_probe: false,
        };
        let deadline = self.options.deadline;
        let format = self.spec.format;
        let describe = format == Format::Ndjson;
        let started = start_copy(
            pg,
            self.settings,
            format,
            deadline,
            self.max_row_bytes,
            describe,
            Some(keyset),
        );
        let (mut stream, canceller) = started.await?;
        let progress = stream.progress();
        let result = async {
            out.start(&stream, &self.settings.database)?;
            if let Some((state, header)) = resume {
                out.resume(state, header.as_deref(), before.rows).await?;
            }
            let mut reporter =
                Reporter::new(progress.clone(), Some(self.invocation.progress.clone()));
            loop {
                let parts_at_start = self.invocation.progress.snapshot().parts_done;
                let saving = checkpoints.as_deref();
                let stretch = stretch(&mut stream, out, saving, parts_at_start, &mut reporter);
                let (boundary, time_up) = match job::within(deadline, stretch).await? {
                    Stretch::Ended => {
                        out.end().await?;
                        let figures = Figures {
                            rows: before.rows + progress.rows(),
                            bytes_in: before.bytes_in + progress.bytes(),
                        };
                        if resumed {
                            self.no_null_keys(figures.rows).await?;
                        }
                        return Ok((Partitioned::Ended, figures));
                    }
                    Stretch::Boundary(b, time_up) => (b, time_up),
                };
                let figures = Figures {
                    rows: before.rows + boundary.rows,
                    bytes_in: before.bytes_in + boundary.bytes,
                };
                let (state, header) = out.suspend().await?;
                let Some(checkpoints) = checkpoints.as_deref_mut() else {
                    return Err(Error::Internal {
                        message: "a keyset export stopped with nowhere to save its checkpoint"
                            .into(),
                    });
                };
                let objects = state.objects.len();
                let partitions = Some((state.clone(), header));
                let position = self.position(boundary.after, figures.rows, partitions);
                let saved = checkpoints.save(position, figures.bytes_in, Suspended::none());
                let saved = saved.await?;
                if time_up {
                    tracing::info!(
                        checkpoint = %saved.checkpoint.key, rows = figures.rows, objects,
                        "stopped at a key before the deadline with every object completed; the export continues in the next invocation"
                    );
                    return Ok((Partitioned::Stopped(saved, state), figures));
                }
                tracing::debug!(checkpoint = %saved.checkpoint.key, rows = figures.rows, objects, "checkpoint");
            }
        }
        .await;
        if !matches!(result, Ok((Partitioned::Ended, _))) {
            canceller.cancel().await;
        }
        result.map_err(|e| deadline_bytes(e, &progress))
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
                ..
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
    writer: &mut impl TakesChunks,
    checkpoints: Option<&Checkpoints<'_>>,
    parts_at_start: u64,
    reporter: &mut Reporter,
) -> Result<Stretch> {
    let mut time_up = None;
    while let Some(chunk) = stream.next().await {
        crate::fault::point("export.chunk");
        reporter.report();
        writer.take(chunk?).await?;
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

/// Where the rows of a stretch go: one object, or the objects of their partitions.
trait TakesChunks {
    /// Writes one chunk of the COPY stream.
    async fn take(&mut self, chunk: Bytes) -> Result<()>;
}

impl TakesChunks for ObjectWriter {
    async fn take(&mut self, chunk: Bytes) -> Result<()> {
        self.write(chunk).await
    }
}

impl TakesChunks for PartitionedExport {
    async fn take(&mut self, chunk: Bytes) -> Result<()> {
        self.chunk(&chunk).await
    }
}

async fn give_up(checkpoints: Option<&Checkpoints<'_>>, error: &Error) {
    if let Some(c) = checkpoints {
        c.give_up(error).await;
    }
}
