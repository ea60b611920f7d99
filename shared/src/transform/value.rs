//! Column types and typed values: parsing text into them, comparing and rendering them.

use std::cmp::Ordering;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde::Deserialize;

/// The type of a column, declared in `input.schema` or produced by a step.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ColType {
    /// Text, as read.
    String,
    /// A 64-bit signed integer.
    Int,
    /// A 64-bit float.
    Float,
    /// `true`/`false` (also `t`/`f`, `yes`/`no`, `y`/`n`, `1`/`0`, any case).
    Bool,
    /// A calendar date, parsed with `format` (chrono `strftime` syntax, default `%Y-%m-%d`);
    /// written as `YYYY-MM-DD`.
    Date,
    /// A point in time, parsed with `format` (default RFC 3339; a format without a zone is
    /// read as UTC); written as RFC 3339 in UTC.
    Timestamp,
}

impl ColType {
    /// The lowercase name used in the config.
    pub fn name(self) -> &'static str {
        match self {
            ColType::String => "string",
            ColType::Int => "int",
            ColType::Float => "float",
            ColType::Bool => "bool",
            ColType::Date => "date",
            ColType::Timestamp => "timestamp",
        }
    }
}

/// One typed value of a row.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// No value (an empty field of a nullable column, a JSON `null`).
    #[default]
    Null,
    /// Text.
    Str(String),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// Date.
    Date(NaiveDate),
    /// Timestamp (UTC).
    Timestamp(DateTime<Utc>),
}

impl Value {
    /// Whether this is [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Appends the text form: strings as they are, dates `YYYY-MM-DD`, timestamps RFC 3339
    /// UTC, floats in their shortest round-trip form; null appends nothing.
    pub fn render(&self, out: &mut String) {
        match self {
            Value::Null => {}
            Value::Str(s) => out.push_str(s),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) => {
                let _ = write!(out, "{f}");
            }
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Date(d) => {
                let _ = write!(out, "{}", d.format("%Y-%m-%d"));
            }
            Value::Timestamp(t) => out.push_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        }
    }

    /// The text form as a new string (see [`Value::render`]).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        self.render(&mut s);
        s
    }

    /// Orders two values of compatible types (ints and floats compare numerically). `None`
    /// when either is null or the types differ: a null fails every comparison.
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Int(a), Value::Float(b)) => (*a as f64).partial_cmp(b),
            (Value::Float(a), Value::Int(b)) => a.partial_cmp(&(*b as f64)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::Date(a), Value::Date(b)) => Some(a.cmp(b)),
            (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

/// Parses text into values of one type with one format.
#[derive(Debug, Clone, PartialEq)]
pub struct Parser {
    ty: ColType,
    format: Option<String>,
}

impl Parser {
    /// A parser for `ty`; `format` is a chrono format for dates and timestamps (ignored for
    /// other types).
    pub fn new(ty: ColType, format: Option<String>) -> Self {
        Parser { ty, format }
    }

    /// The type produced.
    pub fn ty(&self) -> ColType {
        self.ty
    }

    /// The format, when one was given.
    pub fn format(&self) -> Option<&str> {
        self.format.as_deref()
    }

    /// Checks the format once, so a bad one is a config error, not a quarantined row each
    /// time: chrono reports a bad specifier only when parsing.
    pub fn check_format(&self) -> Result<(), String> {
        let Some(format) = &self.format else {
            return Ok(());
        };
        let bad = chrono::format::StrftimeItems::new(format)
            .any(|item| matches!(item, chrono::format::Item::Error));
        if bad {
            return Err(format!("invalid chrono format {format:?}"));
        }
        Ok(())
    }

    /// Checks, once, that this parser's format can render a value of type `from` (the
    /// `cast` of a date or timestamp to a string): chrono accepts `%H` in a format and only
    /// fails when it renders a date with it, so a sample value is rendered here and a
    /// failure is a config error. Other conversions use no rendering format.
    pub fn check_render(&self, from: ColType) -> Result<(), String> {
        let (ColType::String, Some(f)) = (self.ty, self.format.as_deref()) else {
            return Ok(());
        };
        self.check_format()?;
        let sample = NaiveDate::from_ymd_opt(2024, 2, 29).expect("a valid date");
        let rendered = match from {
            ColType::Date => render_with(&sample.format(f), f, "date"),
            ColType::Timestamp => {
                let t = sample
                    .and_hms_opt(23, 59, 58)
                    .expect("a valid time")
                    .and_utc();
                render_with(&t.format(f), f, "timestamp")
            }
            _ => Ok(String::new()),
        };
        rendered.map(|_| ())
    }

    /// Parses non-empty text. Leading and trailing spaces are ignored for every type but
    /// string. The error says what was expected.
    pub fn parse(&self, text: &str) -> Result<Value, String> {
        let t = text.trim_matches(|c| c == ' ' || c == '\t');
        let fail = || {
            let what = match (self.ty, &self.format) {
                (ColType::Date | ColType::Timestamp, Some(f)) => {
                    format!("a {} in format {f:?}", self.ty.name())
                }
                (ColType::Date, None) => "a date (YYYY-MM-DD)".to_owned(),
                (ColType::Timestamp, None) => "an RFC 3339 timestamp".to_owned(),
                (ty, _) => format!(
                    "a{} {}",
                    if ty == ColType::Int { "n" } else { "" },
                    ty.name()
                ),
            };
            format!("{} is not {what}", quote_capped(text))
        };
        Ok(match self.ty {
            ColType::String => Value::Str(text.to_owned()),
            ColType::Int => Value::Int(t.parse().map_err(|_| fail())?),
            ColType::Float => {
                let f: f64 = t.parse().map_err(|_| fail())?;
                if !f.is_finite() {
                    return Err(fail());
                }
                Value::Float(f)
            }
            ColType::Bool => Value::Bool(match t.to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" => true,
                "false" | "f" | "no" | "n" | "0" => false,
                _ => return Err(fail()),
            }),
            ColType::Date => Value::Date(
                NaiveDate::parse_from_str(t, self.format.as_deref().unwrap_or("%Y-%m-%d"))
                    .map_err(|_| fail())?,
            ),
            ColType::Timestamp => Value::Timestamp(match &self.format {
                None => DateTime::parse_from_rfc3339(t)
                    .map_err(|_| fail())?
                    .with_timezone(&Utc),
                Some(f) => match DateTime::parse_from_str(t, f) {
                    Ok(dt) => dt.with_timezone(&Utc),
                    Err(_) => NaiveDateTime::parse_from_str(t, f)
                        .map_err(|_| fail())?
                        .and_utc(),
                },
            }),
        })
    }

    /// Converts a value of another type (the `cast` step): text is parsed, numbers convert
    /// (a float to int only when it is whole), anything renders to a string.
    pub fn convert(&self, value: Value) -> Result<Value, String> {
        Ok(match (self.ty, value) {
            (_, Value::Null) => Value::Null,
            (ColType::String, v) => match (v, self.format.as_deref()) {
                (Value::Str(s), _) => Value::Str(s),
                (Value::Date(d), Some(f)) => Value::Str(render_with(&d.format(f), f, "date")?),
                (Value::Timestamp(t), Some(f)) => {
                    Value::Str(render_with(&t.format(f), f, "timestamp")?)
                }
                (v, _) => Value::Str(v.to_text()),
            },
            (_, Value::Str(s)) => {
                if s.trim().is_empty() {
                    Value::Null
                } else {
                    self.parse(&s)?
                }
            }
            (ColType::Int, Value::Int(i)) => Value::Int(i),
            (ColType::Int, Value::Float(f)) => {
                if f.fract() == 0.0 && f.abs() < 9.2e18 {
                    Value::Int(f as i64)
                } else {
                    return Err(format!("{f} is not a whole number"));
                }
            }
            (ColType::Int, Value::Bool(b)) => Value::Int(b as i64),
            (ColType::Float, Value::Int(i)) => Value::Float(i as f64),
            (ColType::Float, Value::Float(f)) => Value::Float(f),
            (ColType::Bool, Value::Bool(b)) => Value::Bool(b),
            (ColType::Bool, Value::Int(i)) => Value::Bool(i != 0),
            (ColType::Date, Value::Date(d)) => Value::Date(d),
            (ColType::Date, Value::Timestamp(t)) => Value::Date(t.date_naive()),
            (ColType::Timestamp, Value::Timestamp(t)) => Value::Timestamp(t),
            (ColType::Timestamp, Value::Date(d)) => {
                Value::Timestamp(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
            }
            (ty, v) => {
                return Err(format!(
                    "cannot convert {} to {}",
                    quote_capped(&v.to_text()),
                    ty.name()
                ));
            }
        })
    }

    /// A JSON value (NDJSON input, a filter's constant) as a value of this type: strings are
    /// parsed, numbers and booleans taken when they fit, objects and arrays become their JSON
    /// text in a string column.
    pub fn from_json(&self, value: &serde_json::Value) -> Result<Value, String> {
        use serde_json::Value as J;
        Ok(match (self.ty, value) {
            (_, J::Null) => Value::Null,
            (ColType::String, J::String(s)) => Value::Str(s.clone()),
            (ColType::String, other) => Value::Str(other.to_string()),
            (_, J::String(s)) => self.parse(s)?,
            (ColType::Int, J::Number(n)) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => return Err(format!("{n} is not an int")),
            },
            (ColType::Float, J::Number(n)) => {
                Value::Float(n.as_f64().ok_or_else(|| format!("{n} is not a float"))?)
            }
            (ColType::Bool, J::Bool(b)) => Value::Bool(*b),
            (ty, other) => {
                let mut text = other.to_string();
                cap_string(&mut text, 64);
                return Err(format!(
                    "{text} is not a{} {}",
                    if ty == ColType::Int { "n" } else { "" },
                    ty.name()
                ));
            }
        })
    }
}

/// `value` rendered with the chrono format `format`: chrono reports a specifier the value
/// cannot fill (a time in a date) as `fmt::Error`, which `to_string()` turns into a panic;
/// here it is an error naming the format.
fn render_with(value: &dyn std::fmt::Display, format: &str, what: &str) -> Result<String, String> {
    let mut out = String::new();
    write!(out, "{value}").map_err(|_| {
        format!("format {format:?} cannot render a {what} (a time specifier in a date format?)")
    })?;
    Ok(out)
}

/// `"text"` cut to 64 bytes, for messages.
pub(crate) fn quote_capped(text: &str) -> String {
    let mut t = text.to_owned();
    cap_string(&mut t, 64);
    format!("{t:?}")
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut with `…`.
pub(crate) fn cap_string(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ty: ColType, f: Option<&str>) -> Parser {
        Parser::new(ty, f.map(str::to_owned))
    }

    #[test]
    fn parses_each_type() {
        assert_eq!(p(ColType::Int, None).parse(" 42 "), Ok(Value::Int(42)));
        assert_eq!(p(ColType::Float, None).parse("2.5"), Ok(Value::Float(2.5)));
        assert_eq!(p(ColType::Bool, None).parse("Yes"), Ok(Value::Bool(true)));
        assert_eq!(
            p(ColType::Date, Some("%m/%d/%Y")).parse("06/14/2024"),
            Ok(Value::Date(NaiveDate::from_ymd_opt(2024, 6, 14).unwrap()))
        );
        assert_eq!(
            p(ColType::Date, Some("%Y%m%d"))
                .parse("20250131")
                .unwrap()
                .to_text(),
            "2025-01-31"
        );
        assert_eq!(
            p(ColType::Timestamp, None)
                .parse("2026-01-02T03:04:05+02:00")
                .unwrap()
                .to_text(),
            "2026-01-02T01:04:05Z"
        );
        assert_eq!(
            p(ColType::Timestamp, Some("%Y-%m-%d %H:%M"))
                .parse("2026-01-02 03:04")
                .unwrap()
                .to_text(),
            "2026-01-02T03:04:00Z"
        );
    }

    #[test]
    fn errors_say_what_was_expected() {
        let e = p(ColType::Date, Some("%m/%d/%Y"))
            .parse("13/45/2024")
            .unwrap_err();
        assert_eq!(e, r#""13/45/2024" is not a date in format "%m/%d/%Y""#);
        assert_eq!(
            p(ColType::Int, None).parse("4x").unwrap_err(),
            r#""4x" is not an int"#
        );
        assert!(p(ColType::Float, None).parse("NaN").is_err());
        assert!(p(ColType::Date, Some("%Q")).check_format().is_err());
        assert!(p(ColType::Date, Some("%m/%d/%Y")).check_format().is_ok());
    }

    /// A time specifier in the format of a date cast to a string is a config error when the
    /// pipeline is compiled, and a row error (never a panic) if it gets to a row.
    #[test]
    fn a_time_format_on_a_date_is_an_error_not_a_panic() {
        let to_str = p(ColType::String, Some("%Y %H"));
        let e = to_str.check_render(ColType::Date).unwrap_err();
        assert!(e.contains("cannot render a date"), "{e}");
        assert!(to_str.check_render(ColType::Timestamp).is_ok());
        assert!(
            p(ColType::String, Some("%d.%m.%Y"))
                .check_render(ColType::Date)
                .is_ok()
        );
        let day = Value::Date(NaiveDate::from_ymd_opt(2024, 2, 1).unwrap());
        let e = to_str.convert(day).unwrap_err();
        assert!(e.contains("\"%Y %H\" cannot render a date"), "{e}");
        let t = NaiveDate::from_ymd_opt(2024, 2, 1)
            .unwrap()
            .and_hms_opt(7, 0, 0)
            .unwrap()
            .and_utc();
        assert_eq!(
            to_str.convert(Value::Timestamp(t)),
            Ok(Value::Str("2024 07".into()))
        );
    }

    #[test]
    fn compare_and_convert() {
        assert_eq!(
            Value::Int(2).compare(&Value::Float(2.5)),
            Some(Ordering::Less)
        );
        assert_eq!(Value::Null.compare(&Value::Null), None);
        assert_eq!(Value::Str("a".into()).compare(&Value::Int(1)), None);
        let to_int = p(ColType::Int, None);
        assert_eq!(to_int.convert(Value::Str("7".into())), Ok(Value::Int(7)));
        assert!(to_int.convert(Value::Float(1.5)).is_err());
        let to_str = p(ColType::String, Some("%d.%m.%Y"));
        assert_eq!(
            to_str.convert(Value::Date(NaiveDate::from_ymd_opt(2024, 2, 1).unwrap())),
            Ok(Value::Str("01.02.2024".into()))
        );
        let f = p(ColType::Int, None);
        assert_eq!(f.from_json(&serde_json::json!(3)), Ok(Value::Int(3)));
        assert!(f.from_json(&serde_json::json!(3.5)).is_err());
        assert_eq!(
            p(ColType::String, None).from_json(&serde_json::json!({"a": 1})),
            Ok(Value::Str(r#"{"a":1}"#.into()))
        );
    }
}
