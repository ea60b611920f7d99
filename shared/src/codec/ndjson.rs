//! Records of newline-delimited JSON, one per line.
//!
//! Errors are [`RecordsError`]s like those of the JSON document decoder, so a reader of either
//! format reports a bad record the same way.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use serde::de::IgnoredAny;
use tokio_util::codec::Decoder;

use super::json_records::RecordsError;

/// Records of newline-delimited JSON: every non-blank line, checked to be one JSON value,
/// yielded without its line ending. A line longer than the cap is an error, not a buffer.
///
/// The one NDJSON framer of sluice: `ingest-http` reads NDJSON sources with it, and
/// `transform-s3` reads NDJSON objects with it ([`unchecked`](Self::unchecked), so that a line
/// that is not JSON is quarantined rather than fatal), using [`last`](Self::last) for the
/// position of each row.
#[derive(Debug)]
pub struct NdjsonDecoder {
    max_len: usize,
    scanned: usize,
    offset: u64,
    count: u64,
    lines: u64,
    validate: bool,
    last: LinePosition,
}

/// Where a line starts in the input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinePosition {
    /// 1-based line number (blank lines counted).
    pub line: u64,
    /// Byte offset of the line's start.
    pub offset: u64,
    /// 1-based record number (blank lines not counted).
    pub record: u64,
}

impl NdjsonDecoder {
    /// Lines up to `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        NdjsonDecoder {
            max_len,
            scanned: 0,
            offset: 0,
            count: 0,
            lines: 0,
            validate: true,
            last: LinePosition::default(),
        }
    }

    /// Yields every non-blank line without checking that it is JSON: for readers that parse
    /// each line themselves and deal with a bad one (a transform quarantines it).
    pub fn unchecked(mut self) -> Self {
        self.validate = false;
        self
    }

    /// A decoder whose input starts after `offset` bytes, `lines` lines and `records` records
    /// of the whole input (at the start of a line): positions count on from there.
    pub fn starting_at(mut self, offset: u64, lines: u64, records: u64) -> Self {
        self.offset = offset;
        self.lines = lines;
        self.count = records;
        self
    }

    /// Lines and records read so far.
    pub fn read(&self) -> (u64, u64) {
        (self.lines, self.count)
    }

    /// Where the last line yielded starts.
    pub fn last(&self) -> LinePosition {
        self.last
    }

    /// Bytes consumed so far (through the end of the last line).
    pub fn consumed(&self) -> u64 {
        self.offset
    }

    fn line(&mut self, src: &mut BytesMut, len: usize, skip: usize) -> io::Result<Option<Bytes>> {
        let mut line = src.split_to(len);
        src.advance(skip);
        let start = self.offset;
        self.offset += (len + skip) as u64;
        self.scanned = 0;
        self.lines += 1;
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.iter().all(|b| matches!(b, b' ' | b'\t')) {
            return Ok(None);
        }
        self.count += 1;
        self.last = LinePosition {
            line: self.lines,
            offset: start,
            record: self.count,
        };
        if !self.validate {
            return Ok(Some(line.freeze()));
        }
        // serde_json skips strings without checking their UTF-8; a line is copied out as is.
        if let Err(e) = std::str::from_utf8(&line) {
            return Err(RecordsError {
                class: "invalid UTF-8",
                offset: start + e.valid_up_to() as u64,
                record: Some(self.count),
                message: format!("byte 0x{:02x} is not UTF-8", line[e.valid_up_to()]),
            }
            .into());
        }
        serde_json::from_slice::<IgnoredAny>(&line).map_err(|e| {
            io::Error::from(RecordsError {
                class: "invalid JSON",
                offset: start,
                record: Some(self.count),
                message: format!("{e} within the line"),
            })
        })?;
        Ok(Some(line.freeze()))
    }
}

impl Decoder for NdjsonDecoder {
    type Item = Bytes;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        loop {
            let limit = src.len().min(self.max_len + 1);
            match memchr::memchr(b'\n', &src[self.scanned..limit]) {
                Some(i) => {
                    let len = self.scanned + i;
                    if let Some(line) = self.line(src, len, 1)? {
                        return Ok(Some(line));
                    }
                }
                None if src.len() > self.max_len => {
                    return Err(RecordsError {
                        class: "record too large",
                        offset: self.offset,
                        record: Some(self.count + 1),
                        message: format!(
                            "line {} longer than the limit of {} bytes",
                            self.lines + 1,
                            self.max_len
                        ),
                    }
                    .into());
                }
                None => {
                    self.scanned = src.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        if let Some(line) = self.decode(src)? {
            return Ok(Some(line));
        }
        if src.is_empty() {
            return Ok(None);
        }
        let len = src.len();
        self.line(src, len, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_in_a_line_is_an_error_with_its_position() {
        let mut d = NdjsonDecoder::new(64);
        let mut buf = BytesMut::from(&b"{\"a\":1}\n{\"a\":\"x\xff\"}\n"[..]);
        assert!(d.decode(&mut buf).unwrap().is_some());
        let e = d.decode(&mut buf).unwrap_err().to_string();
        assert!(e.starts_with("invalid UTF-8 at byte 15 (record 2)"), "{e}");
    }

    #[test]
    fn ndjson_lines() {
        for chunk in 1..40 {
            let doc = b"{\"a\":1}\r\n\n  \n[2]\n\"x\"";
            let mut d = NdjsonDecoder::new(64);
            let mut buf = BytesMut::new();
            let mut out = vec![];
            for piece in doc.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(l) = d.decode(&mut buf).unwrap() {
                    out.push(l);
                }
            }
            while let Some(l) = d.decode_eof(&mut buf).unwrap() {
                out.push(l);
            }
            assert_eq!(
                out,
                [
                    Bytes::from("{\"a\":1}"),
                    Bytes::from("[2]"),
                    Bytes::from("\"x\"")
                ],
                "chunk {chunk}"
            );
        }
        let mut d = NdjsonDecoder::new(64);
        let mut buf = BytesMut::from(&b"{\"a\":1}\n{\"a\":\n"[..]);
        assert!(d.decode(&mut buf).unwrap().is_some());
        let e = d.decode(&mut buf).unwrap_err().to_string();
        assert!(e.starts_with("invalid JSON at byte 8 (record 2)"), "{e}");
        let mut d = NdjsonDecoder::new(8);
        let mut buf = BytesMut::from(&b"{\"aaaaaaaaaa\":1}"[..]);
        assert!(
            d.decode(&mut buf)
                .unwrap_err()
                .to_string()
                .contains("record too large")
        );
    }

    /// Positions count blank lines as lines but not as records, whatever the chunking; an
    /// unchecked decoder yields a line that is not JSON for its reader to judge.
    #[test]
    fn positions_and_unchecked_lines() {
        let doc = b"{\"a\":1}\r\n\n  \nnot json\n{\"a\":2}";
        for chunk in 1..doc.len() {
            let mut d = NdjsonDecoder::new(64).unchecked();
            let mut buf = BytesMut::new();
            let mut out = vec![];
            for piece in doc.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(l) = d.decode(&mut buf).unwrap() {
                    out.push((l, d.last()));
                }
            }
            while let Some(l) = d.decode_eof(&mut buf).unwrap() {
                out.push((l, d.last()));
            }
            let got: Vec<(&[u8], u64, u64, u64)> = out
                .iter()
                .map(|(l, p)| (&l[..], p.line, p.offset, p.record))
                .collect();
            assert_eq!(
                got,
                vec![
                    (&b"{\"a\":1}"[..], 1, 0, 1),
                    (&b"not json"[..], 4, 13, 2),
                    (&b"{\"a\":2}"[..], 5, 22, 3),
                ],
                "chunk {chunk}"
            );
            assert_eq!(d.consumed(), doc.len() as u64);
        }
    }
}
