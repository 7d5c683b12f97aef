//! App Service / Container Apps flavor on `/msi/token`, in its two versions ([`AppService`]),
//! and the Cloud Shell form on the same path ([`CloudShell`]):
//!
//! - **2019-08-01** (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`): secret in `X-IDENTITY-HEADER`,
//!   selectors `client_id`, `object_id`, `mi_res_id`, `principal_id` (older Go), `resource_id`
//!   (Python aio).
//! - **2017-09-01** (`MSI_ENDPOINT` + `MSI_SECRET`): secret in `secret`, selector `clientid`.
//!   `expires_on` is an epoch string, except for the client releases that read only App
//!   Service's date, told apart by their User-Agent ([`super::user_agent`]); the date breaks
//!   current Python and JS SDKs (docs/protocols.md#app-service-2017-09-01,
//!   docs/protocols.md#app-service-2017-09-01-expires_on-by-client).
//! - **Cloud Shell** (`MSI_ENDPOINT` alone): `POST` of a form `resource=<R>[&client_id=<C>]` with
//!   `Metadata: true` (azure-identity `CloudShellCredential`, @azure/identity 1.x `cloudShellMsi`,
//!   msrestazure `get_msi_token`, MSAL4J for any `MSI_ENDPOINT`, adal). No secret is sent, so
//!   IMDS's `Metadata`/`X-Forwarded-For` guard applies; the answer is IMDS's body, which every
//!   Cloud Shell parser reads (docs/protocols.md#cloud-shell-form).
//!
//! The secret is compared in constant time. Errors carry both App Service's `statusCode`/`message`
//! and the OAuth `error`/`error_description`, so every SDK's parser finds its fields.
use std::borrow::Cow;

use http::{HeaderMap, HeaderName, StatusCode};
use serde::Serialize;

use super::user_agent::ExpiresOnFormat;
use super::{Flavor, FlavorName, HttpError, JsonObject, Params, Query, Shape, TokenRequest};
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
/// Every selector the GET forms accept: @azure/identity 1.x and msrestazure send `client_id`,
/// msrestazure also `object_id`/`msi_res_id`, adal `msi_res_id` (docs/protocols.md#cloud-shell-form).
const SELECTORS_FORM: &[&str] = &[
    "client_id",
    "clientid",
    "object_id",
    "mi_res_id",
    "msi_res_id",
    "principal_id",
    "resource_id",
];

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

    /// The header carrying the secret (a constant name: looked up without parsing it).
    fn header(self) -> HeaderName {
        match self {
            Version::V2019 => HeaderName::from_static("x-identity-header"),
            Version::V2017 => HeaderName::from_static("secret"),
        }
    }
}

/// The App Service flavor (both versions) for the server's token handler.
pub struct AppService;

impl Flavor for AppService {
    type Version = Version;
    const NAME: FlavorName = FlavorName::AppService;
    const ALLOW: &'static str = "GET, POST";

    fn version(query: &Query<'_>) -> Result<Version, HttpError> {
        version(query)
    }

    fn name(version: Version) -> FlavorName {
        version.name()
    }

    fn parse<'a>(
        version: Version,
        headers: &HeaderMap,
        query: &Query<'a>,
        policy: &'a Policy,
    ) -> Result<TokenRequest<'a>, HttpError> {
        parse(version, headers, query, policy)
    }

    /// 2019-08-01 clients all read `expires_on` as epoch seconds; for 2017-09-01
    /// `--msi-2017-expires-on` decides, `auto` by the User-Agent
    /// (docs/protocols.md#app-service-2017-09-01-expires_on-by-client).
    fn shape(version: Version, headers: &HeaderMap, policy: &Policy) -> Shape {
        match version {
            Version::V2019 => Shape::AppService2019,
            Version::V2017 => Shape::AppService2017(
                policy
                    .msi_2017_expires_on
                    .format(headers.get(http::header::USER_AGENT).map(|v| v.as_bytes())),
            ),
        }
    }

    fn render_error(e: &HttpError) -> Vec<u8> {
        render_error(e)
    }
}

/// The Cloud Shell form on the App Service path (docs/protocols.md#cloud-shell-form): the router
/// sends a `POST` to `/msi/token` here.
pub struct CloudShell;

impl Flavor for CloudShell {
    type Version = ();
    const NAME: FlavorName = FlavorName::CloudShell;
    const PARAMS: Params = Params::Form;
    const ALLOW: &'static str = "GET, POST";

    fn check_head(headers: &HeaderMap) -> Result<(), HttpError> {
        check_cloud_shell(headers)
    }

    fn version(_form: &Query<'_>) -> Result<(), HttpError> {
        Ok(())
    }

    fn name(_version: ()) -> FlavorName {
        FlavorName::CloudShell
    }

    fn parse<'a>(
        _version: (),
        _headers: &HeaderMap,
        form: &Query<'a>,
        policy: &'a Policy,
    ) -> Result<TokenRequest<'a>, HttpError> {
        parse_cloud_shell(form, policy)
    }

    /// IMDS's body: @azure/identity 1.x needs `expires_in`, azure-identity `resource`.
    fn shape(_version: (), _headers: &HeaderMap, _policy: &Policy) -> Shape {
        Shape::Imds
    }

    fn render_error(e: &HttpError) -> Vec<u8> {
        render_error(e)
    }
}

pub fn matches(path: &str) -> bool {
    path == PATH
}

/// Decides the version from `api-version`, before anything else, so errors use its wording.
pub fn version(q: &Query<'_>) -> Result<Version, HttpError> {
    match q.api_version()? {
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
    q: &Query<'a>,
    policy: &'a Policy,
) -> Result<TokenRequest<'a>, HttpError> {
    let Some(secret) = &policy.identity_header else {
        return Err(unauthorized(
            "The App Service endpoint is disabled: start identity-sidecar with --identity-header or IDENTITY_HEADER".into(),
        ));
    };
    let header = version.header();
    match headers.get(&header) {
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

pub fn render(
    version: Version,
    t: &CachedToken,
    req: &TokenRequest,
    fmt: ExpiresOnFormat,
) -> Vec<u8> {
    let body = JsonObject::with_capacity(t.access_token_json.expose().len() + 200)
        .raw("access_token", t.access_token_json.expose());
    // A string: the Rust SDK fails on a number (docs/protocols.md#app-service-2019-08-01).
    let body = match fmt {
        ExpiresOnFormat::Epoch => body.num_str("expires_on", t.expires_on),
        ExpiresOnFormat::Date => body.str("expires_on", &app_service_date(t.expires_on)),
    }
    .str("resource", &req.resource)
    .str("token_type", "Bearer");
    match version {
        Version::V2019 => body.str("client_id", req.client_id).finish(),
        Version::V2017 => body.finish(),
    }
}

/// `expires_on` as App Service on Windows wrote it for 2017-09-01, in UTC:
/// `MM/DD/YYYY hh:mm:ss AM +00:00`. azure-identity 1.5 reads it with
/// `strptime("%m/%d/%Y %I:%M:%S %p")` after cutting ` +00:00`, @azure/identity 1.x with
/// `Date.parse`; zero-padded fields suit both (and the Linux 24-hour pattern is tried first and
/// fails cleanly on the `AM`/`PM`). Sources: docs/protocols.md#app-service-2017-09-01-expires_on-by-client.
pub fn app_service_date(epoch: u64) -> String {
    let t = i64::try_from(epoch)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (hour12, period) = match t.hour() {
        0 => (12, "AM"),
        h @ 1..=11 => (h, "AM"),
        12 => (12, "PM"),
        h => (h - 12, "PM"),
    };
    format!(
        "{:02}/{:02}/{:04} {:02}:{:02}:{:02} {period} +00:00",
        u8::from(t.month()),
        t.day(),
        t.year(),
        hour12,
        t.minute(),
        t.second()
    )
}

/// Checks the head of a Cloud Shell form request, before its body is read: IMDS's SSRF guard
/// (`Metadata: true`, no `X-Forwarded-For`), then the form content type.
pub fn check_cloud_shell(headers: &HeaderMap) -> Result<(), HttpError> {
    super::imds::check_ssrf_guard(headers)?;
    let ctype = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ctype.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(HttpError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            error: Cow::Borrowed("invalid_request"),
            description: "A POST here is the Cloud Shell form: send Content-Type: application/x-www-form-urlencoded and a body resource=<resource>".into(),
            retry_after: None,
        });
    }
    Ok(())
}

/// Parses the Cloud Shell form (at most [`super::MAX_FORM_BODY`] bytes, which the handler enforces
/// while reading it): `resource` and one identity selector, under the same allow-lists as the GET
/// forms.
pub fn parse_cloud_shell<'a>(
    q: &Query<'a>,
    policy: &'a Policy,
) -> Result<TokenRequest<'a>, HttpError> {
    let resource = q.resource(policy)?;
    let client_id = q.identity(SELECTORS_FORM, policy)?;
    Ok(TokenRequest {
        client_id,
        resource,
    })
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

    fn version(query: &str) -> Result<Version, HttpError> {
        super::version(&Query::parse(Some(query))?)
    }

    #[test]
    fn versions() {
        assert_eq!(
            version("api-version=2019-08-01&resource=x"),
            Ok(Version::V2019)
        );
        assert_eq!(version("api-version=2017-09-01"), Ok(Version::V2017));
        assert!(version("api-version=2018-02-01").is_err());
        assert!(version("resource=x").is_err());
    }

    #[test]
    fn app_service_dates_are_utc_12_hour_zero_padded() {
        assert_eq!(
            app_service_date(1795794843),
            "11/27/2026 03:54:03 PM +00:00"
        );
        assert_eq!(
            app_service_date(1795737843),
            "11/27/2026 12:04:03 AM +00:00"
        );
        assert_eq!(
            app_service_date(1767355200),
            "01/02/2026 12:00:00 PM +00:00"
        );
        assert_eq!(
            app_service_date(1767398399),
            "01/02/2026 11:59:59 PM +00:00"
        );
        assert_eq!(app_service_date(0), "01/01/1970 12:00:00 AM +00:00");
    }
}
