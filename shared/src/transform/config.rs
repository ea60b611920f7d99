//! The pipeline config of `transform-s3`: what to read, the steps, where the output and the
//! quarantine go. Parsed once at init and validated before any event is served.

use serde::Deserialize;

use super::steps::{self, Step};
use super::value::{ColType, Parser};
use crate::checksum::ChecksumAlgorithm;
use crate::codec::Compression;
use crate::error::{Error, Result};
use crate::format::Format;
use crate::key::{self, KeyVars};
use crate::partition::KeyTemplate;
use crate::spec::Tuning;

/// The whole pipeline.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// What the source objects are and which of them to read.
    pub input: InputSpec,
    /// Steps applied to every row, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Where and how the clean rows are written.
    pub output: OutputSpec,
    /// Where rows that fail go, and when there are too many of them.
    #[serde(default)]
    pub quarantine: QuarantineSpec,
    /// Overrides of the memory plan and the deadline margin (as in every sluice job).
    #[serde(default)]
    pub tuning: Tuning,
    /// Threads that type and transform CSV rows, order preserved (1–16). Default 1: everything
    /// runs in the reading task. More helps only when typing and steps, not decompression and
    /// CSV tokenizing, are the bottleneck and the function has spare cores: on 2 cores the seed
    /// pipeline measured 143 MiB/s with 1 and 128 MiB/s with 2. A pipeline with an `enrich`
    /// step always uses 1.
    #[serde(default)]
    #[schemars(range(min = 1, max = 16))]
    pub workers: Option<usize>,
    /// The name of the pipeline in its metrics (the `Job` dimension) and progress lines: 1 to
    /// 255 characters of printable ASCII (space to `~`), not starting with `:`. Default: the
    /// output bucket, `/`, and the key template up to its first `{` (`lake/clean/`); without an
    /// output bucket, the key template's prefix alone (`clean/`), or `pipeline` when the
    /// template starts with a placeholder.
    #[serde(default)]
    pub job_name: Option<String>,
}

/// Input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// CSV with a header row (RFC 4180 quoting).
    #[default]
    Csv,
    /// One JSON object per line.
    Ndjson,
}

/// `input`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// `csv` (default) or `ndjson`.
    #[serde(default)]
    pub format: InputFormat,
    /// Declared columns. CSV columns not listed pass through as strings; NDJSON rows have
    /// exactly the listed columns (other keys are ignored).
    #[serde(default)]
    pub schema: Vec<ColumnSpec>,
    /// Only keys starting with this are read.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Only keys ending with this are read (e.g. `.csv.gz`).
    #[serde(default)]
    pub suffix: Option<String>,
    /// CSV field delimiter, one ASCII character. Default `,`.
    #[serde(default)]
    pub delimiter: Option<char>,
    /// CSV quote character, one ASCII character. Default `"`.
    #[serde(default)]
    pub quote: Option<char>,
}

/// One declared column.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The header name (CSV) or object key (NDJSON).
    pub name: String,
    /// The type. Default `string`.
    #[serde(rename = "type", default = "string_type")]
    pub ty: ColType,
    /// chrono format for `date` and `timestamp`.
    #[serde(default)]
    pub format: Option<String>,
    /// An empty value (or a missing or `null` JSON value) becomes null. Without it, an empty
    /// string column is the empty string and any other empty column quarantines the row.
    #[serde(default)]
    pub nullable: bool,
    /// The value must be present and non-empty, or the row is quarantined (whatever the type).
    #[serde(default)]
    pub required: bool,
    /// Texts read as empty, besides the empty string (e.g. `["NA", "-"]`).
    #[serde(default)]
    pub null_values: Vec<String>,
    /// JSON records only (NDJSON input, ingest-http's Parquet schema): where the value is,
    /// as a path of object keys from the record (`$.customer.id`, `$['a b'].c`); a missing
    /// step is a missing value. Default: the top-level key `name`.
    #[serde(default)]
    pub path: Option<String>,
}

/// Checks declared columns, naming `field` (`input.schema`, `schema`): no name twice, a
/// `format` only for dates and timestamps and one chrono accepts, not both nullable and
/// required.
pub fn validate_columns(field: &str, columns: &[ColumnSpec]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (i, c) in columns.iter().enumerate() {
        if !seen.insert(c.name.as_str()) {
            return Err(Error::spec(format!(
                "{field}[{i}]: column {:?} declared twice",
                c.name
            )));
        }
        if c.format.is_some() && !matches!(c.ty, ColType::Date | ColType::Timestamp) {
            return Err(Error::spec(format!(
                "{field}[{i}] ({:?}): format applies only to date and timestamp",
                c.name
            )));
        }
        c.parser()
            .check_format()
            .map_err(|e| Error::spec(format!("{field}[{i}] ({:?}): {e}", c.name)))?;
        if c.nullable && c.required {
            return Err(Error::spec(format!(
                "{field}[{i}] ({:?}): a column cannot be both nullable and required",
                c.name
            )));
        }
        c.keys()
            .map_err(|e| Error::spec(format!("{field}[{i}] ({:?}).path: {e}", c.name)))?;
    }
    Ok(())
}

fn string_type() -> ColType {
    ColType::String
}

impl ColumnSpec {
    /// The object keys that lead to this column's value in a JSON record: `path`'s, or the
    /// name.
    pub fn keys(&self) -> std::result::Result<Vec<String>, String> {
        match &self.path {
            None => Ok(vec![self.name.clone()]),
            Some(p) => {
                let path = crate::codec::json_records::JsonPath::parse(p, false)?;
                if path.keys().is_empty() {
                    return Err(format!("{p:?} names the whole record, not a field of it"));
                }
                Ok(path.keys().to_vec())
            }
        }
    }

    /// The parser of this column's values.
    pub fn parser(&self) -> Parser {
        Parser::new(self.ty, self.format.clone())
    }
}

/// `output`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// `csv` (default), `ndjson` or `parquet` (columns typed by the schema after the steps).
    #[serde(default = "Format::csv")]
    pub format: Format,
    /// `"gzip"`, `"zstd"` or `{"codec", "level"}`; default none. With `parquet`, the page
    /// codec: `zstd` (default), `snappy`, `gzip` or `none`.
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Bucket of the output and the quarantine. Default: the source object's bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// Key template: `{source_stem}`, `{source_key}`, `{source_dir}`, `{date}`, `{yyyy}`,
    /// `{mm}`, `{dd}`, `{hh}`, `{run_id}`. Must start with a literal prefix (e.g. `clean/`):
    /// keys under it are never read as input. Partitioned output: `{field:NAME}` /
    /// `{field:NAME:FORMAT}` (a column after the steps) and `{part}`; such a key must also
    /// use `{run_id}` and `{source_stem}` or `{source_key}`, so that each run's objects have
    /// keys of their own.
    pub key: String,
    /// Finish an object when it reaches this many MiB and go on in the next `{part}`.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_object_mib: Option<u64>,
    /// Finish an object when it holds this many rows and go on in the next `{part}`.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_object_records: Option<u64>,
    /// `false`: an existing output is never replaced, even by a newer source version.
    #[serde(default = "yes")]
    pub overwrite: bool,
    /// Full-object checksum, `crc64nvme` (default) or `crc32c`.
    #[serde(default)]
    pub checksum: ChecksumAlgorithm,
    /// Write `<key>.manifest.json` (needed to recognise duplicate and older events). Default
    /// true. A partitioned output always writes its manifest,
    /// `<literal prefix>_manifests/<source key>.json`, listing its objects.
    #[serde(default = "yes")]
    pub manifest: bool,
}

fn yes() -> bool {
    true
}

/// `quarantine`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuarantineSpec {
    /// Key template of the NDJSON quarantine object (same placeholders as `output.key`).
    /// Default `quarantine/{source_key}.ndjson`.
    #[serde(default = "default_quarantine_key")]
    pub key: String,
    /// The object fails once more rows than this are bad: the output and the quarantine are
    /// aborted (a failed run completes nothing; the error names the first and last bad row).
    #[serde(default)]
    pub max_bad_rows: Option<u64>,
    /// The object fails when bad rows / rows read exceeds this (0..=1), checked at the end.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_bad_ratio: Option<f64>,
    /// Bytes of a bad row's raw text kept in its quarantine record. Default 4096.
    #[serde(default = "default_raw_cap")]
    pub max_raw_bytes: usize,
}

fn default_quarantine_key() -> String {
    "quarantine/{source_key}.ndjson".to_owned()
}

fn default_raw_cap() -> usize {
    4096
}

impl Default for QuarantineSpec {
    fn default() -> Self {
        QuarantineSpec {
            key: default_quarantine_key(),
            max_bad_rows: None,
            max_bad_ratio: None,
            max_raw_bytes: default_raw_cap(),
        }
    }
}

/// The source object a key template is rendered for.
#[derive(Debug, Clone)]
pub struct SourceVars {
    /// The source key.
    pub key: String,
    /// The usual key variables (date, run id).
    pub vars: KeyVars,
}

impl SourceVars {
    /// The key variables with the source's: `{source_key}`, `{source_stem}`, `{source_dir}`.
    pub fn key_vars(&self) -> KeyVars {
        let dir = self.key.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        self.vars
            .clone()
            .with("source_key", self.key.clone())
            .with("source_stem", source_stem(&self.key))
            .with("source_dir", dir)
    }
}

impl Pipeline {
    /// `job_name`, or the default derived from the output (see the field).
    pub fn job_name(&self) -> String {
        if let Some(name) = &self.job_name {
            return name.clone();
        }
        match &self.output.bucket {
            Some(bucket) => crate::telemetry::default_job_name(bucket, &self.output.key),
            None => {
                let name = crate::telemetry::default_job_name("", &self.output.key);
                match name.trim_start_matches('/') {
                    "" => "pipeline".to_owned(),
                    prefix => prefix.to_owned(),
                }
            }
        }
    }

    /// Reads the pipeline from `PIPELINE` or `PIPELINE_URI` and validates it.
    pub async fn from_env(s3: &aws_sdk_s3::Client) -> Result<Pipeline> {
        let inline = std::env::var("PIPELINE")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let uri = std::env::var("PIPELINE_URI")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let bad = |m: String| Error::InvalidSpec { message: m };
        let text = match (inline, uri) {
            (Some(text), None) => text,
            (None, Some(uri)) => {
                let (bucket, key) = uri
                    .strip_prefix("s3://")
                    .and_then(|rest| rest.split_once('/'))
                    .filter(|(b, k)| !b.is_empty() && !k.is_empty())
                    .ok_or_else(|| bad(format!("PIPELINE_URI {uri:?} is not s3://bucket/key")))?;
                let body = match crate::source::s3::open(s3, bucket, key, None).await? {
                    crate::source::s3::Opened::Body(body) => body,
                    crate::source::s3::Opened::Changed => {
                        return Err(bad(format!("PIPELINE_URI {uri}: no such object")));
                    }
                };
                let mut text = String::new();
                let mut limited = tokio::io::AsyncReadExt::take(body, 1 << 20);
                tokio::io::AsyncReadExt::read_to_string(&mut limited, &mut text)
                    .await
                    .map_err(|e| bad(format!("PIPELINE_URI {uri}: {e}")))?;
                text
            }
            (Some(_), Some(_)) => {
                return Err(bad("set PIPELINE or PIPELINE_URI, not both".into()));
            }
            (None, None) => {
                return Err(bad(
                    "no pipeline: set PIPELINE (JSON) or PIPELINE_URI (s3://bucket/key)".into(),
                ));
            }
        };
        Pipeline::from_json_str(&text)
    }

    /// Parses and validates a pipeline from JSON text. Errors name the field's path:
    /// `steps[2].concat: unknown field "seps", expected one of ...`. A top-level `"$schema"`
    /// string (an editor's pointer to `schemas/pipeline.schema.json`) is ignored.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = serde_path_to_error::deserialize::<_, crate::schema::WithoutSchemaKey<Pipeline>>(
            &mut de,
        );
        let crate::schema::WithoutSchemaKey(pipeline) = parsed.map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                Error::spec(format!("pipeline: {inner}"))
            } else {
                Error::spec(format!("pipeline {path}: {inner}"))
            }
        })?;
        // Text after the pipeline (a second object pasted in, a cut-off edit) is refused
        // rather than ignored.
        de.end()
            .map_err(|e| Error::spec(format!("pipeline: data after the pipeline: {e}")))?;
        pipeline.validate()?;
        Ok(pipeline)
    }

    /// Checks everything that can be checked without data: types, formats, step columns
    /// (against the schema, other names being taken for pass-through CSV columns), key
    /// templates, prefixes, limits.
    pub fn validate(&self) -> Result<()> {
        if let Some(name) = &self.job_name {
            crate::telemetry::validate_job_name("job_name", name)?;
        }
        validate_columns("input.schema", &self.input.schema)?;
        if self.input.format == InputFormat::Csv
            && let Some(c) = self.input.schema.iter().find(|c| c.path.is_some())
        {
            return Err(Error::spec(format!(
                "input.schema ({:?}): path applies to JSON records (NDJSON input), not CSV",
                c.name
            )));
        }
        self.output
            .format
            .check_compression("output.compression", self.output.compression)?;
        if self.input.format == InputFormat::Ndjson && self.input.schema.is_empty() {
            return Err(Error::spec(
                "input.schema: NDJSON input needs a schema (the columns to read)",
            ));
        }
        for (name, c) in [
            ("delimiter", self.input.delimiter),
            ("quote", self.input.quote),
        ] {
            if let Some(c) = c
                && (!c.is_ascii() || c == '\n' || c == '\r')
            {
                return Err(Error::spec(format!(
                    "input.{name} {c:?} must be one ASCII character other than a line break"
                )));
            }
        }
        if self.input.delimiter.is_some() && self.input.delimiter == self.input.quote {
            return Err(Error::spec("input.delimiter and input.quote are the same"));
        }
        steps::compile(
            &self.steps,
            &self.schema_layout(),
            self.input.format == InputFormat::Csv,
        )?;
        let sample = SourceVars {
            key: "in/sample.csv".into(),
            vars: KeyVars::new(chrono::Utc::now(), "run"),
        };
        if self.is_partitioned() {
            self.check_partitioned(&sample)?;
        } else {
            render_key("output.key", &self.output.key, &sample)?;
        }
        render_key("quarantine.key", &self.quarantine.key, &sample)?;
        let out = self.output_prefix();
        let bad = self.quarantine_prefix();
        for (field, prefix) in [("output.key", &out), ("quarantine.key", &bad)] {
            if prefix.is_empty() {
                return Err(Error::spec(format!(
                    "{field} must start with a literal prefix such as \"clean/\" before any \
                     placeholder: keys under it are never read as input, so the function cannot \
                     trigger itself"
                )));
            }
        }
        if let Some(input) = &self.input.prefix {
            for (field, prefix) in [("output.key", &out), ("quarantine.key", &bad)] {
                if input.starts_with(prefix.as_str()) || prefix.starts_with(input.as_str()) {
                    return Err(Error::spec(format!(
                        "input.prefix {input:?} overlaps the prefix {prefix:?} of {field}: the \
                         function would read its own output"
                    )));
                }
            }
        }
        if let Some(r) = self.quarantine.max_bad_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(Error::spec("quarantine.max_bad_ratio must be within 0..=1"));
        }
        if self.quarantine.max_raw_bytes > 1 << 20 {
            return Err(Error::spec(
                "quarantine.max_raw_bytes must be at most 1048576",
            ));
        }
        self.tuning.validate()?;
        if let Some(bucket) = &self.output.bucket {
            crate::job::validate_bucket("output.bucket", bucket)?;
        }
        if let Some(w) = self.workers
            && !(1..=16).contains(&w)
        {
            return Err(Error::spec("workers must be 1..=16"));
        }
        Ok(())
    }

    /// Whether the output is partitioned: `output.key` uses `{field:…}` or `{part}`, or
    /// objects roll at `max_object_mib` / `max_object_records`.
    pub fn is_partitioned(&self) -> bool {
        let key = &self.output.key;
        key.contains("{field:")
            || KeyVars::uses(key, "part")
            || self.output.max_object_mib.is_some()
            || self.output.max_object_records.is_some()
    }

    /// The key template of a partitioned output, with `source`'s placeholders rendered.
    pub fn partition_template(&self, source: &SourceVars) -> Result<KeyTemplate> {
        KeyTemplate::compile("output.key", &self.output.key, &source.key_vars())
    }

    fn check_partitioned(&self, sample: &SourceVars) -> Result<()> {
        let key = &self.output.key;
        let template = self.partition_template(sample)?;
        if !template.has_part() {
            return Err(Error::spec(format!(
                "output.key {key:?} needs {{part}}: with {{field:…}} placeholders or max_object_mib / max_object_records a partition can get more than one object, and {{part}} numbers them"
            )));
        }
        let names_source = ["source_stem", "source_key"]
            .iter()
            .any(|n| KeyVars::uses(key, n));
        if !names_source || !KeyVars::uses(key, "run_id") {
            return Err(Error::spec(format!(
                "output.key {key:?}: a partitioned output's key must use {{run_id}} and {{source_stem}} or {{source_key}} (e.g. \"clean/dt={{field:day}}/{{source_stem}}-{{run_id}}-{{part}}.csv\"): objects of two sources, or of two versions of one, must never share a key, so that a new version replaces the old one's objects only once all of its own are written"
            )));
        }
        if self.output.max_object_mib == Some(0) || self.output.max_object_records == Some(0) {
            return Err(Error::spec(
                "output.max_object_mib and output.max_object_records must be at least 1",
            ));
        }
        // NDJSON's columns are known now; CSV's once the header is read.
        if self.input.format == InputFormat::Ndjson {
            let program = steps::compile(&self.steps, &self.schema_layout(), false)?;
            let names = template.fields().iter().map(|f| f.name.as_str());
            super::partitioned::field_columns(names, program.output())?;
        }
        Ok(())
    }

    /// The schema as a layout: name and type of each declared column.
    pub fn schema_layout(&self) -> Vec<(String, ColType)> {
        self.input
            .schema
            .iter()
            .map(|c| (c.name.clone(), c.ty))
            .collect()
    }

    /// The literal part of `output.key` before its first placeholder.
    pub fn output_prefix(&self) -> String {
        literal_prefix(&self.output.key)
    }

    /// Where a partitioned output's manifests go: `_manifests/` beside the key's first
    /// directory with a placeholder (`lake/parking/_manifests/` for
    /// `lake/parking/month={field:…}/…`), or right after a literal prefix without a `/`.
    pub fn manifest_prefix(&self) -> String {
        let out = self.output_prefix();
        match out.rfind('/') {
            Some(i) => format!("{}_manifests/", &out[..=i]),
            None => format!("{out}_manifests/"),
        }
    }

    /// The literal part of `quarantine.key` before its first placeholder.
    pub fn quarantine_prefix(&self) -> String {
        literal_prefix(&self.quarantine.key)
    }

    /// Why `key` is not read, or `None` when it is an input of this pipeline.
    pub fn skip_reason(&self, key: &str) -> Option<String> {
        let out = self.output_prefix();
        if key.starts_with(&out) {
            return Some(format!("under the output prefix {out:?}"));
        }
        let bad = self.quarantine_prefix();
        if key.starts_with(&bad) {
            return Some(format!("under the quarantine prefix {bad:?}"));
        }
        let manifests = self.manifest_prefix();
        if self.is_partitioned() && key.starts_with(&manifests) {
            return Some(format!("under the manifest prefix {manifests:?}"));
        }
        if let Some(p) = &self.input.prefix
            && !key.starts_with(p.as_str())
        {
            return Some(format!("outside input.prefix {p:?}"));
        }
        if let Some(s) = &self.input.suffix
            && !key.ends_with(s.as_str())
        {
            return Some(format!("not ending with input.suffix {s:?}"));
        }
        None
    }
}

/// The literal part of a key template before its first `{`.
pub fn literal_prefix(template: &str) -> String {
    template.split('{').next().unwrap_or_default().to_owned()
}

/// Renders a key template with the source placeholders (`{source_key}`, `{source_stem}`,
/// `{source_dir}`) and those of [`key::render`]. `field` names the template in errors.
pub fn render_key(field: &str, template: &str, source: &SourceVars) -> Result<String> {
    key::render(template, &source.key_vars()).map_err(|e| {
        let text = e.to_string();
        let text = text.trim_start_matches("invalid job spec: ");
        Error::spec(text.replacen("destination.key", field, 1))
    })
}

const EXTENSIONS: &[&str] = &[
    ".gz", ".gzip", ".zst", ".zstd", ".csv", ".tsv", ".txt", ".ndjson", ".jsonl", ".json",
    ".parquet",
];

/// The file name of `key` without its directory and its data and compression extensions:
/// `in/parking 2026.csv.gz` → `parking 2026`.
pub fn source_stem(key: &str) -> String {
    let mut name = key.rsplit('/').next().unwrap_or(key);
    loop {
        let lower = name.to_ascii_lowercase();
        match EXTENSIONS
            .iter()
            .find(|e| lower.ends_with(*e) && lower.len() > e.len())
        {
            Some(e) => name = &name[..name.len() - e.len()],
            None => return name.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"input": {"format": "csv", "schema": [{"name": "Issue Date", "type": "date", "format": "%m/%d/%Y"},
                                        {"name": "House Number", "type": "string", "nullable": true}]},
 "steps": [{"filter": {"all": [{"eq": {"column": "Registration State", "value": "NJ"}}]}},
           {"replace": {"column": "Issuing Agency", "map": {"P": "police"}}},
           {"concat": {"into": "address", "columns": ["House Number", "Street Name"], "sep": ", "}},
           {"select": ["Vehicle Make", "Issuing Agency", "address"]},
           {"rename": {"Vehicle Make": "vehicle_make"}}],
 "output": {"format": "csv", "compression": "gzip", "key": "clean/{source_stem}.csv.gz"},
 "quarantine": {"key": "quarantine/{source_stem}.ndjson"}}"#;

    #[test]
    fn the_seed_example_parses() {
        let p = Pipeline::from_json_str(SEED).unwrap();
        assert_eq!(p.steps.len(), 5);
        assert_eq!(p.output_prefix(), "clean/");
        assert_eq!(
            p.skip_reason("clean/x.csv.gz").unwrap(),
            "under the output prefix \"clean/\""
        );
        assert!(p.skip_reason("quarantine/x.ndjson").is_some());
        assert!(p.skip_reason("incoming/x.csv").is_none());
    }

    fn err(text: &str) -> String {
        Pipeline::from_json_str(text).unwrap_err().to_string()
    }

    /// Found by the `pipeline` fuzz target: text after the pipeline object was ignored.
    #[test]
    fn data_after_the_pipeline_is_refused() {
        let e = err(&format!("{SEED} trailing garbage"));
        assert!(e.contains("data after the pipeline"), "{e}");
        assert!(Pipeline::from_json_str(&format!("{SEED}\n  ")).is_ok());
    }

    fn seed_with(f: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(SEED).unwrap();
        f(&mut v);
        v.to_string()
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let e = err(&seed_with(|v| {
            v["steps"][2]["concat"]["seps"] = ", ".into()
        }));
        assert!(
            e.contains("steps[2]") && e.contains("unknown field `seps`"),
            "{e}"
        );
        let e = err(&seed_with(|v| v["output"]["keys"] = "x".into()));
        assert!(
            e.contains("output") && e.contains("unknown field `keys`"),
            "{e}"
        );
        let e = err(&seed_with(|v| {
            v["steps"][0] = serde_json::json!({"fliter": {}})
        }));
        assert!(e.contains("unknown variant `fliter`"), "{e}");
        let e = err(&seed_with(|v| {
            v["input"]["schema"][0]["type"] = "datetime".into()
        }));
        assert!(
            e.contains("input.schema[0].type") && e.contains("unknown variant `datetime`"),
            "{e}"
        );
    }

    #[test]
    fn prefixes_and_templates_are_checked() {
        let e = err(&seed_with(|v| v["input"]["prefix"] = "clean/in/".into()));
        assert!(e.contains("overlaps the prefix \"clean/\""), "{e}");
        let e = err(&seed_with(|v| v["input"]["prefix"] = "quar".into()));
        assert!(e.contains("overlaps the prefix \"quarantine/\""), "{e}");
        let e = err(&seed_with(|v| {
            v["output"]["key"] = "{source_stem}.csv".into()
        }));
        assert!(e.contains("literal prefix"), "{e}");
        let e = err(&seed_with(|v| {
            v["output"]["key"] = "clean/{nope}.csv".into()
        }));
        assert!(e.contains("unknown placeholder {nope}"), "{e}");
        let e = err(&seed_with(|v| {
            v["input"]["schema"][0]["format"] = "%Q".into()
        }));
        assert!(e.contains("invalid chrono format"), "{e}");
        let e = err(&seed_with(|v| v["quarantine"]["max_bad_ratio"] = 2.into()));
        assert!(e.contains("max_bad_ratio"), "{e}");
    }

    #[test]
    fn enrich_is_checked() {
        let enrich = serde_json::json!({"enrich": {"url": "http://scores.internal/v1",
            "batch_size": 500, "concurrency": 2, "fields": [{"name": "risk", "type": "float"}]}});
        let ok = seed_with(|v| v["steps"].as_array_mut().unwrap().insert(1, enrich.clone()));
        let p = Pipeline::from_json_str(&ok).unwrap();
        let program = steps::compile(&p.steps, &p.schema_layout(), true).unwrap();
        let plan = program.enrich().unwrap();
        assert_eq!(plan.step.batch_size, 500);
        assert_eq!(plan.fields[0].0, "risk");
        let two = seed_with(|v| {
            let steps = v["steps"].as_array_mut().unwrap();
            steps.insert(1, enrich.clone());
            steps.insert(1, enrich.clone());
        });
        assert!(
            err(&two).contains("at most one enrich step"),
            "{}",
            err(&two)
        );
        let mut bad = enrich.clone();
        bad["enrich"]["concurrency"] = 0.into();
        let e = err(&seed_with(|v| {
            v["steps"].as_array_mut().unwrap().insert(1, bad.clone())
        }));
        assert!(
            e.contains("steps[1].enrich.concurrency must be 1..=16"),
            "{e}"
        );
        let mut bad = enrich.clone();
        bad["enrich"]["url"] = "ftp://x/y".into();
        let e = err(&seed_with(|v| {
            v["steps"].as_array_mut().unwrap().insert(1, bad.clone())
        }));
        assert!(e.contains("must be http or https"), "{e}");
    }

    #[test]
    fn key_placeholders() {
        let src = SourceVars {
            key: "incoming/2026/parking violations+2026.csv.gz".into(),
            vars: KeyVars::new(
                chrono::DateTime::parse_from_rfc3339("2026-03-07T09:00:00Z")
                    .unwrap()
                    .to_utc(),
                "r1",
            ),
        };
        assert_eq!(
            render_key("k", "clean/{source_dir}/{date}/{source_stem}.csv.gz", &src).unwrap(),
            "clean/incoming/2026/2026-03-07/parking violations+2026.csv.gz"
        );
        assert_eq!(
            render_key("k", "q/{source_key}.ndjson", &src).unwrap(),
            "q/incoming/2026/parking violations+2026.csv.gz.ndjson"
        );
        assert_eq!(source_stem("a/b.tar"), "b.tar");
        assert_eq!(source_stem("x.json.zst"), "x");
        assert_eq!(source_stem(".csv"), ".csv");
    }
}
