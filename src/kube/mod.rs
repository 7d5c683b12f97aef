//! A small Kubernetes API client: the standard client configuration (`KUBECONFIG` when set, else
//! the in-cluster service account), the two calls the webhook makes (a ServiceAccount GET and a
//! `/version` reachability check, with a cache of ServiceAccounts), and the list and watch the
//! node agent's reflectors make ([`Client::list`], [`Client::watch`] in `watch.rs`: paged lists,
//! bookmarks, `410 Gone` reported as [`WatchEvent::Gone`]).
//!
//! Why not `kube`/`k8s-openapi`: the webhook reads one object kind through one REST call. `kube`'s
//! client brings tower, hyper-util's client stack, a second TLS set-up, `serde_yaml` and
//! `k8s-openapi` (the typed structs for every API version, the slowest crate to build in most
//! Kubernetes projects), for a GET we make with the `reqwest` and `rustls` the project already
//! links. The configuration rules are the part worth getting right, and they are here:
//! - `KUBECONFIG` may list several files (`:`-separated); as kubectl does, the first file that
//!   sets `current-context`, or defines a context, cluster or user of a given name, wins;
//! - relative `certificate-authority`, `client-certificate`, `client-key` and `tokenFile` paths
//!   are relative to the file that names them; the `*-data` fields are base64 PEM;
//! - users authenticate by `token`, `tokenFile` (re-read every minute), client certificate, or
//!   `username`/`password`; `exec` and `auth-provider` plugins are refused with a clear message;
//! - in a pod: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, the CA and the
//!   service-account token under `/var/run/secrets/kubernetes.io/serviceaccount/`, the token
//!   re-read every minute as client-go does (bound tokens rotate).
#[cfg(feature = "webhook")]
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use yaml_rust2::{Yaml, YamlLoader};

mod watch;
pub use watch::{ObjectList, WATCH_SECONDS, Watch, WatchEvent};

#[cfg(feature = "webhook")]
use crate::webhook::patch::ServiceAccount;

/// Where a pod's service-account credentials are mounted.
pub const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long one API call may take: the webhook itself must answer within `timeoutSeconds` (≤ 5).
pub const API_TIMEOUT: Duration = Duration::from_secs(3);
const TOKEN_FILE_REREAD: Duration = Duration::from_secs(60);

/// How to reach and authenticate to the API server.
pub struct ClientConfig {
    pub server: String,
    pub tls: rustls::ClientConfig,
    pub auth: Auth,
    /// Where the configuration came from, for messages.
    pub source: String,
}

/// Credentials sent with each request (client certificates live in `tls`).
#[derive(Clone)]
pub enum Auth {
    None,
    Bearer(String),
    BearerFile(PathBuf),
    Basic(String, String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a credential.
        match self {
            Auth::None => f.write_str("None"),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::BearerFile(p) => write!(f, "BearerFile({})", p.display()),
            Auth::Basic(u, _) => write!(f, "Basic({u}, <redacted>)"),
        }
    }
}

/// Loads the configuration the standard way: `KUBECONFIG` when set and non-empty, else the
/// in-cluster service account.
pub fn load_config() -> Result<ClientConfig, String> {
    match std::env::var("KUBECONFIG") {
        Ok(list) if !list.trim().is_empty() => {
            let files: Vec<PathBuf> = std::env::split_paths(&list)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
            from_kubeconfig(&files)
        }
        _ => {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                "no Kubernetes configuration: KUBECONFIG is not set and this is not a pod \
                 (KUBERNETES_SERVICE_HOST is not set)"
                    .to_string()
            })?;
            let port =
                std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".to_string());
            in_cluster(Path::new(IN_CLUSTER_DIR), &host, &port)
        }
    }
}

/// The in-cluster configuration from `dir` (normally [`IN_CLUSTER_DIR`]).
pub fn in_cluster(dir: &Path, host: &str, port: &str) -> Result<ClientConfig, String> {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let ca_path = dir.join("ca.crt");
    let ca =
        std::fs::read(&ca_path).map_err(|e| format!("cannot read {}: {e}", ca_path.display()))?;
    let token = dir.join("token");
    if !token.exists() {
        return Err(format!(
            "no service-account token at {} (is automountServiceAccountToken false?)",
            token.display()
        ));
    }
    Ok(ClientConfig {
        server: format!("https://{host}:{port}"),
        tls: tls_config(&ca, None)?,
        auth: Auth::BearerFile(token),
        source: "in-cluster service account".into(),
    })
}

/// One kubeconfig file, parsed, with the directory its relative paths are relative to.
struct KubeconfigFile {
    path: PathBuf,
    doc: Yaml,
}

impl KubeconfigFile {
    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn named(&self, list: &str, name: &str) -> Option<&Yaml> {
        self.doc[list]
            .as_vec()?
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .map(|e| &e[list.trim_end_matches('s')])
    }
}

/// The configuration of the current context of the merged `files`.
pub fn from_kubeconfig(files: &[PathBuf]) -> Result<ClientConfig, String> {
    let mut parsed = Vec::new();
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            // kubectl ignores listed files that do not exist.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read kubeconfig {}: {e}", path.display())),
        };
        let docs = YamlLoader::load_from_str(&text)
            .map_err(|e| format!("kubeconfig {} is not YAML: {e}", path.display()))?;
        parsed.push(KubeconfigFile {
            path: path.clone(),
            doc: docs.into_iter().next().unwrap_or(Yaml::Null),
        });
    }
    let shown = files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let context_name = parsed
        .iter()
        .find_map(|f| f.doc["current-context"].as_str().filter(|s| !s.is_empty()))
        .ok_or_else(|| format!("kubeconfig {shown}: no current-context"))?
        .to_string();
    let find = |list: &str, name: &str| {
        parsed
            .iter()
            .find_map(|f| f.named(list, name).map(|v| (v, f)))
    };
    let (context, _) = find("contexts", &context_name)
        .ok_or_else(|| format!("kubeconfig {shown}: context {context_name:?} is not defined"))?;
    let cluster_name = context["cluster"]
        .as_str()
        .ok_or_else(|| format!("kubeconfig {shown}: context {context_name:?} names no cluster"))?;
    let (cluster, cluster_file) = find("clusters", cluster_name)
        .ok_or_else(|| format!("kubeconfig {shown}: cluster {cluster_name:?} is not defined"))?;
    let server = cluster["server"]
        .as_str()
        .ok_or_else(|| format!("kubeconfig {shown}: cluster {cluster_name:?} has no server"))?
        .trim_end_matches('/')
        .to_string();
    if cluster["insecure-skip-tls-verify"].as_bool() == Some(true) {
        return Err(format!(
            "kubeconfig {shown}: cluster {cluster_name:?} sets insecure-skip-tls-verify, which \
             this webhook does not support: give certificate-authority(-data)"
        ));
    }
    let ca = pem_field(cluster, "certificate-authority", cluster_file)?;

    let mut auth = Auth::None;
    let mut client_cert = None;
    if let Some(user_name) = context["user"].as_str().filter(|s| !s.is_empty()) {
        let (user, user_file) = find("users", user_name)
            .ok_or_else(|| format!("kubeconfig {shown}: user {user_name:?} is not defined"))?;
        if !user["exec"].is_badvalue() || !user["auth-provider"].is_badvalue() {
            return Err(format!(
                "kubeconfig {shown}: user {user_name:?} uses an exec or auth-provider plugin, \
                 which this webhook does not run; use a token, tokenFile or client certificate"
            ));
        }
        if let Some(t) = user["token"].as_str().filter(|s| !s.is_empty()) {
            auth = Auth::Bearer(t.to_string());
        } else if let Some(f) = user["tokenFile"].as_str().filter(|s| !s.is_empty()) {
            auth = Auth::BearerFile(user_file.dir().join(f));
        } else if let (Some(u), Some(p)) = (user["username"].as_str(), user["password"].as_str()) {
            auth = Auth::Basic(u.to_string(), p.to_string());
        }
        let cert = pem_field(user, "client-certificate", user_file)?;
        let key = pem_field(user, "client-key", user_file)?;
        match (cert, key) {
            (Some(c), Some(k)) => client_cert = Some((c, k)),
            (None, None) => {}
            _ => {
                return Err(format!(
                    "kubeconfig {shown}: user {user_name:?} has a client certificate or key \
                     without the other"
                ));
            }
        }
    }
    let ca = ca.ok_or_else(|| {
        format!(
            "kubeconfig {shown}: cluster {cluster_name:?} has no certificate-authority(-data); \
             the API server's certificate cannot be checked"
        )
    })?;
    Ok(ClientConfig {
        server,
        tls: tls_config(&ca, client_cert.as_ref())?,
        auth,
        source: format!("kubeconfig {shown}, context {context_name}"),
    })
}

/// `<field>-data` (base64 PEM) or `<field>` (a path relative to the kubeconfig file).
fn pem_field(entry: &Yaml, field: &str, file: &KubeconfigFile) -> Result<Option<Vec<u8>>, String> {
    if let Some(data) = entry[format!("{field}-data").as_str()].as_str() {
        let clean: String = data.chars().filter(|c| !c.is_whitespace()).collect();
        return base64::engine::general_purpose::STANDARD
            .decode(clean)
            .map(Some)
            .map_err(|e| {
                format!(
                    "kubeconfig {}: {field}-data is not base64: {e}",
                    file.path.display()
                )
            });
    }
    if let Some(p) = entry[field].as_str() {
        let path = file.dir().join(p);
        return std::fs::read(&path)
            .map(Some)
            .map_err(|e| format!("cannot read {field} {}: {e}", path.display()));
    }
    Ok(None)
}

/// TLS trusting only the cluster's CA (as client-go does when a CA is given), with an optional
/// client certificate.
fn tls_config(
    ca_pem: &[u8],
    client: Option<&(Vec<u8>, Vec<u8>)>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("cluster CA is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("cluster CA certificate rejected: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the cluster CA holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots);
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("client certificate is not PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("client key is not PEM: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate rejected: {e}"))?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("the Kubernetes API at {server} is unreachable: {detail}")]
    Unreachable { server: String, detail: String },
    #[error("the Kubernetes API answered {status} for {what}: {detail}")]
    Status {
        status: u16,
        what: String,
        detail: String,
    },
    #[error("{0}")]
    Credentials(String),
}

/// The API client: one HTTP/1.1 connection pool, credentials refreshed from files.
pub struct Client {
    http: reqwest::Client,
    server: String,
    auth: Auth,
    file_token: Mutex<Option<(String, Instant)>>,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(cfg.tls)
            .timeout(API_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot create the Kubernetes API client: {e}"))?;
        Ok(Client {
            http,
            server: cfg.server,
            auth: cfg.auth,
            file_token: Mutex::new(None),
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn bearer_from_file(&self, path: &Path) -> Result<String, KubeError> {
        let mut g = self.file_token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, at)) = g.as_ref()
            && at.elapsed() < TOKEN_FILE_REREAD
        {
            return Ok(t.clone());
        }
        let t = std::fs::read_to_string(path)
            .map_err(|e| {
                KubeError::Credentials(format!("cannot read token {}: {e}", path.display()))
            })?
            .trim()
            .to_string();
        *g = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response, KubeError> {
        self.get_within(path, None).await
    }

    /// A GET with its own time limit (a watch runs for minutes), else [`API_TIMEOUT`].
    pub(crate) async fn get_within(
        &self,
        path: &str,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, KubeError> {
        let mut req = self
            .http
            .get(format!("{}{path}", self.server))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        req = match &self.auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::BearerFile(p) => req.bearer_auth(self.bearer_from_file(p)?),
            Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
        };
        req.send().await.map_err(|e| KubeError::Unreachable {
            server: self.server.clone(),
            detail: error_chain(&e),
        })
    }

    /// `GET /version`: is the API reachable and does it accept our TLS?
    pub async fn ping(&self) -> Result<(), KubeError> {
        let r = self.get("/version").await?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(status_error(r, "/version").await)
        }
    }

    #[cfg(feature = "webhook")]
    /// The ServiceAccount `namespace/name`; `found: false` on 404.
    pub async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ServiceAccount, KubeError> {
        // Names are DNS labels; encode anything else rather than trust it in a path.
        const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string();
        let path = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{}",
            enc(namespace),
            enc(name)
        );
        let r = self.get(&path).await?;
        let mut sa = ServiceAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
            found: false,
            annotations: BTreeMap::new(),
        };
        match r.status().as_u16() {
            200 => {
                let v: serde_json::Value = r.json().await.map_err(|e| KubeError::Status {
                    status: 200,
                    what: format!("ServiceAccount {namespace}/{name}"),
                    detail: format!("unreadable body: {e}"),
                })?;
                if let Some(a) = v
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.as_object())
                {
                    for (k, v) in a {
                        if let Some(s) = v.as_str() {
                            sa.annotations.insert(k.clone(), s.to_string());
                        }
                    }
                }
                sa.found = true;
                Ok(sa)
            }
            404 => Ok(sa),
            _ => Err(status_error(r, &format!("ServiceAccount {namespace}/{name}")).await),
        }
    }
}

pub(crate) async fn status_error(r: reqwest::Response, what: &str) -> KubeError {
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    // A Kubernetes Status object carries the reason in `message`.
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    let detail = if status == 401 || status == 403 {
        format!("{detail} (check this ServiceAccount's ClusterRole)")
    } else {
        detail
    };
    KubeError::Status {
        status,
        what: what.to_string(),
        detail,
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(feature = "webhook")]
/// ServiceAccounts by namespace and name, kept for `ttl` (404s are not kept: a ServiceAccount
/// created just before its pods must be seen at once).
pub struct Cache {
    ttl: Duration,
    map: Mutex<HashMap<Key, (Instant, Arc<ServiceAccount>)>>,
}

#[cfg(feature = "webhook")]
/// Namespace and name.
type Key = (String, String);

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Fetched,
}

#[cfg(feature = "webhook")]
/// Most entries kept; on overflow the cache is emptied (a cluster with more ServiceAccounts in
/// active use than this refetches more often, nothing worse).
const MAX_ENTRIES: usize = 10_000;

#[cfg(feature = "webhook")]
impl Cache {
    pub fn new(ttl: Duration) -> Cache {
        Cache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<(Arc<ServiceAccount>, Lookup), KubeError> {
        let key = (namespace.to_string(), name.to_string());
        if let Some((at, sa)) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok((Arc::clone(sa), Lookup::Hit));
        }
        let sa = Arc::new(client.service_account(namespace, name).await?);
        if sa.found && !self.ttl.is_zero() {
            let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
            m.insert(key, (Instant::now(), Arc::clone(&sa)));
        }
        Ok((sa, Lookup::Fetched))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).expect("cert").pem()
    }

    #[test]
    fn merges_kubeconfig_files_first_wins_with_relative_paths() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("ca.pem"), ca_pem()).expect("ca");
        std::fs::write(dir.path().join("tok"), "t0ken\n").expect("tok");
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, "apiVersion: v1\nkind: Config\ncurrent-context: dev\nusers:\n- name: me\n  user:\n    tokenFile: tok\n").expect("a");
        std::fs::write(&b, "apiVersion: v1\nkind: Config\ncurrent-context: other\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443/\n    certificate-authority: ca.pem\ncontexts:\n- name: dev\n  context: {cluster: c, user: me}\nusers:\n- name: me\n  user:\n    token: ignored\n").expect("b");
        let cfg = from_kubeconfig(&[a, dir.path().join("missing.yaml"), b]).expect("config");
        assert_eq!(cfg.server, "https://127.0.0.1:6443");
        assert!(matches!(cfg.auth, Auth::BearerFile(ref p) if p.ends_with("tok")));
    }

    #[test]
    fn refuses_exec_plugins_and_missing_ca() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("k.yaml");
        std::fs::write(&f, "current-context: x\nclusters:\n- name: c\n  cluster: {server: 'https://h'}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\nusers:\n- name: u\n  user:\n    exec: {command: kubelogin}\n").expect("write");
        let err = from_kubeconfig(std::slice::from_ref(&f))
            .err()
            .expect("refused");
        assert!(err.contains("exec"), "{err}");
        std::fs::write(&f, "current-context: x\nclusters:\n- name: c\n  cluster: {server: 'https://h'}\ncontexts:\n- name: x\n  context: {cluster: c}\n").expect("write");
        let err = from_kubeconfig(&[f]).err().expect("refused");
        assert!(err.contains("certificate-authority"), "{err}");
    }

    #[test]
    fn in_cluster_brackets_ipv6_hosts() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("ca.crt"), ca_pem()).expect("ca");
        std::fs::write(dir.path().join("token"), "t").expect("token");
        let cfg = in_cluster(dir.path(), "fd00::1", "443").expect("config");
        assert_eq!(cfg.server, "https://[fd00::1]:443");
    }
}
