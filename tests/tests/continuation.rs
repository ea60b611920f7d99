//! Jobs longer than one invocation, through the built `ingest-http` bootstrap: a byte copy
//! stops before its deadline, writes a checkpoint, answers `continue`, and the next
//! invocation (sent the `continue` value) goes on from there until one completes the object.
//!
//! The 2 GiB runs are in the Lambda box of a 256 MB function (a 256 MiB memory cgroup and
//! 256/1769 of a vCPU) with 10 s invocations. `SLUICE_CONTINUE_GIB` changes the size.
//!
//! Build the binary first: `cargo build --release -p ingest-http` (`make test` does).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::fixture::ranged_crc64nvme;
use sluice_tests::harness::{Decode, Harness, LambdaBox, error, response};
use sluice_tests::{Invocation, read_object};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// A Lambda invocation's timeout in these tests.
const INVOCATION: Duration = Duration::from_secs(10);

async fn lambda_box_harness(label: &str, b: &LambdaBox) -> Harness {
    Harness::start_in(
        "ingest-http",
        label,
        &b.procs(),
        &[("SLUICE_ALLOW_PRIVATE_NETWORKS", "true")],
    )
    .await
}

fn size() -> u64 {
    std::env::var("SLUICE_CONTINUE_GIB")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(2 * GIB, |g| (g * GIB as f64) as u64)
}

/// Checks a finished run's answers: every one but the last says `continue`, the last one
/// `written` with the invocation count (`before` invocations came before these).
fn check_answers(answers: &[Value], size: u64, before: usize) -> Value {
    let last = answers.last().unwrap().clone();
    for a in &answers[..answers.len() - 1] {
        assert_eq!(a["status"], "continue", "{a}");
        assert!(
            a["continue"]["checkpoint"]["key"]
                .as_str()
                .unwrap()
                .starts_with("_sluice/checkpoints/ingest-http/"),
            "{a}"
        );
    }
    assert_eq!(last["status"], "written", "{last}");
    assert_eq!(last["bytes_in"], size, "{last}");
    if before + answers.len() > 1 {
        assert_eq!(last["invocations"], before + answers.len(), "{last}");
    }
    last
}

/// A byte copy of `size` bytes with `compression` through 10 s invocations in the Lambda box,
/// until it is written; checks the content, the checksum S3 keeps and that nothing is left.
async fn continues_to_the_end(compression: &str, decode: Decode, tuning: Value) {
    let size = size();
    let b = LambdaBox::create(&format!("sluice-continue-{compression}"));
    let h = lambda_box_harness(&format!("continue-{compression}"), &b).await;
    let mut job = h.job(
        &format!("/ranged?size={size}&seed=21"),
        &format!("continued/{{run_id}}.ndjson.{compression}"),
    );
    job["compression"] = json!(compression);
    job["tuning"] = tuning;
    let started = Instant::now();
    let answers = h.run_to_end(job, INVOCATION, 200).await;
    let secs = started.elapsed().as_secs_f64();
    let last = check_answers(&answers, size, 0);
    let key = last["key"].as_str().unwrap().to_owned();
    let (crc, len) = h.decoded_crc(&key, decode).await;
    assert_eq!(len, size, "decoded length");
    assert_eq!(crc, ranged_crc64nvme(21, size), "decoded content differs");
    // The checksum S3 computed over the parts matches the one the function sent.
    let client = h.server.client().await;
    let head = client
        .head_object()
        .bucket(&h.bucket)
        .key(&key)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.checksum_crc64_nvme(),
        last["checksum"].as_str(),
        "the stored full-object checksum differs from the answer's"
    );
    assert_eq!(head.content_length(), last["bytes_out"].as_i64());
    h.assert_clean().await;
    let peak = b.peak_mib();
    eprintln!(
        "CONTINUE {compression}: {:.2} GiB in {} invocations of at most {INVOCATION:?}, {secs:.1} s \
         in all = {:.1} MiB/s; {} parts; cgroup peak {}",
        size as f64 / GIB as f64,
        answers.len(),
        size as f64 / MIB as f64 / secs,
        last["parts"],
        peak.map_or("not measured".into(), |p| format!("{p:.1} MiB")),
    );
    // `SLUICE_CONTINUE_COMPARE=1`: the same job in one invocation, for the overhead.
    if std::env::var("SLUICE_CONTINUE_COMPARE").is_ok_and(|v| v == "1") {
        let mut once = h.job(
            &format!("/ranged?size={size}&seed=21"),
            &format!("one-shot/{{run_id}}.ndjson.{compression}"),
        );
        once["compression"] = json!(compression);
        let started = Instant::now();
        let answer = response(h.invoke(once, Duration::from_secs(900)).await);
        let one_shot = started.elapsed().as_secs_f64();
        assert_eq!(answer["status"], "written", "{answer}");
        eprintln!(
            "ONE-SHOT {compression}: {one_shot:.1} s = {:.1} MiB/s; continued run took {:.2}x",
            size as f64 / MIB as f64 / one_shot,
            secs / one_shot
        );
    }
    if size >= 2 * GIB {
        assert!(
            answers.len() >= 5,
            "{size} bytes took only {} invocations",
            answers.len()
        );
    }
    if let Some(peak) = peak {
        assert!(peak <= 128.0, "cgroup peak {peak:.1} MiB is over 128 MiB");
    }
}

/// A plain copy runs at about 150 MiB/s in the box: `max_invocation_secs` cuts its
/// invocations shorter than the deadline would, so 2 GiB takes more than five.
#[tokio::test]
async fn a_byte_copy_continues_across_invocations_and_ends_identical() {
    continues_to_the_end("none", Decode::None, json!({"max_invocation_secs": 2})).await;
}

/// gzip ends a member at each stop (a multi-member stream is one valid gzip stream); its
/// stops come from the 10 s deadline alone.
#[tokio::test]
async fn a_gzip_copy_continues_across_invocations_and_ends_identical() {
    continues_to_the_end("gzip", Decode::Gzip, json!({})).await;
}

/// zstd ends a frame at each stop.
#[tokio::test]
async fn a_zstd_copy_continues_across_invocations_and_ends_identical() {
    continues_to_the_end("zstd", Decode::Zstd, json!({"max_invocation_secs": 4})).await;
}

/// A source whose validator changes between two invocations: the resumed request's
/// `If-Range` no longer matches, the server sends the whole new body, and the job fails
/// with nothing written, no upload and no checkpoint left.
#[tokio::test]
async fn a_source_that_changes_between_invocations_fails_and_leaves_nothing() {
    for validator in ["etag", "modified"] {
        let h = Harness::start("ingest-http", &format!("changed-{validator}"), None).await;
        let size = 4 * GIB;
        let mut job = h.job(
            &format!("/ranged?size={size}&seed=5&validator={validator}&name=v"),
            "changed.ndjson",
        );
        job["tuning"] = json!({"max_invocation_secs": 1});
        let first = response(h.invoke(job, INVOCATION).await);
        assert_eq!(first["status"], "continue", "{first}");
        assert_eq!(first["invocations"], 1, "{first}");
        h.fixture.change("v");
        let (kind, message) = error(h.invoke(first["continue"].clone(), INVOCATION).await);
        assert_eq!(kind, "Upstream", "{message}");
        assert!(
            message.contains("changed since the job started"),
            "{message}"
        );
        assert!(message.contains("/ranged"), "{message}");
        h.assert_nothing_written("changed.ndjson").await;
        h.assert_clean().await;
        // The request carried the first answer's validator.
        let resumed = h.fixture.requests("/ranged").pop().unwrap();
        let header = |name: &str| {
            resumed
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert!(header("range").unwrap().starts_with("bytes="));
        assert!(header("if-range").is_some());
    }
}

/// An invocation killed (SIGKILL) after it wrote a checkpoint of its own, then retried with
/// the same `continue` event, resumes from that later checkpoint and ends with the same
/// object; parts the killed invocation uploaded after it are overwritten by number.
#[tokio::test]
async fn a_killed_invocation_retried_with_the_same_event_gives_the_same_object() {
    let size = GIB;
    let b = LambdaBox::create("sluice-continue-killed");
    let mut h = lambda_box_harness("continue-killed", &b).await;
    let mut job = h.job(&format!("/ranged?size={size}&seed=8"), "killed.ndjson.gz");
    job["compression"] = json!("gzip");
    job["tuning"] = json!({"max_invocation_secs": 3, "checkpoint_every_parts": 1});
    let first = response(h.invoke(job, INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    let event = first["continue"].clone();
    let doc_key = event["checkpoint"]["key"].as_str().unwrap().to_owned();
    let client = h.server.client().await;
    let saves = |doc: Vec<u8>| serde_json::from_slice::<Value>(&doc).unwrap()["saves"].clone();
    let saved_then = saves(read_object(&client, &h.bucket, &doc_key).await);

    // The retry: kill the function once it has saved a checkpoint of its own.
    let pid = h.process.pid();
    let killer = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = saves(read_object(&client, &h.bucket, &doc_key).await);
            if now != saved_then {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
                return now;
            }
        }
    };
    let (killed, saved_at_kill) = tokio::join!(h.api.invoke(event.clone(), INVOCATION), killer);
    assert!(
        killed.is_err(),
        "the killed invocation answered: {:?}",
        killed.ok().map(|i| match i {
            Invocation::Response(v) => v,
            Invocation::Error { error_message, .. } => json!(error_message),
        })
    );
    eprintln!("killed after save {saved_at_kill} (the event was written at save {saved_then})");
    let offset_of = |doc: &Value| doc["position"]["offset"].as_u64().unwrap();
    let at_kill: Value = serde_json::from_slice(&read_object(&client, &h.bucket, &doc_key).await)
        .expect("the checkpoint survives the kill");

    h.restart();
    let answers = h.run_to_end(event, INVOCATION, 100).await;
    // Before the retry: the first invocation and the killed one.
    check_answers(&answers, size, 2);
    // The retry asked the source for the bytes after the killed invocation's checkpoint.
    let ranges: Vec<String> = h
        .fixture
        .requests("/ranged")
        .iter()
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(n, _)| n == "range")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(
        ranges.contains(&format!("bytes={}-", offset_of(&at_kill))),
        "no request resumed at the killed invocation's checkpoint: {ranges:?}"
    );
    let (crc, len) = h.decoded_crc("killed.ndjson.gz", Decode::Gzip).await;
    assert_eq!((crc, len), (ranged_crc64nvme(8, size), size));
    h.assert_clean().await;
}

/// A source that cannot continue (a weak ETag: no `If-Range`) runs in one invocation as
/// before, however short `max_invocation_secs`; a continue event that names a key outside
/// the checkpoint prefix is refused.
#[tokio::test]
async fn a_source_that_cannot_continue_runs_in_one_invocation() {
    let h = Harness::start("ingest-http", "cannot-continue", None).await;
    let size = 512 * MIB;
    let mut job = h.job(
        &format!("/ranged?size={size}&seed=3&validator=weak"),
        "whole.ndjson",
    );
    job["tuning"] = json!({"max_invocation_secs": 1});
    let answer = response(h.invoke(job, Duration::from_secs(60)).await);
    assert_eq!(answer["status"], "written", "{answer}");
    assert!(answer.get("invocations").is_none(), "{answer}");
    h.assert_clean().await;

    let forged = json!({"checkpoint": {"bucket": h.bucket, "key": "whole.ndjson"}});
    let (kind, message) = error(h.invoke(forged, INVOCATION).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(
        message.contains("not a key under _sluice/checkpoints/"),
        "{message}"
    );
    let bad = json!({"checkpoint": {"bucket": h.bucket, "key": "_sluice/checkpoints/ingest-http/none.json"}});
    let (kind, message) = error(h.invoke(bad, INVOCATION).await);
    assert!(message.contains("none.json"), "{kind}: {message}");
}

/// The abort event the state machine sends after a failure: the upload is aborted and the
/// checkpoint deleted; sent again, it finds nothing and says so.
#[tokio::test]
async fn an_abort_event_gives_the_job_up_and_leaves_nothing() {
    let h = Harness::start("ingest-http", "abort", None).await;
    let mut job = h.job(
        &format!("/ranged?size={}&seed=4", 4 * GIB),
        "given-up.ndjson",
    );
    job["tuning"] = json!({"max_invocation_secs": 1});
    let first = response(h.invoke(job, INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    let client = h.server.client().await;
    assert_eq!(
        sluice_tests::uploads_in_progress(&client, &h.bucket)
            .await
            .len(),
        1
    );
    let abort = json!({"abort": first["continue"]});
    let answer = response(h.invoke(abort.clone(), INVOCATION).await);
    assert_eq!(answer["status"], "aborted", "{answer}");
    assert_eq!(answer["key"], "given-up.ndjson", "{answer}");
    h.assert_nothing_written("given-up.ndjson").await;
    h.assert_clean().await;
    let again = response(h.invoke(abort, INVOCATION).await);
    assert_eq!(again["status"], "gone", "{again}");
}

/// A paginated records job into one object with `source`'s pagination, 1 s invocations
/// and a slow API (60 ms a page): answers until it is written.
async fn records_to_the_end(h: &Harness, path: &str, paginate: Value, key: &str) -> Vec<Value> {
    let mut job = h.job(path, key);
    job["records"] = json!("$.data[*]");
    job["source"]["http"]["paginate"] = paginate;
    job["compression"] = json!("gzip");
    job["tuning"] = json!({"max_invocation_secs": 1});
    h.run_to_end(job, INVOCATION, 100).await
}

/// The records of a finished paginated run, read back (gzip, each member in turn).
async fn ndjson_of(h: &Harness, key: &str) -> String {
    let client = h.server.client().await;
    let raw = sluice_tests::read_object(&client, &h.bucket, key).await;
    let mut text = String::new();
    let mut d = flate2::read::MultiGzDecoder::new(&raw[..]);
    std::io::Read::read_to_string(&mut d, &mut text).unwrap();
    text
}

/// Paginated records continue between pages, each invocation sending the next page's
/// request where the last one stopped: the object holds every record once, in order, for a
/// cursor API and for an offset API that counts towards a `total`.
#[tokio::test]
async fn paginated_records_continue_between_pages_and_each_record_appears_once() {
    use sluice_tests::fixture_api::api_record_json;
    let n = 20_000u64;
    let styles = [
        (
            "cursor",
            format!("/api/cursor?n={n}&per=400&delay_ms=60"),
            json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}}),
        ),
        (
            "offset",
            format!("/api/offset?n={n}&delay_ms=60"),
            json!({"offset": {"param": "offset", "limit_param": "limit", "limit": 400},
                   "total": "$.total"}),
        ),
    ];
    for (style, path, paginate) in styles {
        let h = Harness::start("ingest-http", &format!("records-{style}"), None).await;
        let key = format!("records/{style}.ndjson.gz");
        let answers = records_to_the_end(&h, &path, paginate, &key).await;
        let last = answers.last().unwrap();
        assert!(
            answers.len() >= 3,
            "{style}: {} invocations for 50 pages of 60 ms in 1 s invocations: {last}",
            answers.len()
        );
        for a in &answers[..answers.len() - 1] {
            assert_eq!(a["status"], "continue", "{style}: {a}");
        }
        assert_eq!(last["status"], "written", "{style}: {last}");
        assert_eq!(last["records"], n, "{style}: {last}");
        assert_eq!(last["invocations"], answers.len(), "{style}: {last}");
        let text = ndjson_of(&h, &key).await;
        // Every invocation's bytes count: at least the records' JSON arrived.
        assert!(
            last["bytes_in"].as_u64().unwrap() > text.len() as u64,
            "{style}: {last}"
        );
        let expected: String = (1..=n).map(|i| api_record_json(i) + "\n").collect();
        assert!(
            text == expected,
            "{style}: the object is not records 1..={n} once each, in order ({} bytes, {} expected)",
            text.len(),
            expected.len()
        );
        // Each page was asked for once: a continued invocation starts at the next page.
        let requests = h.fixture.requests(path.split('?').next().unwrap()).len();
        assert_eq!(requests, 50, "{style}");
        h.assert_clean().await;
        eprintln!(
            "CONTINUE records {style}: {n} records in 50 pages, {} invocations",
            answers.len()
        );
    }
}

/// Paginated records into one object per page (`{page}`) continue between pages: each
/// invocation writes the next pages' objects (and their manifests), the last answer lists
/// the objects of every invocation, each holding its page's records, and each page is
/// fetched once. An abort event after a stop deletes the pages written and their manifests.
#[tokio::test]
async fn records_into_an_object_per_page_continue_between_pages() {
    use sluice_tests::fixture_api::api_record_json;
    let h = Harness::start("ingest-http", "records-per-page", None).await;
    let (n, per) = (20_000u64, 400u64);
    let path = format!("/api/cursor?n={n}&per={per}&delay_ms=60");
    let paginate = json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}});
    let answers = records_to_the_end(&h, &path, paginate.clone(), "pages/{page}.ndjson.gz").await;
    let last = answers.last().unwrap();
    assert!(answers.len() >= 3, "{} invocations: {last}", answers.len());
    for a in &answers[..answers.len() - 1] {
        assert_eq!(a["status"], "continue", "{a}");
    }
    assert_eq!(last["status"], "written", "{last}");
    assert_eq!(last["records"], n, "{last}");
    assert_eq!(last["invocations"], answers.len(), "{last}");
    let objects = last["objects"].as_array().expect("the page objects listed");
    assert_eq!(objects.len() as u64, n / per, "{last}");
    let client = h.server.client().await;
    for (i, o) in objects.iter().enumerate() {
        let page = i as u64 + 1;
        let key = format!("pages/{page:05}.ndjson.gz");
        assert_eq!(o["key"], key.as_str(), "{o}");
        assert_eq!(o["page"], page, "{o}");
        let want: String = ((page - 1) * per + 1..=page * per)
            .map(|i| api_record_json(i) + "\n")
            .collect();
        assert!(
            ndjson_of(&h, &key).await == want,
            "{key} does not hold page {page}'s records"
        );
        let manifest = o["manifest"].as_str().expect("a manifest per page");
        assert!(
            sluice_tests::object_exists(&client, &h.bucket, manifest).await,
            "{manifest}"
        );
    }
    let stored = h.keys_under("pages/").await;
    assert_eq!(
        stored.len() as u64,
        2 * n / per,
        "objects and manifests: {stored:?}"
    );
    assert_eq!(h.fixture.requests("/api/cursor").len() as u64, n / per);
    h.assert_clean().await;
    eprintln!(
        "CONTINUE records per page: {n} records, {} objects, {} invocations",
        objects.len(),
        answers.len()
    );

    // Given up after the first stop: its pages and their manifests go.
    let mut job = h.job(&path, "given-up/{page}.ndjson.gz");
    job["records"] = json!("$.data[*]");
    job["source"]["http"]["paginate"] = paginate;
    job["tuning"] = json!({"max_invocation_secs": 1});
    let first = response(h.invoke(job, INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    assert!(
        !h.keys_under("given-up/").await.is_empty(),
        "no page written: {first}"
    );
    let answer = response(
        h.invoke(json!({"abort": first["continue"]}), INVOCATION)
            .await,
    );
    assert_eq!(answer["status"], "aborted", "{answer}");
    let left = h.keys_under("given-up/").await;
    assert!(left.is_empty(), "left after the abort: {left:?}");
    h.assert_clean().await;
}

/// An incremental job keeps its watermark across invocations: every page sends the one it
/// started from, the state is written once at the end with the largest value of all
/// invocations; and a job whose state another run moved meanwhile fails and leaves nothing.
#[tokio::test]
async fn an_incremental_job_carries_its_watermark_and_fails_when_the_state_moved() {
    use sluice_tests::fixture_api::api_updated_at;
    let h = Harness::start("ingest-http", "records-incremental", None).await;
    let job = |key: &str, n: u64, state: &str| {
        let mut job = h.job(
            &format!("/api/since?n={n}&per=200&delay_ms=60"),
            &format!("incremental/{key}.ndjson"),
        );
        job["records"] = json!("$.data[*]");
        job["source"]["http"]["paginate"] =
            json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}});
        job["incremental"] = json!({"param": "since", "path": "$.data[*].updated_at",
            "initial_value": "2000-01-01T00:00:00Z", "state_key": state});
        job["tuning"] = json!({"max_invocation_secs": 1});
        job
    };
    let answers = h
        .run_to_end(job("whole", 6000, "state/whole.json"), INVOCATION, 100)
        .await;
    let last = answers.last().unwrap();
    assert!(answers.len() >= 2, "{last}");
    assert_eq!(last["status"], "written", "{last}");
    assert_eq!(last["records"], 6000, "{last}");
    assert_eq!(last["watermark"], api_updated_at(6000), "{last}");
    let sent: Vec<_> = h
        .fixture
        .requests("/api/since")
        .iter()
        .filter_map(|r| r.query_param("since").map(str::to_owned))
        .collect();
    assert_eq!(sent.len(), 30);
    assert!(sent.iter().all(|s| s == "2000-01-01T00:00:00Z"), "{sent:?}");
    h.assert_clean().await;

    // Another run moves the state between two invocations of this one.
    let first = response(
        h.invoke(job("moved", 6000, "state/moved.json"), INVOCATION)
            .await,
    );
    assert_eq!(first["status"], "continue", "{first}");
    let mut other = job("other", 100, "state/moved.json");
    other["tuning"] = json!({});
    let other = response(h.invoke(other, INVOCATION).await);
    assert_eq!(other["status"], "written", "{other}");
    let (kind, message) = error(h.invoke(first["continue"].clone(), INVOCATION).await);
    assert_eq!(kind, "Upstream", "{message}");
    assert!(message.contains("incremental state moved"), "{message}");
    h.assert_nothing_written("incremental/moved.ndjson").await;
    h.assert_clean().await;
}

/// A checkpoint whose position does not fit its job (a byte copy's offset for a records job:
/// the document edited, or written by another build) is refused as `InvalidInput`, and the
/// upload it names is aborted.
#[tokio::test]
async fn a_checkpoint_of_another_kind_is_refused() {
    let h = Harness::start("ingest-http", "other-kind", None).await;
    let mut job = h.job(&format!("/ranged?size={}&seed=6", 4 * GIB), "kind.ndjson");
    job["tuning"] = json!({"max_invocation_secs": 1});
    let first = response(h.invoke(job, INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    let doc_key = first["continue"]["checkpoint"]["key"].as_str().unwrap();
    let client = h.server.client().await;
    let mut doc: Value =
        serde_json::from_slice(&read_object(&client, &h.bucket, doc_key).await).unwrap();
    assert_eq!(doc["position"]["kind"], "http_range", "{doc}");
    doc["job"]["records"] = json!("$.data[*]");
    client
        .put_object()
        .bucket(&h.bucket)
        .key(doc_key)
        .body(serde_json::to_vec(&doc).unwrap().into())
        .send()
        .await
        .unwrap();
    let (kind, message) = error(h.invoke(first["continue"].clone(), INVOCATION).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(
        message.contains("it is for s3://") && message.contains("a byte copy"),
        "{message}"
    );
    h.assert_nothing_written("kind.ndjson").await;
    h.assert_clean().await;
}

/// Invokes `job` and then each `continue` event until an invocation fails: the answers
/// before, the event the failure was for, and the error's type and message.
async fn until_a_failure(h: &Harness, job: Value) -> (Vec<Value>, Value, (String, String)) {
    let mut event = job;
    let mut answers = Vec::new();
    loop {
        assert!(
            answers.len() < 40,
            "no failure after {} invocations",
            answers.len()
        );
        match h.invoke(event.clone(), INVOCATION).await {
            Invocation::Response(answer) => {
                assert_eq!(
                    answer["status"], "continue",
                    "the storm never came: {answer}"
                );
                event = answer["continue"].clone();
                answers.push(answer);
            }
            Invocation::Error {
                error_type,
                error_message,
            } => return (answers, event, (error_type, error_message)),
        }
    }
}

/// A transient failure in a continued invocation (the API answers 503 past the source's
/// retries) keeps the checkpoint and the upload it names: the invocation fails `Retryable`,
/// and the same `continue` event sent again (what the state machine's `Retry` does) resumes
/// from the last checkpoint; the object holds every record once, in order, and nothing is
/// left. Pages wait 100 ms and invocations last 1 s, so the first invocation asks for at
/// most 11 pages and the storm (requests 31 and 32) falls in a later one, after at least one
/// part was uploaded. The same into partitioned objects rolled at 1,000 records: the failed
/// invocation's objects completed after the checkpoint are deleted, the checkpoint's stay,
/// and the retry ends with every record once and a manifest listing exactly the objects
/// stored.
#[tokio::test]
async fn a_transient_failure_keeps_the_checkpoint_for_a_retry_of_the_same_event() {
    use sluice_tests::fixture_api::api_record_json;
    let h = Harness::start("ingest-http", "transient", None).await;
    let n = 200_000u64;
    let paginate = json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}});
    let job = |storm: &str, key: &str| {
        let path = format!("/api/storm?key={storm}&after=30&times=2&n={n}&per=4000&delay_ms=100");
        let mut job = h.job(&path, key);
        job["records"] = json!("$.data[*]");
        job["source"]["http"]["paginate"] = paginate.clone();
        job["source"]["http"]["retry"] = json!({"max_attempts": 2, "base_delay_ms": 50});
        job["tuning"] = json!({"max_invocation_secs": 1});
        job
    };
    let (answers, event, (kind, message)) =
        until_a_failure(&h, job("one", "transient.ndjson")).await;
    assert!(
        !answers.is_empty(),
        "the first invocation failed: {message}"
    );
    assert_eq!(kind, "Retryable", "{message}");
    assert!(message.contains("HTTP 503 after 2 attempt(s)"), "{message}");
    // Kept: the checkpoint the event names, and the upload it names, open.
    let doc_key = event["checkpoint"]["key"].as_str().unwrap().to_owned();
    let client = h.server.client().await;
    let doc: Value =
        serde_json::from_slice(&read_object(&client, &h.bucket, &doc_key).await).unwrap();
    let upload_id = doc["upload"]["upload_id"]
        .as_str()
        .expect("an upload was started");
    let open = sluice_tests::stack::uploads_in_progress(&client, &h.bucket).await;
    assert!(
        open.iter()
            .any(|(key, id)| key == "transient.ndjson" && id == upload_id),
        "the checkpoint's upload is not open: {open:?}"
    );
    let head = client
        .head_object()
        .bucket(&h.bucket)
        .key("transient.ndjson");
    assert!(
        head.send().await.is_err(),
        "the object exists before the job ended"
    );

    let rest = h.run_to_end(event, INVOCATION, 40).await;
    let last = rest.last().unwrap();
    assert_eq!(last["status"], "written", "{last}");
    assert_eq!(last["records"], n, "{last}");
    // The failed invocation saved no checkpoint: the count is of those whose work was kept.
    assert_eq!(last["invocations"], answers.len() + rest.len(), "{last}");
    let stored = read_object(&client, &h.bucket, "transient.ndjson").await;
    let expected: String = (1..=n).map(|i| api_record_json(i) + "\n").collect();
    assert!(
        stored == expected.as_bytes(),
        "the object is not records 1..={n} once each, in order ({} bytes, {} expected)",
        stored.len(),
        expected.len()
    );
    h.assert_clean().await;
    eprintln!(
        "TRANSIENT one object: failed in invocation {}, retried with the same event, {} more invocations",
        answers.len() + 1,
        rest.len()
    );

    // Partitioned, rolled at 1,000 records (2.5 pages): the failed invocation completed
    // objects past its checkpoint.
    let mut partitioned = job(
        "parts",
        "tp/h={field:updated_at:%Y-%m-%dT%H}/{run_id}-{part}.ndjson",
    );
    partitioned["destination"]["max_object_records"] = json!(1000);
    let (answers, event, (kind, message)) = until_a_failure(&h, partitioned).await;
    assert!(
        !answers.is_empty(),
        "the first invocation failed: {message}"
    );
    assert_eq!(kind, "Retryable", "{message}");
    let doc_key = event["checkpoint"]["key"].as_str().unwrap().to_owned();
    let doc: Value =
        serde_json::from_slice(&read_object(&client, &h.bucket, &doc_key).await).unwrap();
    let mut listed: Vec<String> = doc["position"]["partitions"]["objects"]
        .as_array()
        .expect("the checkpoint lists the objects")
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut kept = h.keys_under("tp/").await;
    kept.sort();
    assert_eq!(
        kept, listed,
        "stored after the failure: the checkpoint's objects, no others"
    );
    let rest = h.run_to_end(event, INVOCATION, 40).await;
    let last = rest.last().unwrap();
    assert_eq!(last["status"], "written", "{last}");
    assert_eq!(last["records"], n, "{last}");
    let manifest = last["manifest"].as_str().unwrap();
    let stored = h.objects_of_manifest(manifest, "tp/").await;
    let mut ids = Vec::new();
    for key in &stored {
        let text = String::from_utf8(read_object(&client, &h.bucket, key).await).unwrap();
        for line in text.lines() {
            ids.push(
                serde_json::from_str::<Value>(line).unwrap()["id"]
                    .as_u64()
                    .unwrap(),
            );
        }
    }
    ids.sort_unstable();
    assert!(
        ids == (1..=n).collect::<Vec<_>>(),
        "{} ids, not 1..={n} once each",
        ids.len()
    );
    h.assert_clean().await;
    eprintln!(
        "TRANSIENT partitioned: failed in invocation {} with {} objects kept, {} more invocations, {} objects",
        answers.len() + 1,
        listed.len(),
        rest.len(),
        stored.len()
    );
}

/// Paginated records into partitioned NDJSON continue between pages: each stop completes
/// the open objects and the next invocation writes each partition's next `{part}`. Every
/// record lands once, under its own hour, and the run manifest lists exactly the stored
/// objects; an abort event after a stop deletes the objects completed.
#[tokio::test]
async fn partitioned_records_continue_between_pages_into_the_next_parts() {
    let n = 20_000u64;
    let h = Harness::start("ingest-http", "records-parts", None).await;
    let path = format!("/api/cursor?n={n}&per=400&delay_ms=60");
    let paginate = json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}});
    let key = "parts/h={field:updated_at:%Y-%m-%dT%H}/{run_id}-{part}.ndjson.gz";
    let answers = records_to_the_end(&h, &path, paginate.clone(), key).await;
    let last = answers.last().unwrap();
    assert!(answers.len() >= 3, "{} invocations: {last}", answers.len());
    for a in &answers[..answers.len() - 1] {
        assert_eq!(a["status"], "continue", "{a}");
        let cp = a["continue"]["checkpoint"]["key"].as_str().unwrap();
        assert!(cp.starts_with("_sluice/checkpoints/ingest-http/"), "{a}");
    }
    assert_eq!(last["status"], "written", "{last}");
    assert_eq!(last["records"], n, "{last}");
    assert_eq!(last["invocations"], answers.len(), "{last}");
    let manifest = last["manifest"].as_str().unwrap();
    let stored = h.objects_of_manifest(manifest, "parts/").await;
    let mut ids = Vec::new();
    let mut hours = std::collections::BTreeSet::new();
    for key in &stored {
        let hour = key.split("h=").nth(1).unwrap().split('/').next().unwrap();
        hours.insert(hour.to_owned());
        for line in ndjson_of(&h, key).await.lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            let at = record["updated_at"].as_str().unwrap();
            assert!(at.starts_with(hour), "{key}: {line}");
            ids.push(record["id"].as_u64().unwrap());
        }
    }
    ids.sort_unstable();
    assert!(
        ids == (1..=n).collect::<Vec<_>>(),
        "{} ids read back, not 1..={n} once each",
        ids.len()
    );
    assert!(
        stored.len() > hours.len(),
        "{} objects for {} hours: no stop completed an object",
        stored.len(),
        hours.len()
    );
    let requests = h.fixture.requests(path.split('?').next().unwrap()).len();
    assert_eq!(requests, 50);
    h.assert_clean().await;
    eprintln!(
        "CONTINUE partitioned records: {n} records in 50 pages, {} invocations, {} objects over {} hours",
        answers.len(),
        stored.len(),
        hours.len()
    );

    // Given up after the first stop: its objects go with the checkpoint.
    let mut job = h.job(
        &path,
        "given-up/h={field:updated_at:%Y-%m-%dT%H}/{part}.ndjson.gz",
    );
    job["records"] = json!("$.data[*]");
    job["source"]["http"]["paginate"] = paginate;
    job["tuning"] = json!({"max_invocation_secs": 1});
    let first = response(h.invoke(job, INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    assert!(!h.keys_under("given-up/").await.is_empty(), "{first}");
    let answer = response(
        h.invoke(json!({"abort": first["continue"]}), INVOCATION)
            .await,
    );
    assert_eq!(answer["status"], "aborted", "{answer}");
    assert!(
        h.keys_under("given-up/").await.is_empty(),
        "objects left after the abort"
    );
    h.assert_clean().await;
}

/// Paginated records into partitioned Parquet continue between pages too: each stop
/// completes the open files, the quarantine is suspended beside them as the checkpoint's
/// side upload, and an inferred schema is kept for the later invocations. With the schema
/// inferred, DuckDB reads every record once under its hour; with a declared one that no
/// record fits (`value` as an int, every value has a fraction), the quarantine holds every
/// record once and no file is written.
#[tokio::test]
async fn partitioned_parquet_records_continue_between_pages() {
    use sluice_tests::lake;
    let n = 20_000u64;
    let h = Harness::start("ingest-http", "records-pq-parts", None).await;
    let path = format!("/api/cursor?n={n}&per=400&delay_ms=60");
    let paginate = json!({"cursor": {"param": "cursor", "path": "$.next_cursor"}});
    let declared = json!([
        {"name": "id", "type": "int", "required": true},
        {"name": "updated_at", "type": "timestamp"},
        {"name": "value", "type": "int"}
    ]);
    for (label, schema) in [("infer", json!("infer")), ("declared", declared)] {
        let prefix = format!("pq-{label}/");
        let mut job = h.job(
            &path,
            &format!("{prefix}h={{field:updated_at:%Y-%m-%dT%H}}/{{run_id}}-{{part}}.parquet"),
        );
        job["records"] = json!("$.data[*]");
        job["source"]["http"]["paginate"] = paginate.clone();
        job["format"] = json!("parquet");
        job["schema"] = schema;
        if label == "infer" {
            job["quarantine"] = json!({"key": format!("quarantine/{label}-{{run_id}}.ndjson")});
        }
        job["tuning"] = json!({"max_invocation_secs": 1});
        let answers = h.run_to_end(job, INVOCATION, 100).await;
        let last = answers.last().unwrap();
        assert!(
            answers.len() >= 3,
            "{label}: {} invocations: {last}",
            answers.len()
        );
        for a in &answers[..answers.len() - 1] {
            assert_eq!(a["status"], "continue", "{label}: {a}");
        }
        assert_eq!(last["status"], "written", "{label}: {last}");
        assert_eq!(last["records"], n, "{label}: {last}");
        assert_eq!(last["invocations"], answers.len(), "{label}: {last}");
        let quarantined = last["quarantined"].as_u64().unwrap();
        let client = h.server.client().await;
        let files: Vec<String> = h
            .keys_under(&prefix)
            .await
            .into_iter()
            .filter(|k| k.ends_with(".parquet"))
            .collect();
        if label == "declared" {
            assert_eq!(quarantined, n, "{label}: {last}");
            assert!(files.is_empty(), "{label}: {files:?}");
            // By default beside the run's manifest: a partitioned key is a pattern.
            let qkey = last["quarantine_key"].as_str().unwrap();
            let manifest = last["manifest"].as_str().unwrap();
            let run_id = manifest
                .strip_prefix("pq-declared/_manifests/")
                .and_then(|m| m.strip_suffix(".json"))
                .unwrap();
            assert_eq!(qkey, format!("pq-declared/_quarantine/{run_id}.ndjson"));
            let text = sluice_tests::read_object(&client, &h.bucket, qkey).await;
            let mut ids: Vec<u64> = String::from_utf8(text)
                .unwrap()
                .lines()
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    let raw: Value = serde_json::from_str(v["raw"].as_str().unwrap()).unwrap();
                    raw["id"].as_u64().unwrap()
                })
                .collect();
            ids.sort_unstable();
            assert!(
                ids == (1..=n).collect::<Vec<_>>(),
                "{label}: {} quarantine lines, not records 1..={n} once each",
                ids.len()
            );
        } else {
            assert_eq!(quarantined, 0, "{label}: {last}");
            let dir =
                std::env::temp_dir().join(format!("sluice-rpq-{label}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            for key in &files {
                let path = dir.join(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let body = sluice_tests::read_object(&client, &h.bucket, key).await;
                std::fs::write(&path, body).unwrap();
            }
            let got = lake::duckdb_sql(&format!(
                "SELECT count(*) AS n, count(DISTINCT id) AS ids, \
                   bool_and(strftime(updated_at::TIMESTAMP, '%Y-%m-%dT%H') = h) AS placed \
                 FROM read_parquet('{}/{prefix}*/*.parquet', hive_partitioning = true)",
                dir.display()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let row = &got[0];
            assert_eq!(row["n"], n, "{label}: {got}");
            assert_eq!(row["ids"], n, "{label}: {got}");
            assert_eq!(row["placed"], true, "{label}: {got}");
            assert!(
                files.len() > 6,
                "{label}: {} files over 6 hours: no stop completed a file",
                files.len()
            );
        }
        h.assert_clean().await;
        eprintln!(
            "CONTINUE partitioned parquet records ({label} schema): {n} records, {} invocations, {} files, {quarantined} quarantined",
            answers.len(),
            files.len()
        );
    }
}
