use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use async_compression::zstd::DParameter;
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

use crate::budget::MemoryBudget;

/// How an input stream is encoded, and so how to decode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    /// Not compressed: bytes pass through.
    Identity,
    /// gzip; concatenated members (as written by `cat a.gz b.gz`, pigz, bgzip) are all read.
    Gzip,
    /// Zstandard; concatenated frames are all read.
    Zstd,
}

impl Decoding {
    /// From an HTTP `Content-Encoding` header. `Err` carries the unsupported value.
    pub fn from_content_encoding(value: Option<&str>) -> Result<Self, String> {
        let Some(value) = value else {
            return Ok(Decoding::Identity);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(Decoding::Identity),
            "gzip" | "x-gzip" => Ok(Decoding::Gzip),
            "zstd" => Ok(Decoding::Zstd),
            _ => Err(value.to_owned()),
        }
    }

    /// From the first bytes of a stream (magic numbers); anything else is `Identity`.
    pub fn sniff(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Decoding::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Decoding::Zstd,
            _ => Decoding::Identity,
        }
    }

    /// The codec name used in error messages; `None` for identity.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Decoding::Identity => None,
            Decoding::Gzip => Some("gzip"),
            Decoding::Zstd => Some("zstd"),
        }
    }

    /// Wraps `input` in the decoder, with zstd windows limited by the function's memory
    /// budget ([`MemoryBudget::zstd_window_log_max`] of [`MemoryBudget::from_env`]: 16 MiB at
    /// 256 MB). See [`decoder_with_window`](Self::decoder_with_window).
    pub fn decoder<R>(self, input: R) -> Box<dyn AsyncRead + Send + Unpin>
    where
        R: AsyncBufRead + Send + Unpin + 'static,
    {
        self.decoder_with_window(input, MemoryBudget::from_env().zstd_window_log_max())
    }

    /// Wraps `input` in the decoder. A truncated stream fails with `UnexpectedEof`, corrupt
    /// data with `InvalidData` — never a silent short read. A zstd frame that needs a window
    /// larger than `2^window_log_max` bytes (made with `--long` or `--ultra`, or a bomb that
    /// declares a huge window) is refused at its header with `InvalidData`, naming the limit,
    /// before the decoder allocates the window. gzip's window is fixed at 32 KiB.
    pub fn decoder_with_window<R>(
        self,
        input: R,
        window_log_max: u32,
    ) -> Box<dyn AsyncRead + Send + Unpin>
    where
        R: AsyncBufRead + Send + Unpin + 'static,
    {
        match self {
            Decoding::Identity => Box::new(input),
            Decoding::Gzip => {
                let mut d = GzipDecoder::new(input);
                d.multiple_members(true);
                Box::new(Classified {
                    inner: d,
                    classify: gzip_error,
                })
            }
            Decoding::Zstd => {
                // zstd accepts 10..=31 on 64-bit targets; keep the value inside that range
                // so setting it cannot fail.
                let window_log_max = window_log_max.clamp(10, 31);
                let mut d =
                    ZstdDecoder::with_params(input, &[DParameter::window_log_max(window_log_max)]);
                d.multiple_members(true);
                Box::new(Classified {
                    inner: d,
                    classify: move |e| zstd_error(e, window_log_max),
                })
            }
        }
    }
}

/// A decoder whose errors say their class: zstd reports every failure, and gzip a bad
/// trailer, as `ErrorKind::Other`; corrupt data becomes `InvalidData` (a zstd window over the
/// limit with the limit named), and `UnexpectedEof` stays as it is.
struct Classified<R, F> {
    inner: R,
    classify: F,
}

impl<R, F> AsyncRead for Classified<R, F>
where
    R: AsyncRead + Unpin,
    F: Fn(io::Error) -> io::Error + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err((self.classify)(e))),
            other => other,
        }
    }
}

pub(super) fn gzip_error(e: io::Error) -> io::Error {
    if e.kind() != io::ErrorKind::Other {
        return e;
    }
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt gzip data: {e}"),
    )
}

pub(super) fn zstd_error(e: io::Error, window_log_max: u32) -> io::Error {
    if e.kind() != io::ErrorKind::Other {
        return e;
    }
    let name = e.to_string();
    if name.contains("too much memory") {
        let mib = (1u64 << window_log_max) >> 20;
        return io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "zstd frame needs a window larger than the limit of {mib} MiB (window_log_max {window_log_max}, from the function's memory budget); recompress without --long/--ultra, or give the function more memory"
            ),
        );
    }
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt zstd data: {name}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Codec, Compression};
    use tokio::io::AsyncReadExt;

    async fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
        let mut encoder = Compression::new(codec).encoder().unwrap();
        let mut out = encoder.encode(data).unwrap().to_vec();
        out.extend_from_slice(&encoder.finish().unwrap());
        out
    }

    async fn decode(d: Decoding, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        d.decoder(std::io::Cursor::new(data))
            .read_to_end(&mut out)
            .await
            .map(|_| out)
    }

    #[test]
    fn content_encoding_header() {
        assert_eq!(
            Decoding::from_content_encoding(None),
            Ok(Decoding::Identity)
        );
        assert_eq!(
            Decoding::from_content_encoding(Some("GZIP")),
            Ok(Decoding::Gzip)
        );
        assert_eq!(
            Decoding::from_content_encoding(Some("x-gzip")),
            Ok(Decoding::Gzip)
        );
        assert_eq!(
            Decoding::from_content_encoding(Some("zstd")),
            Ok(Decoding::Zstd)
        );
        assert_eq!(
            Decoding::from_content_encoding(Some("br")),
            Err("br".into())
        );
    }

    #[tokio::test]
    async fn multi_member_gzip_reads_every_member() {
        let mut both = compress(Codec::Gzip, b"first\n").await;
        both.extend(compress(Codec::Gzip, b"second\n").await);
        assert_eq!(
            decode(Decoding::Gzip, both).await.unwrap(),
            b"first\nsecond\n"
        );
    }

    #[tokio::test]
    async fn truncated_input_is_an_error_not_a_short_read() {
        let data = vec![b'x'; 100_000];
        for codec in [Codec::Gzip, Codec::Zstd] {
            let mut c = compress(codec, &data).await;
            c.truncate(c.len() - 8);
            let d = Decoding::sniff(&c);
            let err = decode(d, c).await.unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "{codec:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn corrupt_gzip_fails_its_checksum() {
        let data: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut c = compress(Codec::Gzip, &data).await;
        let n = c.len();
        c[n - 6] ^= 0xff; // inside the CRC32 trailer
        let err = decode(Decoding::Gzip, c).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("CRC"), "{err}");
    }

    /// Found by the `decompress` fuzz target: a gzip trailer whose length field does not
    /// match came out as `ErrorKind::Other`, unlike a bad CRC.
    #[tokio::test]
    async fn a_gzip_length_mismatch_is_invalid_data() {
        let mut c = compress(Codec::Gzip, &[0u8; 1000]).await;
        let n = c.len();
        c[n - 1] ^= 0x01; // the last byte of ISIZE
        let err = decode(Decoding::Gzip, c).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    }

    /// Regression: corrupt zstd data came out as `ErrorKind::Other` (zstd's raw error name),
    /// unlike gzip's `InvalidData`, so it could not be told apart from an I/O failure.
    #[tokio::test]
    async fn corrupt_zstd_is_invalid_data() {
        let data: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let clean = compress(Codec::Zstd, &data).await;
        // The content checksum (written by sluice's encoder) catches a flipped trailer byte;
        // a flipped byte in the block header is caught by the block decoder.
        for at in [clean.len() - 2, 6] {
            let mut c = clean.clone();
            c[at] ^= 0xff;
            let err = decode(Decoding::Zstd, c).await.unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::InvalidData,
                "byte {at}: {err}"
            );
            assert!(err.to_string().starts_with("corrupt zstd data: "), "{err}");
        }
        let mut c = clean.clone();
        let n = c.len();
        c[n - 2] ^= 0xff;
        let err = decode(Decoding::Zstd, c).await.unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[tokio::test]
    async fn truncated_gzip_and_zstd_are_unexpected_eof_at_every_cut() {
        let data: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for codec in [Codec::Gzip, Codec::Zstd] {
            let c = compress(codec, &data).await;
            for cut in [1, 4, 8, c.len() / 2] {
                let mut t = c.clone();
                t.truncate(c.len() - cut);
                let err = decode(Decoding::sniff(&t), t).await.unwrap_err();
                assert_eq!(
                    err.kind(),
                    std::io::ErrorKind::UnexpectedEof,
                    "{codec:?} cut {cut}: {err}"
                );
            }
        }
    }

    /// A frame made with a 128 MiB window (`--long=27`): a bomb for a 256 MB function.
    fn long_window_frame(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.window_log(27).unwrap();
        e.long_distance_matching(true).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Regression: the zstd decoder's window was not limited (zstd's default allows 128 MiB,
    /// half of a 256 MB function), whatever the memory budget.
    #[tokio::test]
    async fn zstd_frame_with_a_window_over_the_budget_is_refused() {
        let data = vec![b'x'; 100_000];
        let frame = long_window_frame(&data);
        let budget = crate::MemoryBudget::for_memory_mib(256);
        let mut out = Vec::new();
        let err = Decoding::Zstd
            .decoder_with_window(
                std::io::Cursor::new(frame.clone()),
                budget.zstd_window_log_max(),
            )
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        let message = err.to_string();
        assert!(
            message.contains("window larger than the limit of 16 MiB")
                && message.contains("window_log_max 24"),
            "{message}"
        );
        assert!(out.is_empty());
        // The default decoder uses the function's budget (256 MB in tests): refused too.
        assert!(decode(Decoding::Zstd, frame.clone()).await.is_err());
        // With a budget that allows the window, the same frame decodes.
        let big = crate::MemoryBudget::for_memory_mib(10240).zstd_window_log_max();
        let mut out = Vec::new();
        Decoding::Zstd
            .decoder_with_window(std::io::Cursor::new(frame), big)
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, data);
    }

    #[tokio::test]
    async fn zstd_at_every_standard_level_fits_the_smallest_window() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 977).to_le_bytes())
            .collect();
        let smallest = crate::MemoryBudget::for_memory_mib(128).zstd_window_log_max();
        for level in [1, 3, 9, 19] {
            let mut encoder = Compression::new(Codec::Zstd)
                .with_level(level)
                .unwrap()
                .encoder()
                .unwrap();
            let mut frame = encoder.encode(&data).unwrap().to_vec();
            frame.extend_from_slice(&encoder.finish().unwrap());
            let mut out = Vec::new();
            Decoding::Zstd
                .decoder_with_window(std::io::Cursor::new(frame), smallest)
                .read_to_end(&mut out)
                .await
                .unwrap();
            assert!(out == data, "level {level}");
        }
    }
}
