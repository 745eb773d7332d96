//! A fixed-window limiter per key (the caller's IP): enough to stop password guessing and sign-up floods from one
//! address without a shared store. The map is pruned as windows roll over, so it stays bounded by the number of
//! distinct callers in one window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `limit` attempts per key per `window`.
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    state: Mutex<(Instant, HashMap<IpAddr, u32>)>,
}

impl RateLimiter {
    /// A limiter of `limit` per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            state: Mutex::new((Instant::now(), HashMap::new())),
        }
    }

    /// Counts an attempt by `key`; false when it is over the limit.
    pub fn check(&self, key: IpAddr) -> bool {
        // A poisoned lock only means another thread panicked mid-update; the counts are still usable.
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (started, counts) = &mut *guard;
        if started.elapsed() >= self.window {
            *started = Instant::now();
            counts.clear();
        }
        let count = counts.entry(key).or_insert(0);
        *count += 1;
        *count <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_over_the_limit_are_refused_until_the_window_rolls() {
        let limiter = RateLimiter::new(2, Duration::from_millis(50));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        assert!(limiter.check(ip) && limiter.check(ip));
        assert!(!limiter.check(ip));
        assert!(limiter.check(other), "limits are per caller");
        std::thread::sleep(Duration::from_millis(60));
        assert!(limiter.check(ip));
    }
}
