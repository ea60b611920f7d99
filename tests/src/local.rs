//! What the sample events in `events/` need to run against the local stack, for `make watch`
//! (`sluice-local watch`): the file `events/ingest-http.json` fetches, served on
//! `127.0.0.1:8088`; the object `events/transform-s3.direct.json` names, in the demo bucket; a
//! Postgres with the `orders` table `events/export-postgres.json` queries; and the environment
//! each function reads at start (the S3 endpoint and credentials, `PIPELINE`, `DATABASE_URL`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use async_compression::tokio::bufread::GzipEncoder;
use futures::StreamExt;
use sluice::sink::{self, S3Target, UploadOptions};
use tokio::io::{AsyncWriteExt, BufReader};

use crate::parking::ParkingCsv;
use crate::postgres::PgServer;
use crate::{S3Server, workspace_root};

const MIB: u64 = 1024 * 1024;

/// The port `events/ingest-http.json` reads `big.json` from.
pub const SAMPLE_HTTP_PORT: u16 = 8088;

/// The key of the object `events/transform-s3.direct.json` names.
pub const SAMPLE_TRANSFORM_KEY: &str = "incoming/parking violations 2026.csv.gz";

/// The local servers and data behind the sample events; the servers stop when it is dropped.
pub struct LocalSamples {
    /// The folder served on [`SAMPLE_HTTP_PORT`].
    pub served: PathBuf,
    /// The Postgres holding `orders`.
    pub postgres: PgServer,
    /// `python3 -m http.server` on the served folder; `None` when the port was taken (then
    /// whatever listens there is expected to serve `big.json`).
    http: Option<tokio::process::Child>,
    /// The environment the functions need, beyond the S3 server's.
    pub env: Vec<(String, String)>,
}

impl LocalSamples {
    /// Writes a `size_mib` JSON document to serve, uploads a `size_mib` parking-violations CSV
    /// (gzip) to `bucket`, starts Postgres with `orders` rows for 2026-11-01, and serves the
    /// document. Each step prints what it did.
    pub async fn prepare(server: &S3Server, bucket: &str, size_mib: u64) -> anyhow::Result<Self> {
        let served = workspace_root().join(".local/watch/serve");
        std::fs::create_dir_all(&served)?;
        let doc = served.join("big.json");
        write_document(&doc, size_mib * MIB).await?;
        println!(
            "watch: {} ({size_mib} MiB of JSON records) for events/ingest-http.json",
            doc.display()
        );

        upload_parking(server, bucket, size_mib * MIB).await?;
        println!("watch: s3://{bucket}/{SAMPLE_TRANSFORM_KEY} for events/transform-s3.direct.json");

        let postgres = PgServer::start().context("starting Postgres for export-postgres")?;
        seed_orders(&postgres).await?;
        println!(
            "watch: Postgres on 127.0.0.1:{} with table orders for events/export-postgres.json",
            postgres.port()
        );

        let http = serve(&served).await?;
        let pipeline_path = workspace_root().join("events/transform-s3.pipeline.json");
        let pipeline = std::fs::read_to_string(&pipeline_path)
            .with_context(|| format!("reading {}", pipeline_path.display()))?;
        let mut env = server.lambda_env();
        env.extend([
            ("PIPELINE".to_owned(), pipeline),
            ("DATABASE_URL".to_owned(), postgres.admin_url()),
            // The sample sources listen on loopback, which the network policy refuses by default.
            (
                "SLUICE_ALLOW_PRIVATE_NETWORKS".to_owned(),
                "true".to_owned(),
            ),
        ]);
        Ok(LocalSamples {
            served,
            postgres,
            http,
            env,
        })
    }

    /// Stops the file server (Postgres stops when `self` is dropped).
    pub async fn stop(mut self) {
        if let Some(child) = &mut self.http {
            let _ = child.kill().await;
        }
    }
}

async fn write_document(path: &Path, size: u64) -> anyhow::Result<()> {
    let file = tokio::fs::File::create(path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut body = std::pin::pin!(crate::fixture::json_stream(7, size, false));
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk?).await?;
    }
    out.flush().await?;
    Ok(())
}

async fn upload_parking(server: &S3Server, bucket: &str, size: u64) -> anyhow::Result<()> {
    let client = server.client().await;
    let gz = GzipEncoder::with_quality(
        BufReader::with_capacity(1 << 20, ParkingCsv::new(2026, size)),
        async_compression::Level::Fastest,
    );
    let target = S3Target::new(client, bucket, SAMPLE_TRANSFORM_KEY);
    let options = UploadOptions::new(sluice::MemoryBudget::for_memory_mib(1024).schedule());
    sink::upload(Arc::new(target), gz, &options, |e| sluice::Error::Encode {
        codec: "gzip",
        offset: 0,
        source: e,
    })
    .await
    .with_context(|| format!("uploading s3://{bucket}/{SAMPLE_TRANSFORM_KEY}"))?;
    Ok(())
}

/// `orders`: 200,000 rows, one every 1.296 s from 2026-10-31 12:00 UTC, 66,666 of them on
/// 2026-11-01, the day the sample export selects (in UTC, the database's time zone).
async fn seed_orders(pg: &PgServer) -> anyhow::Result<()> {
    pg.client()
        .await?
        .batch_execute(
            "ALTER DATABASE postgres SET timezone TO 'UTC';
             CREATE TABLE orders (
                 id bigint PRIMARY KEY,
                 customer text NOT NULL,
                 amount numeric(12, 2) NOT NULL,
                 created_at timestamptz NOT NULL
             );
             INSERT INTO orders
             SELECT i, 'customer-' || (i % 997), (i % 10000) / 100.0,
                    timestamptz '2026-10-31 12:00:00+00' + (i * interval '1.296 second')
             FROM generate_series(1, 200000) i;",
        )
        .await
        .context("creating the orders table")?;
    Ok(())
}

/// `python3 -m http.server` on [`SAMPLE_HTTP_PORT`], as the README tells a user to run; if the
/// port is taken, a warning and no server.
async fn serve(dir: &Path) -> anyhow::Result<Option<tokio::process::Child>> {
    if std::net::TcpListener::bind(("127.0.0.1", SAMPLE_HTTP_PORT)).is_err() {
        println!(
            "watch: port {SAMPLE_HTTP_PORT} is taken; events/ingest-http.json will read \
             http://127.0.0.1:{SAMPLE_HTTP_PORT}/big.json from whatever listens there"
        );
        return Ok(None);
    }
    let child = tokio::process::Command::new("python3")
        .args(["-m", "http.server", &SAMPLE_HTTP_PORT.to_string()])
        .args(["--bind", "127.0.0.1", "--directory"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting python3 -m http.server")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", SAMPLE_HTTP_PORT))
            .await
            .is_ok()
        {
            println!(
                "watch: serving {} on http://127.0.0.1:{SAMPLE_HTTP_PORT}/",
                dir.display()
            );
            return Ok(Some(child));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("python3 -m http.server did not start on port {SAMPLE_HTTP_PORT}")
}
