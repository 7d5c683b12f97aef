//! Test helpers for the mock Entra ID: an HTTPS client trusting the mock's CA, token requests,
//! and checks of Entra-shaped answers and of issued tokens against the served JWKS.
#![allow(dead_code)] // each test crate uses a different subset

use std::time::Duration;

use identity_sidecar::mock_aad::{FederatedTokenSpec, MockAad, MockAadConfig};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
pub const HOUR: Duration = Duration::from_secs(3600);

/// Starts a zero-config mock (or the given config).
pub async fn start_mock(cfg: MockAadConfig) -> MockAad {
    match identity_sidecar::mock_aad::start(cfg).await {
        Ok(mock) => mock,
        Err(e) => panic!("mock-aad did not start: {e}"),
    }
}

/// A started mock with a client trusting it: the usual first line of a test.
pub async fn mock_and_client(cfg: MockAadConfig) -> (MockAad, reqwest::Client) {
    let mock = start_mock(cfg).await;
    let client = client_for(&mock);
    (mock, client)
}

/// A reqwest client that trusts only the mock's CA (or plain HTTP when the mock has no CA).
pub fn client_for(mock: &MockAad) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(20));
    if let Some(pem) = mock.ca_pem() {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes()).expect("CA PEM parses");
        builder = builder.tls_certs_only([ca]);
    }
    builder.build().expect("client builds")
}

/// An answer: status, headers and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Answer {
    /// Asserts an Entra error answer with this status, `error` and AADSTS code, and the full body shape.
    pub fn assert_aadsts(&self, status: u16, error: &str, code: u64) {
        assert_eq!(self.status, status, "status of {:#}", self.body);
        assert_eq!(self.body["error"], error, "error of {:#}", self.body);
        assert_eq!(
            self.body["error_codes"],
            serde_json::json!([code]),
            "codes of {:#}",
            self.body
        );
        let description = self.body["error_description"]
            .as_str()
            .expect("error_description is a string");
        assert!(
            description.starts_with(&format!("AADSTS{code}: ")),
            "description: {description}"
        );
        for field in ["trace_id", "correlation_id", "timestamp"] {
            let value = self.body[field].as_str().unwrap_or_default();
            assert!(!value.is_empty(), "{field} missing in {:#}", self.body);
        }
        assert!(description.contains(&format!(
            "Trace ID: {}",
            self.body["trace_id"].as_str().unwrap_or("?")
        )));
        assert!(description.contains("Correlation ID: "));
    }
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> Answer {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    answer(response).await
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body reads");
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

/// POSTs a form to the token endpoint of `tenant`.
pub async fn post_token(
    client: &reqwest::Client,
    mock: &MockAad,
    tenant: &str,
    form: &[(&str, &str)],
) -> Answer {
    let url = format!("{}{tenant}/oauth2/v2.0/token", mock.authority_url());
    let response = client
        .post(&url)
        .form(form)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    answer(response).await
}

/// The client-credentials request with a federated assertion, as azure-identity sends it.
pub async fn assertion_request(
    client: &reqwest::Client,
    mock: &MockAad,
    client_id: &str,
    assertion: &str,
) -> Answer {
    post_token(
        client,
        mock,
        mock.tenant_id(),
        &[
            ("client_assertion", assertion),
            ("client_assertion_type", JWT_BEARER),
            ("client_id", client_id),
            ("grant_type", "client_credentials"),
            ("scope", ARM_SCOPE),
        ],
    )
    .await
}

/// Mints `spec` from the mock's own issuer and exchanges it as the mock's first app.
pub async fn exchange(
    client: &reqwest::Client,
    mock: &MockAad,
    spec: &FederatedTokenSpec,
) -> Answer {
    let assertion = mock.mint_federated_token_with(spec).expect("mint");
    assertion_request(client, mock, mock.client_id(), &assertion).await
}

/// Verifies `token` with the JWKS the mock serves for its tenant and returns the claims.
pub async fn verify_with_served_jwks(
    client: &reqwest::Client,
    mock: &MockAad,
    token: &str,
    aud: &str,
) -> serde_json::Value {
    let jwks_url = format!(
        "{}{}/discovery/v2.0/keys",
        mock.authority_url(),
        mock.tenant_id()
    );
    let jwks: JwkSet =
        serde_json::from_value(get_json(client, &jwks_url).await.body).expect("JWKS parses");
    verify_with_jwks(&jwks, token, aud, &mock.token_issuer(mock.tenant_id()))
}

/// Verifies signature, `aud`, `iss`, `exp`/`nbf` of `token` against `jwks`.
pub fn verify_with_jwks(jwks: &JwkSet, token: &str, aud: &str, iss: &str) -> serde_json::Value {
    let header = jsonwebtoken::decode_header(token).expect("token header");
    assert_eq!(header.alg, Algorithm::RS256);
    let kid = header.kid.expect("kid in the header");
    let jwk = jwks.find(&kid).expect("the token's kid is in the JWKS");
    let key = DecodingKey::from_jwk(jwk).expect("JWK is usable");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[aud]);
    validation.set_issuer(&[iss]);
    validation.leeway = 0;
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .expect("token verifies")
        .claims
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
