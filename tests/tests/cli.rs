//! The built `sluice` command line against Garage, the fixture HTTP server and a throwaway
//! Postgres: each job runs as its function does, failures exit with their type's code and
//! leave no upload open, and a signal aborts the upload.
//!
//! Build the binaries first: `cargo build --release --workspace --bins --features
//! sluice/fault-injection` (`make test` does). Needs the local stack (`scripts/stack.sh up`).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_compression::tokio::bufread::{GzipDecoder, GzipEncoder};
use serde_json::{Value, json};
use sluice::sink::{self, S3Target, UploadOptions};
use sluice_tests::harness::{Harness, error};
use sluice_tests::parking::ParkingCsv;
use sluice_tests::postgres::PgServer;
use sluice_tests::{
    FixtureServer, S3Server, binary_path, expected_crc64nvme, object_exists, object_stream,
    uploads_in_progress, workspace_root,
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

const MIB: u64 = 1024 * 1024;

/// A fresh bucket, a fixture server and a folder for job files; runs `target/release/sluice`
/// with the S3 server's environment.
struct Cli {
    server: S3Server,
    bucket: String,
    fixture: FixtureServer,
    dir: PathBuf,
}

/// What a run of the binary gave.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The summary on stdout (one line of JSON, since stdout is a pipe).
    fn summary(&self) -> Value {
        assert_eq!(self.code, Some(0), "sluice failed: {self:?}");
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "stdout is not one line: {:?}", self.stdout);
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// The last line on stderr: `<ErrorType>: <message>`.
    fn error_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or_default()
    }
}

impl Cli {
    async fn start(label: &str) -> Cli {
        let server = S3Server::garage();
        let bucket = server.fresh_bucket(label).await.unwrap();
        let dir = std::env::temp_dir().join(format!("sluice-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Cli {
            server,
            bucket,
            fixture: FixtureServer::start().await,
            dir,
        }
    }

    /// Writes `value` to `name` in the job folder and returns its path.
    fn file(&self, name: &str, value: &Value) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
        path
    }

    /// A byte-copy job from fixture `path` to `key` in the bucket.
    fn job(&self, path: &str, key: &str) -> Value {
        json!({
            "source": {"http": {"url": self.fixture.url(path)}},
            "destination": {"bucket": self.bucket, "key": key}
        })
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(binary_path("sluice"));
        cmd.args(args)
            .envs(self.server.lambda_env())
            .env("SLUICE_ALLOW_PRIVATE_NETWORKS", "true")
            // The plan of a 256 MB function (8 MiB parts), whatever this machine has.
            .env("SLUICE_MEMORY_MB", "256")
            .env_remove("SWEEP_CONFIG")
            .env_remove("PIPELINE")
            .env_remove("PIPELINE_URI")
            .envs(env.iter().copied())
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `sluice ARGS` to its end (at most 3 minutes).
    async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let out = tokio::time::timeout(Duration::from_secs(180), self.command(args, env).output())
            .await
            .expect("sluice did not end within 3 minutes")
            .unwrap();
        let ran = Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!("sluice {}: exit {:?}", args.join(" "), ran.code);
        ran
    }

    async fn client(&self) -> aws_sdk_s3::Client {
        self.server.client().await
    }

    async fn assert_nothing_written(&self, key: &str) {
        let client = self.client().await;
        assert!(
            !object_exists(&client, &self.bucket, key).await,
            "object {key} exists"
        );
        let open = uploads_in_progress(&client, &self.bucket).await;
        assert!(open.is_empty(), "uploads left in progress: {open:?}");
    }

    /// Runs `sluice run ingest JOB`, sends `SIG{signal}` once the multipart upload of `key`
    /// has a part, and checks that the run exits with `code`, says it was interrupted, and
    /// leaves neither an object nor an upload.
    async fn interrupt_after_a_part(
        &self,
        job: &std::path::Path,
        key: &str,
        signal: &str,
        code: i32,
    ) {
        let client = self.client().await;
        let mut child = self
            .command(&["run", "ingest", job.to_str().unwrap()], &[])
            .spawn()
            .unwrap();
        // Drained from the start, so the child never blocks on a full pipe.
        let mut pipe = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            pipe.read_to_string(&mut text).await.unwrap();
            text
        });
        // The source stalls after 30 MiB: 3 parts of 8 MiB go up before it does.
        let started = Instant::now();
        while parts_uploaded(&client, &self.bucket, key).await == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no part of {key} uploaded within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pid = child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("sluice did not exit within 60 s of the signal")
            .unwrap();
        let stderr = stderr.await.unwrap();
        assert_eq!(status.code(), Some(code), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("Interrupted: SIG{signal}")),
            "{last}"
        );
        self.assert_nothing_written(key).await;
    }

    /// CRC64NVME and length of the object as stored.
    async fn crc(&self, key: &str) -> (u64, u64) {
        let client = self.client().await;
        let mut reader = object_stream(&client, &self.bucket, key).await;
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0;
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                return (digest.finalize(), len);
            }
            digest.update(&buf[..n]);
            len += n as u64;
        }
    }

    /// Uploads a generated parking-violations CSV of at least `bytes` (gzip when `gzip`) to
    /// `key`, and returns its data rows.
    async fn upload_parking(&self, key: &str, bytes: u64, gzip: bool) -> u64 {
        let csv = ParkingCsv::new(7, bytes);
        let rows = Arc::new(std::sync::Mutex::new(None));
        let target = S3Target::new(self.client().await, &self.bucket, key);
        let options = UploadOptions::new(sluice::MemoryBudget::for_memory_mib(1024).schedule());
        let counted = CountRows(csv, rows.clone());
        let read = BufReader::with_capacity(1 << 20, counted);
        let enc = |e| sluice::Error::Encode {
            codec: "gzip",
            offset: 0,
            source: e,
        };
        if gzip {
            let gz = GzipEncoder::with_quality(read, async_compression::Level::Fastest);
            sink::upload(Arc::new(target), gz, &options, enc)
                .await
                .unwrap();
        } else {
            sink::upload(Arc::new(target), read, &options, enc)
                .await
                .unwrap();
        }
        rows.lock().unwrap().expect("the CSV was read to its end")
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A [`ParkingCsv`] that records its row count once read to the end.
struct CountRows(ParkingCsv, Arc<std::sync::Mutex<Option<u64>>>);

impl tokio::io::AsyncRead for CountRows {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(()))) && buf.filled().len() == before {
            let rows = self.0.rows();
            *self.1.lock().unwrap() = Some(rows);
        }
        polled
    }
}

/// Parts uploaded so far to the multipart uploads in progress for `key`.
async fn parts_uploaded(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> usize {
    let mut parts = 0;
    for (_, upload_id) in uploads_in_progress(client, bucket)
        .await
        .into_iter()
        .filter(|(k, _)| k == key)
    {
        let listed = client
            .list_parts()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
        // The upload may end between the two requests.
        parts += listed.map(|l| l.parts().len()).unwrap_or(0);
    }
    parts
}

#[tokio::test]
async fn run_ingest_streams_a_body_into_garage() {
    let cli = Cli::start("cli-ingest").await;
    let size = 20 * MIB + 3;
    let job = cli.file(
        "job.json",
        &cli.job(&format!("/bytes?size={size}&seed=5"), "cli/{run_id}.bin"),
    );
    let ran = cli
        .run(
            &[
                "run",
                "ingest",
                job.to_str().unwrap(),
                "--memory-mb",
                "256",
                "--run-id",
                "retry-7",
            ],
            &[],
        )
        .await;
    let summary = ran.summary();
    assert_eq!(summary["status"], "written", "{summary}");
    assert_eq!(summary["key"], "cli/retry-7.bin", "{summary}");
    assert_eq!(summary["bytes_out"], size);
    assert_eq!(summary["parts"], 3, "8 MiB parts at 256 MB: {summary}");
    assert_eq!(
        cli.crc("cli/retry-7.bin").await,
        (expected_crc64nvme(5, size), size)
    );
    // Not a terminal: JSON log lines on stderr, naming the run.
    let first: Value = ran
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "run")
        .unwrap_or_else(|| panic!("no JSON line `run` on stderr: {}", ran.stderr));
    assert_eq!(first["run_id"], "retry-7", "{first}");
    assert_eq!(first["memory_mib"], 256, "{first}");
    let open = uploads_in_progress(&cli.client().await, &cli.bucket).await;
    assert!(open.is_empty(), "{open:?}");
}

#[tokio::test]
async fn run_transform_applies_the_seed_pipeline_to_an_uploaded_csv() {
    let cli = Cli::start("cli-transform").await;
    let key = "incoming/parking violations été 2026.csv.gz";
    let rows = cli.upload_parking(key, 6 * MIB, true).await;
    let url = format!("s3://{}/{key}", cli.bucket);
    let ran = cli
        .run(
            &[
                "run",
                "transform",
                "--pipeline",
                "events/transform-s3.pipeline.json",
                &url,
            ],
            &[],
        )
        .await;
    let summary = ran.summary();
    let object = &summary["objects"][0];
    assert_eq!(object["status"], "written", "{summary}");
    assert_eq!(object["records_in"], rows, "{summary}");
    let out_key = object["key"].as_str().unwrap();
    assert_eq!(out_key, "clean/parking violations été 2026.csv.gz");
    let written = object["records_out"].as_u64().unwrap();
    assert!(written > 0 && written < rows, "{summary}");

    // The output read back: a header and `records_out` rows of the selected columns.
    let client = cli.client().await;
    let raw = BufReader::new(object_stream(&client, &cli.bucket, out_key).await);
    let mut lines = BufReader::new(GzipDecoder::new(raw)).lines();
    let header = lines.next_line().await.unwrap().unwrap();
    assert_eq!(header, "vehicle_make,issuing_agency,address");
    let mut n = 0;
    while let Some(line) = lines.next_line().await.unwrap() {
        assert!(line.starts_with("FORD,police,"), "{line}");
        n += 1;
    }
    assert_eq!(n, written);

    // A bad URL is refused before anything runs, naming the argument.
    let ran = cli
        .run(
            &[
                "run",
                "transform",
                "--pipeline",
                "events/transform-s3.pipeline.json",
                "s3://only-a-bucket",
            ],
            &[],
        )
        .await;
    assert_eq!(ran.code, Some(3), "{ran:?}");
    assert_eq!(
        ran.error_line(),
        "InvalidInput: invalid job spec: \"s3://only-a-bucket\" is not s3://bucket/key: no key \
         after the bucket"
    );
}

#[tokio::test]
async fn run_export_writes_a_query_from_postgres() {
    let cli = Cli::start("cli-export").await;
    let pg = PgServer::start().unwrap();
    pg.client()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE t AS SELECT i AS id, 'row ' || i AS label FROM generate_series(1, 5000) i",
        )
        .await
        .unwrap();
    let job = cli.file(
        "export.json",
        &json!({
            "source": {"postgres": {"query": "SELECT id, label FROM t ORDER BY id"}},
            "format": "ndjson",
            "destination": {"bucket": cli.bucket, "key": "export/t.ndjson"}
        }),
    );
    let url = pg.admin_url();
    let ran = cli
        .run(
            &["run", "export", job.to_str().unwrap()],
            &[("DATABASE_URL", &url)],
        )
        .await;
    let summary = ran.summary();
    assert_eq!(summary["status"], "written", "{summary}");
    let text = String::from_utf8(
        sluice_tests::read_object(&cli.client().await, &cli.bucket, "export/t.ndjson").await,
    )
    .unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5000);
    assert_eq!(rows[4999], json!({"id": 5000, "label": "row 5000"}));
}

#[tokio::test]
async fn validate_accepts_every_sample_and_names_the_position_of_a_syntax_error() {
    let cli = Cli::start("cli-validate").await;
    let mut checked = 0;
    for entry in std::fs::read_dir(workspace_root().join("events")).unwrap() {
        let path = entry.unwrap().path();
        let rel = format!("events/{}", path.file_name().unwrap().to_string_lossy());
        let ran = cli.run(&["validate", &rel], &[]).await;
        assert_eq!(ran.code, Some(0), "{rel}: {ran:?}");
        assert!(
            ran.stdout.starts_with(&format!("{rel}: valid ")),
            "{rel}: {}",
            ran.stdout
        );
        checked += 1;
    }
    assert!(checked >= 20, "{checked} samples");

    let broken = cli.dir.join("broken.json");
    std::fs::write(
        &broken,
        "{\n  \"source\": {\"http\": {\"url\": \"x\"}\n  \"destination\": {}\n}\n",
    )
    .unwrap();
    let ran = cli.run(&["validate", broken.to_str().unwrap()], &[]).await;
    assert_eq!(ran.code, Some(3), "{ran:?}");
    assert_eq!(
        ran.error_line(),
        format!(
            "InvalidInput: invalid job spec: {} is not JSON: expected `,` or `}}` at line 3 \
             column 3",
            broken.display()
        )
    );
    // A pipeline's syntax error is transform-s3's own, with its position.
    let pipeline = cli.dir.join("p.json");
    std::fs::write(
        &pipeline,
        "{\"input\": {\"format\": \"csv\"},\n \"output\": }",
    )
    .unwrap();
    let ran = cli
        .run(
            &["validate", "--kind", "pipeline", pipeline.to_str().unwrap()],
            &[],
        )
        .await;
    assert_eq!(ran.code, Some(3), "{ran:?}");
    let expected =
        sluice::transform::Pipeline::from_json_str(&std::fs::read_to_string(&pipeline).unwrap())
            .unwrap_err();
    assert_eq!(ran.error_line(), format!("InvalidInput: {expected}"));
    assert!(ran.error_line().contains("line 2 column"), "{ran:?}");
}

/// `sluice validate` and `sluice run` fail with the message the deployed function answers for
/// the same event.
#[tokio::test]
async fn validate_errors_are_the_functions_errors() {
    let cli = Cli::start("cli-same-errors").await;
    let cases = [
        (
            "ingest-http",
            "ingest",
            json!({"source": {"http": {"url": "http://127.0.0.1:1/x"}}}),
        ),
        (
            "ingest-http",
            "ingest",
            json!({"source": {"http": {"url": "http://127.0.0.1:1/x", "retries": 3}},
                   "destination": {"bucket": "b-1", "key": "k"}}),
        ),
        (
            "ingest-http",
            "ingest",
            json!({"source": {"http": {"url": "http://127.0.0.1:1/x"}},
                   "destination": {"bucket": "Bad_Bucket", "key": "k"}}),
        ),
        (
            "export-postgres",
            "export",
            json!({"source": {"postgres": {"query": "SELECT 1"}}, "format": "xml",
                   "destination": {"bucket": "b-1", "key": "k"}}),
        ),
        (
            "sweep-uploads",
            "sweep",
            json!({"targets": [{"bucket": "b-1", "prefix": "raw/"}], "max_age": "soon"}),
        ),
    ];
    for (i, (function, kind, event)) in cases.into_iter().enumerate() {
        let h = Harness::start(function, "cli-fn-errors", None).await;
        let (error_type, message) = error(h.invoke(event.clone(), Duration::from_secs(30)).await);
        let path = cli.file(&format!("bad-{i}.json"), &event);
        let path = path.to_str().unwrap();
        let expected = format!("{error_type}: {message}");
        for args in [
            vec!["validate", path],
            vec!["validate", "--kind", kind, path],
        ] {
            let ran = cli.run(&args, &[]).await;
            assert_eq!(ran.code, Some(3), "{args:?}: {ran:?}");
            assert_eq!(ran.error_line(), expected, "{args:?}");
        }
        let run: Vec<&str> = match kind {
            "sweep" => vec!["sweep", path],
            other => vec!["run", other, path],
        };
        let ran = cli.run(&run, &[]).await;
        assert_eq!(ran.code, Some(3), "{run:?}: {ran:?}");
        assert_eq!(ran.error_line(), expected, "{run:?}");
    }
}

#[tokio::test]
async fn failed_runs_exit_with_their_types_code_and_leave_no_upload() {
    let cli = Cli::start("cli-failures").await;
    // A body cut after 20 MiB: two parts were uploaded when it broke.
    let mut cut = cli.job(
        &format!("/cut?size={}&at={}&seed=1", 40 * MIB, 20 * MIB),
        "cut.bin",
    );
    cut["source"]["http"]["retry"] = json!({"max_attempts": 1});
    let mut not_found = cli.job("/status/404", "missing.bin");
    not_found["source"]["http"]["retry"] = json!({"max_attempts": 1});
    let mut down = cli.job("/status/503", "down.bin");
    down["source"]["http"]["retry"] = json!({"max_attempts": 2, "base_delay_ms": 10});
    let mut no_bucket = cli.job(&format!("/bytes?size={}&seed=2", 12 * MIB), "k.bin");
    no_bucket["destination"]["bucket"] = json!(format!("{}-gone", cli.bucket));
    for (name, job, code, error_type) in [
        ("cut", cut, 5, "Retryable"),
        ("not-found", not_found, 4, "Upstream"),
        ("down", down, 5, "Retryable"),
        ("no-bucket", no_bucket, 4, "Upstream"),
    ] {
        let key = job["destination"]["key"].as_str().unwrap().to_owned();
        let path = cli.file(&format!("{name}.json"), &job);
        let ran = cli
            .run(&["run", "ingest", path.to_str().unwrap()], &[])
            .await;
        assert_eq!(ran.code, Some(code), "{name}: {ran:?}");
        assert!(
            ran.error_line().starts_with(&format!("{error_type}: ")),
            "{name}: {}",
            ran.error_line()
        );
        assert!(ran.stdout.is_empty(), "{name}: {}", ran.stdout);
        cli.assert_nothing_written(&key).await;
    }
}

/// A panic inside the job (an injected fault in the transform's row loop, after parts of the
/// output were uploaded) is an Internal failure, and its uploads are aborted.
#[tokio::test]
async fn a_panic_is_internal_and_aborts_the_upload() {
    let cli = Cli::start("cli-panic").await;
    let key = "incoming/big.csv";
    let rows = cli.upload_parking(key, 40 * MIB, false).await;
    let pipeline = cli.file(
        "copy.json",
        &json!({"input": {"format": "csv"},
                "output": {"format": "csv", "key": "out/{source_stem}.csv"}}),
    );
    let fault = format!("transform.row:{}", rows * 3 / 4);
    let url = format!("s3://{}/{key}", cli.bucket);
    let ran = cli
        .run(
            &[
                "run",
                "transform",
                "--pipeline",
                pipeline.to_str().unwrap(),
                &url,
            ],
            &[
                ("SLUICE_FAULT", &fault),
                ("RUST_LOG", "info,sluice::sink=debug"),
            ],
        )
        .await;
    assert_eq!(ran.code, Some(7), "{ran:?}");
    assert!(
        ran.error_line().starts_with("Internal: ") && ran.error_line().contains("injected fault"),
        "{}",
        ran.error_line()
    );
    assert!(
        ran.stderr.contains("multipart upload created") || ran.stderr.contains("aborted"),
        "no upload was started before the fault; the test proves nothing: {}",
        ran.stderr
    );
    cli.assert_nothing_written("out/big.csv").await;
}

/// SIGINT (and SIGTERM) while parts are uploaded and the source stalls: the run exits 130
/// (143), with no object and no upload left open.
#[tokio::test]
async fn a_signal_mid_run_aborts_the_upload() {
    let cli = Cli::start("cli-signal").await;
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let key = format!("stalled-{signal}.bin");
        let job = cli.file(
            &format!("stall-{signal}.json"),
            &cli.job(&format!("/stall?size={}&at={}", 100 * MIB, 30 * MIB), &key),
        );
        cli.interrupt_after_a_part(&job, &key, signal, code).await;
    }
}

/// Records mode (`input_format: ndjson`): the records are read on a task of their own, which
/// a signal cancels with the run, so its upload is aborted before the process exits.
#[tokio::test]
async fn a_signal_mid_records_run_aborts_the_upload() {
    let cli = Cli::start("cli-signal-records").await;
    let key = "records/stalled.ndjson";
    let mut job = cli.job(&format!("/stall?size={}&at={}", 100 * MIB, 30 * MIB), key);
    job["input_format"] = json!("ndjson");
    let job = cli.file("stall-records.json", &job);
    cli.interrupt_after_a_part(&job, key, "INT", 130).await;
}

/// `sluice sweep --dry-run` reports an open upload without aborting it; without the flag it
/// aborts it.
#[tokio::test]
async fn sweep_reports_then_aborts_a_stale_upload() {
    let cli = Cli::start("cli-sweep").await;
    let client = cli.client().await;
    let created = client
        .create_multipart_upload()
        .bucket(&cli.bucket)
        .key("raw/left-open.bin")
        .send()
        .await
        .unwrap();
    let upload_id = created.upload_id().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let config = cli.file(
        "sweep.json",
        &json!({"targets": [{"bucket": cli.bucket, "prefix": "raw/"}], "max_age": "1s"}),
    );
    let config = config.to_str().unwrap();
    let dry = cli
        .run(&["sweep", config, "--dry-run"], &[])
        .await
        .summary();
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert!(dry.to_string().contains(&upload_id), "{dry}");
    assert_eq!(uploads_in_progress(&client, &cli.bucket).await.len(), 1);

    let swept = cli.run(&["sweep", config], &[]).await.summary();
    assert!(swept.to_string().contains(&upload_id), "{swept}");
    assert!(uploads_in_progress(&client, &cli.bucket).await.is_empty());
}
