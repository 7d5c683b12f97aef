//! The mutation itself: JSON Patch operations (RFC 6902) computed against the pod **as received**.
//!
//! The pod is never decoded into typed structs: it stays a `serde_json::Value`, and every
//! operation names one place in it (an `add` at an index or at the end of a list, a `remove` of one
//! list element, an `add`/`replace` of one annotation). Everything the webhook does not touch,
//! including fields newer than any schema we know (a mesh's native sidecar with `restartPolicy`,
//! say), therefore survives byte for byte. The Azure Workload Identity webhook's decode,
//! re-encode and diff approach silently dropped such fields (azure-workload-identity #1312,
//! istio #49221); this module exists so that cannot happen here.
//!
//! Operations are ordered so that each one's path is still right when it is applied: first the
//! annotations, then edits inside existing containers (by their original index), then new
//! volumes, and last the insertions at the front of the container lists, which shift indices.
//!
//! [`plan`] is pure: the identity header is passed in and the ServiceAccount comes from the
//! caller, so the same pod and inputs always give the same patch.
mod azwi;
mod identity;
mod inject;
mod node;
mod ops;
mod pod;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::names::*;
pub use identity::checked_guid;
pub use inject::is_quantity;
use inject::{Endpoint, Injection};
pub use ops::escape;
use ops::{insert_front, push_all};
use pod::{annotation, containers, find_sidecar, has_env, split_list};
pub use pod::{display_name, has_sidecar, node_mode, opted_in, service_account_name};

/// Webhook-wide defaults (from the flags), overridable per pod by annotations.
#[derive(Debug, Clone)]
pub struct Settings {
    pub image: String,
    /// The init-network image; `None`: imds-intercept pods are refused.
    pub init_image: Option<String>,
    pub default_tenant_id: Option<String>,
    pub authority_host: String,
    pub sidecar_mode: SidecarMode,
    pub resources: Resources,
}

/// Where the sidecar goes: a native sidecar (`initContainers` + `restartPolicy: Always`,
/// Kubernetes >= 1.29) or a classic first container for older clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    Native,
    Classic,
}

impl SidecarMode {
    pub fn parse(s: &str) -> Option<SidecarMode> {
        match s.trim() {
            "native" => Some(SidecarMode::Native),
            "classic" => Some(SidecarMode::Classic),
            _ => None,
        }
    }
}

/// Requests and limits of the sidecar, as Kubernetes quantities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

impl Default for Resources {
    fn default() -> Self {
        // The kustomize manifests' values: measured use is about 1m CPU and 8-10 MiB.
        Resources {
            cpu_request: "10m".into(),
            memory_request: "16Mi".into(),
            cpu_limit: "200m".into(),
            memory_limit: "64Mi".into(),
        }
    }
}

/// The pod's ServiceAccount as read from the API: its name and annotations, or `found: false`
/// when the API answered 404.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub found: bool,
    pub annotations: BTreeMap<String, String>,
}

/// Why a pod is refused; the text reaches `kubectl` as the admission error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

pub(super) fn refuse(msg: impl Into<String>) -> Refusal {
    Refusal(msg.into())
}

/// Checks that need no ServiceAccount: run before the API call so a refused pod costs none.
pub fn precheck(pod: &Value) -> Result<(), Refusal> {
    if !pod.is_object() {
        return Err(refuse("identity-sidecar: the request holds no pod object"));
    }
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(refuse(format!(
            "identity-sidecar: pod {} has hostNetwork: true. The sidecar serves tokens on \
             loopback, which a hostNetwork pod shares with the node, so every process on the node \
             could take them. Remove hostNetwork, or remove the label {LABEL_INJECT}.",
            display_name(pod)
        )));
    }
    azwi::refuse_azwi_proxy(pod)?;
    Ok(())
}

/// The JSON Patch that injects the sidecar into `pod`, or prepares it for the node agent in node
/// mode ([`node`]); empty: nothing to do.
///
/// `sa` is the pod's ServiceAccount; it may be `None` only when the pod already holds the sidecar
/// ([`has_sidecar`]). `new_header` makes the random identity header for a pod that gets a new
/// sidecar.
pub fn plan(
    pod: &Value,
    sa: Option<&ServiceAccount>,
    settings: &Settings,
    new_header: &mut dyn FnMut() -> String,
) -> Result<Vec<Value>, Refusal> {
    precheck(pod)?;
    if pod::node_mode(pod) {
        return node::plan(pod, sa, settings);
    }
    let mut ops = Vec::new();
    let existing = find_sidecar(pod);

    // What the apps must be told: from the sidecar already in the pod, or from a new one.
    let (endpoint, inject) = match existing {
        Some(sidecar) => (Endpoint::of_existing(sidecar), None),
        None => {
            let sa = sa.ok_or_else(|| {
                refuse("identity-sidecar: internal error: no ServiceAccount for a new sidecar")
            })?;
            let inj = Injection::resolve(pod, sa, settings, new_header())?;
            (inj.endpoint.clone(), Some(inj))
        }
    };
    let intercept = inject.as_ref().is_some_and(|i| i.intercept);
    let native = inject
        .as_ref()
        .is_none_or(|i| i.mode == SidecarMode::Native);

    let skip: Vec<String> = annotation(pod, ANN_SKIP_CONTAINERS)
        .map(split_list)
        .unwrap_or_default();
    let azwi = azwi::enabled(pod);
    let azwi_volumes = azwi::token_volumes(pod);

    // 1. Annotations: keep the Azure Workload Identity webhook away from every container but the
    //    sidecar, now and when it is reinvoked after us.
    if azwi {
        let ours: &[&str] = if intercept { &[INIT_NAME] } else { &[] };
        azwi::skip_all_but_sidecar(pod, ours, &mut ops);
    }

    // 2. Existing containers, by their original index: strip the federated token another
    //    webhook gave them, and add the app environment where it is missing.
    for list in ["initContainers", "containers"] {
        for (i, c) in containers(pod, list).iter().enumerate() {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            if name == SIDECAR_NAME || name == INIT_NAME {
                continue;
            }
            let base = format!("/spec/{list}/{i}");
            let mut env_left = c.get("env").and_then(Value::as_array).map(Vec::len);
            if azwi {
                env_left = azwi::strip_foreign_token(c, &base, &azwi_volumes, &mut ops);
            }
            if skip.iter().any(|s| s == name) {
                continue;
            }
            let missing: Vec<Value> = endpoint
                .app_env()
                .into_iter()
                .filter(|e| !has_env(c, e["name"].as_str().unwrap_or("")))
                .collect();
            if missing.is_empty() {
                continue;
            }
            if env_left.is_none() {
                ops.push(json!({"op": "add", "path": format!("{base}/env"), "value": missing}));
            } else {
                for e in missing {
                    ops.push(json!({"op": "add", "path": format!("{base}/env/-"), "value": e}));
                }
            }
        }
    }

    let Some(inj) = inject else {
        return Ok(ops);
    };

    // 3. Volumes: the federated token (mounted only into the sidecar), and iptables' lock file
    //    for init-network on a read-only root.
    let mut volumes = vec![inj.token_volume()];
    if intercept {
        volumes.push(json!({
            "name": XTABLES_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"},
        }));
    }
    push_all(pod, &mut ops, "/spec/volumes", volumes);

    // 4. Insertions at the front, last, because they shift indices.
    let sidecar = inj.sidecar_container(native);
    let init = intercept.then(|| inj.init_container());
    if native {
        // [init-network?, identity-sidecar, ...the user's init containers]: the redirect and the
        // token endpoint exist before any of the user's init containers runs.
        let front: Vec<Value> = init.into_iter().chain([sidecar]).collect();
        insert_front(pod, &mut ops, "initContainers", front);
    } else {
        if let Some(init) = init {
            insert_front(pod, &mut ops, "initContainers", vec![init]);
        }
        insert_front(pod, &mut ops, "containers", vec![sidecar]);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            image: "ghcr.io/identity-sidecar/identity-sidecar:0.1.0".into(),
            init_image: Some("ghcr.io/identity-sidecar/identity-sidecar-init:0.1.0".into()),
            default_tenant_id: Some("44444444-4444-4444-4444-444444444444".into()),
            authority_host: "https://login.microsoftonline.com/".into(),
            sidecar_mode: SidecarMode::Native,
            resources: Resources::default(),
        }
    }

    fn sa(client: Option<&str>) -> ServiceAccount {
        let mut annotations = BTreeMap::new();
        if let Some(c) = client {
            annotations.insert(AZWI_CLIENT_ID.to_string(), c.to_string());
        }
        ServiceAccount {
            namespace: "default".into(),
            name: "app".into(),
            found: true,
            annotations,
        }
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {LABEL_INJECT: "true"}},
            "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "app"}]},
        })
    }

    #[test]
    fn escapes_reference_tokens() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
    }

    #[test]
    fn quantities() {
        for ok in ["10m", "0.5", "64Mi", "1", "1.5Gi", "100k"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "ten", "1.2.3", "5 Mi", "64MB", "-"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn guids() {
        assert!(checked_guid("11111111-1111-1111-1111-111111111111").is_some());
        assert!(checked_guid("1111111-1111-1111-1111-111111111111").is_none());
        assert!(checked_guid("").is_none());
    }

    #[test]
    fn no_client_id_names_the_service_account_and_annotation() {
        let err =
            plan(&pod(), Some(&sa(None)), &settings(), &mut || "h".into()).expect_err("refused");
        assert!(err.0.contains("default/app"), "{err}");
        assert!(err.0.contains(AZWI_CLIENT_ID), "{err}");
    }

    #[test]
    fn empty_pod_spec_lists_are_created() {
        let ops = plan(
            &pod(),
            Some(&sa(Some("11111111-1111-1111-1111-111111111111"))),
            &settings(),
            &mut || "h".into(),
        )
        .expect("patch");
        let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
        assert_eq!(
            paths,
            [
                "/spec/containers/0/env",
                "/spec/volumes",
                "/spec/initContainers"
            ]
        );
    }
}
