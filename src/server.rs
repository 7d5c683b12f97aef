//! The HTTP server: listeners, connection limits and timeouts, routing, and graceful shutdown.
//! It serves a ready-made [`Service`] and knows nothing of tokens: [`start`] binds, each
//! connection's requests are routed by path to the service's endpoints, and every answer is
//! counted by endpoint and status.
//!
//! Each listener has a [`Role`]. The token listeners (loopback by default) serve everything; the
//! optional admin listener (`--admin-listen`, on the pod IP for Prometheus and the kubelet's
//! probes) serves only `/metrics`, `/healthz` and `/readyz`: its routing table has no token or
//! metadata entry at all, so a token path there is a 404 that never reaches the request path.
//!
//! Limits are explicit here: headers must arrive within [`HEADER_READ_TIMEOUT`], a request head
//! may not exceed [`MAX_HEAD_BYTES`], and at most [`MAX_CONNECTIONS`] token connections and
//! [`MAX_ADMIN_CONNECTIONS`] admin connections are open at once (further clients wait in the
//! kernel backlog); the admin listener has its own budget, so a flood of token clients cannot
//! starve the kubelet's probes.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::Listen;
use crate::protocol::{self, app_service, imds};
use crate::service::{Body, Service};
use crate::telemetry::caller::{Connection, NamespaceDiag};
use crate::telemetry::metrics::Endpoint;

/// A client must send its request head within this time (slowloris defence).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted; hyper's minimum buffer is 8 KiB.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most connections served at once on the token listeners.
pub const MAX_CONNECTIONS: usize = 4096;
/// Most connections served at once on the admin listener (probes and scrapes).
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The token endpoints of every flavor, the metadata passthrough, health and metrics.
    Token,
    /// Health, readiness and metrics only (`--admin-listen`).
    Admin,
}

/// A running server; see [`start`].
pub struct Running {
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
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
}

/// Binds the token listeners of `listen` and the admin listener `admin`, and serves `service`
/// until shut down; after [`Running::shutdown`], requests in flight get `grace` to finish.
pub async fn start(
    listen: &Listen,
    admin: Option<SocketAddr>,
    grace: Duration,
    service: Arc<Service>,
) -> Result<Running, StartError> {
    let mut listeners = Vec::new();
    for addr in &listen.addrs {
        match TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e) if listen.is_default && addr.is_ipv6() => {
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
    let admin_listener = match admin {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?,
        ),
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

    let (stop, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let admin_limit = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let roles = listeners
        .into_iter()
        .map(|l| (l, Role::Token, &limit))
        .chain(admin_listener.map(|l| (l, Role::Admin, &admin_limit)));
    let mut loops = Vec::new();
    for (l, role, limit) in roles {
        loops.push(tokio::spawn(accept_loop(
            l,
            role,
            Arc::clone(&service),
            Arc::clone(&graceful),
            Arc::clone(limit),
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
    });
    Ok(Running {
        addrs,
        admin: admin_addr,
        stop,
        done,
    })
}

async fn accept_loop(
    listener: TcpListener,
    role: Role,
    service: Arc<Service>,
    graceful: Arc<GracefulShutdown>,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let http = http1();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped(&mut stop) => return,
        };
        let (stream, peer) = tokio::select! {
            x = accept(&listener) => x,
            _ = stopped(&mut stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let conn = Arc::new(Connection::new(peer, local));
        let service = Arc::clone(&service);
        let service =
            service_fn(move |req| handle(role, Arc::clone(&service), Arc::clone(&conn), req));
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}

/// The next connection of `listener`; on EMFILE and friends it backs off instead of spinning.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(x) => return x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The header every answer of the node agent's in-pod listeners carries, with value
/// [`AGENT_NODE`]: what `probe --node-agent` waits for, so an init container can tell the agent's
/// listener from the real IMDS (which never sends it).
pub const AGENT_HEADER: &str = "x-identity-sidecar-agent";
pub const AGENT_NODE: &str = "node";
/// The UID of the one pod an in-pod listener serves, on each of its answers.
pub const POD_UID_HEADER: &str = "x-identity-sidecar-pod-uid";

/// Serves `service` on `listener` (the node agent's listener inside one pod) until `stop`: then
/// the listener closes and every open connection is dropped at once, with the last references
/// to the service (so its cached tokens go with it). Each answer carries [`AGENT_HEADER`] and the
/// pod's UID in [`POD_UID_HEADER`]. A caller's uid is asked of `diag`, opened in the pod's
/// namespace (the agent's own namespace cannot see the pod's sockets).
pub async fn serve_pod(
    listener: TcpListener,
    service: Arc<Service>,
    pod_uid: HeaderValue,
    diag: Option<Arc<NamespaceDiag>>,
    mut stop: watch::Receiver<bool>,
) {
    let http = http1();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            x = accept(&listener) => x,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = stopped(&mut stop) => return,
        };
        if conns.len() >= MAX_CONNECTIONS {
            // Over the limit: this connection is refused by closing it.
            continue;
        }
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let conn = Arc::new(Connection::in_namespace(peer, local, diag.clone()));
        let (service, uid) = (Arc::clone(&service), pod_uid.clone());
        let svc = service_fn(move |req| {
            let (service, uid, conn) = (Arc::clone(&service), uid.clone(), Arc::clone(&conn));
            async move {
                let mut resp = if route(Role::Token, req.uri().path()) == Endpoint::Metrics {
                    // The agent's metrics cover every pod: served on its own listener only.
                    service.not_found()
                } else {
                    handle(Role::Token, service, conn, req).await?
                };
                let h = resp.headers_mut();
                h.insert(AGENT_HEADER, HeaderValue::from_static(AGENT_NODE));
                h.insert(POD_UID_HEADER, uid);
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        conns.spawn(async move {
            let _ = conn.await;
        });
    }
}

/// The HTTP/1.1 connection settings of every listener: the limits at the top of this file.
fn http1() -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    http
}

/// Resolves once shutdown has been requested (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.is_ok();
}

/// Which endpoint serves `path` on a listener of `role`. The admin role's table stops after the
/// three operator endpoints: everything else, token paths included, is [`Endpoint::NotFound`].
fn route(role: Role, path: &str) -> Endpoint {
    let path = protocol::normalize_path(path);
    match (role, &*path) {
        (_, "/healthz") => Endpoint::Healthz,
        (_, "/readyz") => Endpoint::Readyz,
        (_, "/metrics") => Endpoint::Metrics,
        (Role::Admin, _) => Endpoint::NotFound,
        (Role::Token, p) if imds::matches(p) => Endpoint::Imds,
        (Role::Token, p) if app_service::matches(p) => Endpoint::AppService,
        (Role::Token, p) if imds::is_other_metadata(p) => Endpoint::ImdsOther,
        (Role::Token, _) => Endpoint::NotFound,
    }
}

async fn handle(
    role: Role,
    service: Arc<Service>,
    conn: Arc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let endpoint = route(role, req.uri().path());
    let resp = match endpoint {
        Endpoint::Imds => service.token::<imds::Imds>(req, started, &conn).await,
        // A POST there is the Cloud Shell form (docs/protocols.md#cloud-shell-form).
        Endpoint::AppService if req.method() == http::Method::POST => {
            service
                .token::<app_service::CloudShell>(req, started, &conn)
                .await
        }
        Endpoint::AppService => {
            service
                .token::<app_service::AppService>(req, started, &conn)
                .await
        }
        Endpoint::Healthz => service.healthz(&req),
        Endpoint::Readyz => service.readyz(&req),
        Endpoint::Metrics => service.metrics_page(&req),
        Endpoint::ImdsOther => service.other_metadata(req).await,
        Endpoint::NotFound if role == Role::Admin => service.admin_not_found(),
        Endpoint::NotFound => service.not_found(),
    };
    let status = resp.status().as_u16();
    service.metrics().request(endpoint, status);
    if !matches!(endpoint, Endpoint::Imds | Endpoint::AppService) {
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::debug!(
            endpoint = endpoint.as_str(),
            status,
            latency_ms = format_args!("{latency_ms:.2}"),
            "request"
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_role_routes_only_the_operator_endpoints() {
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(route(Role::Admin, path), route(Role::Token, path), "{path}");
        }
        for path in [
            "/metadata/identity/oauth2/token",
            "/metadata/identity/oauth2/token/",
            "/msi/token",
            "/msi/token/",
            "/metadata/instance",
            "//metadata/identity/oauth2/token",
        ] {
            assert_ne!(route(Role::Token, path), Endpoint::NotFound, "{path}");
            assert_eq!(route(Role::Admin, path), Endpoint::NotFound, "{path}");
        }
    }
}
