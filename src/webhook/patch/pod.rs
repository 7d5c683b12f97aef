//! Reading the pod as received: whether it opted in, what it already holds, how it is named in
//! messages, which ServiceAccount it runs as, and its annotations. Nothing here writes.
use serde_json::Value;

use crate::webhook::names::*;

/// True when the pod asked for injection (`identity-sidecar.io/inject: "true"`).
pub fn opted_in(pod: &Value) -> bool {
    pod.pointer("/metadata/labels")
        .and_then(|l| l.get(LABEL_INJECT))
        .and_then(Value::as_str)
        == Some("true")
}

/// True when the pod already holds the sidecar, or node mode's wait container (a reinvocation,
/// or a second call): then no identity is needed, only containers added since may need the app
/// environment.
pub fn has_sidecar(pod: &Value) -> bool {
    find_sidecar(pod).is_some() || find_container(pod, NODE_WAIT_NAME).is_some()
}

/// True when the pod asks for node mode: `identity-sidecar.io/mode: node` as a label (what the
/// node agent selects on) or as an annotation (where the other modes are named).
pub fn node_mode(pod: &Value) -> bool {
    let label = pod
        .pointer("/metadata/labels")
        .and_then(|l| l.get(ANN_MODE))
        .and_then(Value::as_str);
    label.map(str::trim) == Some(MODE_NODE)
        || annotation(pod, ANN_MODE).map(str::trim) == Some(MODE_NODE)
}

/// The ServiceAccount the pod runs as (`default` when the pod names none).
pub fn service_account_name(pod: &Value) -> &str {
    let spec = pod.get("spec");
    spec.and_then(|s| s.get("serviceAccountName"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            // The deprecated alias, still accepted by the API server.
            spec.and_then(|s| s.get("serviceAccount"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default")
}

/// How the pod is named in messages: its name, or its generateName prefix (Deployments' pods
/// have no name yet at admission).
pub fn display_name(pod: &Value) -> String {
    let meta = pod.get("metadata");
    if let Some(n) = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        return n.to_string();
    }
    if let Some(g) = meta
        .and_then(|m| m.get("generateName"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        return format!("{g}<generated>");
    }
    "<unnamed>".to_string()
}

/// `pod.spec.<list>` as a slice (empty when absent or not a list).
pub(super) fn containers<'a>(pod: &'a Value, list: &str) -> &'a [Value] {
    pod.get("spec")
        .and_then(|s| s.get(list))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub(super) fn find_sidecar(pod: &Value) -> Option<&Value> {
    find_container(pod, SIDECAR_NAME)
}

/// The init container or container named `name`.
pub(super) fn find_container<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["initContainers", "containers"].into_iter().find_map(|l| {
        containers(pod, l)
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
    })
}

pub(super) fn has_env(c: &Value, name: &str) -> bool {
    c.get("env").and_then(Value::as_array).is_some_and(|e| {
        e.iter()
            .any(|v| v.get("name").and_then(Value::as_str) == Some(name))
    })
}

pub(super) fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// `;`-separated container names, as Azure Workload Identity's skip-containers.
pub(super) fn split_list(s: &str) -> Vec<String> {
    s.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}
