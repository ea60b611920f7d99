//! The export: the query planned into `COPY (query) TO STDOUT`, run in a read-only
//! transaction, and streamed as CSV or NDJSON chunks, or as binary tuples for Parquet.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use tokio_postgres::types::ToSql;

use super::binary::{ResultColumn, TupleDecoder, tuple_length};
use super::error::{pg_error, sqlstate_kind};
use super::keyset::{self, Boundary, Cut, KeyColumn, KeyTracker, Keyset};
use super::params::{TextParam, find_placeholders, quote_ident};
use super::session::{CancelOnDrop, Canceller, ConnectionTask, Session};
use super::spec::param_text;
use crate::budget::MemoryBudget;
use crate::error::{Error, ErrorKind, Result};

/// Bytes gathered from COPY messages before they are handed on (one COPY message is one row).
const CHUNK: usize = 64 * 1024;
/// How often the stream logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Signature of binary COPY data.
const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// What the server renders the rows as. Its own type, so that this module does not depend on
/// the export job's format (`crate::Format` converts into it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// CSV with a header row, rendered by the server with `COPY (query) TO STDOUT (FORMAT
    /// csv, HEADER)`.
    Csv,
    /// One JSON object per line, rendered by the server with `row_to_json` and framed in
    /// binary COPY (`COPY (SELECT row_to_json(r.*) FROM (query) r) TO STDOUT (FORMAT
    /// binary)`), so no text-COPY escaping touches it.
    Ndjson,
    /// The query's own columns in binary COPY (`COPY (query) TO STDOUT (FORMAT binary)`), for
    /// Parquet: the stream yields whole tuples (`int16 fields`, then per field `int32
    /// length`, `-1` for NULL, and the value's bytes), without the file header and trailer;
    /// [`ExportStream::tuple_decoder`] decodes them.
    Binary,
}

impl CopyFormat {
    /// `csv`, `ndjson` or `binary`.
    pub fn name(self) -> &'static str {
        match self {
            CopyFormat::Csv => "csv",
            CopyFormat::Ndjson => "ndjson",
            CopyFormat::Binary => "binary",
        }
    }
}

/// Session settings of one export.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// `statement_timeout`; `None` leaves the server's setting.
    pub statement_timeout: Option<Duration>,
    /// `TimeZone`. Default `UTC`.
    pub timezone: String,
    /// The largest row accepted, in bytes (one COPY message: the CSV line, the row's JSON, or
    /// the binary tuple): a larger one ends the export with [`Error::Records`] naming the row.
    /// Default the record cap of the function's memory budget ([`MemoryBudget::record_cap`]:
    /// 16 MiB at 256 MB); the export job passes `tuning.max_record_mib` when set.
    pub max_row_bytes: usize,
    /// Prepare the query for its result columns before a CSV or NDJSON COPY, so that
    /// [`ExportStream::column_names`] has them (Parquet always does). Default false.
    pub describe: bool,
    /// A keyset export: the rows ordered by this key, after the last one written
    /// ([`keyset`](super::keyset)); [`ExportStream::want_boundary`] then finds where to stop.
    pub keyset: Option<Keyset>,
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            statement_timeout: None,
            timezone: "UTC".to_owned(),
            max_row_bytes: usize::try_from(MemoryBudget::from_env().record_cap())
                .unwrap_or(usize::MAX),
            describe: false,
            keyset: None,
        }
    }
}

/// Rows and bytes produced so far by an [`ExportStream`].
#[derive(Debug, Default)]
pub struct Progress {
    rows: AtomicU64,
    bytes: AtomicU64,
}

impl Progress {
    /// Rows rendered.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Bytes rendered (CSV or NDJSON, before compression); for binary tuples, the bytes of
    /// COPY data received.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The SQL of an export.
struct Plan {
    /// The `COPY` statement.
    copy: String,
    /// The query inside it (placeholders rewritten), which a binary export prepares for its
    /// result columns.
    body: String,
    /// The settings to bind before it runs.
    bound: Vec<(String, Option<String>)>,
    /// The byte offset of the query inside the statement (`None` when placeholders were
    /// rewritten, so positions in it are not the user's).
    offset: Option<usize>,
    /// A keyset export's key column.
    key: Option<KeyColumn>,
}

/// Prepares the SQL of an export: the query trimmed, parameters turned into bound settings,
/// wrapped in `COPY`.
async fn plan(
    session: &Session,
    query: &str,
    params: &[serde_json::Value],
    format: CopyFormat,
    keyset: Option<&Keyset>,
) -> Result<Plan> {
    let query = query
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let mut body = query.to_owned();
    let mut bound = Vec::new();
    let mut exact = true;
    if !params.is_empty() {
        let stmt = session
            .client
            .prepare(query)
            .await
            .map_err(|e| pg_error(&session.database, "query", &e, Some(0)))?;
        if stmt.params().len() != params.len() {
            return Err(Error::spec(format!(
                "source.postgres.params has {} values but the query uses {} parameters",
                params.len(),
                stmt.params().len()
            )));
        }
        let found = find_placeholders(query);
        for n in 1..=params.len() {
            if !found.iter().any(|p| p.number == n) {
                return Err(Error::spec(format!(
                    "source.postgres.query: parameter ${n} not found outside strings and comments"
                )));
            }
        }
        if let Some(p) = found.iter().find(|p| p.number > params.len()) {
            return Err(Error::spec(format!(
                "source.postgres.query: ${} has no value in params",
                p.number
            )));
        }
        let mut rewritten = String::with_capacity(query.len() + 64 * found.len());
        let mut last = 0;
        for p in &found {
            // `$0` never prepares, and every number was checked against `params` (whose
            // length is the statement's parameter count) above; an error all the same.
            let index = p.number.checked_sub(1);
            let (Some(ty), Some(value)) = (
                index.and_then(|i| stmt.params().get(i)),
                index.and_then(|i| params.get(i)),
            ) else {
                return Err(Error::spec(format!(
                    "source.postgres.query: ${} has no value in params",
                    p.number
                )));
            };
            // Placeholders start and end at ASCII bytes (`$`, digits), in order, so these
            // are character boundaries of `query`.
            rewritten.push_str(&query[last..p.start]);
            // Fixed text only: the setting name and the type the server inferred.
            match param_text(value) {
                Some(_) => rewritten.push_str(&format!(
                    "(pg_catalog.current_setting('sluice.p{}')::{}.{})",
                    p.number,
                    quote_ident(ty.schema()),
                    quote_ident(ty.name())
                )),
                None => rewritten.push_str(&format!(
                    "(NULL::{}.{})",
                    quote_ident(ty.schema()),
                    quote_ident(ty.name())
                )),
            }
            last = p.end;
        }
        rewritten.push_str(&query[last..]);
        body = rewritten;
        exact = false;
        for (i, value) in params.iter().enumerate() {
            if let Some(text) = param_text(value) {
                bound.push((format!("sluice.p{}", i + 1), Some(text)));
            }
        }
    }
    let mut key = None;
    let (prefix, suffix) = match keyset {
        Some(k) => {
            let columns = session
                .client
                .prepare(&body)
                .await
                .map_err(|e| pg_error(&session.database, "query", &e, exact.then_some(0)))?;
            let columns: Vec<ResultColumn> =
                columns.columns().iter().map(ResultColumn::from).collect();
            let column = keyset::key_column(&columns, &k.column)?;
            let parts = keyset::statement(format, k, &column);
            if let Some(after) = k.after.as_ref().filter(|_| !k.null_probe) {
                bound.push((keyset::AFTER_SETTING.to_owned(), Some(after.clone())));
            }
            key = Some(column);
            parts
        }
        None => {
            let (prefix, suffix) = match format {
                CopyFormat::Csv => ("COPY (\n", "\n) TO STDOUT (FORMAT csv, HEADER)"),
                CopyFormat::Ndjson => (
                    "COPY (SELECT pg_catalog.row_to_json(sluice_row.*) FROM (\n",
                    "\n) AS sluice_row) TO STDOUT (FORMAT binary)",
                ),
                CopyFormat::Binary => ("COPY (\n", "\n) TO STDOUT (FORMAT binary)"),
            };
            (prefix.to_owned(), suffix.to_owned())
        }
    };
    let offset = exact.then(|| prefix.chars().count());
    Ok(Plan {
        copy: format!("{prefix}{body}{suffix}"),
        body,
        bound,
        offset,
        key,
    })
}

/// The result columns of the query a binary export runs, mapped to its Parquet schema:
/// the query is prepared (not run) in the export's transaction, so an unsupported type is
/// refused before COPY starts.
async fn describe(session: &Session, plan: &Plan) -> Result<TupleDecoder> {
    let columns = result_columns(session, plan).await?;
    TupleDecoder::new(&session.database, &columns)
}

/// The result columns of the query of `plan`, from preparing it (not running it).
async fn result_columns(session: &Session, plan: &Plan) -> Result<Vec<ResultColumn>> {
    let statement = session
        .client
        .prepare(&plan.body)
        .await
        .map_err(|e| pg_error(&session.database, "query", &e, plan.offset.map(|_| 0)))?;
    Ok(statement.columns().iter().map(ResultColumn::from).collect())
}

/// Starts an export on `session`: a read-only transaction with `settings`, then `COPY`.
/// Errors before the first byte (a bad query, a missing table, a bad parameter, for
/// [`CopyFormat::Binary`] a column type Parquet output does not support) are returned here,
/// before anything is uploaded. `format` is a [`CopyFormat`] or anything that converts
/// into one (`crate::Format` does).
pub async fn export(
    session: Session,
    query: &str,
    params: &[serde_json::Value],
    format: impl Into<CopyFormat>,
    settings: &ExportSettings,
) -> Result<ExportStream> {
    let format = format.into();
    let database = session.database.clone();
    let client = session.client.clone();
    // From here until COMMIT, giving up (an error, the caller dropping this future) cancels
    // the statement on the server.
    let guard = CancelOnDrop(session.canceller.clone());
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .map_err(|e| pg_error(&database, "begin", &e, None))?;

    let plan = plan(&session, query, params, format, settings.keyset.as_ref()).await?;

    let timeout = settings
        .statement_timeout
        .map(|t| format!("{}ms", t.as_millis().max(1)))
        .unwrap_or_else(|| "0".to_owned());
    let mut values: Vec<(String, Option<String>)> = vec![
        ("TimeZone".into(), Some(settings.timezone.clone())),
        ("DateStyle".into(), Some("ISO, MDY".into())),
        ("IntervalStyle".into(), Some("postgres".into())),
        ("extra_float_digits".into(), Some("1".into())),
    ];
    if settings.statement_timeout.is_some() {
        values.push(("statement_timeout".into(), Some(timeout)));
    }
    values.extend(plan.bound.iter().cloned());
    let sql = format!(
        "SELECT {}",
        (0..values.len())
            .map(|i| format!(
                "pg_catalog.set_config(${}, ${}, true)",
                2 * i + 1,
                2 * i + 2
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let args: Vec<TextParam> = values
        .into_iter()
        .flat_map(|(name, value)| [TextParam(Some(name)), TextParam(value)])
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    client
        .query(&sql, &refs)
        .await
        .map_err(|e| pg_error(&database, "settings", &e, None))?;

    let decoder = match format {
        CopyFormat::Binary => Some(
            describe(&session, &plan)
                .await?
                .with_max_row_bytes(settings.max_row_bytes),
        ),
        CopyFormat::Csv | CopyFormat::Ndjson => None,
    };
    let column_names = match &decoder {
        Some(d) => Some(d.schema().columns.iter().map(|c| c.name.clone()).collect()),
        None if settings.describe => Some(
            result_columns(&session, &plan)
                .await?
                .into_iter()
                .map(|c| c.name)
                .collect(),
        ),
        None => None,
    };
    let copy = client
        .copy_out(&plan.copy)
        .await
        .map_err(|e| pg_error(&database, "query", &e, plan.offset))?;
    tracing::info!(%database, format = format.name(), "postgres COPY started");

    let progress = Arc::new(Progress::default());
    let keys = settings
        .keyset
        .as_ref()
        .filter(|k| !k.null_probe)
        .zip(plan.key.as_ref())
        .map(|(k, c)| KeyTracker::new(k, format, c));
    // Keyset NDJSON carries the key's text in a second field.
    let fields = match (&decoder, &keys) {
        (Some(d), _) => d.fields(),
        (None, Some(_)) => 2,
        (None, None) => 1,
    };
    Ok(ExportStream {
        copy: Box::pin(copy),
        format,
        fields,
        keys,
        decoder,
        column_names,
        buf: BytesMut::with_capacity(CHUNK),
        state: State::Streaming,
        boundary: None,
        // A keyset export that goes on after a key asks for no CSV header.
        header_seen: format == CopyFormat::Csv
            && settings
                .keyset
                .as_ref()
                .is_some_and(|k| k.after.is_some() || k.null_probe),
        trailer_seen: false,
        max_row_bytes: settings.max_row_bytes,
        progress,
        database,
        client: Some(client),
        task: Some(session.task),
        cancel: guard,
        started: std::time::Instant::now(),
        last_log: std::time::Instant::now(),
    })
}

enum State {
    Streaming,
    Closing(Pin<Box<dyn Future<Output = Result<()>> + Send>>),
    Done,
}

/// The rows of an export, as CSV or NDJSON chunks of about 64 KiB, or for
/// [`CopyFormat::Binary`] chunks of whole binary tuples.
///
/// The stream ends (`None`) only after the server's `CopyDone` and a successful `COMMIT`; every
/// failure before that is an `Err` with the
/// SQLSTATE. Dropping the stream closes the connection.
pub struct ExportStream {
    copy: Pin<Box<tokio_postgres::CopyOutStream>>,
    format: CopyFormat,
    /// Fields per binary tuple: 1 (the JSON) for NDJSON (2 with the key of a keyset export),
    /// the result's columns for binary.
    fields: usize,
    /// A keyset export's keys.
    keys: Option<KeyTracker>,
    /// The boundary handed out with the last chunk.
    boundary: Option<Boundary>,
    decoder: Option<TupleDecoder>,
    column_names: Option<Vec<String>>,
    buf: BytesMut,
    state: State,
    header_seen: bool,
    trailer_seen: bool,
    max_row_bytes: usize,
    progress: Arc<Progress>,
    database: String,
    client: Option<Arc<tokio_postgres::Client>>,
    task: Option<ConnectionTask>,
    cancel: CancelOnDrop,
    started: std::time::Instant,
    last_log: std::time::Instant,
}

impl fmt::Debug for ExportStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportStream")
            .field("database", &self.database)
            .field("format", &self.format)
            .field("rows", &self.progress.rows())
            .finish()
    }
}

impl ExportStream {
    /// Rows and bytes so far; shared, so it can be read after the stream is consumed.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// For [`CopyFormat::Binary`], the decoder of the tuples this stream yields (its schema is
    /// the query's result columns); `None` for CSV and NDJSON.
    pub fn tuple_decoder(&self) -> Option<&TupleDecoder> {
        self.decoder.as_ref()
    }

    /// The result's column names, in order: for [`CopyFormat::Binary`], and for CSV and
    /// NDJSON when [`ExportSettings::describe`] asked for them; else `None`.
    pub fn column_names(&self) -> Option<&[String]> {
        self.column_names.as_deref()
    }

    /// A keyset export: asks for a boundary where the key next changes. The chunk that ends
    /// there is the last before [`take_boundary`](Self::take_boundary) returns it; the rows
    /// after it stay in the stream. Does nothing for other exports.
    pub fn want_boundary(&mut self) {
        if let Some(keys) = &mut self.keys {
            keys.want_boundary();
        }
    }

    /// The boundary the last chunk ended at, once.
    pub fn take_boundary(&mut self) -> Option<Boundary> {
        self.boundary.take()
    }

    /// Cancels the statement on the server if the export gives up (await it before
    /// answering: a spawned cancel might not run before Lambda freezes the process).
    pub fn canceller(&self) -> Canceller {
        self.cancel.0.clone()
    }

    fn failure(&self, stage: String, message: String, sqlstate: Option<String>) -> Error {
        let kind = sqlstate
            .as_deref()
            .map(sqlstate_kind)
            .unwrap_or(ErrorKind::Retryable);
        Error::Postgres {
            database: self.database.clone(),
            stage,
            sqlstate,
            message,
            kind,
        }
    }

    /// The error for a row of `len` bytes over the cap: the row number (1-based, after the
    /// CSV header) and the byte offset where it starts in the rendered output.
    fn row_too_large(&self, len: usize) -> Error {
        let row = self.progress.rows().saturating_add(1);
        let what = if self.format == CopyFormat::Csv && !self.header_seen {
            "the CSV header row".to_owned()
        } else {
            format!("row {row}")
        };
        Error::Records {
            url: format!("postgres://{}", self.database),
            class: "row too large",
            offset: self.progress.bytes(),
            record: Some(row),
            message: format!(
                "{what} is {len} bytes, over the limit of {} bytes (tuning.max_record_mib; default a quarter of the memory budget's part buffers)",
                self.max_row_bytes
            ),
        }
    }

    fn stage(&self) -> String {
        format!(
            "stream after {} rows ({} bytes)",
            self.progress.rows(),
            self.progress.bytes()
        )
    }

    /// Appends one COPY message (one row; the header row for CSV) to the buffer. A message
    /// over [`ExportSettings::max_row_bytes`] is refused before it is copied: the server
    /// sends one message per row (binary COPY puts its file header in the first), so its
    /// length is the row's.
    fn absorb(&mut self, msg: Bytes) -> Result<()> {
        let received = msg.len() as u64;
        if msg.len()
            > self
                .max_row_bytes
                .saturating_add(BINARY_SIGNATURE.len() + 8)
        {
            return Err(self.row_too_large(msg.len()));
        }
        let before = self.buf.len();
        match self.format {
            CopyFormat::Csv => {
                let header = !self.header_seen;
                if !header && let Some(keys) = &mut self.keys {
                    let at = Cut {
                        buffered: before,
                        rows: self.progress.rows(),
                        bytes: self.progress.bytes(),
                    };
                    if let Err(m) = keys.csv_row(&msg, at) {
                        return Err(key_error(&self.database, keys.position(at), m));
                    }
                }
                self.buf.extend_from_slice(&msg);
                if header {
                    self.header_seen = true;
                } else {
                    self.progress.rows.fetch_add(1, Ordering::Relaxed);
                }
            }
            CopyFormat::Ndjson | CopyFormat::Binary => {
                let rows = self.absorb_binary(msg).map_err(|e| match e {
                    Absorb::Key(message, at) => key_error(&self.database, at, message),
                    Absorb::Malformed(what) => self.failure(
                        self.stage(),
                        format!("malformed binary COPY data: {what}"),
                        None,
                    ),
                })?;
                self.progress.rows.fetch_add(rows, Ordering::Relaxed);
            }
        }
        let bytes = match self.format {
            CopyFormat::Binary => received,
            // `absorb` only appends, so the buffer is at least as long as before.
            CopyFormat::Csv | CopyFormat::Ndjson => self.buf.len().saturating_sub(before) as u64,
        };
        self.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Binary COPY: `int16 fields`, then `int32 length, bytes` per field, per row, after a
    /// file header; `int16 -1` ends the data. Every tuple must have `self.fields` fields
    /// whose lengths stay inside the message.
    ///
    /// NDJSON (one `json` field): each row becomes one line; a raw CR or LF (only possible as
    /// insignificant whitespace inside a `json` value) becomes a space. Binary: each tuple is
    /// copied as it is.
    ///
    /// A keyset export's key is the NDJSON tuple's second field (its text), or the binary
    /// tuple's key column (its binary value). The row's [`Cut`] counts bytes as
    /// [`Progress::bytes`] does: NDJSON rendered before the row, or for binary the COPY data
    /// received before the tuple (this message's file header and earlier tuples included).
    fn absorb_binary(&mut self, mut msg: Bytes) -> std::result::Result<u64, Absorb> {
        let received = msg.len();
        if !self.header_seen {
            if msg.len() < BINARY_SIGNATURE.len() + 8 || !msg.starts_with(BINARY_SIGNATURE) {
                return Err("bad signature".into());
            }
            msg.advance(BINARY_SIGNATURE.len() + 4);
            // The length was checked above: 11 signature + 4 flags + 4 extension length.
            let ext = usize::try_from(msg.get_u32()).unwrap_or(usize::MAX);
            if msg.len() < ext {
                return Err("truncated header extension".into());
            }
            msg.advance(ext);
            self.header_seen = true;
        }
        let mut rows = 0;
        let start = self.buf.len();
        while msg.has_remaining() {
            if self.trailer_seen {
                return Err("data after the trailer".into());
            }
            let Some(len) = tuple_length(&msg, self.fields)? else {
                msg.advance(2);
                self.trailer_seen = true;
                continue;
            };
            // Where the tuple starts in this message (after the file header in the first).
            let offset = received - msg.len();
            let tuple = msg.split_to(len);
            if self.format == CopyFormat::Binary {
                if let Some(field) = self.keys.as_ref().and_then(KeyTracker::binary_field) {
                    let key = tuple_field(&tuple, field)?;
                    self.track_key(key, rows, offset)?;
                }
                self.buf.extend_from_slice(&tuple);
            } else {
                // `int16 fields`, then per field `int32 length` (-1 for NULL) and its bytes:
                // the JSON, and for a keyset export the key's text.
                let (json, key) = ndjson_fields(&tuple)?;
                if self.keys.is_some() {
                    self.track_key(key, rows, self.buf.len() - start)?;
                }
                if memchr::memchr2(b'\n', b'\r', json).is_some() {
                    self.buf.extend(
                        json.iter()
                            .map(|&c| if c == b'\n' || c == b'\r' { b' ' } else { c }),
                    );
                } else {
                    self.buf.extend_from_slice(json);
                }
                self.buf.extend_from_slice(b"\n");
            }
            rows += 1;
        }
        Ok(rows)
    }

    /// Hands a keyset export's key (`None`: NULL) of the row `rows` rows into the current
    /// message to the tracker; the row's output starts `bytes` bytes after what
    /// [`Progress::bytes`] counted before the message, and in the buffer at its end.
    fn track_key(
        &mut self,
        key: Option<&[u8]>,
        rows: u64,
        bytes: usize,
    ) -> std::result::Result<(), Absorb> {
        let Some(keys) = &mut self.keys else {
            return Ok(());
        };
        let at = Cut {
            buffered: self.buf.len(),
            rows: self.progress.rows() + rows,
            bytes: self.progress.bytes() + bytes as u64,
        };
        keys.row(key, at)
            .map_err(|m| Absorb::Key(m, keys.position(at)))
    }

    fn log_progress(&mut self, done: bool) {
        let now = std::time::Instant::now();
        if done || now.duration_since(self.last_log) >= PROGRESS_EVERY {
            self.last_log = now;
            let secs = now.duration_since(self.started).as_secs_f64().max(1e-9);
            tracing::info!(
                rows = self.progress.rows(),
                bytes = self.progress.bytes(),
                rows_per_s = (self.progress.rows() as f64 / secs) as u64,
                done,
                "export progress"
            );
        }
    }

    /// The chunk up to a boundary the keys found in the last message, if they found one.
    fn take_boundary_chunk(&mut self) -> Option<Poll<Option<Result<Bytes>>>> {
        let (at, boundary) = self.keys.as_mut()?.take_cut()?;
        self.boundary = Some(boundary);
        Some(Poll::Ready(Some(Ok(self.buf.split_to(at).freeze()))))
    }

    fn take_chunk(&mut self) -> Poll<Option<Result<Bytes>>> {
        Poll::Ready(Some(Ok(self.buf.split().freeze())))
    }
}

impl Stream for ExportStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Streaming => match this.copy.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(msg))) => {
                        if let Err(e) = this.absorb(msg) {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                        if let Some(chunk) = this.take_boundary_chunk() {
                            return chunk;
                        }
                        if this.buf.len() >= CHUNK {
                            this.log_progress(false);
                            return this.take_chunk();
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.state = State::Done;
                        let err = pg_error(&this.database, this.stage(), &e, None);
                        tracing::error!(error = %err, "postgres stream failed");
                        return Poll::Ready(Some(Err(err)));
                    }
                    Poll::Ready(None) => {
                        if this.format != CopyFormat::Csv && !this.trailer_seen {
                            this.state = State::Done;
                            let e = this.failure(
                                this.stage(),
                                "COPY ended without its trailer".into(),
                                None,
                            );
                            return Poll::Ready(Some(Err(e)));
                        }
                        // CopyDone: all rows were sent. COMMIT confirms the server finished
                        // the statement and the connection is sound before the stream may end.
                        let client = this.client.take();
                        let task = this.task.take();
                        let database = this.database.clone();
                        let canceller = this.cancel.0.clone();
                        this.state = State::Closing(Box::pin(async move {
                            let Some(client) = client else {
                                return Ok(());
                            };
                            client
                                .batch_execute("COMMIT")
                                .await
                                .map_err(|e| pg_error(&database, "commit", &e, None))?;
                            canceller.settle();
                            drop(client);
                            // The client is gone, so the connection says Terminate and ends.
                            if let Some(mut task) = task {
                                let _ =
                                    tokio::time::timeout(Duration::from_secs(2), &mut task.0).await;
                            }
                            Ok(())
                        }));
                        if !this.buf.is_empty() {
                            return this.take_chunk();
                        }
                    }
                    Poll::Pending => {
                        if !this.buf.is_empty() {
                            return this.take_chunk();
                        }
                        return Poll::Pending;
                    }
                },
                State::Closing(fut) => match fut.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => {
                        this.state = State::Done;
                        this.log_progress(true);
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Err(e)) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

/// Why a binary COPY message could not be taken.
enum Absorb {
    /// Not binary COPY data as expected.
    Malformed(&'static str),
    /// A keyset export's key refused (NULL), at the row's number and offset.
    Key(String, (u64, u64)),
}

impl From<&'static str> for Absorb {
    fn from(what: &'static str) -> Self {
        Absorb::Malformed(what)
    }
}

/// The JSON of an NDJSON tuple and, when it has a second field, that field (a keyset
/// export's key; `None` for NULL). A NULL JSON is malformed: `row_to_json` never gives one.
fn ndjson_fields(tuple: &[u8]) -> std::result::Result<(&[u8], Option<&[u8]>), Absorb> {
    let mut rest = tuple.get(2..).ok_or("truncated tuple")?;
    let json = take_field(&mut rest)?.ok_or("a NULL row")?;
    let key = if rest.is_empty() {
        None
    } else {
        take_field(&mut rest)?
    };
    Ok((json, key))
}

/// Field `index` (0-based) of a binary tuple (`None` for NULL). The tuple's lengths were
/// checked ([`tuple_length`]); a tuple with fewer fields is malformed all the same.
fn tuple_field(tuple: &[u8], index: usize) -> std::result::Result<Option<&[u8]>, Absorb> {
    let mut rest = tuple.get(2..).ok_or("truncated tuple")?;
    for _ in 0..index {
        take_field(&mut rest)?;
    }
    if rest.is_empty() {
        return Err("no key field in the tuple".into());
    }
    Ok(take_field(&mut rest)?)
}

/// One field of a tuple: `int32 length` (-1 for NULL) and its bytes.
fn take_field<'a>(rest: &mut &'a [u8]) -> std::result::Result<Option<&'a [u8]>, &'static str> {
    let (len, tail) = rest.split_first_chunk::<4>().ok_or("truncated field")?;
    let len = i32::from_be_bytes(*len);
    if len < 0 {
        *rest = tail;
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| "bad field length")?;
    if tail.len() < len {
        return Err("truncated field");
    }
    let (value, tail) = tail.split_at(len);
    *rest = tail;
    Ok(Some(value))
}

/// A keyset export's refused key, as a records error at the row (its number and offset).
fn key_error(database: &str, (row, offset): (u64, u64), message: String) -> Error {
    Error::Records {
        url: format!("postgres://{database}"),
        class: "bad resume key",
        offset,
        record: Some(row),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary tuple of `fields` (`None`: NULL).
    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out
    }

    #[test]
    fn a_binary_tuples_key_field_is_found_by_its_index() {
        let t = tuple(&[Some(b"abc"), None, Some(&7i32.to_be_bytes())]);
        assert_eq!(tuple_field(&t, 0).ok(), Some(Some(&b"abc"[..])));
        assert_eq!(tuple_field(&t, 1).ok(), Some(None));
        assert_eq!(tuple_field(&t, 2).ok(), Some(Some(&7i32.to_be_bytes()[..])));
        assert!(matches!(tuple_field(&t, 3), Err(Absorb::Malformed(_))));
        assert!(matches!(tuple_field(&t[..1], 0), Err(Absorb::Malformed(_))));
        assert!(matches!(tuple_field(&t[..8], 0), Err(Absorb::Malformed(_))));
    }
}
