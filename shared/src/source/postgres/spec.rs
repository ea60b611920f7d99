//! `source.postgres` of an export job: the spec, its checks, and its serde helpers.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secret::{SecretRef, SecretsManagerRef};

/// `source.postgres` in an export job spec.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceSpec {
    /// The query: anything `COPY (query) TO STDOUT` accepts (`SELECT`, `VALUES`, `TABLE t`),
    /// with `$1`, `$2`, ... for `params`. It runs in a read-only transaction.
    pub query: String,
    /// Values for `$1`, `$2`, ...: strings, numbers, booleans, `null`; an array or object is
    /// passed as its JSON text (for `json`/`jsonb` parameters). Each is parsed by the server
    /// as the type it inferred for that parameter. Default none.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub params: Vec<serde_json::Value>,
    /// Where the connection is: a Secrets Manager secret name or ARN (`"prod/lake-db"`), or
    /// any secret reference (`{"secrets_manager": {"id": ..., "json_key": ...}}`,
    /// `{"ssm": {"name": ...}}`, `{"env": "VAR"}`). The value is a `postgres://` URL, or JSON
    /// with `username`, `password`, `host`, `port`, `dbname` (as RDS writes it) and optionally
    /// `sslmode`, `sslrootcert`. Default: the `DATABASE_URL` environment variable.
    #[serde(default, deserialize_with = "secret_name_or_ref")]
    #[schemars(schema_with = "crate::schema::secret_name_or_ref")]
    pub secret: Option<SecretRef>,
    /// Session time zone, for how `timestamptz` values render. Default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// A result column that orders the rows, so that an export longer than one invocation
    /// can continue: the rows are exported in this column's order, and the next invocation
    /// goes on with the rows whose key is larger than the last one written. Rows that share a
    /// key are never split, so it need not be unique; a NULL key fails the export. Its type
    /// must be `smallint`, `integer`, `bigint`, `text`, `varchar`, `uuid`, `date`,
    /// `timestamp` or `timestamptz`. CSV and NDJSON continue into one object; any format
    /// into objects numbered by `{part}` (each stop completes them, the next invocation
    /// writes the next part). Default none: the export runs in one invocation.
    #[serde(default)]
    #[schemars(length(min = 1, max = 63))]
    pub resume_key: Option<String>,
}

impl PostgresSourceSpec {
    /// Checks what can be checked without a connection.
    pub fn validate(&self) -> Result<()> {
        if self.query.trim().trim_end_matches(';').trim().is_empty() {
            return Err(Error::spec("source.postgres.query is empty"));
        }
        if self.query.contains('\0') {
            return Err(Error::spec("source.postgres.query contains a NUL byte"));
        }
        if self.params.len() > 1000 {
            return Err(Error::spec(format!(
                "source.postgres.params has {} values; at most 1000",
                self.params.len()
            )));
        }
        for (i, p) in self.params.iter().enumerate() {
            if param_text(p).is_some_and(|t| t.contains('\0')) {
                return Err(Error::spec(format!(
                    "source.postgres.params[{i}] contains a NUL byte"
                )));
            }
        }
        if let Some(key) = &self.resume_key
            && (key.is_empty() || key.len() > 63 || key.contains('\0'))
        {
            return Err(Error::spec(format!(
                "source.postgres.resume_key {key:?} is not a column name (1 to 63 bytes, no NUL)"
            )));
        }
        if let Some(tz) = &self.timezone
            && (tz.is_empty() || tz.len() > 64 || tz.contains('\0'))
        {
            return Err(Error::spec(format!(
                "source.postgres.timezone {tz:?} is not a time zone name"
            )));
        }
        Ok(())
    }
}

/// `secret`: a bare string names a Secrets Manager secret; an object is a [`SecretRef`].
fn secret_name_or_ref<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<SecretRef>, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(id) => {
            // A connection URL pasted here would otherwise travel as a secret name into
            // requests and error messages, password included: refuse it without echoing it.
            if id.contains("://") || id.trim().is_empty() || id.chars().any(char::is_whitespace) {
                return Err(D::Error::custom(
                    "source.postgres.secret must name a Secrets Manager secret (not shown: it \
                     looks like a connection string or is empty; put connection strings in the \
                     secret or in DATABASE_URL)",
                ));
            }
            Ok(Some(SecretRef::SecretsManager(SecretsManagerRef {
                id,
                json_key: None,
            })))
        }
        other => SecretRef::from_json(other)
            .map(Some)
            .map_err(D::Error::custom),
    }
}

/// The text the server parses for a parameter; `None` is SQL NULL.
pub(super) fn param_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_render_as_text() {
        use serde_json::json;
        assert_eq!(param_text(&json!(null)), None);
        assert_eq!(param_text(&json!("a'b")).as_deref(), Some("a'b"));
        assert_eq!(param_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(param_text(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(param_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(
            param_text(&json!({"a": [1]})).as_deref(),
            Some(r#"{"a":[1]}"#)
        );
    }
}
