//! A fault-injecting reverse proxy in front of an S3 server, to prove what sluice does when S3
//! throttles, fails, answers `200` with an error body, or rejects a corrupted part.
//!
//! Every request is forwarded unchanged — method, path and query, headers (the SigV4
//! `Authorization`, the `x-amz-*` headers and the `Host` the client signed), body streamed —
//! and the upstream's answer streamed back, unless a programmed fault matches the request's
//! S3 operation ([`S3Op`], recognised from the method, the path and the query of a path-style
//! request):
//!
//! | fault | effect |
//! |---|---|
//! | [`S3Proxy::fail_times`] / [`S3Proxy::fail_always`] | answer with an S3 XML `<Error>` and the given status, without forwarding |
//! | [`S3Proxy::complete_200_error`] | answer `CompleteMultipartUpload` with `200` and an `<Error><Code>InternalError</Code>` body, without forwarding |
//! | [`S3Proxy::complete_200_without_etag`] | answer `CompleteMultipartUpload` with `200` and a `<CompleteMultipartUploadResult>` that has no `<ETag>`, without forwarding |
//! | [`S3Proxy::corrupt_part`] | forward that `UploadPart` with one body byte flipped (its signed payload digest and checksum header no longer match) |
//!
//! A request whose fault answers without forwarding has its body read and discarded first, so
//! the client sees the error response rather than a connection closed under its upload.
//!
//! The proxy counts requests per operation ([`S3Proxy::count`]) and per part number
//! ([`S3Proxy::part_attempts`]), faults included, and keeps the status of every answer
//! ([`S3Proxy::answers`]).
//!
//! The path and query are re-parsed as a URL to reach the upstream, so keys should stay within
//! characters a URL keeps as they are (letters, digits, `/-._~`): a key the parser re-encodes
//! would no longer match its signature.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::server::BackgroundServer;
use crate::stack::S3Server;

/// An S3 operation, as the proxy recognises it from a path-style request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum S3Op {
    /// `PUT /bucket/key` without `uploadId`.
    PutObject,
    /// `POST /bucket/key?uploads`.
    CreateMultipartUpload,
    /// `PUT /bucket/key?partNumber=N&uploadId=U`.
    UploadPart,
    /// `POST /bucket/key?uploadId=U`.
    CompleteMultipartUpload,
    /// `DELETE /bucket/key?uploadId=U`.
    AbortMultipartUpload,
    /// `GET /bucket/key?uploadId=U`.
    ListParts,
    /// `GET /bucket?uploads`.
    ListMultipartUploads,
    /// `HEAD /bucket/key`.
    HeadObject,
    /// `GET /bucket/key` without `uploadId`.
    GetObject,
    /// Anything else (bucket creation, listings, ...).
    Other,
}

impl S3Op {
    /// The operation of a path-style request (`/bucket` or `/bucket/key`, then the query).
    pub fn of(method: &Method, path: &str, query: Option<&str>) -> S3Op {
        let params: Vec<&str> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').map_or(p, |(name, _)| name))
            .collect();
        let has = |name: &str| params.contains(&name);
        // `/bucket`, `/bucket/`: bucket-level; `/bucket/anything`: an object.
        let object = path
            .trim_start_matches('/')
            .split_once('/')
            .is_some_and(|(_, key)| !key.is_empty());
        match (method.as_str(), object) {
            ("GET", false) if has("uploads") => S3Op::ListMultipartUploads,
            (_, false) => S3Op::Other,
            ("PUT", true) if has("uploadId") && has("partNumber") => S3Op::UploadPart,
            ("PUT", true) if !has("uploadId") => S3Op::PutObject,
            ("POST", true) if has("uploads") => S3Op::CreateMultipartUpload,
            ("POST", true) if has("uploadId") => S3Op::CompleteMultipartUpload,
            ("DELETE", true) if has("uploadId") => S3Op::AbortMultipartUpload,
            ("GET", true) if has("uploadId") => S3Op::ListParts,
            ("GET", true) => S3Op::GetObject,
            ("HEAD", true) => S3Op::HeadObject,
            _ => S3Op::Other,
        }
    }
}

/// The `partNumber` of a query, if any.
fn part_number(query: Option<&str>) -> Option<i32> {
    query?
        .split('&')
        .find_map(|p| p.strip_prefix("partNumber="))
        .and_then(|n| n.parse().ok())
}

#[derive(Debug, Clone)]
enum Action {
    Fail { status: StatusCode, code: String },
    Complete200Error,
    Complete200NoETag,
    CorruptPart(i32),
}

#[derive(Debug)]
struct Rule {
    op: S3Op,
    action: Action,
    /// `None`: every matching request.
    remaining: Option<usize>,
}

impl Rule {
    fn matches(&self, op: S3Op, part: Option<i32>) -> bool {
        self.op == op
            && self.remaining != Some(0)
            && match self.action {
                Action::CorruptPart(n) => part == Some(n),
                _ => true,
            }
    }
}

struct Shared {
    http: reqwest::Client,
    upstream: String,
    rules: Mutex<Vec<Rule>>,
    counts: Mutex<HashMap<S3Op, usize>>,
    parts: Mutex<BTreeMap<i32, usize>>,
    answers: Mutex<Vec<(S3Op, u16)>>,
    /// `x-amz-content-sha256` of every `UploadPart` and `PutObject`, in order of arrival.
    payload_hashes: Mutex<Vec<String>>,
    next_id: AtomicU64,
}

impl Shared {
    /// Counts the request and takes the first matching rule's action (using one of its times).
    fn admit(&self, op: S3Op, part: Option<i32>) -> Option<Action> {
        *self.counts.lock().unwrap().entry(op).or_default() += 1;
        if let (S3Op::UploadPart, Some(n)) = (op, part) {
            *self.parts.lock().unwrap().entry(n).or_default() += 1;
        }
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|r| r.matches(op, part))?;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        Some(rule.action.clone())
    }

    fn answered(&self, op: S3Op, status: StatusCode) {
        self.answers.lock().unwrap().push((op, status.as_u16()));
    }
}

/// A running fault-injecting proxy on `127.0.0.1:<random port>`; stopped when dropped.
pub struct S3Proxy {
    shared: Arc<Shared>,
    addr: std::net::SocketAddr,
    _server: BackgroundServer,
}

impl S3Proxy {
    /// Starts a proxy to `upstream` (`http://host:port`, e.g. Garage's endpoint) on its own
    /// thread and runtime, with no fault programmed.
    pub async fn start(upstream: &str) -> S3Proxy {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building the proxy's HTTP client");
        let shared = Arc::new(Shared {
            http,
            upstream: upstream.trim_end_matches('/').to_owned(),
            rules: Mutex::default(),
            counts: Mutex::default(),
            parts: Mutex::default(),
            answers: Mutex::default(),
            payload_hashes: Mutex::default(),
            next_id: AtomicU64::new(1),
        });
        let app = Router::new().fallback(proxy).with_state(shared.clone());
        let server = BackgroundServer::start("s3-proxy", app)
            .await
            .expect("starting the S3 proxy");
        S3Proxy {
            shared,
            addr: server.addr,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`: the endpoint clients should use.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `base` (same credentials and region) reached through this proxy.
    pub fn server(&self, base: &S3Server) -> S3Server {
        S3Server {
            endpoint: self.endpoint(),
            ..base.clone()
        }
    }

    fn add(&self, op: S3Op, action: Action, remaining: Option<usize>) {
        self.shared.rules.lock().unwrap().push(Rule {
            op,
            action,
            remaining,
        });
    }

    /// The next `n` requests of `op` are answered with `status` and an S3 `<Error>` whose code
    /// is `s3_code` (`SlowDown`, `InternalError`, ...), without reaching the upstream.
    pub fn fail_times(&self, op: S3Op, n: usize, status: u16, s3_code: &str) {
        self.add(op, fail(status, s3_code), Some(n));
    }

    /// Every request of `op` is answered like [`S3Proxy::fail_times`].
    pub fn fail_always(&self, op: S3Op, status: u16, s3_code: &str) {
        self.add(op, fail(status, s3_code), None);
    }

    /// Every `CompleteMultipartUpload` is answered with `200 OK` and an
    /// `<Error><Code>InternalError</Code>` body, as S3 may do once it has started answering;
    /// the upstream never sees the request, so the upload stays open.
    pub fn complete_200_error(&self) {
        self.add(
            S3Op::CompleteMultipartUpload,
            Action::Complete200Error,
            None,
        );
    }

    /// Every `CompleteMultipartUpload` is answered with `200 OK` and a well-formed
    /// `<CompleteMultipartUploadResult>` (location, bucket, key) that lacks the `<ETag>` every
    /// success carries; the upstream never sees the request, so the upload stays open.
    pub fn complete_200_without_etag(&self) {
        self.add(
            S3Op::CompleteMultipartUpload,
            Action::Complete200NoETag,
            None,
        );
    }

    /// Every `UploadPart` of part `part_number` is forwarded with the first byte of its body
    /// flipped; the length is unchanged, so only a checksum can tell.
    pub fn corrupt_part(&self, part_number: i32) {
        self.add(S3Op::UploadPart, Action::CorruptPart(part_number), None);
    }

    /// Removes every programmed fault (counts are kept).
    pub fn clear_faults(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Requests of `op` received so far, faults included.
    pub fn count(&self, op: S3Op) -> usize {
        self.shared
            .counts
            .lock()
            .unwrap()
            .get(&op)
            .copied()
            .unwrap_or(0)
    }

    /// The `x-amz-content-sha256` header of every `UploadPart` and `PutObject` received:
    /// `UNSIGNED-PAYLOAD`, or the body's SHA-256 when the client signed it.
    pub fn payload_hashes(&self) -> Vec<String> {
        self.shared.payload_hashes.lock().unwrap().clone()
    }

    /// `UploadPart` requests received per part number, faults included.
    pub fn part_attempts(&self) -> BTreeMap<i32, usize> {
        self.shared.parts.lock().unwrap().clone()
    }

    /// The status of every answer to `op` so far (injected or upstream), in order of answer.
    pub fn answers(&self, op: S3Op) -> Vec<u16> {
        self.shared
            .answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, s)| *s)
            .collect()
    }
}

fn fail(status: u16, code: &str) -> Action {
    Action::Fail {
        status: StatusCode::from_u16(status).expect("a valid HTTP status"),
        code: code.to_owned(),
    }
}

/// Hop-by-hop headers, which belong to one connection and are never forwarded.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| !hop_by_hop(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Reads a request body to its end. An injected answer is sent only after it: answering in the
/// middle of an upload would make the client see a broken connection instead of the answer.
async fn drain(body: Body) {
    let mut body = body.into_data_stream();
    while let Some(chunk) = body.next().await {
        if chunk.is_err() {
            break;
        }
    }
}

async fn proxy(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let op = S3Op::of(&parts.method, &path, query.as_deref());
    let part = part_number(query.as_deref());
    let action = shared.admit(op, part);
    if matches!(op, S3Op::UploadPart | S3Op::PutObject) {
        let hash = parts
            .headers
            .get("x-amz-content-sha256")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        shared.payload_hashes.lock().unwrap().push(hash);
    }
    let request_id = format!(
        "sluice-proxy-{}",
        shared.next_id.fetch_add(1, Ordering::Relaxed)
    );

    let injected = match &action {
        Some(Action::Fail { status, code }) => {
            Some((*status, code.as_str(), "injected by the sluice test proxy"))
        }
        Some(Action::Complete200Error) => Some((
            StatusCode::OK,
            "InternalError",
            "We encountered an internal error. Please try again. (200 injected by the sluice test proxy)",
        )),
        _ => None,
    };
    if matches!(action, Some(Action::Complete200NoETag)) {
        drain(body).await;
        shared.answered(op, StatusCode::OK);
        let (bucket, key) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", ""));
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult>\
             <Location>{path}</Location><Bucket>{bucket}</Bucket><Key>{key}</Key>\
             </CompleteMultipartUploadResult>"
        );
        return (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml"),
            )],
            xml,
        )
            .into_response();
    }
    if let Some((status, code, message)) = injected {
        drain(body).await;
        shared.answered(op, status);
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>{message}</Message><Resource>{path}</Resource>\
             <RequestId>{request_id}</RequestId></Error>"
        );
        return (
            status,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/xml"),
                ),
                (
                    header::HeaderName::from_static("x-amz-request-id"),
                    HeaderValue::from_str(&request_id).expect("ASCII request id"),
                ),
            ],
            xml,
        )
            .into_response();
    }

    let mut flip = matches!(action, Some(Action::CorruptPart(_)));
    let body = body.into_data_stream().map(move |chunk| {
        let chunk = chunk?;
        if flip && !chunk.is_empty() {
            flip = false;
            let mut changed = BytesMut::from(&chunk[..]);
            changed[0] ^= 0xff;
            return Ok::<Bytes, axum::Error>(changed.freeze());
        }
        Ok(chunk)
    });

    let url = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
    );
    // `Host` is among the forwarded headers: the signature covers the one the client sent.
    let upstream = shared
        .http
        .request(parts.method.clone(), url)
        .headers(end_to_end(&parts.headers))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    match upstream {
        Ok(answer) => {
            let status = answer.status();
            shared.answered(op, status);
            let headers = end_to_end(answer.headers());
            let mut response = Response::new(Body::from_stream(answer.bytes_stream()));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Err(error) => {
            shared.answered(op, StatusCode::BAD_GATEWAY);
            (
                StatusCode::BAD_GATEWAY,
                format!("sluice test proxy: upstream request failed: {error:?}"),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_recognised_from_method_path_and_query() {
        let cases = [
            ("PUT", "/b/k", None, S3Op::PutObject),
            ("PUT", "/b/k", Some("x-id=PutObject"), S3Op::PutObject),
            (
                "PUT",
                "/b/k",
                Some("partNumber=2&uploadId=abc&x-id=UploadPart"),
                S3Op::UploadPart,
            ),
            (
                "POST",
                "/b/a/k",
                Some("uploads"),
                S3Op::CreateMultipartUpload,
            ),
            (
                "POST",
                "/b/k",
                Some("uploads="),
                S3Op::CreateMultipartUpload,
            ),
            (
                "POST",
                "/b/k",
                Some("uploadId=abc"),
                S3Op::CompleteMultipartUpload,
            ),
            (
                "DELETE",
                "/b/k",
                Some("x-id=AbortMultipartUpload&uploadId=abc"),
                S3Op::AbortMultipartUpload,
            ),
            (
                "GET",
                "/b/k",
                Some("max-parts=1&uploadId=a"),
                S3Op::ListParts,
            ),
            ("GET", "/b", Some("uploads"), S3Op::ListMultipartUploads),
            ("GET", "/b/", Some("uploads"), S3Op::ListMultipartUploads),
            ("GET", "/b/k", None, S3Op::GetObject),
            ("HEAD", "/b/k", None, S3Op::HeadObject),
            ("PUT", "/b", None, S3Op::Other),
            ("PUT", "/b/", None, S3Op::Other),
        ];
        for (method, path, query, op) in cases {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(
                S3Op::of(&method, path, query),
                op,
                "{method} {path} {query:?}"
            );
        }
        assert_eq!(part_number(Some("partNumber=12&uploadId=a")), Some(12));
        assert_eq!(part_number(Some("uploadId=a")), None);
    }
}
