//! Fixture JSON API: paginated record endpoints and API-level faults, served by
//! [`FixtureServer`](crate::FixtureServer) next to its raw-body routes.
//!
//! Records are deterministic: record `i` (ids run from 1 to `n`) is
//! `{"id":i,"name":"item-i","updated_at":<2026-01-01T00:00:00Z + i seconds>,"value":i*1.5}`,
//! exactly the bytes of [`api_record_json`] and the value of [`api_record`]. Page URLs in bodies
//! and headers are absolute (`http://<Host header>/...`). Every answer is
//! `Content-Type: application/json` unless said otherwise. Defaults: `n=25`, `per=10`.
//! Bad parameters (not a number, `per=0`, unknown cursor) answer 400 with a JSON error.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/cursor?n=&per=[&cursor=C][&cursor_first=true]` | `{"data":[..],"next_cursor":"C2"}`, `null` on the last page; `cursor_first` puts `next_cursor` first; cursors are `o<offset hex>`, anything else is 400 |
//! | `GET /api/has_more?n=&per=[&cursor=C]` | `{"data":[..],"meta":{"has_more":B,"next":"C2"}}`; the last page says `false` but still has a `next` (`o<n hex>`, an empty page) |
//! | `GET /api/link?n=&per=[&page=K]` | `{"data":[..]}` and `Link: <..page=1>; rel="first", [<..>; rel="prev", ][<..>; rel="next", ]<..>; rel="last"`; no `next` on the last page |
//! | `GET /api/next_url?n=&per=[&offset=O]` | `{"next":"http://../api/next_url?n=..&per=..&offset=O2","data":[..]}`, `"next":null` at the end |
//! | `GET /api/pages?n=&per=[&page=K]` | `{"data":[..]}` (K from 1), `{"data":[]}` beyond the end |
//! | `GET /api/offset?n=[&limit=L][&offset=O]` | `{"total":N,"data":[..]}`, empty `data` beyond the end |
//! | `GET /api/top?n=` | a top-level array `[{..},{..}]` (streamed) |
//! | `GET /api/ndjson?n=` | one record per line, each ending in `\n`, `Content-Type: application/x-ndjson` (streamed) |
//! | `GET /api/since?n=&per=[&since=TS][&cursor=C]` | like `/api/cursor`, only records with `updated_at > since` (string compare) |
//! | `GET /api/pretty?n=` | `{"data": [..]}` pretty-printed, newlines and indentation inside records (streamed) |
//! | `GET /api/loop` | `{"data":[{"id":1}],"next_cursor":"same"}` whatever the query |
//! | `GET /api/error200` | 200 `{"error":{"code":"rate_limited","message":"slow down"}}` |
//! | `GET /api/html` | 200 `text/html` page |
//! | `GET /api/pages?..&stall_page=K` | page K sends its first two records, then nothing until the server drops |
//! | `GET /api/cut_record` | `{"data":[{"id":1},{"id":` as a complete chunked response (clean end, truncated JSON) |
//! | `GET /api/bad_utf8` | `{"data":[{"id":1},{"name":"ab\xff\xfe"}]}`: bytes 0xff 0xfe (never UTF-8) inside the second record's string, at byte offset 29 |
//! | `GET /api/invalid` | `{"data":[{"id":1},{"id":tru}]}` |
//! | `GET /api/big_record?size=N` | `{"data":[{"id":1},{"blob":"xx..."}]}`, the second record exactly N bytes (N >= 11), streamed in 64 KiB chunks |
//! | `GET /api/big_line?size=N` | NDJSON: `{"id":1}` then one line `{"blob":"xx..."}` of exactly N bytes (N >= 11), streamed in 64 KiB chunks |
//! | `GET /api/empty` | `{"data":[]}` |
//! | `GET /api/retry_after?mode=seconds\|date&times=K&key=X[&n=&per=][&cursor=C]` | the first K requests with that key: 429, `Retry-After: 1` or an HTTP-date 2 s ahead; then `/api/cursor` pages (`per` defaults to `n`: one page) |
//! | `GET /api/storm?times=K&key=X[&after=M][&status=503][&n=&per=][&cursor=C][&delay_ms=]` | the first K requests with that key after the first M (default 0): that status (no `Retry-After`); the others `/api/cursor` pages |
//! | `GET /redirect?to=URL[&status=302]` | that redirect status, `Location: URL` |
//! | `GET /api/big_doc?size=N[&seed=S][&cursor_first=true]` | the `/json` document (`{"meta":..,"data":[..],"next_cursor":..}`, at least N bytes); its records are the lines of `/bytes?seed=S`, counted by [`big_doc_record_count`] |
//!
//! The paginated routes (`cursor`, `link`, `next_url`, `pages`, `offset`, `since`) take
//! `delay_ms=` too: each page waits that long (at most a minute) before it answers.
//!
//! Retry counters are per server and per `(route, key)`; every request counts, including the
//! ones that finally succeed.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use serde::Deserialize;

use crate::fixture::{CHUNK, json_stream};

/// Records of `/api/*` when `n` is not given.
pub const DEFAULT_N: u64 = 25;
/// Page size of `/api/*` when `per` (or `limit`) is not given.
pub const DEFAULT_PER: u64 = 10;
/// `updated_at` of record 0: 2026-01-01T00:00:00Z as Unix seconds.
pub const BASE_EPOCH_SECS: i64 = days_from_civil(2026, 1, 1) * 86_400;
/// The request log keeps at most this many requests (the oldest are dropped).
pub const REQUEST_LOG_CAP: usize = 10_000;

// --- request log -------------------------------------------------------------------------------

/// One request as it reached the fixture server.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The path only: `/api/cursor`.
    pub path: String,
    /// Query parameters in order, percent-decoded.
    pub query: Vec<(String, String)>,
    /// Headers in order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// When the request arrived.
    pub at: Instant,
}

impl RecordedRequest {
    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The shared request log of one fixture server.
#[derive(Clone, Default)]
pub(crate) struct RequestLog(Arc<Mutex<VecDeque<RecordedRequest>>>);

impl RequestLog {
    pub(crate) fn record(&self, request: &Request) {
        let uri = request.uri();
        let query = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map(|q| q.0)
            .unwrap_or_default();
        let headers = request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let entry = RecordedRequest {
            path: uri.path().to_owned(),
            query,
            headers,
            at: Instant::now(),
        };
        let mut log = self.0.lock().unwrap();
        if log.len() >= REQUEST_LOG_CAP {
            log.pop_front();
        }
        log.push_back(entry);
    }

    /// The requests to `path` (all of them with `None`), in arrival order.
    pub(crate) fn matching(&self, path: Option<&str>) -> Vec<RecordedRequest> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| path.is_none_or(|p| r.path == p))
            .cloned()
            .collect()
    }
}

// --- records -----------------------------------------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `(year, month, day)` of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds.
pub fn rfc3339(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of `time`, as `Retry-After` carries it.
pub fn http_date(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let s = secs.rem_euclid(86_400);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[m as usize - 1],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `updated_at` of record `i`: 2026-01-01T00:00:00Z plus `i` seconds.
pub fn api_updated_at(i: u64) -> String {
    rfc3339(BASE_EPOCH_SECS + i as i64)
}

/// The exact compact bytes record `i` is served as (also its NDJSON line, without `\n`).
pub fn api_record_json(i: u64) -> String {
    let mut out = Vec::with_capacity(96);
    push_record(&mut out, i);
    String::from_utf8(out).expect("records are ASCII")
}

/// Record `i` as a JSON value, to compare with what a client extracted.
pub fn api_record(i: u64) -> serde_json::Value {
    serde_json::from_str(&api_record_json(i)).expect("records are valid JSON")
}

fn push_record(out: &mut Vec<u8>, i: u64) {
    let triple = i * 3;
    let half = if triple % 2 == 0 { "0" } else { "5" };
    // Keys in alphabetical order, so `api_record(i).to_string()` gives the same bytes.
    out.extend_from_slice(
        format!(
            r#"{{"id":{i},"name":"item-{i}","updated_at":"{}","value":{}.{half}}}"#,
            api_updated_at(i),
            triple / 2
        )
        .as_bytes(),
    );
}

fn push_pretty_record(out: &mut Vec<u8>, i: u64, indent: &str) {
    let pretty = serde_json::to_string_pretty(&api_record(i)).expect("serializing a record");
    for (k, line) in pretty.lines().enumerate() {
        if k > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(indent.as_bytes());
        out.extend_from_slice(line.as_bytes());
    }
}

/// Index (0-based, so id - 1) of the first record whose `updated_at` is after `since`, in
/// `0..n` (`n` when none is).
fn first_after(n: u64, since: &str) -> u64 {
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if api_updated_at(mid + 1).as_str() > since {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Counts the records of `GET /api/big_doc?size={size}&seed={seed}` (the same as `/json`) by
/// generating the document again: about a second per GiB, blocking (use `spawn_blocking`).
pub fn big_doc_record_count(seed: u64, size: u64) -> u64 {
    futures::executor::block_on(json_stream(seed, size, false).fold(0u64, |count, chunk| {
        // Every record starts with `{"id":` and is never split across chunks.
        let chunk = chunk.expect("generating the document");
        let found = chunk.windows(6).filter(|w| *w == b"{\"id\":").count() as u64;
        async move { count + found }
    }))
}

#[derive(Clone, Copy)]
enum Layout {
    /// `{..},{..}`
    Compact,
    /// `{..}\n{..}\n`
    Ndjson,
    /// Indented records separated by `,\n`.
    Pretty,
}

/// `head`, the records with ids in `ids` laid out as `layout`, then `tail`, in chunks of about
/// 64 KiB generated lazily.
fn records_stream(
    head: String,
    ids: Range<u64>,
    layout: Layout,
    tail: String,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let first = ids.start;
    let state = (Some(head), ids, Some(tail));
    stream::unfold(state, move |(mut head, mut rest, mut tail)| async move {
        let mut chunk = Vec::with_capacity(CHUNK + 512);
        if let Some(head) = head.take() {
            chunk.extend_from_slice(head.as_bytes());
        }
        while chunk.len() < CHUNK {
            let Some(i) = rest.next() else { break };
            match layout {
                Layout::Compact => {
                    if i != first {
                        chunk.push(b',');
                    }
                    push_record(&mut chunk, i);
                }
                Layout::Ndjson => {
                    push_record(&mut chunk, i);
                    chunk.push(b'\n');
                }
                Layout::Pretty => {
                    if i != first {
                        chunk.extend_from_slice(b",\n");
                    }
                    push_pretty_record(&mut chunk, i, "    ");
                }
            }
        }
        if rest.is_empty() {
            if let Some(tail) = tail.take() {
                chunk.extend_from_slice(tail.as_bytes());
            }
        }
        if chunk.is_empty() {
            return None;
        }
        Some((Ok(Bytes::from(chunk)), (head, rest, tail)))
    })
}

// --- routes ------------------------------------------------------------------------------------

/// Every parameter any `/api/*` route reads; each route uses a few.
#[derive(Deserialize)]
struct ApiQuery {
    n: Option<u64>,
    per: Option<u64>,
    cursor: Option<String>,
    #[serde(default)]
    cursor_first: bool,
    page: Option<u64>,
    offset: Option<u64>,
    limit: Option<u64>,
    since: Option<String>,
    size: Option<u64>,
    #[serde(default)]
    seed: u64,
    mode: Option<String>,
    #[serde(default)]
    times: u64,
    #[serde(default)]
    key: String,
    status: Option<u16>,
    to: Option<String>,
    /// `/api/pages`: this page's document is cut short after its first records.
    cut_page: Option<u64>,
    /// `/api/pages`: this page stalls after its first records.
    stall_page: Option<u64>,
    /// Paginated routes: wait this long before answering (a slow API).
    delay_ms: Option<u64>,
    /// `/api/storm`: requests served before the storm.
    #[serde(default)]
    after: u64,
}

/// Waits `delay_ms`, if given.
async fn pause(q: &ApiQuery) {
    if let Some(ms) = q.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
}

impl ApiQuery {
    fn n(&self) -> u64 {
        self.n.unwrap_or(DEFAULT_N)
    }

    fn per(&self) -> Result<u64, String> {
        match self.per.unwrap_or(DEFAULT_PER) {
            0 => Err("per must be at least 1".to_owned()),
            per => Ok(per),
        }
    }
}

type Counters = Arc<Mutex<HashMap<String, u64>>>;

/// The `/api/*` and `/redirect` routes, merged into the [`FixtureServer`](crate::FixtureServer)
/// router.
pub(crate) fn router() -> Router {
    Router::new()
        .route("/api/cursor", get(cursor_route))
        .route("/api/has_more", get(has_more_route))
        .route("/api/link", get(link_route))
        .route("/api/next_url", get(next_url_route))
        .route("/api/pages", get(pages_route))
        .route("/api/offset", get(offset_route))
        .route("/api/top", get(top_route))
        .route("/api/ndjson", get(ndjson_route))
        .route("/api/since", get(since_route))
        .route("/api/pretty", get(pretty_route))
        .route("/api/loop", get(loop_route))
        .route("/api/error200", get(error200_route))
        .route("/api/html", get(html_route))
        .route("/api/cut_record", get(cut_record_route))
        .route("/api/bad_utf8", get(bad_utf8_route))
        .route("/api/big_line", get(big_line_route))
        .route("/api/invalid", get(invalid_route))
        .route("/api/big_record", get(big_record_route))
        .route("/api/empty", get(empty_route))
        .route("/api/retry_after", get(retry_after_route))
        .route("/api/storm", get(storm_route))
        .route("/api/big_doc", get(big_doc_route))
        .route("/api/events", get(crate::events::events_route))
        .route("/redirect", get(redirect_route))
        .with_state(Counters::default())
}

fn json_response(status: StatusCode, body: Body) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_text(status: StatusCode, text: impl Into<String>) -> Response {
    json_response(status, Body::from(text.into()))
}

fn error_json(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    json_text(status, body.to_string())
}

fn bad_request(message: &str) -> Response {
    error_json(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A page whose body is `head` + compact records `ids` + `tail`.
fn page(head: String, ids: Range<u64>, tail: String) -> Response {
    json_response(
        StatusCode::OK,
        Body::from_stream(records_stream(head, ids, Layout::Compact, tail)),
    )
}

/// `http://<host>` of the request (the Host header, else the URI's authority).
fn base_url(uri: &Uri, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    format!("http://{host}")
}

/// Ids `offset+1 ..= min(offset+per, n)` as a range (empty beyond the end).
fn ids(offset: u64, per: u64, n: u64) -> Range<u64> {
    let start = offset.min(n);
    let end = offset.saturating_add(per).min(n);
    start + 1..end + 1
}

fn encode_cursor(offset: u64) -> String {
    format!("o{offset:x}")
}

/// The offset a cursor stands for; `None` for anything [`encode_cursor`] does not produce or
/// past `n`.
fn decode_cursor(cursor: &str, n: u64) -> Option<u64> {
    let hex = cursor.strip_prefix('o')?;
    let offset = u64::from_str_radix(hex, 16).ok()?;
    (encode_cursor(offset) == cursor && offset <= n).then_some(offset)
}

fn cursor_offset(q: &ApiQuery) -> Result<u64, String> {
    match &q.cursor {
        None => Ok(0),
        Some(cursor) => {
            decode_cursor(cursor, q.n()).ok_or_else(|| format!("unknown cursor: {cursor}"))
        }
    }
}

fn json_string_or_null(value: Option<String>) -> String {
    match value {
        Some(v) => serde_json::Value::String(v).to_string(),
        None => "null".to_owned(),
    }
}

/// The `/api/cursor` page at `start` (0-based record index) with records up to `n`.
fn cursor_page(start: u64, per: u64, n: u64, cursor_first: bool) -> Response {
    let ids = ids(start, per, n);
    let next = json_string_or_null((ids.end - 1 < n).then(|| encode_cursor(ids.end - 1)));
    if cursor_first {
        page(
            format!(r#"{{"next_cursor":{next},"data":["#),
            ids,
            "]}".to_owned(),
        )
    } else {
        page(
            r#"{"data":["#.to_owned(),
            ids,
            format!(r#"],"next_cursor":{next}}}"#),
        )
    }
}

async fn cursor_route(Query(q): Query<ApiQuery>) -> Response {
    pause(&q).await;
    let (per, offset) = match (q.per(), cursor_offset(&q)) {
        (Ok(per), Ok(offset)) => (per, offset),
        (Err(e), _) | (_, Err(e)) => return bad_request(&e),
    };
    cursor_page(offset, per, q.n(), q.cursor_first)
}

async fn has_more_route(Query(q): Query<ApiQuery>) -> Response {
    let (per, offset) = match (q.per(), cursor_offset(&q)) {
        (Ok(per), Ok(offset)) => (per, offset),
        (Err(e), _) | (_, Err(e)) => return bad_request(&e),
    };
    let n = q.n();
    let ids = ids(offset, per, n);
    let end = ids.end - 1;
    let tail = format!(
        r#"],"meta":{{"has_more":{},"next":"{}"}}}}"#,
        end < n,
        encode_cursor(end)
    );
    page(r#"{"data":["#.to_owned(), ids, tail)
}

async fn link_route(uri: Uri, headers: HeaderMap, Query(q): Query<ApiQuery>) -> Response {
    pause(&q).await;
    let per = match q.per() {
        Ok(per) => per,
        Err(e) => return bad_request(&e),
    };
    let n = q.n();
    let k = q.page.unwrap_or(1);
    if k == 0 {
        return bad_request("pages start at 1");
    }
    let last = n.div_ceil(per).max(1);
    let base = base_url(&uri, &headers);
    let url = |page: u64| format!("<{base}/api/link?n={n}&per={per}&page={page}>");
    let mut links = vec![format!(r#"{}; rel="first""#, url(1))];
    if k > 1 {
        links.push(format!(r#"{}; rel="prev""#, url(k - 1)));
    }
    if k < last {
        links.push(format!(r#"{}; rel="next""#, url(k + 1)));
    }
    links.push(format!(r#"{}; rel="last""#, url(last)));
    let mut response = page(
        r#"{"data":["#.to_owned(),
        ids((k - 1).saturating_mul(per), per, n),
        "]}".to_owned(),
    );
    let link = HeaderValue::from_str(&links.join(", ")).expect("a valid Link header");
    response.headers_mut().insert(header::LINK, link);
    response
}

async fn next_url_route(uri: Uri, headers: HeaderMap, Query(q): Query<ApiQuery>) -> Response {
    pause(&q).await;
    let per = match q.per() {
        Ok(per) => per,
        Err(e) => return bad_request(&e),
    };
    let n = q.n();
    let ids = ids(q.offset.unwrap_or(0), per, n);
    let end = ids.end - 1;
    let next = (end < n).then(|| {
        format!(
            "{}/api/next_url?n={n}&per={per}&offset={end}",
            base_url(&uri, &headers)
        )
    });
    page(
        format!(r#"{{"next":{},"data":["#, json_string_or_null(next)),
        ids,
        "]}".to_owned(),
    )
}

async fn pages_route(Query(q): Query<ApiQuery>) -> Response {
    pause(&q).await;
    let per = match q.per() {
        Ok(per) => per,
        Err(e) => return bad_request(&e),
    };
    let k = q.page.unwrap_or(1);
    if k == 0 {
        return bad_request("pages start at 1");
    }
    let ids = ids((k - 1).saturating_mul(per), per, q.n());
    if q.cut_page == Some(k) {
        let head: String = ids
            .clone()
            .take(2)
            .map(|i| api_record_json(i) + ",")
            .collect();
        return json_response(
            StatusCode::OK,
            Body::from(format!(r#"{{"data":[{head}{{"id":"#)),
        );
    }
    if q.stall_page == Some(k) {
        let head: String = ids
            .clone()
            .take(2)
            .map(|i| api_record_json(i) + ",")
            .collect();
        let first = stream::once(async move { Ok(Bytes::from(format!(r#"{{"data":[{head}"#))) });
        return json_response(
            StatusCode::OK,
            Body::from_stream(first.chain(stream::pending::<io::Result<Bytes>>())),
        );
    }
    page(r#"{"data":["#.to_owned(), ids, "]}".to_owned())
}

async fn offset_route(Query(q): Query<ApiQuery>) -> Response {
    pause(&q).await;
    let n = q.n();
    let limit = q.limit.unwrap_or(DEFAULT_PER);
    page(
        format!(r#"{{"total":{n},"data":["#),
        ids(q.offset.unwrap_or(0), limit, n),
        "]}".to_owned(),
    )
}

async fn top_route(Query(q): Query<ApiQuery>) -> Response {
    page("[".to_owned(), 1..q.n() + 1, "]".to_owned())
}

async fn ndjson_route(Query(q): Query<ApiQuery>) -> Response {
    let body = records_stream(String::new(), 1..q.n() + 1, Layout::Ndjson, String::new());
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn since_route(Query(q): Query<ApiQuery>) -> Response {
    pause(&q).await;
    let (per, offset) = match (q.per(), cursor_offset(&q)) {
        (Ok(per), Ok(offset)) => (per, offset),
        (Err(e), _) | (_, Err(e)) => return bad_request(&e),
    };
    let n = q.n();
    let from = q.since.as_deref().map_or(0, |since| first_after(n, since));
    cursor_page(offset.max(from), per, n, q.cursor_first)
}

async fn pretty_route(Query(q): Query<ApiQuery>) -> Response {
    let n = q.n();
    let body = if n == 0 {
        Body::from("{\n  \"data\": []\n}\n")
    } else {
        Body::from_stream(records_stream(
            "{\n  \"data\": [\n".to_owned(),
            1..n + 1,
            Layout::Pretty,
            "\n  ]\n}\n".to_owned(),
        ))
    };
    json_response(StatusCode::OK, body)
}

async fn loop_route() -> Response {
    json_text(
        StatusCode::OK,
        r#"{"data":[{"id":1}],"next_cursor":"same"}"#,
    )
}

async fn error200_route() -> Response {
    error_json(StatusCode::OK, "rate_limited", "slow down")
}

async fn html_route() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><head><title>Maintenance</title></head><body><h1>Back soon</h1></body></html>\n",
    )
        .into_response()
}

/// Two chunks, then a clean end of a chunked body: the truncation is only visible to a JSON
/// parser.
async fn cut_record_route() -> Response {
    let chunks = stream::iter([
        Ok::<_, io::Error>(Bytes::from_static(br#"{"data":[{"id":1},"#)),
        Ok(Bytes::from_static(br#"{"id":"#)),
    ]);
    json_response(StatusCode::OK, Body::from_stream(chunks))
}

async fn bad_utf8_route() -> Response {
    json_response(
        StatusCode::OK,
        Body::from(&b"{\"data\":[{\"id\":1},{\"name\":\"ab\xff\xfe\"}]}"[..]),
    )
}

/// `size - 11` bytes of `x`, in 64 KiB chunks: the inside of a `{"blob":"..."}` of `size` bytes.
fn blob_stream(size: u64) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    const SHELL: u64 = r#"{"blob":""}"#.len() as u64;
    let xs = Bytes::from(vec![b'x'; CHUNK]);
    stream::unfold(size - SHELL, move |remaining| {
        let xs = xs.clone();
        async move {
            (remaining > 0).then(|| {
                let n = remaining.min(CHUNK as u64);
                (Ok::<_, io::Error>(xs.slice(..n as usize)), remaining - n)
            })
        }
    })
}

async fn big_line_route(Query(q): Query<ApiQuery>) -> Response {
    let Some(size) = q.size.filter(|&s| s >= 11) else {
        return bad_request("big_line needs size >= 11");
    };
    let body = stream::once(async { Ok(Bytes::from_static(b"{\"id\":1}\n{\"blob\":\"")) })
        .chain(blob_stream(size))
        .chain(stream::once(async { Ok(Bytes::from_static(b"\"}\n")) }));
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn invalid_route() -> Response {
    json_text(StatusCode::OK, r#"{"data":[{"id":1},{"id":tru}]}"#)
}

async fn big_record_route(Query(q): Query<ApiQuery>) -> Response {
    const SHELL: u64 = r#"{"blob":""}"#.len() as u64;
    let Some(size) = q.size.filter(|&s| s >= SHELL) else {
        return bad_request("big_record needs size >= 11");
    };
    let xs = Bytes::from(vec![b'x'; CHUNK]);
    let blob = stream::unfold(size - SHELL, move |remaining| {
        let xs = xs.clone();
        async move {
            (remaining > 0).then(|| {
                let n = remaining.min(CHUNK as u64);
                (Ok::<_, io::Error>(xs.slice(..n as usize)), remaining - n)
            })
        }
    });
    let body = stream::once(async { Ok(Bytes::from_static(br#"{"data":[{"id":1},{"blob":""#)) })
        .chain(blob)
        .chain(stream::once(async { Ok(Bytes::from_static(br#""}]}"#)) }));
    json_response(StatusCode::OK, Body::from_stream(body))
}

async fn empty_route() -> Response {
    json_text(StatusCode::OK, r#"{"data":[]}"#)
}

/// Counts this request for `(route, key)`; true while the count is at most `times`.
fn must_fail(counters: &Counters, route: &str, key: &str, times: u64) -> bool {
    must_fail_after(counters, route, key, 0, times)
}

/// Counts this request for `(route, key)`; true for counts `after + 1 ..= after + times`.
fn must_fail_after(counters: &Counters, route: &str, key: &str, after: u64, times: u64) -> bool {
    let mut counters = counters.lock().unwrap();
    let count = counters.entry(format!("{route}\0{key}")).or_default();
    *count += 1;
    *count > after && *count <= after.saturating_add(times)
}

/// The page served once the faults are over: `/api/cursor` with `per` defaulting to `n`.
fn page_after_faults(q: &ApiQuery) -> Response {
    let offset = match cursor_offset(q) {
        Ok(offset) => offset,
        Err(e) => return bad_request(&e),
    };
    let per = q.per.unwrap_or(q.n()).max(1);
    cursor_page(offset, per, q.n(), q.cursor_first)
}

async fn retry_after_route(
    State(counters): State<Counters>,
    Query(q): Query<ApiQuery>,
) -> Response {
    let date = match q.mode.as_deref().unwrap_or("seconds") {
        "seconds" => false,
        "date" => true,
        other => return bad_request(&format!("mode must be seconds or date, not {other}")),
    };
    if !must_fail(&counters, "retry_after", &q.key, q.times) {
        return page_after_faults(&q);
    }
    let value = if date {
        http_date(SystemTime::now() + Duration::from_secs(2))
    } else {
        "1".to_owned()
    };
    let mut response = error_json(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
    let value = HeaderValue::from_str(&value).expect("a valid Retry-After");
    response.headers_mut().insert(header::RETRY_AFTER, value);
    response
}

async fn storm_route(State(counters): State<Counters>, Query(q): Query<ApiQuery>) -> Response {
    let Ok(status) = StatusCode::from_u16(q.status.unwrap_or(503)) else {
        return bad_request("not a status code");
    };
    pause(&q).await;
    if !must_fail_after(&counters, "storm", &q.key, q.after, q.times) {
        return page_after_faults(&q);
    }
    error_json(
        status,
        "storm",
        status.canonical_reason().unwrap_or("fixture storm"),
    )
}

async fn big_doc_route(Query(q): Query<ApiQuery>) -> Response {
    let Some(size) = q.size else {
        return bad_request("big_doc needs size");
    };
    json_response(
        StatusCode::OK,
        Body::from_stream(json_stream(q.seed, size, q.cursor_first)),
    )
}

async fn redirect_route(Query(q): Query<ApiQuery>) -> Response {
    let Some(to) = q.to.as_deref() else {
        return bad_request("redirect needs to=URL");
    };
    let status = match StatusCode::from_u16(q.status.unwrap_or(302)) {
        Ok(status) if status.is_redirection() => status,
        _ => return bad_request("status must be 3xx"),
    };
    let Ok(location) = HeaderValue::from_str(to) else {
        return bad_request("to is not a valid header value");
    };
    let mut response = json_text(status, serde_json::json!({ "redirect": to }).to_string());
    response.headers_mut().insert(header::LOCATION, location);
    response
}
