//! The built `export-postgres` bootstrap, driven through the Lambda Runtime API emulator
//! against a throwaway Postgres (Debian's `postgresql`, started by the test) and Garage.
//!
//! Build the binary first: `cargo build --release -p export-postgres` (`make test` does).
//! Needs the local stack (`scripts/stack.sh up`) for Garage and moto.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use futures::StreamExt as _;
use serde_json::{Value, json};
use sluice::secret::{Secret, SecretRef};
use sluice::source::postgres::{self as pg, ConnectionSettings, SslMode};
use sluice_tests::postgres::{PgServer, wait_until};
use sluice_tests::{
    Invocation, LambdaProcess, MemoryCgroup, RuntimeApi, S3Server, binary_path, object_exists,
    object_stream, read_object, uploads_in_progress,
};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

const MIB: u64 = 1024 * 1024;

/// One function instance with its own Runtime API and a fresh Garage bucket.
struct Harness {
    api: RuntimeApi,
    _process: LambdaProcess,
    server: S3Server,
    bucket: String,
}

impl Harness {
    async fn start(label: &str, env: &[(&str, String)], cgroup: Option<&MemoryCgroup>) -> Harness {
        Self::start_binary(label, &binary_path("export-postgres"), env, cgroup).await
    }

    async fn start_binary(
        label: &str,
        binary: &std::path::Path,
        env: &[(&str, String)],
        cgroup: Option<&MemoryCgroup>,
    ) -> Harness {
        let server = S3Server::garage();
        let bucket = server.fresh_bucket(label).await.unwrap();
        let api = RuntimeApi::start().await;
        let mut all = server.lambda_env();
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let process = LambdaProcess::spawn(binary, &api, &all, 256, cgroup).unwrap();
        Harness {
            api,
            _process: process,
            server,
            bucket,
        }
    }

    fn job(&self, query: &str, format: &str, key: &str) -> Value {
        json!({
            "source": {"postgres": {"query": query}},
            "format": format,
            "destination": {"bucket": self.bucket, "key": key}
        })
    }

    async fn invoke(&self, event: Value, timeout: Duration) -> Invocation {
        self.api.invoke(event, timeout).await.unwrap()
    }

    async fn assert_nothing_written(&self, key: &str) {
        let client = self.server.client().await;
        assert!(
            !object_exists(&client, &self.bucket, key).await,
            "object {key} exists"
        );
        let open = uploads_in_progress(&client, &self.bucket).await;
        assert!(open.is_empty(), "uploads left in progress: {open:?}");
    }

    async fn object_reader(
        &self,
        key: &str,
        codec: Option<&str>,
    ) -> Box<dyn AsyncRead + Send + Unpin> {
        let client = self.server.client().await;
        let raw =
            BufReader::with_capacity(1 << 20, object_stream(&client, &self.bucket, key).await);
        match codec {
            None => Box::new(raw),
            Some("gzip") => Box::new(GzipDecoder::new(raw)),
            Some("zstd") => Box::new(ZstdDecoder::new(raw)),
            Some(other) => panic!("codec {other}"),
        }
    }

    async fn object_text(&self, key: &str) -> String {
        let client = self.server.client().await;
        String::from_utf8(read_object(&client, &self.bucket, key).await).unwrap()
    }
}

fn response(inv: Invocation) -> Value {
    match inv {
        Invocation::Response(v) => v,
        Invocation::Error {
            error_type,
            error_message,
        } => panic!("function failed: {error_type}: {error_message}"),
    }
}

fn error(inv: Invocation) -> (String, String) {
    match inv {
        Invocation::Error {
            error_type,
            error_message,
        } => (error_type, error_message),
        Invocation::Response(v) => panic!("expected an error, got {v}"),
    }
}

/// A table of `rows` rows of mixed types: integers, numeric, float, text with quotes, commas
/// and newlines, empty strings and NULLs, timestamptz, date, boolean, jsonb, arrays.
async fn create_mixed(pg: &PgServer, rows: u64) {
    let client = pg.client().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE mixed (
                id bigint, qty integer, amount numeric(14,2), ratio double precision,
                label text, note text, happened_at timestamptz, day date, flag boolean,
                doc jsonb, tags text[], nums integer[]);
             INSERT INTO mixed
             SELECT i,
                    (i % 1000)::int - 500,
                    round(((i::bigint * 7919) % 10000000)::numeric / 100 - 20000, 2),
                    i / 7.0,
                    'label-' || (i % 97),
                    CASE i % 5 WHEN 0 THEN NULL WHEN 1 THEN ''
                                WHEN 2 THEN 'say \"hi\", ' || i ELSE E'two\\nlines ' || i END,
                    timestamptz '2024-01-01 00:00:00+00' + i * interval '1.5 seconds',
                    date '2024-01-01' + (i % 3650)::int,
                    CASE WHEN i % 3 = 0 THEN NULL ELSE i % 2 = 0 END,
                    jsonb_build_object('k', i, 's', 'v' || (i % 100), 'nested', jsonb_build_array(i % 7, 'x')),
                    ARRAY['a' || (i % 10), NULL, 'b,c'],
                    CASE WHEN i % 11 = 0 THEN NULL ELSE ARRAY[i % 100, -(i % 50)] END
             FROM generate_series(1, {rows}) AS i;
             ANALYZE mixed;"
        ))
        .await
        .unwrap();
}

/// `-123.45` → `-12345` (hundredths), exactly.
fn cents(text: &str) -> i128 {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let frac = format!("{frac:0<2}");
    let v: i128 = whole.parse::<i128>().unwrap() * 100 + frac[..2].parse::<i128>().unwrap();
    if neg { -v } else { v }
}

/// Rows, sum of `amount` (hundredths) and sum of `qty` in a CSV export of `mixed`.
async fn csv_totals(reader: Box<dyn AsyncRead + Send + Unpin>) -> (u64, i128, i64, Vec<String>) {
    tokio::task::spawn_blocking(move || {
        let bridge = tokio_util::io::SyncIoBridge::new(reader);
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(bridge);
        let headers: Vec<String> = csv.headers().unwrap().iter().map(str::to_owned).collect();
        let amount = headers.iter().position(|h| h == "amount").unwrap();
        let qty = headers.iter().position(|h| h == "qty").unwrap();
        let (mut rows, mut sum, mut qty_sum) = (0u64, 0i128, 0i64);
        let mut record = csv::StringRecord::new();
        while csv.read_record(&mut record).unwrap() {
            rows += 1;
            sum += cents(&record[amount]);
            qty_sum += record[qty].parse::<i64>().unwrap();
        }
        (rows, sum, qty_sum, headers)
    })
    .await
    .unwrap()
}

/// Rows, sum of `amount` (hundredths, from the number's own digits) and sum of `qty` in an
/// NDJSON export of `mixed`; every line must parse as a JSON object.
async fn ndjson_totals(reader: Box<dyn AsyncRead + Send + Unpin>) -> (u64, i128, i64) {
    let mut lines = BufReader::with_capacity(1 << 20, reader).lines();
    let (mut rows, mut sum, mut qty_sum) = (0u64, 0i128, 0i64);
    while let Some(line) = lines.next_line().await.unwrap() {
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        rows += 1;
        qty_sum += v["qty"].as_i64().unwrap();
        let at = line.find("\"amount\":").unwrap() + "\"amount\":".len();
        let end = at + line[at..].find([',', '}']).unwrap();
        sum += cents(&line[at..end]);
    }
    (rows, sum, qty_sum)
}

/// Rows, sum of `amount` (hundredths) and sum of `qty` of a Parquet export of `mixed`, as
/// DuckDB reads them (pyarrow must agree), from a temporary copy of the object.
async fn parquet_totals(h: &Harness, key: &str) -> (u64, i128, i64) {
    let path = std::env::temp_dir().join(format!("sluice-{}.parquet", uuid::Uuid::new_v4()));
    let mut file = tokio::fs::File::create(&path).await.unwrap();
    let mut object = h.object_reader(key, None).await;
    tokio::io::copy(&mut object, &mut file).await.unwrap();
    drop(file);
    let report = tokio::task::spawn_blocking({
        let path = path.clone();
        move || sluice_tests::lake::parquet_report(&path, &["amount", "qty"])
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&path);
    let (duck, arrow) = (&report["duckdb"], &report["pyarrow"]);
    assert_eq!(duck["rows"], arrow["rows"], "{report}");
    assert_eq!(duck["sums"], arrow["sums"], "{report}");
    let types: Vec<&str> = duck["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[1].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "BIGINT",
            "INTEGER",
            "DECIMAL(14,2)",
            "DOUBLE",
            "VARCHAR",
            "VARCHAR",
            "TIMESTAMP WITH TIME ZONE",
            "DATE",
            "BOOLEAN",
            "VARCHAR",
            "VARCHAR[]",
            "INTEGER[]"
        ],
        "{report}"
    );
    (
        duck["rows"].as_u64().unwrap(),
        cents(duck["sums"]["amount"].as_str().unwrap()),
        duck["sums"]["qty"].as_str().unwrap().parse().unwrap(),
    )
}

/// What the database holds for `mixed`: rows, sum of `amount` (hundredths), sum of `qty`.
#[derive(Debug, Clone, Copy)]
struct MixedTotals {
    rows: u64,
    cents: i128,
    qty: i64,
}

/// Exports `SELECT * FROM mixed` as `format` with `codec` to `key` through `h` (a function of
/// `memory` MB in `cgroup`, when there is one); checks the rows and sums read back against
/// `want` and that the function was not OOM-killed; prints the figures. Returns the cgroup peak
/// (the process's VmHWM without a cgroup) and the VmHWM.
async fn export_mixed(
    h: &Harness,
    cgroup: Option<&MemoryCgroup>,
    memory: u64,
    (format, codec, key): (&str, &str, &str),
    want: MixedTotals,
) -> (u64, u64) {
    if let Some(cg) = cgroup {
        cg.reset_peak();
    }
    let rows = want.rows;
    let mut job = h.job("SELECT * FROM mixed", format, key);
    job["compression"] = json!(codec);
    let started = Instant::now();
    let s = response(h.invoke(job, Duration::from_secs(900)).await);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(s["status"], "written");
    assert_eq!(s["rows"], rows, "{s}");
    assert_eq!(s["format"], format);

    let (got_rows, got_cents, got_qty) = match format {
        "parquet" => parquet_totals(h, key).await,
        "csv" => {
            let reader = h.object_reader(key, Some(codec)).await;
            let (r, c, q, headers) = csv_totals(reader).await;
            assert_eq!(
                headers,
                [
                    "id",
                    "qty",
                    "amount",
                    "ratio",
                    "label",
                    "note",
                    "happened_at",
                    "day",
                    "flag",
                    "doc",
                    "tags",
                    "nums"
                ]
            );
            (r, c, q)
        }
        _ => ndjson_totals(h.object_reader(key, Some(codec)).await).await,
    };
    assert_eq!(got_rows, rows, "{format} ({memory} MB): rows read back");
    assert_eq!(got_cents, want.cents, "{format} ({memory} MB): sum(amount)");
    assert_eq!(got_qty, want.qty, "{format} ({memory} MB): sum(qty)");

    let rss = s["peak_rss_bytes"].as_u64().unwrap();
    let peak = match cgroup {
        Some(cg) => {
            assert!(
                !cg.oom_killed(),
                "{format} ({memory} MB): the function hit the cgroup limit"
            );
            cg.peak_bytes()
        }
        None => {
            eprintln!("WARNING: no memory cgroup; falling back to the process's VmHWM");
            rss
        }
    };
    let bytes_in = s["bytes_in"].as_u64().unwrap();
    eprintln!(
        "EXPORT {format}+{codec} ({memory} MB): {rows} rows, {:.1} MiB rendered, {:.1} MiB out, in {secs:.1} s \
         = {:.0} rows/s, {:.1} MiB/s; cgroup peak {:.1} MiB; VmHWM {:.1} MiB; {} parts",
        bytes_in as f64 / MIB as f64,
        s["bytes_out"].as_u64().unwrap() as f64 / MIB as f64,
        rows as f64 / secs,
        bytes_in as f64 / MIB as f64 / secs,
        peak as f64 / MIB as f64,
        rss as f64 / MIB as f64,
        s["parts"],
    );
    (peak, rss)
}

/// The contract: 2 million rows of mixed types (`SLUICE_PG_ROWS` to change) exported as CSV
/// (gzip), NDJSON (zstd) and Parquet (zstd pages) by the real bootstrap in a 256 MB memory
/// cgroup, then as Parquet again in a 128 MB function (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128`,
/// a 128 MiB cgroup); row count and column sums read back from the objects (the Parquet file by
/// DuckDB) equal the database's; at 256 MB the cgroup peak is ≤ 128 MiB, at 128 MB the
/// export completes without being OOM-killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_exports_two_million_rows_as_csv_ndjson_and_parquet_under_256_mb() {
    let rows: u64 = std::env::var("SLUICE_PG_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let pg = PgServer::start().unwrap();
    let t = Instant::now();
    create_mixed(&pg, rows).await;
    eprintln!("created {rows} rows in {:.1} s", t.elapsed().as_secs_f64());
    let db = pg.client().await.unwrap();
    let row = db
        .query_one(
            "SELECT count(*), (sum(amount) * 100)::bigint, sum(qty)::bigint FROM mixed",
            &[],
        )
        .await
        .unwrap();
    let (db_rows, db_cents, db_qty): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(db_rows as u64, rows);
    let want = MixedTotals {
        rows,
        cents: db_cents as i128,
        qty: db_qty,
    };

    let cgroup = MemoryCgroup::create("sluice-export", 256 * MIB);
    let h = Harness::start(
        "export-contract",
        &[("DATABASE_URL", pg.admin_url())],
        cgroup.as_ref(),
    )
    .await;
    for export in [
        ("csv", "gzip", "mixed/all.csv.gz"),
        ("ndjson", "zstd", "mixed/all.ndjson.zst"),
        ("parquet", "zstd", "mixed/all.parquet"),
    ] {
        let format = export.0;
        let (peak, rss) = export_mixed(&h, cgroup.as_ref(), 256, export, want).await;
        assert!(
            peak <= 128 * MIB,
            "{format}: cgroup peak {peak} bytes is over 128 MiB"
        );
        assert!(
            rss <= 128 * MIB,
            "{format}: VmHWM {rss} bytes is over 128 MiB"
        );
    }
    // The 256 MB function exits before the 128 MB one starts.
    drop(h);
    drop(cgroup);

    // Parquet holds a row group's columns in memory: the same export in a 128 MB function,
    // whose budget (from AWS_LAMBDA_FUNCTION_MEMORY_SIZE) sizes the parts and row groups.
    let cgroup = MemoryCgroup::create("sluice-export-128", 128 * MIB);
    let h = Harness::start(
        "export-contract-128",
        &[
            ("DATABASE_URL", pg.admin_url()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_owned()),
        ],
        cgroup.as_ref(),
    )
    .await;
    let export = ("parquet", "zstd", "mixed/all.parquet");
    export_mixed(&h, cgroup.as_ref(), 128, export, want).await;
}

/// `pg_terminate_backend` while rows stream and parts upload: the function answers with the
/// SQLSTATE (57P01) as a `Retryable` error, and leaves no object and no upload in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_aborts_with_sqlstate_and_leaves_nothing() {
    let pg = PgServer::start().unwrap();
    let h = Harness::start("export-killed", &[("DATABASE_URL", pg.admin_url())], None).await;
    let admin = pg.client().await.unwrap();
    // A ProjectSet streams generate_series row by row (in FROM it would be materialised).
    let job = h.job(
        "SELECT i, md5(i::text) AS h, repeat('x', 100) AS pad \
         FROM (SELECT generate_series(1, 200000000) AS i) s",
        "csv",
        "killed.csv",
    );
    let kill = async {
        let s3 = h.server.client().await;
        let uploading = wait_until(Duration::from_secs(60), || async {
            !uploads_in_progress(&s3, &h.bucket).await.is_empty()
        })
        .await;
        assert!(uploading, "no multipart upload started");
        // Let a few parts go up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed: Vec<bool> = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'sluice export-postgres' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(killed, [true], "exactly one export backend to terminate");
    };
    let (answer, ()) = tokio::join!(h.invoke(job, Duration::from_secs(120)), kill);
    let (kind, message) = error(answer);
    assert_eq!(kind, "Retryable", "{message}");
    assert!(message.contains("SQLSTATE 57P01"), "{message}");
    assert!(message.contains("stream after"), "{message}");
    h.assert_nothing_written("killed.csv").await;
}

/// Query errors carry their SQLSTATE and the right error type, and create nothing: a syntax
/// error, a missing table, a write (refused by the read-only transaction), a statement past
/// the deadline, a wrong password, a closed port, a parameter count mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_carry_sqlstate_and_write_nothing() {
    let pg = PgServer::start().unwrap();
    let admin = pg.client().await.unwrap();
    admin
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);")
        .await
        .unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let h = Harness::start(
        "export-errors",
        &[
            ("DATABASE_URL", pg.admin_url()),
            (
                "WRONG_PASSWORD_URL",
                pg.url("127.0.0.1", "postgres", "not-the-password-42", "postgres", "sslmode=disable"),
            ),
            (
                "CLOSED_PORT_URL",
                format!("postgres://postgres:x@127.0.0.1:{closed_port}/postgres?sslmode=disable&connect_timeout=3"),
            ),
            ("SLUICE_SECRET_ENV", "WRONG_PASSWORD_URL,CLOSED_PORT_URL".to_owned()),
        ],
        None,
    )
    .await;

    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "syntax",
            h.job("SELEC 1", "csv", "syntax"),
            "InvalidInput",
            "SQLSTATE 42601",
        ),
        (
            "missing",
            h.job("SELECT * FROM nope", "ndjson", "missing"),
            "InvalidInput",
            "SQLSTATE 42P01",
        ),
        (
            "write",
            h.job("INSERT INTO t VALUES (3) RETURNING id", "csv", "write"),
            "InvalidInput",
            "SQLSTATE 25006",
        ),
        (
            "params",
            {
                let mut j = h.job("SELECT * FROM t WHERE id = $1", "csv", "params");
                j["source"]["postgres"]["params"] = json!([1, 2]);
                j
            },
            "InvalidInput",
            "2 values but the query uses 1",
        ),
        (
            "password",
            {
                let mut j = h.job("SELECT 1", "csv", "password");
                j["source"]["postgres"]["secret"] = json!({"env": "WRONG_PASSWORD_URL"});
                j
            },
            "Upstream",
            "SQLSTATE 28P01",
        ),
        (
            "closed",
            {
                let mut j = h.job("SELECT 1", "csv", "closed");
                j["source"]["postgres"]["secret"] = json!({"env": "CLOSED_PORT_URL"});
                j
            },
            "Retryable",
            ": connect: ",
        ),
    ];
    for (name, job, want_kind, want) in cases {
        let (kind, message) = error(h.invoke(job, Duration::from_secs(60)).await);
        assert_eq!(kind, want_kind, "{name}: {message}");
        assert!(message.contains(want), "{name}: {message}");
        assert!(
            !message.contains("not-the-password-42"),
            "{name}: {message}"
        );
        assert!(!message.contains(pg.admin_password()), "{name}: {message}");
        h.assert_nothing_written(name).await;
    }
    let n: i64 = admin
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the read-only transaction let a write through");

    // statement_timeout follows the deadline: 8 s with a 3 s margin stops a 60 s query in 5.
    let started = Instant::now();
    let (kind, message) = error(
        h.invoke(
            h.job("SELECT pg_sleep(60)", "csv", "slow"),
            Duration::from_secs(8),
        )
        .await,
    );
    assert_eq!(kind, "Timeout", "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered after the deadline"
    );
    h.assert_nothing_written("slow").await;
    // The statement was cancelled on the server (by the function's cancel request or by
    // statement_timeout, whichever came first), not left sleeping.
    let stopped = wait_until(Duration::from_secs(3), || async {
        let running: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' \
                 AND state = 'active' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        running == 0
    })
    .await;
    assert!(stopped, "the slow statement still runs on the server");
}

/// Types render as Postgres renders them, parameters are bound (never spliced into SQL), and
/// `$n` inside strings and comments is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_render_faithfully_and_params_are_bound() {
    let pg = PgServer::start().unwrap();
    let admin = pg.client().await.unwrap();
    admin
        .batch_execute(
            r#"CREATE TABLE types (
                 id int, n numeric, f float8, ts timestamptz, d date, iv interval, b bool,
                 txt text, j jsonb, js json, arr int[], tarr text[], by bytea, ip inet, u uuid);
               INSERT INTO types VALUES
                 (1, 12345678901234567890.123456789, 1e-7, '2024-02-29 23:59:59.123456+05:30',
                  '2024-02-29', '1 day 02:03:04', true, 'plain', '{"a": [1, 2.50, null], "b": {"c": "d"}}',
                  E'{\n  "pretty": true\n}', '{1,2,3}', '{"x y","q\"uote",NULL}', '\x00ff', '10.1.2.3',
                  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
                 (2, -0.5, 'NaN', '1970-01-01 00:00:00+00', '0001-01-01', '-3 months', false, '',
                  'null', '[]', '{}', '{}', '', '::1', NULL),
                 (3, NULL, 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                 (4, 0, -0.0, '2024-06-01 12:00:00+00', '2024-06-01', '0', true,
                  E'comma, "quote" \\ backslash\nnewline\ttab', '"str"', '"s\\u00e9"', '{-1}', '{""}', 'abc',
                  '192.168.0.0/16', '00000000-0000-0000-0000-000000000000');"#,
        )
        .await
        .unwrap();
    let h = Harness::start("export-types", &[("DATABASE_URL", pg.admin_url())], None).await;

    // The reference: COPY run directly with the session settings the export uses.
    let reference = |sql: String| {
        let admin = &admin;
        async move {
            admin
                .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 1")
                .await
                .unwrap();
            let stream = admin
                .copy_out(&format!("COPY ({sql}) TO STDOUT (FORMAT csv, HEADER)"))
                .await
                .unwrap();
            let chunks: Vec<bytes::Bytes> = stream.map(|c| c.unwrap()).collect().await;
            String::from_utf8(chunks.concat()).unwrap()
        }
    };

    let plain = response(
        h.invoke(
            h.job("SELECT * FROM types ORDER BY id;", "csv", "types.csv"),
            Duration::from_secs(60),
        )
        .await,
    );
    assert_eq!(plain["rows"], 4);
    let expected = reference("SELECT * FROM types ORDER BY id".into()).await;
    assert_eq!(h.object_text("types.csv").await, expected);
    assert!(expected.contains("12345678901234567890.123456789"));
    assert!(
        expected.contains("2024-02-29 18:29:59.123456+00"),
        "{expected}"
    );

    // Parameters: values that would break out of a string literal if spliced, a `$1` inside a
    // string and a comment, a parameter used twice, NULL, a JSON parameter.
    let evil = "x'); DROP TABLE types; --";
    let query = "SELECT '$1 stays' AS lit, /* $2 */ * FROM types \
                 WHERE id >= $1 AND id <= $1 + 10 AND (txt IS NULL OR txt <> $2) \
                 AND ($3::int IS NULL OR id = $3) AND $4::jsonb ? 'k' ORDER BY id";
    let mut job = h.job(query, "csv", "params.csv");
    job["source"]["postgres"]["params"] = json!([1, evil, null, {"k": 1}]);
    let with_params = response(h.invoke(job, Duration::from_secs(60)).await);
    assert_eq!(with_params["rows"], 4);
    let expected_params = reference(format!(
        "SELECT '$1 stays' AS lit, * FROM types WHERE id >= 1 AND id <= 11 \
         AND (txt IS NULL OR txt <> '{}') ORDER BY id",
        evil.replace('\'', "''")
    ))
    .await;
    assert_eq!(h.object_text("params.csv").await, expected_params);
    let still: i64 = admin
        .query_one("SELECT count(*) FROM types", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(still, 4);
    // A parameter that filters: a timestamptz parsed by the server.
    let mut job = h.job(
        "SELECT id FROM types WHERE ts > $1 ORDER BY id",
        "ndjson",
        "after.ndjson",
    );
    job["source"]["postgres"]["params"] = json!(["2000-01-01T00:00:00Z"]);
    response(h.invoke(job, Duration::from_secs(60)).await);
    assert_eq!(
        h.object_text("after.ndjson").await,
        "{\"id\":1}\n{\"id\":4}\n"
    );

    // NDJSON: each line is row_to_json's rendering, a raw newline of a `json` value turned
    // into a space so every record stays on one line.
    let nd = response(
        h.invoke(
            h.job("SELECT * FROM types ORDER BY id", "ndjson", "types.ndjson"),
            Duration::from_secs(60),
        )
        .await,
    );
    assert_eq!(nd["rows"], 4);
    admin.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let expected: Vec<String> = admin
        .query(
            "SELECT row_to_json(t)::text FROM (SELECT * FROM types ORDER BY id) t",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0).replace(['\n', '\r'], " "))
        .collect();
    let text = h.object_text("types.ndjson").await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, expected);
    for line in &lines {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    assert!(
        lines[0].contains("\"n\":12345678901234567890.123456789"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("\"ts\":\"2024-02-29T18:29:59.123456+00:00\""),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("\"f\":\"NaN\""), "{}", lines[1]);
    assert!(lines[2].contains("\"n\":null"), "{}", lines[2]);
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["js"], json!({"pretty": true}));
    assert_eq!(v["tarr"], json!(["x y", "q\"uote", null]));

    // Empty result: a header-only CSV and an empty NDJSON object.
    let empty = response(
        h.invoke(
            h.job("SELECT * FROM types WHERE false", "csv", "empty.csv"),
            Duration::from_secs(60),
        )
        .await,
    );
    assert_eq!(
        (empty["rows"].as_u64(), empty["parts"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(h.object_text("empty.csv").await.starts_with("id,n,f,ts,"));
    response(
        h.invoke(
            h.job("SELECT * FROM types WHERE false", "ndjson", "empty.ndjson"),
            Duration::from_secs(60),
        )
        .await,
    );
    assert_eq!(h.object_text("empty.ndjson").await, "");
}

/// A shell script that runs `binary` with all its output appended to `log`: the test reads
/// every line the function wrote, not just the last ones `LambdaProcess` keeps.
fn logging_wrapper(binary: &std::path::Path, log: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = log.parent().unwrap();
    let script = dir.join("export-postgres");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec '{}' >>'{}' 2>&1\n",
            binary.display(),
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The connection from a Secrets Manager secret (moto), in both shapes, and from
/// `DATABASE_URL`, with `RUST_LOG=trace`: no password appears in any log line, error or
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_connection_and_no_password_in_trace_logs() {
    let pg = PgServer::start().unwrap();
    let canary = format!("pw-CANARY-{}", uuid::Uuid::new_v4().simple());
    let wrong = format!("wrong-CANARY-{}", uuid::Uuid::new_v4().simple());
    let env_canary = format!("env-CANARY-{}", uuid::Uuid::new_v4().simple());
    pg.create_reader("exporter", &canary).await.unwrap();
    pg.create_reader("envreader", &env_canary).await.unwrap();
    pg.client()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE s (id int, v text); INSERT INTO s SELECT i, 'v' || i FROM generate_series(1, 1000) i;")
        .await
        .unwrap();

    let moto = S3Server::moto();
    let sm_conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new(
            moto.region.clone(),
        ))
        .endpoint_url(&moto.endpoint)
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    let sm = aws_sdk_secretsmanager::Client::from_conf(sm_conf);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let json_name = format!("sluice/test/db-json-{suffix}");
    let url_name = format!("sluice/test/db-url-{suffix}");
    let wrong_name = format!("sluice/test/db-wrong-{suffix}");
    for (name, value) in [
        (
            &json_name,
            json!({"engine": "postgres", "username": "exporter", "password": canary,
                   "host": "127.0.0.1", "port": pg.port(), "dbname": "postgres",
                   "sslmode": "disable"})
            .to_string(),
        ),
        (
            &url_name,
            pg.url(
                "127.0.0.1",
                "exporter",
                &canary,
                "postgres",
                "sslmode=disable",
            ),
        ),
        (
            &wrong_name,
            pg.url(
                "127.0.0.1",
                "exporter",
                &wrong,
                "postgres",
                "sslmode=disable",
            ),
        ),
    ] {
        sm.create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .unwrap();
    }

    let dir = std::env::temp_dir().join(format!("sluice-export-logs-{suffix}"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("function.log");
    let wrapper = logging_wrapper(&binary_path("export-postgres"), &log);
    let h = Harness::start_binary(
        "export-secrets",
        &wrapper,
        &[
            ("RUST_LOG", "trace".to_owned()),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.endpoint.clone()),
            (
                "DATABASE_URL",
                pg.url(
                    "127.0.0.1",
                    "envreader",
                    &env_canary,
                    "postgres",
                    "sslmode=disable",
                ),
            ),
        ],
        None,
    )
    .await;

    let mut answers = Vec::new();
    for (secret, key) in [
        (json!(json_name), "from-json.csv"),
        (json!({"secrets_manager": {"id": url_name}}), "from-url.csv"),
        (Value::Null, "from-env.csv"),
    ] {
        let mut job = h.job("SELECT * FROM s ORDER BY id", "csv", key);
        job["source"]["postgres"]["secret"] = secret;
        let s = response(h.invoke(job, Duration::from_secs(60)).await);
        assert_eq!(s["rows"], 1000, "{key}: {s}");
        answers.push(s.to_string());
    }
    let mut job = h.job("SELECT 1", "csv", "wrong.csv");
    job["source"]["postgres"]["secret"] = json!(wrong_name);
    let (kind, message) = error(h.invoke(job, Duration::from_secs(60)).await);
    assert_eq!(kind, "Upstream", "{message}");
    assert!(
        message.contains("SQLSTATE 28P01") && message.contains("exporter@127.0.0.1"),
        "{message}"
    );
    answers.push(message);
    let mut job = h.job("SELECT 1", "csv", "missing.csv");
    job["source"]["postgres"]["secret"] = json!("sluice/test/does-not-exist");
    let (kind, message) = error(h.invoke(job, Duration::from_secs(60)).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(message.contains("not found"), "{message}");
    h.assert_nothing_written("wrong.csv").await;

    drop(h);
    let logs = std::fs::read_to_string(&log).unwrap();
    let lines = logs.lines().count();
    assert!(lines > 200, "trace logging produced only {lines} lines");
    assert!(
        logs.contains("TRACE") || logs.contains("\"level\":\"TRACE\""),
        "no trace lines"
    );
    for needle in [&canary, &wrong, &env_canary] {
        assert!(
            !logs.contains(needle.as_str()),
            "a password is in the function's logs"
        );
        for answer in &answers {
            assert!(
                !answer.contains(needle.as_str()),
                "a password is in an answer: {answer}"
            );
        }
    }
    eprintln!(
        "checked {lines} log lines ({} bytes) for the passwords",
        logs.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// TLS modes against a server with a test CA: `verify-full` checks the chain and the name,
/// `verify-ca` the chain only, `require` encrypts without checking, the default is
/// `verify-full` with the system roots, and plaintext only on request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_are_honoured() {
    let tls = PgServer::start_tls().unwrap();
    let ca = tls.tls().unwrap().ca_cert.to_str().unwrap().to_owned();
    let ca_q = ca.replace('/', "%2F");
    let pw = tls.admin_password().to_owned();
    let env = SecretRef::Env("DATABASE_URL".into());
    let connect = |url: String| {
        let env = env.clone();
        async move {
            let settings = ConnectionSettings::from_secret(&Secret::new(url), &env)?;
            let mode = settings.ssl_mode;
            let session = pg::connect(&settings).await?;
            let on = session.is_tls().await?;
            Ok::<_, sluice::Error>((mode, on))
        }
    };
    let url = |host: &str, query: &str| tls.url(host, "postgres", &pw, "postgres", query);

    let ok = |r: Result<(SslMode, bool), sluice::Error>| r.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok(connect(url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca_q}")
        ))
        .await),
        (SslMode::VerifyFull, true)
    );
    // No sslmode: verify-full, here with the test CA.
    assert_eq!(
        ok(connect(url("localhost", &format!("sslrootcert={ca_q}"))).await),
        (SslMode::VerifyFull, true)
    );
    // The certificate names localhost, not 127.0.0.1.
    let e = connect(url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca_q}"),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), sluice::ErrorKind::Upstream, "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
    assert_eq!(
        ok(connect(url(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca_q}")
        ))
        .await),
        (SslMode::VerifyCa, true)
    );
    // require + a root file is verify-ca (libpq's rule).
    assert_eq!(
        ok(connect(url(
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={ca_q}")
        ))
        .await),
        (SslMode::VerifyCa, true)
    );
    // The default checks against the system roots, which do not know the test CA.
    let e = connect(url("localhost", "")).await.unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    assert!(!e.to_string().contains(&pw), "{e}");
    assert_eq!(
        ok(connect(url("127.0.0.1", "sslmode=require")).await),
        (SslMode::Require, true)
    );
    assert_eq!(
        ok(connect(url("127.0.0.1", "sslmode=prefer")).await),
        (SslMode::Prefer, true)
    );
    assert_eq!(
        ok(connect(url("127.0.0.1", "sslmode=disable")).await),
        (SslMode::Disable, false)
    );

    // A server without TLS: refused unless the URL asks for plaintext.
    let plain = PgServer::start().unwrap();
    let pw = plain.admin_password().to_owned();
    let purl = |query: &str| plain.url("127.0.0.1", "postgres", &pw, "postgres", query);
    let e = connect(purl("")).await.unwrap_err();
    assert_eq!(e.kind(), sluice::ErrorKind::Upstream, "{e}");
    assert!(e.to_string().contains("sslmode=disable"), "{e}");
    let e = connect(purl("sslmode=require")).await.unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    assert_eq!(
        ok(connect(purl("sslmode=prefer")).await),
        (SslMode::Prefer, false)
    );
    assert_eq!(
        ok(connect(purl("sslmode=disable")).await),
        (SslMode::Disable, false)
    );
}

/// How NDJSON is produced, measured (run with `--ignored --nocapture`): COPY of
/// `row_to_json` in binary framing (what sluice does) against a portal streaming the same
/// `row_to_json` rows through the extended protocol, and CSV COPY for reference. Drains each
/// into memory-bounded counters in this process; no S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run by hand"]
async fn measure_ndjson_strategies() {
    let rows: u64 = std::env::var("SLUICE_PG_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let server = PgServer::start().unwrap();
    create_mixed(&server, rows).await;
    let settings = ConnectionSettings::from_secret(
        &Secret::new(server.admin_url()),
        &SecretRef::Env("DATABASE_URL".into()),
    )
    .unwrap();
    let rounds: usize = std::env::var("SLUICE_MEASURE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // Alternate the order so machine load drifting during a round favours neither.
    for round in 0..rounds {
        if round % 2 == 1 {
            measure_portal(&settings, round, rows).await;
        }
        for format in [sluice::Format::Csv, sluice::Format::Ndjson] {
            let t = Instant::now();
            let session = pg::connect(&settings).await.unwrap();
            let mut stream = pg::export(
                session,
                "SELECT * FROM mixed",
                &[],
                format,
                &Default::default(),
            )
            .await
            .unwrap();
            let mut bytes = 0u64;
            while let Some(chunk) = stream.next().await {
                bytes += chunk.unwrap().len() as u64;
            }
            let secs = t.elapsed().as_secs_f64();
            eprintln!(
                "MEASURE round {round} COPY {}: {rows} rows {:.1} MiB in {secs:.2} s = {:.0} rows/s, {:.1} MiB/s",
                format.name(),
                bytes as f64 / MIB as f64,
                rows as f64 / secs,
                bytes as f64 / MIB as f64 / secs
            );
        }
        if round % 2 == 0 {
            measure_portal(&settings, round, rows).await;
        }
    }
}

/// The portal alternative: `row_to_json` rows through `query_raw` (an unnamed portal streamed
/// with backpressure, which bounds memory like a cursor with a fetch size), copied into
/// 64 KiB chunks.
async fn measure_portal(settings: &ConnectionSettings, round: usize, rows: u64) {
    let t = Instant::now();
    let session = pg::connect(settings).await.unwrap();
    let client = session.client();
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let rows_stream = client
        .query_raw(
            "SELECT row_to_json(r)::text FROM (SELECT * FROM mixed) r",
            std::iter::empty::<&str>(),
        )
        .await
        .unwrap();
    futures::pin_mut!(rows_stream);
    let mut buf = Vec::with_capacity(1 << 16);
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some(row) = rows_stream.next().await {
        let row = row.unwrap();
        let text: &str = row.get(0);
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'\n');
        n += 1;
        if buf.len() >= 1 << 16 {
            bytes += buf.len() as u64;
            buf.clear();
        }
    }
    bytes += buf.len() as u64;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "MEASURE round {round} portal ndjson: {n} rows {:.1} MiB in {secs:.2} s = {:.0} rows/s, {:.1} MiB/s",
        bytes as f64 / MIB as f64,
        n as f64 / secs,
        bytes as f64 / MIB as f64 / secs
    );
    assert_eq!(n, rows);
}

/// Regression: a panic while the rows streamed reached the runtime as a bare panic, and the
/// upload it dropped was aborted from a spawned task that nobody waited for before the answer
/// (Lambda may freeze the process first). Now such a panic (here from the test-only fault hook
/// `SLUICE_FAULT`, at the 150th 64 KiB chunk, after a 5 MiB part went out) fails the invocation
/// with `Internal`, the upload is aborted before the answer, and no object is left.
#[tokio::test]
async fn producer_panic_mid_stream_leaves_nothing() {
    let pg = PgServer::start().unwrap();
    let h = Harness::start(
        "export-panic",
        &[
            ("DATABASE_URL", pg.admin_url()),
            ("SLUICE_FAULT", "export.chunk:150".to_owned()),
        ],
        None,
    )
    .await;
    let mut job = h.job(
        "SELECT i, repeat('x', 100) AS pad FROM generate_series(1, 200000) AS i",
        "csv",
        "panic/rows.csv",
    );
    job["tuning"] = json!({"part_size_mib": 5});
    let (kind, message) = error(h.invoke(job, Duration::from_secs(120)).await);
    assert_eq!(kind, "Internal", "{message}");
    assert!(message.contains("export.chunk"), "{message}");
    h.assert_nothing_written("panic/rows.csv").await;
    h.assert_nothing_written("panic/rows.csv.manifest.json")
        .await;
}

/// Regression: each row arrived as one COPY message and was copied whole into the chunk
/// buffer whatever its size. A row over the record cap (`tuning.max_record_mib`, default a
/// quarter of the part buffers: 16 MiB at 256 MB) now ends the export with an error naming
/// the row, after parts already went out: the upload is aborted, nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_over_the_record_cap_is_refused_and_nothing_is_written() {
    let pg = PgServer::start().unwrap();
    let h = Harness::start("export-wide-row", &[("DATABASE_URL", pg.admin_url())], None).await;
    // 30,000 rows of about 210 bytes (6 MiB: a 5 MiB part is out), then one of 3 MiB.
    let query = "SELECT i, CASE WHEN i = 30000 THEN repeat('x', 3145728) ELSE repeat('y', 200) END AS pad \
                 FROM generate_series(1, 40000) AS i";
    for format in ["csv", "ndjson", "parquet"] {
        let key = format!("wide/rows.{format}");
        let mut job = h.job(query, format, &key);
        job["tuning"] = json!({"part_size_mib": 5, "max_record_mib": 2, "row_group_mib": 1});
        let (kind, message) = error(h.invoke(job, Duration::from_secs(120)).await);
        assert_eq!(kind, "Upstream", "{format}: {message}");
        assert!(
            message.contains("row too large at byte")
                && message.contains("(record 30000)")
                && message.contains("row 30000 is 31457")
                && message.contains("over the limit of 2097152 bytes"),
            "{format}: {message}"
        );
        h.assert_nothing_written(&key).await;
    }
    // Without tuning, the cap is the budget's: 16 MiB at 256 MB.
    let mut job = h.job(
        "SELECT repeat('z', 17 * 1048576) AS big",
        "csv",
        "wide/default.csv",
    );
    job["tuning"] = json!({"part_size_mib": 5});
    let (kind, message) = error(h.invoke(job, Duration::from_secs(120)).await);
    assert_eq!(kind, "Upstream", "{message}");
    assert!(
        message.contains("row 1 is 17825") && message.contains("over the limit of 16777216 bytes"),
        "{message}"
    );
    h.assert_nothing_written("wide/default.csv").await;
}

/// Reads the Parquet file and the NDJSON file of the same export with pyarrow and the `json`
/// module, normalises both by the Parquet column types (decimals as their exact text, floats
/// through the column's width, timestamps through `datetime`, bytes as `\x..` hex, the
/// `json_columns` parsed) and reports the rows compared and the first mismatches.
fn parquet_against_ndjson(
    parquet: &std::path::Path,
    ndjson: &std::path::Path,
    json_columns: &[&str],
) -> Value {
    const SCRIPT: &str = r#"
import datetime, decimal, json, struct, sys
import pyarrow as pa, pyarrow.parquet as pq
pq_path, nd_path, json_cols = sys.argv[1], sys.argv[2], set(json.loads(sys.argv[3]))
raw = lambda s: json.loads(s, parse_float=str, parse_int=str)
def norm(v, ty, side):
    if v is None:
        return None
    if pa.types.is_list(ty):
        return [norm(x, ty.value_type, side) for x in v]
    if pa.types.is_decimal(ty):
        return format(decimal.Decimal(v if side == "pq" else str(v)), "f")
    if pa.types.is_floating(ty):
        f = float(v)
        if side == "nd" and ty == pa.float32():
            f = struct.unpack("f", struct.pack("f", f))[0]
        return repr(f)
    if pa.types.is_integer(ty):
        return str(v)
    if pa.types.is_timestamp(ty):
        return (v if side == "pq" else datetime.datetime.fromisoformat(v)).isoformat()
    if pa.types.is_date(ty):
        return v.isoformat() if side == "pq" else v
    if pa.types.is_binary(ty):
        return "\\x" + v.hex() if side == "pq" else v
    return v
table = pq.read_table(pq_path)
fields = list(table.schema)
pq_rows = table.to_pylist()
with open(nd_path) as f:
    nd_rows = [raw(line) for line in f]
mismatches = []
for i, (a, b) in enumerate(zip(pq_rows, nd_rows)):
    if list(a) != list(b):
        mismatches.append({"row": i, "columns": [list(a), list(b)]})
        continue
    for fld in fields:
        x, y = a[fld.name], b[fld.name]
        if fld.name in json_cols:
            x = None if x is None else raw(x)
        else:
            x, y = norm(x, fld.type, "pq"), norm(y, fld.type, "nd")
        if x != y:
            mismatches.append({"row": i, "column": fld.name, "parquet": repr(x), "ndjson": repr(y)})
print(json.dumps({"parquet_rows": len(pq_rows), "ndjson_rows": len(nd_rows), "mismatches": mismatches[:10]}))
"#;
    let out = std::process::Command::new(sluice_tests::lake::python())
        .arg("-c")
        .arg(SCRIPT)
        .arg(parquet)
        .arg(ndjson)
        .arg(serde_json::to_string(json_columns).unwrap())
        .output()
        .expect("the venv's python runs (make test installs it)");
    assert!(
        out.status.success(),
        "pyarrow could not compare {} with {}: {}",
        parquet.display(),
        ndjson.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the comparison is JSON")
}

/// Every type Parquet output takes, with NULLs, negative and extreme values, empty strings
/// and arrays, and arrays with NULL elements: rows 1 to `rows` generated, then three by hand
/// (last in id order: `lake::parquet_report` reads the first rows through JSON, which has no
/// NaN).
async fn create_every_type(pg: &PgServer, rows: u64) {
    let client = pg.client().await.unwrap();
    client
        .batch_execute(&format!(
            r#"CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
               CREATE DOMAIN positive AS bigint CHECK (VALUE > 0);
               CREATE TABLE every_type (
                 id bigint, small smallint, qty integer, amount numeric(12,2), exact numeric,
                 ratio real, score double precision, flag boolean, label text, code varchar(10),
                 grade char(3), nm name, day date, local_at timestamp, at timestamptz, uid uuid,
                 raw bytea, doc json, docb jsonb, feeling mood, pos positive,
                 tags text[], nums integer[], amounts numeric(12,2)[], days date[]);
               INSERT INTO every_type VALUES
                 (900000001, 32767, -2147483648, -9999999999.99, 'NaN', 'NaN', 'Infinity', false, '',
                  'x', 'ab', 'pg_name', '0001-01-01', '1970-01-01 00:00:00.000001',
                  '1969-12-31 23:59:59.999999+00', '00000000-0000-0000-0000-000000000000', '',
                  '{{"a": [1, 2.50, null],  "b": "é"}}', '{{"nested": {{"x": [1, "two", 3.25e3]}}}}',
                  'happy', 1, '{{}}', '{{NULL}}', '{{-0.01,NULL,9999999999.99}}', '{{2024-02-29,NULL}}'),
                 (900000002, -32768, 2147483647, 9999999999.99, '12345678901234567890.123456789', 1e-7,
                  '-Infinity', true, E'two\nlines, "quoted"', 'ünïcödé', 'abc', 'n',
                  '9999-12-31', '2024-02-29 12:34:56.5', '9999-12-31 23:59:59.999999+00',
                  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff', '[]', 'null', 'sad',
                  4611686018427387904, '{{"",NULL,"x y"}}', '{{}}', '{{}}', '{{}}'),
                 (900000003, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
               INSERT INTO every_type
               SELECT i,
                      CASE WHEN i % 17 = 0 THEN NULL ELSE (i % 30000 - 15000)::smallint END,
                      (i % 1000) - 500,
                      CASE WHEN i % 13 = 0 THEN NULL
                           ELSE round(((i::bigint * 7919) % 10000000)::numeric / 100 - 20000, 2) END,
                      CASE i % 4 WHEN 0 THEN NULL WHEN 1 THEN i::numeric / 7
                                 WHEN 2 THEN -(i::numeric * 1000000000000000000000.5) ELSE i END,
                      (i / 3.0)::real,
                      CASE WHEN i % 11 = 0 THEN NULL ELSE i / -7.0 END,
                      CASE WHEN i % 3 = 0 THEN NULL ELSE i % 2 = 0 END,
                      'label-' || (i % 97),
                      CASE WHEN i % 5 = 0 THEN NULL ELSE 'c' || (i % 1000) END,
                      (i % 100)::text,
                      'n' || (i % 7),
                      date '2024-01-01' + (i % 3650)::int - 1800,
                      timestamp '2024-01-01 00:00:00' + i * interval '1.25 seconds',
                      CASE WHEN i % 7 = 0 THEN NULL
                           ELSE timestamptz '2024-01-01 00:00:00+00' - i * interval '3.000001 seconds' END,
                      md5(i::text)::uuid,
                      CASE WHEN i % 9 = 0 THEN NULL ELSE decode(md5(i::text), 'hex') END,
                      json_build_object('k', i, 'neg', -i * 1.5),
                      jsonb_build_object('k', i, 's', 'v' || (i % 100), 'a', jsonb_build_array(i % 7, NULL)),
                      (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::mood,
                      CASE WHEN i % 19 = 0 THEN NULL ELSE i END,
                      ARRAY['a' || (i % 10), NULL, 'b,c'],
                      CASE WHEN i % 6 = 0 THEN NULL ELSE ARRAY[i % 100, NULL, -(i % 50)] END,
                      ARRAY[round(i::numeric / 3, 2), -0.5, NULL],
                      ARRAY[date '2000-01-01' + (i % 1000)::int, NULL]
               FROM generate_series(1, {rows}) AS i;
               ANALYZE every_type;"#
        ))
        .await
        .unwrap();
}

/// `format: parquet`: a table of every supported type exported to Garage, read back with
/// DuckDB and pyarrow: the rows, the column names and types, the sums of the numeric columns
/// (equal to the database's), several row groups, the codec, and every value equal to the same
/// export as NDJSON. A parameter goes through the same rewrite as for text formats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_export_of_every_type_reads_back_in_duckdb_and_pyarrow() {
    let rows = 20_000u64;
    let pg = PgServer::start().unwrap();
    create_every_type(&pg, rows).await;
    let db = pg.client().await.unwrap();
    let sums = db
        .query_one(
            "SELECT count(*), sum(id)::text, sum(small)::text, sum(qty)::text, sum(amount)::text, \
             sum(pos)::text FROM every_type",
            &[],
        )
        .await
        .unwrap();
    let total: i64 = sums.get(0);
    assert_eq!(total as u64, rows + 3);
    let h = Harness::start("export-parquet", &[("DATABASE_URL", pg.admin_url())], None).await;
    let query = "SELECT * FROM every_type WHERE id >= $1 ORDER BY id";

    let mut job = h.job(query, "parquet", "every/types.parquet");
    job["source"]["postgres"]["params"] = json!([1]);
    job["tuning"] = json!({"row_group_mib": 1});
    let s = response(h.invoke(job, Duration::from_secs(120)).await);
    assert_eq!(s["status"], "written", "{s}");
    assert_eq!(s["format"], "parquet");
    assert_eq!(s["rows"], rows + 3, "{s}");
    assert_eq!(s["parquet"]["rows"], rows + 3, "{s}");
    assert_eq!(s["parquet"]["codec"], "zstd", "{s}");
    assert!(s["bytes_in"].as_u64().unwrap() > 0, "{s}");
    let row_groups = s["parquet"]["row_groups"].as_u64().unwrap();
    assert!(row_groups > 1, "one row group at 1 MiB: {s}");
    let mut job = h.job(query, "ndjson", "every/types.ndjson");
    job["source"]["postgres"]["params"] = json!([1]);
    response(h.invoke(job, Duration::from_secs(120)).await);

    let client = h.server.client().await;
    let head = client
        .head_object()
        .bucket(&h.bucket)
        .key("every/types.parquet")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/vnd.apache.parquet"));
    assert_eq!(head.content_length(), s["bytes_out"].as_i64());
    let dir = std::env::temp_dir().join(format!("sluice-parquet-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let parquet = dir.join("types.parquet");
    let ndjson = dir.join("types.ndjson");
    std::fs::write(
        &parquet,
        read_object(&client, &h.bucket, "every/types.parquet").await,
    )
    .unwrap();
    std::fs::write(
        &ndjson,
        read_object(&client, &h.bucket, "every/types.ndjson").await,
    )
    .unwrap();

    let report =
        sluice_tests::lake::parquet_report(&parquet, &["id", "small", "qty", "amount", "pos"]);
    let (duck, arrow) = (&report["duckdb"], &report["pyarrow"]);
    assert_eq!(duck["rows"], rows + 3, "{report}");
    assert_eq!(arrow["rows"], rows + 3, "{report}");
    assert_eq!(arrow["row_groups"], row_groups, "{report}");
    assert_eq!(arrow["codecs"], json!(["ZSTD"]), "{report}");
    assert_eq!(arrow["statistics"], true, "{report}");
    let expected_duckdb = json!([
        ["id", "BIGINT"],
        ["small", "SMALLINT"],
        ["qty", "INTEGER"],
        ["amount", "DECIMAL(12,2)"],
        ["exact", "VARCHAR"],
        ["ratio", "FLOAT"],
        ["score", "DOUBLE"],
        ["flag", "BOOLEAN"],
        ["label", "VARCHAR"],
        ["code", "VARCHAR"],
        ["grade", "VARCHAR"],
        ["nm", "VARCHAR"],
        ["day", "DATE"],
        ["local_at", "TIMESTAMP"],
        ["at", "TIMESTAMP WITH TIME ZONE"],
        ["uid", "VARCHAR"],
        ["raw", "BLOB"],
        ["doc", "VARCHAR"],
        ["docb", "VARCHAR"],
        ["feeling", "VARCHAR"],
        ["pos", "BIGINT"],
        ["tags", "VARCHAR[]"],
        ["nums", "INTEGER[]"],
        ["amounts", "DECIMAL(12,2)[]"],
        ["days", "DATE[]"]
    ]);
    assert_eq!(duck["columns"], expected_duckdb, "{report}");
    let arrow_types: Vec<&str> = arrow["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[1].as_str().unwrap())
        .collect();
    assert_eq!(
        arrow_types,
        [
            "int64",
            "int16",
            "int32",
            "decimal128(12, 2)",
            "string",
            "float",
            "double",
            "bool",
            "string",
            "string",
            "string",
            "string",
            "date32[day]",
            "timestamp[us]",
            "timestamp[us, tz=UTC]",
            "string",
            "binary",
            "string",
            "string",
            "string",
            "int64",
            "list<item: string>",
            "list<item: int32>",
            "list<item: decimal128(12, 2)>",
            "list<item: date32[day]>"
        ],
        "{report}"
    );
    for (i, column) in ["id", "small", "qty", "amount", "pos"].iter().enumerate() {
        let want: Option<String> = sums.get(i + 1);
        assert_eq!(
            duck["sums"][column].as_str(),
            want.as_deref(),
            "DuckDB sum({column})"
        );
        assert_eq!(
            arrow["sums"][column].as_str(),
            want.as_deref(),
            "pyarrow sum({column})"
        );
    }

    let compared = parquet_against_ndjson(&parquet, &ndjson, &["doc", "docb"]);
    assert_eq!(compared["parquet_rows"], rows + 3, "{compared}");
    assert_eq!(compared["ndjson_rows"], rows + 3, "{compared}");
    assert_eq!(compared["mismatches"], json!([]), "{compared}");

    // The hand-made rows as DuckDB sees them.
    let first = sluice_tests::lake::duckdb_query(
        &parquet,
        "SELECT id, CAST(amount AS VARCHAR) AS amount, exact, CAST(amounts AS VARCHAR) AS amounts, \
         CAST(\"at\" AS VARCHAR) AS \"at\", CAST(day AS VARCHAR) AS day, nums, tags, \
         CAST(docb AS JSON) -> 'nested' -> 'x' ->> 1 AS two FROM t WHERE id > 900000000 ORDER BY id",
    );
    assert_eq!(first[0]["amount"], "-9999999999.99", "{first}");
    assert_eq!(first[0]["exact"], "NaN", "{first}");
    assert_eq!(
        first[0]["amounts"], "[-0.01, NULL, 9999999999.99]",
        "{first}"
    );
    assert_eq!(first[0]["day"], "0001-01-01", "{first}");
    assert_eq!(first[0]["nums"], json!([null]), "{first}");
    assert_eq!(first[0]["tags"], json!([]), "{first}");
    assert_eq!(first[0]["two"], "two", "{first}");
    assert_eq!(
        first[1]["exact"], "12345678901234567890.123456789",
        "{first}"
    );
    assert_eq!(first[1]["tags"], json!(["", null, "x y"]), "{first}");
    assert!(
        first[1]["at"]
            .as_str()
            .unwrap()
            .starts_with("9999-12-31 23:59:59.999999"),
        "{first}"
    );
    assert_eq!(first[2]["amount"], Value::Null, "{first}");

    // Another page codec, named by `compression`.
    let mut job = h.job(query, "parquet", "every/types.snappy.parquet");
    job["source"]["postgres"]["params"] = json!([1]);
    job["compression"] = json!("snappy");
    let s = response(h.invoke(job, Duration::from_secs(120)).await);
    assert_eq!(s["parquet"]["codec"], "snappy", "{s}");
    std::fs::write(
        &parquet,
        read_object(&client, &h.bucket, "every/types.snappy.parquet").await,
    )
    .unwrap();
    let report = sluice_tests::lake::parquet_report(&parquet, &["amount"]);
    assert_eq!(report["pyarrow"]["codecs"], json!(["SNAPPY"]), "{report}");
    let want: Option<String> = sums.get(4);
    assert_eq!(report["duckdb"]["sums"]["amount"].as_str(), want.as_deref());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `format: parquet` refuses a column of a type it does not take before anything is written,
/// naming the column and its type; a value with no Parquet form (NaN in a decimal column,
/// an infinite timestamp, a two-dimensional array, here after parts went out for the NaN)
/// ends the export naming the column and the row, and leaves no object and no upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_refuses_unsupported_types_and_values_writing_nothing() {
    let pg = PgServer::start().unwrap();
    let admin = pg.client().await.unwrap();
    admin
        .batch_execute(
            "CREATE TABLE geo (id int, p point, ok text);
             INSERT INTO geo VALUES (1, '(1,2)', 'a');
             CREATE TABLE late_nan (id int, amount numeric(12,2), pad text);
             INSERT INTO late_nan
             SELECT i, CASE WHEN i = 150000 THEN 'NaN' ELSE i / 100.0 END, repeat('x', 100)
             FROM generate_series(1, 150000) AS i;",
        )
        .await
        .unwrap();
    let h = Harness::start(
        "export-parquet-refused",
        &[("DATABASE_URL", pg.admin_url())],
        None,
    )
    .await;

    let cases = [
        (
            "SELECT * FROM geo",
            "point",
            "column \"p\" has type point, which Parquet output does not support (supported: ",
        ),
        (
            "SELECT id, ARRAY[p] AS ps, ok FROM geo",
            "point-array",
            "column \"ps\" has type point[], which Parquet output does not support",
        ),
        (
            "SELECT 1 AS a, 'x' AS a",
            "duplicate",
            "column \"a\" appears more than once",
        ),
    ];
    for (query, key, want) in cases {
        let (kind, message) = error(
            h.invoke(h.job(query, "parquet", key), Duration::from_secs(60))
                .await,
        );
        assert_eq!(kind, "InvalidInput", "{key}: {message}");
        assert!(message.contains(want), "{key}: {message}");
        h.assert_nothing_written(key).await;
    }

    let cases = [
        (
            "SELECT id, amount, pad FROM late_nan ORDER BY id",
            "nan",
            "row 150000: column \"amount\" (numeric(12,2)): NaN has no Parquet decimal value",
        ),
        (
            "SELECT 1 AS id, 'infinity'::timestamptz AS at",
            "infinity",
            "row 1: column \"at\" (timestamptz): infinity has no Parquet timestamp value",
        ),
        (
            "SELECT g AS id, CASE WHEN g = 2 THEN ARRAY[[1, 2], [3, 4]] ELSE ARRAY[g] END AS grid \
             FROM generate_series(1, 3) AS g",
            "grid",
            "row 2: column \"grid\" (int4[]): a 2-dimensional array",
        ),
    ];
    for (query, key, want) in cases {
        let mut job = h.job(query, "parquet", key);
        job["tuning"] = json!({"part_size_mib": 5, "row_group_mib": 1});
        let (kind, message) = error(h.invoke(job, Duration::from_secs(120)).await);
        assert_eq!(kind, "InvalidInput", "{key}: {message}");
        assert!(message.contains(want), "{key}: {message}");
        h.assert_nothing_written(key).await;
    }
}

/// Every object under `prefix` in the harness's bucket: key and size.
async fn list_objects(h: &Harness, prefix: &str) -> Vec<(String, u64)> {
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

/// The `YYYY-MM-DD` of a key `…/dt=YYYY-MM-DD/…`.
fn dt_of(key: &str) -> String {
    let at = key.find("dt=").unwrap() + 3;
    key[at..at + 10].to_owned()
}

/// `events`: `rows` rows over 30 days in UTC, the days interleaved (row `i` falls on day
/// `i * 7 % 30`), with a date column, a timestamptz, text with quotes, commas and newlines.
async fn create_events(pg: &PgServer, rows: u64) -> BTreeMap<String, u64> {
    let client = pg.client().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE events (id bigint, created_at timestamptz, day date, note text, amount numeric(10,2));
             INSERT INTO events
             SELECT i,
                    timestamptz '2026-11-01 00:00:00+00' + ((i * 7) % 30) * interval '1 day' + (i % 86400) * interval '1 second',
                    date '2026-11-01' + ((i * 7) % 30)::int,
                    CASE i % 3 WHEN 0 THEN E'two\\nlines, \"q\" ' || i WHEN 1 THEN '' ELSE NULL END,
                    (i % 1000) / 10.0
             FROM generate_series(1, {rows}) AS i;"
        ))
        .await
        .unwrap();
    client
        .query(
            "SELECT to_char(day, 'YYYY-MM-DD'), count(*) FROM events GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
        .collect()
}

/// Checks a partitioned run: the answer, the manifest listing exactly the data objects under
/// `prefix` (keys, sizes, per-day records equal to `want`), and no upload left open. Returns
/// the data objects.
async fn check_partitioned(
    h: &Harness,
    s: &Value,
    prefix: &str,
    want: &BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    let total: u64 = want.values().sum();
    assert_eq!(s["status"], "written", "{s}");
    assert_eq!(s["rows"], total, "{s}");
    let manifest_key = s["manifest"].as_str().unwrap();
    assert!(
        manifest_key.starts_with(&format!("{prefix}_manifests/")),
        "{s}"
    );
    let objects: Vec<(String, u64)> = list_objects(h, prefix)
        .await
        .into_iter()
        .filter(|(k, _)| !k.contains("_manifests/"))
        .collect();
    assert_eq!(s["partitioned"]["objects"], objects.len(), "{s}");
    assert_eq!(s["partitioned"]["partitions"], want.len(), "{s}");
    let client = h.server.client().await;
    let manifest: Value =
        serde_json::from_slice(&read_object(&client, &h.bucket, manifest_key).await).unwrap();
    let listed = manifest["objects"].as_array().unwrap();
    assert_eq!(listed.len(), objects.len(), "{manifest}");
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for o in listed {
        let key = o["key"].as_str().unwrap();
        let size = o["bytes"].as_u64().unwrap();
        assert!(objects.contains(&(key.to_owned(), size)), "{o}");
        assert_eq!(o["status"], "written", "{o}");
        *counts.entry(dt_of(key)).or_default() += o["records"].as_u64().unwrap();
    }
    assert_eq!(&counts, want, "per-day records in the manifest");
    assert_eq!(manifest["rows"], total);
    assert!(uploads_in_progress(&client, &h.bucket).await.is_empty());
    objects
}

/// Partitioned export in every format: 20,000 rows over 30 interleaved days (more partitions
/// than objects open at once, so the spill is used), keyed on a date column (Parquet), and on
/// a timestamptz (CSV and NDJSON, rolling at 300 rows). Every row lands in exactly one object
/// under its own day; per-day counts equal the database's `GROUP BY`; the run manifest lists
/// every object; DuckDB reads the Parquet tree with `hive_partitioning`; every CSV object
/// starts with the header and keeps quoted newlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_export_puts_every_row_under_its_day_in_every_format() {
    const ROWS: u64 = 20_000;
    let pg = PgServer::start().unwrap();
    let want = create_events(&pg, ROWS).await;
    assert_eq!(want.len(), 30);
    let h = Harness::start("export-part", &[("DATABASE_URL", pg.admin_url())], None).await;
    let client = h.server.client().await;
    let all_ids = |mut ids: Vec<u64>| {
        ids.sort_unstable();
        assert_eq!(
            ids,
            (1..=ROWS).collect::<Vec<_>>(),
            "every row exactly once"
        );
    };

    // Parquet, keyed on the date column.
    let job = h.job(
        "SELECT * FROM events",
        "parquet",
        "exports/pq/dt={field:day:%Y-%m-%d}/{part}.parquet",
    );
    let started = Instant::now();
    let s = response(h.invoke(job, Duration::from_secs(300)).await);
    eprintln!(
        "PARTITIONED parquet: {:.1} s, {s}",
        started.elapsed().as_secs_f64()
    );
    let objects = check_partitioned(&h, &s, "exports/pq/", &want).await;
    let dir = std::env::temp_dir().join(format!("sluice-export-part-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (key, _) in &objects {
        let path = dir.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, read_object(&client, &h.bucket, key).await).unwrap();
    }
    let rows = sluice_tests::lake::duckdb_sql(&format!(
        "SELECT CAST(dt AS VARCHAR) AS dt, count(*) AS n, \
         bool_and(strftime(day, '%Y-%m-%d') = CAST(dt AS VARCHAR)) AS same, \
         list(id) AS ids FROM read_parquet('{}/exports/pq/*/*.parquet', hive_partitioning = true) GROUP BY dt",
        dir.display()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut duck = BTreeMap::new();
    let mut ids = Vec::new();
    for r in rows.as_array().unwrap() {
        assert_eq!(r["same"], true, "a row under another day: {}", r["dt"]);
        duck.insert(
            r["dt"].as_str().unwrap().to_owned(),
            r["n"].as_u64().unwrap(),
        );
        ids.extend(
            r["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap()),
        );
    }
    assert_eq!(duck, want, "DuckDB with hive_partitioning");
    all_ids(ids);

    // NDJSON, keyed on the timestamptz, rolling at 300 rows.
    let mut job = h.job(
        "SELECT id, created_at, note FROM events",
        "ndjson",
        "exports/nd/dt={field:created_at:%Y-%m-%d}/{part}.ndjson",
    );
    job["destination"]["max_object_records"] = json!(300);
    let s = response(h.invoke(job, Duration::from_secs(300)).await);
    let objects = check_partitioned(&h, &s, "exports/nd/", &want).await;
    assert!(s["partitioned"]["rolled"].as_u64().unwrap() > 0, "{s}");
    let mut ids = Vec::new();
    for (key, _) in &objects {
        let text = String::from_utf8(read_object(&client, &h.bucket, key).await).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() <= 300, "{key}: {} rows", lines.len());
        for line in lines {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                &v["created_at"].as_str().unwrap()[..10],
                dt_of(key),
                "{key}: {line}"
            );
            ids.push(v["id"].as_u64().unwrap());
        }
    }
    all_ids(ids);

    // CSV, keyed on the timestamptz as COPY prints it (`2026-11-28 10:00:00+00`).
    let mut job = h.job(
        "SELECT id, created_at, note FROM events",
        "csv",
        "exports/csv/dt={field:created_at:%Y-%m-%d}/{part}.csv",
    );
    job["destination"]["max_object_records"] = json!(300);
    let s = response(h.invoke(job, Duration::from_secs(300)).await);
    let objects = check_partitioned(&h, &s, "exports/csv/", &want).await;
    let mut ids = Vec::new();
    for (key, _) in &objects {
        let body = read_object(&client, &h.bucket, key).await;
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(body.as_slice());
        assert_eq!(
            csv.headers().unwrap(),
            vec!["id", "created_at", "note"],
            "{key}"
        );
        for record in csv.records() {
            let record = record.unwrap();
            assert_eq!(&record[1][..10], dt_of(key), "{key}: {record:?}");
            let id: u64 = record[0].parse().unwrap();
            let note = match id % 3 {
                0 => format!("two\nlines, \"q\" {id}"),
                _ => String::new(),
            };
            assert_eq!(record[2], note, "{key}: {record:?}");
            ids.push(id);
        }
    }
    all_ids(ids);
}

/// A partitioned run that fails half-way leaves nothing: a value the key cannot format
/// (row 15,000 of 20,000, after objects rolled at 200 rows had completed) fails NDJSON and
/// Parquet runs with an error naming the row and the column; an injected panic in the copy
/// fails a CSV run; a `{field:…}` that is no result column is refused listing the columns.
/// No object is left under the prefix and no multipart upload in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_export_that_fails_half_way_leaves_nothing() {
    let pg = PgServer::start().unwrap();
    let h = Harness::start("export-part-bad", &[("DATABASE_URL", pg.admin_url())], None).await;
    let query = "SELECT i AS id, CASE WHEN i = 15000 THEN 'not a day' \
                 ELSE to_char(date '2026-11-01' + i / 1000, 'YYYY-MM-DD') END AS day, \
                 repeat('x', 50) AS pad FROM generate_series(1, 20000) AS i";
    for (format, ext) in [("ndjson", "ndjson"), ("parquet", "parquet")] {
        let prefix = format!("exports/bad-{format}/");
        let mut job = h.job(
            query,
            format,
            &format!("{prefix}dt={{field:day:%Y-%m-%d}}/{{part}}.{ext}"),
        );
        job["destination"]["max_object_records"] = json!(200);
        let (kind, message) = error(h.invoke(job, Duration::from_secs(120)).await);
        assert_eq!(kind, "InvalidInput", "{format}: {message}");
        assert!(
            message.contains("row 15000")
                && message.contains("column \"day\"")
                && message.contains("not a day"),
            "{format}: {message}"
        );
        let left = list_objects(&h, &prefix).await;
        assert!(left.is_empty(), "{format}: objects left: {left:?}");
        h.assert_nothing_written(&format!("{prefix}x")).await;
    }

    let job = h.job(
        query,
        "csv",
        "exports/bad-field/dt={field:created:%Y-%m-%d}/{part}.csv",
    );
    let (kind, message) = error(h.invoke(job, Duration::from_secs(120)).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(
        message.contains("{field:created} is not a column") && message.contains("id, day, pad"),
        "{message}"
    );
    assert!(list_objects(&h, "exports/bad-field/").await.is_empty());

    let job = h.job(query, "csv", "exports/no-part/dt={field:day}/x.csv");
    let (_, message) = error(h.invoke(job, Duration::from_secs(120)).await);
    assert!(message.contains("needs {part}"), "{message}");

    let mut job = h.job(query, "csv", "exports/keep/dt={field:day}/{part}.csv");
    job["destination"]["overwrite"] = json!(false);
    let (kind, message) = error(h.invoke(job, Duration::from_secs(120)).await);
    assert_eq!(kind, "InvalidInput", "{message}");
    assert!(message.contains("overwrite: false"), "{message}");

    // A panic in the copy, after objects completed.
    let panicking = Harness::start(
        "export-part-panic",
        &[
            ("DATABASE_URL", pg.admin_url()),
            ("SLUICE_FAULT", "export.chunk:15".to_owned()),
        ],
        None,
    )
    .await;
    let mut job = panicking.job(
        "SELECT i AS id, to_char(date '2026-11-01' + i / 1000, 'YYYY-MM-DD') AS day, \
         repeat('x', 100) AS pad FROM generate_series(1, 200000) AS i",
        "csv",
        "exports/panic/dt={field:day}/{part}.csv",
    );
    job["destination"]["max_object_records"] = json!(200);
    let (kind, message) = error(panicking.invoke(job, Duration::from_secs(120)).await);
    assert_eq!(kind, "Internal", "{message}");
    assert!(message.contains("export.chunk"), "{message}");
    let left = list_objects(&panicking, "exports/panic/").await;
    assert!(left.is_empty(), "objects left: {left:?}");
    panicking.assert_nothing_written("exports/panic/x").await;
}
