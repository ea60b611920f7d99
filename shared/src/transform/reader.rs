//! CSV records from a decoded byte stream (RFC 4180, via `csv-core`), each with its raw bytes,
//! its line and its byte offset, in bounded memory. (NDJSON lines come from
//! [`NdjsonDecoder`](crate::codec::ndjson::NdjsonDecoder), shared with `ingest-http`.)
//!
//! The CSV reader drives `csv-core` directly rather than going through `csv-async`: it needs
//! the raw bytes of every record (a bad row is kept verbatim in the quarantine), and it must
//! see the quote state at the end of the input — `csv-core` ends an unterminated quoted field
//! at EOF silently, which here is an error.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

const READ_CHUNK: usize = 256 * 1024;

/// Bytes of the record cap allowed per field: a record has at most `cap / 64` fields (16,384
/// at a 1 MiB cap, 262,144 at 16 MiB), at least [`MIN_FIELDS`]. Each field costs 8 bytes of
/// field ends here, and a typed value and a column plan downstream, so the ends stay within
/// 1/8 of the record cap however many delimiters a line holds.
pub const BYTES_PER_FIELD: usize = 64;
/// The fewest fields per record accepted, whatever the cap.
pub const MIN_FIELDS: usize = 256;

/// Maps a read error of the underlying stream, given the decoded bytes read so far.
pub type IoErrorMap = Box<dyn Fn(io::Error, u64) -> Error + Send + Sync>;

/// Where a record starts in the decoded input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line number.
    pub line: u64,
    /// Byte offset.
    pub offset: u64,
    /// 1-based record number (the CSV header is record 1).
    pub record: u64,
}

/// Where a reader stands between two records: decoded bytes, line breaks and records read
/// so far. A reader started at a point ([`CsvReader::starting_at`]) over the input from its
/// offset numbers lines and records on from there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadPoint {
    /// Decoded bytes read.
    pub offset: u64,
    /// Line breaks read.
    pub lines: u64,
    /// Records read (a CSV header counted).
    pub records: u64,
}

/// Input shared by both readers: a buffer over the stream, with the count of bytes and lines
/// consumed.
struct Input<R> {
    src: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
    offset: u64,
    lines: u64,
    name: String,
    map_io: IoErrorMap,
}

impl<R: AsyncRead + Unpin> Input<R> {
    fn new(src: R, name: String, map_io: IoErrorMap) -> Self {
        Input {
            src,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            offset: 0,
            lines: 0,
            name,
            map_io,
        }
    }

    /// Refills an empty buffer; false at the end of the input.
    async fn fill(&mut self) -> Result<bool> {
        if self.pos < self.len {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        self.pos = 0;
        self.len = 0;
        let n = self
            .src
            .read(&mut self.buf)
            .await
            .map_err(|e| (self.map_io)(e, self.offset))?;
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        self.len = n;
        // csv-core strips a UTF-8 byte order mark only when its first input holds all three
        // bytes and takes an input that is empty after the mark for the end: the first read
        // is topped up to four bytes, so the header never depends on how the stream was cut.
        while self.offset == 0 && self.len < 4 && !self.eof {
            let n = self
                .src
                .read(&mut self.buf[self.len..])
                .await
                .map_err(|e| (self.map_io)(e, self.offset))?;
            self.eof = n == 0;
            self.len += n;
        }
        Ok(true)
    }

    fn consume(&mut self, n: usize) {
        let chunk = &self.buf[self.pos..self.pos + n];
        self.lines += memchr::memchr_iter(b'\n', chunk).count() as u64;
        self.offset += n as u64;
        self.pos += n;
    }
}

/// A CSV record: its fields (as bytes), raw text and position.
#[derive(Debug)]
pub struct CsvRecord<'a> {
    out: &'a [u8],
    ends: &'a [usize],
    /// The record's bytes as they appear in the input (line ending included).
    pub raw: &'a [u8],
    /// Where it starts.
    pub pos: Position,
}

impl<'a> CsvRecord<'a> {
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the record has no field.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `i`, unquoted.
    pub fn field(&self, i: usize) -> &'a [u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.out[start..self.ends[i]]
    }
}

/// Reads CSV records one at a time.
pub struct CsvReader<R> {
    input: Input<R>,
    core: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    nout: usize,
    nend: usize,
    raw: Vec<u8>,
    start: Position,
    records: u64,
    cap: usize,
    max_fields: usize,
    delimiter: u8,
    quote: u8,
    reset: bool,
    done: bool,
}

impl<R: AsyncRead + Unpin> CsvReader<R> {
    /// A reader of `src` (decoded bytes). `name` names the input in errors; records larger than
    /// `cap` bytes, or with more than `cap /` [`BYTES_PER_FIELD`] fields, are an error.
    pub fn new(
        src: R,
        name: String,
        map_io: IoErrorMap,
        delimiter: u8,
        quote: u8,
        cap: usize,
    ) -> Self {
        CsvReader {
            input: Input::new(src, name, map_io),
            core: csv_core::ReaderBuilder::new()
                .delimiter(delimiter)
                .quote(quote)
                .build(),
            out: vec![0; 4096],
            ends: vec![0; 64],
            nout: 0,
            nend: 0,
            raw: Vec::with_capacity(4096),
            start: Position {
                line: 1,
                offset: 0,
                record: 0,
            },
            records: 0,
            cap: cap.max(1024),
            max_fields: (cap / BYTES_PER_FIELD).max(MIN_FIELDS),
            delimiter,
            quote,
            reset: true,
            done: false,
        }
    }

    /// Decoded bytes read so far.
    pub fn offset(&self) -> u64 {
        self.input.offset
    }

    /// Where the reader stands: between two records when the last [`next`](Self::next)
    /// returned one.
    pub fn point(&self) -> ReadPoint {
        ReadPoint {
            offset: self.input.offset,
            lines: self.input.lines,
            records: self.records,
        }
    }

    /// A reader whose input starts at `at` of the whole input (between two records).
    pub fn starting_at(mut self, at: ReadPoint) -> Self {
        self.input.offset = at.offset;
        self.input.lines = at.lines;
        self.records = at.records;
        self
    }

    fn error(&self, class: &'static str, message: String) -> Error {
        Error::Records {
            url: self.input.name.clone(),
            class,
            offset: self.start.offset,
            record: Some(self.start.record),
            message: format!("line {}: {message}", self.start.line),
        }
    }

    /// The next record, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<CsvRecord<'_>>> {
        if self.done {
            return Ok(None);
        }
        if self.reset {
            self.reset = false;
            self.nout = 0;
            self.nend = 0;
            self.raw.clear();
            self.start.offset = self.input.offset;
            self.start.line = self.input.lines + 1;
        }
        loop {
            self.input.fill().await?;
            let input = &self.input.buf[self.input.pos..self.input.len];
            let (res, nin, nout, nend) = self.core.read_record(
                input,
                &mut self.out[self.nout..],
                &mut self.ends[self.nend..],
            );
            self.raw.extend_from_slice(&input[..nin]);
            self.input.consume(nin);
            self.nout += nout;
            self.nend += nend;
            if self.raw.len() > self.cap || self.nout > self.cap {
                // Only the first `cap + 1` bytes are looked at (`raw` holds at least that
                // many here), so the message does not depend on the sizes of the reads.
                let hint = if self.raw[..=self.cap].contains(&self.quote) {
                    " (an unterminated quote?)"
                } else {
                    ""
                };
                self.start.record = self.records + 1;
                return Err(self.error(
                    "row too large",
                    format!("a CSV record over {} bytes{hint}", self.cap),
                ));
            }
            use csv_core::ReadRecordResult as R;
            match res {
                R::InputEmpty => {
                    if self.input.eof && nin == 0 {
                        self.done = true;
                        return Ok(None);
                    }
                }
                R::OutputFull => {
                    let n = self.out.len() * 2;
                    self.out.resize(n, 0);
                }
                R::OutputEndsFull => {
                    if self.ends.len() >= self.max_fields {
                        self.start.record = self.records + 1;
                        return Err(self.error(
                            "row has too many fields",
                            format!("a CSV record with over {} fields", self.max_fields),
                        ));
                    }
                    let n = (self.ends.len() * 2).min(self.max_fields);
                    self.ends.resize(n, 0);
                }
                R::Record => break,
                R::End => {
                    self.done = true;
                    return Ok(None);
                }
            }
        }
        self.records += 1;
        self.start.record = self.records;
        self.reset = true;
        // csv-core skips blank lines before a record; they are part of `raw`.
        let blank = self
            .raw
            .iter()
            .take_while(|b| **b == b'\n' || **b == b'\r')
            .count();
        if blank > 0 {
            let newlines = self.raw[..blank].iter().filter(|b| **b == b'\n').count();
            self.start.offset += blank as u64;
            self.start.line += newlines as u64;
        }
        if self.input.eof
            && self.input.pos == self.input.len
            && ends_in_quote(&self.raw[blank..], self.delimiter, self.quote)
        {
            return Err(self.error(
                "unterminated quote",
                "a quoted field is still open at the end of the input".to_owned(),
            ));
        }
        Ok(Some(CsvRecord {
            out: &self.out[..self.nout],
            ends: &self.ends[..self.nend],
            raw: &self.raw[blank..],
            pos: self.start,
        }))
    }
}

/// Whether `raw` (one record) ends inside a quoted field.
fn ends_in_quote(raw: &[u8], delimiter: u8, quote: u8) -> bool {
    let mut quoted = false;
    let mut field_start = true;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if quoted {
            if b == quote {
                if raw.get(i + 1) == Some(&quote) {
                    i += 1;
                } else {
                    quoted = false;
                }
            }
            field_start = false;
        } else if b == quote && field_start {
            quoted = true;
            field_start = false;
        } else {
            field_start = b == delimiter || b == b'\n' || b == b'\r';
        }
        i += 1;
    }
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> IoErrorMap {
        Box::new(|e, _| Error::spec(e.to_string()))
    }

    async fn records(data: &[u8], cap: usize) -> Result<Vec<(Vec<String>, u64, u64, String)>> {
        let mut r = CsvReader::new(data, "test".into(), map(), b',', b'"', cap);
        let mut all = Vec::new();
        while let Some(rec) = r.next().await? {
            let fields = (0..rec.len())
                .map(|i| String::from_utf8_lossy(rec.field(i)).into_owned())
                .collect();
            all.push((
                fields,
                rec.pos.line,
                rec.pos.offset,
                String::from_utf8_lossy(rec.raw).into_owned(),
            ));
        }
        Ok(all)
    }

    /// An input that hands out at most `step` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.step.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn first_error(data: &[u8], step: usize, cap: usize) -> (Vec<Vec<u8>>, Option<String>) {
        let input = Trickle { data, step };
        let mut r = CsvReader::new(input, "test".into(), map(), b',', b'"', cap);
        let mut fields = Vec::new();
        loop {
            match r.next().await {
                Ok(Some(rec)) => fields.extend((0..rec.len()).map(|i| rec.field(i).to_vec())),
                Ok(None) => return (fields, None),
                Err(e) => return (fields, Some(e.to_string())),
            }
        }
    }

    /// Found by the `csv` fuzz target: a byte order mark cut over the first reads stayed in
    /// the first header name.
    #[tokio::test]
    async fn a_byte_order_mark_is_stripped_however_the_input_is_cut() {
        let data = b"\xEF\xBB\xBFa,b\n1,2\n";
        for step in [1, 2, 3, 64] {
            let (fields, err) = first_error(data, step, 1 << 20).await;
            assert_eq!(err, None);
            assert_eq!(fields[0], b"a", "reads of {step} bytes");
        }
    }

    /// Found by the `csv` fuzz target: the "unterminated quote?" hint of an oversized row
    /// depended on how much the read that crossed the cap held.
    #[tokio::test]
    async fn the_row_too_large_message_does_not_depend_on_the_reads() {
        // The reader's smallest cap is 1 KiB; the quote sits past it.
        let mut data = vec![b'x'; 1100];
        data.push(b'"');
        data.extend_from_slice(b"rest\n");
        let mut messages = Vec::new();
        for step in [1, 7, 4096] {
            messages.push(first_error(&data, step, 1024).await.1);
        }
        assert!(
            messages[0].as_deref().unwrap().contains("row too large"),
            "{messages:?}"
        );
        assert!(messages.iter().all(|m| *m == messages[0]), "{messages:?}");
    }

    #[tokio::test]
    async fn quotes_newlines_and_positions() {
        let data = b"a,b\n1,\"x, \"\"y\"\"\nz\"\r\n\n3,4";
        let r = records(data, 1 << 20).await.unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].0, ["1", "x, \"y\"\nz"]);
        assert_eq!((r[1].1, r[1].2), (2, 4));
        // csv-core stops after the `\r` of a CRLF; the `\n` is skipped before the next record.
        assert_eq!(r[1].3, "1,\"x, \"\"y\"\"\nz\"\r");
        assert_eq!(r[2].0, ["3", "4"]);
        assert_eq!((r[2].1, r[2].2), (5, 21));
    }

    #[tokio::test]
    async fn an_unterminated_quote_is_an_error() {
        let e = records(b"a,b\n1,2\n3,\"open\n4,5\n", 1 << 20)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unterminated quote at byte 8 (record 3): line 3"),
            "{e}"
        );
        // A quote inside an unquoted field is data, not an opening quote.
        let r = records(b"a,b\n1,2\"x\n", 1 << 20).await.unwrap();
        assert_eq!(r[1].0, ["1", "2\"x"]);
    }

    /// A line of delimiters stops at the field cap instead of doubling the field ends
    /// without bound: the error names the record, its line and its offset.
    #[tokio::test]
    async fn a_row_of_too_many_fields_is_an_error_naming_the_row() {
        let mut data = b"a,b\n1,2\n".to_vec();
        data.extend(std::iter::repeat_n(b',', 1 << 20));
        data.push(b'\n');
        let cap = 64 << 20;
        let mut r = CsvReader::new(&data[..], "test".into(), map(), b',', b'"', cap);
        r.next().await.unwrap();
        r.next().await.unwrap();
        let e = r.next().await.unwrap_err().to_string();
        assert!(
            e.contains("row has too many fields at byte 8 (record 3): line 3")
                && e.contains("over 1048576 fields"),
            "{e}"
        );
        assert!(r.ends.len() <= cap / BYTES_PER_FIELD);
        // The same line under the field cap reads.
        let mut data = b"a\n".to_vec();
        data.extend(std::iter::repeat_n(b',', 999));
        let all = records(&data, 64 * 1024).await.unwrap();
        assert_eq!(all[1].0.len(), 1000);
    }

    #[tokio::test]
    async fn an_oversized_row_is_an_error() {
        let mut data = b"a,b\n1,2\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 5000));
        data.extend(b",3\n");
        let e = records(&data, 1024).await.unwrap_err().to_string();
        assert!(e.contains("row too large") && e.contains("record 3"), "{e}");
    }
}
