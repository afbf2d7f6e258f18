//! Time and waiting shared by the roles: the wall clock in milliseconds, the one backoff every
//! retry loop waits by (the TCS tailer polling the catalogue, the edge following the change
//! stream), and the one wait for a state another task moves (`when_notified`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

/// Milliseconds since the Unix epoch (0 if the clock is before it): for timestamps and health
/// windows, never for ordering (sequences do that).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Full-jitter exponential backoff: before retry `n` (1 = the first), a wait uniform in
/// `[10 ms, min(cap, start * 2^(n-1))]`, so that many clients failing together do not retry
/// together.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    start: Duration,
    cap: Duration,
}

impl Backoff {
    /// Waits start near `start` and grow to `cap`.
    pub const fn new(start: Duration, cap: Duration) -> Self {
        Backoff { start, cap }
    }

    /// The wait before retry `failures` (counting from 1; 0 waits like 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = self
            .start
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let ceiling = u64::try_from(exp.min(self.cap).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(10..=ceiling.max(10)))
    }
}

/// Resolves once `done()` holds, checked again each time `notify` wakes its waiters: the
/// one way the roles wait for a state another task moves (no wake-up between the check and the
/// wait is lost, since the waiter is registered before the check).
pub async fn when_notified(notify: &tokio::sync::Notify, mut done: impl FnMut() -> bool) {
    loop {
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if done() {
            return;
        }
        woken.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_never_zero() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for failures in [0, 1, 2, 5, 20, u32::MAX] {
            let d = b.delay(failures);
            assert!(d >= Duration::from_millis(10), "{d:?}");
            assert!(d <= Duration::from_secs(10), "{d:?}");
        }
        // The ceiling grows: the fifth retry may wait far longer than the first can.
        let first = (0..200).map(|_| b.delay(1)).max().unwrap_or_default();
        assert!(first <= Duration::from_millis(100), "{first:?}");
        let fifth = (0..200).map(|_| b.delay(5)).max().unwrap_or_default();
        assert!(fifth > Duration::from_millis(100), "{fifth:?}");
    }

    #[test]
    fn the_clock_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
