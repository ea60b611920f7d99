//! [`Progress`]: the live counters of one invocation, shared (behind an `Arc`) by the source
//! streams, the record loops, the sink and the retry loops, and read by the progress lines,
//! the end-of-invocation metrics and the CLI's progress bar.
//!
//! Every counter is a relaxed atomic added to once per chunk, batch or part (never per byte),
//! so keeping them costs nothing measurable on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The live counters of one job or invocation. `Send + Sync`; share it as
/// `Arc<Progress>` ([`Invocation::progress`](crate::job::Invocation::progress)).
///
/// What the counters mean:
/// - bytes in: bytes received from the source, as the job's summary counts them (HTTP body
///   bytes before `Content-Encoding` decoding, S3 object bytes, Postgres `COPY` data);
/// - bytes out: bytes of the objects written to S3, counted when their part (or `PutObject`)
///   was acknowledged;
/// - records in / out / quarantined: records read, written and set aside;
/// - parts: uploads started and acknowledged (a `PutObject` is one part);
/// - objects: objects completed; retries: source requests retried and bodies resumed.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    records_in: AtomicU64,
    records_out: AtomicU64,
    quarantined: AtomicU64,
    parts_started: AtomicU64,
    parts_done: AtomicU64,
    objects: AtomicU64,
    retries: AtomicU64,
    /// `u64::MAX`: unknown.
    total_bytes: AtomicU64,
}

impl Default for Progress {
    /// Counters at zero, the clock started now.
    fn default() -> Self {
        Progress {
            started: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            parts_started: AtomicU64::new(0),
            parts_done: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            total_bytes: AtomicU64::new(u64::MAX),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Progress {
    /// Adds `n` bytes received from the source.
    pub fn add_bytes_in(&self, n: u64) {
        add(&self.bytes_in, n);
    }

    /// Adds `n` bytes written to S3 (acknowledged).
    pub fn add_bytes_out(&self, n: u64) {
        add(&self.bytes_out, n);
    }

    /// Adds `n` records read.
    pub fn add_records_in(&self, n: u64) {
        add(&self.records_in, n);
    }

    /// Adds `n` records written.
    pub fn add_records_out(&self, n: u64) {
        add(&self.records_out, n);
    }

    /// Adds `n` records set aside in a quarantine.
    pub fn add_quarantined(&self, n: u64) {
        add(&self.quarantined, n);
    }

    /// Counts one retried request (or resumed body).
    pub fn add_retry(&self) {
        add(&self.retries, 1);
    }

    /// Counts one part (or `PutObject`) sent.
    pub fn part_started(&self) {
        add(&self.parts_started, 1);
    }

    /// Counts one part (or `PutObject`) acknowledged. Parts in flight are started − done.
    pub fn part_done(&self) {
        add(&self.parts_done, 1);
    }

    /// Counts one object completed.
    pub fn add_object(&self) {
        add(&self.objects, 1);
    }

    /// The source's size in bytes (in the unit of bytes in), when known: it gives the progress
    /// lines a total and an ETA. `None`: unknown.
    pub fn set_total_bytes(&self, total: Option<u64>) {
        self.total_bytes
            .store(total.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The counters now. Each is read on its own (relaxed), so a snapshot taken while the job
    /// runs may be a few chunks apart between counters; once the job has ended they agree.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let done = get(&self.parts_done);
        let total = get(&self.total_bytes);
        ProgressSnapshot {
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            records_in: get(&self.records_in),
            records_out: get(&self.records_out),
            quarantined: get(&self.quarantined),
            parts_done: done,
            parts_in_flight: get(&self.parts_started).saturating_sub(done),
            objects: get(&self.objects),
            retries: get(&self.retries),
            total_bytes: (total != u64::MAX).then_some(total),
            elapsed: self.started.elapsed(),
        }
    }
}

/// The counters of a [`Progress`] at one moment, and the time since it was created.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProgressSnapshot {
    /// Bytes received from the source.
    pub bytes_in: u64,
    /// Bytes written to S3 (acknowledged).
    pub bytes_out: u64,
    /// Records read.
    pub records_in: u64,
    /// Records written.
    pub records_out: u64,
    /// Records set aside in a quarantine.
    pub quarantined: u64,
    /// Parts (and `PutObject`s) acknowledged.
    pub parts_done: u64,
    /// Parts sent and not yet acknowledged.
    pub parts_in_flight: u64,
    /// Objects completed.
    pub objects: u64,
    /// Requests retried and bodies resumed.
    pub retries: u64,
    /// The source's size, when known.
    pub total_bytes: Option<u64>,
    /// Time since the counters were created (the start of the invocation).
    pub elapsed: Duration,
}

impl ProgressSnapshot {
    /// Bytes in per second since the start, in MiB.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes_in as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// Seconds until the source is read at the rate so far: `None` without a total or before
    /// the first byte.
    pub fn eta_secs(&self) -> Option<u64> {
        let total = self.total_bytes?;
        if self.bytes_in == 0 {
            return None;
        }
        let left = total.saturating_sub(self.bytes_in) as f64;
        let per_sec = self.bytes_in as f64 / self.elapsed.as_secs_f64().max(1e-3);
        Some((left / per_sec).ceil() as u64)
    }
}

/// The environment variable that sets the interval of the progress lines, in whole seconds.
pub const PROGRESS_SECS_VAR: &str = "SLUICE_PROGRESS_SECS";
/// The interval of the progress lines when [`PROGRESS_SECS_VAR`] is not set: 10 s.
pub const DEFAULT_PROGRESS_SECS: u64 = 10;

/// The interval of the progress lines from `value` (the content of [`PROGRESS_SECS_VAR`]):
/// whole seconds, `0` disables them (`None`), unset is [`DEFAULT_PROGRESS_SECS`]. Anything else
/// is an error naming the variable and the value.
pub fn parse_interval(value: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(value) = value.map(str::trim) else {
        return Ok(Some(Duration::from_secs(DEFAULT_PROGRESS_SECS)));
    };
    match value.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(secs) if secs <= 86_400 => Ok(Some(Duration::from_secs(secs))),
        _ => Err(format!(
            "{PROGRESS_SECS_VAR}={value:?} is not a whole number of seconds from 0 (off) to \
             86400"
        )),
    }
}

/// The interval of the progress lines, read once per process from [`PROGRESS_SECS_VAR`]. A bad
/// value is logged once as a warning naming the variable, and the default is used.
pub fn interval() -> Option<Duration> {
    static INTERVAL: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *INTERVAL.get_or_init(|| {
        let value = std::env::var(PROGRESS_SECS_VAR).ok();
        parse_interval(value.as_deref()).unwrap_or_else(|e| {
            tracing::warn!(
                "{e}; using the default, {DEFAULT_PROGRESS_SECS} s between progress lines"
            );
            Some(Duration::from_secs(DEFAULT_PROGRESS_SECS))
        })
    })
}

/// Logs one `progress` line of `snapshot` (an info event with the counters as fields).
pub fn log_line(function: &str, job: &str, s: &ProgressSnapshot) {
    let mib_s = (s.mib_per_s() * 10.0).round() / 10.0;
    tracing::info!(
        function,
        job,
        bytes_in = s.bytes_in,
        bytes_out = s.bytes_out,
        records_in = s.records_in,
        records_out = s.records_out,
        quarantined = s.quarantined,
        mib_s,
        parts_done = s.parts_done,
        parts_in_flight = s.parts_in_flight,
        retries = s.retries,
        total_bytes = s.total_bytes,
        eta_secs = s.eta_secs(),
        elapsed_ms = s.elapsed.as_millis() as u64,
        "progress"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counters_add_up_across_threads() {
        let p = Arc::new(Progress::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        p.add_bytes_in(3);
                        p.add_records_in(1);
                        p.part_started();
                    }
                    for _ in 0..600 {
                        p.part_done();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        p.add_retry();
        p.add_object();
        let s = p.snapshot();
        assert_eq!(s.bytes_in, 12_000);
        assert_eq!(s.records_in, 4000);
        assert_eq!(s.parts_done, 2400);
        assert_eq!(s.parts_in_flight, 1600);
        assert_eq!((s.retries, s.objects, s.bytes_out), (1, 1, 0));
        assert_eq!(s.total_bytes, None);
    }

    #[test]
    fn a_known_total_gives_an_eta() {
        let p = Progress::default();
        assert_eq!(p.snapshot().eta_secs(), None);
        p.set_total_bytes(Some(4 << 20));
        assert_eq!(
            p.snapshot().eta_secs(),
            None,
            "no rate before the first byte"
        );
        std::thread::sleep(Duration::from_millis(50));
        p.add_bytes_in(1 << 20);
        let s = p.snapshot();
        assert_eq!(s.total_bytes, Some(4 << 20));
        // A quarter read in `elapsed`: three more quarters to go.
        let expected = (3.0 * s.elapsed.as_secs_f64()).ceil() as u64;
        let eta = s.eta_secs().unwrap();
        assert!(eta.abs_diff(expected) <= 1, "{eta} vs {expected}");
        p.set_total_bytes(None);
        assert_eq!(p.snapshot().eta_secs(), None);
    }

    #[test]
    fn the_interval_is_whole_seconds_and_zero_disables() {
        assert_eq!(parse_interval(None), Ok(Some(Duration::from_secs(10))));
        assert_eq!(parse_interval(Some("3")), Ok(Some(Duration::from_secs(3))));
        assert_eq!(parse_interval(Some(" 0 ")), Ok(None));
        for bad in ["", "1.5", "-1", "ten", "86401"] {
            let e = parse_interval(Some(bad)).unwrap_err();
            assert!(e.contains("SLUICE_PROGRESS_SECS"), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
