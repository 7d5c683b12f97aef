//! `POST /{tenant}/oauth2/v2.0/token`: the client-credentials grant, checked the way Entra does.
//!
//! Order of checks (each failure is the AADSTS error Entra gives for it): tenant (90002), form
//! fields (900144), grant type (70003), app (700016), client authentication: a `client_assertion`
//! (50027 malformed, 700211 unknown issuer, 50166 issuer keys unreachable, 700027 bad signature,
//! 700024 outside `nbf`/`exp`, 700212 audience, 70021 / 7002138 subject) or a `client_secret` in
//! the form or an `Authorization: Basic` header
//! (7000215; neither given: 7000218); then the scope (70011, 1002012). Success issues an RS256
//! access token whose `aud` is the scope minus one trailing `/.default`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::errors::{AadError, HttpResponse, RequestIds, entra_timestamp, json_response};
use super::state::{Counters, RegisteredApp, State, TokenRequestRecord};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const WIF_DOCS: &str =
    "https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation";
/// Entra tolerates some clock skew on an assertion's `nbf`.
const NBF_SKEW_SECS: u64 = 300;
/// Entra back-dates `iat`/`nbf` of its tokens by five minutes.
const BACKDATE_SECS: u64 = 300;

/// How the client proved who it is; decides `azpacr`/`appidacr` (1 = secret, 2 = assertion).
#[derive(Clone, Copy)]
enum ClientAuth {
    Secret,
    Assertion,
}

/// `client_secret_basic`: client id and secret from an `Authorization: Basic` header.
#[derive(Clone, Debug)]
pub(crate) struct BasicCredentials {
    pub client_id: String,
    pub secret: String,
}

impl BasicCredentials {
    /// Parses `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1); `None` if absent or malformed.
    pub(crate) fn from_header(value: Option<&http::HeaderValue>) -> Option<Self> {
        use base64::Engine;
        let value = value?.to_str().ok()?;
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let unescape = |s: &str| -> String {
            form_urlencoded::parse(format!("v={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        Some(BasicCredentials {
            client_id: unescape(id),
            secret: unescape(secret),
        })
    }
}

type Form = HashMap<String, String>;

fn field<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// Answers one token request. `form_body` is `None` when the body was not form-encoded (Entra
/// reads only a form body; anything else looks like a request without fields).
pub(crate) async fn handle(
    state: &State,
    tenant: &str,
    form_body: Option<&[u8]>,
    basic: Option<BasicCredentials>,
    ids: &RequestIds,
) -> HttpResponse {
    let form: Form = form_urlencoded::parse(form_body.unwrap_or_default())
        .into_owned()
        .collect();
    let outcome = issue(state, tenant, &form, basic.as_ref()).await;
    let assertion = field(&form, "client_assertion");
    let secret = field(&form, "client_secret").or(basic.as_ref().map(|b| b.secret.as_str()));
    let mut record = TokenRequestRecord {
        tenant: tenant.to_owned(),
        client_id: field(&form, "client_id")
            .or(basic.as_ref().map(|b| b.client_id.as_str()))
            .map(str::to_owned),
        scope: field(&form, "scope").map(str::to_owned),
        grant_type: field(&form, "grant_type").map(str::to_owned),
        credential: match (assertion, secret) {
            (Some(_), _) => "client_assertion",
            (None, Some(_)) => "client_secret",
            (None, None) => "none",
        },
        assertion_subject: assertion.and_then(|a| {
            jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(a.trim())
                .ok()
                .and_then(|claims| {
                    claims
                        .get("sub")
                        .and_then(|s| s.as_str())
                        .map(str::to_owned)
                })
        }),
        assertion_untrimmed: assertion.is_some_and(|a| a.trim().len() != a.len()),
        status: 200,
        error_code: None,
        correlation_id: ids.correlation_id.clone(),
    };
    let response = match outcome {
        Ok(body) => {
            Counters::bump(&state.counters.tokens_issued);
            let mut response = json_response(StatusCode::OK, &body);
            ids.stamp(&mut response);
            response
        }
        Err(error) => {
            Counters::bump(&state.counters.token_errors);
            tracing::info!(
                tenant,
                code = error.code,
                error = error.error,
                "token request refused"
            );
            record.status = error.status.as_u16();
            record.error_code = Some(error.code);
            error.into_response(ids)
        }
    };
    state.record(record);
    response
}

async fn issue(
    state: &State,
    tenant: &str,
    form: &Form,
    basic: Option<&BasicCredentials>,
) -> Result<serde_json::Value, AadError> {
    if !state.knows_tenant(tenant) {
        return Err(AadError::unknown_tenant(tenant));
    }
    let field = |name: &str| field(form, name);

    let grant_type =
        field("grant_type").ok_or_else(|| AadError::missing_parameter("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(AadError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = field("client_id")
        .or(basic
            .map(|b| b.client_id.as_str())
            .filter(|id| !id.is_empty()))
        .ok_or_else(|| AadError::missing_parameter("client_id"))?;
    let scope = field("scope").ok_or_else(|| AadError::missing_parameter("scope"))?;
    let app = state.find_app(tenant, client_id).ok_or_else(|| {
        AadError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        )
    })?;

    let auth = if let Some(assertion) = field("client_assertion") {
        match field("client_assertion_type") {
            Some(JWT_BEARER) => {}
            Some(other) => {
                return Err(AadError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    50027,
                    format!(
                        "Invalid JWT token. Unsupported client_assertion_type '{other}'; expected '{JWT_BEARER}'."
                    ),
                ));
            }
            None => return Err(AadError::missing_parameter("client_assertion_type")),
        }
        // Python SDKs send the token file untrimmed (a trailing newline arrives as %0A).
        check_assertion(state, app, assertion.trim()).await?;
        ClientAuth::Assertion
    } else if let Some(secret) = field("client_secret").or(basic.map(|b| b.secret.as_str())) {
        let matches = app
            .client_secret
            .as_ref()
            .is_some_and(|expected| bool::from(expected.as_bytes().ct_eq(secret.as_bytes())));
        if !matches {
            return Err(AadError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                    app.client_id
                ),
            ));
        }
        ClientAuth::Secret
    } else {
        return Err(AadError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };

    let resource = resource_from_scope(scope)?;
    access_token_response(state, app, tenant, &resource, auth)
}

/// `<resource>/.default` → resource, stripping exactly one `/.default` (so
/// `https://management.core.windows.net//.default` → `https://management.core.windows.net/`).
fn resource_from_scope(scope: &str) -> Result<String, AadError> {
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let [single] = scopes.as_slice() else {
        return Err(AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            format!(
                "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        ));
    };
    match single.strip_suffix("/.default") {
        Some(resource) if !resource.is_empty() => Ok(resource.to_owned()),
        _ => Err(AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {single} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        )),
    }
}

fn malformed(detail: &str) -> AadError {
    AadError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        50027,
        format!("JWT token is invalid or malformed. {detail}"),
    )
}

/// Claims of a federated assertion that the checks read.
#[derive(serde::Deserialize)]
struct AssertionClaims {
    iss: Option<String>,
    sub: Option<String>,
    #[serde(default)]
    aud: Audience,
    exp: Option<u64>,
    nbf: Option<u64>,
}

#[derive(serde::Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

impl Audience {
    fn values(&self) -> Vec<&str> {
        match self {
            Audience::One(a) => vec![a.as_str()],
            Audience::Many(list) => list.iter().map(String::as_str).collect(),
            Audience::None => Vec::new(),
        }
    }
}

async fn check_assertion(
    state: &State,
    app: &RegisteredApp,
    assertion: &str,
) -> Result<(), AadError> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| malformed("The header could not be read."))?;
    let unverified: AssertionClaims = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
        .map_err(|_| malformed("The payload could not be read."))?;
    let iss = unverified
        .iss
        .as_deref()
        .ok_or_else(|| malformed("The 'iss' claim is missing."))?;

    let trusted: Vec<_> = app
        .federated_credentials
        .iter()
        .filter(|fic| fic.issuer == iss)
        .collect();
    if trusted.is_empty() {
        return Err(AadError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOCS}"
            ),
        ));
    }

    verify_signature(state, iss, &header, assertion).await?;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let exp = unverified
        .exp
        .ok_or_else(|| malformed("The 'exp' claim is missing."))?;
    let nbf = unverified.nbf.unwrap_or(0);
    if now >= exp || nbf > now + NBF_SKEW_SECS {
        return Err(AadError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials .",
                iso_time(now),
                iso_time(nbf),
                iso_time(exp)
            ),
        ));
    }

    let audiences = unverified.aud.values();
    let trusted: Vec<_> = trusted
        .into_iter()
        .filter(|fic| {
            fic.audiences
                .iter()
                .any(|a| audiences.contains(&a.as_str()))
        })
        .collect();
    if trusted.is_empty() {
        return Err(AadError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOCS}",
                audiences.join(",")
            ),
        ));
    }

    let sub = unverified.sub.as_deref().unwrap_or_default();
    if trusted.iter().any(|fic| fic.subject == sub) {
        return Ok(());
    }
    if !sub.is_empty()
        && trusted
            .iter()
            .any(|fic| fic.subject.eq_ignore_ascii_case(sub))
    {
        return Err(AadError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7002138,
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'. Note that matching is done using a case-sensitive comparison. {WIF_DOCS}"
            ),
        ));
    }
    Err(AadError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        70021,
        format!(
            "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'. {WIF_DOCS}",
            audiences.join(",")
        ),
    ))
}

async fn verify_signature(
    state: &State,
    iss: &str,
    header: &jsonwebtoken::Header,
    assertion: &str,
) -> Result<(), AadError> {
    let bad_signature = |detail: &str| {
        AadError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700027,
            format!("Client assertion failed signature validation. {detail}"),
        )
    };
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let verifies = |key: &DecodingKey| {
        jsonwebtoken::decode::<serde_json::Value>(assertion, key, &validation).is_ok()
    };

    if iss == state.issuer_url {
        return if verifies(state.issuer_key.decoding_key()) {
            Ok(())
        } else {
            Err(bad_signature(
                "The signature does not match the issuer's key.",
            ))
        };
    }

    let mut refreshed = false;
    loop {
        let keys = state.remote.keys(iss, refreshed).await.map_err(|detail| {
            tracing::info!(issuer = iss, %detail, "could not fetch the issuer's keys");
            AadError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50166,
                format!("Request to External OIDC endpoint failed. Issuer: '{iss}'."),
            )
        })?;
        match matching_keys(&keys, header.kid.as_deref()) {
            candidates if candidates.iter().any(&verifies) => return Ok(()),
            // A key that is not in the cached set may be new: fetch once more.
            candidates if candidates.is_empty() && !refreshed => refreshed = true,
            candidates if candidates.is_empty() => return Err(bad_signature("Key was not found.")),
            _ => {
                return Err(bad_signature(
                    "The signature does not match the issuer's key.",
                ));
            }
        }
    }
}

fn matching_keys(keys: &JwkSet, kid: Option<&str>) -> Vec<DecodingKey> {
    keys.keys
        .iter()
        .filter(|jwk| kid.is_none() || jwk.common.key_id.as_deref() == kid)
        .filter_map(|jwk| DecodingKey::from_jwk(jwk).ok())
        .collect()
}

fn iso_time(secs: u64) -> String {
    let at = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok());
    at.map(entra_timestamp).unwrap_or_else(|| secs.to_string())
}

#[derive(Serialize)]
struct AccessTokenClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    aio: String,
    appid: &'a str,
    appidacr: &'static str,
    azp: &'a str,
    azpacr: &'static str,
    idp: &'a str,
    idtyp: &'static str,
    oid: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
    sub: &'a str,
    tid: &'a str,
    uti: String,
    ver: &'static str,
}

fn access_token_response(
    state: &State,
    app: &RegisteredApp,
    tenant: &str,
    resource: &str,
    auth: ClientAuth,
) -> Result<serde_json::Value, AadError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Entra's access tokens live 60-90 minutes at random unless a lifetime is configured.
    let lifetime = state
        .token_lifetime
        .unwrap_or_else(|| Duration::from_secs(rand::random_range(3599..=5399)))
        .as_secs()
        .max(1);
    let issuer = format!("{}{}/v2.0", state.base_url, app.tenant_id);
    let acr = match auth {
        ClientAuth::Secret => "1",
        ClientAuth::Assertion => "2",
    };
    let claims = AccessTokenClaims {
        aud: resource,
        iss: &issuer,
        iat: now.saturating_sub(BACKDATE_SECS),
        nbf: now.saturating_sub(BACKDATE_SECS),
        exp: now + lifetime,
        aio: uuid::Uuid::new_v4().simple().to_string(),
        appid: &app.client_id,
        appidacr: acr,
        azp: &app.client_id,
        azpacr: acr,
        idp: &issuer,
        idtyp: "app",
        oid: &app.object_id,
        roles: &app.roles,
        sub: &app.object_id,
        tid: &app.tenant_id,
        uti: uuid::Uuid::new_v4().simple().to_string(),
        ver: "2.0",
    };
    let token = state.token_key.sign(&claims).map_err(|e| {
        tracing::error!(error = %e, tenant, "signing an access token failed");
        AadError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            90033,
            "A transient error has occurred. Please try again.",
        )
    })?;
    let mut body = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    });
    // Entra adds refresh_in (half the lifetime) to tokens that live two hours or more.
    if lifetime >= 7200 {
        body["refresh_in"] = serde_json::json!(lifetime / 2);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_loses_exactly_one_default_suffix() {
        assert_eq!(
            resource_from_scope("https://management.azure.com/.default")
                .ok()
                .as_deref(),
            Some("https://management.azure.com")
        );
        assert_eq!(
            resource_from_scope("https://management.core.windows.net//.default")
                .ok()
                .as_deref(),
            Some("https://management.core.windows.net/")
        );
        assert_eq!(
            resource_from_scope("https://graph.microsoft.com/User.Read").map_err(|e| e.code),
            Err(1002012)
        );
        assert_eq!(
            resource_from_scope("a/.default b/.default").map_err(|e| e.code),
            Err(70011)
        );
        assert_eq!(
            resource_from_scope("/.default").map_err(|e| e.code),
            Err(1002012)
        );
    }
}
