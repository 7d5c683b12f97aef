//! Prometheus metrics, served on `/metrics` in the text format: requests by endpoint and status,
//! cache hits and misses, Entra ID calls by outcome and their latency, background refreshes, the
//! federated token's expiry, per-identity token expiry and last refresh (Unix timestamps, set at
//! scrape time from the cache), token fetches by result, and the build. docs/operations.md#metrics
//! lists every series.
//!
//! Labels stay bounded: a `client_id` label only ever holds an allowed client id (the allow-list
//! bounds it), and `resource` is the `--allowed-resources` rule a resource matched, or `*` (all
//! resources aggregated) when there is no allow-list, since a resource is request input.
//!
//! In node mode one agent serves many pods: each pod's request path counts through
//! [`Metrics::for_pod`], a view sharing every series of the agent's [`Metrics`] whose
//! per-identity and federated-token series also carry `pod_namespace` and `pod_name` (bounded by
//! the pods of one node) and whose `resource` label follows that pod's own allow-list; a
//! sidecar's series carry no pod labels.

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder};
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

/// `pod_namespace` and `pod_name` of the pod a node agent serves; no label at all for a sidecar.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct PodLabels(Option<Arc<(String, String)>>);

impl PodLabels {
    pub fn new(namespace: &str, name: &str) -> PodLabels {
        PodLabels(Some(Arc::new((namespace.to_string(), name.to_string()))))
    }
}

impl EncodeLabelSet for PodLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(p) = &self.0 {
            ("pod_namespace", p.0.as_str()).encode(encoder.encode_label())?;
            ("pod_name", p.1.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    client_id: String,
    resource: String,
    #[prometheus(flatten)]
    pod: PodLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    client_id: String,
    resource: String,
    result: &'static str,
    #[prometheus(flatten)]
    pod: PodLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// The commit the binary was built from (`crate::build_info::COMMIT`: `IDENTITY_SIDECAR_COMMIT`
/// as scripts/build-static sets it, else `unknown`), as `--version` prints it.
pub const BUILD_COMMIT: &str = crate::build_info::COMMIT;

/// The `resource` label value when no resource allow-list bounds it: all resources together.
pub const ALL_RESOURCES: &str = "*";

/// The `--allowed-resources` rule that admits a resource, as written (`https://storage.*`);
/// `None` when no rule does.
pub type ResourceLabel = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// One cached token as a scrape sees it.
pub struct TokenState<'a> {
    pub client_id: &'a str,
    pub scope: &'a str,
    /// Expiry, seconds since the epoch.
    pub expires_on: u64,
    /// When it was received from Entra ID, seconds since the epoch.
    pub received_at: u64,
}

/// What a scrape reads from the federated token.
#[derive(Debug, Clone, Copy)]
pub struct FederatedState {
    pub seconds_left: i64,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// `iat` when the token has one.
    pub issued_at: Option<u64>,
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
    const ALL: [EntraOutcome; 7] = [
        EntraOutcome::Success,
        EntraOutcome::Rejected,
        EntraOutcome::Throttled,
        EntraOutcome::ServerError,
        EntraOutcome::Timeout,
        EntraOutcome::ConnectError,
        EntraOutcome::BadResponse,
    ];

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

type GaugeFamily<L> = Family<L, Gauge<i64, AtomicI64>>;

/// What one request path (a sidecar's, or one pod's of a node agent) shows at a scrape: its
/// federated token and the first expiry per identity among its cached tokens.
pub struct Scrape {
    pod: PodLabels,
    federated: Option<FederatedState>,
    identities: Vec<(IdentityLabels, u64, u64)>,
}

/// All counters of one sidecar process (or of one node agent, shared by its pods' views).
pub struct Metrics {
    registry: Arc<Registry>,
    /// The allow-list's rule for the `resource` label; `None`: no allow-list, label `*`.
    resource_rule: Option<ResourceLabel>,
    /// The pod this view counts for (node mode); none for a sidecar.
    pod: PodLabels,
    fetches: Family<FetchLabels, Counter>,
    token_expiry: GaugeFamily<IdentityLabels>,
    token_refreshed: GaugeFamily<IdentityLabels>,
    federated_expiry: GaugeFamily<PodLabels>,
    federated_issued: GaugeFamily<PodLabels>,
    /// Serializes scrapes: they clear and refill the per-identity gauges.
    scrape: Arc<Mutex<()>>,
    requests: Family<RequestLabels, Counter>,
    request_slots: Box<[std::sync::OnceLock<Counter>]>,
    cache_hits: Counter,
    cache_misses: Counter,
    entra_calls: Family<OutcomeLabels, Counter>,
    refreshes: Family<OutcomeLabels, Counter>,
    pub entra_latency: Histogram,
    federated_token_seconds_left: GaugeFamily<PodLabels>,
    cached_tokens: GaugeFamily<PodLabels>,
    /// The pods `cached_tokens` has a series for, so a pod no longer scraped loses it.
    cached_pods: Arc<Mutex<std::collections::HashSet<PodLabels>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics without a resource allow-list: the `resource` label is always `*`.
    pub fn new() -> Self {
        Self::with_resource_label(None)
    }

    /// Metrics whose `resource` label is what `resource_rule` names for a resource.
    pub fn with_resource_label(resource_rule: Option<ResourceLabel>) -> Self {
        let mut registry = Registry::with_prefix("identity_sidecar");
        let build = Family::<BuildLabels, Gauge<i64, AtomicI64>>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: BUILD_COMMIT,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say which build runs (version, commit)",
            build,
        );
        let fetches = Family::<FetchLabels, Counter>::default();
        registry.register(
            "token_refreshes",
            "Tokens fetched from Entra ID for the cache (first fetch and every renewal), by identity and result (success, failure)",
            fetches.clone(),
        );
        let token_expiry = Family::<IdentityLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "token_expiry_timestamp_seconds",
            "Expiry (Unix time) of the cached token that expires first, per identity",
            token_expiry.clone(),
        );
        let token_refreshed = Family::<IdentityLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "token_last_refresh_timestamp_seconds",
            "When (Unix time) the token that expires first was received from Entra ID, per identity",
            token_refreshed.clone(),
        );
        let federated_expiry = GaugeFamily::<PodLabels>::default();
        registry.register(
            "federated_token_expiry_timestamp_seconds",
            "Expiry (Unix time, the exp claim) of the federated token; 0: no token",
            federated_expiry.clone(),
        );
        let federated_issued = GaugeFamily::<PodLabels>::default();
        registry.register(
            "federated_token_issued_timestamp_seconds",
            "Issue time (Unix time, the iat claim) of the federated token; 0: no token or no iat",
            federated_issued.clone(),
        );
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
        // Every outcome from the start, so an error ratio has its series before the first error.
        for outcome in EntraOutcome::ALL {
            let _ = entra_calls.get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            });
        }
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
        let federated_token_seconds_left = GaugeFamily::<PodLabels>::default();
        registry.register(
            "federated_token_expiry_seconds",
            "Seconds until the federated token expires (negative: expired; -1e9: no token)",
            federated_token_seconds_left.clone(),
        );
        let cached_tokens = GaugeFamily::<PodLabels>::default();
        let _ = cached_tokens.get_or_create(&PodLabels::default());
        registry.register(
            "cached_tokens",
            "Keys (client id, scope) in the token cache",
            cached_tokens.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            resource_rule,
            pod: PodLabels::default(),
            fetches,
            token_expiry,
            token_refreshed,
            federated_expiry,
            federated_issued,
            scrape: Arc::new(Mutex::new(())),
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
            cached_pods: Arc::default(),
        }
    }

    /// The view one pod of a node agent counts through: every series shared with `self`, the
    /// per-identity and federated-token series labelled with the pod, and the `resource` label
    /// following the pod's own allow-list (`resource_rule`; `None`: `*`).
    pub fn for_pod(&self, pod: PodLabels, resource_rule: Option<ResourceLabel>) -> Metrics {
        // The pods' own `cached_tokens` series replace the process-wide one.
        self.cached_tokens.remove(&PodLabels::default());
        Metrics {
            registry: Arc::clone(&self.registry),
            resource_rule,
            pod,
            fetches: self.fetches.clone(),
            token_expiry: self.token_expiry.clone(),
            token_refreshed: self.token_refreshed.clone(),
            federated_expiry: self.federated_expiry.clone(),
            federated_issued: self.federated_issued.clone(),
            scrape: Arc::clone(&self.scrape),
            requests: self.requests.clone(),
            request_slots: (0..Endpoint::ALL.len() * STATUSES.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            cache_hits: self.cache_hits.clone(),
            cache_misses: self.cache_misses.clone(),
            entra_calls: self.entra_calls.clone(),
            refreshes: self.refreshes.clone(),
            entra_latency: self.entra_latency.clone(),
            federated_token_seconds_left: self.federated_token_seconds_left.clone(),
            cached_tokens: self.cached_tokens.clone(),
            cached_pods: Arc::clone(&self.cached_pods),
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
        if self.pod.0.is_some() {
            let mut pods = self.cached_pods.lock().unwrap_or_else(|p| p.into_inner());
            pods.insert(self.pod.clone());
        }
        self.cached_tokens.get_or_create(&self.pod).set(n as i64);
    }

    /// The `resource` label of a cache key's scope: the allow-list rule that admits it (the
    /// resource is the scope, or the scope without the `/.default` the sidecar appended), `*`
    /// without an allow-list.
    pub fn resource_label(&self, scope: &str) -> String {
        let Some(rule) = &self.resource_rule else {
            return ALL_RESOURCES.to_string();
        };
        rule(scope)
            .or_else(|| scope.strip_suffix("/.default").and_then(rule))
            .unwrap_or_else(|| "other".to_string())
    }

    /// Counts one fetch of a token from Entra ID for the cache key (`client_id`, `scope`).
    pub fn token_fetch(&self, client_id: &str, scope: &str, ok: bool) {
        self.fetches
            .get_or_create(&FetchLabels {
                client_id: client_id.to_string(),
                resource: self.resource_label(scope),
                result: if ok { "success" } else { "failure" },
                pod: self.pod.clone(),
            })
            .inc();
    }

    /// What this view shows at a scrape: the federated token, and per (client id, resource
    /// label) the expiry and receipt time of the cached token that expires first.
    pub fn scrape_of<'a>(
        &self,
        federated: Option<FederatedState>,
        tokens: impl IntoIterator<Item = TokenState<'a>>,
    ) -> Scrape {
        let mut first: std::collections::HashMap<IdentityLabels, (u64, u64)> =
            std::collections::HashMap::new();
        for t in tokens {
            let key = IdentityLabels {
                client_id: t.client_id.to_string(),
                resource: self.resource_label(t.scope),
                pod: self.pod.clone(),
            };
            let e = first.entry(key).or_insert((t.expires_on, t.received_at));
            if t.expires_on < e.0 {
                *e = (t.expires_on, t.received_at);
            }
        }
        Scrape {
            pod: self.pod.clone(),
            federated,
            identities: first.into_iter().map(|(l, (e, r))| (l, e, r)).collect(),
        }
    }

    /// Encodes everything, after setting the gauges that are computed at scrape time from
    /// [`Metrics::scrape_of`] this view.
    pub fn render<'a>(
        &self,
        federated: Option<FederatedState>,
        tokens: impl IntoIterator<Item = TokenState<'a>>,
    ) -> String {
        self.render_scrapes([self.scrape_of(federated, tokens)], None)
    }

    /// Encodes everything, with the scrape-time gauges of exactly `scrapes` (a node agent: one
    /// per served pod, so a pod no longer served leaves them), and then `extra`'s series.
    pub fn render_scrapes(
        &self,
        scrapes: impl IntoIterator<Item = Scrape>,
        extra: Option<&Registry>,
    ) -> String {
        let _one_scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.federated_token_seconds_left.clear();
        self.federated_expiry.clear();
        self.federated_issued.clear();
        self.token_expiry.clear();
        self.token_refreshed.clear();
        let mut gone = self
            .cached_pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for s in scrapes {
            gone.remove(&s.pod);
            let f = s.federated;
            self.federated_token_seconds_left
                .get_or_create(&s.pod)
                .set(f.map_or(-1_000_000_000, |f| f.seconds_left));
            self.federated_expiry
                .get_or_create(&s.pod)
                .set(f.map_or(0, |f| f.expires_at as i64));
            self.federated_issued
                .get_or_create(&s.pod)
                .set(f.and_then(|f| f.issued_at).unwrap_or(0) as i64);
            for (labels, expires_on, received_at) in s.identities {
                let earlier = self
                    .token_expiry
                    .get(&labels)
                    .is_some_and(|g| g.get() <= expires_on as i64);
                if earlier {
                    continue;
                }
                self.token_refreshed
                    .get_or_create(&labels)
                    .set(received_at as i64);
                self.token_expiry
                    .get_or_create(&labels)
                    .set(expires_on as i64);
            }
        }
        if !gone.is_empty() {
            let mut pods = self.cached_pods.lock().unwrap_or_else(|p| p.into_inner());
            for pod in gone {
                self.cached_tokens.remove(&pod);
                pods.remove(&pod);
            }
        }
        let mut out = String::with_capacity(4096);
        let encoded = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .and_then(|()| match extra {
                Some(r) => prometheus_client::encoding::text::encode_registry(&mut out, r),
                None => Ok(()),
            })
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out));
        if encoded.is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
