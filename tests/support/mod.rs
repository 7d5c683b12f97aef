//! Fixtures shared by the integration tests: a scriptable fake Entra ID, federated-token files,
//! and a sidecar started in-process or as a real process. What sets up what:
//!
//! - here: test identities, federated tokens and kubelet's token layout, [`Sidecar`] (in this
//!   process) and [`Process`] (the binary, its output collected);
//! - `sidecar_on_fake_entra`: the usual start, a fake Entra ID and a sidecar using it;
//! - `sidecar_process`: `serve` as a process configured like a pod, one-shot commands run to end;
//! - `request`: requests to a sidecar and how answers are read; `fake_entra`, `fake_http`,
//!   `connect_proxy`, `token_proxy`: the loopback fakes; `mock_entra`: the mock Entra ID's tokens;
//! - `sdk`, `mock_sdk`: the real SDKs as processes; `system`: the skip rule.
//!
//! Included on their own with `#[path]` (and by the webhook benchmark): `fake_kube` (a fake
//! Kubernetes API), `webhook_proc` (the webhook as a process), `checkers` (the Python checkers),
//! `mock_client` (requests to the mock Entra ID).
#![allow(dead_code)]

pub mod connect_proxy;
pub mod fake_entra;
pub mod fake_http;
#[cfg(feature = "mock")]
pub mod mock_entra;
pub mod mock_sdk;
#[cfg(feature = "mock")]
pub mod mock_serve;
pub mod request;
pub mod sdk;
pub mod sidecar_on_fake_entra;
pub mod sidecar_process;
pub mod system;
pub mod token_proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use identity_sidecar::cmd::flags;
use identity_sidecar::cmd::serve::{self, ServeArgs};
use identity_sidecar::config::ServeConfig;
use identity_sidecar::core::secret::Secret;
use identity_sidecar::server::Running;

pub const CLIENT_ID: &str = "11111111-1111-1111-1111-111111111111";
pub const OTHER_CLIENT_ID: &str = "22222222-2222-2222-2222-222222222222";
pub const TENANT_ID: &str = "44444444-4444-4444-4444-444444444444";
pub const IDENTITY_HEADER: &str = "s3cr3t-header-value";

/// The fields of IMDS's token answer (also the Cloud Shell form's), sorted.
pub const IMDS_ANSWER_KEYS: [&str; 9] = [
    "access_token",
    "client_id",
    "expires_in",
    "expires_on",
    "ext_expires_in",
    "not_before",
    "refresh_token",
    "resource",
    "token_type",
];

/// The keys of a JSON object, sorted.
pub fn sorted_keys(v: &serde_json::Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

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

/// A GUID flag value.
pub fn guid(s: &str) -> uuid::Uuid {
    flags::guid(s).expect("test GUID")
}

/// Arguments for an in-process sidecar against `authority`.
pub fn args(authority: &str, token_file: &Path) -> ServeArgs {
    ServeArgs {
        client_id: Some(guid(CLIENT_ID)),
        tenant_id: Some(TENANT_ID.into()),
        token_file: Some(token_file.to_path_buf()),
        authority_host: Some(flags::authority(authority).expect("test authority")),
        listen: vec![Some("127.0.0.1:0".parse().expect("addr"))],
        identity_header: Some(Secret::new(IDENTITY_HEADER)),
        entra: identity_sidecar::cmd::flags::EntraLimits {
            entra_timeout: Some(Duration::from_secs(2)),
            entra_budget: Some(Duration::from_secs(4)),
        },
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
        Sidecar::start_config(&cfg).await
    }

    /// With a configuration the test finished by hand (settings no flag reaches).
    pub async fn start_config(cfg: &ServeConfig) -> Sidecar {
        let running = serve::start(cfg).await.expect("sidecar starts");
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

    /// The admin listener's address (`admin_listen` in the arguments).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(Running::admin_addr)
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

/// The sidecar as a real process, with its stderr collected.
pub struct Process {
    pub child: std::process::Child,
    pub logs: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Starts `identity-sidecar ARGS` with a clean Azure environment plus `envs`.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Process {
        use std::io::Read as _;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_identity-sidecar"));
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("AZURE_")
                || k.starts_with("IDENTITY_")
                || k.starts_with("MSI_")
                || k == "RUST_LOG"
            {
                cmd.env_remove(k);
            }
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn identity-sidecar");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        let pump = |mut from: Box<dyn std::io::Read + Send>,
                    sink: std::sync::Arc<std::sync::Mutex<String>>| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => sink
                            .lock()
                            .expect("lock")
                            .push_str(&String::from_utf8_lossy(&buf[..n])),
                    }
                }
            })
        };
        let out_reader = pump(Box::new(stdout), std::sync::Arc::clone(&logs));
        let err_reader = pump(Box::new(stderr), std::sync::Arc::clone(&logs));
        let reader = std::thread::spawn(move || {
            let _ = out_reader.join();
            let _ = err_reader.join();
        });
        Process {
            child,
            logs,
            reader: Some(reader),
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("lock").clone()
    }

    /// Waits for the start-up line and returns the first address it names.
    pub fn wait_listening(&self) -> SocketAddr {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < end {
            let logs = self.logs();
            let found = logs
                .find("listen=")
                .map(|i| i + 7)
                .or_else(|| logs.find("\"listen\":\"").map(|i| i + 10));
            if let Some(i) = found {
                let rest = &logs[i..];
                let addr: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != ',' && *c != '"')
                    .collect();
                if let Ok(a) = addr.parse() {
                    return a;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sidecar did not start; logs:\n{}", self.logs());
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for exit and returns the status code and all output.
    pub fn wait(mut self, timeout: Duration) -> (Option<i32>, String) {
        let end = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return (status.code(), self.logs());
            }
            if std::time::Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "process did not exit in {timeout:?}; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
