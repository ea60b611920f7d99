//! Logs, metrics and resource figures: the tracing subscriber, the live [`Progress`] counters
//! of an invocation and its progress lines ([`progress`]), CloudWatch Embedded Metric Format
//! lines ([`emf`]), and the job name that labels them ([`job_name`]).

pub mod emf;
pub mod progress;

use tracing_subscriber::EnvFilter;

use crate::error::{Error, Result};

pub use emf::{Emf, Unit};
pub use progress::{Progress, ProgressSnapshot};

/// Installs the tracing subscriber: JSON lines when `AWS_LAMBDA_LOG_FORMAT=JSON` (as Lambda's
/// advanced logging controls set it), plain text otherwise. The level comes from `RUST_LOG`,
/// else `AWS_LAMBDA_LOG_LEVEL`, else `info`. Safe to call twice.
pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| {
            std::env::var("AWS_LAMBDA_LOG_LEVEL")
                .ok()
                .map(|l| l.to_lowercase())
        })
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Peak resident memory of this process (`VmHWM` in `/proc/self/status`), in bytes.
/// `None` where procfs is unavailable.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The longest job name: 255 characters (CloudWatch's limit for a dimension value is 1024;
/// 255 keeps dashboards readable).
pub const MAX_JOB_NAME: usize = 255;

/// Checks a `job_name` (the `Job` dimension of the metrics): 1 to [`MAX_JOB_NAME`] characters
/// of printable ASCII (space to `~`), not starting with `:` (CloudWatch refuses dimension
/// values that do), and not only spaces.
pub fn validate_job_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_JOB_NAME {
        return Err(Error::spec(format!(
            "{field}: {} characters; a job name has 1 to {MAX_JOB_NAME}",
            name.len()
        )));
    }
    if let Some((i, c)) = name.char_indices().find(|(_, c)| !(' '..='~').contains(c)) {
        return Err(Error::spec(format!(
            "{field}: character {} ({c:?}) is not printable ASCII (space to '~')",
            i + 1
        )));
    }
    if name.starts_with(':') || name.trim().is_empty() {
        return Err(Error::spec(format!(
            "{field}: {name:?} starts with ':' or is only spaces"
        )));
    }
    Ok(())
}

/// The job name of a destination without a `job_name`: the bucket, `/`, and the key
/// template's static prefix (up to its first `{`), e.g. `lake/raw/orders/` for
/// `raw/orders/{date}.ndjson` in `lake`. Characters outside printable ASCII become `_`, and the
/// name is cut to [`MAX_JOB_NAME`].
pub fn default_job_name(bucket: &str, key_template: &str) -> String {
    let prefix = key_template.split('{').next().unwrap_or_default();
    let name: String = format!("{bucket}/{prefix}")
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '_' })
        .take(MAX_JOB_NAME)
        .collect();
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_printable_ascii_of_bounded_length() {
        for good in ["orders", "lake/raw/orders/", "a b-c_d.e", &"x".repeat(255)] {
            validate_job_name("job_name", good).unwrap();
        }
        for (bad, says) in [
            ("", "0 characters"),
            (&"x".repeat(256) as &str, "256 characters"),
            ("tab\there", "character 4"),
            ("caf\u{e9}", "character 4"),
            (":x", "starts with ':'"),
            ("   ", "only spaces"),
        ] {
            let e = validate_job_name("job_name", bad).unwrap_err().to_string();
            assert!(e.contains("job_name") && e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_default_job_name_is_the_bucket_and_the_static_key_prefix() {
        assert_eq!(
            default_job_name("lake", "raw/orders/{date}/{run_id}.ndjson"),
            "lake/raw/orders/"
        );
        assert_eq!(default_job_name("lake", "{date}.csv"), "lake/");
        assert_eq!(default_job_name("lake", "fixed.csv"), "lake/fixed.csv");
        assert_eq!(default_job_name("b", "caf\u{e9}/{x}"), "b/caf_/");
        let long = default_job_name("b", &"k".repeat(400));
        assert_eq!(long.len(), MAX_JOB_NAME);
        validate_job_name("default", &long).unwrap();
    }

    #[test]
    fn reads_peak_rss_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().unwrap() > 1024 * 1024);
        }
    }
}
