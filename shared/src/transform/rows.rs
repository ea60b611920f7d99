//! The row loop of a transform: the input read as CSV or NDJSON, each row typed by the
//! schema, then handed to the [`RowSink`] (steps, output, quarantine), on one thread or
//! several ([`parallel`](super::parallel)).

use std::sync::Arc;

use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio_util::codec::FramedRead;

use super::output::RowSink;
use super::parallel;
use super::quarantine::Quarantine;
use super::reader::{CsvReader, IoErrorMap, Position};
use super::steps::{self, Layout};
use super::value::{ColType, Parser, Value};
use super::{Counts, InputFormat, Pipeline};
use crate::codec::json_records::RecordsError;
use crate::codec::ndjson::NdjsonDecoder;
use crate::error::{Error, Result};
use crate::sink::ObjectWriter;

/// Bytes read from the decoded input at a time.
const READ_CHUNK: usize = 256 * 1024;

/// How a column of the input becomes a value.
pub(super) struct ColPlan {
    name: String,
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

    fn json(&self, v: Option<&serde_json::Value>) -> std::result::Result<Value, String> {
        match v {
            None | Some(serde_json::Value::Null) => self.empty(),
            Some(serde_json::Value::String(s)) => self.text(s),
            Some(v) => self.parser.from_json(v),
        }
    }
}

fn plans(pipeline: &Pipeline, names: &[String]) -> Vec<ColPlan> {
    names
        .iter()
        .map(
            |name| match pipeline.input.schema.iter().find(|c| &c.name == name) {
                Some(c) => ColPlan {
                    name: name.clone(),
                    parser: c.parser(),
                    nullable: c.nullable,
                    required: c.required,
                    null_values: c.null_values.clone(),
                    read: true,
                },
                None => ColPlan {
                    name: name.clone(),
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
}

/// Where one object's rows go.
pub(super) struct RowOut<'a> {
    pub output: &'a mut ObjectWriter,
    pub quarantine: &'a mut Quarantine,
    pub counts: &'a mut Counts,
    /// Decoded source bytes read.
    pub decoded: &'a mut u64,
}

impl RowJob<'_> {
    /// Reads, types, transforms and writes every row. The caller finishes the output and the
    /// quarantine when this returns Ok, and aborts the output otherwise.
    pub async fn run(
        &self,
        decoded: Box<dyn AsyncRead + Send + Unpin>,
        map_io: IoErrorMap,
        out: RowOut<'_>,
    ) -> Result<()> {
        match self.pipeline.input.format {
            InputFormat::Csv => self.csv(decoded, map_io, out).await,
            InputFormat::Ndjson => self.ndjson(decoded, map_io, out).await,
        }
    }

    async fn csv(
        &self,
        decoded: Box<dyn AsyncRead + Send + Unpin>,
        map_io: IoErrorMap,
        out: RowOut<'_>,
    ) -> Result<()> {
        let (pipeline, source, cap) = (self.pipeline, self.source, self.cap);
        let RowOut {
            output,
            quarantine,
            counts,
            decoded: decoded_bytes,
        } = out;
        let mut row: Vec<Value> = Vec::new();
        {
            let mut reader = CsvReader::new(
                decoded,
                source.to_owned(),
                map_io,
                pipeline.input.delimiter.map_or(b',', |c| c as u8),
                pipeline.input.quote.map_or(b'"', |c| c as u8),
                cap,
            );
            let header = match reader.next().await? {
                Some(h) => h,
                None => {
                    return Err(Error::Records {
                        url: source.to_owned(),
                        class: "no header",
                        offset: 0,
                        record: None,
                        message: "the CSV input is empty (a header row is required)".into(),
                    });
                }
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
            let mut sink = RowSink::new(
                program, pipeline, output, quarantine, counts, source, self.http,
            );
            sink.writer.header(&mut sink.buf);
            let workers = pipeline.workers.unwrap_or(1);
            if workers > 1 && sink.program.enrich().is_none() {
                let shared = Arc::new(parallel::Shared {
                    plans,
                    program: sink.program.clone(),
                    format: pipeline.output.format,
                    raw_cap: pipeline.quarantine.max_raw_bytes,
                });
                parallel::run(&mut reader, shared, workers, &mut sink).await?;
                *decoded_bytes = reader.offset();
                return sink.end(reader.offset()).await;
            }
            let ncols = plans.len();
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
            }
            *decoded_bytes = reader.offset();
            sink.end(reader.offset()).await
        }
    }

    async fn ndjson(
        &self,
        decoded: Box<dyn AsyncRead + Send + Unpin>,
        map_io: IoErrorMap,
        out: RowOut<'_>,
    ) -> Result<()> {
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
            quarantine,
            counts,
            decoded: decoded_bytes,
        } = out;
        let mut sink = RowSink::new(
            program, pipeline, output, quarantine, counts, source, self.http,
        );
        sink.writer.header(&mut sink.buf);
        // A line that is not a JSON object is a bad row (quarantined), so the framer does not
        // check the JSON itself.
        let decoder = NdjsonDecoder::new(self.cap).unchecked();
        let mut lines = FramedRead::with_capacity(decoded, decoder, READ_CHUNK);
        let mut row: Vec<Value> = Vec::new();
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
            row.clear();
            let typed = type_json(&plans, &line, &mut row);
            sink.row(&mut row, typed, pos, &line).await?;
        }
        let end = lines.decoder().consumed();
        *decoded_bytes = end;
        sink.end(end).await
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
    let obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(raw).map_err(|e| steps::RowError {
            column: None,
            reason: format!("not a JSON object: {e}"),
        })?;
    for plan in plans {
        let v = plan
            .json(obj.get(&plan.name))
            .map_err(|reason| steps::RowError {
                column: Some(plan.name.clone()),
                reason,
            })?;
        row.push(v);
    }
    Ok(())
}
