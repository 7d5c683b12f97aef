//! The audit log (`serve --audit-log`) of a real sidecar process against the mock Entra ID: one
//! JSON line per token request that reached the token handler, with the caller's uid read from
//! the socket table (two callers running as two different uids get two different uids), the
//! Entra call's ids on an exchange, a fingerprint of the token served, and no secret of any kind
//! anywhere in the process's output.
mod support;

use std::process::Command;
use std::time::Duration;

use identity_sidecar::mock_aad::MockAadConfig;
use support::mock_serve::MockServe;
use support::{IDENTITY_HEADER, system};

const CALLER_A: u32 = 4101;
const CALLER_B: u32 = 4102;

/// `curl` run as `uid`; returns the status and body.
fn curl_as(uid: u32, args: &[&str]) -> (u16, String) {
    let uid_s = uid.to_string();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &uid_s,
            "--regid",
            &uid_s,
            "--clear-groups",
            "curl",
        ])
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn sha256_prefix(token: &str) -> String {
    identity_sidecar::telemetry::audit::fingerprint(token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_name_the_caller_and_the_entra_call_and_hold_no_secret() {
    if let Some(why) = system::missing(Some("run the callers as other uids"), &["setpriv", "curl"])
    {
        return system::skip(&why);
    }
    let s = MockServe::start(MockAadConfig::default(), &["--audit-log"]).await;
    let imds = s.url(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net",
    );

    // Caller A: the first request, an exchange with Entra ID.
    let (status, body) = tokio::task::spawn_blocking({
        let imds = imds.clone();
        move || {
            curl_as(
                CALLER_A,
                &[
                    "-H",
                    "Metadata: true",
                    "-H",
                    "x-ms-client-request-id: app-request-a",
                    &imds,
                ],
            )
        }
    })
    .await
    .expect("join");
    assert_eq!(status, 200, "{body}");
    let token_a: serde_json::Value = serde_json::from_str(&body).expect("json");
    let access_token = token_a["access_token"].as_str().expect("token").to_string();

    // Caller B: the same token again, from the cache; then App Service with the identity header.
    let (status, body) = tokio::task::spawn_blocking({
        let imds = imds.clone();
        move || curl_as(CALLER_B, &["-H", "Metadata: true", &imds])
    })
    .await
    .expect("join");
    assert_eq!(status, 200, "{body}");
    let msi = s.url("/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net");
    let (status, body) = tokio::task::spawn_blocking(move || {
        curl_as(
            CALLER_B,
            &["-H", &format!("X-IDENTITY-HEADER: {IDENTITY_HEADER}"), &msi],
        )
    })
    .await
    .expect("join");
    assert_eq!(status, 200, "{body}");
    // Refused before the cache (wrong identity header): audited too, with cache "none".
    let msi = s.url("/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net");
    let (status, _) = tokio::task::spawn_blocking(move || {
        curl_as(CALLER_B, &["-H", "X-IDENTITY-HEADER: not-the-secret", &msi])
    })
    .await
    .expect("join");
    assert_eq!(status, 401);

    let ok = support::eventually(Duration::from_secs(5), || async {
        s.audit_lines().len() >= 4
    })
    .await;
    let lines = s.audit_lines();
    assert!(ok, "four audit lines expected:\n{}", s.process.logs());
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let (exchange, hit, app_service, refused) = (&lines[0], &lines[1], &lines[2], &lines[3]);
    println!("audit line, exchange: {exchange}");
    println!("audit line, hit:      {hit}");

    // The exchange: caller A, a miss that waited for Entra ID, with both request ids.
    assert_eq!(exchange["target"], "identity_sidecar::audit");
    assert_eq!(exchange["flavor"], "imds");
    assert_eq!(exchange["client_id"], s.mock.client_id());
    assert_eq!(exchange["resource"], "https://vault.azure.net");
    assert_eq!(exchange["status"], 200);
    assert_eq!(exchange["cache"], "miss");
    assert_eq!(exchange["caller_uid"], CALLER_A);
    assert_eq!(exchange["caller_process"], "curl");
    assert_eq!(exchange["app_request_id"], "app-request-a");
    assert_eq!(exchange["token_sha256"], sha256_prefix(&access_token));
    assert!(
        exchange["entra_latency_ms"].as_f64().is_some(),
        "{exchange}"
    );
    let sent = exchange["entra_client_request_id"]
        .as_str()
        .expect("sent id");
    assert!(uuid::Uuid::parse_str(sent).is_ok(), "{exchange}");
    let entra_id = exchange["entra_request_id"].as_str().expect("Entra's id");
    assert!(!entra_id.is_empty());
    // The mock's own record of the call carries the id the sidecar sent: the line joins.
    let recorded = s.mock.token_requests();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        recorded[0].correlation_id, sent,
        "Entra's correlation id is the sent id"
    );

    // The hit: caller B, another uid, the same token, no Entra call.
    assert_eq!(hit["cache"], "hit");
    assert_eq!(hit["caller_uid"], CALLER_B);
    assert_ne!(hit["caller_uid"], exchange["caller_uid"]);
    assert_eq!(hit["token_sha256"], exchange["token_sha256"]);
    assert!(hit.get("entra_request_id").is_none(), "{hit}");
    assert_eq!(hit["app_request_id"], serde_json::Value::Null);
    assert_eq!(app_service["flavor"], "app-service-2019-08-01");
    assert_eq!(app_service["caller_uid"], CALLER_B);
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["cache"], "none");
    assert_eq!(refused["token_sha256"], serde_json::Value::Null);

    // No secret of any kind, anywhere in the output: the federated token (also the client
    // assertion sent to Entra ID), the access token, the identity header and the wrong one.
    let logs = s.process.logs();
    for (what, secret) in [
        (
            "federated token / client assertion",
            s.federated_token.as_str(),
        ),
        ("access token", access_token.as_str()),
        ("identity header", IDENTITY_HEADER),
        ("a presented identity header", "not-the-secret"),
    ] {
        assert!(!logs.contains(secret), "the {what} is in the logs:\n{logs}");
        // Nor its JWT signature or payload alone.
        if let Some((_, sig)) = secret.rsplit_once('.') {
            assert!(!logs.contains(sig), "part of the {what} is in the logs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_there_is_no_audit_line() {
    let s = MockServe::start(MockAadConfig::default(), &[]).await;
    let r = support::client()
        .get(s.url(
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net",
        ))
        .header("Metadata", "true")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.audit_lines().is_empty(), "{}", s.process.logs());
}
