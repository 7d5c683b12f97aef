//! Fixtures shared by the integration tests: a scriptable fake Entra ID, federated-token files,
//! and a sidecar started in-process or as a real process.
#![allow(dead_code)]

pub mod fake_entra;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use identity_sidecar::config::ServeArgs;
use identity_sidecar::server::{self, Running};

pub const CLIENT_ID: &str = "11111111-1111-1111-1111-111111111111";
pub const OTHER_CLIENT_ID: &str = "22222222-2222-2222-2222-222222222222";
pub const TENANT_ID: &str = "44444444-4444-4444-4444-444444444444";
pub const IDENTITY_HEADER: &str = "s3cr3t-header-value";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An unsigned JWT that looks like a kubelet projected token, expiring in `ttl` seconds.
pub fn federated_jwt(sub: &str, ttl: i64) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = now() as i64 + ttl;
    let claims = format!(
        r#"{{"aud":["api://AzureADTokenExchange"],"exp":{exp},"iat":{},"iss":"https://oidc.example/issuer","jti":"{}","sub":"{sub}"}}"#,
        now(),
        uuid::Uuid::new_v4()
    );
    format!(
        "{}.{}.c2lnbmF0dXJl",
        e.encode(r#"{"alg":"RS256","kid":"k1"}"#),
        e.encode(claims)
    )
}

/// Writes a token file the way kubelet's atomic writer does: `DIR/..TS/token`, `DIR/..data` ->
/// `..TS`, `DIR/token` -> `..data/token`; a second call swaps `..data` atomically.
pub fn kubelet_write(dir: &Path, token: &str) {
    let ts = format!("..{}", uuid::Uuid::new_v4().simple());
    let data_dir = dir.join(&ts);
    std::fs::create_dir_all(&data_dir).expect("mkdir");
    std::fs::write(data_dir.join("token"), token).expect("write token");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp).expect("symlink tmp");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    let link = dir.join("token");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/token", &link).expect("symlink token");
    }
}

/// Arguments for an in-process sidecar against `authority`.
pub fn args(authority: &str, token_file: &Path) -> ServeArgs {
    ServeArgs {
        client_id: Some(CLIENT_ID.into()),
        tenant_id: Some(TENANT_ID.into()),
        token_file: Some(token_file.to_path_buf()),
        authority_host: Some(authority.into()),
        listen: vec!["127.0.0.1:0".into()],
        identity_header: Some(IDENTITY_HEADER.into()),
        entra_timeout: Some("2s".into()),
        entra_budget: Some("4s".into()),
        ..Default::default()
    }
}

/// A sidecar running in this process.
pub struct Sidecar {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

impl Sidecar {
    pub async fn start(args: ServeArgs) -> Sidecar {
        let cfg = args.validate().expect("valid test configuration");
        let running = server::start(cfg).await.expect("sidecar starts");
        let addr = running.local_addrs()[0];
        Sidecar {
            running: Some(running),
            addr,
            http: client(),
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub async fn imds(&self, query: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/metadata/identity/oauth2/token?{query}")))
            .header("Metadata", "true")
            .send()
            .await
            .expect("request")
    }

    pub async fn app_service(&self, query: &str, header: (&str, &str)) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/msi/token?{query}")))
            .header(header.0, header.1)
            .send()
            .await
            .expect("request")
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A temp dir holding a fresh federated token at `dir/token`.
pub fn token_dir(sub: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{}\n", federated_jwt(sub, 3600))).expect("write token");
    (dir, path)
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
