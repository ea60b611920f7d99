//! Keyset exports longer than one invocation, through the built `export-postgres` bootstrap
//! in the Lambda box (256 MiB memory cgroup, 256/1769 of a vCPU) against a throwaway Postgres
//! and Garage: the export stops where its `resume_key` changes, answers `continue`, and the
//! next invocation (sent the `continue` value) exports the rows after the last key written.
//!
//! Build the binary first: `cargo build --release -p export-postgres` (`make test` does).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::harness::{Decode, Harness, LambdaBox, error, response};
use sluice_tests::postgres::PgServer;

/// Rows of the test table: about 120 MB of CSV, several seconds in the box.
const ROWS: u64 = 1_000_000;
/// Rows per key: keys are shared, so a boundary must never split them.
const PER_KEY: u64 = 3;
/// A continued invocation's timeout.
const INVOCATION: Duration = Duration::from_secs(10);
/// The one-shot run's timeout.
const ONE_SHOT: Duration = Duration::from_secs(300);

/// `keyed`: `id` unique, `k` text with a comma (so CSV quotes it) shared by [`PER_KEY`] rows,
/// `n` the same key as a bigint, `note` text with quotes and commas; an index on each key.
async fn keyed_table(pg: &PgServer) {
    let client = pg.client().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE keyed AS SELECT i AS id, \
               format('g,%s', lpad((i / {PER_KEY})::text, 8, '0')) AS k, \
               (i / {PER_KEY})::bigint AS n, \
               repeat(md5(i::text), 2) || ' \"q\", c' AS note, \
               (i * 7 % 1000)::numeric / 100 AS amount \
             FROM generate_series(1, {ROWS}) AS i; \
             CREATE INDEX ON keyed (k); CREATE INDEX ON keyed (n); ANALYZE keyed;"
        ))
        .await
        .unwrap();
}

async fn export_harness(label: &str, b: &LambdaBox, pg: &PgServer) -> Harness {
    let url = pg.admin_url();
    Harness::start_in(
        "export-postgres",
        label,
        &b.procs(),
        &[("DATABASE_URL", &url)],
    )
    .await
}

fn export_job(h: &Harness, format: &str, compression: &str, key: &str, resume_key: &str) -> Value {
    json!({
        "source": {"postgres": {"query": "SELECT id, k, n, note, amount FROM keyed",
                                "resume_key": resume_key}},
        "format": format,
        "compression": compression,
        "destination": {"bucket": h.bucket, "key": key},
    })
}

/// The CSV records' `(id, k)`, in order, after checking the header is the first line only.
fn csv_ids(text: &[u8]) -> Vec<(u64, String)> {
    let mut reader = csv::Reader::from_reader(text);
    assert_eq!(
        reader.headers().unwrap(),
        vec!["id", "k", "n", "note", "amount"]
    );
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].parse().unwrap(), r[1].to_owned())
        })
        .collect()
}

/// The NDJSON records' `(id, n)`, in order.
fn ndjson_ids(text: &[u8]) -> Vec<(u64, String)> {
    text.split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_slice(l).unwrap();
            (v["id"].as_u64().unwrap(), v["n"].to_string())
        })
        .collect()
}

/// Checks rows read back: every id once, keys in non-decreasing order (by `order`).
fn check_rows(rows: &[(u64, String)], what: &str) {
    assert_eq!(rows.len() as u64, ROWS, "{what}: rows");
    let mut seen = BTreeMap::new();
    for (id, _) in rows {
        *seen.entry(*id).or_insert(0) += 1;
    }
    assert_eq!(seen.len() as u64, ROWS, "{what}: distinct ids");
    assert!(seen.values().all(|&c| c == 1), "{what}: an id twice");
}

/// Sorted lines: the same rows whatever the order inside one key.
fn sorted_lines(text: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = text.split(|&c| c == b'\n').collect();
    lines.sort_unstable();
    lines
}

/// Runs one format's keyset export continued in 1 s invocations and in one invocation, and
/// compares them.
async fn continues_like_one_shot(
    h: &Harness,
    b: &LambdaBox,
    format: &str,
    compression: &str,
    resume_key: &str,
    tuning: Value,
) {
    let decode = match compression {
        "gzip" => Decode::Gzip,
        _ => Decode::Zstd,
    };
    let key = format!("continued/{{run_id}}.{format}");
    let mut job = export_job(h, format, compression, &key, resume_key);
    job["tuning"] = tuning;
    let started = std::time::Instant::now();
    let answers = h.run_to_end(job, INVOCATION, 100).await;
    let secs = started.elapsed().as_secs_f64();
    let last = answers.last().unwrap();
    for a in &answers[..answers.len() - 1] {
        assert_eq!(a["status"], "continue", "{format}: {a}");
        let cp = a["continue"]["checkpoint"]["key"].as_str().unwrap();
        assert!(
            cp.starts_with("_sluice/checkpoints/export-postgres/"),
            "{a}"
        );
    }
    assert!(
        answers.len() >= 3,
        "{format}: {} invocations of 1 s: {last}",
        answers.len()
    );
    assert_eq!(last["status"], "written", "{format}: {last}");
    assert_eq!(last["rows"], ROWS, "{format}: {last}");
    assert_eq!(last["invocations"], answers.len(), "{format}: {last}");
    let continued = h.decoded(last["key"].as_str().unwrap(), decode).await;

    let once = export_job(h, format, compression, "one-shot/x", resume_key);
    let one = response(h.invoke(once, ONE_SHOT).await);
    assert_eq!(one["status"], "written", "{one}");
    assert!(one.get("invocations").is_none(), "{one}");
    let whole = h.decoded("one-shot/x", decode).await;

    let rows = match format {
        "csv" => csv_ids(&continued),
        _ => ndjson_ids(&continued),
    };
    check_rows(&rows, format);
    if resume_key == "n" {
        let keys: Vec<i64> = rows.iter().map(|(_, n)| n.parse().unwrap()).collect();
        assert!(keys.is_sorted(), "{format}: rows out of key order");
    } else {
        assert!(
            rows.is_sorted_by(|a, b| a.1 <= b.1),
            "{format}: rows out of key order"
        );
    }
    assert!(
        sorted_lines(&continued) == sorted_lines(&whole),
        "{format}: the continued object's rows differ from the one-shot object's ({} and {} bytes)",
        continued.len(),
        whole.len()
    );
    assert_eq!(last["bytes_in"], one["bytes_in"], "{format}: {last} {one}");
    h.assert_clean().await;
    let peak = b.peak_mib();
    eprintln!(
        "CONTINUE export {format}+{compression}: {ROWS} rows, {:.1} MiB, in {} invocations, \
         {secs:.1} s (one-shot {:.1} s); cgroup peak {}",
        last["bytes_in"].as_f64().unwrap() / (1024.0 * 1024.0),
        answers.len(),
        one["duration_ms"].as_f64().unwrap() / 1000.0,
        peak.map_or("not measured".into(), |p| format!("{p:.1} MiB")),
    );
    if let Some(peak) = peak {
        assert!(peak <= 128.0, "cgroup peak {peak:.1} MiB is over 128 MiB");
    }
}

/// CSV (gzip, a text key CSV quotes) and NDJSON (zstd, a bigint key, a checkpoint after
/// every part) continue at key boundaries: every row once, in key order, the same rows as one invocation writes, no CSV
/// header but the first, nothing left under `_sluice/`.
#[tokio::test]
async fn a_keyset_export_continues_at_key_boundaries_and_matches_one_invocation() {
    let pg = PgServer::start().unwrap();
    keyed_table(&pg).await;
    let b = LambdaBox::create("sluice-export-continue");
    let h = export_harness("export-continue", &b, &pg).await;
    let tuning = json!({"max_invocation_secs": 1});
    continues_like_one_shot(&h, &b, "csv", "gzip", "k", tuning).await;
    // A checkpoint after every part too: the writer resumes and reads on from the same
    // statement between the stops.
    let tuning = json!({"max_invocation_secs": 1, "checkpoint_every_parts": 1});
    continues_like_one_shot(&h, &b, "ndjson", "zstd", "n", tuning).await;
}

/// What a keyset export refuses, before anything is written: a key that is not a result
/// column, a key of a type whose equal values may print differently, Parquet into one file. A NULL key met
/// in a later invocation fails the export there, and its upload and checkpoint are gone.
#[tokio::test]
async fn a_keyset_export_refuses_bad_keys_and_a_null_key_fails_it_leaving_nothing() {
    let pg = PgServer::start().unwrap();
    keyed_table(&pg).await;
    let b = LambdaBox::create("sluice-export-keys");
    let h = export_harness("export-keys", &b, &pg).await;
    let refused = [
        (
            "csv",
            "nope",
            "\"nope\" is not a result column of the query (its columns: id, k, n, note, amount)",
        ),
        (
            "csv",
            "amount",
            "column \"amount\" is numeric; a resume key must be one of",
        ),
        (
            "parquet",
            "n",
            "a keyset export to Parquet continues by completing its file and writing the next {part}",
        ),
    ];
    for (format, resume_key, expected) in refused {
        let compression = if format == "parquet" { "zstd" } else { "gzip" };
        let job = export_job(&h, format, compression, "refused", resume_key);
        let (kind, message) = error(h.invoke(job, INVOCATION).await);
        assert_eq!(kind, "InvalidInput", "{message}");
        assert!(message.contains(expected), "{resume_key}: {message}");
        h.assert_nothing_written("refused").await;
    }

    // NULL keys sort last: the export continues until it meets one.
    let mut job = export_job(&h, "csv", "gzip", "nulls.csv.gz", "k");
    job["source"]["postgres"]["query"] =
        json!("SELECT id, k, n, note, amount FROM keyed UNION ALL SELECT 0, NULL, 0, 'x', 0");
    job["tuning"] = json!({"max_invocation_secs": 1});
    let mut event = job;
    let mut continued = 0;
    let (kind, message) = loop {
        match h.invoke(event, INVOCATION).await {
            sluice_tests::Invocation::Response(a) => {
                assert_eq!(a["status"], "continue", "{a}");
                continued += 1;
                event = a["continue"].clone();
            }
            failed => break error(failed),
        }
    };
    assert!(continued >= 1, "the NULL key came in the first invocation");
    // Bad data of the source, as a row over the size cap is.
    assert_eq!(kind, "Upstream", "{message}");
    assert!(
        message.contains(&format!(
            "after {ROWS} rows: resume_key column \"k\" is NULL"
        )),
        "{message}"
    );
    h.assert_nothing_written("nulls.csv.gz").await;
    h.assert_clean().await;

    // A checkpoint edited to another key than the one it stopped at is refused, and its
    // upload aborted.
    let mut job = export_job(&h, "csv", "gzip", "edited.csv.gz", "k");
    job["tuning"] = json!({"max_invocation_secs": 1});
    let first = response(h.invoke(job, INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    let doc_key = first["continue"]["checkpoint"]["key"].as_str().unwrap();
    let client = h.server.client().await;
    let read = sluice_tests::read_object(&client, &h.bucket, doc_key).await;
    let mut doc: Value = serde_json::from_slice(&read).unwrap();
    assert_eq!(doc["position"]["kind"], "keyset", "{doc}");
    doc["job"]["source"]["postgres"]["resume_key"] = json!("n");
    let body = serde_json::to_vec(&doc).unwrap();
    let put = client.put_object().bucket(&h.bucket).key(doc_key);
    put.body(body.into()).send().await.unwrap();
    let (kind, message) = error(h.invoke(first["continue"].clone(), INVOCATION).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(
        message.contains("it is for resume_key \"k\" and this export's resume_key is \"n\""),
        "{message}"
    );
    h.assert_nothing_written("edited.csv.gz").await;
    h.assert_clean().await;
}

/// An invocation killed (SIGKILL) after it saved a checkpoint of its own, then retried with
/// the same `continue` event, resumes after that checkpoint's key; the rows it exported past
/// it are exported again into the parts it had uploaded (replaced by number), and the object
/// holds every row once.
#[tokio::test]
async fn a_killed_export_retried_with_the_same_event_holds_every_row_once() {
    let pg = PgServer::start().unwrap();
    keyed_table(&pg).await;
    let b = LambdaBox::create("sluice-export-killed");
    let mut h = export_harness("export-killed", &b, &pg).await;
    // Uncompressed, so parts (and so checkpoints) come several times a second.
    let mut job = export_job(&h, "ndjson", "gzip", "killed.ndjson", "n");
    job.as_object_mut().unwrap().remove("compression");
    job["tuning"] = json!({"max_invocation_secs": 3, "checkpoint_every_parts": 1});
    let first = response(h.invoke(job, INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    let event = first["continue"].clone();
    let doc_key = event["checkpoint"]["key"].as_str().unwrap().to_owned();
    let client = h.server.client().await;
    let saves = |doc: Vec<u8>| serde_json::from_slice::<Value>(&doc).unwrap()["saves"].clone();
    let saved_then = saves(sluice_tests::read_object(&client, &h.bucket, &doc_key).await);

    let pid = h.process.pid();
    let killer = async {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let doc = sluice_tests::read_object(&client, &h.bucket, &doc_key).await;
            if saves(doc) != saved_then {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
                return;
            }
        }
    };
    let (killed, ()) = tokio::join!(h.api.invoke(event.clone(), INVOCATION), killer);
    assert!(killed.is_err(), "the killed invocation answered");
    let at_kill: Value =
        serde_json::from_slice(&sluice_tests::read_object(&client, &h.bucket, &doc_key).await)
            .expect("the checkpoint survives the kill");
    assert_eq!(at_kill["position"]["kind"], "keyset", "{at_kill}");

    h.restart();
    let answers = h.run_to_end(event, INVOCATION, 100).await;
    let last = answers.last().unwrap();
    assert_eq!(last["status"], "written", "{last}");
    assert_eq!(last["rows"], ROWS, "{last}");
    // The first invocation and the killed one came before these.
    assert_eq!(last["invocations"], answers.len() + 2, "{last}");
    let rows = ndjson_ids(&h.decoded("killed.ndjson", Decode::None).await);
    check_rows(&rows, "killed");
    h.assert_clean().await;
}

/// Downloads every object under `prefix` into a fresh directory, keeping their keys.
async fn download(h: &Harness, prefix: &str, label: &str) -> (std::path::PathBuf, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("sluice-pxc-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let client = h.server.client().await;
    let keys = h.keys_under(prefix).await;
    for key in &keys {
        let path = dir.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let body = sluice_tests::read_object(&client, &h.bucket, key).await;
        std::fs::write(&path, body).unwrap();
    }
    (dir, keys)
}

/// A partitioned keyset export's answers, run to its end in 1 s invocations: at least
/// three, each stop listing more completed objects, the last `written` with every row and
/// a manifest naming exactly the objects under `prefix`.
async fn partitioned_to_end(h: &Harness, job: Value, prefix: &str) -> (Vec<Value>, Vec<String>) {
    let answers = h.run_to_end(job, INVOCATION, 200).await;
    let last = answers.last().unwrap().clone();
    assert!(answers.len() >= 3, "{} invocations: {last}", answers.len());
    let mut objects = 0;
    for a in &answers[..answers.len() - 1] {
        assert_eq!(a["status"], "continue", "{a}");
        let now = a["partitioned"]["objects"].as_u64().unwrap();
        assert!(now > objects, "a stop completed no object: {a}");
        objects = now;
    }
    assert_eq!(last["status"], "written", "{last}");
    assert_eq!(last["rows"], ROWS, "{last}");
    assert_eq!(last["invocations"], answers.len(), "{last}");
    let manifest = last["manifest"].as_str().unwrap();
    let stored = h.objects_of_manifest(manifest, prefix).await;
    assert_eq!(last["partitioned"]["objects"], stored.len(), "{last}");
    h.assert_clean().await;
    (answers, stored)
}

/// A keyset export to Parquet, partitioned, continues by completing every open file at each
/// stop and writing each partition's next `{part}` in the next invocation (the key is a
/// bigint, tracked in the binary rows); partitioned CSV keeps its header in every object
/// across stops. DuckDB reads every row once, each under its partition; nothing is left.
#[tokio::test]
async fn a_partitioned_parquet_export_continues_into_the_next_parts() {
    let pg = PgServer::start().unwrap();
    keyed_table(&pg).await;
    let b = LambdaBox::create("sluice-export-parts");
    let h = export_harness("export-parts", &b, &pg).await;
    let query = "SELECT id, k, n, note, amount, id % 4 AS b FROM keyed";
    let parquet: Value = json!({
        "source": {"postgres": {"query": query, "resume_key": "n"}},
        "format": "parquet", "compression": "zstd",
        "destination": {"bucket": h.bucket,
                        "key": "pq/b={field:b}/{run_id}-{part}.parquet"},
        "tuning": {"max_invocation_secs": 1},
    });
    let started = std::time::Instant::now();
    let (answers, keys) = partitioned_to_end(&h, parquet.clone(), "pq/").await;
    let secs = started.elapsed().as_secs_f64();
    // Four partitions, one file each per stretch between two stops.
    assert!(keys.len() >= 4 * answers.len().min(3), "{keys:?}");
    let (dir, _) = download(&h, "pq/", "parquet").await;
    let got = sluice_tests::lake::duckdb_sql(&format!(
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, sum(CAST(amount AS DOUBLE)) AS amount, \
           bool_and(id % 4 = b) AS placed, count(DISTINCT b) AS parts \
         FROM read_parquet('{}/pq/*/*.parquet', hive_partitioning = true)",
        dir.display()
    ));
    let client = pg.client().await.unwrap();
    let want = client
        .query_one("SELECT sum(amount)::float8 FROM keyed", &[])
        .await
        .unwrap();
    let row = &got[0];
    assert_eq!(row["n"], ROWS, "{got}");
    assert_eq!(row["ids"], ROWS, "{got}");
    assert_eq!(row["placed"], true, "{got}");
    assert_eq!(row["parts"], 4, "{got}");
    let amount = row["amount"].as_f64().unwrap();
    assert!((amount - want.get::<_, f64>(0)).abs() < 0.5, "{got}");
    let _ = std::fs::remove_dir_all(&dir);
    let peak = b.peak_mib();
    // The same export in one invocation: one file per partition, the same rows.
    let mut once = parquet.clone();
    once["destination"]["key"] = json!("pq1/b={field:b}/{run_id}-{part}.parquet");
    once["tuning"] = json!({});
    let one = response(h.invoke(once, ONE_SHOT).await);
    assert_eq!(one["status"], "written", "{one}");
    assert_eq!(one["partitioned"]["objects"], 4, "{one}");
    assert_eq!(one["rows"], ROWS, "{one}");
    // Every statement after the first sends the 19-byte binary COPY header again.
    let statements = answers.len() as u64;
    assert_eq!(
        answers.last().unwrap()["bytes_in"].as_u64().unwrap(),
        one["bytes_in"].as_u64().unwrap() + 19 * (statements - 1),
        "the binary COPY bytes of the invocations add up to one statement's"
    );
    eprintln!(
        "CONTINUE export parquet, 4 partitions: {ROWS} rows in {} invocations, {} files, \
         {secs:.1} s (one-shot {:.1} s, 4 files); cgroup peak {}",
        answers.len(),
        keys.len(),
        one["duration_ms"].as_f64().unwrap() / 1000.0,
        peak.map_or("not measured".into(), |p| format!("{p:.1} MiB")),
    );
    if let Some(peak) = peak {
        assert!(peak <= 128.0, "cgroup peak {peak:.1} MiB is over 128 MiB");
    }

    // CSV by a text key with a comma: the header leads every object, later invocations'
    // too (their statements send none).
    let csv = json!({
        "source": {"postgres": {"query": query, "resume_key": "k"}},
        "format": "csv", "compression": "gzip",
        "destination": {"bucket": h.bucket, "key": "pc/{run_id}-{part}.csv.gz",
                        "max_object_mib": 16},
        "tuning": {"max_invocation_secs": 1},
    });
    let (_, keys) = partitioned_to_end(&h, csv, "pc/").await;
    let mut rows = Vec::new();
    for key in &keys {
        let text = h.decoded(key, Decode::Gzip).await;
        let mut reader = csv::Reader::from_reader(text.as_slice());
        assert_eq!(
            reader.headers().unwrap(),
            vec!["id", "k", "n", "note", "amount", "b"],
            "{key}"
        );
        for r in reader.records() {
            let r = r.unwrap();
            rows.push((r[0].parse::<u64>().unwrap(), r[1].to_owned()));
        }
    }
    check_rows(&rows, "partitioned csv");
}

/// The abort event gives a partitioned export up after a stop: the files it completed are
/// deleted with its checkpoint; sent again, it finds nothing.
#[tokio::test]
async fn an_abort_event_deletes_a_partitioned_exports_completed_files() {
    let pg = PgServer::start().unwrap();
    keyed_table(&pg).await;
    let b = LambdaBox::create("sluice-export-parts-abort");
    let h = export_harness("export-parts-abort", &b, &pg).await;
    let job = json!({
        "source": {"postgres": {"query": "SELECT id, k, n, note, amount FROM keyed",
                                "resume_key": "id"}},
        "format": "parquet",
        "destination": {"bucket": h.bucket, "key": "pa/{run_id}-{part}.parquet",
                        "max_object_mib": 8},
        "tuning": {"max_invocation_secs": 1},
    });
    let first = response(h.invoke(job, INVOCATION).await);
    assert_eq!(first["status"], "continue", "{first}");
    let done = h.keys_under("pa/").await;
    assert!(!done.is_empty(), "the stop completed no file: {first}");
    let abort = json!({"abort": first["continue"]});
    let answer = response(h.invoke(abort.clone(), INVOCATION).await);
    assert_eq!(answer["status"], "aborted", "{answer}");
    assert!(
        h.keys_under("pa/").await.is_empty(),
        "files left after the abort"
    );
    h.assert_clean().await;
    let again = response(h.invoke(abort, INVOCATION).await);
    assert_eq!(again["status"], "gone", "{again}");
}
