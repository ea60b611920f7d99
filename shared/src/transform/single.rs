//! One output object (not partitioned): its writer, the quarantine's, the checkpoints of a
//! transform that may continue, and how both objects are finished or aborted.

use std::sync::Arc;

use tokio::io::AsyncRead;

use super::continuing::Continuing;
use super::quarantine::Quarantine;
use super::reader::IoErrorMap;
use super::rows::{RowOut, Rows};
use super::{Landed, ObjectSummary, Pipeline, TransformContext, WriteTo, Writing};
use super::{keep_quarantine, row_job};
use crate::checkpoint::Loaded;
use crate::columnar::{self, RecordOutput, RecordsWritten};
use crate::error::{Error, Result};
use crate::format::Format;
use crate::job;
use crate::sink::{ObjectWriter, S3Target, UploadOptions};

/// Streams the rows into the output and the quarantine, and finishes both — or, on any
/// failure (the deadline included), aborts both: a failed run completes no object, so the
/// output and the quarantine of the last good run stay as they were. A transform that
/// `continuing` may stop at a boundary instead: both are then suspended into its checkpoint.
pub(super) async fn write(
    pipeline: &Pipeline,
    ctx: &TransformContext,
    source: &str,
    w: &Writing,
    (decoded, map_io): (Box<dyn AsyncRead + Send + Unpin>, IoErrorMap),
    summary: &mut ObjectSummary,
    continuing: Option<Continuing<'_>>,
) -> Result<Landed> {
    let WriteTo::One {
        target,
        output_exists,
    } = &w.to
    else {
        return Err(Error::Internal {
            message: format!("{}: one object written for a partitioned output", w.key),
        });
    };
    let from = continuing
        .as_ref()
        .and_then(|c| c.continuation.from.as_ref());
    let (options, mut output) = open_output(pipeline, ctx, target, *output_exists, from)?;
    let deadline = options.deadline;
    let (mut quarantine, job) =
        row_job(pipeline, ctx, source, &w.quarantine_key, summary, deadline)?;
    if let Some(l) = from {
        let resumed = quarantine.resume(l.side_suspended(), summary.counts.quarantined);
        if let Err(e) = resumed {
            output.abort().await;
            return Err(e);
        }
    }
    let bucket = summary.bucket.clone();
    let scope = ctx.scope(pipeline, &bucket, &options);
    let mut saver = continuing.map(|c| c.saver(scope, w, Some(target)));
    let out = RowOut {
        output: &mut output,
        partitioned: None,
        quarantine: &mut quarantine,
        counts: &mut summary.counts,
        decoded: &mut summary.bytes_decoded,
        saver: saver.as_mut(),
    };
    // The rows, and so the source's reads, end by the deadline like the uploads do.
    let rows = job::within(deadline, job.run(decoded, map_io, out));
    let result = job::catch_panic("the transform", rows).await;
    summary.counts.quarantined = quarantine.count();
    let checkpoints = saver.as_ref().map(|s| &s.checkpoints);
    match result {
        Ok(Rows::Stopped(next)) => {
            let (parts, bytes) = saver.as_ref().map_or((0, 0), |s| s.saved);
            return Ok(Landed::Continues(next, parts, bytes));
        }
        Ok(Rows::Ended) => {}
        Err(e) => {
            // A failed run completes nothing: its quarantine would replace the one of the
            // last good run at the same key (the error names the first and last bad rows
            // instead).
            output.abort().await;
            quarantine.abort().await;
            if let Some(c) = checkpoints {
                c.give_up(&e).await;
            }
            tracing::error!(%source, error = %e, "transform failed; output and quarantine aborted");
            return Err(e);
        }
    }
    let finished = finish(output, &mut quarantine, summary, deadline).await;
    if let Some(c) = checkpoints {
        c.end(&finished).await;
    }
    finished.map(Landed::One)
}

/// The output's upload options and its writer: a new upload, or the one a checkpoint
/// suspended (`from`).
fn open_output(
    pipeline: &Pipeline,
    ctx: &TransformContext,
    target: &S3Target,
    output_exists: bool,
    from: Option<&Loaded>,
) -> Result<(UploadOptions, RecordOutput)> {
    let budget = pipeline.tuning.budget(ctx.budget)?;
    let mut options = UploadOptions::new(budget.schedule());
    options.checksum = pipeline.output.checksum;
    options.if_none_match = !output_exists;
    options.deadline = ctx
        .invocation
        .give_up_at(pipeline.tuning.deadline_margin())?;
    let format = pipeline.output.format;
    options.compression = format.stream_compression(pipeline.output.compression);
    options.progress = Some(ctx.invocation.progress.clone());
    let target = Arc::new(target.clone());
    let writer = match from {
        Some(l) => ObjectWriter::resume(target, &options, l.suspended())?,
        None => ObjectWriter::new(target, &options)?,
    };
    let output = match format {
        // Its columns are the layout after the steps, known once the header is read.
        Format::Parquet => RecordOutput::ParquetPending(
            writer,
            columnar::options_for(pipeline.output.compression, &pipeline.tuning, &budget),
        ),
        Format::Csv | Format::Ndjson => RecordOutput::Text(writer),
    };
    Ok((options, output))
}

/// The output's last bytes (a Parquet footer) before the quarantine, then the quarantine
/// (without it, rows would be lost), then the output is completed. A failure aborts both.
async fn finish(
    mut output: RecordOutput,
    quarantine: &mut Quarantine,
    summary: &mut ObjectSummary,
    deadline: Option<tokio::time::Instant>,
) -> Result<RecordsWritten> {
    if let Err(e) = job::within(deadline, output.seal()).await {
        output.abort().await;
        quarantine.abort().await;
        return Err(e);
    }
    if let Err(e) = job::within(deadline, keep_quarantine(quarantine, summary)).await {
        output.abort().await;
        quarantine.abort().await;
        return Err(e);
    }
    output.finish().await
}
