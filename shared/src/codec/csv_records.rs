//! CSV records split out of a stream of chunks: the raw bytes of each record (its line, or
//! lines when a quoted field holds a newline) and its unquoted fields, with
//! [`csv_core`] doing the parsing.
//!
//! Made for what `COPY ... (FORMAT csv)` writes: `,` between fields, `"` quoting with doubled
//! quotes inside, `\n` after each record. An empty line is a record of one empty field (COPY
//! writes a one-column NULL row so); `csv_core` would skip it, so it is taken here before the
//! parser sees it. A record longer than the cap is an error, never an unbounded buffer.

use csv_core::{ReadRecordResult, Reader, ReaderBuilder, Terminator};

/// Splits CSV records across chunk boundaries.
#[derive(Debug)]
pub struct CsvRecords {
    reader: Reader,
    /// The record's bytes as read (the terminator dropped once it is complete).
    raw: Vec<u8>,
    /// The record's unquoted fields, back to back; `ends` has each one's end.
    fields: Vec<u8>,
    ends: Vec<usize>,
    out: usize,
    nends: usize,
    /// The last call completed a record: the next one starts a new one.
    complete: bool,
    max_record: usize,
    records: u64,
}

impl CsvRecords {
    /// A splitter refusing records of more than `max_record` bytes.
    pub fn new(max_record: usize) -> Self {
        CsvRecords {
            reader: ReaderBuilder::new()
                .terminator(Terminator::Any(b'\n'))
                .build(),
            raw: Vec::new(),
            fields: vec![0; 1024],
            ends: vec![0; 64],
            out: 0,
            nends: 0,
            complete: false,
            max_record,
            records: 0,
        }
    }

    /// Reads from the front of `input` (moving it past what was read) until a record is
    /// complete: `Ok(true)`, and [`record`](Self::record) and [`field`](Self::field) give
    /// it; `Ok(false)` when `input` ran out first (the record goes on in the next chunk).
    /// A record past the cap is an error naming its number.
    pub fn next(&mut self, input: &mut &[u8]) -> Result<bool, String> {
        if self.complete {
            self.raw.clear();
            self.out = 0;
            self.nends = 0;
            self.complete = false;
        }
        if self.raw.is_empty() && input.first() == Some(&b'\n') {
            // An empty line: one empty field.
            *input = &input[1..];
            self.ends[0] = 0;
            self.nends = 1;
            return Ok(self.completed());
        }
        while !input.is_empty() {
            let (result, nin, nout, nend) = self.reader.read_record(
                input,
                &mut self.fields[self.out..],
                &mut self.ends[self.nends..],
            );
            self.raw.extend_from_slice(&input[..nin]);
            *input = &input[nin..];
            self.out += nout;
            self.nends += nend;
            if self.raw.len() > self.max_record {
                return Err(format!(
                    "record {} is over {} bytes",
                    self.records + 1,
                    self.max_record
                ));
            }
            match result {
                ReadRecordResult::InputEmpty | ReadRecordResult::End => break,
                ReadRecordResult::OutputFull => {
                    let len = self.fields.len() * 2;
                    self.fields.resize(len, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let len = self.ends.len() * 2;
                    self.ends.resize(len, 0);
                }
                ReadRecordResult::Record => {
                    if self.raw.last() == Some(&b'\n') {
                        self.raw.pop();
                    }
                    return Ok(self.completed());
                }
            }
        }
        Ok(false)
    }

    /// At the end of the input: completes a last record that had no `\n` (`Ok(true)`), or
    /// `Ok(false)` when there was none. A quoted field still open ends there (as `csv_core`
    /// reads it); COPY's stream never ends inside a record.
    pub fn finish(&mut self) -> Result<bool, String> {
        if self.complete || self.raw.is_empty() {
            return Ok(false);
        }
        loop {
            let (result, _, nout, nend) = self.reader.read_record(
                &[],
                &mut self.fields[self.out..],
                &mut self.ends[self.nends..],
            );
            self.out += nout;
            self.nends += nend;
            match result {
                ReadRecordResult::Record => return Ok(self.completed()),
                ReadRecordResult::OutputEndsFull => {
                    let len = self.ends.len() * 2;
                    self.ends.resize(len, 0);
                }
                _ => {
                    return Err(format!(
                        "record {} is cut short (a quoted field is not closed)",
                        self.records + 1
                    ));
                }
            }
        }
    }

    fn completed(&mut self) -> bool {
        self.complete = true;
        self.records += 1;
        true
    }

    /// The complete record's bytes, without its `\n`.
    pub fn record(&self) -> &[u8] {
        &self.raw
    }

    /// Fields of the complete record.
    pub fn len(&self) -> usize {
        self.nends
    }

    /// Whether the complete record has no fields (never, for a record `next` gave).
    pub fn is_empty(&self) -> bool {
        self.nends == 0
    }

    /// Field `i` of the complete record, unquoted, or `None` past its last field.
    pub fn field(&self, i: usize) -> Option<&[u8]> {
        if i >= self.nends {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.fields.get(start..self.ends[i])
    }

    /// Records completed so far.
    pub fn records(&self) -> u64 {
        self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record of `input` fed in `chunks`: raw bytes and fields.
    fn split(input: &[u8], cuts: &[usize]) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
        let mut s = CsvRecords::new(1 << 20);
        let mut out = Vec::new();
        let mut take = |s: &CsvRecords| {
            out.push((
                s.record().to_vec(),
                (0..s.len()).map(|i| s.field(i).unwrap().to_vec()).collect(),
            ))
        };
        let mut last = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let mut chunk = &input[last..cut];
            last = cut;
            while s.next(&mut chunk).unwrap() {
                take(&s);
            }
            assert!(chunk.is_empty());
        }
        if s.finish().unwrap() {
            take(&s);
        }
        out
    }

    const COPY: &[u8] = b"id,note,day\n1,\"two\nlines, \"\"quoted\"\"\",2026-11-28 10:00:00+00\n\n2,,\"\"\n3,plain,x";

    fn want() -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
        let r = |raw: &[u8], f: &[&[u8]]| (raw.to_vec(), f.iter().map(|f| f.to_vec()).collect());
        vec![
            r(b"id,note,day", &[b"id", b"note", b"day"]),
            r(
                b"1,\"two\nlines, \"\"quoted\"\"\",2026-11-28 10:00:00+00",
                &[b"1", b"two\nlines, \"quoted\"", b"2026-11-28 10:00:00+00"],
            ),
            r(b"", &[b""]),
            r(b"2,,\"\"", &[b"2", b"", b""]),
            r(b"3,plain,x", &[b"3", b"plain", b"x"]),
        ]
    }

    #[test]
    fn records_with_quoted_newlines_split_the_same_at_every_boundary() {
        assert_eq!(split(COPY, &[]), want());
        for cut in 0..=COPY.len() {
            assert_eq!(split(COPY, &[cut]), want(), "cut at {cut}");
        }
        for a in 0..=COPY.len() {
            for b in a..=COPY.len() {
                assert_eq!(split(COPY, &[a, b]), want(), "cuts at {a}, {b}");
            }
        }
        let bytes: Vec<usize> = (1..COPY.len()).collect();
        assert_eq!(split(COPY, &bytes), want(), "a byte at a time");
    }

    #[test]
    fn wide_records_grow_the_buffers() {
        let wide: Vec<String> = (0..500).map(|i| format!("\"{}\"", "v".repeat(i))).collect();
        let line = format!("{}\n", wide.join(","));
        let got = split(line.as_bytes(), &[7, 4000]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, line.trim_end().as_bytes());
        assert_eq!(got[0].1.len(), 500);
        assert_eq!(got[0].1[499], "v".repeat(499).into_bytes());
    }

    #[test]
    fn a_record_over_the_cap_is_an_error_and_a_last_record_needs_no_newline() {
        let mut s = CsvRecords::new(10);
        let mut input: &[u8] = b"1,\"0123456789";
        let e = s.next(&mut input).unwrap_err();
        assert!(e.contains("record 1 is over 10 bytes"), "{e}");
        let mut s = CsvRecords::new(100);
        let mut input: &[u8] = b"a\n1,\"open";
        assert!(s.next(&mut input).unwrap());
        assert!(!s.next(&mut input).unwrap());
        assert!(s.finish().unwrap());
        assert_eq!(s.field(1), Some(&b"open"[..]));
        assert!(!s.finish().unwrap(), "one last record, once");
    }
}
