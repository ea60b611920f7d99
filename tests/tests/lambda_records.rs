//! `ingest-http` in records mode, through the built bootstrap and the Runtime API emulator:
//! every pagination style of the fixture API, the bad documents, retries, the network policy,
//! and a multi-GiB document extracted under a 256 MB memory limit.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::fixture_api::{api_record_json, big_doc_record_count};
use sluice_tests::harness::{Decode, Harness, error, response};
use sluice_tests::{FixtureServer, MemoryCgroup, read_object};

const MIB: u64 = 1024 * 1024;
const T: Duration = Duration::from_secs(120);

fn records_job(h: &Harness, path: &str, key: &str, paginate: Value) -> Value {
    let mut job = h.job(path, key);
    job["records"] = json!("$.data[*]");
    if !paginate.is_null() {
        job["source"]["http"]["paginate"] = paginate;
    }
    job
}

/// The NDJSON the fixture's records 1..=n make.
fn expected(n: u64) -> String {
    (1..=n).map(|i| api_record_json(i) + "\n").collect()
}

async fn object_text(h: &Harness, key: &str) -> String {
    let client = h.server.client().await;
    String::from_utf8(read_object(&client, &h.bucket, key).await).unwrap()
}

#[tokio::test]
async fn every_pagination_style_yields_every_record_once() {
    let h = Harness::start("ingest-http", "paginate", None).await;
    let cases = [
        (
            "/api/cursor?n=95&per=10",
            json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}}),
            10,
        ),
        (
            "/api/cursor?n=95&per=10&cursor_first=true",
            json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}}),
            10,
        ),
        (
            "/api/has_more?n=95&per=10",
            json!({"cursor": {"param": "cursor", "path": "$.meta.next"}, "has_more": "$.meta.has_more"}),
            10,
        ),
        ("/api/link?n=95&per=10", json!({"link_header": {}}), 10),
        (
            "/api/next_url?n=95&per=10",
            json!({"next_url": {"path": "$.next"}}),
            10,
        ),
        (
            "/api/pages?n=95&per=10",
            json!({"page_number": {"param": "page", "start": 1}}),
            11,
        ),
        (
            "/api/offset?n=95",
            json!({"offset": {"param": "offset", "limit_param": "limit", "limit": 10}, "total": "$.total"}),
            10,
        ),
    ];
    for (i, (path, paginate, pages)) in cases.into_iter().enumerate() {
        let key = format!("style-{i}.ndjson");
        let s = response(
            h.invoke(records_job(&h, path, &key, paginate.clone()), T)
                .await,
        );
        assert_eq!(s["records"], 95, "{path} {paginate}");
        assert_eq!(s["pages"], pages, "{path} {paginate}");
        assert_eq!(object_text(&h, &key).await, expected(95), "{path}");
        let manifest: Value =
            serde_json::from_str(&object_text(&h, &format!("{key}.manifest.json")).await).unwrap();
        assert_eq!(manifest["records"], 95);
        assert_eq!(manifest["checksum"], s["checksum"]);
    }
}

#[tokio::test]
async fn page_placeholder_writes_one_object_and_manifest_per_page() {
    let h = Harness::start("ingest-http", "perpage", None).await;
    let client = h.server.client().await;
    let paginate = json!({"page_number": {"param": "page", "start": 1}});
    // 25 records, 10 per page: pages 1-3 hold records, page 4 is empty and ends the run.
    let job = records_job(
        &h,
        "/api/pages?n=25&per=10",
        "pages/p-{page}.ndjson",
        paginate.clone(),
    );
    let s = response(h.invoke(job, T).await);
    assert_eq!(s["status"], "written");
    assert_eq!(s["key"], "pages/p-{page}.ndjson");
    assert_eq!(s["records"], 25);
    let objects = s["objects"].as_array().expect("objects listed");
    assert_eq!(objects.len(), 3, "{s}");
    for (i, o) in objects.iter().enumerate() {
        let page = i as u64 + 1;
        let key = format!("pages/p-{page:05}.ndjson");
        assert_eq!(o["key"], key.as_str());
        assert_eq!(o["page"], page);
        let want: String = ((page - 1) * 10 + 1..=(page * 10).min(25))
            .map(|i| api_record_json(i) + "\n")
            .collect();
        assert_eq!(o["records"], want.lines().count());
        assert_eq!(object_text(&h, &key).await, want, "{key}");
        let manifest: Value =
            serde_json::from_str(&object_text(&h, &format!("{key}.manifest.json")).await).unwrap();
        assert_eq!(manifest["page"], page);
        assert_eq!(manifest["key"], key.as_str());
        assert_eq!(manifest["checksum"], o["checksum"]);
        assert_eq!(manifest["records"], o["records"]);
    }
    assert!(!sluice_tests::object_exists(&client, &h.bucket, "pages/p-00004.ndjson").await);

    // Page 3 is cut short mid-stream: its upload is aborted and pages 1 and 2 are deleted.
    let job = records_job(
        &h,
        "/api/pages?n=25&per=10&cut_page=3",
        "cut/p-{page}.ndjson",
        paginate,
    );
    let (kind, message) = error(h.invoke(job, T).await);
    assert_eq!(kind, "Upstream", "{message}");
    assert!(message.contains("cut short"), "{message}");
    for page in 1..=3 {
        h.assert_nothing_written(&format!("cut/p-{page:05}.ndjson"))
            .await;
        h.assert_nothing_written(&format!("cut/p-{page:05}.ndjson.manifest.json"))
            .await;
    }

    // A byte-for-byte copy has no pages.
    let job = h.job("/json?size=1000", "copy-{page}");
    let (kind, message) = error(h.invoke(job, T).await);
    assert_eq!(kind, "InvalidInput");
    assert!(message.contains("{page} needs records"), "{message}");
}

#[tokio::test]
async fn top_level_arrays_ndjson_input_and_pretty_records() {
    let h = Harness::start("ingest-http", "shapes", None).await;
    let mut job = h.job("/api/top?n=7", "top.ndjson");
    job["records"] = json!("$[*]");
    assert_eq!(response(h.invoke(job, T).await)["records"], 7);
    assert_eq!(object_text(&h, "top.ndjson").await, expected(7));

    let mut job = h.job("/api/ndjson?n=7", "lines.ndjson");
    job["input_format"] = json!("ndjson");
    assert_eq!(response(h.invoke(job, T).await)["records"], 7);
    assert_eq!(object_text(&h, "lines.ndjson").await, expected(7));

    let job = records_job(&h, "/api/pretty?n=3", "pretty.ndjson", Value::Null);
    assert_eq!(response(h.invoke(job, T).await)["records"], 3);
    let text = object_text(&h, "pretty.ndjson").await;
    assert_eq!(text.lines().count(), 3);
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }

    let job = records_job(
        &h,
        "/api/empty",
        "empty.ndjson",
        json!({"page_number": {"param": "page"}}),
    );
    let s = response(h.invoke(job, T).await);
    assert_eq!(
        (s["records"].as_u64(), s["pages"].as_u64()),
        (Some(0), Some(1))
    );
}

#[tokio::test]
async fn bad_documents_fail_with_position_and_leave_nothing() {
    let h = Harness::start("ingest-http", "baddocs", None).await;
    let cases = [
        ("/api/cut_record", "document cut short", "Upstream"),
        ("/api/invalid", "invalid JSON at byte", "Upstream"),
        ("/api/error200", "records not found", "Upstream"),
    ];
    for (i, (path, needle, kind)) in cases.into_iter().enumerate() {
        let key = format!("bad-{i}");
        let (k, message) = error(h.invoke(records_job(&h, path, &key, Value::Null), T).await);
        assert_eq!(k, kind, "{path}: {message}");
        assert!(message.contains(needle), "{path}: {message}");
        h.assert_nothing_written(&key).await;
    }
    // A wrong content type is refused before anything is written.
    let mut job = records_job(&h, "/api/html", "html", Value::Null);
    job["source"]["http"]["expect_content_type"] = json!("application/json");
    let (_, message) = error(h.invoke(job, T).await);
    assert!(
        message.contains("unexpected Content-Type") && message.contains("text/html"),
        "{message}"
    );
    h.assert_nothing_written("html").await;
    // A record over the cap is an error, not a buffer.
    let mut job = records_job(
        &h,
        &format!("/api/big_record?size={}", 3 * MIB),
        "big",
        Value::Null,
    );
    job["tuning"] = json!({"max_record_mib": 1});
    let (_, message) = error(h.invoke(job, T).await);
    assert!(
        message.contains("record too large") && message.contains("record 2"),
        "{message}"
    );
    h.assert_nothing_written("big").await;
    // A cursor that comes back is a loop, not an endless run.
    let job = records_job(
        &h,
        "/api/loop",
        "loop",
        json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}}),
    );
    let (_, message) = error(h.invoke(job, T).await);
    assert!(message.contains("pagination loop"), "{message}");
    h.assert_nothing_written("loop").await;
}

#[tokio::test]
async fn retry_after_in_both_forms_and_storms() {
    let h = Harness::start("ingest-http", "retries", None).await;
    for mode in ["seconds", "date"] {
        let key = format!("ra-{mode}");
        let job = records_job(
            &h,
            &format!("/api/retry_after?mode={mode}&times=1&key={mode}&n=5"),
            &key,
            Value::Null,
        );
        assert_eq!(response(h.invoke(job, T).await)["records"], 5);
        let reqs = h.fixture.requests("/api/retry_after");
        let tries: Vec<_> = reqs
            .iter()
            .filter(|r| r.query_param("key") == Some(mode))
            .collect();
        assert_eq!(tries.len(), 2, "{mode}");
        let gap = tries[1].at - tries[0].at;
        // Retry-After: 1 second, or an HTTP-date about 2 s ahead (whole seconds, so >= 1 s).
        assert!(
            gap >= Duration::from_millis(950),
            "{mode}: retried after {gap:?}"
        );
    }
    let job = records_job(
        &h,
        "/api/storm?times=2&key=a&status=503&n=5",
        "storm-ok",
        Value::Null,
    );
    assert_eq!(response(h.invoke(job, T).await)["records"], 5);
    let mut job = records_job(
        &h,
        "/api/storm?times=50&key=b&status=503&n=5",
        "storm-fail",
        Value::Null,
    );
    job["source"]["http"]["retry"] = json!({"max_attempts": 3, "base_delay_ms": 50});
    let (kind, message) = error(h.invoke(job, T).await);
    assert_eq!(kind, "Retryable");
    assert!(message.contains("HTTP 503 after 3 attempt(s)"), "{message}");
    h.assert_nothing_written("storm-fail").await;
    // A Retry-After that would pass the deadline ends the run now, as a Timeout.
    let job = records_job(
        &h,
        "/api/retry_after?mode=date&times=5&key=late&n=5",
        "late",
        Value::Null,
    );
    let (kind, message) = error(h.invoke(job, Duration::from_secs(4)).await);
    assert_eq!(kind, "Timeout", "{message}");
    assert!(message.contains("would pass the deadline"), "{message}");
    h.assert_nothing_written("late").await;
}

#[tokio::test]
async fn network_policy_refuses_metadata_and_private_addresses() {
    let h = Harness::start("ingest-http", "ssrf", None).await;
    let to = "http://169.254.169.254/latest/meta-data/";
    let job = h.job(&format!("/redirect?to={to}"), "ssrf");
    let (kind, message) = error(h.invoke(job, T).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(
        message.contains("blocked") && message.contains("link-local"),
        "{message}"
    );
    h.assert_nothing_written("ssrf").await;

    // Without the switch, loopback is refused before any connection is made.
    let strict = Harness::start_with("ingest-http", "strict", None, &[]).await;
    let (kind, message) = error(strict.invoke(strict.job("/bytes?size=10", "x"), T).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(
        message.contains("SLUICE_ALLOW_PRIVATE_NETWORKS"),
        "{message}"
    );
    assert_eq!(
        strict.fixture.total_hits(),
        0,
        "the refused source was contacted"
    );
}

/// A single document of several GiB (2 by default, `SLUICE_CONTRACT_GIB`), `$.data[*]` to gzip
/// NDJSON by a 256 MB function in a 256 MB memory cgroup: peak <= 128 MiB, every record counted.
#[tokio::test]
async fn contract_extracts_a_multi_gib_document_under_256_mb() {
    let gib: u64 = std::env::var("SLUICE_CONTRACT_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let size = gib * 1024 * MIB;
    let expected_records = tokio::task::spawn_blocking(move || big_doc_record_count(5, size));
    let cgroup = MemoryCgroup::create("sluice-records", 256 * MIB);
    let h = Harness::start("ingest-http", "bigdoc", cgroup.as_ref()).await;
    let mut job = records_job(
        &h,
        &format!("/api/big_doc?size={size}&seed=5"),
        "big/{run_id}.ndjson.gz",
        Value::Null,
    );
    job["compression"] = json!("gzip");
    let started = std::time::Instant::now();
    let s = response(h.invoke(job, Duration::from_secs(900)).await);
    let secs = started.elapsed().as_secs_f64();
    let expected_records = expected_records.await.unwrap();
    assert_eq!(s["records"], expected_records);
    let key = s["key"].as_str().unwrap().to_owned();
    let (_, len) = h.decoded_crc(&key, Decode::Gzip).await;
    let rss = s["peak_rss_bytes"].as_u64().unwrap();
    let peak = cgroup.as_ref().map_or(rss, |c| c.peak_bytes());
    eprintln!(
        "RECORDS CONTRACT: {gib} GiB document, {expected_records} records in {secs:.1} s = {:.1} MiB/s; \
         NDJSON {len} bytes; cgroup peak {:.1} MiB; VmHWM {:.1} MiB",
        size as f64 / MIB as f64 / secs,
        peak as f64 / MIB as f64,
        rss as f64 / MIB as f64
    );
    assert!(
        peak <= 128 * MIB && rss <= 128 * MIB,
        "peak {peak} / rss {rss}"
    );
}

#[tokio::test]
async fn incremental_runs_send_the_watermark_and_advance_it() {
    let h = Harness::start("ingest-http", "incr", None).await;
    let job = |key: &str| {
        let mut job = records_job(
            &h,
            "/api/since?n=30&per=10",
            key,
            json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}}),
        );
        job["incremental"] = json!({"param": "since", "path": "$.data[*].updated_at",
                                    "initial_value": "2000-01-01T00:00:00Z", "state_key": "state/since.json"});
        job["scheduled_time"] = json!("2026-11-22T06:00:00Z");
        job["destination"]["key"] = json!(format!("{key}/{{scheduled_time}}.ndjson"));
        job
    };
    let first = response(h.invoke(job("run1"), T).await);
    assert_eq!(first["records"], 30);
    assert_eq!(first["key"], "run1/2026-11-22T06:00:00Z.ndjson");
    let watermark = first["watermark"].as_str().unwrap().to_owned();
    assert_eq!(watermark, sluice_tests::fixture_api::api_updated_at(30));
    let state: Value = serde_json::from_str(&object_text(&h, "state/since.json").await).unwrap();
    assert_eq!(state["watermark"], watermark.as_str());

    let second = response(h.invoke(job("run2"), T).await);
    assert_eq!(second["records"], 0);
    assert_eq!(second["watermark"], watermark.as_str());
    let sent: Vec<_> = h
        .fixture
        .requests("/api/since")
        .iter()
        .filter_map(|r| r.query_param("since").map(str::to_owned))
        .collect();
    assert_eq!(
        sent.first().map(String::as_str),
        Some("2000-01-01T00:00:00Z")
    );
    assert_eq!(
        sent.last(),
        Some(&watermark),
        "the second run did not send the watermark"
    );
    // Every page of a run carries it, not only the first.
    assert!(sent.len() >= 4 && sent[..3].iter().all(|s| s == "2000-01-01T00:00:00Z"));
}

/// Secrets given by reference reach the API and nothing else: with `RUST_LOG=trace`, across
/// a successful paginated run, retries, a failed request and a cut body, neither the bearer
/// token nor the query API key appears in any line the function writes, in any error message,
/// in the summary or in the manifest.
#[tokio::test]
async fn secret_canary_never_appears_in_logs_errors_or_outputs() {
    let token = "canary-token-7f3a9c1e55d0";
    let api_key = "canary-apikey-b2d4e6f80911";
    let h = Harness::start_with(
        "ingest-http",
        "canary",
        None,
        &[
            ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
            ("RUST_LOG", "trace"),
            ("CANARY_TOKEN", token),
            ("CANARY_KEY", api_key),
            ("SLUICE_SECRET_ENV", "CANARY_*"),
        ],
    )
    .await;
    let bearer = json!({"bearer": {"token": {"env": "CANARY_TOKEN"}}});
    let query_key = json!({"api_key": {"query": "api_key", "value": {"env": "CANARY_KEY"}}});
    let mut outputs = Vec::new();

    let mut job = records_job(
        &h,
        "/api/cursor?n=25&per=10",
        "ok",
        json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}}),
    );
    job["source"]["http"]["auth"] = bearer.clone();
    outputs.push(response(h.invoke(job, T).await).to_string());
    outputs.push(object_text(&h, "ok.manifest.json").await);
    let seen = h.fixture.requests("/api/cursor");
    assert_eq!(seen.len(), 3);
    let expected_header = format!("Bearer {token}");
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") == Some(expected_header.as_str()))
    );

    let mut job = records_job(
        &h,
        "/api/storm?times=2&key=c&status=503&n=5",
        "storm",
        Value::Null,
    );
    job["source"]["http"]["auth"] = query_key.clone();
    outputs.push(response(h.invoke(job, T).await).to_string());
    assert!(
        h.fixture
            .requests("/api/storm")
            .iter()
            .all(|r| r.query_param("api_key") == Some(api_key))
    );

    for (path, key) in [
        ("/status/404".to_owned(), "nf"),
        (format!("/cut?size={}&at={}", 20 * MIB, 10 * MIB), "cut"),
    ] {
        let mut job = h.job(&path, key);
        job["source"]["http"]["auth"] = query_key.clone();
        let (kind, message) = error(h.invoke(job, T).await);
        outputs.push(format!("{kind}: {message}"));
    }
    let mut job = h.job("/redirect?to=http://169.254.169.254/", "ssrf");
    job["source"]["http"]["auth"] = bearer;
    let (_, message) = error(h.invoke(job, T).await);
    outputs.push(message);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let transcript = h.process.transcript();
    assert!(
        transcript.lines().count() > 100,
        "RUST_LOG=trace produced too little to be a test"
    );
    for secret in [token, api_key] {
        assert!(
            !transcript.contains(secret),
            "a secret is in the function's output"
        );
        for o in &outputs {
            assert!(!o.contains(secret), "a secret is in an answer: {o}");
        }
    }
    assert!(
        outputs.iter().any(|o| o.contains("[redacted]")),
        "the query key was not shown redacted: {outputs:?}"
    );
}

#[tokio::test]
async fn batch_of_sources_keeps_the_good_outputs_when_one_fails() {
    let h = Harness::start("ingest-http", "batch", None).await;
    let url = |p: &str| h.fixture.url(p);
    let cursor = json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}});
    let batch = json!({
        "sources": [
            {"name": "users", "http": {"url": url("/api/cursor?n=40&per=10"), "paginate": cursor}},
            {"name": "broken", "http": {"url": url("/status/404")}},
            {"name": "events", "http": {"url": url("/api/ndjson?n=12")}, "input_format": "ndjson"}
        ],
        "concurrency": 2,
        "rate_limit": {"per_second": 50, "burst": 5},
        "records": "$.data[*]",
        "destination": {"bucket": h.bucket, "key": "raw/{source}/{run_id}.ndjson"}
    });
    let (kind, message) = error(h.invoke(batch, T).await);
    assert_eq!(kind, "Upstream", "{message}");
    assert!(message.starts_with("1 of 3 sources failed"), "{message}");
    let listed: Value = serde_json::from_str(message.split_once(": ").unwrap().1).unwrap();
    let sources = listed["sources"].as_array().unwrap();
    assert_eq!(sources[0]["summary"]["records"], 40);
    assert_eq!(sources[1]["status"], "failed");
    assert!(sources[1]["error"].as_str().unwrap().contains("HTTP 404"));
    assert_eq!(sources[2]["summary"]["records"], 12);
    for s in [&sources[0], &sources[2]] {
        let key = s["summary"]["key"].as_str().unwrap();
        assert!(key.starts_with(&format!("raw/{}/", s["name"].as_str().unwrap())));
        let text = object_text(&h, key).await;
        assert_eq!(
            text.lines().count() as u64,
            s["summary"]["records"].as_u64().unwrap()
        );
    }

    let ok = json!({
        "sources": [{"name": "a", "http": {"url": url("/api/top?n=3")}},
                    {"name": "b", "http": {"url": url("/api/top?n=4")}}],
        "records": "$[*]",
        "destination": {"bucket": h.bucket, "key": "ok/{source}.ndjson"}
    });
    let s = response(h.invoke(ok, T).await);
    assert_eq!(
        (s["succeeded"].as_u64(), s["failed"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(object_text(&h, "ok/b.ndjson").await, expected(4));
}

#[tokio::test]
async fn api_key_header_is_never_carried_to_another_host() {
    let h = Harness::start_with(
        "ingest-http",
        "xhost",
        None,
        &[
            ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
            ("XHOST_KEY", "xhost-secret-1"),
            ("SLUICE_SECRET_ENV", "XHOST_KEY"),
        ],
    )
    .await;
    // 127.0.0.1 and localhost are different hosts to the redirect rule.
    let other = format!("http://localhost:{}/bytes?size=10", h.fixture.addr.port());
    let mut job = h.job(&format!("/redirect?to={other}"), "xhost");
    job["source"]["http"]["auth"] =
        json!({"api_key": {"header": "X-Api-Key", "value": {"env": "XHOST_KEY"}}});
    let (kind, message) = error(h.invoke(job, T).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(message.contains("redirect to another host"), "{message}");
    assert_eq!(h.fixture.hits("/bytes"), 0, "the other host was contacted");
    // The same host on another port is another origin too.
    let elsewhere = FixtureServer::start().await;
    let other_port = elsewhere.url("/bytes?size=10");
    let mut job = h.job(&format!("/redirect?to={other_port}"), "xport");
    job["source"]["http"]["auth"] =
        json!({"api_key": {"header": "X-Api-Key", "value": {"env": "XHOST_KEY"}}});
    let (kind, message) = error(h.invoke(job, T).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(message.contains("redirect to another port"), "{message}");
    assert_eq!(elsewhere.total_hits(), 0, "the other port was contacted");
    h.assert_nothing_written("xport").await;
    // Without a key header the same redirect is followed.
    let s = response(
        h.invoke(h.job(&format!("/redirect?to={other}"), "plain"), T)
            .await,
    );
    assert_eq!(s["bytes_out"], 10);
}

/// Regression: a record producer that panicked mid-stream used to look like the end of the
/// input, so the object was completed holding the pages read so far and reported "written".
/// Now the invocation fails with `Internal`, the multipart upload is aborted, and nothing (no
/// object, no manifest, no page object of the run) is left. The panic comes from the test-only
/// fault hook (`SLUICE_FAULT`, compiled in by `make test`) at the start of page 3, after two
/// pages of about 6.7 MB each went out in 5 MiB parts.
#[tokio::test]
async fn producer_panic_mid_stream_leaves_nothing_in_records_and_page_modes() {
    let paginate = json!({"page_number": {"param": "page", "start": 1}});
    for (label, key) in [
        ("panic-single", "panic/all.ndjson"),
        ("panic-pages", "panic/p-{page}.ndjson"),
    ] {
        let h = Harness::start_with(
            "ingest-http",
            label,
            None,
            &[
                ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
                ("SLUICE_FAULT", "ingest.page:3"),
            ],
        )
        .await;
        let mut job = records_job(&h, "/api/pages?n=210000&per=70000", key, paginate.clone());
        job["tuning"] = json!({"part_size_mib": 5});
        let (kind, message) = error(h.invoke(job, T).await);
        assert_eq!(kind, "Internal", "{message}");
        assert!(
            message.contains("panicked") && message.contains("ingest.page"),
            "{message}"
        );
        for page in ["00001", "00002", "00003"] {
            let key = key.replace("{page}", page);
            h.assert_nothing_written(&key).await;
            h.assert_nothing_written(&format!("{key}.manifest.json"))
                .await;
        }
    }
}

/// A redirect to a host outside `SLUICE_ALLOWED_HOSTS`, followed by the function's real
/// redirect policy: refused, and the other host never contacted.
#[tokio::test]
async fn redirect_outside_the_allowed_hosts_is_refused_and_never_contacted() {
    let h = Harness::start_with(
        "ingest-http",
        "allowlist",
        None,
        &[
            ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
            ("SLUICE_ALLOWED_HOSTS", "127.0.0.1"),
        ],
    )
    .await;
    let elsewhere = FixtureServer::start().await;
    let to = format!("http://localhost:{}/bytes?size=10", elsewhere.addr.port());
    let job = records_job(&h, &format!("/redirect?to={to}"), "allow", Value::Null);
    let (kind, message) = error(h.invoke(job, T).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(
        message.contains("blocked")
            && message.contains("host localhost is not in SLUICE_ALLOWED_HOSTS"),
        "{message}"
    );
    assert_eq!(h.fixture.hits("/redirect"), 1);
    assert_eq!(elsewhere.total_hits(), 0, "the unlisted host was contacted");
    assert_eq!(h.fixture.hits("/bytes"), 0);
    h.assert_nothing_written("allow").await;
}

/// Invalid UTF-8 inside a string of a JSON document is an error naming the page, the byte
/// and the record; nothing is written.
#[tokio::test]
async fn invalid_utf8_in_a_json_document_is_an_error_with_its_position() {
    let h = Harness::start("ingest-http", "utf8", None).await;
    let job = records_job(&h, "/api/bad_utf8", "utf8", Value::Null);
    let (kind, message) = error(h.invoke(job, T).await);
    assert_eq!(kind, "Upstream", "{message}");
    assert!(
        message.contains("/api/bad_utf8")
            && message.contains("invalid UTF-8 at byte 29 (record 2)")
            && message.contains("0xff"),
        "{message}"
    );
    h.assert_nothing_written("utf8").await;
}

/// The per-page records mode bounds every wait by the invocation's deadline: page 2 stalls
/// after its first records (long before the 30 s read timeout), the run ends as a `Timeout`
/// before the Lambda deadline, page 1's object and manifest are deleted, no upload is left.
/// The same for one object.
#[tokio::test]
async fn a_stalled_page_ends_at_the_deadline_and_rolls_back() {
    let h = Harness::start("ingest-http", "pagedeadline", None).await;
    let paginate = json!({"page_number": {"param": "page", "start": 1}});
    for key in ["late/p-{page}.ndjson", "late/all.ndjson"] {
        let job = records_job(
            &h,
            "/api/pages?n=30&per=10&stall_page=2",
            key,
            paginate.clone(),
        );
        let started = std::time::Instant::now();
        let (kind, message) = error(h.invoke(job, Duration::from_secs(8)).await);
        let took = started.elapsed();
        assert_eq!(kind, "Timeout", "{key}: {message}");
        assert!(message.contains("deadline"), "{message}");
        assert!(
            took < Duration::from_secs(8),
            "{key}: answered after {took:?}"
        );
        for page in ["00001", "00002"] {
            let k = key.replace("{page}", page);
            h.assert_nothing_written(&k).await;
            h.assert_nothing_written(&format!("{k}.manifest.json"))
                .await;
        }
    }
    assert_eq!(h.fixture.requests("/api/pages").len(), 4);
}

/// A batch's `rate_limit` is one token bucket for every request of every source: six
/// one-page sources at 2 requests per second (burst 1) take at least 2.5 s, measured where
/// the requests arrive and as the invocation's duration.
#[tokio::test]
async fn batch_rate_limit_is_shared_by_every_source() {
    let h = Harness::start("ingest-http", "batchrate", None).await;
    let sources: Vec<Value> = (0..6)
        .map(|i| json!({"name": format!("s{i}"), "http": {"url": h.fixture.url(&format!("/api/top?n={}", i + 1))}}))
        .collect();
    let batch = json!({
        "sources": sources,
        "concurrency": 3,
        "rate_limit": {"per_second": 2},
        "records": "$[*]",
        "destination": {"bucket": h.bucket, "key": "rate/{source}.ndjson"}
    });
    let started = std::time::Instant::now();
    let s = response(h.invoke(batch, T).await);
    let took = started.elapsed();
    assert_eq!(s["succeeded"], 6, "{s}");
    let arrivals: Vec<_> = h
        .fixture
        .requests("/api/top")
        .iter()
        .map(|r| r.at)
        .collect();
    assert_eq!(arrivals.len(), 6);
    let span = *arrivals.iter().max().unwrap() - *arrivals.iter().min().unwrap();
    assert!(
        span >= Duration::from_millis(2400),
        "requests spread over {span:?}"
    );
    assert!(
        took >= Duration::from_millis(2500),
        "the batch took {took:?}"
    );
    assert_eq!(object_text(&h, "rate/s5.ndjson").await, expected(6));
}

/// A single 300 MB record (JSON document) or line (NDJSON input), generated on the fly by the
/// fixture, in a 256 MB memory cgroup: a "record too large" error naming the record, a peak of
/// at most 128 MiB, nothing written.
#[tokio::test]
async fn a_300_mb_record_or_line_is_too_large_under_256_mb() {
    let size = 300 * 1000 * 1000;
    let cgroup = MemoryCgroup::create("sluice-bigrecord", 256 * MIB);
    let h = Harness::start("ingest-http", "bigrecord", cgroup.as_ref()).await;
    let mut doc = records_job(
        &h,
        &format!("/api/big_record?size={size}"),
        "doc",
        Value::Null,
    );
    doc["compression"] = json!("gzip");
    let mut lines = h.job(&format!("/api/big_line?size={size}"), "lines");
    lines["input_format"] = json!("ndjson");
    for (key, job) in [("doc", doc), ("lines", lines)] {
        if let Some(cg) = &cgroup {
            cg.reset_peak();
        }
        let (kind, message) = error(h.invoke(job, T).await);
        assert_eq!(kind, "Upstream", "{key}: {message}");
        assert!(
            message.contains("too large") && message.contains("record 2"),
            "{key}: {message}"
        );
        h.assert_nothing_written(key).await;
        let peak = match &cgroup {
            Some(cg) => {
                assert!(!cg.oom_killed(), "the function hit the cgroup limit");
                cg.peak_bytes()
            }
            None => {
                eprintln!("WARNING: no memory cgroup; the peak is not measured");
                0
            }
        };
        eprintln!(
            "300 MB {key}: cgroup peak {:.1} MiB",
            peak as f64 / MIB as f64
        );
        assert!(
            peak <= 128 * MIB,
            "{key}: cgroup peak {peak} bytes is over 128 MiB"
        );
    }
}

fn parquet_job(h: &Harness, path: &str, key: &str, schema: Value) -> Value {
    let mut job = records_job(
        h,
        path,
        key,
        json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}}),
    );
    job["format"] = json!("parquet");
    job["schema"] = schema;
    job
}

async fn download_to(h: &Harness, key: &str, label: &str) -> std::path::PathBuf {
    let client = h.server.client().await;
    let path = std::env::temp_dir().join(format!("sluice-{label}-{}.parquet", std::process::id()));
    std::fs::write(&path, read_object(&client, &h.bucket, key).await).unwrap();
    path
}

/// Records to Parquet with a declared and an inferred schema, read back by DuckDB and pyarrow:
/// the same rows, names, types and sums as the records themselves.
#[tokio::test]
async fn records_to_parquet_with_a_declared_and_an_inferred_schema() {
    use sluice_tests::fixture_api::api_record;
    use sluice_tests::lake;
    let h = Harness::start("ingest-http", "rec-parquet", None).await;
    let declared = json!([
        {"name": "id", "type": "int", "required": true},
        {"name": "name", "type": "string"},
        {"name": "updated_at", "type": "timestamp"},
        {"name": "value", "type": "float"}
    ]);
    let want_sum: f64 = (1..=95)
        .map(|i| api_record(i)["value"].as_f64().unwrap())
        .sum();
    for (label, schema) in [("declared", declared), ("infer", json!("infer"))] {
        let key = format!("pq/{label}.parquet");
        let s = response(
            h.invoke(parquet_job(&h, "/api/cursor?n=95&per=10", &key, schema), T)
                .await,
        );
        assert_eq!(s["status"], "written", "{s}");
        assert_eq!(s["records"], 95, "{s}");
        assert_eq!(s["quarantined"], 0, "{s}");
        assert_eq!(s["parquet"]["rows"], 95, "{s}");
        assert_eq!(s["parquet"]["codec"], "zstd", "{s}");
        let path = download_to(&h, &key, label).await;
        let r = lake::parquet_report(&path, &["id", "value"]);
        assert_eq!(r["duckdb"]["rows"], 95, "{r}");
        assert_eq!(r["pyarrow"]["rows"], 95, "{r}");
        assert_eq!(
            r["duckdb"]["columns"],
            json!([
                ["id", "BIGINT"],
                ["name", "VARCHAR"],
                ["updated_at", "TIMESTAMP WITH TIME ZONE"],
                ["value", "DOUBLE"]
            ]),
            "{label}: {r}"
        );
        assert_eq!(r["duckdb"]["sums"]["id"], "4560", "{r}");
        let sum: f64 = r["pyarrow"]["sums"]["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - want_sum).abs() < 1e-6, "{sum} vs {want_sum}");
        let first = lake::duckdb_query(
            &path,
            "SELECT id, name, strftime(updated_at AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ') AS at FROM t ORDER BY id LIMIT 1",
        );
        assert_eq!(first[0]["id"], 1);
        assert_eq!(first[0]["name"], api_record(1)["name"]);
        assert_eq!(first[0]["at"], api_record(1)["updated_at"], "{first}");
        let _ = std::fs::remove_file(path);
    }
}

/// Records that do not fit the schema go to the quarantine with their position and reason;
/// past `max_bad_ratio` the run fails and writes nothing at all.
#[tokio::test]
async fn records_that_do_not_fit_the_parquet_schema_are_quarantined() {
    use sluice_tests::lake;
    let h = Harness::start("ingest-http", "rec-pq-bad", None).await;
    // `{"data":[{"id":1},{"blob":"xx..."}]}`: the second record has no id.
    let schema = json!([{"name": "id", "type": "int", "required": true}, {"name": "blob"}]);
    let mut job = parquet_job(
        &h,
        "/api/big_record?size=64",
        "pq/bad.parquet",
        schema.clone(),
    );
    job["source"]["http"]["paginate"] = Value::Null;
    job["quarantine"] = json!({"key": "pq/bad-{date}.ndjson"});
    let s = response(h.invoke(job.clone(), T).await);
    assert_eq!(s["status"], "written", "{s}");
    assert_eq!(s["records"], 2, "{s}");
    assert_eq!(s["quarantined"], 1, "{s}");
    assert_eq!(s["parquet"]["rows"], 1, "{s}");
    let qkey = s["quarantine_key"]
        .as_str()
        .expect("a quarantine")
        .to_owned();
    assert!(qkey.starts_with("pq/bad-"), "{qkey}");
    let lines: Vec<Value> = object_text(&h, &qkey)
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["record"], 2, "{}", lines[0]);
    assert_eq!(lines[0]["column"], "id");
    assert!(
        lines[0]["reason"].as_str().unwrap().contains("required"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0]["raw"]
            .as_str()
            .unwrap()
            .starts_with("{\"blob\":\"xx"),
        "{}",
        lines[0]
    );
    let path = download_to(&h, "pq/bad.parquet", "pq-bad").await;
    assert_eq!(
        lake::duckdb_query(&path, "SELECT id, blob FROM t"),
        json!([{"id": 1, "blob": ""}])
    );
    let _ = std::fs::remove_file(path);

    job["destination"]["key"] = json!("pq/failed.parquet");
    job["quarantine"] = json!({"key": "pq/failed.ndjson", "max_bad_ratio": 0.1});
    let (kind, message) = error(h.invoke(job, T).await);
    assert_eq!(kind, "Upstream", "{message}");
    assert!(message.contains("too many bad records"), "{message}");
    assert!(message.contains("max_bad_ratio"), "{message}");
    assert!(message.contains("record 2, column \"id\""), "{message}");
    h.assert_nothing_written("pq/failed.parquet").await;
    h.assert_nothing_written("pq/failed.ndjson").await;
}

/// The contract: a 2 GiB document's records typed into Parquet (a declared and an inferred
/// schema) in a 256 MB function, peak <= 128 MiB, every record read back by DuckDB; and the
/// same at 128 MB. `SLUICE_CONTRACT_GIB` changes the size.
#[tokio::test]
async fn contract_records_to_parquet_under_256_and_128_mb() {
    use sluice_tests::lake;
    let gib: u64 = std::env::var("SLUICE_CONTRACT_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let size = gib * 1024 * MIB;
    let expected = tokio::task::spawn_blocking(move || big_doc_record_count(5, size))
        .await
        .unwrap();
    let declared = json!([
        {"name": "id", "type": "int"}, {"name": "name", "type": "string"},
        {"name": "kind", "type": "string"}, {"name": "ref", "type": "string"},
        {"name": "value", "type": "float"}, {"name": "ts", "type": "timestamp"},
        {"name": "tags", "type": "string"}, {"name": "active", "type": "bool"}
    ]);
    for (memory, schema) in [
        (256, declared.clone()),
        (256, json!("infer")),
        (128, declared),
    ] {
        let cgroup = MemoryCgroup::create("sluice-records-pq", memory * MIB);
        let mem = memory.to_string();
        let h = Harness::start_with(
            "ingest-http",
            "bigdoc-pq",
            cgroup.as_ref(),
            &[
                ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
                ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", &mem),
            ],
        )
        .await;
        let mut job = records_job(
            &h,
            &format!("/api/big_doc?size={size}&seed=5"),
            "big/{run_id}.parquet",
            Value::Null,
        );
        job["format"] = json!("parquet");
        job["schema"] = schema.clone();
        let started = std::time::Instant::now();
        let s = response(h.invoke(job, Duration::from_secs(900)).await);
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(s["records"], expected, "{s}");
        assert_eq!(s["quarantined"], 0, "{s}");
        assert_eq!(s["parquet"]["rows"], expected, "{s}");
        let rss = s["peak_rss_bytes"].as_u64().unwrap();
        let peak = cgroup.as_ref().map_or(rss, |c| c.peak_bytes());
        let key = s["key"].as_str().unwrap().to_owned();
        let path = download_to(&h, &key, "bigdoc-pq").await;
        let r = lake::parquet_report(&path, &["id"]);
        let _ = std::fs::remove_file(&path);
        assert_eq!(r["duckdb"]["rows"], expected, "{r}");
        assert_eq!(
            r["duckdb"]["sums"]["id"],
            (expected * (expected - 1) / 2).to_string()
        );
        let cap = s["parquet"]["max_row_group_bytes"].as_u64().unwrap();
        eprintln!(
            "RECORDS PARQUET CONTRACT ({memory} MB, schema {}): {gib} GiB document, {expected} records in {secs:.1} s = {:.1} MiB/s; \
             Parquet {} bytes in {} row groups (largest {:.1} MiB); cgroup peak {:.1} MiB; VmHWM {:.1} MiB",
            if schema.is_string() {
                "inferred"
            } else {
                "declared"
            },
            size as f64 / MIB as f64 / secs,
            s["bytes_out"],
            s["parquet"]["row_groups"],
            cap as f64 / MIB as f64,
            peak as f64 / MIB as f64,
            rss as f64 / MIB as f64
        );
        if memory == 256 {
            assert!(
                peak <= 128 * MIB && rss <= 128 * MIB,
                "peak {peak} / rss {rss}"
            );
        }
    }
}
