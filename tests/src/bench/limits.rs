//! The runner's own sub-modes, run as processes inside a box like any tool:
//!
//! - `sluice-bench sink-alone BUCKET KEY BYTES`: sluice's multipart sink
//!   ([`sluice::sink::upload`], the schedule of a 256 MB function) uploading `BYTES` of
//!   pseudo-random bytes generated in memory (unique, so Garage cannot deduplicate them); S3
//!   settings from the standard AWS environment variables. Prints `{"bytes":N,"parts":P}`.
//! - `sluice-bench compress FILE BYTES MODE`: the first `BYTES` of `FILE` read into memory, then
//!   compressed with sluice's [`Compression`] (`MODE`: `gzip-N`, `zstd-N`) on one thread, timed;
//!   the output is decoded again and compared. Prints `{"bytes_in":..,"bytes_out":..,"secs":..}`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::{Context as _, bail};
use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use serde_json::json;
use sluice::codec::{Codec, Compression};
use sluice::sink::{S3Target, UploadOptions, upload};
use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};

/// Parses `gzip-N` / `zstd-N`.
pub fn parse_compression(mode: &str) -> anyhow::Result<Compression> {
    let (codec, level) = mode
        .split_once('-')
        .with_context(|| format!("mode {mode:?}: expected gzip-N or zstd-N"))?;
    let codec = match codec {
        "gzip" => Codec::Gzip,
        "zstd" => Codec::Zstd,
        other => bail!("mode {mode:?}: unknown codec {other:?}"),
    };
    let level: i32 = level
        .parse()
        .with_context(|| format!("mode {mode:?}: bad level"))?;
    Compression::new(codec)
        .with_level(level)
        .map_err(anyhow::Error::msg)
}

/// `len` pseudo-random bytes (xorshift64*), generated as they are read.
struct Generated {
    remaining: u64,
    state: u64,
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.remaining) as usize & !7;
        let n = if n == 0 {
            (buf.remaining() as u64).min(self.remaining) as usize
        } else {
            n
        };
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let mut x = self.state;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.state = x;
            let word = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            let take = (n - out.len()).min(8);
            out.extend_from_slice(&word[..take]);
        }
        buf.put_slice(&out);
        self.remaining -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// `sluice-bench sink-alone BUCKET KEY BYTES`.
pub async fn sink_alone(args: &[String]) -> anyhow::Result<()> {
    let [bucket, key, bytes] = args else {
        bail!("usage: sluice-bench sink-alone BUCKET KEY BYTES");
    };
    let bytes: u64 = bytes.parse().context("BYTES")?;
    let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let target = Arc::new(S3Target::new(sluice::s3::client(&conf), bucket, key));
    let options = UploadOptions::new(sluice::MemoryBudget::for_memory_mib(256).schedule());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
        | 1;
    let reader = Generated {
        remaining: bytes,
        state: seed,
    };
    let done = upload(target, reader, &options, |e| sluice::Error::SourceRead {
        url: "memory".to_owned(),
        offset: 0,
        class: "generator failed",
        message: e.to_string(),
    })
    .await?;
    println!("{}", json!({"bytes": done.bytes, "parts": done.parts}));
    Ok(())
}

/// `sluice-bench compress FILE BYTES MODE`.
pub async fn compress(args: &[String]) -> anyhow::Result<()> {
    let [file, bytes, mode] = args else {
        bail!("usage: sluice-bench compress FILE BYTES MODE");
    };
    let bytes: u64 = bytes.parse().context("BYTES")?;
    let compression = parse_compression(mode)?;
    let mut input = Vec::with_capacity(bytes as usize);
    tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {file}"))?
        .take(bytes)
        .read_to_end(&mut input)
        .await?;
    let input = Arc::new(input);
    let start = Instant::now();
    let mut encoder = compression.encoder(io::Cursor::new(ArcBytes(input.clone())));
    let mut output = Vec::with_capacity(input.len() / 3);
    encoder.read_to_end(&mut output).await?;
    let secs = start.elapsed().as_secs_f64();
    // Round trip, outside the timing.
    let mut decoded = Vec::with_capacity(input.len());
    match compression.codec {
        Codec::Gzip => {
            GzipDecoder::new(&output[..])
                .read_to_end(&mut decoded)
                .await?
        }
        Codec::Zstd => {
            ZstdDecoder::new(&output[..])
                .read_to_end(&mut decoded)
                .await?
        }
    };
    if decoded[..] != input[..] {
        bail!("{mode}: the compressed output does not decode to the input");
    }
    println!(
        "{}",
        json!({"bytes_in": input.len(), "bytes_out": output.len(), "secs": secs})
    );
    Ok(())
}

struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
