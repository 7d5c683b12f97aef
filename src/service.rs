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
use crate::core::TokenService;
use crate::core::cache::Lookup;
use crate::core::entra::EntraClient;
use crate::core::federated::TokenSource;
use crate::protocol::{Flavor, FlavorName, HttpError, TokenRequest, app_service, imds};
use crate::telemetry::access_log;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::summary::{self, Summary};

/// Largest request body forwarded with `--imds-passthrough`.
const MAX_PASSTHROUGH_BODY: usize = 64 * 1024;

/// The body of every answer: small and complete.
pub type Body = Full<Bytes>;

/// Shared state of the request path.
pub struct Service {
    policy: Policy,
    imds_address: SocketAddr,
    tokens: TokenService,
    metrics: Arc<Metrics>,
    passthrough: Option<reqwest::Client>,
    /// `--access-log`: a line per token request at info (otherwise only at debug).
    access_log: bool,
    summary: Arc<Summary>,
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
        let metrics = Arc::new(Metrics::new());
        let source = TokenSource::new(&cfg.token_file);
        let entra = EntraClient::new(
            &cfg.authority,
            &cfg.tenant_id,
            cfg.entra_timeout,
            cfg.entra_budget,
            &cfg.extra_ca_files,
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
            policy: cfg.policy.clone(),
            imds_address: cfg.imds_address,
            tokens,
            metrics,
            passthrough,
            access_log: cfg.access_log,
            summary,
            watch,
            summary_task,
        }))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A token request in flavor `F`: method, version, request and identity checks, then the
    /// token core, then `F`'s rendering; one access-log line whatever happens.
    pub async fn token<F: Flavor>(
        &self,
        req: &Request<Incoming>,
        started: Instant,
    ) -> Response<Body> {
        let query = req.uri().query();
        let parsed = if req.method() != Method::GET {
            Err((F::NAME, method_not_allowed_error()))
        } else {
            match F::version(query) {
                Err(e) => Err((F::NAME, e)),
                Ok(v) => match F::parse(v, req.headers(), query, &self.policy) {
                    Err(e) => Err((F::name(v), e)),
                    Ok(treq) => Ok((v, treq)),
                },
            }
        };
        let (version, treq) = match parsed {
            Ok(p) => p,
            Err((name, e)) => {
                let resp = error_response(&e, F::render_error);
                self.finished(name, None, &resp, Err(&e), started);
                return resp;
            }
        };
        match self.tokens.token(treq.client_id, &treq.resource).await {
            Ok((t, how)) => {
                let resp = json(StatusCode::OK, F::render(version, &t, &treq));
                self.finished(F::name(version), Some(&treq), &resp, Ok(how), started);
                resp
            }
            Err(e) => {
                let e = HttpError::from_token_error(&e);
                let resp = error_response(&e, F::render_error);
                self.finished(F::name(version), Some(&treq), &resp, Err(&e), started);
                resp
            }
        }
    }

    /// What every token request leaves behind: its count in the summary, its access-log line
    /// (`--access-log` or debug), and for an error answer an info line saying why.
    fn finished(
        &self,
        flavor: FlavorName,
        req: Option<&TokenRequest<'_>>,
        resp: &Response<Body>,
        outcome: Result<Lookup, &HttpError>,
        started: Instant,
    ) {
        let protocol = match flavor {
            FlavorName::Imds => summary::Protocol::Imds,
            _ => summary::Protocol::AppService,
        };
        self.summary.record(
            protocol,
            match outcome {
                Ok(Lookup::Hit) => summary::Outcome::Hit,
                Ok(Lookup::Miss) => summary::Outcome::Miss,
                Err(_) => summary::Outcome::Error,
            },
        );
        if let Err(e) = outcome {
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
        access_log::record(
            &access_log::Entry {
                flavor: flavor.as_str(),
                client_id: req.map_or("-", |r| r.client_id),
                resource: req.map_or("-", |r| &r.resource),
                status: resp.status().as_u16(),
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                cache: match outcome {
                    Ok(Lookup::Hit) => "hit",
                    Ok(Lookup::Miss) => "miss",
                    Err(_) => "-",
                },
            },
            self.access_log,
        );
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
        match self.tokens.source().ready() {
            Ok(t) => {
                let body = serde_json::json!({
                    "status": "ready",
                    "federated_token": {
                        "iss": t.claims.iss, "sub": t.claims.sub, "aud": t.claims.aud,
                        "exp": t.claims.exp, "seconds_left": t.seconds_left(),
                    },
                });
                json(StatusCode::OK, body.to_string().into_bytes())
            }
            Err(e) => {
                let body = serde_json::json!({ "status": "not_ready", "reason": e.to_string() });
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    body.to_string().into_bytes(),
                )
            }
        }
    }

    /// `/metrics`, in Prometheus' text format.
    pub fn metrics_page(&self, req: &Request<Incoming>) -> Response<Body> {
        if let Some(refused) = only_get(req) {
            return refused;
        }
        let left = self
            .tokens
            .source()
            .current()
            .ok()
            .map(|t| t.seconds_left());
        let text = self.metrics.render(left);
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

fn only_get(req: &Request<Incoming>) -> Option<Response<Body>> {
    (req.method() != Method::GET && req.method() != Method::HEAD)
        .then(|| method_not_allowed(imds::render_error))
}

fn method_not_allowed_error() -> HttpError {
    HttpError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        error: "invalid_request".into(),
        description: "Only GET is allowed here".into(),
        retry_after: None,
    }
}

fn method_not_allowed(render: fn(&HttpError) -> Vec<u8>) -> Response<Body> {
    error_response(&method_not_allowed_error(), render)
}

/// The answer for `e`: its status, the flavor's body, and `Retry-After` or `Allow` where due.
fn error_response(e: &HttpError, render: fn(&HttpError) -> Vec<u8>) -> Response<Body> {
    let mut r = json(e.status, render(e));
    if e.status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
    }
    if let Some(secs) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
