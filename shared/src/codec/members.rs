//! Decoding that knows where each gzip member or zstd frame starts, in the compressed input
//! and in the decoded output: a job that stops part-way through a compressed object can go on
//! later from the last member or frame that started before its stop, by reading the object
//! again from that compressed offset ([`MemberDecoder::resume`]) and skipping what it had
//! already decoded past it. Several members (`cat a.gz b.gz`, pigz `--independent`, bgzip)
//! or frames are one valid stream, each decodable on its own.
//!
//! The decoder is the same as [`Decoding::decoder`]'s (same window limit and error classes),
//! run one member at a time: at a member's end the compressed bytes it consumed are counted
//! exactly (the decoder takes from the input only what the codec used), and the next member
//! starts there.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use async_compression::zstd::DParameter;
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

use super::decompress::{Decoding, gzip_error, zstd_error};

/// The member starts kept: enough for any read-ahead between the decoder and the rows, at
/// 16 bytes each.
const KEPT: usize = 4096;

/// Where a gzip member or zstd frame starts: its offset in the compressed input and in the
/// decoded output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberStart {
    /// Offset in the compressed input.
    pub compressed: u64,
    /// Offset in the decoded output.
    pub decoded: u64,
}

/// The member starts a [`MemberDecoder`] met, shared with whoever decides where to stop: the
/// last [`KEPT`] of them.
#[derive(Debug, Clone, Default)]
pub struct MemberStarts(Arc<Mutex<VecDeque<MemberStart>>>);

impl MemberStarts {
    fn push(&self, start: MemberStart) {
        let mut starts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if starts.len() == KEPT {
            starts.pop_front();
        }
        starts.push_back(start);
    }

    /// The last member that starts at or before decoded offset `decoded`: where to read the
    /// input again to decode from there. `None` when the kept starts all come later (the
    /// input must then be decoded from its beginning).
    pub fn at_or_before(&self, decoded: u64) -> Option<MemberStart> {
        let starts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        starts.iter().rev().find(|s| s.decoded <= decoded).copied()
    }

    /// How many starts are kept.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An input that counts the bytes consumed from it.
struct Counted<R> {
    inner: R,
    consumed: u64,
}

impl<R: AsyncBufRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncBufRead + Unpin> AsyncBufRead for Counted<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        self.consumed += amt as u64;
        Pin::new(&mut self.inner).consume(amt);
    }
}

/// One member's decoder.
enum Member<R> {
    Gzip(GzipDecoder<Counted<R>>),
    Zstd(ZstdDecoder<Counted<R>>),
}

/// Where the decoder is.
enum State<R> {
    /// Inside a gzip member or zstd frame (boxed: a decoder is large beside an input).
    Member(Box<Member<R>>),
    /// Identity input, read as it is.
    Plain(Counted<R>),
    /// A member ended; whether another follows is not known yet.
    Between(Counted<R>),
    /// The end of the input, or a failure.
    Done,
}

/// Decodes gzip or zstd (or passes identity through) one member or frame at a time,
/// recording where each starts ([`MemberStarts`]).
pub struct MemberDecoder<R> {
    state: State<R>,
    decoding: Decoding,
    window_log_max: u32,
    decoded: u64,
    starts: MemberStarts,
}

impl<R: AsyncBufRead + Unpin> MemberDecoder<R> {
    /// Decodes `input` from its beginning with `decoding` (zstd windows up to
    /// `2^window_log_max` bytes).
    pub fn new(input: R, decoding: Decoding, window_log_max: u32) -> Self {
        Self::resume(
            input,
            decoding,
            window_log_max,
            MemberStart {
                compressed: 0,
                decoded: 0,
            },
        )
    }

    /// Decodes `input`, which starts at member start `at` of the whole input: offsets count
    /// on from there.
    pub fn resume(input: R, decoding: Decoding, window_log_max: u32, at: MemberStart) -> Self {
        let counted = Counted {
            inner: input,
            consumed: at.compressed,
        };
        let starts = MemberStarts::default();
        let state = match decoding {
            Decoding::Identity => State::Plain(counted),
            _ => State::Between(counted),
        };
        MemberDecoder {
            state,
            decoding,
            window_log_max: window_log_max.clamp(10, 31),
            decoded: at.decoded,
            starts,
        }
    }

    /// The member starts met so far, shared.
    pub fn starts(&self) -> MemberStarts {
        self.starts.clone()
    }

    /// A decoder for the member starting at the front of `input`.
    fn member(&self, input: Counted<R>) -> Member<R> {
        match self.decoding {
            Decoding::Zstd => Member::Zstd(ZstdDecoder::with_params(
                input,
                &[DParameter::window_log_max(self.window_log_max)],
            )),
            Decoding::Gzip | Decoding::Identity => Member::Gzip(GzipDecoder::new(input)),
        }
    }
}

impl<R: AsyncBufRead + Unpin> AsyncRead for MemberDecoder<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match std::mem::replace(&mut this.state, State::Done) {
                State::Done => return Poll::Ready(Ok(())),
                State::Plain(mut input) => {
                    let before = buf.filled().len();
                    let read = Pin::new(&mut input).poll_read(cx, buf);
                    this.decoded += (buf.filled().len() - before) as u64;
                    this.state = State::Plain(input);
                    return read;
                }
                State::Between(mut input) => match Pin::new(&mut input).poll_fill_buf(cx) {
                    Poll::Pending => {
                        this.state = State::Between(input);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok([])) => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(_)) => {
                        this.starts.push(MemberStart {
                            compressed: input.consumed,
                            decoded: this.decoded,
                        });
                        this.state = State::Member(Box::new(this.member(input)));
                    }
                },
                State::Member(mut member) => {
                    let before = buf.filled().len();
                    let read = match &mut *member {
                        Member::Gzip(d) => Pin::new(d).poll_read(cx, buf).map_err(gzip_error),
                        Member::Zstd(d) => Pin::new(d)
                            .poll_read(cx, buf)
                            .map_err(|e| zstd_error(e, this.window_log_max)),
                    };
                    let n = buf.filled().len() - before;
                    match read {
                        Poll::Ready(Ok(())) if n == 0 && buf.remaining() > 0 => {
                            // The member ended: the next starts where it stopped consuming.
                            this.state = State::Between(match *member {
                                Member::Gzip(d) => d.into_inner(),
                                Member::Zstd(d) => d.into_inner(),
                            });
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        other => {
                            this.decoded += n as u64;
                            this.state = State::Member(member);
                            return other;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    fn members(pieces: &[Vec<u8>], compress: fn(&[u8]) -> Vec<u8>) -> (Vec<u8>, Vec<MemberStart>) {
        let mut all = Vec::new();
        let mut starts = Vec::new();
        let mut decoded = 0;
        for p in pieces {
            starts.push(MemberStart {
                compressed: all.len() as u64,
                decoded,
            });
            all.extend_from_slice(&compress(p));
            decoded += p.len() as u64;
        }
        (all, starts)
    }

    /// Reads through a buffer of `chunk` bytes, so members end in every position of a read.
    async fn read_all<R: AsyncRead + Unpin>(mut r: R, chunk: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn pieces() -> Vec<Vec<u8>> {
        (0..5u8)
            .map(|i| {
                (0..(1000 * usize::from(i) + 7))
                    .map(|j| b"abcdefgh\n"[(j + usize::from(i)) % 9])
                    .collect()
            })
            .collect()
    }

    #[tokio::test]
    async fn member_starts_are_found_and_a_resume_from_one_decodes_the_rest() {
        let pieces = pieces();
        let whole: Vec<u8> = pieces.concat();
        for (decoding, compress) in [
            (Decoding::Gzip, gzip as fn(&[u8]) -> Vec<u8>),
            (Decoding::Zstd, zstd as fn(&[u8]) -> Vec<u8>),
        ] {
            let (data, expected) = members(&pieces, compress);
            for chunk in [1, 7, 4096] {
                // A small BufReader too, so members end inside and across its fills.
                let input = tokio::io::BufReader::with_capacity(13, &data[..]);
                let d = MemberDecoder::new(input, decoding, 24);
                let starts = d.starts();
                assert_eq!(read_all(d, chunk).await.unwrap(), whole, "{decoding:?}");
                for s in &expected {
                    assert_eq!(starts.at_or_before(s.decoded), Some(*s), "{decoding:?}");
                }
                assert_eq!(starts.len(), pieces.len());
            }
            // Resume at the third member: the rest, with offsets counting on.
            let at = expected[2];
            let input = &data[at.compressed as usize..];
            let d = MemberDecoder::resume(input, decoding, 24, at);
            let starts = d.starts();
            let rest = read_all(d, 100).await.unwrap();
            assert_eq!(rest, whole[at.decoded as usize..]);
            assert_eq!(starts.at_or_before(u64::MAX), Some(expected[4]));
            assert_eq!(starts.at_or_before(at.decoded - 1), None);
        }
    }

    #[tokio::test]
    async fn identity_passes_through_and_bad_input_fails_with_its_class() {
        let d = MemberDecoder::new(&b"plain text"[..], Decoding::Identity, 20);
        assert_eq!(read_all(d, 3).await.unwrap(), b"plain text");
        let (data, _) = members(&pieces(), gzip);
        let cut = &data[..data.len() - 5];
        let e = read_all(MemberDecoder::new(cut, Decoding::Gzip, 20), 64)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        let mut garbage = data.clone();
        garbage.extend_from_slice(b"not a member");
        let e = read_all(MemberDecoder::new(&garbage[..], Decoding::Gzip, 20), 64)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let e = read_all(
            MemberDecoder::new(&b"\x28\xb5\x2f\xfdxx"[..], Decoding::Zstd, 20),
            64,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ),
            "{e}"
        );
        let empty = MemberDecoder::new(&b""[..], Decoding::Gzip, 20);
        assert!(read_all(empty, 8).await.unwrap().is_empty());
        // Every frame is held to the window limit.
        let (frames, _) = members(&pieces(), zstd);
        let e = read_all(MemberDecoder::new(&frames[..], Decoding::Zstd, 10), 64)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("larger than the limit"), "{e}");
    }

    #[test]
    fn only_the_last_starts_are_kept() {
        let starts = MemberStarts::default();
        for i in 0..(KEPT as u64 + 10) {
            starts.push(MemberStart {
                compressed: i * 10,
                decoded: i * 100,
            });
        }
        assert_eq!(starts.len(), KEPT);
        assert_eq!(starts.at_or_before(5 * 100), None, "pushed out");
        let last = KEPT as u64 + 9;
        assert_eq!(
            starts.at_or_before(u64::MAX).map(|s| s.decoded),
            Some(last * 100)
        );
        assert_eq!(
            starts.at_or_before(last * 100 - 1).map(|s| s.compressed),
            Some((last - 1) * 10)
        );
    }
}
