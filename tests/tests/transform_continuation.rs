//! `transform-s3` runs longer than one invocation, through the built bootstrap in the Lambda
//! box (a 256 MiB memory cgroup and 256/1769 of a vCPU) against Garage: a direct invoke with
//! `"continuable": true` stops after `tuning.max_invocation_secs`, answers `continue`, and the
//! next invocation (sent the `continue` value) reads the source on from the last gzip member
//! or zstd frame that starts at or before where it stopped (from the start of a single-member
//! gzip object, or from the byte itself for an identity one), skipping what it had written.
//!
//! Every continued run is compared with a one-shot run of the same object and pipeline: the
//! same decoded output (a continued output has more gzip members or zstd frames, one more at
//! each stop), the same quarantine lines in the same order, the same counts, and nothing left
//! under `_sluice/` nor any upload in progress.
//!
//! `SLUICE_TRANSFORM_CONT_GIB` (default 2) sizes the contract run. Build the binary first:
//! `cargo build --release -p transform-s3` (`make test` does); needs the local stack
//! (`scripts/stack.sh up`).

use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::sink::{self, S3Target, UploadOptions};
use sluice_tests::harness::{Decode, Harness, LambdaBox, error, response};
use sluice_tests::members::{GzipMembers, gzip_members, zstd_frames};
use sluice_tests::parking::{ParkingCsv, expected_seed_output_of_size};
use sluice_tests::{Invocation, read_object, uploads_in_progress};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
const SEED_PIPELINE: &str = include_str!("../../events/transform-s3.pipeline.json");
/// A continued invocation's timeout: well past `max_invocation_secs`, which so decides when
/// the invocations stop.
const INVOCATION: Duration = Duration::from_secs(60);
/// The one-shot run's timeout (Lambda's largest).
const ONE_SHOT: Duration = Duration::from_secs(900);
/// Where the transform's checkpoints go.
const CHECKPOINTS: &str = "_sluice/checkpoints/transform-s3/";

async fn start(label: &str, b: &LambdaBox, pipeline: &Value) -> Harness {
    Harness::start_in(
        "transform-s3",
        label,
        &b.procs(),
        &[("PIPELINE", &pipeline.to_string())],
    )
    .await
}

/// A direct invoke of `key`, continuable or not.
fn event(h: &Harness, key: &str, continuable: bool) -> Value {
    let mut e = json!({"bucket": h.bucket, "key": key});
    if continuable {
        e["continuable"] = json!(true);
    }
    e
}

/// The only object summary of an answer.
fn one(answer: &Value) -> Value {
    let objects = answer["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(objects.len(), 1, "{answer}");
    objects[0].clone()
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

async fn delete(h: &Harness, key: &str) {
    let client = h.server.client().await;
    client
        .delete_object()
        .bucket(&h.bucket)
        .key(key)
        .send()
        .await
        .unwrap();
}

fn parking(seed: u64, bytes: u64) -> Vec<u8> {
    let mut out = Vec::new();
    ParkingCsv::new(seed, bytes).read_to_end(&mut out).unwrap();
    out
}

/// `data` as one gzip member.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Parking rows typed, every row kept (a `concat` and a `select`): an output about as large
/// as the input. `Vehicle Expiration Date` as a `%Y%m%d` date sends its `88888888` and `0`
/// (a fifth of the rows) to the quarantine besides the generator's flawed rows, so the
/// quarantine spans several parts too. 1 s invocations, a checkpoint after every 5 MiB part.
fn parking_pipeline(output: Value, workers: u64) -> Value {
    json!({
        "input": {"format": "csv", "prefix": "incoming/", "schema": [
            {"name": "Summons Number", "type": "int", "required": true},
            {"name": "Issue Date", "type": "date", "format": "%m/%d/%Y"},
            {"name": "Violation Code", "type": "int"},
            {"name": "Vehicle Expiration Date", "type": "date", "format": "%Y%m%d"},
            {"name": "House Number", "type": "string", "nullable": true},
            {"name": "Vehicle Year", "type": "int"}
        ]},
        "steps": [
            {"concat": {"into": "address", "columns": ["House Number", "Street Name"], "sep": " "}},
            {"select": ["Summons Number", "Issue Date", "Violation Code", "Registration State",
                        "Vehicle Make", "Vehicle Expiration Date", "address", "Vehicle Year",
                        "Violation Description"]}
        ],
        "output": output,
        "quarantine": {"key": "quarantine/{source_stem}.ndjson"},
        "workers": workers,
        "tuning": {"max_invocation_secs": 1, "checkpoint_every_parts": 1, "part_size_mib": 5}
    })
}

/// A finished run: its answers, the last object summary, its wall time, and what it wrote
/// (the output decoded, the quarantine as stored).
struct Run {
    answers: Vec<Value>,
    summary: Value,
    secs: f64,
    output: Vec<u8>,
    quarantine: Vec<u8>,
}

impl Run {
    fn invocations(&self) -> usize {
        self.answers.len()
    }
}

/// Reads back what `summary` says was written.
async fn written(h: &Harness, summary: &Value, decode: Decode) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(summary["status"], "written", "{summary}");
    let key = summary["key"]
        .as_str()
        .unwrap_or_else(|| panic!("{summary}"));
    let output = h.decoded(key, decode).await;
    let quarantine = match summary["quarantine_key"].as_str() {
        Some(q) => {
            let client = h.server.client().await;
            read_object(&client, &h.bucket, q).await
        }
        None => Vec::new(),
    };
    (output, quarantine)
}

/// Runs `event` (a continuable invoke, or a `continue` event after `before` invocations) to
/// its end; checks every answer but the last says `continue` with a transform checkpoint, the
/// last one `written` with the invocation count, and reads the output back.
async fn run_continued(
    h: &Harness,
    event: Value,
    decode: Decode,
    before: usize,
    max_invocations: usize,
) -> Run {
    let started = Instant::now();
    let answers = h.run_to_end(event, INVOCATION, max_invocations).await;
    let secs = started.elapsed().as_secs_f64();
    for a in &answers[..answers.len() - 1] {
        assert_eq!(a["status"], "continue", "{a}");
        assert_eq!(a["continue"]["checkpoint"]["bucket"], h.bucket, "{a}");
        let cp = a["continue"]["checkpoint"]["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no checkpoint key: {a}"));
        assert!(cp.starts_with(CHECKPOINTS), "{a}");
        assert_eq!(one(a)["status"], "continue", "{a}");
    }
    let last = answers.last().unwrap();
    assert!(last.get("status").is_none(), "{last}");
    assert_eq!(last["skipped_records"], json!([]), "{last}");
    let summary = one(last);
    assert_eq!(summary["status"], "written", "{summary}");
    let total = before + answers.len();
    if total > 1 {
        assert_eq!(summary["invocations"], total, "{summary}");
    }
    let (output, quarantine) = written(h, &summary, decode).await;
    Run {
        answers,
        summary,
        secs,
        output,
        quarantine,
    }
}

/// Deletes what `summary` says was written (the output, its manifest, the quarantine), so
/// that the same source version is transformed again rather than found a duplicate.
async fn forget(h: &Harness, summary: &Value) {
    for field in ["key", "manifest", "quarantine_key"] {
        if let Some(key) = summary[field].as_str() {
            delete(h, key).await;
        }
    }
}

/// The same object in one invocation, without `continuable`.
async fn run_one_shot(h: &Harness, key: &str, decode: Decode) -> Run {
    let started = Instant::now();
    let answer = response(h.invoke(event(h, key, false), ONE_SHOT).await);
    let secs = started.elapsed().as_secs_f64();
    assert!(answer.get("status").is_none(), "{answer}");
    let summary = one(&answer);
    assert_eq!(summary["status"], "written", "{summary}");
    assert!(summary.get("invocations").is_none(), "{summary}");
    let (output, quarantine) = written(h, &summary, decode).await;
    Run {
        answers: vec![answer],
        summary,
        secs,
        output,
        quarantine,
    }
}

fn crc64(data: &[u8]) -> u64 {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    digest.update(data);
    digest.finalize()
}

/// Where two byte strings first differ, with a little of each around it.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let around = |s: &[u8]| {
        let from = at.saturating_sub(80);
        String::from_utf8_lossy(&s[from..(at + 80).min(s.len())]).into_owned()
    };
    format!(
        "{} and {} bytes, first difference at byte {at}: {:?} vs {:?}",
        a.len(),
        b.len(),
        around(a),
        around(b)
    )
}

/// How a continued run and a one-shot run differ: counts, decoded output, quarantine lines in
/// order (and each quarantine against its summary's count).
fn differences(continued: &Run, one_shot: &Run) -> Vec<String> {
    let mut wrong = Vec::new();
    for count in ["records_in", "records_out", "filtered", "quarantined"] {
        if continued.summary[count] != one_shot.summary[count] {
            wrong.push(format!(
                "{count}: continued {} / one-shot {}",
                continued.summary[count], one_shot.summary[count]
            ));
        }
    }
    if continued.output != one_shot.output {
        wrong.push(format!(
            "the continued output differs from the one-shot output: {}",
            first_difference(&continued.output, &one_shot.output)
        ));
    }
    let lines = |q: &[u8]| -> Vec<Vec<u8>> {
        q.split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let (cq, oq) = (lines(&continued.quarantine), lines(&one_shot.quarantine));
    for (run, q) in [(continued, &cq), (one_shot, &oq)] {
        if Some(q.len() as u64) != run.summary["quarantined"].as_u64() {
            wrong.push(format!(
                "{} quarantine lines, the summary says {} quarantined ({} invocations)",
                q.len(),
                run.summary["quarantined"],
                run.invocations()
            ));
        }
    }
    if let Some(i) = (0..cq.len().min(oq.len())).find(|&i| cq[i] != oq[i]) {
        wrong.push(format!(
            "quarantine line {} differs:\n  continued: {}\n  one-shot:  {}",
            i + 1,
            String::from_utf8_lossy(&cq[i]),
            String::from_utf8_lossy(&oq[i])
        ));
    }
    if cq.len() != oq.len() {
        wrong.push(format!(
            "quarantine lines: continued {} / one-shot {}",
            cq.len(),
            oq.len()
        ));
    }
    wrong
}

/// A continued run and a one-shot run wrote the same; every difference is reported, not only
/// the first.
fn assert_same(what: &str, continued: &Run, one_shot: &Run) {
    let wrong = differences(continued, one_shot);
    assert!(
        wrong.is_empty(),
        "{what}: the continued run differs from the one-shot run:\n- {}\ncontinued: {}\none-shot:  {}",
        wrong.join("\n- "),
        continued.summary,
        one_shot.summary
    );
}

fn peak_text(peak: Option<f64>) -> String {
    peak.map_or("not measured".into(), |p| format!("{p:.1} MiB"))
}

/// Transforms `key` continued (from a fresh continuable invoke), then again in one invocation,
/// and compares them; the job leaves nothing behind.
async fn continues_like_one_shot(
    h: &Harness,
    b: &LambdaBox,
    key: &str,
    decode: Decode,
    what: &str,
) {
    b.reset_peak();
    let continued = run_continued(h, event(h, key, true), decode, 0, 200).await;
    let peak = b.peak_mib();
    h.assert_clean().await;
    assert!(
        continued.invocations() >= 2,
        "{what}: ended in one invocation of at most 1 s, so nothing continued: {}",
        continued.summary
    );
    forget(h, &continued.summary).await;
    let one_shot = run_one_shot(h, key, decode).await;
    assert_same(what, &continued, &one_shot);
    assert!(
        continued.summary["quarantined"].as_u64().unwrap() > 0,
        "{what}: {}",
        continued.summary
    );
    h.assert_clean().await;
    eprintln!(
        "CONTINUE transform {what}: {} rows in, {} out, {} quarantined; {} invocations, {:.1} s \
         (one-shot {:.1} s); {} bytes decoded continued, {} one-shot; cgroup peak {}",
        continued.summary["records_in"],
        continued.summary["records_out"],
        continued.summary["quarantined"],
        continued.invocations(),
        continued.secs,
        one_shot.secs,
        continued.summary["bytes_decoded"],
        one_shot.summary["bytes_decoded"],
        peak_text(peak),
    );
    if let Some(peak) = peak {
        assert!(
            peak <= 128.0,
            "{what}: cgroup peak {peak:.1} MiB is over 128 MiB"
        );
    }
}

/// An identity (uncompressed) CSV typed on two worker threads (the parallel CSV path), into
/// gzip NDJSON: continued in 1 s invocations with a checkpoint after every part, it writes
/// what one invocation writes.
#[tokio::test]
async fn an_identity_csv_on_two_workers_continues_like_one_invocation() {
    let b = LambdaBox::create("sluice-trc-csv");
    let pipeline = parking_pipeline(
        json!({"format": "ndjson", "compression": "gzip", "key": "clean/{source_stem}.ndjson.gz"}),
        2,
    );
    let h = start("trc-csv", &b, &pipeline).await;
    put(&h, "incoming/identity.csv", parking(31, 48 * MIB)).await;
    continues_like_one_shot(
        &h,
        &b,
        "incoming/identity.csv",
        Decode::Gzip,
        "identity CSV, 2 workers -> NDJSON gzip",
    )
    .await;
}

/// NDJSON lines: ids, dates, amounts and notes that need CSV quoting (commas, quotes, a
/// newline, non-ASCII), some CRLF endings and blank lines, and bad rows of three kinds (not
/// JSON, a bad date, an id that is not an int) at known rates.
fn ndjson_lines(min_bytes: usize) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(min_bytes + 1024);
    let mut i = 0u64;
    while s.len() < min_bytes {
        if i % 1499 == 7 {
            let _ = write!(s, "not json {i}");
        } else if i % 4001 == 9 {
            // A blank line: not a record.
        } else {
            let id = if i % 2003 == 5 {
                format!("\"x{i}\"")
            } else {
                i.to_string()
            };
            let day = if i % 997 == 13 {
                "2024-02-30".to_owned()
            } else {
                format!("2024-{:02}-{:02}", 1 + i % 12, 1 + i % 28)
            };
            let cents = i * 37 % 1000;
            let _ = write!(
                s,
                "{{\"id\": {id}, \"day\": \"{day}\", \"amount\": {}.{:02}",
                cents / 100,
                cents % 100
            );
            match i % 7 {
                0 => s.push_str(", \"note\": null"),
                1 => {}
                2 => {
                    let _ = write!(s, ", \"note\": \"n, \\\"{i}\\\"\\nsecond line\"");
                }
                3 => s.push_str(", \"note\": \"caf\u{e9} \u{2615}\""),
                _ => {
                    let _ = write!(s, ", \"note\": \"plain {i}\", \"extra\": [1, 2, {i}]");
                }
            }
            s.push('}');
        }
        s.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
        i += 1;
    }
    s.into_bytes()
}

/// NDJSON in independent zstd frames (one every MiB of decoded input, so frames end inside
/// lines), filtered and typed into zstd CSV: continued, it writes what one invocation writes.
#[tokio::test]
async fn ndjson_in_zstd_frames_continues_like_one_invocation() {
    let b = LambdaBox::create("sluice-trc-ndjson");
    let pipeline = json!({
        "input": {"format": "ndjson", "schema": [
            {"name": "id", "type": "int", "required": true},
            {"name": "day", "type": "date"},
            {"name": "amount", "type": "float"},
            {"name": "note", "nullable": true}
        ]},
        "steps": [{"filter": {"gt": {"column": "amount", "value": 1.5}}}],
        "output": {"format": "csv", "compression": "zstd", "key": "out/{source_stem}.csv.zst"},
        "quarantine": {"key": "bad/{source_stem}.ndjson"},
        "tuning": {"max_invocation_secs": 1, "checkpoint_every_parts": 1, "part_size_mib": 5}
    });
    let h = start("trc-ndjson", &b, &pipeline).await;
    let lines = ndjson_lines(32 * MIB as usize);
    let zst = zstd_frames(&lines, MIB as usize).await;
    put(&h, "in/events.ndjson.zst", zst).await;
    continues_like_one_shot(
        &h,
        &b,
        "in/events.ndjson.zst",
        Decode::Zstd,
        "NDJSON zstd frames -> CSV zstd",
    )
    .await;
}

/// A CSV compressed as one gzip member has no later member to go on from: each invocation
/// decodes it again from the start, skips what was written, and the output is the same.
#[tokio::test]
async fn a_single_member_gzip_csv_continues_by_decoding_again() {
    let b = LambdaBox::create("sluice-trc-gzip1");
    let pipeline = parking_pipeline(
        json!({"format": "csv", "key": "clean/{source_stem}.csv"}),
        1,
    );
    let h = start("trc-gzip1", &b, &pipeline).await;
    put(&h, "incoming/single.csv.gz", gzip(&parking(33, 32 * MIB))).await;
    continues_like_one_shot(
        &h,
        &b,
        "incoming/single.csv.gz",
        Decode::None,
        "single-member gzip CSV -> CSV",
    )
    .await;
}

/// The source is overwritten (another ETag) between two invocations: the next one fails, and
/// nothing is left: no output, no quarantine, no manifest, no upload, no checkpoint.
#[tokio::test]
async fn a_source_overwritten_between_invocations_fails_and_leaves_nothing() {
    let b = LambdaBox::create("sluice-trc-changed");
    let pipeline = parking_pipeline(
        json!({"format": "csv", "compression": "gzip", "key": "clean/{source_stem}.csv.gz"}),
        1,
    );
    let h = start("trc-changed", &b, &pipeline).await;
    let key = "incoming/changed.csv";
    let before = put(&h, key, parking(35, 64 * MIB)).await;
    let first = response(h.invoke(event(&h, key, true), INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    assert!(!h.keys_under(CHECKPOINTS).await.is_empty());
    let after = put(&h, key, parking(36, 64 * MIB)).await;
    assert_ne!(before, after);
    let (kind, message) = error(h.invoke(first["continue"].clone(), INVOCATION).await);
    eprintln!("source changed between invocations: {kind}: {message}");
    assert!(message.contains(key), "{kind}: {message}");
    for key in [
        "clean/changed.csv.gz",
        "clean/changed.csv.gz.manifest.json",
        "quarantine/changed.ndjson",
    ] {
        h.assert_nothing_written(key).await;
    }
    h.assert_clean().await;
}

/// A deployment that changed the pipeline between two invocations: the checkpoint is refused
/// as `InvalidInput` (its rows were typed by another pipeline), both uploads are aborted and
/// nothing is left.
#[tokio::test]
async fn a_pipeline_changed_between_invocations_is_refused_and_leaves_nothing() {
    let b = LambdaBox::create("sluice-trc-redeploy");
    let mut pipeline = parking_pipeline(
        json!({"format": "ndjson", "key": "clean/{source_stem}.ndjson"}),
        1,
    );
    pipeline["tuning"]["max_invocation_secs"] = json!(2);
    let mut h = start("trc-redeploy", &b, &pipeline).await;
    let key = "incoming/redeployed.csv";
    put(&h, key, parking(41, 64 * MIB)).await;
    let first = response(h.invoke(event(&h, key, true), INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    let open = uploads_in_progress(&h.server.client().await, &h.bucket).await;
    assert!(!open.is_empty(), "no upload open after 2 s: {first}");
    // `Vehicle Year` typed as a string from now on.
    let mut changed = pipeline.clone();
    changed["input"]["schema"][5]["type"] = json!("string");
    h.restart_with("PIPELINE", &changed.to_string());
    let (kind, message) = error(h.invoke(first["continue"].clone(), INVOCATION).await);
    eprintln!("pipeline changed between invocations: {kind}: {message}");
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(message.contains("another pipeline"), "{message}");
    for key in [
        "clean/redeployed.ndjson",
        "clean/redeployed.ndjson.manifest.json",
        "quarantine/redeployed.ndjson",
    ] {
        h.assert_nothing_written(key).await;
    }
    h.assert_clean().await;
}

/// One Parquet file cannot continue (its footer indexes every row group): a `continuable`
/// event for it runs in one invocation, however short `max_invocation_secs` is, and says
/// nothing about continuing. (A partitioned Parquet output continues in its next `{part}`:
/// `partitioned.rs`.)
#[tokio::test]
async fn a_parquet_output_runs_in_one_invocation_even_when_continuable() {
    let b = LambdaBox::create("sluice-trc-parquet");
    let pipeline = parking_pipeline(
        json!({"format": "parquet", "key": "clean/{source_stem}.parquet"}),
        1,
    );
    let h = start("trc-parquet", &b, &pipeline).await;
    let key = "incoming/columnar.csv";
    put(&h, key, parking(43, 48 * MIB)).await;
    let answer = response(h.invoke(event(&h, key, true), ONE_SHOT).await);
    assert!(answer.get("status").is_none(), "{answer}");
    let s = one(&answer);
    assert_eq!(s["status"], "written", "{answer}");
    assert!(s.get("invocations").is_none(), "{answer}");
    assert!(h.keys_under("_sluice/").await.is_empty());
    assert!(s["duration_ms"].as_u64().unwrap() > 1000, "{s}");
}

/// The abort event the state machine sends after a failure gives the job up: its uploads
/// (output and quarantine) aborted, its checkpoint deleted; sent again, it finds nothing.
#[tokio::test]
async fn an_abort_event_gives_a_transform_up_and_leaves_nothing() {
    let b = LambdaBox::create("sluice-trc-abort");
    let mut pipeline = parking_pipeline(
        json!({"format": "ndjson", "key": "clean/{source_stem}.ndjson"}),
        1,
    );
    // Two seconds: enough for the output and the quarantine to have parts uploaded.
    pipeline["tuning"]["max_invocation_secs"] = json!(2);
    let h = start("trc-abort", &b, &pipeline).await;
    let key = "incoming/given-up.csv";
    put(&h, key, parking(39, 64 * MIB)).await;
    let first = response(h.invoke(event(&h, key, true), INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    let client = h.server.client().await;
    let open = uploads_in_progress(&client, &h.bucket).await;
    eprintln!("uploads open at the stop: {open:?}");
    assert!(!open.is_empty(), "no upload open after 2 s: {first}");
    assert!(!h.keys_under(CHECKPOINTS).await.is_empty());
    let abort = json!({"abort": first["continue"]});
    let answer = response(h.invoke(abort.clone(), INVOCATION).await);
    assert_eq!(answer["status"], "aborted", "{answer}");
    for key in [
        "clean/given-up.ndjson",
        "clean/given-up.ndjson.manifest.json",
        "quarantine/given-up.ndjson",
    ] {
        h.assert_nothing_written(key).await;
    }
    h.assert_clean().await;
    let again = response(h.invoke(abort, INVOCATION).await);
    assert_eq!(again["status"], "gone", "{again}");
}

/// An invocation killed (SIGKILL) after it wrote a periodic checkpoint of its own, then
/// retried with the same `continue` event, resumes from that checkpoint (in a gzip member
/// before it) and ends with the output and quarantine of one invocation.
#[tokio::test]
async fn a_killed_invocation_retried_with_the_same_event_gives_the_same_output() {
    let b = LambdaBox::create("sluice-trc-killed");
    let mut pipeline = parking_pipeline(
        json!({"format": "ndjson", "key": "clean/{source_stem}.ndjson"}),
        1,
    );
    pipeline["tuning"]["max_invocation_secs"] = json!(3);
    let mut h = start("trc-killed", &b, &pipeline).await;
    let key = "incoming/killed.csv.gz";
    put(&h, key, gzip_members(&parking(37, 96 * MIB), 4 * MIB)).await;
    let first = response(h.invoke(event(&h, key, true), INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    let event = first["continue"].clone();
    let doc_key = event["checkpoint"]["key"].as_str().unwrap().to_owned();
    let client = h.server.client().await;
    let saved_then = read_object(&client, &h.bucket, &doc_key).await;

    // The retry: kill the function once it has saved a checkpoint of its own.
    let pid = h.process.pid();
    let killer = async {
        let until = Instant::now() + INVOCATION;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if read_object(&client, &h.bucket, &doc_key).await != saved_then {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
                return true;
            }
        }
        false
    };
    let (killed, did_kill) = tokio::join!(h.api.invoke(event.clone(), INVOCATION), killer);
    let answered = |i: &anyhow::Result<Invocation>| match i {
        Ok(Invocation::Response(v)) => v.to_string(),
        Ok(Invocation::Error { error_message, .. }) => error_message.clone(),
        Err(e) => e.to_string(),
    };
    assert!(
        did_kill,
        "the invocation saved no checkpoint: {}",
        answered(&killed)
    );
    assert!(
        killed.is_err(),
        "the killed invocation answered: {}",
        answered(&killed)
    );
    let saved: Value = serde_json::from_slice(&saved_then).unwrap();
    let at_kill: Value = serde_json::from_slice(&read_object(&client, &h.bucket, &doc_key).await)
        .expect("the checkpoint survives the kill");
    eprintln!(
        "killed after save {} (the event was written at save {})",
        at_kill["saves"], saved["saves"]
    );

    h.restart();
    b.reset_peak();
    // Before the retry: the first invocation and the killed one.
    let continued = run_continued(&h, event, Decode::None, 2, 200).await;
    h.assert_clean().await;
    forget(&h, &continued.summary).await;
    let one_shot = run_one_shot(&h, key, Decode::None).await;
    assert_same("killed and retried", &continued, &one_shot);
    h.assert_clean().await;
    eprintln!(
        "CONTINUE transform killed and retried: {} rows, {} quarantined; {} invocations after \
         the kill, {:.1} s (one-shot {:.1} s)",
        continued.summary["records_in"],
        continued.summary["quarantined"],
        continued.invocations(),
        continued.secs,
        one_shot.secs
    );
}

/// The contract: the 2 GiB parking CSV (`SLUICE_TRANSFORM_CONT_GIB`) as independent gzip
/// members of 8 MiB (pigz `--independent`, bgzip), through the seed pipeline in 10 s
/// invocations in the Lambda box: at least 5 invocations, the output the independent
/// computation expects (and so what one invocation writes), every bad row quarantined once,
/// nothing left; then (outside CI) the same object in one invocation, for the time it takes.
#[tokio::test]
async fn two_gib_multi_member_gzip_csv_continues_in_the_256_mb_box() {
    let gib: f64 = std::env::var("SLUICE_TRANSFORM_CONT_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let size = (gib * GIB as f64) as u64;
    let seed = 2028;
    let b = LambdaBox::create("sluice-trc-big");
    let mut pipeline: Value = serde_json::from_str(SEED_PIPELINE).unwrap();
    pipeline["tuning"] = json!({"max_invocation_secs": 10});
    let h = start("trc-big", &b, &pipeline).await;
    let key = "incoming/parking-cont.csv.gz";

    // The expected output, computed from the generator's rows while the source uploads.
    let want = tokio::task::spawn_blocking(move || expected_seed_output_of_size(seed, size));
    // Generate and upload the source, streaming: generator -> gzip members -> multipart upload.
    let started = Instant::now();
    let client = h.server.client().await;
    let mut source = GzipMembers::new(
        ParkingCsv::new(seed, size),
        8 * MIB,
        flate2::Compression::fast(),
    );
    let target = S3Target::new(client.clone(), &h.bucket, key);
    let options = UploadOptions::new(sluice::MemoryBudget::for_memory_mib(1024).schedule());
    let uploaded = sink::upload(Arc::new(target), &mut source, &options, |e| {
        sluice::Error::Encode {
            codec: "gzip",
            offset: 0,
            source: e,
        }
    })
    .await
    .unwrap();
    let members = source.members();
    let csv_bytes = source.get_ref().bytes_written();
    eprintln!(
        "TRANSFORM CONTINUATION SOURCE: {gib} GiB CSV ({csv_bytes} bytes) -> {members} gzip \
         members, {:.1} MiB, uploaded in {:.1} s",
        uploaded.bytes as f64 / MIB as f64,
        started.elapsed().as_secs_f64()
    );
    let want = want.await.unwrap();
    assert_eq!(source.get_ref().rows(), want.rows_in);

    b.reset_peak();
    let continued = run_continued(&h, event(&h, key, true), Decode::Gzip, 0, 400).await;
    let peak = b.peak_mib();
    // Everything is checked, printed, and then asserted, so that one wrong figure does not
    // hide the others (nor the timings).
    let s = &continued.summary;
    let mut wrong = Vec::new();
    for (count, want) in [
        ("records_in", want.rows_in),
        ("records_out", want.rows_out),
        ("quarantined", want.quarantined),
    ] {
        if s[count].as_u64() != Some(want) {
            wrong.push(format!("{count} {} (expected {want})", s[count]));
        }
    }
    let got = (crc64(&continued.output), continued.output.len() as u64);
    if got != (want.crc, want.len) {
        wrong.push(format!(
            "output crc64nvme/length {got:?}, expected {:?}",
            (want.crc, want.len)
        ));
    }
    let quarantined = continued
        .quarantine
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64;
    if quarantined != want.quarantined {
        wrong.push(format!(
            "{quarantined} quarantine lines, expected {}",
            want.quarantined
        ));
    }
    let left = h.keys_under("_sluice/").await;
    let open = uploads_in_progress(&client, &h.bucket).await;
    if !left.is_empty() || !open.is_empty() {
        wrong.push(format!("left behind: {left:?}, uploads {open:?}"));
    }
    eprintln!(
        "TRANSFORM CONTINUATION: {gib} GiB multi-member gzip CSV ({members} members of 8 MiB, \
         {} rows; {} out, {} quarantined) through the seed pipeline with max_invocation_secs 10 \
         in {} invocations, {:.1} s total = {:.1} MiB/s; {} bytes decoded; cgroup peak {}, \
         VmHWM {:.1} MiB",
        want.rows_in,
        want.rows_out,
        want.quarantined,
        continued.invocations(),
        continued.secs,
        csv_bytes as f64 / MIB as f64 / continued.secs,
        s["bytes_decoded"],
        peak_text(peak),
        s["peak_rss_bytes"].as_f64().unwrap_or(0.0) / MIB as f64,
    );

    // The same object in one invocation, for the time comparison (and a second check of
    // the output). CI skips it: the independent computation above already fixes every byte
    // of the output, and the one-shot 2 GiB transform has its own contract in transform_s3.
    let mut one_summary = Value::Null;
    if std::env::var_os("CI").is_none() {
        forget(&h, s).await;
        b.reset_peak();
        let one_shot = run_one_shot(&h, key, Decode::Gzip).await;
        let one_peak = b.peak_mib();
        eprintln!(
            "TRANSFORM ONE-SHOT: the same object in one invocation in {:.1} s = {:.1} MiB/s; \
             the continued run took {:.2}x; cgroup peak {}",
            one_shot.secs,
            csv_bytes as f64 / MIB as f64 / one_shot.secs,
            continued.secs / one_shot.secs,
            peak_text(one_peak),
        );
        wrong.extend(
            differences(&continued, &one_shot)
                .into_iter()
                .map(|d| format!("against the one-shot run: {d}")),
        );
        one_summary = one_shot.summary;
    }
    assert!(
        wrong.is_empty(),
        "the continued run is wrong:\n- {}\ncontinued: {}\none-shot:  {}",
        wrong.join("\n- "),
        continued.summary,
        one_summary
    );
    h.assert_clean().await;
    if size >= 2 * GIB {
        assert!(
            continued.invocations() >= 5,
            "{size} bytes took only {} invocations of 10 s",
            continued.invocations()
        );
    }
    if let Some(peak) = peak {
        assert!(peak <= 128.0, "cgroup peak {peak:.1} MiB is over 128 MiB");
    }
}
