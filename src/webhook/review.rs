//! `admission.k8s.io/v1` AdmissionReview: reading the request the API server sends and writing the
//! response it expects. Only the fields the webhook needs are looked at; the pod stays raw JSON.
use base64::Engine as _;
use serde_json::{Value, json};

/// The parts of an AdmissionReview request the webhook uses.
#[derive(Debug)]
pub struct Request {
    /// Echoed back in the response; the API server matches on it.
    pub uid: String,
    /// `kind.kind` of the object (`Pod` for us).
    pub kind: String,
    /// `resource.resource` (`pods`).
    pub resource: String,
    pub sub_resource: Option<String>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: String,
    /// The request's namespace (a pod being created often has none in its metadata).
    pub namespace: String,
    /// The object as sent, untouched.
    pub object: Value,
}

/// Why a body is not an AdmissionReview we can answer (HTTP 400 with this text).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error(
        "not an admission.k8s.io/v1 AdmissionReview (apiVersion {api_version:?}, kind {kind:?})"
    )]
    NotReview { api_version: String, kind: String },
    #[error("the AdmissionReview has no request.uid")]
    NoUid,
}

impl Request {
    /// Parses a request body. Fields other than `request.uid` may be missing: such a request is
    /// answered with a clean allow, not an error.
    pub fn parse(body: &[u8]) -> Result<Request, ReviewError> {
        let mut v: Value =
            serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
        let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
        if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
            return Err(ReviewError::NotReview {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
            });
        }
        let Some(req) = v.get_mut("request").and_then(Value::as_object_mut) else {
            return Err(ReviewError::NoUid);
        };
        let s = |req: &serde_json::Map<String, Value>, p: &str| -> String {
            let mut cur: Option<&Value> = None;
            for (i, part) in p.split('.').enumerate() {
                cur = if i == 0 {
                    req.get(part)
                } else {
                    cur.and_then(|c| c.get(part))
                };
            }
            cur.and_then(Value::as_str).unwrap_or("").to_string()
        };
        let uid = s(req, "uid");
        if uid.is_empty() {
            return Err(ReviewError::NoUid);
        }
        let sub_resource = Some(s(req, "subResource")).filter(|x| !x.is_empty());
        Ok(Request {
            kind: s(req, "kind.kind"),
            resource: s(req, "resource.resource"),
            sub_resource,
            operation: s(req, "operation"),
            namespace: s(req, "namespace"),
            object: req.remove("object").unwrap_or(Value::Null),
            uid,
        })
    }

    /// A pod being created: the only request the webhook mutates.
    pub fn is_pod_create(&self) -> bool {
        self.kind == "Pod"
            && (self.resource.is_empty() || self.resource == "pods")
            && self.sub_resource.is_none()
            && self.operation == "CREATE"
    }
}

/// The response body: allowed, with the patch when there is one.
pub fn allow(uid: &str, patch: &[Value]) -> Vec<u8> {
    let mut response = json!({"uid": uid, "allowed": true});
    if !patch.is_empty() {
        // Serialising a Vec<Value> cannot fail.
        let bytes = serde_json::to_vec(patch).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    review(response)
}

/// The response body refusing the pod with `message` (shown by kubectl).
pub fn deny(uid: &str, code: u16, message: &str) -> Vec<u8> {
    review(json!({
        "uid": uid,
        "allowed": false,
        "status": {"code": code, "message": message},
    }))
}

fn review(response: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_pod_create() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
            "uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},
            "resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE",
            "namespace":"ns","object":{"metadata":{}}}}"#;
        let r = Request::parse(body).expect("parse");
        assert!(r.is_pod_create());
        assert_eq!(r.namespace, "ns");
        assert_eq!(r.uid, "u1");
    }

    #[test]
    fn refuses_other_documents() {
        assert!(matches!(Request::parse(b"{"), Err(ReviewError::NotJson(_))));
        assert!(matches!(
            Request::parse(br#"{"apiVersion":"v1","kind":"Pod"}"#),
            Err(ReviewError::NotReview { .. })
        ));
        assert!(matches!(
            Request::parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            Err(ReviewError::NoUid)
        ));
    }

    #[test]
    fn allow_without_patch_has_no_patch_type() {
        let v: Value = serde_json::from_slice(&allow("u", &[])).expect("json");
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patchType").is_none());
    }
}
