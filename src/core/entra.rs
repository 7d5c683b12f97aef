//! The Entra ID client: exchanges the federated token for an access token with the
//! client-credentials grant and a jwt-bearer `client_assertion` (docs/protocols.md#entra-request).
//!
//! Transient failures (connection errors, timeouts, 429, 5xx) are retried with exponential
//! backoff and jitter, honouring `Retry-After`, bounded both in attempts and in total time; other
//! 4xx answers are final and carry Entra's `error`, `error_description` (with its AADSTS code) and
//! `error_codes` back to the caller.
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Deserialize;

use super::backoff::Backoff;
use super::egress::{EgressProxy, ProxyCheck, check_proxy};
use super::secret::Secret;
use super::token_proxy::{TokenProxyConfig, TokenProxyLeg};
use crate::telemetry::metrics::{EntraOutcome, Metrics};

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const MAX_ATTEMPTS: u32 = 4;
/// Between attempts of one exchange.
const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(400),
    cap: Duration::from_secs(8),
};
/// Used when a 429 or 503 says to wait but not how long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
const MAX_ERROR_TEXT: usize = 2048;
/// How long the diagnosis of a failing egress proxy may take.
const PROXY_CHECK_LIMIT: Duration = Duration::from_secs(3);
/// `Retry-After` when the egress proxy refused or failed.
const PROXY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What Entra ID issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub access_token: Secret,
    /// Lifetime in seconds as Entra sent it.
    pub expires_in: u64,
    pub ext_expires_in: Option<u64>,
    pub refresh_in: Option<u64>,
}

/// One exchange with Entra ID, as the audit log records it: the `client-request-id` the sidecar
/// sent (the sign-in log's correlation id), the `x-ms-request-id` Entra answered with (its
/// request id), the time taken, retries included, and the number of attempts.
#[derive(Debug, Clone, Default)]
pub struct EntraCall {
    pub client_request_id: String,
    pub entra_request_id: Option<String>,
    pub latency: Duration,
    pub attempts: u32,
}

/// Why no token was issued.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EntraError {
    /// A final answer (4xx other than 429): the request or the trust is wrong.
    #[error("Entra ID refused the token request ({status}): {error}: {description}")]
    Rejected {
        status: u16,
        error: String,
        description: String,
        codes: Vec<i64>,
    },
    /// Entra asked us to slow down.
    #[error("Entra ID is throttling token requests; retry after {}s", retry_after.as_secs())]
    Throttled {
        retry_after: Duration,
        description: String,
    },
    /// Entra could not be reached or failed (5xx, timeout, connection error), after retries.
    #[error("Entra ID is unavailable: {detail}")]
    Unavailable {
        detail: String,
        retry_after: Option<Duration>,
    },
}

/// How the token request leaves the pod: the extra CAs trusted for the authority, the egress
/// proxy, and the identity-binding token proxy.
#[derive(Clone, Copy)]
pub struct Outbound<'a> {
    pub extra_ca_files: &'a [std::path::PathBuf],
    pub egress: &'a EgressProxy,
    pub token_proxy: Option<&'a TokenProxyConfig>,
}

/// Connection to one authority and tenant.
pub struct EntraClient {
    http: reqwest::Client,
    token_url: Url,
    attempt_timeout: Duration,
    budget: Duration,
    egress: EgressProxy,
    /// The identity-binding token proxy the token request goes to instead of the authority.
    token_proxy: Option<TokenProxyLeg>,
    metrics: Arc<Metrics>,
}

impl EntraClient {
    pub fn new(
        authority: &Url,
        tenant: &str,
        attempt_timeout: Duration,
        budget: Duration,
        outbound: Outbound<'_>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let Outbound {
            extra_ca_files,
            egress,
            token_proxy,
        } = outbound;
        let token_url = authority
            .join(&format!("{tenant}/oauth2/v2.0/token"))
            .map_err(|e| format!("cannot build the token URL from {authority}: {e}"))?;
        let tls = super::tls::client_config(extra_ca_files)?;
        let http = egress
            .apply(reqwest::Client::builder())
            .use_preconfigured_tls(tls)
            .connect_timeout(attempt_timeout.min(Duration::from_secs(5)))
            .timeout(attempt_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("identity-sidecar/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot create the HTTP client: {e}"))?;
        let token_proxy = match token_proxy {
            None => None,
            Some(tp) => {
                let (egress, proxy_url) = (egress.clone(), tp.url.clone());
                Some(TokenProxyLeg::new(tp, &token_url, move |b| {
                    egress
                        .apply_for(b, &proxy_url)
                        .connect_timeout(attempt_timeout.min(Duration::from_secs(5)))
                        .timeout(attempt_timeout)
                        .pool_idle_timeout(Duration::from_secs(90))
                        .user_agent(concat!("identity-sidecar/", env!("CARGO_PKG_VERSION")))
                })?)
            }
        };
        Ok(EntraClient {
            http,
            token_url,
            attempt_timeout,
            budget,
            egress: egress.clone(),
            token_proxy,
            metrics,
        })
    }

    /// Exchanges `assertion` for a token for `scope`, retrying transient failures within the
    /// budget. Never logs the assertion or the token.
    pub async fn exchange(
        &self,
        client_id: &str,
        scope: &str,
        assertion: &Secret,
    ) -> Result<IssuedToken, EntraError> {
        self.exchange_traced(client_id, scope, assertion).await.0
    }

    /// [`EntraClient::exchange`], with the ids and time of the call. Every attempt sends the
    /// same `client-request-id`, as MSAL does within one token request.
    pub async fn exchange_traced(
        &self,
        client_id: &str,
        scope: &str,
        assertion: &Secret,
    ) -> (Result<IssuedToken, EntraError>, EntraCall) {
        let mut call = EntraCall {
            client_request_id: uuid::Uuid::new_v4().to_string(),
            ..EntraCall::default()
        };
        let began = Instant::now();
        let result = self
            .exchange_with(client_id, scope, assertion, &mut call)
            .await;
        call.latency = began.elapsed();
        (result, call)
    }

    async fn exchange_with(
        &self,
        client_id: &str,
        scope: &str,
        assertion: &Secret,
        call: &mut EntraCall,
    ) -> Result<IssuedToken, EntraError> {
        let deadline = Instant::now() + self.budget;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            call.attempts = attempt;
            let started = Instant::now();
            let result = self.attempt(client_id, scope, assertion, call).await;
            self.metrics
                .entra_latency
                .observe(started.elapsed().as_secs_f64());
            let (err, wait) = match result {
                Ok(t) => {
                    self.metrics.entra_call(EntraOutcome::Success);
                    return Ok(t);
                }
                Err(Attempt::Final(e)) => {
                    self.metrics.entra_call(EntraOutcome::Rejected);
                    return Err(e);
                }
                Err(Attempt::ProxyFailed(e)) => {
                    // Retrying a proxy that refuses us only delays the 503 the caller retries.
                    self.metrics.entra_call(EntraOutcome::ConnectError);
                    tracing::warn!(client_id, scope, "giving up on Entra ID for now: {e}");
                    return Err(e);
                }
                Err(Attempt::Retry {
                    err,
                    retry_after,
                    outcome,
                }) => {
                    self.metrics.entra_call(outcome);
                    let wait = retry_after.unwrap_or_else(|| BACKOFF.delay(attempt));
                    (err, wait)
                }
            };
            let now = Instant::now();
            let out_of_budget =
                now + wait + self.attempt_timeout.min(Duration::from_secs(1)) > deadline;
            if attempt >= MAX_ATTEMPTS || out_of_budget {
                tracing::warn!(
                    client_id,
                    scope,
                    attempt,
                    "giving up on Entra ID for now: {err}"
                );
                return Err(err);
            }
            tracing::info!(
                client_id,
                scope,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "retrying Entra ID: {err}"
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        client_id: &str,
        scope: &str,
        assertion: &Secret,
        call: &mut EntraCall,
    ) -> Result<IssuedToken, Attempt> {
        // Exactly the fields the SDKs send (docs/protocols.md#entra-request), in their order.
        let form = [
            ("client_assertion", assertion.expose()),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_id", client_id),
            ("grant_type", "client_credentials"),
            ("scope", scope),
        ];
        let request = match &self.token_proxy {
            None => self.http.post(self.token_url.clone()),
            Some(leg) => {
                let r = leg.client().post(leg.connect_url.clone());
                match &leg.host_header {
                    Some(h) => r.header(reqwest::header::HOST, h),
                    None => r,
                }
            }
        };
        let request = request
            .header("client-request-id", &call.client_request_id)
            .header("return-client-request-id", "true");
        let resp = match request.form(&form).send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(failed) = self.proxy_failure(&e).await {
                    return Err(failed);
                }
                let (outcome, what) = if e.is_timeout() {
                    (
                        EntraOutcome::Timeout,
                        format!(
                            "no answer from {} within {:?}",
                            host(self.called_url()),
                            self.attempt_timeout
                        ),
                    )
                } else {
                    (
                        EntraOutcome::ConnectError,
                        format!(
                            "cannot reach {}: {}",
                            host(self.called_url()),
                            error_chain(&e)
                        ),
                    )
                };
                return Err(Attempt::Retry {
                    err: EntraError::Unavailable {
                        detail: what,
                        retry_after: None,
                    },
                    retry_after: None,
                    outcome,
                });
            }
        };
        let status = resp.status();
        if let Some(id) = resp
            .headers()
            .get("x-ms-request-id")
            .and_then(|v| v.to_str().ok())
        {
            call.entra_request_id = Some(id.chars().take(64).collect());
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(|v| parse_retry_after(v).unwrap_or(DEFAULT_RETRY_AFTER));
        let body = match tokio::time::timeout(self.attempt_timeout, resp.bytes()).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                return Err(Attempt::Retry {
                    err: EntraError::Unavailable {
                        detail: format!("reading the answer failed: {}", error_chain(&e)),
                        retry_after: None,
                    },
                    retry_after: None,
                    outcome: if e.is_timeout() {
                        EntraOutcome::Timeout
                    } else {
                        EntraOutcome::ConnectError
                    },
                });
            }
            Err(_) => {
                return Err(Attempt::Retry {
                    err: EntraError::Unavailable {
                        detail: "the answer did not finish in time".into(),
                        retry_after: None,
                    },
                    retry_after: None,
                    outcome: EntraOutcome::Timeout,
                });
            }
        };
        if status.is_success() {
            return parse_success(&body).map_err(|detail| Attempt::Retry {
                err: EntraError::Unavailable {
                    detail,
                    retry_after: None,
                },
                retry_after: None,
                outcome: EntraOutcome::BadResponse,
            });
        }
        let parsed = parse_error(&body);
        if status.as_u16() == 429 {
            let wait = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
            return Err(Attempt::Retry {
                err: EntraError::Throttled {
                    retry_after: wait,
                    description: parsed.description,
                },
                retry_after: Some(wait),
                outcome: EntraOutcome::Throttled,
            });
        }
        if status.is_server_error() || status.as_u16() == 408 {
            return Err(Attempt::Retry {
                err: EntraError::Unavailable {
                    detail: format!("HTTP {}: {}", status.as_u16(), parsed.summary()),
                    retry_after,
                },
                retry_after,
                outcome: EntraOutcome::ServerError,
            });
        }
        Err(Attempt::Final(EntraError::Rejected {
            status: status.as_u16(),
            error: parsed.error,
            description: parsed.description,
            codes: parsed.codes,
        }))
    }
}

impl EntraClient {
    /// The URL the token request is sent to: the authority's, or the token proxy's.
    fn called_url(&self) -> &Url {
        self.token_proxy
            .as_ref()
            .map_or(&self.token_url, |l| &l.connect_url)
    }

    /// The token proxy's URL, when the token request goes through one.
    pub fn token_proxy_url(&self) -> Option<&Url> {
        self.token_proxy.as_ref().map(TokenProxyLeg::url)
    }

    /// When the token URL goes through an egress proxy and the call failed to connect, asks the
    /// proxy what it answers; `Some` when the proxy is the problem (refused, down, 407, ...),
    /// after one log line naming the proxy (`host:port`, never its credentials) and its answer.
    async fn proxy_failure(&self, e: &reqwest::Error) -> Option<Attempt> {
        if !(e.is_connect() || e.is_timeout()) {
            return None;
        }
        // The token-proxy leg takes the route of the proxy's URL; its CONNECT names the host the
        // client calls.
        let route = self
            .token_proxy
            .as_ref()
            .map_or(&self.token_url, |l| l.url());
        let proxy = self.egress.proxy_for(route)?;
        let called = self.called_url();
        let host = called.host_str()?;
        let port = called.port_or_known_default()?;
        match check_proxy(proxy, host, port, PROXY_CHECK_LIMIT).await {
            ProxyCheck::Open => None,
            ProxyCheck::Failed(answer) => {
                tracing::warn!(
                    proxy = %proxy,
                    proxy_source = proxy.source,
                    destination = %format!("{host}:{port}"),
                    "the egress proxy failed: {answer}"
                );
                Some(Attempt::ProxyFailed(EntraError::Unavailable {
                    detail: format!(
                        "cannot reach {host} through the proxy {proxy} ({}): {answer}",
                        proxy.source
                    ),
                    retry_after: Some(PROXY_RETRY_AFTER),
                }))
            }
        }
    }
}

enum Attempt {
    Final(EntraError),
    /// The egress proxy refused or failed: no retry.
    ProxyFailed(EntraError),
    Retry {
        err: EntraError,
        retry_after: Option<Duration>,
        outcome: EntraOutcome,
    },
}

/// `Retry-After` as delta-seconds, or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(3600)),
    )
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Num {
    N(u64),
    F(f64),
    S(String),
}

impl Num {
    fn get(&self) -> Option<u64> {
        match self {
            Num::N(n) => Some(*n),
            Num::F(f) if *f >= 0.0 && f.is_finite() => Some(*f as u64),
            Num::F(_) => None,
            Num::S(s) => s.trim().parse().ok(),
        }
    }
}

#[derive(Deserialize)]
struct Success {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<Num>,
    ext_expires_in: Option<Num>,
    refresh_in: Option<Num>,
}

fn parse_success(body: &[u8]) -> Result<IssuedToken, String> {
    let s: Success = serde_json::from_slice(body)
        .map_err(|_| "Entra ID answered 200 without a JSON token".to_string())?;
    let access_token = s
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or("Entra ID answered 200 without access_token")?;
    if let Some(tt) = &s.token_type
        && !tt.eq_ignore_ascii_case("bearer")
    {
        return Err(format!(
            "Entra ID issued a token of type {tt:?}, not Bearer"
        ));
    }
    let expires_in = s
        .expires_in
        .as_ref()
        .and_then(Num::get)
        .filter(|n| *n > 0)
        .ok_or("Entra ID answered 200 without a usable expires_in")?;
    Ok(IssuedToken {
        access_token: Secret::new(access_token),
        expires_in,
        ext_expires_in: s.ext_expires_in.as_ref().and_then(Num::get),
        refresh_in: s.refresh_in.as_ref().and_then(Num::get).filter(|n| *n > 0),
    })
}

struct ParsedError {
    error: String,
    description: String,
    codes: Vec<i64>,
}

impl ParsedError {
    fn summary(&self) -> String {
        if self.description.is_empty() {
            self.error.clone()
        } else {
            format!("{}: {}", self.error, self.description)
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<i64>,
}

fn parse_error(body: &[u8]) -> ParsedError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ParsedError {
            error: b.error.unwrap_or_else(|| "unknown_error".into()),
            description: truncate(b.error_description.unwrap_or_default()),
            codes: b.error_codes,
        },
        Err(_) => ParsedError {
            error: "unknown_error".into(),
            description: truncate(format!(
                "non-JSON answer: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).replace(['\r', '\n'], " ")
            )),
            codes: Vec::new(),
        },
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn host(u: &Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => u.to_string(),
    }
}

/// An error and its sources on one line, without repeating a source its parent already quotes.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// `scope` for a v1 `resource`: append `/.default` unless present, never trimming a slash
/// (`https://management.core.windows.net/` becomes `...net//.default`,
/// docs/protocols.md#entra-scope).
pub fn scope_for(resource: &str) -> String {
    let mut scope = String::with_capacity(resource.len() + 9);
    push_scope(&mut scope, resource);
    scope
}

/// Appends the scope for `resource` to `buf` (the rule of [`scope_for`], for a reused buffer).
pub fn push_scope(buf: &mut String, resource: &str) {
    buf.push_str(resource);
    if !resource.ends_with("/.default") {
        buf.push_str("/.default");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_never_trims() {
        assert_eq!(
            scope_for("https://management.azure.com"),
            "https://management.azure.com/.default"
        );
        assert_eq!(
            scope_for("https://management.core.windows.net/"),
            "https://management.core.windows.net//.default"
        );
        assert_eq!(scope_for("api://x/.default"), "api://x/.default");
    }

    #[test]
    fn parses_success_with_numbers_or_strings() {
        let t = parse_success(br#"{"token_type":"Bearer","expires_in":"3599","ext_expires_in":3599,"refresh_in":1800,"access_token":"a"}"#)
            .expect("token");
        assert_eq!(
            (t.expires_in, t.ext_expires_in, t.refresh_in),
            (3599, Some(3599), Some(1800))
        );
        assert!(parse_success(br#"{"access_token":"a"}"#).is_err());
        assert!(parse_success(b"<html>").is_err());
    }

    #[test]
    fn parses_entra_errors_and_retry_after() {
        let e = parse_error(br#"{"error":"invalid_request","error_description":"AADSTS70021: No matching federated identity record found","error_codes":[70021]}"#);
        assert_eq!(
            (e.error.as_str(), e.codes.as_slice()),
            ("invalid_request", &[70021][..])
        );
        assert!(e.description.starts_with("AADSTS70021"));
        assert_eq!(parse_error(b"oops").error, "unknown_error");
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
