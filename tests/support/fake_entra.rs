//! A scriptable fake Entra ID token endpoint on loopback: it records every request, issues
//! numbered tokens of a chosen lifetime, and can fail, throttle, delay or hang on demand.
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the fake does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Issue a token with this lifetime (seconds); `expires_in` sent as a JSON number.
    Token { lifetime: u64 },
    /// Answer with this status, body and optional Retry-After.
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// Wait, then behave like the default.
    Delay(Duration),
    /// Never answer.
    Hang,
}

impl Reply {
    /// An Entra error answer: `status` with an [`entra_error`] body, no Retry-After.
    pub fn entra_error(status: u16, error: &str, code: u32, text: &str) -> Reply {
        Reply::Status {
            status,
            body: entra_error(error, code, text),
            retry_after: None,
        }
    }

    /// AADSTS70021 (400): no federated credential of the app matches the assertion's issuer and
    /// subject, the usual mistake in a new set-up.
    pub fn no_matching_federated_credential() -> Reply {
        Reply::entra_error(
            400,
            "invalid_request",
            70021,
            "No matching federated identity record found for presented assertion.",
        )
    }
}

/// One recorded token request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub form: Vec<(String, String)>,
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn field(&self, k: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    default: Option<Reply>,
    queue: VecDeque<Reply>,
    log: Vec<Recorded>,
    issued: u64,
}

#[derive(Clone)]
pub struct FakeEntra {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl FakeEntra {
    pub async fn start() -> FakeEntra {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake entra");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            default: Some(Reply::Token { lifetime: 3600 }),
            ..Default::default()
        }));
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&st), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeEntra {
            addr,
            state,
            task: Arc::new(task),
        }
    }

    /// The authority URL to give the sidecar.
    pub fn authority(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn set_default(&self, r: Reply) {
        self.state.lock().expect("lock").default = Some(r);
    }

    /// Replies used, in order, before the default applies again.
    pub fn push(&self, r: Reply) {
        self.state.lock().expect("lock").queue.push_back(r);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("lock").log.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().expect("lock").log.len()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for FakeEntra {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

/// An Entra-shaped error body.
pub fn entra_error(error: &str, code: u32, text: &str) -> String {
    serde_json::json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: 00000000-0000-0000-0000-000000000000\r\nCorrelation ID: 00000000-0000-0000-0000-000000000000\r\nTimestamp: 2026-11-26 12:00:00Z"),
        "error_codes": [code],
        "timestamp": "2026-11-26 12:00:00Z",
        "trace_id": "00000000-0000-0000-0000-000000000000",
        "correlation_id": "00000000-0000-0000-0000-000000000000",
    })
    .to_string()
}

async fn handle(
    st: Arc<Mutex<State>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if req.method() == hyper::Method::GET && path.ends_with("/.well-known/openid-configuration") {
        let doc = serde_json::json!({
            "token_endpoint": format!("http://fake{}", path.replace("/v2.0/.well-known/openid-configuration", "/oauth2/v2.0/token")),
            "authorization_endpoint": "http://fake/authorize",
            "issuer": "http://fake/",
        });
        return Ok(Response::new(Full::new(Bytes::from(doc.to_string()))));
    }
    let body = super::fake_http::read_body(req).await;
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let mut reply = {
        let mut s = st.lock().expect("lock");
        s.log.push(Recorded {
            path,
            form,
            at: std::time::Instant::now(),
        });
        let default = s.default.clone().unwrap_or(Reply::Token { lifetime: 3600 });
        s.queue.pop_front().unwrap_or(default)
    };
    loop {
        match reply {
            Reply::Delay(d) => {
                tokio::time::sleep(d).await;
                reply = st
                    .lock()
                    .expect("lock")
                    .default
                    .clone()
                    .unwrap_or(Reply::Token { lifetime: 3600 });
                if matches!(reply, Reply::Delay(_)) {
                    reply = Reply::Token { lifetime: 3600 };
                }
            }
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Reply::Status {
                status,
                body,
                retry_after,
            } => {
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = hyper::StatusCode::from_u16(status)
                    .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                r.headers_mut().insert(
                    "content-type",
                    "application/json; charset=utf-8".parse().expect("hv"),
                );
                if let Some(s) = retry_after {
                    r.headers_mut().insert("retry-after", s.into());
                }
                return Ok(r);
            }
            Reply::Token { lifetime } => {
                let n = {
                    let mut s = st.lock().expect("lock");
                    s.issued += 1;
                    s.issued
                };
                let body = serde_json::json!({
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": format!("fake-access-token-{n}"),
                });
                let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
                r.headers_mut().insert(
                    "content-type",
                    "application/json; charset=utf-8".parse().expect("hv"),
                );
                return Ok(r);
            }
        }
    }
}
