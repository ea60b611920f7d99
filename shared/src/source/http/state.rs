//! Incremental state: the watermark of a job, kept as a small JSON object in S3 and replaced
//! only with a conditional write, so overlapping runs cannot lose each other's progress.

use std::sync::Mutex;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use serde_json::Value;

use crate::error::{Error, Result, S3Operation};

/// Largest state object read (it holds one value).
const STATE_CAP: usize = 64 * 1024;

/// The watermark read before a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The watermark to send.
    pub watermark: String,
    /// The state object's ETag; `None` when there was no state yet.
    pub e_tag: Option<String>,
}

fn s3_error(op: S3Operation, bucket: &str, key: &str, message: String, retryable: bool) -> Error {
    Error::S3 {
        operation: op,
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        part_number: None,
        message,
        retryable,
    }
}

/// Reads the state at `bucket`/`key`; `initial` when there is none.
pub async fn read(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    initial: &str,
) -> Result<State> {
    let out = match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => out,
        Err(e)
            if e.raw_response().map(|r| r.status().as_u16()) == Some(404)
                || e.code() == Some("NoSuchKey") =>
        {
            return Ok(State {
                watermark: initial.to_owned(),
                e_tag: None,
            });
        }
        Err(e) => {
            return Err(s3_error(
                S3Operation::GetObject,
                bucket,
                key,
                DisplayErrorContext(&e).to_string(),
                true,
            ));
        }
    };
    let e_tag = out.e_tag.clone();
    let too_big = out.content_length.unwrap_or(0) as usize > STATE_CAP;
    if too_big {
        return Err(s3_error(
            S3Operation::GetObject,
            bucket,
            key,
            format!("state object is over {STATE_CAP} bytes"),
            false,
        ));
    }
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| s3_error(S3Operation::GetObject, bucket, key, e.to_string(), true))?
        .into_bytes();
    let doc: Value = serde_json::from_slice(&body).map_err(|e| {
        s3_error(
            S3Operation::GetObject,
            bucket,
            key,
            format!("state is not JSON: {e}"),
            false,
        )
    })?;
    let watermark = doc
        .get("watermark")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            s3_error(
                S3Operation::GetObject,
                bucket,
                key,
                "state has no string \"watermark\"".into(),
                false,
            )
        })?;
    Ok(State {
        watermark: watermark.to_owned(),
        e_tag,
    })
}

/// Writes the new watermark if the state is still the one read (`If-Match`), or still absent
/// (`If-None-Match: *`). A 412 means another run moved it: an error, not an overwrite.
pub async fn write(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    previous: &State,
    watermark: &str,
    run_id: &str,
) -> Result<()> {
    let doc = serde_json::json!({
        "watermark": watermark,
        "previous": previous.watermark,
        "run_id": run_id,
        "updated_at": chrono::Utc::now().to_rfc3339(),
    });
    let mut req = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .body(serde_json::to_vec_pretty(&doc).expect("serializes").into());
    req = match &previous.e_tag {
        Some(tag) => req.if_match(tag),
        None => req.if_none_match("*"),
    };
    match req.send().await {
        Ok(_) => Ok(()),
        Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(412) || e.code() == Some("PreconditionFailed") => Err(s3_error(
            S3Operation::PutObject,
            bucket,
            key,
            "the state was changed by another run since it was read; this run's output is written, its watermark is not (the next run starts from the other run's)".into(),
            false,
        )),
        Err(e) => Err(s3_error(S3Operation::PutObject, bucket, key, DisplayErrorContext(&e).to_string(), true)),
    }
}

/// The largest value of one record field seen so far.
#[derive(Debug)]
pub struct WatermarkTracker {
    field: Vec<String>,
    max: Mutex<Option<Value>>,
}

impl WatermarkTracker {
    /// Tracks `field` (keys from the record's root).
    pub fn new(field: Vec<String>) -> Self {
        WatermarkTracker {
            field,
            max: Mutex::new(None),
        }
    }

    /// Looks at one record (raw JSON); records without the field are ignored.
    pub fn observe(&self, record: &[u8]) {
        let Ok(doc) = serde_json::from_slice::<Value>(record) else {
            return;
        };
        let mut v = &doc;
        for k in &self.field {
            match v.get(k) {
                Some(next) => v = next,
                None => return,
            }
        }
        if v.is_null() {
            return;
        }
        let mut max = self.max.lock().expect("not poisoned");
        if max.as_ref().is_none_or(|m| greater(v, m)) {
            *max = Some(v.clone());
        }
    }

    /// The largest value seen, as the text sent next time.
    pub fn max(&self) -> Option<String> {
        self.max.lock().expect("not poisoned").as_ref().map(as_text)
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Numbers compare as numbers, everything else as text (RFC 3339 timestamps sort as text).
fn greater(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x > y,
        _ => as_text(a) > as_text(b),
    }
}

/// Whether `candidate` is past `current` (the same comparison as the tracker's).
pub fn advances(candidate: &str, current: &str) -> bool {
    match (candidate.parse::<f64>(), current.parse::<f64>()) {
        (Ok(x), Ok(y)) => x > y,
        _ => candidate > current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_the_largest_value() {
        let t = WatermarkTracker::new(vec!["meta".into(), "at".into()]);
        for r in [
            r#"{"meta":{"at":"2026-01-02T00:00:00Z"}}"#,
            r#"{"meta":{"at":"2026-01-03T00:00:00Z"}}"#,
            r#"{"meta":{}}"#,
            r#"{"meta":{"at":"2026-01-01T00:00:00Z"}}"#,
        ] {
            t.observe(r.as_bytes());
        }
        assert_eq!(t.max().as_deref(), Some("2026-01-03T00:00:00Z"));
        let n = WatermarkTracker::new(vec!["id".into()]);
        for r in [r#"{"id":9}"#, r#"{"id":10}"#, r#"{"id":2}"#] {
            n.observe(r.as_bytes());
        }
        assert_eq!(n.max().as_deref(), Some("10"));
        assert!(advances("10", "9") && !advances("2026-01-01", "2026-01-02"));
    }
}
