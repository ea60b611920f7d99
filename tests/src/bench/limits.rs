//! The runner's own sub-modes, run as processes inside a box like any tool, each planning its
//! memory as a function of `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` MB (default 256) does; the runner
//! sets that to the box's memory:
//!
//! - `sluice-bench sink-alone BUCKET KEY BYTES`: sluice's multipart sink
//!   ([`sluice::sink::upload`], the part schedule of the function's memory) uploading `BYTES`
//!   of NDJSON bytes generated in memory (stamped unique, so Garage cannot deduplicate them);
//!   S3 settings from the standard AWS environment variables. Prints `{"bytes":N,"parts":P}`.
//! - `sluice-bench compress FILE BYTES MODE`: the first `BYTES` of `FILE` read into memory, then
//!   compressed with sluice's [`Compression`] (`MODE`: `gzip-N`, `zstd-N`) on the threads the
//!   function's memory buys ([`sluice::MemoryBudget::compress_threads`]: one below 3,538 MB),
//!   timed; the output is decoded again and compared. Prints
//!   `{"bytes_in":..,"bytes_out":..,"secs":..,"threads":..}`.

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

/// `remaining` bytes of the fixture's NDJSON (the same kind of bytes as the documents), copied
/// from a 4 MiB template in which every 64 KiB block gets a stamp of its own (a run id and a
/// counter), so no two blocks of any run are equal and Garage cannot deduplicate them. Costs
/// little more than the copy.
struct Generated {
    remaining: u64,
    template: Vec<u8>,
    offset: usize,
    run: u64,
    block: u64,
}

const STAMP_EVERY: usize = 64 * 1024;

impl Generated {
    fn new(remaining: u64, run: u64) -> Generated {
        let template = futures::executor::block_on(async {
            use futures::StreamExt as _;
            let mut out = Vec::with_capacity(4 << 20);
            let mut stream = std::pin::pin!(crate::fixture::body_stream(run, 4 << 20));
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk.expect("generated in memory"));
            }
            out
        });
        Generated {
            remaining,
            template,
            offset: 0,
            run,
            block: 0,
        }
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while buf.remaining() > 0 && this.remaining > 0 {
            let block_end = (this.offset / STAMP_EVERY + 1) * STAMP_EVERY;
            let n = (block_end - this.offset)
                .min(buf.remaining())
                .min(this.remaining as usize);
            let start = buf.filled().len();
            buf.put_slice(&this.template[this.offset..this.offset + n]);
            if this.offset % STAMP_EVERY == 0 {
                // The block's first 16 bytes (or fewer at the very end): run id and counter.
                let mut stamp = [0u8; 16];
                stamp[..8].copy_from_slice(&this.run.to_le_bytes());
                stamp[8..].copy_from_slice(&this.block.to_le_bytes());
                this.block += 1;
                let k = n.min(16);
                buf.filled_mut()[start..start + k].copy_from_slice(&stamp[..k]);
            }
            this.offset = (this.offset + n) % this.template.len();
            this.remaining -= n as u64;
        }
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
    let options = UploadOptions::new(sluice::MemoryBudget::from_env().schedule());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
        | 1;
    let reader = Generated::new(bytes, seed);
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
    // As the object writer feeds it: 64 KiB at a time (a byte copy's read size), on the
    // threads of the function's memory (what `encoder()` picks).
    let threads = sluice::MemoryBudget::from_env().compress_threads();
    let mut encoder = compression.encoder_with_threads(threads)?;
    let mut output = Vec::with_capacity(input.len() / 3);
    for chunk in input.chunks(64 * 1024) {
        output.extend_from_slice(encoder.encode(chunk)?);
    }
    output.extend_from_slice(&encoder.finish()?);
    let secs = start.elapsed().as_secs_f64();
    // Round trip, outside the timing, without holding a second copy.
    let mut decoder: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match compression.codec {
        Codec::Gzip => {
            let mut d = GzipDecoder::new(&output[..]);
            d.multiple_members(true);
            Box::new(d)
        }
        Codec::Zstd => {
            let mut d = ZstdDecoder::new(&output[..]);
            d.multiple_members(true);
            Box::new(d)
        }
        // `encoder()` above refuses the Parquet page codecs.
        Codec::Snappy | Codec::None => bail!("{mode}: not a stream codec"),
    };
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = 0usize;
    loop {
        let n = decoder.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        if input.get(at..at + n) != Some(&chunk[..n]) {
            bail!("{mode}: the compressed output does not decode to the input (at byte {at})");
        }
        at += n;
    }
    if at != input.len() {
        bail!(
            "{mode}: the output decodes to {at} bytes, the input has {}",
            input.len()
        );
    }
    println!(
        "{}",
        json!({
            "bytes_in": input.len(),
            "bytes_out": output.len(),
            "secs": secs,
            "threads": threads,
        })
    );
    Ok(())
}
