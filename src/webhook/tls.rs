//! The serving certificate: loaded from PEM files, swapped in place when the files change (as
//! cert-manager rotates the Secret), and made by the `certs` subcommand for clusters without
//! cert-manager.
//!
//! Rotation without failed requests: the rustls configuration never changes; its certificate
//! resolver hands each new handshake whatever pair is current, and the pair is swapped atomically
//! (`arc-swap`). A pair is only swapped in once the key is seen to match the certificate, so a
//! read in the middle of kubelet's update of the Secret volume (new certificate, old key) keeps
//! the old pair until the next check. Established connections keep their session.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::Authority;

/// How often the files are compared with what is loaded.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Serves the current certificate to every handshake; see the module comment.
pub struct Reloading {
    current: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The file contents behind `current`, to notice a change cheaply.
    loaded: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What happened at a check.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Swapped,
    /// The files changed but do not hold a usable pair (yet); the old pair stays.
    Kept(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a certificate chain and its key, checking that they belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate file is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("key file holds no PEM private key: {e}"))?;
    let ck = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("certificate and key do not form a pair: {e}"))?;
    Ok(ck)
}

impl Reloading {
    /// Loads the pair once; an unreadable or mismatched pair is an error at start.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Reloading>, String> {
        let (cert, key) = read_pair(cert_file, key_file)?;
        let ck = certified_key(&cert, &key)
            .map_err(|e| format!("{} / {}: {e}", cert_file.display(), key_file.display()))?;
        Ok(Arc::new(Reloading {
            current: ArcSwap::from_pointee(ck),
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            loaded: std::sync::Mutex::new((cert, key)),
        }))
    }

    /// Compares the files with the loaded pair and swaps in a changed, valid pair.
    pub fn check(&self) -> Reload {
        let (cert, key) = match read_pair(&self.cert_file, &self.key_file) {
            Ok(p) => p,
            Err(e) => return Reload::Kept(e),
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.0 == cert && loaded.1 == key {
            return Reload::Unchanged;
        }
        match certified_key(&cert, &key) {
            Ok(ck) => {
                self.current.store(Arc::new(ck));
                *loaded = (cert, key);
                Reload::Swapped
            }
            Err(e) => Reload::Kept(e),
        }
    }

    /// `notAfter` (Unix time) of the certificate served now.
    pub fn not_after(&self) -> Option<i64> {
        let current = self.current.load();
        super::expiry::not_after(current.cert.first()?)
    }

    /// The rustls server configuration (HTTP/1.1) that serves through this resolver.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let c = std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let k = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    Ok((c, k))
}

/// A CA and a serving certificate it signed, all PEM.
pub struct Generated {
    pub ca_cert: String,
    pub cert: String,
    pub key: String,
}

/// Makes a CA (ECDSA P-256) and a serving certificate for `dns_names`, valid for `days`.
pub fn generate(dns_names: &[String], days: i64) -> Result<Generated, String> {
    let ca = Authority::new("identity-sidecar webhook CA", days)?;
    let common_name = dns_names.first().cloned().unwrap_or_default();
    let leaf = ca.sign_server(dns_names.to_vec(), &common_name, days)?;
    let (ca_cert, cert, key) = (ca.cert(), leaf.cert, leaf.key);
    Ok(Generated {
        ca_cert: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_only_a_matching_pair() {
        let dir = tempfile::tempdir().expect("tmp");
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let a = generate(&["a.example".into()], 1).expect("a");
        let b = generate(&["b.example".into()], 1).expect("b");
        std::fs::write(&c, &a.cert).expect("w");
        std::fs::write(&k, &a.key).expect("w");
        let r = Reloading::load(&c, &k).expect("load");
        assert_eq!(r.check(), Reload::Unchanged);
        // Half-way through a rotation: new certificate, old key.
        std::fs::write(&c, &b.cert).expect("w");
        assert!(matches!(r.check(), Reload::Kept(_)));
        std::fs::write(&k, &b.key).expect("w");
        assert_eq!(r.check(), Reload::Swapped);
        assert_eq!(r.check(), Reload::Unchanged);
    }
}
