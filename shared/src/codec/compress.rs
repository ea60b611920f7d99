use std::fmt;

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use flate2::write::GzEncoder;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::budget::MemoryBudget;

/// An output compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// gzip (RFC 1952), via zlib-rs.
    Gzip,
    /// Zstandard.
    Zstd,
    /// Snappy: a Parquet page codec only (`format: parquet`).
    Snappy,
    /// No compression: with `format: parquet`, uncompressed pages; elsewhere the same as no
    /// `compression` at all.
    None,
}

impl Codec {
    /// The level used when the job spec names none.
    ///
    /// gzip defaults to 1: on a 256 MB Lambda (about 1/7 of a vCPU) compression is the
    /// bottleneck, and level 1 is several times faster than level 6 for an output only a few
    /// percent larger on typical JSON. zstd defaults to 3, its own default, which beats gzip -6
    /// on both speed and size.
    pub fn default_level(self) -> i32 {
        match self {
            Codec::Gzip => 1,
            Codec::Zstd => 3,
            Codec::Snappy | Codec::None => 0,
        }
    }

    fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Codec::Gzip => 1..=9,
            Codec::Zstd => 1..=19,
            Codec::Snappy | Codec::None => 0..=0,
        }
    }

    /// Lowercase name: `gzip`, `zstd`, `snappy`, `none`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
            Codec::Snappy => "snappy",
            Codec::None => "none",
        }
    }

    /// Whether this codec compresses a byte stream (gzip, zstd); `snappy` and `none` only
    /// name Parquet page codecs.
    pub fn wraps_stream(self) -> bool {
        matches!(self, Codec::Gzip | Codec::Zstd)
    }

    /// The MIME type of a file in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Gzip => "application/gzip",
            Codec::Zstd => "application/zstd",
            Codec::Snappy | Codec::None => "application/octet-stream",
        }
    }
}

/// Output compression: a codec and a level.
///
/// In a job spec: `"gzip"`, `"zstd"`, or `{"codec": "gzip", "level": 6}`. Levels: gzip 1–9
/// (default 1), zstd 1–19 (default 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Compression {
    /// The codec.
    pub codec: Codec,
    /// The level, within the codec's range.
    pub level: i32,
}

impl Compression {
    /// `codec` at its default level.
    pub fn new(codec: Codec) -> Self {
        Compression {
            codec,
            level: codec.default_level(),
        }
    }

    /// Sets the level; an error names the allowed range.
    pub fn with_level(mut self, level: i32) -> Result<Self, String> {
        let range = self.codec.levels();
        if !range.contains(&level) {
            return Err(format!(
                "compression level {level} is out of range for {} ({}..={})",
                self.codec.name(),
                range.start(),
                range.end()
            ));
        }
        self.level = level;
        Ok(self)
    }

    /// A new encoder at this codec and level, compressing on as many threads as the
    /// function's memory budget has vCPUs ([`MemoryBudget::compress_threads`] of
    /// [`MemoryBudget::from_env`]). `snappy` and `none` have none (they name Parquet page
    /// codecs): an `Unsupported` error.
    pub fn encoder(self) -> io::Result<Encoder> {
        self.encoder_with_threads(MemoryBudget::from_env().compress_threads())
    }

    /// A new encoder that compresses on `threads` threads.
    ///
    /// - zstd: its own worker threads; the output does not depend on `threads`.
    /// - gzip: one thread is the caller's own, and the stream is what zlib writes. Two or more
    ///   compress blocks of [`GZIP_BLOCK_BYTES`] in parallel, each an independent run of
    ///   deflate blocks ended on a byte boundary (through `gzp`): still one gzip member with
    ///   one CRC32, that any gzip reader reads, within 1% of the one-thread size.
    ///   `gzp` runs its own writer thread besides the `threads` compressors.
    pub fn encoder_with_threads(self, threads: u32) -> io::Result<Encoder> {
        let inner = match self.codec {
            Codec::Snappy | Codec::None => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "{} is a Parquet page codec, not a stream codec",
                        self.codec.name()
                    ),
                ));
            }
            Codec::Gzip if threads > 1 => {
                let out = SharedOutput::default();
                let writer = gzp::par::compress::ParCompressBuilder::<gzp::deflate::Gzip>::new()
                    .num_threads(threads as usize)
                    .and_then(|b| b.buffer_size(GZIP_BLOCK_BYTES))
                    .map_err(io::Error::other)?
                    .compression_level(flate2::Compression::new(self.level.unsigned_abs()))
                    .from_writer(out.clone());
                Inner::GzipParallel {
                    writer: Box::new(writer),
                    out,
                    ready: Vec::new(),
                }
            }
            Codec::Gzip => Inner::Gzip(GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(self.level.unsigned_abs()),
            )),
            Codec::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), self.level)?;
                // A content checksum (4 bytes per frame) lets every reader detect corruption,
                // as gzip's CRC32 does.
                e.include_checksum(true)?;
                // zstd's own worker threads compress jobs of ZSTD_JOB_BYTES, each from one
                // contiguous buffer that holds the end of the job before it: zstd stays on
                // its single-segment match finder, where the single-threaded stream, once
                // its ring buffer wraps, matches across two segments (the slower "external
                // dictionary" path). One frame, whatever the number of threads.
                e.multithread(threads.max(1))?;
                e.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_BYTES))?;
                Inner::Zstd(e)
            }
        };
        Ok(Encoder {
            inner,
            codec: self.codec,
            consumed: 0,
        })
    }
}

/// Input bytes per gzip block when gzip compresses on several threads: 1 MiB, so that the
/// matches lost at each block's start and its flush marker cost well under 1% of the output.
pub const GZIP_BLOCK_BYTES: usize = 1024 * 1024;

/// Input bytes per zstd job ([`Compression::encoder_with_threads`]): 1 MiB, which keeps
/// zstd's buffers to a few MiB and, on JSON, an output no larger than with bigger jobs.
const ZSTD_JOB_BYTES: u32 = 1024 * 1024;

/// A streaming compressor: bytes in, compressed bytes out as they become available.
///
/// Memory: the codec's own state (gzip ~256 KiB; zstd-3 about 4 MiB per thread for its
/// window, tables and job buffers) plus the compressed output of one call, which the caller
/// takes each time.
pub struct Encoder {
    inner: Inner,
    codec: Codec,
    consumed: u64,
}

enum Inner {
    Gzip(GzEncoder<Vec<u8>>),
    /// gzip on several threads: blocks go to `gzp`'s workers, and its writer thread appends
    /// the compressed stream, in order, to `out`, which each call takes into `ready`.
    GzipParallel {
        writer: Box<gzp::par::compress::ParCompress<'static, gzp::deflate::Gzip, SharedOutput>>,
        out: SharedOutput,
        ready: Vec<u8>,
    },
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// Where the parallel gzip writer's thread puts the compressed stream.
#[derive(Clone, Default)]
struct SharedOutput(Arc<Mutex<Vec<u8>>>);

impl SharedOutput {
    /// Moves what was written so far into `into` (cleared first); the two buffers trade
    /// places, so neither is reallocated once both have grown.
    fn take_into(&self, into: &mut Vec<u8>) {
        into.clear();
        // A poisoned lock means the writer thread panicked; its join reports that.
        let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *out, into);
    }
}

impl Write for SharedOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
        out.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Encoder {
    /// Compresses `data`; returns the compressed bytes ready so far (often none). The slice
    /// lives in the encoder's own output buffer, which the next call reuses: no allocation per
    /// call.
    pub fn encode(&mut self, data: &[u8]) -> Result<&[u8], crate::Error> {
        let written = match &mut self.inner {
            Inner::Gzip(e) => {
                e.get_mut().clear();
                e.write_all(data)
            }
            Inner::GzipParallel { writer, out, ready } => {
                let written = writer.write_all(data);
                out.take_into(ready);
                written
            }
            Inner::Zstd(e) => {
                e.get_mut().clear();
                e.write_all(data)
            }
        };
        written.map_err(|e| self.error(e))?;
        self.consumed += data.len() as u64;
        Ok(match &mut self.inner {
            Inner::Gzip(e) => e.get_ref().as_slice(),
            Inner::GzipParallel { ready, .. } => ready.as_slice(),
            Inner::Zstd(e) => e.get_ref().as_slice(),
        })
    }

    /// Ends the stream (trailer, checksum); returns the last compressed bytes.
    pub fn finish(self) -> Result<Vec<u8>, crate::Error> {
        let (codec, offset) = (self.codec, self.consumed);
        let done = match self.inner {
            Inner::Gzip(mut e) => {
                e.get_mut().clear();
                e.finish()
            }
            Inner::GzipParallel {
                mut writer,
                out,
                mut ready,
            } => {
                use gzp::ZWriter as _;
                writer
                    .finish()
                    .map(|_| {
                        out.take_into(&mut ready);
                        ready
                    })
                    .map_err(io::Error::other)
            }
            Inner::Zstd(mut e) => {
                e.get_mut().clear();
                e.finish()
            }
        };
        done.map_err(|source| crate::Error::Encode {
            codec: codec.name(),
            offset,
            source,
        })
    }

    fn error(&self, source: io::Error) -> crate::Error {
        crate::Error::Encode {
            codec: self.codec.name(),
            offset: self.consumed,
            source,
        }
    }
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("codec", &self.codec)
            .field("consumed", &self.consumed)
            .finish()
    }
}

impl<'de> Deserialize<'de> for Compression {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CompressionVisitor;

        impl<'de> Visitor<'de> for CompressionVisitor {
            type Value = Compression;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    r#""gzip", "zstd", "snappy", "none" or {"codec": "gzip"|"zstd", "level": N}"#,
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Compression, E> {
                parse_codec(v).map(Compression::new).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Compression, A::Error> {
                let mut codec = None;
                let mut level = None;
                while let Some(field) = map.next_key::<String>()? {
                    match field.as_str() {
                        "codec" => {
                            let name: String = map.next_value()?;
                            codec = Some(parse_codec(&name).map_err(de::Error::custom)?);
                        }
                        "level" => level = Some(map.next_value::<i32>()?),
                        other => return Err(de::Error::unknown_field(other, &["codec", "level"])),
                    }
                }
                let codec = codec.ok_or_else(|| de::Error::missing_field("codec"))?;
                let compression = Compression::new(codec);
                match level {
                    Some(level) => compression.with_level(level).map_err(de::Error::custom),
                    None => Ok(compression),
                }
            }
        }

        deserializer.deserialize_any(CompressionVisitor)
    }
}

fn parse_codec(name: &str) -> Result<Codec, String> {
    match name {
        "gzip" => Ok(Codec::Gzip),
        "zstd" => Ok(Codec::Zstd),
        "snappy" => Ok(Codec::Snappy),
        "none" => Ok(Codec::None),
        other => Err(format!(
            "unknown compression {other:?}; expected \"gzip\", \"zstd\" (or, for Parquet, \"snappy\" or \"none\")"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Compression, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn spec_forms() {
        assert_eq!(parse(r#""gzip""#).unwrap(), Compression::new(Codec::Gzip));
        assert_eq!(parse(r#""zstd""#).unwrap().level, 3);
        assert_eq!(parse(r#"{"codec":"gzip","level":6}"#).unwrap().level, 6);
        assert_eq!(parse(r#"{"codec":"zstd"}"#).unwrap().level, 3);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        assert!(
            parse(r#""brotli""#)
                .unwrap_err()
                .contains("unknown compression \"brotli\"")
        );
        assert!(
            parse(r#"{"codec":"gzip","level":12}"#)
                .unwrap_err()
                .contains("1..=9")
        );
        assert!(
            parse(r#"{"codec":"gzip","lvl":1}"#)
                .unwrap_err()
                .contains("unknown field `lvl`")
        );
        assert!(
            parse(r#"{"level":1}"#)
                .unwrap_err()
                .contains("missing field `codec`")
        );
    }

    #[tokio::test]
    async fn round_trips() {
        use tokio::io::AsyncReadExt;
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{i},").into_bytes())
            .collect();
        for codec in [Codec::Gzip, Codec::Zstd] {
            let mut compressed = Vec::new();
            let mut encoder = Compression::new(codec).encoder().unwrap();
            // Uneven pieces: the stream must not depend on how the input was cut.
            for piece in data.chunks(7_919) {
                compressed.extend_from_slice(encoder.encode(piece).unwrap());
            }
            compressed.extend_from_slice(&encoder.finish().unwrap());
            assert!(
                compressed.len() < data.len() * 3 / 4,
                "{codec:?}: {} of {}",
                compressed.len(),
                data.len()
            );
            let decoding = super::super::Decoding::sniff(&compressed);
            let mut out = Vec::new();
            decoding
                .decoder(std::io::Cursor::new(compressed))
                .read_to_end(&mut out)
                .await
                .unwrap();
            assert_eq!(out, data, "{codec:?}");
        }
    }

    /// `n` small NDJSON records.
    fn ndjson(n: u32) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("{{\"id\":{i},\"v\":{}}}\n", i % 97).into_bytes())
            .collect()
    }

    /// `input` through an encoder on `threads` threads, fed 64 KiB at a time as the object
    /// writer feeds it.
    fn compress_in_reads(codec: Codec, threads: u32, input: &[u8]) -> Vec<u8> {
        let mut encoder = Compression::new(codec)
            .encoder_with_threads(threads)
            .unwrap();
        let mut out = Vec::new();
        for piece in input.chunks(65_536) {
            out.extend_from_slice(encoder.encode(piece).unwrap());
        }
        out.extend_from_slice(&encoder.finish().unwrap());
        out
    }

    /// zstd's worker threads change neither the stream nor its framing: one frame, the same
    /// bytes for one thread or several, decoding to the input; an empty input is one empty
    /// frame.
    #[test]
    fn zstd_threads_give_one_frame_and_the_same_bytes() {
        let data = ndjson(400_000);
        assert!(data.len() > 3 * ZSTD_JOB_BYTES as usize);
        let compress = |threads, input: &[u8]| compress_in_reads(Codec::Zstd, threads, input);
        let one = compress(1, &data);
        assert_eq!(compress(3, &data), one);
        assert_eq!(
            zstd::zstd_safe::find_frame_compressed_size(&one).unwrap(),
            one.len(),
            "more than one frame"
        );
        assert!(zstd::decode_all(&one[..]).unwrap() == data);
        let empty = compress(1, &[]);
        assert_eq!(
            zstd::zstd_safe::find_frame_compressed_size(&empty).unwrap(),
            empty.len()
        );
        assert!(zstd::decode_all(&empty[..]).unwrap().is_empty());
    }

    /// gzip on several threads is still one gzip member (a single-member reader decodes all of
    /// it), decodes to the input, and is within 1% of the one-thread size; an empty input is
    /// one empty member.
    #[test]
    fn gzip_threads_give_one_member_of_about_the_same_size() {
        use std::io::Read;
        let data = ndjson(600_000);
        assert!(data.len() > 5 * GZIP_BLOCK_BYTES);
        let compress = |threads, input: &[u8]| compress_in_reads(Codec::Gzip, threads, input);
        let single_member = |gz: &[u8]| {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(gz)
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        let one = compress(1, &data);
        let two = compress(2, &data);
        assert!(single_member(&two) == data, "not one member of the input");
        let ratio = two.len() as f64 / one.len() as f64;
        assert!(
            (0.99..=1.01).contains(&ratio),
            "{} vs {}",
            two.len(),
            one.len()
        );
        assert!(single_member(&compress(2, &[])).is_empty());
    }
}
