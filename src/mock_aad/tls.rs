//! TLS for the mock: a throw-away CA and a server certificate, both made at start with `rcgen`.
//!
//! Real SDKs refuse `http` authorities, so the mock speaks HTTPS by default. The CA (ECDSA P-256,
//! valid 30 days, regenerated every start) is written to a PEM file that clients are pointed at:
//! `REQUESTS_CA_BUNDLE` (Python), `NODE_EXTRA_CA_CERTS` (Node), `SSL_CERT_FILE` (Go, the sidecar).
//! The server certificate names `localhost`, `127.0.0.1`, `::1` and any extra names asked for.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::MockAadError;
use crate::ca::Authority;

/// The generated CA and the rustls configuration serving the leaf it signed.
pub(crate) struct TlsMaterial {
    /// The CA certificate, PEM; what clients must trust.
    pub ca_pem: String,
    /// Server configuration (HTTP/1.1 only) presenting the leaf and the CA.
    pub server_config: Arc<rustls::ServerConfig>,
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> MockAadError {
    MockAadError::Tls(format!("{what}: {e}"))
}

/// Makes a CA and a server certificate for `localhost`, `127.0.0.1`, `::1` and `extra_names`.
pub(crate) fn generate(extra_names: &[String]) -> Result<TlsMaterial, MockAadError> {
    let ca = Authority::new(
        "identity-sidecar mock-aad test CA (not an identity provider)",
        30,
    )
    .map_err(MockAadError::Tls)?;
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let leaf = ca
        .sign_server(names, "localhost", 30)
        .map_err(MockAadError::Tls)?;
    let (ca_cert, leaf_key, leaf) = (ca.cert(), leaf.key, leaf.cert);
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS versions", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls_err("TLS server configuration", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(config),
    })
}
