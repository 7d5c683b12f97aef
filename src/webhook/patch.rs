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
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::names::*;

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

fn refuse(msg: impl Into<String>) -> Refusal {
    Refusal(msg.into())
}

/// True when the pod asked for injection (`identity-sidecar.io/inject: "true"`).
pub fn opted_in(pod: &Value) -> bool {
    pod.pointer("/metadata/labels")
        .and_then(|l| l.get(LABEL_INJECT))
        .and_then(Value::as_str)
        == Some("true")
}

/// True when the pod already holds the sidecar (a reinvocation, or a second call): then no
/// identity is needed, only containers added since must get the app environment.
pub fn has_sidecar(pod: &Value) -> bool {
    find_sidecar(pod).is_some()
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
    if azwi_enabled(pod) && annotation(pod, AZWI_INJECT_PROXY).is_some() {
        return Err(refuse(format!(
            "identity-sidecar: pod {} asks for both identity-sidecar (label {LABEL_INJECT}) and \
             the Azure Workload Identity proxy (annotation {AZWI_INJECT_PROXY}); both would serve \
             IMDS. Remove the annotation {AZWI_INJECT_PROXY}: identity-sidecar replaces azwi-proxy.",
            display_name(pod)
        )));
    }
    Ok(())
}

/// The JSON Patch that injects the sidecar into `pod` (empty: nothing to do).
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
    let azwi = azwi_enabled(pod);
    let azwi_volumes = azwi_token_volumes(pod);

    // 1. Annotations: keep the Azure Workload Identity webhook away from every container but the
    //    sidecar, now and when it is reinvoked after us.
    if azwi {
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
        if intercept {
            names.push(INIT_NAME.to_string());
        }
        annotation_ops(pod, &mut ops, AZWI_SKIP_CONTAINERS, &names);
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
                        if azwi_volumes.iter().any(|v| v == vol) {
                            ops.push(
                                json!({"op": "remove", "path": format!("{base}/volumeMounts/{j}")}),
                            );
                        }
                    }
                }
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

/// Where the sidecar serves and the secret apps must send.
#[derive(Debug, Clone)]
struct Endpoint {
    port: u16,
    /// The `IDENTITY_HEADER` env entry of the sidecar minus its name: `{"value": ...}` for a
    /// sidecar we injected, or a `valueFrom` someone wrote by hand.
    header: Map<String, Value>,
}

impl Endpoint {
    fn of_existing(sidecar: &Value) -> Endpoint {
        let env = sidecar.get("env").and_then(Value::as_array);
        let find = |name: &str| {
            env.and_then(|e| {
                e.iter()
                    .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
            })
        };
        let port = find(ENV_LISTEN)
            .and_then(|e| e.get("value"))
            .and_then(Value::as_str)
            .and_then(|l| l.split(',').next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(DEFAULT_PORT);
        let mut header = find(ENV_IDENTITY_HEADER)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        header.remove("name");
        Endpoint { port, header }
    }

    /// What every app container gets, in this order.
    fn app_env(&self) -> Vec<Value> {
        let base = format!("http://127.0.0.1:{}", self.port);
        let token = format!("{base}/msi/token");
        let secret = |name: &str| {
            let mut m = self.header.clone();
            m.insert("name".into(), Value::String(name.into()));
            Value::Object(m)
        };
        let mut env = vec![json!({"name": ENV_IDENTITY_ENDPOINT, "value": token})];
        if !self.header.is_empty() {
            env.push(secret(ENV_IDENTITY_HEADER));
        }
        env.push(json!({"name": ENV_MSI_ENDPOINT, "value": token}));
        if !self.header.is_empty() {
            env.push(secret(ENV_MSI_SECRET));
        }
        env.push(json!({"name": ENV_POD_IDENTITY_AUTHORITY_HOST, "value": base}));
        env
    }
}

/// Everything a new sidecar needs, resolved from the pod, its ServiceAccount and the flags.
#[derive(Debug, Clone)]
struct Injection {
    client_id: String,
    tenant_id: String,
    authority_host: String,
    expiration: u64,
    endpoint: Endpoint,
    header: String,
    image: String,
    init_image: String,
    mode: SidecarMode,
    intercept: bool,
    resources: Resources,
    allowed_client_ids: Option<String>,
    allowed_resources: Option<String>,
}

impl Injection {
    fn resolve(
        pod: &Value,
        sa: &ServiceAccount,
        settings: &Settings,
        header: String,
    ) -> Result<Injection, Refusal> {
        let pod_name = display_name(pod);
        let sa_ref = format!("{}/{}", sa.namespace, sa.name);
        let sa_ann = |k: &str| {
            sa.annotations
                .get(k)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let pod_ann = |k: &str| annotation(pod, k).map(str::trim).filter(|v| !v.is_empty());

        // Client id: the pod's override, else the ServiceAccount (Azure Workload Identity's
        // annotation, which its users already have).
        let client_id = match (pod_ann(ANN_CLIENT_ID), sa_ann(AZWI_CLIENT_ID)) {
            (Some(c), _) => checked_guid(c).ok_or_else(|| {
                refuse(format!(
                    "identity-sidecar: pod {pod_name}: annotation {ANN_CLIENT_ID}={c:?} is not a \
                     client id (a GUID such as 00000000-0000-0000-0000-000000000000)"
                ))
            })?,
            (None, Some(c)) => checked_guid(c).ok_or_else(|| {
                refuse(format!(
                    "identity-sidecar: ServiceAccount {sa_ref}: annotation {AZWI_CLIENT_ID}={c:?} \
                     is not a client id (a GUID)"
                ))
            })?,
            (None, None) if !sa.found => {
                return Err(refuse(format!(
                    "identity-sidecar: pod {pod_name}: ServiceAccount {sa_ref} does not exist, so \
                     there is no client id. Create it with the annotation {AZWI_CLIENT_ID}=<client \
                     id>, or set the pod annotation {ANN_CLIENT_ID}."
                )));
            }
            (None, None) => {
                return Err(refuse(format!(
                    "identity-sidecar: pod {pod_name}: no client id. Add the annotation \
                     {AZWI_CLIENT_ID}=<client id> to ServiceAccount {sa_ref} (kubectl annotate \
                     serviceaccount -n {} {} {AZWI_CLIENT_ID}=<client id>), or set the pod \
                     annotation {ANN_CLIENT_ID}.",
                    sa.namespace, sa.name
                )));
            }
        };
        let tenant_id = pod_ann(ANN_TENANT_ID)
            .or_else(|| sa_ann(AZWI_TENANT_ID))
            .map(str::to_string)
            .or_else(|| settings.default_tenant_id.clone())
            .ok_or_else(|| {
                refuse(format!(
                    "identity-sidecar: pod {pod_name}: no tenant id. Add the annotation \
                     {AZWI_TENANT_ID} to ServiceAccount {sa_ref}, set the pod annotation \
                     {ANN_TENANT_ID}, or start the webhook with --tenant-id (AZURE_TENANT_ID)."
                ))
            })?;
        if !valid_tenant(&tenant_id) {
            return Err(refuse(format!(
                "identity-sidecar: pod {pod_name}: tenant id {tenant_id:?} is neither a GUID nor \
                 a domain name"
            )));
        }

        // Token lifetime: the pod's annotation, else the ServiceAccount's, else one hour; the
        // same annotation and range as Azure Workload Identity.
        let expiration = match (
            pod_ann(AZWI_TOKEN_EXPIRATION),
            sa_ann(AZWI_TOKEN_EXPIRATION),
        ) {
            (Some(v), _) => expiration(v, &format!("pod {pod_name}"))?,
            (None, Some(v)) => expiration(v, &format!("ServiceAccount {sa_ref}"))?,
            (None, None) => DEFAULT_TOKEN_EXPIRATION,
        };

        let intercept = match pod_ann(ANN_MODE) {
            None | Some("app-service") => false,
            Some("imds-intercept") => true,
            Some(other) => {
                return Err(refuse(format!(
                    "identity-sidecar: pod {pod_name}: annotation {ANN_MODE}={other:?}; expected \
                     app-service (the default) or imds-intercept"
                )));
            }
        };
        let init_image = match (&settings.init_image, intercept) {
            (Some(i), _) => i.clone(),
            (None, false) => String::new(),
            (None, true) => {
                return Err(refuse(format!(
                    "identity-sidecar: pod {pod_name}: annotation {ANN_MODE}=imds-intercept, but \
                     the webhook runs without --init-image, so it cannot add init-network"
                )));
            }
        };
        let mode = match pod_ann(ANN_SIDECAR_MODE) {
            None => settings.sidecar_mode,
            Some(m) => SidecarMode::parse(m).ok_or_else(|| {
                refuse(format!(
                    "identity-sidecar: pod {pod_name}: annotation {ANN_SIDECAR_MODE}={m:?}; \
                     expected native or classic"
                ))
            })?,
        };
        let port = match pod_ann(ANN_PORT) {
            None => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                refuse(format!(
                    "identity-sidecar: pod {pod_name}: annotation {ANN_PORT}={p:?} is not a TCP \
                     port (1-65535)"
                ))
            })?,
        };
        let mut resources = settings.resources.clone();
        for (key, slot) in [
            (ANN_CPU_REQUEST, &mut resources.cpu_request),
            (ANN_MEMORY_REQUEST, &mut resources.memory_request),
            (ANN_CPU_LIMIT, &mut resources.cpu_limit),
            (ANN_MEMORY_LIMIT, &mut resources.memory_limit),
        ] {
            if let Some(v) = pod_ann(key) {
                if !is_quantity(v) {
                    return Err(refuse(format!(
                        "identity-sidecar: pod {pod_name}: annotation {key}={v:?} is not a \
                         Kubernetes quantity (such as 10m, 0.5, 64Mi)"
                    )));
                }
                *slot = v.to_string();
            }
        }
        let allowed_client_ids = pod_ann(ANN_ALLOWED_CLIENT_IDS).map(str::to_string);
        if let Some(list) = &allowed_client_ids
            && let Some(bad) = list
                .split(',')
                .map(str::trim)
                .find(|c| !c.is_empty() && checked_guid(c).is_none())
        {
            return Err(refuse(format!(
                "identity-sidecar: pod {pod_name}: annotation {ANN_ALLOWED_CLIENT_IDS} holds \
                 {bad:?}, which is not a client id (a GUID)"
            )));
        }
        let allowed_resources = pod_ann(ANN_ALLOWED_RESOURCES).map(str::to_string);

        let mut endpoint_header = Map::new();
        endpoint_header.insert("value".into(), Value::String(header.clone()));
        Ok(Injection {
            client_id,
            tenant_id,
            authority_host: settings.authority_host.clone(),
            expiration,
            endpoint: Endpoint {
                port,
                header: endpoint_header,
            },
            header,
            image: settings.image.clone(),
            init_image,
            mode,
            intercept,
            resources,
            allowed_client_ids,
            allowed_resources,
        })
    }

    fn token_volume(&self) -> Value {
        json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE,
                "expirationSeconds": self.expiration,
                "path": TOKEN_FILE,
            }}]},
        })
    }

    fn sidecar_container(&self, native: bool) -> Value {
        let probe = |path: &str| json!({"exec": {"command": [BINARY, "probe", path]}});
        let mut env = vec![
            json!({"name": "AZURE_CLIENT_ID", "value": self.client_id}),
            json!({"name": "AZURE_TENANT_ID", "value": self.tenant_id}),
            json!({"name": ENV_FEDERATED_TOKEN_FILE, "value": format!("{TOKEN_MOUNT}/{TOKEN_FILE}")}),
            json!({"name": "AZURE_AUTHORITY_HOST", "value": self.authority_host}),
            json!({"name": ENV_IDENTITY_HEADER, "value": self.header}),
            // Loopback only: anything listening on the pod IP would hand tokens to other pods.
            json!({"name": ENV_LISTEN, "value": format!("127.0.0.1:{}", self.endpoint.port)}),
            json!({"name": "IDENTITY_SIDECAR_LOG_FORMAT", "value": "json"}),
        ];
        if let Some(ids) = &self.allowed_client_ids {
            env.push(json!({"name": "IDENTITY_SIDECAR_ALLOWED_CLIENT_IDS", "value": ids}));
        }
        if let Some(res) = &self.allowed_resources {
            env.push(json!({"name": "IDENTITY_SIDECAR_ALLOWED_RESOURCES", "value": res}));
        }
        let mut c = Map::new();
        c.insert("name".into(), json!(SIDECAR_NAME));
        c.insert("image".into(), json!(self.image));
        c.insert("args".into(), json!(["serve"]));
        if native {
            // Native sidecar: started before the app containers, stopped after them (Jobs end).
            c.insert("restartPolicy".into(), json!("Always"));
        } else {
            // Classic: kubelet starts containers in order and waits for each postStart hook, so
            // the app starts only once the sidecar serves.
            c.insert(
                "lifecycle".into(),
                json!({"postStart": {"exec": {"command": [BINARY, "probe", "/readyz", "--wait", "60"]}}}),
            );
        }
        c.insert("env".into(), Value::Array(env));
        // Exec probes: kubelet's httpGet probes go to the pod IP, where the sidecar is not.
        let mut startup = probe("/readyz");
        extend(
            &mut startup,
            json!({"periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 60}),
        );
        let mut ready = probe("/readyz");
        extend(
            &mut ready,
            json!({"periodSeconds": 10, "timeoutSeconds": 3}),
        );
        let mut live = probe("/healthz");
        extend(
            &mut live,
            json!({"periodSeconds": 20, "timeoutSeconds": 3, "failureThreshold": 3}),
        );
        c.insert("startupProbe".into(), startup);
        c.insert("readinessProbe".into(), ready);
        c.insert("livenessProbe".into(), live);
        c.insert(
            "resources".into(),
            json!({
                "requests": {"cpu": self.resources.cpu_request, "memory": self.resources.memory_request},
                "limits": {"cpu": self.resources.cpu_limit, "memory": self.resources.memory_limit},
            }),
        );
        c.insert(
            "securityContext".into(),
            json!({
                "runAsNonRoot": true,
                "runAsUser": SIDECAR_UID,
                "runAsGroup": SIDECAR_UID,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "privileged": false,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            }),
        );
        c.insert(
            "volumeMounts".into(),
            json!([{"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT, "readOnly": true}]),
        );
        Value::Object(c)
    }

    fn init_container(&self) -> Value {
        json!({
            "name": INIT_NAME,
            "image": self.init_image,
            // The image's entrypoint is `identity-sidecar init-network`.
            "args": ["--port", self.endpoint.port.to_string(), "--uid", SIDECAR_UID.to_string()],
            "resources": {
                "requests": {"cpu": "10m", "memory": "16Mi"},
                "limits": {"cpu": "100m", "memory": "32Mi"},
            },
            "securityContext": {
                // iptables needs uid 0 in the pod's user namespace plus NET_ADMIN; not privileged.
                "runAsUser": 0,
                "runAsNonRoot": false,
                "privileged": false,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            // iptables-legacy's lock file (/run/xtables.lock) on a read-only root.
            "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}],
        })
    }
}

fn extend(target: &mut Value, more: Value) {
    if let (Some(t), Value::Object(m)) = (target.as_object_mut(), more) {
        t.extend(m);
    }
}

/// `pod.spec.<list>` as a slice (empty when absent or not a list).
fn containers<'a>(pod: &'a Value, list: &str) -> &'a [Value] {
    pod.get("spec")
        .and_then(|s| s.get(list))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn find_sidecar(pod: &Value) -> Option<&Value> {
    ["initContainers", "containers"].into_iter().find_map(|l| {
        containers(pod, l)
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(SIDECAR_NAME))
    })
}

fn has_env(c: &Value, name: &str) -> bool {
    c.get("env").and_then(Value::as_array).is_some_and(|e| {
        e.iter()
            .any(|v| v.get("name").and_then(Value::as_str) == Some(name))
    })
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// The pod also asked the Azure Workload Identity webhook for its token
/// (`azure.workload.identity/use: "true"`, a label; older versions read it as an annotation).
fn azwi_enabled(pod: &Value) -> bool {
    let label = pod
        .pointer("/metadata/labels")
        .and_then(|l| l.get(AZWI_USE))
        .and_then(Value::as_str);
    label == Some("true") || annotation(pod, AZWI_USE) == Some("true")
}

/// Volumes holding a federated token other than ours: projected service-account tokens for the
/// Entra ID audience (Azure Workload Identity's `azure-identity-token`, or its newer
/// `azure-workload-identity-reserved-<hash>`).
fn azwi_token_volumes(pod: &Value) -> Vec<String> {
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

/// `;`-separated container names, as Azure Workload Identity's skip-containers.
fn split_list(s: &str) -> Vec<String> {
    s.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Makes annotation `key` list every name in `names` (keeping what it held), with one op.
fn annotation_ops(pod: &Value, ops: &mut Vec<Value>, key: &str, names: &[String]) {
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
fn push_all(pod: &Value, ops: &mut Vec<Value>, path: &str, items: Vec<Value>) {
    if pod.pointer(path).is_some_and(Value::is_array) {
        for it in items {
            ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": it}));
        }
    } else {
        ops.push(json!({"op": "add", "path": path, "value": items}));
    }
}

/// Puts `items` at the front of `spec.<list>`, in order, creating the list when absent.
fn insert_front(pod: &Value, ops: &mut Vec<Value>, list: &str, items: Vec<Value>) {
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

fn expiration(v: &str, whose: &str) -> Result<u64, Refusal> {
    v.parse::<u64>()
        .ok()
        .filter(|s| (MIN_TOKEN_EXPIRATION..=MAX_TOKEN_EXPIRATION).contains(s))
        .ok_or_else(|| {
            refuse(format!(
                "identity-sidecar: {whose}: annotation {AZWI_TOKEN_EXPIRATION}={v:?} must be a \
                 whole number of seconds from {MIN_TOKEN_EXPIRATION} to {MAX_TOKEN_EXPIRATION}"
            ))
        })
}

/// A GUID (8-4-4-4-12 hex digits), lower-cased; `None` otherwise.
pub fn checked_guid(s: &str) -> Option<String> {
    let groups: Vec<&str> = s.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| s.to_ascii_lowercase())
}

/// A tenant is a GUID or a domain name (`contoso.onmicrosoft.com`).
fn valid_tenant(s: &str) -> bool {
    checked_guid(s).is_some()
        || (!s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
}

/// A Kubernetes resource quantity: a decimal number with an optional SI or binary suffix.
pub fn is_quantity(s: &str) -> bool {
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let num = num.strip_prefix('+').unwrap_or(num);
    let digits_ok = !num.is_empty()
        && num.bytes().filter(|b| *b == b'.').count() <= 1
        && num.bytes().any(|b| b.is_ascii_digit())
        && num.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    );
    digits_ok && suffix_ok
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
