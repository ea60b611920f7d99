//! Byte-copy mode: the decoded body copied through one [`ObjectWriter`], and, for a job that
//! can continue, its checkpoints ([`crate::checkpoint`]).
//!
//! A body that can be read again from an offset (a validator, `Accept-Ranges: bytes`, no
//! encoding in transit) is copied in stretches. A stretch ends when the
//! [`StopClock`](checkpoint::StopClock) says the invocation's time is nearly up, or after
//! `tuning.checkpoint_every_parts` parts. Either way the writer is suspended and a checkpoint
//! saved; at the deadline the job answers `continue`, otherwise the writer resumes at once
//! (the saved checkpoint is what a killed invocation's retry resumes from).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::time::Instant;
use tokio_util::io::StreamReader;

use super::{Continuation, PageStats, Prepared, Written, deadline_bytes, records};
use crate::checkpoint::Checkpoints;
use crate::checkpoint::Position;
use crate::error::{Error, Result};
use crate::sink::{Copied, ObjectMeta, ObjectWriter, S3Target};
use crate::source::http::{self, Fetcher};

/// Byte-copy mode: the decoded body, copied through the writer. With a `continuation`, a
/// body that can be read from an offset stops before the deadline and leaves a checkpoint,
/// and a resumed one asks for the rest with `Range` and `If-Range`.
pub(super) async fn copy_body(
    p: &Prepared<'_>,
    target: S3Target,
    continuation: Option<&Continuation>,
    key: &str,
) -> Result<(Written, PageStats)> {
    let deadline = p.options.deadline;
    let limiter = p.limiter();
    let from = continuation.and_then(|c| c.from.as_ref());
    // `run_job` checked that the checkpoint is a byte copy's.
    let resume_from = from.and_then(|l| match &l.checkpoint.position {
        Position::HttpRange { offset, validator } => Some((*offset, validator.as_str())),
        Position::Pages { .. } | Position::Keyset { .. } | Position::Rows(_) => None,
    });
    let fetcher = Fetcher {
        client: p.client(),
        spec: &p.http_spec,
        policy: &p.ctx.policy,
        limiter: limiter.as_deref(),
        deadline,
        auth: p.auth.as_deref(),
        progress: Some(&p.ctx.invocation.progress),
        resume_from,
    };
    let first = http::single_page(&p.http_spec)?;
    let opened = fetcher.open(&first);
    let body = match deadline {
        Some(at) => tokio::time::timeout_at(at, opened)
            .await
            .map_err(|_| Error::Deadline { bytes_in: 0 })??,
        None => opened.await?,
    };
    if let Some((offset, _)) = resume_from {
        check_resumed(&body, offset)?;
    }
    let validator = match resume_from {
        Some((_, v)) => Some(v.to_owned()),
        None => body.validator.clone(),
    };
    let target = target.with_meta(object_meta(p, &body));
    let options = &p.options;
    // One request: its Content-Length (of the bytes as sent, which bytes in counts) is what
    // is left to read; the sources of a batch add theirs to what was read before.
    let counters = &p.ctx.invocation.progress;
    let length = body.content_length;
    counters.set_total_bytes(length.map(|n| n + counters.snapshot().bytes_in));
    let received = body.received();
    let url = body.url.clone();
    let decoding = body.decoding;
    let mut reader = decoding.decoder(StreamReader::new(body.stream));
    let read_error = {
        let url = url.clone();
        let received = received.clone();
        move |e: std::io::Error| {
            records::classify_read_error(e, &url, received.load(Ordering::Relaxed), decoding)
        }
    };
    let target = Arc::new(target);
    let mut writer = match from {
        Some(l) => ObjectWriter::resume(target.clone(), options, l.suspended())?,
        None => ObjectWriter::new(target.clone(), options)?,
    };
    let mut checkpoints = match (continuation, validator.clone()) {
        (Some(c), Some(validator)) => {
            let position = Position::HttpRange {
                offset: 0,
                validator,
            };
            Some(Checkpoints::new(p.scope(), c, key, position))
        }
        _ => None,
    };
    let bytes_before = from.map_or(0, |l| l.checkpoint.bytes_in);
    let bytes_in = || received.load(Ordering::Relaxed) + bytes_before;
    // Source bytes this invocation has handed to the writer, at the last stop.
    let mut read = 0u64;
    let copied = loop {
        let parts_at_start = counters.snapshot().parts_done;
        // Set when the stop is for a checkpoint on the way, not for the end of the invocation.
        let on_the_way = AtomicBool::new(false);
        let stop = || {
            let c = checkpoints.as_ref()?;
            let due = c.clock.due();
            if due.is_some_and(|at| at <= Instant::now()) {
                return due;
            }
            if counters.snapshot().parts_done >= parts_at_start + c.every_parts {
                on_the_way.store(true, Ordering::Relaxed);
                return Some(Instant::now());
            }
            due
        };
        let result = writer.copy_until(&mut reader, &read_error, &stop).await;
        let (w, stretch) = match deadline_bytes(result, bytes_in()) {
            Ok(Copied::Finished(done)) => break Ok(done),
            Ok(Copied::Stopped { writer, read }) => (writer, read),
            Err(e) => break Err(e),
        };
        read += stretch;
        // Everything was read: nothing to continue.
        if length == Some(read) {
            break deadline_bytes(w.finish().await, bytes_in());
        }
        let c = checkpoints
            .as_mut()
            .expect("only a checkpointing copy stops");
        let time_up = !on_the_way.load(Ordering::Relaxed);
        let suspended = match deadline_bytes(w.suspend().await, bytes_in()) {
            Ok(s) => s,
            Err(e) => break Err(e),
        };
        let (parts, bytes) = (suspended.parts.len() as u32, suspended.bytes);
        let offset = resume_from.map_or(0, |r| r.0) + read;
        // Bytes read from the source are `offset`: what the HTTP client had received past
        // it (buffered, not yet handed to the writer) is asked for again.
        let position = Position::HttpRange {
            offset,
            validator: validator.clone().unwrap_or_default(),
        };
        let saved = match c.save(position, offset, suspended.clone()).await {
            Ok(saved) => saved,
            Err(e) => break Err(e),
        };
        if time_up {
            tracing::info!(
                checkpoint = %saved.checkpoint.key, offset, parts,
                "stopped before the deadline; the job continues in the next invocation"
            );
            let stats = page_stats(offset, url);
            return Ok((Written::Continues(saved, parts, bytes), stats));
        }
        tracing::debug!(checkpoint = %saved.checkpoint.key, offset, parts, "checkpoint");
        writer = match ObjectWriter::resume(target.clone(), options, suspended) {
            Ok(w) => w,
            Err(e) => {
                // The saved checkpoint names an upload nothing else would end.
                c.give_up(&e).await;
                break Err(e);
            }
        };
    };
    // Finished or failed: the checkpoints of this invocation go (a failed writer aborted
    // its upload; `run_continuing` deletes the one this invocation started from).
    if let Some(c) = &checkpoints {
        c.end(&copied).await;
    }
    let uploaded = copied?;
    Ok((Written::Single(uploaded), page_stats(bytes_in(), url)))
}

/// The object's content type: the destination's, else the compression's, else the body's.
fn object_meta(p: &Prepared<'_>, body: &http::HttpBody) -> ObjectMeta {
    let content_type =
        p.spec
            .destination
            .content_type
            .clone()
            .or_else(|| match p.options.compression {
                Some(c) => Some(c.codec.content_type().to_owned()),
                None => body.content_type.clone(),
            });
    ObjectMeta { content_type }
}

fn page_stats(bytes_in: u64, url: String) -> PageStats {
    PageStats {
        bytes_in,
        first_url: Some(url),
        ..PageStats::default()
    }
}

/// A resumed body must start exactly at `offset`: a `200` (the `If-Range` validator no
/// longer matches, or ranges are not served) or another range means the source changed.
fn check_resumed(body: &http::HttpBody, offset: u64) -> Result<()> {
    let problem = match body.range_start {
        Some(start) if start == offset => return Ok(()),
        Some(start) => format!("asked for bytes from {offset}, got a range from {start}"),
        None => format!(
            "asked for bytes from {offset} if unchanged, got the whole body (another version, or ranges no longer served)"
        ),
    };
    Err(Error::SourceChanged {
        url: body.url.clone(),
        message: problem,
    })
}
