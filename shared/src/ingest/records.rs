//! The record producer: fetches every page of one source, extracts its records with a bounded
//! decoder and writes them as NDJSON batches (or typed Parquet rows) into the output.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::io::StreamReader;
use tokio_util::task::AbortOnDropHandle;

use super::pages::PageWriter;
use super::parquet::ParquetRecords;
use super::partitioned::PartitionedText;
use crate::checkpoint::StopClock;
use crate::codec::Decoding;
use crate::codec::json_records::{
    Captures, JsonPath, JsonRecordsDecoder, NdjsonDecoder, RecordsError,
};
use crate::error::{Error, Result};
use crate::sink::ObjectWriter;
use crate::source::http::auth::ResolvedAuth;
use crate::source::http::guard::NetworkPolicy;
use crate::source::http::paginate::{PageOutcome, PageRequest, PageResume, Paginator};
use crate::source::http::rate::RateLimiter;
use crate::source::http::state::WatermarkTracker;
use crate::source::http::{self, Fetcher, HttpBody, HttpSourceSpec, SourceFailure};
use crate::spec::InputFormat;

/// Buffer between the decoder and the framer.
const CODEC_BUFFER: usize = 64 * 1024;
/// NDJSON is written in batches of about this size.
const BATCH: usize = 64 * 1024;

/// Figures of the pages read so far.
#[derive(Debug, Default, Clone)]
pub(super) struct PageStats {
    pub pages: u32,
    pub records: u64,
    pub bytes_in: u64,
    pub last_cursor: Option<String>,
    pub truncated: bool,
    pub first_url: Option<String>,
}

/// Where the producer writes: one object, one per page, or one Parquet file.
pub(super) enum Output {
    /// Every page into one object.
    Single(ObjectWriter),
    /// Each page into its own object.
    PerPage(Box<PageWriter>),
    /// Every record, typed, into one Parquet file (bad ones into the quarantine).
    Parquet(Box<ParquetRecords>),
    /// Every record into the NDJSON object of its partition.
    Partitioned(Box<PartitionedText>),
}

impl Output {
    async fn write(&mut self, page: u32, batch: bytes::Bytes) -> Result<()> {
        match self {
            Output::Single(w) => w.write(batch).await,
            Output::PerPage(p) => p.write(page, batch).await,
            Output::Parquet(_) | Output::Partitioned(_) => Err(Error::Internal {
                message: "a batch written to an output that takes records".into(),
            }),
        }
    }

    async fn end_page(&mut self, page: u32, records: u64, bytes_in: u64) -> Result<()> {
        match self {
            Output::Single(_) | Output::Parquet(_) | Output::Partitioned(_) => Ok(()),
            Output::PerPage(p) => p.end_page(page, records, bytes_in).await,
        }
    }
}

/// Fetches every page of one source and writes its records. Owns what it needs, so that it
/// runs on its own task (a clone for each stretch between two checkpoints).
#[derive(Clone)]
pub(super) struct Producer {
    pub http: reqwest::Client,
    pub spec: HttpSourceSpec,
    pub policy: NetworkPolicy,
    pub limiter: Option<Arc<RateLimiter>>,
    pub deadline: Option<Instant>,
    pub records: Option<JsonPath>,
    pub input: InputFormat,
    pub max_record: usize,
    pub tracker: Option<Arc<WatermarkTracker>>,
    pub auth: Option<Arc<ResolvedAuth>>,
    /// The invocation's counters: bytes in and retries (through the fetcher), records in and
    /// (for NDJSON) out, once per batch.
    pub progress: Arc<crate::telemetry::Progress>,
}

/// The producer's paging between two stretches (and two invocations).
#[derive(Debug)]
pub(super) struct Paging {
    /// The paginator, past the pages written.
    pub paginator: Paginator,
    /// The request to send next; `None` once paging is over.
    pub next: Option<PageRequest>,
    /// The figures of the pages written so far, by this invocation and the ones before.
    pub stats: PageStats,
}

/// How a stretch of pages ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Paged {
    /// At the end of the data.
    Ended,
    /// Before a page, for a checkpoint: at the end of the invocation's time (`time_up`), or
    /// after `tuning.checkpoint_every_parts` parts.
    Stopped {
        /// The invocation's time is up: the job continues in the next one.
        time_up: bool,
    },
}

/// When a producer stops between two pages for a checkpoint.
#[derive(Debug, Clone)]
pub(super) struct PageStop {
    /// When the invocation's time is up.
    pub clock: StopClock,
    /// Parts between two checkpoints.
    pub every_parts: u64,
}

impl PageStop {
    /// Whether to stop before the next page, which may take as long as `longest` did: at the
    /// stop time (`Some(true)`), or after `every_parts` parts since `parts_at_start`.
    fn before_page(&self, longest: Duration, parts_at_start: u64) -> Option<bool> {
        if self
            .clock
            .due()
            .is_some_and(|at| Instant::now() + longest >= at)
        {
            return Some(true);
        }
        let parts = self.clock.progress.snapshot().parts_done;
        (parts >= parts_at_start + self.every_parts).then_some(false)
    }
}

/// Records of a Parquet output reach the counters every this many.
const PROGRESS_RECORDS: u64 = 4096;

impl Producer {
    /// Runs [`pages`](Self::pages) on its own task (so that reading and extracting overlap
    /// with compression and uploads), and hands back the output, to be finished, suspended
    /// or aborted, with the paging. A panic on the task becomes [`Error::Internal`]; the
    /// output it owned was dropped with it, which aborts its upload. Every wait of the
    /// producer (the rate limiter, a request, a stalled body, a write) ends at the deadline:
    /// the result is then [`Error::Deadline`] and the output comes back to be aborted.
    ///
    /// Dropping the returned future (a cancelled job: the `sluice` command on SIGINT or
    /// SIGTERM) cancels the task, which drops the output and so aborts its upload. The task
    /// runs on the tracker that [`settle_aborts`](crate::sink::settle_aborts) waits for, and it
    /// leaves the tracker only once the output is dropped and its abort is tracked in turn, so
    /// a caller that settles right after the drop still waits for that abort.
    pub async fn spawn(
        self,
        mut out: Output,
        mut paging: Paging,
        stop: Option<PageStop>,
    ) -> Result<(Result<Paged>, Output, Paging)> {
        let task = AbortOnDropHandle::new(crate::sink::pending_aborts().spawn(async move {
            let pages = self.pages(&mut out, &mut paging, stop.as_ref());
            let result = crate::job::within(self.deadline, pages).await;
            (result, out, paging)
        }));
        task.await
            .map_err(|e| crate::job::join_error("the record producer", e))
    }

    /// Where paging starts: the first page, or the next page of a checkpoint (`from`).
    pub fn paging(&self, from: Option<&PageResume>) -> Result<Paging> {
        let mut paginator = Paginator::new(
            self.spec.paginate.as_ref(),
            http::single_page(&self.spec)?.url,
        )?
        .with_auth(self.auth.clone());
        let mut stats = PageStats::default();
        let next = match from {
            Some(at) => {
                stats.records = at.records;
                stats.last_cursor = at.last_cursor.clone();
                stats.pages = at.page.saturating_sub(1);
                paginator.resume(at)?
            }
            None => paginator.first(),
        };
        Ok(Paging {
            paginator,
            next: Some(next),
            stats,
        })
    }

    /// Fetches and writes pages, keeping `paging` current, until the end of the data or (with
    /// `stop`) a stop between two pages. The caller finishes, suspends or (on error) aborts
    /// the output.
    pub async fn pages(
        &self,
        out: &mut Output,
        paging: &mut Paging,
        stop: Option<&PageStop>,
    ) -> Result<Paged> {
        let fetcher = Fetcher {
            client: &self.http,
            spec: &self.spec,
            policy: &self.policy,
            limiter: self.limiter.as_deref(),
            deadline: self.deadline,
            auth: self.auth.as_deref(),
            progress: Some(&self.progress),
            resume_from: None,
        };
        let paths = paging.paginator.capture_paths();
        let parts_at_start = self.progress.snapshot().parts_done;
        // The longest page of this stretch, and how many it wrote.
        let (mut longest, mut written) = (Duration::ZERO, 0u32);
        while let Some(request) = paging.next.take() {
            if let Some(stop) = stop.filter(|_| written > 0)
                && let Some(time_up) = stop.before_page(longest, parts_at_start)
            {
                paging.next = Some(request);
                return Ok(Paged::Stopped { time_up });
            }
            let began = Instant::now();
            crate::fault::point("ingest.page");
            let body = fetcher.open(&request).await?;
            let url = body.url.clone();
            let link = body.link.clone();
            let received = body.received();
            let number = request.page;
            let (count, captures) = match self.input {
                InputFormat::Json => {
                    let records = self
                        .records
                        .clone()
                        .unwrap_or_else(|| JsonPath::parse("$[*]", true).expect("valid"));
                    let decoder = JsonRecordsDecoder::new(records, paths.clone(), self.max_record);
                    let captures = decoder.captures();
                    let count = self.forward(body, decoder, out, number).await?;
                    (count, captures)
                }
                InputFormat::Ndjson => {
                    let decoder = NdjsonDecoder::new(self.max_record);
                    let count = self.forward(body, decoder, out, number).await?;
                    (count, Captures::default())
                }
            };
            let paginator = &mut paging.paginator;
            paging.next = paginator.next(&PageOutcome {
                records: count,
                captures: &captures,
                link: link.as_deref(),
            })?;
            let page_bytes = received.load(Ordering::Relaxed);
            let stats = &mut paging.stats;
            stats.pages = number;
            stats.records += count;
            stats.bytes_in += page_bytes;
            stats.last_cursor = paginator.last_cursor().map(str::to_owned);
            stats.truncated = paginator.truncated();
            stats.first_url.get_or_insert(url.clone());
            out.end_page(number, count, page_bytes).await?;
            tracing::debug!(page = number, records = count, %url, "page done");
            longest = longest.max(began.elapsed());
            written += 1;
        }
        Ok(Paged::Ended)
    }

    /// Writes one page's records as NDJSON batches; returns how many.
    async fn forward<D>(
        &self,
        body: HttpBody,
        decoder: D,
        out: &mut Output,
        page: u32,
    ) -> Result<u64>
    where
        D: Decoder<Item = bytes::Bytes, Error = io::Error>,
    {
        let url = body.url.clone();
        let received = body.received();
        let decoding = body.decoding;
        let reader = decoding.decoder(StreamReader::new(body.stream));
        let mut frames = FramedRead::with_capacity(reader, decoder, CODEC_BUFFER);
        let mut batch = BytesMut::with_capacity(BATCH + 1024);
        let mut count = 0u64;
        // Records read since the counters were last told.
        let mut unreported = 0u64;
        while let Some(item) = frames.next().await {
            let record = item.map_err(|e| {
                classify_read_error(e, &url, received.load(Ordering::Relaxed), decoding)
            })?;
            if let Some(t) = &self.tracker {
                t.observe(&record);
            }
            count += 1;
            unreported += 1;
            if let Output::Parquet(p) = out {
                p.record(&record, received.load(Ordering::Relaxed)).await?;
                if unreported >= PROGRESS_RECORDS {
                    // Written or quarantined is known at the end (`write_records`).
                    self.progress
                        .add_records_in(std::mem::take(&mut unreported));
                }
                continue;
            }
            if let Output::Partitioned(p) = out {
                p.record(&record, &url, received.load(Ordering::Relaxed), count)
                    .await?;
                if unreported >= PROGRESS_RECORDS {
                    self.report_written(std::mem::take(&mut unreported));
                }
                continue;
            }
            batch.extend_from_slice(&record);
            batch.put_u8(b'\n');
            if batch.len() >= BATCH {
                out.write(page, batch.split().freeze()).await?;
                batch.reserve(BATCH + 1024);
                self.report_written(std::mem::take(&mut unreported));
            }
        }
        if !batch.is_empty() {
            out.write(page, batch.freeze()).await?;
        }
        if let Output::Parquet(_) = out {
            self.progress.add_records_in(unreported);
        } else {
            self.report_written(unreported);
        }
        Ok(count)
    }

    /// NDJSON: `n` records read and written.
    fn report_written(&self, n: u64) {
        self.progress.add_records_in(n);
        self.progress.add_records_out(n);
    }
}

/// Tells a transport failure from bad records from corrupt compressed data.
pub(super) fn classify_read_error(
    e: io::Error,
    url: &str,
    offset: u64,
    decoding: Decoding,
) -> Error {
    if let Some(failure) = e.get_ref().and_then(|i| i.downcast_ref::<SourceFailure>()) {
        return Error::SourceRead {
            url: url.to_owned(),
            offset,
            class: failure.class,
            message: failure.message.clone(),
        };
    }
    if let Some(r) = RecordsError::find(&e) {
        return Error::Records {
            url: url.to_owned(),
            class: r.class,
            offset: r.offset,
            record: r.record,
            message: r.message.clone(),
        };
    }
    match decoding.name() {
        Some(codec) => Error::Decode {
            input: url.to_owned(),
            codec,
            offset,
            source: e,
        },
        None => Error::SourceRead {
            url: url.to_owned(),
            offset,
            class: "read failed",
            message: e.to_string(),
        },
    }
}
