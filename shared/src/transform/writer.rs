//! Rows rendered as CSV or NDJSON into a byte buffer.

use super::steps::Layout;
use super::value::Value;
use crate::format::Format;

/// Renders rows in one output format.
#[derive(Debug)]
pub struct RowWriter {
    format: Format,
    names: Vec<String>,
    scratch: String,
}

impl RowWriter {
    /// A writer of rows laid out as `layout`.
    pub fn new(format: Format, layout: &Layout) -> Self {
        RowWriter {
            format,
            names: layout.iter().map(|(n, _)| n.clone()).collect(),
            scratch: String::new(),
        }
    }

    /// The CSV header line (nothing for NDJSON).
    pub fn header(&mut self, out: &mut Vec<u8>) {
        if self.format == Format::Csv {
            for (i, name) in self.names.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                csv_field(name, out);
            }
            out.push(b'\n');
        }
    }

    /// Appends one row.
    pub fn row(&mut self, row: &[Value], out: &mut Vec<u8>) {
        match self.format {
            Format::Csv => {
                for (i, v) in row.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match v {
                        Value::Str(s) => csv_field(s, out),
                        Value::Null => {}
                        v => {
                            self.scratch.clear();
                            v.render(&mut self.scratch);
                            out.extend_from_slice(self.scratch.as_bytes());
                        }
                    }
                }
                out.push(b'\n');
            }
            // Parquet rows go to the column builders (`RecordOutput::row`), never here; were
            // one to arrive, it would render as NDJSON rather than vanish.
            Format::Ndjson | Format::Parquet => {
                out.push(b'{');
                for (i, (name, v)) in self.names.iter().zip(row).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json_string(name, out);
                    out.push(b':');
                    json_value(v, &mut self.scratch, out);
                }
                out.extend_from_slice(b"}\n");
            }
        }
    }
}

/// Appends `s` as a CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str, out: &mut Vec<u8>) {
    let needs = s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if !needs {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Appends `s` as a JSON string.
pub fn json_string(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// Appends `v` as a JSON value: numbers and booleans as such, dates and timestamps as strings.
pub fn json_value(v: &Value, scratch: &mut String, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Str(s) => json_string(s, out),
        Value::Int(_) | Value::Bool(_) => {
            scratch.clear();
            v.render(scratch);
            out.extend_from_slice(scratch.as_bytes());
        }
        Value::Float(f) => {
            if f.is_finite() {
                scratch.clear();
                v.render(scratch);
                out.extend_from_slice(scratch.as_bytes());
            } else {
                out.extend_from_slice(b"null");
            }
        }
        Value::Date(_) | Value::Timestamp(_) => {
            scratch.clear();
            v.render(scratch);
            json_string(scratch, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::value::ColType;

    #[test]
    fn csv_and_ndjson() {
        let layout = vec![
            ("a b".to_owned(), ColType::String),
            ("n".to_owned(), ColType::Int),
            ("d".to_owned(), ColType::Date),
        ];
        let row = vec![
            Value::Str("x, \"y\"\nz".into()),
            Value::Int(-3),
            Value::Date(chrono::NaiveDate::from_ymd_opt(2024, 1, 2).unwrap()),
        ];
        let mut out = Vec::new();
        let mut w = RowWriter::new(Format::Csv, &layout);
        w.header(&mut out);
        w.row(&row, &mut out);
        w.row(&[Value::Null, Value::Null, Value::Null], &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a b,n,d\n\"x, \"\"y\"\"\nz\",-3,2024-01-02\n,,\n"
        );
        let mut out = Vec::new();
        let mut w = RowWriter::new(Format::Ndjson, &layout);
        w.header(&mut out);
        w.row(&row, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"a b\":\"x, \\\"y\\\"\\nz\",\"n\":-3,\"d\":\"2024-01-02\"}\n"
        );
    }
}
