//! Compressed sources cut into independent pieces, as `pigz --independent`, bgzip or a
//! parallel zstd writes them: a gzip stream of independent members ([`GzipMembers`],
//! [`gzip_members`]) and a zstd stream of independent frames ([`zstd_frames`]), each piece
//! holding a fixed number of decoded bytes (so pieces end in the middle of a line). Either is
//! one valid stream for any decoder that reads every member or frame.
//!
//! [`GzipMembers`] streams (`Read` and `AsyncRead`): it holds one input chunk and what one
//! chunk compresses to, never the whole input or output.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use flate2::write::GzEncoder;
use tokio::io::{AsyncRead, ReadBuf};

/// Input read at once.
const CHUNK: usize = 64 * 1024;

/// `inner` compressed as a sequence of independent gzip members of `every` decoded bytes
/// each (the last one shorter), streamed.
pub struct GzipMembers<R> {
    inner: R,
    every: u64,
    level: flate2::Compression,
    /// The member being written, once it has input.
    encoder: Option<GzEncoder<Vec<u8>>>,
    /// Decoded bytes in the current member.
    in_member: u64,
    members: u64,
    input: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> GzipMembers<R> {
    /// Compresses `inner` at `level`, a new member every `every` bytes of it.
    pub fn new(inner: R, every: u64, level: flate2::Compression) -> Self {
        assert!(every > 0, "a member must hold at least one byte");
        GzipMembers {
            inner,
            every,
            level,
            encoder: None,
            in_member: 0,
            members: 0,
            input: vec![0; CHUNK],
            out: Vec::with_capacity(2 * CHUNK),
            pos: 0,
            done: false,
        }
    }

    /// Members completed so far (all of them once the stream has ended).
    pub fn members(&self) -> u64 {
        self.members
    }

    /// The input.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Ends the current member (an empty one when the input was empty).
    fn finish_member(&mut self) -> io::Result<()> {
        let encoder = match self.encoder.take() {
            Some(e) => e,
            None => GzEncoder::new(Vec::new(), self.level),
        };
        let mut rest = encoder.finish()?;
        self.out.append(&mut rest);
        self.in_member = 0;
        self.members += 1;
        Ok(())
    }

    /// Compresses input until some output is ready or the input has ended.
    fn refill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.pos = 0;
        while self.out.is_empty() && !self.done {
            let want = (self.every - self.in_member).min(CHUNK as u64) as usize;
            let n = loop {
                match self.inner.read(&mut self.input[..want]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    read => break read?,
                }
            };
            if n == 0 {
                if self.encoder.is_some() || self.members == 0 {
                    self.finish_member()?;
                }
                self.done = true;
                break;
            }
            let level = self.level;
            let encoder = self
                .encoder
                .get_or_insert_with(|| GzEncoder::new(Vec::with_capacity(CHUNK), level));
            encoder.write_all(&self.input[..n])?;
            self.out.append(encoder.get_mut());
            self.in_member += n as u64;
            if self.in_member == self.every {
                self.finish_member()?;
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.out.len() {
            self.refill()?;
            if self.out.is_empty() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<R: Read + Unpin> AsyncRead for GzipMembers<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = Read::read(this, buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// `data` as independent gzip members of `every` bytes each (fast compression).
pub fn gzip_members(data: &[u8], every: u64) -> Vec<u8> {
    let mut out = Vec::new();
    GzipMembers::new(data, every, flate2::Compression::fast())
        .read_to_end(&mut out)
        .expect("compressing in memory");
    out
}

/// `data` as independent zstd frames of `every` bytes each (the default level).
pub async fn zstd_frames(data: &[u8], every: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    assert!(every > 0, "a frame must hold at least one byte");
    let mut out = Vec::new();
    for piece in data.chunks(every) {
        async_compression::tokio::bufread::ZstdEncoder::new(piece)
            .read_to_end(&mut out)
            .await
            .expect("compressing in memory");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Counts the members by decoding them one at a time.
    fn gzip_pieces(mut data: &[u8]) -> Vec<Vec<u8>> {
        let mut pieces = Vec::new();
        while !data.is_empty() {
            let mut d = flate2::bufread::GzDecoder::new(data);
            let mut piece = Vec::new();
            d.read_to_end(&mut piece).unwrap();
            data = d.into_inner();
            pieces.push(piece);
        }
        pieces
    }

    #[test]
    fn gzip_members_are_independent_and_decode_to_the_input() {
        let data = sample(1_000_000);
        let gz = gzip_members(&data, 100_000 + 3);
        let pieces = gzip_pieces(&gz);
        assert_eq!(pieces.len(), 10);
        assert!(pieces[..9].iter().all(|p| p.len() == 100_003));
        assert_eq!(pieces.concat(), data);
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all, data);

        // A stream counts its members; an exact multiple ends no empty member.
        let mut g = GzipMembers::new(&data[..200_000], 100_000, flate2::Compression::fast());
        let mut out = Vec::new();
        g.read_to_end(&mut out).unwrap();
        assert_eq!(g.members(), 2);
        assert_eq!(gzip_pieces(&out).len(), 2);
        // An empty input is one empty member.
        assert_eq!(gzip_pieces(&gzip_members(&[], 10)), vec![Vec::<u8>::new()]);
    }

    #[tokio::test]
    async fn zstd_frames_decode_to_the_input() {
        use tokio::io::AsyncReadExt as _;
        let data = sample(300_000);
        let zst = zstd_frames(&data, 64 * 1024).await;
        let mut d = async_compression::tokio::bufread::ZstdDecoder::new(&zst[..]);
        d.multiple_members(true);
        let mut all = Vec::new();
        d.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, data);
        // Each frame starts with the zstd magic number: five of them.
        let magic = [0x28, 0xb5, 0x2f, 0xfd];
        let frames = zst.windows(4).filter(|w| *w == magic).count();
        assert!(frames >= 5, "{frames}");
    }
}
