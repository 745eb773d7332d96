//! How fast the services reconnect to NATS after losing it.
//!
//! async-nats backs off up to 4 s between attempts by default; measured in the chat API's fault tests, that delay
//! was almost all of the time the outbox took to drain after NATS came back. NATS restarts are short and cheap to
//! probe, so both services cap the delay at [`MAX_DELAY`].

use std::time::Duration;

/// Longest wait between two reconnection attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// The wait before reconnection attempt `attempts` (1-based): at once, then doubling from 50 ms up to
/// [`MAX_DELAY`]. Pass it to `async_nats::ConnectOptions::reconnect_delay_callback`.
pub fn nats_reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exponent = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    Duration::from_millis(50)
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_starts_at_zero_doubles_and_is_capped() {
        assert_eq!(nats_reconnect_delay(1), Duration::ZERO);
        assert_eq!(nats_reconnect_delay(2), Duration::from_millis(50));
        assert_eq!(nats_reconnect_delay(3), Duration::from_millis(100));
        assert_eq!(nats_reconnect_delay(10), MAX_DELAY);
        assert_eq!(nats_reconnect_delay(usize::MAX), MAX_DELAY);
    }
}
