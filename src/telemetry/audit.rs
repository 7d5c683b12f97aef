//! The audit log (`serve --audit-log`): one JSON object per token request that reached the token
//! handler, answering "which workload got which token, when?" and joining the app's logs (the
//! SDK's `x-ms-client-request-id`) to Entra ID's sign-in logs (the `client-request-id` the sidecar
//! sent, which Entra records as the correlation id, and the request id Entra answered with).
//!
//! A line is always JSON, whatever `--log-format` says, and carries `"log":"audit"` and
//! `"target":"identity_sidecar::audit"` so a log pipeline can route it apart from the operational
//! lines on the same stream. It never holds a secret: the access token appears only as the first
//! 16 hex digits of its SHA-256 (a token is high-entropy, so the prefix cannot be reversed, and it
//! matches the token an app logged or sent); the federated token, the client assertion and the
//! identity header are never handed to this module at all.
//!
//! In node mode (`identity-sidecar-node --audit-log`) a line also names the pod it was served
//! for (`pod_namespace`, `pod_name`, `pod_uid`): the pod whose network namespace the accepting
//! socket lives in, which is the caller's identity there. A sidecar's line has no such fields
//! (its pod is the one it runs in).
//!
//! Written like the access log: built in a reused per-thread buffer and handed to the batching log
//! writer ([`crate::telemetry::logging::sink`]); without that writer (a library user, tests in
//! process) it is a `tracing` event of target `identity_sidecar::audit`.
use std::cell::RefCell;
use std::io::Write as _;

use super::caller::Caller;
use crate::telemetry::logging;

/// One finished token request.
pub struct Entry<'a> {
    pub flavor: &'a str,
    pub client_id: Option<&'a str>,
    pub resource: Option<&'a str>,
    pub status: u16,
    /// The protocol error code of an error answer (`invalid_request`, `unavailable`, ...).
    pub error: Option<&'a str>,
    /// Entra ID's `error_codes` (AADSTS numbers) when Entra refused the exchange.
    pub entra_error_codes: &'a [i64],
    /// `hit`, `miss`, `refresh`, or `none` when the request never reached the cache.
    pub cache: &'a str,
    pub latency_ms: f64,
    /// The Entra ID exchange this request waited for.
    pub entra: Option<&'a crate::core::entra::EntraCall>,
    /// [`crate::core::cache::CachedToken::fingerprint`] of the token served.
    pub token_sha256: Option<&'a str>,
    /// The SDK's `x-ms-client-request-id` header, when sent.
    pub app_request_id: Option<&'a str>,
    pub peer: std::net::SocketAddr,
    pub caller: &'a Caller,
    /// The pod served (node mode); `None` for a sidecar.
    pub pod: Option<&'a PodRef>,
}

/// The pod a node agent's listener serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(768));
}

/// Writes the entry's line.
pub fn record(e: &Entry<'_>) {
    let Some((writer, _)) = logging::sink() else {
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            line(buf, e);
            let text = String::from_utf8_lossy(buf);
            tracing::info!(target: "identity_sidecar::audit", audit = %text.trim_end(), "token request");
        });
        return;
    };
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        line(buf, e);
        let mut w = writer.clone();
        let _ = w.write_all(buf);
    });
}

/// The line of `e`, newline-terminated.
pub fn line(buf: &mut Vec<u8>, e: &Entry<'_>) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    super::access_log::timestamp(buf);
    buf.extend_from_slice(
        b"\",\"level\":\"INFO\",\"target\":\"identity_sidecar::audit\",\"log\":\"audit\",\"event\":\"token_request\"",
    );
    str_field(buf, "flavor", Some(e.flavor));
    str_field(buf, "client_id", e.client_id);
    str_field(buf, "resource", e.resource);
    let _ = write!(buf, ",\"status\":{}", e.status);
    str_field(buf, "error", e.error);
    if !e.entra_error_codes.is_empty() {
        buf.extend_from_slice(b",\"entra_error_codes\":");
        let _ = serde_json::to_writer(&mut *buf, e.entra_error_codes);
    }
    str_field(buf, "cache", Some(e.cache));
    let _ = write!(buf, ",\"latency_ms\":{:.3}", e.latency_ms);
    if let Some(c) = e.entra {
        let _ = write!(
            buf,
            ",\"entra_latency_ms\":{:.3},\"entra_attempts\":{}",
            c.latency.as_secs_f64() * 1000.0,
            c.attempts
        );
        str_field(buf, "entra_client_request_id", Some(&c.client_request_id));
        str_field(buf, "entra_request_id", c.entra_request_id.as_deref());
    }
    str_field(buf, "token_sha256", e.token_sha256);
    str_field(buf, "app_request_id", e.app_request_id);
    let _ = write!(buf, ",\"peer\":\"{}\"", e.peer);
    match e.caller.uid {
        Some(uid) => {
            let _ = write!(buf, ",\"caller_uid\":{uid}");
        }
        None => buf.extend_from_slice(b",\"caller_uid\":null"),
    }
    str_field(buf, "caller_process", e.caller.process.as_deref());
    if let Some(p) = e.pod {
        str_field(buf, "pod_namespace", Some(&p.namespace));
        str_field(buf, "pod_name", Some(&p.name));
        str_field(buf, "pod_uid", Some(&p.uid));
    }
    buf.extend_from_slice(b"}\n");
}

/// `,"key":"value"` (escaped), or `,"key":null`.
fn str_field(buf: &mut Vec<u8>, key: &str, value: Option<&str>) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":");
    match value {
        Some(v) => {
            let _ = serde_json::to_writer(&mut *buf, v);
        }
        None => buf.extend_from_slice(b"null"),
    }
}

/// The first 16 hex digits of the SHA-256 of `token`.
pub fn fingerprint(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut s = String::with_capacity(16);
    for b in &digest.as_ref()[..8] {
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let call = crate::core::entra::EntraCall {
            client_request_id: "c-r-id".into(),
            entra_request_id: Some("e-r-id".into()),
            latency: std::time::Duration::from_millis(12),
            attempts: 2,
        };
        let caller = Caller {
            uid: Some(1000),
            process: Some("python3".into()),
        };
        let e = Entry {
            flavor: "imds",
            client_id: Some("c"),
            resource: Some("https://x\"\n"),
            status: 200,
            error: None,
            entra_error_codes: &[],
            cache: "miss",
            latency_ms: 12.5,
            entra: Some(&call),
            token_sha256: Some("0123456789abcdef"),
            app_request_id: Some("app-1"),
            peer: "127.0.0.1:5555".parse().expect("addr"),
            caller: &caller,
            pod: None,
        };
        let mut buf = Vec::new();
        line(&mut buf, &e);
        assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("json");
        assert_eq!(v["log"], "audit");
        assert_eq!(v["resource"], "https://x\"\n");
        assert_eq!(v["entra_request_id"], "e-r-id");
        assert_eq!(v["entra_attempts"], 2);
        assert_eq!(v["caller_uid"], 1000);
        assert_eq!(v["error"], serde_json::Value::Null);
        assert!(v.get("pod_uid").is_none(), "a sidecar's line names no pod");
        let pod = PodRef {
            namespace: "apps".into(),
            name: "web-\"1".into(),
            uid: "0a1b".into(),
        };
        let e = Entry {
            pod: Some(&pod),
            ..e
        };
        buf.clear();
        line(&mut buf, &e);
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("json");
        assert_eq!(v["pod_namespace"], "apps");
        assert_eq!(v["pod_name"], "web-\"1");
        assert_eq!(v["pod_uid"], "0a1b");
    }

    #[test]
    fn the_fingerprint_is_a_sha256_prefix() {
        // sha256("abc") = ba7816bf8f01cfea...
        assert_eq!(fingerprint("abc"), "ba7816bf8f01cfea");
    }
}
