//! Egress through an HTTP proxy: the Entra ID leg goes through `HTTPS_PROXY` with CONNECT (basic
//! auth from the proxy URL, 407 without it), `NO_PROXY` sends it direct, and a proxy that is down
//! or refuses gives the app a 503 with Retry-After at once, with a log line naming the proxy
//! (host:port, never its credentials) and what it answered.
//!
//! Entra ID here is the mock presenting itself as the US Government cloud
//! (`login.microsoftonline.us`, its name in the certificate); the sidecar runs on
//! `--cloud AzureUSGovernment` and only the test proxy, which tunnels every CONNECT to the mock,
//! can reach that name.
mod support;

use std::time::{Duration, Instant};

use identity_sidecar::cloud::Cloud;
use identity_sidecar::core::egress::EgressProxy;
use identity_sidecar::mock_aad::{self, MockAad, MockAadConfig};
use support::connect_proxy::ConnectProxy;
use support::mock_entra::minted_token_file;
use support::request::assert_status;
use support::{Process, guid};

const RESOURCE: &str = "https://management.azure.com";

struct Setup {
    mock: MockAad,
    _dir: tempfile::TempDir,
    token_file: std::path::PathBuf,
}

async fn setup() -> Setup {
    let mock = mock_aad::start(MockAadConfig {
        cloud: Some(Cloud::UsGovernment),
        ..MockAadConfig::default()
    })
    .await
    .expect("mock starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = minted_token_file(&mock, dir.path());
    Setup {
        mock,
        _dir: dir,
        token_file,
    }
}

impl Setup {
    /// A sidecar in this process on `--cloud AzureUSGovernment` with these proxy variables.
    async fn sidecar(&self, vars: &[(&str, String)]) -> support::Sidecar {
        self.sidecar_with(vars, |_| {}).await
    }

    async fn sidecar_with(
        &self,
        vars: &[(&str, String)],
        tweak: impl FnOnce(&mut identity_sidecar::cmd::serve::ServeArgs),
    ) -> support::Sidecar {
        let mut args = support::args("https://unused.example/", &self.token_file);
        tweak(&mut args);
        args.authority_host = None;
        args.cloud = Some(Cloud::UsGovernment);
        args.client_id = Some(guid(self.mock.client_id()));
        args.tenant_id = Some(self.mock.tenant_id().into());
        let mut cfg = args.validate().expect("valid");
        cfg.extra_ca_files = vec![self.mock.ca_pem_path().expect("CA").to_path_buf()];
        cfg.egress =
            EgressProxy::from_vars(|n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()))
                .expect("proxy settings");
        support::Sidecar::start_config(&cfg).await
    }
}

fn imds_query() -> String {
    format!("api-version=2018-02-01&resource={RESOURCE}")
}

/// The app's token request when the Entra ID leg cannot get through: a 503 with Retry-After.
/// Returns how long the answer took, and its body.
async fn imds_gets_503_with_retry_after(sidecar: &support::Sidecar) -> (Duration, String) {
    let started = Instant::now();
    let resp = sidecar.imds(&imds_query()).await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    (took, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_entra_leg_goes_through_https_proxy_with_connect() {
    let s = setup().await;
    let proxy = ConnectProxy::start(s.mock.local_addr(), None).await;
    let sidecar = s.sidecar(&[("HTTPS_PROXY", proxy.url(None))]).await;
    assert_status(sidecar.imds(&imds_query()).await, 200).await;
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].line,
        "CONNECT login.microsoftonline.us:443 HTTP/1.1"
    );
    assert_eq!(s.mock.stats().token_requests, 1);
    sidecar.stop().await;
}

#[tokio::test]
async fn basic_auth_from_the_proxy_url_is_sent() {
    let s = setup().await;
    let proxy = ConnectProxy::start(s.mock.local_addr(), Some(("egress", "p@ss word"))).await;
    let sidecar = s
        .sidecar(&[(
            "https_proxy",
            format!("http://egress:p%40ss%20word@{}", proxy.addr),
        )])
        .await;
    assert_status(sidecar.imds(&imds_query()).await, 200).await;
    assert!(proxy.seen().iter().all(|x| x.allowed), "{:?}", proxy.seen());
    sidecar.stop().await;
}

#[tokio::test]
async fn no_proxy_suffixes_and_loopback_go_direct() {
    let s = setup().await;
    let proxy = ConnectProxy::start(s.mock.local_addr(), None).await;
    // NO_PROXY matches: the call goes direct, and login.microsoftonline.us does not resolve
    // here, so it fails, but the proxy never sees it.
    let sidecar = s
        .sidecar(&[
            ("HTTPS_PROXY", proxy.url(None)),
            (
                "NO_PROXY",
                "localhost,.microsoftonline.us,10.0.0.0/8".into(),
            ),
        ])
        .await;
    let resp = sidecar.imds(&imds_query()).await;
    assert_eq!(resp.status(), 503);
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
    sidecar.stop().await;
}

#[tokio::test]
async fn a_proxy_that_is_down_gives_503_with_retry_after_fast() {
    let s = setup().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let sidecar = s
        .sidecar(&[("HTTPS_PROXY", format!("http://127.0.0.1:{port}"))])
        .await;
    let (took, body) = imds_gets_503_with_retry_after(&sidecar).await;
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    sidecar.stop().await;
}

/// A proxy that accepts connections and never answers, with the default timeouts (10 s a call,
/// 20 s budget): still a 503 within 15 s.
#[tokio::test]
async fn a_silent_proxy_gives_503_within_15_seconds_on_default_timeouts() {
    let s = setup().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            held.push(c);
        }
    });
    let sidecar = s
        .sidecar_with(&[("HTTPS_PROXY", format!("http://{addr}"))], |a| {
            a.entra.entra_timeout = None;
            a.entra.entra_budget = None;
        })
        .await;
    let (took, _) = imds_gets_503_with_retry_after(&sidecar).await;
    assert!(took < Duration::from_secs(15), "took {took:?}");
    eprintln!("silent proxy: 503 after {took:?}");
    sidecar.stop().await;
    hold.abort();
}

/// The real process: without credentials the proxy answers 407; the app gets 503 + Retry-After
/// within 15 s, and the log at the default level names the proxy and its answer, never the
/// credentials of another variable.
#[tokio::test]
async fn a_refusing_proxy_is_logged_by_host_port_and_answer() {
    let s = setup().await;
    let proxy = ConnectProxy::start(s.mock.local_addr(), Some(("egress", "right"))).await;
    let proxy_url = format!("http://egress:wrong-s3cret@{}", proxy.addr);
    let ca = s.mock.ca_pem_path().expect("CA").display().to_string();
    let token_file = s.token_file.display().to_string();
    let p = Process::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cloud",
            "AzureUSGovernment",
        ],
        &[
            ("AZURE_CLIENT_ID", s.mock.client_id()),
            ("AZURE_TENANT_ID", s.mock.tenant_id()),
            ("AZURE_FEDERATED_TOKEN_FILE", &token_file),
            ("SSL_CERT_FILE", &ca),
            ("HTTPS_PROXY", &proxy_url),
        ],
    );
    let addr = p.wait_listening();
    let started = Instant::now();
    let resp = support::client()
        .get(format!(
            "http://{addr}/metadata/identity/oauth2/token?{}",
            imds_query()
        ))
        .header("Metadata", "true")
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(15));
    let proxy_host_port = proxy.addr.to_string();
    assert!(
        support::eventually(Duration::from_secs(5), || {
            let logs = p.logs();
            let proxy_host_port = proxy_host_port.clone();
            async move { logs.contains(&proxy_host_port) && logs.contains("407") }
        })
        .await,
        "{}",
        p.logs()
    );
    let logs = p.logs();
    assert!(!logs.contains("wrong-s3cret"), "{logs}");
    assert!(proxy.seen().iter().all(|x| !x.allowed));
}

impl Setup {
    /// `doctor` on `--cloud AzureUSGovernment` with these extra variables.
    fn doctor(&self, vars: &[(&str, &str)]) -> (Option<i32>, String) {
        let ca = self.mock.ca_pem_path().expect("CA").display().to_string();
        let token_file = self.token_file.display().to_string();
        let mut env = vec![
            ("AZURE_CLIENT_ID", self.mock.client_id()),
            ("AZURE_TENANT_ID", self.mock.tenant_id()),
            ("AZURE_FEDERATED_TOKEN_FILE", token_file.as_str()),
            ("SSL_CERT_FILE", ca.as_str()),
        ];
        env.extend_from_slice(vars);
        Process::spawn(&["doctor", "--cloud", "AzureUSGovernment"], &env)
            .wait(Duration::from_secs(60))
    }
}

// Multi-threaded: the test blocks on the doctor process while the proxy serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_the_proxy_of_the_entra_leg_and_works_through_it() {
    let s = setup().await;
    let proxy = ConnectProxy::start(s.mock.local_addr(), Some(("egress", "pw"))).await;
    let url = proxy.url(Some(("egress", "pw")));
    let (code, out) = s.doctor(&[("HTTPS_PROXY", &url)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "egress   Entra ID (login.microsoftonline.us): through the proxy {} (HTTPS_PROXY)",
            proxy.addr
        )),
        "{out}"
    );
    assert!(!out.contains("pw@"), "{out}");
    let (_, out) = s.doctor(&[("HTTPS_PROXY", &url), ("NO_PROXY", "microsoftonline.us")]);
    assert!(
        out.contains(
            "Entra ID (login.microsoftonline.us): direct (NO_PROXY entry \"microsoftonline.us\")"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn doctor_explains_a_proxy_that_is_down() {
    let s = setup().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}");
    let (code, out) = s.doctor(&[("HTTPS_PROXY", &url)]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "through the proxy 127.0.0.1:{port} (HTTPS_PROXY): cannot connect"
        )),
        "{out}"
    );
}
