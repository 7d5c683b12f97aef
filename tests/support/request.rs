//! Requests the tests send to an in-process [`Sidecar`] and how they read its answers: the query
//! encoding the SDKs use, an answer as (status, JSON), and `/readyz` polled until it says what a
//! test waits for.
use std::time::Duration;

use super::{Sidecar, eventually};

/// `s` form-URL-encoded, as the SDKs encode a resource in the query.
pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// An answer's status and JSON body; panics, showing the body, when it is not JSON.
pub async fn json_answer(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body, got {text:?}")),
    )
}

/// Asserts `r`'s status, showing the body when it is another; returns the body.
pub async fn assert_status(r: reqwest::Response, want: u16) -> String {
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, want, "{body}");
    body
}

impl Sidecar {
    /// `GET path` without any header of its own.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Polls `/readyz` until `want(status, body)` holds; false when `timeout` passes first (a
    /// request that fails counts as not yet).
    pub async fn readyz_becomes(
        &self,
        timeout: Duration,
        want: impl Fn(u16, &str) -> bool,
    ) -> bool {
        let want = &want;
        eventually(timeout, || async move {
            let Ok(r) = self.http.get(self.url("/readyz")).send().await else {
                return false;
            };
            let status = r.status().as_u16();
            want(status, &r.text().await.unwrap_or_default())
        })
        .await
    }
}
