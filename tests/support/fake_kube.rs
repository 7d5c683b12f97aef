//! A fake Kubernetes API server over HTTPS for the webhook's tests and benchmark: it answers
//! `GET /version` and `GET /api/v1/namespaces/NS/serviceaccounts/NAME` the way the API does
//! (a ServiceAccount object, or a 404 `Status`), checks the bearer token (401 `Status`
//! otherwise), counts requests, and writes a kubeconfig that points at itself.
#![allow(dead_code)] // each user takes a different subset

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use identity_sidecar::webhook::tls;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};

pub const TOKEN: &str = "fake-kube-bearer-token";

/// The fake API server; dropped, it stops.
pub struct FakeKube {
    pub addr: SocketAddr,
    pub ca_pem: String,
    accounts: Arc<Mutex<HashMap<(String, String), Value>>>,
    pub sa_requests: Arc<AtomicUsize>,
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
        let accounts: Arc<Mutex<HashMap<(String, String), Value>>> = Arc::default();
        let sa_requests = Arc::new(AtomicUsize::new(0));
        let (acc, count) = (Arc::clone(&accounts), Arc::clone(&sa_requests));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (acc, count) = (Arc::clone(&acc), Arc::clone(&count));
                let mut stop_rx = stop_rx.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let (acc, count) = (Arc::clone(&acc), Arc::clone(&count));
                        async move { Ok::<_, Infallible>(answer(&acc, &count, req)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc);
                    // Stopped: the connection is dropped, as when an API server goes away.
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_rx.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        FakeKube {
            addr,
            ca_pem: g.ca_cert,
            accounts,
            sa_requests,
            stop,
            task,
        }
    }

    /// Closes the listener and every open connection.
    pub fn stop(&self) {
        self.task.abort();
        let _ = self.stop.send(true);
    }

    /// Adds (or replaces) ServiceAccount `ns/name` with `annotations`.
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
        self.accounts
            .lock()
            .expect("lock")
            .insert((ns.into(), name.into()), sa);
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

fn status(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(code).expect("status");
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("ct"));
    r
}

fn answer(
    accounts: &Mutex<HashMap<(String, String), Value>>,
    count: &AtomicUsize,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
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
        let mut r = Response::new(Full::new(Bytes::from(
            r#"{"major":"1","minor":"33","gitVersion":"v1.33.0"}"#,
        )));
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("ct"));
        return r;
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let ["api", "v1", "namespaces", ns, "serviceaccounts", name] = parts.as_slice() {
        count.fetch_add(1, Ordering::SeqCst);
        let found = accounts
            .lock()
            .expect("lock")
            .get(&(ns.to_string(), name.to_string()))
            .cloned();
        return match found {
            Some(sa) => {
                let mut r = Response::new(Full::new(Bytes::from(sa.to_string())));
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
