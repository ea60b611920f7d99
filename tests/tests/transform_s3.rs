//! The built `transform-s3` bootstrap, driven through the Lambda Runtime API emulator against
//! Garage: S3 events and direct invokes, the seed pipeline on generated parking-violations
//! data, duplicate and older events, bad input, quarantine limits, and a >= 2 GiB gzip CSV
//! under a 256 MB memory cgroup.
//!
//! Build the binary first: `cargo build --release -p transform-s3` (`make test` does).
//! Needs the local stack (`scripts/stack.sh up`).

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use async_compression::tokio::bufread::GzipEncoder;
use serde_json::{Value, json};
use sluice::sink::{self, S3Target, UploadOptions};
use sluice_tests::harness::{Decode, Harness, error, response};
use sluice_tests::parking::{Flaw, ParkingCsv, ParkingRow};
use sluice_tests::{MemoryCgroup, object_exists, read_object, uploads_in_progress};
use tokio::io::BufReader;

const MIB: u64 = 1024 * 1024;
const SEED_PIPELINE: &str = include_str!("../../events/transform-s3.pipeline.json");
const INVOKE: Duration = Duration::from_secs(120);

async fn start(label: &str, pipeline: &str, cgroup: Option<&MemoryCgroup>) -> Harness {
    Harness::start_with("transform-s3", label, cgroup, &[("PIPELINE", pipeline)]).await
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn parking(seed: u64, bytes: u64) -> Vec<u8> {
    let mut out = Vec::new();
    ParkingCsv::new(seed, bytes).read_to_end(&mut out).unwrap();
    out
}

async fn put(h: &Harness, key: &str, body: Vec<u8>) -> String {
    let out = h
        .server
        .client()
        .await
        .put_object()
        .bucket(&h.bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap();
    out.e_tag().unwrap().to_owned()
}

/// An S3 `ObjectCreated:Put` notification for `raw_key` (already URL-encoded).
fn s3_event(bucket: &str, raw_key: &str, etag: Option<&str>) -> Value {
    let mut object = json!({"key": raw_key, "size": 1, "sequencer": "0055AED6DCD90281E5"});
    if let Some(e) = etag {
        object["eTag"] = json!(e.trim_matches('"'));
    }
    json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "garage",
        "eventTime": "2026-03-07T09:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "test"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "t",
               "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
               "object": object}
    }]})
}

fn direct(h: &Harness, key: &str) -> Value {
    json!({"bucket": h.bucket, "key": key})
}

fn one(answer: Value) -> Value {
    let objects = answer["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1, "{answer}");
    objects[0].clone()
}

/// What the seed pipeline must produce, computed from the generator's rows, independently of
/// the transform code: the output CSV's CRC64NVME and length, rows out, rows quarantined.
struct Expected {
    crc: u64,
    len: u64,
    rows_in: u64,
    rows_out: u64,
    quarantined: u64,
}

fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

fn expected_seed_output(seed: u64, rows: u64) -> Expected {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    let header = b"vehicle_make,issuing_agency,address\n";
    digest.update(header);
    let mut e = Expected {
        crc: 0,
        len: header.len() as u64,
        rows_in: rows,
        rows_out: 0,
        quarantined: 0,
    };
    for i in 0..rows {
        let r = ParkingRow::generate(seed, i);
        if r.flaw != Flaw::None {
            e.quarantined += 1;
            continue;
        }
        if r.state == "NJ" && r.make == "FORD" && r.agency == "P" {
            let address = format!("{}, {}, {}", r.house, r.street, r.state);
            let line = format!("{},police,{}\n", quote(r.make), quote(&address));
            digest.update(line.as_bytes());
            e.len += line.len() as u64;
            e.rows_out += 1;
        }
    }
    e.crc = digest.finalize();
    e
}

/// How many data rows `ParkingCsv::new(seed, size)` holds: rows are added while the file is
/// shorter than `size`.
fn rows_in_first_bytes(seed: u64, size: u64) -> u64 {
    let mut line = Vec::with_capacity(1024);
    sluice_tests::parking::write_header(&mut line);
    let mut total = line.len() as u64;
    let mut rows = 0;
    while total < size {
        line.clear();
        ParkingRow::generate(seed, rows).write_csv(&mut line);
        total += line.len() as u64;
        rows += 1;
    }
    rows
}

fn rows_of(data: &[u8]) -> u64 {
    memchr_count(data) - 1
}

fn memchr_count(data: &[u8]) -> u64 {
    data.iter().filter(|b| **b == b'\n').count() as u64
}

async fn text(h: &Harness, key: &str) -> String {
    let client = h.server.client().await;
    String::from_utf8(read_object(&client, &h.bucket, key).await).unwrap()
}

#[tokio::test]
async fn seed_pipeline_on_an_s3_event_with_an_encoded_key() {
    let h = start("tr-seed", SEED_PIPELINE, None).await;
    let data = parking(11, 3_000_000);
    let rows = rows_of(&data);
    let etag = put(&h, "incoming/parking violations+2026.csv.gz", gzip(&data)).await;
    let event = s3_event(
        &h.bucket,
        "incoming/parking+violations%2B2026.csv.gz",
        Some(&etag),
    );
    let s = one(response(h.invoke(event.clone(), INVOKE).await));
    assert_eq!(s["status"], "written", "{s}");
    assert_eq!(s["key"], "clean/parking violations+2026.csv.gz");
    let want = expected_seed_output(11, rows);
    assert_eq!(s["records_in"], want.rows_in, "{s}");
    assert_eq!(s["records_out"], want.rows_out, "{s}");
    assert_eq!(s["quarantined"], want.quarantined, "{s}");
    assert_eq!(
        s["filtered"].as_u64().unwrap(),
        want.rows_in - want.rows_out - want.quarantined
    );
    assert!(want.rows_out > 50 && want.quarantined > 10);
    let (crc, len) = h
        .decoded_crc("clean/parking violations+2026.csv.gz", Decode::Gzip)
        .await;
    assert_eq!((crc, len), (want.crc, want.len), "output differs");

    // The quarantine: one NDJSON record per bad row, with its position and reason.
    let q = text(&h, "quarantine/parking violations+2026.ndjson").await;
    let bad: Vec<Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(bad.len() as u64, want.quarantined);
    assert_eq!(bad[0]["line"], 9, "{}", bad[0]); // data row 7 is ragged
    assert!(
        bad[0]["reason"]
            .as_str()
            .unwrap()
            .contains("ragged row: 38 fields, the header has 43"),
        "{}",
        bad[0]
    );
    assert_eq!(bad[1]["line"], 15, "{}", bad[1]); // data row 13 has a bad date
    assert_eq!(bad[1]["column"], "Issue Date");
    assert!(
        bad[1]["reason"]
            .as_str()
            .unwrap()
            .contains("is not a date in format \"%m/%d/%Y\""),
        "{}",
        bad[1]
    );
    assert!(bad[1]["raw"].as_str().unwrap().starts_with("1000000091,"));
    assert_eq!(
        bad[1]["source"],
        format!("s3://{}/incoming/parking violations+2026.csv.gz", h.bucket)
    );

    // The manifest records the source version.
    let m: Value =
        serde_json::from_str(&text(&h, "clean/parking violations+2026.csv.gz.manifest.json").await)
            .unwrap();
    assert_eq!(m["source_etag"], etag);
    assert_eq!(m["records_out"], want.rows_out);

    // The same event again: a no-op.
    let out_etag = h
        .server
        .client()
        .await
        .head_object()
        .bucket(&h.bucket)
        .key("clean/parking violations+2026.csv.gz")
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned();
    let again = one(response(h.invoke(event.clone(), INVOKE).await));
    assert_eq!(again["status"], "duplicate", "{again}");
    let after = h
        .server
        .client()
        .await
        .head_object()
        .bucket(&h.bucket)
        .key("clean/parking violations+2026.csv.gz")
        .send()
        .await
        .unwrap();
    assert_eq!(after.e_tag().unwrap(), out_etag);

    // Events for the function's own output and quarantine: skipped, nothing read.
    for key in [
        "clean/parking+violations%2B2026.csv.gz",
        "quarantine/parking+violations%2B2026.ndjson",
    ] {
        let s = one(response(
            h.invoke(s3_event(&h.bucket, key, None), INVOKE).await,
        ));
        assert_eq!(s["status"], "skipped", "{s}");
        assert!(s["reason"].as_str().unwrap().contains("prefix"), "{s}");
    }
    // Outside input.prefix: skipped too.
    let s = one(response(h.invoke(direct(&h, "other/x.csv"), INVOKE).await));
    assert_eq!(s["status"], "skipped", "{s}");

    // A new version of the source replaces the output; the old event is then superseded.
    let data2 = parking(12, 1_000_000);
    let etag2 = put(&h, "incoming/parking violations+2026.csv.gz", gzip(&data2)).await;
    let s = one(response(h.invoke(event.clone(), INVOKE).await));
    assert_eq!(s["status"], "superseded", "{s}");
    let s = one(response(
        h.invoke(
            s3_event(
                &h.bucket,
                "incoming/parking+violations%2B2026.csv.gz",
                Some(&etag2),
            ),
            INVOKE,
        )
        .await,
    ));
    assert_eq!(s["status"], "written", "{s}");
    let want2 = expected_seed_output(12, rows_of(&data2));
    let (crc, len) = h
        .decoded_crc("clean/parking violations+2026.csv.gz", Decode::Gzip)
        .await;
    assert_eq!((crc, len), (want2.crc, want2.len));
}

#[tokio::test]
async fn an_older_version_never_overwrites_newer_output() {
    let h = start("tr-older", SEED_PIPELINE, None).await;
    let key = "incoming/a.csv";
    put(&h, key, parking(3, 200_000)).await;
    let s = one(response(h.invoke(direct(&h, key), INVOKE).await));
    assert_eq!(s["status"], "written", "{s}");
    // Pretend the output came from a version newer than the object now there.
    let manifest_key = "clean/a.csv.gz.manifest.json";
    let mut m: Value = serde_json::from_str(&text(&h, manifest_key).await).unwrap();
    m["source_etag"] = json!("\"newer\"");
    m["source_last_modified"] = json!("2999-01-01T00:00:00Z");
    put(&h, manifest_key, serde_json::to_vec(&m).unwrap()).await;
    let s = one(response(h.invoke(direct(&h, key), INVOKE).await));
    assert_eq!(s["status"], "stale", "{s}");
}

/// A tiny pipeline for bad-input cases: every column typed or passed through, NDJSON output.
fn small_pipeline(extra: Value) -> String {
    let mut p = json!({
        "input": {"format": "csv", "schema": [
            {"name": "id", "type": "int", "required": true},
            {"name": "day", "type": "date"},
            {"name": "note", "nullable": true}
        ]},
        "output": {"format": "ndjson", "key": "out/{source_stem}.ndjson"},
        "quarantine": {"key": "bad/{source_stem}.ndjson"},
        "tuning": {"max_record_mib": 1}
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            p[k] = v;
        }
    }
    p.to_string()
}

#[tokio::test]
async fn bad_input() {
    let h = start("tr-bad", &small_pipeline(json!({})), None).await;
    let client = h.server.client().await;
    let good: Vec<u8> = {
        let mut v = b"id,day,note\n".to_vec();
        for i in 0..20_000 {
            v.extend(
                format!(
                    "{i},2024-01-{:02},\"n, \"\"{i}\"\"\nsecond line\"\n",
                    1 + i % 28
                )
                .bytes(),
            );
        }
        v
    };

    // Embedded newlines and quotes parse; a ragged row and bad UTF-8 are quarantined.
    let mut data = good.clone();
    data.extend(b"20000,2024-02-01\n20001,2024-02-02,caf\xe9\n20002,2024-13-01,x\n,2024-01-01,y\n");
    put(&h, "in/mixed.csv", data).await;
    let s = one(response(h.invoke(direct(&h, "in/mixed.csv"), INVOKE).await));
    assert_eq!(
        (s["records_out"].as_u64(), s["quarantined"].as_u64()),
        (Some(20_000), Some(4)),
        "{s}"
    );
    let out = text(&h, "out/mixed.ndjson").await;
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        first,
        json!({"id": 0, "day": "2024-01-01", "note": "n, \"0\"\nsecond line"})
    );
    let bad: Vec<Value> = text(&h, "bad/mixed.ndjson")
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<String> = bad
        .iter()
        .map(|b| format!("{} {} {}", b["line"], b["column"], b["reason"]))
        .collect();
    assert!(
        reasons[0].starts_with("40002 null") && reasons[0].contains("ragged row: 2 fields"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("\"note\"") && reasons[1].contains("invalid UTF-8"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("\"day\"") && reasons[2].contains("is not a date"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].contains("\"id\"") && reasons[3].contains("required value is empty"),
        "{reasons:?}"
    );
    assert_eq!(bad[1]["raw"], "20001,2024-02-02,caf\u{fffd}");

    // Failures: each a clear error, and nothing written.
    let compressed = gzip(&good);
    let mut truncated = compressed.clone();
    truncated.truncate(compressed.len() / 2);
    let mut corrupt = compressed.clone();
    let n = corrupt.len();
    corrupt[n - 6] ^= 0xff; // inside the CRC32 trailer
    let zstd = {
        use tokio::io::AsyncReadExt as _;
        let mut out = Vec::new();
        async_compression::tokio::bufread::ZstdEncoder::new(&good[..])
            .read_to_end(&mut out)
            .await
            .unwrap();
        out.truncate(out.len() - 10);
        out
    };
    let corrupt_zstd = {
        use tokio::io::AsyncReadExt as _;
        let mut out = Vec::new();
        async_compression::tokio::bufread::ZstdEncoder::new(&good[..])
            .read_to_end(&mut out)
            .await
            .unwrap();
        out[4] = 0xff; // the frame header descriptor, with its reserved bit set
        out
    };
    let mut unterminated = b"id,day,note\n1,2024-01-01,a\n".to_vec();
    unterminated.extend(b"2,2024-01-02,\"open\n3,2024-01-03,c\n");
    let mut oversized = b"id,day,note\n1,2024-01-01,a\n".to_vec();
    oversized.extend(b"2,2024-01-02,");
    oversized.extend(std::iter::repeat_n(b'x', 2 * MIB as usize));
    oversized.push(b'\n');
    // A line of commas under the 1 MiB record cap but over its 16,384 fields.
    let mut wide = b"id,day,note\n1,2024-01-01,a\n".to_vec();
    wide.extend(std::iter::repeat_n(b',', 100_000));
    wide.push(b'\n');
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "in/truncated.csv.gz",
            truncated,
            "Upstream",
            "gzip data invalid after",
        ),
        (
            "in/corrupt.csv.gz",
            corrupt,
            "Upstream",
            "gzip data invalid after",
        ),
        (
            "in/truncated.csv.zst",
            zstd,
            "Upstream",
            "zstd data invalid after",
        ),
        (
            "in/corrupt.csv.zst",
            corrupt_zstd,
            "Upstream",
            "zstd data invalid after",
        ),
        (
            "in/unterminated.csv",
            unterminated,
            "Upstream",
            "unterminated quote at byte 27 (record 3): line 3",
        ),
        (
            "in/oversized.csv",
            oversized,
            "Upstream",
            "row too large at byte 27 (record 3)",
        ),
        ("in/empty.csv", Vec::new(), "Upstream", "no header"),
        (
            "in/header.csv",
            b"id,da\xffy,note\n1,2024-01-01,a\n".to_vec(),
            "Upstream",
            "invalid UTF-8 at byte 0 (record 1): header field 2",
        ),
        (
            "in/wide.csv",
            wide,
            "Upstream",
            "row has too many fields at byte 27 (record 3): line 3",
        ),
    ];
    for (key, body, kind, message) in cases {
        put(&h, key, body).await;
        let (t, m) = error(h.invoke(direct(&h, key), INVOKE).await);
        assert_eq!(t, kind, "{key}: {m}");
        assert!(m.contains(message) && m.contains(key), "{key}: {m}");
        let stem = key.trim_start_matches("in/").split('.').next().unwrap();
        assert!(
            !object_exists(&client, &h.bucket, &format!("out/{stem}.ndjson")).await,
            "{key}: output written"
        );
    }
    let open = uploads_in_progress(&client, &h.bucket).await;
    assert!(open.is_empty(), "uploads left in progress: {open:?}");
}

/// A run that fails on too many bad rows completes neither its output nor its quarantine
/// (which would replace the quarantine of the last good run); the error names the first and
/// the last bad row.
#[tokio::test]
async fn too_many_bad_rows_abort_the_output_and_the_quarantine() {
    let h = start(
        "tr-limit",
        &small_pipeline(
            json!({"quarantine": {"key": "bad/{source_stem}.ndjson", "max_bad_rows": 100}, "workers": 2}),
        ),
        None,
    )
    .await;
    let client = h.server.client().await;
    // Enough good rows for a multipart output, then more bad rows than allowed; on two worker
    // threads, so the writer stops while the reader and the workers are still busy.
    let mut data = b"id,day,note\n".to_vec();
    for i in 0..400_000 {
        data.extend(format!("{i},2024-01-{:02},{:040}\n", 1 + i % 28, i).bytes());
        if i % 2000 == 1999 {
            data.extend(format!("{i},not a date,x\n").bytes());
        }
    }
    put(&h, "in/many.csv", data).await;
    let (t, m) = error(h.invoke(direct(&h, "in/many.csv"), INVOKE).await);
    assert_eq!(t, "Upstream", "{m}");
    assert!(
        m.contains("too many bad rows")
            && m.contains("101 rows quarantined, more than quarantine.max_bad_rows 100")
            && m.contains("the first: line 2002, column \"day\": \"not a date\" is not a date"),
        "{m}"
    );
    h.assert_nothing_written("out/many.ndjson").await;
    h.assert_nothing_written("bad/many.ndjson").await;
    assert!(uploads_in_progress(&client, &h.bucket).await.is_empty());

    // The ratio limit, checked at the end.
    let h2 = start(
        "tr-ratio",
        &small_pipeline(
            json!({"quarantine": {"key": "bad/{source_stem}.ndjson", "max_bad_ratio": 0.001}}),
        ),
        None,
    )
    .await;
    let mut data = b"id,day,note\n".to_vec();
    for i in 0..1000 {
        data.extend(format!("{i},2024-01-01,x\n").bytes());
    }
    data.extend(b"1000,bad,x\n1001,bad,x\n");
    put(&h2, "in/ratio.csv", data).await;
    let (_, m) = error(h2.invoke(direct(&h2, "in/ratio.csv"), INVOKE).await);
    assert!(
        m.contains("2 of 1002 rows quarantined") && m.contains("max_bad_ratio 0.001"),
        "{m}"
    );
    h2.assert_nothing_written("out/ratio.ndjson").await;
    h2.assert_nothing_written("bad/ratio.ndjson").await;
}

#[tokio::test]
async fn a_bad_pipeline_is_an_init_error() {
    let bad = SEED_PIPELINE.replace("\"sep\"", "\"seps\"");
    let h = start("tr-init", &bad, None).await;
    let answer = h.api.invoke(direct(&h, "incoming/x.csv"), INVOKE).await;
    let message = answer.unwrap_err().to_string();
    assert!(
        message.contains("failed to initialise")
            && message.contains("steps[2]")
            && message.contains("unknown field `seps`"),
        "{message}"
    );
    let overlap = SEED_PIPELINE.replace("\"prefix\": \"incoming/\"", "\"prefix\": \"clean/in/\"");
    let h = start("tr-init2", &overlap, None).await;
    let message = h
        .api
        .invoke(direct(&h, "clean/in/x.csv"), INVOKE)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("overlaps the prefix \"clean/\""),
        "{message}"
    );
}

#[tokio::test]
async fn pipeline_from_an_s3_object() {
    // PIPELINE_URI names an object in the harness's own bucket, so it must exist first: start
    // once to get a bucket, then start a second process reading it from there.
    let seed = start("tr-uri", SEED_PIPELINE, None).await;
    put(
        &seed,
        "config/pipeline.json",
        SEED_PIPELINE.as_bytes().to_vec(),
    )
    .await;
    let uri = format!("s3://{}/config/pipeline.json", seed.bucket);
    let mut env = seed.server.lambda_env();
    env.push(("PIPELINE_URI".into(), uri));
    let api = sluice_tests::RuntimeApi::start().await;
    let _process = sluice_tests::LambdaProcess::spawn(
        &sluice_tests::binary_path("transform-s3"),
        &api,
        &env,
        256,
        None,
    )
    .unwrap();
    put(&seed, "incoming/small.csv", parking(5, 100_000)).await;
    let s = one(response(
        api.invoke(direct(&seed, "incoming/small.csv"), INVOKE)
            .await
            .unwrap(),
    ));
    assert_eq!(s["status"], "written", "{s}");
    let want = expected_seed_output(5, rows_of(&parking(5, 100_000)));
    assert_eq!(s["records_out"], want.rows_out);
}

/// The contract: a >= 2 GiB (uncompressed) gzip CSV through the seed pipeline in a 256 MB
/// function, peak memory <= 128 MiB, output equal to an independent computation.
/// `SLUICE_TRANSFORM_GIB` changes the size, `SLUICE_TRANSFORM_WORKERS` the worker threads.
#[tokio::test]
async fn two_gib_gzip_csv_under_256_mb() {
    let gib: u64 = std::env::var("SLUICE_TRANSFORM_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let size = gib * 1024 * MIB;
    let seed = 2026;
    let cgroup = MemoryCgroup::create("sluice-transform", 256 * MIB);
    if cgroup.is_none() {
        eprintln!("cgroups unavailable: running without the 256 MB limit (VmHWM still checked)");
    }
    // `SLUICE_TRANSFORM_WORKERS` sets the pipeline's `workers` (default 1).
    let mut pipeline: Value = serde_json::from_str(SEED_PIPELINE).unwrap();
    if let Some(w) = std::env::var("SLUICE_TRANSFORM_WORKERS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        pipeline["workers"] = json!(w);
    }
    let h = start("tr-big", &pipeline.to_string(), cgroup.as_ref()).await;
    let key = "incoming/parking-2gib.csv.gz";

    // The expected output, computed from the generator's rows while the source uploads.
    let want = tokio::task::spawn_blocking(move || {
        let rows = rows_in_first_bytes(seed, size);
        expected_seed_output(seed, rows)
    });
    // Generate and upload the source, streaming: generator -> gzip -> multipart upload.
    let started = std::time::Instant::now();
    let client = h.server.client().await;
    let source = ParkingCsv::new(seed, size);
    let gz = GzipEncoder::with_quality(
        BufReader::with_capacity(1 << 20, source),
        async_compression::Level::Fastest,
    );
    let target = S3Target::new(client.clone(), &h.bucket, key);
    let options = UploadOptions::new(sluice::MemoryBudget::for_memory_mib(1024).schedule());
    let uploaded = sink::upload(Arc::new(target), gz, &options, |e| sluice::Error::Encode {
        codec: "gzip",
        offset: 0,
        source: e,
    })
    .await
    .unwrap();
    eprintln!(
        "TRANSFORM SOURCE: {gib} GiB CSV -> {:.1} MiB gzip uploaded in {:.1} s",
        uploaded.bytes as f64 / MIB as f64,
        started.elapsed().as_secs_f64()
    );
    let want = want.await.unwrap();

    if let Some(c) = &cgroup {
        c.reset_peak();
    }
    let started = std::time::Instant::now();
    let s = one(response(
        h.invoke(direct(&h, key), Duration::from_secs(900)).await,
    ));
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(s["status"], "written", "{s}");
    assert!(s["bytes_decoded"].as_u64().unwrap() >= size, "{s}");
    assert_eq!(s["records_in"], want.rows_in, "{s}");
    assert_eq!(s["records_out"], want.rows_out, "{s}");
    assert_eq!(s["quarantined"], want.quarantined, "{s}");
    let (crc, len) = h
        .decoded_crc("clean/parking-2gib.csv.gz", Decode::Gzip)
        .await;
    assert_eq!((crc, len), (want.crc, want.len), "output differs");
    let q = text(&h, "quarantine/parking-2gib.ndjson").await;
    assert_eq!(q.lines().count() as u64, want.quarantined);

    let rss = s["peak_rss_bytes"].as_u64().unwrap();
    let peak = cgroup.as_ref().map_or(rss, |c| c.peak_bytes());
    let decoded = s["bytes_decoded"].as_u64().unwrap();
    eprintln!(
        "TRANSFORM CONTRACT: {gib} GiB gzip CSV ({decoded} bytes, {} rows, workers {}) in {secs:.1} s = \
         {:.1} MiB/s, {:.0} rows/s; {} rows out, {} quarantined; cgroup peak {:.1} MiB; \
         VmHWM {:.1} MiB",
        want.rows_in,
        pipeline["workers"].as_u64().unwrap_or(1),
        decoded as f64 / MIB as f64 / secs,
        want.rows_in as f64 / secs,
        want.rows_out,
        want.quarantined,
        peak as f64 / MIB as f64,
        rss as f64 / MIB as f64
    );
    assert!(
        peak <= 128 * MIB && rss <= 128 * MIB,
        "peak {peak} / rss {rss}"
    );
}

/// A scoring service for the enrich step: answers `{"risk": summons % 7}` per row, refuses
/// its first call with 429 + `Retry-After: 1`, and answers batches with uneven delays so
/// that later batches can finish first.
#[derive(Default)]
struct Scorer {
    /// `(when, first summons number of the batch, rows, status)` of every call.
    calls: std::sync::Mutex<Vec<(std::time::Instant, i64, usize, u16)>>,
}

async fn score(
    axum::extract::State(s): axum::extract::State<Arc<Scorer>>,
    body: bytes::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let rows: Vec<Value> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let first = rows[0]["Summons Number"].as_i64().unwrap();
    let n = {
        let mut calls = s.calls.lock().unwrap();
        let n = calls.len();
        let status = if n == 0 { 429 } else { 200 };
        calls.push((std::time::Instant::now(), first, rows.len(), status));
        n
    };
    if n == 0 {
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response();
    }
    tokio::time::sleep(Duration::from_millis([60, 0, 25][n % 3])).await;
    let mut out = String::new();
    for r in &rows {
        let summons = r["Summons Number"].as_i64().unwrap();
        out.push_str(&json!({"risk": summons % 7, "other": "ignored"}).to_string());
        out.push('\n');
    }
    out.into_response()
}

#[tokio::test]
async fn enrichment_in_ordered_batches_with_retry_after() {
    let scorer = Arc::new(Scorer::default());
    let app = axum::Router::new()
        .route("/score", axum::routing::post(score))
        .with_state(scorer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/score", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let pipeline = json!({
        "input": {"format": "csv", "schema": [
            {"name": "Summons Number", "type": "int"},
            {"name": "Issue Date", "type": "date", "format": "%m/%d/%Y"}
        ]},
        "steps": [
            {"filter": {"eq": {"column": "Registration State", "value": "NJ"}}},
            {"enrich": {"url": url, "batch_size": 100, "concurrency": 2,
                        "columns": ["Summons Number"], "fields": [{"name": "risk", "type": "int"}],
                        "retry": {"base_delay_ms": 10}}},
            {"filter": {"lt": {"column": "risk", "value": 6}}},
            {"select": ["Summons Number", "risk"]}
        ],
        "output": {"format": "ndjson", "key": "enriched/{source_stem}.ndjson"},
        "quarantine": {"key": "bad/{source_stem}.ndjson"}
    })
    .to_string();
    let h = Harness::start_with(
        "transform-s3",
        "tr-enrich",
        None,
        &[
            ("PIPELINE", pipeline.as_str()),
            ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
        ],
    )
    .await;
    let data = parking(21, 1_500_000);
    let rows = rows_of(&data);
    put(&h, "in/p.csv", data).await;
    let s = one(response(h.invoke(direct(&h, "in/p.csv"), INVOKE).await));
    assert_eq!(s["status"], "written", "{s}");

    // Independently: the NJ rows that parse, and those whose score is under 6, in file order.
    let nj: Vec<i64> = (0..rows)
        .map(|i| ParkingRow::generate(21, i))
        .filter(|r| r.flaw == Flaw::None && r.state == "NJ")
        .map(|r| r.summons as i64)
        .collect();
    let kept: Vec<i64> = nj.iter().copied().filter(|n| n % 7 < 6).collect();
    let out = text(&h, "enriched/p.ndjson").await;
    let got: Vec<(i64, i64)> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
            (
                v["Summons Number"].as_i64().unwrap(),
                v["risk"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got.len(), kept.len());
    for ((summons, risk), want) in got.iter().zip(&kept) {
        assert_eq!(summons, want, "order");
        assert_eq!(*risk, summons % 7);
    }
    assert_eq!(s["records_out"], kept.len());

    // Batches of 100 rows (the last one shorter); the refused one retried after Retry-After.
    let calls = scorer.calls.lock().unwrap().clone();
    let answered: Vec<&(std::time::Instant, i64, usize, u16)> =
        calls.iter().filter(|c| c.3 == 200).collect();
    assert_eq!(answered.len(), nj.len().div_ceil(100), "{calls:?}");
    assert!(answered.iter().all(|c| c.2 <= 100));
    assert_eq!(answered.iter().map(|c| c.2).sum::<usize>(), nj.len());
    let (refused_at, first, _, _) = calls[0];
    assert_eq!(calls[0].3, 429);
    let retried = answered
        .iter()
        .find(|c| c.1 == first)
        .expect("the batch was retried");
    assert!(
        retried.0.duration_since(refused_at) >= Duration::from_secs(1),
        "retried after {:?}",
        retried.0.duration_since(refused_at)
    );
}

/// The same output and quarantine, byte for byte, whether rows are typed and transformed in
/// the reading task or on several worker threads (order preserved).
#[tokio::test]
async fn one_or_many_workers_write_the_same_bytes() {
    let data = parking(31, 4_000_000);
    let want = expected_seed_output(31, rows_of(&data));
    let mut quarantines = Vec::new();
    for workers in [1, 3] {
        let mut p: Value = serde_json::from_str(SEED_PIPELINE).unwrap();
        p["workers"] = json!(workers);
        let h = start(&format!("tr-workers-{workers}"), &p.to_string(), None).await;
        put(&h, "incoming/w.csv", data.clone()).await;
        let s = one(response(
            h.invoke(direct(&h, "incoming/w.csv"), INVOKE).await,
        ));
        assert_eq!(s["records_out"], want.rows_out, "{workers}: {s}");
        assert_eq!(s["quarantined"], want.quarantined, "{workers}: {s}");
        let (crc, len) = h.decoded_crc("clean/w.csv.gz", Decode::Gzip).await;
        assert_eq!((crc, len), (want.crc, want.len), "{workers} workers");
        let q = text(&h, "quarantine/w.ndjson").await;
        quarantines.push(q.replace(&h.bucket, "BUCKET"));
    }
    assert_eq!(quarantines[0], quarantines[1]);
    assert_eq!(quarantines[0].lines().count() as u64, want.quarantined);
}

/// NDJSON in (zstd-compressed), CSV out: JSON values typed by the schema, a line that is not
/// an object and a value of the wrong type quarantined, a missing nullable key read as null.
#[tokio::test]
async fn ndjson_input_typed_by_the_schema() {
    let pipeline = json!({
        "input": {"format": "ndjson", "schema": [
            {"name": "id", "type": "int", "required": true},
            {"name": "price", "type": "float"},
            {"name": "at", "type": "timestamp"},
            {"name": "tag", "nullable": true}
        ]},
        "steps": [
            {"filter": {"gt": {"column": "price", "value": 1.5}}},
            {"days_between": {"into": "days", "from": "at", "to": "at"}},
            {"cast": {"column": "id", "type": "string"}},
            {"concat": {"into": "label", "columns": ["id", "tag"], "sep": "-"}}
        ],
        "output": {"format": "csv", "key": "out/{source_stem}.csv"},
        "quarantine": {"key": "bad/{source_stem}.ndjson"}
    });
    let h = start("tr-ndjson", &pipeline.to_string(), None).await;
    let lines = concat!(
        "{\"id\": 1, \"price\": 2.5, \"at\": \"2026-01-02T03:04:05Z\", \"tag\": \"a,b\"}\n",
        "{\"id\": 2, \"price\": 1.0, \"at\": \"2026-01-02T03:04:05Z\"}\n",
        "\n",
        "[1, 2]\n",
        "{\"id\": 3, \"price\": \"cheap\", \"at\": \"2026-01-02T03:04:05Z\"}\n",
        "{\"id\": \"4\", \"price\": 9, \"at\": \"2026-01-02T05:04:05+02:00\", \"extra\": true}\r\n",
    );
    let zst = {
        use tokio::io::AsyncReadExt as _;
        let mut out = Vec::new();
        async_compression::tokio::bufread::ZstdEncoder::new(lines.as_bytes())
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    };
    put(&h, "in/events.ndjson.zst", zst).await;
    let s = one(response(
        h.invoke(direct(&h, "in/events.ndjson.zst"), INVOKE).await,
    ));
    assert_eq!(
        (
            &s["records_in"],
            &s["records_out"],
            &s["filtered"],
            &s["quarantined"]
        ),
        (&json!(5), &json!(2), &json!(1), &json!(2)),
        "{s}"
    );
    assert_eq!(
        text(&h, "out/events.csv").await,
        "id,price,at,tag,days,label\n1,2.5,2026-01-02T03:04:05Z,\"a,b\",0,\"1-a,b\"\n\
         4,9,2026-01-02T03:04:05Z,,0,4-\n"
    );
    let bad: Vec<Value> = text(&h, "bad/events.ndjson")
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(bad[0]["line"], 4);
    assert!(
        bad[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not a JSON object"),
        "{}",
        bad[0]
    );
    assert_eq!(bad[1]["column"], "price");
    assert_eq!(bad[1]["reason"], "\"cheap\" is not a float");
}

/// A pipeline that keeps every row (typed by two columns) in 5 MiB parts, so a long input
/// spans several parts of the output.
const PASS_THROUGH: &str = r#"{
  "input": {"format": "csv", "prefix": "incoming/", "schema": [
    {"name": "Summons Number", "type": "int", "required": true},
    {"name": "Issue Date", "type": "date", "format": "%m/%d/%Y"}
  ]},
  "output": {"format": "csv", "key": "clean/{source_stem}.csv"},
  "quarantine": {"key": "quarantine/{source_stem}.ndjson"},
  "tuning": {"part_size_mib": 5}
}"#;

/// Regression: the transform completed its output before it looked at its producer, so a
/// producer that panicked left a truncated object reported "written" (with its manifest), and
/// with several workers a dead worker's rows were dropped silently. Now a panic in the row
/// loop (1 worker), in a worker thread (3 workers) or in the quarantine fails the invocation
/// with `Internal`, and neither the output, nor its manifest, nor the quarantine exists, with
/// no upload left in progress. The panics come from the test-only fault hook (`SLUICE_FAULT`).
#[tokio::test]
async fn producer_panic_mid_stream_leaves_nothing() {
    let source = parking(41, 24 * MIB);
    for (label, fault, workers) in [
        ("panic-rows", "transform.row:60000", 1),
        ("panic-workers", "transform.worker:30", 3),
        ("panic-quarantine", "transform.quarantine:40", 1),
    ] {
        let mut pipeline: Value = serde_json::from_str(PASS_THROUGH).unwrap();
        pipeline["workers"] = json!(workers);
        let h = Harness::start_with(
            "transform-s3",
            label,
            None,
            &[("PIPELINE", &pipeline.to_string()), ("SLUICE_FAULT", fault)],
        )
        .await;
        put(&h, "incoming/panic.csv", source.clone()).await;
        let (kind, message) = error(h.invoke(direct(&h, "incoming/panic.csv"), INVOKE).await);
        assert_eq!(kind, "Internal", "{label}: {message}");
        let site = fault.split(':').next().unwrap();
        assert!(message.contains(site), "{label}: {message}");
        for key in [
            "clean/panic.csv",
            "clean/panic.csv.manifest.json",
            "quarantine/panic.ndjson",
        ] {
            h.assert_nothing_written(key).await;
        }
    }
}

/// Regression: a failed run completed its quarantine at the same key as the last good run's,
/// so the bad rows of the output that stays were replaced by those of a run that wrote
/// nothing. A newer version that fails leaves the good run's output and quarantine as they
/// were, and no upload.
#[tokio::test]
async fn a_failed_run_keeps_the_quarantine_of_the_last_good_run() {
    let pipeline = small_pipeline(
        json!({"quarantine": {"key": "bad/{source_stem}.ndjson", "max_bad_rows": 2}}),
    );
    let h = start("tr-keepq", &pipeline, None).await;
    let client = h.server.client().await;
    put(
        &h,
        "in/q.csv",
        b"id,day,note\n1,2024-01-01,a\n2,never,b\n".to_vec(),
    )
    .await;
    let s = one(response(h.invoke(direct(&h, "in/q.csv"), INVOKE).await));
    assert_eq!(
        (&s["status"], &s["quarantined"]),
        (&json!("written"), &json!(1)),
        "{s}"
    );
    let (good_out, good_bad) = (
        text(&h, "out/q.ndjson").await,
        text(&h, "bad/q.ndjson").await,
    );
    assert!(
        good_bad.contains("\"line\":3") && good_bad.contains("never"),
        "{good_bad}"
    );

    let mut newer = b"id,day,note\n".to_vec();
    for i in 0..5 {
        newer.extend(format!("{i},bad{i},x\n").bytes());
    }
    put(&h, "in/q.csv", newer).await;
    let (t, m) = error(h.invoke(direct(&h, "in/q.csv"), INVOKE).await);
    assert_eq!(t, "Upstream", "{m}");
    assert!(m.contains("too many bad rows"), "{m}");
    assert_eq!(text(&h, "out/q.ndjson").await, good_out);
    assert_eq!(
        text(&h, "bad/q.ndjson").await,
        good_bad,
        "quarantine replaced"
    );
    assert!(uploads_in_progress(&client, &h.bucket).await.is_empty());
}

const NDJSON_PIPELINE: &str = r#"{
  "input": {"format": "ndjson", "schema": [
    {"name": "id", "type": "int", "required": true},
    {"name": "tag", "nullable": true}
  ]},
  "output": {"format": "csv", "key": "out/{source_stem}.csv"},
  "quarantine": {"key": "bad/{source_stem}.ndjson"}
}"#;

/// Regression: an NDJSON object cut off inside its last line (no line ending, JSON ending
/// early: a truncated file) was quarantined as one bad row and the output completed. It
/// fails the run as truncated input naming the line, and nothing is written; a complete last
/// line without a line ending is still read.
#[tokio::test]
async fn a_cut_off_last_ndjson_line_fails_as_truncated_input() {
    let h = start("tr-cut", NDJSON_PIPELINE, None).await;
    let client = h.server.client().await;
    let whole = "{\"id\": 1, \"tag\": \"a\"}\nnot json\n{\"id\": 2}";
    put(&h, "in/whole.ndjson", whole.as_bytes().to_vec()).await;
    let s = one(response(
        h.invoke(direct(&h, "in/whole.ndjson"), INVOKE).await,
    ));
    assert_eq!(
        (&s["status"], &s["records_out"], &s["quarantined"]),
        (&json!("written"), &json!(2), &json!(1)),
        "{s}"
    );
    let cut = "{\"id\": 1, \"tag\": \"a\"}\nnot json\n{\"id\": 2, \"tag\": \"lo";
    put(&h, "in/cut.ndjson", cut.as_bytes().to_vec()).await;
    let (t, m) = error(h.invoke(direct(&h, "in/cut.ndjson"), INVOKE).await);
    assert_eq!(t, "Upstream", "{m}");
    assert!(
        m.contains("in/cut.ndjson: truncated input at byte 31 (record 3): line 3"),
        "{m}"
    );
    h.assert_nothing_written("out/cut.csv").await;
    h.assert_nothing_written("bad/cut.ndjson").await;
    assert!(uploads_in_progress(&client, &h.bucket).await.is_empty());
}

/// An enrichment service that never answers, or asks to be retried after the deadline: the
/// transform ends at its deadline (the Lambda deadline minus `tuning.deadline_margin_ms`) with
/// `Timeout`, long before the step's own timeout, and writes nothing.
#[tokio::test]
async fn transform_and_enrichment_end_at_the_deadline() {
    async fn silent() -> axum::response::Response {
        tokio::time::sleep(Duration::from_secs(600)).await;
        axum::response::IntoResponse::into_response("late")
    }
    async fn busy() -> axum::response::Response {
        axum::response::IntoResponse::into_response((
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "300")],
            "busy",
        ))
    }
    let app = axum::Router::new()
        .route("/silent", axum::routing::post(silent))
        .route("/busy", axum::routing::post(busy));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    for (label, path, what) in [
        ("tr-dl-silent", "silent", "deadline reached"),
        ("tr-dl-busy", "busy", "would pass the deadline"),
    ] {
        let pipeline = json!({
            "input": {"format": "csv", "schema": [{"name": "id", "type": "int"}]},
            "steps": [{"enrich": {"url": format!("{base}/{path}"), "batch_size": 10,
                                  "fields": [{"name": "risk", "type": "int"}],
                                  "timeout_secs": 600}}],
            "output": {"format": "ndjson", "key": "out/{source_stem}.ndjson"},
            "quarantine": {"key": "bad/{source_stem}.ndjson"},
            "tuning": {"deadline_margin_ms": 2500}
        })
        .to_string();
        let h = Harness::start_with(
            "transform-s3",
            label,
            None,
            &[
                ("PIPELINE", pipeline.as_str()),
                ("SLUICE_ALLOW_PRIVATE_NETWORKS", "true"),
            ],
        )
        .await;
        let mut data = b"id\n".to_vec();
        for i in 0..100 {
            data.extend(format!("{i}\n").bytes());
        }
        data.extend(b"x\n");
        put(&h, "in/d.csv", data).await;
        let started = std::time::Instant::now();
        let (t, m) = error(
            h.invoke(direct(&h, "in/d.csv"), Duration::from_secs(6))
                .await,
        );
        let took = started.elapsed();
        assert_eq!(t, "Timeout", "{label}: {m}");
        assert!(m.contains(what), "{label}: {m}");
        assert!(took < Duration::from_secs(60), "{label}: {took:?}");
        h.assert_nothing_written("out/d.ndjson").await;
        h.assert_nothing_written("bad/d.ndjson").await;
    }
}

/// Two instances of the function get the same S3 event at once: one output, both answers
/// true (`written`, or `duplicate` for the one that found the other's output), the output
/// and its manifest those of the source version, and no multipart upload left.
#[tokio::test]
async fn concurrent_deliveries_of_one_event_write_one_output() {
    let h = start("tr-race", PASS_THROUGH, None).await;
    let api2 = sluice_tests::RuntimeApi::start().await;
    let mut env = h.server.lambda_env();
    env.push(("PIPELINE".into(), PASS_THROUGH.into()));
    let _second = sluice_tests::LambdaProcess::spawn(
        &sluice_tests::binary_path("transform-s3"),
        &api2,
        &env,
        256,
        None,
    )
    .unwrap();
    let client = h.server.client().await;
    let etag = put(&h, "incoming/race.csv", parking(77, 24 * MIB)).await;
    let event = s3_event(&h.bucket, "incoming/race.csv", Some(&etag));
    let (a, b) = tokio::join!(
        h.api.invoke(event.clone(), INVOKE),
        api2.invoke(event.clone(), INVOKE)
    );
    let statuses: Vec<Value> = [a, b]
        .into_iter()
        .map(|inv| one(response(inv.unwrap())))
        .collect();
    let written = statuses.iter().filter(|s| s["status"] == "written").count();
    let duplicate = statuses
        .iter()
        .filter(|s| s["status"] == "duplicate")
        .count();
    eprintln!(
        "concurrent deliveries: {} written, {} duplicate",
        written, duplicate
    );
    assert!(written >= 1 && written + duplicate == 2, "{statuses:?}");
    let manifest: Value =
        serde_json::from_str(&text(&h, "clean/race.csv.manifest.json").await).unwrap();
    assert_eq!(manifest["source_etag"], json!(etag), "{manifest}");
    let out_etag = client
        .head_object()
        .bucket(&h.bucket)
        .key("clean/race.csv")
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned();
    assert!(
        statuses
            .iter()
            .filter(|s| s["status"] == "written")
            .any(|s| s["e_tag"] == json!(out_etag)),
        "{statuses:?} vs {out_etag}"
    );
    let rows: u64 = statuses[0]["records_in"]
        .as_u64()
        .or(statuses[1]["records_in"].as_u64())
        .unwrap();
    assert_eq!(manifest["records_in"], json!(rows));
    let open = uploads_in_progress(&client, &h.bucket).await;
    assert!(open.is_empty(), "uploads left in progress: {open:?}");
    // A later delivery of the same event is a duplicate.
    let again = one(response(h.invoke(event, INVOKE).await));
    assert_eq!(again["status"], "duplicate", "{again}");
}

/// Uploads `head`, then `n` bytes of `fill`, then `tail` to `key`, generated as it streams
/// (no buffer of the object in the test).
async fn put_generated(
    h: &Harness,
    key: &str,
    head: &'static [u8],
    fill: u8,
    n: u64,
    tail: &'static [u8],
) {
    use tokio::io::AsyncReadExt;
    let fill = AsyncReadExt::take(tokio::io::repeat(fill), n);
    let body = AsyncReadExt::chain(AsyncReadExt::chain(head, fill), tail);
    let client = h.server.client().await;
    let target = S3Target::new(client, &h.bucket, key);
    let options = UploadOptions::new(sluice::MemoryBudget::for_memory_mib(512).schedule());
    sink::upload(Arc::new(target), body, &options, |e| {
        sluice::Error::Encode {
            codec: "none",
            offset: 0,
            source: e,
        }
    })
    .await
    .unwrap();
}

/// A 300 MB single line, CSV and NDJSON, under a 256 MB memory cgroup: a clear "too large"
/// error naming the row, a peak of at most 128 MiB, no output and no upload left. And an
/// NDJSON line of 15 MiB of small numbers (under the 16 MiB record cap) is typed from the
/// schema's fields without building the line in memory: the row is written within the same
/// peak (parsed whole, it took hundreds of MiB).
#[tokio::test]
async fn a_300_mb_line_under_256_mb_is_a_clear_error() {
    let cgroup = MemoryCgroup::create("sluice-transform-line", 256 * MIB);
    if cgroup.is_none() {
        eprintln!("cgroups unavailable: running without the 256 MB limit (VmHWM still checked)");
    }
    let line = 300 * 1000 * 1000;
    for (label, pipeline, key, head, tail, message) in [
        (
            "tr-line-csv",
            small_pipeline(json!({"tuning": {}})),
            "in/line.csv",
            &b"id,day,note\n1,2024-01-01,a\n2,2024-01-02,"[..],
            &b"\n"[..],
            "row too large at byte 27 (record 3): line 3",
        ),
        (
            "tr-line-ndjson",
            NDJSON_PIPELINE.to_owned(),
            "in/line.ndjson",
            &b"{\"id\": 1}\n{\"id\": 2, \"tag\": \""[..],
            &b"\"}\n"[..],
            "record too large at byte 10 (record 2)",
        ),
    ] {
        let h = start(label, &pipeline, cgroup.as_ref()).await;
        put_generated(&h, key, head, b'x', line, tail).await;
        if let Some(c) = &cgroup {
            c.reset_peak();
        }
        let (t, m) = error(h.invoke(direct(&h, key), INVOKE).await);
        assert_eq!(t, "Upstream", "{label}: {m}");
        assert!(m.contains(message) && m.contains(key), "{label}: {m}");
        let peak = cgroup.as_ref().map_or(0, |c| c.peak_bytes());
        eprintln!("{label}: cgroup peak {:.1} MiB", peak as f64 / MIB as f64);
        assert!(peak <= 128 * MIB, "{label}: peak {peak}");
        let stem = key.trim_start_matches("in/").split('.').next().unwrap();
        let out = if label.ends_with("csv") {
            format!("out/{stem}.ndjson")
        } else {
            format!("out/{stem}.csv")
        };
        h.assert_nothing_written(&out).await;
        h.assert_nothing_written(&format!("bad/{stem}.ndjson"))
            .await;
        drop(h);
    }

    // 15 MiB of small numbers in one NDJSON line, most of them outside the schema.
    let h = start("tr-line-numbers", NDJSON_PIPELINE, cgroup.as_ref()).await;
    let mut body = b"{\"id\": 7, \"big\": [".to_vec();
    body.extend("1,".repeat(15 * MIB as usize / 2).bytes());
    body.extend(b"1], \"tag\": \"t\"}\n");
    put(&h, "in/numbers.ndjson", body).await;
    if let Some(c) = &cgroup {
        c.reset_peak();
    }
    let s = one(response(
        h.invoke(direct(&h, "in/numbers.ndjson"), INVOKE).await,
    ));
    assert_eq!(
        (&s["status"], &s["records_out"]),
        (&json!("written"), &json!(1)),
        "{s}"
    );
    assert_eq!(text(&h, "out/numbers.csv").await, "id,tag\n7,t\n");
    let rss = s["peak_rss_bytes"].as_u64().unwrap();
    let peak = cgroup.as_ref().map_or(rss, |c| c.peak_bytes());
    eprintln!(
        "tr-line-numbers: cgroup peak {:.1} MiB, VmHWM {:.1} MiB",
        peak as f64 / MIB as f64,
        rss as f64 / MIB as f64
    );
    assert!(
        peak <= 128 * MIB && rss <= 128 * MIB,
        "peak {peak} / rss {rss}"
    );
}

/// The seed input with its types kept, for Parquet (every row, no filter): ints, a date, a
/// cast to float, `days_between`, and the concatenated address.
fn typed_pipeline(format: &str, key: &str, compression: Value) -> String {
    let mut p: Value = serde_json::from_str(SEED_PIPELINE).unwrap();
    p["steps"] = json!([
        {"concat": {"into": "address", "columns": ["House Number", "Street Name"], "sep": " "}},
        {"cast": {"column": "Violation Code", "type": "float"}},
        {"days_between": {"into": "age_days", "from": "Issue Date", "to": "Vehicle Expiration Date",
                          "format": "%Y%m%d", "otherwise": null}},
        {"select": ["Summons Number", "Issue Date", "Violation Code", "Vehicle Year", "Vehicle Make",
                    "address", "age_days"]},
        {"rename": {"Summons Number": "summons", "Issue Date": "issue_date",
                    "Violation Code": "violation", "Vehicle Year": "year", "Vehicle Make": "make"}}
    ]);
    p["output"] = json!({"format": format, "key": key});
    if !compression.is_null() {
        p["output"]["compression"] = compression;
    }
    p.to_string()
}

async fn download(h: &Harness, key: &str, path: &std::path::Path) {
    let client = h.server.client().await;
    std::fs::write(path, read_object(&client, &h.bucket, key).await).unwrap();
}

/// Parquet through the real binary, read back by DuckDB and pyarrow: the same rows as the
/// same pipeline's CSV, the types of the schema after the steps (a cast to float, an int from
/// `days_between`, a date), the codec named by `compression`, statistics on, and several
/// row groups within `tuning.row_group_mib` — with one worker thread and with three.
#[tokio::test]
async fn parquet_output_reads_back_in_duckdb_and_pyarrow_like_the_csv() {
    use sluice_tests::lake;
    let data = parking(21, 40_000_000);
    let dir = tempfile_dir("tr-parquet");
    let csv_path = dir.join("out.csv");
    {
        let h = start(
            "tr-pq-csv",
            &typed_pipeline("csv", "clean/{source_stem}.csv", Value::Null),
            None,
        )
        .await;
        put(&h, "incoming/p.csv", data.clone()).await;
        let s = one(response(
            h.invoke(direct(&h, "incoming/p.csv"), INVOKE).await,
        ));
        assert_eq!(s["status"], "written", "{s}");
        download(&h, "clean/p.csv", &csv_path).await;
    }
    // The zstd run types the rows on 3 worker threads: the same rows must come out.
    for (codec, want, workers) in [
        (json!("snappy"), "SNAPPY", 1),
        (Value::Null, "ZSTD", 3),
        (json!("none"), "UNCOMPRESSED", 1),
    ] {
        let mut pipeline: Value = serde_json::from_str(&typed_pipeline(
            "parquet",
            "clean/{source_stem}.parquet",
            codec.clone(),
        ))
        .unwrap();
        pipeline["tuning"] = json!({"row_group_mib": 1});
        pipeline["workers"] = json!(workers);
        let h = start("tr-pq", &pipeline.to_string(), None).await;
        put(&h, "incoming/p.csv", data.clone()).await;
        let s = one(response(
            h.invoke(direct(&h, "incoming/p.csv"), INVOKE).await,
        ));
        assert_eq!(s["status"], "written", "{s}");
        assert_eq!(s["key"], "clean/p.parquet");
        let path = dir.join(format!("out-{want}.parquet"));
        download(&h, "clean/p.parquet", &path).await;
        let r = lake::parquet_report(&path, &["summons", "violation", "year", "age_days"]);
        let rows = s["records_out"].as_u64().unwrap();
        assert!(rows > 1000, "{s}");
        assert_eq!(r["duckdb"]["rows"], rows, "{r}");
        assert_eq!(r["pyarrow"]["rows"], rows, "{r}");
        assert_eq!(s["parquet"]["rows"], rows, "{s}");
        assert_eq!(
            r["duckdb"]["columns"],
            json!([
                ["summons", "BIGINT"],
                ["issue_date", "DATE"],
                ["violation", "DOUBLE"],
                ["year", "BIGINT"],
                ["make", "VARCHAR"],
                ["address", "VARCHAR"],
                ["age_days", "BIGINT"]
            ]),
            "{r}"
        );
        assert_eq!(r["pyarrow"]["codecs"], json!([want]), "{r}");
        assert_eq!(r["pyarrow"]["statistics"], true, "{r}");
        let groups = r["pyarrow"]["row_groups"].as_u64().unwrap();
        assert!(groups > 1, "several row groups at 1 MiB: {r}");
        assert_eq!(s["parquet"]["row_groups"], groups, "{s}");
        for b in r["pyarrow"]["compressed_bytes"].as_array().unwrap() {
            assert!(
                b.as_u64().unwrap() <= 2 * MIB,
                "row group of {b} bytes over the 1 MiB cap: {r}"
            );
        }
        assert_eq!(r["duckdb"]["sums"], r["pyarrow"]["sums"], "{r}");
        // The same rows as the CSV, value for value (the CSV's text read as the types).
        let csv = format!(
            "SELECT summons::BIGINT, issue_date::DATE, violation::DOUBLE, year::BIGINT, make, \
             address, age_days::BIGINT FROM read_csv('{}', all_varchar = true)",
            csv_path.display()
        );
        let diff = lake::duckdb_query(
            &path,
            &format!(
                "SELECT count(*) AS n FROM ((SELECT * FROM t EXCEPT ALL {csv}) \
                 UNION ALL ({csv} EXCEPT ALL SELECT * FROM t))"
            ),
        );
        assert_eq!(
            diff,
            json!([{"n": 0}]),
            "Parquet and CSV rows differ ({want})"
        );
        let dated = lake::duckdb_query(
            &path,
            "SELECT count(*) AS n FROM t WHERE issue_date >= DATE '1990-01-01'",
        );
        assert!(dated[0]["n"].as_u64().unwrap() > 0, "{dated}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A panic while a Parquet batch is encoded aborts the output: no object, no upload — mid
/// stream (the third batch of a large input) and in `finish` (the only batch of a small one).
#[tokio::test]
async fn a_panic_in_the_parquet_encoder_leaves_nothing() {
    let pipeline = typed_pipeline("parquet", "clean/{source_stem}.parquet", Value::Null);
    for (bytes, fault) in [(8_000_000, "parquet.batch:3"), (200_000, "parquet.batch:1")] {
        let h = Harness::start_with(
            "transform-s3",
            "tr-pq-panic",
            None,
            &[("PIPELINE", &pipeline), ("SLUICE_FAULT", fault)],
        )
        .await;
        put(&h, "incoming/p.csv", parking(22, bytes)).await;
        let (kind, message) = error(h.invoke(direct(&h, "incoming/p.csv"), INVOKE).await);
        assert_eq!(kind, "Internal", "{fault}: {message}");
        assert!(message.contains("panicked"), "{message}");
        let client = h.server.client().await;
        assert!(!object_exists(&client, &h.bucket, "clean/p.parquet").await);
        assert!(!object_exists(&client, &h.bucket, "quarantine/p.ndjson").await);
        assert!(uploads_in_progress(&client, &h.bucket).await.is_empty());
    }
}

fn tempfile_dir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The contract for Parquet: the >= 2 GiB gzip CSV through the seed pipeline with
/// `output.format: parquet`, in a 256 MB function (peak <= 128 MiB) and in a 128 MB one; the
/// rows DuckDB reads back are the rows the independent computation expects.
#[tokio::test]
async fn two_gib_gzip_csv_to_parquet_under_256_and_128_mb() {
    use sluice_tests::lake;
    let gib: u64 = std::env::var("SLUICE_TRANSFORM_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let size = gib * 1024 * MIB;
    let seed = 2027;
    let want = tokio::task::spawn_blocking(move || {
        expected_seed_output(seed, rows_in_first_bytes(seed, size))
    });
    let mut pipeline: Value = serde_json::from_str(SEED_PIPELINE).unwrap();
    pipeline["output"] = json!({"format": "parquet", "key": "clean/{source_stem}.parquet"});
    let key = "incoming/parking-2gib.csv.gz";
    let mut want = Some(want);
    let mut source: Option<String> = None;
    for memory in [256u64, 128] {
        let cgroup = MemoryCgroup::create("sluice-transform-pq", memory * MIB);
        let mem = memory.to_string();
        let h = Harness::start_with(
            "transform-s3",
            "tr-big-pq",
            cgroup.as_ref(),
            &[
                ("PIPELINE", &pipeline.to_string()),
                ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", &mem),
            ],
        )
        .await;
        let client = h.server.client().await;
        // The gzip source is made once (streaming, into the first bucket), then copied.
        match &source {
            None => {
                let gz = GzipEncoder::with_quality(
                    BufReader::with_capacity(1 << 20, ParkingCsv::new(seed, size)),
                    async_compression::Level::Fastest,
                );
                let target = S3Target::new(client.clone(), &h.bucket, key);
                let options =
                    UploadOptions::new(sluice::MemoryBudget::for_memory_mib(1024).schedule());
                sink::upload(Arc::new(target), gz, &options, |e| sluice::Error::Encode {
                    codec: "gzip",
                    offset: 0,
                    source: e,
                })
                .await
                .unwrap();
                source = Some(h.bucket.clone());
            }
            Some(bucket) => {
                client
                    .copy_object()
                    .copy_source(format!("{bucket}/{key}"))
                    .bucket(&h.bucket)
                    .key(key)
                    .send()
                    .await
                    .unwrap();
            }
        }
        let want = match want.take() {
            Some(w) => w.await.unwrap(),
            None => tokio::task::spawn_blocking(move || {
                expected_seed_output(seed, rows_in_first_bytes(seed, size))
            })
            .await
            .unwrap(),
        };
        if let Some(c) = &cgroup {
            c.reset_peak();
        }
        let started = std::time::Instant::now();
        let s = one(response(
            h.invoke(direct(&h, key), Duration::from_secs(900)).await,
        ));
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(s["status"], "written", "{s}");
        assert_eq!(s["records_in"], want.rows_in, "{s}");
        assert_eq!(s["records_out"], want.rows_out, "{s}");
        assert_eq!(s["quarantined"], want.quarantined, "{s}");
        let path =
            std::env::temp_dir().join(format!("sluice-tr-big-{}.parquet", std::process::id()));
        std::fs::write(
            &path,
            read_object(&client, &h.bucket, "clean/parking-2gib.parquet").await,
        )
        .unwrap();
        let r = lake::parquet_report(&path, &[]);
        let _ = std::fs::remove_file(&path);
        assert_eq!(r["duckdb"]["rows"], want.rows_out, "{r}");
        assert_eq!(
            r["duckdb"]["columns"],
            json!([
                ["vehicle_make", "VARCHAR"],
                ["issuing_agency", "VARCHAR"],
                ["address", "VARCHAR"]
            ])
        );
        let rss = s["peak_rss_bytes"].as_u64().unwrap();
        let peak = cgroup.as_ref().map_or(rss, |c| c.peak_bytes());
        let decoded = s["bytes_decoded"].as_u64().unwrap();
        eprintln!(
            "TRANSFORM PARQUET CONTRACT ({memory} MB): {gib} GiB gzip CSV ({decoded} bytes, {} rows) in {secs:.1} s = \
             {:.1} MiB/s; {} rows out in {} bytes of Parquet; cgroup peak {:.1} MiB; VmHWM {:.1} MiB",
            want.rows_in,
            decoded as f64 / MIB as f64 / secs,
            want.rows_out,
            s["bytes_out"],
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
