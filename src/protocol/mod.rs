//! The managed-identity protocols: each adapter parses its request into a [`TokenRequest`] and
//! renders the core's token (or error) in the shape its clients parse.
//!
//! - [`imds`]: Azure IMDS, `GET /metadata/identity/oauth2/token` with `Metadata: true`;
//! - [`app_service`]: App Service / Container Apps, 2019-08-01 (`X-IDENTITY-HEADER`) and the
//!   older 2017-09-01 (`secret`), on `/msi/token`.
//!
//! What they share lives here: query parsing, identity selection, resource rules, and the map
//! from core errors to HTTP statuses (never 410: SDKs wait 70-80 s on it, protocols.md §2.5).
pub mod app_service;
pub mod imds;

use std::borrow::Cow;

use http::StatusCode;

use crate::config::ServeConfig;
use crate::core::TokenError;
use crate::core::entra::EntraError;

/// What every flavor asks of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The selected identity, always one of the allowed client ids.
    pub client_id: String,
    /// The resource exactly as requested; echoed in the answer.
    pub resource: String,
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

/// A decoded query string. Repeated keys are refused, as real IMDS does.
pub struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    pub fn parse(raw: Option<&'a str>) -> Result<Self, HttpError> {
        let mut pairs: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if k.is_empty() {
                continue;
            }
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(HttpError::bad_request(format!(
                    "Query parameter '{k}' is given more than once"
                )));
            }
            pairs.push((k, v));
        }
        Ok(Query { pairs })
    }

    /// The value of `key`; an empty value counts as absent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
            .filter(|v| !v.is_empty())
    }

    /// `api-version`, required by every flavor.
    pub fn api_version(&self) -> Result<&str, HttpError> {
        self.get("api-version").ok_or_else(|| {
            HttpError::bad_request("Required query variable 'api-version' is missing")
        })
    }

    /// `resource`, checked against `--allowed-resources`.
    pub fn resource(&self, cfg: &ServeConfig) -> Result<String, HttpError> {
        let r = self.get("resource").ok_or_else(|| {
            HttpError::bad_request("Required query variable 'resource' is missing")
        })?;
        if !cfg.allowed_resources.is_empty()
            && !cfg.allowed_resources.iter().any(|rule| rule.matches(r))
        {
            let rules: Vec<String> = cfg
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
        Ok(r.to_string())
    }

    /// Resolves the identity selectors this flavor accepts (at most one may be given) to an
    /// allowed client id. Object ids and resource ids cannot be mapped to a client id here, so
    /// they select an identity only when their value is itself an allowed client id.
    pub fn identity(&self, selectors: &[&str], cfg: &ServeConfig) -> Result<String, HttpError> {
        let mut given = selectors
            .iter()
            .filter_map(|s| self.get(s).map(|v| (*s, v)));
        let Some((_, value)) = given.next() else {
            return Ok(cfg.allowed_client_ids[0].clone());
        };
        if let Some((second, _)) = given.next() {
            return Err(HttpError::bad_request(format!(
                "Only one identity may be selected; '{second}' was given as well"
            )));
        }
        let wanted = value
            .trim()
            .trim_start_matches('{')
            .trim_end_matches('}')
            .to_ascii_lowercase();
        cfg.allowed_client_ids
            .iter()
            .find(|id| **id == wanted)
            .cloned()
            .ok_or_else(HttpError::identity_not_found)
    }
}

/// Normalises a request path for routing: repeated slashes collapse (Java sends
/// `//metadata/...`) and one trailing slash is ignored (the JS SDK sends `.../token/`).
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let needs_work = path.contains("//") || (path.len() > 1 && path.ends_with('/'));
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
    fn query_decodes_and_refuses_repeats() {
        let q = Query::parse(Some(
            "resource=https%3A%2F%2Fvault.azure.net&api-version=2018-02-01&x=",
        ))
        .expect("ok");
        assert_eq!(q.get("resource"), Some("https://vault.azure.net"));
        assert_eq!(q.get("x"), None);
        assert!(Query::parse(Some("resource=a&resource=b")).is_err());
        // Python sends values unencoded.
        let q = Query::parse(Some("resource=https://management.azure.com")).expect("ok");
        assert_eq!(q.get("resource"), Some("https://management.azure.com"));
    }
}
