//! `sluice-gen`: deterministic test data, streamed.
//!
//! ```sh
//! sluice-gen parking --bytes 1073741824 --gzip > parking.csv.gz
//! sluice-gen parking --bytes 100000000 --seed 7 --out /tmp/parking.csv
//! ```
//!
//! `parking` writes a CSV shaped like NYC's "Parking Violations Issued" (43 columns) with
//! deliberately bad rows at a known rate (see `sluice_tests::parking`). `--bytes` is the
//! uncompressed size (the file ends after the row crossing it); `--gzip` compresses (level 1).

use std::io::{self, Read, Write};

use sluice_tests::parking::ParkingCsv;

fn usage() -> ! {
    eprintln!("usage: sluice-gen parking --bytes N [--seed S] [--gzip] [--out PATH]");
    std::process::exit(2);
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("parking") {
        usage();
    }
    let (mut bytes, mut seed, mut gzip, mut out) = (None, 1u64, false, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bytes" => bytes = args.next().and_then(|v| v.parse::<u64>().ok()),
            "--seed" => {
                seed = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--gzip" => gzip = true,
            "--out" => out = Some(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    let Some(bytes) = bytes else { usage() };
    let sink: Box<dyn Write> = match out {
        Some(path) => Box::new(std::fs::File::create(path)?),
        None => Box::new(io::stdout().lock()),
    };
    let mut sink: Box<dyn Write> = if gzip {
        Box::new(flate2::write::GzEncoder::new(
            sink,
            flate2::Compression::fast(),
        ))
    } else {
        sink
    };
    let mut source = ParkingCsv::new(seed, bytes);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sink.write_all(&buf[..n])?;
    }
    sink.flush()?;
    drop(sink);
    eprintln!(
        "sluice-gen: {} rows, {} bytes of CSV (seed {seed})",
        source.rows(),
        source.bytes_written()
    );
    Ok(())
}
