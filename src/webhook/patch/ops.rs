//! JSON Patch (RFC 6902) operations against the pod as received: each names one place (an index
//! or the end of a list, one annotation) and creates a list or map only when it is absent, so
//! nothing the webhook does not touch is re-encoded.
use serde_json::{Map, Value, json};

use super::pod::{annotation, split_list};

/// Makes annotation `key` list every name in `names` (keeping what it held), with one op.
pub(super) fn annotation_ops(pod: &Value, ops: &mut Vec<Value>, key: &str, names: &[String]) {
    let current = annotation(pod, key);
    let mut list = current.map(split_list).unwrap_or_default();
    let before = list.len();
    for n in names {
        if !list.contains(n) {
            list.push(n.clone());
        }
    }
    if list.len() == before && current.is_some() {
        return;
    }
    if list.is_empty() {
        return;
    }
    let value = Value::String(list.join(";"));
    match pod.pointer("/metadata/annotations") {
        Some(Value::Object(_)) => {
            let op = if current.is_some() { "replace" } else { "add" };
            ops.push(json!({
                "op": op,
                "path": format!("/metadata/annotations/{}", escape(key)),
                "value": value,
            }));
        }
        _ => {
            let mut m = Map::new();
            m.insert(key.to_string(), value);
            let path = if pod.get("metadata").is_some_and(Value::is_object) {
                "/metadata/annotations"
            } else {
                "/metadata"
            };
            let value = if path == "/metadata" {
                json!({"annotations": m})
            } else {
                Value::Object(m)
            };
            ops.push(json!({"op": "add", "path": path, "value": value}));
        }
    }
}

/// Appends `items` to the list at `path`, creating it when absent.
pub(super) fn push_all(pod: &Value, ops: &mut Vec<Value>, path: &str, items: Vec<Value>) {
    if pod.pointer(path).is_some_and(Value::is_array) {
        for it in items {
            ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": it}));
        }
    } else {
        ops.push(json!({"op": "add", "path": path, "value": items}));
    }
}

/// Puts `items` at the front of `spec.<list>`, in order, creating the list when absent.
pub(super) fn insert_front(pod: &Value, ops: &mut Vec<Value>, list: &str, items: Vec<Value>) {
    let path = format!("/spec/{list}");
    if pod.pointer(&path).is_some_and(Value::is_array) {
        for (i, it) in items.into_iter().enumerate() {
            ops.push(json!({"op": "add", "path": format!("{path}/{i}"), "value": it}));
        }
    } else {
        ops.push(json!({"op": "add", "path": path, "value": items}));
    }
}

/// RFC 6901 escaping of one reference token.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

pub(super) fn extend(target: &mut Value, more: Value) {
    if let (Some(t), Value::Object(m)) = (target.as_object_mut(), more) {
        t.extend(m);
    }
}
