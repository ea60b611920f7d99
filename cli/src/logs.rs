//! Logs on stderr: text for a person on a terminal, JSON lines (as the functions write them
//! under Lambda's JSON log format) otherwise or with `--json`. Level from `RUST_LOG`, default
//! `info`. While the progress bar is drawn, each line is written with the bar cleared, so the
//! two never garble each other.

use std::io::{IsTerminal as _, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::progress::Bar;

/// Installs the subscriber. `json` forces JSON lines.
pub fn init(json: bool, bar: Bar) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BarWriter(bar));
    let _ = if json || !terminal {
        builder
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .try_init()
    } else {
        builder.with_ansi(true).with_target(false).try_init()
    };
}

/// Makes one [`Line`] per event.
struct BarWriter(Bar);

impl<'a> MakeWriter<'a> for BarWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            bar: &self.0,
            buf: Vec::new(),
        }
    }
}

/// One formatted event, written to stderr in one piece (with the bar cleared) when dropped.
struct Line<'a> {
    bar: &'a Bar,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        self.bar.suspend(|| {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&buf);
            let _ = err.flush();
        });
    }
}
