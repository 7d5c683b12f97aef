//! Node mode (`identity-sidecar.io/mode: node`): no sidecar. The node agent
//! (`identity-sidecar-node`, docs/node-mode.md) serves the pod from inside its network namespace;
//! the webhook only adds what the agent and the pod need:
//!
//! - the projected federated token, as a volume mounted into **no** container: the kubelet writes
//!   every volume of the pod, and the agent reads it from the kubelet's directory, so no app
//!   container can read the token;
//! - an init container, first of all, running the sidecar image's `probe --node-agent --wait`
//!   with no privileges: it succeeds only on an answer that carries the agent's header and this
//!   pod's UID, which the node's real IMDS never sends, so no other container starts while
//!   169.254.169.254 still leads to the node's own IMDS.
//!
//! Apps need no variables: they find IMDS where it always is. A federated token that the Azure
//! Workload Identity webhook gave an app container is taken away as in sidecar mode (with it,
//! SDKs would skip managed identity).
use serde_json::{Value, json};

use super::identity::Identity;
use super::inject::unprivileged;
use super::ops::{insert_front, push_all};
use super::pod::{containers, find_container};
use super::{Refusal, ServiceAccount, Settings, azwi, refuse};
use crate::webhook::names::*;

/// The patch for a node-mode pod (empty when it already holds everything).
pub(super) fn plan(
    pod: &Value,
    sa: Option<&ServiceAccount>,
    settings: &Settings,
) -> Result<Vec<Value>, Refusal> {
    let mut ops = Vec::new();
    let prepared = find_container(pod, NODE_WAIT_NAME).is_some();

    // 1. Annotations, then edits inside existing containers: Azure Workload Identity's token
    //    stays out of every container.
    if azwi::enabled(pod) {
        azwi::skip_all_but_sidecar(pod, &[NODE_WAIT_NAME], &mut ops);
        let volumes = azwi::token_volumes(pod);
        for list in ["initContainers", "containers"] {
            for (i, c) in containers(pod, list).iter().enumerate() {
                if c.get("name").and_then(Value::as_str) != Some(NODE_WAIT_NAME) {
                    azwi::strip_foreign_token(c, &format!("/spec/{list}/{i}"), &volumes, &mut ops);
                }
            }
        }
    }
    if prepared {
        return Ok(ops);
    }

    // The identity is checked here, at admission, with the sidecar's rules and words, so a pod
    // the agent could not serve is refused with the fix instead of waiting forever.
    let sa = sa.ok_or_else(|| {
        refuse("identity-sidecar: internal error: no ServiceAccount for a node-mode pod")
    })?;
    let identity = Identity::resolve(pod, sa, settings)?;

    // 2. The token volume (unless the pod already has ours), then the wait container at the front.
    let has_volume = containers(pod, "volumes")
        .iter()
        .any(|v| v.get("name").and_then(Value::as_str) == Some(TOKEN_VOLUME));
    if !has_volume {
        push_all(
            pod,
            &mut ops,
            "/spec/volumes",
            vec![token_volume(&identity)],
        );
    }
    insert_front(
        pod,
        &mut ops,
        "initContainers",
        vec![wait_container(settings)],
    );
    Ok(ops)
}

/// The projected service-account token for Entra ID, the volume the agent reads.
fn token_volume(identity: &Identity) -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE,
            "expirationSeconds": identity.expiration,
            "path": TOKEN_FILE,
        }}]},
    })
}

/// The init container that holds the pod back until the agent serves in it.
fn wait_container(settings: &Settings) -> Value {
    json!({
        "name": NODE_WAIT_NAME,
        "image": settings.image,
        // The image's entrypoint is `identity-sidecar`.
        "args": ["probe", "--node-agent", "--wait", NODE_WAIT_SECONDS.to_string()],
        // The answer must name this pod: a listener of another pod can never satisfy it.
        "env": [{"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}],
        "resources": {
            "requests": {"cpu": "10m", "memory": "8Mi"},
            "limits": {"cpu": "100m", "memory": "32Mi"},
        },
        "securityContext": unprivileged(),
    })
}
