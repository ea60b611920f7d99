//! The job spec: the JSON event that says what to copy where.
//!
//! ```json
//! {
//!   "source": { "http": { "url": "https://api.example.com/export", "headers": {"Accept": "application/json"} } },
//!   "compression": "gzip",
//!   "destination": { "bucket": "lake", "key": "raw/demo/dt={date}/{run_id}.json.gz" }
//! }
//! ```
//!
//! Unknown fields are rejected, so a typo is an error rather than a silently ignored setting.

use serde::Deserialize;

use crate::codec::Compression;
use crate::codec::json_records::JsonPath;
use crate::error::{Error, Result};
use crate::format::Format;
use crate::source::http::HttpSourceSpec;

pub use crate::job::{Destination, Tuning};

/// One job: a source, optional compression, a destination, optional tuning.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Where the bytes come from.
    pub source: SourceSpec,
    /// Output compression. Default none: the body is copied byte for byte (after undoing any
    /// `Content-Encoding` of the transfer).
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Where the records are: a path ending in `[*]` (`$.data[*]`, `$[*]`). Each element is
    /// written as one NDJSON line. Default: none — the body is copied byte for byte.
    #[serde(default)]
    pub records: Option<String>,
    /// How the source is framed: `json` (one document per page, default) or `ndjson` (one
    /// record per line; each line is checked to be JSON).
    #[serde(default)]
    pub input_format: InputFormat,
    /// Output format when records are extracted: `ndjson` (the default and only one so far).
    #[serde(default)]
    pub format: Option<Format>,
    /// Where the object goes.
    pub destination: Destination,
    /// Overrides of the memory plan. Default: derived from the function's memory.
    #[serde(default)]
    pub tuning: Tuning,
    /// The schedule's time (RFC 3339), e.g. EventBridge Scheduler's
    /// `<aws.scheduler.scheduled-time>` in the schedule's input. Date placeholders in the key
    /// use it, and `{scheduled_time}` names it. Default: none (the clock).
    #[serde(default)]
    pub scheduled_time: Option<String>,
    /// Incremental pulls: a watermark kept in S3 between runs ([`Incremental`]).
    #[serde(default)]
    pub incremental: Option<Incremental>,
    /// The columns of a Parquet output (`format: parquet`): a list in the transform's
    /// vocabulary (`name`, `type`, `format`, `nullable`, `required`, `null_values`), or
    /// `"infer"`: names and types from the first records ([`RecordSchema`]).
    #[serde(default)]
    pub schema: Option<RecordSchema>,
    /// Where records that do not fit the schema go, and how many may ([`RecordsQuarantine`]).
    #[serde(default)]
    pub quarantine: Option<RecordsQuarantine>,
    /// The name of the job in its metrics (the `Job` dimension) and progress lines: 1 to 255
    /// characters of printable ASCII (space to `~`), not starting with `:`. Default: the
    /// destination bucket, `/`, and the key template up to its first `{`
    /// (`lake/raw/orders/`).
    #[serde(default)]
    pub job_name: Option<String>,
}

/// The columns of records written as Parquet.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordSchema {
    /// Declared columns, each read from the record's top-level key of that name.
    Declared(Vec<crate::transform::config::ColumnSpec>),
    /// Inferred from the first records (at most [`INFER_RECORDS`] records and the record cap
    /// of bytes), then held: a later record with a key outside it, or a value that does not
    /// fit, is quarantined.
    Infer,
}

/// Records a `"schema": "infer"` samples before it fixes the columns.
pub const INFER_RECORDS: usize = 1000;

impl<'de> Deserialize<'de> for RecordSchema {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "infer" => Ok(RecordSchema::Infer),
            v @ serde_json::Value::Array(_) => serde_path_to_error::deserialize(v)
                .map(RecordSchema::Declared)
                .map_err(|e| {
                    let path = e.path().to_string();
                    let at = if path == "." { "" } else { path.as_str() };
                    D::Error::custom(format!("schema{at}: {}", e.inner()))
                }),
            serde_json::Value::String(s) => Err(D::Error::custom(format!(
                "schema: expected \"infer\" or a list of columns, got the string {:?}",
                s.chars().take(64).collect::<String>()
            ))),
            _ => Err(D::Error::custom(
                "schema: expected \"infer\" or a list of columns",
            )),
        }
    }
}

/// `quarantine` of records mode: records that do not fit a Parquet output's schema, as NDJSON
/// lines (`source`, `line` (the record's number), `offset`, `record`, `column`, `reason`,
/// `raw`) in their own object, completed only when the run succeeds.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuarantine {
    /// Key template (the destination's placeholders). Default: the destination key with
    /// `.quarantine.ndjson` appended.
    #[serde(default)]
    pub key: Option<String>,
    /// The run fails once more records than this are bad (nothing is written). Default none.
    #[serde(default)]
    pub max_bad_rows: Option<u64>,
    /// The run fails when bad / read records exceeds this (0..=1), checked at the end.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_bad_ratio: Option<f64>,
    /// Bytes of a bad record kept in its quarantine line. Default 4096.
    #[serde(default = "default_raw_cap")]
    pub max_raw_bytes: usize,
}

fn default_raw_cap() -> usize {
    4096
}

/// `incremental` in a job spec: remember the largest value of a record field, and send it on
/// the next run.
///
/// Before the run, the state object (`state_key` in the destination bucket) is read; its
/// watermark (or `initial_value` the first time) is sent as query parameter `param` and is
/// available as `{watermark}` in the source URL. After the object is complete, the largest
/// value of `path` among the run's records becomes the new watermark, written with a
/// conditional request (`If-Match` on the state's ETag, or `If-None-Match: *` for the first
/// one), so two overlapping runs cannot silently overwrite each other's progress.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// Query parameter that carries the watermark. Default: none (use `{watermark}` in the URL).
    #[serde(default)]
    pub param: Option<String>,
    /// The record field, as `$.data[*].updated_at` (the records path, then the field).
    pub path: String,
    /// Watermark of the first run.
    pub initial_value: String,
    /// Key of the state object in the destination bucket, e.g. `state/orders.json`.
    pub state_key: String,
}

impl Incremental {
    /// The field path within a record: `$.data[*].updated_at` with records `$.data[*]` is
    /// `updated_at`.
    pub fn field(&self, records: Option<&str>) -> Result<Vec<String>> {
        let prefix = records.unwrap_or("$[*]");
        let rest = self.path.strip_prefix(prefix).ok_or_else(|| {
            Error::spec(format!(
                "incremental.path {:?} must start with the records path {prefix:?}",
                self.path
            ))
        })?;
        let field = JsonPath::parse(&format!("${rest}"), false)
            .map_err(|e| Error::spec(format!("incremental.path: {e}")))?;
        if field.keys().is_empty() {
            return Err(Error::spec(
                "incremental.path must name a field of the records",
            ));
        }
        Ok(field.keys().to_vec())
    }
}

/// How a source body is framed into records.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// A JSON document; records are found with `records`.
    #[default]
    Json,
    /// Newline-delimited JSON: every non-blank line is a record.
    Ndjson,
}

/// The source, named by its kind: `{"http": {...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceSpec {
    /// An HTTP(S) request.
    Http(HttpSourceSpec),
}

impl JobSpec {
    /// `job_name`, or the default derived from the destination
    /// ([`default_job_name`](crate::telemetry::default_job_name)).
    pub fn job_name(&self) -> String {
        self.job_name.clone().unwrap_or_else(|| {
            crate::telemetry::default_job_name(&self.destination.bucket, &self.destination.key)
        })
    }

    /// Parses and validates a job spec from JSON. A top-level `"$schema"` string (an editor's
    /// pointer to `schemas/job-spec.schema.json`) is ignored.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let value = crate::schema::without_schema_key(value);
        let spec: JobSpec =
            serde_json::from_value(value).map_err(|e| Error::spec(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks what can be checked before any request.
    pub fn validate(&self) -> Result<()> {
        let SourceSpec::Http(http) = &self.source;
        http.validate()?;
        if let Some(name) = &self.job_name {
            crate::telemetry::validate_job_name("job_name", name)?;
        }
        if let Some(r) = &self.records {
            JsonPath::parse(r, true).map_err(|e| Error::spec(format!("records: {e}")))?;
            if self.input_format == InputFormat::Ndjson {
                return Err(Error::spec(
                    "records: not used with input_format ndjson (every line is a record)",
                ));
            }
        }
        let extracting = self.extracts_records();
        self.validate_parquet(extracting)?;
        if let Some(f @ Format::Csv) = self.format {
            return Err(Error::spec(format!(
                "format: {} is not available for records; use ndjson",
                f.name()
            )));
        }
        if self.format.is_some() && !extracting {
            return Err(Error::spec(
                "format: needs records (or input_format ndjson)",
            ));
        }
        if let Some(p) = &http.paginate {
            if !extracting {
                return Err(Error::spec(
                    "source.http.paginate: needs records (or input_format ndjson): pages are joined record by record",
                ));
            }
            let needs_body = p.cursor.is_some()
                || p.next_url.is_some()
                || p.has_more.is_some()
                || p.total.is_some();
            if needs_body && self.input_format == InputFormat::Ndjson {
                return Err(Error::spec(
                    "source.http.paginate: cursor, next_url, has_more and total read the JSON envelope; with NDJSON use link_header, page_number or offset",
                ));
            }
        }
        if crate::key::KeyVars::uses(&self.destination.key, "page") && !extracting {
            return Err(Error::spec(
                "destination.key: {page} needs records (or input_format ndjson): a byte-for-byte copy has no pages",
            ));
        }
        if self.destination.is_partitioned() {
            if !extracting {
                return Err(Error::spec(
                    "destination.key: {field:…} and max_object_mib / max_object_records need records (or input_format ndjson): a byte-for-byte copy is one object",
                ));
            }
            if self.object_per_page() {
                return Err(Error::spec(
                    "destination.key: {page} cannot be combined with {field:…}, max_object_mib or max_object_records; use {part}",
                ));
            }
        }
        if let Some(t) = &self.scheduled_time {
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| Error::spec(format!("scheduled_time {t:?} is not RFC 3339: {e}")))?;
        }
        if let Some(inc) = &self.incremental {
            if !extracting {
                return Err(Error::spec(
                    "incremental: needs records (or input_format ndjson)",
                ));
            }
            inc.field(self.records.as_deref())?;
        }
        self.tuning.validate()?;
        self.destination.validate()
    }

    /// `format: parquet` needs records and a schema; a schema and a quarantine need Parquet.
    fn validate_parquet(&self, extracting: bool) -> Result<()> {
        let parquet = self.format == Some(Format::Parquet);
        self.format
            .unwrap_or(Format::Ndjson)
            .check_compression("compression", self.compression)?;
        if !parquet {
            if self.schema.is_some() {
                return Err(Error::spec("schema: used only with format parquet"));
            }
            if self.quarantine.is_some() {
                return Err(Error::spec(
                    "quarantine: used only with format parquet (records that do not fit its schema)",
                ));
            }
            return Ok(());
        }
        if !extracting {
            return Err(Error::spec(
                "format: parquet needs records (or input_format ndjson)",
            ));
        }
        match &self.schema {
            None => {
                return Err(Error::spec(
                    "format: parquet needs a schema: a list of columns, or \"infer\"",
                ));
            }
            Some(RecordSchema::Declared(columns)) => {
                if columns.is_empty() {
                    return Err(Error::spec("schema: the list of columns is empty"));
                }
                crate::transform::config::validate_columns("schema", columns)?;
            }
            Some(RecordSchema::Infer) => {}
        }
        if self.object_per_page() {
            return Err(Error::spec(
                "destination.key: {page} is not available with format parquet (one file per run)",
            ));
        }
        if let Some(q) = &self.quarantine
            && let Some(r) = q.max_bad_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(Error::spec(format!(
                "quarantine.max_bad_ratio {r} must be 0..=1"
            )));
        }
        Ok(())
    }

    /// Whether every page is written to its own object (`{page}` in the key).
    pub fn object_per_page(&self) -> bool {
        crate::key::KeyVars::uses(&self.destination.key, "page")
    }

    /// Whether records are extracted (rather than the body copied byte for byte).
    pub fn extracts_records(&self) -> bool {
        self.records.is_some() || self.input_format == InputFormat::Ndjson
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn design_example_parses() {
        let spec = JobSpec::from_json(json!({
            "source": {"http": {"url": "http://127.0.0.1:8088/big.json", "method": "GET",
                                "headers": {"Accept": "application/json"}}},
            "compression": "gzip",
            "destination": {"bucket": "lake", "key": "raw/demo/dt={date}/{run_id}.ndjson.gz"}
        }))
        .unwrap();
        assert!(spec.destination.overwrite);
        assert_eq!(spec.compression.unwrap().level, 1);
    }

    #[test]
    fn unknown_and_bad_fields_are_named() {
        let base = json!({"source": {"http": {"url": "http://h/"}},
                          "destination": {"bucket": "lake", "key": "k"}});
        let mut v = base.clone();
        v["destinaton"] = json!({});
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("unknown field `destinaton`"), "{e}");
        let mut v = base.clone();
        v["source"] = json!({"ftp": {"url": "x"}});
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("unknown variant `ftp`"), "{e}");
        let mut v = base.clone();
        v["destination"]["bucket"] = json!("Lake_1");
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("destination.bucket"), "{e}");
        let mut v = base;
        v["tuning"] = json!({"part_size_mib": 1});
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("part_size_mib 1"), "{e}");
    }

    #[test]
    fn parquet_needs_records_and_a_schema_and_names_what_is_wrong() {
        let base = json!({"source": {"http": {"url": "http://h/"}}, "records": "$.data[*]",
                          "format": "parquet",
                          "destination": {"bucket": "lake", "key": "k.parquet"}});
        let e = JobSpec::from_json(base.clone()).unwrap_err().to_string();
        assert!(e.contains("format: parquet needs a schema"), "{e}");
        let mut v = base.clone();
        v["schema"] = json!("infer");
        v["compression"] = json!("snappy");
        JobSpec::from_json(v).unwrap();
        let mut v = base.clone();
        v["schema"] = json!([{"name": "a", "type": "integer"}]);
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("schema[0].type") && e.contains("integer"), "{e}");
        let mut v = base.clone();
        v["schema"] = json!("guess");
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("expected \"infer\" or a list of columns"), "{e}");
        let mut v = base.clone();
        v["schema"] = json!([{"name": "a"}, {"name": "a"}]);
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("schema[1]: column \"a\" declared twice"), "{e}");
        let mut v = base.clone();
        v["schema"] = json!("infer");
        v["destination"]["key"] = json!("p-{page}.parquet");
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(
            e.contains("{page} is not available with format parquet"),
            "{e}"
        );
        let mut v = base.clone();
        v["schema"] = json!("infer");
        v["quarantine"] = json!({"max_bad_ratio": 2.0});
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(
            e.contains("quarantine.max_bad_ratio 2 must be 0..=1"),
            "{e}"
        );
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove("records");
        v["schema"] = json!("infer");
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("format: parquet needs records"), "{e}");
    }

    #[test]
    fn parquet_options_are_refused_for_ndjson() {
        let base = json!({"source": {"http": {"url": "http://h/"}}, "records": "$.data[*]",
                          "destination": {"bucket": "lake", "key": "k"}});
        let mut v = base.clone();
        v["compression"] = json!("snappy");
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("snappy is a Parquet page codec"), "{e}");
        let mut v = base.clone();
        v["schema"] = json!("infer");
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(e.contains("schema: used only with format parquet"), "{e}");
        let mut v = base;
        v["quarantine"] = json!({});
        let e = JobSpec::from_json(v).unwrap_err().to_string();
        assert!(
            e.contains("quarantine: used only with format parquet"),
            "{e}"
        );
    }

    #[test]
    fn row_group_mib_is_checked_against_the_budget() {
        let budget = crate::MemoryBudget::for_memory_mib(256);
        for (mib, ok) in [
            (0, false),
            (1, true),
            (32, true),
            (33, false),
            (u64::MAX, false),
        ] {
            let t = Tuning {
                row_group_mib: Some(mib),
                ..Tuning::default()
            };
            let r = t.validate_for(&budget);
            assert_eq!(r.is_ok(), ok, "{mib}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("tuning.row_group_mib"), "{e}");
            }
        }
        assert_eq!(Tuning::default().row_group_cap(&budget), 8 << 20);
        let small = crate::MemoryBudget::for_memory_mib(128);
        assert_eq!(Tuning::default().row_group_cap(&small), 4 << 20);
    }
}
