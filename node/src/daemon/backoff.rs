//! The retry delay of every loop in the daemon and its commands (Kubernetes calls, the etcd
//! mirror, joining, the conflist keeper, config-gen's cluster lookup): exponential between a
//! first delay and a ceiling, reset after a success.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first`, doubles up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now; the next one is twice as long (at most the ceiling).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Sleeps `delay`, or less when `stop` is cancelled; returns whether to stop.
pub async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn sleep_or_stop_returns_at_once_when_stopped() {
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(sleep_or_stop(Duration::from_secs(3600), &stop).await);
    }
}
