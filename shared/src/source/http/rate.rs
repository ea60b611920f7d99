//! A token bucket shared by every request of a job.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// `source.http.rate_limit`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell. Default 1.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Requests per second with a burst allowance; [`RateLimiter::acquire`] waits for a token.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter from the spec (`per_second` must be positive).
    pub fn new(spec: &RateLimitSpec) -> Self {
        let burst = f64::from(spec.burst.unwrap_or(1).max(1));
        RateLimiter {
            rate: spec.per_second,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits until a request may go.
    pub async fn acquire(&self) {
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
                Duration::from_secs_f64((1.0 - s.0) / self.rate)
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
}
