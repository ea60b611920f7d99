//! Key templates with placeholders taken from each record: `{field:NAME}`,
//! `{field:NAME:FORMAT}` and `{part}`, beside the run's own ([`crate::key`]).

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::error::{Error, Result};
use crate::key::{self, KeyVars, Token};

/// What Hive (and Athena, Spark, DuckDB) write for a null or missing partition value.
pub const DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Largest `{part}` number: an object per part up to S3's key length is absurd past this.
pub const MAX_PART: u32 = 99_999;

/// One placeholder taken from the record: a field and an optional strftime format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRef {
    /// The column (or top-level key) name.
    pub name: String,
    /// A strftime format for a date or timestamp value.
    pub format: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// Index into [`KeyTemplate::fields`].
    Field(usize),
    Part,
}

/// A destination key template compiled for one run: the run's placeholders (`{date}`,
/// `{run_id}`, …) already rendered, the record's still to fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    source: String,
    field: &'static str,
    pieces: Vec<Piece>,
    fields: Vec<FieldRef>,
}

/// A record's value of a partition field, before formatting.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Null or missing: [`DEFAULT_PARTITION`].
    Null,
    /// Text (a JSON string, a number's or a boolean's text).
    Text(String),
    /// A calendar date.
    Date(NaiveDate),
    /// An instant.
    Timestamp(DateTime<Utc>),
}

impl FieldValue {
    /// A typed value as a partition value: a date or a timestamp as itself, anything else
    /// as its text.
    pub fn of(v: &crate::transform::value::Value) -> FieldValue {
        use crate::transform::value::Value;
        match v {
            Value::Null => FieldValue::Null,
            Value::Date(d) => FieldValue::Date(*d),
            Value::Timestamp(t) => FieldValue::Timestamp(*t),
            Value::Str(s) => FieldValue::Text(s.clone()),
            other => FieldValue::Text(other.to_text()),
        }
    }
}

impl KeyTemplate {
    /// Compiles `template` (the spec field `field`, for messages), rendering the run's
    /// placeholders from `vars`. Errors name the template, the byte position and the problem:
    /// an unknown placeholder, a `{field:}` without a name, a strftime format chrono refuses.
    pub fn compile(field: &'static str, template: &str, vars: &KeyVars) -> Result<Self> {
        let bad = |pos: usize, what: &str| {
            Error::spec(format!("{field} {template:?}: {what} at byte {pos}"))
        };
        let mut pieces = Vec::new();
        let mut fields = Vec::new();
        let mut text = String::new();
        for token in key::tokens(field, template)? {
            let (name, pos) = match token {
                Token::Text(t) => {
                    text.push_str(t);
                    continue;
                }
                Token::Placeholder(name, pos) => (name, pos),
            };
            if let Some(spec) = name.strip_prefix("field:") {
                let (column, format) = match spec.split_once(':') {
                    Some((c, f)) => (c, Some(f)),
                    None => (spec, None),
                };
                if column.is_empty() {
                    return Err(bad(pos, "{field:} needs a column name"));
                }
                if let Some(f) = format {
                    check_format(f).map_err(|why| bad(pos, &why))?;
                }
                pieces.push(Piece::Text(std::mem::take(&mut text)));
                pieces.push(Piece::Field(fields.len()));
                fields.push(FieldRef {
                    name: column.to_owned(),
                    format: format.map(str::to_owned),
                });
            } else if name == "part" {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
                pieces.push(Piece::Part);
            } else {
                let value = vars.lookup(name).ok_or_else(|| {
                    bad(
                        pos,
                        &format!(
                            "unknown placeholder {{{name}}} (known: {{date}} {{yyyy}} {{mm}} {{dd}} {{hh}} {{run_id}} {{field:NAME}} {{field:NAME:FORMAT}} {{part}}, and {{scheduled_time}} when the job has one)"
                        ),
                    )
                })?;
                text.push_str(&value);
            }
        }
        pieces.push(Piece::Text(text));
        pieces.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
        let compiled = KeyTemplate {
            source: template.to_owned(),
            field,
            pieces,
            fields,
        };
        // A key of empty values and part 1 must already be a valid key.
        let sample = vec![DEFAULT_PARTITION.to_owned(); compiled.fields.len()];
        compiled.render(&sample, 1)?;
        Ok(compiled)
    }

    /// The record fields the key uses, in order.
    pub fn fields(&self) -> &[FieldRef] {
        &self.fields
    }

    /// The spec field the template comes from (`destination.key`, `output.key`).
    pub fn field_name(&self) -> &'static str {
        self.field
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The key with the run's placeholders rendered and `{field:…}` and `{part}` as written:
    /// the pattern of the run's keys, for summaries.
    pub fn pattern(&self) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(i) => {
                    let f = &self.fields[*i];
                    out.push_str("{field:");
                    out.push_str(&f.name);
                    if let Some(format) = &f.format {
                        out.push(':');
                        out.push_str(format);
                    }
                    out.push('}');
                }
                Piece::Part => out.push_str("{part}"),
            }
        }
        out
    }

    /// Whether the key uses `{field:…}`.
    pub fn is_partitioned(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Whether the key uses `{part}`.
    pub fn has_part(&self) -> bool {
        self.pieces.contains(&Piece::Part)
    }

    /// The key up to its first record placeholder, cut at the last `/` before it: the prefix
    /// every object of the run shares (`orders/` for `orders/dt={field:day}/{part}.json`).
    pub fn static_prefix(&self) -> &str {
        match self.pieces.first() {
            Some(Piece::Text(t)) => &t[..t.rfind('/').map_or(0, |i| i + 1)],
            _ => "",
        }
    }

    /// Formats one record's value of field `i` as its key segment: Hive-escaped, or
    /// [`DEFAULT_PARTITION`] for null, missing and empty. A format on a value that is not a
    /// date, a timestamp or an RFC 3339 / `YYYY-MM-DD` string is an error naming the field.
    pub fn segment(&self, i: usize, value: &FieldValue) -> std::result::Result<String, String> {
        let field = &self.fields[i];
        let text = match (value, &field.format) {
            (FieldValue::Null, _) => return Ok(DEFAULT_PARTITION.to_owned()),
            (FieldValue::Text(t), None) => t.clone(),
            (FieldValue::Date(d), None) => d.format("%Y-%m-%d").to_string(),
            (FieldValue::Timestamp(t), None) => {
                t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            }
            (FieldValue::Date(d), Some(f)) => d.format(f).to_string(),
            (FieldValue::Timestamp(t), Some(f)) => t.format(f).to_string(),
            (FieldValue::Text(t), Some(f)) => match parse_time(t) {
                Some(FieldValue::Date(d)) => d.format(f).to_string(),
                Some(FieldValue::Timestamp(ts)) => ts.format(f).to_string(),
                _ => {
                    return Err(format!(
                        "field {:?} is {t:?}, not a date or timestamp for the format {f:?}",
                        field.name
                    ));
                }
            },
        };
        if text.is_empty() {
            return Ok(DEFAULT_PARTITION.to_owned());
        }
        Ok(hive_escape(&text))
    }

    /// The key of part `part` of the partition whose segments are `segments` (from
    /// [`segment`](Self::segment)). A key over S3's 1,024 bytes is an error naming the
    /// template.
    pub fn render(&self, segments: &[String], part: u32) -> Result<String> {
        let mut out = String::with_capacity(self.source.len() + 64);
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(i) => out.push_str(&segments[*i]),
                Piece::Part => out.push_str(&format!("{part:05}")),
            }
        }
        key::check_rendered(self.field, &self.source, &out)?;
        Ok(out)
    }
}

/// A string's date or timestamp: RFC 3339, `YYYY-MM-DD`, or `YYYY-MM-DD[T ]HH:MM:SS[.f]`
/// (read as UTC).
pub fn parse_time(text: &str) -> Option<FieldValue> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(FieldValue::Timestamp(t.to_utc()));
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(FieldValue::Date(d));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .map(|t| FieldValue::Timestamp(t.and_utc()))
}

fn check_format(format: &str) -> std::result::Result<(), String> {
    if format.is_empty() {
        return Err("an empty strftime format".into());
    }
    if StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
        return Err(format!("{format:?} is not a strftime format chrono knows"));
    }
    Ok(())
}

/// Percent-encodes what Hive's `escapePathName` does: control characters, `"#%'*/:=?\{[]^`
/// and DEL, as `%XX` (upper-case hex), so a value never adds a path level or breaks
/// `name=value`.
pub fn hive_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let escaped = c.is_ascii_control()
            || matches!(
                c,
                '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
            );
        if escaped {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn vars() -> KeyVars {
        KeyVars::new(Utc.with_ymd_and_hms(2026, 3, 7, 9, 5, 0).unwrap(), "r-1")
    }

    fn compile(t: &str) -> Result<KeyTemplate> {
        KeyTemplate::compile("destination.key", t, &vars())
    }

    #[test]
    fn renders_fields_parts_and_run_placeholders() {
        let t = compile("lake/{date}/dt={field:ts:%Y-%m-%d}/c={field:city}/{run_id}-{part}.json")
            .unwrap();
        assert_eq!(t.fields().len(), 2);
        assert!(t.is_partitioned() && t.has_part());
        assert_eq!(t.static_prefix(), "lake/2026-03-07/");
        let day = t
            .segment(0, &FieldValue::Text("2026-11-28T23:59:59+02:00".into()))
            .unwrap();
        let city = t
            .segment(1, &FieldValue::Text("São Paulo/SP".into()))
            .unwrap();
        assert_eq!(
            t.render(&[day, city], 3).unwrap(),
            "lake/2026-03-07/dt=2026-11-28/c=São Paulo%2FSP/r-1-00003.json"
        );
    }

    #[test]
    fn null_missing_and_empty_are_the_hive_default() {
        let t = compile("x/{field:a}/{field:b:%Y}/{part}").unwrap();
        assert_eq!(t.segment(0, &FieldValue::Null).unwrap(), DEFAULT_PARTITION);
        assert_eq!(
            t.segment(0, &FieldValue::Text(String::new())).unwrap(),
            DEFAULT_PARTITION
        );
        assert_eq!(t.segment(1, &FieldValue::Null).unwrap(), DEFAULT_PARTITION);
    }

    #[test]
    fn escaping_keeps_one_level_and_one_equals() {
        assert_eq!(hive_escape("a/b=c:d%e\n"), "a%2Fb%3Dc%3Ad%25e%0A");
        assert_eq!(hive_escape("plain-text_1.2 x"), "plain-text_1.2 x");
        assert_eq!(hive_escape("../up"), "..%2Fup");
    }

    #[test]
    fn formats_dates_timestamps_and_strings() {
        let t = compile("{field:d:%Y/%m}/{part}").unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 1, 2).unwrap();
        assert_eq!(t.segment(0, &FieldValue::Date(d)).unwrap(), "2026%2F01");
        let e = t
            .segment(0, &FieldValue::Text("yesterday".into()))
            .unwrap_err();
        assert!(e.contains("\"d\"") && e.contains("yesterday"), "{e}");
        assert_eq!(
            parse_time("2026-11-28 10:00:00"),
            Some(FieldValue::Timestamp(
                Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap()
            ))
        );
    }

    #[test]
    fn errors_name_the_template_and_position() {
        let e = compile("x/{field:}/{part}").unwrap_err().to_string();
        assert!(
            e.contains("needs a column name") && e.contains("byte 2"),
            "{e}"
        );
        let e = compile("x/{field:t:%Q}").unwrap_err().to_string();
        assert!(e.contains("strftime") && e.contains("byte 2"), "{e}");
        let e = compile("x/{nope}").unwrap_err().to_string();
        assert!(e.contains("unknown placeholder {nope}"), "{e}");
        let e = compile("x/{part").unwrap_err().to_string();
        assert!(e.contains("unclosed"), "{e}");
        assert!(compile("{field:a}").is_ok());
        let long = format!("{}/{{field:a}}", "k".repeat(1010));
        assert!(compile(&long).is_err());
    }
}
