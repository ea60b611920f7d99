//! Arrow column builders that typed values are appended to, one row at a time.

use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder, make_builder,
};
use arrow_schema::Field;
use chrono::NaiveDate;

use super::schema::ColumnType;
use crate::transform::value::Value;

/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// One column's builder. A row appends exactly one value (or a null) to every column.
pub enum ColumnBuilder {
    /// `string`, `json`, `uuid`.
    Str(StringBuilder),
    /// `int16`.
    I16(Int16Builder),
    /// `int32`.
    I32(Int32Builder),
    /// `int64`.
    I64(Int64Builder),
    /// `float32`.
    F32(Float32Builder),
    /// `float64`.
    F64(Float64Builder),
    /// `bool`.
    Bool(BooleanBuilder),
    /// `date`: days since 1970-01-01.
    Date(Date32Builder),
    /// `timestamp`: microseconds since 1970-01-01.
    Timestamp(TimestampMicrosecondBuilder),
    /// `decimal(p,s)`: the unscaled value.
    Decimal(Decimal128Builder),
    /// `binary`.
    Binary(BinaryBuilder),
    /// `list<...>`: items go to [`ColumnBuilder::list_items`], then
    /// [`ColumnBuilder::end_list`].
    List(ListBuilder<Box<dyn ArrayBuilder>>),
}

impl ColumnBuilder {
    /// A builder for a column of `ty`.
    pub fn new(ty: &ColumnType) -> Self {
        match ty {
            ColumnType::String | ColumnType::Json | ColumnType::Uuid => {
                ColumnBuilder::Str(StringBuilder::new())
            }
            ColumnType::Int16 => ColumnBuilder::I16(Int16Builder::new()),
            ColumnType::Int32 => ColumnBuilder::I32(Int32Builder::new()),
            ColumnType::Int64 => ColumnBuilder::I64(Int64Builder::new()),
            ColumnType::Float32 => ColumnBuilder::F32(Float32Builder::new()),
            ColumnType::Float64 => ColumnBuilder::F64(Float64Builder::new()),
            ColumnType::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
            ColumnType::Date => ColumnBuilder::Date(Date32Builder::new()),
            ColumnType::Timestamp { utc } => ColumnBuilder::Timestamp(
                TimestampMicrosecondBuilder::new().with_timezone_opt(utc.then_some("UTC")),
            ),
            ColumnType::Decimal { precision, scale } => ColumnBuilder::Decimal(
                Decimal128Builder::new()
                    .with_precision_and_scale(*precision, *scale)
                    // The schema's constructors keep precision in 1..=38 and scale within it.
                    .unwrap_or_else(|_| Decimal128Builder::new()),
            ),
            ColumnType::Binary => ColumnBuilder::Binary(BinaryBuilder::new()),
            ColumnType::List(item) => {
                let dt = item.arrow();
                ColumnBuilder::List(
                    ListBuilder::new(make_builder(&dt, 0))
                        .with_field(Arc::new(Field::new("item", dt, true))),
                )
            }
        }
    }

    /// Appends a null.
    pub fn append_null(&mut self) {
        match self {
            ColumnBuilder::Str(b) => b.append_null(),
            ColumnBuilder::I16(b) => b.append_null(),
            ColumnBuilder::I32(b) => b.append_null(),
            ColumnBuilder::I64(b) => b.append_null(),
            ColumnBuilder::F32(b) => b.append_null(),
            ColumnBuilder::F64(b) => b.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
            ColumnBuilder::Decimal(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::List(b) => b.append_null(),
        }
    }

    /// Appends a typed value of the transform's vocabulary. A value of another type than the
    /// column's is an error (the row's typing has a bug): `Err` names both types.
    pub fn append_value(&mut self, v: &Value) -> Result<(), String> {
        match (self, v) {
            (b, Value::Null) => b.append_null(),
            (ColumnBuilder::Str(b), Value::Str(s)) => b.append_value(s),
            (ColumnBuilder::Str(b), v) => b.append_value(v.to_text()),
            (ColumnBuilder::I64(b), Value::Int(i)) => b.append_value(*i),
            (ColumnBuilder::F64(b), Value::Float(f)) => b.append_value(*f),
            (ColumnBuilder::F64(b), Value::Int(i)) => b.append_value(*i as f64),
            (ColumnBuilder::Bool(b), Value::Bool(x)) => b.append_value(*x),
            (ColumnBuilder::Date(b), Value::Date(d)) => b.append_value(date_days(*d)),
            (ColumnBuilder::Timestamp(b), Value::Timestamp(t)) => {
                b.append_value(t.timestamp_micros())
            }
            (b, v) => {
                return Err(format!(
                    "a {v:?} value does not fit a {} column",
                    b.kind_name()
                ));
            }
        }
        Ok(())
    }

    /// The builder of a list column's items (`None` for other columns).
    pub fn list_items(&mut self) -> Option<&mut Box<dyn ArrayBuilder>> {
        match self {
            ColumnBuilder::List(b) => Some(b.values()),
            _ => None,
        }
    }

    /// Ends the current list value (after its items were appended to
    /// [`list_items`](Self::list_items)).
    pub fn end_list(&mut self) {
        if let ColumnBuilder::List(b) = self {
            b.append(true);
        }
    }

    /// The values built so far, as an array; the builder starts over, empty.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Str(b) => Arc::new(b.finish()),
            ColumnBuilder::I16(b) => Arc::new(b.finish()),
            ColumnBuilder::I32(b) => Arc::new(b.finish()),
            ColumnBuilder::I64(b) => Arc::new(b.finish()),
            ColumnBuilder::F32(b) => Arc::new(b.finish()),
            ColumnBuilder::F64(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::List(b) => Arc::new(b.finish()),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            ColumnBuilder::Str(_) => "string",
            ColumnBuilder::I16(_) => "int16",
            ColumnBuilder::I32(_) => "int32",
            ColumnBuilder::I64(_) => "int64",
            ColumnBuilder::F32(_) => "float32",
            ColumnBuilder::F64(_) => "float64",
            ColumnBuilder::Bool(_) => "bool",
            ColumnBuilder::Date(_) => "date",
            ColumnBuilder::Timestamp(_) => "timestamp",
            ColumnBuilder::Decimal(_) => "decimal",
            ColumnBuilder::Binary(_) => "binary",
            ColumnBuilder::List(_) => "list",
        }
    }
}

impl std::fmt::Debug for ColumnBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ColumnBuilder({})", self.kind_name())
    }
}

/// Days since 1970-01-01 of a date.
pub fn date_days(d: NaiveDate) -> i32 {
    use chrono::Datelike;
    d.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_from_the_unix_epoch() {
        assert_eq!(date_days(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()), 0);
        assert_eq!(
            date_days(NaiveDate::from_ymd_opt(2000, 1, 1).unwrap()),
            10_957
        );
        assert_eq!(
            date_days(NaiveDate::from_ymd_opt(1969, 12, 31).unwrap()),
            -1
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error_not_a_panic() {
        let mut b = ColumnBuilder::new(&ColumnType::Int64);
        assert!(b.append_value(&Value::Bool(true)).is_err());
        b.append_value(&Value::Int(3)).unwrap();
        b.append_value(&Value::Null).unwrap();
        let a = b.finish();
        assert_eq!((a.len(), a.null_count()), (2, 1));
    }
}
