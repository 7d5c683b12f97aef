//! Sovereign clouds: `--cloud` / `AZURE_ENVIRONMENT` pick each cloud's authority, in the order
//! --authority-host, AZURE_AUTHORITY_HOST, --cloud, AZURE_ENVIRONMENT, public cloud; a bad name
//! stops `serve` with exit 2 naming the flag and the variable; the mock can present itself as any
//! cloud (names only).
mod support;

use std::time::Duration;

use identity_sidecar::cloud::Cloud;
use identity_sidecar::mock_aad::MockAadConfig;
use support::{CLIENT_ID, Process, TENANT_ID};

/// The authority `doctor` reports in its configuration step for these flags and variables.
fn authority_for(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    let mut e = vec![
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT_ID),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/nonexistent/identity-sidecar/token",
        ),
    ];
    e.extend_from_slice(env);
    let (_, out) = Process::spawn(&all, &e).wait(Duration::from_secs(30));
    let line = out
        .lines()
        .find(|l| l.contains("authority "))
        .unwrap_or_else(|| panic!("no authority line in:\n{out}"));
    let rest = &line[line.find("authority ").map_or(0, |i| i + 10)..];
    rest.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn each_cloud_has_its_default_authority_in_any_case() {
    assert_eq!(
        authority_for(&[], &[]),
        "https://login.microsoftonline.com/"
    );
    for (name, host) in [
        ("AzurePublicCloud", "https://login.microsoftonline.com/"),
        ("azureusgovernment", "https://login.microsoftonline.us/"),
        ("AZURECHINACLOUD", "https://login.chinacloudapi.cn/"),
    ] {
        assert_eq!(
            authority_for(&[], &[("AZURE_ENVIRONMENT", name)]),
            host,
            "{name}"
        );
        assert_eq!(authority_for(&["--cloud", name], &[]), host, "{name}");
    }
}

#[test]
fn authority_settings_win_in_their_order() {
    // --cloud beats AZURE_ENVIRONMENT.
    assert_eq!(
        authority_for(
            &["--cloud", "AzureChinaCloud"],
            &[("AZURE_ENVIRONMENT", "AzureUSGovernment")]
        ),
        "https://login.chinacloudapi.cn/"
    );
    // AZURE_AUTHORITY_HOST beats --cloud.
    assert_eq!(
        authority_for(
            &["--cloud", "AzureChinaCloud"],
            &[("AZURE_AUTHORITY_HOST", "https://login.example/")]
        ),
        "https://login.example/"
    );
    // --authority-host beats AZURE_AUTHORITY_HOST and everything else.
    assert_eq!(
        authority_for(
            &[
                "--authority-host",
                "https://flag.example/",
                "--cloud",
                "AzureUSGovernment"
            ],
            &[
                ("AZURE_AUTHORITY_HOST", "https://login.example/"),
                ("AZURE_ENVIRONMENT", "AzureChinaCloud")
            ]
        ),
        "https://flag.example/"
    );
}

#[test]
fn an_unknown_cloud_stops_serve_with_exit_2_naming_flag_and_variable() {
    let (code, out) = Process::spawn(
        &["serve"],
        &[
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_TENANT_ID", TENANT_ID),
            ("AZURE_FEDERATED_TOKEN_FILE", "/tmp/token"),
            ("AZURE_ENVIRONMENT", "AzureGermanCloud"),
        ],
    )
    .wait(Duration::from_secs(20));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("--cloud (env AZURE_ENVIRONMENT)") && out.contains("AzureUSGovernment"),
        "{out}"
    );
}

#[tokio::test]
async fn the_mock_presents_itself_as_any_cloud() {
    for cloud in Cloud::ALL {
        let mock = identity_sidecar::mock_aad::start(MockAadConfig {
            cloud: Some(cloud),
            ..MockAadConfig::default()
        })
        .await
        .expect("mock starts");
        let host = cloud.authority_host();
        let port = mock.local_addr().port();
        assert_eq!(mock.authority_url(), format!("https://{host}:{port}/"));
        // Its certificate names the cloud's authority: a client that resolves the name to the
        // mock and trusts only the mock's CA gets the discovery document.
        let ca = reqwest::Certificate::from_pem(mock.ca_pem().expect("CA").as_bytes()).expect("CA");
        let http = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([ca])
            .resolve(host, mock.local_addr())
            .build()
            .expect("client");
        let doc: serde_json::Value = http
            .get(format!(
                "{}{}/v2.0/.well-known/openid-configuration",
                mock.authority_url(),
                mock.tenant_id()
            ))
            .send()
            .await
            .expect("discovery answers")
            .json()
            .await
            .expect("json");
        let endpoint = doc["token_endpoint"].as_str().unwrap_or_default();
        assert!(
            endpoint.starts_with(&format!("https://{host}:{port}/")),
            "{cloud}: {doc}"
        );
        mock.shutdown().await;
    }
}

#[test]
fn doctor_explains_an_issuer_from_another_cloud() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = serde_json::json!({
        "iss": "https://chinanorth2.oic.prod-aks.azure.cn/tenant/guid/",
        "sub": "system:serviceaccount:default:workload",
        "aud": ["api://AzureADTokenExchange"],
        "exp": support::now() + 3600,
        "iat": support::now(),
    });
    let jwt = format!(
        "{}.{}.c2ln",
        b64.encode(r#"{"alg":"RS256"}"#),
        b64.encode(claims.to_string())
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, jwt).expect("write");
    let token = token.display().to_string();
    let (_, out) = Process::spawn(
        &["doctor", "--entra-timeout", "2s"],
        &[
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_TENANT_ID", TENANT_ID),
            ("AZURE_FEDERATED_TOKEN_FILE", &token),
        ],
    )
    .wait(Duration::from_secs(60));
    let warn = out
        .lines()
        .find(|l| l.contains("warn") && l.contains("AzureChinaCloud"))
        .unwrap_or_else(|| panic!("no cloud warning in:\n{out}"));
    assert!(warn.contains("AzurePublicCloud"), "{out}");
}
