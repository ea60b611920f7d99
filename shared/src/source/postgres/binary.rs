//! Binary COPY tuples of a query's own columns, decoded into Parquet column builders.
//!
//! `COPY (query) TO STDOUT (FORMAT binary)` sends each row as `int16 fields`, then per field
//! `int32 length` (`-1` for NULL) and the value in the type's binary send format. The result
//! columns (names, types and type modifiers, from preparing the query) decide the Parquet
//! schema before anything is written ([`TupleDecoder::new`]); every tuple is then decoded
//! straight into the Arrow builders ([`TupleDecoder::decode_row`]), with no text rendering.
//!
//! The bytes come from the network, so every length is checked against what is left of the
//! tuple and every value against its type's binary layout: malformed data is an error, never a
//! panic or an out-of-bounds read.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;

use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use postgres_protocol::types as wire;
use tokio_postgres::fallible_iterator::FallibleIterator;
use tokio_postgres::types::{Kind, Type};

use crate::columnar::{Column, ColumnBuilder, ColumnType, TableSchema};
use crate::error::{Error, ErrorKind, Result};
use crate::partition::FieldValue;

/// Days from 1970-01-01 to 2000-01-01, Postgres's date epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01, Postgres's timestamp epoch.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// The largest decimal precision Parquet's `DECIMAL` in 16 bytes (Arrow `Decimal128`) holds.
const MAX_DECIMAL_PRECISION: i32 = 38;
/// `VARHDRSZ`: a numeric type modifier is `((precision << 16) | scale) + 4`.
const VARHDRSZ: i32 = 4;

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
/// The largest display scale Postgres stores (`NUMERIC_DSCALE_MAX`).
const NUMERIC_DSCALE_MAX: u16 = 0x3FFF;

/// The types Parquet output takes, for the message that refuses another one.
const SUPPORTED: &str = "smallint, integer, bigint, real, double precision, numeric, boolean, \
                         text, varchar, char(n), name, date, timestamp, timestamptz, uuid, bytea, \
                         json, jsonb, enums and domains over these, and one-dimensional arrays of \
                         them";

/// One column of a query's result, as preparing the query describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultColumn {
    /// The column's name (its alias).
    pub name: String,
    /// Its type.
    pub ty: Type,
    /// Its type modifier (`-1` for none): `numeric(12,2)` carries its precision and scale here.
    pub type_modifier: i32,
}

impl ResultColumn {
    /// A column named `name` of `ty` with `type_modifier`.
    pub fn new(name: impl Into<String>, ty: Type, type_modifier: i32) -> Self {
        ResultColumn {
            name: name.into(),
            ty,
            type_modifier,
        }
    }
}

impl From<&tokio_postgres::Column> for ResultColumn {
    fn from(c: &tokio_postgres::Column) -> Self {
        ResultColumn::new(c.name(), c.type_().clone(), c.type_modifier())
    }
}

/// How one value is decoded: its binary send format and the Parquet column it lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `numeric(p,s)` with `1 <= p <= 38` and `0 <= s <= p`: the unscaled value at `s`.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// Any other `numeric`: its exact text, as Postgres prints it.
    NumericText,
    Bool,
    /// `text`, `varchar`, `bpchar`, `name`, enums: UTF-8 as sent.
    Text,
    Date,
    Timestamp {
        utc: bool,
    },
    Uuid,
    Bytea,
    Json,
    /// `jsonb`: a version byte (1), then the JSON text.
    Jsonb,
}

impl Scalar {
    /// The decoding of a value of `ty` (domains resolved to their base type), or `None` when
    /// Parquet output does not support it.
    ///
    /// `numeric` becomes a Parquet `DECIMAL(p,s)` only when the type modifier gives a
    /// precision Parquet can hold in 16 bytes (at most 38) and a scale within it (Postgres 15
    /// also allows a negative scale or one larger than the precision, which Parquet does not).
    /// An unconstrained `numeric` (a computed column, `sum(...)`, a column declared `numeric`
    /// without a precision) can hold any of Postgres's up to 131,072 digits before the point
    /// and 16,383 after it, so it becomes a string column holding the exact text Postgres
    /// prints (`NaN` and `Infinity` included): no digit is lost or invented; readers cast it
    /// (`CAST(x AS DECIMAL(38,10))`) where they know its range. A domain's type modifier is
    /// not in the result description, so a domain over `numeric(p,s)` is text too.
    fn of(ty: &Type, type_modifier: i32) -> Option<Scalar> {
        Some(match ty {
            t if *t == Type::INT2 => Scalar::Int2,
            t if *t == Type::INT4 => Scalar::Int4,
            t if *t == Type::INT8 => Scalar::Int8,
            t if *t == Type::FLOAT4 => Scalar::Float4,
            t if *t == Type::FLOAT8 => Scalar::Float8,
            t if *t == Type::NUMERIC => match numeric_typmod(type_modifier) {
                Some((precision, scale))
                    if (1..=MAX_DECIMAL_PRECISION).contains(&precision)
                        && (0..=precision).contains(&scale) =>
                {
                    Scalar::Decimal {
                        // Both checked to be in 0..=38 just above.
                        precision: precision as u8,
                        scale: scale as i8,
                    }
                }
                _ => Scalar::NumericText,
            },
            t if *t == Type::BOOL => Scalar::Bool,
            t if *t == Type::TEXT
                || *t == Type::VARCHAR
                || *t == Type::BPCHAR
                || *t == Type::NAME =>
            {
                Scalar::Text
            }
            t if *t == Type::DATE => Scalar::Date,
            t if *t == Type::TIMESTAMP => Scalar::Timestamp { utc: false },
            t if *t == Type::TIMESTAMPTZ => Scalar::Timestamp { utc: true },
            t if *t == Type::UUID => Scalar::Uuid,
            t if *t == Type::BYTEA => Scalar::Bytea,
            t if *t == Type::JSON => Scalar::Json,
            t if *t == Type::JSONB => Scalar::Jsonb,
            _ => {
                return match ty.kind() {
                    // enum_send sends the label's text.
                    Kind::Enum(_) => Some(Scalar::Text),
                    // A domain is sent as its base type.
                    Kind::Domain(base) => Scalar::of(base, -1),
                    _ => None,
                };
            }
        })
    }

    fn column_type(self) -> ColumnType {
        match self {
            Scalar::Int2 => ColumnType::Int16,
            Scalar::Int4 => ColumnType::Int32,
            Scalar::Int8 => ColumnType::Int64,
            Scalar::Float4 => ColumnType::Float32,
            Scalar::Float8 => ColumnType::Float64,
            Scalar::Decimal { precision, scale } => ColumnType::Decimal { precision, scale },
            Scalar::NumericText | Scalar::Text => ColumnType::String,
            Scalar::Bool => ColumnType::Bool,
            Scalar::Date => ColumnType::Date,
            Scalar::Timestamp { utc } => ColumnType::Timestamp { utc },
            Scalar::Uuid => ColumnType::Uuid,
            Scalar::Bytea => ColumnType::Binary,
            Scalar::Json | Scalar::Jsonb => ColumnType::Json,
        }
    }

    /// A NULL of this scalar's builder.
    fn null(self) -> Val<'static> {
        match self {
            Scalar::Int2 => Val::I16(None),
            Scalar::Int4 => Val::I32(None),
            Scalar::Int8 => Val::I64(None),
            Scalar::Float4 => Val::F32(None),
            Scalar::Float8 => Val::F64(None),
            Scalar::Decimal { .. } => Val::Dec(None),
            Scalar::Bool => Val::Bool(None),
            Scalar::Date => Val::Date(None),
            Scalar::Timestamp { .. } => Val::Ts(None),
            Scalar::Bytea => Val::Bytes(None),
            Scalar::NumericText | Scalar::Text | Scalar::Uuid | Scalar::Json | Scalar::Jsonb => {
                Val::Str(None)
            }
        }
    }

    /// Decodes one non-NULL value in this scalar's binary send format.
    fn decode(self, raw: &[u8]) -> Result<Val<'_>, Problem> {
        let bad = |e: Box<dyn std::error::Error + Sync + Send>| Problem::Malformed(e.to_string());
        Ok(match self {
            Scalar::Int2 => Val::I16(Some(wire::int2_from_sql(raw).map_err(bad)?)),
            Scalar::Int4 => Val::I32(Some(wire::int4_from_sql(raw).map_err(bad)?)),
            Scalar::Int8 => Val::I64(Some(wire::int8_from_sql(raw).map_err(bad)?)),
            Scalar::Float4 => Val::F32(Some(wire::float4_from_sql(raw).map_err(bad)?)),
            Scalar::Float8 => Val::F64(Some(wire::float8_from_sql(raw).map_err(bad)?)),
            Scalar::Decimal { precision, scale } => Val::Dec(Some(
                Numeric::parse(raw)
                    .map_err(Problem::Malformed)?
                    .unscaled(precision, scale)?,
            )),
            Scalar::NumericText => Val::Str(Some(Cow::Owned(
                Numeric::parse(raw).map_err(Problem::Malformed)?.to_text(),
            ))),
            Scalar::Bool => Val::Bool(Some(wire::bool_from_sql(raw).map_err(bad)?)),
            Scalar::Text | Scalar::Json => {
                Val::Str(Some(Cow::Borrowed(wire::text_from_sql(raw).map_err(bad)?)))
            }
            Scalar::Jsonb => match raw.split_first() {
                Some((1, text)) => {
                    Val::Str(Some(Cow::Borrowed(wire::text_from_sql(text).map_err(bad)?)))
                }
                Some((v, _)) => {
                    return Err(Problem::Malformed(format!("unknown jsonb version {v}")));
                }
                None => return Err(Problem::Malformed("empty jsonb value".into())),
            },
            Scalar::Uuid => Val::Str(Some(Cow::Owned(uuid_text(
                wire::uuid_from_sql(raw).map_err(bad)?,
            )))),
            Scalar::Bytea => Val::Bytes(Some(wire::bytea_from_sql(raw))),
            Scalar::Date => {
                let days = wire::date_from_sql(raw).map_err(bad)?;
                if days == i32::MAX || days == i32::MIN {
                    return Err(Problem::Unrepresentable(infinite(days == i32::MAX, "date")));
                }
                let days = days.checked_add(PG_EPOCH_DAYS).ok_or_else(|| {
                    Problem::Unrepresentable("the date is outside Parquet's range".into())
                })?;
                Val::Date(Some(days))
            }
            Scalar::Timestamp { .. } => {
                let micros = wire::timestamp_from_sql(raw).map_err(bad)?;
                if micros == i64::MAX || micros == i64::MIN {
                    return Err(Problem::Unrepresentable(infinite(
                        micros == i64::MAX,
                        "timestamp",
                    )));
                }
                let micros = micros.checked_add(PG_EPOCH_MICROS).ok_or_else(|| {
                    Problem::Unrepresentable("the timestamp is outside Parquet's range".into())
                })?;
                Val::Ts(Some(micros))
            }
        })
    }
}

fn infinite(positive: bool, what: &str) -> String {
    format!(
        "{}infinity has no Parquet {what} value (filter it out, or map it with CASE, e.g. to NULL)",
        if positive { "" } else { "-" }
    )
}

/// Precision and scale of a `numeric` type modifier (`-1`, none, gives `None`). The scale is
/// 11 bits, signed since Postgres 15 (earlier versions only store 0..=1000, which read the
/// same).
fn numeric_typmod(type_modifier: i32) -> Option<(i32, i32)> {
    if type_modifier < VARHDRSZ {
        return None;
    }
    let t = type_modifier - VARHDRSZ;
    Some(((t >> 16) & 0xffff, ((t & 0x7ff) ^ 1024) - 1024))
}

/// `8-4-4-4-12` lowercase hex, as Postgres prints a uuid.
fn uuid_text(bytes: [u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// What is wrong with a value: the bytes do not follow the type's binary format (the server
/// or the connection is broken), the value is sound but has no Parquet form, or the builders
/// do not match the schema (a bug).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    Malformed(String),
    Unrepresentable(String),
    Bug(String),
}

impl Problem {
    fn in_element(self, n: usize) -> Problem {
        match self {
            Problem::Malformed(m) => Problem::Malformed(format!("array element {n}: {m}")),
            Problem::Unrepresentable(m) => {
                Problem::Unrepresentable(format!("array element {n}: {m}"))
            }
            Problem::Bug(m) => Problem::Bug(m),
        }
    }
}

/// A decoded value (or NULL), one variant per builder it goes into.
#[derive(Debug, Clone, PartialEq)]
enum Val<'a> {
    I16(Option<i16>),
    I32(Option<i32>),
    I64(Option<i64>),
    F32(Option<f32>),
    F64(Option<f64>),
    Dec(Option<i128>),
    Bool(Option<bool>),
    Date(Option<i32>),
    Ts(Option<i64>),
    Str(Option<Cow<'a, str>>),
    Bytes(Option<&'a [u8]>),
}

impl Val<'_> {
    /// About how many bytes the value adds to its builder, for the batch size estimate.
    fn size(&self) -> usize {
        match self {
            Val::Str(Some(s)) => s.len() + 4,
            Val::Bytes(Some(b)) => b.len() + 4,
            Val::Dec(_) => 16,
            _ => 8,
        }
    }

    /// Appends to a column's builder; `false` when the builder is of another type.
    fn push_column(self, b: &mut ColumnBuilder) -> bool {
        match (b, self) {
            (ColumnBuilder::I16(b), Val::I16(v)) => b.append_option(v),
            (ColumnBuilder::I32(b), Val::I32(v)) => b.append_option(v),
            (ColumnBuilder::I64(b), Val::I64(v)) => b.append_option(v),
            (ColumnBuilder::F32(b), Val::F32(v)) => b.append_option(v),
            (ColumnBuilder::F64(b), Val::F64(v)) => b.append_option(v),
            (ColumnBuilder::Decimal(b), Val::Dec(v)) => b.append_option(v),
            (ColumnBuilder::Bool(b), Val::Bool(v)) => b.append_option(v),
            (ColumnBuilder::Date(b), Val::Date(v)) => b.append_option(v),
            (ColumnBuilder::Timestamp(b), Val::Ts(v)) => b.append_option(v),
            (ColumnBuilder::Str(b), Val::Str(v)) => b.append_option(v),
            (ColumnBuilder::Binary(b), Val::Bytes(v)) => b.append_option(v),
            _ => return false,
        }
        true
    }

    /// Appends to a list column's item builder; `false` when it is of another type.
    fn push_item(self, items: &mut dyn ArrayBuilder) -> bool {
        fn put<B: 'static>(items: &mut dyn ArrayBuilder, f: impl FnOnce(&mut B)) -> bool {
            items.as_any_mut().downcast_mut::<B>().map(f).is_some()
        }
        match self {
            Val::I16(v) => put::<Int16Builder>(items, |b| b.append_option(v)),
            Val::I32(v) => put::<Int32Builder>(items, |b| b.append_option(v)),
            Val::I64(v) => put::<Int64Builder>(items, |b| b.append_option(v)),
            Val::F32(v) => put::<Float32Builder>(items, |b| b.append_option(v)),
            Val::F64(v) => put::<Float64Builder>(items, |b| b.append_option(v)),
            Val::Dec(v) => put::<Decimal128Builder>(items, |b| b.append_option(v)),
            Val::Bool(v) => put::<BooleanBuilder>(items, |b| b.append_option(v)),
            Val::Date(v) => put::<Date32Builder>(items, |b| b.append_option(v)),
            Val::Ts(v) => put::<TimestampMicrosecondBuilder>(items, |b| b.append_option(v)),
            Val::Str(v) => put::<StringBuilder>(items, |b| b.append_option(v)),
            Val::Bytes(v) => put::<BinaryBuilder>(items, |b| b.append_option(v)),
        }
    }
}

/// A `numeric` in its binary send format: `int16 ndigits, int16 weight, uint16 sign, uint16
/// dscale`, then `ndigits` base-10000 digits, the first worth `10000^weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numeric<'a> {
    NaN,
    Infinity,
    NegInfinity,
    Finite {
        negative: bool,
        weight: i16,
        dscale: u16,
        /// `ndigits` big-endian `int16`s, each checked to be in 0..=9999.
        digits: &'a [u8],
    },
}

impl<'a> Numeric<'a> {
    /// Checks the layout: the exact length, a known sign, each digit in 0..=9999, and the
    /// display scale within Postgres's limit (what `numeric_recv` checks).
    fn parse(raw: &'a [u8]) -> Result<Self, String> {
        let Some((head, digits)) = raw.split_at_checked(8) else {
            return Err(format!(
                "numeric of {} bytes, shorter than its header",
                raw.len()
            ));
        };
        let ndigits = i16::from_be_bytes([head[0], head[1]]);
        let weight = i16::from_be_bytes([head[2], head[3]]);
        let sign = u16::from_be_bytes([head[4], head[5]]);
        let dscale = u16::from_be_bytes([head[6], head[7]]);
        let Ok(n) = usize::try_from(ndigits) else {
            return Err(format!("numeric with {ndigits} digits"));
        };
        if digits.len() != 2 * n {
            return Err(format!(
                "numeric of {n} digits in {} bytes (expected {})",
                raw.len(),
                8 + 2 * n
            ));
        }
        if let Some(d) = digits
            .chunks_exact(2)
            .map(|d| i16::from_be_bytes([d[0], d[1]]))
            .find(|d| !(0..=9999).contains(d))
        {
            return Err(format!("numeric digit {d} outside 0..=9999"));
        }
        match sign {
            NUMERIC_NAN => return Ok(Numeric::NaN),
            NUMERIC_PINF => return Ok(Numeric::Infinity),
            NUMERIC_NINF => return Ok(Numeric::NegInfinity),
            NUMERIC_POS | NUMERIC_NEG => {}
            other => return Err(format!("numeric sign {other:#06x}")),
        }
        if dscale > NUMERIC_DSCALE_MAX {
            return Err(format!("numeric display scale {dscale}"));
        }
        Ok(Numeric::Finite {
            negative: sign == NUMERIC_NEG,
            weight,
            dscale,
            digits,
        })
    }

    /// The value times `10^scale`, exactly: an error when it has digits below that scale or
    /// more than `precision` digits in all, or is NaN or infinite. Digits below the display
    /// scale are not part of the value: `numeric_recv` truncates them away, and
    /// [`to_text`](Self::to_text) does not print them.
    fn unscaled(self, precision: u8, scale: i8) -> Result<i128, Problem> {
        let (negative, weight, dscale, digits) = match self {
            Numeric::Finite {
                negative,
                weight,
                dscale,
                digits,
            } => (negative, weight, dscale, digits),
            special => {
                return Err(Problem::Unrepresentable(format!(
                    "{} has no Parquet decimal value (filter it out, or map it with CASE, e.g. to NULL)",
                    special.to_text()
                )));
            }
        };
        let too_many = || {
            Problem::Unrepresentable(format!(
                "the value has more than {} digits before the point, so it does not fit numeric({precision},{scale})",
                i32::from(precision) - i32::from(scale)
            ))
        };
        let mut magnitude: i128 = 0;
        for (i, d) in digits.chunks_exact(2).enumerate() {
            // Checked in `parse`: 0..=9999.
            let mut d = i128::from(u16::from_be_bytes([d[0], d[1]]));
            // The digit's units are worth 10^(4 * (weight - i)); the display scale hides its
            // decimal digits below 10^-dscale.
            let units = 4 * (i64::from(weight) - i as i64);
            let hidden = (-i64::from(dscale) - units).clamp(0, 4);
            d -= d % 10i128.pow(hidden as u32);
            if d == 0 {
                continue;
            }
            // The digit is worth 10000^(weight - i); times 10^scale that is 10^exp.
            let exp = units + i64::from(scale);
            let part = if exp >= 0 {
                let power = u32::try_from(exp)
                    .ok()
                    .and_then(|e| 10i128.checked_pow(e))
                    .ok_or_else(too_many)?;
                d.checked_mul(power).ok_or_else(too_many)?
            } else {
                let divisor = u32::try_from(-exp)
                    .ok()
                    .filter(|&e| e < 4)
                    .map(|e| 10i128.pow(e));
                match divisor {
                    Some(div) if d % div == 0 => d / div,
                    _ => {
                        return Err(Problem::Unrepresentable(format!(
                            "the value has more than {scale} digits after the point, so it does not fit numeric({precision},{scale})"
                        )));
                    }
                }
            };
            magnitude = magnitude.checked_add(part).ok_or_else(too_many)?;
        }
        // precision <= 38, and 10^38 fits an i128.
        if magnitude >= 10i128.pow(u32::from(precision)) {
            return Err(too_many());
        }
        Ok(if negative { -magnitude } else { magnitude })
    }

    /// The text Postgres prints (`numeric_out`): every digit before the point, exactly
    /// `dscale` after it; `NaN`, `Infinity`, `-Infinity`.
    fn to_text(self) -> String {
        let (negative, weight, dscale, digits) = match self {
            Numeric::NaN => return "NaN".into(),
            Numeric::Infinity => return "Infinity".into(),
            Numeric::NegInfinity => return "-Infinity".into(),
            Numeric::Finite {
                negative,
                weight,
                dscale,
                digits,
            } => (negative, i32::from(weight), usize::from(dscale), digits),
        };
        let n = digits.len() / 2;
        let digit = |i: i32| -> u16 {
            usize::try_from(i)
                .ok()
                .filter(|&i| i < n)
                .map(|i| u16::from_be_bytes([digits[2 * i], digits[2 * i + 1]]))
                .unwrap_or(0)
        };
        let whole = usize::try_from(weight + 1).unwrap_or(0);
        let mut s = String::with_capacity(2 + 4 * whole.max(1) + dscale + 4);
        if negative {
            s.push('-');
        }
        // Writing into a String cannot fail.
        if weight < 0 {
            s.push('0');
        } else {
            let _ = write!(s, "{}", digit(0));
            for i in 1..=weight {
                let _ = write!(s, "{:04}", digit(i));
            }
        }
        if dscale > 0 {
            s.push('.');
            let mut left = dscale;
            let mut i = weight + 1;
            while left > 0 {
                let take = left.min(4);
                // The first `take` of the group's four digits.
                let _ = write!(s, "{:0take$}", digit(i) / 10u16.pow(4 - take as u32));
                left -= take;
                i += 1;
            }
        }
        s
    }
}

/// One result column: how its values decode, and its name and type for messages.
#[derive(Debug, Clone)]
struct ColumnDecoder {
    name: String,
    /// `int4`, `numeric(12,2)`, `text[]`.
    pg_type: String,
    scalar: Scalar,
    /// For an array column, the element type's OID, which every value must carry.
    array: Option<u32>,
}

/// Decodes binary COPY tuples of one query's result into the column builders of a Parquet
/// output; built from the result columns before COPY starts.
///
/// Postgres types map to Parquet columns as follows (anything else is refused up front, naming
/// the column): `int2`/`int4`/`int8` → int16/int32/int64, `float4`/`float8` → float32/float64,
/// `numeric(p,s)` with `p <= 38` → decimal(p,s), any other `numeric` → its exact text (see
/// below), `bool` → bool, `text`/`varchar`/`bpchar`/`name` and enums → string, `date` →
/// date, `timestamp` → timestamp, `timestamptz` → timestamp (UTC), `uuid` → uuid (its
/// 36-character text), `bytea` → binary, `json`/`jsonb` → json text, a domain as its base
/// type, and a one-dimensional array of any of these → a list (NULL elements kept).
///
/// An unconstrained `numeric` is text because it can hold any of Postgres's up to 131,072
/// digits before the point, beyond the 38 digits of a Parquet decimal; its text is exactly
/// what Postgres prints, so nothing is rounded.
///
/// Values with no Parquet form end the export with an error naming the column and the row:
/// `NaN` or `±Infinity` in a decimal column, `±infinity` dates and timestamps, and arrays of
/// two or more dimensions.
#[derive(Debug, Clone)]
pub struct TupleDecoder {
    database: String,
    columns: Vec<ColumnDecoder>,
    schema: TableSchema,
    /// The most bytes one row may decode to (see [`with_max_row_bytes`](Self::with_max_row_bytes)).
    max_row_bytes: usize,
}

impl TupleDecoder {
    /// Maps `columns` to a Parquet schema. A column of an unsupported type, no columns at all
    /// or two columns of the same name are an [`Error::InvalidSpec`] naming them.
    pub fn new(database: &str, columns: &[ResultColumn]) -> Result<Self> {
        if columns.is_empty() {
            return Err(Error::spec(
                "source.postgres.query returns no columns; Parquet output needs at least one",
            ));
        }
        if i16::try_from(columns.len()).is_err() {
            return Err(Error::spec(format!(
                "source.postgres.query returns {} columns, more than binary COPY carries",
                columns.len()
            )));
        }
        let mut seen = HashSet::new();
        if let Some(dup) = columns.iter().find(|c| !seen.insert(c.name.as_str())) {
            return Err(Error::spec(format!(
                "source.postgres.query: column \"{}\" appears more than once; Parquet output needs distinct names (give each an alias)",
                dup.name
            )));
        }
        let mut decoders = Vec::with_capacity(columns.len());
        let mut refused = Vec::new();
        for c in columns {
            let (scalar, array) = match c.ty.kind() {
                Kind::Array(element) => (Scalar::of(element, c.type_modifier), Some(element.oid())),
                _ => (Scalar::of(&c.ty, c.type_modifier), None),
            };
            let pg_type = type_name(&c.ty, c.type_modifier);
            match scalar {
                Some(scalar) => decoders.push(ColumnDecoder {
                    name: c.name.clone(),
                    pg_type,
                    scalar,
                    array,
                }),
                None => refused.push(format!("column \"{}\" has type {pg_type}", c.name)),
            }
        }
        if !refused.is_empty() {
            return Err(Error::spec(format!(
                "source.postgres.query: {}, which Parquet output does not support (supported: {SUPPORTED}); cast it, e.g. to text",
                refused.join("; ")
            )));
        }
        let schema = TableSchema::new(
            decoders
                .iter()
                .map(|d| {
                    let ty = d.scalar.column_type();
                    let ty = match d.array {
                        Some(_) => ColumnType::List(Box::new(ty)),
                        None => ty,
                    };
                    Column::new(d.name.clone(), ty)
                })
                .collect(),
        );
        Ok(TupleDecoder {
            database: database.to_owned(),
            columns: decoders,
            schema,
            max_row_bytes: usize::MAX,
        })
    }

    /// Caps what one row may decode to: a tuple can be far smaller than its values (an
    /// unconstrained `numeric` of 10 bytes prints as 131,072 digits, and an array holds
    /// thousands of them), so the row cap on COPY messages alone does not bound the builders.
    /// A row past it is an `InvalidInput` error naming the row and the column, raised before
    /// more than one value past the cap is built. Default: no cap.
    pub fn with_max_row_bytes(mut self, max_row_bytes: usize) -> Self {
        self.max_row_bytes = max_row_bytes;
        self
    }

    /// The Parquet schema: one column per result column, in order.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// Fields per tuple.
    pub fn fields(&self) -> usize {
        self.columns.len()
    }

    /// Decodes the tuple at the front of `data` (`int16 fields`, then per field `int32
    /// length` and the value) into `builders`, one value each, and moves `data` past it.
    /// `row` (1-based) is for messages. Returns about how many bytes the builders grew by.
    ///
    /// A malformed tuple is an `Upstream` error; a value with no Parquet form (see
    /// [`TupleDecoder`]) an `InvalidInput` one; both name the row and the column. After an
    /// error the builders hold part of the row, so the output must be aborted.
    pub fn decode_row(
        &self,
        data: &mut &[u8],
        builders: &mut [ColumnBuilder],
        row: u64,
    ) -> Result<usize> {
        if builders.len() != self.columns.len() {
            return Err(Error::Internal {
                message: format!(
                    "postgres tuple decoder: {} builders for {} columns",
                    builders.len(),
                    self.columns.len()
                ),
            });
        }
        let fields = take(data, 2).map(|b| i16::from_be_bytes([b[0], b[1]]));
        if fields != Some(self.columns.len() as i16) {
            let what = match fields {
                Some(n) => format!("{n} fields, expected {}", self.columns.len()),
                None => "a truncated tuple".to_owned(),
            };
            return Err(self.error(row, None, Problem::Malformed(what)));
        }
        let mut bytes = 0;
        for (i, (column, builder)) in self.columns.iter().zip(builders.iter_mut()).enumerate() {
            let value = field(data).map_err(|m| self.error(row, Some(i), m))?;
            let budget = self.max_row_bytes.saturating_sub(bytes);
            bytes += self
                .push(column, value, builder, budget)
                .map_err(|p| self.error(row, Some(i), p))?;
        }
        Ok(bytes)
    }

    /// Takes the tuple at the front of `data` (the stream yields whole tuples back to back)
    /// and moves `data` past it. Only the lengths are checked; `row` (1-based) is for
    /// messages. A malformed tuple is an `Upstream` error naming the row.
    pub fn next_tuple<'a>(&self, data: &mut &'a [u8], row: u64) -> Result<&'a [u8]> {
        match tuple_length(data, self.columns.len()) {
            Ok(Some(len)) => {
                let (tuple, rest) = data.split_at(len);
                *data = rest;
                Ok(tuple)
            }
            Ok(None) => Err(self.error(
                row,
                None,
                Problem::Malformed("a trailer among the rows".into()),
            )),
            Err(what) => Err(self.error(row, None, Problem::Malformed(what.into()))),
        }
    }

    /// Column `column` of `tuple` (one whole tuple, from [`next_tuple`](Self::next_tuple)) as
    /// a value of a partition key: NULL, a date, a timestamp (a `timestamp` read as UTC), or
    /// the text Postgres prints for the other types (`true`/`false` for booleans, numerics
    /// with all their digits, `\x…` hex for bytea). An array column, a malformed value or
    /// an infinite date are errors naming the row and the column.
    pub fn field_value(&self, tuple: &[u8], column: usize, row: u64) -> Result<FieldValue> {
        let Some(c) = self.columns.get(column) else {
            return Err(Error::Internal {
                message: format!("postgres tuple decoder: no column {column}"),
            });
        };
        let at = |p: Problem| self.error(row, Some(column), p);
        let mut data = tuple;
        if take(&mut data, 2).map(|b| i16::from_be_bytes([b[0], b[1]]))
            != Some(self.columns.len() as i16)
        {
            return Err(self.error(
                row,
                None,
                Problem::Malformed("unexpected field count".into()),
            ));
        }
        let mut value = None;
        for _ in 0..=column {
            value = field(&mut data).map_err(at)?;
        }
        if c.array.is_some() {
            return Err(at(Problem::Unrepresentable(
                "an array cannot name a partition; partition on a scalar column".into(),
            )));
        }
        let Some(raw) = value else {
            return Ok(FieldValue::Null);
        };
        let text = |s: String| Ok(FieldValue::Text(s));
        match c.scalar {
            Scalar::Decimal { .. } | Scalar::NumericText => {
                return text(
                    Numeric::parse(raw)
                        .map_err(|m| at(Problem::Malformed(m)))?
                        .to_text(),
                );
            }
            Scalar::Bytea => {
                let mut s = String::with_capacity(2 + 2 * raw.len());
                s.push_str("\\x");
                for b in raw {
                    let _ = write!(s, "{b:02x}");
                }
                return text(s);
            }
            _ => {}
        }
        match c.scalar.decode(raw).map_err(at)? {
            Val::Date(Some(days)) => {
                chrono::NaiveDate::from_num_days_from_ce_opt(days.saturating_add(719_163))
                    .map(FieldValue::Date)
                    .ok_or_else(|| at(Problem::Unrepresentable("the date is out of range".into())))
            }
            Val::Ts(Some(micros)) => chrono::DateTime::from_timestamp_micros(micros)
                .map(FieldValue::Timestamp)
                .ok_or_else(|| {
                    at(Problem::Unrepresentable(
                        "the timestamp is out of range".into(),
                    ))
                }),
            Val::Str(Some(s)) => text(s.into_owned()),
            Val::I16(Some(n)) => text(n.to_string()),
            Val::I32(Some(n)) => text(n.to_string()),
            Val::I64(Some(n)) => text(n.to_string()),
            Val::F32(Some(n)) => text(n.to_string()),
            Val::F64(Some(n)) => text(n.to_string()),
            Val::Bool(Some(b)) => text(b.to_string()),
            _ => Ok(FieldValue::Null),
        }
    }

    fn push(
        &self,
        column: &ColumnDecoder,
        value: Option<&[u8]>,
        builder: &mut ColumnBuilder,
        budget: usize,
    ) -> Result<usize, Problem> {
        let over = |size: usize| {
            Problem::Unrepresentable(format!(
                "the row decodes to more than {} bytes (the record cap, tuning.max_record_mib), {size} in this column alone",
                self.max_row_bytes
            ))
        };
        let Some(raw) = value else {
            builder.append_null();
            return Ok(4);
        };
        let misfit = || Problem::Bug("the column's builder has another type".into());
        let Some(element) = column.array else {
            let value = column.scalar.decode(raw)?;
            let size = value.size();
            if size > budget {
                return Err(over(size));
            }
            return if value.push_column(builder) {
                Ok(size)
            } else {
                Err(misfit())
            };
        };
        let bad = |e: Box<dyn std::error::Error + Sync + Send>| Problem::Malformed(e.to_string());
        let array = wire::array_from_sql(raw).map_err(bad)?;
        if array.element_type() != element {
            return Err(Problem::Malformed(format!(
                "array of type OID {}, expected {element}",
                array.element_type()
            )));
        }
        let dimensions = array.dimensions().count().map_err(bad)?;
        if dimensions > 1 {
            return Err(Problem::Unrepresentable(format!(
                "a {dimensions}-dimensional array; Parquet lists hold one-dimensional arrays (unnest it, or cast the column to text)"
            )));
        }
        let length = match array.dimensions().next().map_err(bad)? {
            Some(d) => d.len,
            None => 0,
        };
        // The elements follow the 12-byte header and an `int32 length, int32 lower bound`
        // pair per dimension (`array_from_sql` checked they are there). They are walked here
        // rather than with its iterator, which takes any negative length for a NULL.
        let Some(mut elements) = raw.get(12 + 8 * dimensions..) else {
            return Err(Problem::Malformed("truncated array header".into()));
        };
        let Some(items) = builder.list_items() else {
            return Err(misfit());
        };
        let mut size = 8;
        // array_from_sql refuses negative dimension lengths.
        for n in 1..=usize::try_from(length).unwrap_or(0) {
            let item = field(&mut elements).map_err(|p| p.in_element(n))?;
            let value = match item {
                None => column.scalar.null(),
                Some(raw) => column.scalar.decode(raw).map_err(|p| p.in_element(n))?,
            };
            size += value.size();
            if size > budget {
                return Err(over(size));
            }
            if !value.push_item(&mut **items) {
                return Err(misfit());
            }
        }
        if !elements.is_empty() {
            return Err(Problem::Malformed(format!(
                "{} bytes after the array's {length} elements",
                elements.len()
            )));
        }
        builder.end_list();
        Ok(size)
    }

    fn error(&self, row: u64, column: Option<usize>, problem: Problem) -> Error {
        let at = match column.and_then(|i| self.columns.get(i)) {
            Some(c) => format!("column \"{}\" ({}): ", c.name, c.pg_type),
            None => String::new(),
        };
        let (message, kind) = match problem {
            Problem::Malformed(m) => (
                format!("malformed binary COPY data: {at}{m}"),
                ErrorKind::Upstream,
            ),
            Problem::Unrepresentable(m) => (format!("{at}{m}"), ErrorKind::InvalidInput),
            Problem::Bug(m) => {
                return Error::Internal {
                    message: format!("postgres tuple decoder, row {row}: {at}{m}"),
                };
            }
        };
        Error::Postgres {
            database: self.database.clone(),
            stage: format!("row {row}"),
            sqlstate: None,
            message,
            kind,
        }
    }
}

/// The type as messages name it: `int4`, `numeric(12,2)`, `text[]`.
fn type_name(ty: &Type, type_modifier: i32) -> String {
    match ty.kind() {
        Kind::Array(element) => format!("{}[]", type_name(element, type_modifier)),
        _ if *ty == Type::NUMERIC => match numeric_typmod(type_modifier) {
            Some((p, s)) => format!("numeric({p},{s})"),
            None => "numeric".into(),
        },
        _ => ty.name().to_owned(),
    }
}

/// The first `n` bytes of `data`, moving `data` past them; `None` when it is shorter.
fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = data.split_at_checked(n)?;
    *data = rest;
    Some(head)
}

/// One field at the front of `data`: `int32 length` (`-1` for NULL), then that many bytes.
fn field<'a>(data: &mut &'a [u8]) -> Result<Option<&'a [u8]>, Problem> {
    let len = take(data, 4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| Problem::Malformed("truncated field length".into()))?;
    if len == -1 {
        return Ok(None);
    }
    let value = usize::try_from(len)
        .ok()
        .and_then(|len| take(data, len))
        .ok_or_else(|| {
            Problem::Malformed(format!(
                "field length {len} with {} bytes left in the tuple",
                data.len()
            ))
        })?;
    Ok(Some(value))
}

/// The length of the tuple at the front of `data` if it has `fields` fields, `None` for the
/// trailer (`int16 -1`), or what is wrong. Only lengths are checked, not values.
pub(super) fn tuple_length(data: &[u8], fields: usize) -> Result<Option<usize>, &'static str> {
    let mut rest = data;
    let Some(count) = take(&mut rest, 2).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
        return Err("truncated tuple");
    };
    if count == -1 {
        return Ok(None);
    }
    if usize::try_from(count).ok() != Some(fields) {
        return Err("unexpected field count");
    }
    for _ in 0..fields {
        field(&mut rest).map_err(|_| "bad field length")?;
    }
    Ok(Some(data.len() - rest.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Int32Type};
    use arrow_array::{Array, ArrayRef};
    use bytes::BytesMut;
    use postgres_protocol::IsNull;
    use postgres_protocol::types::ArrayDimension;

    /// The binary form of a numeric: base-10000 `digits`, the first worth `10000^weight`.
    fn numeric(sign: u16, weight: i16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    fn typmod(precision: i32, scale: i32) -> i32 {
        ((precision << 16) | (scale & 0x7ff)) + VARHDRSZ
    }

    fn parsed(raw: &[u8]) -> Numeric<'_> {
        Numeric::parse(raw).unwrap()
    }

    fn tuple(fields: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut t = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => t.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    t.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    t.extend_from_slice(v);
                }
            }
        }
        t
    }

    fn encode(f: impl FnOnce(&mut BytesMut)) -> Option<Vec<u8>> {
        let mut b = BytesMut::new();
        f(&mut b);
        Some(b.to_vec())
    }

    fn int4_array(dims: &[i32], items: &[Option<i32>]) -> Option<Vec<u8>> {
        let mut b = BytesMut::new();
        wire::array_to_sql(
            dims.iter().map(|&len| ArrayDimension {
                len,
                lower_bound: 1,
            }),
            Type::INT4.oid(),
            items.iter().copied(),
            |v, buf| {
                Ok(match v {
                    Some(v) => {
                        wire::int4_to_sql(v, buf);
                        IsNull::No
                    }
                    None => IsNull::Yes,
                })
            },
            &mut b,
        )
        .unwrap();
        Some(b.to_vec())
    }

    fn builders(d: &TupleDecoder) -> Vec<ColumnBuilder> {
        d.schema()
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(&c.ty))
            .collect()
    }

    fn decode(d: &TupleDecoder, tuples: &[Vec<u8>]) -> Result<Vec<ArrayRef>> {
        let mut b = builders(d);
        for (i, t) in tuples.iter().enumerate() {
            let mut rest = t.as_slice();
            d.decode_row(&mut rest, &mut b, i as u64 + 1)?;
            assert!(rest.is_empty(), "the tuple was not consumed whole");
        }
        Ok(b.iter_mut().map(ColumnBuilder::finish).collect())
    }

    #[test]
    fn numeric_type_modifiers_give_precision_and_scale() {
        assert_eq!(numeric_typmod(-1), None);
        assert_eq!(numeric_typmod(typmod(12, 2)), Some((12, 2)));
        assert_eq!(numeric_typmod(typmod(1000, 1000)), Some((1000, 1000)));
        // Postgres 15: negative scales.
        assert_eq!(numeric_typmod(typmod(5, -2)), Some((5, -2)));
        let of = |m| Scalar::of(&Type::NUMERIC, m);
        assert_eq!(
            of(typmod(12, 2)),
            Some(Scalar::Decimal {
                precision: 12,
                scale: 2
            })
        );
        assert_eq!(
            of(typmod(38, 38)),
            Some(Scalar::Decimal {
                precision: 38,
                scale: 38
            })
        );
        for m in [-1, typmod(39, 2), typmod(5, -2), typmod(2, 5)] {
            assert_eq!(of(m), Some(Scalar::NumericText), "{m}");
        }
    }

    #[test]
    fn numerics_convert_exactly_to_the_column_scale() {
        // 12345.678: digits 1 | 2345 | 6780, weight 1.
        let raw = numeric(NUMERIC_POS, 1, 3, &[1, 2345, 6780]);
        let n = parsed(&raw);
        assert_eq!(n.unscaled(8, 3), Ok(12_345_678));
        assert_eq!(n.unscaled(10, 5), Ok(1_234_567_800));
        assert!(
            matches!(n.unscaled(7, 3), Err(Problem::Unrepresentable(m)) if m.contains("more than 4 digits before the point"))
        );
        assert!(
            matches!(n.unscaled(12, 2), Err(Problem::Unrepresentable(m)) if m.contains("more than 2 digits after the point"))
        );
        assert_eq!(n.to_text(), "12345.678");
        // -0.5 and -0.05.
        let raw = numeric(NUMERIC_NEG, -1, 1, &[5000]);
        assert_eq!(parsed(&raw).unscaled(3, 2), Ok(-50));
        assert_eq!(parsed(&raw).to_text(), "-0.5");
        let raw = numeric(NUMERIC_NEG, -1, 2, &[500]);
        assert_eq!(parsed(&raw).unscaled(3, 2), Ok(-5));
        assert_eq!(parsed(&raw).to_text(), "-0.05");
        // Zero, with and without a display scale.
        let raw = numeric(NUMERIC_POS, 0, 2, &[]);
        assert_eq!(parsed(&raw).unscaled(1, 0), Ok(0));
        assert_eq!(parsed(&raw).to_text(), "0.00");
        // 10000: a trailing zero digit group is not sent.
        let raw = numeric(NUMERIC_POS, 1, 0, &[1]);
        assert_eq!(parsed(&raw).unscaled(5, 0), Ok(10_000));
        assert!(parsed(&raw).unscaled(4, 0).is_err());
        assert_eq!(parsed(&raw).to_text(), "10000");
        // 0.00000001 (weight -2) and 1.0001.
        let raw = numeric(NUMERIC_POS, -2, 8, &[1]);
        assert_eq!(parsed(&raw).to_text(), "0.00000001");
        assert_eq!(parsed(&raw).unscaled(8, 8), Ok(1));
        let raw = numeric(NUMERIC_POS, 0, 4, &[1, 1]);
        assert_eq!(parsed(&raw).to_text(), "1.0001");
        assert_eq!(parsed(&raw).unscaled(6, 5), Ok(100_010));
        // A display scale shorter than the last group prints only its digits.
        let raw = numeric(NUMERIC_POS, 0, 1, &[3, 5000]);
        assert_eq!(parsed(&raw).to_text(), "3.5");
        // 38 nines fit decimal(38,0); 10^38 does not.
        let mut nines = vec![99; 1];
        nines.extend([9999; 9]);
        let raw = numeric(NUMERIC_POS, 9, 0, &nines);
        assert_eq!(parsed(&raw).unscaled(38, 0), Ok(10i128.pow(38) - 1));
        assert_eq!(parsed(&raw).to_text(), "9".repeat(38));
        let raw = numeric(NUMERIC_POS, 9, 0, &[100]);
        assert!(parsed(&raw).unscaled(38, 0).is_err());
        assert_eq!(parsed(&raw).to_text(), format!("1{}", "0".repeat(38)));
        // Far beyond i128: an error, not a wrap or a panic.
        let raw = numeric(NUMERIC_POS, i16::MAX, 0, &[9999, 9999]);
        assert!(parsed(&raw).unscaled(38, 10).is_err());
        // 16,384 places after the point, within the largest display scale: too many.
        let raw = numeric(NUMERIC_POS, -4096, NUMERIC_DSCALE_MAX, &[9999]);
        assert!(parsed(&raw).unscaled(38, 38).is_err());
        assert!(parsed(&raw).to_text().ends_with("999"));
    }

    #[test]
    fn special_numerics_are_text_but_no_decimal() {
        for (sign, text) in [
            (NUMERIC_NAN, "NaN"),
            (NUMERIC_PINF, "Infinity"),
            (NUMERIC_NINF, "-Infinity"),
        ] {
            let raw = numeric(sign, 0, 0, &[]);
            assert_eq!(parsed(&raw).to_text(), text);
            assert!(
                matches!(parsed(&raw).unscaled(12, 2), Err(Problem::Unrepresentable(m)) if m.starts_with(text)),
                "{text}"
            );
        }
    }

    /// Found by the `postgres_tuple` fuzz target: a decimal column kept the digits a value's
    /// display scale hides (`0.00001025` with display scale 0), so it held another value than
    /// its text, and than Postgres (`numeric_recv` truncates them away).
    #[test]
    fn decimal_drops_digits_the_display_scale_hides() {
        let raw = numeric(NUMERIC_POS, -2, 0, &[1025]);
        assert_eq!(parsed(&raw).to_text(), "0");
        assert_eq!(parsed(&raw).unscaled(38, 38), Ok(0));
        // 3.5678 with display scale 1 is 3.5, and fits numeric(5,1).
        let raw = numeric(NUMERIC_POS, 0, 1, &[3, 5678]);
        assert_eq!(parsed(&raw).to_text(), "3.5");
        assert_eq!(parsed(&raw).unscaled(5, 4), Ok(35_000));
        assert_eq!(parsed(&raw).unscaled(2, 1), Ok(35));
        // -12.345678 with display scale 6: nothing hidden; -12.3456789 with 5: 12.34567.
        let raw = numeric(NUMERIC_NEG, 0, 6, &[12, 3456, 7800]);
        assert_eq!(parsed(&raw).unscaled(8, 6), Ok(-12_345_678));
        let raw = numeric(NUMERIC_NEG, 0, 5, &[12, 3456, 7890]);
        assert_eq!(parsed(&raw).to_text(), "-12.34567");
        assert_eq!(parsed(&raw).unscaled(7, 5), Ok(-1_234_567));
        // A digit far below any display scale: zero, as its text says, not a wrap or a panic.
        let raw = numeric(NUMERIC_POS, i16::MIN, 0, &[9999]);
        assert_eq!(parsed(&raw).to_text(), "0");
        assert_eq!(parsed(&raw).unscaled(38, 38), Ok(0));
    }

    #[test]
    fn malformed_numerics_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0; 7], "shorter than its header"),
            (
                numeric(NUMERIC_POS, 0, 0, &[1])[..9].to_vec(),
                "1 digits in 9 bytes",
            ),
            (
                [numeric(NUMERIC_POS, 0, 0, &[1]), vec![0]].concat(),
                "1 digits in 11 bytes",
            ),
            (numeric(NUMERIC_POS, 0, 0, &[10_000]), "digit 10000"),
            (numeric(NUMERIC_POS, 0, 0, &[-1]), "digit -1"),
            (numeric(0x1234, 0, 0, &[1]), "sign 0x1234"),
            (numeric(NUMERIC_POS, 0, 0x4000, &[1]), "display scale 16384"),
        ];
        for (raw, want) in cases {
            let e = Numeric::parse(&raw).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let mut raw = numeric(NUMERIC_POS, 0, 0, &[]);
        raw[..2].copy_from_slice(&(-3i16).to_be_bytes());
        assert!(Numeric::parse(&raw).unwrap_err().contains("-3 digits"));
    }

    #[test]
    fn every_supported_type_decodes_into_its_column() {
        let cols = vec![
            ResultColumn::new("i2", Type::INT2, -1),
            ResultColumn::new("i4", Type::INT4, -1),
            ResultColumn::new("i8", Type::INT8, -1),
            ResultColumn::new("f4", Type::FLOAT4, -1),
            ResultColumn::new("f8", Type::FLOAT8, -1),
            ResultColumn::new("amount", Type::NUMERIC, typmod(12, 2)),
            ResultColumn::new("n", Type::NUMERIC, -1),
            ResultColumn::new("b", Type::BOOL, -1),
            ResultColumn::new("t", Type::TEXT, -1),
            ResultColumn::new("vc", Type::VARCHAR, 14),
            ResultColumn::new("d", Type::DATE, -1),
            ResultColumn::new("ts", Type::TIMESTAMP, -1),
            ResultColumn::new("tz", Type::TIMESTAMPTZ, -1),
            ResultColumn::new("u", Type::UUID, -1),
            ResultColumn::new("by", Type::BYTEA, -1),
            ResultColumn::new("j", Type::JSON, -1),
            ResultColumn::new("jb", Type::JSONB, -1),
            ResultColumn::new("arr", Type::INT4_ARRAY, -1),
            ResultColumn::new("tags", Type::TEXT_ARRAY, -1),
        ];
        let d = TupleDecoder::new("u@h:5432/db", &cols).unwrap();
        let described: Vec<String> = d.schema().describe().into_iter().map(|(_, t)| t).collect();
        assert_eq!(
            described,
            [
                "int16",
                "int32",
                "int64",
                "float32",
                "float64",
                "decimal(12,2)",
                "string",
                "bool",
                "string",
                "string",
                "date",
                "timestamp",
                "timestamp (UTC)",
                "uuid",
                "binary",
                "json",
                "json",
                "list<int32>",
                "list<string>"
            ]
        );
        let uuid = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        let mut tags = BytesMut::new();
        wire::array_to_sql(
            [ArrayDimension {
                len: 3,
                lower_bound: 1,
            }],
            Type::TEXT.oid(),
            [Some("a"), None, Some("b,c")],
            |v, buf| {
                Ok(match v {
                    Some(v) => {
                        wire::text_to_sql(v, buf);
                        IsNull::No
                    }
                    None => IsNull::Yes,
                })
            },
            &mut tags,
        )
        .unwrap();
        let full = tuple(&[
            encode(|b| wire::int2_to_sql(-7, b)),
            encode(|b| wire::int4_to_sql(i32::MIN, b)),
            encode(|b| wire::int8_to_sql(1 << 40, b)),
            encode(|b| wire::float4_to_sql(1.5, b)),
            encode(|b| wire::float8_to_sql(f64::NAN, b)),
            Some(numeric(NUMERIC_NEG, 1, 2, &[1, 2345, 6700])),
            Some(numeric(
                NUMERIC_POS,
                4,
                9,
                &[1234, 5678, 9012, 3456, 7890, 1234, 5678, 9000],
            )),
            encode(|b| wire::bool_to_sql(true, b)),
            encode(|b| wire::text_to_sql("héllo", b)),
            encode(|b| wire::text_to_sql("", b)),
            encode(|b| wire::date_to_sql(0, b)),
            encode(|b| wire::timestamp_to_sql(1, b)),
            encode(|b| wire::timestamp_to_sql(-PG_EPOCH_MICROS, b)),
            Some(uuid.to_vec()),
            Some(vec![0, 255]),
            encode(|b| wire::text_to_sql("{\"a\": 1}", b)),
            Some(b"\x01[1, \"x\"]".to_vec()),
            int4_array(&[3], &[Some(1), None, Some(-3)]),
            Some(tags.to_vec()),
        ]);
        let nulls = tuple(&vec![None; cols.len()]);
        let empty = {
            let mut fields = vec![None; cols.len()];
            fields[17] = int4_array(&[], &[]);
            tuple(&fields)
        };
        let a = decode(&d, &[full, nulls, empty]).unwrap();
        assert!(a.iter().all(|a| a.len() == 3));
        assert_eq!(
            a[0].as_primitive::<arrow_array::types::Int16Type>()
                .value(0),
            -7
        );
        assert_eq!(a[1].as_primitive::<Int32Type>().value(0), i32::MIN);
        assert_eq!(
            a[2].as_primitive::<arrow_array::types::Int64Type>()
                .value(0),
            1 << 40
        );
        assert_eq!(
            a[3].as_primitive::<arrow_array::types::Float32Type>()
                .value(0),
            1.5
        );
        assert!(
            a[4].as_primitive::<arrow_array::types::Float64Type>()
                .value(0)
                .is_nan()
        );
        assert_eq!(a[5].as_primitive::<Decimal128Type>().value(0), -1_234_567);
        assert_eq!(
            a[6].as_string::<i32>().value(0),
            "12345678901234567890.123456789"
        );
        assert!(a[7].as_boolean().value(0));
        assert_eq!(a[8].as_string::<i32>().value(0), "héllo");
        assert_eq!(a[9].as_string::<i32>().value(0), "");
        assert_eq!(
            a[10]
                .as_primitive::<arrow_array::types::Date32Type>()
                .value(0),
            10_957
        );
        let ts = |i: usize| a[i].as_primitive::<arrow_array::types::TimestampMicrosecondType>();
        assert_eq!(ts(11).value(0), PG_EPOCH_MICROS + 1);
        assert_eq!(ts(12).value(0), 0);
        assert_eq!(
            a[13].as_string::<i32>().value(0),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(a[14].as_binary::<i32>().value(0), [0, 255]);
        assert_eq!(a[15].as_string::<i32>().value(0), "{\"a\": 1}");
        assert_eq!(a[16].as_string::<i32>().value(0), "[1, \"x\"]");
        let list = a[17].as_list::<i32>();
        let items = list.value(0);
        let items = items.as_primitive::<Int32Type>();
        assert_eq!(items.iter().collect::<Vec<_>>(), [Some(1), None, Some(-3)]);
        assert!(list.is_null(1));
        assert!(list.is_valid(2) && list.value(2).is_empty());
        let tags = a[18].as_list::<i32>().value(0);
        assert_eq!(
            tags.as_string::<i32>().iter().collect::<Vec<_>>(),
            [Some("a"), None, Some("b,c")]
        );
        // The second row is all NULLs.
        assert!(a.iter().all(|a| a.is_null(1)));
    }

    #[test]
    fn unsupported_types_duplicate_names_and_no_columns_are_refused_by_name() {
        let e = TupleDecoder::new(
            "db",
            &[
                ResultColumn::new("id", Type::INT4, -1),
                ResultColumn::new("p", Type::POINT, -1),
                ResultColumn::new("ips", Type::INET_ARRAY, -1),
            ],
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let e = e.to_string();
        assert!(
            e.contains(
                "column \"p\" has type point; column \"ips\" has type inet[], which Parquet output does not support (supported: smallint"
            ),
            "{e}"
        );
        let e = TupleDecoder::new(
            "db",
            &[
                ResultColumn::new("a", Type::INT4, -1),
                ResultColumn::new("a", Type::TEXT, -1),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("column \"a\" appears more than once"), "{e}");
        let e = TupleDecoder::new("db", &[]).unwrap_err().to_string();
        assert!(e.contains("returns no columns"), "{e}");
    }

    #[test]
    fn values_without_a_parquet_form_name_the_column_and_row() {
        let cols = [
            ResultColumn::new("id", Type::INT4, -1),
            ResultColumn::new("amount", Type::NUMERIC, typmod(12, 2)),
            ResultColumn::new("day", Type::DATE, -1),
            ResultColumn::new("at", Type::TIMESTAMPTZ, -1),
            ResultColumn::new("grid", Type::INT4_ARRAY, -1),
        ];
        let d = TupleDecoder::new("u@h:5432/db", &cols).unwrap();
        let ok = |i: usize| -> Vec<Option<Vec<u8>>> {
            let mut f = vec![None; cols.len()];
            f[0] = encode(|b| wire::int4_to_sql(i as i32, b));
            f
        };
        let with = |col: usize, v: Option<Vec<u8>>| {
            let mut f = ok(3);
            f[col] = v;
            vec![tuple(&ok(1)), tuple(&ok(2)), tuple(&f)]
        };
        let cases = [
            (
                with(1, Some(numeric(NUMERIC_NAN, 0, 0, &[]))),
                "column \"amount\" (numeric(12,2)): NaN has no Parquet decimal value",
            ),
            (
                with(1, Some(numeric(NUMERIC_POS, 3, 0, &[1]))),
                "column \"amount\" (numeric(12,2)): the value has more than 10 digits before the point",
            ),
            (
                with(2, encode(|b| wire::date_to_sql(i32::MAX, b))),
                "column \"day\" (date): infinity has no Parquet date value",
            ),
            (
                with(3, encode(|b| wire::timestamp_to_sql(i64::MIN, b))),
                "column \"at\" (timestamptz): -infinity has no Parquet timestamp value",
            ),
            (
                with(4, int4_array(&[2, 2], &[Some(1), Some(2), Some(3), None])),
                "column \"grid\" (int4[]): a 2-dimensional array",
            ),
        ];
        for (tuples, want) in cases {
            let e = decode(&d, &tuples).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            let e = e.to_string();
            assert!(
                e.starts_with("postgres u@h:5432/db: row 3: ") && e.contains(want),
                "{e}"
            );
        }
        // An element's problem names the element.
        let mut b = BytesMut::new();
        wire::array_to_sql(
            [ArrayDimension {
                len: 2,
                lower_bound: 1,
            }],
            Type::DATE.oid(),
            [0, i32::MIN],
            |v, buf| {
                wire::date_to_sql(v, buf);
                Ok(IsNull::No)
            },
            &mut b,
        )
        .unwrap();
        let d =
            TupleDecoder::new("db", &[ResultColumn::new("days", Type::DATE_ARRAY, -1)]).unwrap();
        let e = decode(&d, &[tuple(&[Some(b.to_vec())])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 1: column \"days\" (date[]): array element 2: -infinity"),
            "{e}"
        );
    }

    #[test]
    fn malformed_tuples_are_errors_never_panics() {
        let cols = [
            ResultColumn::new("id", Type::INT8, -1),
            ResultColumn::new("amount", Type::NUMERIC, typmod(12, 2)),
            ResultColumn::new("n", Type::NUMERIC, -1),
            ResultColumn::new("t", Type::TEXT, -1),
            ResultColumn::new("u", Type::UUID, -1),
            ResultColumn::new("jb", Type::JSONB, -1),
            ResultColumn::new("arr", Type::INT4_ARRAY, -1),
        ];
        let d = TupleDecoder::new("db", &cols).unwrap();
        let good = tuple(&[
            encode(|b| wire::int8_to_sql(5, b)),
            Some(numeric(NUMERIC_POS, 0, 2, &[12, 3400])),
            Some(numeric(NUMERIC_NEG, 0, 1, &[1, 5000])),
            encode(|b| wire::text_to_sql("text", b)),
            Some(vec![7; 16]),
            Some(b"\x01{}".to_vec()),
            int4_array(&[2], &[Some(1), None]),
        ]);
        assert!(decode(&d, std::slice::from_ref(&good)).is_ok());
        assert_eq!(tuple_length(&good, cols.len()), Ok(Some(good.len())));
        // Every truncation.
        for cut in 0..good.len() {
            assert!(decode(&d, &[good[..cut].to_vec()]).is_err(), "cut at {cut}");
            assert!(
                tuple_length(&good[..cut], cols.len()).is_err(),
                "cut at {cut}"
            );
        }
        // Targeted damage: a field count, an absurd length, a bad version, invalid UTF-8.
        let named: Vec<(Vec<u8>, &str)> = vec![
            (
                [&8i16.to_be_bytes()[..], &good[2..]].concat(),
                "8 fields, expected 7",
            ),
            (
                [&good[..2], &i32::MAX.to_be_bytes()[..], &good[6..]].concat(),
                "column \"id\" (int8): field length 2147483647",
            ),
            (
                [&good[..2], &(-2i32).to_be_bytes()[..], &good[6..]].concat(),
                "field length -2",
            ),
            (
                tuple(&[
                    encode(|b| wire::int8_to_sql(5, b)),
                    None,
                    None,
                    Some(vec![0xff, 0xfe]),
                    None,
                    Some(b"\x02{}".to_vec()),
                    None,
                ]),
                "column \"t\" (text): invalid utf-8",
            ),
            (
                tuple(&[None, None, None, None, None, Some(b"\x02{}".to_vec()), None]),
                "unknown jsonb version 2",
            ),
            (
                tuple(&[None, None, None, None, Some(vec![1; 15]), None, None]),
                "uuid size mismatch",
            ),
            (
                tuple(&[
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    int4_array(&[1], &[Some(1)]).map(|mut a| {
                        // The element type: int8's OID instead of int4's.
                        a[8..12].copy_from_slice(&20u32.to_be_bytes());
                        a
                    }),
                ]),
                "array of type OID 20, expected 23",
            ),
        ];
        for (t, want) in named {
            let e = decode(&d, &[t]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Upstream, "{e}");
            let e = e.to_string();
            assert!(
                e.contains("malformed binary COPY data") && e.contains(want),
                "{e}"
            );
        }
        // Random damage: any outcome but a panic.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut t = good.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..t.len());
                t[i] = match rng.u8(..3) {
                    0 => 0xff,
                    1 => 0,
                    _ => rng.u8(..),
                };
            }
            if rng.bool() {
                t.truncate(rng.usize(..=t.len()));
            }
            let _ = tuple_length(&t, cols.len());
            let mut b = builders(&d);
            let mut rest = t.as_slice();
            let _ = d.decode_row(&mut rest, &mut b, 1);
        }
    }

    #[test]
    fn arrays_with_absurd_headers_are_errors() {
        let d = TupleDecoder::new("db", &[ResultColumn::new("arr", Type::INT4_ARRAY, -1)]).unwrap();
        let header = |dims: i32, len: i32| {
            let mut a = Vec::new();
            a.extend_from_slice(&dims.to_be_bytes());
            a.extend_from_slice(&0i32.to_be_bytes());
            a.extend_from_slice(&23u32.to_be_bytes());
            a.extend_from_slice(&len.to_be_bytes());
            a.extend_from_slice(&1i32.to_be_bytes());
            a
        };
        for raw in [
            header(-1, 1),
            header(i32::MAX, 1),
            header(1, -1),
            header(1, i32::MAX),
            [
                header(1, 2),
                4i32.to_be_bytes().to_vec(),
                1i32.to_be_bytes().to_vec(),
            ]
            .concat(),
            [
                header(1, 1),
                5i32.to_be_bytes().to_vec(),
                1i32.to_be_bytes().to_vec(),
            ]
            .concat(),
            [header(1, 1), (-5i32).to_be_bytes().to_vec()].concat(),
            [header(0, 1), 4i32.to_be_bytes().to_vec()].concat(),
        ] {
            assert!(
                decode(&d, &[tuple(&[Some(raw.clone())])]).is_err(),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn tuple_lengths_frame_tuples_and_the_trailer() {
        let t = tuple(&[Some(vec![1, 2, 3]), None]);
        assert_eq!(tuple_length(&t, 2), Ok(Some(t.len())));
        let two = [t.clone(), t.clone()].concat();
        assert_eq!(tuple_length(&two, 2), Ok(Some(t.len())));
        assert_eq!(tuple_length(&(-1i16).to_be_bytes(), 2), Ok(None));
        assert_eq!(tuple_length(&t, 3), Err("unexpected field count"));
        assert_eq!(tuple_length(&[0], 2), Err("truncated tuple"));
        assert_eq!(tuple_length(&t[..t.len() - 1], 2), Err("bad field length"));
    }

    #[test]
    fn partition_values_come_from_one_field_of_a_tuple() {
        let cols = vec![
            ResultColumn::new("id", Type::INT8, -1),
            ResultColumn::new("day", Type::DATE, -1),
            ResultColumn::new("at", Type::TIMESTAMPTZ, -1),
            ResultColumn::new("city", Type::TEXT, -1),
            ResultColumn::new("amount", Type::NUMERIC, typmod(12, 2)),
            ResultColumn::new("ok", Type::BOOL, -1),
            ResultColumn::new("tags", Type::TEXT_ARRAY, -1),
        ];
        let d = TupleDecoder::new("u@h:5432/db", &cols).unwrap();
        // 2026-11-28 is day 9,828 of Postgres's epoch; 10:00 UTC that day in microseconds.
        let days = 9_828i32;
        let micros = i64::from(days) * 86_400_000_000 + 10 * 3_600_000_000;
        let one = tuple(&[
            Some(42i64.to_be_bytes().to_vec()),
            Some(days.to_be_bytes().to_vec()),
            Some(micros.to_be_bytes().to_vec()),
            Some(b"S\xc3\xa3o Paulo".to_vec()),
            Some(numeric(NUMERIC_NEG, 0, 2, &[12, 3400])),
            Some(vec![1]),
            None,
        ]);
        let two = tuple(&[None, None, None, None, None, None, None]);
        let data = [one.clone(), two.clone()].concat();
        let mut rest = data.as_slice();
        assert_eq!(d.next_tuple(&mut rest, 1).unwrap(), one.as_slice());
        assert_eq!(d.next_tuple(&mut rest, 2).unwrap(), two.as_slice());
        assert!(rest.is_empty());
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        let values: Vec<FieldValue> = (0..6).map(|c| d.field_value(&one, c, 1).unwrap()).collect();
        assert_eq!(
            values,
            [
                FieldValue::Text("42".into()),
                FieldValue::Date(day),
                FieldValue::Timestamp(day.and_hms_opt(10, 0, 0).unwrap().and_utc()),
                FieldValue::Text("São Paulo".into()),
                FieldValue::Text("-12.34".into()),
                FieldValue::Text("true".into()),
            ]
        );
        assert_eq!(d.field_value(&two, 2, 2).unwrap(), FieldValue::Null);
        // An array column, a truncated tuple and a tuple of another width name the row.
        let e = d.field_value(&one, 6, 7).unwrap_err().to_string();
        assert!(
            e.contains("array") && e.contains("row 7") && e.contains("\"tags\""),
            "{e}"
        );
        let e = d.field_value(&one[..20], 3, 8).unwrap_err().to_string();
        assert!(e.contains("row 8") && e.contains("malformed"), "{e}");
        let other = tuple(&[None]);
        assert!(
            d.field_value(&other, 0, 9)
                .unwrap_err()
                .to_string()
                .contains("row 9")
        );
        let mut rest = &one[..one.len() - 1];
        assert!(
            d.next_tuple(&mut rest, 10)
                .unwrap_err()
                .to_string()
                .contains("row 10")
        );
        // Past its date's range, never a panic.
        let inf = tuple(&[
            None,
            Some(i32::MAX.to_be_bytes().to_vec()),
            None,
            None,
            None,
            None,
            None,
        ]);
        assert!(
            d.field_value(&inf, 1, 11)
                .unwrap_err()
                .to_string()
                .contains("infinity")
        );
    }

    #[test]
    fn domains_and_enums_decode_as_their_base_type_and_text() {
        let domain = Type::new(
            "positive".into(),
            90_001,
            Kind::Domain(Type::INT8),
            "public".into(),
        );
        let mood = Type::new(
            "mood".into(),
            90_002,
            Kind::Enum(vec!["sad".into(), "ok".into()]),
            "public".into(),
        );
        let moods = Type::new(
            "_mood".into(),
            90_003,
            Kind::Array(mood.clone()),
            "public".into(),
        );
        let d = TupleDecoder::new(
            "db",
            &[
                ResultColumn::new("n", domain, -1),
                ResultColumn::new("m", mood, -1),
                ResultColumn::new("ms", moods, -1),
            ],
        )
        .unwrap();
        let described: Vec<String> = d.schema().describe().into_iter().map(|(_, t)| t).collect();
        assert_eq!(described, ["int64", "string", "list<string>"]);
        let mut ms = BytesMut::new();
        wire::array_to_sql(
            [ArrayDimension {
                len: 1,
                lower_bound: 1,
            }],
            90_002,
            ["ok"],
            |v, buf| {
                wire::text_to_sql(v, buf);
                Ok(IsNull::No)
            },
            &mut ms,
        )
        .unwrap();
        let a = decode(
            &d,
            &[tuple(&[
                encode(|b| wire::int8_to_sql(9, b)),
                encode(|b| wire::text_to_sql("sad", b)),
                Some(ms.to_vec()),
            ])],
        )
        .unwrap();
        assert_eq!(
            a[0].as_primitive::<arrow_array::types::Int64Type>()
                .value(0),
            9
        );
        assert_eq!(a[1].as_string::<i32>().value(0), "sad");
        assert_eq!(
            a[2].as_list::<i32>().value(0).as_string::<i32>().value(0),
            "ok"
        );
    }

    #[test]
    fn builders_of_another_schema_are_a_bug_not_a_panic() {
        let d = TupleDecoder::new("db", &[ResultColumn::new("n", Type::INT4, -1)]).unwrap();
        let t = tuple(&[encode(|b| wire::int4_to_sql(1, b))]);
        let mut wrong = vec![ColumnBuilder::new(&ColumnType::String)];
        let e = d.decode_row(&mut t.as_slice(), &mut wrong, 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
        let mut none: Vec<ColumnBuilder> = Vec::new();
        let e = d.decode_row(&mut t.as_slice(), &mut none, 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
    }

    #[test]
    fn uuids_print_as_postgres_prints_them() {
        assert_eq!(uuid_text([0; 16]), "00000000-0000-0000-0000-000000000000");
        assert_eq!(
            uuid_text([0xff; 16]),
            "ffffffff-ffff-ffff-ffff-ffffffffffff"
        );
    }

    #[test]
    fn a_row_that_decodes_past_the_cap_is_an_error_before_it_is_built() {
        // numeric 1e131071: weight 32767 with one digit — 10 bytes on the wire, 131,072
        // digits as text; an array of 1,000 of them would be 125 MiB of builder.
        let mut element = Vec::new();
        for v in [1i16, 32767, 0, 0, 1] {
            element.extend_from_slice(&v.to_be_bytes());
        }
        let mut array = Vec::new();
        array.extend_from_slice(&1i32.to_be_bytes()); // dimensions
        array.extend_from_slice(&0i32.to_be_bytes()); // no NULLs
        array.extend_from_slice(&Type::NUMERIC.oid().to_be_bytes());
        array.extend_from_slice(&1000i32.to_be_bytes());
        array.extend_from_slice(&1i32.to_be_bytes());
        for _ in 0..1000 {
            array.extend_from_slice(&(element.len() as i32).to_be_bytes());
            array.extend_from_slice(&element);
        }
        let mut tuple = 1i16.to_be_bytes().to_vec();
        tuple.extend_from_slice(&(array.len() as i32).to_be_bytes());
        tuple.extend_from_slice(&array);
        let d = TupleDecoder::new("db", &[ResultColumn::new("n", Type::NUMERIC_ARRAY, -1)])
            .unwrap()
            .with_max_row_bytes(1 << 20);
        let mut builders: Vec<ColumnBuilder> = d
            .schema()
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(&c.ty))
            .collect();
        let e = d
            .decode_row(&mut tuple.as_slice(), &mut builders, 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 7") && e.contains("column \"n\""), "{e}");
        assert!(e.contains("more than 1048576 bytes"), "{e}");
        // Unbounded, the same row decodes (and is as large as promised).
        let d =
            TupleDecoder::new("db", &[ResultColumn::new("n", Type::NUMERIC_ARRAY, -1)]).unwrap();
        let grew = d.decode_row(&mut tuple.as_slice(), &mut builders[..], 1);
        assert!(grew.is_ok_and(|b| b > 100 << 20));
    }
}
