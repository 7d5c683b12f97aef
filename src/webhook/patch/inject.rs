//! Building the injection: the identity resolved from the pod's and its ServiceAccount's
//! annotations and the webhook's flags (with their validators), and the containers and volume that
//! carry it (the sidecar, init-network, the projected federated token), plus the environment every
//! app container is given.
use serde_json::{Map, Value, json};

use super::identity::{Identity, checked_guid};
use super::ops::extend;
use super::pod::{annotation, display_name};
use super::{Refusal, Resources, ServiceAccount, Settings, SidecarMode, refuse};
use crate::webhook::names::*;

/// Where the sidecar serves and the secret apps must send.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub(super) port: u16,
    /// The `IDENTITY_HEADER` env entry of the sidecar minus its name: `{"value": ...}` for a
    /// sidecar we injected, or a `valueFrom` someone wrote by hand.
    pub(super) header: Map<String, Value>,
}

impl Endpoint {
    pub(super) fn of_existing(sidecar: &Value) -> Endpoint {
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
    pub(super) fn app_env(&self) -> Vec<Value> {
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
pub(super) struct Injection {
    pub(super) client_id: String,
    pub(super) tenant_id: String,
    pub(super) authority_host: String,
    pub(super) expiration: u64,
    pub(super) endpoint: Endpoint,
    /// The admin port: metrics and the httpGet probes, on the pod IP.
    pub(super) admin_port: u16,
    pub(super) header: String,
    pub(super) image: String,
    pub(super) init_image: String,
    pub(super) mode: SidecarMode,
    pub(super) intercept: bool,
    pub(super) resources: Resources,
    pub(super) allowed_client_ids: Option<String>,
    pub(super) allowed_resources: Option<String>,
}

impl Injection {
    pub(super) fn resolve(
        pod: &Value,
        sa: &ServiceAccount,
        settings: &Settings,
        header: String,
    ) -> Result<Injection, Refusal> {
        let pod_name = display_name(pod);
        let pod_ann = |k: &str| annotation(pod, k).map(str::trim).filter(|v| !v.is_empty());
        let Identity {
            client_id,
            tenant_id,
            expiration,
        } = Identity::resolve(pod, sa, settings)?;

        let intercept = match pod_ann(ANN_MODE) {
            None | Some("app-service") => false,
            Some("imds-intercept") => true,
            Some(other) => {
                return Err(refuse(format!(
                    "identity-sidecar: pod {pod_name}: annotation {ANN_MODE}={other:?}; expected \
                     app-service (the default), imds-intercept or node"
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
        let admin_port = match pod_ann(ANN_ADMIN_PORT) {
            None => DEFAULT_ADMIN_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                refuse(format!(
                    "identity-sidecar: pod {pod_name}: annotation {ANN_ADMIN_PORT}={p:?} is not a \
                     TCP port (1-65535)"
                ))
            })?,
        };
        if admin_port == port {
            return Err(refuse(format!(
                "identity-sidecar: pod {pod_name}: the admin port ({ANN_ADMIN_PORT}) and the token \
                 port ({ANN_PORT}) are both {port}; they must differ"
            )));
        }
        if let Some(c) = declares_port(pod, admin_port) {
            return Err(refuse(format!(
                "identity-sidecar: pod {pod_name}: container {c:?} already declares port \
                 {admin_port}, which is the sidecar's admin port ({ADMIN_PORT_NAME}, for metrics and \
                 probes); choose another with the pod annotation {ANN_ADMIN_PORT}"
            )));
        }
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
            admin_port,
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

    pub(super) fn token_volume(&self) -> Value {
        json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE,
                "expirationSeconds": self.expiration,
                "path": TOKEN_FILE,
            }}]},
        })
    }

    pub(super) fn sidecar_container(&self, native: bool) -> Value {
        // httpGet probes on the named admin port: it serves only health, readiness and metrics.
        let probe = |path: &str| json!({"httpGet": {"path": path, "port": ADMIN_PORT_NAME}});
        let mut env = vec![
            json!({"name": "AZURE_CLIENT_ID", "value": self.client_id}),
            json!({"name": "AZURE_TENANT_ID", "value": self.tenant_id}),
            json!({"name": ENV_FEDERATED_TOKEN_FILE, "value": format!("{TOKEN_MOUNT}/{TOKEN_FILE}")}),
            json!({"name": "AZURE_AUTHORITY_HOST", "value": self.authority_host}),
            json!({"name": ENV_IDENTITY_HEADER, "value": self.header}),
            // Loopback only: anything listening on the pod IP would hand tokens to other pods.
            json!({"name": ENV_LISTEN, "value": format!("127.0.0.1:{}", self.endpoint.port)}),
            // The pod IP gets the admin listener, which never serves a token.
            json!({"name": ENV_ADMIN_LISTEN, "value": format!("0.0.0.0:{}", self.admin_port)}),
            json!({"name": ENV_AUDIT_LOG, "value": "true"}),
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
        c.insert(
            "ports".into(),
            json!([{"name": ADMIN_PORT_NAME, "containerPort": self.admin_port, "protocol": "TCP"}]),
        );
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
        c.insert("securityContext".into(), unprivileged());
        c.insert(
            "volumeMounts".into(),
            json!([{"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT, "readOnly": true}]),
        );
        Value::Object(c)
    }

    pub(super) fn init_container(&self) -> Value {
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

/// The first container of the pod (app or init) that declares `port` as a container port.
fn declares_port(pod: &Value, port: u16) -> Option<String> {
    ["initContainers", "containers"]
        .into_iter()
        .find_map(|list| {
            super::pod::containers(pod, list).iter().find_map(|c| {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                let ports = c.get("ports").and_then(Value::as_array)?;
                ports
                    .iter()
                    .any(|p| {
                        p.get("containerPort").and_then(Value::as_u64) == Some(u64::from(port))
                    })
                    .then(|| name.to_string())
            })
        })
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

/// The security context of every container we add that needs no privilege (the sidecar, node
/// mode's wait container): Pod Security "restricted", as the image's non-root user.
pub(super) fn unprivileged() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": SIDECAR_UID,
        "runAsGroup": SIDECAR_UID,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}
