//! The export case's source: a table in a throwaway local Postgres ([`PgServer`]: `initdb` +
//! `pg_ctl` in a temporary directory, outside the boxes like Garage and nginx), filled once per
//! bench run server-side (`INSERT ... SELECT ... FROM generate_series`) so that its CSV is
//! about the requested size, and read by every tool as a login role that may only read.
//!
//! No text column holds a comma, a quote or a newline, so every CSV writer renders a row as
//! one line and a line count of the output is its row count.

use anyhow::Context as _;
use futures::StreamExt as _;

use crate::postgres::PgServer;

/// The query every export tool runs.
pub const QUERY: &str = "SELECT id, name, kind, value, ts, active, note FROM bench_export";

/// The CSV header every tool writes (the query's columns).
pub const HEADER: &str = "id,name,kind,value,ts,active,note";

/// The login role the tools connect as (`pg_read_all_data`).
const READER: &str = "bench_reader";

/// Bytes of CSV per row, about (the generator aims at the requested size with it).
const ROW_BYTES: u64 = 164;

/// The generated table and the server holding it; the server stops when this is dropped.
#[derive(Debug)]
pub struct PgTable {
    server: PgServer,
    /// `postgres://bench_reader:...@127.0.0.1:PORT/postgres?sslmode=disable`.
    pub url: String,
    /// Rows of the table.
    pub rows: u64,
    /// Bytes of `COPY (QUERY) TO STDOUT (FORMAT csv, HEADER)`: the figure throughput is
    /// computed from.
    pub len: u64,
}

impl PgTable {
    /// Starts a server and fills the table with rows whose CSV is about `size` bytes.
    pub async fn create(size: u64) -> anyhow::Result<PgTable> {
        let server = tokio::task::block_in_place(PgServer::start)
            .context("starting the export case's Postgres (scripts/setup.sh installs it)")?;
        let rows = (size / ROW_BYTES).max(1);
        let client = server.client().await?;
        // Three words of a fixed list and two md5s: text that compresses as real text does
        // (neither random nor one repeated string), with no comma, quote or newline.
        client
            .batch_execute(&format!(
                "CREATE TABLE bench_export (
                    id bigint PRIMARY KEY, name text NOT NULL, kind text NOT NULL,
                    value double precision NOT NULL, ts timestamptz NOT NULL,
                    active boolean NOT NULL, note text NOT NULL);
                 INSERT INTO bench_export
                 SELECT i,
                        'customer-' || (i * 7919 % 1000003),
                        (ARRAY['order', 'refund', 'invoice', 'payment', 'shipment'])[i % 5 + 1],
                        (i * 7919 % 10000000) / 100.0,
                        timestamptz '2024-01-01 00:00:00+00' + i * interval '1.5 seconds',
                        i % 3 <> 0,
                        (ARRAY['priority', 'standard', 'delayed', 'returned', 'express',
                               'bulk', 'gift'])[i % 7 + 1] || ' ' ||
                        (ARRAY['north warehouse', 'south depot', 'east hub', 'west dock',
                               'central'])[i % 5 + 1] || ' ' ||
                        (ARRAY['paid by card', 'paid on delivery', 'invoiced net 30'])
                            [i % 3 + 1] || ' ' ||
                        md5(i::text) || ' ' || md5((i * 31)::text)
                 FROM generate_series(1::bigint, {rows}) AS i;
                 CREATE ROLE {READER} LOGIN PASSWORD '{READER}-pw';
                 GRANT pg_read_all_data TO {READER};"
            ))
            .await
            .context("generating the export table")?;
        // Outside the statements above: they run as one transaction, VACUUM cannot.
        client
            .batch_execute("VACUUM ANALYZE bench_export")
            .await
            .context("VACUUM of the export table")?;
        let len = csv_len(&client).await?;
        let url = server.url(
            "127.0.0.1",
            READER,
            &format!("{READER}-pw"),
            "postgres",
            "sslmode=disable",
        );
        Ok(PgTable {
            server,
            url,
            rows,
            len,
        })
    }

    /// The directory of the server's binaries (`psql`).
    pub fn bin_dir(&self) -> &std::path::Path {
        self.server.bin_dir()
    }
}

/// Bytes of the query's CSV, header included, as `COPY` renders it.
async fn csv_len(client: &tokio_postgres::Client) -> anyhow::Result<u64> {
    let stream = client
        .copy_out(&format!("COPY ({QUERY}) TO STDOUT (FORMAT csv, HEADER)"))
        .await
        .context("COPY of the export table")?;
    let mut stream = std::pin::pin!(stream);
    let mut len = 0;
    while let Some(chunk) = stream.next().await {
        len += chunk.context("COPY of the export table")?.len() as u64;
    }
    Ok(len)
}
