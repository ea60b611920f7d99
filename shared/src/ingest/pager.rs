//! Paginated records into one object, into partitioned objects (NDJSON or Parquet) or into
//! one object per page, across invocations: between two pages the producer stops
//! ([`PageStop`]), the writer is suspended (the NDJSON batch of the page is written, so the
//! object ends at a line, and a compressing writer ends its gzip member or zstd frame) or,
//! for a partitioned run, every open object is completed (a run writing one object per
//! page has none open), and a checkpoint keeps the next page's request ([`PageResume`])
//! with, for an incremental job, the watermark it started from and the largest one written,
//! and the objects completed so far (a partitioned run's with each partition's next
//! `{part}`, or the pages').

use std::sync::Arc;

use super::PageObject;
use super::records::{Output, PageStop, Paging};
use super::{Continuation, Prepared, deadline_bytes};
use crate::checkpoint::Checkpoints;
use crate::checkpoint::{Continue, ParquetRecordsResume, Position, WatermarkResume};
use crate::error::{Error, Result};
use crate::partition::PartitionsResume;
use crate::sink::{ObjectWriter, S3Target, Suspended};
use crate::source::http::auth::redact_url;
use crate::source::http::paginate::PageResume;

/// The checkpoints of a paginated records job that may continue.
pub(super) struct Pager<'a> {
    p: &'a Prepared<'a>,
    /// The checkpoints this invocation writes.
    pub checkpoints: Checkpoints<'a>,
}

/// What came of a stop between two pages.
pub(super) enum Stretch {
    /// The invocation's time is up: the checkpoint to continue from, the parts and bytes
    /// uploaded so far.
    Continues(Continue, u32, u64),
    /// A checkpoint on the way: the output goes on.
    Resumed(Output),
}

impl<'a> Pager<'a> {
    /// The checkpoints of job `continuation` writing `key`. A resumed incremental job checks
    /// that its state still holds the watermark it started from, and its tracker starts from
    /// the largest value written so far.
    pub fn new(p: &'a Prepared<'a>, continuation: &Continuation, key: &str) -> Result<Pager<'a>> {
        let first = Position::Pages {
            next: PageResume {
                url: String::new(),
                page: 1,
                body_field: None,
                records: 0,
                last_cursor: None,
            },
            watermark: None,
            partitions: None,
            parquet: None,
            pages: None,
        };
        if let Some(l) = &continuation.from
            && let Position::Pages { watermark, .. } = &l.checkpoint.position
        {
            resume_watermark(p, watermark.as_ref())?;
        }
        Ok(Pager {
            p,
            checkpoints: Checkpoints::new(p.scope(), continuation, key, first),
        })
    }

    /// When the producer stops between two pages.
    pub fn stop(&self) -> PageStop {
        PageStop {
            clock: self.checkpoints.clock.clone(),
            every_parts: self.checkpoints.every_parts,
        }
    }

    /// Suspends the output after the pages of `paging` and saves a checkpoint: one object's
    /// writer is suspended; a partitioned run completes every open object (a Parquet run
    /// suspends its quarantine as the side upload), and the checkpoint lists them. At the
    /// end of the invocation's time (`time_up`) the job continues in the next one, otherwise
    /// the output goes on at once. A failure aborts the upload (the open objects) and
    /// deletes the checkpoints this invocation saved, unless it keeps them for a retry
    /// ([`Checkpoints::give_up`]); the caller deletes the objects completed.
    pub async fn checkpoint(
        &mut self,
        out: Output,
        paging: &Paging,
        time_up: bool,
        target: &Arc<S3Target>,
    ) -> Result<Stretch> {
        let bytes_in = paging.stats.bytes_in;
        let Some(next) = paging.next.as_ref() else {
            drop(out);
            let e = Error::Internal {
                message: "the producer stopped with no page to go on from".into(),
            };
            self.checkpoints.give_up(&e).await;
            return Err(e);
        };
        let held = match deadline_bytes(Held::suspend(out).await, bytes_in) {
            Ok(held) => held,
            Err(e) => {
                self.checkpoints.give_up(&e).await;
                return Err(e);
            }
        };
        let position = Position::Pages {
            next: paging.paginator.resume_at(next),
            watermark: self.watermark(),
            partitions: held.files.clone().map(Box::new),
            parquet: held.parquet.clone().map(Box::new),
            pages: held.pages.clone(),
        };
        let (parts, bytes) = match (&held.files, &held.pages) {
            (Some(s), _) => s.uploaded(),
            (None, Some(pages)) => (
                pages.iter().map(|o| o.parts).sum(),
                pages.iter().map(|o| o.bytes_out).sum(),
            ),
            (None, None) => (held.upload.parts.len() as u32, held.upload.bytes),
        };
        let saved = self.checkpoints.save_with_side(
            position,
            bytes_in,
            held.upload.clone(),
            held.side.clone(),
        );
        let saved = saved.await?;
        let page = next.page;
        if time_up {
            tracing::info!(
                checkpoint = %saved.checkpoint.key, page, parts,
                "stopped between pages before the deadline; the job continues in the next invocation"
            );
            return Ok(Stretch::Continues(saved, parts, bytes));
        }
        tracing::debug!(checkpoint = %saved.checkpoint.key, page, parts, "checkpoint");
        let resumed = match (held.out, &held.parquet) {
            (Some(Output::Parquet(mut records)), Some(rest)) => records
                .resume(None, held.side.map(|(_, s)| s), rest)
                .map(|()| Output::Parquet(records)),
            (Some(out), _) => Ok(out),
            (None, _) => ObjectWriter::resume(target.clone(), &self.p.options, held.upload)
                .map(Output::Single),
        };
        match resumed {
            Ok(out) => Ok(Stretch::Resumed(out)),
            Err(e) => {
                self.checkpoints.give_up(&e).await;
                Err(e)
            }
        }
    }

    /// An incremental job's watermark: where it started and the largest one written so far.
    fn watermark(&self) -> Option<WatermarkResume> {
        let (state, tracker) = self.p.incremental.as_ref()?;
        Some(WatermarkResume {
            from: state.watermark.clone(),
            seen: tracker.max_value(),
        })
    }
}

/// An output held at a stop between two pages.
struct Held {
    /// One object's upload, suspended (none for a partitioned run).
    upload: Suspended,
    /// A partitioned run's files.
    files: Option<PartitionsResume>,
    /// A Parquet run's schema and counts.
    parquet: Option<ParquetRecordsResume>,
    /// A Parquet run's quarantine: its key and upload, once it has one.
    side: Option<(String, Suspended)>,
    /// The page objects of a run writing one per page.
    pages: Option<Vec<PageObject>>,
    /// A partitioned or per-page run's output, to go on with in this invocation.
    out: Option<Output>,
}

impl Held {
    /// Suspends `out`: one object's writer, or a partitioned run's files completed.
    async fn suspend(out: Output) -> Result<Held> {
        let mut held = Held {
            upload: Suspended::none(),
            files: None,
            parquet: None,
            side: None,
            pages: None,
            out: None,
        };
        match out {
            Output::Single(writer) => held.upload = writer.suspend().await?,
            Output::Partitioned(mut text) => {
                held.files = Some(text.router.suspend().await?);
                held.out = Some(Output::Partitioned(text));
            }
            Output::Parquet(mut records) => {
                let (files, side, rest) = records.suspend().await?;
                let key = records.quarantine_key().to_owned();
                held.side = side.map(|s| (key, s));
                held.files = Some(files);
                held.parquet = Some(rest);
                held.out = Some(Output::Parquet(records));
            }
            Output::PerPage(pages) => {
                held.pages = Some(pages.objects_at_stop()?);
                held.out = Some(Output::PerPage(pages));
            }
        }
        Ok(held)
    }
}

/// A resumed job's watermark: the incremental state must still hold the one it started from,
/// and the tracker starts from the largest one written.
fn resume_watermark(p: &Prepared<'_>, saved: Option<&WatermarkResume>) -> Result<()> {
    let url = || redact_url(&p.http_spec.url, p.auth.as_deref());
    match (&p.incremental, saved) {
        (None, None) => Ok(()),
        (Some((state, tracker)), Some(w)) => {
            if state.watermark != w.from {
                return Err(Error::SourceChanged {
                    url: url(),
                    message: format!(
                        "the incremental state moved from {:?} to {:?} since the job started (another run wrote it)",
                        w.from, state.watermark
                    ),
                });
            }
            if let Some(seen) = &w.seen {
                tracker.seed(seen.clone());
            }
            Ok(())
        }
        _ => Err(Error::spec(
            "the checkpoint and its job disagree on whether the job is incremental",
        )),
    }
}
