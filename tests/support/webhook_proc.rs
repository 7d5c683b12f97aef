//! `identity-sidecar-webhook serve` as a real process over HTTPS, against a [`FakeKube`], with a
//! real HTTPS client (reqwest + rustls) that trusts the webhook's CA.
#![allow(dead_code)]

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use identity_sidecar::webhook::tls;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};

pub const IMAGE: &str = "ghcr.io/identity-sidecar/identity-sidecar:0.1.0";
pub const INIT_IMAGE: &str = "ghcr.io/identity-sidecar/identity-sidecar-init:0.1.0";
pub const TENANT: &str = "44444444-4444-4444-4444-444444444444";

/// The webhook process, its certificate files and a client for it.
pub struct Webhook {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub http: reqwest::Client,
    logs: Arc<Mutex<String>>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The webhook binary: `IDENTITY_SIDECAR_WEBHOOK_BIN`, else the one cargo built for this test,
/// else the `dist` build (the benchmark, an example, gets no `CARGO_BIN_EXE_*`).
pub fn binary() -> PathBuf {
    if let Some(b) = std::env::var_os("IDENTITY_SIDECAR_WEBHOOK_BIN") {
        return PathBuf::from(b);
    }
    match option_env!("CARGO_BIN_EXE_identity-sidecar-webhook") {
        Some(b) => PathBuf::from(b),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dist/identity-sidecar-webhook")
        }
    }
}

/// A reqwest client trusting exactly the PEM CAs given.
pub fn client_trusting(cas: &[&str]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_trusting(cas))
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A TLS client configuration trusting exactly the PEM CAs given.
pub fn tls_trusting(cas: &[&str]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.expect("pem")).expect("root");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Writes a fresh CA + serving certificate for localhost into `dir`; returns the CA PEM.
pub fn write_certs(dir: &Path) -> String {
    let g = tls::generate(&["localhost".into()], 2).expect("certs");
    std::fs::write(dir.join("tls.crt"), &g.cert).expect("cert");
    std::fs::write(dir.join("tls.key"), &g.key).expect("key");
    g.ca_cert
}

impl Webhook {
    /// Starts the webhook with the fake API's kubeconfig (`kubeconfig`) and extra flags.
    pub fn start(kubeconfig: &Path, extra: &[&str]) -> Webhook {
        let dir = tempfile::tempdir().expect("tmp");
        let ca_pem = write_certs(dir.path());
        let mut cmd = std::process::Command::new(binary());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--image", IMAGE])
            .args(["--init-image", INIT_IMAGE, "--tenant-id", TENANT])
            .arg("--tls-cert-file")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key-file")
            .arg(dir.path().join("tls.key"))
            .args(extra)
            .env_remove("AZURE_TENANT_ID")
            .env_remove("AZURE_AUTHORITY_HOST")
            .env_remove("RUST_LOG")
            .env("KUBECONFIG", kubeconfig)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn identity-sidecar-webhook");
        let logs = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let addr = wait_addr(&logs, &mut child);
        let http = client_trusting(&[&ca_pem]);
        Webhook {
            child,
            addr,
            dir,
            ca_pem,
            http,
            logs,
        }
    }

    /// Starts the webhook against `kube` with extra flags; the kubeconfig pointing at `kube` is
    /// read at start, from a directory that goes right after.
    pub fn start_against(kube: &super::fake_kube::FakeKube, extra: &[&str]) -> Webhook {
        let dir = tempfile::tempdir().expect("tmp");
        Webhook::start(&kube.kubeconfig(dir.path()), extra)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("lock").clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub fn cert_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("tls.crt"),
            self.dir.path().join("tls.key"),
        )
    }

    /// POSTs a raw body to /mutate.
    pub async fn post(&self, body: Vec<u8>, content_type: &str) -> reqwest::Response {
        self.http
            .post(self.url("/mutate"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// POSTs `body` as JSON to /mutate and returns the JSON answer, whatever its status.
    pub async fn post_json(&self, body: &Value) -> Value {
        self.post(serde_json::to_vec(body).expect("json"), "application/json")
            .await
            .json()
            .await
            .expect("a JSON answer")
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> String {
        let answer = self.http.get(self.url("/metrics")).send().await;
        answer.expect("metrics").text().await.expect("metrics text")
    }

    /// Sends `pod` as a CREATE AdmissionReview in namespace `ns`; returns the `response`.
    pub async fn review(&self, pod: &Value, ns: &str) -> Value {
        let r = self
            .post(
                serde_json::to_vec(&review(pod, ns, "CREATE")).expect("json"),
                "application/json",
            )
            .await;
        assert_eq!(r.status(), 200, "webhook status");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        v["response"].clone()
    }

    /// The pod after the webhook: (patched pod, patch operations). Panics when refused.
    pub async fn mutate(&self, pod: &Value, ns: &str) -> (Value, Vec<Value>) {
        let resp = self.review(pod, ns).await;
        assert_eq!(resp["allowed"], true, "refused: {resp}");
        let ops = patch_of(&resp);
        (apply(pod, &ops), ops)
    }
}

fn wait_addr(logs: &Mutex<String>, child: &mut std::process::Child) -> SocketAddr {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        let text = logs.lock().expect("lock").clone();
        if let Some(i) = text.find("\"addr\":\"") {
            let rest = &text[i + 8..];
            if let Some(a) = rest.split('"').next().and_then(|a| a.parse().ok()) {
                return a;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("webhook exited with {st}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "webhook did not start:\n{}",
        logs.lock().expect("lock").clone()
    );
}

/// A pod of the webhook's corpus: `tests/webhook/corpus/NAME.json`.
pub fn corpus_pod(name: &str) -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/webhook/corpus/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("corpus pod is JSON")
}

/// An AdmissionReview request for `pod`.
pub fn review(pod: &Value, ns: &str, operation: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uuid::Uuid::new_v4().to_string(),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            "namespace": ns,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    })
}

/// The decoded JSON Patch of an allowed response (empty when it has none).
pub fn patch_of(resp: &Value) -> Vec<Value> {
    match resp.get("patch").and_then(Value::as_str) {
        None => Vec::new(),
        Some(b64) => {
            assert_eq!(resp["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64 patch");
            serde_json::from_slice(&bytes).expect("patch is a JSON array")
        }
    }
}

/// Applies `ops` with the `json-patch` crate (an RFC 6902 implementation we did not write).
pub fn apply(pod: &Value, ops: &[Value]) -> Value {
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops.to_vec())).expect("valid RFC 6902 patch");
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch)
        .unwrap_or_else(|e| panic!("patch does not apply: {e}\n{ops:#?}"));
    out
}
