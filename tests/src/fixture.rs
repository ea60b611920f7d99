//! HTTP fixture server: large generated bodies and faults, never stored.
//!
//! Every body is generated on the fly in 64 KiB chunks from a seeded PRNG, so a test can ask
//! for several GiB with flat memory and verify what arrived with [`expected_crc64nvme`] or
//! [`body_stream`] instead of keeping a copy.
//!
//! | route | answer |
//! |---|---|
//! | `GET /bytes?size=N&seed=S` | exactly N bytes of NDJSON-like lines, `Content-Length: N` |
//! | `GET /json?size=N&seed=S[&cursor_first=true]` | one JSON document `{"meta":..,"data":[..],"next_cursor":".."}` of at least N bytes, chunked |
//! | `GET /cut?size=N&at=M&seed=S` | `Content-Length: N`, the first M bytes of `/bytes`, then the connection is reset |
//! | `GET /stall?size=N&at=M[&seed=S]` | `Content-Length: N`, M bytes, then nothing until the server drops |
//! | `GET /status/{code}[?size=N][&retry_after=V]` | that status, a short text body (or N bytes), optional `Retry-After: V` |
//! | `GET /gzip?size=N&seed=S` | the `/bytes` content gzip-compressed on the fly, `Content-Encoding: gzip` |
//! | `GET /ranged?size=N&seed=S[&validator=V][&name=K]` | N bytes of NDJSON-like lines generated per 64 KiB chunk (so any offset is served at once; [`ranged_crc64nvme`]) with `Accept-Ranges: bytes` and a validator (`etag`, the default: a strong ETag; `modified`: Last-Modified; `weak`: a weak ETag; `none`); `Range: bytes=A-[B]` gets a `206` (with `If-Range`, only while the validator still matches, else the whole body); [`FixtureServer::change`] makes a new version of the body named K |
//! | `GET /empty` | 200 with `Content-Length: 0` |
//! | `GET /api/*`, `GET /redirect` | the JSON API of [`crate::fixture_api`]: paginated records and API faults |
//!
//! Every request is logged ([`FixtureServer::requests`]) and counted ([`FixtureServer::hits`]).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_compression::tokio::bufread::GzipEncoder;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use serde::Deserialize;
use tokio_util::io::{ReaderStream, StreamReader};

pub use crate::fixture_api::RecordedRequest;
use crate::fixture_api::RequestLog;
use crate::server::BackgroundServer;

/// Size of the chunks every generated body is sent in.
pub const CHUNK: usize = 64 * 1024;

/// A running fixture server on `127.0.0.1:<random port>`; stopped when dropped.
pub struct FixtureServer {
    /// Where the server listens.
    pub addr: SocketAddr,
    hits: Hits,
    versions: Versions,
    log: RequestLog,
    _server: BackgroundServer,
}

type Hits = Arc<Mutex<HashMap<String, usize>>>;
/// The version of each named `/ranged` body (0 until changed).
type Versions = Arc<Mutex<HashMap<String, u64>>>;

impl FixtureServer {
    /// Starts the server on its own thread and runtime (see the module docs for the routes).
    pub async fn start() -> FixtureServer {
        let hits = Hits::default();
        let log = RequestLog::default();
        let versions = Versions::default();
        let ranged = {
            let versions = versions.clone();
            move |q: Query<RangedQuery>, headers: axum::http::HeaderMap| {
                ranged_route(versions.clone(), q, headers)
            }
        };
        let app = Router::new()
            .route("/ranged", get(ranged))
            .route("/bytes", get(bytes_route))
            .route("/json", get(json_route))
            .route("/cut", get(cut_route))
            .route("/stall", get(stall_route))
            .route("/status/{code}", get(status_route))
            .route("/gzip", get(gzip_route))
            .route("/empty", get(empty_route))
            .merge(crate::fixture_api::router())
            .layer(middleware::from_fn_with_state(
                (hits.clone(), log.clone()),
                count_hits,
            ));
        let server = BackgroundServer::start("fixture", app)
            .await
            .expect("starting the HTTP fixture server");
        FixtureServer {
            addr: server.addr,
            hits,
            versions,
            log,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path_and_query` (which starts with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// How many requests reached `path` (the path only, without the query: `/bytes`,
    /// `/status/503`), whatever their answer.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// How many requests reached the server on any path.
    pub fn total_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }

    /// The requests that reached `path` (the path only: `/api/cursor`), in arrival order, with
    /// their decoded query and headers. The log keeps the last 10,000 requests of the server.
    pub fn requests(&self, path: &str) -> Vec<RecordedRequest> {
        self.log.matching(Some(path))
    }

    /// Makes a new version of the `/ranged` body named `name`: other content, another
    /// validator.
    pub fn change(&self, name: &str) {
        *self
            .versions
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default() += 1;
    }

    /// Every request the server received (the last 10,000), in arrival order.
    pub fn all_requests(&self) -> Vec<RecordedRequest> {
        self.log.matching(None)
    }
}

async fn count_hits(
    State((hits, log)): State<(Hits, RequestLog)>,
    request: Request,
    next: Next,
) -> Response {
    log.record(&request);
    *hits
        .lock()
        .unwrap()
        .entry(request.uri().path().to_owned())
        .or_default() += 1;
    next.run(request).await
}

// --- generated content -------------------------------------------------------------------------

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = n;
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

fn push_hex(out: &mut Vec<u8>, n: u64, width: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..width).rev() {
        out.push(HEX[((n >> (4 * i)) & 0xf) as usize]);
    }
}

const KINDS: [&str; 8] = [
    "order", "refund", "invoice", "payment", "shipment", "return", "quote", "credit",
];
const TAGS: [&str; 8] = [
    "alpha", "beta", "gamma", "delta", "eu", "us", "apac", "priority",
];

/// The infinite record sequence of one seed; `/bytes` is a prefix of its NDJSON form, so
/// `/cut` and `/stall` send the same bytes as `/bytes` up to their cut.
struct Records {
    rng: u64,
    id: u64,
    line: Vec<u8>,
    pos: usize,
}

impl Records {
    fn new(seed: u64) -> Self {
        Records {
            rng: seed,
            id: 0,
            line: Vec::with_capacity(256),
            pos: 0,
        }
    }

    /// Appends the next record (one JSON object, no newline) to `out`.
    fn next_record(&mut self, out: &mut Vec<u8>) {
        let r = splitmix64(&mut self.rng);
        let id = self.id;
        self.id += 1;
        out.extend_from_slice(b"{\"id\":");
        push_u64(out, id);
        out.extend_from_slice(b",\"name\":\"item-");
        push_u64(out, id);
        out.extend_from_slice(b"\",\"kind\":\"");
        out.extend_from_slice(KINDS[(r & 7) as usize].as_bytes());
        out.extend_from_slice(b"\",\"ref\":\"");
        push_hex(out, (r >> 20) & 0xff_ffff, 6);
        out.extend_from_slice(b"\",\"value\":");
        push_u64(out, (r >> 3) % 10_000);
        out.push(b'.');
        push_padded(out, (r >> 17) % 10_000, 4);
        out.extend_from_slice(b",\"ts\":\"2024-");
        push_padded(out, 1 + (id / 250_000) % 12, 2);
        out.push(b'-');
        push_padded(out, 1 + (id / 8_000) % 28, 2);
        out.push(b'T');
        push_padded(out, (id / 300) % 24, 2);
        out.push(b':');
        push_padded(out, (id / 5) % 60, 2);
        out.push(b':');
        push_padded(out, (r >> 31) % 60, 2);
        out.extend_from_slice(b"Z\",\"tags\":[\"");
        out.extend_from_slice(TAGS[((r >> 37) & 7) as usize].as_bytes());
        out.extend_from_slice(b"\",\"");
        out.extend_from_slice(TAGS[((r >> 40) & 7) as usize].as_bytes());
        out.extend_from_slice(b"\"],\"active\":");
        out.extend_from_slice(if (r >> 43) & 3 == 0 {
            b"false"
        } else {
            b"true"
        });
        out.push(b'}');
    }

    /// Appends exactly `n` more bytes of the NDJSON stream to `out`.
    fn fill_ndjson(&mut self, out: &mut Vec<u8>, mut n: usize) {
        while n > 0 {
            if self.pos == self.line.len() {
                let mut line = std::mem::take(&mut self.line);
                line.clear();
                self.next_record(&mut line);
                line.push(b'\n');
                self.line = line;
                self.pos = 0;
            }
            let take = n.min(self.line.len() - self.pos);
            out.extend_from_slice(&self.line[self.pos..self.pos + take]);
            self.pos += take;
            n -= take;
        }
    }
}

/// The exact bytes `GET /bytes?size={size}&seed={seed}` serves, in 64 KiB chunks, generated
/// lazily (constant memory whatever `size`).
pub fn body_stream(seed: u64, size: u64) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    stream::unfold(
        (Records::new(seed), size),
        |(mut records, remaining)| async move {
            if remaining == 0 {
                return None;
            }
            let n = remaining.min(CHUNK as u64) as usize;
            let mut chunk = Vec::with_capacity(n);
            records.fill_ndjson(&mut chunk, n);
            Some((Ok(Bytes::from(chunk)), (records, remaining - n as u64)))
        },
    )
}

/// Chunk `index` of a `/ranged` body: NDJSON-like lines from a generator seeded by `seed` and
/// the index alone, so any offset is reached without generating what comes before.
fn ranged_chunk(seed: u64, index: u64, n: usize) -> Vec<u8> {
    let mut records = Records::new(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut chunk = Vec::with_capacity(n);
    records.fill_ndjson(&mut chunk, n);
    chunk
}

/// The bytes `offset..size` of the `/ranged?size={size}&seed={seed}` body, in chunks of
/// [`CHUNK`] (the first one shorter when `offset` is inside a chunk).
pub fn ranged_stream(
    seed: u64,
    size: u64,
    offset: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    stream::unfold(offset.min(size), move |at| async move {
        if at >= size {
            return None;
        }
        let index = at / CHUNK as u64;
        let start = index * CHUNK as u64;
        let end = (start + CHUNK as u64).min(size);
        let chunk = ranged_chunk(seed, index, (end - start) as usize);
        let skip = (at - start) as usize;
        Some((Ok(Bytes::from(chunk).slice(skip..)), end))
    })
}

/// CRC64/NVME of the `/ranged?size={size}&seed={seed}` body.
pub fn ranged_crc64nvme(seed: u64, size: u64) -> u64 {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    let mut at = 0;
    while at < size {
        let n = (size - at).min(CHUNK as u64);
        digest.update(&ranged_chunk(seed, at / CHUNK as u64, n as usize));
        at += n;
    }
    digest.finalize()
}

/// CRC64/NVME of `body_stream(seed, size)` (the checksum S3 reports as `ChecksumCRC64NVME`,
/// before base64). Computed by generating the body again: about a second per GiB.
pub fn expected_crc64nvme(seed: u64, size: u64) -> u64 {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    let mut records = Records::new(seed);
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut remaining = size;
    while remaining > 0 {
        let n = remaining.min(CHUNK as u64) as usize;
        chunk.clear();
        records.fill_ndjson(&mut chunk, n);
        digest.update(&chunk);
        remaining -= n as u64;
    }
    digest.finalize()
}

/// The document `GET /json?size={size}&seed={seed}` serves: `{"meta":{..},"data":[records..],
/// "next_cursor":".."}`, at least `size` bytes; with `cursor_first` the cursor comes before
/// `data`.
pub fn json_stream(
    seed: u64,
    size: u64,
    cursor_first: bool,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let cursor = json_cursor(seed, size);
    let meta = format!(
        r#"{{"meta":{{"seed":{seed},"requested_bytes":{size},"source":"sluice-fixture"}},"#
    );
    let (head, tail) = if cursor_first {
        (
            format!(r#"{meta}"next_cursor":"{cursor}","data":["#),
            "]}".to_owned(),
        )
    } else {
        (
            format!(r#"{meta}"data":["#),
            format!(r#"],"next_cursor":"{cursor}"}}"#),
        )
    };
    struct State {
        records: Records,
        head: Option<String>,
        tail: String,
        emitted: u64,
        count: u64,
        done: bool,
    }
    let state = State {
        records: Records::new(seed),
        head: Some(head),
        tail,
        emitted: 0,
        count: 0,
        done: false,
    };
    stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        let mut chunk = Vec::with_capacity(CHUNK + 512);
        if let Some(head) = st.head.take() {
            chunk.extend_from_slice(head.as_bytes());
        }
        while chunk.len() < CHUNK {
            if st.emitted + (chunk.len() + st.tail.len()) as u64 >= size {
                chunk.extend_from_slice(st.tail.as_bytes());
                st.done = true;
                break;
            }
            if st.count > 0 {
                chunk.push(b',');
            }
            st.records.next_record(&mut chunk);
            st.count += 1;
        }
        st.emitted += chunk.len() as u64;
        Some((Ok(Bytes::from(chunk)), st))
    })
}

/// The `next_cursor` value of `/json?size={size}&seed={seed}`.
pub fn json_cursor(seed: u64, size: u64) -> String {
    format!("c{seed:x}-{size:x}")
}

// --- routes ------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct SizeSeed {
    size: u64,
    #[serde(default)]
    seed: u64,
}

#[derive(Deserialize)]
struct JsonQuery {
    size: u64,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    cursor_first: bool,
}

#[derive(Deserialize)]
struct CutQuery {
    size: u64,
    at: u64,
    #[serde(default)]
    seed: u64,
}

#[derive(Deserialize)]
struct StatusQuery {
    size: Option<u64>,
    retry_after: Option<String>,
}

fn with_length(mut response: Response, length: u64) -> Response {
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

fn ndjson(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn bytes_route(Query(q): Query<SizeSeed>) -> Response {
    with_length(
        ndjson(Body::from_stream(body_stream(q.seed, q.size))),
        q.size,
    )
}

async fn json_route(Query(q): Query<JsonQuery>) -> Response {
    let body = Body::from_stream(json_stream(q.seed, q.size, q.cursor_first));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn cut_route(Query(q): Query<CutQuery>) -> Response {
    if q.at >= q.size {
        return (StatusCode::BAD_REQUEST, "/cut needs at < size\n").into_response();
    }
    // An error from the body stream makes hyper drop the connection mid-body: the client sees
    // fewer bytes than Content-Length and a reset, never a clean end.
    // The pause lets hyper flush the headers and the first M bytes before it drops the socket.
    let cut = stream::once(async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Err(io::Error::other("fixture: connection cut on purpose"))
    });
    let body = Body::from_stream(body_stream(q.seed, q.at).chain(cut));
    with_length(ndjson(body), q.size)
}

async fn stall_route(Query(q): Query<CutQuery>) -> Response {
    if q.at >= q.size {
        return (StatusCode::BAD_REQUEST, "/stall needs at < size\n").into_response();
    }
    let body = Body::from_stream(body_stream(q.seed, q.at).chain(stream::pending()));
    with_length(ndjson(body), q.size)
}

async fn status_route(Path(code): Path<u16>, Query(q): Query<StatusQuery>) -> Response {
    let Ok(status) = StatusCode::from_u16(code) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("not a status code: {code}\n"),
        )
            .into_response();
    };
    let text = format!(
        "status {code} {}\n",
        status.canonical_reason().unwrap_or("unknown")
    );
    let mut response = match q.size {
        None => (status, text).into_response(),
        Some(size) => {
            let pattern = Bytes::from(text.repeat(CHUNK / text.len() + 1));
            let chunks = stream::unfold(size, move |remaining| {
                let pattern = pattern.clone();
                async move {
                    (remaining > 0).then(|| {
                        let n = remaining.min(CHUNK as u64);
                        (
                            Ok::<_, io::Error>(pattern.slice(..n as usize)),
                            remaining - n,
                        )
                    })
                }
            });
            with_length((status, Body::from_stream(chunks)).into_response(), size)
        }
    };
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(value) = q.retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn gzip_route(Query(q): Query<SizeSeed>) -> Response {
    let encoder = GzipEncoder::new(StreamReader::new(body_stream(q.seed, q.size)));
    let body = Body::from_stream(ReaderStream::with_capacity(encoder, CHUNK));
    let mut response = ndjson(body);
    response
        .headers_mut()
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    response
}

#[derive(Deserialize)]
struct RangedQuery {
    size: u64,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    validator: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// `bytes=A-` or `bytes=A-B` (one range); `None` for anything else.
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    let start = start.parse().ok()?;
    let end = if end.is_empty() {
        None
    } else {
        Some(end.parse().ok()?)
    };
    Some((start, end))
}

async fn ranged_route(
    versions: Versions,
    Query(q): Query<RangedQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let name = q.name.unwrap_or_default();
    let version = versions.lock().unwrap().get(&name).copied().unwrap_or(0);
    let seed = q.seed.wrapping_add(version.wrapping_mul(1_000_003));
    let tag = format!("\"{seed}-{}-v{version}\"", q.size);
    let modified = chrono::DateTime::from_timestamp(1_700_000_000 + version as i64, 0)
        .expect("a valid time")
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let (name, value) = match q.validator.as_deref().unwrap_or("etag") {
        "etag" => (Some(header::ETAG), tag.clone()),
        "weak" => (Some(header::ETAG), format!("W/{tag}")),
        "modified" => (Some(header::LAST_MODIFIED), modified.clone()),
        _ => (None, String::new()),
    };
    let still = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| name.is_some() && v == value && !v.starts_with("W/"));
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range)
        .filter(|_| still);
    let mut response = match range {
        None => with_length(
            ndjson(Body::from_stream(ranged_stream(seed, q.size, 0))),
            q.size,
        ),
        Some((start, end)) => {
            let last = end.unwrap_or(u64::MAX).min(q.size.saturating_sub(1));
            if start >= q.size || start > last {
                let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{}", q.size)).unwrap(),
                );
                return r;
            }
            let body = ranged_stream(seed, last + 1, start);
            let mut r = with_length(ndjson(Body::from_stream(body)), last + 1 - start);
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{last}/{}", q.size)).unwrap(),
            );
            r
        }
    };
    response
        .headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(name) = name {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).unwrap());
    }
    response
}

async fn empty_route() -> Response {
    with_length(StatusCode::OK.into_response(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ndjson_stream_does_not_depend_on_chunk_boundaries() {
        let mut whole = Vec::new();
        Records::new(9).fill_ndjson(&mut whole, 10_000);
        let mut pieces = Vec::new();
        let mut records = Records::new(9);
        for n in [1, 7, 300, 2_000, 7_692] {
            records.fill_ndjson(&mut pieces, n);
        }
        assert_eq!(whole, pieces);
        let text = String::from_utf8(whole).unwrap();
        for line in text.lines().take(20) {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[tokio::test]
    async fn json_documents_are_valid_and_at_least_the_requested_size() {
        for (size, cursor_first) in [(0, false), (10, true), (1_000, false), (300_000, true)] {
            let chunks: Vec<_> = json_stream(3, size, cursor_first).collect().await;
            let body: Vec<u8> = chunks
                .into_iter()
                .flat_map(|c| c.unwrap().to_vec())
                .collect();
            assert!(body.len() as u64 >= size);
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(doc["next_cursor"], json_cursor(3, size));
            assert!(doc["data"].is_array());
        }
    }
}
