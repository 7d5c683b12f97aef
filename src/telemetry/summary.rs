//! The periodic summary: one info line every `--log-summary-interval` (default 5 minutes) with
//! the token requests of the interval by protocol (requests, cache hits, misses, error answers),
//! so operators see the traffic without a line per request (that is `--access-log`).
//!
//! Counting is a relaxed atomic increment per request; [`Summary::take`] reads and resets. An
//! interval without token requests writes no line.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The protocols the summary counts apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Imds,
    AppService,
}

/// How a token request ended, as the summary counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// Any 4xx or 5xx answer.
    Error,
}

/// The counts of one protocol over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
}

#[derive(Default)]
struct Slot {
    requests: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

impl Slot {
    fn take(&self) -> Counts {
        Counts {
            requests: self.requests.swap(0, Ordering::Relaxed),
            hits: self.hits.swap(0, Ordering::Relaxed),
            misses: self.misses.swap(0, Ordering::Relaxed),
            errors: self.errors.swap(0, Ordering::Relaxed),
        }
    }
}

/// Token requests counted since the last summary line.
#[derive(Default)]
pub struct Summary {
    imds: Slot,
    app_service: Slot,
}

impl Summary {
    pub fn record(&self, protocol: Protocol, outcome: Outcome) {
        let slot = match protocol {
            Protocol::Imds => &self.imds,
            Protocol::AppService => &self.app_service,
        };
        slot.requests.fetch_add(1, Ordering::Relaxed);
        let counter = match outcome {
            Outcome::Hit => &slot.hits,
            Outcome::Miss => &slot.misses,
            Outcome::Error => &slot.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far (IMDS, App Service), and a fresh start.
    pub fn take(&self) -> (Counts, Counts) {
        (self.imds.take(), self.app_service.take())
    }

    /// Writes the interval's line, unless nothing was asked.
    pub fn log(&self, interval: Duration) {
        let (imds, app) = self.take();
        if imds.requests + app.requests == 0 {
            return;
        }
        tracing::info!(
            interval_s = interval.as_secs(),
            imds_requests = imds.requests,
            imds_hits = imds.hits,
            imds_misses = imds.misses,
            imds_errors = imds.errors,
            app_service_requests = app.requests,
            app_service_hits = app.hits,
            app_service_misses = app.misses,
            app_service_errors = app.errors,
            "token requests summary"
        );
    }

    /// Logs a summary every `interval` until the task is aborted.
    pub fn spawn(self: &std::sync::Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let me = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.log(interval);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_protocol_and_outcome_then_resets() {
        let s = Summary::default();
        s.record(Protocol::Imds, Outcome::Hit);
        s.record(Protocol::Imds, Outcome::Hit);
        s.record(Protocol::Imds, Outcome::Miss);
        s.record(Protocol::AppService, Outcome::Error);
        let (imds, app) = s.take();
        assert_eq!(
            imds,
            Counts {
                requests: 3,
                hits: 2,
                misses: 1,
                errors: 0
            }
        );
        assert_eq!(
            app,
            Counts {
                requests: 1,
                hits: 0,
                misses: 0,
                errors: 1
            }
        );
        assert_eq!(s.take(), (Counts::default(), Counts::default()));
    }
}
