//! List and watch, for the node agent's reflectors: paged lists ([`Client::list`]), and watches
//! from a `resourceVersion` with bookmarks ([`Client::watch`]) read as newline-separated JSON
//! events; `410 Gone` (an answer or an `ERROR` event) is reported as [`WatchEvent::Gone`], so the
//! caller lists again.
use std::time::Duration;

use super::{Client, KubeError, error_chain, status_error};

/// One collection as listed: its objects and the `resourceVersion` to watch from.
#[derive(Debug)]
pub struct ObjectList {
    pub items: Vec<serde_json::Value>,
    pub resource_version: String,
}

/// What a watch delivers.
#[derive(Debug)]
pub enum WatchEvent {
    Added(serde_json::Value),
    Modified(serde_json::Value),
    Deleted(serde_json::Value),
    /// A bookmark: nothing changed, but the watch may resume from this `resourceVersion`.
    Bookmark(String),
    /// `410 Gone`: the version watched from is too old; list again.
    Gone,
}

/// How long one page of a list may take (a page of a large cluster's objects is megabytes).
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most objects asked for per page of a list.
const LIST_PAGE: usize = 500;
/// How long the API server keeps one watch open before ending it (it is then resumed).
pub const WATCH_SECONDS: u64 = 290;
/// Longest line (one object) a watch may send.
const MAX_WATCH_LINE: usize = 16 * 1024 * 1024;

impl Client {
    /// Lists `path` (such as `/api/v1/pods`) with `selector` query pairs (`fieldSelector`,
    /// `labelSelector`), page by page.
    pub async fn list(
        &self,
        path: &str,
        selector: &[(&str, &str)],
    ) -> Result<ObjectList, KubeError> {
        let mut items = Vec::new();
        let mut cont = String::new();
        loop {
            let limit = LIST_PAGE.to_string();
            let mut pairs = selector.to_vec();
            pairs.push(("limit", &limit));
            if !cont.is_empty() {
                pairs.push(("continue", &cont));
            }
            let url = format!("{path}?{}", query(&pairs));
            let r = self.get_within(&url, Some(LIST_TIMEOUT)).await?;
            if !r.status().is_success() {
                return Err(status_error(r, path).await);
            }
            let mut v: serde_json::Value = r.json().await.map_err(|e| KubeError::Status {
                status: 200,
                what: path.to_string(),
                detail: format!("unreadable list: {e}"),
            })?;
            if let Some(serde_json::Value::Array(page)) = v.get_mut("items").map(std::mem::take) {
                items.extend(page);
            }
            let meta = |k: &str| {
                v.pointer(&format!("/metadata/{k}"))
                    .and_then(|x| x.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            cont = meta("continue");
            if cont.is_empty() {
                return Ok(ObjectList {
                    items,
                    resource_version: meta("resourceVersion"),
                });
            }
        }
    }

    /// Watches `path` from `resource_version` with bookmarks; the server ends the watch after
    /// [`WATCH_SECONDS`] and the caller resumes from the last version it saw.
    pub async fn watch(
        &self,
        path: &str,
        selector: &[(&str, &str)],
        resource_version: &str,
    ) -> Result<Watch, KubeError> {
        let seconds = WATCH_SECONDS.to_string();
        let mut pairs = selector.to_vec();
        pairs.extend([
            ("watch", "1"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", &seconds),
        ]);
        let url = format!("{path}?{}", query(&pairs));
        let r = self
            .get_within(&url, Some(Duration::from_secs(WATCH_SECONDS + 30)))
            .await?;
        if r.status().as_u16() == 410 {
            return Ok(Watch {
                resp: None,
                buf: Vec::new(),
            });
        }
        if !r.status().is_success() {
            return Err(status_error(r, path).await);
        }
        Ok(Watch {
            resp: Some(r),
            buf: Vec::new(),
        })
    }
}

/// `k=v&...`, form-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

/// An open watch: newline-separated JSON events.
pub struct Watch {
    /// `None`: the server answered 410 to the watch itself.
    resp: Option<reqwest::Response>,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event; `Ok(None)` when the server ended the watch.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, KubeError> {
        let Some(resp) = self.resp.as_mut() else {
            return Ok(Some(WatchEvent::Gone));
        };
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return parse_event(line).map(Some);
            }
            if self.buf.len() > MAX_WATCH_LINE {
                return Err(bad_event("an event longer than 16 MiB"));
            }
            match resp.chunk().await {
                Ok(Some(c)) => self.buf.extend_from_slice(&c),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(KubeError::Unreachable {
                        server: resp.url().origin().ascii_serialization(),
                        detail: error_chain(&e),
                    });
                }
            }
        }
    }
}

fn bad_event(detail: &str) -> KubeError {
    KubeError::Status {
        status: 200,
        what: "watch".into(),
        detail: detail.into(),
    }
}

fn parse_event(line: &[u8]) -> Result<WatchEvent, KubeError> {
    let mut v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| bad_event(&format!("not JSON: {e}")))?;
    let object = v.get_mut("object").map(std::mem::take).unwrap_or_default();
    match v.get("type").and_then(|t| t.as_str()) {
        Some("ADDED") => Ok(WatchEvent::Added(object)),
        Some("MODIFIED") => Ok(WatchEvent::Modified(object)),
        Some("DELETED") => Ok(WatchEvent::Deleted(object)),
        Some("BOOKMARK") => Ok(WatchEvent::Bookmark(
            object
                .pointer("/metadata/resourceVersion")
                .and_then(|r| r.as_str())
                .unwrap_or("")
                .to_string(),
        )),
        Some("ERROR") if object.get("code").and_then(|c| c.as_u64()) == Some(410) => {
            Ok(WatchEvent::Gone)
        }
        Some("ERROR") => Err(bad_event(&format!(
            "error event: {}",
            object
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("(no message)")
        ))),
        other => Err(bad_event(&format!("unknown event type {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_events_are_read_and_410_means_list_again() {
        let ev = |line: &str| parse_event(line.as_bytes());
        assert!(matches!(
            ev(r#"{"type":"ADDED","object":{"metadata":{"name":"p"}}}"#),
            Ok(WatchEvent::Added(o)) if o["metadata"]["name"] == "p"
        ));
        assert!(matches!(
            ev(r#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"42"}}}"#),
            Ok(WatchEvent::Bookmark(v)) if v == "42"
        ));
        assert!(matches!(
            ev(r#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}"#),
            Ok(WatchEvent::Gone)
        ));
        assert!(ev(r#"{"type":"ERROR","object":{"code":500,"message":"boom"}}"#).is_err());
        assert!(ev("not json").is_err());
        assert!(ev(r#"{"type":"SURPRISE","object":{}}"#).is_err());
    }
}
