//! `identity-sidecar mock-aad`: a stand-in for Entra ID plus a Kubernetes-like OIDC issuer, for
//! local development and tests. **Not an identity provider**: its keys and CA live for one run.
//!
//! It behaves like Entra where clients can tell: OIDC discovery, JWKS, MSAL instance discovery and
//! the client-credentials token endpoint, with Entra's checks, status codes and error bodies
//! (AADSTS codes). Federated tokens come from its own issuer (`{authority}issuer`), minted in
//! memory ([`MockAad::mint_federated_token`]) or written to a file with kubelet's atomic-writer
//! layout ([`FederatedTokenWriter`]). Faults can be injected into the token endpoint.
//!
//! In-process use (what `dev` and the tests do):
//!
//! ```no_run
//! # async fn demo() -> Result<(), identity_sidecar::mock_aad::MockAadError> {
//! use identity_sidecar::mock_aad::{self, MockAadConfig};
//! let mock = mock_aad::start(MockAadConfig::default()).await?;
//! let assertion = mock.mint_federated_token(mock_aad::DEFAULT_SUBJECT, std::time::Duration::from_secs(3600))?;
//! // POST {mock.token_endpoint()} with client_id = mock.client_id(), client_assertion = assertion ...
//! mock.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Layout: [`config`] (apps and defaults), `state` (shared state, counters, the request log),
//! `server` (sockets, routes, admin), `token` (the token endpoint), `discovery` (metadata and
//! keys), `errors` (Entra's error body), `keys` (RSA keys), `tls` (CA and certificate),
//! [`faults`], [`federated`] (issuer tokens and the kubelet layout), `remote` (other issuers'
//! keys). The `mock-aad` subcommand's flags and run live in [`crate::cmd::mock_aad`].

pub mod config;
mod discovery;
mod errors;
pub mod faults;
pub mod federated;
mod keys;
mod remote;
mod server;
mod state;
mod tls;
mod token;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use config::{
    AppRegistration, ClientSecret, DEFAULT_CLIENT_ID, DEFAULT_OBJECT_ID, DEFAULT_SUBJECT,
    DEFAULT_TENANT_ID, FederatedCredential, ISSUER_PATH, RegistryFile, TOKEN_EXCHANGE_AUDIENCE,
};
pub use errors::AadError;
pub use faults::{Fault, FaultAction};
pub use federated::{FederatedTokenMinter, FederatedTokenSpec, FederatedTokenWriter};
pub use state::{MockAadStats, TokenRequestRecord};

/// Why the mock could not start (or a key operation failed).
#[derive(Debug, thiserror::Error)]
pub enum MockAadError {
    /// A non-loopback listen address without `allow_non_loopback`.
    #[error(
        "refusing to listen on {0}: mock-aad is not an identity provider; pass --allow-non-loopback to expose it anyway"
    )]
    NonLoopback(SocketAddr),
    /// Plain HTTP asked for on a non-loopback address.
    #[error("plain HTTP is only allowed on a loopback address, not {0}")]
    PlainHttpNotLoopback(SocketAddr),
    /// The listen socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Generating or using a signing key failed.
    #[error("signing key: {0}")]
    Key(String),
    /// Generating the CA or the TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The app registry (flags or config file) is not usable.
    #[error("configuration: {0}")]
    Config(String),
}

/// How to run the mock. `Default` is the zero-config case: HTTPS on `127.0.0.1`, a random port,
/// the default app, the CA in a fresh temporary directory removed at shutdown.
#[derive(Clone, Debug)]
pub struct MockAadConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` (logs a warning).
    pub allow_non_loopback: bool,
    /// Serve plain HTTP instead of HTTPS (loopback only; real SDKs refuse http authorities).
    pub plain_http: bool,
    /// Base URL to advertise instead of `https://{listen address}/` (e.g. behind a port-forward).
    pub public_url: Option<String>,
    /// Extra DNS names or IPs for the server certificate.
    pub tls_names: Vec<String>,
    /// Present the mock as this cloud's Entra ID: its authority host joins the certificate's
    /// names and, unless `public_url` says otherwise, the advertised URL is
    /// `https://{authority host}:{port}/`. Only names: the mock still listens where `listen` says,
    /// so clients reach it through a proxy or a resolver override.
    pub cloud: Option<crate::cloud::Cloud>,
    /// Where to write the CA PEM; `None` = `<temp>/identity-sidecar-mock-aad-<uuid>/ca.pem`.
    pub ca_file: Option<PathBuf>,
    /// Registered apps; the first one is what [`MockAad::tenant_id`] and [`MockAad::client_id`] return.
    pub apps: Vec<AppRegistration>,
    /// Tenants that exist without apps.
    pub extra_tenants: Vec<String>,
    /// Fixed access-token lifetime; `None` = random 60-90 minutes like Entra.
    pub token_lifetime: Option<Duration>,
    /// A fault active from the start.
    pub fault: Option<Fault>,
}

impl Default for MockAadConfig {
    fn default() -> Self {
        MockAadConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            allow_non_loopback: false,
            plain_http: false,
            public_url: None,
            tls_names: Vec::new(),
            cloud: None,
            ca_file: None,
            apps: vec![AppRegistration::default_app()],
            extra_tenants: Vec::new(),
            token_lifetime: None,
            fault: None,
        }
    }
}

/// A running mock. Dropping it stops the server (without waiting); prefer [`MockAad::shutdown`].
pub struct MockAad {
    state: Arc<state::State>,
    local_addr: SocketAddr,
    ca_file: Option<PathBuf>,
    ca_pem: Option<String>,
    /// A temporary directory the mock created for its CA, removed at shutdown.
    owned_dir: Option<PathBuf>,
    shutdown_tx: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the mock: checks the address, binds, makes keys and the CA, writes the CA file, serves.
pub async fn start(cfg: MockAadConfig) -> Result<MockAad, MockAadError> {
    let loopback = cfg.listen.ip().to_canonical().is_loopback();
    if cfg.plain_http && !loopback {
        return Err(MockAadError::PlainHttpNotLoopback(cfg.listen));
    }
    if !loopback {
        if !cfg.allow_non_loopback {
            return Err(MockAadError::NonLoopback(cfg.listen));
        }
        tracing::warn!(
            listen = %cfg.listen,
            "mock-aad is listening beyond loopback: it is NOT an identity provider and issues tokens to anyone"
        );
    }
    if cfg.apps.is_empty() {
        return Err(MockAadError::Config("no app is registered".into()));
    }
    if let Some(url) = &cfg.public_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(MockAadError::Config(format!(
            "public URL '{url}' must start with https:// or http://"
        )));
    }

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| MockAadError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| MockAadError::Bind {
        addr: cfg.listen,
        source,
    })?;

    // RSA key generation dominates start-up: make both keys (and the TLS material) in parallel.
    let token_key = tokio::task::spawn_blocking(keys::SigningKey::generate);
    let issuer_key = tokio::task::spawn_blocking(keys::SigningKey::generate);
    let mut tls_names = cfg.tls_names.clone();
    tls_names.extend(cfg.cloud.map(|c| c.authority_host().to_string()));
    let tls =
        (!cfg.plain_http).then(|| tokio::task::spawn_blocking(move || tls::generate(&tls_names)));
    let joined =
        |e: tokio::task::JoinError| MockAadError::Key(format!("key generation task failed: {e}"));
    let token_key = token_key.await.map_err(joined)??;
    let issuer_key = issuer_key.await.map_err(joined)??;
    let tls = match tls {
        Some(task) => Some(task.await.map_err(joined)??),
        None => None,
    };

    let scheme = if cfg.plain_http { "http" } else { "https" };
    let base_url = match (&cfg.public_url, cfg.cloud) {
        (Some(url), _) => format!("{}/", url.trim_end_matches('/')),
        (None, Some(cloud)) => format!(
            "{scheme}://{}:{}/",
            cloud.authority_host(),
            local_addr.port()
        ),
        (None, None) => format!("{scheme}://{}/", host_for(local_addr)),
    };

    let (mut ca_file, mut owned_dir, mut ca_pem) = (None, None, None);
    if let Some(tls) = &tls {
        let path = match &cfg.ca_file {
            Some(path) => path.clone(),
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "identity-sidecar-mock-aad-{}",
                    uuid::Uuid::new_v4()
                ));
                owned_dir = Some(dir.clone());
                dir.join("ca.pem")
            }
        };
        write_file(&path, tls.ca_pem.as_bytes())?;
        ca_file = Some(path);
        ca_pem = Some(tls.ca_pem.clone());
    }

    let state = Arc::new(state::State::new(
        base_url,
        &cfg.apps,
        &cfg.extra_tenants,
        token_key,
        issuer_key,
        cfg.token_lifetime,
    ));
    state.faults.set(cfg.fault.clone());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.server_config));
    let task = tokio::spawn(server::serve(
        listener,
        acceptor,
        state.clone(),
        shutdown_rx,
    ));
    tracing::info!(authority = %state.base_url, issuer = %state.issuer_url, "mock-aad ready");
    Ok(MockAad {
        state,
        local_addr,
        ca_file,
        ca_pem,
        owned_dir,
        shutdown_tx,
        task: Some(task),
    })
}

/// Host part of the advertised URL: the bound IP, bracketed for IPv6; `localhost` for a wildcard.
fn host_for(addr: SocketAddr) -> String {
    match addr.ip() {
        ip if ip.is_unspecified() => format!("localhost:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
    }
}

/// Writes through a new temporary file renamed over `path`: readers never see half a CA, and a
/// symlink planted at `path` (the default lives under a shared temp dir) is replaced, not followed.
fn write_file(path: &Path, content: &[u8]) -> Result<(), MockAadError> {
    use std::io::Write;
    let io = |source| MockAadError::Io {
        path: path.to_owned(),
        source,
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io)?;
    let tmp = parent.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut file| file.write_all(content))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

impl MockAad {
    /// The authority host, with a trailing slash: `https://127.0.0.1:PORT/` (`AZURE_AUTHORITY_HOST`).
    pub fn authority_url(&self) -> &str {
        &self.state.base_url
    }

    /// The socket the mock listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Tenant of the first registered app.
    pub fn tenant_id(&self) -> &str {
        self.state
            .apps
            .first()
            .map(|a| a.tenant_id.as_str())
            .unwrap_or(DEFAULT_TENANT_ID)
    }

    /// Client id of the first registered app.
    pub fn client_id(&self) -> &str {
        self.state
            .apps
            .first()
            .map(|a| a.client_id.as_str())
            .unwrap_or(DEFAULT_CLIENT_ID)
    }

    /// Object id (`oid`) of the first registered app's tokens.
    pub fn object_id(&self) -> &str {
        self.state
            .apps
            .first()
            .map(|a| a.object_id.as_str())
            .unwrap_or(DEFAULT_OBJECT_ID)
    }

    /// `{authority}{tenant}/oauth2/v2.0/token` for the first app's tenant.
    pub fn token_endpoint(&self) -> String {
        format!(
            "{}{}/oauth2/v2.0/token",
            self.state.base_url,
            self.tenant_id()
        )
    }

    /// `iss` of access tokens for `tenant`: `{authority}{tenant}/v2.0`.
    pub fn token_issuer(&self, tenant: &str) -> String {
        format!("{}{tenant}/v2.0", self.state.base_url)
    }

    /// URL of the Kubernetes-like issuer: `{authority}issuer` (no trailing slash).
    pub fn issuer_url(&self) -> &str {
        &self.state.issuer_url
    }

    /// The CA PEM file clients must trust; `None` when serving plain HTTP.
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The CA certificate, PEM; `None` when serving plain HTTP.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// JWKS of the access-token signing key (as served at `/{tenant}/discovery/v2.0/keys`).
    pub fn jwks(&self) -> serde_json::Value {
        self.state.token_key.jwks()
    }

    /// JWKS of the federated-token issuer (as served at `/issuer/openid/v1/jwks`).
    pub fn issuer_jwks(&self) -> serde_json::Value {
        self.state.issuer_key.jwks()
    }

    /// A minter of federated tokens, usable after the mock is gone (e.g. by a writer task).
    pub fn federated_token_minter(&self) -> FederatedTokenMinter {
        FederatedTokenMinter::new(&self.state.issuer_url, self.state.issuer_key.clone())
    }

    /// A federated token from the mock's issuer for `subject`, valid from now for `lifetime`.
    pub fn mint_federated_token(
        &self,
        subject: &str,
        lifetime: Duration,
    ) -> Result<String, MockAadError> {
        self.federated_token_minter().mint(subject, lifetime)
    }

    /// A federated token exactly as `spec` says (other audience, issued in the past, ...).
    pub fn mint_federated_token_with(
        &self,
        spec: &FederatedTokenSpec,
    ) -> Result<String, MockAadError> {
        self.federated_token_minter().mint_with(spec)
    }

    /// Keeps `DIR/token` fresh in kubelet's layout, rotated at 80% of `lifetime`.
    pub fn federated_token_writer(
        &self,
        dir: impl Into<PathBuf>,
        subject: &str,
        lifetime: Duration,
    ) -> Result<FederatedTokenWriter, MockAadError> {
        FederatedTokenWriter::start(self.federated_token_minter(), dir, subject, lifetime)
    }

    /// Makes the token endpoint fail as `fault` says (replacing any active fault).
    pub fn inject_fault(&self, fault: Fault) {
        self.state.faults.set(Some(fault));
    }

    /// Stops injecting faults.
    pub fn clear_faults(&self) {
        self.state.faults.set(None);
    }

    /// Current counters.
    pub fn stats(&self) -> MockAadStats {
        self.state.counters.snapshot()
    }

    /// The last 256 token requests that reached validation (injected faults answer before it),
    /// oldest first: what clients sent, without secrets or tokens.
    pub fn token_requests(&self) -> Vec<TokenRequestRecord> {
        self.state.token_log()
    }

    /// Stops accepting, lets open requests finish (up to 5 s), removes the temporary CA directory.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.remove_owned_dir();
    }

    fn remove_owned_dir(&mut self) {
        if let Some(dir) = self.owned_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for MockAad {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        self.remove_owned_dir();
    }
}
