//! Living beside the Azure Workload Identity webhook (azwi): a pod may carry its label too. azwi
//! would mount its own federated token into every container and could inject its IMDS proxy; we
//! refuse the proxy, list our containers in its skip annotation, and strip a token it already gave
//! an app container, so the token stays in the sidecar (docs/kubernetes.md#coexistence-with-azwi).
use serde_json::{Value, json};

use super::ops::annotation_ops;
use super::pod::{annotation, containers, display_name};
use super::{Refusal, refuse};
use crate::webhook::names::*;

/// The pod also asked the Azure Workload Identity webhook for its token
/// (`azure.workload.identity/use: "true"`, a label; older versions read it as an annotation).
pub(super) fn enabled(pod: &Value) -> bool {
    let label = pod
        .pointer("/metadata/labels")
        .and_then(|l| l.get(AZWI_USE))
        .and_then(Value::as_str);
    label == Some("true") || annotation(pod, AZWI_USE) == Some("true")
}

/// Volumes holding a federated token other than ours: projected service-account tokens for the
/// Entra ID audience (Azure Workload Identity's `azure-identity-token`, or its newer
/// `azure-workload-identity-reserved-<hash>`).
pub(super) fn token_volumes(pod: &Value) -> Vec<String> {
    containers(pod, "volumes")
        .iter()
        .filter(|v| {
            v.pointer("/projected/sources")
                .and_then(Value::as_array)
                .is_some_and(|s| {
                    s.iter().any(|src| {
                        src.pointer("/serviceAccountToken/audience")
                            .and_then(Value::as_str)
                            == Some(TOKEN_AUDIENCE)
                    })
                })
        })
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .filter(|n| *n != TOKEN_VOLUME)
        .map(str::to_string)
        .collect()
}

/// identity-sidecar replaces azwi-proxy: a pod asking for both would have two IMDS servers.
pub(super) fn refuse_azwi_proxy(pod: &Value) -> Result<(), Refusal> {
    if enabled(pod) && annotation(pod, AZWI_INJECT_PROXY).is_some() {
        return Err(refuse(format!(
            "identity-sidecar: pod {} asks for both identity-sidecar (label {LABEL_INJECT}) and \
             the Azure Workload Identity proxy (annotation {AZWI_INJECT_PROXY}); both would serve \
             IMDS. Remove the annotation {AZWI_INJECT_PROXY}: identity-sidecar replaces azwi-proxy.",
            display_name(pod)
        )));
    }
    Ok(())
}

/// Keeps the Azure Workload Identity webhook away from every container but the sidecar, now and
/// when it is reinvoked after us: lists them, and the containers we add (`ours`), in its skip
/// annotation.
pub(super) fn skip_all_but_sidecar(pod: &Value, ours: &[&str], ops: &mut Vec<Value>) {
    let mut names: Vec<String> = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in containers(pod, list) {
            if let Some(n) = c.get("name").and_then(Value::as_str)
                && n != SIDECAR_NAME
            {
                names.push(n.to_string());
            }
        }
    }
    for n in ours {
        if !names.iter().any(|m| m == n) {
            names.push(n.to_string());
        }
    }
    annotation_ops(pod, ops, AZWI_SKIP_CONTAINERS, &names);
}

/// Removes from container `c` (at JSON pointer `base`) the federated token another webhook gave it:
/// its `AZURE_FEDERATED_TOKEN_FILE` entries and mounts of `volumes`. Returns how many `env` entries
/// are left (`None`: it has no `env` list).
pub(super) fn strip_foreign_token(
    c: &Value,
    base: &str,
    volumes: &[String],
    ops: &mut Vec<Value>,
) -> Option<usize> {
    let mut env_left = c.get("env").and_then(Value::as_array).map(Vec::len);
    if let Some(env) = c.get("env").and_then(Value::as_array) {
        for (j, e) in env.iter().enumerate().rev() {
            if e.get("name").and_then(Value::as_str) == Some(ENV_FEDERATED_TOKEN_FILE) {
                ops.push(json!({"op": "remove", "path": format!("{base}/env/{j}")}));
                env_left = env_left.map(|n| n - 1);
            }
        }
    }
    if let Some(mounts) = c.get("volumeMounts").and_then(Value::as_array) {
        for (j, m) in mounts.iter().enumerate().rev() {
            let vol = m.get("name").and_then(Value::as_str).unwrap_or("");
            if volumes.iter().any(|v| v == vol) {
                ops.push(json!({"op": "remove", "path": format!("{base}/volumeMounts/{j}")}));
            }
        }
    }
    env_left
}
