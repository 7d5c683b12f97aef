//! The settings `serve` runs on, validated: what the flags of [`crate::cmd::serve`] become once
//! every value has been parsed and every rule between them checked. The rest of the program reads
//! only this, never a flag.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use crate::core::egress::EgressProxy;
use crate::core::entra::Outbound;
use crate::core::secret::Secret;
use crate::core::token_proxy::TokenProxyConfig;
use crate::protocol::user_agent::ExpiresOnMode;
use crate::telemetry::logging::LogFormat;

pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
pub const DEFAULT_PORT: u16 = 8000;
/// The admin listener's port in the manifests and the webhook's injection (`--admin-listen
/// 0.0.0.0:8491`): metrics and probes on the pod IP. Chosen outside every range a pod's other
/// containers are likely to hold: app frameworks' 3000-3999, 5000-5999 and 8000-8099, the
/// Prometheus exporters' 9100-9999, Istio's 15000-15090, Linkerd's 4140-4191, Dapr's 3500/3501/
/// 9090/50001, Consul's 8500-8502/19000-21255, Envoy's 9901, OpenTelemetry's 4317/4318/8888/8889/
/// 13133, the EKS agent's 2703/2705 and gke-metadata-server's 16321/16322 (docs/operations.md).
pub const DEFAULT_ADMIN_PORT: u16 = 8491;
pub const DEFAULT_WORKER_THREADS: usize = 1;

/// The validated configuration `serve` runs on.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Lower-cased; also the first of `policy.allowed_client_ids`.
    pub client_id: String,
    pub tenant_id: String,
    pub token_file: PathBuf,
    pub authority: Url,
    pub listen: Listen,
    /// `--admin-listen`: where `/metrics`, `/healthz` and `/readyz` are also served, and nothing
    /// else; `None`: no admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// `--audit-log`: one JSON audit line per token request.
    pub audit_log: bool,
    /// What requests may ask for; the protocol adapters read only this.
    pub policy: Policy,
    pub log_format: LogFormat,
    /// `--access-log`: a line per token request at info.
    pub access_log: bool,
    /// Every how long the token-request summary is logged; `None`: never.
    pub log_summary_interval: Option<Duration>,
    pub imds_passthrough: bool,
    pub imds_address: SocketAddr,
    pub entra_timeout: Duration,
    pub entra_budget: Duration,
    pub max_cached_tokens: usize,
    pub shutdown_grace: Duration,
    pub worker_threads: usize,
    /// PEM bundles trusted for Entra ID besides the system roots and `SSL_CERT_FILE` (used by
    /// `dev` for the mock's CA; not a flag).
    pub extra_ca_files: Vec<PathBuf>,
    /// The egress proxy of the outbound legs (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`).
    pub egress: EgressProxy,
    /// AKS identity bindings: the token proxy the token request goes to instead of the authority.
    pub token_proxy: Option<TokenProxyConfig>,
}

impl ServeConfig {
    /// How the token request leaves the pod: extra CAs, egress proxy, identity-binding proxy.
    pub fn outbound(&self) -> Outbound<'_> {
        Outbound {
            extra_ca_files: &self.extra_ca_files,
            egress: &self.egress,
            token_proxy: self.token_proxy.as_ref(),
        }
    }
}

/// Where to listen.
#[derive(Debug, Clone)]
pub struct Listen {
    pub addrs: Vec<SocketAddr>,
    /// True when `addrs` came from the default, so a missing IPv6 loopback is not an error.
    pub is_default: bool,
}

/// The rules a token request is checked against, before any call to Entra ID, and the one
/// choice of answer shape that is a setting.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Lower-cased client ids a request may select; the first is the default `client_id`.
    pub allowed_client_ids: Vec<String>,
    /// Resources tokens may be issued for; empty: any.
    pub allowed_resources: Vec<ResourceRule>,
    /// The App Service secret; `None`: the App Service endpoints refuse every request.
    pub identity_header: Option<Secret>,
    /// `expires_on` of 2017-09-01 answers (`--msi-2017-expires-on`;
    /// docs/protocols.md#app-service-2017-09-01-expires_on-by-client).
    pub msi_2017_expires_on: ExpiresOnMode,
}

/// One `--allowed-resources` entry: an exact resource, or a prefix when written with a final `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceRule {
    Exact(String),
    Prefix(String),
}

impl ResourceRule {
    pub fn matches(&self, resource: &str) -> bool {
        match self {
            ResourceRule::Exact(r) => r == resource,
            ResourceRule::Prefix(p) => resource.starts_with(p.as_str()),
        }
    }
}

impl std::str::FromStr for ResourceRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.strip_suffix('*') {
            Some("") => Err("a bare `*` allows everything; leave the setting out instead".into()),
            Some(p) => Ok(ResourceRule::Prefix(p.to_string())),
            None => Ok(ResourceRule::Exact(s.to_string())),
        }
    }
}

impl std::fmt::Display for ResourceRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResourceRule::Exact(r) => f.write_str(r),
            ResourceRule::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_rules_match_exactly_or_by_prefix() {
        let exact: ResourceRule = "https://vault.azure.net".parse().expect("rule");
        let prefix: ResourceRule = "https://storage.*".parse().expect("rule");
        assert!(exact.matches("https://vault.azure.net"));
        assert!(!exact.matches("https://vault.azure.net/"));
        assert!(prefix.matches("https://storage.azure.com/"));
        assert!("*".parse::<ResourceRule>().is_err());
    }
}
