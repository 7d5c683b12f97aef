//! The HTTP server: listeners, connection limits and timeouts, routing to the protocol adapters,
//! health, readiness and metrics, and graceful shutdown.
//!
//! One listener set serves everything. Limits are explicit here: headers must arrive within
//! [`HEADER_READ_TIMEOUT`], a request head may not exceed [`MAX_HEAD_BYTES`], and at most
//! [`MAX_CONNECTIONS`] connections are open at once (further clients wait in the kernel backlog).
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::ServeConfig;
use crate::core::TokenService;
use crate::core::cache::Lookup;
use crate::core::entra::EntraClient;
use crate::core::federated::TokenSource;
use crate::protocol::{self, HttpError, TokenRequest, app_service, imds};
use crate::telemetry::metrics::Metrics;

/// A client must send its request head within this time (slowloris defence).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted; hyper's minimum buffer is 8 KiB.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// Largest request body forwarded with `--imds-passthrough`.
const MAX_PASSTHROUGH_BODY: usize = 64 * 1024;

type Body = Full<Bytes>;

/// Shared state of the request path.
pub struct App {
    cfg: ServeConfig,
    tokens: TokenService,
    metrics: Arc<Metrics>,
    passthrough: Option<reqwest::Client>,
}

/// A running server; see [`start`].
pub struct Running {
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
    app: Arc<App>,
}

impl Running {
    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn metrics(&self) -> &Metrics {
        &self.app.metrics
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }

    /// Waits until the server stops (after [`Running::shutdown`] from elsewhere, or never).
    pub async fn wait(self) {
        let _ = self.done.await;
    }

    /// A handle that triggers shutdown; the server finishes in [`Running::wait`].
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no address to listen on")]
    NoListener,
    #[error("{0}")]
    Setup(String),
}

/// Binds the listeners, starts watching the token file, and serves until shut down.
pub async fn start(cfg: ServeConfig) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let source = TokenSource::new(&cfg.token_file);
    let entra = EntraClient::new(
        &cfg.authority,
        &cfg.tenant_id,
        cfg.entra_timeout,
        cfg.entra_budget,
        &cfg.extra_ca_files,
        Arc::clone(&metrics),
    )
    .map_err(StartError::Setup)?;
    let passthrough = if cfg.imds_passthrough {
        Some(
            reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| {
                    StartError::Setup(format!("cannot create the IMDS passthrough client: {e}"))
                })?,
        )
    } else {
        None
    };

    let mut listeners = Vec::new();
    for addr in &cfg.listen {
        match TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e) if cfg.listen_is_default && addr.is_ipv6() => {
                tracing::debug!(%addr, "IPv6 loopback unavailable, serving IPv4 only: {e}");
            }
            Err(source) => {
                return Err(StartError::Bind {
                    addr: *addr,
                    source,
                });
            }
        }
    }
    if listeners.is_empty() {
        return Err(StartError::NoListener);
    }
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();

    let watch_task = source.watch();
    let tokens = TokenService::new(
        Arc::clone(&source),
        entra,
        cfg.max_cached_tokens,
        Arc::clone(&metrics),
    );
    let grace = cfg.shutdown_grace;
    let app = Arc::new(App {
        cfg,
        tokens,
        metrics,
        passthrough,
    });

    let (stop, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut loops = Vec::new();
    for l in listeners {
        loops.push(tokio::spawn(accept_loop(
            l,
            Arc::clone(&app),
            Arc::clone(&graceful),
            Arc::clone(&limit),
            stop_rx.clone(),
        )));
    }
    let done = tokio::spawn(async move {
        let mut stop_rx = stop_rx;
        stopped(&mut stop_rx).await;
        for l in loops {
            let _ = l.await;
        }
        // The accept loops have ended and dropped their references.
        if let Ok(graceful) = Arc::try_unwrap(graceful) {
            let open = graceful.count();
            if tokio::time::timeout(grace, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    grace_s = grace.as_secs_f64(),
                    "shutdown grace period over; closing {open} connection(s) now"
                );
            }
        }
        watch_task.abort();
    });
    Ok(Running {
        addrs,
        stop,
        done,
        app,
    })
}

async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    graceful: Arc<GracefulShutdown>,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped(&mut stop) => return,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let service = service_fn(move |req| handle(Arc::clone(&app), req));
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}

/// Resolves once shutdown has been requested (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.is_ok();
}

#[derive(Clone, Copy)]
enum Route {
    Imds,
    AppService,
    Healthz,
    Readyz,
    Metrics,
    OtherMetadata,
    NotFound,
}

impl Route {
    fn of(path: &str) -> Route {
        let path = protocol::normalize_path(path);
        match &*path {
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            p if imds::matches(p) => Route::Imds,
            p if app_service::matches(p) => Route::AppService,
            p if imds::is_other_metadata(p) => Route::OtherMetadata,
            _ => Route::NotFound,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Route::Imds => "imds",
            Route::AppService => "app_service",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::OtherMetadata => "imds_other",
            Route::NotFound => "not_found",
        }
    }
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let route = Route::of(req.uri().path());
    let resp = match route {
        Route::Imds => token_imds(&app, &req, started).await,
        Route::AppService => token_app_service(&app, &req, started).await,
        Route::Healthz => {
            only_get(&req).unwrap_or_else(|| json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()))
        }
        Route::Readyz => only_get(&req).unwrap_or_else(|| readyz(&app)),
        Route::Metrics => only_get(&req).unwrap_or_else(|| metrics(&app)),
        Route::OtherMetadata => other_metadata(&app, req).await,
        Route::NotFound => error_response(
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
        ),
    };
    let status = resp.status().as_u16();
    app.metrics.request(route.name(), status);
    if !matches!(route, Route::Imds | Route::AppService) {
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::debug!(
            endpoint = route.name(),
            status,
            latency_ms = format_args!("{latency_ms:.2}"),
            "request"
        );
    }
    Ok(resp)
}

/// Writes the access-log line of a token request; `req` is what the adapter parsed, if anything.
fn access(
    flavor: &str,
    req: Option<&TokenRequest<'_>>,
    resp: &Response<Body>,
    cache: Option<Lookup>,
    started: Instant,
) {
    crate::telemetry::access_log::record(&crate::telemetry::access_log::Entry {
        flavor,
        client_id: req.map_or("-", |r| r.client_id),
        resource: req.map_or("-", |r| &r.resource),
        status: resp.status().as_u16(),
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        cache: match cache {
            Some(Lookup::Hit) => "hit",
            Some(Lookup::Miss) => "miss",
            None => "-",
        },
    });
}

async fn token_imds(app: &App, req: &Request<Incoming>, started: Instant) -> Response<Body> {
    const FLAVOR: &str = "imds";
    if req.method() != Method::GET {
        let resp = method_not_allowed(imds::render_error);
        access(FLAVOR, None, &resp, None, started);
        return resp;
    }
    let treq = match imds::parse(req.headers(), req.uri().query(), &app.cfg) {
        Ok(r) => r,
        Err(e) => {
            let resp = error_response(&e, imds::render_error);
            access(FLAVOR, None, &resp, None, started);
            return resp;
        }
    };
    let (resp, cache) = match app.tokens.token(treq.client_id, &treq.resource).await {
        Ok((t, how)) => (json(StatusCode::OK, imds::render(&t, &treq)), Some(how)),
        Err(e) => (
            error_response(&HttpError::from_token_error(&e), imds::render_error),
            None,
        ),
    };
    access(FLAVOR, Some(&treq), &resp, cache, started);
    resp
}

async fn token_app_service(app: &App, req: &Request<Incoming>, started: Instant) -> Response<Body> {
    const FLAVOR: &str = "app-service";
    if req.method() != Method::GET {
        let resp = method_not_allowed(app_service::render_error);
        access(FLAVOR, None, &resp, None, started);
        return resp;
    }
    let version = match app_service::version(req.uri().query()) {
        Ok(v) => v,
        Err(e) => {
            let resp = error_response(&e, app_service::render_error);
            access(FLAVOR, None, &resp, None, started);
            return resp;
        }
    };
    let treq = match app_service::parse(version, req.headers(), req.uri().query(), &app.cfg) {
        Ok(r) => r,
        Err(e) => {
            let resp = error_response(&e, app_service::render_error);
            access(version.name(), None, &resp, None, started);
            return resp;
        }
    };
    let (resp, cache) = match app.tokens.token(treq.client_id, &treq.resource).await {
        Ok((t, how)) => (
            json(StatusCode::OK, app_service::render(version, &t, &treq)),
            Some(how),
        ),
        Err(e) => (
            error_response(&HttpError::from_token_error(&e), app_service::render_error),
            None,
        ),
    };
    access(version.name(), Some(&treq), &resp, cache, started);
    resp
}

fn readyz(app: &App) -> Response<Body> {
    match app.tokens.source().ready() {
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

fn metrics(app: &App) -> Response<Body> {
    let left = app.tokens.source().current().ok().map(|t| t.seconds_left());
    let text = app.metrics.render(left);
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `/metadata/...` paths other than the token: 404, or forwarded to the real IMDS.
async fn other_metadata(app: &App, req: Request<Incoming>) -> Response<Body> {
    let Some(client) = &app.passthrough else {
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
    let url = format!("http://{}{}", app.cfg.imds_address, path_q);
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

fn method_not_allowed(render: fn(&HttpError) -> Vec<u8>) -> Response<Body> {
    let mut r = error_response(
        &HttpError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            error: "invalid_request".into(),
            description: "Only GET is allowed here".into(),
            retry_after: None,
        },
        render,
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET"));
    r
}

fn error_response(e: &HttpError, render: fn(&HttpError) -> Vec<u8>) -> Response<Body> {
    let mut r = json(e.status, render(e));
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
