//! A deterministic generator of a CSV shaped like NYC's "Parking Violations Issued" open data
//! (the same 43 columns, plausible values), with rows that are bad at a known rate.
//!
//! Row `i` depends only on the seed and `i`, so a test can regenerate any row to compute what a
//! pipeline must output, independently of the code under test. The file is streamed
//! ([`ParkingCsv`] implements `Read` and `AsyncRead`); nothing is ever held whole.
//!
//! Flaws, by row index `i` (0-based data rows):
//! - `i % 1499 == 7`: **ragged**, the last 5 fields are missing;
//! - otherwise `i % 997 == 13`: **bad date**, `Issue Date` is `13/45/2024` or `02/30/2025`.

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The header, in file order.
pub const COLUMNS: [&str; 43] = [
    "Summons Number",
    "Plate ID",
    "Registration State",
    "Plate Type",
    "Issue Date",
    "Violation Code",
    "Vehicle Body Type",
    "Vehicle Make",
    "Issuing Agency",
    "Street Code1",
    "Street Code2",
    "Street Code3",
    "Vehicle Expiration Date",
    "Violation Location",
    "Violation Precinct",
    "Issuer Precinct",
    "Issuer Code",
    "Issuer Command",
    "Issuer Squad",
    "Violation Time",
    "Time First Observed",
    "Violation County",
    "Violation In Front Of Or Opposite",
    "House Number",
    "Street Name",
    "Intersecting Street",
    "Date First Observed",
    "Law Section",
    "Sub Division",
    "Violation Legal Code",
    "Days Parking In Effect",
    "From Hours In Effect",
    "To Hours In Effect",
    "Vehicle Color",
    "Unregistered Vehicle?",
    "Vehicle Year",
    "Meter Number",
    "Feet From Curb",
    "Violation Post Code",
    "Violation Description",
    "No Standing or Stopping Violation",
    "Hydrant Violation",
    "Double Parking Violation",
];

/// How a row is deliberately bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// A good row.
    None,
    /// `Issue Date` is not a date.
    BadDate,
    /// The last 5 fields are missing.
    Ragged,
}

impl Flaw {
    /// The flaw of data row `i`.
    pub fn of(i: u64) -> Flaw {
        if i % 1499 == 7 {
            Flaw::Ragged
        } else if i % 997 == 13 {
            Flaw::BadDate
        } else {
            Flaw::None
        }
    }
}

const STATES: &[(&str, u32)] = &[
    ("NY", 700),
    ("NJ", 100),
    ("PA", 50),
    ("CT", 30),
    ("FL", 30),
    ("MA", 20),
    ("IN", 15),
    ("VA", 15),
    ("99", 10),
    ("TX", 30),
];
const MAKES: &[(&str, u32)] = &[
    ("TOYOT", 160),
    ("HONDA", 130),
    ("FORD", 150),
    ("NISSA", 100),
    ("CHEVR", 80),
    ("BMW", 50),
    ("ME/BE", 50),
    ("JEEP", 60),
    ("DODGE", 50),
    ("HYUND", 70),
    ("SUBAR", 40),
    ("LEXUS", 30),
    ("INTER", 30),
];
const AGENCIES: &[(&str, u32)] = &[("P", 300), ("T", 500), ("S", 100), ("K", 50), ("X", 50)];
const PLATE_TYPES: &[(&str, u32)] = &[("PAS", 750), ("COM", 150), ("OMT", 50), ("SRF", 50)];
const BODIES: &[&str] = &["SUBN", "4DSD", "VAN", "DELV", "PICK", "2DSD", "SDN", "TRLR"];
const COUNTIES: &[&str] = &["NY", "K", "Q", "BX", "R"];
const COMMANDS: &[&str] = &["T103", "T401", "KN09", "T301", "0019", "T202"];
const STREETS: &[&str] = &[
    "BROADWAY",
    "W 42ND ST",
    "3RD AVE",
    "LEXINGTON AVE",
    "E 14TH ST, REAR",
    "ATLANTIC AVE",
    "QUEENS BLVD",
    "GRAND CONCOURSE",
    "AMSTERDAM AVE",
    "FLATBUSH AVE",
    "ST. MARK'S PL",
    "ROOSEVELT AVE",
];
const CROSS: &[&str] = &["", "", "", "E 15TH ST", "PARK AVE", "ALY \"B\"", "8TH AVE"];
const LAW: &[&str] = &["408", "1111", "1180", "1110"];
const SUBDIV: &[&str] = &["D", "E2", "J7", "F1", "C", "D1", "K4"];
const COLORS: &[&str] = &["GY", "WH", "BK", "BL", "RD", "SILVE", "BROWN"];
const DESCRIPTIONS: &[&str] = &[
    "PHTO SCHOOL ZN SPEED VIOLATION",
    "38-Failure to Display Muni Rec",
    "14-No Standing",
    "21-No Parking (street clean)",
    "FAILURE TO STOP AT RED LIGHT",
    "46A-Double Parking (Non-COM)",
    "71A-Insp Sticker Expired (NYS)",
    "",
];

/// One generated row, with the fields a test needs to compute a pipeline's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkingRow {
    /// 0-based data row index.
    pub index: u64,
    /// How the row is bad, if it is.
    pub flaw: Flaw,
    /// `Summons Number`.
    pub summons: u64,
    /// `Registration State`.
    pub state: &'static str,
    /// `Vehicle Make`.
    pub make: &'static str,
    /// `Issuing Agency`.
    pub agency: &'static str,
    /// `House Number` (empty when absent).
    pub house: String,
    /// `Street Name`.
    pub street: &'static str,
    /// `Issue Date` as written (`MM/DD/YYYY`, or garbage for [`Flaw::BadDate`]).
    pub issue_date: String,
    /// `Vehicle Expiration Date` as written (`YYYYMMDD`, `88888888` or `0`).
    pub expiration: String,
    /// `Vehicle Year`.
    pub year: u32,
    rest: Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rest {
    plate: [u8; 7],
    plate_type: &'static str,
    code: u32,
    body: &'static str,
    street_codes: [u32; 3],
    location: u32,
    precinct: u32,
    issuer_precinct: u32,
    issuer_code: u32,
    command: &'static str,
    squad: u8,
    time: (u32, u32, bool),
    county: &'static str,
    opposite: bool,
    cross: &'static str,
    law: &'static str,
    subdiv: &'static str,
    legal: bool,
    all_hours: bool,
    color: &'static str,
    meter: u32,
    feet: u32,
    description: &'static str,
}

/// splitmix64: a small, fast, deterministic mixer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    fn weighted(&mut self, items: &[(&'static str, u32)]) -> &'static str {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut x = self.below(total as u64) as u32;
        for (v, w) in items {
            if x < *w {
                return v;
            }
            x -= w;
        }
        items[0].0
    }
}

impl ParkingRow {
    /// Data row `i` of the file generated with `seed`.
    pub fn generate(seed: u64, i: u64) -> ParkingRow {
        let mut r = Rng(mix(seed ^ mix(i)));
        let flaw = Flaw::of(i);
        let month = 1 + r.below(12) as u32;
        let day = 1 + r.below(28) as u32;
        let year = 2023 + r.below(3) as u32;
        let issue_date = match flaw {
            Flaw::BadDate if i % 2 == 0 => "13/45/2024".to_owned(),
            Flaw::BadDate => "02/30/2025".to_owned(),
            _ => format!("{month:02}/{day:02}/{year}"),
        };
        let expiration = match r.below(10) {
            0 => "88888888".to_owned(),
            1 => "0".to_owned(),
            _ => format!(
                "{}{:02}{:02}",
                year + r.below(3) as u32,
                1 + r.below(12),
                1 + r.below(28)
            ),
        };
        let house = match r.below(7) {
            0 => String::new(),
            1 => format!("{}-{:02}", 10 + r.below(200), r.below(100)),
            _ => (1 + r.below(2500)).to_string(),
        };
        let mut plate = [0u8; 7];
        for b in &mut plate {
            let x = r.below(36) as u8;
            *b = if x < 26 { b'A' + x } else { b'0' + x - 26 };
        }
        ParkingRow {
            index: i,
            flaw,
            summons: 1_000_000_000 + i * 7,
            state: r.weighted(STATES),
            make: r.weighted(MAKES),
            agency: r.weighted(AGENCIES),
            house,
            street: r.pick(STREETS),
            issue_date,
            expiration,
            year: if r.below(8) == 0 {
                0
            } else {
                1995 + r.below(31) as u32
            },
            rest: Rest {
                plate,
                plate_type: r.weighted(PLATE_TYPES),
                code: 1 + r.below(99) as u32,
                body: r.pick(BODIES),
                street_codes: [
                    r.below(99_999) as u32,
                    r.below(99_999) as u32,
                    r.below(99_999) as u32,
                ],
                location: r.below(124) as u32,
                precinct: r.below(124) as u32,
                issuer_precinct: r.below(124) as u32,
                issuer_code: 100_000 + r.below(900_000) as u32,
                command: r.pick(COMMANDS),
                squad: b'A' + r.below(26) as u8,
                time: (1 + r.below(12) as u32, r.below(60) as u32, r.below(2) == 0),
                county: r.pick(COUNTIES),
                opposite: r.below(4) == 0,
                cross: r.pick(CROSS),
                law: r.pick(LAW),
                subdiv: r.pick(SUBDIV),
                legal: r.below(10) == 0,
                all_hours: r.below(3) != 0,
                color: r.pick(COLORS),
                meter: if r.below(5) == 0 {
                    r.below(10_000_000) as u32
                } else {
                    0
                },
                feet: r.below(16) as u32,
                description: r.pick(DESCRIPTIONS),
            },
        }
    }

    /// Appends the row as a CSV line.
    pub fn write_csv(&self, out: &mut Vec<u8>) {
        let x = &self.rest;
        let mut fields: [Field; 43] = [
            Field::Num(self.summons),
            Field::Bytes(&x.plate),
            Field::Str(self.state),
            Field::Str(x.plate_type),
            Field::Str(&self.issue_date),
            Field::Num(x.code as u64),
            Field::Str(x.body),
            Field::Str(self.make),
            Field::Str(self.agency),
            Field::Num(x.street_codes[0] as u64),
            Field::Num(x.street_codes[1] as u64),
            Field::Num(x.street_codes[2] as u64),
            Field::Str(&self.expiration),
            if x.location == 0 {
                Field::Str("")
            } else {
                Field::Num(x.location as u64)
            },
            Field::Num(x.precinct as u64),
            Field::Num(x.issuer_precinct as u64),
            Field::Num(x.issuer_code as u64),
            Field::Str(x.command),
            Field::Byte(x.squad),
            Field::Time(x.time),
            Field::Str(""),
            Field::Str(x.county),
            Field::Str(if x.opposite { "O" } else { "F" }),
            Field::Str(&self.house),
            Field::Str(self.street),
            Field::Str(x.cross),
            Field::Str("0"),
            Field::Str(x.law),
            Field::Str(x.subdiv),
            Field::Str(if x.legal { "T" } else { "" }),
            Field::Str(if x.all_hours { "YYYYYYY" } else { "BBBBBBB" }),
            Field::Str(if x.all_hours { "ALL" } else { "0700A" }),
            Field::Str(if x.all_hours { "ALL" } else { "0700P" }),
            Field::Str(x.color),
            Field::Str(if x.legal { "0" } else { "" }),
            Field::Num(self.year as u64),
            if x.meter == 0 {
                Field::Str("")
            } else {
                Field::Meter(x.meter)
            },
            Field::Num(x.feet as u64),
            Field::Str(""),
            Field::Str(x.description),
            Field::Str(""),
            Field::Str(""),
            Field::Str(""),
        ];
        let n = if self.flaw == Flaw::Ragged { 38 } else { 43 };
        for (i, f) in fields.iter_mut().take(n).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            f.write(out);
        }
        out.push(b'\n');
    }
}

enum Field<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
    Byte(u8),
    Num(u64),
    Time((u32, u32, bool)),
    Meter(u32),
}

impl Field<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Field::Str(s) => csv_field(s.as_bytes(), out),
            Field::Bytes(b) => out.extend_from_slice(b),
            Field::Byte(b) => out.push(*b),
            Field::Num(n) => push_num(*n, out),
            Field::Time((h, m, pm)) => {
                push_padded(*h as u64, 2, out);
                push_padded(*m as u64, 2, out);
                out.push(if *pm { b'P' } else { b'A' });
            }
            Field::Meter(m) => {
                push_padded((*m / 10_000) as u64, 3, out);
                out.push(b'-');
                push_padded((*m % 10_000) as u64, 4, out);
            }
        }
    }
}

fn csv_field(s: &[u8], out: &mut Vec<u8>) {
    if !s.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.extend_from_slice(s);
        return;
    }
    out.push(b'"');
    for &b in s {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

fn push_num(mut n: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_padded(n: u64, width: usize, out: &mut Vec<u8>) {
    let start = out.len();
    push_num(n, out);
    let len = out.len() - start;
    if len < width {
        let pad = width - len;
        out.splice(start..start, std::iter::repeat_n(b'0', pad));
    }
}

/// Appends the header line.
pub fn write_header(out: &mut Vec<u8>) {
    for (i, c) in COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_field(c.as_bytes(), out);
    }
    out.push(b'\n');
}

/// The CSV file as a stream: the header, then rows until at least `min_bytes` were produced.
pub struct ParkingCsv {
    seed: u64,
    min_bytes: u64,
    produced: u64,
    next_row: u64,
    buf: Vec<u8>,
    pos: usize,
    header_done: bool,
}

impl ParkingCsv {
    /// The file of `seed`, at least `min_bytes` long (it ends after the row that crosses it).
    pub fn new(seed: u64, min_bytes: u64) -> Self {
        ParkingCsv {
            seed,
            min_bytes,
            produced: 0,
            next_row: 0,
            buf: Vec::with_capacity(1 << 16),
            pos: 0,
            header_done: false,
        }
    }

    /// Data rows produced so far (all of them once the stream has ended).
    pub fn rows(&self) -> u64 {
        self.next_row
    }

    /// Bytes produced so far.
    pub fn bytes_written(&self) -> u64 {
        self.produced
    }

    fn refill(&mut self) {
        self.buf.clear();
        self.pos = 0;
        if !self.header_done {
            write_header(&mut self.buf);
            self.header_done = true;
        }
        while self.buf.len() < 60_000 && self.produced + (self.buf.len() as u64) < self.min_bytes {
            ParkingRow::generate(self.seed, self.next_row).write_csv(&mut self.buf);
            self.next_row += 1;
        }
        self.produced += self.buf.len() as u64;
    }
}

impl Read for ParkingCsv {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.refill();
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl AsyncRead for ParkingCsv {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = Read::read(this, buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// What the seed pipeline (`events/transform-s3.pipeline.json`) writes for a generated file,
/// computed from the generator's rows alone (independently of the transform code): the NJ
/// FORD rows of agency `P`, as `vehicle_make,issuing_agency,address` with `P` as `police`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedOutput {
    /// CRC64NVME of the decoded output CSV.
    pub crc: u64,
    /// Its length.
    pub len: u64,
    /// Data rows read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Rows quarantined (every flawed row).
    pub quarantined: u64,
}

fn seed_quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// [`SeedOutput`] for the file `ParkingCsv::new(seed, size)`, in one pass over its rows (as
/// the generator does, rows are added while the file is shorter than `size`). Takes seconds
/// a GiB: call it on a blocking thread.
pub fn expected_seed_output_of_size(seed: u64, size: u64) -> SeedOutput {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    let header = b"vehicle_make,issuing_agency,address\n";
    digest.update(header);
    let mut e = SeedOutput {
        crc: 0,
        len: header.len() as u64,
        rows_in: 0,
        rows_out: 0,
        quarantined: 0,
    };
    let mut line = Vec::with_capacity(1024);
    write_header(&mut line);
    let mut total = line.len() as u64;
    while total < size {
        let r = ParkingRow::generate(seed, e.rows_in);
        line.clear();
        r.write_csv(&mut line);
        total += line.len() as u64;
        e.rows_in += 1;
        if r.flaw != Flaw::None {
            e.quarantined += 1;
            continue;
        }
        if r.state == "NJ" && r.make == "FORD" && r.agency == "P" {
            let address = format!("{}, {}, {}", r.house, r.street, r.state);
            let out = format!("{},police,{}\n", seed_quote(r.make), seed_quote(&address));
            digest.update(out.as_bytes());
            e.len += out.len() as u64;
            e.rows_out += 1;
        }
    }
    e.crc = digest.finalize();
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_parseable() {
        let mut a = Vec::new();
        ParkingCsv::new(7, 2_000_000).read_to_end(&mut a).unwrap();
        let mut b = Vec::new();
        let mut gen_b = ParkingCsv::new(7, 2_000_000);
        gen_b.read_to_end(&mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(gen_b.bytes_written(), b.len() as u64);
        assert!(a.len() >= 2_000_000 && a.len() < 2_001_000, "{}", a.len());
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(a.as_slice());
        assert_eq!(reader.headers().unwrap().len(), 43);
        let (mut n, mut ragged, mut nj) = (0u64, 0, 0);
        for (i, rec) in reader.records().enumerate() {
            let rec = rec.unwrap();
            let row = ParkingRow::generate(7, i as u64);
            assert_eq!(rec.len(), if row.flaw == Flaw::Ragged { 38 } else { 43 });
            assert_eq!(&rec[2], row.state);
            assert_eq!(&rec[23], row.house);
            assert_eq!(&rec[24], row.street);
            ragged += (rec.len() != 43) as u64;
            nj += (&rec[2] == "NJ") as u64;
            n += 1;
        }
        assert_eq!(n, gen_b.rows());
        assert!(ragged > 0 && nj > n / 20, "{ragged} {nj} {n}");
    }

    #[test]
    fn seed_output_counts_the_rows_of_the_file() {
        let mut gen_a = ParkingCsv::new(9, 1_500_000);
        io::copy(&mut gen_a, &mut io::sink()).unwrap();
        let e = expected_seed_output_of_size(9, 1_500_000);
        assert_eq!(e.rows_in, gen_a.rows());
        let flawed = (0..e.rows_in)
            .filter(|&i| Flaw::of(i) != Flaw::None)
            .count();
        assert_eq!(e.quarantined, flawed as u64);
        assert!(e.rows_out > 10 && e.len > 36, "{e:?}");
    }
}
