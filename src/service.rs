//! The request path: what the server serves. [`Service::build`] assembles it once from the
//! [`ServeConfig`] (metrics, the federated-token source and its watch, the Entra ID client, the
//! token cache, the optional IMDS passthrough); its methods are the endpoints the server routes
//! to. One token handler serves every protocol flavor ([`Flavor`]); the flavors only parse and
//! render.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;

use crate::config::{Policy, ServeConfig};
use crate::core::cache::CachedToken;
use crate::core::entra::{EntraCall, EntraClient, EntraError};
use crate::core::federated::TokenSource;
use crate::core::{Lookup, TokenError, TokenService};
use crate::protocol::{
    Flavor, FlavorName, HttpError, MAX_FORM_BODY, Params, Query, TokenRequest, app_service, imds,
};
use crate::telemetry::caller::Connection;
use crate::telemetry::metrics::{FederatedState, Metrics, ResourceLabel, Scrape, TokenState};
use crate::telemetry::summary::{self, Summary};

mod answers;
use crate::telemetry::{access_log, audit};
use answers::Answers;

/// Longest `x-ms-client-request-id` copied into an audit line (SDKs send a 36-character GUID).
const MAX_APP_REQUEST_ID: usize = 128;

/// The request a token answer is for, as its log lines need it.
struct Ctx<'a> {
    headers: &'a http::HeaderMap,
    conn: &'a Connection,
    started: Instant,
}

/// How the token core answered one request, as its log lines need it.
struct Outcome<'a> {
    result: Result<&'a CachedToken, &'a HttpError>,
    /// `None`: refused before it reached the cache.
    lookup: Option<Lookup>,
    call: Option<&'a EntraCall>,
    entra_error_codes: &'a [i64],
}

/// Largest request body forwarded with `--imds-passthrough`.
const MAX_PASSTHROUGH_BODY: usize = 64 * 1024;

/// The body of every answer: small and complete.
pub type Body = Full<Bytes>;

/// What [`Service::for_pod`] builds one pod's request path from.
pub struct PodParts {
    pub policy: Policy,
    pub source: Arc<TokenSource>,
    pub entra: Arc<EntraClient>,
    pub max_cached_tokens: usize,
    pub metrics: Arc<Metrics>,
    pub summary: Arc<Summary>,
    pub access_log: bool,
    /// `--audit-log` of the node agent.
    pub audit_log: bool,
    /// The pod served, named by its audit lines.
    pub pod: audit::PodRef,
}

/// The `resource` label rule of `policy`'s resource allow-list; `None` (all aggregated as `*`)
/// without one.
pub fn resource_label_rule(policy: &Policy) -> Option<ResourceLabel> {
    let rules = policy.allowed_resources.clone();
    (!rules.is_empty()).then(|| {
        Box::new(move |r: &str| rules.iter().find(|x| x.matches(r)).map(|x| x.to_string()))
            as ResourceLabel
    })
}

/// Shared state of the request path.
pub struct Service {
    policy: Policy,
    imds_address: SocketAddr,
    tokens: TokenService,
    metrics: Arc<Metrics>,
    passthrough: Option<reqwest::Client>,
    /// The identity-binding token proxy's URL, named by `/readyz`.
    token_proxy: Option<String>,
    /// `--access-log`: a line per token request at info (otherwise only at debug).
    access_log: bool,
    /// `--audit-log`: a JSON audit line per token request.
    audit_log: bool,
    /// The pod served, in node mode (its audit lines name it).
    pod: Option<audit::PodRef>,
    summary: Arc<Summary>,
    answers: Answers,
    watch: tokio::task::JoinHandle<()>,
    summary_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.watch.abort();
        if let Some(t) = &self.summary_task {
            t.abort();
        }
    }
}

impl Service {
    /// Builds the request path and starts its background work (the token file's watch and the
    /// cache's refresher) on the current Tokio runtime.
    pub fn build(cfg: &ServeConfig) -> Result<Arc<Service>, String> {
        let metrics = Arc::new(Metrics::with_resource_label(resource_label_rule(
            &cfg.policy,
        )));
        let source = TokenSource::new(&cfg.token_file);
        let entra = EntraClient::new(
            &cfg.authority,
            &cfg.tenant_id,
            cfg.entra_timeout,
            cfg.entra_budget,
            cfg.outbound(),
            Arc::clone(&metrics),
        )?;
        let passthrough = if cfg.imds_passthrough {
            Some(
                reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("cannot create the IMDS passthrough client: {e}"))?,
            )
        } else {
            None
        };
        let watch = source.watch();
        let tokens = TokenService::new(source, entra, cfg.max_cached_tokens, Arc::clone(&metrics));
        let summary = Arc::new(Summary::default());
        let summary_task = cfg.log_summary_interval.map(|every| summary.spawn(every));
        Ok(Arc::new(Service {
            token_proxy: cfg.token_proxy.as_ref().map(|t| t.url.to_string()),
            policy: cfg.policy.clone(),
            imds_address: cfg.imds_address,
            tokens,
            metrics,
            passthrough,
            access_log: cfg.access_log,
            audit_log: cfg.audit_log,
            pod: None,
            summary,
            answers: Answers::default(),
            watch,
            summary_task,
        }))
    }

    /// The request path of one pod served by the node agent: the pod's own policy, federated
    /// token (watched from now on) and cache, over the agent's shared Entra ID client, metrics
    /// and summary. No IMDS passthrough: nothing is ever forwarded to the real IMDS.
    pub fn for_pod(pod: PodParts) -> Arc<Service> {
        let watch = pod.source.watch();
        let tokens = TokenService::with_shared_client(
            pod.source,
            pod.entra,
            pod.max_cached_tokens,
            Arc::clone(&pod.metrics),
        );
        Arc::new(Service {
            policy: pod.policy,
            imds_address: SocketAddr::from(([169, 254, 169, 254], 80)),
            tokens,
            metrics: pod.metrics,
            passthrough: None,
            token_proxy: None,
            access_log: pod.access_log,
            audit_log: pod.audit_log,
            pod: Some(pod.pod),
            summary: pod.summary,
            answers: Answers::default(),
            watch,
            summary_task: None,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A token request in flavor `F`: method, parameters (the query, or the form body of a
    /// [`Params::Form`] flavor), version, request and identity checks, then the token core, then
    /// `F`'s rendering; one access-log line (and with `--audit-log` one audit line) whatever
    /// happens.
    pub async fn token<F: Flavor>(
        &self,
        req: Request<Incoming>,
        started: Instant,
        conn: &Connection,
    ) -> Response<Body> {
        let (head, body) = req.into_parts();
        let ctx = Ctx {
            headers: &head.headers,
            conn,
            started,
        };
        let form = match (F::PARAMS, &head.method) {
            (Params::Query, m) if m != Method::GET => Err(method_not_allowed_error(F::ALLOW)),
            (Params::Form, m) if m != Method::POST => Err(method_not_allowed_error(F::ALLOW)),
            (params, _) => match F::check_head(&head.headers) {
                Err(e) => Err(e),
                Ok(()) if params == Params::Query => Ok(None),
                Ok(()) => read_form(&head.headers, body).await.map(Some),
            },
        };
        let form = match form {
            Ok(f) => f,
            Err(e) => return self.refused::<F>(F::NAME, &e, &ctx),
        };
        let raw = match &form {
            Some(f) => Some(f.as_str()),
            None => head.uri.query(),
        };
        let params = match Query::parse(raw) {
            Ok(q) => q,
            Err(e) => return self.refused::<F>(F::NAME, &e, &ctx),
        };
        let parsed = match F::version(&params) {
            Err(e) => Err((F::NAME, e)),
            Ok(v) => match F::parse(v, &head.headers, &params, &self.policy) {
                Err(e) => Err((F::name(v), e)),
                Ok(treq) => Ok((v, treq)),
            },
        };
        let (version, treq) = match parsed {
            Ok(p) => p,
            Err((name, e)) => return self.refused::<F>(name, &e, &ctx),
        };
        let served = self.tokens.token(treq.client_id, &treq.resource).await;
        let call = served.call.as_deref();
        match &served.result {
            Ok(t) => {
                let shape = F::shape(version, &head.headers, &self.policy);
                let resp = json(StatusCode::OK, self.answers.get(shape, t, &treq));
                let outcome = Outcome {
                    result: Ok(t),
                    lookup: Some(served.lookup),
                    call,
                    entra_error_codes: &[],
                };
                self.finished(F::name(version), Some(&treq), &resp, &outcome, &ctx);
                resp
            }
            Err(e) => {
                let codes = match e {
                    TokenError::Entra(EntraError::Rejected { codes, .. }) => codes.as_slice(),
                    _ => &[],
                };
                let e = HttpError::from_token_error(e);
                let resp = flavor_error::<F>(&e);
                let outcome = Outcome {
                    result: Err(&e),
                    lookup: Some(served.lookup),
                    call,
                    entra_error_codes: codes,
                };
                self.finished(F::name(version), Some(&treq), &resp, &outcome, &ctx);
                resp
            }
        }
    }

    /// A request refused before it reached the token core: `F`'s error answer, logged.
    fn refused<F: Flavor>(
        &self,
        flavor: FlavorName,
        e: &HttpError,
        ctx: &Ctx<'_>,
    ) -> Response<Body> {
        let resp = flavor_error::<F>(e);
        let outcome = Outcome {
            result: Err(e),
            lookup: None,
            call: None,
            entra_error_codes: &[],
        };
        self.finished(flavor, None, &resp, &outcome, ctx);
        resp
    }

    /// What every token request leaves behind: its count in the summary, its access-log line
    /// (`--access-log` or debug), its audit line (`--audit-log`), and for an error answer an
    /// info line saying why.
    fn finished(
        &self,
        flavor: FlavorName,
        req: Option<&TokenRequest<'_>>,
        resp: &Response<Body>,
        outcome: &Outcome<'_>,
        ctx: &Ctx<'_>,
    ) {
        let protocol = match flavor {
            FlavorName::Imds => summary::Protocol::Imds,
            _ => summary::Protocol::AppService,
        };
        self.summary.record(
            protocol,
            match (outcome.result, outcome.lookup) {
                (Ok(_), Some(Lookup::Hit)) => summary::Outcome::Hit,
                (Ok(_), _) => summary::Outcome::Miss,
                (Err(_), _) => summary::Outcome::Error,
            },
        );
        if let Err(e) = outcome.result {
            // Request input (resource) and error text are written with Debug: quoted and
            // escaped, so a crafted value cannot forge a line.
            tracing::info!(
                flavor = flavor.as_str(),
                client_id = req.map_or("-", |r| r.client_id),
                resource = ?req.map_or("-", |r| &r.resource),
                status = e.status.as_u16(),
                error = %e.error,
                error_description = ?e.description,
                "token request answered with an error"
            );
        }
        access_log::record(self.access_log, || access_log::Entry {
            flavor: flavor.as_str(),
            client_id: req.map_or("-", |r| r.client_id),
            resource: req.map_or("-", |r| &r.resource),
            status: resp.status().as_u16(),
            latency_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            cache: match (outcome.result, outcome.lookup) {
                (Ok(_), Some(l)) => l.as_str(),
                _ => "-",
            },
        });
        if self.audit_log {
            let app_request_id = ctx
                .headers
                .get("x-ms-client-request-id")
                .and_then(|v| v.to_str().ok())
                .map(|v| &v[..v.len().min(MAX_APP_REQUEST_ID)]);
            audit::record(&audit::Entry {
                flavor: flavor.as_str(),
                client_id: req.map(|r| r.client_id),
                resource: req.map(|r| &*r.resource),
                status: resp.status().as_u16(),
                error: outcome.result.err().map(|e| e.error.as_ref()),
                entra_error_codes: outcome.entra_error_codes,
                cache: outcome.lookup.map_or("none", Lookup::as_str),
                latency_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
                entra: outcome.call,
                token_sha256: outcome.result.ok().map(|t| &*t.fingerprint),
                app_request_id,
                peer: ctx.conn.peer,
                caller: ctx.conn.caller(),
                pod: self.pod.as_ref(),
            });
        }
    }

    /// `/healthz`: the process answers.
    pub fn healthz(&self, req: &Request<Incoming>) -> Response<Body> {
        only_get(req).unwrap_or_else(|| json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()))
    }

    /// `/readyz`: the federated token is there and unexpired.
    pub fn readyz(&self, req: &Request<Incoming>) -> Response<Body> {
        if let Some(refused) = only_get(req) {
            return refused;
        }
        let mut body = match self.tokens.source().ready() {
            Ok(t) => serde_json::json!({
                    "status": "ready",
                    "federated_token": {
                        "iss": t.claims.iss, "sub": t.claims.sub, "aud": t.claims.aud,
                        "exp": t.claims.exp, "seconds_left": t.seconds_left(),
                    },
            }),
            Err(e) => serde_json::json!({ "status": "not_ready", "reason": e.to_string() }),
        };
        let status = if body["status"] == "ready" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        if let Some(url) = &self.token_proxy {
            body["token_proxy"] = serde_json::Value::String(url.clone());
        }
        json(status, body.to_string().into_bytes())
    }

    /// What this request path shows at a scrape: its federated token and cached tokens.
    pub fn scrape(&self) -> Scrape {
        let federated = self.tokens.source().current().ok().map(|t| FederatedState {
            seconds_left: t.seconds_left(),
            expires_at: t.claims.exp,
            issued_at: t.claims.iat,
        });
        let tokens = self.tokens.cached_tokens();
        self.metrics.scrape_of(
            federated,
            tokens.iter().map(|(client_id, scope, t)| TokenState {
                client_id,
                scope,
                expires_on: t.expires_on,
                received_at: t.not_before,
            }),
        )
    }

    /// `/metrics`, in Prometheus' text format.
    pub fn metrics_page(&self, req: &Request<Incoming>) -> Response<Body> {
        if let Some(refused) = only_get(req) {
            return refused;
        }
        let text = self.metrics.render_scrapes([self.scrape()], None);
        let mut r = Response::new(Full::new(Bytes::from(text)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    /// Any other path: 404 naming the token endpoints.
    pub fn not_found(&self) -> Response<Body> {
        error_response(
            &HttpError {
                status: StatusCode::NOT_FOUND,
                error: "not_found".into(),
                description: format!(
                    "No such endpoint. Token endpoints: {} (IMDS) and {} (App Service)",
                    imds::PATH,
                    app_service::PATH
                ),
                retry_after: None,
            },
            imds::render_error,
        )
    }

    /// Anything but health, readiness and metrics on the admin listener: a plain 404 that names
    /// what is served there and nothing of the token endpoints.
    pub fn admin_not_found(&self) -> Response<Body> {
        error_response(
            &HttpError {
                status: StatusCode::NOT_FOUND,
                error: "not_found".into(),
                description: "The admin listener serves only /metrics, /healthz and /readyz".into(),
                retry_after: None,
            },
            imds::render_error,
        )
    }

    /// `/metadata/...` paths other than the token: 404, or forwarded to the real IMDS.
    pub async fn other_metadata(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(client) = &self.passthrough else {
            return error_response(&imds::not_served(req.uri().path()), imds::render_error);
        };
        if req.headers().contains_key("x-forwarded-for") {
            return error_response(
                &HttpError::bad_request("Requests with an X-Forwarded-For header are refused"),
                imds::render_error,
            );
        }
        let path_q = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let url = format!("http://{}{}", self.imds_address, path_q);
        let method = req.method().clone();
        let mut headers = req.headers().clone();
        for h in [
            header::HOST,
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::CONTENT_LENGTH,
        ] {
            headers.remove(h);
        }
        let body = match Limited::new(req.into_body(), MAX_PASSTHROUGH_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error_response(
                    &HttpError::bad_request("Request body too large"),
                    imds::render_error,
                );
            }
        };
        let sent = client
            .request(method, &url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) => {
                let status = r.status();
                let ctype = r.headers().get(header::CONTENT_TYPE).cloned();
                match r.bytes().await {
                    Ok(b) => {
                        let mut resp = Response::new(Full::new(b));
                        *resp.status_mut() = status;
                        if let Some(c) = ctype {
                            resp.headers_mut().insert(header::CONTENT_TYPE, c);
                        }
                        resp
                    }
                    Err(e) => passthrough_failed(&e),
                }
            }
            Err(e) => passthrough_failed(&e),
        }
    }
}

fn passthrough_failed(e: &reqwest::Error) -> Response<Body> {
    error_response(
        &HttpError {
            status: StatusCode::BAD_GATEWAY,
            error: "bad_gateway".into(),
            description: format!("The real IMDS did not answer: {e}"),
            retry_after: Some(5),
        },
        imds::render_error,
    )
}

/// Reads a form body of at most [`MAX_FORM_BODY`] bytes: a larger declared `Content-Length` is
/// refused before reading, a larger streamed body as soon as it passes the limit.
async fn read_form(headers: &http::HeaderMap, body: Incoming) -> Result<String, HttpError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORM_BODY as u64) {
        return Err(HttpError::form_too_large());
    }
    let bytes = match Limited::new(body, MAX_FORM_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(HttpError::form_too_large());
        }
        Err(_) => {
            return Err(HttpError::bad_request("The request body could not be read"));
        }
    };
    String::from_utf8(bytes.to_vec())
        .map_err(|_| HttpError::bad_request("The form body is not UTF-8"))
}

fn only_get(req: &Request<Incoming>) -> Option<Response<Body>> {
    (req.method() != Method::GET && req.method() != Method::HEAD)
        .then(|| method_not_allowed_with(imds::render_error, "GET, HEAD"))
}

/// 405: only the methods in `allow` are served here.
fn method_not_allowed_error(allow: &str) -> HttpError {
    HttpError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        error: "invalid_request".into(),
        description: format!("Only {allow} is allowed here"),
        retry_after: None,
    }
}

fn method_not_allowed_with(
    render: fn(&HttpError) -> Vec<u8>,
    allow: &'static str,
) -> Response<Body> {
    let mut r = error_response(&method_not_allowed_error(allow), render);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Flavor `F`'s error answer for `e`, with `F`'s `Allow` on a 405.
fn flavor_error<F: Flavor>(e: &HttpError) -> Response<Body> {
    let mut r = error_response(e, F::render_error);
    if e.status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(F::ALLOW));
    }
    r
}

/// The answer for `e`: its status, the flavor's body, and `Retry-After` where due.
fn error_response(e: &HttpError, render: fn(&HttpError) -> Vec<u8>) -> Response<Body> {
    let mut r = json(e.status, render(e));
    if let Some(secs) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
