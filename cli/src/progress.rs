//! The progress bar: drawn on stderr while a job runs when stderr is a terminal (and not with
//! `--no-progress`); otherwise progress log lines, as the functions write them. It reads the invocation's live counters
//! ([`sluice::telemetry::Progress`]) five times a second: a bar with the rate and the time
//! left when the source's size is known, a spinner with the bytes so far otherwise, and the
//! bytes written, records, parts and retries beside it.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice::job::Invocation;
use sluice::telemetry::ProgressSnapshot;

const TICK: Duration = Duration::from_millis(200);

/// The bar of a run; a no-op when there is no terminal to draw on. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// A bar on stderr when `wanted` and stderr is a terminal; not drawn until [`Bar::track`].
    pub fn new(wanted: bool) -> Bar {
        let draw = wanted && std::io::stderr().is_terminal();
        Bar(draw.then(ProgressBar::hidden))
    }

    /// Runs `f` (which writes to stderr) with the bar cleared, then draws it again.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.0 {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Shows the counters of `invocation` until the returned guard is dropped: the bar, or,
    /// with no bar, a `progress` log line every `SLUICE_PROGRESS_SECS` (default 10, 0: none)
    /// as the functions log them.
    pub fn track(&self, function: &'static str, invocation: &Invocation) -> Tracking {
        let progress = invocation.progress.clone();
        let Some(bar) = self.0.clone() else {
            let Some(every) = sluice::telemetry::progress::interval() else {
                return Tracking(None, None);
            };
            let invocation = invocation.clone();
            let task = tokio::spawn(async move {
                let start = tokio::time::Instant::now() + every;
                let mut ticks = tokio::time::interval_at(start, every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let snapshot = progress.snapshot();
                    sluice::telemetry::progress::log_line(function, invocation.job(), &snapshot);
                }
            });
            return Tracking(None, Some(task));
        };
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let task = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut ticks = tokio::time::interval(TICK);
                loop {
                    ticks.tick().await;
                    draw(&bar, &progress.snapshot());
                }
            }
        });
        Tracking(Some(bar), Some(task))
    }
}

/// Stops and clears the bar when dropped (the summary or the error follows it).
pub struct Tracking(Option<ProgressBar>, Option<tokio::task::JoinHandle<()>>);

impl Drop for Tracking {
    fn drop(&mut self) {
        if let Some(task) = self.1.take() {
            task.abort();
        }
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

fn draw(bar: &ProgressBar, s: &ProgressSnapshot) {
    let style = match s.total_bytes {
        Some(total) => {
            bar.set_length(total);
            "{spinner} {elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} \
             eta {eta} {msg}"
        }
        None => "{spinner} {elapsed_precise} {bytes} in, {bytes_per_sec} {msg}",
    };
    if let Ok(style) = ProgressStyle::with_template(style) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(s.bytes_in);
    bar.set_message(message(s));
}

/// What the bar shows beside the bytes read.
fn message(s: &ProgressSnapshot) -> String {
    let mut parts = vec![format!("{} out", HumanBytes(s.bytes_out))];
    if s.records_in > 0 || s.records_out > 0 {
        parts.push(format!("{}/{} records", s.records_out, s.records_in));
    }
    if s.quarantined > 0 {
        parts.push(format!("{} quarantined", s.quarantined));
    }
    parts.push(format!(
        "{} parts (+{} in flight)",
        s.parts_done, s.parts_in_flight
    ));
    if s.objects > 0 {
        parts.push(format!("{} objects", s.objects));
    }
    if s.retries > 0 {
        parts.push(format!("{} retries", s.retries));
    }
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice::telemetry::Progress;

    #[test]
    fn the_message_shows_what_moved() {
        let p = Progress::default();
        p.add_bytes_out(3 << 20);
        p.part_started();
        p.part_started();
        p.part_done();
        let m = message(&p.snapshot());
        assert_eq!(m, "3.00 MiB out · 1 parts (+1 in flight)");
        p.add_records_in(10);
        p.add_records_out(8);
        p.add_quarantined(2);
        p.add_retry();
        let m = message(&p.snapshot());
        assert!(m.contains("8/10 records · 2 quarantined"), "{m}");
        assert!(m.ends_with("1 retries"), "{m}");
    }

    #[test]
    fn no_terminal_no_bar() {
        // Under `cargo test` stderr is captured or a pipe: never a terminal in CI.
        if !std::io::stderr().is_terminal() {
            assert!(Bar::new(true).0.is_none());
        }
        assert!(Bar::new(false).0.is_none());
    }
}
