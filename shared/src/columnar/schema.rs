//! Column types of a Parquet output and their Arrow form.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::transform::value::ColType;

/// The type of one Parquet column.
///
/// Every column is written nullable (a declared `nullable: false` is enforced when rows are
/// typed, before they reach the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text (Parquet `STRING`).
    String,
    /// JSON text in a string column (nested objects and arrays, Postgres `json`/`jsonb`);
    /// readers parse it with their JSON functions (DuckDB: `col::JSON`).
    Json,
    /// A UUID as its 36-character text.
    Uuid,
    /// 16-bit integer.
    Int16,
    /// 32-bit integer.
    Int32,
    /// 64-bit integer.
    Int64,
    /// 32-bit float.
    Float32,
    /// 64-bit float.
    Float64,
    /// Boolean.
    Bool,
    /// Calendar date (Parquet `DATE`, days since 1970-01-01).
    Date,
    /// Microseconds since 1970-01-01; `utc` marks an instant (Parquet
    /// `isAdjustedToUTC = true`), otherwise a wall-clock time without a zone.
    Timestamp {
        /// Whether the value is an instant in UTC.
        utc: bool,
    },
    /// Exact decimal with `precision` digits, `scale` of them after the point (1–38).
    Decimal {
        /// Total digits, 1–38.
        precision: u8,
        /// Digits after the point, 0..=precision.
        scale: i8,
    },
    /// Raw bytes.
    Binary,
    /// A list of values of one type (Postgres one-dimensional arrays).
    List(Box<ColumnType>),
}

impl ColumnType {
    /// The Arrow type the column is built as.
    pub fn arrow(&self) -> DataType {
        match self {
            ColumnType::String | ColumnType::Json | ColumnType::Uuid => DataType::Utf8,
            ColumnType::Int16 => DataType::Int16,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp { utc } => {
                DataType::Timestamp(TimeUnit::Microsecond, utc.then(|| "UTC".into()))
            }
            ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            ColumnType::Binary => DataType::Binary,
            ColumnType::List(item) => {
                DataType::List(Arc::new(Field::new("item", item.arrow(), true)))
            }
        }
    }

    /// A short name for messages and the summary: `int64`, `decimal(12,2)`, `list<text>`.
    pub fn name(&self) -> String {
        match self {
            ColumnType::String => "string".into(),
            ColumnType::Json => "json".into(),
            ColumnType::Uuid => "uuid".into(),
            ColumnType::Int16 => "int16".into(),
            ColumnType::Int32 => "int32".into(),
            ColumnType::Int64 => "int64".into(),
            ColumnType::Float32 => "float32".into(),
            ColumnType::Float64 => "float64".into(),
            ColumnType::Bool => "bool".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Timestamp { utc: true } => "timestamp (UTC)".into(),
            ColumnType::Timestamp { utc: false } => "timestamp".into(),
            ColumnType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            ColumnType::Binary => "binary".into(),
            ColumnType::List(item) => format!("list<{}>", item.name()),
        }
    }
}

impl From<ColType> for ColumnType {
    /// The transform's types: `int` is int64, `float` float64, `timestamp` a UTC instant.
    fn from(ty: ColType) -> Self {
        match ty {
            ColType::String => ColumnType::String,
            ColType::Int => ColumnType::Int64,
            ColType::Float => ColumnType::Float64,
            ColType::Bool => ColumnType::Bool,
            ColType::Date => ColumnType::Date,
            ColType::Timestamp => ColumnType::Timestamp { utc: true },
        }
    }
}

/// One named column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column's name in the file.
    pub name: String,
    /// Its type.
    pub ty: ColumnType,
}

impl Column {
    /// A column named `name` of type `ty`.
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        Column {
            name: name.into(),
            ty,
        }
    }
}

/// The columns of a Parquet output, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableSchema {
    /// The columns.
    pub columns: Vec<Column>,
}

impl TableSchema {
    /// A schema of `columns`.
    pub fn new(columns: Vec<Column>) -> Self {
        TableSchema { columns }
    }

    /// A schema from the transform's layout (names and types after the steps).
    pub fn from_layout(layout: &[(String, ColType)]) -> Self {
        TableSchema::new(
            layout
                .iter()
                .map(|(name, ty)| Column::new(name.clone(), (*ty).into()))
                .collect(),
        )
    }

    /// The Arrow schema: every field nullable.
    pub fn arrow(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.ty.arrow(), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// `name: type` pairs, for summaries and messages.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.columns
            .iter()
            .map(|c| (c.name.clone(), c.ty.name()))
            .collect()
    }
}
