//! `{page}` in the key: every page with records becomes its own object, with its own manifest,
//! and a run leaves all its pages or none.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::{JobContext, Summary, write_manifest};
use crate::error::Result;
use crate::job::Status;
use crate::key::{self, KeyVars};
use crate::sink::{ObjectMeta, ObjectWriter, PutOutcome, S3Target, UploadOptions};
use crate::spec::JobSpec;

/// One object of a run that writes every page to its own object (`{page}` in the key).
#[derive(Debug, Clone, Serialize, PartialEq)]
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

/// Writes each page to its own object: opened at the page's first record, finished at the
/// page's end.
pub(super) struct PageWriter<'a> {
    pub ctx: &'a JobContext,
    pub spec: &'a JobSpec,
    pub vars: &'a KeyVars,
    pub meta: ObjectMeta,
    pub options: &'a UploadOptions,
    /// The run's summary, the base of each page's manifest.
    pub summary: &'a Summary,
    /// The page being written: its number, key and writer.
    pub current: Option<(u32, String, ObjectWriter)>,
    /// The objects finished so far, in page order.
    pub written: Vec<PageObject>,
}

impl PageWriter<'_> {
    /// Appends a batch of page `page`'s records, opening its object on the first one.
    pub async fn write(&mut self, page: u32, batch: Bytes) -> Result<()> {
        if self.current.as_ref().is_none_or(|(n, ..)| *n != page) {
            let key = key::render(
                &self.spec.destination.key,
                &self.vars.clone().with("page", format!("{page:05}")),
            )?;
            let target = S3Target::new(self.ctx.s3.clone(), &self.spec.destination.bucket, &key)
                .with_meta(self.meta.clone());
            let writer = ObjectWriter::new(Arc::new(target), self.options)?;
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
            self.written.push(object);
            return Ok(());
        };
        object.status = Status::Written;
        object.bytes_out = uploaded.bytes;
        object.parts = uploaded.parts;
        object.checksum = Some(uploaded.checksum.to_base64());
        object.e_tag = Some(e_tag.clone());
        // Pushed before its manifest, so a failed manifest is rolled back with the object.
        self.written.push(object.clone());
        if self.spec.destination.manifest {
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
            let manifest = write_manifest(self.ctx, &page_summary, Some(page)).await?;
            self.written.last_mut().expect("pushed above").manifest = Some(manifest.clone());
            object.manifest = Some(manifest);
        }
        tracing::info!(page, key = %object.key, records, bytes = object.bytes_out, "page object written");
        Ok(())
    }

    /// Ends the run: the objects written when `produced` is Ok; otherwise aborts the page
    /// being written and deletes the objects (and manifests) this run wrote, so a run leaves
    /// all its pages or none.
    pub async fn close(mut self, produced: Result<()>) -> Result<Vec<PageObject>> {
        match produced {
            Ok(()) => {
                // The producer ends every page it starts.
                debug_assert!(self.current.is_none());
                Ok(self.written)
            }
            Err(e) => {
                if let Some((.., writer)) = self.current.take() {
                    writer.abort().await;
                }
                self.roll_back().await;
                Err(e)
            }
        }
    }

    /// Deletes the objects (and manifests) of a failed run, best effort.
    async fn roll_back(&self) {
        let bucket = &self.spec.destination.bucket;
        for object in self.written.iter().filter(|o| o.status == Status::Written) {
            for key in std::iter::once(&object.key).chain(object.manifest.as_ref()) {
                match self
                    .ctx
                    .s3
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                {
                    Ok(_) => tracing::info!(%bucket, %key, "deleted an object of the failed run"),
                    Err(e) => tracing::error!(
                        %bucket, %key, error = %aws_sdk_s3::error::DisplayErrorContext(&e),
                        "could not delete an object of the failed run; it stays"
                    ),
                }
            }
        }
    }
}
