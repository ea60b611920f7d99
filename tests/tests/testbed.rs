//! Smoke tests of the test bed itself: fixture server, Runtime API emulator, Lambda process
//! runner, cgroups and the local S3 stack. None of them needs the sluice binaries; the S3 ones
//! need `scripts/stack.sh up`.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use serde_json::{Value, json};
use sluice_tests::{
    FixtureServer, Invocation, LambdaProcess, MemoryCgroup, RuntimeApi, S3Server, body_stream,
    expected_crc64nvme, object_exists, object_stream, read_object, uploads_in_progress,
};
use tokio::io::AsyncReadExt as _;

fn crc64nvme(data: &[u8]) -> u64 {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    digest.update(data);
    digest.finalize()
}

#[tokio::test]
async fn fixture_bytes_are_exact_deterministic_and_match_the_expected_crc() {
    let fixture = FixtureServer::start().await;
    let client = reqwest::Client::new();
    let size = 1_000_003u64;
    let url = fixture.url(&format!("/bytes?size={size}&seed=7"));

    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(size));
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let first = response.bytes().await.unwrap();
    let second = client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(first.len() as u64, size);
    assert_eq!(first, second);
    assert_eq!(crc64nvme(&first), expected_crc64nvme(7, size));
    assert_ne!(expected_crc64nvme(8, size), expected_crc64nvme(7, size));

    let generated: Vec<u8> = body_stream(7, size)
        .map(|chunk| chunk.unwrap().to_vec())
        .concat()
        .await;
    assert_eq!(generated, first);
    let first_line = first.split(|b| *b == b'\n').next().unwrap();
    let record: Value = serde_json::from_slice(first_line).unwrap();
    assert_eq!(record["id"], 0);
    assert_eq!(fixture.hits("/bytes"), 2);
    assert_eq!(fixture.hits("/json"), 0);
}

#[tokio::test]
async fn fixture_gzip_is_the_bytes_content_compressed_like_real_data() {
    let fixture = FixtureServer::start().await;
    let size = 4_000_000u64;
    let response = reqwest::get(fixture.url(&format!("/gzip?size={size}&seed=1")))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let compressed = response.bytes().await.unwrap();
    let mut plain = Vec::new();
    async_compression::tokio::bufread::GzipDecoder::new(&compressed[..])
        .read_to_end(&mut plain)
        .await
        .unwrap();
    assert_eq!(plain.len() as u64, size);
    assert_eq!(crc64nvme(&plain), expected_crc64nvme(1, size));
    let ratio = size as f64 / compressed.len() as f64;
    eprintln!("gzip ratio {ratio:.2}");
    assert!((3.0..=6.5).contains(&ratio), "gzip ratio {ratio:.2}");
}

#[tokio::test]
async fn fixture_json_is_one_valid_document_of_at_least_the_size() {
    let fixture = FixtureServer::start().await;
    let body = reqwest::get(fixture.url("/json?size=300000&seed=5"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(body.len() >= 300_000);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert!(doc["data"].as_array().unwrap().len() > 1000);
    assert!(doc["next_cursor"].is_string());
}

#[tokio::test]
async fn fixture_cut_is_an_error_for_the_client_not_a_clean_end() {
    let fixture = FixtureServer::start().await;
    let response = reqwest::get(fixture.url("/cut?size=1000000&at=100000&seed=2"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(1_000_000));
    let mut body = response.bytes_stream();
    let mut received = 0;
    let error = loop {
        match body.next().await {
            Some(Ok(chunk)) => received += chunk.len(),
            Some(Err(error)) => break error,
            None => panic!("clean end of body after {received} bytes"),
        }
    };
    assert!(received <= 100_000, "{received} bytes then {error}");
}

#[tokio::test]
async fn fixture_stall_sends_the_start_then_nothing() {
    let fixture = FixtureServer::start().await;
    let client = reqwest::Client::builder()
        .read_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let response = client
        .get(fixture.url("/stall?size=100000&at=1000"))
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    let error = response.bytes().await.unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn fixture_status_and_empty() {
    let fixture = FixtureServer::start().await;
    let response = reqwest::get(fixture.url("/status/503?retry_after=2"))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
    assert!(response.text().await.unwrap().contains("503"));

    let response = reqwest::get(fixture.url("/status/500?size=100000"))
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.bytes().await.unwrap().len(), 100_000);

    let response = reqwest::get(fixture.url("/empty")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(0));
    assert!(response.bytes().await.unwrap().is_empty());
    assert_eq!(fixture.hits("/status/503"), 1);
    assert_eq!(fixture.total_hits(), 3);
}

#[tokio::test]
async fn fixture_streams_large_bodies() {
    // Flat memory is by construction (64 KiB chunks generated lazily); this checks the
    // size and content of a body larger than any buffer on the way.
    let fixture = FixtureServer::start().await;
    let size = 96 * 1024 * 1024 + 17;
    let response = reqwest::get(fixture.url(&format!("/bytes?size={size}&seed=11")))
        .await
        .unwrap();
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    let mut received = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        received += chunk.len() as u64;
        digest.update(&chunk);
    }
    assert_eq!(received, size);
    assert_eq!(digest.finalize(), expected_crc64nvme(11, size));
}

/// Plays the function's side of one invocation with raw Runtime API calls.
async fn answer_next(client: &reqwest::Client, api: &RuntimeApi, error: bool) -> Value {
    let base = format!("http://{}/2018-06-01/runtime", api.address());
    let next = client
        .get(format!("{base}/invocation/next"))
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), 200);
    let id = next.headers()["lambda-runtime-aws-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let deadline: u64 = next.headers()["lambda-runtime-deadline-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        next.headers()
            .contains_key("lambda-runtime-invoked-function-arn")
    );
    assert!(next.headers().contains_key("lambda-runtime-trace-id"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        deadline > now && deadline <= now + 10_000,
        "deadline {deadline}, now {now}"
    );
    let event: Value = serde_json::from_slice(&next.bytes().await.unwrap()).unwrap();
    let (path, body) = if error {
        (
            "error",
            json!({"errorType": "InvalidInput", "errorMessage": "bad spec"}),
        )
    } else {
        ("response", json!({"got": event}))
    };
    let posted = client
        .post(format!("{base}/invocation/{id}/{path}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    event
}

#[tokio::test]
async fn runtime_api_hands_out_events_and_takes_answers() {
    let api = RuntimeApi::start().await;
    let client = reqwest::Client::new();

    let event = json!({"source": {"http": {"url": "http://127.0.0.1:1/x"}}});
    let (answer, seen) = tokio::join!(
        api.invoke(event.clone(), Duration::from_secs(10)),
        answer_next(&client, &api, false)
    );
    assert_eq!(seen, event);
    assert_eq!(answer.unwrap(), Invocation::Response(json!({"got": event})));

    let (answer, _) = tokio::join!(
        api.invoke(json!({}), Duration::from_secs(10)),
        answer_next(&client, &api, true)
    );
    assert_eq!(
        answer.unwrap(),
        Invocation::Error {
            error_type: "InvalidInput".into(),
            error_message: "bad spec".into()
        }
    );
}

#[tokio::test]
async fn runtime_api_invoke_fails_on_an_init_error() {
    let api = RuntimeApi::start().await;
    let url = format!("http://{}/2018-06-01/runtime/init/error", api.address());
    let post = async {
        let body = json!({"errorType": "Runtime.InitError", "errorMessage": "no bucket"});
        reqwest::Client::new()
            .post(url)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    };
    let started = Instant::now();
    let (answer, posted) = tokio::join!(api.invoke(json!({}), Duration::from_secs(60)), post);
    assert_eq!(posted.status(), 202);
    let error = answer.unwrap_err().to_string();
    assert!(error.contains("no bucket"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A bootstrap written in sh + curl that answers every event with `{"echo": event, "memory": ..}`.
fn fake_bootstrap(script_body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir =
        std::env::temp_dir().join(format!("sluice-testbed-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bootstrap");
    std::fs::write(&path, format!("#!/bin/sh\nset -eu\n{script_body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

const ECHO_BOOTSTRAP: &str = r#"
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
echo "started $AWS_LAMBDA_FUNCTION_NAME with $AWS_LAMBDA_FUNCTION_MEMORY_SIZE MB"
headers="$(mktemp)"
while true; do
  event="$(curl -sS -D "$headers" "$api/invocation/next")"
  id="$(grep -i '^lambda-runtime-aws-request-id:' "$headers" | cut -d' ' -f2 | tr -d '\r')"
  echo "invocation $id"
  curl -sS -o /dev/null -X POST -d "{\"echo\":$event,\"memory\":\"$AWS_LAMBDA_FUNCTION_MEMORY_SIZE\",\"custom\":\"$CUSTOM\"}" \
    "$api/invocation/$id/response"
done
"#;

fn require_cgroup(cgroup: Option<MemoryCgroup>) -> Option<MemoryCgroup> {
    if cgroup.is_none() && std::env::var_os("SLUICE_ALLOW_NO_CGROUP").is_none() {
        panic!("memory cgroup unavailable (set SLUICE_ALLOW_NO_CGROUP=1 to run without limits)");
    }
    cgroup
}

#[tokio::test]
async fn lambda_process_serves_invocations_inside_a_memory_cgroup() {
    let api = RuntimeApi::start().await;
    let cgroup = require_cgroup(MemoryCgroup::create("testbed-lambda", 256 << 20));
    let env = vec![("CUSTOM".to_owned(), "yes".to_owned())];
    let binary = fake_bootstrap(ECHO_BOOTSTRAP);
    let mut process = LambdaProcess::spawn(&binary, &api, &env, 256, cgroup.as_ref()).unwrap();
    for n in 0..3 {
        let answer = api
            .invoke(json!({"n": n}), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            answer,
            Invocation::Response(json!({"echo": {"n": n}, "memory": "256", "custom": "yes"}))
        );
    }
    assert!(process.exited().is_none());
    if let Some(cgroup) = &cgroup {
        let procs = std::fs::read_to_string(cgroup.procs_path()).unwrap();
        assert!(
            procs.lines().any(|pid| pid == process.pid().to_string()),
            "{procs}"
        );
        assert!(cgroup.peak_bytes() > 0);
        assert!(!cgroup.oom_killed());
    }
    assert!(
        process.logs().contains("started bootstrap with 256 MB"),
        "{}",
        process.logs()
    );
    process.kill();
    assert!(process.exited().is_some());
    drop(process);
    // Killing the process group also ended the bootstrap's curl: the cgroup is empty and goes.
    let cgroup_dir = cgroup.as_ref().map(|c| c.path().to_owned());
    drop(cgroup);
    if let Some(dir) = cgroup_dir {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    let _ = std::fs::remove_dir_all(binary.parent().unwrap());
}

#[tokio::test]
async fn invoke_fails_fast_when_the_lambda_process_dies() {
    let api = RuntimeApi::start().await;
    let binary = fake_bootstrap("echo 'about to fail'; exit 3");
    let mut process = LambdaProcess::spawn(&binary, &api, &[], 128, None).unwrap();
    let started = Instant::now();
    let error = api
        .invoke(json!({}), Duration::from_secs(60))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("exited"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(process.exited().and_then(|s| s.code()), Some(3));
    // Output readers may lag the exit a little.
    let until = Instant::now() + Duration::from_secs(2);
    while !process.logs().contains("about to fail") && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(process.logs().contains("about to fail"));
    let _ = std::fs::remove_dir_all(binary.parent().unwrap());
}

/// Runs `python3 -c code` inside `cgroup` and returns its exit status.
fn run_in_cgroup(cgroup: &MemoryCgroup, code: &str) -> std::process::ExitStatus {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > '{}' && exec python3 -c \"$0\"",
            cgroup.procs_path().display()
        ))
        .arg(code)
        .status()
        .unwrap()
}

#[test]
fn memory_cgroup_measures_the_peak_and_enforces_the_limit() {
    let Some(cgroup) = require_cgroup(MemoryCgroup::create("testbed", 96 << 20)) else {
        return;
    };
    let path = cgroup.path().to_owned();
    assert!(path.is_dir());
    assert!(run_in_cgroup(&cgroup, "b = b'x' * (40 << 20)").success());
    let peak = cgroup.peak_bytes();
    assert!((40 << 20..=96 << 20).contains(&peak), "peak {peak}");
    assert!(!cgroup.oom_killed());

    let status = run_in_cgroup(&cgroup, "b = b'x' * (300 << 20)");
    assert!(!status.success());
    assert!(cgroup.oom_killed());
    drop(cgroup);
    assert!(!path.exists());
}

#[tokio::test]
async fn garage_buckets_objects_and_uploads_round_trip() {
    s3_round_trip(&S3Server::garage()).await;
    // The demo bucket exists and our key may use it.
    let garage = S3Server::garage();
    let demo = std::env::var("SLUICE_DEMO_BUCKET").unwrap_or_else(|_| "sluice-demo".to_owned());
    garage
        .client()
        .await
        .head_bucket()
        .bucket(demo)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn moto_buckets_objects_and_uploads_round_trip() {
    s3_round_trip(&S3Server::moto()).await;
}

async fn s3_round_trip(server: &S3Server) {
    let client = server.client().await;
    let bucket = server.fresh_bucket("Testbed_Round.Trip").await.unwrap();
    assert!(bucket.starts_with("testbed-round-trip-"), "{bucket}");
    client
        .put_object()
        .bucket(&bucket)
        .key("dir/hello.txt")
        .body(b"hello sluice".to_vec().into())
        .send()
        .await
        .unwrap();
    assert_eq!(
        read_object(&client, &bucket, "dir/hello.txt").await,
        b"hello sluice"
    );
    let mut streamed = Vec::new();
    object_stream(&client, &bucket, "dir/hello.txt")
        .await
        .read_to_end(&mut streamed)
        .await
        .unwrap();
    assert_eq!(streamed, b"hello sluice");
    assert!(object_exists(&client, &bucket, "dir/hello.txt").await);
    assert!(!object_exists(&client, &bucket, "dir/missing.txt").await);

    assert!(uploads_in_progress(&client, &bucket).await.is_empty());
    let upload = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key("big.bin")
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap().to_owned();
    assert_eq!(
        uploads_in_progress(&client, &bucket).await,
        vec![("big.bin".to_owned(), upload_id.clone())]
    );
    client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key("big.bin")
        .upload_id(&upload_id)
        .send()
        .await
        .unwrap();
    assert!(uploads_in_progress(&client, &bucket).await.is_empty());
    assert!(!server.lambda_env().is_empty());
}
