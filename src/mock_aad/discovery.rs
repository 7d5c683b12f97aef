//! Discovery documents: Entra's tenant OIDC metadata and JWKS, MSAL instance discovery, and the
//! Kubernetes-like issuer's metadata and JWKS.
//!
//! MSAL (Python and Node) reads `{authority}/{tenant}/v2.0/.well-known/openid-configuration` and
//! needs `authorization_endpoint` and `token_endpoint`; the document mirrors Entra's field set so
//! other clients find what they look for. Unknown tenants get AADSTS90002, as from Entra.

use http::StatusCode;

use super::errors::{AadError, HttpResponse, RequestIds, json_response};
use super::state::State;

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub(crate) fn tenant_metadata(state: &State, tenant: &str, ids: &RequestIds) -> HttpResponse {
    let meta = is_meta_tenant(tenant);
    if !meta && !state.knows_tenant(tenant) {
        return AadError::unknown_tenant(tenant).into_response(ids);
    }
    let base = format!("{}{tenant}", state.base_url);
    // Multi-tenant documents carry a placeholder issuer, as Entra's /common document does.
    let issuer = if meta {
        format!("{}{{tenantid}}/v2.0", state.base_url)
    } else {
        format!("{base}/v2.0")
    };
    let body = serde_json::json!({
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": issuer,
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "oid", "tid", "azp", "azpacr", "roles", "ver"],
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
    });
    with_ids(json_response(StatusCode::OK, &body), ids)
}

/// `GET /{tenant}/discovery/v2.0/keys` (also `/common/...`): the access-token signing keys.
pub(crate) fn tenant_keys(state: &State, tenant: &str, ids: &RequestIds) -> HttpResponse {
    if !is_meta_tenant(tenant) && !state.knows_tenant(tenant) {
        return AadError::unknown_tenant(tenant).into_response(ids);
    }
    with_ids(json_response(StatusCode::OK, &state.token_key.jwks()), ids)
}

/// `GET /common/discovery/instance?authorization_endpoint=…`: MSAL instance discovery, answered
/// for this host (shape from docs/protocols.md#entra-discovery).
pub(crate) fn instance_discovery(
    state: &State,
    query: Option<&str>,
    ids: &RequestIds,
) -> HttpResponse {
    let endpoint = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "authorization_endpoint")
            .map(|(_, v)| v.into_owned())
    });
    let Some(endpoint) = endpoint else {
        return AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50049,
            "Unknown or invalid instance. The 'authorization_endpoint' query parameter is required.",
        )
        .into_response(ids);
    };
    // authorization_endpoint = https://host/{tenant}/oauth2/v2.0/authorize
    let tenant = endpoint
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').nth(1))
        .filter(|t| !t.is_empty())
        .unwrap_or("common");
    let host = state
        .base_url
        .split("://")
        .nth(1)
        .unwrap_or_default()
        .trim_end_matches('/');
    let body = serde_json::json!({
        "tenant_discovery_endpoint": format!("{}{tenant}/v2.0/.well-known/openid-configuration", state.base_url),
        "api-version": "1.1",
        "metadata": [{ "preferred_network": host, "preferred_cache": host, "aliases": [host] }],
    });
    with_ids(json_response(StatusCode::OK, &body), ids)
}

/// `GET /issuer/.well-known/openid-configuration`: a Kubernetes service-account issuer document.
pub(crate) fn issuer_metadata(state: &State) -> HttpResponse {
    let body = serde_json::json!({
        "issuer": state.issuer_url,
        "jwks_uri": format!("{}/openid/v1/jwks", state.issuer_url),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    json_response(StatusCode::OK, &body)
}

/// `GET /issuer/openid/v1/jwks`: keys of the federated tokens.
pub(crate) fn issuer_keys(state: &State) -> HttpResponse {
    json_response(StatusCode::OK, &state.issuer_key.jwks())
}

fn is_meta_tenant(tenant: &str) -> bool {
    ["common", "organizations", "consumers"]
        .iter()
        .any(|t| tenant.eq_ignore_ascii_case(t))
}

fn with_ids(mut response: HttpResponse, ids: &RequestIds) -> HttpResponse {
    ids.stamp(&mut response);
    response
}
