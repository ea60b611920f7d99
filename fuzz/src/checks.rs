//! The invariants every fuzz target checks, one function per target, shared by the libFuzzer
//! targets (`fuzz/fuzz_targets/*.rs`, nightly) and the corpus replay test
//! (`shared/tests/fuzz_corpus.rs`, stable), which includes this file with `#[path]`.
//!
//! Each check takes arbitrary bytes and panics (an assertion) when an invariant breaks: a
//! parser that sees remote or event bytes must not panic, must respect its caps, and must give
//! the same answer however the bytes are split into reads.
//!
//! Only crates both builds have are used: `sluice` and its dependencies.

use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arrow_array::cast::AsArray;
use arrow_array::types::Decimal128Type;
use arrow_array::{Array, ArrayRef};
use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;
use sluice::codec::json_records::{JsonPath, JsonRecordsDecoder, RecordsError};
use sluice::codec::ndjson::{LinePosition, NdjsonDecoder};
use sluice::codec::{Codec, Compression, Decoding};
use sluice::columnar::{ColumnBuilder, ColumnType};
use sluice::source::postgres::{ResultColumn, TupleDecoder};
use sluice::transform::reader::CsvReader;
use sluice::{Error, ErrorKind};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_postgres::types::{Kind, Type};
use tokio_util::codec::Decoder;

/// A target's check: panics when an invariant breaks.
pub type Check = fn(&[u8]);

/// Every target: its name (the directory of its corpus, the name of its fuzz binary) and check.
pub const TARGETS: &[(&str, Check)] = &[
    ("json_records", json_records),
    ("ndjson", ndjson),
    ("csv", csv),
    ("decompress", decompress),
    ("job_spec", job_spec),
    ("pipeline", pipeline),
    ("export_spec", export_spec),
    ("sweep_config", sweep_config),
    ("retry_after", retry_after),
    ("link_header", link_header),
    ("key_template", key_template),
    ("postgres_tuple", postgres_tuple),
];

/// How an input is cut into reads.
#[derive(Debug, Clone, Copy)]
enum Split {
    /// One read of everything.
    Whole,
    /// One byte per read.
    Bytes,
    /// Sizes drawn from a generator seeded by the input.
    Random(u64),
}

/// The three splits every streaming check compares.
fn splits(data: &[u8]) -> [Split; 3] {
    // FNV-1a: the same input always gets the same random split, so a failure replays.
    let seed = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    [Split::Whole, Split::Bytes, Split::Random(seed)]
}

/// splitmix64.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn chunks(data: &[u8], split: Split) -> Vec<&[u8]> {
    match split {
        Split::Whole => vec![data],
        Split::Bytes => data.chunks(1).collect(),
        Split::Random(mut state) => {
            let mut out = Vec::new();
            let mut rest = data;
            while !rest.is_empty() {
                let r = next_random(&mut state);
                // Mostly small reads, sometimes a large one.
                let n = if r % 8 == 0 {
                    r >> 8
                } else {
                    (r >> 8) % 17 + 1
                } as usize;
                let n = n.clamp(1, rest.len());
                out.push(&rest[..n]);
                rest = &rest[n..];
            }
            out
        }
    }
}

/// An `AsyncRead` that returns the input in the reads of a split, and is sometimes pending.
struct ChunkedReader {
    chunks: Vec<Vec<u8>>,
    next: usize,
    /// Bytes of `chunks[next]` already returned.
    within: usize,
    polls: u32,
}

impl ChunkedReader {
    fn new(data: &[u8], split: Split) -> Self {
        ChunkedReader {
            chunks: chunks(data, split)
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect(),
            next: 0,
            within: 0,
            polls: 0,
        }
    }
}

impl AsyncRead for ChunkedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.polls += 1;
        if this.polls % 5 == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(chunk) = this.chunks.get(this.next) {
            let rest = &chunk[this.within..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.within += n;
            if this.within == chunk.len() {
                this.next += 1;
                this.within = 0;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// What a framing decoder made of an input: its frames and how it ended.
#[derive(Debug, PartialEq)]
struct Framed<P> {
    frames: Vec<(Bytes, P)>,
    /// `None` when the input ended cleanly, else the error's class, offset and record.
    error: Option<(&'static str, u64, Option<u64>)>,
}

/// Feeds `data` to `decoder` in the reads of `split`, as `FramedRead` does; `pos` reads the
/// decoder's position of the frame just yielded.
fn frame<D, P>(mut decoder: D, data: &[u8], split: Split, pos: impl Fn(&D) -> P) -> (Framed<P>, D)
where
    D: Decoder<Item = Bytes, Error = io::Error>,
{
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut result = Ok(());
    'feed: for chunk in chunks(data, split) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => frames.push((f, pos(&decoder))),
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break 'feed;
                }
            }
        }
    }
    if result.is_ok() {
        loop {
            match decoder.decode_eof(&mut buf) {
                Ok(Some(f)) => frames.push((f, pos(&decoder))),
                Ok(None) => {
                    // Nothing is dropped silently: a clean end consumed every byte.
                    assert!(buf.is_empty(), "clean end with {} bytes left", buf.len());
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    let error = result.err().map(|e| {
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let r = RecordsError::find(&e).unwrap_or_else(|| panic!("not a RecordsError: {e}"));
        (r.class, r.offset, r.record)
    });
    (Framed { frames, error }, decoder)
}

const JSON_CAPTURES: [&str; 2] = ["$.next", "$.meta.cursor"];

/// The JSON records decoder (`$.data[*]` with two captures and a 256-byte cap, and `$[*]`
/// with a 32-byte cap): no frame over the cap, every frame one line of valid JSON, nothing
/// left over at a clean end, the same frames, captures and error however the input is split;
/// and when the whole input is valid JSON (per serde_json) with an array at the path, the
/// records are its elements (or the error is an oversized value).
pub fn json_records(data: &[u8]) {
    for (path, captures, cap) in [
        ("$.data[*]", &JSON_CAPTURES[..], 256),
        ("$[*]", &[][..], 32),
    ] {
        let make = || {
            JsonRecordsDecoder::new(
                JsonPath::parse(path, true).expect("valid path"),
                captures
                    .iter()
                    .map(|c| JsonPath::parse(c, false).expect("valid path"))
                    .collect(),
                cap,
            )
        };
        let mut first: Option<(Framed<u64>, Vec<Option<serde_json::Value>>)> = None;
        for split in splits(data) {
            let (framed, decoder) = frame(make(), data, split, |d| d.count());
            for (i, (f, count)) in framed.frames.iter().enumerate() {
                assert!(f.len() <= cap, "record of {} bytes over {cap}", f.len());
                assert!(!f.contains(&b'\n'), "record spans lines: {f:?}");
                assert!(
                    serde_json::from_slice::<IgnoredAny>(f).is_ok(),
                    "record is not JSON: {f:?}"
                );
                assert_eq!(*count, i as u64 + 1);
            }
            let c = decoder.captures();
            let captured: Vec<_> = (0..captures.len()).map(|i| c.get(i)).collect();
            match &first {
                None => first = Some((framed, captured)),
                Some((f, c)) => {
                    assert_eq!(f, &framed, "{path}: {split:?} differs from one read");
                    assert_eq!(c, &captured, "{path}: captures differ with {split:?}");
                }
            }
        }
        let (framed, _) = first.expect("three splits");
        json_records_against_serde(data, path, &framed);
    }
}

/// A JSON value whose objects have no key twice (deserializing fails on a repeated key).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("a key repeated"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// The decoder against serde_json's reading of the whole document. Skipped for a document
/// with a key twice in an object: serde_json keeps the last value, the decoder reads both.
fn json_records_against_serde(data: &[u8], path: &str, framed: &Framed<u64>) {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if serde_json::from_slice::<UniqueKeys>(data).is_err() {
        return;
    }
    let keys = JsonPath::parse(path, true).expect("valid path");
    let mut at = Some(&doc);
    for k in keys.keys() {
        at = at.and_then(|v| v.get(k));
    }
    let Some(serde_json::Value::Array(items)) = at else {
        return;
    };
    match framed.error {
        None => {
            let got: Vec<serde_json::Value> = framed
                .frames
                .iter()
                .map(|(f, _)| serde_json::from_slice(f).expect("checked"))
                .collect();
            assert_eq!(&got, items, "{path}: records are not the array's elements");
        }
        Some((class, ..)) => assert!(
            matches!(class, "record too large" | "value too large"),
            "{path}: a valid document rejected as {class:?}"
        ),
    }
}

/// What the NDJSON framer must yield: every line of at most `cap` bytes, without its line
/// ending, blank lines skipped, the first longer line or (when `validate`) non-UTF-8 or
/// non-JSON line an error. A plain loop over the input, to compare the decoder with.
fn ndjson_model(data: &[u8], cap: usize, validate: bool) -> Framed<LinePosition> {
    let mut frames = Vec::new();
    let (mut offset, mut line_no, mut record) = (0u64, 0u64, 0u64);
    let mut rest = data;
    while !rest.is_empty() {
        let (len, skip) = match memchr::memchr(b'\n', rest) {
            Some(i) => (i, 1),
            None => (rest.len(), 0),
        };
        if len > cap {
            let error = Some(("record too large", offset, Some(record + 1)));
            return Framed { frames, error };
        }
        let mut line = &rest[..len];
        line_no += 1;
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if !line.iter().all(|b| matches!(b, b' ' | b'\t')) {
            record += 1;
            // UTF-8 first (serde_json does not check it inside strings), at the bad byte.
            if let Err(e) = std::str::from_utf8(line).map_err(|e| e.valid_up_to())
                && validate
            {
                let error = Some(("invalid UTF-8", offset + e as u64, Some(record)));
                return Framed { frames, error };
            }
            if validate && serde_json::from_slice::<IgnoredAny>(line).is_err() {
                let error = Some(("invalid JSON", offset, Some(record)));
                return Framed { frames, error };
            }
            let pos = LinePosition {
                line: line_no,
                offset,
                record,
            };
            frames.push((Bytes::copy_from_slice(line), pos));
        }
        offset += (len + skip) as u64;
        rest = &rest[len + skip..];
    }
    Framed {
        frames,
        error: None,
    }
}

/// The NDJSON framer, checked and unchecked, cap 64: frames and positions are exactly those
/// of [`ndjson_model`] for every split, so no frame is over the cap and none depends on how
/// the input was read; at a clean end every byte is consumed.
pub fn ndjson(data: &[u8]) {
    const CAP: usize = 64;
    for validate in [true, false] {
        let expected = ndjson_model(data, CAP, validate);
        for split in splits(data) {
            let decoder = if validate {
                NdjsonDecoder::new(CAP)
            } else {
                NdjsonDecoder::new(CAP).unchecked()
            };
            let (framed, decoder) = frame(decoder, data, split, NdjsonDecoder::last);
            assert_eq!(framed, expected, "validate {validate}, {split:?}");
            if framed.error.is_none() {
                assert_eq!(decoder.consumed(), data.len() as u64);
            }
        }
    }
}

/// A CSV record as the checks compare it.
type CsvRow = (Vec<Vec<u8>>, Vec<u8>, (u64, u64, u64));

fn csv_read(data: &[u8], split: Split, cap: usize) -> (Vec<CsvRow>, Option<String>) {
    futures::executor::block_on(async {
        let map: sluice::transform::reader::IoErrorMap = Box::new(|e, at| Error::InvalidSpec {
            message: format!("read failed at {at}: {e}"),
        });
        let src = ChunkedReader::new(data, split);
        let mut reader = CsvReader::new(src, "fuzz.csv".into(), map, b',', b'"', cap);
        let mut rows = Vec::new();
        loop {
            match reader.next().await {
                Ok(Some(r)) => rows.push((
                    (0..r.len()).map(|i| r.field(i).to_vec()).collect(),
                    r.raw.to_vec(),
                    (r.pos.line, r.pos.offset, r.pos.record),
                )),
                Ok(None) => return (rows, None),
                Err(Error::Records {
                    class,
                    offset,
                    record,
                    message,
                    ..
                }) => {
                    return (rows, Some(format!("{class} {offset} {record:?} {message}")));
                }
                Err(e) => panic!("a CSV error that is not Records: {e}"),
            }
        }
    })
}

/// The CSV reader (cap 1024, its minimum): every record within the cap (raw bytes and field
/// bytes), its raw bytes found at its offset, its line the count of line breaks before it,
/// records numbered 1, 2, ...; the same rows and error for every split.
pub fn csv(data: &[u8]) {
    const CAP: usize = 1024;
    let mut first = None;
    for split in splits(data) {
        let (rows, error) = csv_read(data, split, CAP);
        for (i, (fields, raw, (line, offset, record))) in rows.iter().enumerate() {
            assert!(raw.len() <= CAP, "raw row of {} bytes", raw.len());
            let field_bytes: usize = fields.iter().map(Vec::len).sum();
            assert!(field_bytes <= CAP, "fields of {field_bytes} bytes");
            assert_eq!(*record, i as u64 + 1);
            let at = usize::try_from(*offset).expect("small");
            assert!(
                data[at..].starts_with(raw),
                "raw bytes not at offset {offset}"
            );
            let breaks = data[..at].iter().filter(|b| **b == b'\n').count() as u64;
            assert_eq!(*line, breaks + 1, "line of the record at {offset}");
        }
        match &first {
            None => first = Some((rows, error)),
            Some(f) => assert_eq!(f, &(rows, error), "{split:?} differs from one read"),
        }
    }
}

/// The harness stops reading decoded output past this (a decompression bomb is not a finding
/// here; the readers downstream cap records).
const DECODED_CAP: usize = 4 << 20;

fn decode(data: &[u8], split: Split) -> (Vec<u8>, Option<io::ErrorKind>) {
    futures::executor::block_on(async {
        let src = tokio::io::BufReader::with_capacity(64, ChunkedReader::new(data, split));
        let mut decoder = Decoding::sniff(data).decoder(src);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match decoder.read(&mut buf).await {
                Ok(0) => return (out, None),
                Ok(n) => {
                    assert!(n <= buf.len());
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > DECODED_CAP {
                        return (out, None);
                    }
                }
                Err(e) => return (out, Some(e.kind())),
            }
        }
    })
}

/// Decompression of what the magic number says (gzip, zstd, identity): identity is the
/// input, any error is `UnexpectedEof` or `InvalidData` (never a silent short read), output is
/// the same for every split, and decoded output re-encoded by sluice decodes back to itself.
pub fn decompress(data: &[u8]) {
    let decoding = Decoding::sniff(data);
    let mut first: Option<(Vec<u8>, Option<io::ErrorKind>)> = None;
    for split in splits(data) {
        let (out, error) = decode(data, split);
        if decoding == Decoding::Identity {
            assert_eq!((&out[..], error), (data, None));
        }
        if let Some(kind) = error {
            assert!(
                matches!(
                    kind,
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ),
                "{kind:?}"
            );
        }
        match &first {
            None => first = Some((out, error)),
            // After an error, how much was decoded before it depends on the reads; what
            // was decoded is the same.
            Some((o, e)) if error.is_some() => {
                assert_eq!(e, &error, "{split:?}");
                let n = o.len().min(out.len());
                assert!(o[..n] == out[..n], "{split:?}: decoded bytes differ");
            }
            Some((o, e)) => {
                assert_eq!((o.len(), e), (out.len(), &error), "{split:?}");
                assert!(o == &out, "{split:?}: decoded bytes differ");
            }
        }
    }
    let (out, error) = first.expect("three splits");
    let codec = match decoding {
        Decoding::Gzip => Codec::Gzip,
        Decoding::Zstd => Codec::Zstd,
        Decoding::Identity => return,
    };
    if error.is_some() || out.len() > DECODED_CAP || out.is_empty() {
        return;
    }
    let mut encoder = Compression::new(codec).encoder().expect("encoder");
    let mut again = encoder.encode(&out).expect("encode").to_vec();
    again.extend_from_slice(&encoder.finish().expect("finish"));
    assert_eq!(decode(&again, Split::Whole), (out, None), "round trip");
}

/// A parse error of a spec: `InvalidSpec`, an input error, with a message.
fn assert_spec_error(e: &Error) {
    assert!(matches!(e, Error::InvalidSpec { .. }), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(!e.to_string().is_empty());
}

/// Parses `text` twice with `parse`; checks the error class and that parsing is a function.
fn spec_parse<T: PartialEq + std::fmt::Debug>(
    value: serde_json::Value,
    parse: impl Fn(serde_json::Value) -> sluice::Result<T>,
) {
    match parse(value.clone()) {
        Ok(spec) => assert_eq!(parse(value).expect("parsed once"), spec),
        Err(e) => assert_spec_error(&e),
    }
}

/// `JobSpec::from_json` on any JSON: a spec or an `InvalidSpec`, the same both times; a
/// valid spec validates again.
pub fn job_spec(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice(data) {
        spec_parse(value, |v| {
            let spec = sluice::JobSpec::from_json(v)?;
            spec.validate().expect("a parsed spec is valid");
            Ok(spec)
        });
    }
}

/// `Pipeline::from_json_str` on any text: a pipeline or an `InvalidSpec`; a pipeline only
/// from a JSON object.
pub fn pipeline(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    use sluice::transform::config::Pipeline;
    match Pipeline::from_json_str(text) {
        Ok(p) => {
            let v: serde_json::Value = serde_json::from_str(text).expect("one JSON value");
            assert!(v.is_object());
            assert_eq!(Pipeline::from_json_str(text).expect("again"), p);
            p.validate().expect("a parsed pipeline is valid");
        }
        Err(e) => assert_spec_error(&e),
    }
}

/// `ExportSpec::from_json` (with `source.postgres`) on any JSON.
pub fn export_spec(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice(data) {
        spec_parse(value, sluice::export::ExportSpec::from_json);
    }
}

/// `SweepConfig::from_event` on any JSON, as the event and as `SWEEP_CONFIG`: an event that
/// carries a configuration is read as one, whatever `SWEEP_CONFIG` says.
pub fn sweep_config(data: &[u8]) {
    use sluice::sweep::SweepConfig;
    let text = std::str::from_utf8(data).ok();
    if let Some(text) = text {
        match SweepConfig::from_event(serde_json::Value::Null, Some(text)) {
            Ok(c) => c.validate().expect("valid"),
            Err(e) => assert_spec_error(&e),
        }
    }
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let carries_none = match &event {
        serde_json::Value::Null => true,
        serde_json::Value::Object(m) => m.is_empty() || m.contains_key("detail-type"),
        _ => false,
    };
    let from_event = SweepConfig::from_event(event.clone(), text);
    if !carries_none {
        let direct = SweepConfig::from_json(event);
        match (&from_event, &direct) {
            (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("from_event {from_event:?} but from_json {direct:?}"),
        }
    }
    if let Err(e) = from_event {
        assert_spec_error(&e);
    }
}

/// `parse_retry_after`: never more than the header says (delta-seconds, or the date minus
/// now) nor than `MAX_RETRY_WAIT`, and a bare number is read as seconds.
pub fn retry_after(data: &[u8]) {
    use sluice::source::http::retry::{MAX_RETRY_WAIT, parse_retry_after};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let got = parse_retry_after(text, now);
    assert!(got.is_none_or(|d| d <= MAX_RETRY_WAIT), "{got:?}");
    let digits = !text.trim().is_empty() && text.trim().bytes().all(|b| b.is_ascii_digit());
    if digits && text.trim().parse::<u64>().is_err() {
        // Delta-seconds past u64: the longest wait, never an overflow.
        assert_eq!(got, Some(MAX_RETRY_WAIT));
    } else if let Ok(secs) = text.trim().parse::<u64>() {
        let d = got.expect("delta-seconds parse");
        assert!(d <= Duration::from_secs(secs), "{d:?} > {secs} s");
    } else if let Some(d) = got {
        let at = chrono::DateTime::parse_from_rfc2822(text.trim()).expect("an HTTP-date");
        let until = (at.timestamp_millis() - 1_790_000_000_000).max(0);
        assert!(d.as_millis() <= until as u128, "{d:?} past the date");
    }
}

/// `next_link`: a target found is the text of one `<...>` of the header.
pub fn link_header(data: &[u8]) {
    use sluice::source::http::paginate::next_link;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(target) = next_link(text) {
        assert!(!target.contains('>'), "{target:?}");
        assert!(text.contains(&format!("<{target}>")), "{target:?}");
        assert!(text.to_ascii_lowercase().contains("next"));
    }
}

/// `key::render`: a rendered key is 1 to 1024 bytes and does not start with `/`; a template
/// without braces renders to itself; every error is an `InvalidSpec` naming the key.
pub fn key_template(data: &[u8]) {
    use chrono::TimeZone;
    use sluice::key::{KeyVars, render};
    let Ok(template) = std::str::from_utf8(data) else {
        return;
    };
    let now = chrono::Utc
        .with_ymd_and_hms(2026, 11, 28, 23, 5, 0)
        .single()
        .expect("a date");
    let mut vars = KeyVars::new(now, "run-1").with("page", "00003");
    vars.scheduled_time = Some(now);
    for vars in [vars.clone(), vars.with("stem", "")] {
        match render(template, &vars) {
            Ok(key) => {
                assert!((1..=1024).contains(&key.len()), "{} bytes", key.len());
                assert!(!key.starts_with('/'), "{key:?}");
                if !template.contains(['{', '}']) {
                    assert_eq!(key, template);
                }
            }
            Err(e) => {
                assert_spec_error(&e);
                assert!(e.to_string().contains("destination.key"), "{e}");
            }
        }
    }
}

/// The column types a `postgres_tuple` input picks from, each scalar with its array type, by
/// the input's type bytes (`scripts/fuzz_seeds.py` writes them by index). Append only; an
/// appended type changes what type bytes past the old length pick, so replay the corpus.
fn pg_types() -> &'static [(Type, Type)] {
    static TYPES: LazyLock<Vec<(Type, Type)>> = LazyLock::new(|| {
        let custom = |name: &str, oid, kind| Type::new(name.into(), oid, kind, "public".into());
        let mood = custom("mood", 90_002, Kind::Enum(vec!["sad".into(), "ok".into()]));
        let positive = custom("positive", 90_001, Kind::Domain(Type::INT8));
        vec![
            (Type::INT2, Type::INT2_ARRAY),
            (Type::INT4, Type::INT4_ARRAY),
            (Type::INT8, Type::INT8_ARRAY),
            (Type::FLOAT4, Type::FLOAT4_ARRAY),
            (Type::FLOAT8, Type::FLOAT8_ARRAY),
            (Type::NUMERIC, Type::NUMERIC_ARRAY),
            (Type::BOOL, Type::BOOL_ARRAY),
            (Type::TEXT, Type::TEXT_ARRAY),
            (Type::VARCHAR, Type::VARCHAR_ARRAY),
            (Type::BPCHAR, Type::BPCHAR_ARRAY),
            (Type::NAME, Type::NAME_ARRAY),
            (Type::DATE, Type::DATE_ARRAY),
            (Type::TIMESTAMP, Type::TIMESTAMP_ARRAY),
            (Type::TIMESTAMPTZ, Type::TIMESTAMPTZ_ARRAY),
            (Type::UUID, Type::UUID_ARRAY),
            (Type::BYTEA, Type::BYTEA_ARRAY),
            (Type::JSON, Type::JSON_ARRAY),
            (Type::JSONB, Type::JSONB_ARRAY),
            (mood.clone(), custom("_mood", 90_003, Kind::Array(mood))),
            (
                positive.clone(),
                custom("_positive", 90_004, Kind::Array(positive)),
            ),
        ]
    });
    &TYPES
}

/// The columns at the front of a `postgres_tuple` input, moving `data` past them: a count byte
/// (`% 8`, plus one), then per column a type byte (`& 0x7f` indexes [`pg_types`] modulo its
/// length; `0x80` makes it the array type) and, for `numeric`, a precision byte and a signed
/// scale byte (precision 0: no type modifier). `None` when the input ends first.
fn pg_columns(data: &mut &[u8]) -> Option<Vec<ResultColumn>> {
    let mut next = || {
        let (b, rest) = data.split_first()?;
        *data = rest;
        Some(*b)
    };
    let n = usize::from(next()? % 8) + 1;
    let types = pg_types();
    let mut columns = Vec::with_capacity(n);
    for i in 0..n {
        let t = next()?;
        let (scalar, array) = &types[usize::from(t & 0x7f) % types.len()];
        let mut type_modifier = -1;
        if *scalar == Type::NUMERIC {
            let precision = i32::from(next()?);
            let scale = i32::from(next()? as i8);
            if precision > 0 {
                // `((precision << 16) | scale) + VARHDRSZ`, the scale in 11 bits.
                type_modifier = ((precision << 16) | (scale & 0x7ff)) + 4;
            }
        }
        let ty = if t & 0x80 == 0 { scalar } else { array };
        columns.push(ResultColumn::new(
            format!("c{i}"),
            ty.clone(),
            type_modifier,
        ));
    }
    Some(columns)
}

/// A field of a binary COPY tuple: `None` for NULL.
type PgField<'a> = Option<&'a [u8]>;

/// The tuple at the front of `data` as the binary COPY format frames it (`int16` count, then
/// per field `int32` length, -1 for NULL, and the bytes), independently of the decoder: its
/// length and fields, or the field whose framing breaks (`None`: the count).
fn pg_frame(data: &[u8], fields: usize) -> Result<(usize, Vec<PgField<'_>>), Option<usize>> {
    let int = |at: usize| {
        data.get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let count = data.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]]));
    if count.map(i32::from) != i32::try_from(fields).ok() {
        return Err(None);
    }
    let mut at = 2;
    let mut out = Vec::with_capacity(fields);
    for i in 0..fields {
        let len = int(at).ok_or(Some(i))?;
        at += 4;
        if len == -1 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| Some(i))?;
        out.push(Some(data.get(at..at + len).ok_or(Some(i))?));
        at += len;
    }
    Ok((at, out))
}

/// The elements of an array value the decoder accepted: one dimension (or none, empty), its
/// elements framed like fields, nothing after them.
fn pg_array_items(raw: &[u8]) -> Vec<PgField<'_>> {
    let int = |at: usize| {
        let b: [u8; 4] = raw[at..at + 4].try_into().expect("4 bytes");
        i32::from_be_bytes(b)
    };
    let dims = int(0);
    assert!(
        matches!(dims, 0 | 1),
        "an array of {dims} dimensions accepted"
    );
    let (len, mut at) = if dims == 0 { (0, 12) } else { (int(12), 20) };
    let mut items = Vec::new();
    for _ in 0..len {
        let n = int(at);
        at += 4;
        if n == -1 {
            items.push(None);
        } else {
            let n = usize::try_from(n).expect("an element length accepted");
            items.push(Some(&raw[at..at + n]));
            at += n;
        }
    }
    assert_eq!(at, raw.len(), "bytes after an accepted array");
    items
}

/// What decoding the tuples of an input gave.
struct PgDecoded<'a> {
    /// The fields of each row accepted, in order.
    rows: Vec<Vec<PgField<'a>>>,
    /// The error that ended the tuples, if one did.
    error: Option<Error>,
    /// The builders' values, finished.
    arrays: Vec<ArrayRef>,
}

/// Decodes `data` into fresh builders one tuple after the other, as the export does, until the
/// end or an error; checks every row against [`pg_frame`] and every error's message and class.
fn pg_decode<'a>(decoder: &TupleDecoder, data: &'a [u8]) -> PgDecoded<'a> {
    let mut builders: Vec<ColumnBuilder> = decoder
        .schema()
        .columns
        .iter()
        .map(|c| ColumnBuilder::new(&c.ty))
        .collect();
    let mut rest = data;
    let mut rows = Vec::new();
    let mut error = None;
    while !rest.is_empty() {
        let before = rest;
        let row = rows.len() as u64 + 1;
        let framed = pg_frame(before, decoder.fields());
        match decoder.decode_row(&mut rest, &mut builders, row) {
            Ok(_) => {
                let (len, fields) = framed.unwrap_or_else(|at| {
                    panic!("row {row} accepted, but its framing breaks at field {at:?}")
                });
                assert_eq!(before.len() - rest.len(), len, "row {row}: bytes consumed");
                rows.push(fields);
            }
            Err(e) => {
                pg_check_error(&e, row, framed.err());
                error = Some(e);
                break;
            }
        }
    }
    let arrays: Vec<ArrayRef> = builders.iter_mut().map(ColumnBuilder::finish).collect();
    for (c, a) in arrays.iter().enumerate() {
        // A failed row may have appended to the columns before the one that failed.
        let ok = rows.len();
        assert!(
            a.len() == ok || (error.is_some() && a.len() == ok + 1),
            "column {c}: {} values after {ok} rows",
            a.len()
        );
    }
    PgDecoded {
        rows,
        error,
        arrays,
    }
}

/// A tuple decoder's error for `row`: it names the row; it names a column unless the field
/// count was wrong, and none after the field whose framing broke (`framing`: `None` when
/// the tuple frames, `Some(None)` for a bad count); malformed bytes are `Upstream`, values
/// without a Parquet form `InvalidInput`, and nothing else.
fn pg_check_error(e: &Error, row: u64, framing: Option<Option<usize>>) {
    let message = e.to_string();
    let prefix = format!("postgres fuzz: row {row}: ");
    let Some(rest) = message.strip_prefix(&prefix) else {
        panic!("{message:?} does not start with {prefix:?}");
    };
    match e.kind() {
        ErrorKind::Upstream => assert!(rest.starts_with("malformed binary COPY data: "), "{e}"),
        ErrorKind::InvalidInput => {}
        other => panic!("a tuple error of class {other:?}: {e}"),
    }
    let rest = rest
        .strip_prefix("malformed binary COPY data: ")
        .unwrap_or(rest);
    let column = rest
        .strip_prefix("column \"c")
        .and_then(|r| r.split_once('"'))
        .map(|(n, _)| n.parse::<usize>().expect("a column name cN"));
    match framing {
        Some(None) => assert_eq!(column, None, "a bad field count names a column: {e}"),
        Some(Some(at)) => assert!(
            column.is_some_and(|c| c <= at),
            "the framing breaks at field {at}: {e}"
        ),
        None => assert!(column.is_some(), "a value error names no column: {e}"),
    }
}

/// A decimal as sign, integer digits and fraction digits without insignificant zeros (`-0` is
/// `0`), to compare a `numeric`'s two decodings.
fn canonical_decimal(negative: bool, whole: &str, fraction: &str) -> String {
    let whole = whole.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    let sign = if negative && !(whole.is_empty() && fraction.is_empty()) {
        "-"
    } else {
        ""
    };
    let whole = if whole.is_empty() { "0" } else { whole };
    let point = if fraction.is_empty() { "" } else { "." };
    format!("{sign}{whole}{point}{fraction}")
}

/// Checks a `numeric`'s text as `numeric_out` prints it: `NaN`, `Infinity`, `-Infinity`, or
/// digits with exactly `dscale` after the point (`raw` is the value's binary form, whose
/// header carries the display scale). Returns the finite value, canonical.
fn pg_numeric_text(text: &str, raw: Option<&[u8]>) -> Option<String> {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return None;
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    assert!(
        !whole.is_empty() && is_digits(whole) && is_digits(fraction),
        "numeric text {text:?}"
    );
    if let Some(raw) = raw {
        let dscale = usize::from(u16::from_be_bytes([raw[6], raw[7]]));
        assert_eq!(fraction.len(), dscale, "numeric text {text:?}");
        assert_eq!(digits.contains('.'), dscale > 0, "numeric text {text:?}");
    }
    Some(canonical_decimal(negative, whole, fraction))
}

/// A decimal value of a `numeric(precision,scale)` column: within its precision, and the value
/// the same bytes print as (`text`, decoded without the type modifier).
fn pg_check_decimal(unscaled: i128, precision: u8, scale: i8, text: &str) {
    assert!(
        unscaled.unsigned_abs() < 10u128.pow(u32::from(precision)),
        "{unscaled} does not fit decimal({precision},{scale})"
    );
    let scale = usize::try_from(scale).expect("a decimal scale is not negative");
    let digits = format!("{:0>width$}", unscaled.unsigned_abs(), width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    let decimal = canonical_decimal(unscaled < 0, whole, fraction);
    let printed = pg_numeric_text(text, None).unwrap_or_else(|| text.to_owned());
    assert_eq!(
        decimal, printed,
        "decimal({precision},{scale}) {unscaled} but the text is {text:?}"
    );
}

/// Binary COPY tuples decoded by `TupleDecoder` for a column list read from the input (see
/// [`pg_columns`]: up to 8 columns of every supported type, arrays of each, numerics with any
/// type modifier, an enum and a domain), one after the other into fresh builders as the export
/// decodes them, until the end or an error. A row accepted is exactly one tuple as the format
/// frames it and appends one value to every column: NULL where the field is NULL, for an
/// array a list of its elements; a decimal fits its precision and equals the text the same
/// bytes decode to without the type modifier, and that text has exactly the value's display
/// scale after the point. An error names its row, and its column unless the field count is
/// wrong; malformed bytes are `Upstream`, values without a Parquet form `InvalidInput`;
/// without the type modifiers, rows decode at least as far, and malformed ones stay malformed.
pub fn postgres_tuple(data: &[u8]) {
    let mut tuples = data;
    let Some(columns) = pg_columns(&mut tuples) else {
        return;
    };
    let typed = TupleDecoder::new("fuzz", &columns).expect("every fuzzed type is supported");
    assert_eq!(typed.fields(), columns.len());
    let untyped: Vec<ResultColumn> = columns
        .iter()
        .map(|c| ResultColumn::new(c.name.clone(), c.ty.clone(), -1))
        .collect();
    let untyped = TupleDecoder::new("fuzz", &untyped).expect("supported");
    let with = pg_decode(&typed, tuples);
    let without = pg_decode(&untyped, tuples);
    assert!(without.rows.len() >= with.rows.len());
    if let Some(e) = &with.error
        && e.kind() == ErrorKind::Upstream
    {
        assert_eq!(without.rows.len(), with.rows.len(), "{e}");
        let kind = without.error.as_ref().map(Error::kind);
        assert_eq!(kind, Some(ErrorKind::Upstream), "{e}");
    }
    let is_numeric = |c: &ResultColumn| c.ty == Type::NUMERIC || c.ty == Type::NUMERIC_ARRAY;
    for decoded in [&with, &without] {
        for (r, fields) in decoded.rows.iter().enumerate() {
            for (c, raw) in fields.iter().enumerate() {
                let a = &decoded.arrays[c];
                let at = format!("row {} column {c}", r + 1);
                assert_eq!(a.is_null(r), raw.is_none(), "{at}: NULL");
                let Some(raw) = raw else { continue };
                let numeric = is_numeric(&columns[c]);
                if let Some(list) = a.as_list_opt::<i32>() {
                    let items = pg_array_items(raw);
                    let list = list.value(r);
                    assert_eq!(list.len(), items.len(), "{at}: elements");
                    for (j, item) in items.iter().enumerate() {
                        assert_eq!(list.is_null(j), item.is_none(), "{at}: element {j}");
                        if let (true, Some(item), Some(s)) =
                            (numeric, item, list.as_string_opt::<i32>())
                        {
                            pg_numeric_text(s.value(j), Some(item));
                        }
                    }
                } else if let (true, Some(s)) = (numeric, a.as_string_opt::<i32>()) {
                    pg_numeric_text(s.value(r), Some(raw));
                }
            }
        }
    }
    // Each decimal against the text of the same bytes.
    for (c, column) in typed.schema().columns.iter().enumerate() {
        let (a, t) = (&with.arrays[c], &without.arrays[c]);
        for r in 0..with.rows.len() {
            if a.is_null(r) {
                continue;
            }
            match &column.ty {
                ColumnType::Decimal { precision, scale } => pg_check_decimal(
                    a.as_primitive::<Decimal128Type>().value(r),
                    *precision,
                    *scale,
                    t.as_string::<i32>().value(r),
                ),
                ColumnType::List(item) => {
                    if let ColumnType::Decimal { precision, scale } = **item {
                        let (values, texts) =
                            (a.as_list::<i32>().value(r), t.as_list::<i32>().value(r));
                        let (values, texts) = (
                            values.as_primitive::<Decimal128Type>(),
                            texts.as_string::<i32>(),
                        );
                        for j in 0..values.len() {
                            if values.is_valid(j) {
                                pg_check_decimal(values.value(j), precision, scale, texts.value(j));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
