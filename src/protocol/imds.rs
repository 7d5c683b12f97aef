//! Azure IMDS flavor: `GET /metadata/identity/oauth2/token`.
//!
//! Rules of real IMDS we keep:
//! - `Metadata: true` required: probes without it get a fast 400 with IMDS's wording, never a
//!   token and never a 403 "unreachable" (docs/protocols.md#imds-probes);
//! - any `X-Forwarded-For` is refused; `api-version` >= 2018-02-01
//!   (docs/protocols.md#imds-request);
//! - every JSON value is a string: ODBC/JDBC and the Rust SDK break on numbers
//!   (docs/protocols.md#imds-response).
use std::borrow::Cow;

use http::{HeaderMap, HeaderName, StatusCode};
use serde::Serialize;

use super::{Flavor, FlavorName, HttpError, JsonObject, Query, Shape, TokenRequest};
use crate::config::Policy;
use crate::core::cache::CachedToken;

/// The path, after [`super::normalize_path`]; `metadata` matches in any case, as on real IMDS.
pub const PATH: &str = "/metadata/identity/oauth2/token";

/// Selectors of a user-assigned identity that IMDS clients send
/// (docs/protocols.md#imds-identity-selectors).
const SELECTORS: &[&str] = &[
    "client_id",
    "object_id",
    "msi_res_id",
    "mi_res_id",
    "principal_id",
    "resource_id",
    "msi-res-id",
];

pub fn matches(path: &str) -> bool {
    path.len() == PATH.len() && path.eq_ignore_ascii_case(PATH)
}

/// True for other IMDS paths (`/metadata/instance`, ...), which are not ours to answer.
pub fn is_other_metadata(path: &str) -> bool {
    path.get(..9)
        .is_some_and(|p| p.eq_ignore_ascii_case("/metadata"))
        && (path.len() == 9 || path.as_bytes()[9] == b'/')
}

/// The IMDS flavor for the server's token handler.
pub struct Imds;

impl Flavor for Imds {
    type Version = ();
    const NAME: FlavorName = FlavorName::Imds;

    /// The `Metadata` header comes first, as on real IMDS.
    fn check_head(headers: &HeaderMap) -> Result<(), HttpError> {
        check_ssrf_guard(headers)
    }

    /// Checked in [`parse`], as real IMDS does.
    fn version(_query: &Query<'_>) -> Result<(), HttpError> {
        Ok(())
    }

    fn name(_version: ()) -> FlavorName {
        FlavorName::Imds
    }

    fn parse<'a>(
        _version: (),
        _headers: &HeaderMap,
        query: &Query<'a>,
        policy: &'a Policy,
    ) -> Result<TokenRequest<'a>, HttpError> {
        parse(query, policy)
    }

    fn shape(_version: (), _headers: &HeaderMap, _policy: &Policy) -> Shape {
        Shape::Imds
    }

    fn render_error(e: &HttpError) -> Vec<u8> {
        render_error(e)
    }
}

/// The request's parameters, after [`check_ssrf_guard`] passed.
pub fn parse<'a>(q: &Query<'a>, policy: &'a Policy) -> Result<TokenRequest<'a>, HttpError> {
    let version = q.api_version()?;
    if !version_at_least(version, "2018-02-01") {
        return Err(HttpError::bad_request(format!(
            "api-version '{version}' is not supported; use 2018-02-01 or later"
        )));
    }
    let resource = q.resource(policy)?;
    let client_id = q.identity(SELECTORS, policy)?;
    Ok(TokenRequest {
        client_id,
        resource,
    })
}

/// IMDS's guard against server-side request forgery, also the Cloud Shell form's
/// (docs/protocols.md#cloud-shell-form): a `Metadata: true` header (which a forged request cannot
/// add) and no `X-Forwarded-For`.
pub fn check_ssrf_guard(headers: &HeaderMap) -> Result<(), HttpError> {
    const METADATA: HeaderName = HeaderName::from_static("metadata");
    const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    let metadata = headers.get(METADATA).and_then(|v| v.to_str().ok());
    if !metadata.is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Err(HttpError::bad_request(
            "Required metadata header not specified",
        ));
    }
    if headers.contains_key(FORWARDED_FOR) {
        return Err(HttpError::bad_request(
            "Requests with an X-Forwarded-For header are refused: IMDS must not be reached through a proxy",
        ));
    }
    Ok(())
}

/// `YYYY-MM-DD[-suffix]` compared as dates.
fn version_at_least(v: &str, min: &str) -> bool {
    let date = v.get(..10).unwrap_or("");
    let well_formed = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    well_formed && date >= min
}

/// The success body: real IMDS's field set and order, all strings, `expires_in` counted from now
/// (docs/protocols.md#imds-response).
pub fn render(t: &CachedToken, req: &TokenRequest) -> Vec<u8> {
    JsonObject::with_capacity(t.access_token_json.expose().len() + 320)
        .raw("access_token", t.access_token_json.expose())
        .str("client_id", req.client_id)
        .num_str("expires_in", t.expires_in())
        .num_str("expires_on", t.expires_on)
        .num_str("ext_expires_in", t.ext_expires_in())
        .num_str("not_before", t.not_before)
        .str("refresh_token", "")
        .str("resource", &req.resource)
        .str("token_type", "Bearer")
        .finish()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: &'a str,
}

pub fn render_error(e: &HttpError) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        error: &e.error,
        error_description: &e.description,
    })
    .unwrap_or_default()
}

/// Answer for IMDS paths we do not serve (without `--imds-passthrough`).
pub fn not_served(path: &str) -> HttpError {
    HttpError {
        status: StatusCode::NOT_FOUND,
        error: Cow::Borrowed("not_found"),
        description: format!(
            "{path} is not served here: identity-sidecar answers only {PATH}. Start it with --imds-passthrough to forward other IMDS paths to the real IMDS."
        ),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert!(version_at_least("2018-02-01", "2018-02-01"));
        assert!(version_at_least("2019-08-01", "2018-02-01"));
        assert!(version_at_least("2021-02-01-preview", "2018-02-01"));
        assert!(!version_at_least("2017-09-01", "2018-02-01"));
        assert!(!version_at_least("latest", "2018-02-01"));
    }

    #[test]
    fn metadata_paths() {
        assert!(matches("/METADATA/identity/oauth2/token"));
        assert!(is_other_metadata("/metadata/instance"));
        assert!(is_other_metadata("/Metadata"));
        assert!(!is_other_metadata("/metadatax"));
    }
}
