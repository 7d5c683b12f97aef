//! The managed-identity protocols: each adapter parses its request into a [`TokenRequest`] and
//! renders the core's token (or error) in the shape its clients parse.
//!
//! - [`imds`]: Azure IMDS, `GET /metadata/identity/oauth2/token` with `Metadata: true`;
//! - [`app_service`]: App Service / Container Apps, 2019-08-01 (`X-IDENTITY-HEADER`) and the
//!   older 2017-09-01 (`secret`), on `/msi/token`, and the Cloud Shell form (`POST`) there;
//! - [`user_agent`]: which `expires_on` format a 2017-09-01 client reads.
//!
//! What they share lives here: the [`Flavor`] trait the server's one token handler is generic
//! over, query parsing, identity selection and resource rules (against the [`Policy`], never the
//! whole configuration), and the map from core errors to HTTP statuses (never 410: SDKs wait
//! 70-80 s on it, docs/protocols.md#errors).
pub mod app_service;
pub mod imds;
pub mod user_agent;

use std::borrow::Cow;

use http::StatusCode;

use http::HeaderMap;

use crate::config::Policy;
use crate::core::TokenError;
use crate::core::cache::CachedToken;
use crate::core::entra::EntraError;

/// A managed-identity protocol as the server's one token handler sees it: check the request head,
/// decide the version (before the rest, so errors use its wording), parse and check the request
/// against the [`Policy`], name the shape of the answer, render errors in the shape its clients
/// parse.
///
/// The handler splits the parameters once ([`Query`]): the query string of a `GET`, or for a
/// [`Params::Form`] flavor the body of a `POST`, read after [`Flavor::check_head`] passes.
pub trait Flavor {
    /// What the request says about its protocol version (`()` where there is only one).
    type Version: Copy;
    /// The flavor's name in the access log before its version is known.
    const NAME: FlavorName;
    /// Where the request's parameters travel.
    const PARAMS: Params = Params::Query;
    /// The methods its path takes, for the `Allow` header of a 405.
    const ALLOW: &'static str = "GET";
    /// Checks on the request head, before its parameters are looked at (and before a form body
    /// is read).
    fn check_head(_headers: &HeaderMap) -> Result<(), HttpError> {
        Ok(())
    }
    fn version(params: &Query<'_>) -> Result<Self::Version, HttpError>;
    /// The flavor's name in the access log once its version is known.
    fn name(version: Self::Version) -> FlavorName;
    fn parse<'a>(
        version: Self::Version,
        headers: &HeaderMap,
        params: &Query<'a>,
        policy: &'a Policy,
    ) -> Result<TokenRequest<'a>, HttpError>;
    /// The shape of its answer for this request: everything besides the token, the request and
    /// the clock that the answer's bytes depend on (App Service 2017-09-01's `expires_on` depends
    /// on the client, docs/protocols.md#app-service-2017-09-01-expires_on-by-client).
    fn shape(version: Self::Version, headers: &HeaderMap, policy: &Policy) -> Shape;
    fn render_error(e: &HttpError) -> Vec<u8>;
}

/// The shape of a token answer. [`Shape::render`] is a function of the shape, the token, the
/// request and the current second only, so equal inputs give equal bytes (the handler reuses the
/// last answer on that basis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// IMDS's body, also the Cloud Shell form's.
    Imds,
    AppService2019,
    AppService2017(user_agent::ExpiresOnFormat),
}

impl Shape {
    /// Every shape, in [`Shape::index`] order.
    pub const COUNT: usize = 4;

    /// A small number per shape, for tables indexed by shape.
    pub fn index(self) -> usize {
        match self {
            Shape::Imds => 0,
            Shape::AppService2019 => 1,
            Shape::AppService2017(user_agent::ExpiresOnFormat::Epoch) => 2,
            Shape::AppService2017(user_agent::ExpiresOnFormat::Date) => 3,
        }
    }

    /// Whether the answer carries a relative time (`expires_in`), so changes every second.
    pub fn ticks(self) -> bool {
        matches!(self, Shape::Imds)
    }

    pub fn render(self, token: &CachedToken, req: &TokenRequest) -> Vec<u8> {
        match self {
            Shape::Imds => imds::render(token, req),
            Shape::AppService2019 => app_service::render(
                app_service::Version::V2019,
                token,
                req,
                user_agent::ExpiresOnFormat::Epoch,
            ),
            Shape::AppService2017(fmt) => {
                app_service::render(app_service::Version::V2017, token, req, fmt)
            }
        }
    }
}

/// Where a flavor's request parameters travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Params {
    /// The query string of a `GET`.
    Query,
    /// An `application/x-www-form-urlencoded` body of a `POST`, at most [`MAX_FORM_BODY`] bytes.
    Form,
}

/// Largest form body accepted (a real Cloud Shell form is under 200 bytes); larger bodies get
/// 413 ([`HttpError::form_too_large`]).
pub const MAX_FORM_BODY: usize = 16 * 1024;

/// The protocol a token request spoke, as the access log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlavorName {
    Imds,
    /// App Service, before the request's `api-version` is known.
    AppService,
    AppService2019,
    AppService2017,
    /// The Cloud Shell form on the App Service path.
    CloudShell,
}

impl FlavorName {
    pub fn as_str(self) -> &'static str {
        match self {
            FlavorName::Imds => "imds",
            FlavorName::AppService => "app-service",
            FlavorName::AppService2019 => "app-service-2019-08-01",
            FlavorName::AppService2017 => "app-service-2017-09-01",
            FlavorName::CloudShell => "cloud-shell",
        }
    }
}

/// What every flavor asks of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest<'a> {
    /// The selected identity, always one of the allowed client ids.
    pub client_id: &'a str,
    /// The resource exactly as requested; echoed in the answer.
    pub resource: Cow<'a, str>,
}

/// An error answer, rendered by the flavor that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    pub error: Cow<'static, str>,
    pub description: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl HttpError {
    pub fn bad_request(description: impl Into<String>) -> Self {
        HttpError {
            status: StatusCode::BAD_REQUEST,
            error: Cow::Borrowed("invalid_request"),
            description: description.into(),
            retry_after: None,
        }
    }

    /// The error for a form body over [`MAX_FORM_BODY`].
    pub fn form_too_large() -> Self {
        HttpError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error: Cow::Borrowed("invalid_request"),
            description: format!("The form body is larger than {MAX_FORM_BODY} bytes"),
            retry_after: None,
        }
    }

    /// The answer real IMDS gives for an unknown or unassigned identity.
    pub fn identity_not_found() -> Self {
        Self::bad_request("Identity not found")
    }

    /// Maps a core failure: Entra 4xx -> 400 with Entra's error and AADSTS text; throttling ->
    /// 429; outages, timeouts and an unusable federated token -> 503; always with Retry-After
    /// where waiting helps.
    pub fn from_token_error(e: &TokenError) -> Self {
        match e {
            TokenError::Entra(EntraError::Rejected {
                error, description, ..
            }) => HttpError {
                status: StatusCode::BAD_REQUEST,
                error: Cow::Owned(error.clone()),
                description: description.clone(),
                retry_after: None,
            },
            TokenError::Entra(EntraError::Throttled { retry_after, .. }) => HttpError {
                status: StatusCode::TOO_MANY_REQUESTS,
                error: Cow::Borrowed("too_many_requests"),
                description: e.to_string(),
                retry_after: Some(retry_after.as_secs().max(1)),
            },
            TokenError::Entra(EntraError::Unavailable { retry_after, .. }) => HttpError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error: Cow::Borrowed("temporarily_unavailable"),
                description: e.to_string(),
                retry_after: Some(retry_after.map_or(5, |d| d.as_secs().max(1))),
            },
            TokenError::Federated(_) => HttpError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error: Cow::Borrowed("temporarily_unavailable"),
                description: e.to_string(),
                retry_after: Some(5),
            },
            TokenError::Internal(_) => HttpError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error: Cow::Borrowed("internal_error"),
                description: e.to_string(),
                retry_after: Some(1),
            },
        }
    }
}

/// A query string (or form body), split and decoded once (`application/x-www-form-urlencoded`
/// rules: `+` is a space, `%XX` an escape; Python SDKs send values unencoded). Repeated keys are
/// refused, as real IMDS does (docs/protocols.md#imds-request), and so are more than
/// [`MAX_QUERY_PARAMS`] parameters. Parsing costs one pass over the query, stopping at the
/// limit, plus a sort of at most [`MAX_QUERY_PARAMS`] keys; nothing is copied unless a component
/// is encoded, and the lookups after it compare a handful of short keys.
pub struct Query<'a> {
    /// The decoded pairs with a non-empty key, in order.
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// The most query parameters a token request may carry. SDKs send at most five (`api-version`,
/// `resource`, one identity selector, sometimes `bypass_cache` or `claims`); the limit keeps a
/// hostile query's cost small and fixed (docs/protocols.md#limits).
pub const MAX_QUERY_PARAMS: usize = 32;

/// A query component as given, and whether it holds an escape (`%XX` or `+`).
fn decode(s: &str, encoded: bool) -> Cow<'_, str> {
    if !encoded {
        return Cow::Borrowed(s);
    }
    let spaced = s.replace('+', " ");
    Cow::Owned(
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

impl<'a> Query<'a> {
    pub fn parse(raw: Option<&'a str>) -> Result<Self, HttpError> {
        let raw = raw.unwrap_or("");
        let mut pairs = Vec::with_capacity(4);
        let mut count = 0;
        // One pass over the bytes: where each part ends, its first `=`, and whether its key or
        // value needs decoding. A hostile query stops at the limit before anything is decoded.
        let bytes = raw.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            let (mut eq, mut key_encoded, mut value_encoded) = (None, false, false);
            let mut end = start;
            while end < bytes.len() && bytes[end] != b'&' {
                match bytes[end] {
                    b'=' if eq.is_none() => eq = Some(end),
                    b'%' | b'+' if eq.is_none() => key_encoded = true,
                    b'%' | b'+' => value_encoded = true,
                    _ => {}
                }
                end += 1;
            }
            if end > start {
                count += 1;
                if count > MAX_QUERY_PARAMS {
                    return Err(HttpError::bad_request(format!(
                        "Too many query variables: at most {MAX_QUERY_PARAMS} are accepted"
                    )));
                }
                // `&`, `=`, `%` and `+` are ASCII, so these are char boundaries.
                let (k, v) = match eq {
                    Some(i) => (&raw[start..i], &raw[i + 1..end]),
                    None => (&raw[start..end], ""),
                };
                let k = decode(k, key_encoded);
                if !k.is_empty() {
                    pairs.push((k, decode(v, value_encoded)));
                }
            }
            start = end + 1;
        }
        let mut keys = [""; MAX_QUERY_PARAMS];
        for (slot, (k, _)) in keys.iter_mut().zip(&pairs) {
            *slot = k;
        }
        let keys = &mut keys[..pairs.len()];
        keys.sort_unstable();
        if let Some(pair) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(HttpError::bad_request(format!(
                "Query parameter '{}' is given more than once",
                pair[0]
            )));
        }
        Ok(Query { pairs })
    }

    /// The decoded value of `key`; an empty value counts as absent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.value(key).map(|v| &**v)
    }

    fn value(&self, key: &str) -> Option<&Cow<'a, str>> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    }

    /// `api-version`, required by every flavor.
    pub fn api_version(&self) -> Result<&str, HttpError> {
        self.get("api-version").ok_or_else(|| {
            HttpError::bad_request("Required query variable 'api-version' is missing")
        })
    }

    /// `resource`, checked against `--allowed-resources`.
    pub fn resource(&self, policy: &Policy) -> Result<Cow<'a, str>, HttpError> {
        let r = self.value("resource").cloned().ok_or_else(|| {
            HttpError::bad_request("Required query variable 'resource' is missing")
        })?;
        if !policy.allowed_resources.is_empty()
            && !policy.allowed_resources.iter().any(|rule| rule.matches(&r))
        {
            let rules: Vec<String> = policy
                .allowed_resources
                .iter()
                .map(ToString::to_string)
                .collect();
            return Err(HttpError {
                status: StatusCode::BAD_REQUEST,
                error: Cow::Borrowed("invalid_resource"),
                description: format!(
                    "Resource '{r}' is not allowed by this sidecar's --allowed-resources (IDENTITY_SIDECAR_ALLOWED_RESOURCES): {}",
                    rules.join(", ")
                ),
                retry_after: None,
            });
        }
        Ok(r)
    }

    /// Resolves the identity selectors this flavor accepts (at most one may be given) to an
    /// allowed client id. Object ids and resource ids cannot be mapped to a client id here, so
    /// they select an identity only when their value is itself an allowed client id.
    pub fn identity<'c>(
        &self,
        selectors: &[&str],
        policy: &'c Policy,
    ) -> Result<&'c str, HttpError> {
        let mut given = selectors
            .iter()
            .filter_map(|s| self.get(s).map(|v| (*s, v)));
        let Some((_, value)) = given.next() else {
            return policy
                .allowed_client_ids
                .first()
                .map(String::as_str)
                .ok_or_else(HttpError::identity_not_found);
        };
        if let Some((second, _)) = given.next() {
            return Err(HttpError::bad_request(format!(
                "Only one identity may be selected; '{second}' was given as well"
            )));
        }
        let wanted = value.trim().trim_start_matches('{').trim_end_matches('}');
        policy
            .allowed_client_ids
            .iter()
            .find(|id| id.eq_ignore_ascii_case(wanted))
            .map(String::as_str)
            .ok_or_else(HttpError::identity_not_found)
    }
}

/// Writes a flat JSON object field by field: the answers are small and hot, and their one large
/// value (the access token) arrives already escaped.
pub struct JsonObject(Vec<u8>);

impl JsonObject {
    pub fn with_capacity(n: usize) -> Self {
        let mut v = Vec::with_capacity(n);
        v.push(b'{');
        JsonObject(v)
    }

    // Inlined so each key's length is a constant and its copy a few moves, not a memcpy call.
    #[inline(always)]
    fn key(&mut self, name: &str) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        self.0.push(b'"');
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    /// A value that is already a JSON literal.
    #[inline]
    pub fn raw(mut self, name: &str, literal: &str) -> Self {
        self.key(name);
        self.0.extend_from_slice(literal.as_bytes());
        self
    }

    #[inline]
    pub fn str(mut self, name: &str, value: &str) -> Self {
        self.key(name);
        if value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            let _ = serde_json::to_writer(&mut self.0, value);
        } else {
            // Nothing to escape (the usual case): the bytes as they are.
            self.0.push(b'"');
            self.0.extend_from_slice(value.as_bytes());
            self.0.push(b'"');
        }
        self
    }

    /// A number written as a string, as IMDS sends numbers.
    #[inline]
    pub fn num_str(mut self, name: &str, value: u64) -> Self {
        self.key(name);
        self.0.push(b'"');
        self.0
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self.0.push(b'"');
        self
    }

    pub fn num(mut self, name: &str, value: u64) -> Self {
        self.key(name);
        self.0
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.push(b'}');
        self.0
    }
}

/// Normalises a request path for routing: repeated slashes collapse (Java sends
/// `//metadata/...`) and one trailing slash is ignored (the JS SDK sends `.../token/`;
/// docs/protocols.md#imds-path).
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let doubled = path
        .as_bytes()
        .windows(2)
        .any(|w| w[0] == b'/' && w[1] == b'/');
    let needs_work = doubled || (path.len() > 1 && path.ends_with('/'));
    if !needs_work {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut prev_slash = false;
    for c in path.chars() {
        if c == '/' {
            if prev_slash {
                continue;
            }
            prev_slash = true;
        } else {
            prev_slash = false;
        }
        out.push(c);
    }
    if out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_object_is_valid_json() {
        let b = JsonObject::with_capacity(64)
            .raw("a", "\"x\"")
            .str("b", "q\"\n")
            .num_str("c", 5)
            .num("d", 6)
            .str("e", "https://vault.azure.net/")
            .str("f", "back\\slash")
            .finish();
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"a":"x","b":"q\"\n","c":"5","d":6,"e":"https://vault.azure.net/","f":"back\\slash"})
        );
    }

    #[test]
    fn paths_normalise_like_the_sdks_need() {
        assert_eq!(
            normalize_path("//metadata/identity/oauth2/token"),
            "/metadata/identity/oauth2/token"
        );
        assert_eq!(
            normalize_path("/metadata/identity/oauth2/token/"),
            "/metadata/identity/oauth2/token"
        );
        assert_eq!(normalize_path("/msi//token//"), "/msi/token");
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path("//"), "/");
    }

    #[test]
    fn query_accepts_up_to_the_limit_of_parameters() {
        let query = |n: usize| {
            (0..n)
                .map(|i| format!("p{i}=v"))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert!(Query::parse(Some(&query(MAX_QUERY_PARAMS))).is_ok());
        let e = Query::parse(Some(&query(MAX_QUERY_PARAMS + 1)))
            .err()
            .expect("one too many is refused");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.error, "invalid_request");
        assert!(e.description.contains("Too many query variables"), "{e:?}");
        // Empty pieces (`a=1&&b=2`) are not parameters.
        let sparse = format!("{}{}", "&".repeat(1000), query(MAX_QUERY_PARAMS));
        assert!(Query::parse(Some(&sparse)).is_ok());
    }

    #[test]
    fn query_decodes_and_refuses_repeats() {
        let q = Query::parse(Some(
            "resource=https%3A%2F%2Fvault.azure.net&api-version=2018-02-01&x=",
        ))
        .expect("ok");
        assert_eq!(q.get("resource"), Some("https://vault.azure.net"));
        assert_eq!(q.get("x"), None);
        assert_eq!(
            Query::parse(Some("a=b+c%20d")).expect("ok").get("a"),
            Some("b c d")
        );
        assert!(
            Query::parse(Some("a=1&%61=2")).is_err(),
            "an encoded repeat is a repeat"
        );
        assert!(Query::parse(Some("resource=a&resource=b")).is_err());
        assert!(
            Query::parse(Some("b=1&a=2&c=3&a=4")).is_err(),
            "apart and unsorted"
        );
        // Python sends values unencoded.
        let q = Query::parse(Some("resource=https://management.azure.com")).expect("ok");
        assert_eq!(q.get("resource"), Some("https://management.azure.com"));
    }
}
