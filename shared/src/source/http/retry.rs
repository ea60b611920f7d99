//! Retry policy for source requests: bounded attempts, exponential backoff with full jitter,
//! `Retry-After` honoured in both of its forms.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// The longest wait sluice ever takes before a retry, whatever `Retry-After`, `max_delay_ms`
/// or the backoff say: 15 minutes, the longest a Lambda invocation runs. A longer wait could
/// only end past any deadline, so it is capped here (no `Instant` arithmetic can overflow) and
/// then refused by the deadline check as a timeout.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(15 * 60);

/// `source.http.retry`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts per request, the first included. Default 5; 1 disables retries.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Base of the exponential backoff in ms. Default 500.
    #[serde(default)]
    pub base_delay_ms: Option<u64>,
    /// Cap of one backoff in ms (a longer `Retry-After` is still honoured). Default 20,000;
    /// at most [`MAX_RETRY_WAIT`].
    #[serde(default)]
    pub max_delay_ms: Option<u64>,
}

/// The resolved policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    base: Duration,
    cap: Duration,
}

impl From<&RetrySpec> for RetryPolicy {
    fn from(s: &RetrySpec) -> Self {
        RetryPolicy {
            max_attempts: s.max_attempts.unwrap_or(5).clamp(1, 20),
            base: Duration::from_millis(s.base_delay_ms.unwrap_or(500)),
            cap: Duration::from_millis(s.max_delay_ms.unwrap_or(20_000)).min(MAX_RETRY_WAIT),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1 = the first retry): a uniformly random
    /// duration between zero and `min(cap, base × 2^(attempt−1))` ("full jitter"), so clients
    /// that failed together do not retry together. At least `retry_after` when the server
    /// sent one. Never more than [`MAX_RETRY_WAIT`].
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.cap);
        let jitter = ceiling.mul_f64(fastrand::f64());
        retry_after
            .map_or(jitter, |ra| ra.max(jitter))
            .min(MAX_RETRY_WAIT)
    }
}

/// Whether waiting `wait` from now would reach `deadline` (always false without one). A wait
/// too long to add to the clock counts as reaching it.
pub fn wait_passes_deadline(deadline: Option<tokio::time::Instant>, wait: Duration) -> bool {
    deadline.is_some_and(|d| {
        tokio::time::Instant::now()
            .checked_add(wait)
            .is_none_or(|end| end >= d)
    })
}

/// Parses `Retry-After`: delta-seconds (`120`) or an HTTP-date
/// (`Sun, 06 Nov 1994 08:49:37 GMT`). A date in the past means "now"; anything longer than
/// [`MAX_RETRY_WAIT`] (`18446744073709551615`, a date in year 9999) is that cap.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_WAIT));
    }
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Delta-seconds too large for a u64: far beyond any deadline.
        return Some(MAX_RETRY_WAIT);
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(millis))?;
    Some(
        at.duration_since(now)
            .unwrap_or_default()
            .min(MAX_RETRY_WAIT),
    )
}

/// Whether a status is worth retrying.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 06 Nov 1994 08:49:37
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:40 GMT", now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn full_jitter_is_bounded() {
        let p = RetryPolicy::from(&RetrySpec::default());
        for attempt in 1..10 {
            let ceiling =
                Duration::from_millis(500 * (1 << (attempt - 1))).min(Duration::from_secs(20));
            for _ in 0..100 {
                assert!(p.backoff(attempt, None) <= ceiling);
            }
        }
        assert!(p.backoff(1, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
    }

    #[test]
    fn retry_after_of_u64_max_is_capped_not_a_panic() {
        let now = SystemTime::now();
        for absurd in [
            "18446744073709551615",
            "99999999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            let wait = parse_retry_after(absurd, now).unwrap();
            assert_eq!(wait, MAX_RETRY_WAIT, "{absurd}");
        }
        let p = RetryPolicy::from(&RetrySpec {
            max_delay_ms: Some(u64::MAX),
            base_delay_ms: Some(u64::MAX),
            ..RetrySpec::default()
        });
        for attempt in [1, 20, u32::MAX] {
            assert!(p.backoff(attempt, Some(Duration::MAX)) <= MAX_RETRY_WAIT);
        }
        // Whatever the wait, the deadline check is arithmetic that cannot overflow.
        let soon = Some(tokio::time::Instant::now() + Duration::from_secs(60));
        assert!(wait_passes_deadline(soon, Duration::MAX));
        assert!(wait_passes_deadline(soon, MAX_RETRY_WAIT));
        assert!(!wait_passes_deadline(soon, Duration::from_millis(1)));
        assert!(!wait_passes_deadline(None, Duration::MAX));
    }
}
