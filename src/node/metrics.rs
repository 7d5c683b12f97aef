//! The node agent's own series, served after the request-path series on its `--health-listen`
//! `/metrics` (docs/operations.md#the-node-agent): pods served, listener binds by reason, and
//! the eligible pods the agent cannot serve, by reason (a gauge, and a counter of each time a pod
//! entered that state). Every label value is one of the fixed reasons below.
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a listener was bound (the `reason` label of `listener_binds_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// A pod the agent did not serve before (also every pod after an agent restart).
    New,
    /// A served pod whose network namespace, identity or token path changed: bound anew.
    Changed,
}

impl Bind {
    fn as_str(self) -> &'static str {
        match self {
            Bind::New => "new",
            Bind::Changed => "changed",
        }
    }
}

/// Why an eligible pod (opted in, on this node, running, not terminating, not `hostNetwork`,
/// with its token volume) has no listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unserved {
    /// Its identity does not resolve (no client id, unknown ServiceAccount, bad annotation).
    Identity,
    /// The token volume names no file.
    NoToken,
    /// No process of the pod on this node (yet).
    NoProcess,
    /// Its namespace is shared with another pod, split, or the node's own.
    AmbiguousNetns,
    /// Entering the namespace or binding there failed.
    BindError,
    /// No Entra ID client for its tenant.
    EntraClient,
    /// The process table could not be read.
    ScanError,
}

impl Unserved {
    pub const ALL: [Unserved; 7] = [
        Unserved::Identity,
        Unserved::NoToken,
        Unserved::NoProcess,
        Unserved::AmbiguousNetns,
        Unserved::BindError,
        Unserved::EntraClient,
        Unserved::ScanError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Unserved::Identity => "identity",
            Unserved::NoToken => "no_token",
            Unserved::NoProcess => "no_process",
            Unserved::AmbiguousNetns => "ambiguous_netns",
            Unserved::BindError => "bind_error",
            Unserved::EntraClient => "entra_client",
            Unserved::ScanError => "scan_error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The agent's own series.
pub struct NodeMetrics {
    pub registry: Registry,
    served: Gauge<i64, AtomicI64>,
    binds: Family<ReasonLabels, Counter>,
    failures: Family<ReasonLabels, Counter>,
    unserved: Family<ReasonLabels, Gauge<i64, AtomicI64>>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> NodeMetrics {
        let mut registry = Registry::with_prefix("identity_sidecar_node");
        let served = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "served_pods",
            "Pods with an in-pod listener",
            served.clone(),
        );
        let binds = Family::<ReasonLabels, Counter>::default();
        for b in [Bind::New, Bind::Changed] {
            let _ = binds.get_or_create(&ReasonLabels { reason: b.as_str() });
        }
        registry.register(
            "listener_binds",
            "In-pod listeners bound, by reason (new: a pod not served before; changed: its namespace, identity or token path changed)",
            binds.clone(),
        );
        let failures = Family::<ReasonLabels, Counter>::default();
        let unserved = Family::<ReasonLabels, Gauge<i64, AtomicI64>>::default();
        for u in Unserved::ALL {
            let l = ReasonLabels { reason: u.as_str() };
            let _ = failures.get_or_create(&l);
            let _ = unserved.get_or_create(&l);
        }
        registry.register(
            "listener_failures",
            "Times an eligible pod entered a state without a listener, by reason",
            failures.clone(),
        );
        registry.register(
            "unserved_pods",
            "Eligible pods (opted in, running, on this node) without a listener now, by reason",
            unserved.clone(),
        );
        NodeMetrics {
            registry,
            served,
            binds,
            failures,
            unserved,
        }
    }

    pub fn bound(&self, why: Bind) {
        self.binds
            .get_or_create(&ReasonLabels {
                reason: why.as_str(),
            })
            .inc();
    }

    /// A pod entered state `why` (counted once per pod and change of reason).
    pub fn failed(&self, why: Unserved) {
        self.failures
            .get_or_create(&ReasonLabels {
                reason: why.as_str(),
            })
            .inc();
    }

    /// The result of one reconciling pass: `served` listeners, and the unserved pods' reasons.
    pub fn set(&self, served: usize, unserved: impl IntoIterator<Item = Unserved>) {
        let mut counts = [0i64; Unserved::ALL.len()];
        for u in unserved {
            counts[u as usize] += 1;
        }
        for u in Unserved::ALL {
            self.unserved
                .get_or_create(&ReasonLabels { reason: u.as_str() })
                .set(counts[u as usize]);
        }
        self.served.set(served as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_series_from_the_start() {
        for (i, u) in Unserved::ALL.iter().enumerate() {
            assert_eq!(*u as usize, i, "{u:?}");
        }
        let m = NodeMetrics::new();
        m.bound(Bind::New);
        m.failed(Unserved::NoProcess);
        m.set(
            3,
            [Unserved::NoProcess, Unserved::NoProcess, Unserved::Identity],
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).expect("encode");
        for want in [
            "identity_sidecar_node_served_pods 3\n",
            "identity_sidecar_node_listener_binds_total{reason=\"new\"} 1\n",
            "identity_sidecar_node_listener_binds_total{reason=\"changed\"} 0\n",
            "identity_sidecar_node_listener_failures_total{reason=\"no_process\"} 1\n",
            "identity_sidecar_node_unserved_pods{reason=\"no_process\"} 2\n",
            "identity_sidecar_node_unserved_pods{reason=\"identity\"} 1\n",
            "identity_sidecar_node_unserved_pods{reason=\"bind_error\"} 0\n",
        ] {
            assert!(text.contains(want), "{want}{text}");
        }
    }
}
