//! The benchmark's ceiling: a minimal hyper 1.x server that answers every request with fixed bytes
//! of the same size as the sidecar's IMDS answer. Same runtime settings as `serve` (its default worker count,
//! HTTP/1.1 keep-alive, TCP_NODELAY), nothing else.
//!
//! usage: cargo run --release --example minimal_server -- ADDR BODY_BYTES
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8001".into());
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1500);
    let body = Bytes::from(format!(
        "{{\"access_token\":\"{}\"}}",
        "x".repeat(size.saturating_sub(19))
    ));
    identity_sidecar::cmd::serve::runtime(identity_sidecar::config::DEFAULT_WORKER_THREADS)?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            eprintln!("minimal server on {addr}, {} byte bodies", body.len());
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move {
                            let mut r = Response::new(Full::new(body));
                            r.headers_mut().insert(
                                "content-type",
                                hyper::header::HeaderValue::from_static(
                                    "application/json; charset=utf-8",
                                ),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
