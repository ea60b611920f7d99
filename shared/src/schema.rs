//! JSON Schemas of every event and configuration sluice reads, generated from the Rust types
//! that parse them (with `schemars`), so a schema cannot drift from the parser.
//!
//! [`schemas`] returns each schema with the file name it is committed under in `schemas/` at
//! the repository root: the ingest-http job spec and batch event, the transform-s3 pipeline,
//! the export-postgres spec and the sweep-uploads configuration. A test compares the
//! committed files with these; `SLUICE_UPDATE_SCHEMAS=1 cargo test --release --features
//! sluice/fault-injection -p sluice --test schemas` rewrites them.
//!
//! The schemas follow the serde attributes (`deny_unknown_fields` is `additionalProperties:
//! false`, defaults are `default`, doc comments are `description`) and the hand-written
//! parsers (a compression as a name or `{"codec", "level"}`, secret references, `max_age`,
//! `schema: "infer"`). They also hold the fixed ranges the parsers check (part sizes, rate
//! limits, concurrency); checks that need more than the document (the memory budget, a
//! date format chrono accepts, a URL's host) are the parser's alone.
//!
//! Every top-level schema allows a `"$schema"` string, which the parsers ignore
//! ([`without_schema_key`]), so an editor can find the schema from the file itself.

use std::borrow::Cow;
use std::marker::PhantomData;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::codec::Compression;
use crate::export::ExportSpec;
use crate::secret::{SecretRef, SecretsManagerRef, SsmRef};
use crate::source::http::HttpSourceSpec;
use crate::source::http::rate::RateLimitSpec;
use crate::spec::{InputFormat, JobSpec, RecordSchema};
use crate::sweep::{MAX_MAX_AGE, MaxAge, SweepConfig};
use crate::transform::Pipeline;
use crate::transform::config::ColumnSpec;

/// The top-level key a JSON file may carry to name its schema (read by editors, ignored by
/// the parsers).
pub const SCHEMA_KEY: &str = "$schema";

/// Every schema, as (file name in `schemas/`, schema): `job-spec.schema.json`,
/// `ingest-batch.schema.json`, `pipeline.schema.json`, `export-spec.schema.json`,
/// `sweep-config.schema.json`. Each is JSON Schema draft 2020-12 with an `$id` and a `title`.
pub fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "job-spec.schema.json",
            root::<JobSpec>("job-spec", "sluice ingest-http job spec"),
        ),
        ("ingest-batch.schema.json", batch()),
        (
            "pipeline.schema.json",
            root::<Pipeline>("pipeline", "sluice transform-s3 pipeline"),
        ),
        (
            "export-spec.schema.json",
            root::<ExportSpec>("export-spec", "sluice export-postgres spec"),
        ),
        (
            "sweep-config.schema.json",
            root::<SweepConfig>("sweep-config", "sluice sweep-uploads configuration"),
        ),
    ]
}

/// The root schema of `T`, with its `$id`, `title` and a `$schema` property.
fn root<T: JsonSchema>(name: &str, title: &str) -> Value {
    let generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    finish(&mut schema, name, title);
    schema
}

fn finish(schema: &mut Value, name: &str, title: &str) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    map.insert("$id".into(), format!("urn:sluice:schema:{name}").into());
    map.insert("title".into(), title.into());
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        properties.insert(
            SCHEMA_KEY.into(),
            json!({
                "description": "The schema of this file, for editors (e.g. \"../schemas/<name>.schema.json\"); ignored by sluice.",
                "type": "string"
            }),
        );
    }
}

/// One entry of a batch's `sources` (parsed by [`crate::ingest::batch::expand`]).
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only its schema is used.
struct BatchSource {
    /// The source's name: `{source}` in the destination key, and its entry in the answer.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    name: String,
    /// The request, as `source.http` of a job spec.
    http: HttpSourceSpec,
    /// This source's records path, instead of the batch's `records`.
    #[serde(default)]
    records: Option<String>,
    /// This source's framing, instead of the batch's `input_format` (`ndjson` drops the
    /// batch's `records`).
    #[serde(default)]
    input_format: Option<InputFormat>,
}

/// The batch event: the job spec's fields, with `sources`, `concurrency` and `rate_limit`
/// instead of `source`, built from the job spec's schema so the shared fields stay the same.
fn batch() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let sources = generator.subschema_for::<BatchSource>().to_value();
    let rate_limit = generator.subschema_for::<RateLimitSpec>().to_value();
    // The root takes every definition generated so far, `BatchSource`'s included.
    let mut schema = generator.into_root_schema_for::<JobSpec>().to_value();
    let map = schema
        .as_object_mut()
        .expect("a struct's schema is an object");
    map.insert(
        "description".into(),
        "Many endpoints in one ingest-http job: every field but `sources`, `concurrency` and `rate_limit` is shared by the sources, each of which is an ordinary job writing its own object (`{source}` in the destination key is its name).".into(),
    );
    if let Some(Value::Array(required)) = map.get_mut("required") {
        required.retain(|r| r != "source");
        required.push("sources".into());
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        properties.remove("source");
        properties.insert(
            "sources".into(),
            json!({
                "description": "The endpoints, each with a unique name.",
                "type": "array",
                "minItems": 1,
                "items": sources
            }),
        );
        properties.insert(
            "concurrency".into(),
            json!({
                "description": "Sources running at once (1–64); the memory budget is split between them. Default 1.",
                "type": "integer",
                "minimum": 1,
                "maximum": 64,
                "default": 1
            }),
        );
        properties.insert(
            "rate_limit".into(),
            json!({
                "description": "One token bucket for every request of every source (each source's own `http.rate_limit` applies too).",
                "anyOf": [rate_limit, {"type": "null"}]
            }),
        );
        if let Some(destination) = properties.get_mut("destination") {
            *destination = json!({
                "allOf": [
                    destination.take(),
                    {"properties": {"key": {
                        "description": "Must contain {source}, so each source has its own object.",
                        "pattern": "\\{source\\}"
                    }}}
                ]
            });
        }
    }
    finish(
        &mut schema,
        "ingest-batch",
        "sluice ingest-http batch event",
    );
    schema
}

/// The event without a top-level `"$schema"` string (an editor's pointer to the schema), so
/// that specs that refuse unknown fields still accept it. Anything else is left as it is: a
/// `"$schema"` that is not a string stays an unknown field.
pub fn without_schema_key(mut value: Value) -> Value {
    if let Value::Object(map) = &mut value
        && map.get(SCHEMA_KEY).is_some_and(Value::is_string)
    {
        map.remove(SCHEMA_KEY);
    }
    value
}

/// Deserializes `T` from a JSON object, skipping a top-level `"$schema"` string, for parsers
/// that read text as a stream (error positions and paths stay those of the text).
pub(crate) struct WithoutSchemaKey<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for WithoutSchemaKey<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(SkipSchemaKey(map)))
            }
        }
        d.deserialize_map(ObjectVisitor(PhantomData))
            .map(WithoutSchemaKey)
    }
}

struct SkipSchemaKey<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkipSchemaKey<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.0.next_key::<String>()? else {
                return Ok(None);
            };
            if key == SCHEMA_KEY {
                self.0.next_value::<String>()?;
                continue;
            }
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// An object with exactly one property, `key`, whose value is `value`.
fn one_key(key: &str, value: Value) -> Value {
    json!({
        "type": "object",
        "properties": {key: value},
        "required": [key],
        "additionalProperties": false
    })
}

impl JsonSchema for RecordSchema {
    fn schema_name() -> Cow<'static, str> {
        "RecordSchema".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let columns = generator.subschema_for::<Vec<ColumnSpec>>();
        json_schema!({
            "description": "The columns of a Parquet output: a list of columns, or \"infer\" (names and types from the first records).",
            "oneOf": [
                {"const": "infer", "description": "Inferred from the first records, then held."},
                columns
            ]
        })
    }
}

impl JsonSchema for Compression {
    fn schema_name() -> Cow<'static, str> {
        "Compression".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let codecs = json!(["gzip", "zstd", "snappy", "none"]);
        // The levels `Compression::with_level` takes, per codec.
        let level = |codec: &str, min: i32, max: i32| {
            json!({
                "if": {"properties": {"codec": {"const": codec}}},
                "then": {"properties": {"level": {"minimum": min, "maximum": max}}}
            })
        };
        json_schema!({
            "description": "A codec by name (its default level: gzip 1, zstd 3), or {\"codec\", \"level\"} (gzip 1–9, zstd 1–19). snappy and none are Parquet page codecs.",
            "oneOf": [
                {"type": "string", "enum": codecs},
                {
                    "type": "object",
                    "properties": {
                        "codec": {"type": "string", "enum": codecs},
                        "level": {"type": "integer", "format": "int32"}
                    },
                    "required": ["codec"],
                    "additionalProperties": false,
                    "allOf": [level("gzip", 1, 9), level("zstd", 1, 19), level("snappy", 0, 0), level("none", 0, 0)]
                }
            ]
        })
    }
}

impl JsonSchema for SecretRef {
    fn schema_name() -> Cow<'static, str> {
        "SecretRef".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let secrets_manager = generator.subschema_for::<SecretsManagerRef>().to_value();
        let ssm = generator.subschema_for::<SsmRef>().to_value();
        let env = json!({"type": "string", "minLength": 1, "description": "An environment variable of the function (one SLUICE_SECRET_ENV allows)."});
        json_schema!({
            "description": "Where a secret is: never the value itself. Exactly one of env, secrets_manager, ssm.",
            "oneOf": [
                one_key("env", env),
                one_key("secrets_manager", secrets_manager),
                one_key("ssm", ssm)
            ]
        })
    }
}

impl JsonSchema for MaxAge {
    fn schema_name() -> Cow<'static, str> {
        "MaxAge".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Seconds (86400), or a duration with units s, m, h, d (\"24h\", \"90m\", \"1h30m\"); more than 0, at most 3650 days.",
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_MAX_AGE.as_secs()},
                {"type": "string", "pattern": "^\\s*([0-9]+|([0-9]+[smhd])+)\\s*$"}
            ]
        })
    }
}

/// `source.postgres.secret`: a Secrets Manager secret name (a bare string, not a connection
/// URL), any [`SecretRef`], or null.
pub(crate) fn secret_name_or_ref(generator: &mut SchemaGenerator) -> Schema {
    let reference = generator.subschema_for::<SecretRef>().to_value();
    json_schema!({
        "anyOf": [
            {
                "type": "string",
                "description": "A Secrets Manager secret name or ARN (not a connection string).",
                "pattern": "^\\S+$",
                "not": {"pattern": "://"}
            },
            reference,
            {"type": "null"}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_level_schema_string_is_ignored_and_nothing_else() {
        let v = json!({"$schema": "../schemas/x.json", "a": {"$schema": "kept"}});
        assert_eq!(without_schema_key(v), json!({"a": {"$schema": "kept"}}));
        let v = json!({"$schema": 1});
        assert_eq!(without_schema_key(v.clone()), v);
    }

    #[test]
    fn every_parser_ignores_a_top_level_schema_string() {
        let job = json!({"$schema": "../schemas/job-spec.schema.json",
                         "source": {"http": {"url": "http://h/"}},
                         "destination": {"bucket": "lake", "key": "k"}});
        JobSpec::from_json(job.clone()).unwrap();
        let mut bad = job.clone();
        bad["$schema"] = json!(1);
        let e = JobSpec::from_json(bad).unwrap_err().to_string();
        assert!(e.contains("unknown field `$schema`"), "{e}");
        let mut nested = job;
        nested["destination"]["$schema"] = json!("x");
        let e = JobSpec::from_json(nested).unwrap_err().to_string();
        assert!(e.contains("unknown field `$schema`"), "{e}");

        ExportSpec::from_json(json!({"$schema": "../schemas/export-spec.schema.json",
            "source": {"postgres": {"query": "SELECT 1"}},
            "destination": {"bucket": "lake", "key": "k"}}))
        .unwrap();

        // `$schema` alone carries no configuration: SWEEP_CONFIG is used, as for `{}`.
        let env = r#"{"$schema": "s", "targets": [{"bucket": "lake", "prefix": "tmp/"}]}"#;
        let sweep = SweepConfig::from_event(json!({"$schema": "s"}), Some(env)).unwrap();
        assert_eq!(sweep.targets[0].prefix, "tmp/");
    }

    #[test]
    fn the_pipeline_text_parser_ignores_a_top_level_schema_string_and_keeps_positions() {
        let text = r#"{
  "$schema": "../schemas/pipeline.schema.json",
  "input": {"format": "csv"},
  "output": {"key": "clean/{source_stem}.csv"}
}"#;
        Pipeline::from_json_str(text).unwrap();
        let e = Pipeline::from_json_str(&text.replace("\"csv\"}", "\"csv\", \"sufix\": \"x\"}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pipeline input.sufix: unknown field `sufix`") && e.contains("line 3"),
            "{e}"
        );
        let e = Pipeline::from_json_str(&text.replace("\"input\"", "\"inputs\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `inputs`") && e.contains("line 3"),
            "{e}"
        );
        let e = Pipeline::from_json_str(&text.replace("\"../schemas/pipeline.schema.json\"", "7"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected a string") && e.contains("line 2"),
            "{e}"
        );
        let e = Pipeline::from_json_str("[]").unwrap_err().to_string();
        assert!(e.contains("expected a JSON object"), "{e}");
    }
}
