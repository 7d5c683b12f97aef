//! Real Azure SDKs against `mock-aad` over TLS, unmodified, configured only as apps are
//! (environment variables and the CA bundle variables): Python azure-identity
//! (WorkloadIdentityCredential, ClientAssertionCredential), msal ConfidentialClientApplication, and
//! @azure/identity (WorkloadIdentityCredential, ClientAssertionCredential). Each must get a token
//! that verifies with the mock's JWKS, and the right AADSTS error for a wrong subject, an expired
//! assertion and an unknown client.
//!
//! Needs `scripts/install-sdks`; without it, the skip rule of `tests/support/system.rs` applies.

#[path = "support/mock_client.rs"]
mod mock_client;
#[path = "support/mock_sdk.rs"]
mod mock_sdk;
#[path = "support/system.rs"]
mod system;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use identity_sidecar::mock_aad::{
    DEFAULT_SUBJECT, Fault, FaultAction, FederatedTokenSpec, MockAad, MockAadConfig,
};
use mock_client::*;
use mock_sdk::{Client, Sdks, sdks_or_skip};

/// One scenario: what the token file holds and which client id the app uses.
struct Scenario {
    name: &'static str,
    assertion: String,
    client_id: String,
    /// `None` = expect a token; `Some(code)` = expect this AADSTS code.
    expect_code: Option<u64>,
}

fn scenarios(mock: &MockAad) -> Vec<Scenario> {
    let mint = |spec: &FederatedTokenSpec| mock.mint_federated_token_with(spec).expect("mint");
    vec![
        Scenario {
            name: "valid assertion",
            // kubelet files end without a newline, but SDKs must cope with one: keep it.
            assertion: format!(
                "{}\n",
                mint(&FederatedTokenSpec::new(DEFAULT_SUBJECT, HOUR))
            ),
            client_id: mock.client_id().to_owned(),
            expect_code: None,
        },
        Scenario {
            name: "wrong subject",
            assertion: mint(&FederatedTokenSpec::new(
                "system:serviceaccount:default:intruder",
                HOUR,
            )),
            client_id: mock.client_id().to_owned(),
            expect_code: Some(70021),
        },
        Scenario {
            name: "expired assertion",
            assertion: mint(&FederatedTokenSpec {
                issued_at: SystemTime::now() - 2 * HOUR,
                ..FederatedTokenSpec::new(DEFAULT_SUBJECT, HOUR)
            }),
            client_id: mock.client_id().to_owned(),
            expect_code: Some(700024),
        },
        Scenario {
            name: "unknown client",
            assertion: mint(&FederatedTokenSpec::new(DEFAULT_SUBJECT, HOUR)),
            client_id: "99999999-9999-4999-8999-999999999999".to_owned(),
            expect_code: Some(700016),
        },
    ]
}

/// Runs every scenario through one SDK client mode and checks the outcome.
async fn check_sdk(test: &str, client: Client, mode: &str) {
    let Some(sdks) = sdks_or_skip(test) else {
        return;
    };
    let mock = start_mock(MockAadConfig::default()).await;
    let http = client_for(&mock);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut scenarios_sent = Vec::new();
    for scenario in scenarios(&mock) {
        let subject = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(
            scenario.assertion.trim(),
        )
        .ok()
        .and_then(|c| c["sub"].as_str().map(str::to_owned));
        scenarios_sent.push((scenario.client_id.clone(), subject));
        let token_file = tmp
            .path()
            .join(format!("{}.jwt", scenario.name.replace(' ', "-")));
        std::fs::write(&token_file, &scenario.assertion).expect("write token file");
        let env = sdk_env(&mock, &scenario.client_id, &token_file);
        let outcome = run(&sdks, client, mode, &env).await;
        match scenario.expect_code {
            None => {
                assert!(
                    outcome.ok,
                    "{mode} / {}: expected a token, got {}",
                    scenario.name, outcome.raw
                );
                let token = outcome.token.as_deref().expect("token in the JSON line");
                let claims =
                    verify_with_served_jwks(&http, &mock, token, "https://management.azure.com")
                        .await;
                assert_eq!(claims["appid"], mock.client_id(), "{mode}");
            }
            Some(code) => {
                assert!(
                    !outcome.ok,
                    "{mode} / {}: expected AADSTS{code}, got a token",
                    scenario.name
                );
                assert_eq!(
                    outcome.codes,
                    vec![code],
                    "{mode} / {}: {}",
                    scenario.name,
                    outcome.error.unwrap_or_default()
                );
            }
        }
    }
    // What the SDK sent, as the mock recorded it: the right client and the assertion's subject.
    let log = mock.token_requests();
    let expected: Vec<_> = scenarios_sent
        .iter()
        .map(|(client_id, sub)| (Some(client_id.clone()), sub.clone()))
        .collect();
    let seen: Vec<_> = log
        .iter()
        .map(|r| (r.client_id.clone(), r.assertion_subject.clone()))
        .collect();
    for entry in &expected {
        assert!(
            seen.contains(entry),
            "{mode}: no request for {entry:?} in {seen:?}"
        );
    }
    assert!(
        log.iter()
            .all(|r| r.scope.as_deref() == Some("https://management.azure.com/.default")),
        "{mode}: {log:?}"
    );
    let stats = mock.stats();
    assert_eq!(stats.tokens_issued, 1, "{mode}: one success");
    assert!(
        stats.token_errors >= 3,
        "{mode}: the three failures reached the token endpoint"
    );
    mock.shutdown().await;
}

/// The environment an app gets: authority, tenant, client, token file and the CA for every runtime.
fn sdk_env(mock: &MockAad, client_id: &str, token_file: &Path) -> BTreeMap<String, String> {
    let ca = mock
        .ca_pem_path()
        .expect("TLS mock has a CA")
        .display()
        .to_string();
    [
        ("AZURE_AUTHORITY_HOST", mock.authority_url().to_owned()),
        ("AZURE_TENANT_ID", mock.tenant_id().to_owned()),
        ("AZURE_CLIENT_ID", client_id.to_owned()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("REQUESTS_CA_BUNDLE", ca.clone()),
        ("NODE_EXTRA_CA_CERTS", ca.clone()),
        ("SSL_CERT_FILE", ca),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn run(
    sdks: &Sdks,
    client: Client,
    mode: &str,
    env: &BTreeMap<String, String>,
) -> mock_sdk::Outcome {
    let started = std::time::Instant::now();
    let outcome = sdks.run(client, mode, &[], env).await;
    if started.elapsed() > Duration::from_secs(20) {
        eprintln!("{client:?} {mode} was slow: {:?}", started.elapsed());
    }
    outcome
}

#[tokio::test]
async fn python_workload_identity_credential() {
    check_sdk(
        "python_workload_identity_credential",
        Client::Python,
        "workload",
    )
    .await;
}

#[tokio::test]
async fn python_client_assertion_credential() {
    check_sdk(
        "python_client_assertion_credential",
        Client::Python,
        "assertion",
    )
    .await;
}

#[tokio::test]
async fn python_msal_confidential_client_with_assertion() {
    check_sdk(
        "python_msal_confidential_client_with_assertion",
        Client::Python,
        "msal-cca",
    )
    .await;
}

#[tokio::test]
async fn node_workload_identity_credential() {
    check_sdk(
        "node_workload_identity_credential",
        Client::Node,
        "workload",
    )
    .await;
}

#[tokio::test]
async fn node_client_assertion_credential() {
    check_sdk(
        "node_client_assertion_credential",
        Client::Node,
        "assertion",
    )
    .await;
}

/// A kubelet-layout token file (reached through `..data`) and one injected 503. SDKs with a retry
/// policy (azure-identity, @azure/identity) get past it; bare msal-python surfaces it, and the next
/// call succeeds.
async fn check_kubelet_file_and_503(test: &str, client: Client, mode: &str, sdk_retries: bool) {
    let Some(sdks) = sdks_or_skip(test) else {
        return;
    };
    let mock = start_mock(MockAadConfig::default()).await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let writer = mock
        .federated_token_writer(
            tmp.path().join("azure-identity-token"),
            DEFAULT_SUBJECT,
            HOUR,
        )
        .expect("token writer");
    let env = sdk_env(&mock, mock.client_id(), &writer.token_path());
    mock.inject_fault(Fault::times(FaultAction::Unavailable, 1));
    let mut outcome = run(&sdks, client, mode, &env).await;
    if !sdk_retries {
        assert!(
            !outcome.ok,
            "{mode}: expected the 503 to surface, got {}",
            outcome.raw
        );
        assert!(
            outcome.error.as_deref().unwrap_or_default().contains("503"),
            "{}",
            outcome.raw
        );
        outcome = run(&sdks, client, mode, &env).await;
    }
    assert!(outcome.ok, "{mode}: expected a token, got {}", outcome.raw);
    let stats = mock.stats();
    assert_eq!(
        (stats.faults_injected, stats.tokens_issued),
        (1, 1),
        "{mode}: {stats:?}"
    );
}

#[tokio::test]
async fn python_workload_identity_reads_the_kubelet_file_and_retries_a_503() {
    let test = "python_workload_identity_reads_the_kubelet_file_and_retries_a_503";
    check_kubelet_file_and_503(test, Client::Python, "workload", true).await;
}

#[tokio::test]
async fn python_msal_reads_the_kubelet_file_and_surfaces_a_503() {
    let test = "python_msal_reads_the_kubelet_file_and_surfaces_a_503";
    check_kubelet_file_and_503(test, Client::Python, "msal-cca", false).await;
}

#[tokio::test]
async fn node_workload_identity_reads_the_kubelet_file_and_retries_a_503() {
    let test = "node_workload_identity_reads_the_kubelet_file_and_retries_a_503";
    check_kubelet_file_and_503(test, Client::Node, "workload", true).await;
}
