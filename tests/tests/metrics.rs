//! The metrics every function prints: one CloudWatch EMF line per invocation (stdout), success
//! or failure, whose figures equal the answer's summary; and the `progress` lines of a run
//! longer than `SLUICE_PROGRESS_SECS`. Through the built bootstraps, the Runtime API emulator,
//! Garage, the fixture server and a throwaway Postgres.
//!
//! Build the binaries first: `cargo build --release --workspace --bins`.
//! Needs the local stack (`scripts/stack.sh up`).

use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::emf::{metric, nth_invocation_line, progress_lines};
use sluice_tests::harness::{Harness, error, response};
use sluice_tests::postgres::PgServer;
use sluice_tests::{LambdaProcess, RuntimeApi, S3Server, binary_path};

const MIB: u64 = 1024 * 1024;
const T: Duration = Duration::from_secs(120);

/// Checks the EMF document's shape: namespace, the two dimension sets, the dimension values.
fn check_shape(line: &Value, namespace: &str, function: &str, job: &str) {
    let cw = &line["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(cw["Namespace"], namespace, "{line}");
    assert_eq!(cw["Dimensions"], json!([["Function"], ["Function", "Job"]]));
    assert_eq!(line["Function"], function, "{line}");
    assert_eq!(line["Job"], job, "{line}");
    for name in [
        "BytesIn",
        "BytesOut",
        "RecordsIn",
        "RecordsOut",
        "RecordsQuarantined",
        "Objects",
        "Parts",
        "DurationMs",
        "ThroughputMiBps",
        "PeakMemoryMiB",
        "Retries",
        "Errors",
    ] {
        assert!(line[name].is_number(), "{name} missing in {line}");
    }
    assert!(line["PeakMemoryMiB"].as_f64().unwrap() > 1.0, "{line}");
}

/// `(BytesIn, BytesOut, Parts)` of a line.
fn bytes_and_parts(line: &Value) -> (u64, u64, u64) {
    (
        metric(line, "BytesIn"),
        metric(line, "BytesOut"),
        metric(line, "Parts"),
    )
}

#[tokio::test]
async fn ingest_http_metrics_equal_the_summary_on_success_retry_and_failure() {
    let h = Harness::start_with(
        "ingest-http",
        "metrics-ingest",
        None,
        &[
            ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
            ("SLUICE_METRICS_NAMESPACE", "sluice-test"),
            ("SLUICE_PROGRESS_SECS", "0"),
        ],
    )
    .await;

    // A byte copy of 20 MiB: three parts of the 256 MB plan, named by the spec.
    let mut job = h.job(
        &format!("/bytes?size={}&seed=7", 20 * MIB),
        "raw/copy.ndjson",
    );
    job["job_name"] = json!("orders copy");
    let s = response(h.invoke(job, T).await);
    let line = nth_invocation_line(&h.process, 1).await;
    check_shape(&line, "sluice-test", "ingest-http", "orders copy");
    assert_eq!(
        bytes_and_parts(&line),
        (
            s["bytes_in"].as_u64().unwrap(),
            s["bytes_out"].as_u64().unwrap(),
            s["parts"].as_u64().unwrap()
        ),
        "{s}"
    );
    assert_eq!(metric(&line, "BytesIn"), 20 * MIB);
    assert!(metric(&line, "Parts") > 1, "{line}");
    assert_eq!(metric(&line, "Objects"), 1);
    assert_eq!(metric(&line, "Errors"), 0);
    assert!(line.get("ErrorType").is_none(), "{line}");
    assert!(metric(&line, "DurationMs") > 0, "{line}");

    // Records through a flaky API (two 503s first): records in and out, the retries, and the
    // job name derived from the destination.
    let mut job = h.job(
        "/api/storm?times=2&key=metrics&status=503&n=95&per=10",
        "rec/{run_id}.ndjson",
    );
    job["records"] = json!("$.data[*]");
    job["source"]["http"]["paginate"] =
        json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}});
    job["source"]["http"]["retry"] = json!({"base_delay_ms": 10, "max_delay_ms": 50});
    let s = response(h.invoke(job, T).await);
    let line = nth_invocation_line(&h.process, 2).await;
    check_shape(
        &line,
        "sluice-test",
        "ingest-http",
        &format!("{}/rec/", h.bucket),
    );
    assert_eq!(s["records"], 95, "{s}");
    assert_eq!(metric(&line, "RecordsIn"), 95);
    assert_eq!(metric(&line, "RecordsOut"), 95);
    assert_eq!(metric(&line, "RecordsQuarantined"), 0);
    assert_eq!(metric(&line, "Retries"), 2);
    assert_eq!(
        bytes_and_parts(&line),
        (
            s["bytes_in"].as_u64().unwrap(),
            s["bytes_out"].as_u64().unwrap(),
            s["parts"].as_u64().unwrap()
        ),
        "{s}"
    );

    // A failure: the error type as a property, Errors 1, nothing written.
    let job = h.job("/status/404", "raw/missing.ndjson");
    let (error_type, _) = error(h.invoke(job, T).await);
    let line = nth_invocation_line(&h.process, 3).await;
    check_shape(
        &line,
        "sluice-test",
        "ingest-http",
        &format!("{}/raw/missing.ndjson", h.bucket),
    );
    assert_eq!(metric(&line, "Errors"), 1);
    assert_eq!(line["ErrorType"], error_type.as_str(), "{line}");
    assert_eq!(bytes_and_parts(&line), (0, 0, 0));
    assert_eq!(metric(&line, "Objects"), 0);

    // An event that is not a spec still gets its line, under the unnamed job.
    let (error_type, _) = error(h.invoke(json!({"nope": 1}), T).await);
    let line = nth_invocation_line(&h.process, 4).await;
    assert_eq!(line["Job"], "unknown");
    assert_eq!(line["ErrorType"], error_type.as_str());
    assert_eq!(metric(&line, "Errors"), 1);
}

const PIPELINE: &str = r#"{
  "input": {"format": "csv", "prefix": "in/", "schema": [
    {"name": "id", "type": "int", "required": true},
    {"name": "name", "type": "string"}
  ]},
  "output": {"format": "csv", "key": "out/{source_stem}.csv"},
  "quarantine": {"key": "bad/{source_stem}.ndjson"}
}"#;

/// `rows` CSV rows, every 100th with an id that is not a number; ~80 bytes a row.
fn csv(rows: u64) -> Vec<u8> {
    let mut out = b"id,name\n".to_vec();
    for i in 0..rows {
        let id = if i % 100 == 99 {
            format!("x{i}")
        } else {
            i.to_string()
        };
        out.extend_from_slice(format!("{id},name-{i:0>64}\n").as_bytes());
    }
    out
}

async fn put(h: &Harness, key: &str, body: Vec<u8>) {
    h.server
        .client()
        .await
        .put_object()
        .bucket(&h.bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn transform_s3_metrics_equal_the_summary_with_quarantine_and_on_failure() {
    let h = Harness::start_with(
        "transform-s3",
        "metrics-transform",
        None,
        &[("PIPELINE", PIPELINE), ("SLUICE_PROGRESS_SECS", "0")],
    )
    .await;
    let rows = 300_000;
    let data = csv(rows);
    let size = data.len() as u64;
    put(&h, "in/orders.csv", data).await;
    let answer = response(
        h.invoke(json!({"bucket": h.bucket, "key": "in/orders.csv"}), T)
            .await,
    );
    let s = &answer["objects"][0];
    let line = nth_invocation_line(&h.process, 1).await;
    // No output bucket: the job is the key template's prefix.
    check_shape(&line, "sluice", "transform-s3", "out/");
    assert_eq!(s["records_in"], rows, "{s}");
    assert_eq!(s["quarantined"], rows / 100, "{s}");
    for (name, field) in [
        ("RecordsIn", "records_in"),
        ("RecordsOut", "records_out"),
        ("RecordsQuarantined", "quarantined"),
    ] {
        assert_eq!(metric(&line, name), s[field], "{name}: {line} {s}");
    }
    assert_eq!(
        bytes_and_parts(&line),
        (
            s["bytes_in"].as_u64().unwrap(),
            s["bytes_out"].as_u64().unwrap(),
            s["parts"].as_u64().unwrap()
        ),
        "{s}"
    );
    assert_eq!(metric(&line, "BytesIn"), size);
    assert!(metric(&line, "Parts") > 1, "{line}");
    assert_eq!(metric(&line, "Objects"), 1);
    assert_eq!(metric(&line, "Errors"), 0);

    // A gzip object cut short: the whole object was read, then decoding failed.
    let mut gz = {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&csv(50_000)).unwrap();
        e.finish().unwrap()
    };
    gz.truncate(gz.len() / 2);
    let cut = gz.len() as u64;
    put(&h, "in/cut.csv.gz", gz).await;
    let (error_type, _) = error(
        h.invoke(json!({"bucket": h.bucket, "key": "in/cut.csv.gz"}), T)
            .await,
    );
    let line = nth_invocation_line(&h.process, 2).await;
    check_shape(&line, "sluice", "transform-s3", "out/");
    assert_eq!(metric(&line, "Errors"), 1);
    assert_eq!(line["ErrorType"], error_type.as_str(), "{line}");
    assert_eq!(metric(&line, "BytesIn"), cut, "{line}");
    assert!(metric(&line, "RecordsIn") > 0, "{line}");
    assert_eq!(metric(&line, "Objects"), 0);
}

#[tokio::test]
async fn export_postgres_metrics_equal_the_summary_on_success_and_failure() {
    let pg = PgServer::start().unwrap();
    let server = S3Server::garage();
    let bucket = server.fresh_bucket("metrics-export").await.unwrap();
    let api = RuntimeApi::start().await;
    let mut env = server.lambda_env();
    env.push(("DATABASE_URL".into(), pg.admin_url()));
    env.push(("SLUICE_PROGRESS_SECS".into(), "0".into()));
    let process =
        LambdaProcess::spawn(&binary_path("export-postgres"), &api, &env, 256, None).unwrap();
    let rows = 400_000u64;
    let job = json!({
        "source": {"postgres": {"query": format!(
            "SELECT g AS id, md5(g::text) AS h FROM generate_series(1, {rows}) g")}},
        "format": "ndjson",
        "job_name": "nightly export",
        "destination": {"bucket": bucket, "key": "exports/{run_id}.ndjson"}
    });
    let s = match api.invoke(job, T).await.unwrap() {
        sluice_tests::Invocation::Response(v) => v,
        other => panic!("{other:?}"),
    };
    let line = nth_invocation_line(&process, 1).await;
    check_shape(&line, "sluice", "export-postgres", "nightly export");
    assert_eq!(s["rows"], rows, "{s}");
    assert_eq!(metric(&line, "RecordsIn"), rows);
    assert_eq!(metric(&line, "RecordsOut"), rows);
    assert_eq!(
        bytes_and_parts(&line),
        (
            s["bytes_in"].as_u64().unwrap(),
            s["bytes_out"].as_u64().unwrap(),
            s["parts"].as_u64().unwrap()
        ),
        "{s}"
    );
    assert!(metric(&line, "Parts") > 1, "{line}");
    assert_eq!(metric(&line, "Errors"), 0);

    let job = json!({
        "source": {"postgres": {"query": "SELECT * FROM no_such_table"}},
        "destination": {"bucket": bucket, "key": "exports/bad.csv"}
    });
    let error_type = match api.invoke(job, T).await.unwrap() {
        sluice_tests::Invocation::Error { error_type, .. } => error_type,
        other => panic!("{other:?}"),
    };
    let line = nth_invocation_line(&process, 2).await;
    check_shape(
        &line,
        "sluice",
        "export-postgres",
        &format!("{bucket}/exports/bad.csv"),
    );
    assert_eq!(metric(&line, "Errors"), 1);
    assert_eq!(line["ErrorType"], error_type.as_str());
    assert_eq!(bytes_and_parts(&line), (0, 0, 0));
}

#[tokio::test]
async fn a_run_longer_than_the_interval_prints_progress_lines_that_grow() {
    let h = Harness::start_with(
        "ingest-http",
        "metrics-progress",
        None,
        &[
            ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
            ("SLUICE_PROGRESS_SECS", "1"),
        ],
    )
    .await;
    // Ten pages at two requests a second: about 4.5 s.
    let mut job = h.job("/api/cursor?n=1000&per=100", "slow/{run_id}.ndjson");
    job["records"] = json!("$.data[*]");
    job["source"]["http"]["paginate"] =
        json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}});
    job["source"]["http"]["rate_limit"] = json!({"per_second": 2.0});
    let s = response(h.invoke(job, T).await);
    let end = nth_invocation_line(&h.process, 1).await;
    let lines = progress_lines(&h.process.transcript());
    assert!(
        lines.len() >= 3,
        "{} progress lines: {lines:?}",
        lines.len()
    );
    for l in &lines {
        assert_eq!(l["function"], "ingest-http");
        assert_eq!(l["job"], format!("{}/slow/", h.bucket));
        for field in [
            "bytes_in",
            "records_in",
            "parts_done",
            "parts_in_flight",
            "elapsed_ms",
        ] {
            assert!(l[field].is_u64(), "{field} in {l}");
        }
        assert!(l["mib_s"].is_number(), "{l}");
    }
    let get = |l: &Value, f: &str| l[f].as_u64().unwrap();
    for pair in lines.windows(2) {
        assert!(get(&pair[1], "elapsed_ms") > get(&pair[0], "elapsed_ms"));
        assert!(get(&pair[1], "bytes_in") >= get(&pair[0], "bytes_in"));
        assert!(get(&pair[1], "records_in") >= get(&pair[0], "records_in"));
    }
    let (first, last) = (&lines[0], &lines[lines.len() - 1]);
    assert!(
        get(last, "records_in") > get(first, "records_in"),
        "{first} {last}"
    );
    assert!(get(last, "bytes_in") > get(first, "bytes_in"));
    assert!(get(last, "records_in") <= s["records"].as_u64().unwrap());
    assert_eq!(metric(&end, "RecordsIn"), 1000);
    // No total for a paginated source: no ETA.
    assert!(last["eta_secs"].is_null(), "{last}");
    // The lines stop with the job: none after its end.
    let count = lines.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(progress_lines(&h.process.transcript()).len(), count);

    // A known total (a byte copy's Content-Length) gives total_bytes and an ETA; a bad
    // interval is a warning naming the variable, and the default applies.
    drop(h);
    let h = Harness::start_with(
        "ingest-http",
        "metrics-progress-bad",
        None,
        &[
            ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
            ("SLUICE_PROGRESS_SECS", "soon"),
        ],
    )
    .await;
    response(
        h.invoke(h.job("/bytes?size=1000&seed=1", "tiny.ndjson"), T)
            .await,
    );
    let transcript = h.process.transcript();
    assert!(
        transcript.contains("SLUICE_PROGRESS_SECS=\\\"soon\\\" is not a whole number"),
        "{transcript}"
    );
}

#[tokio::test]
async fn a_byte_copy_reports_its_total_and_an_eta() {
    let h = Harness::start_with(
        "ingest-http",
        "metrics-eta",
        None,
        &[
            ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
            ("SLUICE_PROGRESS_SECS", "1"),
        ],
    )
    .await;
    // A body of 1 GiB at local speed takes more than a second; the line with a total
    // says how much is left.
    let size = 1024 * MIB;
    let job = h.job(&format!("/bytes?size={size}&seed=3"), "big.ndjson");
    let s = response(h.invoke(job, T).await);
    assert_eq!(s["bytes_in"], size);
    let lines = progress_lines(&h.process.transcript());
    assert!(!lines.is_empty(), "no progress line in a {size}-byte copy");
    for l in &lines {
        assert_eq!(l["total_bytes"], size, "{l}");
        let done = l["bytes_in"].as_u64().unwrap();
        assert!(done <= size, "{l}");
        if done > 0 && done < size {
            assert!(l["eta_secs"].is_u64(), "{l}");
        }
    }
    let end = nth_invocation_line(&h.process, 1).await;
    assert_eq!(metric(&end, "BytesIn"), size);
    assert_eq!(metric(&end, "BytesOut"), s["bytes_out"].as_u64().unwrap());
    assert_eq!(metric(&end, "Parts"), s["parts"].as_u64().unwrap());
}
