//! Sockets and routing: the accept loop (TLS or, on loopback only, plain HTTP), graceful shutdown,
//! and the table from method and path to handler.
//!
//! Routes (tenant segments are matched case-insensitively; empty segments are ignored, so an
//! authority with or without a trailing slash both work):
//!
//! | Method | Path | Handler |
//! |---|---|---|
//! | GET | `/{tenant}/v2.0/.well-known/openid-configuration` | [`discovery::tenant_metadata`] |
//! | GET | `/{tenant}/discovery/v2.0/keys` | [`discovery::tenant_keys`] |
//! | GET | `/common/discovery/instance` | [`discovery::instance_discovery`] |
//! | POST | `/{tenant}/oauth2/v2.0/token` | [`token::handle`] (after fault injection) |
//! | GET | `/issuer/.well-known/openid-configuration`, `/issuer/openid/v1/jwks` | the federated-token issuer |
//! | any | `/_mock/...` | admin, from loopback peers only: `GET stats`, `GET requests`, `POST`/`DELETE faults`, `GET federated-token?sub=&lifetime=`, `GET health` |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::config::ISSUER_PATH;
use super::discovery;
use super::errors::{AadError, HttpResponse, RequestIds, json_response, text_response};
use super::faults::{Fault, FaultAction, FaultJson};
use super::federated::{FederatedTokenMinter, FederatedTokenSpec};
use super::state::{Counters, State};
use super::token;

const MAX_BODY: usize = 256 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` turns true, then lets open requests finish (up to 5 s).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let watcher = graceful.watcher();
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => serve_stream(stream, state, peer, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => serve_stream(stream, state, peer, watcher).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("connections still open after the drain timeout");
    }
}

/// Serves HTTP/1.1 on one (TLS or plain) stream until it closes or shutdown drains it.
async fn serve_stream<S>(
    stream: S,
    state: Arc<State>,
    peer: SocketAddr,
    watcher: Watcher,
) -> Result<(), hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(&state, peer, req).await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    watcher
        .watch(http.serve_connection(TokioIo::new(stream), service))
        .await
}

async fn route(state: &State, peer: SocketAddr, req: Request<Incoming>) -> HttpResponse {
    let ids = RequestIds::from_request(req.headers(), req.uri().query());
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    tracing::debug!(%method, path, "request");

    let discovery = || Counters::bump(&state.counters.discovery_requests);
    match (&method, segments.as_slice()) {
        (&Method::GET, [tenant, "v2.0", ".well-known", "openid-configuration"]) => {
            discovery();
            discovery::tenant_metadata(state, tenant, &ids)
        }
        (&Method::GET, [common, "discovery", "instance"])
            if common.eq_ignore_ascii_case("common") =>
        {
            discovery();
            discovery::instance_discovery(state, query.as_deref(), &ids)
        }
        (&Method::GET, [tenant, "discovery", "v2.0", "keys"] | [tenant, "discovery", "keys"]) => {
            discovery();
            discovery::tenant_keys(state, tenant, &ids)
        }
        (&Method::GET, [ISSUER_PATH, ".well-known", "openid-configuration"]) => {
            discovery();
            discovery::issuer_metadata(state)
        }
        (&Method::GET, [ISSUER_PATH, "openid", "v1", "jwks"]) => {
            discovery();
            discovery::issuer_keys(state)
        }
        (&Method::POST, [tenant, "oauth2", "v2.0", "token"]) => {
            token_request(state, tenant, req, &ids).await
        }
        (_, [_, "oauth2", "v2.0", "token"]) => AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900561,
            format!("The endpoint only accepts POST requests. Received a {method} request."),
        )
        .into_response(&ids),
        (_, ["_mock", rest @ ..]) if peer.ip().to_canonical().is_loopback() => {
            admin(state, &method, rest, query.as_deref(), req).await
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "error_description": format!("No such endpoint: {path}")}),
        ),
    }
}

async fn token_request(
    state: &State,
    tenant: &str,
    req: Request<Incoming>,
    ids: &RequestIds,
) -> HttpResponse {
    Counters::bump(&state.counters.token_requests);
    if let Some(action) = state.faults.take() {
        Counters::bump(&state.counters.faults_injected);
        tracing::info!(fault = %action, "injecting a fault");
        let error = match action {
            FaultAction::Delay(delay) => {
                tokio::time::sleep(delay).await;
                None
            }
            FaultAction::Unavailable => Some(AadError::for_code(90033)),
            FaultAction::Throttle { retry_after_secs } => Some(AadError {
                retry_after: Some(retry_after_secs),
                ..AadError::for_code(90055)
            }),
            FaultAction::Aadsts(code) => Some(AadError::for_code(code)),
        };
        if let Some(error) = error {
            return error.into_response(ids);
        }
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let basic = token::BasicCredentials::from_header(req.headers().get(header::AUTHORIZATION));
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    token::handle(state, tenant, is_form.then_some(&body[..]), basic, ids).await
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, HttpResponse> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(text_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body rejected: {e}\n"),
        )),
    }
}

async fn admin(
    state: &State,
    method: &Method,
    path: &[&str],
    query: Option<&str>,
    req: Request<Incoming>,
) -> HttpResponse {
    match (method, path) {
        (&Method::GET, ["health"]) => text_response(StatusCode::OK, "ok\n"),
        (&Method::GET, ["requests"]) => {
            json_response(StatusCode::OK, &serde_json::json!(state.token_log()))
        }
        (&Method::GET, ["stats"]) => json_response(
            StatusCode::OK,
            &serde_json::json!(state.counters.snapshot()),
        ),
        (&Method::DELETE, ["faults"]) => {
            state.faults.set(None);
            text_response(StatusCode::NO_CONTENT, "")
        }
        (&Method::POST, ["faults"]) => {
            let body = match read_body(req).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let fault = serde_json::from_slice::<FaultJson>(&body)
                .map_err(|e| e.to_string())
                .and_then(Fault::try_from);
            match fault {
                Ok(fault) => {
                    tracing::info!(fault = %fault.action, times = ?fault.times, share = ?fault.share, "fault set");
                    state.faults.set(Some(fault));
                    text_response(StatusCode::NO_CONTENT, "")
                }
                Err(e) => text_response(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{e}\nexpected {{\"action\":\"503|429[:SECS]|aadsts:CODE|delay:DURATION\",\"times\":N,\"share\":0.5}}\n"
                    ),
                ),
            }
        }
        (&Method::GET, ["federated-token"]) => {
            let params: std::collections::HashMap<String, String> =
                form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                    .into_owned()
                    .collect();
            let subject = params
                .get("sub")
                .map(String::as_str)
                .unwrap_or(super::config::DEFAULT_SUBJECT);
            let lifetime = match params.get("lifetime").map(|l| crate::duration::parse(l)) {
                None => Duration::from_secs(3600),
                Some(Ok(d)) => d,
                Some(Err(e)) => return text_response(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            let minter = FederatedTokenMinter::new(&state.issuer_url, state.issuer_key.clone());
            let mut spec = FederatedTokenSpec::new(subject, lifetime);
            if let Some(aud) = params.get("aud") {
                spec.audience = aud.clone();
            }
            match minter.mint_with(&spec) {
                Ok(token) => text_response(StatusCode::OK, token),
                Err(e) => text_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        _ => text_response(
            StatusCode::NOT_FOUND,
            "unknown admin endpoint; see `identity-sidecar mock-aad --help`\n",
        ),
    }
}
