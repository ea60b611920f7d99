//! Partitioned output (`{field:…}`, `{part}`, rolling) through the built `ingest-http`
//! bootstrap against Garage: every event in exactly one object under its day, per-day counts
//! equal to the source's, objects per day within the stated bound, the tree read back by
//! DuckDB with `hive_partitioning`, a failed run leaving nothing, and the 2 GiB contracts
//! under a 256 MB memory cgroup.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::events::{EventsQuery, Order, day_counts};
use sluice_tests::harness::{Harness, error, response};
use sluice_tests::{MemoryCgroup, lake, read_object, uploads_in_progress};

const MIB: u64 = 1024 * 1024;
const T: Duration = Duration::from_secs(900);
const KEY_NDJSON: &str = "lake/events/dt={field:created_at:%Y-%m-%d}/{run_id}-{part}.ndjson.gz";
const KEY_PARQUET: &str = "lake/events/dt={field:created_at:%Y-%m-%d}/{run_id}-{part}.parquet";

fn query(size: u64, days: u32, order: Order) -> EventsQuery {
    EventsQuery {
        size,
        days,
        order,
        seed: 3,
        cut_at: None,
    }
}

fn path_of(q: &EventsQuery) -> String {
    let order = match q.order {
        Order::Sorted => "sorted",
        Order::Interleaved => "interleaved",
    };
    let mut p = format!(
        "/api/events?size={}&days={}&order={order}&seed={}",
        q.size, q.days, q.seed
    );
    if let Some(c) = q.cut_at {
        p.push_str(&format!("&cut_at={c}"));
    }
    p
}

fn job(h: &Harness, q: &EventsQuery, key: &str, max_open: usize) -> Value {
    let mut job = h.job(&path_of(q), key);
    job["input_format"] = json!("ndjson");
    job["tuning"] = json!({"max_open_partitions": max_open});
    if key.ends_with(".parquet") {
        job["format"] = json!("parquet");
        job["schema"] = json!([
            {"name": "id", "type": "int", "required": true},
            {"name": "created_at", "type": "timestamp"},
            {"name": "kind", "type": "string"},
            {"name": "value", "type": "float"},
            {"name": "note", "type": "string"}
        ]);
    } else {
        job["compression"] = json!("gzip");
    }
    job
}

/// Every object under `prefix`: key and size.
async fn list(h: &Harness, prefix: &str) -> Vec<(String, u64)> {
    let client = h.server.client().await;
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(&h.bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        for o in page.contents() {
            out.push((o.key().unwrap().to_owned(), o.size().unwrap_or(0) as u64));
        }
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_owned()),
            None => return out,
        }
    }
}

/// Downloads the objects under `lake/events/` into a fresh directory, keeping their keys.
async fn download(h: &Harness, label: &str) -> (PathBuf, Vec<(String, u64)>) {
    let objects = list(h, "lake/events/").await;
    let keys: Vec<String> = objects.iter().map(|(k, _)| k.clone()).collect();
    (
        download_keys(h, &keys, &format!("part-{label}")).await,
        objects,
    )
}

/// The date in a key `…/dt=YYYY-MM-DD/…`.
fn key_day(key: &str) -> String {
    let at = key.find("dt=").unwrap() + 3;
    key[at..at + 10].to_owned()
}

/// Counts the events of each downloaded gzip NDJSON object, checking each is under its day.
fn ndjson_day_counts(dir: &Path, objects: &[(String, u64)]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (key, _) in objects.iter().filter(|(k, _)| k.ends_with(".ndjson.gz")) {
        let day = key_day(key);
        let file = std::fs::File::open(dir.join(key)).unwrap();
        let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file));
        for line in reader.lines() {
            let line = line.unwrap();
            let at = line.find("\"created_at\":\"").unwrap() + 14;
            assert_eq!(&line[at..at + 10], day, "{key}: {line}");
            *counts.entry(day.clone()).or_insert(0u64) += 1;
        }
    }
    counts
}

/// Per-day counts DuckDB reads from the tree with `hive_partitioning`.
fn duckdb_day_counts(dir: &Path, parquet: bool) -> BTreeMap<String, u64> {
    let from = if parquet {
        format!(
            "read_parquet('{}/lake/events/*/*.parquet', hive_partitioning = true)",
            dir.display()
        )
    } else {
        format!(
            "read_json_auto('{}/lake/events/*/*.ndjson.gz', hive_partitioning = true, format = 'newline_delimited')",
            dir.display()
        )
    };
    let rows = lake::duckdb_sql(&format!(
        "SELECT CAST(dt AS VARCHAR) AS dt, count(*) AS n, bool_and(strftime(CAST(created_at AS TIMESTAMP), '%Y-%m-%d') = CAST(dt AS VARCHAR)) AS same FROM {from} GROUP BY dt"
    ));
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["same"], true, "an event under another day: {r}");
            (
                r["dt"].as_str().unwrap().to_owned(),
                r["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Objects per day from the keys.
fn objects_per_day(objects: &[(String, u64)], suffix: &str) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for (key, _) in objects.iter().filter(|(k, _)| k.ends_with(suffix)) {
        *per.entry(key_day(key)).or_insert(0) += 1;
    }
    per
}

/// Checks a run's answer, manifest, objects and DuckDB's reading against the source; returns
/// (objects, most objects of one day).
async fn check_run(
    h: &Harness,
    s: &Value,
    q: &EventsQuery,
    parquet: bool,
    label: &str,
) -> (usize, usize) {
    let q2 = q.clone();
    let want = tokio::task::spawn_blocking(move || day_counts(&q2))
        .await
        .unwrap();
    let total: u64 = want.values().sum();
    assert_eq!(s["status"], "written", "{s}");
    assert_eq!(s["records"], total, "{s}");
    let (dir, objects) = download(h, label).await;
    let suffix = if parquet { ".parquet" } else { ".ndjson.gz" };
    let data: Vec<(String, u64)> = objects
        .iter()
        .filter(|(k, _)| k.ends_with(suffix))
        .cloned()
        .collect();
    assert_eq!(s["partitioned"]["objects"], data.len(), "{s}");
    // The run manifest lists every object with its partition and count.
    let manifest_key = s["manifest"].as_str().unwrap();
    assert!(
        manifest_key.starts_with("lake/events/_manifests/"),
        "{manifest_key}"
    );
    let client = h.server.client().await;
    let manifest: Value =
        serde_json::from_slice(&read_object(&client, &h.bucket, manifest_key).await).unwrap();
    let listed = manifest["objects"].as_array().unwrap();
    assert_eq!(listed.len(), data.len());
    let mut manifest_counts: BTreeMap<String, u64> = BTreeMap::new();
    for o in listed {
        let key = o["key"].as_str().unwrap();
        assert!(
            data.iter()
                .any(|(k, size)| k == key && *size == o["bytes"].as_u64().unwrap()),
            "{o}"
        );
        assert_eq!(o["partition"]["created_at"], key_day(key), "{o}");
        *manifest_counts.entry(key_day(key)).or_default() += o["records"].as_u64().unwrap();
    }
    assert_eq!(manifest_counts, want, "manifest counts");
    if !parquet {
        assert_eq!(
            ndjson_day_counts(&dir, &data),
            want,
            "counted from the objects"
        );
    }
    assert_eq!(
        duckdb_day_counts(&dir, parquet),
        want,
        "DuckDB with hive_partitioning"
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(uploads_in_progress(&client, &h.bucket).await.is_empty());
    let per_day = objects_per_day(&data, suffix);
    (data.len(), per_day.values().copied().max().unwrap_or(0))
}

/// Sorted events with late ones and events interleaved over 40 days, as NDJSON and Parquet:
/// the bound is two objects per day for sorted input and one for interleaved.
#[tokio::test]
async fn events_land_under_their_day_in_ndjson_and_parquet() {
    let h = Harness::start_with(
        "ingest-http",
        "part-small",
        None,
        &[("SLUICE_ALLOW_PRIVATE_NETWORKS", "true")],
    )
    .await;
    for (order, key, bound) in [
        (Order::Sorted, KEY_NDJSON, 2),
        (Order::Interleaved, KEY_NDJSON, 1),
        (Order::Interleaved, KEY_PARQUET, 1),
        (Order::Sorted, KEY_PARQUET, 2),
    ] {
        let client = h.server.client().await;
        for (k, _) in list(&h, "lake/").await {
            client
                .delete_object()
                .bucket(&h.bucket)
                .key(k)
                .send()
                .await
                .unwrap();
        }
        let q = query(24 * MIB, 40, order);
        let s = response(h.invoke(job(&h, &q, key, 4), T).await);
        let label = format!("{order:?}-{}", key.ends_with("parquet"));
        let (objects, most) = check_run(&h, &s, &q, key.ends_with("parquet"), &label).await;
        eprintln!(
            "{label}: {objects} objects over 40 days, at most {most} per day; {}",
            s["partitioned"]
        );
        assert!(
            most <= bound,
            "{most} objects for one day, bound {bound}: {s}"
        );
    }
}

/// `max_object_mib` and `max_object_records` roll objects within each day.
#[tokio::test]
async fn objects_roll_at_a_size_and_a_record_count() {
    let h = Harness::start_with(
        "ingest-http",
        "part-roll",
        None,
        &[("SLUICE_ALLOW_PRIVATE_NETWORKS", "true")],
    )
    .await;
    let q = query(40 * MIB, 4, Order::Sorted);
    let mut j = job(&h, &q, KEY_NDJSON, 2);
    j["compression"] = Value::Null;
    j["destination"]["key"] = json!("lake/events/dt={field:created_at:%Y-%m-%d}/{part}.ndjson");
    j["destination"]["max_object_mib"] = json!(3);
    let s = response(h.invoke(j, T).await);
    assert_eq!(s["status"], "written", "{s}");
    let objects = list(&h, "lake/events/dt=").await;
    assert!(objects.len() >= 13, "{objects:?}");
    assert!(
        objects.iter().all(|(_, size)| *size <= 3 * MIB),
        "{objects:?}"
    );
    assert!(s["partitioned"]["rolled"].as_u64().unwrap() >= 9, "{s}");

    let q = query(8 * MIB, 2, Order::Interleaved);
    let mut j = job(&h, &q, KEY_PARQUET, 2);
    j["destination"]["key"] = json!("lake/records/dt={field:created_at:%Y-%m-%d}/{part}.parquet");
    j["destination"]["max_object_records"] = json!(10_000);
    let s = response(h.invoke(j, T).await);
    let manifest: Value = serde_json::from_slice(
        &read_object(
            &h.server.client().await,
            &h.bucket,
            s["manifest"].as_str().unwrap(),
        )
        .await,
    )
    .unwrap();
    let objects = manifest["objects"].as_array().unwrap();
    assert!(objects.len() >= 4, "{manifest}");
    assert!(
        objects
            .iter()
            .all(|o| o["records"].as_u64().unwrap() <= 10_000),
        "{manifest}"
    );
    assert!(objects.iter().any(|o| o["part"] == 2), "{manifest}");
}

/// A source cut mid-stream after objects were completed: the run fails naming the source,
/// and leaves no object, no upload in progress and nothing in the spill directory.
#[tokio::test]
async fn a_source_cut_half_way_leaves_nothing() {
    let spill = std::env::temp_dir().join(format!("sluice-spill-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spill);
    std::fs::create_dir_all(&spill).unwrap();
    let spill_dir = spill.to_string_lossy().into_owned();
    let h = Harness::start_with(
        "ingest-http",
        "part-cut",
        None,
        &[
            ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
            ("SLUICE_SPILL_DIR", &spill_dir),
        ],
    )
    .await;
    let mut q = query(64 * MIB, 30, Order::Sorted);
    q.cut_at = Some(40 * MIB);
    let mut j = job(&h, &q, KEY_NDJSON, 2);
    j["destination"]["max_object_mib"] = json!(1);
    let (kind, message) = error(h.invoke(j, T).await);
    assert!(message.contains("/api/events"), "{kind}: {message}");
    assert!(
        list(&h, "lake/").await.is_empty(),
        "objects of the failed run remain"
    );
    let client = h.server.client().await;
    assert!(uploads_in_progress(&client, &h.bucket).await.is_empty());
    let left: Vec<_> = std::fs::read_dir(&spill).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in the spill directory: {left:?}");
    let _ = std::fs::remove_dir_all(&spill);
}

/// `{part}` is required when a partition can get several objects; a bad format is refused
/// before anything is fetched.
#[tokio::test]
async fn bad_partition_keys_are_refused_before_any_request() {
    let h = Harness::start("ingest-http", "part-bad", None).await;
    for (key, says) in [
        ("lake/dt={field:created_at}/data.ndjson", "{part}"),
        ("lake/dt={field:created_at:%Q}/{part}.ndjson", "strftime"),
        ("lake/dt={field:}/{part}.ndjson", "column name"),
    ] {
        let mut j = h.job("/api/events?size=1000&days=1&order=sorted", key);
        j["input_format"] = json!("ndjson");
        let (kind, message) = error(h.invoke(j, T).await);
        assert_eq!(kind, "InvalidInput", "{key}: {message}");
        assert!(message.contains(says), "{key}: {message}");
    }
    assert_eq!(h.fixture.total_hits(), 0, "the source was contacted");
}

fn contract_gib() -> u64 {
    std::env::var("SLUICE_CONTRACT_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// 2 GiB of events under a 256 MB memory cgroup: sorted with late arrivals (4 open) and
/// interleaved over 365 days (8 open), as gzip NDJSON and as Parquet. Peak ≤ 128 MiB.
#[tokio::test]
async fn contract_two_gib_partitioned_under_256_mb() {
    let size = contract_gib() * 1024 * MIB;
    for (order, days, max_open, key, bound) in [
        (Order::Sorted, 365, 4, KEY_NDJSON, 2),
        (Order::Interleaved, 365, 8, KEY_NDJSON, 1),
        (Order::Sorted, 365, 4, KEY_PARQUET, 2),
        (Order::Interleaved, 365, 8, KEY_PARQUET, 1),
    ] {
        let cgroup = MemoryCgroup::create("sluice-partitioned", 256 * MIB);
        let h = Harness::start_with(
            "ingest-http",
            "part-contract",
            cgroup.as_ref(),
            &[("SLUICE_ALLOW_PRIVATE_NETWORKS", "true")],
        )
        .await;
        let q = query(size, days, order);
        let started = std::time::Instant::now();
        let s = response(h.invoke(job(&h, &q, key, max_open), T).await);
        let secs = started.elapsed().as_secs_f64();
        let rss = s["peak_rss_bytes"].as_u64().unwrap();
        let peak = cgroup.as_ref().map_or(rss, |c| c.peak_bytes());
        let parquet = key.ends_with("parquet");
        eprintln!("{s}");
        let (objects, most) = check_run(&h, &s, &q, parquet, "contract").await;
        eprintln!(
            "PARTITIONED CONTRACT ({order:?}, {days} days, max_open {max_open}, {}): {} GiB, {} records in {secs:.1} s = {:.1} MiB/s; \
             {objects} objects, at most {most} per day; spill peak {:.1} MiB; cgroup peak {:.1} MiB; VmHWM {:.1} MiB; {}",
            if parquet { "parquet" } else { "ndjson.gz" },
            contract_gib(),
            s["records"],
            size as f64 / MIB as f64 / secs,
            s["partitioned"]["spill_peak_bytes"].as_f64().unwrap_or(0.0) / MIB as f64,
            peak as f64 / MIB as f64,
            rss as f64 / MIB as f64,
            s["partitioned"]
        );
        assert!(most <= bound, "{most} objects for one day, bound {bound}");
        assert!(
            peak <= 128 * MIB && rss <= 128 * MIB,
            "peak {peak} / rss {rss}"
        );
    }
}

/// The transform's pipeline for partitioned output: parking tickets by the month of their
/// issue date, at most 4 objects open (36 months, interleaved: most go through the spill),
/// objects rolled at `max_object_records`.
fn transform_pipeline(format: &str) -> Value {
    let ext = if format == "parquet" {
        "parquet"
    } else {
        "csv.gz"
    };
    let mut p = json!({
        "input": {"format": "csv", "prefix": "incoming/", "schema": [
            {"name": "Summons Number", "type": "int", "required": true},
            {"name": "Issue Date", "type": "date", "format": "%m/%d/%Y"}
        ]},
        "output": {
            "format": format,
            "key": format!("lake/parking/month={{field:Issue Date:%Y-%m}}/{{source_stem}}-{{run_id}}-{{part}}.{ext}"),
            "max_object_records": 400
        },
        "quarantine": {"key": "quarantine/{source_stem}.ndjson"},
        "tuning": {"max_open_partitions": 4}
    });
    if format != "parquet" {
        p["output"]["compression"] = json!("gzip");
    }
    p
}

/// Rows per issue month (`YYYY-MM`) of the generated parking file, bad rows left out, and
/// the number of bad rows: computed from the generator, not by the transform.
fn parking_months(seed: u64, bytes: u64) -> (BTreeMap<String, u64>, u64) {
    use sluice_tests::parking::{Flaw, ParkingCsv, ParkingRow};
    let mut file = ParkingCsv::new(seed, bytes);
    std::io::copy(&mut file, &mut std::io::sink()).unwrap();
    let rows = file.rows();
    let mut months = BTreeMap::new();
    let mut bad = 0;
    for i in 0..rows {
        let r = ParkingRow::generate(seed, i);
        if r.flaw != Flaw::None {
            bad += 1;
            continue;
        }
        let (m, y) = (&r.issue_date[..2], &r.issue_date[6..10]);
        *months.entry(format!("{y}-{m}")).or_insert(0u64) += 1;
    }
    (months, bad)
}

fn parking_file(seed: u64, bytes: u64) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    sluice_tests::parking::ParkingCsv::new(seed, bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The month in a key `…/month=YYYY-MM/…`.
fn key_month(key: &str) -> String {
    let at = key.find("month=").unwrap() + 6;
    key[at..at + 7].to_owned()
}

/// Rows per month of the downloaded gzip CSV objects, checking that each object starts with
/// the header, holds at most 400 rows, and only rows of its month.
fn csv_month_counts(dir: &Path, objects: &[(String, u64)]) -> BTreeMap<String, u64> {
    csv_month_counts_within(dir, objects, 400)
}

/// [`csv_month_counts`] for objects of at most `max` rows.
fn csv_month_counts_within(
    dir: &Path,
    objects: &[(String, u64)],
    max: u64,
) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (key, _) in objects {
        let month = key_month(key);
        let file = std::fs::File::open(dir.join(key)).unwrap();
        let mut reader = csv::Reader::from_reader(flate2::read::MultiGzDecoder::new(file));
        let header = reader.headers().unwrap().clone();
        assert_eq!(&header[0], "Summons Number", "{key}");
        let at = header.iter().position(|h| h == "Issue Date").unwrap();
        let mut n = 0u64;
        for row in reader.records() {
            let row = row.unwrap();
            assert_eq!(&row[at][..7], month, "{key}: {row:?}");
            n += 1;
        }
        assert!((1..=max).contains(&n), "{key} holds {n} rows");
        *counts.entry(month).or_insert(0) += n;
    }
    counts
}

async fn put_source(h: &Harness, key: &str, body: Vec<u8>) {
    let client = h.server.client().await;
    client
        .put_object()
        .bucket(&h.bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap();
}

/// transform-s3 with `{field:…}`: every good row in exactly one object under its month (CSV
/// with its own header in each object, and Parquet read back by DuckDB with
/// `hive_partitioning`), per-month counts equal to the generator's, objects rolled at 400
/// rows, one manifest listing them; a new version of the source replaces the old one's
/// objects; the same event again is a duplicate.
#[tokio::test]
async fn transform_writes_partitioned_csv_and_parquet() {
    const SIZE: u64 = 6 * MIB;
    let (want, bad) = parking_months(5, SIZE);
    for format in ["csv", "parquet"] {
        let pipeline = transform_pipeline(format).to_string();
        let h = Harness::start_with(
            "transform-s3",
            &format!("part-tr-{format}"),
            None,
            &[("PIPELINE", &pipeline)],
        )
        .await;
        let source = "incoming/tickets 2026.csv";
        put_source(&h, source, parking_file(5, SIZE)).await;
        let direct = json!({"bucket": h.bucket, "key": source});
        let answer = response(h.invoke(direct.clone(), T).await);
        let s = &answer["objects"][0];
        assert_eq!(s["status"], "written", "{format}: {s}");
        assert_eq!(s["quarantined"], bad, "{format}: {s}");
        let figures = &s["partitioned"];
        assert_eq!(figures["partitions"], want.len(), "{format}: {s}");
        assert!(figures["spilled_records"].as_u64().unwrap() > 0, "{s}");
        let manifest_key = "lake/parking/_manifests/incoming/tickets 2026.csv.json";
        assert_eq!(s["manifest"], manifest_key, "{s}");
        let manifest: Value = serde_json::from_slice(
            &read_object(&h.server.client().await, &h.bucket, manifest_key).await,
        )
        .unwrap();
        let listed: Vec<&str> = manifest["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["key"].as_str().unwrap())
            .collect();
        let objects = list(&h, "lake/parking/month=").await;
        assert_eq!(listed.len(), objects.len(), "{format}");
        assert_eq!(figures["objects"], objects.len(), "{format}");
        let dir =
            std::env::temp_dir().join(format!("sluice-part-tr-{format}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let client = h.server.client().await;
        for (key, _) in &objects {
            assert!(
                listed.contains(&key.as_str()),
                "{key} is not in the manifest"
            );
            assert!(key.contains("/tickets 2026-"), "{key}");
            let path = dir.join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, read_object(&client, &h.bucket, key).await).unwrap();
        }
        let got = if format == "parquet" {
            let rows = lake::duckdb_sql(&format!(
                "SELECT CAST(month AS VARCHAR) AS month, count(*) AS n, max(c) AS most, bool_and(strftime(\"Issue Date\", '%Y-%m') = CAST(month AS VARCHAR)) AS same FROM (SELECT *, count(*) OVER (PARTITION BY filename) AS c FROM read_parquet('{}/lake/parking/*/*.parquet', hive_partitioning = true, filename = true)) GROUP BY month",
                dir.display()
            ));
            rows.as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    assert_eq!(r["same"], true, "a row under another month: {r}");
                    assert!(r["most"].as_u64().unwrap() <= 400, "{r}");
                    (
                        r["month"].as_str().unwrap().to_owned(),
                        r["n"].as_u64().unwrap(),
                    )
                })
                .collect()
        } else {
            csv_month_counts(&dir, &objects)
        };
        assert_eq!(got, want, "{format}: rows per month");
        let _ = std::fs::remove_dir_all(&dir);

        // The same event again: nothing is written.
        let again = response(h.invoke(direct.clone(), T).await);
        assert_eq!(again["objects"][0]["status"], "duplicate", "{again}");
        // A new version replaces the old one's objects, once all of its own are written.
        let (want2, _) = parking_months(6, SIZE / 2);
        put_source(&h, source, parking_file(6, SIZE / 2)).await;
        let answer = response(h.invoke(direct, T).await);
        let s = &answer["objects"][0];
        assert_eq!(s["status"], "written", "{format}: {s}");
        assert_eq!(s["replaced_objects"], objects.len(), "{format}: {s}");
        let now = list(&h, "lake/parking/month=").await;
        assert!(
            now.iter()
                .all(|(k, _)| !objects.iter().any(|(o, _)| o == k)),
            "old objects remain"
        );
        assert_eq!(s["partitioned"]["objects"], now.len(), "{s}");
        assert_eq!(s["records_out"], want2.values().sum::<u64>(), "{s}");
        assert!(uploads_in_progress(&client, &h.bucket).await.is_empty());
    }
}

/// Downloads `keys` into a fresh directory named for `label`.
async fn download_keys(h: &Harness, keys: &[String], label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let client = h.server.client().await;
    for key in keys {
        let path = dir.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, read_object(&client, &h.bucket, key).await).unwrap();
    }
    dir
}

/// transform-s3 into partitioned CSV and Parquet across invocations, in the Lambda box with
/// 1 s invocations: each stop completes the open objects and the next invocation writes each
/// partition's next `{part}`. Every good row lands once (per-month counts equal to the
/// generator's, as many distinct summons numbers as rows), under its month, in objects of at
/// most 2,000 rows; the manifest lists exactly the stored objects; the quarantine holds
/// every bad row once; nothing is left under `_sluice/`. An abort event after the first stop
/// deletes the objects completed.
#[tokio::test]
async fn a_partitioned_transform_continues_into_the_next_parts() {
    const SIZE: u64 = 24 * MIB;
    const MAX: u64 = 2000;
    let (want, bad) = parking_months(9, SIZE);
    let rows: u64 = want.values().sum();
    for format in ["csv", "parquet"] {
        let mut pipeline = transform_pipeline(format);
        pipeline["output"]["max_object_records"] = json!(MAX);
        pipeline["tuning"]["max_invocation_secs"] = json!(1);
        let b = sluice_tests::harness::LambdaBox::create(&format!("sluice-part-trc-{format}"));
        let label = format!("part-trc-{format}");
        let env = [("PIPELINE", pipeline.to_string())];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let h = Harness::start_in("transform-s3", &label, &b.procs(), &env).await;
        let source = "incoming/continued.csv";
        put_source(&h, source, parking_file(9, SIZE)).await;
        let event = json!({"bucket": h.bucket, "key": source, "continuable": true});
        let started = std::time::Instant::now();
        let answers = h.run_to_end(event.clone(), T, 200).await;
        let secs = started.elapsed().as_secs_f64();
        for a in &answers[..answers.len() - 1] {
            assert_eq!(a["status"], "continue", "{format}: {a}");
        }
        assert!(
            answers.len() >= 2,
            "{format}: {} invocations",
            answers.len()
        );
        let s = &answers.last().unwrap()["objects"][0];
        assert_eq!(s["status"], "written", "{format}: {s}");
        assert_eq!(s["invocations"], answers.len(), "{format}: {s}");
        assert_eq!(s["records_out"], rows, "{format}: {s}");
        assert_eq!(s["quarantined"], bad, "{format}: {s}");
        assert_eq!(s["partitioned"]["partitions"], want.len(), "{format}: {s}");
        let manifest = "lake/parking/_manifests/incoming/continued.csv.json";
        assert_eq!(s["manifest"], manifest, "{s}");
        let keys = h.objects_of_manifest(manifest, "lake/parking/").await;
        assert_eq!(s["partitioned"]["objects"], keys.len(), "{format}: {s}");
        let client = h.server.client().await;
        let quarantine = read_object(&client, &h.bucket, "quarantine/continued.ndjson").await;
        let mut lines: Vec<u64> = quarantine
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(&l.unwrap()).unwrap()["line"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(lines.len() as u64, bad, "{format}: quarantine lines");
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(
            lines.len() as u64,
            bad,
            "{format}: a bad row quarantined twice"
        );
        let dir = download_keys(&h, &keys, &label).await;
        let (got, distinct) = if format == "parquet" {
            let rows = lake::duckdb_sql(&format!(
                "SELECT CAST(month AS VARCHAR) AS month, count(*) AS n, count(DISTINCT \"Summons Number\") AS d, max(c) AS most, bool_and(strftime(\"Issue Date\", '%Y-%m') = CAST(month AS VARCHAR)) AS same FROM (SELECT *, count(*) OVER (PARTITION BY filename) AS c FROM read_parquet('{}/lake/parking/*/*.parquet', hive_partitioning = true, filename = true)) GROUP BY month",
                dir.display()
            ));
            let mut distinct = 0;
            let got = rows
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    assert_eq!(r["same"], true, "a row under another month: {r}");
                    assert!(r["most"].as_u64().unwrap() <= MAX, "{r}");
                    distinct += r["d"].as_u64().unwrap();
                    (
                        r["month"].as_str().unwrap().to_owned(),
                        r["n"].as_u64().unwrap(),
                    )
                })
                .collect();
            (got, distinct)
        } else {
            let sized: Vec<(String, u64)> = keys.iter().map(|k| (k.clone(), 0)).collect();
            let distinct = lake::duckdb_sql(&format!(
                "SELECT count(DISTINCT \"Summons Number\") AS d FROM read_csv('{}/lake/parking/*/*.csv.gz', header = true)",
                dir.display()
            ))[0]["d"]
                .as_u64()
                .unwrap();
            (csv_month_counts_within(&dir, &sized, MAX), distinct)
        };
        assert_eq!(got, want, "{format}: rows per month");
        assert_eq!(distinct, rows, "{format}: a row written twice");
        let _ = std::fs::remove_dir_all(&dir);
        h.assert_clean().await;
        eprintln!(
            "CONTINUE partitioned transform {format}: {rows} rows, {bad} quarantined, {} invocations, {} objects in {} partitions, {secs:.1} s; cgroup peak {}",
            answers.len(),
            keys.len(),
            want.len(),
            b.peak_mib()
                .map_or("not measured".into(), |p| format!("{p:.1} MiB")),
        );

        // `SLUICE_CONTINUE_COMPARE=1`: the same rows in one invocation, for the overhead.
        if std::env::var("SLUICE_CONTINUE_COMPARE").is_ok_and(|v| v == "1") {
            let once = "incoming/one-shot.csv";
            put_source(&h, once, parking_file(9, SIZE)).await;
            b.reset_peak();
            let started = std::time::Instant::now();
            let answer = response(h.invoke(json!({"bucket": h.bucket, "key": once}), T).await);
            let one_shot = started.elapsed().as_secs_f64();
            let s = &answer["objects"][0];
            assert_eq!(s["status"], "written", "{s}");
            assert_eq!(s["records_out"], rows, "{s}");
            eprintln!(
                "ONE-SHOT partitioned transform {format}: {one_shot:.1} s, {} objects; continued run took {:.2}x; cgroup peak {}",
                s["partitioned"]["objects"],
                secs / one_shot,
                b.peak_mib()
                    .map_or("not measured".into(), |p| format!("{p:.1} MiB")),
            );
        }

        // Given up after the first stop: the objects it completed go with the checkpoint.
        let again = "incoming/given-up.csv";
        put_source(&h, again, parking_file(10, SIZE)).await;
        let event = json!({"bucket": h.bucket, "key": again, "continuable": true});
        let first = response(h.invoke(event, T).await);
        assert_eq!(first["status"], "continue", "{format}: {first}");
        let completed = list(&h, "lake/parking/")
            .await
            .into_iter()
            .filter(|(k, _)| k.contains("/given-up-"))
            .count();
        assert!(
            completed > 0,
            "{format}: nothing completed at the first stop"
        );
        let abort = json!({"abort": first["continue"]});
        let answer = response(h.invoke(abort, T).await);
        assert_eq!(answer["status"], "aborted", "{format}: {answer}");
        let left: Vec<_> = list(&h, "lake/parking/")
            .await
            .into_iter()
            .filter(|(k, _)| k.contains("given-up"))
            .collect();
        assert!(left.is_empty(), "{format}: left after the abort: {left:?}");
        h.assert_clean().await;
    }
}

/// A transform that fails half-way (a panic in the row loop, after objects were completed
/// and rows spilled) leaves no object, no manifest, no upload and nothing in the spill
/// directory; a row whose key cannot be made goes to the quarantine; a key column that is
/// not in the output is refused before anything is written.
#[tokio::test]
async fn a_failed_partitioned_transform_leaves_nothing() {
    let spill = std::env::temp_dir().join(format!("sluice-spill-tr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spill);
    std::fs::create_dir_all(&spill).unwrap();
    let spill_dir = spill.to_string_lossy().into_owned();
    let pipeline = transform_pipeline("csv").to_string();
    let h = Harness::start_with(
        "transform-s3",
        "part-tr-fail",
        None,
        &[
            ("PIPELINE", &pipeline),
            ("SLUICE_SPILL_DIR", &spill_dir),
            ("SLUICE_FAULT", "transform.row:15000"),
        ],
    )
    .await;
    let source = "incoming/cut.csv";
    put_source(&h, source, parking_file(7, 6 * MIB)).await;
    let (kind, message) = error(
        h.invoke(json!({"bucket": h.bucket, "key": source}), T)
            .await,
    );
    assert_eq!(kind, "Internal", "{message}");
    assert!(message.contains("transform.row"), "{message}");
    assert!(
        list(&h, "lake/").await.is_empty(),
        "objects of the failed run remain"
    );
    let client = h.server.client().await;
    assert!(uploads_in_progress(&client, &h.bucket).await.is_empty());
    let left: Vec<_> = std::fs::read_dir(&spill).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in the spill directory: {left:?}");
    let _ = std::fs::remove_dir_all(&spill);

    // A key on a string column with a date format: the rows whose value is not a date go to
    // the quarantine, the others land.
    let mut p = transform_pipeline("csv");
    p["output"]["key"] =
        json!("lake/v/year={field:Violation Code:%Y}/{source_stem}-{run_id}-{part}.csv.gz");
    let h = Harness::start_with(
        "transform-s3",
        "part-tr-badkey",
        None,
        &[("PIPELINE", &p.to_string())],
    )
    .await;
    put_source(&h, source, parking_file(7, MIB)).await;
    let answer = response(
        h.invoke(json!({"bucket": h.bucket, "key": source}), T)
            .await,
    );
    let s = &answer["objects"][0];
    assert_eq!(s["records_out"], 0, "{s}");
    assert_eq!(s["quarantined"], s["records_in"], "{s}");
    // A key column the output does not have.
    let mut p = transform_pipeline("csv");
    p["output"]["key"] = json!("lake/v/x={field:nope}/{source_stem}-{run_id}-{part}.csv.gz");
    let h = Harness::start_with(
        "transform-s3",
        "part-tr-nocol",
        None,
        &[("PIPELINE", &p.to_string())],
    )
    .await;
    put_source(&h, source, parking_file(7, MIB)).await;
    let (kind, message) = error(
        h.invoke(json!({"bucket": h.bucket, "key": source}), T)
            .await,
    );
    assert!(
        message.contains("{field:nope} is not a column of the output"),
        "{kind}: {message}"
    );
    assert!(list(&h, "lake/").await.is_empty());
}
