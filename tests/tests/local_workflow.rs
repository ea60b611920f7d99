//! The README's local workflow, run as a user runs it: `make watch` (scripts/watch.sh: the
//! sample events' servers and data, then `cargo lambda watch`) in one process, and
//! `cargo lambda invoke` of every function with its sample event from `events/` — unchanged —
//! each answered with a written (or complete) summary whose objects are in the bucket.
//!
//! This is what failed before: the emulator sends `Lambda-Runtime-Deadline-Ms: 600000`, which
//! read as a time is 1970, so every job gave up at zero bytes.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{S3Server, object_exists, uploads_in_progress, workspace_root};

/// `make watch` running in its own process group, stopped (the whole group) on drop.
struct Watch {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &group])
            .status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.child.wait();
    }
}

impl Watch {
    fn start(root: &Path, port: u16) -> Watch {
        let log = std::env::temp_dir().join(format!("sluice-watch-{}.log", std::process::id()));
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new("bash")
            .arg(root.join("scripts/watch.sh"))
            .current_dir(root)
            .env("WATCH_PORT", port.to_string())
            .env("WATCH_SIZE_MIB", "16")
            // Other files change while tests run; a reload mid-invoke would only slow it down.
            .env("WATCH_FLAGS", "--ignore-changes")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("starting scripts/watch.sh");
        Watch { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the emulator's invoke port (scripts/watch.sh may build sluice-local first).
    async fn ready(&mut self, port: u16) {
        let until = Instant::now() + Duration::from_secs(900);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("make watch exited with {status}:\n{}", self.log());
            }
            if self.log().contains("starting Runtime server")
                && tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("make watch did not start in 15 minutes:\n{}", self.log());
    }
}

/// `cargo lambda invoke FUNCTION --data-file events/EVENT`, as `make invoke` runs it; the answer.
async fn invoke(root: &Path, port: u16, function: &str, event: &str, watch: &Watch) -> Value {
    let out = tokio::process::Command::new(root.join(".venv/bin/cargo-lambda"))
        .args([
            "lambda",
            "invoke",
            function,
            "--invoke-port",
            &port.to_string(),
        ])
        .args(["--data-file", event, "--output-format", "json"])
        .current_dir(root)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // The first invoke of each function may build it (when the sources changed since the
    // last build of the same features).
    let out = tokio::time::timeout(Duration::from_secs(900), out)
        .await
        .unwrap_or_else(|_| panic!("{function}: no answer in 15 minutes:\n{}", watch.log()))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{function} {event}: {}\n{stdout}\n{}\nwatch log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        watch.log()
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{function}: {e}: {stdout}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn make_watch_and_make_invoke_run_every_sample_event() {
    let root = workspace_root();
    let port = free_port();
    let mut watch = Watch::start(&root, port);
    watch.ready(port).await;

    let server = S3Server::garage();
    let s3 = server.client().await;
    let bucket = "sluice-demo";

    let ingest = invoke(
        &root,
        port,
        "ingest-http",
        "events/ingest-http.json",
        &watch,
    )
    .await;
    assert_eq!(ingest["status"], "written", "{ingest}");
    // 16 MiB of JSON, read in full and gzip-compressed.
    assert!(ingest["bytes_in"].as_u64().unwrap() >= 16 << 20, "{ingest}");
    let key = ingest["key"].as_str().unwrap();
    assert!(
        key.starts_with("raw/demo/dt=") && key.ends_with(".json.gz"),
        "{key}"
    );
    assert!(object_exists(&s3, bucket, key).await, "{key}");

    // A stack kept from an earlier run holds this sample's output and manifest, which would
    // make the event a duplicate: start from none.
    for key in [
        "clean/parking violations 2026.csv.gz",
        "clean/parking violations 2026.csv.gz.manifest.json",
    ] {
        s3.delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
    }
    let transform = invoke(
        &root,
        port,
        "transform-s3",
        "events/transform-s3.direct.json",
        &watch,
    )
    .await;
    let object = &transform["objects"][0];
    assert_eq!(object["status"], "written", "{transform}");
    assert!(object["records_out"].as_u64().unwrap() > 0, "{transform}");
    let key = object["key"].as_str().unwrap();
    assert_eq!(key, "clean/parking violations 2026.csv.gz");
    assert!(object_exists(&s3, bucket, key).await, "{key}");

    let export = invoke(
        &root,
        port,
        "export-postgres",
        "events/export-postgres.json",
        &watch,
    )
    .await;
    assert_eq!(export["status"], "written", "{export}");
    // The seeded orders (sluice_tests::local): 66,666 of them fall on 2026-11-01.
    assert_eq!(export["rows"], 66_666, "{export}");
    let key = export["key"].as_str().unwrap();
    assert!(object_exists(&s3, bucket, key).await, "{key}");

    let sweep = invoke(
        &root,
        port,
        "sweep-uploads",
        "events/sweep-uploads.json",
        &watch,
    )
    .await;
    assert_eq!(sweep["status"], "complete", "{sweep}");

    assert!(
        uploads_in_progress(&s3, bucket)
            .await
            .iter()
            .all(|(key, _)| !key.starts_with("raw/") && !key.starts_with("clean/")),
        "uploads left open"
    );
    let log = watch.log();
    assert!(
        log.contains("read as a duration from the start of the invocation"),
        "the emulator's deadline was not recognised:\n{log}"
    );
    drop(watch);
    // Stopping make watch stops what it started: the file server's port is free again.
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", sluice_tests::local::SAMPLE_HTTP_PORT)).is_ok(),
        "the sample file server outlived make watch"
    );
}
