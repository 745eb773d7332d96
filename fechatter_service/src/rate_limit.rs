//! Per-client rate limiting: `limit` requests per minute per IP address, with bursts up to `limit` (GCRA, from
//! the `governor` crate). Both services use it: the chat API on sign-in and sign-up (password guessing, sign-up
//! floods), the ingester on HTTP ingest (one client flooding the stream).
//!
//! The key is the client's address: the connection's peer, or behind a trusted reverse proxy the address it
//! forwarded (`crate::client_addr`), never a forwarded-for header a client could write itself; an IPv6
//! address counts by its /64 network, which one subscriber gets whole (a per-address key would give them 2^64
//! allowances). Memory is bounded: once more than [`PRUNE_ABOVE`] callers are tracked, those whose allowance has
//! fully recovered are dropped, at most once a second (the pruning walks every caller).

use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tracked callers above which fully recovered ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// Allows each caller `limit` requests per period, in bursts of up to `limit`.
pub struct RateLimiter {
    inner: DefaultKeyedRateLimiter<IpAddr>,
    pruned: Mutex<Option<Instant>>,
}

/// Shortest time between two prunings.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The key `caller` counts under: an IPv4 address (also when written as IPv4-mapped IPv6) as it is, an IPv6
/// address by its /64 network.
fn key(caller: IpAddr) -> IpAddr {
    match caller {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
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
            pruned: Mutex::new(None),
        }
    }

    /// Counts a request by `caller`; false when it is over the limit.
    pub fn check(&self, caller: IpAddr) -> bool {
        if self.inner.len() > PRUNE_ABOVE {
            self.prune();
        }
        self.inner.check_key(&key(caller)).is_ok()
    }

    /// Drops the callers whose allowance has recovered, unless that was done within [`PRUNE_EVERY`] or another
    /// request is doing it now.
    fn prune(&self) {
        let Ok(mut pruned) = self.pruned.try_lock() else {
            return;
        };
        if pruned.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.inner.retain_recent();
        *pruned = Some(Instant::now());
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
    fn an_ipv6_caller_counts_by_its_64_network_and_mapped_ipv4_as_ipv4() {
        let limiter = RateLimiter::per_minute(1);
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("v6");
        let same_network: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("v6");
        let next_network: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        assert!(limiter.check(one));
        assert!(!limiter.check(same_network), "one allowance per /64");
        assert!(limiter.check(next_network));
        let v4: IpAddr = [192, 0, 2, 7].into();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("mapped");
        assert!(limiter.check(v4));
        assert!(!limiter.check(mapped), "the same IPv4 caller");
    }

    #[test]
    fn a_zero_limit_still_allows_one() {
        let limiter = RateLimiter::per_minute(0);
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert!(limiter.check(ip));
        assert!(!limiter.check(ip));
    }
}
