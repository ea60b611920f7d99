//! The events of `transform-s3`: S3 `ObjectCreated` notifications (URL-encoded keys), direct
//! invokes `{"bucket", "key"}` and Step Functions Distributed Map items
//! `{"Bucket", "Key", "Etag", ...}`.

use serde::Deserialize;
use serde_json::Value;

use super::SourceObject;
use crate::error::{Error, Result};

/// A direct invoke: `{"bucket": "b", "key": "k"}`, or a Distributed Map item
/// `{"Bucket": "b", "Key": "k", "Etag": "...", "Size": ...}`. The key is taken as it is (not
/// URL-encoded).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DirectEvent {
    /// The bucket.
    #[serde(alias = "Bucket")]
    pub bucket: String,
    /// The key, as it is.
    #[serde(alias = "Key")]
    pub key: String,
    /// The version's ETag, when the caller knows it.
    #[serde(default, alias = "ETag", alias = "Etag", alias = "eTag")]
    pub etag: Option<String>,
    /// Whether the caller follows a `continue` answer (the transform job state machine): the
    /// object may then take several invocations. Without it, it takes one.
    #[serde(default)]
    pub continuable: bool,
}

/// Whether `payload` is a direct event that may continue (`"continuable": true`).
pub fn continuable(payload: &Value) -> bool {
    payload.get("Records").is_none() && payload.get("continuable") == Some(&Value::Bool(true))
}

/// The objects an event names, and the records it skipped (other event types).
pub fn objects(payload: Value) -> Result<(Vec<SourceObject>, Vec<String>)> {
    if payload.get("Records").is_some() {
        let event: aws_lambda_events::event::s3::S3Event =
            serde_json::from_value(payload).map_err(|e| Error::spec(format!("S3 event: {e}")))?;
        let mut objects = Vec::new();
        let mut skipped = Vec::new();
        for (i, r) in event.records.into_iter().enumerate() {
            let name = r.event_name.clone().unwrap_or_default();
            if !name.starts_with("ObjectCreated:") {
                skipped.push(format!("Records[{i}]: event {name:?} is not ObjectCreated"));
                continue;
            }
            let bucket =
                r.s3.bucket
                    .name
                    .ok_or_else(|| Error::spec(format!("Records[{i}]: no s3.bucket.name")))?;
            let raw =
                r.s3.object
                    .key
                    .ok_or_else(|| Error::spec(format!("Records[{i}]: no s3.object.key")))?;
            let key = decode_key(&raw).map_err(|e| match e {
                Error::InvalidSpec { message } => Error::spec(format!("Records[{i}]: {message}")),
                other => other,
            })?;
            objects.push(SourceObject {
                bucket,
                key,
                e_tag: r.s3.object.e_tag.filter(|e| !e.is_empty()),
            });
        }
        return Ok((objects, skipped));
    }
    let direct: DirectEvent = serde_json::from_value(payload).map_err(|e| {
        Error::spec(format!(
            "expected an S3 event or {{\"bucket\": ..., \"key\": ...}}: {e}"
        ))
    })?;
    Ok((
        vec![SourceObject {
            bucket: direct.bucket,
            key: direct.key,
            e_tag: direct.etag,
        }],
        Vec::new(),
    ))
}

/// Keys in S3 notifications are URL-encoded, with `+` for a space.
pub fn decode_key(raw: &str) -> Result<String> {
    let plus = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|e| Error::spec(format!("key {raw:?} is not valid URL-encoded UTF-8: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(
            decode_key("incoming/parking+violations%2B2026.csv.gz").unwrap(),
            "incoming/parking violations+2026.csv.gz"
        );
        assert_eq!(decode_key("a%20b%C3%A9").unwrap(), "a bé");
        assert!(decode_key("bad%FF").is_err());
    }

    #[test]
    fn direct_and_distributed_map_items() {
        let (o, _) = objects(json!({"bucket": "b", "key": "in/a b.csv"})).unwrap();
        assert_eq!(o[0].key, "in/a b.csv");
        let (o, _) = objects(json!({"Bucket": "b", "Key": "in/x.csv", "Etag": "\"e1\"",
            "Size": 10, "LastModified": "2026-01-01T00:00:00Z", "StorageClass": "STANDARD"}))
        .unwrap();
        assert_eq!(
            (o[0].bucket.as_str(), o[0].e_tag.as_deref()),
            ("b", Some("\"e1\""))
        );
        assert!(
            objects(json!({"key": "x"}))
                .unwrap_err()
                .to_string()
                .contains("missing field `bucket`")
        );
    }
}
