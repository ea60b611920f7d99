//! A transform across invocations ([`crate::checkpoint`]): the rows stop at a boundary
//! between two records when the invocation's time is nearly up, or every
//! `tuning.checkpoint_every_parts` parts, and the output and the quarantine are suspended
//! into one checkpoint (the quarantine as its side upload).
//!
//! The next invocation reads the source again, pinned to the same ETag, from the last gzip
//! member or zstd frame that starts at or before the boundary ([`MemberStarts`]; the start of
//! the object for a single-member file, which is then decoded again from its beginning), and
//! skips the decoded bytes before the boundary. A CSV source's header is not read again: its
//! names are in the checkpoint, and the output's header was written by the first invocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::output::RowSink;
use super::reader::ReadPoint;
use super::{
    ObjectSummary, Pipeline, SourceObject, SourceVars, TransformContext, WriteTo, Writing,
};
use super::{config, content_type};
use crate::checkpoint::{Checkpoints, Continue, JobScope, Position, RowsPosition, StopClock};
use crate::checkpoint::{Continuation, Loaded};
use crate::codec::{Decoding, MemberStart, MemberStarts};
use crate::error::{Error, Result};
use crate::format::Format;
use crate::job;
use crate::key::KeyVars;
use crate::sink::ObjectMeta;
use crate::sink::{ObjectWriter, S3Target, Suspended, UploadOptions};
use crate::source::s3::{self as s3src, ObjectVersion};
use crate::telemetry::Progress;
use chrono::DateTime;

/// Rows between two looks at the clock...
const LOOK_ROWS: u32 = 256;
/// ...or decoded bytes, whichever comes first (rows may be up to the record cap each).
const LOOK_BYTES: u64 = 4 << 20;

/// When a row loop looks at its [`Stopper`]: every [`LOOK_ROWS`] rows or [`LOOK_BYTES`]
/// decoded bytes.
#[derive(Debug, Default)]
pub(super) struct Looks {
    rows: u32,
    next_offset: u64,
}

impl Looks {
    /// Counts a row that ended at decoded offset `offset`; true when it is time to look.
    pub fn due(&mut self, offset: u64) -> bool {
        self.rows += 1;
        if self.rows < LOOK_ROWS && offset < self.next_offset {
            return false;
        }
        self.rows = 0;
        self.next_offset = offset + LOOK_BYTES;
        true
    }
}

/// When the rows should stop at their next boundary.
#[derive(Clone)]
pub(super) struct Stopper {
    clock: StopClock,
    every_parts: u64,
    /// `parts_done` of the invocation at the last checkpoint.
    parts_mark: Arc<AtomicU64>,
    progress: Arc<Progress>,
}

impl Stopper {
    /// `Some(true)` when the invocation's time is up, `Some(false)` when a periodic checkpoint
    /// is due, `None` to read on.
    pub fn wanted(&self) -> Option<bool> {
        if self
            .clock
            .due()
            .is_some_and(|due| tokio::time::Instant::now() >= due)
        {
            return Some(true);
        }
        let done = self.progress.snapshot().parts_done;
        (done >= self.parts_mark.load(Ordering::Relaxed) + self.every_parts).then_some(false)
    }

    fn mark(&self) {
        let done = self.progress.snapshot().parts_done;
        self.parts_mark.store(done, Ordering::Relaxed);
    }
}

/// A digest of `pipeline`, kept in its checkpoints: a checkpoint continues only with the
/// pipeline that wrote it (a deployment that changed it refuses the checkpoint).
pub fn fingerprint(pipeline: &Pipeline) -> String {
    crate::checksum::ChecksumAlgorithm::Crc64nvme
        .checksum(format!("{pipeline:?}").as_bytes())
        .to_base64()
}

/// The name of a decoding in a checkpoint, and back.
pub(super) fn decoding_name(d: Decoding) -> &'static str {
    d.name().unwrap_or("identity")
}

pub(super) fn decoding_of(name: &str) -> Result<Decoding> {
    match name {
        "identity" => Ok(Decoding::Identity),
        "gzip" => Ok(Decoding::Gzip),
        "zstd" => Ok(Decoding::Zstd),
        other => Err(Error::spec(format!(
            "checkpoint: unknown source decoding {other:?}"
        ))),
    }
}

/// The checkpoints of one transform invocation, and how its rows resume.
pub(super) struct RowCheckpoints<'a> {
    pub checkpoints: Checkpoints<'a>,
    pub stopper: Stopper,
    /// The position's fixed fields (source version, decoding, header, pipeline); each save
    /// fills in the rest.
    pub base: RowsPosition,
    /// Where each member of a compressed source starts (`None`: identity).
    pub starts: Option<MemberStarts>,
    /// The member this invocation started decoding at.
    pub from_member: MemberStart,
    /// Where this invocation's rows start (`None`: the beginning, header included).
    pub resumed: Option<ReadPoint>,
    /// The first bad row of the invocations before.
    pub first_bad_before: Option<String>,
    /// Source bytes read by the invocations before this one, and this one's counter.
    pub bytes_before: u64,
    pub bytes_read: Arc<crate::source::s3::BodyProgress>,
    /// One object's output (`None`: partitioned) and its upload options, to resume it after
    /// a periodic checkpoint.
    pub target: Option<Arc<S3Target>>,
    pub options: UploadOptions,
    /// The quarantine's key (its side upload).
    pub quarantine_key: String,
    /// The parts and bytes of the output at the last checkpoint.
    pub saved: (u32, u64),
}

impl<'a> RowCheckpoints<'a> {
    /// A stopper for `clock`, checkpointing every `every_parts` parts of the invocation's
    /// `progress`.
    pub fn stopper(clock: StopClock, every_parts: u64, progress: Arc<Progress>) -> Stopper {
        let stopper = Stopper {
            clock,
            every_parts,
            parts_mark: Arc::default(),
            progress,
        };
        stopper.mark();
        stopper
    }

    /// At a boundary between two records (`at`): everything before it goes into the output
    /// and the quarantine, both are suspended (a partitioned output's objects completed) and
    /// the checkpoint is saved. When the time is up (`time_up`), the event that continues is
    /// returned and both stay suspended; else both resume and the rows go on (`None`). A
    /// failure aborts both uploads (a partitioned output's open objects).
    pub async fn boundary(
        &mut self,
        sink: &mut RowSink<'_>,
        at: ReadPoint,
        time_up: bool,
    ) -> Result<Option<Continue>> {
        sink.flush().await?;
        let (suspended, files) = match sink.partitioned() {
            Some(rows) => (Suspended::none(), Some(rows.suspend().await?)),
            None => (sink.output().suspend().await?, None),
        };
        let side = match sink.quarantine.suspend().await {
            Ok(side) => side,
            Err(e) => {
                self.abort_suspended(&suspended).await;
                return Err(e);
            }
        };
        let member = match &self.starts {
            None => MemberStart {
                compressed: at.offset,
                decoded: at.offset,
            },
            Some(starts) => starts.at_or_before(at.offset).unwrap_or(self.from_member),
        };
        let mut counts = *sink.counts;
        // The rows' counts keep the quarantined ones only at the end of the rows.
        counts.quarantined = sink.quarantine.count();
        let position = RowsPosition {
            member_compressed: member.compressed,
            member_decoded: member.decoded,
            decoded: at.offset,
            lines: at.lines,
            records: at.records,
            counts,
            first_bad: sink.first_bad().map(str::to_owned),
            partitions: files.as_ref().map(|f| Box::new(f.clone())),
            ..self.base.clone()
        };
        let bytes_in = self.bytes_before + self.bytes_read.bytes();
        self.saved = match &files {
            Some(f) => f.uploaded(),
            None => (suspended.parts.len() as u32, suspended.bytes),
        };
        let quarantined = sink.quarantine.count();
        let saved = self
            .checkpoints
            .save_with_side(
                Position::Rows(Box::new(position)),
                bytes_in,
                suspended.clone(),
                side.clone().map(|s| (self.quarantine_key.clone(), s)),
            )
            .await?;
        if time_up {
            tracing::info!(
                checkpoint = %saved.checkpoint.key, decoded = at.offset, records = at.records,
                parts = self.saved.0, objects = files.map(|f| f.objects.len()),
                "stopped at a row before the deadline; the transform continues in the next invocation"
            );
            return Ok(Some(saved));
        }
        tracing::debug!(checkpoint = %saved.checkpoint.key, decoded = at.offset, "checkpoint");
        // A partitioned output goes on by itself: a row opens its partition's next `{part}`.
        let output = match &self.target {
            Some(target) => ObjectWriter::resume(target.clone(), &self.options, suspended)
                .map(|w| sink.output().resume_text(w)),
            None => Ok(()),
        };
        let resumed = output.and_then(|()| sink.quarantine.resume(side, quarantined));
        if let Err(e) = resumed {
            self.checkpoints.give_up(&e).await;
            return Err(e);
        }
        self.stopper.mark();
        Ok(None)
    }

    /// Aborts an output upload suspended before its checkpoint could be saved.
    async fn abort_suspended(&self, suspended: &Suspended) {
        let Some(target) = &self.target else {
            return;
        };
        if let Ok(w) = ObjectWriter::resume(target.clone(), &self.options, suspended.clone()) {
            w.abort().await;
        }
    }
}

/// A transform that may continue: what its first checkpoint holds and where this
/// invocation's rows start.
pub(super) struct Continuing<'c> {
    pub continuation: &'c Continuation,
    /// The checkpoint position's fixed fields.
    pub base: RowsPosition,
    /// The member starts of a compressed source.
    pub starts: Option<crate::codec::MemberStarts>,
    /// The member this invocation decodes from.
    pub member: MemberStart,
    /// Where this invocation's rows start (`None`: the beginning).
    pub resumed: Option<ReadPoint>,
    /// Source bytes read before this invocation, and by it.
    pub bytes_before: u64,
    pub bytes_read: Arc<s3src::BodyProgress>,
}

impl<'c> Continuing<'c> {
    /// The checkpoints of this invocation, writing `w` (one object's `target`, or a
    /// partitioned output's objects when `None`) with `scope`'s upload options.
    pub fn saver(
        self,
        scope: JobScope<'c>,
        w: &Writing,
        target: Option<&S3Target>,
    ) -> RowCheckpoints<'c> {
        let first = Position::Rows(Box::new(self.base.clone()));
        let checkpoints = Checkpoints::new(scope, self.continuation, &w.key, first);
        let stopper = RowCheckpoints::stopper(
            checkpoints.clock.clone(),
            checkpoints.every_parts,
            scope.invocation.progress.clone(),
        );
        RowCheckpoints {
            checkpoints,
            stopper,
            first_bad_before: self.base.first_bad.clone(),
            base: self.base,
            starts: self.starts,
            from_member: self.member,
            resumed: self.resumed,
            bytes_before: self.bytes_before,
            bytes_read: self.bytes_read,
            target: target.map(|t| Arc::new(t.clone())),
            options: scope.options.clone(),
            quarantine_key: w.quarantine_key.clone(),
            saved: (0, 0),
        }
    }
}

/// Whether a transform with `pipeline` can go on in another invocation: a CSV or NDJSON
/// object, or a partitioned output in any format (each stop completes its objects, and the
/// next invocation writes each partition's next `{part}`). One Parquet file cannot: its
/// footer indexes every row group. A checkpoint of a pipeline that cannot is refused by
/// [`resume_point`].
pub(super) fn can_continue(pipeline: &Pipeline, continuation: &Continuation) -> bool {
    let can = cannot_continue(pipeline).is_none();
    if !can && continuation.from.is_none() {
        tracing::info!(
            "the output is one Parquet file: the transform runs in one invocation (a {{part}} in output.key with max_object_mib lets it continue)"
        );
    }
    can || continuation.from.is_some()
}

/// Why the output of `pipeline` cannot continue, if it cannot.
fn cannot_continue(pipeline: &Pipeline) -> Option<&'static str> {
    (pipeline.output.format == Format::Parquet && !pipeline.is_partitioned())
        .then_some("the pipeline's output, one Parquet file, cannot continue")
}

/// The position a checkpoint resumes, when it is a transform's written with this pipeline.
pub(super) fn resume_point<'l>(
    pipeline: &Pipeline,
    loaded: &'l Loaded,
) -> Result<&'l RowsPosition> {
    let at = &loaded.reference.checkpoint;
    let refuse = |why: String| {
        Error::spec(format!(
            "checkpoint s3://{}/{}: {why}; its uploads are aborted",
            at.bucket, at.key
        ))
    };
    let crate::checkpoint::Position::Rows(position) = &loaded.checkpoint.position else {
        return Err(refuse(format!(
            "it is for {}, not a transform",
            loaded.checkpoint.position.kind()
        )));
    };
    if position.pipeline != fingerprint(pipeline) {
        return Err(refuse(
            "it was written with another pipeline (the function's pipeline changed)".into(),
        ));
    }
    if let Some(why) = cannot_continue(pipeline) {
        return Err(refuse(why.into()));
    }
    if position.partitions.is_some() != pipeline.is_partitioned() {
        return Err(refuse(
            "its output and the pipeline's differ (one object and a partitioned one)".into(),
        ));
    }
    if position.decoded < position.member_decoded {
        return Err(refuse("its member starts after its rows".into()));
    }
    Ok(position)
}

/// The output a resumed transform goes on writing: its keys as the first invocation
/// rendered them (the checkpoint keeps the run id and start), the source version pinned. A
/// partitioned output replaces, once it lands, the objects the manifest lists now (the older
/// version's, as the first invocation found them).
pub(super) async fn resumed_writing(
    pipeline: &Pipeline,
    src: &SourceObject,
    ctx: &TransformContext,
    at: &RowsPosition,
    summary: &mut ObjectSummary,
) -> Result<Box<Writing>> {
    let vars = SourceVars {
        key: src.key.clone(),
        vars: KeyVars::new(ctx.invocation.started, ctx.invocation.run_id.clone()),
    };
    let quarantine_key = config::render_key("quarantine.key", &pipeline.quarantine.key, &vars)?;
    let (key, manifest_key, to) = if pipeline.is_partitioned() {
        let template = pipeline.partition_template(&vars)?;
        let key = template.pattern();
        let manifest_key = super::partitioned_manifest_key(pipeline, &src.key);
        let manifest = super::read_manifest(&ctx.s3, &summary.bucket, &manifest_key).await?;
        let previous = manifest
            .as_ref()
            .map(super::manifest_objects)
            .unwrap_or_default();
        (
            key,
            manifest_key,
            WriteTo::Partitioned { template, previous },
        )
    } else {
        let key = config::render_key("output.key", &pipeline.output.key, &vars)?;
        let target = S3Target::new(ctx.s3.clone(), &summary.bucket, &key).with_meta(ObjectMeta {
            content_type: Some(content_type(pipeline)),
        });
        let to = WriteTo::One {
            target,
            output_exists: at.output_exists,
        };
        (key.clone(), job::manifest_key(&key), to)
    };
    summary.key = Some(key.clone());
    summary.source_etag = Some(at.etag.clone());
    summary.source_last_modified = at.last_modified.clone();
    let last_modified = at
        .last_modified
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.to_utc());
    Ok(Box::new(Writing {
        manifest_key,
        key,
        quarantine_key,
        version: ObjectVersion {
            e_tag: at.etag.clone(),
            last_modified,
            size: 0,
        },
        to,
    }))
}

/// The fixed fields of a first invocation's checkpoints: the source version and its
/// decoding, whether an output was there, the pipeline's digest.
pub(super) fn first_position(
    pipeline: &Pipeline,
    w: &Writing,
    decoding: Decoding,
    summary: &ObjectSummary,
) -> RowsPosition {
    RowsPosition {
        etag: w.version.e_tag.clone(),
        last_modified: summary.source_last_modified.clone(),
        decoding: decoding_name(decoding).to_owned(),
        member_compressed: 0,
        member_decoded: 0,
        decoded: 0,
        lines: 0,
        records: 0,
        header: None,
        counts: super::Counts::default(),
        output_exists: matches!(
            w.to,
            WriteTo::One {
                output_exists: true,
                ..
            }
        ),
        first_bad: None,
        pipeline: fingerprint(pipeline),
        partitions: None,
    }
}

/// Reads and drops the first `n` bytes of `decoded` (what the invocations before wrote past
/// the member this one decodes from); `map` names a read error.
pub(super) async fn skip(
    decoded: &mut (dyn AsyncRead + Send + Unpin),
    n: u64,
    map: impl Fn(std::io::Error) -> Error,
) -> Result<()> {
    let mut limited = decoded.take(n);
    let skipped = tokio::io::copy(&mut limited, &mut tokio::io::sink())
        .await
        .map_err(map)?;
    if skipped < n {
        return Err(Error::Internal {
            message: format!(
                "the source ended {skipped} bytes into the {n} already written: it is shorter than when the job started"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_come_every_256_rows_or_4_mib() {
        let mut looks = Looks::default();
        // The first row looks (the byte mark starts at 0), then every 256 rows of small ones.
        assert!(looks.due(10));
        let small: Vec<bool> = (1..=512).map(|i| looks.due(10 + i * 10)).collect();
        assert_eq!(small.iter().filter(|d| **d).count(), 2);
        assert!(small[255] && small[511]);
        // Rows of 3 MiB each: every second one passes the 4 MiB mark.
        let base = 10 + 512 * 10;
        let big: Vec<bool> = (1..=6).map(|i| looks.due(base + i * (3 << 20))).collect();
        assert_eq!(big, [false, true, false, true, false, true]);
    }

    #[test]
    fn decodings_round_trip_through_their_names() {
        for d in [Decoding::Identity, Decoding::Gzip, Decoding::Zstd] {
            assert_eq!(decoding_of(decoding_name(d)).unwrap(), d);
        }
        assert!(decoding_of("brotli").is_err());
    }
}
