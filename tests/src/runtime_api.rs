//! An emulator of the AWS Lambda Runtime API, to drive a built `bootstrap` binary the way the
//! Lambda service does: the function long-polls `invocation/next`, the test queues events with
//! [`RuntimeApi::invoke`] and gets the function's answer back.
//!
//! Routes (all under `127.0.0.1:PORT`, the value of `AWS_LAMBDA_RUNTIME_API`):
//! `GET /2018-06-01/runtime/invocation/next`, `POST /2018-06-01/runtime/invocation/{id}/response`,
//! `POST /2018-06-01/runtime/invocation/{id}/error`, `POST /2018-06-01/runtime/init/error`, and
//! a no-op Extensions API (`POST /2020-01-01/extension/register`,
//! `GET /2020-01-01/extension/event/next`, which never answers) so a runtime that registers
//! a graceful-shutdown extension can start.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::server::BackgroundServer;

/// The function's answer to one invocation.
#[derive(Clone, Debug, PartialEq)]
pub enum Invocation {
    /// The body posted to `.../response` (a JSON string value if it was not JSON).
    Response(Value),
    /// What was posted to `.../error`.
    Error {
        /// `errorType` (or the `Lambda-Runtime-Function-Error-Type` header).
        error_type: String,
        /// `errorMessage`.
        error_message: String,
    },
}

/// Tells whether the function's process is gone: `Some(description)` once it exited.
pub(crate) type ExitCheck = Box<dyn Fn() -> Option<String> + Send + Sync>;

struct Event {
    request_id: String,
    deadline_ms: u64,
    payload: Value,
}

struct Shared {
    queue_tx: mpsc::UnboundedSender<Event>,
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Invocation>>>,
    abandoned: Mutex<HashSet<String>>,
    init_error: Mutex<Option<(String, String)>>,
    exit_check: Mutex<Option<ExitCheck>>,
    function_name: Mutex<String>,
}

/// A running Runtime API emulator; stopped when dropped.
pub struct RuntimeApi {
    shared: Arc<Shared>,
    server: BackgroundServer,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl RuntimeApi {
    /// Starts the emulator on `127.0.0.1:0`, on its own thread and runtime.
    pub async fn start() -> RuntimeApi {
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            waiting: Mutex::default(),
            abandoned: Mutex::default(),
            init_error: Mutex::default(),
            exit_check: Mutex::default(),
            function_name: Mutex::new("sluice".to_owned()),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .route("/2020-01-01/extension/register", post(extension_register))
            .route(
                "/2020-01-01/extension/event/next",
                get(std::future::pending::<()>),
            )
            // Lambda's own payload limit.
            .layer(DefaultBodyLimit::max(6 * 1024 * 1024))
            .with_state(shared.clone());
        let server = BackgroundServer::start("runtime-api", app)
            .await
            .expect("starting the Lambda Runtime API emulator");
        RuntimeApi { shared, server }
    }

    /// `127.0.0.1:PORT`: the value for `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.server.addr.to_string()
    }

    /// The init error the function posted, if any, as `(errorType, errorMessage)`.
    pub fn init_error(&self) -> Option<(String, String)> {
        self.shared.init_error.lock().unwrap().clone()
    }

    /// Registers the process serving this API (called by `LambdaProcess::spawn`): forgets an
    /// earlier init error and lets `invoke` fail early when the process dies.
    pub(crate) fn attach_process(&self, function_name: &str, exit_check: ExitCheck) {
        *self.shared.function_name.lock().unwrap() = function_name.to_owned();
        *self.shared.init_error.lock().unwrap() = None;
        *self.shared.exit_check.lock().unwrap() = Some(exit_check);
    }

    /// Queues `event` with a fresh request id and a deadline of now + `timeout`, and waits for
    /// the function's answer.
    ///
    /// Fails when the function posts an init error, when its process (see `LambdaProcess`)
    /// exits before answering, or after `timeout` + 30 s without an answer.
    pub async fn invoke(&self, event: Value, timeout: Duration) -> anyhow::Result<Invocation> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let deadline_ms = epoch_ms() + timeout.as_millis() as u64;
        let (answer_tx, mut answer_rx) = oneshot::channel();
        self.shared
            .waiting
            .lock()
            .unwrap()
            .insert(request_id.clone(), answer_tx);
        let queued = Event {
            request_id: request_id.clone(),
            deadline_ms,
            payload: event,
        };
        if self.shared.queue_tx.send(queued).is_err() {
            bail!("the Runtime API emulator is gone");
        }
        let give_up = Instant::now() + timeout + Duration::from_secs(30);
        let failure = loop {
            tokio::select! {
                answer = &mut answer_rx => match answer {
                    Ok(answer) => return Ok(answer),
                    Err(_) => break format!("request {request_id} was dropped by the emulator"),
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if let Some((error_type, error_message)) = self.init_error() {
                break format!("the function failed to initialise: {error_type}: {error_message}");
            }
            let exited = self
                .shared
                .exit_check
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|check| check());
            if let Some(how) = exited {
                // It may have answered just before exiting.
                if let Ok(answer) = answer_rx.try_recv() {
                    return Ok(answer);
                }
                break format!(
                    "the Lambda process exited before answering request {request_id}: {how}"
                );
            }
            if Instant::now() >= give_up {
                break format!(
                    "no answer to request {request_id} within its timeout ({timeout:?}) + 30 s"
                );
            }
        };
        self.shared.waiting.lock().unwrap().remove(&request_id);
        self.shared.abandoned.lock().unwrap().insert(request_id);
        bail!(failure)
    }
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    // Holding the lock while waiting serialises concurrent pollers; a poller that disconnects
    // drops the future, and `recv` is cancel safe, so no event is lost.
    let mut queue = shared.queue_rx.lock().await;
    let event = loop {
        let Some(event) = queue.recv().await else {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        };
        if !shared.abandoned.lock().unwrap().remove(&event.request_id) {
            break event;
        }
    };
    drop(queue);
    let function_name = shared.function_name.lock().unwrap().clone();
    let arn = format!("arn:aws:lambda:us-east-1:000000000000:function:{function_name}");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let trace = format!(
        "Root=1-{}-{};Parent={};Sampled=0",
        &id[..8],
        &id[8..],
        &id[..16]
    );
    let mut headers = HeaderMap::new();
    headers.insert("Lambda-Runtime-Aws-Request-Id", header(&event.request_id));
    headers.insert(
        "Lambda-Runtime-Deadline-Ms",
        HeaderValue::from(event.deadline_ms),
    );
    headers.insert("Lambda-Runtime-Invoked-Function-Arn", header(&arn));
    headers.insert("Lambda-Runtime-Trace-Id", header(&trace));
    headers.insert("Content-Type", HeaderValue::from_static("application/json"));
    (headers, event.payload.to_string()).into_response()
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

fn unknown_request(id: &str) -> Response {
    let body = json!({"errorType": "InvalidRequestID", "errorMessage": format!("unknown request id {id}")});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(answer) = shared.waiting.lock().unwrap().remove(&id) else {
        return unknown_request(&id);
    };
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let _ = answer.send(Invocation::Response(value));
    accepted()
}

/// `(errorType, errorMessage)` from an error body, falling back on the error-type header and the
/// raw body.
fn parse_error(headers: &HeaderMap, body: &[u8]) -> (String, String) {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let header_type = headers
        .get("Lambda-Runtime-Function-Error-Type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let error_type = parsed["errorType"]
        .as_str()
        .map(str::to_owned)
        .or(header_type)
        .unwrap_or_else(|| "Unknown".to_owned());
    let error_message = parsed["errorMessage"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    (error_type, error_message)
}

async fn error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(answer) = shared.waiting.lock().unwrap().remove(&id) else {
        return unknown_request(&id);
    };
    let (error_type, error_message) = parse_error(&headers, &body);
    let _ = answer.send(Invocation::Error {
        error_type,
        error_message,
    });
    accepted()
}

async fn init_error(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (error_type, error_message) = parse_error(&headers, &body);
    eprintln!("runtime api: init error: {error_type}: {error_message}");
    *shared.init_error.lock().unwrap() = Some((error_type, error_message));
    accepted()
}

async fn extension_register(State(shared): State<Arc<Shared>>) -> Response {
    let function_name = shared.function_name.lock().unwrap().clone();
    let body = json!({"functionName": function_name, "functionVersion": "$LATEST", "handler": "bootstrap"});
    let id = uuid::Uuid::new_v4().to_string();
    (
        [("Lambda-Extension-Identifier", header(&id))],
        axum::Json(body),
    )
        .into_response()
}
