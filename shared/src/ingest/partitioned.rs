//! NDJSON records into the objects of their partitions ([`crate::partition`]): the key's
//! `{field:NAME}` values are read from each record's top-level keys.

use crate::error::{Error, Result};
use crate::partition::{self, Partitioner, TextObjects};

/// A records run written as partitioned NDJSON.
pub(super) struct PartitionedText {
    pub router: Partitioner<TextObjects>,
    /// The key's `{field:…}` names, in order.
    pub names: Vec<String>,
}

impl PartitionedText {
    /// A run over `router`.
    pub fn new(router: Partitioner<TextObjects>) -> Self {
        let names = router
            .template()
            .fields()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        PartitionedText { router, names }
    }

    /// Writes `record` (the `number`th of the page at `url`, read up to byte `offset`) into
    /// its partition's object. A record that is not a JSON object, or whose value cannot be
    /// formatted as the key asks, is an error naming the page, the record and the field.
    pub async fn record(
        &mut self,
        record: &[u8],
        url: &str,
        offset: u64,
        number: u64,
    ) -> Result<()> {
        let bad = |message: String| Error::Records {
            url: url.to_owned(),
            class: "bad partition value",
            offset,
            record: Some(number),
            message,
        };
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let values = partition::json_fields(record, &names)
            .map_err(|e| bad(format!("the key's {{field:…}} needs a JSON object: {e}")))?;
        let template = self.router.template();
        let segments = values
            .iter()
            .enumerate()
            .map(|(i, v)| template.segment(i, v))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(bad)?;
        self.router.write(segments, record).await
    }
}
