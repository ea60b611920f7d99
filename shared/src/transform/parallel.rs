//! Typing and steps on several cores, order preserved: the reader cuts CSV records into
//! numbered chunks, `N` worker threads type, transform and render them (for Parquet, hand
//! back the typed rows, which the output encodes), and the writer puts the results back in
//! sequence before they reach the output and the quarantine.
//!
//! ```text
//! reader -> [chunks, bounded] -> worker x N -> [results, bounded] -> reorder -> output
//! ```
//!
//! Both channels are bounded and the reorder buffer holds at most what the workers and the
//! channels hold, so memory is about `(3 N + 2) × chunk` whatever the input size.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use super::Counts;
use super::continuing::Stopper;
use super::output::RowSink;
use super::reader::{CsvReader, Position, ReadPoint};
use super::rows::{ColPlan, type_csv};
use super::steps::{Outcome, Program, RowError};
use super::value::Value;
use super::writer::RowWriter;
use crate::error::{Error, Result};
use crate::format::Format;
use crate::job::panic_message;

/// Records per chunk (a chunk also closes at [`CHUNK_BYTES`]).
const CHUNK_RECORDS: usize = 1024;
/// Raw bytes per chunk.
const CHUNK_BYTES: usize = 512 * 1024;

/// Records as read: field bytes, field ends, raw text and positions.
#[derive(Default)]
struct Chunk {
    seq: u64,
    fields: Vec<u8>,
    ends: Vec<usize>,
    /// For each record, the index in `ends` after its last field.
    records: Vec<usize>,
    raw: Vec<u8>,
    raw_ends: Vec<usize>,
    pos: Vec<Position>,
}

/// A chunk processed: rendered output and the bad rows, in order.
struct Done {
    seq: u64,
    out: Vec<u8>,
    /// Kept rows as typed values, for a Parquet output (then `out` stays empty).
    rows: Vec<Vec<Value>>,
    counts: Counts,
    bad: Vec<(Position, RowError, Vec<u8>)>,
}

/// What the workers share.
pub(super) struct Shared {
    pub plans: Vec<ColPlan>,
    pub program: Program,
    pub format: Format,
    pub raw_cap: usize,
}

impl Shared {
    /// Whether kept rows go back typed (Parquet) rather than rendered.
    fn typed(&self) -> bool {
        self.format == Format::Parquet
    }
}

fn work(shared: &Shared, chunk: Chunk) -> Done {
    let mut writer = RowWriter::new(shared.format, shared.program.output());
    let mut done = Done {
        seq: chunk.seq,
        out: Vec::with_capacity(if shared.typed() {
            0
        } else {
            chunk.raw.len() / 4
        }),
        rows: Vec::new(),
        counts: Counts::default(),
        bad: Vec::new(),
    };
    let ncols = shared.plans.len();
    let mut row = Vec::with_capacity(ncols);
    let (mut first_end, mut first_raw) = (0, 0);
    for (r, &last_end) in chunk.records.iter().enumerate() {
        let ends = &chunk.ends[first_end..last_end];
        let start_of = |i: usize| {
            if first_end + i == 0 {
                0
            } else {
                chunk.ends[first_end + i - 1]
            }
        };
        let base = start_of(0);
        let raw = &chunk.raw[first_raw..chunk.raw_ends[r]];
        row.clear();
        done.counts.records_in += 1;
        let typed = if ends.len() != ncols {
            Err(RowError {
                column: None,
                reason: format!("ragged row: {} fields, the header has {ncols}", ends.len()),
            })
        } else {
            type_csv(
                &shared.plans,
                |i| {
                    let start = if i == 0 { base } else { ends[i - 1] };
                    &chunk.fields[start..ends[i]]
                },
                &mut row,
            )
        };
        let outcome = match typed {
            Ok(()) => shared.program.apply(&mut row),
            Err(e) => Outcome::Bad(e),
        };
        match outcome {
            Outcome::Keep => {
                done.counts.records_out += 1;
                if shared.typed() {
                    done.rows.push(row.clone());
                } else {
                    writer.row(&row, &mut done.out);
                }
            }
            Outcome::Filtered => done.counts.filtered += 1,
            Outcome::Bad(e) => {
                let cut = raw.len().min(shared.raw_cap);
                // The quarantine cuts again; keep one byte more so it knows it was cut.
                let keep = (cut + 1).min(raw.len());
                done.bad.push((chunk.pos[r], e, raw[..keep].to_vec()));
            }
        }
        first_end = last_end;
        first_raw = chunk.raw_ends[r];
    }
    done
}

/// A chunk's result, or the panic of the worker that took it.
type Worked = Result<Done>;

/// Starts `workers` threads that take chunks from `chunks` and send their results to `done`.
/// A panic in `work` is caught and sent as [`Error::Internal`], so the writer stops at once
/// instead of waiting for a chunk that will never come.
fn start_workers(
    workers: usize,
    shared: &Arc<Shared>,
    chunks: mpsc::Receiver<Chunk>,
    done: &mpsc::Sender<Worked>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let chunks = Arc::new(Mutex::new(chunks));
    let mut threads = Vec::with_capacity(workers);
    for n in 0..workers {
        let rx = chunks.clone();
        let tx = done.clone();
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("transform-{n}"))
            .spawn(move || {
                loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                    let Some(chunk) = next else { return };
                    let worked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::fault::point("transform.worker");
                        work(&shared, chunk)
                    }))
                    .map_err(|p| Error::Internal {
                        message: format!(
                            "transform worker {n} panicked: {}",
                            panic_message(p.as_ref())
                        ),
                    });
                    if tx.blocking_send(worked).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Internal {
                message: format!("cannot start transform worker {n}: {e}"),
            })?;
        threads.push(spawned);
    }
    Ok(threads)
}

/// Runs the records of `reader` through `workers` threads into `sink`, in order. A worker
/// that panics, a thread that dies or a chunk that never comes back fails the run with
/// [`Error::Internal`]: rows are never silently dropped.
///
/// With a `stop`, the reader looks at it after each chunk, and when it asks for a boundary,
/// stops there: the chunks sent are written, and the point after the last one comes back
/// with whether the time is up (`None`: the end of the input). The reader can go on from
/// there in another run.
pub(super) async fn run<R: AsyncRead + Unpin + Send>(
    reader: &mut CsvReader<R>,
    shared: Arc<Shared>,
    workers: usize,
    sink: &mut RowSink<'_>,
    stop: Option<&Stopper>,
) -> Result<Option<(ReadPoint, bool)>> {
    let (chunk_tx, chunk_rx) = mpsc::channel::<Chunk>(workers);
    let (done_tx, mut done_rx) = mpsc::channel::<Worked>(workers);
    let threads = start_workers(workers, &shared, chunk_rx, &done_tx)?;
    drop(done_tx);

    let read = async move {
        let mut seq = 0;
        let mut chunk = Chunk::default();
        let mut stopped = None;
        while let Some(rec) = reader.next().await? {
            for i in 0..rec.len() {
                chunk.fields.extend_from_slice(rec.field(i));
                chunk.ends.push(chunk.fields.len());
            }
            chunk.records.push(chunk.ends.len());
            chunk.raw.extend_from_slice(rec.raw);
            chunk.raw_ends.push(chunk.raw.len());
            chunk.pos.push(rec.pos);
            if chunk.records.len() >= CHUNK_RECORDS || chunk.raw.len() >= CHUNK_BYTES {
                let full = std::mem::replace(
                    &mut chunk,
                    Chunk {
                        seq: seq + 1,
                        ..Chunk::default()
                    },
                );
                if chunk_tx.send(full).await.is_err() {
                    // The writer stopped: its error is the one reported.
                    return Ok((seq, None));
                }
                seq += 1;
                if let Some(time_up) = stop.and_then(Stopper::wanted) {
                    stopped = Some((reader.point(), time_up));
                    break;
                }
            }
        }
        if !chunk.records.is_empty() {
            if chunk_tx.send(chunk).await.is_err() {
                return Ok((seq, None));
            }
            seq += 1;
        }
        Ok::<_, Error>((seq, stopped))
    };
    let write = async {
        let result = async {
            let mut next = 0u64;
            let mut waiting: BTreeMap<u64, Done> = BTreeMap::new();
            while let Some(done) = done_rx.recv().await {
                let done = done?;
                waiting.insert(done.seq, done);
                while let Some(done) = waiting.remove(&next) {
                    next += 1;
                    sink.counts.records_in += done.counts.records_in;
                    sink.counts.records_out += done.counts.records_out;
                    sink.counts.filtered += done.counts.filtered;
                    for (pos, e, raw) in done.bad {
                        sink.bad(pos, e, &raw).await?;
                    }
                    sink.emit(&done.out).await?;
                    sink.emit_rows(&done.rows).await?;
                    sink.report();
                }
            }
            Ok::<u64, Error>(next)
        }
        .await;
        // Unblock the workers (and so the reader) when the writer stopped early.
        done_rx.close();
        result
    };
    let (read, write) = tokio::join!(read, write);
    let mut died = None;
    for (n, t) in threads.into_iter().enumerate() {
        if let Err(p) = t.join() {
            died.get_or_insert(Error::Internal {
                message: format!("transform worker {n} died: {}", panic_message(p.as_ref())),
            });
        }
    }
    let written = write?;
    if let Some(e) = died {
        return Err(e);
    }
    let (sent, stopped) = read?;
    if written != sent {
        return Err(Error::Internal {
            message: format!("{sent} chunks went to the transform workers, {written} came back"),
        });
    }
    Ok(stopped)
}
