//! Prometheus metrics, served on `/metrics` in the text format: requests by endpoint and status,
//! cache hits and misses, Entra ID calls by outcome and their latency, background refreshes, and
//! the seconds left on the federated token.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The endpoints requests are counted by (the `endpoint` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Imds,
    AppService,
    Healthz,
    Readyz,
    Metrics,
    /// `/metadata/...` paths other than the token.
    ImdsOther,
    NotFound,
}

impl Endpoint {
    const ALL: [Endpoint; 7] = [
        Endpoint::Imds,
        Endpoint::AppService,
        Endpoint::Healthz,
        Endpoint::Readyz,
        Endpoint::Metrics,
        Endpoint::ImdsOther,
        Endpoint::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Imds => "imds",
            Endpoint::AppService => "app_service",
            Endpoint::Healthz => "healthz",
            Endpoint::Readyz => "readyz",
            Endpoint::Metrics => "metrics",
            Endpoint::ImdsOther => "imds_other",
            Endpoint::NotFound => "not_found",
        }
    }
}

/// How one call to Entra ID ended (the `outcome` label of `entra_requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntraOutcome {
    Success,
    /// A final 4xx answer.
    Rejected,
    Throttled,
    ServerError,
    Timeout,
    ConnectError,
    /// A 200 without a usable token.
    BadResponse,
}

impl EntraOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EntraOutcome::Success => "success",
            EntraOutcome::Rejected => "rejected",
            EntraOutcome::Throttled => "throttled",
            EntraOutcome::ServerError => "server_error",
            EntraOutcome::Timeout => "timeout",
            EntraOutcome::ConnectError => "connect_error",
            EntraOutcome::BadResponse => "bad_response",
        }
    }
}

/// How a background refresh ended (the `outcome` label of `background_refreshes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    Success,
    Failure,
}

impl RefreshOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshOutcome::Success => "success",
            RefreshOutcome::Failure => "failure",
        }
    }
}
const STATUSES: [u16; 9] = [200, 400, 401, 404, 405, 429, 500, 502, 503];

/// All counters of one sidecar process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_slots: Box<[std::sync::OnceLock<Counter>]>,
    cache_hits: Counter,
    cache_misses: Counter,
    entra_calls: Family<OutcomeLabels, Counter>,
    refreshes: Family<OutcomeLabels, Counter>,
    pub entra_latency: Histogram,
    federated_token_seconds_left: Gauge<i64, AtomicI64>,
    cached_tokens: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("identity_sidecar");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests served, by endpoint and status",
            requests.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Token requests answered from the cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Token requests that had to wait for Entra ID",
            cache_misses.clone(),
        );
        let entra_calls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "entra_requests",
            "Calls to the Entra ID token endpoint, by outcome",
            entra_calls.clone(),
        );
        let refreshes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "background_refreshes",
            "Refresh-ahead runs of cached tokens, by outcome",
            refreshes.clone(),
        );
        let entra_latency =
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        registry.register(
            "entra_request_duration_seconds",
            "Latency of one Entra ID call",
            entra_latency.clone(),
        );
        let federated_token_seconds_left = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "federated_token_expiry_seconds",
            "Seconds until the federated token expires (negative: expired; -1e9: no token)",
            federated_token_seconds_left.clone(),
        );
        let cached_tokens = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "cached_tokens",
            "Keys (client id, scope) in the token cache",
            cached_tokens.clone(),
        );
        Metrics {
            registry,
            requests,
            request_slots: (0..Endpoint::ALL.len() * STATUSES.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            cache_hits,
            cache_misses,
            entra_calls,
            refreshes,
            entra_latency,
            federated_token_seconds_left,
            cached_tokens,
        }
    }

    /// Counts a request. The common (endpoint, status) pairs keep their counter handle, so the
    /// hot path skips the family's lock and label hashing.
    pub fn request(&self, endpoint: Endpoint, status: u16) {
        let e = endpoint as usize;
        let endpoint = endpoint.as_str();
        match STATUSES.iter().position(|s| *s == status) {
            Some(s) => self.request_slots[e * STATUSES.len() + s]
                .get_or_init(|| {
                    self.requests
                        .get_or_create(&RequestLabels { endpoint, status })
                        .clone()
                })
                .inc(),
            None => self
                .requests
                .get_or_create(&RequestLabels { endpoint, status })
                .inc(),
        };
    }

    pub fn cache(&self, hit: bool) {
        if hit {
            self.cache_hits.inc()
        } else {
            self.cache_misses.inc()
        };
    }

    pub fn entra_call(&self, outcome: EntraOutcome) {
        self.entra_calls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn refresh(&self, outcome: RefreshOutcome) {
        self.refreshes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn set_cached_tokens(&self, n: usize) {
        self.cached_tokens.set(n as i64);
    }

    /// Encodes everything, after setting the gauges that are computed at scrape time.
    pub fn render(&self, federated_seconds_left: Option<i64>) -> String {
        self.federated_token_seconds_left
            .set(federated_seconds_left.unwrap_or(-1_000_000_000));
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_has_its_own_counter_slot() {
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i, "{e:?}");
        }
        let m = Metrics::new();
        m.request(Endpoint::Readyz, 503);
        m.request(Endpoint::NotFound, 418);
        let text = m.render(None);
        assert!(
            text.contains(r#"identity_sidecar_requests_total{endpoint="readyz",status="503"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"endpoint="not_found",status="418"} 1"#),
            "{text}"
        );
    }
}
