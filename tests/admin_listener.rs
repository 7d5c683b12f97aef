//! The admin listener (`--admin-listen`): `/metrics`, `/healthz` and `/readyz` on a second
//! address, and nothing else. Every token path of every flavor, and the metadata passthrough,
//! answers 404 there without reaching the token core (no Entra ID call, no cache lookup, no
//! request to the real IMDS), while the same requests on the token listener are served, which
//! shows each request would have reached the core.
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::fake_entra::FakeEntra;
use support::{CLIENT_ID, IDENTITY_HEADER, Sidecar, args, token_dir};

/// A stand-in for the real IMDS that counts the requests it gets.
async fn counting_imds() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await;
        }
    });
    (addr, hits)
}

/// The value of the sample `name` (with its labels, as written on /metrics), 0 when absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Every token-path request of every flavor, and a passthrough path.
fn token_requests(
    http: &reqwest::Client,
    base: &str,
) -> Vec<(&'static str, reqwest::RequestBuilder)> {
    let resource = "resource=https%3A%2F%2Fvault.azure.net";
    vec![
        (
            "IMDS GET",
            http.get(format!(
                "{base}/metadata/identity/oauth2/token?api-version=2018-02-01&{resource}"
            ))
            .header("Metadata", "true"),
        ),
        (
            "IMDS GET, other spelling of the path",
            http.get(format!(
                "{base}//metadata/identity/OAUTH2/token/?api-version=2018-02-01&{resource}"
            ))
            .header("Metadata", "true"),
        ),
        (
            "App Service 2019-08-01 GET",
            http.get(format!(
                "{base}/msi/token?api-version=2019-08-01&{resource}"
            ))
            .header("X-IDENTITY-HEADER", IDENTITY_HEADER),
        ),
        (
            "App Service 2017-09-01 GET",
            http.get(format!(
                "{base}/msi/token?api-version=2017-09-01&{resource}"
            ))
            .header("secret", IDENTITY_HEADER),
        ),
        (
            "Cloud Shell POST",
            http.post(format!("{base}/msi/token"))
                .header("Metadata", "true")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(resource),
        ),
        (
            "IMDS passthrough",
            http.get(format!("{base}/metadata/instance?api-version=2021-02-01"))
                .header("Metadata", "true"),
        ),
    ]
}

#[tokio::test]
async fn the_admin_listener_serves_health_and_metrics_and_no_token_path() {
    let entra = FakeEntra::start().await;
    let (_dir, token) = token_dir("system:serviceaccount:ns:app");
    let (imds, imds_hits) = counting_imds().await;
    let mut a = args(&entra.authority(), &token);
    a.admin_listen = Some("127.0.0.1:0".parse().expect("addr"));
    a.imds_passthrough = true;
    a.imds_address = Some(imds);
    let sc = Sidecar::start(a).await;
    let admin = sc.admin_addr().expect("an admin listener");
    assert_ne!(admin, sc.addr);
    let admin_base = format!("http://{admin}");

    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = sc
            .http
            .get(format!("{admin_base}{path}"))
            .send()
            .await
            .expect("admin request");
        assert_eq!(r.status(), 200, "{path} on the admin listener");
    }
    let metrics = sc
        .http
        .get(format!("{admin_base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("identity_sidecar_build_info{"),
        "{metrics}"
    );

    let core_counters = |m: &str| {
        [
            "identity_sidecar_cache_hits_total",
            "identity_sidecar_cache_misses_total",
            r#"identity_sidecar_requests_total{endpoint="imds",status="200"}"#,
            r#"identity_sidecar_requests_total{endpoint="app_service",status="200"}"#,
            r#"identity_sidecar_requests_total{endpoint="imds_other",status="200"}"#,
        ]
        .map(|n| sample(m, n))
    };
    let before = core_counters(&sc.metrics().await);
    for (what, req) in token_requests(&sc.http, &admin_base) {
        let r = req.send().await.expect("request");
        let status = r.status();
        let body = r.text().await.expect("body");
        assert_eq!(status, 404, "{what} on the admin listener: {body}");
        assert!(
            !body.contains("access_token") && body.contains("/metrics"),
            "{what}: {body}"
        );
    }
    assert_eq!(entra.count(), 0, "no Entra ID call from the admin listener");
    assert_eq!(
        imds_hits.load(Ordering::SeqCst),
        0,
        "nothing forwarded to IMDS"
    );
    assert_eq!(
        core_counters(&sc.metrics().await),
        before,
        "the token core saw nothing"
    );
    let m = sc.metrics().await;
    assert!(
        sample(
            &m,
            r#"identity_sidecar_requests_total{endpoint="not_found",status="404"}"#
        ) >= 6.0,
        "{m}"
    );

    // The same requests on the token listener do reach the core: the test above could fail.
    let token_base = format!("http://{}", sc.addr);
    for (what, req) in token_requests(&sc.http, &token_base) {
        let r = req.send().await.expect("request");
        assert_eq!(r.status(), 200, "{what} on the token listener");
    }
    assert_eq!(entra.count(), 1, "one exchange serves every flavor");
    assert_eq!(imds_hits.load(Ordering::SeqCst), 1);
    let after = core_counters(&sc.metrics().await);
    assert!(after[0] + after[1] >= 5.0, "{after:?}");
    sc.stop().await;
}

#[tokio::test]
async fn without_the_flag_there_is_no_admin_listener() {
    let entra = FakeEntra::start().await;
    let (_dir, token) = token_dir("system:serviceaccount:ns:app");
    let sc = Sidecar::start(args(&entra.authority(), &token)).await;
    assert_eq!(sc.admin_addr(), None);
    let r = sc
        .imds(&format!(
            "api-version=2018-02-01&resource=r&client_id={CLIENT_ID}"
        ))
        .await;
    assert_eq!(r.status(), 200);
    sc.stop().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[test]
fn a_busy_admin_port_fails_the_start_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (_dir, token) = token_dir("system:serviceaccount:ns:app");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut a = args("http://127.0.0.1:9/", &token);
        a.admin_listen = Some(format!("127.0.0.1:{port}").parse().expect("addr"));
        let cfg = a.validate().expect("valid");
        let err = identity_sidecar::cmd::serve::start(&cfg)
            .await
            .err()
            .expect("the admin port is taken");
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    });
}
