//! The row loop of a transform: the input read as CSV or NDJSON, each row typed by the
//! schema, then handed to the [`RowSink`] (steps, output, quarantine), on one thread or
//! several ([`parallel`](super::parallel)).

use std::borrow::Cow;
use std::sync::Arc;

use futures::StreamExt;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use tokio::io::AsyncRead;
use tokio_util::codec::FramedRead;

use super::config::ColumnSpec;
use super::continuing::{Looks, RowCheckpoints};
use super::output::RowSink;
use super::parallel;
use super::quarantine::Quarantine;
use super::reader::{CsvReader, IoErrorMap, Position, ReadPoint};
use super::steps::{self, Layout};
use super::value::{ColType, Parser, Value, cap_string};
use super::{Counts, InputFormat, Pipeline};
use crate::checkpoint::Continue;
use crate::codec::json_records::RecordsError;
use crate::codec::ndjson::NdjsonDecoder;
use crate::columnar::RecordOutput;
use crate::error::{Error, Result};

/// Bytes read from the decoded input at a time.
const READ_CHUNK: usize = 256 * 1024;

/// How a column of the input becomes a value.
pub(super) struct ColPlan {
    name: String,
    /// JSON input: the object keys to the value (the name, or the column's `path`).
    keys: Vec<String>,
    parser: Parser,
    nullable: bool,
    required: bool,
    null_values: Vec<String>,
    /// Declared in the schema (always checked) or used by a step.
    read: bool,
}

impl ColPlan {
    fn empty(&self) -> std::result::Result<Value, String> {
        if self.required {
            return Err("required value is empty".into());
        }
        if self.nullable {
            return Ok(Value::Null);
        }
        if self.parser.ty() == ColType::String {
            return Ok(Value::Str(String::new()));
        }
        Err(format!(
            "empty value in a {} column that is not nullable",
            self.parser.ty().name()
        ))
    }

    pub(super) fn text(&self, text: &str) -> std::result::Result<Value, String> {
        if text.is_empty() || self.null_values.iter().any(|n| n == text) {
            return self.empty();
        }
        self.parser.parse(text)
    }

    /// The value of one field of an NDJSON row, from its JSON text: only scalars and small
    /// objects or arrays are parsed, so a huge nested value costs no more than its text.
    fn json(&self, v: Option<&RawValue>) -> std::result::Result<Value, String> {
        let Some(raw) = v else {
            return self.empty();
        };
        let text = raw.get();
        let bad = |e: serde_json::Error| format!("invalid JSON value: {e}");
        match text.as_bytes().first() {
            None | Some(b'n') => self.empty(),
            Some(b'"') => self.text(&serde_json::from_str::<String>(text).map_err(bad)?),
            Some(b'{' | b'[') if text.len() > NESTED_PARSED => {
                let mut compact = compact_json(text);
                if self.parser.ty() == ColType::String {
                    return Ok(Value::Str(compact));
                }
                cap_string(&mut compact, 64);
                let ty = self.parser.ty();
                Err(format!(
                    "{compact} is not a{} {}",
                    if ty == ColType::Int { "n" } else { "" },
                    ty.name()
                ))
            }
            Some(_) => {
                let v: serde_json::Value = serde_json::from_str(text).map_err(bad)?;
                self.parser.from_json(&v)
            }
        }
    }
}

/// Objects and arrays in an NDJSON field up to this size are parsed and rendered back as
/// compact JSON (keys sorted); larger ones are kept as read, whitespace removed, without
/// building them in memory.
const NESTED_PARSED: usize = 64 * 1024;

/// `json` (valid JSON) without its insignificant whitespace.
fn compact_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        out.push(c);
    }
    out
}

/// The fields of one NDJSON object that the schema names, as JSON text borrowed from the
/// line; every other field is skipped without being built (`IgnoredAny`). A name given twice
/// keeps its last value, as a parsed map would.
struct Wanted<'p> {
    plans: &'p [ColPlan],
    /// Report the first key the schema does not name (an inferred schema, where such a key
    /// would otherwise be lost).
    strict: bool,
}

/// The fields an object holds for each plan, and the first key no plan names (when strict).
type Found<'de> = (Vec<Option<&'de RawValue>>, Option<String>);

impl<'de, 'p> DeserializeSeed<'de> for Wanted<'p> {
    type Value = Found<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, 'p> Visitor<'de> for Wanted<'p> {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut found = vec![None; self.plans.len()];
        let mut unknown = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let first = self.plans.iter().position(|p| p.keys[0] == *key.0);
            match first {
                Some(i) => {
                    let value = map.next_value::<&'de RawValue>()?;
                    // Several columns may read into the same top-level object.
                    for (j, p) in self.plans.iter().enumerate().skip(i) {
                        if p.keys[0] == *key.0 {
                            found[j] = Some(value);
                        }
                    }
                }
                None if self.strict && unknown.is_none() => {
                    // A key whose value is null carries nothing a column would lose.
                    let value = map.next_value::<&'de RawValue>()?;
                    if value.get() != "null" {
                        unknown = Some(key.0.into_owned());
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((found, unknown))
    }
}

/// A key of an NDJSON object: borrowed from the line unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Types JSON records (objects) against declared columns, as the transform types NDJSON
/// input: `ingest-http` uses it for Parquet output. Keys the columns do not name are skipped
/// without being built, or, [`strict`](Self::strict), make the record bad.
#[derive(Debug)]
pub struct RecordTyper {
    plans: Vec<ColPlan>,
    strict: bool,
}

impl std::fmt::Debug for ColPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColPlan")
            .field("name", &self.name)
            .field("type", &self.parser.ty())
            .finish()
    }
}

impl RecordTyper {
    /// A typer of `columns` (each read whether or not a step uses it).
    pub fn new(columns: &[ColumnSpec]) -> Self {
        RecordTyper {
            plans: columns.iter().map(|c| ColPlan::of(c, &c.name)).collect(),
            strict: false,
        }
    }

    /// Makes a key that no column names an error: the record is bad rather than partly
    /// lost.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Types one record into `row` (cleared first): one value per column, in order.
    pub fn type_record(
        &self,
        json: &[u8],
        row: &mut Vec<Value>,
    ) -> std::result::Result<(), steps::RowError> {
        row.clear();
        type_object(&self.plans, self.strict, json, row)
    }

    /// Names and types of the columns.
    pub fn layout(&self) -> Layout {
        self.plans
            .iter()
            .map(|p| (p.name.clone(), p.parser.ty()))
            .collect()
    }
}

impl ColPlan {
    fn of(c: &ColumnSpec, name: &str) -> Self {
        ColPlan {
            name: name.to_owned(),
            // Checked by `validate_columns`: a bad path never gets here.
            keys: c.keys().unwrap_or_else(|_| vec![name.to_owned()]),
            parser: c.parser(),
            nullable: c.nullable,
            required: c.required,
            null_values: c.null_values.clone(),
            read: true,
        }
    }
}

fn plans(pipeline: &Pipeline, names: &[String]) -> Vec<ColPlan> {
    names
        .iter()
        .map(
            |name| match pipeline.input.schema.iter().find(|c| &c.name == name) {
                Some(c) => ColPlan::of(c, name),
                None => ColPlan {
                    name: name.clone(),
                    keys: vec![name.clone()],
                    parser: Parser::new(ColType::String, None),
                    nullable: false,
                    required: false,
                    null_values: Vec::new(),
                    read: false,
                },
            },
        )
        .collect()
}

/// One object's rows: where they come from and how they are read.
pub(super) struct RowJob<'a> {
    pub pipeline: &'a Pipeline,
    /// `s3://bucket/key`, for messages.
    pub source: &'a str,
    /// The largest record, in bytes.
    pub cap: usize,
    /// The enrich step's HTTP client.
    pub http: &'a reqwest::Client,
    /// When the job gives up (the Lambda deadline minus the margin): bounds the enrich
    /// step's requests and retry waits.
    pub deadline: Option<tokio::time::Instant>,
    /// The invocation's counters: records in, out and quarantined, added in batches.
    pub progress: Option<Arc<crate::telemetry::Progress>>,
}

/// Where one object's rows go.
pub(super) struct RowOut<'a, 's> {
    pub output: &'a mut RecordOutput,
    /// A partitioned output (then `output` is spent).
    pub partitioned: Option<&'a mut super::partitioned::PartitionedRows>,
    pub quarantine: &'a mut Quarantine,
    pub counts: &'a mut Counts,
    /// Decoded source bytes read.
    pub decoded: &'a mut u64,
    /// A transform that may continue in another invocation: its checkpoints, and where its
    /// rows resume.
    pub saver: Option<&'a mut RowCheckpoints<'s>>,
}

/// How the rows of one invocation ended.
pub(super) enum Rows {
    /// At the end of the input.
    Ended,
    /// At a boundary, the output and quarantine suspended into a checkpoint: the event
    /// that continues.
    Stopped(Continue),
}

impl RowJob<'_> {
    /// Reads, types, transforms and writes every row. The caller finishes the output and the
    /// quarantine when this returns Ok, and aborts the output otherwise.
    pub async fn run(
        &self,
        decoded: Box<dyn AsyncRead + Send + Unpin>,
        map_io: IoErrorMap,
        out: RowOut<'_, '_>,
    ) -> Result<Rows> {
        match self.pipeline.input.format {
            InputFormat::Csv => self.csv(decoded, map_io, out).await,
            InputFormat::Ndjson => self.ndjson(decoded, map_io, out).await,
        }
    }

    async fn csv(
        &self,
        decoded: Box<dyn AsyncRead + Send + Unpin>,
        map_io: IoErrorMap,
        out: RowOut<'_, '_>,
    ) -> Result<Rows> {
        let (pipeline, source, cap) = (self.pipeline, self.source, self.cap);
        let RowOut {
            output,
            partitioned,
            quarantine,
            counts,
            decoded: decoded_bytes,
            mut saver,
        } = out;
        let mut row: Vec<Value> = Vec::new();
        let mut reader = CsvReader::new(
            decoded,
            source.to_owned(),
            map_io,
            pipeline.input.delimiter.map_or(b',', |c| c as u8),
            pipeline.input.quote.map_or(b'"', |c| c as u8),
            cap,
        );
        let resumed = saver.as_ref().and_then(|s| s.resumed);
        let names = match (resumed, saver.as_ref().and_then(|s| s.base.header.clone())) {
            (Some(at), Some(names)) => {
                reader = reader.starting_at(at);
                names
            }
            (Some(_), None) => {
                return Err(Error::Internal {
                    message: format!("{source}: a CSV checkpoint without the header's names"),
                });
            }
            (None, _) => header(&mut reader, source).await?,
        };
        if let Some(s) = saver.as_deref_mut() {
            s.base.header = Some(names.clone());
        }
        for c in &pipeline.input.schema {
            if !names.contains(&c.name) {
                return Err(Error::Records {
                    url: source.to_owned(),
                    class: "missing column",
                    offset: 0,
                    record: Some(1),
                    message: format!(
                        "column {:?} of input.schema is not in the header {names:?}",
                        c.name
                    ),
                });
            }
        }
        let mut plans = plans(pipeline, &names);
        let layout: Layout = plans
            .iter()
            .map(|p| (p.name.clone(), p.parser.ty()))
            .collect();
        let program = steps::compile(&pipeline.steps, &layout, false)
            .map_err(|e| Error::spec(format!("{source}: {e}")))?;
        for (p, needed) in plans.iter_mut().zip(program.needed()) {
            p.read |= *needed;
        }
        let mut sink = RowSink::new(program, self, output, partitioned, quarantine, counts);
        sink.start(resumed.is_some())?;
        if let Some(s) = saver.as_deref() {
            sink.set_first_bad(s.first_bad_before.clone());
        }
        let workers = pipeline.workers.unwrap_or(1);
        if workers > 1 && sink.program.enrich().is_none() && !sink.is_partitioned() {
            let shared = Arc::new(parallel::Shared {
                plans,
                program: sink.program.clone(),
                format: pipeline.output.format,
                raw_cap: pipeline.quarantine.max_raw_bytes,
            });
            let stopper = saver.as_ref().map(|s| s.stopper.clone());
            while let Some((at, time_up)) = parallel::run(
                &mut reader,
                shared.clone(),
                workers,
                &mut sink,
                stopper.as_ref(),
            )
            .await?
            {
                if let Some(next) = stop_at(saver.as_deref_mut(), &mut sink, at, time_up).await? {
                    *decoded_bytes = at.offset;
                    return Ok(Rows::Stopped(next));
                }
            }
            *decoded_bytes = reader.offset();
            sink.end(reader.offset()).await?;
            return Ok(Rows::Ended);
        }
        let ncols = plans.len();
        let mut looks = Looks::default();
        while let Some(rec) = reader.next().await? {
            crate::fault::point("transform.row");
            row.clear();
            let typed = if rec.len() != ncols {
                Err(steps::RowError {
                    column: None,
                    reason: format!("ragged row: {} fields, the header has {ncols}", rec.len()),
                })
            } else {
                type_csv(&plans, |i| rec.field(i), &mut row)
            };
            let (pos, raw) = (rec.pos, rec.raw);
            sink.row(&mut row, typed, pos, raw).await?;
            if saver.is_some() && looks.due(reader.offset()) {
                if let Some(time_up) = saver.as_ref().and_then(|s| s.stopper.wanted()) {
                    let at = reader.point();
                    if let Some(next) =
                        stop_at(saver.as_deref_mut(), &mut sink, at, time_up).await?
                    {
                        *decoded_bytes = at.offset;
                        return Ok(Rows::Stopped(next));
                    }
                }
            }
        }
        *decoded_bytes = reader.offset();
        sink.end(reader.offset()).await?;
        Ok(Rows::Ended)
    }

    async fn ndjson(
        &self,
        decoded: Box<dyn AsyncRead + Send + Unpin>,
        map_io: IoErrorMap,
        out: RowOut<'_, '_>,
    ) -> Result<Rows> {
        let (pipeline, source) = (self.pipeline, self.source);
        let names: Vec<String> = pipeline
            .input
            .schema
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let plans = plans(pipeline, &names);
        let program = steps::compile(&pipeline.steps, &pipeline.schema_layout(), false)?;
        let RowOut {
            output,
            partitioned,
            quarantine,
            counts,
            decoded: decoded_bytes,
            mut saver,
        } = out;
        let mut sink = RowSink::new(program, self, output, partitioned, quarantine, counts);
        let resumed = saver.as_ref().and_then(|s| s.resumed);
        sink.start(resumed.is_some())?;
        if let Some(s) = saver.as_deref() {
            sink.set_first_bad(s.first_bad_before.clone());
        }
        // A line that is not a JSON object is a bad row (quarantined), so the framer does not
        // check the JSON itself.
        let mut decoder = NdjsonDecoder::new(self.cap).unchecked();
        if let Some(at) = resumed {
            decoder = decoder.starting_at(at.offset, at.lines, at.records);
        }
        let mut lines = FramedRead::with_capacity(decoded, decoder, READ_CHUNK);
        let mut row: Vec<Value> = Vec::new();
        let mut looks = Looks::default();
        while let Some(line) = lines.next().await {
            let at = lines.decoder().consumed();
            let line = line.map_err(|e| match RecordsError::find(&e) {
                Some(r) => Error::Records {
                    url: source.to_owned(),
                    class: r.class,
                    offset: r.offset,
                    record: r.record,
                    message: r.message.clone(),
                },
                None => map_io(e, at),
            })?;
            crate::fault::point("transform.row");
            let last = lines.decoder().last();
            let pos = Position {
                line: last.line,
                offset: last.offset,
                record: last.record,
            };
            if lines.decoder().consumed() - last.offset == line.len() as u64 {
                // The last line, with no line ending: cut short if its JSON is.
                cut_short(source, pos, &line)?;
            }
            row.clear();
            let typed = type_json(&plans, &line, &mut row);
            sink.row(&mut row, typed, pos, &line).await?;
            if saver.is_some() && looks.due(lines.decoder().consumed()) {
                if let Some(time_up) = saver.as_ref().and_then(|s| s.stopper.wanted()) {
                    let (read, records) = lines.decoder().read();
                    let at = ReadPoint {
                        offset: lines.decoder().consumed(),
                        lines: read,
                        records,
                    };
                    if let Some(next) =
                        stop_at(saver.as_deref_mut(), &mut sink, at, time_up).await?
                    {
                        *decoded_bytes = at.offset;
                        return Ok(Rows::Stopped(next));
                    }
                }
            }
        }
        let end = lines.decoder().consumed();
        *decoded_bytes = end;
        sink.end(end).await?;
        Ok(Rows::Ended)
    }
}

/// The names of a CSV header, the first record of `reader` (a byte order mark dropped).
async fn header<R: AsyncRead + Unpin>(
    reader: &mut CsvReader<R>,
    source: &str,
) -> Result<Vec<String>> {
    let Some(header) = reader.next().await? else {
        return Err(Error::Records {
            url: source.to_owned(),
            class: "no header",
            offset: 0,
            record: None,
            message: "the CSV input is empty (a header row is required)".into(),
        });
    };
    let mut names = Vec::with_capacity(header.len());
    for i in 0..header.len() {
        let name = std::str::from_utf8(header.field(i)).map_err(|e| Error::Records {
            url: source.to_owned(),
            class: "invalid UTF-8",
            offset: 0,
            record: Some(1),
            message: format!("header field {}: {e}", i + 1),
        })?;
        let name = if i == 0 {
            name.trim_start_matches('\u{feff}')
        } else {
            name
        };
        names.push(name.to_owned());
    }
    Ok(names)
}

/// A boundary at `at`: a checkpoint, and the event that continues when the time is up.
async fn stop_at(
    saver: Option<&mut RowCheckpoints<'_>>,
    sink: &mut RowSink<'_>,
    at: ReadPoint,
    time_up: bool,
) -> Result<Option<Continue>> {
    match saver {
        Some(saver) => saver.boundary(sink, at, time_up).await,
        None => Err(Error::Internal {
            message: "the rows stopped for a checkpoint with nowhere to save it".into(),
        }),
    }
}

/// Fails when `line`, the last of the input and without a line ending, ends inside a JSON
/// value: the input was truncated, and the run must not complete as if it were whole. A
/// last line that is complete but not an object (or not JSON at all) is a bad row like any
/// other.
fn cut_short(source: &str, pos: Position, line: &[u8]) -> Result<()> {
    match serde_json::from_slice::<IgnoredAny>(line) {
        Err(e) if e.classify() == serde_json::error::Category::Eof => Err(Error::Records {
            url: source.to_owned(),
            class: "truncated input",
            offset: pos.offset,
            record: Some(pos.record),
            message: format!(
                "line {}: the last line has no line ending and its JSON is cut short ({e}): \
                 the input was truncated",
                pos.line
            ),
        }),
        _ => Ok(()),
    }
}

pub(super) fn type_csv<'a>(
    plans: &[ColPlan],
    field: impl Fn(usize) -> &'a [u8],
    row: &mut Vec<Value>,
) -> std::result::Result<(), steps::RowError> {
    for (i, plan) in plans.iter().enumerate() {
        if !plan.read {
            row.push(Value::Null);
            continue;
        }
        let bytes = field(i);
        let text = std::str::from_utf8(bytes).map_err(|e| steps::RowError {
            column: Some(plan.name.clone()),
            reason: format!("invalid UTF-8 at byte {} of the field", e.valid_up_to()),
        })?;
        let v = plan.text(text).map_err(|reason| steps::RowError {
            column: Some(plan.name.clone()),
            reason,
        })?;
        row.push(v);
    }
    Ok(())
}

fn type_json(
    plans: &[ColPlan],
    raw: &[u8],
    row: &mut Vec<Value>,
) -> std::result::Result<(), steps::RowError> {
    type_object(plans, false, raw, row)
}

fn type_object(
    plans: &[ColPlan],
    strict: bool,
    raw: &[u8],
    row: &mut Vec<Value>,
) -> std::result::Result<(), steps::RowError> {
    let not_object = |e: serde_json::Error| steps::RowError {
        column: None,
        reason: format!("not a JSON object: {e}"),
    };
    let mut de = serde_json::Deserializer::from_slice(raw);
    let (fields, unknown) = Wanted { plans, strict }
        .deserialize(&mut de)
        .and_then(|f| de.end().map(|()| f))
        .map_err(not_object)?;
    if let Some(key) = unknown {
        let mut key = key;
        cap_string(&mut key, 64);
        return Err(steps::RowError {
            column: Some(key),
            reason: "the key is not in the inferred schema (its value would be lost)".into(),
        });
    }
    for (plan, field) in plans.iter().zip(fields) {
        let field = match (field, plan.keys.len()) {
            (Some(raw), n) if n > 1 => descend(raw, &plan.keys[1..]),
            (field, _) => field,
        };
        let v = plan.json(field).map_err(|reason| steps::RowError {
            column: Some(plan.name.clone()),
            reason,
        })?;
        row.push(v);
    }
    Ok(())
}

/// The value at `keys` under `raw`, or `None` when a step is missing or not an object.
fn descend<'a>(mut raw: &'a RawValue, keys: &[String]) -> Option<&'a RawValue> {
    for key in keys {
        if !raw.get().starts_with('{') {
            return None;
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        raw = de.deserialize_map(Member { key }).ok()??;
    }
    Some(raw)
}

/// One member of a JSON object, borrowed; the others skipped without being built.
struct Member<'k> {
    key: &'k str,
}

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if *key.0 == *self.key {
                // The last of a repeated key wins, as for top-level keys.
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str, ty: ColType, nullable: bool) -> ColPlan {
        ColPlan {
            name: name.into(),
            keys: vec![name.into()],
            parser: Parser::new(ty, None),
            nullable,
            required: false,
            null_values: vec!["NA".into()],
            read: true,
        }
    }

    fn typed(plans: &[ColPlan], line: &str) -> std::result::Result<Vec<Value>, steps::RowError> {
        let mut row = Vec::new();
        type_json(plans, line.as_bytes(), &mut row).map(|()| row)
    }

    /// The schema's fields are read as a parsed object would give them: strings parsed
    /// (escapes, null values), numbers and booleans taken, a nested value as compact JSON
    /// text with sorted keys, the last of a repeated key, the rest skipped.
    #[test]
    fn ndjson_fields_are_typed_as_from_a_parsed_object() {
        let plans = [
            plan("id", ColType::Int, false),
            plan("price", ColType::Float, true),
            plan("tag", ColType::String, true),
            plan("meta", ColType::String, true),
            plan("ok", ColType::Bool, true),
        ];
        let row = typed(
            &plans,
            r#"{"skip": {"deep": [1, {"x": "}"}]}, "id": "7", "price": 2.5, "tag": "a\"\u00e9",
                "meta": {"b": [1, 2.50], "a": "x y"}, "ok": true, "ok": false}"#,
        )
        .unwrap();
        assert_eq!(
            row,
            [
                Value::Int(7),
                Value::Float(2.5),
                Value::Str("a\"é".into()),
                Value::Str(r#"{"a":"x y","b":[1,2.5]}"#.into()),
                Value::Bool(false),
            ]
        );
        let row = typed(&plans, r#"{"id": 1, "price": null, "tag": "NA"}"#).unwrap();
        assert_eq!(row[1..4], [Value::Null, Value::Null, Value::Null]);
        let e = typed(&plans, r#"{"id": 1.5}"#).unwrap_err();
        assert_eq!(
            (e.column.as_deref(), e.reason.as_str()),
            (Some("id"), "1.5 is not an int")
        );
        let e = typed(&plans, r#"{"id": [1, 2]}"#).unwrap_err();
        assert_eq!(e.reason, "[1,2] is not an int");
        for bad in ["[1, 2]", r#"{"id": 1} x"#, r#"{"id": 1"#, "7"] {
            let e = typed(&plans, bad).unwrap_err();
            assert!(
                e.column.is_none() && e.reason.starts_with("not a JSON object"),
                "{bad}: {e:?}"
            );
        }
    }

    /// A line of millions of small numbers: those outside the schema are skipped, and a
    /// large nested value in a string column is its text, without a tree of it in memory.
    #[test]
    fn a_huge_ndjson_line_is_typed_without_building_it() {
        let numbers = "1,".repeat(4 << 20);
        let line = format!(r#"{{"big": [{numbers}0], "id": 3, "arr": [ {numbers} 0 ]}}"#);
        let plans = [
            plan("id", ColType::Int, false),
            plan("arr", ColType::String, false),
        ];
        let row = typed(&plans, &line).unwrap();
        assert_eq!(row[0], Value::Int(3));
        let Value::Str(arr) = &row[1] else { panic!() };
        assert_eq!(arr.len(), numbers.len() + 3);
        assert!(arr.starts_with("[1,1,") && arr.ends_with("1,0]"));
        assert_eq!(
            compact_json(r#"{ "a b" : "c\" d" , "e":[ 1 ] }"#),
            r#"{"a b":"c\" d","e":[1]}"#
        );
    }

    /// A last line without a line ending whose JSON is cut short fails the run as truncated
    /// input, naming the line; a complete last line, object or not, does not.
    #[test]
    fn a_cut_off_last_ndjson_line_is_truncated_input() {
        let pos = Position {
            line: 3,
            offset: 20,
            record: 2,
        };
        let e = cut_short("s3://b/k", pos, br#"{"id": 1, "tag": "ab"#).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Upstream);
        let m = e.to_string();
        assert!(
            m.contains("s3://b/k: truncated input at byte 20 (record 2): line 3"),
            "{m}"
        );
        assert!(cut_short("s3://b/k", pos, br#"{"id": 1}"#).is_ok());
        assert!(cut_short("s3://b/k", pos, b"[1, 2]").is_ok());
        assert!(cut_short("s3://b/k", pos, b"not json").is_ok());
    }

    #[test]
    fn a_strict_typer_refuses_a_key_outside_the_schema_unless_it_is_null() {
        let columns: Vec<ColumnSpec> = serde_json::from_str(
            r#"[{"name": "id", "type": "int"}, {"name": "at", "type": "timestamp", "nullable": true}]"#,
        )
        .unwrap();
        let lax = RecordTyper::new(&columns);
        let strict = RecordTyper::new(&columns).strict();
        let mut row = Vec::new();
        lax.type_record(br#"{"id": 1, "extra": [1, 2]}"#, &mut row)
            .unwrap();
        assert_eq!(row, vec![Value::Int(1), Value::Null]);
        strict
            .type_record(br#"{"id": 2, "extra": null}"#, &mut row)
            .unwrap();
        assert_eq!(row, vec![Value::Int(2), Value::Null]);
        let e = strict
            .type_record(br#"{"id": 3, "extra": {"a": 1}}"#, &mut row)
            .unwrap_err();
        assert_eq!(e.column.as_deref(), Some("extra"));
        assert!(
            e.reason.contains("not in the inferred schema"),
            "{}",
            e.reason
        );
        let e = strict.type_record(b"[1]", &mut row).unwrap_err();
        assert!(e.reason.contains("not a JSON object"), "{}", e.reason);
        assert_eq!(
            lax.layout(),
            vec![
                ("id".to_owned(), ColType::Int),
                ("at".to_owned(), ColType::Timestamp)
            ]
        );
    }

    #[test]
    fn paths_read_nested_fields_and_a_missing_step_is_a_missing_value() {
        let columns: Vec<ColumnSpec> = serde_json::from_str(
            r#"[{"name": "id", "type": "int"},
                {"name": "city", "path": "$.customer.address.city", "nullable": true},
                {"name": "vip", "type": "bool", "path": "$.customer.vip", "nullable": true},
                {"name": "odd key", "type": "int", "path": "$['a b'].c", "nullable": true}]"#,
        )
        .unwrap();
        crate::transform::config::validate_columns("schema", &columns).unwrap();
        let typer = RecordTyper::new(&columns).strict();
        let mut row = Vec::new();
        typer
            .type_record(
                br#"{"id": 1, "customer": {"vip": true, "address": {"zip": "07030", "city": "Hoboken"}}, "a b": {"c": 7}}"#,
                &mut row,
            )
            .unwrap();
        assert_eq!(
            row,
            vec![
                Value::Int(1),
                Value::Str("Hoboken".into()),
                Value::Bool(true),
                Value::Int(7)
            ]
        );
        typer
            .type_record(br#"{"id": 2, "customer": "n/a"}"#, &mut row)
            .unwrap();
        assert_eq!(
            row,
            vec![Value::Int(2), Value::Null, Value::Null, Value::Null]
        );
        let e = typer
            .type_record(br#"{"id": 3, "customer": {"vip": "maybe"}}"#, &mut row)
            .unwrap_err();
        assert_eq!(e.column.as_deref(), Some("vip"));
        let bad: Vec<ColumnSpec> = serde_json::from_str(r#"[{"name": "x", "path": "$"}]"#).unwrap();
        let e = crate::transform::config::validate_columns("schema", &bad).unwrap_err();
        assert!(e.to_string().contains("schema[0] (\"x\").path"), "{e}");
    }
}
