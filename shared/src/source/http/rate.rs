//! A token bucket shared by every request of a job (and, in a batch, by every source).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The slowest rate accepted: one request every 1,000 s (longer than a Lambda invocation).
pub const MIN_PER_SECOND: f64 = 0.001;
/// The fastest rate accepted: a million requests per second (in effect, no limit).
pub const MAX_PER_SECOND: f64 = 1_000_000.0;
/// The largest burst accepted.
pub const MAX_BURST: u32 = 10_000;

/// `source.http.rate_limit` (and the `rate_limit` of a batch). Checked when parsed:
/// `per_second` in [`MIN_PER_SECOND`]..=[`MAX_PER_SECOND`], `burst` in 1..=[`MAX_BURST`].
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(try_from = "RateLimitRepr")]
pub struct RateLimitSpec {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell. Default 1.
    pub burst: Option<u32>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RateLimitRepr {
    #[schemars(description = "Sustained requests per second.")]
    #[schemars(range(min = MIN_PER_SECOND, max = MAX_PER_SECOND))]
    per_second: f64,
    #[serde(default)]
    #[schemars(description = "Requests allowed at once after a quiet spell. Default 1.")]
    #[schemars(range(min = 1, max = MAX_BURST))]
    burst: Option<u32>,
}

impl TryFrom<RateLimitRepr> for RateLimitSpec {
    type Error = String;

    fn try_from(r: RateLimitRepr) -> Result<Self, String> {
        let spec = RateLimitSpec {
            per_second: r.per_second,
            burst: r.burst,
        };
        spec.check()?;
        Ok(spec)
    }
}

impl RateLimitSpec {
    /// Checks both fields against their bounds; the error names the field and the limits.
    pub fn check(&self) -> Result<(), String> {
        let v = self.per_second;
        if !(v.is_finite() && (MIN_PER_SECOND..=MAX_PER_SECOND).contains(&v)) {
            return Err(format!(
                "rate_limit.per_second must be between {MIN_PER_SECOND} and {MAX_PER_SECOND}, got {v:e}"
            ));
        }
        if let Some(b) = self.burst
            && !(1..=MAX_BURST).contains(&b)
        {
            return Err(format!(
                "rate_limit.burst must be between 1 and {MAX_BURST}, got {b}"
            ));
        }
        Ok(())
    }
}

/// Requests per second with a burst allowance; [`RateLimiter::acquire`] waits for a token
/// (of this bucket, then of its [parent](RateLimiter::with_parent), if any).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
    parent: Option<Arc<RateLimiter>>,
}

impl RateLimiter {
    /// A limiter from the spec. Out-of-range figures (a spec built in code rather than parsed)
    /// are clamped to the bounds of [`RateLimitSpec`].
    pub fn new(spec: &RateLimitSpec) -> Self {
        let burst = f64::from(spec.burst.unwrap_or(1).clamp(1, MAX_BURST));
        let rate = if spec.per_second.is_nan() {
            MIN_PER_SECOND
        } else {
            spec.per_second.clamp(MIN_PER_SECOND, MAX_PER_SECOND)
        };
        RateLimiter {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
            parent: None,
        }
    }

    /// Also takes a token of `parent` for every request: a source's own limit inside the limit
    /// its batch shares.
    pub fn with_parent(mut self, parent: Arc<RateLimiter>) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Waits until a request may go.
    pub async fn acquire(&self) {
        self.acquire_own().await;
        if let Some(parent) = &self.parent {
            Box::pin(parent.acquire()).await;
        }
    }

    async fn acquire_own(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().await;
                let now = Instant::now();
                let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
                s.0 = (s.0 + refill).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                // At most 1 / MIN_PER_SECOND seconds; never a panic on an odd float.
                Duration::try_from_secs_f64((1.0 - s.0) / self.rate)
                    .unwrap_or(Duration::from_secs(1))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_requests() {
        let l = RateLimiter::new(&RateLimitSpec {
            per_second: 4.0,
            burst: Some(2),
        });
        let start = Instant::now();
        for _ in 0..10 {
            l.acquire().await;
        }
        // Two go at once, the other eight at 4 per second.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1990) && elapsed <= Duration::from_millis(2100),
            "{elapsed:?}"
        );
    }

    #[test]
    fn rate_limit_of_1e_minus_19_is_refused_when_parsed() {
        for (json, needle) in [
            (
                r#"{"per_second": 1e-19}"#,
                "rate_limit.per_second must be between 0.001 and 1000000, got 1e-19",
            ),
            (r#"{"per_second": 0}"#, "rate_limit.per_second"),
            (r#"{"per_second": -3}"#, "rate_limit.per_second"),
            (r#"{"per_second": 1e300}"#, "rate_limit.per_second"),
            (r#"{"per_second": 1e400}"#, "number out of range"),
            (
                r#"{"per_second": 2, "burst": 0}"#,
                "rate_limit.burst must be between 1 and 10000, got 0",
            ),
            (
                r#"{"per_second": 2, "burst": 4294967295}"#,
                "rate_limit.burst",
            ),
        ] {
            let e = serde_json::from_str::<RateLimitSpec>(json)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{json}: {e}");
        }
        let ok: RateLimitSpec = serde_json::from_str(r#"{"per_second": 0.5, "burst": 3}"#).unwrap();
        assert_eq!((ok.per_second, ok.burst), (0.5, Some(3)));
        assert!(serde_json::from_str::<RateLimitSpec>(r#"{"per_second": 1, "rps": 2}"#).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_rates_built_in_code_never_panic() {
        for per_second in [
            1e-19,
            f64::NAN,
            f64::INFINITY,
            -1.0,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            let l = RateLimiter::new(&RateLimitSpec {
                per_second,
                burst: Some(0),
            });
            l.acquire().await;
            // The second token is at most 1,000 s away.
            tokio::time::timeout(Duration::from_secs(1001), l.acquire())
                .await
                .unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_parent_limits_every_child() {
        let batch = Arc::new(RateLimiter::new(&RateLimitSpec {
            per_second: 2.0,
            burst: None,
        }));
        let fast = RateLimitSpec {
            per_second: 1000.0,
            burst: Some(100),
        };
        let a = RateLimiter::new(&fast).with_parent(batch.clone());
        let b = RateLimiter::new(&fast).with_parent(batch);
        let start = Instant::now();
        for _ in 0..3 {
            a.acquire().await;
            b.acquire().await;
        }
        // Six requests through one bucket of 2/s: the first at once, five more 0.5 s apart.
        assert!(
            start.elapsed() >= Duration::from_millis(2490),
            "{:?}",
            start.elapsed()
        );
    }
}
