use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice::MemoryBudget;
use sluice::source::s3::{self as s3src, Opened};
use sluice::transform::{self, Pipeline, SourceObject, TransformContext};
use tokio::io::AsyncReadExt;

/// What every invocation shares: clients and the pipeline, built once per instance.
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    /// For the enrich step: the network policy applies to every address it reaches.
    pub http: reqwest::Client,
    pub policy: sluice::source::guard::NetworkPolicy,
    pub pipeline: Pipeline,
    pub budget: MemoryBudget,
}

/// A failed invocation, reported with an error type callers can branch on: `InvalidInput`,
/// `Upstream`, `Retryable` or `Timeout`.
#[derive(Debug)]
pub struct JobError {
    kind: &'static str,
    message: String,
}

impl From<JobError> for Diagnostic {
    fn from(e: JobError) -> Self {
        Diagnostic {
            error_type: e.kind.to_owned(),
            error_message: e.message,
        }
    }
}

impl From<sluice::Error> for JobError {
    fn from(e: sluice::Error) -> Self {
        JobError {
            kind: e.kind().as_str(),
            message: e.to_string(),
        }
    }
}

/// Reads the pipeline from `PIPELINE` or `PIPELINE_URI` and validates it.
pub async fn load_pipeline(s3: &aws_sdk_s3::Client) -> sluice::Result<Pipeline> {
    let inline = std::env::var("PIPELINE")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let uri = std::env::var("PIPELINE_URI")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let bad = |m: String| sluice::Error::InvalidSpec { message: m };
    let text = match (inline, uri) {
        (Some(text), None) => text,
        (None, Some(uri)) => {
            let (bucket, key) = uri
                .strip_prefix("s3://")
                .and_then(|rest| rest.split_once('/'))
                .filter(|(b, k)| !b.is_empty() && !k.is_empty())
                .ok_or_else(|| bad(format!("PIPELINE_URI {uri:?} is not s3://bucket/key")))?;
            let body = match s3src::open(s3, bucket, key, None).await? {
                Opened::Body(body) => body,
                Opened::Changed => return Err(bad(format!("PIPELINE_URI {uri}: no such object"))),
            };
            let mut text = String::new();
            body.take(1 << 20)
                .read_to_string(&mut text)
                .await
                .map_err(|e| bad(format!("PIPELINE_URI {uri}: {e}")))?;
            text
        }
        (Some(_), Some(_)) => {
            return Err(bad("set PIPELINE or PIPELINE_URI, not both".into()));
        }
        (None, None) => {
            return Err(bad(
                "no pipeline: set PIPELINE (JSON) or PIPELINE_URI (s3://bucket/key)".into(),
            ));
        }
    };
    Pipeline::from_json_str(&text)
}

/// Posts an init error to the Runtime API, so Lambda reports it rather than a bare exit.
pub async fn report_init_error(err: &sluice::Error) {
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let body = json!({"errorType": err.kind().as_str(), "errorMessage": err.to_string()});
    let sent = reqwest::Client::new()
        .post(format!("http://{api}/2018-06-01/runtime/init/error"))
        .header("Lambda-Runtime-Function-Error-Type", "Runtime.InitError")
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    if let Err(e) = sent {
        tracing::error!(error = %e, "could not report the init error");
    }
}

/// A direct invoke: `{"bucket": "b", "key": "k"}`, or a Distributed Map item
/// `{"Bucket": "b", "Key": "k", "Etag": "...", "Size": ...}`. The key is taken as it is (not
/// URL-encoded).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DirectEvent {
    #[serde(alias = "Bucket")]
    pub bucket: String,
    #[serde(alias = "Key")]
    pub key: String,
    #[serde(default, alias = "ETag", alias = "Etag", alias = "eTag")]
    pub etag: Option<String>,
}

/// The objects an event names, and the records it skipped (other event types).
pub fn objects(payload: Value) -> Result<(Vec<SourceObject>, Vec<String>), String> {
    if payload.get("Records").is_some() {
        let event: aws_lambda_events::event::s3::S3Event =
            serde_json::from_value(payload).map_err(|e| format!("S3 event: {e}"))?;
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
                    .ok_or_else(|| format!("Records[{i}]: no s3.bucket.name"))?;
            let raw =
                r.s3.object
                    .key
                    .ok_or_else(|| format!("Records[{i}]: no s3.object.key"))?;
            let key = decode_key(&raw).map_err(|e| format!("Records[{i}]: {e}"))?;
            objects.push(SourceObject {
                bucket,
                key,
                e_tag: r.s3.object.e_tag.filter(|e| !e.is_empty()),
            });
        }
        return Ok((objects, skipped));
    }
    let direct: DirectEvent = serde_json::from_value(payload)
        .map_err(|e| format!("expected an S3 event or {{\"bucket\": ..., \"key\": ...}}: {e}"))?;
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
pub fn decode_key(raw: &str) -> Result<String, String> {
    let plus = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|e| format!("key {raw:?} is not valid URL-encoded UTF-8: {e}"))
}

/// Transforms every object of the event. The answer lists one summary per object; when any
/// object fails, the invocation fails (after the others were done) so the event is retried —
/// objects already done are then recognised as duplicates.
pub async fn handle(clients: &Clients, event: LambdaEvent<Value>) -> Result<Value, JobError> {
    let (payload, context) = event.into_parts();
    let (objects, skipped_records) = objects(payload).map_err(|m| JobError {
        kind: "InvalidInput",
        message: m,
    })?;
    for s in &skipped_records {
        tracing::info!(record = %s, "record skipped");
    }
    let ctx = TransformContext {
        s3: clients.s3.clone(),
        budget: clients.budget,
        run_id: context.request_id.clone(),
        started: chrono::Utc::now(),
        deadline: Some(context.deadline()),
        http: clients.http.clone(),
        policy: clients.policy.clone(),
    };
    let mut summaries = Vec::new();
    let mut failures: Vec<(String, sluice::Error)> = Vec::new();
    for object in &objects {
        match transform::run(&clients.pipeline, object, &ctx).await {
            Ok(summary) => summaries.push(serde_json::to_value(summary).expect("serializes")),
            Err(err) => {
                tracing::error!(bucket = %object.bucket, key = %object.key,
                    error_type = err.kind().as_str(), error = %err, "object failed");
                failures.push((format!("s3://{}/{}", object.bucket, object.key), err));
            }
        }
    }
    if let Some((_, first)) = failures.first() {
        let kind = first.kind().as_str();
        let detail: Vec<String> = failures.iter().map(|(_, e)| e.to_string()).collect();
        let message = if objects.len() == 1 {
            detail.join("")
        } else {
            format!(
                "{} of {} objects failed: {}",
                failures.len(),
                objects.len(),
                detail.join("; ")
            )
        };
        return Err(JobError { kind, message });
    }
    Ok(json!({"objects": summaries, "skipped_records": skipped_records}))
}

#[cfg(test)]
mod tests {
    use super::*;

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
                .contains("missing field `bucket`")
        );
    }

    /// Every sample for this function parses: events through the event types, the pipeline
    /// through the config parser.
    #[test]
    fn samples_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("transform-s3") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            if name.contains(".pipeline") {
                Pipeline::from_json_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            } else {
                let value: Value = serde_json::from_str(&text).unwrap();
                let (objects, _) = objects(value).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(!objects.is_empty(), "{name}: no object");
                if name.contains("s3-put") {
                    assert!(objects[0].key.contains(' '), "{name}: {:?}", objects[0].key);
                }
            }
            seen += 1;
        }
        assert!(seen >= 3, "samples missing in {dir}");
    }
}
