//! The built `ingest-http` bootstrap, driven through the Lambda Runtime API emulator against
//! Garage and the fixture HTTP server: the contract a deployed function keeps.
//!
//! Build the binary first: `cargo build --release -p ingest-http` (`make test` does).

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::harness::{Decode, Harness, error, response};
use sluice_tests::{MemoryCgroup, expected_crc64nvme};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// The contract: a body of several GiB (2 by default, `SLUICE_CONTRACT_GIB` to change)
/// gzip-compressed into Garage by a 256 MB function inside a 256 MB memory cgroup, with a
/// measured peak of at most 128 MiB and a byte-exact round trip.
#[tokio::test]
async fn contract_streams_gibibytes_under_a_256_mb_limit() {
    let gib: u64 = std::env::var("SLUICE_CONTRACT_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let size = gib * GIB;
    let cgroup = MemoryCgroup::create("sluice-contract", 256 * 1024 * 1024);
    let h = Harness::start("ingest-http", "contract", cgroup.as_ref()).await;
    let mut job = h.job(
        &format!("/bytes?size={size}&seed=11"),
        "contract/{run_id}.ndjson.gz",
    );
    job["compression"] = json!("gzip");

    let started = Instant::now();
    let summary = response(h.invoke(job, Duration::from_secs(900)).await);
    let secs = started.elapsed().as_secs_f64();

    assert_eq!(summary["status"], "written");
    assert_eq!(summary["bytes_in"], size);
    let key = summary["key"].as_str().unwrap().to_owned();
    let (crc, len) = h.decoded_crc(&key, Decode::Gzip).await;
    assert_eq!(len, size, "decompressed length");
    assert_eq!(
        crc,
        expected_crc64nvme(11, size),
        "decompressed content differs"
    );

    let rss = summary["peak_rss_bytes"].as_u64().unwrap();
    let peak = match &cgroup {
        Some(cg) => {
            assert!(!cg.oom_killed(), "the function hit the cgroup limit");
            cg.peak_bytes()
        }
        None => {
            eprintln!("WARNING: no memory cgroup; falling back to the process's VmHWM");
            rss
        }
    };
    eprintln!(
        "CONTRACT: {gib} GiB gzip in {secs:.1} s = {:.1} MiB/s; cgroup peak {:.1} MiB; \
         process VmHWM {:.1} MiB; {} parts; {} bytes out",
        size as f64 / MIB as f64 / secs,
        peak as f64 / MIB as f64,
        rss as f64 / MIB as f64,
        summary["parts"],
        summary["bytes_out"],
    );
    assert!(
        peak <= 128 * MIB,
        "cgroup peak {peak} bytes is over 128 MiB"
    );
    assert!(
        rss <= 128 * MIB,
        "process peak RSS {rss} bytes is over 128 MiB"
    );
}

#[tokio::test]
async fn passthrough_zstd_and_content_encoding_round_trip() {
    let h = Harness::start("ingest-http", "codecs", None).await;
    let size = 30 * MIB + 7;

    let plain = response(
        h.invoke(
            h.job(&format!("/bytes?size={size}&seed=3"), "plain"),
            Duration::from_secs(120),
        )
        .await,
    );
    assert_eq!(plain["bytes_out"], size);
    assert_eq!(plain["parts"], 4);
    assert_eq!(
        h.decoded_crc("plain", Decode::None).await,
        (expected_crc64nvme(3, size), size)
    );

    let mut job = h.job(&format!("/bytes?size={size}&seed=3"), "z.zst");
    job["compression"] = json!({"codec": "zstd", "level": 5});
    let z = response(h.invoke(job, Duration::from_secs(120)).await);
    assert!(z["bytes_out"].as_u64().unwrap() < size / 2);
    assert_eq!(
        h.decoded_crc("z.zst", Decode::Zstd).await,
        (expected_crc64nvme(3, size), size)
    );

    // A gzip Content-Encoding is undone: the object holds the decoded body.
    let decoded = response(
        h.invoke(
            h.job(&format!("/gzip?size={size}&seed=3"), "decoded"),
            Duration::from_secs(120),
        )
        .await,
    );
    assert!(decoded["bytes_in"].as_u64().unwrap() < size);
    assert_eq!(decoded["bytes_out"], size);
    assert_eq!(
        h.decoded_crc("decoded", Decode::None).await,
        (expected_crc64nvme(3, size), size)
    );
}

#[tokio::test]
async fn empty_body_makes_a_zero_byte_object() {
    let h = Harness::start("ingest-http", "empty", None).await;
    let s = response(
        h.invoke(h.job("/empty", "empty"), Duration::from_secs(60))
            .await,
    );
    assert_eq!(
        (s["bytes_out"].as_u64(), s["parts"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(h.decoded_crc("empty", Decode::None).await, (0, 0));
}

#[tokio::test]
async fn source_cut_mid_body_leaves_nothing() {
    let h = Harness::start("ingest-http", "cut", None).await;
    let job = h.job(
        &format!("/cut?size={}&at={}&seed=1", 40 * MIB, 30 * MIB),
        "cut",
    );
    let (kind, message) = error(h.invoke(job, Duration::from_secs(120)).await);
    assert_eq!(kind, "Retryable", "{message}");
    assert!(message.contains("connection failed after"), "{message}");
    h.assert_nothing_written("cut").await;
}

#[tokio::test]
async fn source_error_status_is_reported_before_any_upload() {
    let h = Harness::start("ingest-http", "status", None).await;
    let (kind, message) = error(
        h.invoke(h.job("/status/404", "nf"), Duration::from_secs(60))
            .await,
    );
    assert_eq!(kind, "Upstream");
    assert!(message.contains("HTTP 404"), "{message}");
    let (kind, message) = error(
        h.invoke(
            h.job("/status/500?size=100000", "ise"),
            Duration::from_secs(60),
        )
        .await,
    );
    assert_eq!(kind, "Retryable");
    assert!(
        message.contains("HTTP 500") && message.len() < 2000,
        "{message}"
    );
    h.assert_nothing_written("nf").await;
    h.assert_nothing_written("ise").await;
}

#[tokio::test]
async fn deadline_aborts_with_timeout() {
    let h = Harness::start("ingest-http", "deadline", None).await;
    // 30 MiB arrive (three parts go up), then the source stalls; the invocation has 8 s and
    // the job gives up 3 s before the deadline, long before the 30 s read timeout.
    let job = h.job(
        &format!("/stall?size={}&at={}&seed=2", 100 * MIB, 30 * MIB),
        "late",
    );
    let started = Instant::now();
    let (kind, message) = error(h.invoke(job, Duration::from_secs(8)).await);
    assert_eq!(kind, "Timeout", "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered after the deadline"
    );
    h.assert_nothing_written("late").await;
}

/// A function whose whole time is not more than the deadline margin (Lambda's default 3 s
/// timeout against the default 3 s margin) says so, before contacting the source, instead of
/// timing out at zero bytes.
#[tokio::test]
async fn a_timeout_shorter_than_the_margin_is_a_clear_configuration_error() {
    let h = Harness::start("ingest-http", "budget", None).await;
    let job = h.job(&format!("/bytes?size={}", MIB), "short");
    let (kind, message) = error(h.invoke(job, Duration::from_secs(3)).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(
        message.contains("not more than the deadline margin of 3000 ms")
            && message.contains("raise the function's timeout"),
        "{message}"
    );
    assert_eq!(h.fixture.hits("/bytes"), 0, "the source was contacted");
    h.assert_nothing_written("short").await;
}

#[tokio::test]
async fn bad_job_spec_is_invalid_input() {
    let h = Harness::start("ingest-http", "spec", None).await;
    let mut job = h.job("/bytes?size=10", "k");
    job["compresion"] = json!("gzip");
    let (kind, message) = error(h.invoke(job, Duration::from_secs(30)).await);
    assert_eq!(kind, "InvalidInput");
    assert!(message.contains("unknown field `compresion`"), "{message}");
    let job = h.job("/bytes?size=10", "raw/{nope}");
    let (kind, message) = error(h.invoke(job, Duration::from_secs(30)).await);
    assert_eq!(kind, "InvalidInput");
    assert!(message.contains("unknown placeholder {nope}"), "{message}");
    assert_eq!(
        h.fixture.total_hits(),
        0,
        "the source was contacted for a bad spec"
    );
}

#[tokio::test]
async fn no_overwrite_makes_a_repeat_a_no_op() {
    let h = Harness::start("ingest-http", "repeat", None).await;
    let mut job = h.job("/bytes?size=1000&seed=5", "fixed/key.ndjson");
    job["destination"]["overwrite"] = json!(false);
    let first = response(h.invoke(job.clone(), Duration::from_secs(60)).await);
    assert_eq!(first["status"], "written");
    let second = response(h.invoke(job, Duration::from_secs(60)).await);
    assert_eq!(second["status"], "exists");
    assert_eq!(
        h.fixture.hits("/bytes"),
        1,
        "the repeat fetched the source again"
    );
}

/// A source that stalls mid-body with the deadline far away: the read timeout (2 s here via
/// `read_timeout_secs`; 30 s by default) fails the read, the upload (three parts already up)
/// is aborted, nothing is written.
#[tokio::test]
async fn source_stalling_mid_body_hits_the_read_timeout() {
    let h = Harness::start("ingest-http", "stall", None).await;
    let mut job = h.job(
        &format!("/stall?size={}&at={}&seed=4", 100 * MIB, 30 * MIB),
        "stalled",
    );
    job["source"]["http"]["read_timeout_secs"] = json!(2);
    let started = Instant::now();
    let (kind, message) = error(h.invoke(job, Duration::from_secs(120)).await);
    assert_eq!(kind, "Retryable", "{message}");
    assert!(
        message.contains("read timed out after") && message.contains("/stall"),
        "{message}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    h.assert_nothing_written("stalled").await;
}
