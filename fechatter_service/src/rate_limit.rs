//! Per-client rate limiting: `limit` requests per minute per IP address, with bursts up to `limit` (GCRA, from
//! the `governor` crate). Both services use it: the chat API on sign-in and sign-up (password guessing, sign-up
//! floods), the ingester on HTTP ingest (one client flooding the stream).
//!
//! The key is the peer address of the connection, never a forwarded-for header a client could forge. Memory is
//! bounded: once more than [`PRUNE_ABOVE`] callers are tracked, those whose allowance has fully recovered are
//! dropped.

use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// Tracked callers above which fully recovered ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// Allows each caller `limit` requests per period, in bursts of up to `limit`.
pub struct RateLimiter {
    inner: DefaultKeyedRateLimiter<IpAddr>,
}

impl RateLimiter {
    /// `limit` requests per minute per caller (a limit of 0 is treated as 1).
    pub fn per_minute(limit: u32) -> Self {
        Self::per_period(limit, Duration::from_secs(60))
    }

    /// `limit` requests per `period` per caller.
    pub fn per_period(limit: u32, period: Duration) -> Self {
        let burst = NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period / burst.get())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        Self {
            inner: DefaultKeyedRateLimiter::keyed(quota),
        }
    }

    /// Counts a request by `caller`; false when it is over the limit.
    pub fn check(&self, caller: IpAddr) -> bool {
        if self.inner.len() > PRUNE_ABOVE {
            self.inner.retain_recent();
        }
        self.inner.check_key(&caller).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_over_the_limit_are_refused_until_the_allowance_recovers() {
        let limiter = RateLimiter::per_period(2, Duration::from_millis(100));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        assert!(limiter.check(ip) && limiter.check(ip), "a burst of `limit` passes");
        assert!(!limiter.check(ip));
        assert!(limiter.check(other), "limits are per caller");
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.check(ip), "the allowance recovers over the period");
    }

    #[test]
    fn a_zero_limit_still_allows_one() {
        let limiter = RateLimiter::per_minute(0);
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert!(limiter.check(ip));
        assert!(!limiter.check(ip));
    }
}
