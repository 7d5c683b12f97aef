//! App Service / Container Apps flavor on `/msi/token`, in its two versions:
//!
//! - **2019-08-01** (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`): secret in `X-IDENTITY-HEADER`,
//!   selectors `client_id`, `object_id`, `mi_res_id`, `principal_id` (older Go), `resource_id`
//!   (Python aio).
//! - **2017-09-01** (`MSI_ENDPOINT` + `MSI_SECRET`): secret in `secret`, selector `clientid`.
//!   `expires_on` is an epoch string here too: the old date format breaks current Python and JS
//!   SDKs (docs/protocols.md#app-service-2017-09-01).
//!
//! The secret is compared in constant time. Errors carry both App Service's `statusCode`/`message`
//! and the OAuth `error`/`error_description`, so every SDK's parser finds its fields.
use std::borrow::Cow;

use http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::{Flavor, FlavorName, HttpError, JsonObject, Query, TokenRequest};
use crate::config::Policy;
use crate::core::cache::CachedToken;

pub const PATH: &str = "/msi/token";

const SELECTORS_2019: &[&str] = &[
    "client_id",
    "object_id",
    "mi_res_id",
    "principal_id",
    "resource_id",
    "msi_res_id",
];
const SELECTORS_2017: &[&str] = &["clientid", "client_id"];

/// Which App Service protocol version a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V2019,
    V2017,
}

impl Version {
    pub fn name(self) -> FlavorName {
        match self {
            Version::V2019 => FlavorName::AppService2019,
            Version::V2017 => FlavorName::AppService2017,
        }
    }

    fn header(self) -> &'static str {
        match self {
            Version::V2019 => "x-identity-header",
            Version::V2017 => "secret",
        }
    }
}

/// The App Service flavor (both versions) for the server's token handler.
pub struct AppService;

impl Flavor for AppService {
    type Version = Version;
    const NAME: FlavorName = FlavorName::AppService;

    fn version(query: Option<&str>) -> Result<Version, HttpError> {
        version(query)
    }

    fn name(version: Version) -> FlavorName {
        version.name()
    }

    fn parse<'a>(
        version: Version,
        headers: &HeaderMap,
        query: Option<&'a str>,
        policy: &'a Policy,
    ) -> Result<TokenRequest<'a>, HttpError> {
        parse(version, headers, query, policy)
    }

    fn render(version: Version, token: &CachedToken, req: &TokenRequest) -> Vec<u8> {
        render(version, token, req)
    }

    fn render_error(e: &HttpError) -> Vec<u8> {
        render_error(e)
    }
}

pub fn matches(path: &str) -> bool {
    path == PATH
}

/// Decides the version from `api-version`, before anything else, so errors use its wording.
pub fn version(query: Option<&str>) -> Result<Version, HttpError> {
    let q = Query::parse(query)?;
    match q.api_version()?.as_ref() {
        "2017-09-01" => Ok(Version::V2017),
        v if v >= "2019-08-01"
            && v.len() >= 10
            && v.as_bytes()[..4].iter().all(u8::is_ascii_digit) =>
        {
            Ok(Version::V2019)
        }
        v => Err(HttpError::bad_request(format!(
            "api-version '{v}' is not supported; use 2019-08-01 (IDENTITY_ENDPOINT) or 2017-09-01 (MSI_ENDPOINT)"
        ))),
    }
}

pub fn parse<'a>(
    version: Version,
    headers: &HeaderMap,
    query: Option<&'a str>,
    policy: &'a Policy,
) -> Result<TokenRequest<'a>, HttpError> {
    let Some(secret) = &policy.identity_header else {
        return Err(unauthorized(
            "The App Service endpoint is disabled: start identity-sidecar with --identity-header or IDENTITY_HEADER".into(),
        ));
    };
    let header = version.header();
    match headers.get(header) {
        None => {
            return Err(unauthorized(format!(
                "Required header '{header}' is missing"
            )));
        }
        Some(v) if !secret.matches(v.as_bytes()) => {
            return Err(unauthorized(format!(
                "The '{header}' header does not match IDENTITY_HEADER"
            )));
        }
        Some(_) => {}
    }
    let q = Query::parse(query)?;
    let resource = q.resource(policy)?;
    let selectors = match version {
        Version::V2019 => SELECTORS_2019,
        Version::V2017 => SELECTORS_2017,
    };
    let client_id = q.identity(selectors, policy)?;
    Ok(TokenRequest {
        client_id,
        resource,
    })
}

fn unauthorized(description: String) -> HttpError {
    HttpError {
        status: StatusCode::UNAUTHORIZED,
        error: Cow::Borrowed("unauthorized_client"),
        description,
        retry_after: None,
    }
}

pub fn render(version: Version, t: &CachedToken, req: &TokenRequest) -> Vec<u8> {
    let body = JsonObject::with_capacity(t.access_token_json.expose().len() + 200)
        .raw("access_token", t.access_token_json.expose())
        // A string: the Rust SDK fails on a number (docs/protocols.md#app-service-2019-08-01).
        .num_str("expires_on", t.expires_on)
        .str("resource", &req.resource)
        .str("token_type", "Bearer");
    match version {
        Version::V2019 => body.str("client_id", req.client_id).finish(),
        Version::V2017 => body.finish(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    status_code: u16,
    message: &'a str,
    #[serde(rename = "error")]
    error: &'a str,
    #[serde(rename = "error_description")]
    error_description: &'a str,
}

pub fn render_error(e: &HttpError) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        status_code: e.status.as_u16(),
        message: &e.description,
        error: &e.error,
        error_description: &e.description,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            version(Some("api-version=2019-08-01&resource=x")),
            Ok(Version::V2019)
        );
        assert_eq!(version(Some("api-version=2017-09-01")), Ok(Version::V2017));
        assert!(version(Some("api-version=2018-02-01")).is_err());
        assert!(version(Some("resource=x")).is_err());
    }
}
