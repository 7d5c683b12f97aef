//! Exponential backoff with jitter, for retries of Entra ID calls ([`super::entra`]) and for
//! background renewals after a failure ([`super::cache`]).
//!
//! Attempt `n` (from 1) waits a random 50-100 % of its envelope `base * 2^(n-1)`, capped at `cap`;
//! the jitter keeps many sidecars that failed together from retrying together.
use std::time::Duration;

use rand::Rng as _;

/// A backoff schedule.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The longest wait before attempt `attempt` (1-based): `base * 2^(attempt-1)`, capped.
    pub fn envelope(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.cap)
    }

    /// The wait before attempt `attempt`: a random 50-100 % of its [`Backoff::envelope`].
    pub fn delay(&self, attempt: u32) -> Duration {
        self.envelope(attempt)
            .mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_millis(400),
        cap: Duration::from_secs(8),
    };

    #[test]
    fn the_envelope_doubles_per_attempt_until_the_cap() {
        let ms: Vec<u128> = (1..=8).map(|n| B.envelope(n).as_millis()).collect();
        assert_eq!(ms, [400, 800, 1600, 3200, 6400, 8000, 8000, 8000]);
        assert_eq!(
            B.envelope(u32::MAX),
            B.cap,
            "no overflow on huge attempt counts"
        );
    }

    #[test]
    fn each_delay_is_half_to_all_of_its_envelope() {
        for attempt in 1..=8 {
            let env = B.envelope(attempt);
            for _ in 0..100 {
                let d = B.delay(attempt);
                assert!(
                    d >= env / 2 && d <= env,
                    "attempt {attempt}: {d:?} of {env:?}"
                );
            }
        }
    }
}
