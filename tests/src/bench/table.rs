//! The transform cases' source (CSV and Parquet output alike): a parking-violations CSV
//! ([`crate::parking`]), gzip level 1, a new seed every run (Garage deduplicates blocks),
//! streamed into Garage as the run's source object; what the seed pipeline
//! (`events/transform-s3.pipeline.json`) must make of it, computed from the generator's rows,
//! independently of the code under test; and the checks of a tool's output against it.

use std::io::Read as _;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use async_compression::tokio::bufread::GzipEncoder;
use sluice::sink::{self, S3Target, UploadOptions};
use tokio::io::BufReader;

use crate::parking::{Flaw, ParkingCsv, ParkingRow, write_header};

/// The seed pipeline, as the repository ships it.
pub const SEED_PIPELINE: &str = include_str!("../../../events/transform-s3.pipeline.json");

/// The output header of the seed pipeline.
const HEADER: [&str; 3] = ["vehicle_make", "issuing_agency", "address"];

/// One generated CSV source, uploaded.
#[derive(Clone, Debug)]
pub struct TableSource {
    /// Its key (under the pipeline's `incoming/` prefix).
    pub key: String,
    /// Where every tool writes the output: the pipeline's `clean/{source_stem}.csv.gz`.
    pub output_key: String,
    /// Where every tool writes the Parquet output: `clean/{source_stem}.parquet`.
    pub parquet_key: String,
    /// Where bad rows go: the pipeline's `quarantine/{source_stem}.ndjson`.
    pub quarantine_key: String,
    /// The seed it was generated from.
    pub seed: u64,
    /// Uncompressed length (the figure throughput is computed from).
    pub len: u64,
    /// Length of the gzip object.
    pub gz_len: u64,
    /// Data rows.
    pub rows: u64,
    /// What the pipeline must produce.
    pub expected: Expected,
}

/// What the seed pipeline must produce from a source.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expected {
    /// Rows written (header excluded).
    pub rows_out: u64,
    /// Rows quarantined (ragged, bad date).
    pub quarantined: u64,
    /// CRC64/NVME of the decoded output as sluice writes it (minimal quoting, `\n`).
    pub crc: u64,
    /// Its length.
    pub len: u64,
    /// [`RowDigest`] of the output's parsed rows, header included: the same whatever the
    /// quoting.
    pub rows_digest: u64,
}

/// An order-sensitive digest of parsed CSV rows: CRC64/NVME over every field followed by
/// `0x1f`, every row followed by `0x1e`.
struct RowDigest(crc_fast::Digest);

impl RowDigest {
    fn new() -> RowDigest {
        RowDigest(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme))
    }

    fn row<'a>(&mut self, fields: impl IntoIterator<Item = &'a [u8]>) {
        for f in fields {
            self.0.update(f);
            self.0.update(&[0x1f]);
        }
        self.0.update(&[0x1e]);
    }

    fn finalize(&self) -> u64 {
        self.0.finalize()
    }
}

fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// Rows, uncompressed length and expected output of `ParkingCsv::new(seed, size)`: rows are
/// added while the file is shorter than `size`.
pub fn expected(seed: u64, size: u64) -> (u64, u64, Expected) {
    let mut line = Vec::with_capacity(1024);
    write_header(&mut line);
    let mut total = line.len() as u64;
    let mut bytes = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    let mut rows_digest = RowDigest::new();
    let header = format!("{}\n", HEADER.join(","));
    bytes.update(header.as_bytes());
    rows_digest.row(HEADER.iter().map(|h| h.as_bytes()));
    let mut e = Expected {
        len: header.len() as u64,
        ..Expected::default()
    };
    let mut rows = 0;
    while total < size {
        line.clear();
        let r = ParkingRow::generate(seed, rows);
        r.write_csv(&mut line);
        total += line.len() as u64;
        rows += 1;
        if r.flaw != Flaw::None {
            e.quarantined += 1;
            continue;
        }
        if r.state == "NJ" && r.make == "FORD" && r.agency == "P" {
            let address = format!("{}, {}, {}", r.house, r.street, r.state);
            let out = format!("{},police,{}\n", quote(r.make), quote(&address));
            bytes.update(out.as_bytes());
            e.len += out.len() as u64;
            rows_digest.row([r.make.as_bytes(), b"police", address.as_bytes()]);
            e.rows_out += 1;
        }
    }
    e.crc = bytes.finalize();
    e.rows_digest = rows_digest.finalize();
    (rows, total, e)
}

/// Generates the CSV of `seed` (at least `size` bytes), gzips it (level 1) and streams it into
/// `bucket` as `incoming/bench-<seed>.csv.gz`, computing the expected output meanwhile.
pub async fn upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    seed: u64,
    size: u64,
) -> anyhow::Result<TableSource> {
    let stem = format!("bench-{seed}");
    let key = format!("incoming/{stem}.csv.gz");
    let want = tokio::task::spawn_blocking(move || expected(seed, size));
    let gz = GzipEncoder::with_quality(
        BufReader::with_capacity(1 << 20, ParkingCsv::new(seed, size)),
        async_compression::Level::Fastest,
    );
    let target = S3Target::new(client.clone(), bucket, &key);
    let options = UploadOptions::new(sluice::MemoryBudget::for_memory_mib(1024).schedule());
    let uploaded = sink::upload(Arc::new(target), gz, &options, |e| sluice::Error::Encode {
        codec: "gzip",
        offset: 0,
        source: e,
    })
    .await
    .with_context(|| format!("uploading the transform source {key}"))?;
    let (rows, len, expected) = want.await?;
    Ok(TableSource {
        key,
        output_key: format!("clean/{stem}.csv.gz"),
        parquet_key: format!("clean/{stem}.parquet"),
        quarantine_key: format!("quarantine/{stem}.ndjson"),
        seed,
        len,
        gz_len: uploaded.bytes,
        rows,
        expected,
    })
}

/// Checks a tool's output (the gzip CSV object, `gz`) and quarantine (`quarantine`, NDJSON)
/// against the expected ones. The row count must match (header + `rows_out` lines); the
/// decoded bytes must be sluice's exactly (`exact`), or else hold the same parsed rows in the
/// same order (Python's and polars' writers may quote differently). Returns whether the bytes
/// were identical.
pub fn check(
    gz: &[u8],
    quarantine: Option<&[u8]>,
    want: &Expected,
    exact: bool,
) -> anyhow::Result<bool> {
    let mut csv_bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(gz)
        .read_to_end(&mut csv_bytes)
        .context("decoding the output (gzip)")?;
    let lines = csv_bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    if lines != want.rows_out + 1 {
        bail!(
            "{lines} lines decoded; expected {} rows + the header",
            want.rows_out
        );
    }
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    digest.update(&csv_bytes);
    let (crc, len) = (digest.finalize(), csv_bytes.len() as u64);
    let identical = (crc, len) == (want.crc, want.len);
    if !identical {
        if exact {
            bail!(
                "decoded output: {len} bytes, CRC64NVME {crc:016x}; expected {} bytes, {:016x}",
                want.len,
                want.crc
            );
        }
        check_rows(&csv_bytes, want)?;
    }
    check_quarantine(quarantine, want)?;
    Ok(identical)
}

/// Checks that `csv_bytes`, parsed (header included, any quoting), holds the expected rows in
/// the expected order.
pub fn check_rows(csv_bytes: &[u8], want: &Expected) -> anyhow::Result<()> {
    let mut rows = RowDigest::new();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(csv_bytes);
    for record in reader.byte_records() {
        let record = record.context("parsing the output CSV")?;
        rows.row(record.iter());
    }
    if rows.finalize() != want.rows_digest {
        bail!("the output's rows differ from the expected ones (parsed-row digest)");
    }
    Ok(())
}

/// Checks that the quarantine (NDJSON, `None` when no object was written) holds one line per
/// bad row.
pub fn check_quarantine(quarantine: Option<&[u8]>, want: &Expected) -> anyhow::Result<()> {
    let bad = quarantine.map_or(0, |q| q.iter().filter(|&&b| b == b'\n').count() as u64);
    if bad != want.quarantined {
        bail!("{bad} quarantined rows; expected {}", want.quarantined);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// The expected output, written with every field quoted (as another writer might), and
    /// with `skip` rows left out.
    fn output(seed: u64, size: u64, skip: usize) -> Vec<u8> {
        let mut out = b"\"vehicle_make\",\"issuing_agency\",\"address\"\n".to_vec();
        let (rows, _, _) = expected(seed, size);
        let mut skipped = 0;
        for i in 0..rows {
            let r = ParkingRow::generate(seed, i);
            if r.flaw == Flaw::None && r.state == "NJ" && r.make == "FORD" && r.agency == "P" {
                if skipped < skip {
                    skipped += 1;
                    continue;
                }
                let address = format!("{}, {}, {}", r.house, r.street, r.state);
                out.extend_from_slice(
                    format!("\"{}\",\"police\",\"{address}\"\n", r.make).as_bytes(),
                );
            }
        }
        out
    }

    #[test]
    fn parsed_rows_accept_other_quoting_and_catch_missing_rows() {
        let (_, _, want) = expected(5, 2_000_000);
        let quarantine = "{}\n".repeat(want.quarantined as usize);
        let q = Some(quarantine.as_bytes());
        let same = gzip(&output(5, 2_000_000, 0));
        assert!(!check(&same, q, &want, false).unwrap());
        assert!(
            check(&same, q, &want, true).is_err(),
            "exact bytes required"
        );
        assert!(
            check(&same, None, &want, false).is_err(),
            "quarantine missing"
        );
        let short = gzip(&output(5, 2_000_000, 1));
        assert!(check(&short, q, &want, false).is_err());
    }
}
