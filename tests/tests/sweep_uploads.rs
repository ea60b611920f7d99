//! The built `sweep-uploads` bootstrap, driven through the Lambda Runtime API emulator against
//! Garage: real multipart uploads, some stale and some fresh, under swept and unswept prefixes.
//!
//! Build the binary first: `cargo build --release -p sweep-uploads` (`make test` does).

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use serde_json::{Value, json};
use sluice_tests::{
    Invocation, LambdaProcess, RuntimeApi, S3Server, binary_path, uploads_in_progress,
};

struct Harness {
    api: RuntimeApi,
    process: LambdaProcess,
}

impl Harness {
    async fn start(server: &S3Server, env: &[(&str, String)]) -> Harness {
        let api = RuntimeApi::start().await;
        let mut all = server.lambda_env();
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let process =
            LambdaProcess::spawn(&binary_path("sweep-uploads"), &api, &all, 256, None).unwrap();
        Harness { api, process }
    }

    async fn invoke(&self, event: Value) -> Invocation {
        self.api
            .invoke(event, Duration::from_secs(120))
            .await
            .unwrap()
    }
}

fn response(inv: Invocation) -> Value {
    match inv {
        Invocation::Response(v) => v,
        Invocation::Error {
            error_type,
            error_message,
        } => panic!("function failed: {error_type}: {error_message}"),
    }
}

/// Starts an upload of `key` with `parts` parts of `part_size` bytes; returns its id.
async fn start_upload(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    parts: i32,
    part_size: usize,
) -> String {
    let id = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .upload_id
        .unwrap();
    for n in 1..=parts {
        s3.upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(vec![b'x'; part_size]))
            .send()
            .await
            .unwrap();
    }
    id
}

async fn open_set(s3: &aws_sdk_s3::Client, bucket: &str) -> BTreeSet<(String, String)> {
    uploads_in_progress(s3, bucket).await.into_iter().collect()
}

/// Stale uploads under the swept prefixes are aborted, and only those: fresh uploads and
/// stale ones under another prefix stay. A dry run first reports the same without aborting.
/// Pages of 2 uploads exercise the listing's pagination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_aborts_exactly_the_stale_uploads() {
    let server = S3Server::garage();
    let s3 = server.client().await;
    let a = server.fresh_bucket("sweep-a").await.unwrap();
    let b = server.fresh_bucket("sweep-b").await.unwrap();
    // The function starts first, so the sweeps follow the fresh uploads within a second.
    let h = Harness::start(&server, &[]).await;

    const PART: usize = 64 * 1024;
    let mut stale = BTreeSet::new();
    for (key, parts) in [
        ("tmp/x/one", 1),
        ("tmp/x/two", 2),
        ("tmp/empty", 0),
        ("tmp/z", 3),
    ] {
        stale.insert((
            key.to_owned(),
            start_upload(&s3, &a, key, parts, PART).await,
        ));
    }
    let stale_b = (
        "tmp/b".to_owned(),
        start_upload(&s3, &b, "tmp/b", 1, PART).await,
    );
    // Stale, but outside the swept prefix: must survive.
    let other = (
        "keep/old".to_owned(),
        start_upload(&s3, &a, "keep/old", 1, PART).await,
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut fresh = BTreeSet::new();
    for key in ["tmp/x/new", "tmp/y"] {
        fresh.insert((key.to_owned(), start_upload(&s3, &a, key, 1, PART).await));
    }
    let fresh_b = (
        "tmp/b2".to_owned(),
        start_upload(&s3, &b, "tmp/b2", 0, PART).await,
    );

    let config = |dry_run: bool| {
        json!({
            "targets": [{"bucket": a, "prefix": "tmp/"}, {"bucket": b, "prefix": "tmp/"}],
            "max_age": "5s",
            "page_size": 2,
            "dry_run": dry_run
        })
    };

    let dry = response(h.invoke(config(true)).await);
    assert_eq!(dry["status"], "complete", "{dry}");
    assert_eq!(
        (
            dry["found"].as_u64(),
            dry["stale"].as_u64(),
            dry["aborted"].as_u64()
        ),
        (Some(8), Some(5), Some(0)),
        "{dry}"
    );
    assert_eq!(
        open_set(&s3, &a).await.len(),
        7,
        "the dry run aborted something"
    );

    let s = response(h.invoke(config(false)).await);
    assert_eq!(s["status"], "complete", "{s}");
    assert_eq!(s["found"], 8, "{s}");
    assert_eq!(s["stale"], 5, "{s}");
    assert_eq!(s["aborted"], 5, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["bytes_stale"], 7 * PART as u64, "{s}");
    assert!(s["oldest_age_secs"].as_f64().unwrap() >= 8.0, "{s}");
    let ta = &s["targets"][0];
    assert_eq!(
        (
            ta["found"].as_u64(),
            ta["stale"].as_u64(),
            ta["parts_stale"].as_u64()
        ),
        (Some(6), Some(4), Some(6)),
        "{ta}"
    );
    let aborted: BTreeSet<(String, String)> = ta["uploads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            assert_eq!(u["action"], "aborted", "{u}");
            (
                u["key"].as_str().unwrap().to_owned(),
                u["upload_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(aborted, stale);

    // Exactly the stale ones under the prefixes are gone.
    let mut left_a = fresh.clone();
    left_a.insert(other);
    assert_eq!(open_set(&s3, &a).await, left_a);
    assert_eq!(open_set(&s3, &b).await, BTreeSet::from([fresh_b]));
    assert!(!open_set(&s3, &b).await.contains(&stale_b));

    // One EMF line per target, on stdout.
    let logs = h.process.logs();
    let emf: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect();
    let last_a = emf
        .iter()
        .rev()
        .find(|v| v["Bucket"] == a.as_str())
        .unwrap_or_else(|| panic!("no EMF line for {a} in:\n{logs}"));
    assert_eq!(
        last_a["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "sluice"
    );
    assert_eq!(last_a["Prefix"], "tmp/");
    assert_eq!(last_a["UploadsAborted"], 4);
    assert_eq!(last_a["StaleBytes"], 6 * PART as u64);
    assert_eq!(last_a["UploadsFound"], 6);

    // A second sweep finds nothing stale.
    let again = response(h.invoke(config(false)).await);
    assert_eq!(
        (again["stale"].as_u64(), again["found"].as_u64()),
        (Some(0), Some(3)),
        "{again}"
    );
}

/// An EventBridge scheduled event carries no configuration: `SWEEP_CONFIG` applies. A bad
/// configuration is `InvalidInput`, and a bucket that does not exist fails the invocation
/// after the other targets were swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_event_uses_sweep_config_and_errors_are_typed() {
    let server = S3Server::garage();
    let s3 = server.client().await;
    let bucket = server.fresh_bucket("sweep-env").await.unwrap();
    let id = start_upload(&s3, &bucket, "in/old", 1, 1024).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = Harness::start(
        &server,
        &[
            (
                "SWEEP_CONFIG",
                json!({"targets": [{"bucket": bucket, "prefix": "in/"}], "max_age": 1}).to_string(),
            ),
            ("SLUICE_METRICS_NAMESPACE", "sluice-test".to_owned()),
        ],
    )
    .await;
    let scheduled = json!({
        "version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "000000000000", "time": "2026-11-22T00:00:00Z", "region": "us-east-1",
        "resources": [], "detail": {}
    });
    let s = response(h.invoke(scheduled).await);
    assert_eq!(s["aborted"], 1, "{s}");
    assert_eq!(s["targets"][0]["uploads"][0]["upload_id"], id.as_str());
    assert!(uploads_in_progress(&s3, &bucket).await.is_empty());
    assert!(h.process.logs().contains("\"Namespace\":\"sluice-test\""));

    match h.invoke(json!({"targets": [{"bucket": bucket}]})).await {
        Invocation::Error {
            error_type,
            error_message,
        } => {
            assert_eq!(error_type, "InvalidInput");
            assert!(
                error_message.contains("missing field `prefix`"),
                "{error_message}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }

    let missing = format!("{bucket}-missing");
    match h
        .invoke(json!({"targets": [{"bucket": missing, "prefix": ""}, {"bucket": bucket, "prefix": "in/"}], "max_age": 1}))
        .await
    {
        Invocation::Error { error_type, error_message } => {
            // The bucket's checkpoints are read first.
            assert!(error_message.contains("ListObjectsV2"), "{error_type}: {error_message}");
            assert!(error_message.contains(&missing), "{error_message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The upload of a job that continues across invocations is kept while its checkpoint is
/// recent, however old the upload; once the checkpoint is older than `max_age` too (the job
/// stopped), its upload is swept like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_named_by_recent_checkpoints_are_kept() {
    let server = S3Server::garage();
    let s3 = server.client().await;
    let bucket = server.fresh_bucket("sweep-live").await.unwrap();
    let h = Harness::start(&server, &[]).await;
    const PART: usize = 64 * 1024;
    let job = start_upload(&s3, &bucket, "tmp/continuing", 2, PART).await;
    let other = start_upload(&s3, &bucket, "tmp/abandoned", 1, PART).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The checkpoint names the job's upload; fields a sweep does not read are left out.
    let doc = json!({"version": 1, "upload": {"upload_id": job, "parts": []}});
    s3.put_object()
        .bucket(&bucket)
        .key("_sluice/checkpoints/ingest-http/run-1.json")
        .body(ByteStream::from(doc.to_string().into_bytes()))
        .send()
        .await
        .unwrap();
    // Not a checkpoint: ignored, not an error.
    s3.put_object()
        .bucket(&bucket)
        .key("_sluice/checkpoints/ingest-http/junk.json")
        .body(ByteStream::from_static(b"{not json"))
        .send()
        .await
        .unwrap();
    let config = json!({"targets": [{"bucket": bucket, "prefix": "tmp/"}], "max_age": "3s"});
    let s = response(h.invoke(config.clone()).await);
    assert_eq!(s["status"], "complete", "{s}");
    assert_eq!(
        (s["stale"].as_u64(), s["continuing"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(
        s["targets"][0]["uploads"][0]["upload_id"],
        other.as_str(),
        "{s}"
    );
    assert_eq!(
        open_set(&s3, &bucket).await,
        BTreeSet::from([("tmp/continuing".to_owned(), job.clone())])
    );
    // The checkpoint ages past max_age: the job stopped, and its upload goes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = response(h.invoke(config).await);
    assert_eq!(
        (s["stale"].as_u64(), s["continuing"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert!(open_set(&s3, &bucket).await.is_empty());
}
