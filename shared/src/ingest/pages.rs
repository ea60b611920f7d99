//! `{page}` in the key: every page with records becomes its own object, with its own manifest,
//! and a run leaves all its pages or none.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{JobContext, Summary, write_manifest};
use crate::error::Result;
use crate::job::Status;
use crate::key::{self, KeyVars};
use crate::sink::{ObjectMeta, ObjectWriter, PutOutcome, S3Target, UploadOptions};
use crate::spec::Destination;

/// One object of a run that writes every page to its own object (`{page}` in the key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PageObject {
    /// The page's number in this run, from 1 (`{page}` renders it zero-padded to 5 digits).
    pub page: u32,
    /// The object's key.
    pub key: String,
    /// `written`, or `exists` when `overwrite: false` found the object already there.
    pub status: Status,
    /// Records in the page.
    pub records: u64,
    /// The object's size.
    pub bytes_out: u64,
    /// Parts uploaded.
    pub parts: u32,
    /// Full-object checksum, base64.
    pub checksum: Option<String>,
    /// The object's ETag.
    pub e_tag: Option<String>,
    /// The page's manifest key, when one was written.
    pub manifest: Option<String>,
}

/// The objects a run has finished so far, in page order. Shared with the caller, so that a
/// run whose producer panicked can still delete them.
pub(super) type Written = Arc<Mutex<Vec<PageObject>>>;

/// Writes each page to its own object: opened at the page's first record, finished at the
/// page's end. Owns what it needs, so that the producer can run on its own task.
pub(super) struct PageWriter {
    pub ctx: JobContext,
    pub destination: Destination,
    pub vars: KeyVars,
    pub meta: ObjectMeta,
    pub options: UploadOptions,
    /// The run's summary, the base of each page's manifest.
    pub summary: Summary,
    /// The page being written: its number, key and writer.
    pub current: Option<(u32, String, ObjectWriter)>,
    /// The objects finished so far.
    pub written: Written,
}

impl PageWriter {
    /// Appends a batch of page `page`'s records, opening its object on the first one.
    pub async fn write(&mut self, page: u32, batch: Bytes) -> Result<()> {
        if self.current.as_ref().is_none_or(|(n, ..)| *n != page) {
            let key = key::render(
                &self.destination.key,
                &self.vars.clone().with("page", format!("{page:05}")),
            )?;
            let target = S3Target::new(self.ctx.s3.clone(), &self.destination.bucket, &key)
                .with_meta(self.meta.clone());
            let writer = ObjectWriter::new(Arc::new(target), &self.options)?;
            // A page's object is finished in `end_page` before the next one opens.
            debug_assert!(self.current.is_none());
            self.current = Some((page, key, writer));
        }
        let (.., writer) = self.current.as_mut().expect("opened above");
        writer.write(batch).await
    }

    /// Finishes page `page`'s object (a page without records has none) and writes its
    /// manifest.
    pub async fn end_page(&mut self, page: u32, records: u64, bytes_in: u64) -> Result<()> {
        let Some((number, key, writer)) = self.current.take() else {
            tracing::debug!(page, "page has no records; no object");
            return Ok(());
        };
        debug_assert_eq!(number, page);
        let uploaded = writer.finish().await?;
        let mut object = PageObject {
            page,
            key: key.clone(),
            status: Status::Exists,
            records,
            bytes_out: 0,
            parts: 0,
            checksum: None,
            e_tag: None,
            manifest: None,
        };
        let PutOutcome::Written { e_tag, .. } = uploaded.outcome else {
            lock(&self.written).push(object);
            return Ok(());
        };
        object.status = Status::Written;
        object.bytes_out = uploaded.bytes;
        object.parts = uploaded.parts;
        object.checksum = Some(uploaded.checksum.to_base64());
        object.e_tag = Some(e_tag.clone());
        // Recorded before its manifest, so a failed manifest is rolled back with the object.
        lock(&self.written).push(object.clone());
        if self.destination.manifest {
            let page_summary = Summary {
                status: Status::Written,
                key,
                bytes_in,
                bytes_out: uploaded.bytes,
                records: Some(records),
                pages: Some(1),
                parts: uploaded.parts,
                checksum_algorithm: uploaded.checksum.algorithm().s3_name(),
                checksum: object.checksum.clone(),
                e_tag: Some(e_tag),
                objects: None,
                ..self.summary.clone()
            };
            let manifest = write_manifest(&self.ctx, &page_summary, Some(page)).await?;
            if let Some(last) = lock(&self.written).last_mut() {
                last.manifest = Some(manifest.clone());
            }
            object.manifest = Some(manifest);
        }
        tracing::info!(page, key = %object.key, records, bytes = object.bytes_out, "page object written");
        Ok(())
    }

    /// Ends the run after the producer returned: the objects written when `produced` is Ok;
    /// otherwise aborts the page being written and deletes the objects (and manifests) this
    /// run wrote, so a run leaves all its pages or none.
    pub async fn close(mut self, produced: Result<()>) -> Result<Vec<PageObject>> {
        match produced {
            Ok(()) => {
                // The producer ends every page it starts.
                debug_assert!(self.current.is_none());
                Ok(std::mem::take(&mut *lock(&self.written)))
            }
            Err(e) => {
                if let Some((.., writer)) = self.current.take() {
                    writer.abort().await;
                }
                roll_back(&self.ctx, &self.destination.bucket, &self.written).await;
                Err(e)
            }
        }
    }
}

impl PageWriter {
    /// The objects of the pages so far, at a stop between two pages (no page is open).
    pub fn objects_at_stop(&self) -> Result<Vec<PageObject>> {
        if let Some((page, ..)) = &self.current {
            return Err(crate::error::Error::Internal {
                message: format!("a checkpoint while page {page}'s object is open"),
            });
        }
        Ok(lock(&self.written).clone())
    }

    /// Goes on after the pages `objects` of the invocations before.
    pub fn resume(&self, objects: &[PageObject]) {
        *lock(&self.written) = objects.to_vec();
    }
}

fn lock(written: &Written) -> std::sync::MutexGuard<'_, Vec<PageObject>> {
    // A panic while the list was held cannot leave it half-updated: pushes are whole.
    written.lock().unwrap_or_else(|p| p.into_inner())
}

/// Deletes the objects (and manifests) of a failed run, best effort. Also used when the
/// producer panicked, with the list it shared.
pub(super) async fn roll_back(ctx: &JobContext, bucket: &str, written: &Written) {
    let objects = std::mem::take(&mut *lock(written));
    for object in objects.iter().filter(|o| o.status == Status::Written) {
        for key in std::iter::once(&object.key).chain(object.manifest.as_ref()) {
            match ctx.s3.delete_object().bucket(bucket).key(key).send().await {
                Ok(_) => tracing::info!(%bucket, %key, "deleted an object of the failed run"),
                Err(e) => tracing::error!(
                    %bucket, %key, error = %aws_sdk_s3::error::DisplayErrorContext(&e),
                    "could not delete an object of the failed run; it stays"
                ),
            }
        }
    }
}
