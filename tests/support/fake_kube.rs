//! A fake Kubernetes API server over HTTPS for the webhook's and the node agent's tests and
//! benchmarks: it answers `GET /version` and `GET /api/v1/namespaces/NS/serviceaccounts/NAME` the
//! way the API does (a ServiceAccount object, or a 404 `Status`), lists and watches pods
//! (`/api/v1/pods`, with the `spec.nodeName=` field selector) and ServiceAccounts
//! (`/api/v1/serviceaccounts`) with resource versions, bookmarks and `410 Gone` for a version it
//! has compacted away, checks the bearer token (401 `Status` otherwise), counts requests, can go
//! down and come back ([`FakeKube::set_down`]), and writes a kubeconfig that points at itself.
#![allow(dead_code)] // each user takes a different subset

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use identity_sidecar::webhook::tls;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};

pub const TOKEN: &str = "fake-kube-bearer-token";

/// The objects the fake serves, their versions, and the open watches.
#[derive(Default)]
pub struct Store {
    /// The last resource version handed out.
    version: u64,
    /// Versions at or below this one are compacted: a watch from them gets `410 Gone`.
    compacted: u64,
    /// `(kind, namespace, name)` to the object.
    objects: BTreeMap<(Kind, String, String), Value>,
    /// Every change: version, kind, event type, object.
    history: Vec<(u64, Kind, &'static str, Value)>,
    watchers: Vec<Watcher>,
    /// While down, connections are dropped unanswered.
    down: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pod,
    ServiceAccount,
}

struct Watcher {
    kind: Kind,
    node: Option<String>,
    tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

fn matches(kind: Kind, node: &Option<String>, object: &Value) -> bool {
    kind != Kind::Pod
        || node
            .as_deref()
            .is_none_or(|n| object.pointer("/spec/nodeName").and_then(Value::as_str) == Some(n))
}

impl Store {
    fn change(&mut self, kind: Kind, event: &'static str, mut object: Value) {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let key = (
            kind,
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
        if event == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, object.clone());
        }
        let line = Bytes::from(format!("{}\n", json!({"type": event, "object": object})));
        self.watchers.retain(|w| {
            w.kind != kind || !matches(kind, &w.node, &object) || w.tx.send(line.clone()).is_ok()
        });
        self.history.push((self.version, kind, event, object));
    }
}

/// A response body fed by a channel: a watch's stream of events.
struct ChannelBody(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// The fake API server; dropped, it stops.
pub struct FakeKube {
    pub addr: SocketAddr,
    pub ca_pem: String,
    store: Arc<Mutex<Store>>,
    pub sa_requests: Arc<AtomicUsize>,
    /// Every list and watch request's path and query, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    down: tokio::sync::watch::Sender<bool>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop();
    }
}

impl FakeKube {
    pub async fn start() -> FakeKube {
        let g = tls::generate(&["localhost".into(), "127.0.0.1".into()], 2).expect("certs");
        let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pki_types::CertificateDer::pem_slice_iter(g.cert.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(g.key.as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let store: Arc<Mutex<Store>> = Arc::default();
        let sa_requests = Arc::new(AtomicUsize::new(0));
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (acc, count, log) = (
            Arc::clone(&store),
            Arc::clone(&sa_requests),
            Arc::clone(&requests),
        );
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (down, down_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if *down_rx.borrow() {
                    drop(stream);
                    continue;
                }
                let acceptor = acceptor.clone();
                let (acc, count, log) = (Arc::clone(&acc), Arc::clone(&count), Arc::clone(&log));
                let mut stop_rx = stop_rx.clone();
                let mut down_rx = down_rx.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let (acc, count, log) =
                            (Arc::clone(&acc), Arc::clone(&count), Arc::clone(&log));
                        async move { Ok::<_, Infallible>(answer(&acc, &count, &log, req)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc);
                    // Stopped or down: the connection is dropped, as when an API server goes away.
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_rx.wait_for(|s| *s) => {}
                        _ = down_rx.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        FakeKube {
            addr,
            ca_pem: g.ca_cert,
            store,
            sa_requests,
            requests,
            down,
            stop,
            task,
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Down: every open connection (watches too) is dropped and new ones are closed unanswered,
    /// as when the API server is unreachable. Up again: served as before.
    pub fn set_down(&self, down: bool) {
        self.store().down = down;
        if down {
            self.store().watchers.clear();
        }
        let _ = self.down.send(down);
    }

    /// Adds or replaces a pod (ADDED or MODIFIED to watchers); returns its resource version.
    pub fn put_pod(&self, pod: Value) -> u64 {
        let mut s = self.store();
        let key = (
            Kind::Pod,
            pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            pod["metadata"]["name"].as_str().unwrap_or("").to_string(),
        );
        let event = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.change(Kind::Pod, event, pod);
        s.version
    }

    /// Deletes pod `ns/name` (DELETED to watchers); false when there was none.
    pub fn delete_pod(&self, ns: &str, name: &str) -> bool {
        let mut s = self.store();
        let Some(pod) = s.objects.get(&(Kind::Pod, ns.into(), name.into())).cloned() else {
            return false;
        };
        s.change(Kind::Pod, "DELETED", pod);
        true
    }

    /// The pod `ns/name` as stored.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Value> {
        self.store()
            .objects
            .get(&(Kind::Pod, ns.into(), name.into()))
            .cloned()
    }

    /// Forgets the history so far: a watch from an older version gets `410 Gone`.
    pub fn compact(&self) {
        let mut s = self.store();
        s.compacted = s.version;
        s.history.clear();
    }

    /// The list and watch requests made so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Closes the listener and every open connection.
    pub fn stop(&self) {
        self.task.abort();
        let _ = self.stop.send(true);
    }

    /// Adds (or replaces) ServiceAccount `ns/name` with `annotations` (ADDED to watchers).
    pub fn add_service_account(&self, ns: &str, name: &str, annotations: &[(&str, &str)]) {
        let ann: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let sa = json!({
            "kind": "ServiceAccount", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(),
                         "resourceVersion": "1", "creationTimestamp": "2026-11-30T00:00:00Z",
                         "annotations": ann},
        });
        self.store().change(Kind::ServiceAccount, "ADDED", sa);
    }

    /// Writes a kubeconfig for this server (CA inline, bearer token) into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: fake\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\ncontexts:\n- name: test\n  context:\n    cluster: fake\n    user: webhook\nusers:\n- name: webhook\n  user:\n    token: {TOKEN}\n",
                port = self.addr.port()
            ),
        )
        .expect("write kubeconfig");
        path
    }
}

fn full(body: impl Into<Bytes>) -> Response<Body> {
    Response::new(Full::new(body.into()).boxed())
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    let mut r = full(body.to_string());
    *r.status_mut() = hyper::StatusCode::from_u16(code).expect("status");
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("ct"));
    r
}

fn answer(
    store: &Mutex<Store>,
    count: &AtomicUsize,
    log: &Mutex<Vec<String>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {TOKEN}") {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let path = req.uri().path();
    if path == "/version" {
        let mut r = full(r#"{"major":"1","minor":"33","gitVersion":"v1.33.0"}"#);
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("ct"));
        return r;
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let collection = match parts.as_slice() {
        ["api", "v1", "pods"] => Some(Kind::Pod),
        ["api", "v1", "serviceaccounts"] => Some(Kind::ServiceAccount),
        _ => None,
    };
    if let Some(kind) = collection {
        let query = req.uri().query().unwrap_or("").to_string();
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{path}?{query}"));
        return list_or_watch(store, kind, &query);
    }
    if let ["api", "v1", "namespaces", ns, "serviceaccounts", name] = parts.as_slice() {
        count.fetch_add(1, Ordering::SeqCst);
        let found = store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .objects
            .get(&(Kind::ServiceAccount, ns.to_string(), name.to_string()))
            .cloned();
        return match found {
            Some(sa) => {
                let mut r = full(sa.to_string());
                r.headers_mut()
                    .insert("content-type", "application/json".parse().expect("ct"));
                r
            }
            None => status(
                404,
                "NotFound",
                &format!("serviceaccounts \"{name}\" not found"),
            ),
        };
    }
    status(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// `GET /api/v1/{pods,serviceaccounts}`: a list, or with `watch=1` a stream of events from
/// `resourceVersion` on (the backlog, a bookmark, then live changes).
fn list_or_watch(store: &Mutex<Store>, kind: Kind, query: &str) -> Response<Body> {
    let q: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let node = match q.get("fieldSelector").map(String::as_str) {
        None | Some("") => None,
        Some(sel) => match sel.strip_prefix("spec.nodeName=") {
            Some(n) if kind == Kind::Pod => Some(n.to_string()),
            _ => {
                return status(
                    400,
                    "BadRequest",
                    &format!("unsupported field selector {sel}"),
                );
            }
        },
    };
    let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
    let json_ct = |mut r: Response<Body>| {
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("ct"));
        r
    };
    if q.get("watch").map(String::as_str) != Some("1")
        && q.get("watch").map(String::as_str) != Some("true")
    {
        let items: Vec<&Value> = s
            .objects
            .iter()
            .filter(|((k, _, _), o)| *k == kind && matches(kind, &node, o))
            .map(|(_, o)| o)
            .collect();
        let list_kind = match kind {
            Kind::Pod => "PodList",
            Kind::ServiceAccount => "ServiceAccountList",
        };
        let body = json!({"kind": list_kind, "apiVersion": "v1",
                          "metadata": {"resourceVersion": s.version.to_string()}, "items": items});
        return json_ct(full(body.to_string()));
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    if from < s.compacted {
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "reason": "Expired", "code": 410,
            "message": format!("too old resource version: {from} ({})", s.compacted)}});
        let _ = tx.send(Bytes::from(format!("{gone}\n")));
        drop(tx);
        return json_ct(Response::new(ChannelBody(rx).boxed()));
    }
    for (v, k, event, o) in &s.history {
        if *v > from && *k == kind && matches(kind, &node, o) {
            let _ = tx.send(Bytes::from(format!(
                "{}\n",
                json!({"type": event, "object": o})
            )));
        }
    }
    if q.get("allowWatchBookmarks").map(String::as_str) == Some("true") {
        let bookmark = json!({"type": "BOOKMARK", "object": {"kind": match kind {
            Kind::Pod => "Pod", Kind::ServiceAccount => "ServiceAccount" },
            "apiVersion": "v1", "metadata": {"resourceVersion": s.version.to_string()}}});
        let _ = tx.send(Bytes::from(format!("{bookmark}\n")));
    }
    if !s.down {
        s.watchers.push(Watcher { kind, node, tx });
    }
    json_ct(Response::new(ChannelBody(rx).boxed()))
}
