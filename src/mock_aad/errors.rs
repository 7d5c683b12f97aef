//! Entra ID's error answers, as clients see them on the wire.
//!
//! Every failure of the mock's token endpoint is an [`AadError`]: an HTTP status, the OAuth `error`
//! string and an AADSTS code with its message. [`AadError::into_response`] renders the body Entra
//! sends (`error`, `error_description` ending in trace/correlation ids and a timestamp,
//! `error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`). The Rust SDK needs
//! `error_codes` as an integer array; MSAL-JS prints `error_codes` and the description.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Response type used by every handler of the mock.
pub(crate) type HttpResponse = Response<Full<Bytes>>;

/// One Entra failure: status, OAuth error, AADSTS code and message (without the `AADSTSnnn: ` prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AadError {
    /// HTTP status Entra answers with (400 for most, 401 for `invalid_client`).
    pub status: StatusCode,
    /// OAuth 2 `error` value, e.g. `invalid_request`.
    pub error: &'static str,
    /// The AADSTS number, also the single entry of `error_codes`.
    pub code: u32,
    /// Human message, as Entra words it.
    pub message: String,
    /// `Retry-After` seconds, for throttling answers.
    pub retry_after: Option<u64>,
}

/// The request ids an answer echoes: Entra returns the client's request id as `correlation_id`.
#[derive(Clone, Debug)]
pub(crate) struct RequestIds {
    pub trace_id: String,
    pub correlation_id: String,
    /// Whether the client sent its own id (then it is echoed in `client-request-id`).
    pub client_supplied: bool,
}

impl RequestIds {
    /// Ids for one request: the client's `client-request-id` (header or, as MSAL-node sends it, query)
    /// or a fresh one.
    pub(crate) fn from_request(headers: &http::HeaderMap, query: Option<&str>) -> Self {
        let from_header = ["client-request-id", "x-ms-client-request-id"]
            .iter()
            .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
            .map(str::to_owned);
        let from_query = query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "client-request-id")
                .map(|(_, v)| v.into_owned())
        });
        let client = from_header.or(from_query).filter(|id| is_safe_id(id));
        RequestIds {
            trace_id: uuid::Uuid::new_v4().to_string(),
            client_supplied: client.is_some(),
            correlation_id: client.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        }
    }

    /// Adds `x-ms-request-id` and, when the client sent one, `client-request-id`.
    pub(crate) fn stamp(&self, response: &mut HttpResponse) {
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.trace_id) {
            headers.insert("x-ms-request-id", v);
        }
        if self.client_supplied
            && let Ok(v) = HeaderValue::from_str(&self.correlation_id)
        {
            headers.insert("client-request-id", v);
        }
    }
}

/// A client id is echoed only if it looks like one (bounded, header-safe).
fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Entra's timestamp format in error bodies: `2022-10-27 23:39:22Z`.
pub(crate) fn entra_timestamp(at: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

impl AadError {
    /// A new error; `message` is the text after `AADSTSnnn: `.
    pub fn new(
        status: StatusCode,
        error: &'static str,
        code: u32,
        message: impl Into<String>,
    ) -> Self {
        AadError {
            status,
            error,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// AADSTS90002: the tenant in the URL is not known.
    pub fn unknown_tenant(tenant: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        )
    }

    /// AADSTS900144: a required form field is missing.
    pub fn missing_parameter(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    /// The error for an AADSTS code injected by fault injection: the real status and `error` for the
    /// codes the mock knows, a generic 400 `invalid_request` for others.
    pub fn for_code(code: u32) -> Self {
        let (status, error, message) = match code {
            70021 => (
                400,
                "invalid_request",
                "No matching federated identity record found for presented assertion.",
            ),
            700211 => (
                401,
                "invalid_client",
                "No matching federated identity record found for presented assertion issuer.",
            ),
            700212 => (
                401,
                "invalid_client",
                "No matching federated identity record found for presented assertion audience.",
            ),
            700213 | 7002138 => (
                401,
                "invalid_client",
                "No matching federated identity record found for presented assertion subject.",
            ),
            700024 => (
                401,
                "invalid_client",
                "Client assertion is not within its valid time range.",
            ),
            700027 => (
                401,
                "invalid_client",
                "Client assertion failed signature validation.",
            ),
            700016 => (
                400,
                "unauthorized_client",
                "Application was not found in the directory.",
            ),
            7000215 => (401, "invalid_client", "Invalid client secret provided."),
            7000218 => (
                401,
                "invalid_client",
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ),
            90002 => (400, "invalid_request", "Tenant not found."),
            50027 => (400, "invalid_request", "JWT token is invalid or malformed."),
            50166 => (
                400,
                "invalid_request",
                "Request to External OIDC endpoint failed.",
            ),
            500011 => (
                400,
                "invalid_resource",
                "The resource principal was not found in the tenant.",
            ),
            70011 => (
                400,
                "invalid_scope",
                "The provided value for the input parameter 'scope' is not valid.",
            ),
            90033 => (
                503,
                "temporarily_unavailable",
                "A transient error has occurred. Please try again.",
            ),
            90055 => (
                429,
                "temporarily_unavailable",
                "There are too many incoming requests. Please try again later.",
            ),
            _ => (400, "invalid_request", "Injected error."),
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        Self::new(status, error, code, message)
    }

    /// Renders the Entra-shaped JSON body with the given request ids.
    pub(crate) fn into_response(self, ids: &RequestIds) -> HttpResponse {
        let now = time::OffsetDateTime::now_utc();
        let timestamp = entra_timestamp(now);
        let description = format!(
            "AADSTS{}: {}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
            self.code, self.message, ids.trace_id, ids.correlation_id, timestamp
        );
        let body = serde_json::json!({
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": ids.trace_id,
            "correlation_id": ids.correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        let mut response = json_response(self.status, &body);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        ids.stamp(&mut response);
        response
    }
}

impl std::fmt::Display for AadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} AADSTS{}: {}", self.error, self.code, self.message)
    }
}

/// A JSON answer with the headers Entra puts on token-endpoint answers (never cached).
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A plain-text answer (admin endpoint, 404s).
pub(crate) fn text_response(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
