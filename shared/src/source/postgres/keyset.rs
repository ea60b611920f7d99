//! Keyset exports (`source.postgres.resume_key`): the query's rows in the order of one of its
//! columns, so that an export can stop between two key values and a later statement go on
//! with the rows after the last key written.
//!
//! The order is the statement's own, not the query's: the query is wrapped as
//! `SELECT * FROM (query) AS sluice_row [WHERE sluice_row.key > $after] ORDER BY
//! sluice_row.key`, so a query that orders otherwise (or not at all) cannot split a key. The
//! stream cuts only where the key changes ([`KeyTracker`]): rows that share a key are never
//! split between two invocations, so the key need not be unique. A NULL key fails the export
//! (`>` would never reach it again), and the key's type must print equal values the same
//! ([`KEY_TYPES`]), so that "the key changed" and `>` agree.

use tokio_postgres::types::Type;

use super::binary::ResultColumn;
use super::copy::CopyFormat;
use super::params::quote_ident;
use crate::error::{Error, Result};

/// The types a resume key may have: integers, text, `uuid`, dates and timestamps, whose equal
/// values always print the same text (unlike `numeric`'s `1.0` and `1.00`, or floats).
pub const KEY_TYPES: &[Type] = &[
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::TEXT,
    Type::VARCHAR,
    Type::UUID,
    Type::DATE,
    Type::TIMESTAMP,
    Type::TIMESTAMPTZ,
];

/// The setting the last key written is bound to (never part of the SQL text).
pub(super) const AFTER_SETTING: &str = "sluice.after";

/// A keyset export's key, and where the rows start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyset {
    /// The column (a result column of the query).
    pub column: String,
    /// The last key written by an earlier invocation: only rows with a larger key are
    /// exported (and, for CSV, no header). `None`: from the first row.
    pub after: Option<String>,
    /// Rows and bytes the earlier invocations wrote: errors number rows from there.
    pub before: (u64, u64),
    /// Instead of the rows, one row `1` if some row's key is NULL. A statement after a key
    /// never meets NULL keys (`>` does not hold for them, and asking for them by name would
    /// cost the key's index order), so a continued export asks this at its end.
    pub null_probe: bool,
}

/// The key of a described query: its column's position and type.
#[derive(Debug, Clone)]
pub(super) struct KeyColumn {
    /// Position among the result columns.
    pub index: usize,
    /// Its type.
    pub ty: Type,
}

/// Finds `column` among the query's result columns: exactly one of them, of a type in
/// [`KEY_TYPES`].
pub(super) fn key_column(columns: &[ResultColumn], column: &str) -> Result<KeyColumn> {
    let found: Vec<usize> = (0..columns.len())
        .filter(|&i| columns[i].name == column)
        .collect();
    let names = || {
        columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let index = match found.as_slice() {
        [i] => *i,
        [] => {
            return Err(Error::spec(format!(
                "source.postgres.resume_key: {column:?} is not a result column of the query (its columns: {})",
                names()
            )));
        }
        more => {
            return Err(Error::spec(format!(
                "source.postgres.resume_key: the query has {} result columns named {column:?}; give the key a name of its own",
                more.len()
            )));
        }
    };
    let ty = columns[index].ty.clone();
    if !KEY_TYPES.contains(&ty) {
        let allowed: Vec<&str> = KEY_TYPES.iter().map(Type::name).collect();
        return Err(Error::spec(format!(
            "source.postgres.resume_key: column {column:?} is {}; a resume key must be one of {} (types whose equal values always print the same)",
            ty.name(),
            allowed.join(", ")
        )));
    }
    Ok(KeyColumn { index, ty })
}

/// The text around the query in the `COPY` statement of a keyset export: `(prefix, suffix)`.
pub(super) fn statement(format: CopyFormat, keyset: &Keyset, key: &KeyColumn) -> (String, String) {
    let col = format!("sluice_row.{}", quote_ident(&keyset.column));
    if keyset.null_probe {
        return (
            "COPY (SELECT 1 FROM (\n".to_owned(),
            format!("\n) AS sluice_row WHERE {col} IS NULL LIMIT 1) TO STDOUT (FORMAT csv)"),
        );
    }
    let after = keyset.after.is_some();
    let mut tail = String::from("\n) AS sluice_row");
    if after {
        tail.push_str(&format!(
            " WHERE {col} > (pg_catalog.current_setting('{AFTER_SETTING}')::{}.{})",
            quote_ident(key.ty.schema()),
            quote_ident(key.ty.name())
        ));
    }
    tail.push_str(&format!(" ORDER BY {col}"));
    match format {
        CopyFormat::Csv => {
            let header = if after { "" } else { ", HEADER" };
            (
                "COPY (SELECT * FROM (\n".to_owned(),
                format!("{tail}) TO STDOUT (FORMAT csv{header})"),
            )
        }
        // The key's text travels as a second field beside the row's JSON.
        CopyFormat::Ndjson => (
            format!("COPY (SELECT pg_catalog.row_to_json(sluice_row.*), {col}::text FROM (\n"),
            format!("{tail}) TO STDOUT (FORMAT binary)"),
        ),
        CopyFormat::Binary => (
            "COPY (SELECT * FROM (\n".to_owned(),
            format!("{tail}) TO STDOUT (FORMAT binary)"),
        ),
    }
}

/// Where a keyset export may stop: after the rows of key `after`, `rows` rows and `bytes`
/// bytes into this statement's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boundary {
    /// The last key written.
    pub after: String,
    /// Rows of this statement before the boundary.
    pub rows: u64,
    /// Bytes of this statement's output before the boundary.
    pub bytes: u64,
}

/// Follows the key of every row of a keyset export, and finds the first point where it
/// changes once a boundary is asked for.
#[derive(Debug)]
pub(super) struct KeyTracker {
    column: String,
    /// Rows and bytes before this statement's first row.
    base: (u64, u64),
    /// CSV: the key's field; NDJSON: `None` (the key is the tuple's second field).
    csv_index: Option<usize>,
    last: Vec<u8>,
    seen: bool,
    wanted: bool,
    /// A boundary found: the buffer length at the cut, and the boundary.
    cut: Option<(usize, Boundary)>,
    scratch: Vec<u8>,
}

impl KeyTracker {
    /// A tracker of `keyset`'s column, the `index`th result column (used for CSV rows).
    pub fn new(keyset: &Keyset, format: CopyFormat, index: usize) -> KeyTracker {
        KeyTracker {
            column: keyset.column.clone(),
            base: keyset.before,
            csv_index: (format == CopyFormat::Csv).then_some(index),
            last: Vec::new(),
            seen: false,
            wanted: false,
            cut: None,
            scratch: Vec::new(),
        }
    }

    /// The row number (1-based, over the whole export) and byte offset of the row at `at`.
    pub fn position(&self, at: Cut) -> (u64, u64) {
        (self.base.0 + at.rows + 1, self.base.1 + at.bytes)
    }

    /// Asks for a boundary: the next time the key changes.
    pub fn want_boundary(&mut self) {
        if self.cut.is_none() {
            self.wanted = true;
        }
    }

    /// The boundary found, and the buffer length where the rows after it start.
    pub fn take_cut(&mut self) -> Option<(usize, Boundary)> {
        self.cut.take()
    }

    /// Looks at the key of the CSV row `line` (one whole record, as COPY sends it).
    pub fn csv_row(&mut self, line: &[u8], at: Cut) -> std::result::Result<(), String> {
        let index = self.csv_index.unwrap_or(0);
        let mut key = std::mem::take(&mut self.scratch);
        let found = csv_field(line, index, &mut key);
        let result = match found {
            Some(true) => self.row(Some(&key), at),
            Some(false) => self.row(None, at),
            None => Err(format!(
                "row {}: the CSV row has no field {} for the key",
                self.position(at).0,
                index + 1
            )),
        };
        self.scratch = key;
        result
    }

    /// Looks at a row's key (`None`: NULL), the row starting at `at`.
    pub fn row(&mut self, key: Option<&[u8]>, at: Cut) -> std::result::Result<(), String> {
        let Some(key) = key else {
            return Err(format!(
                "row {}: resume_key column {:?} is NULL; a keyset export cannot order or continue past a NULL key (filter NULLs out, or use a NOT NULL column)",
                self.position(at).0,
                self.column
            ));
        };
        if self.wanted && self.seen && key != self.last.as_slice() {
            let after = String::from_utf8_lossy(&self.last).into_owned();
            self.cut = Some((
                at.buffered,
                Boundary {
                    after,
                    rows: at.rows,
                    bytes: at.bytes,
                },
            ));
            self.wanted = false;
        }
        self.last.clear();
        self.last.extend_from_slice(key);
        self.seen = true;
        Ok(())
    }
}

/// Where a row starts: the stream's buffer length, and the rows and bytes before it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cut {
    pub buffered: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// Field `index` of the CSV record `line` as PostgreSQL's `COPY ... (FORMAT csv)` writes it
/// (`,` between fields, `"` quotes doubled inside a quoted field, NULL an empty unquoted
/// field), unquoted into `out`. `Some(false)` for NULL, `None` when the record has fewer
/// fields or is malformed.
fn csv_field(line: &[u8], index: usize, out: &mut Vec<u8>) -> Option<bool> {
    out.clear();
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut i = 0;
    let mut field = 0;
    loop {
        let quoted = line.get(i) == Some(&b'"');
        let start = i;
        if quoted {
            i += 1;
            loop {
                match line.get(i)? {
                    b'"' if line.get(i + 1) == Some(&b'"') => {
                        if field == index {
                            out.push(b'"');
                        }
                        i += 2;
                    }
                    b'"' => {
                        i += 1;
                        break;
                    }
                    &c => {
                        if field == index {
                            out.push(c);
                        }
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(&c) = line.get(i) {
                if c == b',' {
                    break;
                }
                i += 1;
            }
            if field == index {
                out.extend_from_slice(&line[start..i]);
            }
        }
        if field == index {
            return match line.get(i) {
                None | Some(b',') => Some(quoted || i > start),
                Some(_) => None,
            };
        }
        match line.get(i) {
            Some(b',') => {
                i += 1;
                field += 1;
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(line: &str, index: usize) -> Option<Option<String>> {
        let mut out = Vec::new();
        csv_field(line.as_bytes(), index, &mut out)
            .map(|some| some.then(|| String::from_utf8(out).unwrap()))
    }

    #[test]
    fn csv_fields_are_read_as_copy_writes_them() {
        let line = "1,\"a,\"\"b\"\"\",,\"\",x\n";
        assert_eq!(field(line, 0), Some(Some("1".into())));
        assert_eq!(field(line, 1), Some(Some("a,\"b\"".into())));
        assert_eq!(field(line, 2), Some(None), "empty unquoted is NULL");
        assert_eq!(field(line, 3), Some(Some(String::new())), "\"\" is ''");
        assert_eq!(field(line, 4), Some(Some("x".into())));
        assert_eq!(field(line, 5), None);
        assert_eq!(
            field("\"multi\nline\",2\r\n", 0),
            Some(Some("multi\nline".into()))
        );
        assert_eq!(field("\"multi\nline\",2\r\n", 1), Some(Some("2".into())));
        assert_eq!(field("\"unterminated", 0), None);
        assert_eq!(field("\"a\"b,c", 0), None);
        assert_eq!(field("", 0), Some(None));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut out = Vec::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (state % 24) as usize;
            let line: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    b"a,\"\n\r"[(state % 5) as usize]
                })
                .collect();
            for index in 0..4 {
                let _ = csv_field(&line, index, &mut out);
            }
        }
    }

    fn at(rows: u64) -> Cut {
        Cut {
            buffered: rows as usize * 10,
            rows,
            bytes: rows * 10,
        }
    }

    #[test]
    fn a_boundary_falls_where_the_key_changes_after_it_is_asked_for() {
        let keyset = Keyset {
            column: "id".into(),
            after: Some("0".into()),
            before: (100, 1000),
            null_probe: false,
        };
        let mut t = KeyTracker::new(&keyset, CopyFormat::Ndjson, 0);
        t.row(Some(b"1"), at(0)).unwrap();
        t.row(Some(b"2"), at(1)).unwrap();
        t.want_boundary();
        t.row(Some(b"2"), at(2)).unwrap();
        assert!(t.cut.is_none(), "rows of one key stay together");
        t.row(Some(b"3"), at(3)).unwrap();
        let (buffered, b) = t.take_cut().unwrap();
        assert_eq!((buffered, b.after.as_str(), b.rows), (30, "2", 3));
        t.row(Some(b"4"), at(4)).unwrap();
        assert!(t.take_cut().is_none(), "one boundary per request");
        let e = t.row(None, at(5)).unwrap_err();
        assert!(e.contains("row 106") && e.contains("NULL"), "{e}");
        assert_eq!(t.position(at(5)), (106, 1050));
    }

    #[test]
    fn csv_rows_find_their_key() {
        let keyset = Keyset {
            column: "k".into(),
            after: None,
            before: (0, 0),
            null_probe: false,
        };
        let mut t = KeyTracker::new(&keyset, CopyFormat::Csv, 1);
        t.csv_row(b"x,1\n", at(0)).unwrap();
        t.want_boundary();
        t.csv_row(b"y,\"2\"\n", at(1)).unwrap();
        assert_eq!(t.take_cut().unwrap().1.after, "1");
        assert!(t.csv_row(b"z\n", at(2)).unwrap_err().contains("no field 2"));
        assert!(t.csv_row(b"z,\n", at(2)).unwrap_err().contains("NULL"));
    }

    #[test]
    fn statements_order_by_the_key_and_bind_the_last_one() {
        let key = KeyColumn {
            index: 0,
            ty: Type::INT8,
        };
        let mut keyset = Keyset {
            column: "i\"d".into(),
            after: None,
            before: (0, 0),
            null_probe: false,
        };
        let (p, s) = statement(CopyFormat::Csv, &keyset, &key);
        assert_eq!(p, "COPY (SELECT * FROM (\n");
        assert_eq!(
            s,
            "\n) AS sluice_row ORDER BY sluice_row.\"i\"\"d\") TO STDOUT (FORMAT csv, HEADER)"
        );
        keyset.column = "id".into();
        keyset.after = Some("7".into());
        let (_, s) = statement(CopyFormat::Csv, &keyset, &key);
        assert_eq!(
            s,
            "\n) AS sluice_row WHERE sluice_row.\"id\" > (pg_catalog.current_setting('sluice.after')::\"pg_catalog\".\"int8\") ORDER BY sluice_row.\"id\") TO STDOUT (FORMAT csv)"
        );
        let (p, _) = statement(CopyFormat::Ndjson, &keyset, &key);
        assert!(p.ends_with("row_to_json(sluice_row.*), sluice_row.\"id\"::text FROM (\n"));
        keyset.null_probe = true;
        let (p, s) = statement(CopyFormat::Csv, &keyset, &key);
        assert_eq!(p, "COPY (SELECT 1 FROM (\n");
        assert_eq!(
            s,
            "\n) AS sluice_row WHERE sluice_row.\"id\" IS NULL LIMIT 1) TO STDOUT (FORMAT csv)"
        );
    }

    #[test]
    fn key_columns_are_checked() {
        let cols = vec![
            ResultColumn::new("id", Type::INT8, -1),
            ResultColumn::new("amount", Type::NUMERIC, -1),
            ResultColumn::new("dup", Type::TEXT, -1),
            ResultColumn::new("dup", Type::TEXT, -1),
        ];
        assert_eq!(key_column(&cols, "id").unwrap().index, 0);
        let e = key_column(&cols, "amount").unwrap_err().to_string();
        assert!(e.contains("is numeric") && e.contains("int8"), "{e}");
        let e = key_column(&cols, "nope").unwrap_err().to_string();
        assert!(e.contains("its columns: id, amount, dup, dup"), "{e}");
        let e = key_column(&cols, "dup").unwrap_err().to_string();
        assert!(e.contains("2 result columns"), "{e}");
    }
}
