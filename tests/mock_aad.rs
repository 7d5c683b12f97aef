//! Behaviour of `mock-aad` over real HTTPS on loopback: discovery, issued tokens, each Entra error,
//! client secrets, external issuers, fault injection, the kubelet token layout, and listen rules.

#[path = "support/mock_client.rs"]
mod mock_client;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use identity_sidecar::mock_aad::{
    self, AppRegistration, ClientSecret, DEFAULT_CLIENT_ID, DEFAULT_SUBJECT, DEFAULT_TENANT_ID,
    FaultAction, FederatedCredential, FederatedTokenSpec, MockAadConfig, MockAadError,
};
use mock_client::*;

#[tokio::test]
async fn zero_config_mock_is_ready_fast_with_documented_defaults() {
    let started = Instant::now();
    let mock = start_mock(MockAadConfig::default()).await;
    let took = started.elapsed();
    eprintln!("mock-aad start took {took:?}");
    assert!(took < Duration::from_secs(2), "start took {took:?}");
    assert_eq!(mock.tenant_id(), DEFAULT_TENANT_ID);
    assert_eq!(mock.client_id(), DEFAULT_CLIENT_ID);
    assert!(mock.authority_url().starts_with("https://127.0.0.1:"));
    assert!(mock.authority_url().ends_with('/'));
    assert_eq!(mock.issuer_url(), format!("{}issuer", mock.authority_url()));
    let ca = mock.ca_pem_path().expect("a CA file").to_owned();
    let pem = std::fs::read_to_string(&ca).expect("CA file readable");
    assert!(pem.contains("BEGIN CERTIFICATE"));
    mock.shutdown().await;
    assert!(!ca.exists(), "the temporary CA file is removed at shutdown");
}

#[tokio::test]
async fn discovery_documents_point_at_the_mock() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let base = mock.authority_url();
    let tenant = mock.tenant_id();

    let oidc = get_json(
        &client,
        &format!("{base}{tenant}/v2.0/.well-known/openid-configuration"),
    )
    .await;
    assert_eq!(oidc.status, 200);
    assert_eq!(
        oidc.body["token_endpoint"],
        format!("{base}{tenant}/oauth2/v2.0/token")
    );
    assert_eq!(
        oidc.body["authorization_endpoint"],
        format!("{base}{tenant}/oauth2/v2.0/authorize")
    );
    assert_eq!(
        oidc.body["jwks_uri"],
        format!("{base}{tenant}/discovery/v2.0/keys")
    );
    assert_eq!(oidc.body["issuer"], format!("{base}{tenant}/v2.0"));

    let keys = get_json(&client, &format!("{base}{tenant}/discovery/v2.0/keys")).await;
    assert_eq!(keys.status, 200);
    let key = &keys.body["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(
        key["n"].as_str().is_some_and(|n| n.len() > 300),
        "2048-bit modulus"
    );

    let authorize = format!("{base}{tenant}/oauth2/v2.0/authorize");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("api-version", "1.1")
        .append_pair("authorization_endpoint", &authorize)
        .finish();
    let instance = get_json(&client, &format!("{base}common/discovery/instance?{query}")).await;
    assert_eq!(instance.status, 200);
    assert_eq!(
        instance.body["tenant_discovery_endpoint"],
        format!("{base}{tenant}/v2.0/.well-known/openid-configuration")
    );
    let host = base.trim_start_matches("https://").trim_end_matches('/');
    assert_eq!(
        instance.body["metadata"][0]["aliases"],
        serde_json::json!([host])
    );

    let issuer = get_json(
        &client,
        &format!("{}/.well-known/openid-configuration", mock.issuer_url()),
    )
    .await;
    assert_eq!(issuer.body["issuer"], mock.issuer_url());
    let issuer_keys = get_json(&client, issuer.body["jwks_uri"].as_str().expect("jwks_uri")).await;
    assert_eq!(issuer_keys.body, mock.issuer_jwks());
    assert_ne!(
        issuer_keys.body, keys.body,
        "issuer and token signer use different keys"
    );
    assert!(mock.stats().discovery_requests >= 5);
}

#[tokio::test]
async fn discovery_of_an_unknown_tenant_is_90002() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let answer = get_json(
        &client,
        &format!(
            "{}no-such-tenant/v2.0/.well-known/openid-configuration",
            mock.authority_url()
        ),
    )
    .await;
    answer.assert_aadsts(400, "invalid_request", 90002);
}

#[tokio::test]
async fn federated_assertion_gets_a_token_that_verifies_with_the_served_jwks() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    // Python SDKs send the token file untrimmed: a trailing newline must not matter.
    let assertion = format!(
        "{}\n",
        mock.mint_federated_token(DEFAULT_SUBJECT, HOUR)
            .expect("mint")
    );
    let scope = "https://management.core.windows.net//.default";
    let answer = post_token(
        &client,
        &mock,
        mock.tenant_id(),
        &[
            ("client_id", mock.client_id()),
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &assertion),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert_eq!(answer.body["token_type"], "Bearer");
    let expires_in = answer.body["expires_in"]
        .as_u64()
        .expect("expires_in is an integer");
    assert!(
        (3599..=5399).contains(&expires_in),
        "Entra-like 60-90 min, got {expires_in}"
    );
    assert_eq!(answer.body["ext_expires_in"].as_u64(), Some(expires_in));
    assert!(
        answer.body.get("refresh_in").is_none(),
        "no refresh_in under two hours"
    );
    assert_eq!(answer.headers["cache-control"], "no-store, no-cache");

    let token = answer.body["access_token"].as_str().expect("access_token");
    // One trailing "/.default" is stripped: the audience keeps its slash.
    let claims = verify_with_served_jwks(
        &client,
        &mock,
        token,
        "https://management.core.windows.net/",
    )
    .await;
    assert_eq!(claims["tid"], mock.tenant_id());
    assert_eq!(claims["appid"], mock.client_id());
    assert_eq!(claims["azp"], mock.client_id());
    assert_eq!(claims["azpacr"], "2");
    assert_eq!(claims["oid"], mock.object_id());
    assert_eq!(claims["sub"], mock.object_id());
    let exp = claims["exp"].as_u64().expect("exp");
    let now = now();
    assert!(
        exp.abs_diff(now + expires_in) <= 2,
        "exp matches expires_in"
    );
    assert!(
        claims["nbf"].as_u64().expect("nbf") <= now && claims["iat"].as_u64().expect("iat") <= now
    );
    let stats = mock.stats();
    assert_eq!(
        (
            stats.token_requests,
            stats.tokens_issued,
            stats.token_errors
        ),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn configured_lifetime_is_used_and_long_tokens_carry_refresh_in() {
    let cfg = MockAadConfig {
        token_lifetime: Some(Duration::from_secs(3 * 3600)),
        ..MockAadConfig::default()
    };
    let (mock, client) = mock_and_client(cfg).await;
    let answer = exchange(
        &client,
        &mock,
        &FederatedTokenSpec::new(DEFAULT_SUBJECT, HOUR),
    )
    .await;
    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert_eq!(answer.body["expires_in"], 10800);
    assert_eq!(answer.body["refresh_in"], 5400);
}

#[tokio::test]
async fn wrong_subject_is_70021() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let answer = exchange(
        &client,
        &mock,
        &FederatedTokenSpec::new("system:serviceaccount:default:someone-else", HOUR),
    )
    .await;
    answer.assert_aadsts(400, "invalid_request", 70021);
    let description = answer.body["error_description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        description.contains("Assertion Subject: 'system:serviceaccount:default:someone-else'"),
        "{description}"
    );
    assert!(
        description.contains(&format!("Assertion Issuer: '{}'", mock.issuer_url())),
        "{description}"
    );
    assert_eq!(mock.stats().token_errors, 1);
}

#[tokio::test]
async fn subject_differing_only_in_case_is_7002138() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    exchange(
        &client,
        &mock,
        &FederatedTokenSpec::new(DEFAULT_SUBJECT.to_uppercase(), HOUR),
    )
    .await
    .assert_aadsts(401, "invalid_client", 7002138);
}

#[tokio::test]
async fn expired_assertion_is_700024_with_401() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let spec = FederatedTokenSpec {
        issued_at: SystemTime::now() - 2 * HOUR,
        ..FederatedTokenSpec::new(DEFAULT_SUBJECT, HOUR)
    };
    exchange(&client, &mock, &spec)
        .await
        .assert_aadsts(401, "invalid_client", 700024);
}

#[tokio::test]
async fn assertion_from_the_future_is_700024() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let spec = FederatedTokenSpec {
        issued_at: SystemTime::now() + HOUR,
        ..FederatedTokenSpec::new(DEFAULT_SUBJECT, HOUR)
    };
    exchange(&client, &mock, &spec)
        .await
        .assert_aadsts(401, "invalid_client", 700024);
}

#[tokio::test]
async fn unknown_client_is_700016() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let assertion = mock
        .mint_federated_token(DEFAULT_SUBJECT, HOUR)
        .expect("mint");
    let answer = assertion_request(
        &client,
        &mock,
        "99999999-9999-4999-8999-999999999999",
        &assertion,
    )
    .await;
    answer.assert_aadsts(400, "unauthorized_client", 700016);
}

#[tokio::test]
async fn unknown_tenant_is_90002() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let assertion = mock
        .mint_federated_token(DEFAULT_SUBJECT, HOUR)
        .expect("mint");
    let answer = post_token(
        &client,
        &mock,
        "11111111-2222-4333-8444-555555555555",
        &[
            ("client_id", mock.client_id()),
            ("grant_type", "client_credentials"),
            ("scope", ARM_SCOPE),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &assertion),
        ],
    )
    .await;
    answer.assert_aadsts(400, "invalid_request", 90002);
}

#[tokio::test]
async fn garbage_assertion_is_50027() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    for garbage in [
        "not-a-jwt",
        "a.b.c",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
    ] {
        let answer = assertion_request(&client, &mock, mock.client_id(), garbage).await;
        answer.assert_aadsts(400, "invalid_request", 50027);
    }
}

#[tokio::test]
async fn tampered_assertion_fails_signature_validation_700027() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let other = mock
        .mint_federated_token("system:serviceaccount:default:attacker", HOUR)
        .expect("mint");
    let genuine = mock
        .mint_federated_token(DEFAULT_SUBJECT, HOUR)
        .expect("mint");
    // The attacker's header and payload with the signature of a token for the trusted subject.
    let (head, _) = other.rsplit_once('.').expect("three parts");
    let (_, signature) = genuine.rsplit_once('.').expect("three parts");
    let forged = format!("{head}.{signature}");
    assertion_request(&client, &mock, mock.client_id(), &forged)
        .await
        .assert_aadsts(401, "invalid_client", 700027);
}

#[tokio::test]
async fn token_signed_by_another_key_claiming_our_issuer_is_700027() {
    let mock = start_mock(MockAadConfig::default()).await;
    let impostor = start_mock(MockAadConfig {
        public_url: Some(mock.authority_url().to_owned()),
        ..MockAadConfig::default()
    })
    .await;
    assert_eq!(impostor.issuer_url(), mock.issuer_url());
    let client = client_for(&mock);
    let assertion = impostor
        .mint_federated_token(DEFAULT_SUBJECT, HOUR)
        .expect("mint");
    assertion_request(&client, &mock, mock.client_id(), &assertion)
        .await
        .assert_aadsts(401, "invalid_client", 700027);
}

#[tokio::test]
async fn wrong_audience_is_700212() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let spec = FederatedTokenSpec {
        audience: "api://SomethingElse".into(),
        ..FederatedTokenSpec::new(DEFAULT_SUBJECT, HOUR)
    };
    exchange(&client, &mock, &spec)
        .await
        .assert_aadsts(401, "invalid_client", 700212);
}

#[tokio::test]
async fn untrusted_issuer_is_700211() {
    let mock = start_mock(MockAadConfig::default()).await;
    let stranger = start_mock(MockAadConfig::default()).await;
    let client = client_for(&mock);
    let assertion = stranger
        .mint_federated_token(DEFAULT_SUBJECT, HOUR)
        .expect("mint");
    assertion_request(&client, &mock, mock.client_id(), &assertion)
        .await
        .assert_aadsts(401, "invalid_client", 700211);
}

fn app_trusting(issuer: &str) -> AppRegistration {
    AppRegistration {
        federated_credentials: vec![FederatedCredential {
            issuer: issuer.to_owned(),
            ..FederatedCredential::self_issued(DEFAULT_SUBJECT)
        }],
        ..AppRegistration::default_app()
    }
}

#[tokio::test]
async fn external_issuer_keys_are_fetched_through_its_discovery_document() {
    // The external issuer: a second mock on plain HTTP (only its issuer endpoints are used).
    let external = start_mock(MockAadConfig {
        plain_http: true,
        ..MockAadConfig::default()
    })
    .await;
    assert!(external.issuer_url().starts_with("http://127.0.0.1:"));
    let (mock, client) = mock_and_client(MockAadConfig {
        apps: vec![app_trusting(external.issuer_url())],
        ..MockAadConfig::default()
    })
    .await;
    let assertion = external
        .mint_federated_token(DEFAULT_SUBJECT, HOUR)
        .expect("mint");
    let answer = assertion_request(&client, &mock, mock.client_id(), &assertion).await;
    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert_eq!(
        external.stats().discovery_requests,
        2,
        "discovery document and JWKS fetched once each"
    );

    // Its own issuer is no longer trusted by this app.
    let own = mock
        .mint_federated_token(DEFAULT_SUBJECT, HOUR)
        .expect("mint");
    assertion_request(&client, &mock, mock.client_id(), &own)
        .await
        .assert_aadsts(401, "invalid_client", 700211);
}

#[tokio::test]
async fn unreachable_external_issuer_is_50166() {
    let gone = start_mock(MockAadConfig {
        plain_http: true,
        ..MockAadConfig::default()
    })
    .await;
    let assertion = gone
        .mint_federated_token(DEFAULT_SUBJECT, HOUR)
        .expect("mint");
    let issuer = gone.issuer_url().to_owned();
    gone.shutdown().await;
    let (mock, client) = mock_and_client(MockAadConfig {
        apps: vec![app_trusting(&issuer)],
        ..MockAadConfig::default()
    })
    .await;
    assertion_request(&client, &mock, mock.client_id(), &assertion)
        .await
        .assert_aadsts(400, "invalid_request", 50166);
}

fn app_with_secret(secret: &str) -> AppRegistration {
    AppRegistration {
        client_secret: Some(ClientSecret(secret.into())),
        ..AppRegistration::default_app()
    }
}

#[tokio::test]
async fn client_secret_succeeds_and_a_wrong_one_is_7000215() {
    let (mock, client) = mock_and_client(MockAadConfig {
        apps: vec![app_with_secret("s3cret-value")],
        ..MockAadConfig::default()
    })
    .await;
    let form = |secret: &'static str| {
        [
            ("client_id", DEFAULT_CLIENT_ID),
            ("grant_type", "client_credentials"),
            ("scope", ARM_SCOPE),
            ("client_secret", secret),
        ]
    };
    let ok = post_token(&client, &mock, mock.tenant_id(), &form("s3cret-value")).await;
    assert_eq!(ok.status, 200, "{:#}", ok.body);
    let claims = verify_with_served_jwks(
        &client,
        &mock,
        ok.body["access_token"].as_str().expect("token"),
        "https://management.azure.com",
    )
    .await;
    assert_eq!(claims["azpacr"], "1", "secret authentication");

    post_token(&client, &mock, mock.tenant_id(), &form("wrong"))
        .await
        .assert_aadsts(401, "invalid_client", 7000215);
}

#[tokio::test]
async fn secret_for_an_app_without_one_is_7000215_and_no_credential_is_7000218() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let base = [
        ("client_id", DEFAULT_CLIENT_ID),
        ("grant_type", "client_credentials"),
        ("scope", ARM_SCOPE),
    ];
    let mut with_secret = base.to_vec();
    with_secret.push(("client_secret", "anything"));
    post_token(&client, &mock, mock.tenant_id(), &with_secret)
        .await
        .assert_aadsts(401, "invalid_client", 7000215);
    post_token(&client, &mock, mock.tenant_id(), &base)
        .await
        .assert_aadsts(401, "invalid_client", 7000218);
}

#[tokio::test]
async fn malformed_requests_get_entra_errors() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let assertion = mock
        .mint_federated_token(DEFAULT_SUBJECT, HOUR)
        .expect("mint");
    let tenant = mock.tenant_id();
    let with = |grant: &'static str, scope: &'static str| {
        vec![
            ("client_id", DEFAULT_CLIENT_ID),
            ("grant_type", grant),
            ("scope", scope),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion.as_str()),
        ]
    };
    for (grant, scope, error, code) in [
        ("password", ARM_SCOPE, "unsupported_grant_type", 70003),
        (
            "client_credentials",
            "https://graph.microsoft.com/User.Read",
            "invalid_scope",
            1002012,
        ),
        (
            "client_credentials",
            "https://a/.default https://b/.default",
            "invalid_scope",
            70011,
        ),
        ("client_credentials", "", "invalid_request", 900144),
    ] {
        post_token(&client, &mock, tenant, &with(grant, scope))
            .await
            .assert_aadsts(400, error, code);
    }
    post_token(&client, &mock, tenant, &[("client_id", DEFAULT_CLIENT_ID)])
        .await
        .assert_aadsts(400, "invalid_request", 900144);

    // A JSON body is not a form: Entra sees no fields.
    let url = mock.token_endpoint();
    let json = client
        .post(&url)
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .expect("answer");
    answer(json)
        .await
        .assert_aadsts(400, "invalid_request", 900144);
    let get = client.get(&url).send().await.expect("answer");
    answer(get)
        .await
        .assert_aadsts(400, "invalid_request", 900561);
}

#[tokio::test]
async fn client_request_id_comes_back_as_correlation_id() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let response = client
        .post(mock.token_endpoint())
        .header("client-request-id", "d5871b75-4045-44ae-afd0-ba1ff32c711c")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("answer");
    let answer = answer(response).await;
    answer.assert_aadsts(400, "invalid_request", 900144);
    assert_eq!(
        answer.body["correlation_id"],
        "d5871b75-4045-44ae-afd0-ba1ff32c711c"
    );
    assert_eq!(
        answer.headers["client-request-id"],
        "d5871b75-4045-44ae-afd0-ba1ff32c711c"
    );
}

async fn good_request(client: &reqwest::Client, mock: &mock_aad::MockAad) -> Answer {
    exchange(
        client,
        mock,
        &FederatedTokenSpec::new(DEFAULT_SUBJECT, HOUR),
    )
    .await
}

#[tokio::test]
async fn fault_503_for_the_next_two_requests_then_normal() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    mock.inject_fault(mock_aad::Fault::times(FaultAction::Unavailable, 2));
    good_request(&client, &mock)
        .await
        .assert_aadsts(503, "temporarily_unavailable", 90033);
    good_request(&client, &mock)
        .await
        .assert_aadsts(503, "temporarily_unavailable", 90033);
    assert_eq!(good_request(&client, &mock).await.status, 200);
    let stats = mock.stats();
    assert_eq!(
        (
            stats.token_requests,
            stats.faults_injected,
            stats.tokens_issued
        ),
        (3, 2, 1)
    );
}

#[tokio::test]
async fn fault_429_carries_retry_after() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    mock.inject_fault(mock_aad::Fault::times(
        FaultAction::Throttle {
            retry_after_secs: 7,
        },
        1,
    ));
    let throttled = good_request(&client, &mock).await;
    throttled.assert_aadsts(429, "temporarily_unavailable", 90055);
    assert_eq!(throttled.headers["retry-after"], "7");
    assert_eq!(good_request(&client, &mock).await.status, 200);
}

#[tokio::test]
async fn fault_injects_a_given_aadsts_error_until_cleared() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    mock.inject_fault(mock_aad::Fault::always(FaultAction::Aadsts(700024)));
    for _ in 0..3 {
        good_request(&client, &mock)
            .await
            .assert_aadsts(401, "invalid_client", 700024);
    }
    mock.clear_faults();
    assert_eq!(good_request(&client, &mock).await.status, 200);
}

#[tokio::test]
async fn fault_delay_slows_the_answer_but_it_succeeds() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let _warm = good_request(&client, &mock).await;
    mock.inject_fault(mock_aad::Fault::times(
        FaultAction::Delay(Duration::from_millis(1000)),
        1,
    ));
    let started = Instant::now();
    assert_eq!(good_request(&client, &mock).await.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(good_request(&client, &mock).await.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "second request is not delayed"
    );
}

#[tokio::test]
async fn fault_share_zero_never_fires_and_share_one_always_does() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    mock.inject_fault(mock_aad::Fault {
        action: FaultAction::Unavailable,
        times: None,
        share: Some(0.0),
    });
    for _ in 0..5 {
        assert_eq!(good_request(&client, &mock).await.status, 200);
    }
    mock.inject_fault(mock_aad::Fault {
        action: FaultAction::Unavailable,
        times: None,
        share: Some(1.0),
    });
    for _ in 0..3 {
        assert_eq!(good_request(&client, &mock).await.status, 503);
    }
}

#[tokio::test]
async fn admin_endpoint_sets_and_clears_faults_and_reports_stats() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let admin = format!("{}_mock/faults", mock.authority_url());
    let set = client
        .post(&admin)
        .json(&serde_json::json!({"action": "429:3", "times": 1}))
        .send()
        .await
        .expect("answer");
    assert_eq!(set.status(), 204);
    let throttled = good_request(&client, &mock).await;
    assert_eq!(
        (
            throttled.status,
            throttled.headers["retry-after"].to_str().ok()
        ),
        (429, Some("3"))
    );

    let set = client
        .post(&admin)
        .json(&serde_json::json!({"action": "503"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(set.status(), 204);
    assert_eq!(good_request(&client, &mock).await.status, 503);
    assert_eq!(
        client.delete(&admin).send().await.expect("answer").status(),
        204
    );
    assert_eq!(good_request(&client, &mock).await.status, 200);

    let bad = client
        .post(&admin)
        .json(&serde_json::json!({"action": "teapot"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(bad.status(), 400);

    let stats = get_json(&client, &format!("{}_mock/stats", mock.authority_url())).await;
    assert_eq!(stats.body["token_requests"], 3);
    assert_eq!(stats.body["faults_injected"], 2);
    assert_eq!(stats.body["tokens_issued"], 1);

    let minted = client
        .get(format!(
            "{}_mock/federated-token?sub=system:serviceaccount:ns:sa&lifetime=10m",
            mock.authority_url()
        ))
        .send()
        .await
        .expect("answer");
    assert_eq!(minted.status(), 200);
    let token = minted.text().await.expect("token text");
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&token).expect("a JWT");
    assert_eq!(claims["sub"], "system:serviceaccount:ns:sa");
    assert_eq!(
        claims["exp"]
            .as_u64()
            .zip(claims["iat"].as_u64())
            .map(|(e, i)| e - i),
        Some(600)
    );
}

fn data_target(dir: &Path) -> std::path::PathBuf {
    std::fs::read_link(dir.join("..data")).expect("..data is a symlink")
}

#[tokio::test]
async fn federated_token_file_has_kubelet_layout_and_rotates_at_80_percent() {
    let mock = start_mock(MockAadConfig::default()).await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("azure-identity-token");
    let started = Instant::now();
    let writer = mock
        .federated_token_writer(&dir, DEFAULT_SUBJECT, Duration::from_secs(2))
        .expect("writer starts");
    let path = writer.token_path();
    assert_eq!(path, dir.join("token"));
    assert_eq!(
        std::fs::read_link(&path).expect("token is a symlink"),
        Path::new("..data/token")
    );
    let first_target = data_target(&dir);
    let name = first_target.to_str().expect("utf-8");
    assert!(
        name.starts_with("..2") && dir.join(name).is_dir(),
        "timestamped directory, got {name}"
    );
    let first = std::fs::read_to_string(&path).expect("token readable");
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&first).expect("a JWT");
    assert_eq!(claims["iss"], mock.issuer_url());
    assert_eq!(claims["sub"], DEFAULT_SUBJECT);
    assert_eq!(
        claims["aud"],
        serde_json::json!(["api://AzureADTokenExchange"])
    );
    assert_eq!(claims["kubernetes.io"]["namespace"], "default");
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["name"],
        "workload"
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // Rotation at 80% of 2 s: never before 1.6 s (polled, so a loaded machine only makes it late).
    while writer.writes() < 2 && started.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rotated_after = started.elapsed();
    assert_eq!(writer.writes(), 2, "rotated within 8 s");
    assert!(
        rotated_after >= Duration::from_millis(1600),
        "rotated too early: {rotated_after:?}"
    );
    let second_target = data_target(&dir);
    assert_ne!(
        second_target, first_target,
        "..data points at a new directory"
    );
    assert!(
        !dir.join(&first_target).exists(),
        "the old directory is removed"
    );
    let second = std::fs::read_to_string(&path).expect("token readable");
    assert_ne!(second, first, "the token changed");

    // The token in the file is accepted by the token endpoint.
    let client = client_for(&mock);
    assert_eq!(
        assertion_request(&client, &mock, mock.client_id(), &second)
            .await
            .status,
        200
    );

    let entries: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        entries.len(),
        3,
        "only the data dir, ..data and token: {entries:?}"
    );
    drop(writer);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(
        data_target(&dir),
        second_target,
        "no rotation after the writer is dropped"
    );
}

#[tokio::test]
async fn non_loopback_listen_is_refused_unless_allowed() {
    let wildcard: std::net::SocketAddr = "0.0.0.0:0".parse().expect("addr");
    let refused = mock_aad::start(MockAadConfig {
        listen: wildcard,
        ..MockAadConfig::default()
    })
    .await;
    assert!(
        matches!(refused, Err(MockAadError::NonLoopback(_))),
        "refused without the flag"
    );
    let plain = mock_aad::start(MockAadConfig {
        listen: wildcard,
        allow_non_loopback: true,
        plain_http: true,
        ..MockAadConfig::default()
    })
    .await;
    assert!(
        matches!(plain, Err(MockAadError::PlainHttpNotLoopback(_))),
        "plain HTTP never beyond loopback"
    );
    let allowed = mock_aad::start(MockAadConfig {
        listen: wildcard,
        allow_non_loopback: true,
        ..MockAadConfig::default()
    })
    .await
    .expect("allowed with the flag");
    assert!(allowed.authority_url().starts_with("https://localhost:"));
    allowed.shutdown().await;
}

#[test]
fn cli_refuses_non_loopback_and_explains_why() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_identity-sidecar"))
        .args(["mock-aad", "--listen", "0.0.0.0:0"])
        .output()
        .expect("binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not an identity provider") && stderr.contains("--allow-non-loopback"),
        "{stderr}"
    );
}

#[tokio::test]
async fn config_file_registers_apps_in_toml_and_json() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let toml_path = tmp.path().join("apps.toml");
    std::fs::write(
        &toml_path,
        r#"
token_lifetime_secs = 4000
[[apps]]
tenant_id = "aaaaaaaa-0000-4000-8000-000000000001"
client_id = "cccccccc-0000-4000-8000-000000000001"
client_secret = "from-toml"
[[apps.federated_credentials]]
issuer = "self"
subject = "system:serviceaccount:prod:api"
"#,
    )
    .expect("write");
    let file = mock_aad::RegistryFile::load(&toml_path).expect("TOML loads");
    let json_path = tmp.path().join("apps.json");
    std::fs::write(&json_path, serde_json::to_string(&file).expect("serialize")).expect("write");
    assert_eq!(
        mock_aad::RegistryFile::load(&json_path).expect("JSON loads"),
        file
    );

    let mock = start_mock(MockAadConfig {
        apps: file.apps,
        token_lifetime: file.token_lifetime_secs.map(Duration::from_secs),
        ..MockAadConfig::default()
    })
    .await;
    assert_eq!(mock.tenant_id(), "aaaaaaaa-0000-4000-8000-000000000001");
    let client = client_for(&mock);
    let assertion = mock
        .mint_federated_token("system:serviceaccount:prod:api", HOUR)
        .expect("mint");
    let answer = assertion_request(
        &client,
        &mock,
        "cccccccc-0000-4000-8000-000000000001",
        &assertion,
    )
    .await;
    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert_eq!(answer.body["expires_in"], 4000);

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[[apps]]\ntenant = 1\n").expect("write");
    assert!(matches!(
        mock_aad::RegistryFile::load(&bad),
        Err(MockAadError::Config(_))
    ));
}

#[tokio::test]
async fn ca_file_trusts_the_server_for_an_independent_client() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ca = tmp.path().join("nested/ca.pem");
    let mock = start_mock(MockAadConfig {
        ca_file: Some(ca.clone()),
        ..MockAadConfig::default()
    })
    .await;
    let pem = std::fs::read(&ca).expect("CA written where asked");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("PEM")])
        .build()
        .expect("client");
    // Both names in the certificate work.
    for host in ["127.0.0.1", "localhost"] {
        let url = format!(
            "https://{host}:{}/{}/v2.0/.well-known/openid-configuration",
            mock.local_addr().port(),
            mock.tenant_id()
        );
        let response = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(response.status(), 200);
    }
    // A client without the CA is refused.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .expect("client");
    assert!(untrusting.get(mock.token_endpoint()).send().await.is_err());
    mock.shutdown().await;
    assert!(ca.exists(), "a CA file the caller chose is left in place");
}

#[tokio::test]
async fn client_secret_basic_authorization_header_is_accepted() {
    let (mock, client) = mock_and_client(MockAadConfig {
        apps: vec![app_with_secret("p@ss:word")],
        ..MockAadConfig::default()
    })
    .await;
    let form = [("grant_type", "client_credentials"), ("scope", ARM_SCOPE)];
    let ok = client
        .post(mock.token_endpoint())
        // RFC 6749 §2.3.1: id and secret are form-encoded before base64.
        .basic_auth(DEFAULT_CLIENT_ID, Some("p%40ss%3Aword"))
        .form(&form)
        .send()
        .await
        .expect("answer");
    let ok = answer(ok).await;
    assert_eq!(ok.status, 200, "{:#}", ok.body);
    let wrong = client
        .post(mock.token_endpoint())
        .basic_auth(DEFAULT_CLIENT_ID, Some("nope"))
        .form(&form)
        .send()
        .await
        .expect("answer");
    answer(wrong)
        .await
        .assert_aadsts(401, "invalid_client", 7000215);
}

#[tokio::test]
async fn common_metadata_has_a_placeholder_issuer() {
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let oidc = get_json(
        &client,
        &format!(
            "{}common/v2.0/.well-known/openid-configuration",
            mock.authority_url()
        ),
    )
    .await;
    assert_eq!(oidc.status, 200);
    assert_eq!(
        oidc.body["issuer"],
        format!("{}{{tenantid}}/v2.0", mock.authority_url())
    );
}

#[tokio::test]
async fn cli_prints_the_environment_serves_with_flags_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt;

    let tmp = tempfile::tempdir().expect("temp dir");
    let ca = tmp.path().join("ca.pem");
    let token_dir = tmp.path().join("token");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_identity-sidecar"))
        .args([
            "mock-aad",
            "--listen",
            "127.0.0.1:0",
            "--fault",
            "503",
            "--fault-times",
            "1",
            "--token-lifetime",
            "2h",
        ])
        .arg("--ca-file")
        .arg(&ca)
        .arg("--federated-token-dir")
        .arg(&token_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut env = std::collections::HashMap::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await
    {
        for assignment in line
            .strip_prefix("export ")
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Some((k, v)) = assignment.split_once('=') {
                env.insert(k.to_owned(), v.to_owned());
            }
        }
        if line.starts_with("export REQUESTS_CA_BUNDLE") {
            break;
        }
    }
    let authority = env
        .get("AZURE_AUTHORITY_HOST")
        .expect("authority printed")
        .clone();
    assert_eq!(
        env.get("AZURE_FEDERATED_TOKEN_FILE").map(String::as_str),
        token_dir.join("token").to_str()
    );
    assert_eq!(env.get("SSL_CERT_FILE").map(String::as_str), ca.to_str());
    assert_eq!(
        env.get("AZURE_TENANT_ID").map(String::as_str),
        Some(DEFAULT_TENANT_ID)
    );

    let client = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("CA")).expect("PEM"),
        ])
        .build()
        .expect("client");
    let assertion = std::fs::read_to_string(token_dir.join("token")).expect("token file");
    let form = [
        ("client_id", DEFAULT_CLIENT_ID),
        ("grant_type", "client_credentials"),
        ("scope", ARM_SCOPE),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion.as_str()),
    ];
    let url = format!("{authority}{DEFAULT_TENANT_ID}/oauth2/v2.0/token");
    let first = answer(client.post(&url).form(&form).send().await.expect("answer")).await;
    assert_eq!(first.status, 503, "--fault 503 --fault-times 1");
    let second = answer(client.post(&url).form(&form).send().await.expect("answer")).await;
    assert_eq!(second.status, 200, "{:#}", second.body);
    assert_eq!(second.body["expires_in"], 7200);

    let pid = i32::try_from(child.id().expect("pid")).expect("pid fits");
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

#[tokio::test]
async fn ca_file_replaces_a_planted_symlink_instead_of_writing_through_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "keep me").expect("write");
    let ca = tmp.path().join("ca.pem");
    std::os::unix::fs::symlink(&victim, &ca).expect("symlink");
    let mock = start_mock(MockAadConfig {
        ca_file: Some(ca.clone()),
        ..MockAadConfig::default()
    })
    .await;
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep me");
    assert!(
        !std::fs::symlink_metadata(&ca)
            .expect("ca")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_to_string(&ca).expect("ca").as_str(),
        mock.ca_pem().expect("pem")
    );
}

#[tokio::test]
async fn a_public_url_without_scheme_is_a_config_error() {
    let result = mock_aad::start(MockAadConfig {
        public_url: Some("127.0.0.1:8443".into()),
        ..MockAadConfig::default()
    })
    .await;
    assert!(matches!(result, Err(MockAadError::Config(_))));
}

#[test]
fn federated_token_writer_outside_a_runtime_is_an_error_not_a_panic() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mock = runtime.block_on(start_mock(MockAadConfig::default()));
    let tmp = tempfile::tempdir().expect("temp dir");
    let result = mock.federated_token_writer(tmp.path(), DEFAULT_SUBJECT, HOUR);
    assert!(matches!(result, Err(MockAadError::Config(_))));
    runtime.block_on(mock.shutdown());
}

#[tokio::test]
async fn hostile_assertions_get_entra_errors_never_a_crash() {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let (mock, client) = mock_and_client(MockAadConfig::default()).await;
    let now = now();
    let claims = serde_json::json!({
        "iss": mock.issuer_url(), "sub": DEFAULT_SUBJECT, "aud": "api://AzureADTokenExchange",
        "exp": now + 600, "nbf": now, "iat": now,
    });
    // HS256 "signed" with a guessable secret: key confusion must not pass.
    let hs_header = b64(serde_json::json!({"alg": "HS256", "typ": "JWT"}));
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"secret"),
    )
    .expect("HS256 token");
    let cases: Vec<(String, u64)> = vec![
        (
            format!(
                "{}.{}.",
                b64(serde_json::json!({"alg": "none"})),
                b64(claims.clone())
            ),
            50027,
        ),
        (hs, 700027),
        (format!("{hs_header}.{}.AAAA", b64(claims.clone())), 700027),
        (
            format!("{hs_header}.{}.AAAA", b64(serde_json::json!({"iss": 42}))),
            50027,
        ),
        (
            format!("{hs_header}.{}.AAAA", b64(serde_json::json!([1, 2, 3]))),
            50027,
        ),
        ("\u{0}\u{1}..".to_owned(), 50027),
        ("a".repeat(200_000), 50027),
    ];
    for (assertion, code) in cases {
        let answer = assertion_request(&client, &mock, mock.client_id(), &assertion).await;
        let status = if code == 50027 { 400 } else { 401 };
        let error = if code == 50027 {
            "invalid_request"
        } else {
            "invalid_client"
        };
        answer.assert_aadsts(status, error, code);
    }
    // The mock is still fine afterwards.
    assert_eq!(
        exchange(
            &client,
            &mock,
            &FederatedTokenSpec::new(DEFAULT_SUBJECT, HOUR)
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn token_requests_are_recorded_without_secrets() {
    let (mock, client) = mock_and_client(MockAadConfig {
        apps: vec![app_with_secret("very-secret")],
        ..MockAadConfig::default()
    })
    .await;
    let assertion = format!(
        "{}\n",
        mock.mint_federated_token(DEFAULT_SUBJECT, HOUR)
            .expect("mint")
    );
    assert_eq!(
        assertion_request(&client, &mock, DEFAULT_CLIENT_ID, &assertion)
            .await
            .status,
        200
    );
    let form = [
        ("client_id", DEFAULT_CLIENT_ID),
        ("grant_type", "client_credentials"),
        ("scope", "api://x/.default"),
        ("client_secret", "wrong-secret"),
    ];
    assert_eq!(
        post_token(&client, &mock, mock.tenant_id(), &form)
            .await
            .status,
        401
    );

    let log = mock.token_requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].credential, "client_assertion");
    assert_eq!(log[0].assertion_subject.as_deref(), Some(DEFAULT_SUBJECT));
    assert!(
        log[0].assertion_untrimmed,
        "the trailing newline is noticed"
    );
    assert_eq!((log[0].status, log[0].error_code), (200, None));
    assert_eq!(log[0].scope.as_deref(), Some(ARM_SCOPE));
    assert_eq!(log[1].credential, "client_secret");
    assert_eq!((log[1].status, log[1].error_code), (401, Some(7000215)));
    assert_eq!(log[1].client_id.as_deref(), Some(DEFAULT_CLIENT_ID));

    let served = get_json(&client, &format!("{}_mock/requests", mock.authority_url())).await;
    assert_eq!(served.body.as_array().map(Vec::len), Some(2));
    let text = served.body.to_string();
    assert!(
        !text.contains("wrong-secret") && !text.contains(assertion.trim()),
        "no secrets or tokens"
    );
}
