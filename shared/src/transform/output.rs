//! Where typed rows go: steps, the enrich step's batches, rendering into the output's
//! [`ObjectWriter`], and bad rows into the quarantine.

use bytes::Bytes;

use super::partitioned::PartitionedRows;
use super::quarantine::Quarantine;
use super::reader::Position;
use super::rows::RowJob;
use super::steps::{self, Outcome, Program};
use super::value::Value;
use super::writer::{self, RowWriter};
use super::{Counts, config, enrich};
use crate::columnar::RecordOutput;
use crate::error::{Error, Result};
use crate::telemetry::Progress;

/// Rendered output is written in chunks of about this size.
const OUT_CHUNK: usize = 128 * 1024;
/// Row counts reach the invocation's [`Progress`] every this many rows read.
const PROGRESS_ROWS: u64 = 4096;

/// A row waiting for its enrichment answer: the row, where it was read, its raw text (capped).
type Held = (Vec<Value>, Position, Vec<u8>);
type Batch =
    tokio::task::JoinHandle<Result<(Vec<Held>, Vec<serde_json::Map<String, serde_json::Value>>)>>;

/// Batches of rows for the enrich step, and the batches in flight (in order).
struct Enricher {
    plan: enrich::EnrichPlan,
    client: enrich::Client,
    rows: Vec<Held>,
    body: Vec<u8>,
    in_flight: std::collections::VecDeque<Batch>,
    raw_cap: usize,
    scratch: String,
}

impl Enricher {
    fn push(&mut self, row: Vec<Value>, pos: Position, raw: &[u8]) {
        self.body.push(b'{');
        for (n, (name, i)) in self.plan.send.iter().enumerate() {
            if n > 0 {
                self.body.push(b',');
            }
            writer::json_string(name, &mut self.body);
            self.body.push(b':');
            writer::json_value(&row[*i], &mut self.scratch, &mut self.body);
        }
        self.body.extend_from_slice(b"}\n");
        let raw = raw[..raw.len().min(self.raw_cap)].to_vec();
        self.rows.push((row, pos, raw));
    }

    fn full(&self) -> bool {
        self.rows.len() >= self.plan.step.batch_size
            || self.body.len() >= self.plan.step.max_batch_bytes
    }

    fn dispatch(&mut self) {
        if self.rows.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.rows);
        let body = Bytes::from(std::mem::take(&mut self.body));
        let client = self.client.clone();
        self.in_flight.push_back(tokio::spawn(async move {
            let answers = client.post(body, rows.len()).await?;
            Ok((rows, answers))
        }));
    }
}

/// Output state shared by both input formats: steps, rendering, enrichment and the
/// quarantine limits, writing into the output (rendered text, or Parquet rows).
pub(super) struct RowSink<'a> {
    pub program: Program,
    pub writer: RowWriter,
    pub buf: Vec<u8>,
    out: &'a mut RecordOutput,
    /// A partitioned output (`out` is then spent): kept rows go to their partitions' objects.
    partitioned: Option<&'a mut PartitionedRows>,
    /// Where bad rows go.
    pub quarantine: &'a mut Quarantine,
    /// The object's row counts, kept current.
    pub counts: &'a mut Counts,
    limits: &'a config::QuarantineSpec,
    source: &'a str,
    enricher: Option<Enricher>,
    /// The first bad row (line, column, reason), for the error of a failed run.
    first_bad: Option<String>,
    /// The invocation's counters, and the counts already added to them (in, out,
    /// quarantined).
    progress: Option<std::sync::Arc<Progress>>,
    reported: [u64; 3],
}

/// `line N, column "c": reason`, for messages.
fn describe_bad(pos: Position, e: &steps::RowError) -> String {
    let mut text = format!("line {}", pos.line);
    if let Some(c) = &e.column {
        text.push_str(&format!(", column {c:?}"));
    }
    text.push_str(": ");
    text.push_str(&e.reason);
    text
}

/// The last counts reach the invocation's counters, whether the rows ended or failed.
impl Drop for RowSink<'_> {
    fn drop(&mut self) {
        self.report();
    }
}

/// Enrichment batches still in flight when the rows stop (an error, the deadline) are
/// cancelled rather than left posting.
impl Drop for Enricher {
    fn drop(&mut self) {
        for batch in &self.in_flight {
            batch.abort();
        }
    }
}

impl<'a> RowSink<'a> {
    pub fn new(
        program: Program,
        job: &RowJob<'a>,
        out: &'a mut RecordOutput,
        partitioned: Option<&'a mut PartitionedRows>,
        quarantine: &'a mut Quarantine,
        counts: &'a mut Counts,
    ) -> Self {
        let (pipeline, source) = (job.pipeline, job.source);
        let enricher = program.enrich().map(|plan| Enricher {
            client: enrich::Client::new(&plan.step, job.http.clone(), job.deadline),
            plan: plan.clone(),
            rows: Vec::new(),
            body: Vec::new(),
            in_flight: Default::default(),
            raw_cap: pipeline.quarantine.max_raw_bytes,
            scratch: String::new(),
        });
        // A resumed transform's counts start at its checkpoint's: only this invocation's rows
        // reach its counters.
        let reported = [counts.records_in, counts.records_out, quarantine.count()];
        RowSink {
            writer: RowWriter::new(pipeline.output.format, program.output()),
            program,
            buf: Vec::with_capacity(OUT_CHUNK + 4096),
            out,
            partitioned,
            quarantine,
            counts,
            limits: &pipeline.quarantine,
            source,
            enricher,
            first_bad: None,
            progress: job.progress.clone(),
            reported,
        }
    }

    /// Adds the counts not yet reported to the invocation's [`Progress`]: called every
    /// [`PROGRESS_ROWS`] rows, after each parallel chunk, and when the sink goes away.
    pub fn report(&mut self) {
        let Some(p) = &self.progress else { return };
        let now = [
            self.counts.records_in,
            self.counts.records_out,
            self.quarantine.count(),
        ];
        p.add_records_in(now[0].saturating_sub(self.reported[0]));
        p.add_records_out(now[1].saturating_sub(self.reported[1]));
        p.add_quarantined(now[2].saturating_sub(self.reported[2]));
        self.reported = now;
    }

    async fn send(&mut self) -> Result<()> {
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(OUT_CHUNK + 4096),
        ));
        self.out.write(chunk).await
    }

    /// Starts the output with the layout after the steps: a Parquet output gets its
    /// columns, a CSV output its header (unless `resumed`: an earlier invocation wrote it), a
    /// partitioned one the columns of its key.
    pub fn start(&mut self, resumed: bool) -> Result<()> {
        if let Some(p) = &mut self.partitioned {
            return p.start(self.program.output());
        }
        let schema = crate::columnar::TableSchema::from_layout(self.program.output());
        self.out.set_schema(&schema)?;
        if !resumed {
            self.writer.header(&mut self.buf);
        }
        Ok(())
    }

    /// The output.
    pub fn output(&mut self) -> &mut RecordOutput {
        self.out
    }

    /// The first bad row, as the error of a failed run names it.
    pub fn first_bad(&self) -> Option<&str> {
        self.first_bad.as_deref()
    }

    /// The first bad row of an earlier invocation of the job.
    pub fn set_first_bad(&mut self, first: Option<String>) {
        self.first_bad = first;
    }

    /// Everything before this point into the output and the quarantine's buffer: the
    /// enrichment batches in flight and the rendered rows (for a checkpoint).
    pub async fn flush(&mut self) -> Result<()> {
        self.drain_enricher().await?;
        if !self.buf.is_empty() {
            self.send().await?;
        }
        Ok(())
    }

    /// Sends the enrich step's last batch and finishes every batch in flight, in order.
    async fn drain_enricher(&mut self) -> Result<()> {
        if let Some(en) = &mut self.enricher {
            en.dispatch();
        }
        while self
            .enricher
            .as_ref()
            .is_some_and(|e| !e.in_flight.is_empty())
        {
            self.drain_one().await?;
        }
        Ok(())
    }

    /// Whether the output is partitioned (rows are routed one by one, never rendered in
    /// chunks elsewhere).
    pub fn is_partitioned(&self) -> bool {
        self.partitioned.is_some()
    }

    /// The partitioned output, if it is one.
    pub fn partitioned(&mut self) -> Option<&mut PartitionedRows> {
        self.partitioned.as_deref_mut()
    }

    /// Steps and output for a typed row, or the quarantine.
    pub async fn row(
        &mut self,
        row: &mut Vec<Value>,
        typed: std::result::Result<(), steps::RowError>,
        pos: Position,
        raw: &[u8],
    ) -> Result<()> {
        self.counts.records_in += 1;
        if self.counts.records_in % PROGRESS_ROWS == 0 {
            self.report();
        }
        let outcome = match typed {
            Ok(()) => self.program.apply(row),
            Err(e) => Outcome::Bad(e),
        };
        match outcome {
            Outcome::Keep => match &mut self.enricher {
                None => self.keep(row, pos, raw).await?,
                Some(en) => {
                    en.push(std::mem::take(row), pos, raw);
                    if en.full() {
                        en.dispatch();
                        if en.in_flight.len() >= en.plan.step.concurrency {
                            self.drain_one().await?;
                        }
                    }
                }
            },
            Outcome::Filtered => self.counts.filtered += 1,
            Outcome::Bad(e) => self.bad(pos, e, raw).await?,
        }
        Ok(())
    }

    /// Appends rows rendered elsewhere.
    pub async fn emit(&mut self, rendered: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(rendered);
        if self.buf.len() >= OUT_CHUNK {
            self.send().await?;
        }
        Ok(())
    }

    /// Appends rows typed and kept elsewhere (already counted) to a Parquet output.
    pub async fn emit_rows(&mut self, rows: &[Vec<Value>]) -> Result<()> {
        for row in rows {
            self.out.row(row).await?;
        }
        Ok(())
    }

    /// Renders a kept row into the output (read at `pos` from `raw`, for the quarantine of a
    /// row whose partition key cannot be made).
    pub async fn keep(&mut self, row: &[Value], pos: Position, raw: &[u8]) -> Result<()> {
        if let Some(p) = &mut self.partitioned {
            return match p.row(row).await? {
                Ok(()) => {
                    self.counts.records_out += 1;
                    Ok(())
                }
                Err(e) => self.bad(pos, e, raw).await,
            };
        }
        self.counts.records_out += 1;
        if self.out.row(row).await? {
            return Ok(());
        }
        self.writer.row(row, &mut self.buf);
        if self.buf.len() >= OUT_CHUNK {
            self.send().await?;
        }
        Ok(())
    }

    /// Waits for the oldest enrichment batch and finishes its rows, in order.
    pub async fn drain_one(&mut self) -> Result<()> {
        let Some(batch) = self.enricher.as_mut().and_then(|e| e.in_flight.pop_front()) else {
            return Ok(());
        };
        let (rows, answers) = batch
            .await
            .map_err(|e| crate::job::join_error("an enrichment request task", e))??;
        for ((mut row, pos, raw), answer) in rows.into_iter().zip(answers) {
            let plan = &self.enricher.as_ref().expect("enricher present").plan;
            let outcome = match plan.merge(&answer, &mut row) {
                Ok(()) => self.program.apply_after_enrich(&mut row),
                Err((column, reason)) => Outcome::Bad(steps::RowError {
                    column: Some(column),
                    reason,
                }),
            };
            match outcome {
                Outcome::Keep => self.keep(&row, pos, &raw).await?,
                Outcome::Filtered => self.counts.filtered += 1,
                Outcome::Bad(e) => self.bad(pos, e, &raw).await?,
            }
        }
        Ok(())
    }

    /// Quarantines a bad row; past `quarantine.max_bad_rows`, fails the run.
    pub async fn bad(&mut self, pos: Position, e: steps::RowError, raw: &[u8]) -> Result<()> {
        self.quarantine
            .add(pos, e.column.as_deref(), &e.reason, raw)
            .await?;
        if self.first_bad.is_none() {
            self.first_bad = Some(describe_bad(pos, &e));
        }
        if let Some(max) = self.limits.max_bad_rows
            && self.quarantine.count() > max
        {
            return Err(Error::Records {
                url: self.source.to_owned(),
                class: "too many bad rows",
                offset: pos.offset,
                record: Some(pos.record),
                message: format!(
                    "line {}: {} rows quarantined, more than quarantine.max_bad_rows {max}; \
                     the first: {}; the last: {}{} (the quarantine is not written for a \
                     failed run)",
                    pos.line,
                    self.quarantine.count(),
                    self.first_bad.as_deref().unwrap_or_default(),
                    e.column
                        .map(|c| format!("column {c:?}: "))
                        .unwrap_or_default(),
                    e.reason,
                ),
            });
        }
        Ok(())
    }

    /// After the last row: the enrichment batches still in flight, the bad-row ratio, the
    /// last output chunk. `at` is the input's decoded length, for the message.
    pub async fn end(&mut self, at: u64) -> Result<()> {
        self.drain_enricher().await?;
        if let Some(max) = self.limits.max_bad_ratio
            && self.counts.records_in > 0
        {
            let ratio = self.quarantine.count() as f64 / self.counts.records_in as f64;
            if ratio > max {
                return Err(Error::Records {
                    url: self.source.to_owned(),
                    class: "too many bad rows",
                    offset: at,
                    record: None,
                    message: format!(
                        "{} of {} rows quarantined ({:.4}), more than quarantine.max_bad_ratio \
                         {max}; the first: {} (the quarantine is not written for a failed run)",
                        self.quarantine.count(),
                        self.counts.records_in,
                        ratio,
                        self.first_bad.as_deref().unwrap_or_default(),
                    ),
                });
            }
        }
        if !self.buf.is_empty() {
            self.send().await?;
        }
        Ok(())
    }
}
