//! Incremental state: the watermark of a job, kept as a small JSON object in S3 and replaced
//! only with a conditional write, so overlapping runs cannot lose each other's progress.

use std::sync::Mutex;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::error::{Result, S3Operation};

/// Largest state object read (it holds one value).
const STATE_CAP: usize = 64 * 1024;

/// The watermark read before a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The watermark to send.
    pub watermark: String,
    /// The state object's ETag; `None` when there was no state yet.
    pub e_tag: Option<String>,
}

/// Reads the state at `bucket`/`key`; `initial` when there is none.
pub async fn read(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    initial: &str,
) -> Result<State> {
    let out = match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => out,
        Err(e)
            if e.raw_response().map(|r| r.status().as_u16()) == Some(404)
                || e.code() == Some("NoSuchKey") =>
        {
            return Ok(State {
                watermark: initial.to_owned(),
                e_tag: None,
            });
        }
        Err(e) => {
            return Err(crate::s3::s3_error(
                S3Operation::GetObject,
                bucket,
                key,
                DisplayErrorContext(&e).to_string(),
                true,
            ));
        }
    };
    let e_tag = out.e_tag.clone();
    let too_big = || {
        crate::s3::s3_error(
            S3Operation::GetObject,
            bucket,
            key,
            format!("state object is over {STATE_CAP} bytes"),
            false,
        )
    };
    if out
        .content_length
        .is_some_and(|n| u64::try_from(n).unwrap_or(u64::MAX) > STATE_CAP as u64)
    {
        return Err(too_big());
    }
    // Read with the cap whatever Content-Length said (it may be missing or wrong).
    let body = match read_capped(out.body, STATE_CAP).await {
        Ok(Some(body)) => body,
        Ok(None) => return Err(too_big()),
        Err(e) => {
            return Err(crate::s3::s3_error(
                S3Operation::GetObject,
                bucket,
                key,
                e.to_string(),
                true,
            ));
        }
    };
    let doc: Value = serde_json::from_slice(&body).map_err(|e| {
        crate::s3::s3_error(
            S3Operation::GetObject,
            bucket,
            key,
            format!("state is not JSON: {e}"),
            false,
        )
    })?;
    let watermark = doc
        .get("watermark")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            crate::s3::s3_error(
                S3Operation::GetObject,
                bucket,
                key,
                "state has no string \"watermark\"".into(),
                false,
            )
        })?;
    Ok(State {
        watermark: watermark.to_owned(),
        e_tag,
    })
}

/// The whole of `body` if it is at most `cap` bytes, `None` as soon as it is longer.
pub(crate) async fn read_capped(
    mut body: aws_sdk_s3::primitives::ByteStream,
    cap: usize,
) -> std::result::Result<Option<Vec<u8>>, aws_sdk_s3::primitives::ByteStreamError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.try_next().await? {
        if out.len() + chunk.len() > cap {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

/// Writes the new watermark if the state is still the one read (`If-Match`), or still absent
/// (`If-None-Match: *`). A 412 means another run moved it: an error, not an overwrite.
pub async fn write(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    previous: &State,
    watermark: &str,
    run_id: &str,
) -> Result<()> {
    let doc = serde_json::json!({
        "watermark": watermark,
        "previous": previous.watermark,
        "run_id": run_id,
        "updated_at": chrono::Utc::now().to_rfc3339(),
    });
    let mut req = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .body(serde_json::to_vec_pretty(&doc).expect("serializes").into());
    req = match &previous.e_tag {
        Some(tag) => req.if_match(tag),
        None => req.if_none_match("*"),
    };
    match req.send().await {
        Ok(_) => Ok(()),
        Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(412) || e.code() == Some("PreconditionFailed") => Err(crate::s3::s3_error(
            S3Operation::PutObject,
            bucket,
            key,
            "the state was changed by another run since it was read; this run's output is written, its watermark is not (the next run starts from the other run's)".into(),
            false,
        )),
        Err(e) => Err(crate::s3::s3_error(S3Operation::PutObject, bucket, key, DisplayErrorContext(&e).to_string(), true)),
    }
}

/// The largest value of one record field seen so far.
#[derive(Debug)]
pub struct WatermarkTracker {
    field: Vec<String>,
    max: Mutex<Option<Value>>,
}

impl WatermarkTracker {
    /// Tracks `field` (keys from the record's root).
    pub fn new(field: Vec<String>) -> Self {
        WatermarkTracker {
            field,
            max: Mutex::new(None),
        }
    }

    /// Looks at one record (raw JSON); records without the field, or where it is `null`, an
    /// object or an array, are ignored. Only the path to the field is followed: every other
    /// value is skipped as it is parsed, never built, so a record of millions of small values
    /// costs no memory here.
    pub fn observe(&self, record: &[u8]) {
        let mut de = serde_json::Deserializer::from_slice(record);
        let Ok(Some(v)) = serde::de::DeserializeSeed::deserialize(FieldAt(&self.field), &mut de)
        else {
            return;
        };
        if de.end().is_err() {
            return;
        }
        let mut max = self.max.lock().expect("not poisoned");
        if max.as_ref().is_none_or(|m| greater(&v, m)) {
            *max = Some(v);
        }
    }

    /// The largest value seen, as JSON (what a checkpoint carries to the next invocation).
    pub fn max_value(&self) -> Option<Value> {
        self.max.lock().expect("not poisoned").clone()
    }

    /// Starts from `value`, the largest value of the invocations before this one.
    pub fn seed(&self, value: Value) {
        let mut max = self.max.lock().expect("not poisoned");
        if max.as_ref().is_none_or(|m| greater(&value, m)) {
            *max = Some(value);
        }
    }

    /// The largest value seen, as the text sent next time.
    pub fn max(&self) -> Option<String> {
        self.max.lock().expect("not poisoned").as_ref().map(as_text)
    }
}

/// The scalar at `.0` (keys from the value's root), if there is one; a seed for the value being
/// deserialized. Objects off the path and every array are skipped with [`IgnoredAny`]. Of
/// duplicate keys the last wins, as in a `serde_json::Value`.
struct FieldAt<'a>(&'a [String]);

impl<'de> serde::de::DeserializeSeed<'de> for FieldAt<'_> {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldAt<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some((first, rest)) = self.0.split_first() else {
            // The field is an object: not a watermark.
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(None);
        };
        let mut found = None;
        while let Some(matches) = map.next_key_seed(KeyIs(first))? {
            if matches {
                found = map.next_value_seed(FieldAt(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Value::String(v.to_owned())))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then_some(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Value::from(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Whether an object key is `.0`, compared without keeping the key.
struct KeyIs<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Numbers compare as numbers, everything else as text (RFC 3339 timestamps sort as text).
fn greater(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x > y,
        _ => as_text(a) > as_text(b),
    }
}

/// Whether `candidate` is past `current` (the same comparison as the tracker's).
pub fn advances(candidate: &str, current: &str) -> bool {
    match (candidate.parse::<f64>(), current.parse::<f64>()) {
        (Ok(x), Ok(y)) => x > y,
        _ => candidate > current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_the_largest_value() {
        let t = WatermarkTracker::new(vec!["meta".into(), "at".into()]);
        for r in [
            r#"{"meta":{"at":"2026-01-02T00:00:00Z"}}"#,
            r#"{"meta":{"at":"2026-01-03T00:00:00Z"}}"#,
            r#"{"meta":{}}"#,
            r#"{"meta":{"at":"2026-01-01T00:00:00Z"}}"#,
        ] {
            t.observe(r.as_bytes());
        }
        assert_eq!(t.max().as_deref(), Some("2026-01-03T00:00:00Z"));
        let n = WatermarkTracker::new(vec!["id".into()]);
        for r in [r#"{"id":9}"#, r#"{"id":10}"#, r#"{"id":2}"#] {
            n.observe(r.as_bytes());
        }
        assert_eq!(n.max().as_deref(), Some("10"));
        assert!(advances("10", "9") && !advances("2026-01-01", "2026-01-02"));
    }

    fn s3_client(addr: std::net::SocketAddr) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://{addr}"))
            .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// A chunked GetObject answer (no Content-Length) holding `body`.
    fn chunked_object(body: &[u8]) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: \"e1\"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for chunk in body.chunks(16 * 1024) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    #[tokio::test]
    async fn state_without_content_length_is_read_with_the_cap() {
        // Valid JSON, a megabyte long, with no Content-Length to refuse it by.
        let big = format!(r#"{{"watermark":"w","pad":"{}"}}"#, "x".repeat(1 << 20));
        let (addr, _) =
            crate::source::http::tests::canned_server(vec![chunked_object(big.as_bytes())]).await;
        let err = read(&s3_client(addr), "lake", "state/big.json", "init")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("state/big.json") && err.contains("over 65536 bytes"),
            "{err}"
        );
        // A small state is read as before.
        let (addr, _) = crate::source::http::tests::canned_server(vec![chunked_object(
            br#"{"watermark":"2026-01-02"}"#,
        )])
        .await;
        let state = read(&s3_client(addr), "lake", "state/ok.json", "init")
            .await
            .unwrap();
        assert_eq!(state.watermark, "2026-01-02");
        assert_eq!(state.e_tag.as_deref(), Some("\"e1\""));
    }

    /// The tracker as it was: the whole record parsed into a `Value`.
    fn old_observe(field: &[String], record: &[u8], max: &mut Option<Value>) {
        let Ok(doc) = serde_json::from_slice::<Value>(record) else {
            return;
        };
        let mut v = &doc;
        for k in field {
            match v.get(k) {
                Some(next) => v = next,
                None => return,
            }
        }
        if v.is_null() {
            return;
        }
        if max.as_ref().is_none_or(|m| greater(v, m)) {
            *max = Some(v.clone());
        }
    }

    #[test]
    fn watermark_matches_a_full_parse_for_ordinary_records() {
        let records = [
            r#"{"id":3,"meta":{"at":"2026-01-02T00:00:00Z","n":1.5}}"#,
            r#"{"id":-7,"meta":{"at":"2026-01-03T00:00:00Z","n":18446744073709551615}}"#,
            r#"{"meta":{"at":null,"n":2e3},"id":12}"#,
            r#"{"meta":"flat","id":true}"#,
            r#"{"m\u0065ta":{"at":"2026-02-01T00:00:00Z"},"id":"x"}"#,
            r#"{"meta":{"at":"2025-01-01T00:00:00Z"},"meta":{"at":"2026-03-01T00:00:00Z"}}"#,
            r#"[1,2,3]"#,
            r#""just a string""#,
            r#"{"id":5,"xs":[{"id":99}],"meta":{"at":"2026-01-01T00:00:00Z"}}"#,
            r#"{"id":4} trailing"#,
            r#"{"id":"#,
        ];
        for field in [
            vec!["id"],
            vec!["meta", "at"],
            vec!["meta", "n"],
            vec!["nope"],
        ] {
            let field: Vec<String> = field.into_iter().map(String::from).collect();
            let t = WatermarkTracker::new(field.clone());
            let mut old = None;
            for (i, r) in records.iter().enumerate() {
                t.observe(r.as_bytes());
                old_observe(&field, r.as_bytes(), &mut old);
                assert_eq!(
                    t.max(),
                    old.as_ref().map(as_text),
                    "{field:?} after record {i}"
                );
            }
        }
    }

    #[test]
    fn watermark_of_a_record_of_millions_of_numbers_builds_no_tree() {
        // 4 million small numbers (about 8 MB of JSON), the watermark field after them. As a
        // `Value` this is over 128 MB; followed and skipped, nothing of it is kept.
        let mut record = Vec::with_capacity(8_000_100);
        record.extend_from_slice(br#"{"xs":["#);
        for i in 0..4_000_000u32 {
            if i > 0 {
                record.push(b',');
            }
            record.push(b'0' + (i % 10) as u8);
        }
        record.extend_from_slice(br#"],"nested":{"ys":[[1],[2],{"a":3}]},"at":"2026-05-01"}"#);
        let t = WatermarkTracker::new(vec!["at".into()]);
        let peak = alloc_meter::peak_during(|| t.observe(&record));
        assert_eq!(t.max().as_deref(), Some("2026-05-01"));
        assert!(
            peak < 64 * 1024,
            "observing allocated up to {peak} bytes at once"
        );
    }
}

/// Counts the bytes allocated by the current thread while a closure runs (tests only).
#[cfg(test)]
pub(crate) mod alloc_meter {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Meter;

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
        static LARGE: Cell<(usize, usize)> = const { Cell::new((usize::MAX, 0)) };
    }

    fn count(delta: isize) {
        if delta > 0 {
            let _ = LARGE.try_with(|l| {
                let (min, n) = l.get();
                if delta.unsigned_abs() >= min {
                    l.set((min, n + 1));
                }
            });
        }
        // `try_with`: the thread-locals may be gone while a thread exits.
        let _ = ON.try_with(|on| {
            if on.get() {
                let live = LIVE.with(|l| {
                    l.set(l.get() + delta);
                    l.get()
                });
                PEAK.with(|p| p.set(p.get().max(live)));
            }
        });
    }

    unsafe impl GlobalAlloc for Meter {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size() as isize);
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            count(-(layout.size() as isize));
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // A grown block counts as allocated anew (for `allocations_of_at_least`).
            count(-(layout.size() as isize));
            count(new_size as isize);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static METER: Meter = Meter;

    /// The most bytes `f` had allocated at once on this thread (net of what it freed).
    pub(crate) fn peak_during(f: impl FnOnce()) -> usize {
        LIVE.with(|l| l.set(0));
        PEAK.with(|p| p.set(0));
        ON.with(|on| on.set(true));
        f();
        ON.with(|on| on.set(false));
        PEAK.with(|p| p.get()).max(0) as usize
    }

    /// How many blocks of at least `min` bytes `f` allocated on this thread.
    pub(crate) fn allocations_of_at_least(min: usize, f: impl FnOnce()) -> usize {
        LARGE.with(|l| l.set((min, 0)));
        f();
        LARGE.with(|l| l.replace((usize::MAX, 0)).1)
    }
}
