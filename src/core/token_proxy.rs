//! AKS identity bindings: the Entra ID token request sent through the cluster's token proxy
//! (`AZURE_KUBERNETES_TOKEN_PROXY`), with its own TLS name (`AZURE_KUBERNETES_SNI_NAME`) and CA
//! (`AZURE_KUBERNETES_CA_FILE` or `AZURE_KUBERNETES_CA_DATA`), exactly as azure-identity 1.27
//! (`_internal/token_binding_transport_mixin.py`, `_update_request_url`) and azidentity
//! (`internal/customtokenproxy`) do it: docs/protocols.md#token-proxy.
//!
//! - **URL**: the proxy's scheme, host and port replace the authority's; the proxy's path, with its
//!   trailing `/` trimmed, is joined before the request's path; the query is kept ([`rewrite`]).
//! - **TLS**: SNI is the SNI name when set, else the proxy's host; the certificate must be valid
//!   for that name and signed by the given CA, and **only** that CA is trusted (without a CA
//!   variable, the system roots, as the SDKs do).
//! - **SNI different from the URL's host**: reqwest sends the URL's host as SNI and checks the
//!   certificate against it, so the client connects to `https://<SNI name>:<proxy port>/...`, a
//!   resolver maps exactly that name to the proxy host's addresses, and the `Host` header is set
//!   to the proxy URL's host (what Python's `requests` and Go send). This keeps reqwest's pooled,
//!   verified rustls connections; no custom connector is needed.
//! - **CA rotation**: the CA file is re-read before each call to the proxy (at most once a
//!   second); new content rebuilds the client; an empty or unparsable file mid-rotation keeps the
//!   previous CA (the mixin's `_load_ca_file_to_data` does the same for an empty file).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Url;

/// Where the CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// `AZURE_KUBERNETES_CA_FILE`, re-read when it changes.
    File(PathBuf),
    /// `AZURE_KUBERNETES_CA_DATA`, PEM.
    Data(String),
}

/// The validated token-proxy settings.
#[derive(Debug, Clone)]
pub struct TokenProxyConfig {
    /// `https://host[:port][/path]`, without userinfo, query or fragment.
    pub url: Url,
    /// `AZURE_KUBERNETES_SNI_NAME`.
    pub sni: Option<String>,
    pub ca: Option<CaSource>,
}

impl TokenProxyConfig {
    /// The name TLS uses: the SNI name, else the proxy's host.
    pub fn tls_name(&self) -> String {
        self.sni
            .clone()
            .unwrap_or_else(|| self.url.host_str().unwrap_or_default().to_string())
    }

    /// The proxy's port (443 by default).
    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(443)
    }
}

/// The token-proxy URL must be `https` without userinfo, query or fragment (the mixin's
/// `_validate_url`, azidentity's `parseAndValidateCustomTokenProxy`).
pub fn validate_url(text: &str) -> Result<Url, String> {
    let t = text.trim();
    let url = Url::parse(t).map_err(|e| format!("{t:?} is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!("{t:?} must use https://"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{t:?} must not contain a user name or password"));
    }
    if url.query().is_some() {
        return Err(format!("{t:?} must not contain a query"));
    }
    if url.fragment().is_some() {
        return Err(format!("{t:?} must not contain a fragment"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{t:?} has no host"));
    }
    Ok(url)
}

/// The request URL sent to the token proxy instead of `request`: scheme, host and port from
/// `proxy`, then `proxy`'s path without its trailing `/`, then `/` and `request`'s path without
/// its leading `/`, then `request`'s query (token_binding_transport_mixin.py
/// `_update_request_url`).
pub fn rewrite(proxy: &Url, request: &Url) -> Url {
    let mut out = proxy.clone();
    let path = format!(
        "{}/{}",
        proxy.path().trim_end_matches('/'),
        request.path().trim_start_matches('/')
    );
    out.set_path(&path);
    out.set_query(request.query());
    out.set_fragment(None);
    out
}

/// Builds the client trusting a CA bundle (empty: the system roots).
type ClientFor = Arc<dyn Fn(&[u8]) -> Result<reqwest::Client, String> + Send + Sync>;

/// The client of the token-proxy leg: the URL to call, the `Host` header, and a reqwest client
/// trusting only the proxy's CA, rebuilt when the CA file changes.
pub struct TokenProxyLeg {
    cfg: TokenProxyConfig,
    /// The rewritten token URL, with the SNI name as host when it differs from the proxy's.
    pub connect_url: Url,
    /// The proxy URL's `host[:port]`, sent as `Host` when `connect_url`'s host is the SNI name.
    pub host_header: Option<String>,
    builder: ClientFor,
    state: Mutex<CaState>,
}

struct CaState {
    client: reqwest::Client,
    pem: Vec<u8>,
    checked: Instant,
}

impl TokenProxyLeg {
    /// `token_url` is the authority's token URL the proxy stands in for; `client` builds a client
    /// for a CA bundle (empty: the system roots) with the egress proxy and timeouts applied.
    pub fn new(
        cfg: &TokenProxyConfig,
        token_url: &Url,
        client: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder + Send + Sync + 'static,
    ) -> Result<TokenProxyLeg, String> {
        let proxied = rewrite(&cfg.url, token_url);
        let proxy_host = cfg.url.host_str().unwrap_or_default().to_string();
        let tls_name = cfg.tls_name();
        let (connect_url, host_header) = if tls_name.eq_ignore_ascii_case(&proxy_host) {
            (proxied, None)
        } else {
            let mut u = proxied;
            u.set_host(Some(&tls_name)).map_err(|e| {
                format!("AZURE_KUBERNETES_SNI_NAME {tls_name:?} is not a host name: {e}")
            })?;
            let host = match cfg.url.port() {
                Some(p) => format!("{}:{p}", host_with_brackets(&cfg.url)),
                None => host_with_brackets(&cfg.url),
            };
            (u, Some(host))
        };
        let pinned = host_header.as_ref().map(|_| PinnedName {
            name: tls_name.to_ascii_lowercase(),
            proxy_host: proxy_host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: cfg.port(),
        });
        let builder: ClientFor = Arc::new(move |pem: &[u8]| {
            let tls = if pem.is_empty() {
                super::tls::client_config(&[])?
            } else {
                tls_for_ca(pem)?
            };
            let mut b = client(reqwest::Client::builder()).use_preconfigured_tls(tls);
            if let Some(p) = &pinned {
                b = b.dns_resolver(Arc::new(p.clone()));
            }
            b.build()
                .map_err(|e| format!("cannot create the token-proxy client: {e}"))
        });
        let pem = match &cfg.ca {
            None => Vec::new(),
            Some(CaSource::Data(d)) => d.as_bytes().to_vec(),
            Some(CaSource::File(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!(
                        "AZURE_KUBERNETES_CA_FILE {}: cannot read: {e}",
                        path.display()
                    )
                })?;
                if pem.iter().all(u8::is_ascii_whitespace) {
                    return Err(format!(
                        "AZURE_KUBERNETES_CA_FILE {} is empty: no CA to trust for the token proxy",
                        path.display()
                    ));
                }
                pem
            }
        };
        let client = builder(&pem).map_err(|e| format!("token proxy CA: {e}"))?;
        Ok(TokenProxyLeg {
            cfg: cfg.clone(),
            connect_url,
            host_header,
            builder,
            state: Mutex::new(CaState {
                client,
                pem,
                checked: Instant::now(),
            }),
        })
    }

    /// The proxy URL, for logs and `/readyz`.
    pub fn url(&self) -> &Url {
        &self.cfg.url
    }

    /// The client to use now: first re-reads the CA file when a second has passed since the last
    /// look, and swaps in a client trusting its new content (an empty or broken file keeps the
    /// previous CA).
    pub fn client(&self) -> reqwest::Client {
        let Some(CaSource::File(path)) = &self.cfg.ca else {
            return self.lock().client.clone();
        };
        {
            let st = self.lock();
            if st.checked.elapsed() < Duration::from_secs(1) {
                return st.client.clone();
            }
        }
        let read = std::fs::read(path);
        let mut st = self.lock();
        st.checked = Instant::now();
        match read {
            Ok(pem) if pem.iter().all(u8::is_ascii_whitespace) => {
                tracing::info!(
                    ca_file = %path.display(),
                    "the token proxy's CA file is empty (rotation in progress?): keeping the previous CA"
                );
            }
            Ok(pem) if pem != st.pem => match (self.builder)(&pem) {
                Ok(client) => {
                    tracing::info!(ca_file = %path.display(), "the token proxy's CA changed: now trusting the new one");
                    st.client = client;
                    st.pem = pem;
                }
                Err(e) => tracing::warn!(
                    ca_file = %path.display(),
                    "the token proxy's CA file changed but is not usable, keeping the previous CA: {e}"
                ),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(
                ca_file = %path.display(),
                "cannot read the token proxy's CA file, keeping the previous CA: {e}"
            ),
        }
        st.client.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CaState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn host_with_brackets(url: &Url) -> String {
    match url.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        _ => url.host_str().unwrap_or_default().to_string(),
    }
}

/// Resolves the SNI name to the proxy host's addresses; other names as usual.
#[derive(Clone)]
struct PinnedName {
    name: String,
    proxy_host: String,
    port: u16,
}

impl reqwest::dns::Resolve for PinnedName {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = if name.as_str().eq_ignore_ascii_case(&self.name) {
            self.proxy_host.clone()
        } else {
            name.as_str().to_string()
        };
        let port = self.port;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect();
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// rustls trusting only the certificates of `pem`.
pub fn tls_for_ca(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no certificate".to_string());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn rewrite_matches_the_sdks() {
        let token = u("https://login.microsoftonline.com/tenant/oauth2/v2.0/token");
        assert_eq!(
            rewrite(&u("https://proxy.local:8443/"), &token).as_str(),
            "https://proxy.local:8443/tenant/oauth2/v2.0/token"
        );
        assert_eq!(
            rewrite(&u("https://10.0.0.1/base/path/"), &token).as_str(),
            "https://10.0.0.1/base/path/tenant/oauth2/v2.0/token"
        );
        assert_eq!(
            rewrite(
                &u("https://p/base"),
                &u("https://login.example/t/x?client-request-id=1")
            )
            .as_str(),
            "https://p/base/t/x?client-request-id=1"
        );
    }

    #[test]
    fn proxy_urls_are_https_without_userinfo_query_or_fragment() {
        assert!(validate_url("https://proxy.local:8443/base").is_ok());
        for bad in [
            "http://proxy.local/",
            "https://u:p@proxy.local/",
            "https://u@proxy.local/",
            "https://proxy.local/?a=b",
            "https://proxy.local/#f",
            "proxy.local",
        ] {
            assert!(validate_url(bad).is_err(), "{bad}");
        }
    }
}
