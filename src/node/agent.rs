//! The node agent's loop: two reflectors keep the pods of this node and the cluster's
//! ServiceAccounts in memory (list, then watch from its `resourceVersion` with bookmarks; list
//! again on `410 Gone`; reconnect with backoff), and the reconciler makes the set of in-pod
//! listeners match what they say, on every change and every [`RESYNC`].
//!
//! Reconciling: nothing at all before both lists have synced. Then every eligible pod
//! ([`Pod::refusal`]) whose identity resolves ([`Pod::identity`]) and whose namespace the
//! process scan finds unambiguously ([`netns::scan`]) gets one listener bound inside that
//! namespace, serving a [`Service`] of its own (policy, federated token from the kubelet's
//! directory, token cache) over the Entra ID client the agent shares per tenant. A listener is
//! closed, with its open connections and its cached tokens, as soon as its pod stops being
//! eligible, its identity or token path changes, or its namespace changes or can no longer be
//! found; a changed pod is then served anew. While the API is unreachable the pods known so far
//! keep their listeners (checked against the process scan on every pass) and no new pod gets one.
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::HeaderValue;
use reqwest::Url;
use tokio::sync::{Notify, watch};

use super::metrics::{Bind, NodeMetrics, Unserved};
use super::netns::{self, Found, NetnsId};
use super::pod::{Identity, Pod, ServiceAccountInfo};
use crate::core::backoff::Backoff;
use crate::core::egress::EgressProxy;
use crate::core::entra::{EntraClient, Outbound};
use crate::core::federated::TokenSource;
use crate::kube::{self, KubeError, WatchEvent};
use crate::service::{PodParts, Service};
use crate::telemetry::audit::PodRef;
use crate::telemetry::metrics::{Metrics, PodLabels, Scrape};
use crate::telemetry::summary::Summary;

/// How often the listeners are checked against the process scan without an API event.
pub const RESYNC: Duration = Duration::from_secs(2);
/// How often the token-request summary of all pods is logged.
const SUMMARY_EVERY: Duration = Duration::from_secs(300);
/// Between reconnects to the API after a failure.
const API_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(10),
};

/// What the agent runs on.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub kubelet_root: PathBuf,
    pub proc_dir: PathBuf,
    pub default_tenant: Option<String>,
    pub authority: Url,
    pub entra_timeout: Duration,
    pub entra_budget: Duration,
    pub max_cached_tokens: usize,
    pub access_log: bool,
    /// `--audit-log`: a JSON audit line per token request, naming the pod.
    pub audit_log: bool,
    /// Where each pod's listener is bound inside the pod: 169.254.169.254:80.
    pub imds_addr: SocketAddrV4,
    pub egress: EgressProxy,
}

/// What the reflectors keep.
#[derive(Default)]
struct Known {
    pods: HashMap<String, Pod>,
    pods_synced: bool,
    accounts: HashMap<(String, String), ServiceAccountInfo>,
    accounts_synced: bool,
}

/// State shared by the reflectors, the reconciler and the health endpoint.
pub struct Shared {
    known: Mutex<Known>,
    changed: Notify,
    /// Pod UIDs with a listener and their request paths, for `/readyz` and `/metrics`.
    served: Mutex<Vec<(String, Weak<Service>)>>,
    synced: watch::Sender<bool>,
    /// Request and Entra ID metrics of every pod, served on the agent's own health listener
    /// only (an in-pod listener answers `/metrics` with 404: one pod must not see the others').
    pub metrics: Arc<Metrics>,
    /// The agent's own series (pods served, binds, unserved pods).
    pub node_metrics: NodeMetrics,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            known: Mutex::new(Known::default()),
            changed: Notify::new(),
            served: Mutex::new(Vec::new()),
            synced: watch::channel(false).0,
            metrics: Arc::new(Metrics::new()),
            node_metrics: NodeMetrics::new(),
        })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once both lists have synced.
    pub fn synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// How many pods have a listener.
    pub fn served(&self) -> usize {
        self.served.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// `/metrics`: every series, with the per-identity and federated-token gauges of exactly the
    /// pods served now.
    pub fn render_metrics(&self) -> String {
        let services: Vec<Arc<Service>> = self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(_, s)| s.upgrade())
            .collect();
        let scrapes: Vec<Scrape> = services.iter().map(|s| s.scrape()).collect();
        drop(services);
        self.metrics
            .render_scrapes(scrapes, Some(&self.node_metrics.registry))
    }
}

/// Which collection a reflector mirrors.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Pods,
    ServiceAccounts,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Pods => "/api/v1/pods",
            Kind::ServiceAccounts => "/api/v1/serviceaccounts",
        }
    }

    fn replace(self, k: &mut Known, items: &[serde_json::Value]) {
        match self {
            Kind::Pods => {
                k.pods = items
                    .iter()
                    .filter_map(Pod::parse)
                    .map(|p| (p.uid.clone(), p))
                    .collect();
                k.pods_synced = true;
            }
            Kind::ServiceAccounts => {
                k.accounts = items.iter().filter_map(ServiceAccountInfo::parse).collect();
                k.accounts_synced = true;
            }
        }
    }

    fn apply(self, k: &mut Known, object: &serde_json::Value, deleted: bool) {
        match self {
            Kind::Pods => {
                if let Some(p) = Pod::parse(object) {
                    if deleted {
                        k.pods.remove(&p.uid);
                    } else {
                        k.pods.insert(p.uid.clone(), p);
                    }
                }
            }
            Kind::ServiceAccounts => {
                if let Some((key, sa)) = ServiceAccountInfo::parse(object) {
                    if deleted {
                        k.accounts.remove(&key);
                    } else {
                        k.accounts.insert(key, sa);
                    }
                }
            }
        }
    }
}

fn version_of(o: &serde_json::Value) -> Option<String> {
    o.pointer("/metadata/resourceVersion")
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// Mirrors `kind` into `shared` for ever: list, watch from the list's version, resume after the
/// last version seen, list again on `410 Gone`, back off while the API fails.
async fn reflect(
    client: Arc<kube::Client>,
    kind: Kind,
    selector: Vec<(String, String)>,
    shared: Arc<Shared>,
) {
    let sel: Vec<(&str, &str)> = selector
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut failures = 0u32;
    let fail = |failures: &mut u32, what: &str, e: &KubeError| {
        *failures += 1;
        tracing::warn!(kind = ?kind, attempt = *failures, "{what}: {e}");
        API_BACKOFF.delay(*failures)
    };
    'list: loop {
        let list = match client.list(kind.path(), &sel).await {
            Ok(l) => l,
            Err(e) => {
                let wait = fail(&mut failures, "listing failed", &e);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        failures = 0;
        {
            let mut k = shared.known();
            kind.replace(&mut k, &list.items);
        }
        tracing::info!(kind = ?kind, objects = list.items.len(), version = %list.resource_version, "listed");
        shared.changed.notify_one();
        let mut version = list.resource_version;
        loop {
            let mut w = match client.watch(kind.path(), &sel, &version).await {
                Ok(w) => w,
                Err(e) => {
                    let wait = fail(&mut failures, "watch failed", &e);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            loop {
                match w.next().await {
                    Ok(Some(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                        failures = 0;
                        version = version_of(&o).unwrap_or(version);
                        kind.apply(&mut shared.known(), &o, false);
                        shared.changed.notify_one();
                    }
                    Ok(Some(WatchEvent::Deleted(o))) => {
                        failures = 0;
                        version = version_of(&o).unwrap_or(version);
                        kind.apply(&mut shared.known(), &o, true);
                        shared.changed.notify_one();
                    }
                    Ok(Some(WatchEvent::Bookmark(v))) => {
                        failures = 0;
                        if !v.is_empty() {
                            version = v;
                        }
                    }
                    Ok(Some(WatchEvent::Gone)) => {
                        tracing::info!(kind = ?kind, "watch version too old (410 Gone): listing again");
                        continue 'list;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let wait = fail(&mut failures, "watch ended", &e);
                        tokio::time::sleep(wait).await;
                        break;
                    }
                }
            }
        }
    }
}

/// One pod's listener and what it was built from.
struct Listener {
    pod: String,
    service: Weak<Service>,
    netns: NetnsId,
    identity: Identity,
    token_file: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    fn close(self, why: &str) {
        let _ = self.stop.send(true);
        self.task.abort();
        tracing::info!(pod = %self.pod, netns = %self.netns, "listener closed: {why}");
    }
}

/// A pod that should be served, before its namespace is looked up.
struct Wanted {
    pod: Pod,
    identity: Identity,
    token_file: PathBuf,
}

/// The reconciler and everything it owns.
pub struct Agent {
    cfg: AgentConfig,
    shared: Arc<Shared>,
    own_netns: NetnsId,
    summary: Arc<Summary>,
    entra: HashMap<String, Arc<EntraClient>>,
    listeners: HashMap<String, Listener>,
    /// Last reason logged per pod UID, so a pod that stays unserved is logged once.
    refused: HashMap<String, String>,
    /// Eligible pods without a listener in this pass, and why.
    unserved: HashMap<String, Unserved>,
}

impl Agent {
    pub fn new(cfg: AgentConfig, shared: Arc<Shared>) -> std::io::Result<Agent> {
        Ok(Agent {
            own_netns: netns::own_netns()?,
            cfg,
            shared,
            summary: Arc::new(Summary::default()),
            entra: HashMap::new(),
            listeners: HashMap::new(),
            refused: HashMap::new(),
            unserved: HashMap::new(),
        })
    }

    /// Starts the reflectors on `client` and reconciles until the task is dropped.
    pub async fn run(mut self, client: Arc<kube::Client>) {
        let node_selector = vec![(
            "fieldSelector".to_string(),
            format!("spec.nodeName={}", self.cfg.node_name),
        )];
        let pods = tokio::spawn(reflect(
            Arc::clone(&client),
            Kind::Pods,
            node_selector,
            Arc::clone(&self.shared),
        ));
        let accounts = tokio::spawn(reflect(
            client,
            Kind::ServiceAccounts,
            Vec::new(),
            Arc::clone(&self.shared),
        ));
        let summary = self.summary.spawn(SUMMARY_EVERY);
        let _abort = AbortOnDrop(vec![pods, accounts, summary]);
        loop {
            tokio::select! {
                _ = self.shared.changed.notified() => {}
                _ = tokio::time::sleep(RESYNC) => {}
            }
            self.reconcile().await;
        }
    }

    /// Logs once (per reason) that pod `uid` is not served; `reason` when it is eligible, which
    /// the metrics count.
    fn refuse(&mut self, uid: &str, pod: &str, reason: Option<Unserved>, why: String) {
        if let Some(r) = reason {
            self.unserved.insert(uid.to_string(), r);
        }
        if self.refused.get(uid) != Some(&why) {
            tracing::info!(pod, uid, "not served: {why}");
            if let Some(r) = reason {
                self.shared.node_metrics.failed(r);
            }
            self.refused.insert(uid.to_string(), why);
        }
    }

    /// One pass: the listeners made to match what is known.
    pub async fn reconcile(&mut self) {
        let started = Instant::now();
        let mut wanted: Vec<Wanted> = Vec::new();
        let mut unwanted: Vec<(String, String, Option<Unserved>, String)> = Vec::new();
        let known_uids: std::collections::HashSet<String>;
        {
            let known = self.shared.known();
            if !(known.pods_synced && known.accounts_synced) {
                return;
            }
            let _ = self
                .shared
                .synced
                .send_if_modified(|s| !std::mem::replace(s, true));
            known_uids = known.pods.keys().cloned().collect();
            for (uid, pod) in &known.pods {
                if let Some(why) = pod.refusal(&self.cfg.node_name) {
                    if pod.opted_in {
                        unwanted.push((uid.clone(), pod.display(), None, why.to_string()));
                    }
                    continue;
                }
                let sa = known
                    .accounts
                    .get(&(pod.namespace.clone(), pod.service_account.clone()));
                match pod.identity(sa, self.cfg.default_tenant.as_deref()) {
                    Ok(identity) => match pod.token_file(&self.cfg.kubelet_root) {
                        Some(token_file) => wanted.push(Wanted {
                            pod: pod.clone(),
                            identity,
                            token_file,
                        }),
                        None => unwanted.push((
                            uid.clone(),
                            pod.display(),
                            Some(Unserved::NoToken),
                            "no token".into(),
                        )),
                    },
                    Err(e) => {
                        unwanted.push((uid.clone(), pod.display(), Some(Unserved::Identity), e))
                    }
                }
            }
        }
        self.unserved.clear();
        for (uid, pod, reason, why) in unwanted {
            self.refuse(&uid, &pod, reason, why);
        }
        // Listeners of pods no longer wanted close first.
        let keep: std::collections::HashSet<&str> =
            wanted.iter().map(|w| w.pod.uid.as_str()).collect();
        let gone: Vec<String> = self
            .listeners
            .keys()
            .filter(|u| !keep.contains(u.as_str()))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(l) = self.listeners.remove(&uid) {
                l.close("the pod is no longer served (deleted, terminating, or opted out)");
            }
        }
        // A reason is logged once while the pod is known; a pod gone from the API is forgotten.
        self.refused.retain(|u, _| known_uids.contains(u));
        if wanted.is_empty() {
            self.publish();
            return;
        }
        let proc_dir = self.cfg.proc_dir.clone();
        let own = self.own_netns;
        let scan = match tokio::task::spawn_blocking(move || netns::scan(&proc_dir, own)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(proc_dir = %self.cfg.proc_dir.display(), "cannot scan processes: {e}");
                self.scan_failed(&wanted);
                return;
            }
            Err(e) => {
                tracing::warn!("process scan failed: {e}");
                self.scan_failed(&wanted);
                return;
            }
        };
        for w in wanted {
            let found = scan.get(&w.pod.uid).cloned();
            self.serve(w, found.as_ref()).await;
        }
        self.publish();
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            listeners = self.listeners.len(),
            "reconciled"
        );
    }

    /// The scan failed: served pods keep their listeners, the others wait for the next pass.
    fn scan_failed(&mut self, wanted: &[Wanted]) {
        for w in wanted {
            if !self.listeners.contains_key(&w.pod.uid) {
                self.unserved.insert(w.pod.uid.clone(), Unserved::ScanError);
            }
        }
        self.publish();
    }

    /// Makes pod `w`'s listener match `found`.
    async fn serve(&mut self, w: Wanted, found: Option<&Found>) {
        let uid = w.pod.uid.clone();
        let shown = w.pod.display();
        let (netns, pid) = match found {
            Some(Found::One { netns, pid }) => (*netns, *pid),
            Some(Found::Ambiguous(why)) => {
                if let Some(l) = self.listeners.remove(&uid) {
                    l.close(&format!("ambiguous network namespace: {why}"));
                }
                self.refuse(
                    &uid,
                    &shown,
                    Some(Unserved::AmbiguousNetns),
                    format!("ambiguous network namespace: {why}"),
                );
                return;
            }
            None => {
                if let Some(l) = self.listeners.remove(&uid) {
                    l.close("no process of the pod is left on this node");
                }
                self.refuse(
                    &uid,
                    &shown,
                    Some(Unserved::NoProcess),
                    "no process of the pod found on this node".into(),
                );
                return;
            }
        };
        let mut bind = Bind::New;
        if let Some(l) = self.listeners.get(&uid) {
            if l.netns == netns && l.identity == w.identity && l.token_file == w.token_file {
                return;
            }
            if let Some(l) = self.listeners.remove(&uid) {
                l.close("the pod's namespace, identity or token changed; serving it anew");
            }
            bind = Bind::Changed;
        }
        let entra = match self.entra_for(&w.identity.tenant_id) {
            Ok(e) => e,
            Err(e) => {
                self.refuse(
                    &uid,
                    &shown,
                    Some(Unserved::EntraClient),
                    format!("Entra ID client: {e}"),
                );
                return;
            }
        };
        let ns_path = netns::ns_file(&self.cfg.proc_dir, pid);
        let mut addrs = vec![self.cfg.imds_addr];
        if let Some(a) = &w.identity.app_service {
            addrs.push(SocketAddrV4::new(Ipv4Addr::LOCALHOST, a.port));
        }
        let shown_addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let token_file = w.token_file.clone();
        let bound = tokio::task::spawn_blocking(move || {
            let l = netns::bind_in(&ns_path, netns, addrs)?;
            Ok::<_, std::io::Error>((l, TokenSource::new(token_file)))
        })
        .await;
        let (bound, source) = match bound {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let why = format!("cannot listen in {netns}: {e}");
                self.refuse(&uid, &shown, Some(Unserved::BindError), why);
                return;
            }
            Err(e) => {
                let why = format!("cannot listen in {netns}: {e}");
                self.refuse(&uid, &shown, Some(Unserved::BindError), why);
                return;
            }
        };
        let diag = match bound.diag {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                tracing::warn!(pod = %shown, "no socket diagnostics in {netns}: audit lines of this pod have no caller uid: {e}");
                None
            }
        };
        let std_listeners = bound.listeners;
        let listeners: Result<Vec<_>, _> = std_listeners
            .into_iter()
            .map(tokio::net::TcpListener::from_std)
            .collect();
        let listeners = match listeners {
            Ok(l) => l,
            Err(e) => {
                let why = format!("cannot register the listener: {e}");
                self.refuse(&uid, &shown, Some(Unserved::BindError), why);
                return;
            }
        };
        let Ok(uid_header) = HeaderValue::from_str(&uid) else {
            return;
        };
        let policy = w.identity.policy();
        let metrics = self.shared.metrics.for_pod(
            PodLabels::new(&w.pod.namespace, &w.pod.name),
            crate::service::resource_label_rule(&policy),
        );
        let service = Service::for_pod(PodParts {
            policy,
            source,
            entra,
            max_cached_tokens: self.cfg.max_cached_tokens,
            metrics: Arc::new(metrics),
            summary: Arc::clone(&self.summary),
            access_log: self.cfg.access_log,
            audit_log: self.cfg.audit_log,
            pod: PodRef {
                namespace: w.pod.namespace.clone(),
                name: w.pod.name.clone(),
                uid: uid.clone(),
            },
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut serving = tokio::task::JoinSet::new();
        for l in listeners {
            serving.spawn(crate::server::serve_pod(
                l,
                Arc::clone(&service),
                uid_header.clone(),
                diag.clone(),
                stop_rx.clone(),
            ));
        }
        let weak = Arc::downgrade(&service);
        drop(service);
        // One task owns the pod's listeners: aborting it drops them all, with their connections.
        let task = tokio::spawn(async move { while serving.join_next().await.is_some() {} });
        tracing::info!(
            pod = %shown,
            uid = %uid,
            netns = %netns,
            pod_ip = %w.pod.pod_ip,
            client_id = %w.identity.client_id,
            tenant_id = %w.identity.tenant_id,
            token_file = %w.token_file.display(),
            "serving the pod on {} inside its network namespace",
            shown_addrs.join(" and ")
        );
        self.refused.remove(&uid);
        self.unserved.remove(&uid);
        self.shared.node_metrics.bound(bind);
        self.listeners.insert(
            uid,
            Listener {
                pod: shown,
                service: weak,
                netns,
                identity: w.identity,
                token_file: w.token_file,
                stop,
                task,
            },
        );
    }

    fn entra_for(&mut self, tenant: &str) -> Result<Arc<EntraClient>, String> {
        if let Some(c) = self.entra.get(tenant) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(EntraClient::new(
            &self.cfg.authority,
            tenant,
            self.cfg.entra_timeout,
            self.cfg.entra_budget,
            Outbound {
                extra_ca_files: &[],
                egress: &self.cfg.egress,
                token_proxy: None,
            },
            Arc::clone(&self.shared.metrics),
        )?);
        self.entra.insert(tenant.to_string(), Arc::clone(&c));
        Ok(c)
    }

    fn publish(&self) {
        {
            let mut s = self.shared.served.lock().unwrap_or_else(|p| p.into_inner());
            *s = self
                .listeners
                .iter()
                .map(|(uid, l)| (uid.clone(), Weak::clone(&l.service)))
                .collect();
        }
        self.shared
            .node_metrics
            .set(self.listeners.len(), self.unserved.values().copied());
    }
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
