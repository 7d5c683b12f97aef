//! What the loopback fakes (Entra ID, the token proxy) share as HTTP servers.
use bytes::Bytes;
use http_body_util::BodyExt as _;

/// The whole body of `req`; empty when the client broke off (a fake answers it anyway).
pub async fn read_body(req: hyper::Request<hyper::body::Incoming>) -> Bytes {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}
