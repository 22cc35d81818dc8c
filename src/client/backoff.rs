//! Exponential backoff with full jitter, for client retries.
//!
//! Jitter matters here: when a leader dies, every client sees the same
//! error at the same moment; without it they would all retry in lockstep
//! and hit the new leader together, again and again.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        // Not cryptographic: only spreads clients apart.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64)
            ^ (std::process::id() as u64) << 32
            | 1;
        Backoff {
            base,
            max,
            attempt: 0,
            seed,
        }
    }

    /// The next delay: uniformly random in [ceiling/2, ceiling], where the
    /// ceiling doubles from `base` up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.base.saturating_mul(1 << self.attempt.min(16)).min(self.max);
        self.attempt += 1;
        // xorshift64
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let half = ceiling / 2;
        let spread = half.as_nanos().max(1) as u64;
        half + Duration::from_nanos(self.seed % spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_jittered() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(5) && delays[0] <= Duration::from_millis(10));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(200)));
        assert!(delays[11] >= Duration::from_millis(100));
        let capped: std::collections::BTreeSet<_> = delays[6..].iter().collect();
        assert!(capped.len() > 1, "jitter varies the delays: {delays:?}");
    }
}
