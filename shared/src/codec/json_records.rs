//! Streaming extraction of the records of a JSON document.
//!
//! [`JsonRecordsDecoder`] is a [`Decoder`] that yields each element of the array at a path such
//! as `$.data[*]` (or `$[*]` for a top-level array) as the raw bytes of one JSON value, without
//! building the document in memory. While it streams, it captures scalars at other paths
//! (`$.next_cursor`, `$.meta.has_more`), wherever they stand in the document — before or after
//! the array. Subtrees on no path of interest are skipped without being kept.
//!
//! Every element is checked to be valid JSON before it is yielded; a record with line breaks
//! (pretty-printed input) is yielded with the whitespace between its tokens removed, so it fits
//! on one NDJSON line. Limits: a record, a captured value or an object key longer than
//! `max_record_len` is an error, as is invalid JSON, a document that ends early, trailing data,
//! and a document without the records path at all (the usual shape of an error answered with
//! status 200).

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use serde::de::IgnoredAny;
use tokio_util::codec::Decoder;

pub use super::ndjson::NdjsonDecoder;

/// A JSON path of object keys: `$.a.b` (or `$` for the root). Bracket form `$['a b']` is
/// accepted for keys with other characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonPath(Vec<String>);

impl JsonPath {
    /// Parses `$`, `$.a.b`, `$['a b'].c`. With `array = true` the path must end in `[*]`
    /// (`$[*]`, `$.data[*]`), which is removed.
    pub fn parse(text: &str, array: bool) -> Result<JsonPath, String> {
        let bad = |why: &str| format!("JSON path {text:?}: {why}");
        let mut rest = text
            .strip_prefix('$')
            .ok_or_else(|| bad("must start with '$'"))?;
        if array {
            rest = rest.strip_suffix("[*]").ok_or_else(|| {
                bad("must end with [*] (the array whose elements are the records)")
            })?;
        }
        let mut keys = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("['") {
                let end = after.find("']").ok_or_else(|| bad("unclosed ['"))?;
                keys.push(after[..end].to_owned());
                rest = &after[end + 2..];
            } else if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let key = &after[..end];
                if key.is_empty() || key.contains('*') {
                    return Err(bad(
                        "empty or wildcard key (only `.key` and `['key']` steps are supported)",
                    ));
                }
                keys.push(key.to_owned());
                rest = &after[end..];
            } else {
                return Err(bad("expected `.key` or `['key']`"));
            }
        }
        Ok(JsonPath(keys))
    }

    /// The keys from the root.
    pub fn keys(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for k in &self.0 {
            if k.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            {
                write!(f, ".{k}")?;
            } else {
                write!(f, "['{k}']")?;
            }
        }
        Ok(())
    }
}

/// Scalars captured while streaming, shared with whoever owns the decoder's stream.
#[derive(Debug, Clone, Default)]
pub struct Captures(Arc<Mutex<Vec<Option<serde_json::Value>>>>);

impl Captures {
    /// The value captured for the `i`-th capture path, if it was seen.
    pub fn get(&self, i: usize) -> Option<serde_json::Value> {
        self.0
            .lock()
            .expect("not poisoned")
            .get(i)
            .cloned()
            .flatten()
    }

    pub(crate) fn set(&self, i: usize, v: serde_json::Value) {
        let mut slots = self.0.lock().expect("not poisoned");
        if slots.len() <= i {
            slots.resize(i + 1, None);
        }
        slots[i] = Some(v);
    }
}

/// Why a document could not be read as records; carried inside an [`io::Error`] of kind
/// `InvalidData` so it travels through readers and streams unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class} at byte {offset}{}: {message}", record_suffix(*.record))]
pub struct RecordsError {
    /// `invalid JSON`, `record too large`, `document cut short`, `records not found`.
    pub class: &'static str,
    /// Byte offset in the (decoded) document.
    pub offset: u64,
    /// 1-based record number, when the failure is inside a record.
    pub record: Option<u64>,
    /// Details.
    pub message: String,
}

fn record_suffix(record: Option<u64>) -> String {
    record.map(|r| format!(" (record {r})")).unwrap_or_default()
}

impl RecordsError {
    /// Finds a `RecordsError` inside an `io::Error`.
    pub fn find(err: &io::Error) -> Option<&RecordsError> {
        err.get_ref().and_then(|e| e.downcast_ref::<RecordsError>())
    }
}

impl From<RecordsError> for io::Error {
    fn from(e: RecordsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (object member value, array element, the root).
    Value,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object: a key.
    Key,
    /// After a key.
    Colon,
    /// After `[` of the records array: a record or `]`.
    RecordOrEnd,
    /// After `,` in the records array.
    Record,
    /// After a member or element.
    CommaOrEnd,
}

#[derive(Debug)]
enum Frame {
    Object { key: Option<String> },
    Records,
}

/// Progress through a token longer than what has arrived so far, so no byte is scanned twice.
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    pos: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
    line_break: bool,
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct JsonRecordsDecoder {
    records: JsonPath,
    captures: Vec<JsonPath>,
    captured: Captures,
    max_len: usize,
    stack: Vec<Frame>,
    expect: Expect,
    scan: Scan,
    /// Inside a subtree on no path of interest: consumed as it is scanned, never kept.
    skip: Option<Scan>,
    offset: u64,
    count: u64,
    found: bool,
    done: bool,
}

impl JsonRecordsDecoder {
    /// Records are the elements of the array at `records`; `captures` are scalar paths whose
    /// values are stored in [`Self::captures`] (the last value seen wins). `max_record_len`
    /// caps every record, key and captured value.
    pub fn new(records: JsonPath, captures: Vec<JsonPath>, max_record_len: usize) -> Self {
        JsonRecordsDecoder {
            records,
            captures,
            captured: Captures::default(),
            max_len: max_record_len,
            stack: Vec::new(),
            expect: Expect::Value,
            scan: Scan::default(),
            skip: None,
            offset: 0,
            count: 0,
            found: false,
            done: false,
        }
    }

    /// The captured scalars, in the order of the capture paths.
    pub fn captures(&self) -> Captures {
        self.captured.clone()
    }

    /// Records yielded so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn err(&self, class: &'static str, at: usize, record: bool, message: String) -> io::Error {
        RecordsError {
            class,
            offset: self.offset + at as u64,
            record: record.then_some(self.count + 1),
            message,
        }
        .into()
    }

    fn consume(&mut self, src: &mut BytesMut, n: usize) {
        src.advance(n);
        self.offset += n as u64;
        self.scan = Scan::default();
    }

    /// The path of the value about to start.
    fn value_path(&self) -> Vec<&str> {
        self.stack
            .iter()
            .filter_map(|f| match f {
                Frame::Object { key } => key.as_deref(),
                Frame::Records => None,
            })
            .collect()
    }

    fn value_done(&mut self) {
        self.expect = Expect::CommaOrEnd;
        if self.stack.is_empty() {
            self.done = true;
        }
    }

    /// Scans a whole value starting at `src[0]` (container, string or scalar) from where the
    /// previous call stopped. Returns its length once complete.
    fn scan_value(&mut self, src: &[u8], record: bool) -> io::Result<Option<usize>> {
        let first = src[0];
        let mut s = self.scan;
        let limit = self.max_len.min(src.len());
        let result = match first {
            b'{' | b'[' => scan_container(src, &mut s, limit),
            b'"' => {
                if s.pos == 0 {
                    s.pos = 1;
                }
                let mut end = None;
                while s.pos < limit {
                    match memchr::memchr2(b'"', b'\\', &src[s.pos..limit]) {
                        None => {
                            s.pos = limit;
                            break;
                        }
                        Some(i) => {
                            s.pos += i;
                            if src[s.pos] == b'\\' {
                                s.pos += 2;
                            } else {
                                end = Some(s.pos + 1);
                                break;
                            }
                        }
                    }
                }
                end
            }
            _ => {
                let mut end = None;
                while s.pos < limit {
                    match src[s.pos] {
                        b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' => {
                            end = Some(s.pos);
                            break;
                        }
                        _ => s.pos += 1,
                    }
                }
                end
            }
        };
        self.scan = s;
        match result {
            Some(len) => Ok(Some(len)),
            None if s.pos >= self.max_len => Err(self.err(
                if record {
                    "record too large"
                } else {
                    "value too large"
                },
                0,
                record,
                format!("longer than the limit of {} bytes", self.max_len),
            )),
            None => Ok(None),
        }
    }

    fn check_json(&self, bytes: &[u8], record: bool) -> io::Result<()> {
        // serde_json skips strings without checking their UTF-8; a record is copied out as is.
        if let Err(e) = std::str::from_utf8(bytes) {
            return Err(self.err(
                "invalid UTF-8",
                e.valid_up_to(),
                record,
                format!("byte 0x{:02x} is not UTF-8", bytes[e.valid_up_to()]),
            ));
        }
        serde_json::from_slice::<IgnoredAny>(bytes)
            .map(|_| ())
            .map_err(|e| {
                let mut msg = e.to_string();
                if record {
                    msg = format!("{msg} within the record");
                }
                self.err("invalid JSON", 0, record, msg)
            })
    }

    fn emit_record(&mut self, src: &mut BytesMut, len: usize) -> io::Result<Bytes> {
        self.check_json(&src[..len], true)?;
        let line_break = self.scan.line_break;
        let raw = src.split_to(len).freeze();
        self.offset += len as u64;
        self.scan = Scan::default();
        self.count += 1;
        self.expect = Expect::CommaOrEnd;
        Ok(if line_break { minify(&raw) } else { raw })
    }
}

/// Removes whitespace outside strings, so a pretty-printed record fits on one line.
fn minify(raw: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    Bytes::from(out)
}

/// Scans a container from `s` (depth 0 at its first byte) up to `limit`; returns the length
/// once the bracket that closes it is found. Strings (and escaped quotes in them) are honoured.
fn scan_container(src: &[u8], s: &mut Scan, limit: usize) -> Option<usize> {
    while s.pos < limit {
        if s.in_string {
            if s.escaped {
                s.escaped = false;
                s.pos += 1;
                continue;
            }
            match memchr::memchr2(b'"', b'\\', &src[s.pos..limit]) {
                None => {
                    s.pos = limit;
                    return None;
                }
                Some(i) => {
                    s.pos += i;
                    if src[s.pos] == b'\\' {
                        s.escaped = true;
                    } else {
                        s.in_string = false;
                    }
                    s.pos += 1;
                    continue;
                }
            }
        }
        match src[s.pos] {
            b'"' => s.in_string = true,
            b'{' | b'[' => s.depth += 1,
            b'}' | b']' => {
                s.depth -= 1;
                if s.depth == 0 {
                    s.pos += 1;
                    return Some(s.pos);
                }
            }
            b'\n' | b'\r' => s.line_break = true,
            _ => {}
        }
        s.pos += 1;
    }
    None
}

fn describe(b: u8) -> String {
    match b {
        b'{' => "an object".into(),
        b'[' => "an array".into(),
        b'"' => "a string".into(),
        b't' | b'f' => "a boolean".into(),
        b'n' => "null".into(),
        b'-' | b'0'..=b'9' => "a number".into(),
        other => format!("{:?}", other as char),
    }
}

/// What a parser-state handler tells the [`Decoder::decode`] loop.
enum Step {
    /// The token was consumed (or a skip begun): look at what follows.
    Next,
    /// End this call: a record, or `None` when more input is needed.
    Yield(Option<Bytes>),
}

/// A byte that can start a JSON value.
fn starts_value(b: u8) -> bool {
    matches!(
        b,
        b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
    )
}

impl JsonRecordsDecoder {
    /// Continues skipping a subtree; it is consumed as far as it has arrived.
    fn continue_skip(&mut self, src: &mut BytesMut, mut skip: Scan) -> Step {
        let end = scan_container(src, &mut skip, src.len());
        let n = skip.pos;
        self.consume(src, n);
        match end {
            Some(_) => {
                self.value_done();
                Step::Next
            }
            None => {
                // `src` now starts after what was scanned, so the next call resumes at 0.
                skip.pos = 0;
                self.skip = Some(skip);
                Step::Yield(None)
            }
        }
    }

    /// Whitespace between tokens is consumed at once, unless a token is half-scanned (its
    /// scan position counts from `src[0]`).
    fn skip_whitespace(&mut self, src: &mut BytesMut) {
        if self.scan.pos == 0 {
            let ws = src
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(src.len());
            if ws > 0 {
                self.consume(src, ws);
            }
        }
    }

    /// [`Expect::Value`]: the records array, an object on the way to a path of interest, a
    /// subtree to skip, or a scalar (captured if it is on a capture path).
    fn on_value(&mut self, src: &mut BytesMut, b: u8) -> io::Result<Step> {
        let path = self.value_path();
        if path
            .iter()
            .copied()
            .eq(self.records.keys().iter().map(String::as_str))
        {
            return self.on_records_value(src, b);
        }
        let on_way = |p: &JsonPath| {
            p.keys().len() > path.len() && p.keys().iter().zip(&path).all(|(a, b)| a == b)
        };
        if b == b'{' && (on_way(&self.records) || self.captures.iter().any(on_way)) {
            self.consume(src, 1);
            self.stack.push(Frame::Object { key: None });
            self.expect = Expect::KeyOrEnd;
            return Ok(Step::Next);
        }
        if self.stack.is_empty() && b != b'{' {
            return Err(self.err(
                "records not found",
                0,
                false,
                format!(
                    "expected a JSON object holding {}, found {}",
                    self.records,
                    describe(b)
                ),
            ));
        }
        if !starts_value(b) {
            return Err(self.err(
                "invalid JSON",
                0,
                false,
                format!("expected a value, found {}", describe(b)),
            ));
        }
        if matches!(b, b'{' | b'[') {
            self.skip = Some(Scan::default());
            return Ok(Step::Next);
        }
        let capture = self
            .captures
            .iter()
            .position(|c| c.keys().iter().map(String::as_str).eq(path.iter().copied()));
        let Some(len) = self.scan_value(src, false)? else {
            return Ok(Step::Yield(None));
        };
        let value: serde_json::Value = serde_json::from_slice(&src[..len])
            .map_err(|e| self.err("invalid JSON", 0, false, e.to_string()))?;
        if let Some(i) = capture {
            self.captured.set(i, value);
        }
        self.consume(src, len);
        self.value_done();
        Ok(Step::Next)
    }

    /// The value at the records path: the array, or `null`.
    fn on_records_value(&mut self, src: &mut BytesMut, b: u8) -> io::Result<Step> {
        match b {
            b'[' => {
                self.consume(src, 1);
                self.stack.push(Frame::Records);
                self.expect = Expect::RecordOrEnd;
                self.found = true;
                Ok(Step::Next)
            }
            // An API's way of saying "no records on this page".
            b'n' => {
                let Some(len) = self.scan_value(src, false)? else {
                    return Ok(Step::Yield(None));
                };
                if &src[..len] == b"null" {
                    self.found = true;
                    self.consume(src, len);
                    self.value_done();
                    return Ok(Step::Next);
                }
                Err(self.err(
                    "invalid JSON",
                    0,
                    false,
                    format!("expected an array at {}", self.records),
                ))
            }
            other => Err(self.err(
                "records not found",
                0,
                false,
                format!(
                    "expected an array at {}, found {}",
                    self.records,
                    describe(other)
                ),
            )),
        }
    }

    /// [`Expect::KeyOrEnd`] / [`Expect::Key`]: an object key (or `}` right after `{`).
    fn on_key(&mut self, src: &mut BytesMut, b: u8) -> io::Result<Step> {
        if b == b'}' && self.expect == Expect::KeyOrEnd {
            self.consume(src, 1);
            self.stack.pop();
            self.value_done();
            return Ok(Step::Next);
        }
        if b != b'"' {
            return Err(self.err(
                "invalid JSON",
                0,
                false,
                format!("expected an object key, found {}", describe(b)),
            ));
        }
        let Some(len) = self.scan_value(src, false)? else {
            return Ok(Step::Yield(None));
        };
        let key: String = serde_json::from_slice(&src[..len])
            .map_err(|e| self.err("invalid JSON", 0, false, e.to_string()))?;
        if let Some(Frame::Object { key: slot }) = self.stack.last_mut() {
            *slot = Some(key);
        }
        self.consume(src, len);
        self.expect = Expect::Colon;
        Ok(Step::Next)
    }

    /// [`Expect::Colon`].
    fn on_colon(&mut self, src: &mut BytesMut, b: u8) -> io::Result<Step> {
        if b != b':' {
            return Err(self.err(
                "invalid JSON",
                0,
                false,
                format!("expected ':', found {}", describe(b)),
            ));
        }
        self.consume(src, 1);
        self.expect = Expect::Value;
        Ok(Step::Next)
    }

    /// [`Expect::RecordOrEnd`] / [`Expect::Record`]: a record, yielded once complete, or the
    /// `]` that closes the records array.
    fn on_record(&mut self, src: &mut BytesMut, b: u8) -> io::Result<Step> {
        if b == b']' {
            if self.expect == Expect::Record {
                return Err(self.err("invalid JSON", 0, false, "trailing comma before ']'".into()));
            }
            self.consume(src, 1);
            self.stack.pop();
            self.value_done();
            return Ok(Step::Next);
        }
        if !starts_value(b) {
            return Err(self.err(
                "invalid JSON",
                0,
                true,
                format!("expected a record, found {}", describe(b)),
            ));
        }
        let Some(len) = self.scan_value(src, true)? else {
            return Ok(Step::Yield(None));
        };
        self.emit_record(src, len).map(|r| Step::Yield(Some(r)))
    }

    /// [`Expect::CommaOrEnd`]: after a member of an object or an element of the records array.
    fn on_comma_or_end(&mut self, src: &mut BytesMut, b: u8) -> io::Result<Step> {
        let in_records = matches!(self.stack.last(), Some(Frame::Records));
        match (b, in_records) {
            (b',', true) => {
                self.consume(src, 1);
                self.expect = Expect::Record;
            }
            (b',', false) => {
                self.consume(src, 1);
                self.expect = Expect::Key;
            }
            (b']', true) | (b'}', false) => {
                self.consume(src, 1);
                self.stack.pop();
                self.value_done();
            }
            _ => {
                return Err(self.err(
                    "invalid JSON",
                    0,
                    in_records,
                    format!(
                        "expected ',' or '{}', found {}",
                        if in_records { ']' } else { '}' },
                        describe(b)
                    ),
                ));
            }
        }
        Ok(Step::Next)
    }
}

impl Decoder for JsonRecordsDecoder {
    type Item = Bytes;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(skip) = self.skip.take() {
                match self.continue_skip(src, skip) {
                    Step::Next => continue,
                    Step::Yield(out) => return Ok(out),
                }
            }
            self.skip_whitespace(src);
            if src.is_empty() {
                return Ok(None);
            }
            if self.done {
                return Err(self.err(
                    "invalid JSON",
                    0,
                    false,
                    format!("trailing data after the document: {}", describe(src[0])),
                ));
            }
            let b = src[0];
            let step = match self.expect {
                Expect::Value => self.on_value(src, b)?,
                Expect::KeyOrEnd | Expect::Key => self.on_key(src, b)?,
                Expect::Colon => self.on_colon(src, b)?,
                Expect::RecordOrEnd | Expect::Record => self.on_record(src, b)?,
                Expect::CommaOrEnd => self.on_comma_or_end(src, b)?,
            };
            if let Step::Yield(out) = step {
                return Ok(out);
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if !self.done {
            let inside = matches!(self.stack.last(), Some(Frame::Records)) && self.scan.pos > 0;
            return Err(self.err(
                "document cut short",
                src.len(),
                inside,
                if inside {
                    "the document ends inside a record".into()
                } else {
                    "the document ends before it is complete".into()
                },
            ));
        }
        if !self.found {
            return Err(self.err(
                "records not found",
                0,
                false,
                format!("the document has no {} (an error answer?)", self.records),
            ));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(records: &str, captures: &[&str]) -> JsonRecordsDecoder {
        JsonRecordsDecoder::new(
            JsonPath::parse(records, true).unwrap(),
            captures
                .iter()
                .map(|c| JsonPath::parse(c, false).unwrap())
                .collect(),
            1024,
        )
    }

    #[test]
    fn invalid_utf8_in_a_record_is_an_error_with_its_position() {
        for chunk in 1..40 {
            let doc = b"{\"data\":[{\"id\":1},{\"name\":\"ab\xff\xfe\"}]}";
            let e = run("$.data[*]", &[], doc, chunk).unwrap_err().to_string();
            assert!(
                e.starts_with("invalid UTF-8 at byte 29 (record 2)"),
                "{chunk}: {e}"
            );
        }
    }

    /// Feeds `doc` in pieces of `chunk` bytes; returns the records and the captures.
    fn run(
        records: &str,
        captures: &[&str],
        doc: &[u8],
        chunk: usize,
    ) -> io::Result<(Vec<String>, Vec<Option<serde_json::Value>>)> {
        let mut d = decoder(records, captures);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in doc.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(r) = d.decode(&mut buf)? {
                out.push(String::from_utf8(r.to_vec()).unwrap());
            }
        }
        while let Some(r) = d.decode_eof(&mut buf)? {
            out.push(String::from_utf8(r.to_vec()).unwrap());
        }
        let c = d.captures();
        Ok((out, (0..captures.len()).map(|i| c.get(i)).collect()))
    }

    /// The same answer for every way of splitting the input.
    fn all_splits(
        records: &str,
        captures: &[&str],
        doc: &str,
    ) -> io::Result<(Vec<String>, Vec<Option<serde_json::Value>>)> {
        let whole = run(records, captures, doc.as_bytes(), doc.len());
        for chunk in 1..doc.len() {
            let split = run(records, captures, doc.as_bytes(), chunk);
            match (&whole, &split) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "chunk size {chunk}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "chunk size {chunk}"),
                _ => panic!("chunk size {chunk}: {whole:?} vs {split:?}"),
            }
        }
        whole
    }

    #[test]
    fn paths_parse() {
        assert_eq!(JsonPath::parse("$.data[*]", true).unwrap().keys(), ["data"]);
        assert!(JsonPath::parse("$[*]", true).unwrap().keys().is_empty());
        assert_eq!(
            JsonPath::parse("$.a['b c'].d", false).unwrap().keys(),
            ["a", "b c", "d"]
        );
        assert!(
            JsonPath::parse("data[*]", true)
                .unwrap_err()
                .contains("must start with '$'")
        );
        assert!(JsonPath::parse("$.data", true).unwrap_err().contains("[*]"));
        assert!(JsonPath::parse("$.a.*", false).is_err());
        assert_eq!(
            JsonPath::parse("$.a['b c']", false).unwrap().to_string(),
            "$.a['b c']"
        );
    }

    #[test]
    fn extracts_records_and_captures_before_and_after() {
        let doc = r#"{"meta": {"has_more": true, "skip": [1, {"x": "]}"}]},
            "data": [{"id": 1, "s": "a,\"}]"}, {"id": 2}, 3, "four", [5], null],
            "next_cursor": "c2", "total": 6}"#;
        let (records, caps) = all_splits(
            "$.data[*]",
            &["$.next_cursor", "$.meta.has_more", "$.total", "$.absent"],
            doc,
        )
        .unwrap();
        assert_eq!(
            records,
            [
                r#"{"id": 1, "s": "a,\"}]"}"#,
                r#"{"id": 2}"#,
                "3",
                r#""four""#,
                "[5]",
                "null"
            ]
        );
        assert_eq!(
            caps,
            vec![Some("c2".into()), Some(true.into()), Some(6.into()), None]
        );
    }

    #[test]
    fn top_level_array_and_empty_pages() {
        let (r, _) = all_splits("$[*]", &[], r#" [ {"a":1} , {"b":[2]} ] "#).unwrap();
        assert_eq!(r, [r#"{"a":1}"#, r#"{"b":[2]}"#]);
        assert!(
            all_splits("$.data[*]", &[], r#"{"data": []}"#)
                .unwrap()
                .0
                .is_empty()
        );
        assert!(
            all_splits("$.data[*]", &[], r#"{"data": null}"#)
                .unwrap()
                .0
                .is_empty()
        );
    }

    #[test]
    fn pretty_records_become_one_line() {
        let doc = "{\"data\": [\n  {\n    \"id\": 1,\n    \"s\": \"a b\"\n  }\n]}";
        let (r, _) = all_splits("$.data[*]", &[], doc).unwrap();
        assert_eq!(r, [r#"{"id":1,"s":"a b"}"#]);
    }

    #[test]
    fn bad_documents_name_position_and_class() {
        let e = all_splits("$.data[*]", &[], r#"{"data":[{"a":1},{"a":"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("document cut short") && e.contains("record 2"),
            "{e}"
        );
        let e = all_splits("$.data[*]", &[], r#"{"data":[{"a":1},{"a":tru}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid JSON at byte 17 (record 2)"), "{e}");
        let e = all_splits("$.data[*]", &[], r#"{"error":{"code":"rate_limited"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("records not found") && e.contains("$.data"),
            "{e}"
        );
        let e = all_splits("$.data[*]", &[], r#"{"data":{"a":1}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected an array at $.data, found an object"),
            "{e}"
        );
        let e = all_splits("$.data[*]", &[], r#"{"data":[1,]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trailing comma"), "{e}");
        let e = all_splits("$.data[*]", &[], r#"{"data":[1]} x"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trailing data"), "{e}");
        let e = all_splits("$.data[*]", &[], r#"<html>"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("records not found"), "{e}");
        let e = all_splits("$.data[*]", &[], r#"{"data":[1] "x":2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected ',' or '}'"), "{e}");
    }

    #[test]
    fn oversized_record_is_an_error_not_a_buffer() {
        let big = format!(r#"{{"data":[{{"a":"{}"}}]}}"#, "x".repeat(5000));
        let mut d = decoder("$.data[*]", &[]);
        let mut buf = BytesMut::new();
        let mut err = None;
        for piece in big.as_bytes().chunks(100) {
            buf.extend_from_slice(piece);
            if let Err(e) = d.decode(&mut buf) {
                err = Some(e);
                break;
            }
            assert!(buf.len() <= 1024 + 100, "buffered {} bytes", buf.len());
        }
        let e = err.expect("an error").to_string();
        assert!(
            e.contains("record too large") && e.contains("1024 bytes"),
            "{e}"
        );
    }

    #[test]
    fn big_skipped_subtrees_are_not_kept() {
        // A 100 KB array that is on no path of interest, before the records.
        let filler = vec!["[1,2,\"]\"]"; 10_000].join(",");
        let doc = format!(r#"{{"skip":[{filler}],"data":[1,2]}}"#);
        let mut d = decoder("$.data[*]", &[]);
        let mut buf = BytesMut::new();
        let mut out = vec![];
        for piece in doc.as_bytes().chunks(4096) {
            buf.extend_from_slice(piece);
            while let Some(r) = d.decode(&mut buf).unwrap() {
                out.push(r);
            }
            // Far more than the 1024-byte cap went by: it was consumed, not kept.
            assert!(buf.len() < 4096, "kept {} bytes", buf.len());
        }
        while let Some(r) = d.decode_eof(&mut buf).unwrap() {
            out.push(r);
        }
        assert_eq!(out, [Bytes::from("1"), Bytes::from("2")]);
    }
}
