//! A stand-in for the AKS identity-binding token proxy on loopback: HTTPS with its own CA
//! (rcgen), a certificate only for its SNI name, a handshake refused for any other SNI, and every
//! request recorded (request line, `Host`, SNI) and forwarded to an upstream Entra ID (the mock)
//! with the proxy's base path removed. Its CA can be rotated while it runs.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// One request the proxy forwarded.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `POST /base/TENANT/oauth2/v2.0/token HTTP/1.1`.
    pub line: String,
    pub host: String,
    pub sni: String,
}

#[derive(Debug)]
struct Resolver {
    sni: String,
    key: Mutex<Arc<CertifiedKey>>,
    refused: Mutex<Vec<Option<String>>>,
    last_sni: Mutex<String>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let asked = hello.server_name().map(str::to_owned);
        if asked
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(&self.sni))
        {
            *self.last_sni.lock().expect("lock") = self.sni.clone();
            return Some(Arc::clone(&self.key.lock().expect("lock")));
        }
        self.refused.lock().expect("lock").push(asked);
        None
    }
}

pub struct TokenProxy {
    pub addr: SocketAddr,
    pub sni: String,
    pub base_path: String,
    ca_pem: Mutex<String>,
    resolver: Arc<Resolver>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A CA and a leaf for `name` it signed: (CA PEM, certified key).
fn issue(name: &str) -> (String, Arc<CertifiedKey>) {
    let now = time::OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("test token proxy CA {}", uuid::Uuid::new_v4()),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(1);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec![name.to_string()]).expect("leaf params");
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(1);
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf cert");
    let provider = rustls::crypto::ring::default_provider();
    let key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            leaf_key.serialize_der(),
        )))
        .expect("signing key");
    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone()];
    (ca_cert.pem(), Arc::new(CertifiedKey::new(chain, key)))
}

impl TokenProxy {
    /// Serves `https://127.0.0.1:PORT{base_path}` for `sni` only, forwarding to `upstream`
    /// (an authority URL ending in `/`) trusting `upstream_ca_pem`.
    pub async fn start(
        sni: &str,
        base_path: &str,
        upstream: &str,
        upstream_ca_pem: &str,
    ) -> TokenProxy {
        let (ca_pem, key) = issue(sni);
        let resolver = Arc::new(Resolver {
            sni: sni.to_string(),
            key: Mutex::new(key),
            refused: Mutex::new(Vec::new()),
            last_sni: Mutex::new(String::new()),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let forward = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([
                reqwest::Certificate::from_pem(upstream_ca_pem.as_bytes()).expect("CA")
            ])
            .build()
            .expect("client");
        let base = base_path.trim_end_matches('/').to_string();
        let upstream = upstream.to_string();
        let (log, res) = (Arc::clone(&seen), Arc::clone(&resolver));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, log, res) = (acceptor.clone(), Arc::clone(&log), Arc::clone(&res));
                let (forward, base, upstream) = (forward.clone(), base.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = res.last_sni.lock().expect("lock").clone();
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (log, forward, base, upstream, sni) = (
                            Arc::clone(&log),
                            forward.clone(),
                            base.clone(),
                            upstream.clone(),
                            sni.clone(),
                        );
                        async move {
                            Ok::<_, Infallible>(
                                handle(req, &log, &forward, &base, &upstream, &sni).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TokenProxy {
            addr,
            sni: sni.to_string(),
            base_path: base_path.to_string(),
            ca_pem: Mutex::new(ca_pem),
            resolver,
            seen,
            task,
        }
    }

    /// `https://127.0.0.1:PORT{base_path}`: the value of `AZURE_KUBERNETES_TOKEN_PROXY`.
    pub fn url(&self) -> String {
        format!("https://{}{}", self.addr, self.base_path)
    }

    /// The CA the proxy's current certificate chains to.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.lock().expect("lock").clone()
    }

    /// A new CA and certificate from now on; returns the new CA.
    pub fn rotate(&self) -> String {
        let (ca, key) = issue(&self.sni);
        *self.resolver.key.lock().expect("lock") = key;
        *self.ca_pem.lock().expect("lock") = ca.clone();
        ca
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// SNI names whose handshake was refused (`None`: no SNI sent).
    pub fn refused(&self) -> Vec<Option<String>> {
        self.resolver.refused.lock().expect("lock").clone()
    }
}

impl Drop for TokenProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    log: &Mutex<Vec<Seen>>,
    forward: &reqwest::Client,
    base: &str,
    upstream: &str,
    sni: &str,
) -> Response<Full<Bytes>> {
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let line = format!("{} {} {:?}", req.method(), path_q, req.version());
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let content_type = req.headers().get("content-type").cloned();
    log.lock().expect("lock").push(Seen {
        line,
        host,
        sni: sni.to_string(),
    });
    let method = req.method().clone();
    let body = super::fake_http::read_body(req).await;
    let rest = path_q
        .strip_prefix(base)
        .unwrap_or(&path_q)
        .trim_start_matches('/');
    let mut out = forward
        .request(method, format!("{upstream}{rest}"))
        .body(body);
    if let Some(ct) = content_type {
        out = out.header("content-type", ct);
    }
    match out.send().await {
        Ok(r) => {
            let status = r.status();
            let ct = r.headers().get("content-type").cloned();
            let bytes = r.bytes().await.unwrap_or_default();
            let mut resp = Response::new(Full::new(bytes));
            *resp.status_mut() = status;
            if let Some(ct) = ct {
                resp.headers_mut().insert("content-type", ct);
            }
            resp
        }
        Err(e) => {
            let mut resp = Response::new(Full::new(Bytes::from(format!("upstream failed: {e}"))));
            *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            resp
        }
    }
}
