//! The webhook's HTTPS server: `POST /mutate` (AdmissionReview), `/healthz`, `/readyz` and
//! `/metrics` on one listener, the certificate reload loop, and the API reachability check that
//! `/readyz` reports.
//!
//! Limits: a TLS handshake and the request head must arrive within [`HANDSHAKE_TIMEOUT`]; bodies
//! over [`MAX_BODY`] (the API server's own request limit, 3 MiB) get 413 before they are read; at
//! most [`MAX_CONNECTIONS`] connections are served at once.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::kube::{self, KubeError, Lookup};
use super::patch::{self, Settings};
use super::review;
use super::tls::{self, Reload, Reloading};

/// Largest AdmissionReview accepted: the API server refuses requests over 3 MiB itself.
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// Bodies up to this size are read to the end even when refused, so the client sees the 413.
pub const DRAIN_LIMIT: usize = 8 * 1024 * 1024;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTIONS: usize = 1024;
/// How often the API's reachability is checked for `/readyz`.
pub const API_CHECK_INTERVAL: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

/// Everything the server needs, validated.
pub struct Config {
    pub listen: SocketAddr,
    pub tls_cert_file: std::path::PathBuf,
    pub tls_key_file: std::path::PathBuf,
    pub settings: Settings,
    pub kube: kube::ClientConfig,
    pub cache_ttl: Duration,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// The webhook's Prometheus metrics (docs/operations.md#metrics).
struct Metrics {
    registry: Registry,
    admissions: Family<Outcome, Counter>,
    latency: Histogram,
    lookups: Family<Outcome, Counter>,
    reloads: Family<Outcome, Counter>,
    api_errors: Family<Operation, Counter>,
    cert_expiry: Gauge<i64, AtomicI64>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("identity_sidecar_webhook");
        let admissions = Family::<Outcome, Counter>::default();
        for outcome in ["patched", "unchanged", "refused", "ignored", "bad_request"] {
            let _ = admissions.get_or_create(&Outcome { outcome });
        }
        registry.register(
            "admissions",
            "AdmissionReviews answered, by outcome (patched, unchanged, refused, ignored, bad_request)",
            admissions.clone(),
        );
        let latency = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 3.0,
        ]);
        registry.register(
            "admission_duration_seconds",
            "Time to answer an AdmissionReview, body read included",
            latency.clone(),
        );
        let lookups = Family::<Outcome, Counter>::default();
        for outcome in ["cached", "fetched", "error"] {
            let _ = lookups.get_or_create(&Outcome { outcome });
        }
        registry.register(
            "serviceaccount_lookups",
            "ServiceAccount lookups, by result (cached, fetched, error)",
            lookups.clone(),
        );
        let reloads = Family::<Outcome, Counter>::default();
        for outcome in ["swapped", "kept_old"] {
            let _ = reloads.get_or_create(&Outcome { outcome });
        }
        registry.register(
            "certificate_reloads",
            "Serving-certificate changes seen, by result (swapped, kept_old)",
            reloads.clone(),
        );
        let api_errors = Family::<Operation, Counter>::default();
        // Both operations exist from the start, so a rate over them has a series before the
        // first error.
        for operation in ["get_serviceaccount", "ping"] {
            let _ = api_errors.get_or_create(&Operation { operation });
        }
        registry.register(
            "kubernetes_api_errors",
            "Failed calls to the Kubernetes API, by operation (get_serviceaccount, ping)",
            api_errors.clone(),
        );
        let cert_expiry = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry (Unix time, notAfter) of the serving certificate in use",
            cert_expiry.clone(),
        );
        let build = Family::<BuildLabels, Gauge<i64, AtomicI64>>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: crate::telemetry::metrics::BUILD_COMMIT,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say which build runs (version, commit)",
            build,
        );
        Metrics {
            registry,
            admissions,
            latency,
            lookups,
            reloads,
            api_errors,
            cert_expiry,
        }
    }

    fn count(f: &Family<Outcome, Counter>, outcome: &'static str) {
        f.get_or_create(&Outcome { outcome }).inc();
    }

    fn api_error(&self, operation: &'static str) {
        self.api_errors
            .get_or_create(&Operation { operation })
            .inc();
    }
}

/// Shared state of the request path.
struct State {
    settings: Settings,
    certs: Arc<Reloading>,
    kube: kube::Client,
    cache: kube::Cache,
    api_ok: AtomicBool,
    metrics: Metrics,
}

/// A running webhook; see [`start`].
pub struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and lets requests in flight finish (at most 10 s).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }
}

/// Loads the certificate, binds the listener and serves until shut down.
pub async fn start(cfg: Config) -> Result<Running, String> {
    let certs = Reloading::load(&cfg.tls_cert_file, &cfg.tls_key_file)?;
    let tls_config = certs.server_config()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let client = kube::Client::new(cfg.kube)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listener address: {e}"))?;
    let state = Arc::new(State {
        settings: cfg.settings,
        certs: Arc::clone(&certs),
        kube: client,
        cache: kube::Cache::new(cfg.cache_ttl),
        api_ok: AtomicBool::new(false),
        metrics: Metrics::new(),
    });

    let (stop, stop_rx) = watch::channel(false);
    let reload_task = tokio::spawn(reload_loop(Arc::clone(&certs), Arc::clone(&state)));
    let api_task = tokio::spawn(api_loop(Arc::clone(&state)));
    let accept = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&state), stop_rx));
    let done = tokio::spawn(async move {
        let _ = accept.await;
        reload_task.abort();
        api_task.abort();
    });
    Ok(Running { addr, stop, done })
}

async fn reload_loop(certs: Arc<Reloading>, state: Arc<State>) {
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(tls::RELOAD_INTERVAL).await;
        let c = Arc::clone(&certs);
        let outcome = tokio::task::spawn_blocking(move || c.check())
            .await
            .unwrap_or(Reload::Unchanged);
        match outcome {
            Reload::Unchanged => {}
            Reload::Swapped => {
                last_error.clear();
                Metrics::count(&state.metrics.reloads, "swapped");
                tracing::info!("serving certificate reloaded");
            }
            Reload::Kept(e) => {
                if e != last_error {
                    Metrics::count(&state.metrics.reloads, "kept_old");
                    tracing::warn!(
                        "serving certificate files changed but are not usable yet, keeping the loaded pair: {e}"
                    );
                    last_error = e;
                }
            }
        }
    }
}

async fn api_loop(state: Arc<State>) {
    loop {
        let ok = match state.kube.ping().await {
            Ok(()) => true,
            Err(e) => {
                Metrics::api_error(&state.metrics, "ping");
                if state.api_ok.load(Ordering::Relaxed) {
                    tracing::warn!("Kubernetes API check failed: {e}");
                }
                false
            }
        };
        if ok && !state.api_ok.load(Ordering::Relaxed) {
            tracing::info!(server = state.kube.server(), "Kubernetes API reachable");
        }
        state.api_ok.store(ok, Ordering::Relaxed);
        tokio::time::sleep(API_CHECK_INTERVAL).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut stop) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        let http = http.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |req| handle(Arc::clone(&state), req));
            let conn = http.serve_connection(TokioIo::new(tls), service);
            let _ = watcher.watch(conn).await;
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// Resolves once shutdown has been requested (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.is_ok();
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let resp = match (req.uri().path(), req.method()) {
        ("/mutate", &Method::POST) => mutate(&state, req).await,
        ("/mutate", _) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST with an AdmissionReview\n",
        ),
        ("/healthz", &Method::GET) => text(StatusCode::OK, "ok\n"),
        ("/readyz", &Method::GET) => {
            if state.api_ok.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the Kubernetes API has not answered (yet)\n",
                )
            }
        }
        ("/metrics", &Method::GET) => {
            if let Some(at) = state.certs.not_after() {
                state.metrics.cert_expiry.set(at);
            }
            let mut out = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut out, &state.metrics.registry);
            let mut r = Response::new(Full::new(Bytes::from(out)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: POST /mutate, GET /healthz /readyz /metrics\n",
        ),
    };
    Ok(resp)
}

async fn mutate(state: &State, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let resp = mutate_inner(state, req).await;
    state
        .metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn mutate_inner(state: &State, req: Request<Incoming>) -> Response<Body> {
    let bad = |status: StatusCode, msg: String| {
        Metrics::count(&state.metrics.admissions, "bad_request");
        tracing::info!(status = status.as_u16(), "bad admission request: {msg}");
        text(status, &format!("{msg}\n"))
    };
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return bad(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, got {ctype:?}"),
        );
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_big =
        || format!("the AdmissionReview is larger than {MAX_BODY} bytes (the API server's limit)");
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        // Not worth reading: answer at once and let the connection close.
        return bad(StatusCode::PAYLOAD_TOO_LARGE, too_big());
    }
    let body = match read_body(req.into_body()).await {
        Ok(Some(b)) => b,
        Ok(None) => return bad(StatusCode::PAYLOAD_TOO_LARGE, too_big()),
        Err(e) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            );
        }
    };
    let review = match review::Request::parse(&body) {
        Ok(r) => r,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (outcome, bytes) = admit(state, &review).await;
    Metrics::count(&state.metrics.admissions, outcome);
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Reads a body of at most [`MAX_BODY`] bytes; `None` when it is larger. A larger body is still
/// read (and dropped) up to [`DRAIN_LIMIT`], so the client gets the 413 instead of a broken pipe.
async fn read_body(mut body: Incoming) -> Result<Option<Bytes>, hyper::Error> {
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > DRAIN_LIMIT {
            return Ok(None);
        }
        if seen <= MAX_BODY {
            buf.extend_from_slice(&data);
        }
    }
    Ok((seen <= MAX_BODY).then(|| buf.freeze()))
}

/// Decides about one AdmissionReview; returns the outcome label and the response body.
async fn admit(state: &State, review: &review::Request) -> (&'static str, Vec<u8>) {
    let uid = &review.uid;
    // Other kinds, sub-resources and operations: allowed untouched (the configuration only sends
    // pod CREATEs; anything else is someone's mistake, not a reason to block the cluster).
    if !review.is_pod_create() || !patch::opted_in(&review.object) {
        return ("ignored", review::allow(uid, &[]));
    }
    let pod = &review.object;
    let namespace = if review.namespace.is_empty() {
        pod.pointer("/metadata/namespace")
            .and_then(|v| v.as_str())
            .unwrap_or("default")
    } else {
        &review.namespace
    };
    let name = patch::display_name(pod);
    let refused = |msg: &str| {
        tracing::info!(namespace, pod = %name, "refused: {msg}");
        ("refused", review::deny(uid, 403, msg))
    };
    if let Err(r) = patch::precheck(pod) {
        return refused(&r.0);
    }
    let sa = if patch::has_sidecar(pod) {
        // Reinvocation: the sidecar is there; only containers added since need the environment.
        None
    } else {
        let sa_name = patch::service_account_name(pod);
        match state.cache.get(&state.kube, namespace, sa_name).await {
            Ok((sa, how)) => {
                state.api_ok.store(true, Ordering::Relaxed);
                Metrics::count(
                    &state.metrics.lookups,
                    if how == Lookup::Hit {
                        "cached"
                    } else {
                        "fetched"
                    },
                );
                Some(sa)
            }
            Err(e) => {
                Metrics::count(&state.metrics.lookups, "error");
                Metrics::api_error(&state.metrics, "get_serviceaccount");
                if matches!(e, KubeError::Unreachable { .. }) {
                    state.api_ok.store(false, Ordering::Relaxed);
                }
                let msg = format!(
                    "identity-sidecar: cannot read ServiceAccount {namespace}/{sa_name}, so the \
                     identity of pod {name} is unknown: {e}"
                );
                tracing::warn!(namespace, pod = %name, "{msg}");
                return ("refused", review::deny(uid, 500, &msg));
            }
        }
    };
    match patch::plan(
        pod,
        sa.as_deref(),
        &state.settings,
        &mut new_identity_header,
    ) {
        Ok(ops) if ops.is_empty() => ("unchanged", review::allow(uid, &[])),
        Ok(ops) => {
            // Per pod at debug (the API server's audit log has every admission); refusals,
            // which someone must act on, at info.
            tracing::debug!(namespace, pod = %name, operations = ops.len(), "patched");
            ("patched", review::allow(uid, &ops))
        }
        Err(r) => refused(&r.0),
    }
}

/// 24 random bytes, URL-safe base64: the per-pod secret of the App Service endpoints.
fn new_identity_header() -> String {
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
