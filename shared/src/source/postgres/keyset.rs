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
    /// Bytes of this statement's output before the boundary: the rendered CSV or NDJSON, or
    /// for [`CopyFormat::Binary`] the COPY data received before the first tuple after the
    /// boundary (the binary file header included), as [`Progress::bytes`] counts them.
    ///
    /// [`Progress::bytes`]: super::Progress::bytes
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
    /// [`CopyFormat::Binary`]: the key's field in the tuple and its type (the raw binary
    /// value is tracked, and turned into text only at a boundary); `None` when the key
    /// arrives as text (CSV, NDJSON).
    binary: Option<(usize, Type)>,
    last: Vec<u8>,
    seen: bool,
    wanted: bool,
    /// A boundary found: the buffer length at the cut, and the boundary.
    cut: Option<(usize, Boundary)>,
    scratch: Vec<u8>,
}

impl KeyTracker {
    /// A tracker of `keyset`'s column `key` (its result index is used for CSV rows and
    /// binary tuples, its type to render a binary key as text).
    pub fn new(keyset: &Keyset, format: CopyFormat, key: &KeyColumn) -> KeyTracker {
        KeyTracker {
            column: keyset.column.clone(),
            base: keyset.before,
            csv_index: (format == CopyFormat::Csv).then_some(key.index),
            binary: (format == CopyFormat::Binary).then(|| (key.index, key.ty.clone())),
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

    /// For [`CopyFormat::Binary`], the tuple field (0-based) that holds the key; `None` for
    /// CSV and NDJSON.
    pub fn binary_field(&self) -> Option<usize> {
        self.binary.as_ref().map(|(index, _)| *index)
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

    /// Looks at a row's key (`None`: NULL), the row starting at `at`: its text (CSV, NDJSON)
    /// or, for [`CopyFormat::Binary`], its binary value.
    pub fn row(&mut self, key: Option<&[u8]>, at: Cut) -> std::result::Result<(), String> {
        let Some(key) = key else {
            return Err(format!(
                "row {}: resume_key column {:?} is NULL; a keyset export cannot order or continue past a NULL key (filter NULLs out, or use a NOT NULL column)",
                self.position(at).0,
                self.column
            ));
        };
        if self.wanted && self.seen && key != self.last.as_slice() {
            let after = self.last_text(at)?;
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

    /// The last key seen as text, for the boundary before the row at `at`: a binary key
    /// rendered as PostgreSQL reads it back (`current_setting(...)::type`).
    fn last_text(&self, at: Cut) -> std::result::Result<String, String> {
        let Some((_, ty)) = &self.binary else {
            return Ok(String::from_utf8_lossy(&self.last).into_owned());
        };
        binary_key_text(ty, &self.last).map_err(|e| {
            format!(
                "row {}: resume_key column {:?} ({}) cannot be kept as the key to continue after: {e}",
                self.base.0 + at.rows,
                self.column,
                ty.name()
            )
        })
    }
}

/// The text of a key of type `ty` (one of [`KEY_TYPES`]) from its binary COPY value, as
/// PostgreSQL accepts it back as input: integers in decimal, `text` and `varchar` as they are
/// (UTF-8), a `uuid` hyphenated in lowercase, dates as `YYYY-MM-DD` and timestamps as
/// `YYYY-MM-DD HH:MM:SS.ffffff` (`timestamptz` in UTC with `+00`), years before 1 with ` BC`,
/// and `infinity` / `-infinity`. A value of the wrong length, or text that is not UTF-8, is an
/// error.
pub(super) fn binary_key_text(ty: &Type, raw: &[u8]) -> std::result::Result<String, String> {
    fn fixed<const N: usize>(ty: &Type, raw: &[u8]) -> std::result::Result<[u8; N], String> {
        <[u8; N]>::try_from(raw).map_err(|_| {
            format!(
                "a binary {} key of {} bytes (expected {N})",
                ty.name(),
                raw.len()
            )
        })
    }
    if *ty == Type::INT2 {
        Ok(i16::from_be_bytes(fixed(ty, raw)?).to_string())
    } else if *ty == Type::INT4 {
        Ok(i32::from_be_bytes(fixed(ty, raw)?).to_string())
    } else if *ty == Type::INT8 {
        Ok(i64::from_be_bytes(fixed(ty, raw)?).to_string())
    } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
        String::from_utf8(raw.to_vec()).map_err(|e| {
            format!(
                "a {} key that is not UTF-8 (invalid byte at {})",
                ty.name(),
                e.utf8_error().valid_up_to()
            )
        })
    } else if *ty == Type::UUID {
        Ok(uuid_text(&fixed::<16>(ty, raw)?))
    } else if *ty == Type::DATE {
        Ok(date_text(i32::from_be_bytes(fixed(ty, raw)?)))
    } else if *ty == Type::TIMESTAMP {
        Ok(timestamp_text(i64::from_be_bytes(fixed(ty, raw)?), ""))
    } else if *ty == Type::TIMESTAMPTZ {
        Ok(timestamp_text(i64::from_be_bytes(fixed(ty, raw)?), "+00"))
    } else {
        Err(format!(
            "a key of type {}, which is not a resume key type",
            ty.name()
        ))
    }
}

/// `8-4-4-4-12` lowercase hex digits.
fn uuid_text(bytes: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch for dates and timestamps.
const PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds in a day.
const DAY_MICROS: i64 = 86_400_000_000;

/// The proleptic Gregorian `(year, month, day)` of `days` after 1970-01-01 (year 0 is 1 BC).
/// H. Hinnant's `civil_from_days`, for any date PostgreSQL stores (beyond chrono's range).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // `day` is 1..=31 and `month` 1..=12 by construction.
    (year, month as u32, day as u32)
}

/// `YYYY-MM-DD` of `days` after 2000-01-01, and `" BC"` when its year is before 1 (PostgreSQL
/// writes year 0 as `0001 BC`, -1 as `0002 BC`, ...).
fn ymd(days: i64) -> (String, &'static str) {
    let (year, month, day) = civil_from_days(days + PG_EPOCH_DAYS);
    let (year, era) = if year <= 0 {
        (1 - year, " BC")
    } else {
        (year, "")
    };
    (format!("{year:04}-{month:02}-{day:02}"), era)
}

/// A `date` (days since 2000-01-01) as PostgreSQL writes it in the ISO style.
fn date_text(days: i32) -> String {
    match days {
        i32::MAX => "infinity".to_owned(),
        i32::MIN => "-infinity".to_owned(),
        days => {
            let (date, era) = ymd(i64::from(days));
            format!("{date}{era}")
        }
    }
}

/// A `timestamp` (microseconds since 2000-01-01 00:00:00) as `YYYY-MM-DD HH:MM:SS.ffffff`,
/// then `zone` (`+00` for a `timestamptz` in UTC) and ` BC` for years before 1.
fn timestamp_text(micros: i64, zone: &str) -> String {
    match micros {
        i64::MAX => "infinity".to_owned(),
        i64::MIN => "-infinity".to_owned(),
        micros => {
            let (date, era) = ymd(micros.div_euclid(DAY_MICROS));
            let time = micros.rem_euclid(DAY_MICROS);
            let (secs, frac) = (time / 1_000_000, time % 1_000_000);
            format!(
                "{date} {:02}:{:02}:{:02}.{frac:06}{zone}{era}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            )
        }
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
        let key = KeyColumn {
            index: 0,
            ty: Type::INT8,
        };
        let mut t = KeyTracker::new(&keyset, CopyFormat::Ndjson, &key);
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
        let key = KeyColumn {
            index: 1,
            ty: Type::TEXT,
        };
        let mut t = KeyTracker::new(&keyset, CopyFormat::Csv, &key);
        t.csv_row(b"x,1\n", at(0)).unwrap();
        t.want_boundary();
        t.csv_row(b"y,\"2\"\n", at(1)).unwrap();
        assert_eq!(t.take_cut().unwrap().1.after, "1");
        assert!(t.csv_row(b"z\n", at(2)).unwrap_err().contains("no field 2"));
        assert!(t.csv_row(b"z,\n", at(2)).unwrap_err().contains("NULL"));
    }

    fn text(ty: Type, raw: &[u8]) -> String {
        binary_key_text(&ty, raw).unwrap()
    }

    #[test]
    fn binary_integer_and_text_keys_print_as_postgres_reads_them() {
        assert_eq!(text(Type::INT2, &(-32768i16).to_be_bytes()), "-32768");
        assert_eq!(text(Type::INT2, &7i16.to_be_bytes()), "7");
        assert_eq!(text(Type::INT4, &(-1i32).to_be_bytes()), "-1");
        assert_eq!(text(Type::INT4, &i32::MAX.to_be_bytes()), "2147483647");
        assert_eq!(
            text(Type::INT8, &i64::MIN.to_be_bytes()),
            "-9223372036854775808"
        );
        assert_eq!(text(Type::INT8, &42i64.to_be_bytes()), "42");
        assert_eq!(text(Type::TEXT, "a'b,\"é\n".as_bytes()), "a'b,\"é\n");
        assert_eq!(text(Type::VARCHAR, b""), "");
        assert_eq!(
            text(
                Type::UUID,
                &[
                    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76,
                    0x54, 0x32, 0x10
                ]
            ),
            "01234567-89ab-cdef-fedc-ba9876543210"
        );
        for (ty, raw, expected) in [
            (
                Type::INT2,
                &[0u8; 4][..],
                "int2 key of 4 bytes (expected 2)",
            ),
            (
                Type::INT4,
                &[0u8; 8][..],
                "int4 key of 8 bytes (expected 4)",
            ),
            (
                Type::INT8,
                &[0u8; 4][..],
                "int8 key of 4 bytes (expected 8)",
            ),
            (
                Type::UUID,
                &[0u8; 15][..],
                "uuid key of 15 bytes (expected 16)",
            ),
            (
                Type::DATE,
                &[0u8; 8][..],
                "date key of 8 bytes (expected 4)",
            ),
            (Type::TIMESTAMP, &[0u8; 4][..], "timestamp key of 4 bytes"),
            (Type::TIMESTAMPTZ, &[][..], "timestamptz key of 0 bytes"),
            (Type::TEXT, &b"ab\xff"[..], "not UTF-8 (invalid byte at 2)"),
            (Type::VARCHAR, &b"\xc3"[..], "varchar key that is not UTF-8"),
            (Type::NUMERIC, &[0u8; 8][..], "not a resume key type"),
        ] {
            let e = binary_key_text(&ty, raw).unwrap_err();
            assert!(e.contains(expected), "{ty}: {e}");
        }
    }

    #[test]
    fn binary_dates_and_timestamps_print_as_postgres_reads_them() {
        let date = |days: i32| text(Type::DATE, &days.to_be_bytes());
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(-1), "1999-12-31");
        assert_eq!(date(60), "2000-03-01", "2000 is a leap year");
        assert_eq!(date(-36_466), "1900-02-28", "1900 is not");
        assert_eq!(date(i32::MAX), "infinity");
        assert_eq!(date(i32::MIN), "-infinity");
        // 0001-01-01 is 730119 days before 2000-01-01; the day before it is 1 BC.
        assert_eq!(date(-730_119), "0001-01-01");
        assert_eq!(date(-730_120), "0001-12-31 BC");
        assert_eq!(date(-730_120 - 365), "0001-01-01 BC", "1 BC is a leap year");
        assert_eq!(date(-730_120 - 366), "0002-12-31 BC");
        // The first date PostgreSQL stores, and one of its last.
        assert_eq!(date(-2_451_545), "4714-11-24 BC");
        assert_eq!(date(2_921_939), "9999-12-31");
        assert_eq!(date(2_921_940), "10000-01-01");
        assert_eq!(date(2_145_031_948), "5874897-12-31");

        let day = DAY_MICROS;
        let ts = |us: i64| text(Type::TIMESTAMP, &us.to_be_bytes());
        let tz = |us: i64| text(Type::TIMESTAMPTZ, &us.to_be_bytes());
        assert_eq!(ts(0), "2000-01-01 00:00:00.000000");
        assert_eq!(ts(-1), "1999-12-31 23:59:59.999999");
        assert_eq!(
            ts(day * 31 + 13 * 3_600_000_000 + 5 * 60_000_000 + 9_000_123),
            "2000-02-01 13:05:09.000123"
        );
        assert_eq!(tz(1), "2000-01-01 00:00:00.000001+00");
        assert_eq!(tz(-730_120 * day + 1), "0001-12-31 00:00:00.000001+00 BC");
        assert_eq!(ts(-730_120 * day - 1), "0001-12-30 23:59:59.999999 BC");
        assert_eq!(ts(i64::MAX), "infinity");
        assert_eq!(tz(i64::MIN), "-infinity");
        assert_eq!(tz(i64::MAX), "infinity");
        assert_eq!(ts(i64::MIN), "-infinity");
        assert_eq!(ts(i64::MAX - 1), "294277-01-09 04:00:54.775806");
    }

    #[test]
    fn civil_dates_agree_with_chrono() {
        let epoch = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
        for days in (-95_000_000i64..95_000_000).step_by(9_973).chain(-800..800) {
            let d = epoch + chrono::Duration::days(days);
            let (y, m, dd) = civil_from_days(days + PG_EPOCH_DAYS);
            use chrono::Datelike;
            assert_eq!(
                (y, m, dd),
                (i64::from(d.year()), d.month(), d.day()),
                "{days}"
            );
        }
    }

    #[test]
    fn a_binary_tracker_cuts_where_the_key_changes_and_keeps_its_text() {
        let keyset = Keyset {
            column: "at".into(),
            after: None,
            before: (10, 500),
            null_probe: false,
        };
        let key = KeyColumn {
            index: 2,
            ty: Type::TIMESTAMPTZ,
        };
        let mut t = KeyTracker::new(&keyset, CopyFormat::Binary, &key);
        assert_eq!(t.binary_field(), Some(2));
        let k = |us: i64| us.to_be_bytes();
        t.row(Some(&k(0)), at(0)).unwrap();
        t.want_boundary();
        t.row(Some(&k(0)), at(1)).unwrap();
        assert!(t.take_cut().is_none(), "rows of one key stay together");
        t.row(Some(&k(1_000_000)), at(2)).unwrap();
        let (buffered, b) = t.take_cut().unwrap();
        assert_eq!(
            (buffered, b),
            (
                20,
                Boundary {
                    after: "2000-01-01 00:00:00.000000+00".into(),
                    rows: 2,
                    bytes: 20,
                }
            )
        );
        t.want_boundary();
        t.row(Some(&k(1_000_000)), at(3)).unwrap();
        t.row(Some(&k(i64::MAX)), at(4)).unwrap();
        assert_eq!(
            t.take_cut().unwrap().1.after,
            "2000-01-01 00:00:01.000000+00"
        );
        // A key that cannot be printed fails at the cut, naming the row it was last seen in.
        t.row(Some(b"short"), at(5)).unwrap();
        t.want_boundary();
        let e = t.row(Some(&k(7)), at(6)).unwrap_err();
        assert!(
            e.contains("row 16") && e.contains("\"at\" (timestamptz)") && e.contains("5 bytes"),
            "{e}"
        );
        let e = t.row(None, at(7)).unwrap_err();
        assert!(e.contains("row 18") && e.contains("NULL"), "{e}");

        let key = KeyColumn {
            index: 0,
            ty: Type::INT4,
        };
        let mut t = KeyTracker::new(&keyset, CopyFormat::Ndjson, &key);
        assert_eq!(t.binary_field(), None, "NDJSON keys come as text");
        t.row(Some(b"-3"), at(0)).unwrap();
        t.want_boundary();
        t.row(Some(b"4"), at(1)).unwrap();
        assert_eq!(t.take_cut().unwrap().1.after, "-3");
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
