//! TLS client trust for the outbound legs (Entra ID, the identity-binding token proxy, `doctor`):
//! the system's CA bundle, `SSL_CERT_FILE` and any extra bundles, on the one crypto provider
//! (ring) the production binaries link.
//!
//! It lives apart from [`super::entra`] so the configuration, the Entra client and the token
//! proxy can all use it without using each other.
use std::path::Path;
use std::sync::Arc;

/// TLS trust: the system's roots plus the PEM bundle in `SSL_CERT_FILE` when it is set, plus
/// `extra` bundles.
pub fn client_config(extra: &[std::path::PathBuf]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for bundle in SYSTEM_BUNDLES {
        if Path::new(bundle).is_file() {
            add_pem_file(&mut roots, Path::new(bundle))?;
            break;
        }
    }
    if let Some(extra) = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
        let n = add_pem_file(&mut roots, Path::new(&extra))?;
        if n == 0 {
            return Err(format!(
                "SSL_CERT_FILE {} holds no certificates",
                Path::new(&extra).display()
            ));
        }
    }
    for file in extra {
        add_pem_file(&mut roots, file)?;
    }
    if roots.is_empty() {
        tracing::warn!(
            "no trusted CA certificates found (no system bundle, no SSL_CERT_FILE): https calls will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn add_pem_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<usize, String> {
    use rustls_pki_types::pem::PemObject as _;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read CA bundle {}: {e}", path.display()))?;
    let mut n = 0;
    for c in certs {
        let c = c.map_err(|e| format!("CA bundle {} is not valid PEM: {e}", path.display()))?;
        if roots.add(c).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}
