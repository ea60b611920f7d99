//! The source documents: one generated JSON file per run (a new seed each time, so Garage,
//! which deduplicates blocks by content, never sees the same bytes twice), served by nginx.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures::StreamExt as _;

use crate::fixture::{json_cursor, json_stream};

/// One generated document on disk.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Its path (nginx serves its directory).
    pub path: PathBuf,
    /// Its file name, the URL path under the nginx root.
    pub name: String,
    /// The seed it was generated from.
    pub seed: u64,
    /// Its length.
    pub len: u64,
    /// CRC64/NVME of its bytes.
    pub crc: u64,
    /// How many records its `data` array holds.
    pub records: u64,
    /// CRC64/NVME and length of the NDJSON form of the records (each record's bytes, compact as
    /// generated, followed by `\n`): what `"records": "$.data[*]"` must produce.
    pub ndjson: (u64, u64),
}

/// Writes the `/json` document of the fixture server (`{"meta":..,"data":[..],"next_cursor":..}`,
/// at least `size` bytes, from `seed`) to `<dir>/src-<seed>.json`, and computes its checksums.
pub fn generate(dir: &Path, seed: u64, size: u64) -> anyhow::Result<SourceFile> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = format!("src-{seed}.json");
    let path = dir.join(&name);
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut whole = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    let mut ndjson = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    let (head, tail) = (
        format!(
            r#"{{"meta":{{"seed":{seed},"requested_bytes":{size},"source":"sluice-fixture"}},"data":["#
        ),
        format!(r#"],"next_cursor":"{}"}}"#, json_cursor(seed, size)),
    );
    let mut len = 0u64;
    let mut records = 0u64;
    let mut ndjson_len = 0u64;
    let mut line = Vec::with_capacity(1 << 17);
    let mut stream = std::pin::pin!(json_stream(seed, size, false));
    futures::executor::block_on(async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            out.write_all(&chunk)?;
            whole.update(&chunk);
            len += chunk.len() as u64;
            // The records part of this chunk, as NDJSON: records are never split across
            // chunks and hold no `,{"id":` inside, so separators are easy to find.
            let mut body: &[u8] = &chunk;
            if records == 0 {
                body = body.strip_prefix(head.as_bytes()).unwrap_or(body);
            }
            if let Some(rest) = body.strip_suffix(tail.as_bytes()) {
                body = rest;
            }
            line.clear();
            let mut start = 0;
            let mut i = 0;
            while i < body.len() {
                if body[i] == b',' && body[i..].starts_with(b",{\"id\":") {
                    if i > start {
                        line.extend_from_slice(&body[start..i]);
                        line.push(b'\n');
                        records += 1;
                    }
                    start = i + 1;
                }
                i += 1;
            }
            if start < body.len() {
                line.extend_from_slice(&body[start..]);
                line.push(b'\n');
                records += 1;
            }
            ndjson.update(&line);
            ndjson_len += line.len() as u64;
        }
        anyhow::Ok(())
    })?;
    out.flush()?;
    Ok(SourceFile {
        path,
        name,
        seed,
        len,
        crc: whole.finalize(),
        records,
        ndjson: (ndjson.finalize(), ndjson_len),
    })
}
