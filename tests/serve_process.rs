//! `identity-sidecar serve` as a real process: configuration errors, secrets kept out of logs at
//! every level, and graceful shutdown on SIGTERM with requests in flight.
mod support;

use std::time::Duration;

use support::fake_entra::{FakeEntra, Reply};
use support::*;

/// Arguments, environment, and the words the error must contain.
type Case<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)], &'a [&'a str]);

/// `serve` with every required flag (the token file need not exist), then `extra`.
fn serve_configured<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let required = [
        "serve",
        "--client-id",
        CLIENT_ID,
        "--tenant-id",
        TENANT_ID,
        "--token-file",
        "/t",
    ];
    [&required[..], extra].concat()
}

#[test]
fn configuration_mistakes_exit_2_naming_flag_and_variable() {
    let cases: &[Case] = &[
        (vec!["serve"], &[], &["--client-id", "AZURE_CLIENT_ID"]),
        (
            vec!["serve", "--client-id", CLIENT_ID],
            &[],
            &["--tenant-id", "AZURE_TENANT_ID"],
        ),
        (
            vec!["serve"],
            &[
                ("AZURE_CLIENT_ID", CLIENT_ID),
                ("AZURE_TENANT_ID", TENANT_ID),
            ],
            &["--token-file", "AZURE_FEDERATED_TOKEN_FILE"],
        ),
        (
            vec![
                "serve",
                "--client-id",
                "not-a-guid",
                "--tenant-id",
                TENANT_ID,
                "--token-file",
                "/t",
            ],
            &[],
            &["--client-id", "AZURE_CLIENT_ID", "GUID"],
        ),
        (
            vec!["serve"],
            &[
                ("AZURE_CLIENT_ID", CLIENT_ID),
                ("AZURE_TENANT_ID", TENANT_ID),
                ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
                ("AZURE_AUTHORITY_HOST", "http://login.example.com/"),
            ],
            &["--authority-host", "AZURE_AUTHORITY_HOST", "https"],
        ),
        (
            serve_configured(&[]),
            &[("IDENTITY_SIDECAR_LISTEN", "127.0.0.1")],
            &["--listen", "IDENTITY_SIDECAR_LISTEN"],
        ),
        (
            serve_configured(&["--log-format", "xml"]),
            &[],
            &["--log-format", "IDENTITY_SIDECAR_LOG_FORMAT"],
        ),
    ];
    for (args, envs, needles) in cases {
        let (code, out) = Process::spawn(args, envs).wait(Duration::from_secs(10));
        assert_eq!(code, Some(2), "{args:?} {envs:?}: {out}");
        for n in *needles {
            assert!(out.contains(n), "{args:?}: {n:?} not in {out:?}");
        }
    }
}

#[test]
fn flags_override_the_environment() {
    let (code, out) = Process::spawn(
        &["serve", "--client-id", "bad"],
        &[
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_TENANT_ID", TENANT_ID),
            ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
        ],
    )
    .wait(Duration::from_secs(10));
    assert_eq!(code, Some(2));
    assert!(out.contains("\"bad\" is not a GUID"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_at_any_level() {
    let entra = FakeEntra::start().await;
    let (dir, path) = token_dir("system:serviceaccount:default:app");
    let federated = std::fs::read_to_string(&path)
        .expect("token")
        .trim()
        .to_string();
    for format in ["text", "json"] {
        let p = Process::serve(
            &entra.authority(),
            &path,
            &["--log-format", format],
            &[("IDENTITY_HEADER", IDENTITY_HEADER), ("RUST_LOG", "trace")],
        );
        let addr = p.wait_listening();
        let http = client();
        let base = format!("http://{addr}");
        let ok = http.get(format!("{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net")).header("Metadata", "true").send().await.expect("imds");
        assert_eq!(ok.status(), 200);
        let token = ok.json::<serde_json::Value>().await.expect("json")["access_token"]
            .as_str()
            .expect("token")
            .to_string();
        let r = http
            .get(format!(
                "{base}/msi/token?api-version=2019-08-01&resource=https://vault.azure.net"
            ))
            .header("X-IDENTITY-HEADER", IDENTITY_HEADER)
            .send()
            .await
            .expect("as");
        assert_eq!(r.status(), 200);
        let r = http
            .get(format!(
                "{base}/msi/token?api-version=2017-09-01&resource=https://x"
            ))
            .header("secret", format!("{IDENTITY_HEADER}x"))
            .send()
            .await
            .expect("as");
        assert_eq!(r.status(), 401);
        // A token file rotation is logged too.
        std::fs::write(
            &path,
            federated_jwt("system:serviceaccount:default:rotated", 3600),
        )
        .expect("rotate");
        // Wait for the event, not a fixed time: the reload line names the new subject.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !p.logs().contains("system:serviceaccount:default:rotated") {
            assert!(
                std::time::Instant::now() < deadline,
                "the rotation was never logged: {}",
                p.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.signal(libc::SIGTERM);
        let (code, logs) = tokio::task::spawn_blocking(move || p.wait(Duration::from_secs(15)))
            .await
            .expect("join");
        assert_eq!(code, Some(0), "{logs}");
        assert!(
            logs.contains("token request"),
            "per-request lines are logged: {logs}"
        );
        assert!(
            logs.contains("IDENTITY_ENDPOINT"),
            "start-up line names the app env: {logs}"
        );
        assert!(
            logs.contains("TRACE") || logs.contains("\"level\":\"TRACE\""),
            "trace level was on"
        );
        for (what, secret) in [
            ("federated token", federated.as_str()),
            ("access token", token.as_str()),
            ("identity header", IDENTITY_HEADER),
        ] {
            assert!(!logs.contains(secret), "{what} leaked into {format} logs");
        }
        // Not even the signature part of the federated token.
        let sig = federated.rsplit('.').next().expect("sig");
        assert!(!logs.contains(sig));
        std::fs::write(&path, &federated).expect("restore");
    }
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish() {
    let entra = FakeEntra::start().await;
    entra.set_default(Reply::Delay(Duration::from_millis(1500)));
    let (_dir, path) = token_dir("system:serviceaccount:default:app");
    let p = Process::serve(&entra.authority(), &path, &[], &[]);
    let addr = p.wait_listening();
    let http = client();
    let mut inflight = Vec::new();
    for i in 0..20 {
        let http = http.clone();
        let url = format!(
            "http://{addr}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://r{}",
            i % 4
        );
        inflight.push(tokio::spawn(async move {
            http.get(url)
                .header("Metadata", "true")
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    // SIGTERM once all 20 are inside the sidecar: each counts a cache miss on arrival, before it
    // waits for the (1.5 s slow) Entra call, so the metric is the event to wait for.
    let misses = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("identity_sidecar_cache_misses_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        if misses(&text) >= 20.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the 20 requests never all arrived:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.signal(libc::SIGTERM);
    for t in inflight {
        assert_eq!(t.await.expect("join").expect("no request dropped"), 200);
    }
    let (code, logs) = tokio::task::spawn_blocking(move || p.wait(Duration::from_secs(15)))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{logs}");
    // After shutdown nothing listens.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// What an operator sees at the default level: a line per Entra ID exchange, per new (identity,
/// scope), per error answer, and the periodic summary; no line per request unless
/// `--access-log`; and no secret in any of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_logs_tell_operators_what_happened_without_a_line_per_request() {
    let entra = FakeEntra::start().await;
    let (_dir, path) = token_dir("system:serviceaccount:default:app");
    let federated = std::fs::read_to_string(&path)
        .expect("token")
        .trim()
        .to_string();
    for access_log in [false, true] {
        let mut args = vec!["--log-summary-interval", "500ms"];
        if access_log {
            args.push("--access-log");
        }
        let p = Process::serve(
            &entra.authority(),
            &path,
            &args,
            &[("IDENTITY_HEADER", IDENTITY_HEADER)],
        );
        let addr = p.wait_listening();
        let http = client();
        let imds = format!(
            "http://{addr}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"
        );
        let mut token = String::new();
        for _ in 0..5 {
            let r = http
                .get(&imds)
                .header("Metadata", "true")
                .send()
                .await
                .expect("imds");
            assert_eq!(r.status(), 200);
            token = r.json::<serde_json::Value>().await.expect("json")["access_token"]
                .as_str()
                .expect("token")
                .to_string();
        }
        let refused = http
            .get(format!(
                "http://{addr}/msi/token?api-version=2019-08-01&resource=https://x"
            ))
            .header("X-IDENTITY-HEADER", format!("{IDENTITY_HEADER}x"))
            .send()
            .await
            .expect("as");
        assert_eq!(refused.status(), 401);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !p.logs().contains("token requests summary") {
            assert!(
                std::time::Instant::now() < deadline,
                "no summary: {}",
                p.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p.signal(libc::SIGTERM);
        let (code, logs) = tokio::task::spawn_blocking(move || p.wait(Duration::from_secs(15)))
            .await
            .expect("join");
        assert_eq!(code, Some(0), "{logs}");
        for wanted in [
            "first request for this identity and scope",
            "new token from Entra ID",
            "token request answered with an error",
        ] {
            assert!(logs.contains(wanted), "want {wanted:?} in: {logs}");
        }
        // The requests may straddle two summaries: add them up.
        let total = |field: &str| -> u64 {
            logs.lines()
                .filter(|l| l.contains("token requests summary"))
                .filter_map(|l| {
                    let at = l.find(&format!(" {field}="))? + field.len() + 2;
                    l[at..].split(' ').next()?.parse::<u64>().ok()
                })
                .sum()
        };
        assert_eq!(
            [
                total("imds_requests"),
                total("imds_hits"),
                total("imds_misses"),
                total("app_service_requests"),
                total("app_service_errors"),
            ],
            [5, 4, 1, 1, 1],
            "{logs}"
        );
        let access_lines = logs.matches("INFO token request flavor=").count();
        assert_eq!(
            access_lines,
            if access_log { 6 } else { 0 },
            "access lines with --access-log={access_log}: {logs}"
        );
        assert!(!logs.contains("DEBUG"), "{logs}");
        for (what, secret) in [
            ("federated token", federated.as_str()),
            ("access token", token.as_str()),
            ("identity header", IDENTITY_HEADER),
        ] {
            assert!(!logs.contains(secret), "{what} leaked into the logs");
        }
    }
}
