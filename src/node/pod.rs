//! A pod as the node agent sees it: the few fields of the API object that decide whether the
//! agent serves it and with which identity. Pure: parsing and rules only, no I/O.
//!
//! A pod is served only when every one of these holds ([`Pod::refusal`] names the first that
//! does not): labelled `identity-sidecar.io/inject: "true"` and `identity-sidecar.io/mode: node`
//! (annotation, as the webhook reads it, or label); scheduled on this node; phase `Pending` or
//! `Running` (a node-mode pod's init container waits for the listener while the pod is still
//! `Pending`, so `Running` alone would deadlock it; the agent needs the pod's sandbox to exist
//! anyway, see [`super::netns`]); not terminating; not `hostNetwork`; and a projected
//! `serviceAccountToken` volume with audience `api://AzureADTokenExchange`.
//!
//! Its identity comes from the same annotations as the webhook's: the pod's
//! `identity-sidecar.io/client-id` / `tenant-id` override the ServiceAccount's
//! `azure.workload.identity/client-id` / `tenant-id`, the agent's `--tenant-id` is the last
//! resort for the tenant; `identity-sidecar.io/allowed-client-ids` and `allowed-resources` are
//! the allow-lists `serve` takes from `IDENTITY_SIDECAR_ALLOWED_CLIENT_IDS` and
//! `IDENTITY_SIDECAR_ALLOWED_RESOURCES`. When a container of the pod was given an App Service
//! endpoint on loopback (`IDENTITY_ENDPOINT=http://127.0.0.1:<port>/msi/token` and a literal
//! `IDENTITY_HEADER`, as the webhook injects them), the pod is also served there, with that
//! header as its secret.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cmd::flags;
use crate::config::{Policy, ResourceRule};
use crate::core::secret::Secret;

// The webhook's names (src/webhook/names.rs; a test checks they agree).
pub const LABEL_INJECT: &str = "identity-sidecar.io/inject";
pub const ANN_MODE: &str = "identity-sidecar.io/mode";
pub const MODE_NODE: &str = "node";
pub const ANN_CLIENT_ID: &str = "identity-sidecar.io/client-id";
pub const ANN_TENANT_ID: &str = "identity-sidecar.io/tenant-id";
pub const ANN_ALLOWED_CLIENT_IDS: &str = "identity-sidecar.io/allowed-client-ids";
pub const ANN_ALLOWED_RESOURCES: &str = "identity-sidecar.io/allowed-resources";
pub const AZWI_CLIENT_ID: &str = "azure.workload.identity/client-id";
pub const AZWI_TENANT_ID: &str = "azure.workload.identity/tenant-id";
pub const TOKEN_AUDIENCE: &str = "api://AzureADTokenExchange";

/// The projected token the kubelet writes for the pod: volume name and path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenVolume {
    pub volume: String,
    pub path: String,
}

/// The fields of a pod the agent decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Lower case, as in cgroup paths.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node_name: String,
    pub service_account: String,
    pub phase: String,
    pub terminating: bool,
    pub host_network: bool,
    /// `inject: "true"` and `mode: node`.
    pub opted_in: bool,
    /// The pod's `identity-sidecar.io/*` annotations.
    pub annotations: BTreeMap<String, String>,
    pub token: Option<TokenVolume>,
    pub pod_ip: String,
    /// The App Service endpoint the pod's containers were given, when they were.
    pub app_service: Option<AppService>,
}

/// An App Service endpoint for the pod: `IDENTITY_ENDPOINT=http://127.0.0.1:<port>/...` and
/// `IDENTITY_HEADER=<secret>`, literal values in a container's `env` (what the webhook injects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppService {
    pub port: u16,
    pub header: Secret,
}

/// What the agent keeps of a ServiceAccount: its identity annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAccountInfo {
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
}

impl ServiceAccountInfo {
    pub fn parse(v: &Value) -> Option<((String, String), ServiceAccountInfo)> {
        let ns = v.pointer("/metadata/namespace")?.as_str()?.to_string();
        let name = v.pointer("/metadata/name")?.as_str()?.to_string();
        let ann = |k: &str| {
            v.pointer("/metadata/annotations")
                .and_then(|a| a.get(k))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        Some((
            (ns, name),
            ServiceAccountInfo {
                client_id: ann(AZWI_CLIENT_ID),
                tenant_id: ann(AZWI_TENANT_ID),
            },
        ))
    }
}

/// The identity a served pod gets, and the rules its requests are held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub client_id: String,
    pub tenant_id: String,
    /// The client id first, then the pod's extra allowed ids; lower case, no repeats.
    pub allowed_client_ids: Vec<String>,
    pub allowed_resources: Vec<ResourceRule>,
    /// The App Service endpoint, when the pod was given one.
    pub app_service: Option<AppService>,
}

impl Identity {
    pub fn policy(&self) -> Policy {
        Policy {
            allowed_client_ids: self.allowed_client_ids.clone(),
            allowed_resources: self.allowed_resources.clone(),
            identity_header: self.app_service.as_ref().map(|a| a.header.clone()),
            msi_2017_expires_on: Default::default(),
        }
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

impl Pod {
    /// The pod in an API object; `None` when it has no UID, namespace or name.
    pub fn parse(v: &Value) -> Option<Pod> {
        let uid = str_at(v, "/metadata/uid").trim().to_ascii_lowercase();
        let namespace = str_at(v, "/metadata/namespace").to_string();
        let name = str_at(v, "/metadata/name").to_string();
        if uid.is_empty() || namespace.is_empty() || name.is_empty() {
            return None;
        }
        let label = |k: &str| {
            v.pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        let mut annotations = BTreeMap::new();
        if let Some(a) = v
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
        {
            for (k, val) in a {
                if k.starts_with("identity-sidecar.io/")
                    && let Some(s) = val.as_str()
                {
                    annotations.insert(k.clone(), s.trim().to_string());
                }
            }
        }
        // As the webhook reads it: node mode by label or by annotation.
        let node_mode = label(ANN_MODE).map(str::trim) == Some(MODE_NODE)
            || annotations.get(ANN_MODE).map(String::as_str) == Some(MODE_NODE);
        let opted_in = label(LABEL_INJECT) == Some("true") && node_mode;
        let service_account = match str_at(v, "/spec/serviceAccountName") {
            "" => "default".to_string(),
            s => s.to_string(),
        };
        Some(Pod {
            uid,
            namespace,
            name,
            node_name: str_at(v, "/spec/nodeName").to_string(),
            service_account,
            phase: str_at(v, "/status/phase").to_string(),
            terminating: v
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null()),
            host_network: v.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true),
            opted_in,
            annotations,
            token: token_volume(v),
            pod_ip: str_at(v, "/status/podIP").to_string(),
            app_service: app_service(v),
        })
    }

    /// `namespace/name`, for logs.
    pub fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Why this pod is not served on `node`, or `None` when it is eligible.
    pub fn refusal(&self, node: &str) -> Option<&'static str> {
        if !self.opted_in {
            Some("not labelled for node mode")
        } else if self.node_name != node {
            Some("not on this node")
        } else if self.terminating {
            Some("terminating")
        } else if self.phase != "Running" && self.phase != "Pending" {
            Some("not running")
        } else if self.host_network {
            Some("hostNetwork")
        } else if self.token.is_none() {
            Some("no projected serviceAccountToken volume with audience api://AzureADTokenExchange")
        } else {
            None
        }
    }

    /// Where the kubelet keeps the pod's federated token under `kubelet_root`.
    pub fn token_file(&self, kubelet_root: &Path) -> Option<PathBuf> {
        let t = self.token.as_ref()?;
        Some(
            kubelet_root
                .join("pods")
                .join(&self.uid)
                .join("volumes/kubernetes.io~projected")
                .join(&t.volume)
                .join(&t.path),
        )
    }

    fn ann(&self, k: &str) -> Option<&str> {
        self.annotations
            .get(k)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The pod's identity from its annotations, its ServiceAccount's (`None`: not known) and the
    /// agent's default tenant; the error says what is missing or malformed.
    pub fn identity(
        &self,
        sa: Option<&ServiceAccountInfo>,
        default_tenant: Option<&str>,
    ) -> Result<Identity, String> {
        let sa_ref = format!("{}/{}", self.namespace, self.service_account);
        let client_id = match (
            self.ann(ANN_CLIENT_ID),
            sa.and_then(|s| s.client_id.as_deref()),
        ) {
            (Some(c), _) => flags::guid(c)
                .map_err(|e| format!("annotation {ANN_CLIENT_ID}: {e}"))?
                .to_string(),
            (None, Some(c)) => flags::guid(c)
                .map_err(|e| format!("ServiceAccount {sa_ref} annotation {AZWI_CLIENT_ID}: {e}"))?
                .to_string(),
            (None, None) if sa.is_none() => {
                return Err(format!(
                    "ServiceAccount {sa_ref} is not known, so there is no client id"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "no client id: annotate ServiceAccount {sa_ref} with {AZWI_CLIENT_ID} or the \
                     pod with {ANN_CLIENT_ID}"
                ));
            }
        };
        let tenant = self
            .ann(ANN_TENANT_ID)
            .or_else(|| sa.and_then(|s| s.tenant_id.as_deref()))
            .or(default_tenant)
            .ok_or_else(|| {
                format!(
                    "no tenant id: annotate ServiceAccount {sa_ref} with {AZWI_TENANT_ID}, the pod \
                     with {ANN_TENANT_ID}, or start the agent with --tenant-id"
                )
            })?;
        let tenant_id = flags::tenant(tenant).map_err(|e| format!("tenant id: {e}"))?;
        let mut allowed_client_ids = vec![client_id.clone()];
        if let Some(list) = self.ann(ANN_ALLOWED_CLIENT_IDS) {
            for entry in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let id = flags::guid(entry)
                    .map_err(|e| format!("annotation {ANN_ALLOWED_CLIENT_IDS}: {e}"))?
                    .to_string();
                if !allowed_client_ids.contains(&id) {
                    allowed_client_ids.push(id);
                }
            }
        }
        let mut allowed_resources = Vec::new();
        if let Some(list) = self.ann(ANN_ALLOWED_RESOURCES) {
            for entry in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                allowed_resources.push(
                    entry
                        .parse::<ResourceRule>()
                        .map_err(|e| format!("annotation {ANN_ALLOWED_RESOURCES}: {e}"))?,
                );
            }
        }
        Ok(Identity {
            client_id,
            tenant_id,
            allowed_client_ids,
            allowed_resources,
            app_service: self.app_service.clone(),
        })
    }
}

/// The App Service endpoint named in the first container whose `env` gives both
/// `IDENTITY_ENDPOINT` (on 127.0.0.1) and `IDENTITY_HEADER` as literal values.
fn app_service(v: &Value) -> Option<AppService> {
    let containers = ["/spec/initContainers", "/spec/containers"]
        .iter()
        .filter_map(|p| v.pointer(p).and_then(Value::as_array))
        .flatten();
    for c in containers {
        let Some(env) = c.get("env").and_then(Value::as_array) else {
            continue;
        };
        let value = |name: &str| {
            env.iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|e| e.get("value"))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let (Some(endpoint), Some(header)) = (value("IDENTITY_ENDPOINT"), value("IDENTITY_HEADER"))
        else {
            continue;
        };
        let Ok(url) = reqwest::Url::parse(endpoint) else {
            continue;
        };
        if url.scheme() == "http"
            && url.host_str() == Some("127.0.0.1")
            && let Some(port) = url.port().filter(|p| *p != 0)
        {
            return Some(AppService {
                port,
                header: Secret::new(header.to_string()),
            });
        }
    }
    None
}

/// The first projected volume with a `serviceAccountToken` source of audience
/// [`TOKEN_AUDIENCE`] (the one the webhook adds, or azwi's).
fn token_volume(v: &Value) -> Option<TokenVolume> {
    for vol in v.pointer("/spec/volumes")?.as_array()? {
        let Some(sources) = vol.pointer("/projected/sources").and_then(Value::as_array) else {
            continue;
        };
        for s in sources {
            let Some(sat) = s.get("serviceAccountToken") else {
                continue;
            };
            if sat.get("audience").and_then(Value::as_str) != Some(TOKEN_AUDIENCE) {
                continue;
            }
            let name = vol.get("name").and_then(Value::as_str).unwrap_or("");
            let path = sat.get("path").and_then(Value::as_str).unwrap_or("");
            // Both become path components under the kubelet's directory: plain names only.
            let plain = |s: &str| {
                !s.is_empty()
                    && Path::new(s)
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
            };
            if plain(name) && plain(path) {
                return Some(TokenVolume {
                    volume: name.to_string(),
                    path: path.to_string(),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UID: &str = "0f3a1c2e-1111-4222-8333-944455556666";
    const CLIENT: &str = "11111111-1111-1111-1111-111111111111";

    fn pod() -> Value {
        json!({
            "metadata": {"uid": UID.to_uppercase(), "namespace": "ns", "name": "app",
                         "labels": {LABEL_INJECT: "true"}, "annotations": {ANN_MODE: "node"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa", "volumes": [
                {"name": "cfg", "configMap": {"name": "x"}},
                {"name": "tok", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": TOKEN_AUDIENCE, "path": "azure-identity-token"}}]}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.2"}
        })
    }

    #[test]
    fn an_opted_in_pod_is_served_and_each_condition_refuses() {
        let p = Pod::parse(&pod()).expect("pod");
        assert_eq!(p.uid, UID);
        assert_eq!(p.refusal("n1"), None);
        assert_eq!(
            p.token_file(Path::new("/k")),
            Some(PathBuf::from(format!(
                "/k/pods/{UID}/volumes/kubernetes.io~projected/tok/azure-identity-token"
            )))
        );
        assert_eq!(p.refusal("n2"), Some("not on this node"));
        let edits: [(&str, Value); 6] = [
            ("/metadata/labels", json!({})),
            ("/metadata/annotations", json!({ANN_MODE: "app-service"})),
            ("/spec/hostNetwork", json!(true)),
            ("/status/phase", json!("Succeeded")),
            ("/spec/volumes", json!([])),
            ("/metadata/deletionTimestamp", json!("2026-12-01T00:00:00Z")),
        ];
        for (ptr, value) in edits {
            let mut v = pod();
            let (parent, key) = ptr.rsplit_once('/').expect("ptr");
            v.pointer_mut(parent).expect("parent")[key] = value;
            let p = Pod::parse(&v).expect("pod");
            assert!(p.refusal("n1").is_some(), "{ptr}");
        }
    }

    #[test]
    fn a_token_path_that_climbs_out_is_not_a_token_volume() {
        let mut v = pod();
        v["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]["path"] =
            json!("../../../etc/shadow");
        assert!(Pod::parse(&v).expect("pod").token.is_none());
    }

    #[test]
    fn identity_from_the_service_account_and_pod_overrides() {
        let p = Pod::parse(&pod()).expect("pod");
        let sa = ServiceAccountInfo {
            client_id: Some(CLIENT.into()),
            tenant_id: Some("contoso.onmicrosoft.com".into()),
        };
        let id = p.identity(Some(&sa), None).expect("identity");
        assert_eq!(id.client_id, CLIENT);
        assert_eq!(id.allowed_client_ids, vec![CLIENT]);
        assert!(
            p.identity(None, Some("t")).is_err(),
            "unknown ServiceAccount"
        );
        assert!(
            p.identity(Some(&ServiceAccountInfo::default()), Some("t"))
                .is_err()
        );
        let mut v = pod();
        v["metadata"]["annotations"][ANN_CLIENT_ID] = json!("22222222-2222-2222-2222-222222222222");
        v["metadata"]["annotations"][ANN_ALLOWED_CLIENT_IDS] =
            json!("33333333-3333-3333-3333-333333333333, ");
        let p = Pod::parse(&v).expect("pod");
        let id = p.identity(Some(&sa), None).expect("identity");
        assert_eq!(id.client_id, "22222222-2222-2222-2222-222222222222");
        assert_eq!(id.allowed_client_ids.len(), 2);
        v["metadata"]["annotations"][ANN_CLIENT_ID] = json!("not-a-guid");
        assert!(
            Pod::parse(&v)
                .expect("pod")
                .identity(Some(&sa), None)
                .is_err()
        );
    }

    #[test]
    fn an_app_service_endpoint_is_read_from_literal_env_on_loopback() {
        let mut v = pod();
        assert!(Pod::parse(&v).expect("pod").app_service.is_none());
        v["spec"]["containers"] = json!([{"name": "app", "env": [
            {"name": "IDENTITY_ENDPOINT", "value": "http://127.0.0.1:8000/msi/token"},
            {"name": "IDENTITY_HEADER", "value": "s3cret"}]}]);
        let a = Pod::parse(&v).expect("pod").app_service.expect("endpoint");
        assert_eq!(a.port, 8000);
        assert!(a.header.matches(b"s3cret"));
        v["spec"]["containers"][0]["env"][0]["value"] = json!("http://10.0.0.1:8000/msi/token");
        assert!(
            Pod::parse(&v).expect("pod").app_service.is_none(),
            "not loopback"
        );
        v["spec"]["containers"][0]["env"][0]["value"] = json!("http://127.0.0.1:8000/msi/token");
        v["spec"]["containers"][0]["env"][1] = json!({"name": "IDENTITY_HEADER", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}});
        assert!(
            Pod::parse(&v).expect("pod").app_service.is_none(),
            "not literal"
        );
    }

    #[cfg(feature = "webhook")]
    #[test]
    fn names_agree_with_the_webhook() {
        use crate::webhook::names as w;
        assert_eq!(LABEL_INJECT, w::LABEL_INJECT);
        assert_eq!(ANN_MODE, w::ANN_MODE);
        assert_eq!(MODE_NODE, w::MODE_NODE);
        assert_eq!(ANN_CLIENT_ID, w::ANN_CLIENT_ID);
        assert_eq!(ANN_TENANT_ID, w::ANN_TENANT_ID);
        assert_eq!(ANN_ALLOWED_CLIENT_IDS, w::ANN_ALLOWED_CLIENT_IDS);
        assert_eq!(ANN_ALLOWED_RESOURCES, w::ANN_ALLOWED_RESOURCES);
        assert_eq!(AZWI_CLIENT_ID, w::AZWI_CLIENT_ID);
        assert_eq!(AZWI_TENANT_ID, w::AZWI_TENANT_ID);
        assert_eq!(TOKEN_AUDIENCE, w::TOKEN_AUDIENCE);
    }
}
