//! Partitioned output: each record goes to the object of its partition, named from its own
//! values (`orders/dt={field:created_at:%Y-%m-%d}/{part}.ndjson.gz`), and objects roll at a
//! size or a record count.
//!
//! # Bounded open objects, few objects per partition
//!
//! At most [`Limits::max_open`] objects are open at once (each holds part buffers and an
//! encoder). A record whose partition has no open object:
//!
//! 1. opens one, when fewer than `max_open` are open;
//! 2. else replaces the least recently written open object, when that one has been idle for
//!    [`idle_records`] records (input sorted by the partition key has moved on: the object is
//!    finished, and its partition takes later records through the spill);
//! 3. else is **spilled**: kept, compressed, in one file on local disk ([`spill`]), within
//!    [`Limits::spill_bytes`], and written in the final pass, into the partition's open
//!    object if it still has one or into a new one.
//!
//! So every partition gets at most **two objects per roll**: the one open while its records
//! streamed, and one from the spill (records that arrived after it was finished). Input
//! sorted by the key with late arrivals gets one object per partition plus one for the late
//! records; fully interleaved input gets one per partition (the first `max_open` partitions
//! stream, the others go through the spill). When the spill reaches its budget, its largest
//! partition is written out at once into an object of its own and its share of the file is
//! freed: correct, with one more object for that partition each time (the summary counts
//! `spill_flushes`). A partition of `S` spilled bytes, with `P` partitions in a spill budget
//! of `B`, so gets at most about `2 + S·P / B` objects.
//!
//! # All or nothing
//!
//! Completed objects are listed as they complete ([`Written`]); a run that fails aborts its
//! open objects and deletes every object it completed ([`roll_back`]). Only
//! [`Partitioner::finish`] ends a run with its objects in place.

mod spill;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::Status;
use crate::sink::{ObjectMeta, ObjectWriter, PutOutcome, S3Target, UploadOptions, Uploaded};
pub use template::{DEFAULT_PARTITION, FieldRef, FieldValue, KeyTemplate};

/// An open object is replaced only after this many records without one, at least.
const IDLE_MIN: u64 = 10_000;

/// Records (of the whole run) after which an open object that got none counts as idle:
/// `max(10,000, 16 × partitions seen)`, so that in input interleaved over `n` partitions an
/// object that is still being written is almost never taken for idle.
pub fn idle_records(partitions: usize) -> u64 {
    IDLE_MIN.max(16 * partitions as u64)
}

/// The spill's default budget: 80% of what is free in `dir`, at most 10 GiB (Lambda's
/// largest `/tmp`); 0 when that cannot be read.
pub fn default_spill_bytes(dir: &std::path::Path) -> u64 {
    match spill::free_bytes(dir) {
        Ok(free) => (free / 5 * 4).min(10 * 1024 * 1024 * 1024),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the free space for the spill; spilling is off");
            0
        }
    }
}

/// Text records are handed to their object's writer in batches of this size.
const TEXT_BATCH: usize = 64 * 1024;

/// The limits of a partitioned run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Objects open at once.
    pub max_open: usize,
    /// Distinct partitions a run may write (`tuning.max_partitions`).
    pub max_partitions: usize,
    /// Finish an object before it passes this size (`max_object_mib`).
    pub max_object_bytes: Option<u64>,
    /// Finish an object when it holds this many records (`max_object_records`).
    pub max_object_records: Option<u64>,
    /// Where spilled records go (a Lambda's `/tmp`).
    pub spill_dir: PathBuf,
    /// Bytes the spill file may grow to.
    pub spill_bytes: u64,
    /// Bytes of spilled records buffered in memory, across partitions.
    pub spill_buffer: usize,
}

/// The objects of a partitioned run: opens, feeds and finishes one kind of object.
pub trait Objects: Send {
    /// One open object.
    type Object: Send;
    /// Opens the object at `key`.
    fn open(&mut self, key: &str) -> Result<Self::Object>;
    /// Appends one record.
    fn write(
        &mut self,
        object: &mut Self::Object,
        record: &[u8],
    ) -> impl Future<Output = Result<()>> + Send;
    /// An upper bound of the object's size were it finished now.
    fn size_bound(object: &Self::Object) -> u64;
    /// Completes the object.
    fn finish(object: Self::Object) -> impl Future<Output = Result<Uploaded>> + Send;
    /// Aborts the object's upload.
    fn abort(object: Self::Object) -> impl Future<Output = ()> + Send;
}

/// One object a partitioned run completed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionObject {
    /// The object's key.
    pub key: String,
    /// The partition: each `{field:…}` of the key with its value as written in the key.
    pub partition: BTreeMap<String, String>,
    /// `{part}`: the object's number within its partition, from 1.
    pub part: u32,
    /// `written`, or `exists` when `overwrite: false` found an object there.
    pub status: Status,
    /// Records in the object.
    pub records: u64,
    /// The object's size.
    pub bytes: u64,
    /// Parts uploaded (1 for a `PutObject`).
    pub parts: u32,
    /// Full-object checksum, base64.
    pub checksum: String,
    /// The object's ETag.
    pub e_tag: Option<String>,
}

/// The objects a run has completed so far; shared with the caller, so that a run whose
/// producer panicked can still delete them ([`roll_back`]).
pub type Written = Arc<Mutex<Vec<PartitionObject>>>;

/// What a finished partitioned run wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionedSummary {
    /// Objects completed.
    pub objects: usize,
    /// Partitions seen.
    pub partitions: usize,
    /// Records written through the spill.
    pub spilled_records: u64,
    /// Most bytes the spill file held.
    pub spill_peak_bytes: u64,
    /// Times the spill reached its budget and its largest partition was written out early.
    pub spill_flushes: u64,
    /// Objects finished because they reached `max_object_mib` / `max_object_records`.
    pub rolled: u64,
}

/// A partitioned run between two invocations ([`Partitioner::suspend`]): every object it
/// completed, the next `{part}` of each partition, and its figures. The next invocation
/// goes on from it ([`Partitioner::resume`]), writing each partition's next `{part}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PartitionsResume {
    /// Each partition seen: its key segments and the number of its next object.
    pub partitions: Vec<(Vec<String>, u32)>,
    /// The objects completed so far.
    pub objects: Vec<PartitionObject>,
    /// The run's figures so far.
    pub summary: PartitionedSummary,
}

impl PartitionsResume {
    /// The parts and bytes of the objects completed so far.
    pub fn uploaded(&self) -> (u32, u64) {
        let parts = self.objects.iter().map(|o| o.parts).sum();
        (parts, self.objects.iter().map(|o| o.bytes).sum())
    }
}

struct Partition<T> {
    segments: Vec<String>,
    /// Number of the next object.
    next_part: u32,
    open: Option<Open<T>>,
    /// Finished to make room for another: its later records go through the spill.
    displaced: bool,
    last_write: u64,
}

struct Open<T> {
    object: T,
    key: String,
    part: u32,
    records: u64,
}

/// Routes records to the objects of their partitions (see the module docs).
pub struct Partitioner<O: Objects> {
    objects: O,
    template: KeyTemplate,
    limits: Limits,
    partitions: Vec<Partition<O::Object>>,
    index: HashMap<Vec<String>, usize>,
    open: usize,
    spill: Option<spill::Spill>,
    seq: u64,
    written: Written,
    summary: PartitionedSummary,
}

impl<O: Objects> std::fmt::Debug for Partitioner<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitioner")
            .field("partitions", &self.partitions.len())
            .field("open", &self.open)
            .field("spill", &self.spill)
            .finish()
    }
}

impl<O: Objects> Partitioner<O> {
    /// A run writing `objects` at the keys of `template`. A template that can give a
    /// partition more than one object (any `{field:…}`, or a size or record limit) must use
    /// `{part}`: an error naming the template otherwise.
    pub fn new(
        objects: O,
        template: KeyTemplate,
        limits: Limits,
        written: Written,
    ) -> Result<Self> {
        let rolls = limits.max_object_bytes.is_some() || limits.max_object_records.is_some();
        if (template.is_partitioned() || rolls) && !template.has_part() {
            return Err(Error::spec(
                "the key needs {part}: with {field:…} placeholders or max_object_mib / max_object_records a partition can get more than one object, and {part} numbers them",
            ));
        }
        if limits.max_open == 0 {
            return Err(Error::spec("tuning.max_open_partitions must be at least 1"));
        }
        Ok(Partitioner {
            objects,
            template,
            limits,
            partitions: Vec::new(),
            index: HashMap::new(),
            open: 0,
            spill: None,
            seq: 0,
            written,
            summary: PartitionedSummary::default(),
        })
    }

    /// The key template.
    pub fn template(&self) -> &KeyTemplate {
        &self.template
    }

    /// The objects' factory.
    pub fn objects(&self) -> &O {
        &self.objects
    }

    /// The objects' factory (for a source that must tell it something, a schema).
    pub fn objects_mut(&mut self) -> &mut O {
        &mut self.objects
    }

    /// Writes `record`, whose partition is `segments` (one per `{field:…}`, from
    /// [`KeyTemplate::segment`]).
    pub async fn write(&mut self, segments: Vec<String>, record: &[u8]) -> Result<()> {
        self.seq += 1;
        let id = match self.index.get(&segments) {
            Some(id) => *id,
            None => {
                let id = self.partitions.len();
                if id >= self.limits.max_partitions {
                    return Err(self.too_many_partitions(&segments));
                }
                self.index.insert(segments.clone(), id);
                self.partitions.push(Partition {
                    segments,
                    next_part: 1,
                    open: None,
                    displaced: false,
                    last_write: 0,
                });
                id
            }
        };
        if self.partitions[id].open.is_none() {
            let may_open = !self.partitions[id].displaced;
            if may_open && self.open >= self.limits.max_open {
                let idle = idle_records(self.partitions.len());
                match self.least_recent() {
                    Some(lru) if self.seq - self.partitions[lru].last_write > idle => {
                        self.displace(lru).await?;
                    }
                    _ => return self.spill(id, record).await,
                }
            } else if !may_open {
                return self.spill(id, record).await;
            }
        }
        self.write_open(id, record).await
    }

    fn too_many_partitions(&self, segments: &[String]) -> Error {
        let values: Vec<String> = self
            .template
            .fields()
            .iter()
            .zip(segments)
            .map(|(f, v)| format!("{}={v}", f.name))
            .collect();
        Error::spec(format!(
            "{} {:?}: record {} opens partition {} {}, more than tuning.max_partitions {} (nothing of the run is kept): partition on a coarser value (a day, not a timestamp), or raise max_partitions",
            self.template.field_name(),
            self.template.source(),
            self.seq,
            self.partitions.len() + 1,
            values.join(", "),
            self.limits.max_partitions
        ))
    }

    /// Finishes partition `id`'s object to make room; its later records are spilled.
    async fn displace(&mut self, id: usize) -> Result<()> {
        self.finish_object(id).await?;
        self.partitions[id].displaced = true;
        Ok(())
    }

    /// While the spill is at its budget, writes its largest partition out (into an object
    /// of its own, after making room among the open ones), freeing its share of the file.
    async fn relieve(&mut self) -> Result<()> {
        while let Some(id) = self
            .spill
            .as_ref()
            .filter(|s| s.is_full())
            .and_then(spill::Spill::largest)
        {
            if self.summary.spill_flushes == 0 {
                tracing::warn!(
                    budget = self.limits.spill_bytes,
                    "the spill reached its budget: its largest partition is written out early (more objects for it)"
                );
            }
            self.summary.spill_flushes += 1;
            if self.partitions[id].open.is_none()
                && self.open >= self.limits.max_open
                && let Some(lru) = self.least_recent()
            {
                self.displace(lru).await?;
            }
            self.replay(id).await?;
            self.displace(id).await?;
        }
        Ok(())
    }

    /// The open partition written least recently.
    fn least_recent(&self) -> Option<usize> {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.open.is_some())
            .min_by_key(|(_, p)| p.last_write)
            .map(|(i, _)| i)
    }

    async fn spill(&mut self, id: usize, record: &[u8]) -> Result<()> {
        self.relieve().await?;
        if self.spill.is_none() {
            let spill = spill::Spill::create(
                &self.limits.spill_dir,
                self.limits.spill_bytes,
                self.limits.spill_buffer,
            )
            .map_err(|e| self.spill_error("cannot create the spill file", e))?;
            tracing::info!(dir = %self.limits.spill_dir.display(), budget = self.limits.spill_bytes,
                open = self.open, "spilling the records of partitions without an open object");
            self.spill = Some(spill);
        }
        let spill = self.spill.as_mut().expect("created above");
        spill
            .push(id, record)
            .map_err(|e| self.spill_error("cannot write the spill file", e))?;
        self.summary.spilled_records += 1;
        Ok(())
    }

    fn spill_error(&self, what: &str, e: std::io::Error) -> Error {
        Error::Internal {
            message: format!("{what} in {}: {e}", self.limits.spill_dir.display()),
        }
    }

    /// Writes to partition `id`'s open object, opening (or rolling to) one as needed.
    async fn write_open(&mut self, id: usize, record: &[u8]) -> Result<()> {
        if let Some(open) = &self.partitions[id].open {
            let full_bytes = self
                .limits
                .max_object_bytes
                .is_some_and(|max| O::size_bound(&open.object) + record.len() as u64 > max);
            let full_records = self
                .limits
                .max_object_records
                .is_some_and(|max| open.records >= max);
            if open.records > 0 && (full_bytes || full_records) {
                self.finish_object(id).await?;
                self.summary.rolled += 1;
            }
        }
        if self.partitions[id].open.is_none() {
            self.open_object(id)?;
        }
        let p = &mut self.partitions[id];
        let open = p.open.as_mut().expect("opened above");
        self.objects.write(&mut open.object, record).await?;
        open.records += 1;
        p.last_write = self.seq;
        Ok(())
    }

    fn open_object(&mut self, id: usize) -> Result<()> {
        let p = &mut self.partitions[id];
        if p.next_part > template::MAX_PART {
            return Err(Error::spec(format!(
                "partition {:?} would need more than {} objects: raise max_object_mib / max_object_records",
                p.segments,
                template::MAX_PART
            )));
        }
        let key = self.template.render(&p.segments, p.next_part)?;
        let object = self.objects.open(&key)?;
        p.open = Some(Open {
            object,
            key,
            part: p.next_part,
            records: 0,
        });
        p.next_part += 1;
        self.open += 1;
        Ok(())
    }

    async fn finish_object(&mut self, id: usize) -> Result<()> {
        let Some(open) = self.partitions[id].open.take() else {
            return Ok(());
        };
        self.open -= 1;
        let uploaded = O::finish(open.object).await?;
        let partition = self
            .template
            .fields()
            .iter()
            .zip(&self.partitions[id].segments)
            .map(|(f, v)| (f.name.clone(), v.clone()))
            .collect();
        let (status, e_tag) = match uploaded.outcome {
            PutOutcome::Written { e_tag, .. } => (Status::Written, Some(e_tag)),
            PutOutcome::AlreadyExists => (Status::Exists, None),
        };
        tracing::debug!(key = %open.key, records = open.records, bytes = uploaded.bytes, "partition object finished");
        lock(&self.written).push(PartitionObject {
            key: open.key,
            partition,
            part: open.part,
            status,
            records: open.records,
            bytes: uploaded.bytes,
            parts: uploaded.parts,
            checksum: uploaded.checksum.to_base64(),
            e_tag,
        });
        Ok(())
    }

    /// Goes on from `resume` (a run an earlier invocation suspended): its objects count as
    /// this run's (a failure deletes them too), and each partition's next object is the
    /// `{part}` after its last.
    pub fn resume(&mut self, resume: PartitionsResume) {
        for (segments, next_part) in resume.partitions {
            self.index.insert(segments.clone(), self.partitions.len());
            self.partitions.push(Partition {
                segments,
                next_part,
                open: None,
                displaced: false,
                last_write: 0,
            });
        }
        *lock(&self.written) = resume.objects;
        self.summary = resume.summary;
    }

    /// Completes every object (the spilled rows written first) so that the run can stop
    /// here and go on in another invocation, and returns what that one needs. The run may
    /// also go on in this one: the next record of a partition opens its next `{part}`. On
    /// error the open objects have been aborted; the caller deletes what completed.
    pub async fn suspend(&mut self) -> Result<PartitionsResume> {
        if let Err(e) = self.final_pass().await {
            self.abort_open().await;
            return Err(e);
        }
        for p in &mut self.partitions {
            p.displaced = false;
        }
        self.summary.partitions = self.partitions.len();
        let objects = lock(&self.written).clone();
        self.summary.objects = objects.len();
        Ok(PartitionsResume {
            partitions: self
                .partitions
                .iter()
                .map(|p| (p.segments.clone(), p.next_part))
                .collect(),
            objects,
            summary: self.summary.clone(),
        })
    }

    /// Ends the run: writes every spilled record (open partitions first, so no more than
    /// `max_open` objects are ever open) and finishes every object. On error the open
    /// objects have been aborted; the caller deletes what completed ([`roll_back`]).
    pub async fn finish(mut self) -> Result<(Vec<PartitionObject>, PartitionedSummary)> {
        match self.final_pass().await {
            Ok(()) => {
                self.summary.partitions = self.partitions.len();
                // Left in the shared list too: the caller deletes them if what follows fails.
                let objects = lock(&self.written).clone();
                self.summary.objects = objects.len();
                Ok((objects, self.summary.clone()))
            }
            Err(e) => {
                self.abort_open().await;
                Err(e)
            }
        }
    }

    async fn final_pass(&mut self) -> Result<()> {
        let spilled = self
            .spill
            .as_ref()
            .map(|s| s.partitions())
            .unwrap_or_default();
        // Open objects whose partitions have nothing spilled are done.
        for id in 0..self.partitions.len() {
            if self.partitions[id].open.is_some() && !spilled.contains(&id) {
                self.finish_object(id).await?;
            }
        }
        // Open partitions first: then at most one more object opens at a time.
        let (open, closed): (Vec<usize>, Vec<usize>) = spilled
            .iter()
            .partition(|id| self.partitions[**id].open.is_some());
        for id in open.into_iter().chain(closed) {
            self.replay(id).await?;
            self.finish_object(id).await?;
        }
        if let Some(s) = &self.spill {
            self.summary.spill_peak_bytes = self.summary.spill_peak_bytes.max(s.peak_bytes());
        }
        self.spill = None;
        Ok(())
    }

    /// Writes partition `id`'s spilled records into its object.
    async fn replay(&mut self, id: usize) -> Result<()> {
        let Some(mut spill) = self.spill.take() else {
            return Ok(());
        };
        let mut taken = spill.take(id);
        let result = async {
            while let Some(block) = spill
                .next_block(&mut taken)
                .map_err(|e| self.spill_error("cannot read the spill file", e))?
            {
                for record in spill::records(&block) {
                    self.write_open(id, record).await?;
                }
            }
            Ok(())
        }
        .await;
        self.spill = Some(spill);
        result
    }

    /// Aborts every open object; the caller deletes the completed ones ([`roll_back`]).
    pub async fn abort(mut self) {
        self.abort_open().await;
    }

    async fn abort_open(&mut self) {
        for p in &mut self.partitions {
            if let Some(open) = p.open.take() {
                O::abort(open.object).await;
            }
        }
        self.open = 0;
        self.spill = None;
    }
}

/// The values of the top-level keys `names` of the JSON object `record` (null when missing).
/// Strings are taken as they are, numbers and booleans as their JSON text, objects and arrays
/// as compact JSON. A record that is not a JSON object is an error.
pub fn json_fields(record: &[u8], names: &[&str]) -> std::result::Result<Vec<FieldValue>, String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Pick<'n>(&'n [&'n str]);
    impl<'de> Visitor<'de> for Pick<'_> {
        type Value = Vec<FieldValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut values = vec![FieldValue::Null; self.0.len()];
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                match self.0.iter().position(|n| *n == key) {
                    Some(i) => {
                        values[i] = match map.next_value::<serde_json::Value>()? {
                            serde_json::Value::Null => FieldValue::Null,
                            serde_json::Value::String(s) => FieldValue::Text(s),
                            other => FieldValue::Text(other.to_string()),
                        }
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(values)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(record);
    de.deserialize_map(Pick(names)).map_err(|e| e.to_string())
}

fn lock(written: &Written) -> std::sync::MutexGuard<'_, Vec<PartitionObject>> {
    // Pushes are whole: a panic elsewhere cannot leave the list half-updated.
    written.lock().unwrap_or_else(|p| p.into_inner())
}

/// Deletes the objects of a failed run listed in `written`, best effort (each failure is
/// logged as an error naming the key).
pub async fn roll_back(s3: &aws_sdk_s3::Client, bucket: &str, written: &Written) {
    roll_back_sparing(s3, bucket, written, |_| false).await;
}

/// [`roll_back`], keeping the objects whose key `spare` accepts (those a checkpoint kept for
/// a retry lists).
pub async fn roll_back_sparing(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    written: &Written,
    spare: impl Fn(&str) -> bool,
) {
    let objects = std::mem::take(&mut *lock(written));
    let keys = objects
        .iter()
        .filter(|o| o.status == Status::Written && !spare(&o.key))
        .map(|o| o.key.as_str());
    delete(s3, bucket, keys, "the failed run").await;
}

/// Deletes `keys` (objects of `whose`, for the log), best effort: returns how many went, and
/// logs each failure as an error naming the key.
pub async fn delete<'k>(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    keys: impl IntoIterator<Item = &'k str>,
    whose: &str,
) -> usize {
    let mut deleted = 0;
    for key in keys {
        match s3.delete_object().bucket(bucket).key(key).send().await {
            Ok(_) => {
                deleted += 1;
                tracing::info!(%bucket, %key, "deleted an object of {whose}");
            }
            Err(e) => tracing::error!(
                %bucket, %key, error = %aws_sdk_s3::error::DisplayErrorContext(&e),
                "could not delete an object of {whose}; it stays"
            ),
        }
    }
    deleted
}

/// CSV or NDJSON objects: each record is one line.
#[derive(Debug, Clone)]
pub struct TextObjects {
    /// The S3 client.
    pub s3: aws_sdk_s3::Client,
    /// The bucket.
    pub bucket: String,
    /// The objects' metadata.
    pub meta: ObjectMeta,
    /// How each object is uploaded (its share of the memory budget).
    pub options: UploadOptions,
    /// Bytes that begin every object (a CSV header line), if any.
    pub header: Option<bytes::Bytes>,
}

/// One open text object: its writer and the batch of lines not yet handed to it.
#[derive(Debug)]
pub struct TextObject {
    writer: ObjectWriter,
    batch: BytesMut,
}

impl Objects for TextObjects {
    type Object = TextObject;

    fn open(&mut self, key: &str) -> Result<TextObject> {
        let target = S3Target::new(self.s3.clone(), &self.bucket, key).with_meta(self.meta.clone());
        Ok(TextObject {
            writer: ObjectWriter::new(Arc::new(target), &self.options)?,
            batch: self
                .header
                .as_deref()
                .map(BytesMut::from)
                .unwrap_or_default(),
        })
    }

    async fn write(&mut self, object: &mut TextObject, record: &[u8]) -> Result<()> {
        object.batch.extend_from_slice(record);
        object.batch.put_u8(b'\n');
        if object.batch.len() >= TEXT_BATCH {
            object.writer.write(object.batch.split().freeze()).await?;
        }
        Ok(())
    }

    fn size_bound(object: &TextObject) -> u64 {
        object.writer.size_bound() + object.batch.len() as u64
    }

    async fn finish(mut object: TextObject) -> Result<Uploaded> {
        if !object.batch.is_empty() {
            object.writer.write(object.batch.split().freeze()).await?;
        }
        object.writer.finish().await
    }

    async fn abort(object: TextObject) {
        object.writer.abort().await;
    }
}

#[cfg(test)]
mod tests;
