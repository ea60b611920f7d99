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
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;
use sluice::codec::json_records::{JsonPath, JsonRecordsDecoder, RecordsError};
use sluice::codec::ndjson::{LinePosition, NdjsonDecoder};
use sluice::codec::{Codec, Compression, Decoding};
use sluice::transform::reader::CsvReader;
use sluice::{Error, ErrorKind};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
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
