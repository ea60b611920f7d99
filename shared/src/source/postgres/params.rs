//! Query parameters: finding `$n` placeholders, text-format bind values, quoted identifiers.

use bytes::BytesMut;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

/// A `$n` placeholder found in a query: byte range and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placeholder {
    /// Byte offset of the `$`.
    pub start: usize,
    /// Byte offset after the last digit.
    pub end: usize,
    /// The parameter number (1-based).
    pub number: usize,
}

/// Finds the `$n` placeholders of a Postgres query, skipping string constants (`'..'`,
/// `E'..'` with backslash escapes, `$tag$..$tag$`), quoted identifiers and comments (`--`,
/// nested `/* */`). An identifier may contain `$` (`a$1` is one identifier), so a `$` right
/// after an identifier character is not a placeholder.
pub fn find_placeholders(sql: &str) -> Vec<Placeholder> {
    // Indexing: every `b[i]` is behind `i < b.len()` (or `i > 0` / `i < 2 ||` for the bytes
    // before it), and every slice of `sql` starts and ends at an ASCII byte (`$`, a digit), so
    // at a character boundary.
    let b = sql.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                // E'...' (escape string) when preceded by a lone e/E.
                let escape =
                    i > 0 && (b[i - 1] == b'e' || b[i - 1] == b'E') && (i < 2 || !ident(b[i - 2]));
                i += 1;
                while i < b.len() {
                    if escape && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' if i > 0 && ident(b[i - 1]) => i += 1,
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if let Ok(number) = sql[start + 1..i].parse() {
                    out.push(Placeholder {
                        start,
                        end: i,
                        number,
                    });
                }
            }
            b'$' => {
                // A dollar quote: $$ or $tag$ (tag: identifier characters, not starting with
                // a digit).
                let mut j = i + 1;
                while j < b.len() && b[j] != b'$' && ident(b[j]) {
                    j += 1;
                }
                if j < b.len() && b[j] == b'$' {
                    let tag = &sql[i..=j];
                    match sql[j + 1..].find(tag) {
                        Some(end) => i = j + 1 + end + tag.len(),
                        None => i = b.len(),
                    }
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// A text-format parameter: the server parses it as whatever type it inferred.
#[derive(Debug)]
pub(super) struct TextParam(pub(super) Option<String>);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Some(s) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

pub(super) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(sql: &str) -> Vec<usize> {
        find_placeholders(sql).iter().map(|p| p.number).collect()
    }

    #[test]
    fn placeholders_outside_strings_comments_and_identifiers() {
        assert_eq!(numbers("select $1, $2::int, $10"), vec![1, 2, 10]);
        assert_eq!(numbers("select '$1', \"$2\", $3"), vec![3]);
        assert_eq!(numbers("select 'it''s $1', $2"), vec![2]);
        assert_eq!(numbers("select E'\\' $1', $2"), vec![2]);
        assert_eq!(numbers("select $$ $1 $$, $tag$ $2 $tag$, $3"), vec![3]);
        assert_eq!(numbers("select 1 -- $1\n, $2"), vec![2]);
        assert_eq!(numbers("select /* $1 /* $2 */ $3 */ $4"), vec![4]);
        assert_eq!(numbers("select a$1, x from t where y = $1"), vec![1]);
        assert_eq!(numbers("select $1+$2"), vec![1, 2]);
        // An unterminated string hides the rest rather than finding placeholders in it.
        assert_eq!(numbers("select $1, 'open $2"), vec![1]);
        let p = find_placeholders("a = $12 and b");
        assert_eq!((p[0].start, p[0].end, p[0].number), (4, 7, 12));
    }
}
