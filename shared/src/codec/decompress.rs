use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use tokio::io::{AsyncBufRead, AsyncRead};

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

    /// Wraps `input` in the decoder. A truncated stream fails with `UnexpectedEof`, corrupt
    /// data with `InvalidData` — never a silent short read.
    pub fn decoder<R>(self, input: R) -> Box<dyn AsyncRead + Send + Unpin>
    where
        R: AsyncBufRead + Send + Unpin + 'static,
    {
        match self {
            Decoding::Identity => Box::new(input),
            Decoding::Gzip => {
                let mut d = GzipDecoder::new(input);
                d.multiple_members(true);
                Box::new(d)
            }
            Decoding::Zstd => {
                let mut d = ZstdDecoder::new(input);
                d.multiple_members(true);
                Box::new(d)
            }
        }
    }
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
        assert!(decode(Decoding::Gzip, c).await.is_err());
    }
}
