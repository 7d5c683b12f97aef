//! Every label, annotation, container, volume and variable name the webhook reads or writes, in
//! one place (docs/kubernetes.md documents each annotation).

/// Pod label that opts a pod in (the webhook configuration's objectSelector matches it too).
pub const LABEL_INJECT: &str = "identity-sidecar.io/inject";

/// Pod annotation: the client id to use, overriding the ServiceAccount's.
pub const ANN_CLIENT_ID: &str = "identity-sidecar.io/client-id";
/// Pod annotation: the tenant id, overriding the ServiceAccount's and `--tenant-id`.
pub const ANN_TENANT_ID: &str = "identity-sidecar.io/tenant-id";
/// Pod annotation: `app-service` (default) or `imds-intercept` (adds init-network).
pub const ANN_MODE: &str = "identity-sidecar.io/mode";
/// Pod annotation: `native` or `classic`, overriding `--sidecar-mode`.
pub const ANN_SIDECAR_MODE: &str = "identity-sidecar.io/sidecar-mode";
/// Pod annotation: `;`-separated containers that get no app environment.
pub const ANN_SKIP_CONTAINERS: &str = "identity-sidecar.io/skip-containers";
/// Pod annotation: the sidecar's loopback port (default 8000).
pub const ANN_PORT: &str = "identity-sidecar.io/port";
/// Pod annotation: the sidecar's admin port (metrics and probes on the pod IP; default 8491).
pub const ANN_ADMIN_PORT: &str = "identity-sidecar.io/admin-port";
/// Pod annotation: other client ids the app may ask for (comma list).
pub const ANN_ALLOWED_CLIENT_IDS: &str = "identity-sidecar.io/allowed-client-ids";
/// Pod annotation: resources tokens may be issued for (comma list, `*` suffix = prefix).
pub const ANN_ALLOWED_RESOURCES: &str = "identity-sidecar.io/allowed-resources";
/// Pod annotations: the sidecar's requests and limits.
pub const ANN_CPU_REQUEST: &str = "identity-sidecar.io/cpu-request";
pub const ANN_MEMORY_REQUEST: &str = "identity-sidecar.io/memory-request";
pub const ANN_CPU_LIMIT: &str = "identity-sidecar.io/cpu-limit";
pub const ANN_MEMORY_LIMIT: &str = "identity-sidecar.io/memory-limit";

/// Azure Workload Identity's names, read (and, for skip-containers, written) for compatibility.
pub const AZWI_USE: &str = "azure.workload.identity/use";
pub const AZWI_CLIENT_ID: &str = "azure.workload.identity/client-id";
pub const AZWI_TENANT_ID: &str = "azure.workload.identity/tenant-id";
pub const AZWI_TOKEN_EXPIRATION: &str = "azure.workload.identity/service-account-token-expiration";
pub const AZWI_SKIP_CONTAINERS: &str = "azure.workload.identity/skip-containers";
pub const AZWI_INJECT_PROXY: &str = "azure.workload.identity/inject-proxy-sidecar";

/// What the webhook injects.
pub const SIDECAR_NAME: &str = "identity-sidecar";
pub const INIT_NAME: &str = "identity-sidecar-init";
/// Node mode's init container: waits until the node agent serves inside the pod.
pub const NODE_WAIT_NAME: &str = "identity-sidecar-wait";
/// The value of `identity-sidecar.io/mode` (label or annotation) that asks for node mode.
pub const MODE_NODE: &str = "node";
/// How long node mode's init container waits for the agent before it fails (and is restarted).
pub const NODE_WAIT_SECONDS: u64 = 120;
pub const TOKEN_VOLUME: &str = "identity-sidecar-token";
pub const XTABLES_VOLUME: &str = "identity-sidecar-xtables-lock";
/// Not Azure Workload Identity's path, so both tokens can be mounted into the sidecar at once
/// (duplicate mount paths make a pod invalid).
pub const TOKEN_MOUNT: &str = "/var/run/secrets/identity-sidecar/tokens";
pub const TOKEN_FILE: &str = "azure-identity-token";
pub const TOKEN_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The sidecar image's binary, for the classic mode's postStart hook.
pub const BINARY: &str = "/usr/local/bin/identity-sidecar";
/// The sidecar's uid: the image's USER and the one init-network exempts from the redirect.
pub const SIDECAR_UID: u32 = 10501;
pub const DEFAULT_PORT: u16 = 8000;
/// The sidecar's admin port (`--admin-listen 0.0.0.0:PORT`): why 8491 is in
/// docs/operations.md#admin-listener.
pub const DEFAULT_ADMIN_PORT: u16 = crate::config::DEFAULT_ADMIN_PORT;
/// The name of the admin container port, which probes and the PodMonitor select.
pub const ADMIN_PORT_NAME: &str = "identity-admin";

pub const DEFAULT_TOKEN_EXPIRATION: u64 = 3600;
pub const MIN_TOKEN_EXPIRATION: u64 = 3600;
pub const MAX_TOKEN_EXPIRATION: u64 = 86400;

/// Variables.
pub const ENV_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
pub const ENV_IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
pub const ENV_IDENTITY_HEADER: &str = "IDENTITY_HEADER";
pub const ENV_MSI_ENDPOINT: &str = "MSI_ENDPOINT";
pub const ENV_MSI_SECRET: &str = "MSI_SECRET";
pub const ENV_POD_IDENTITY_AUTHORITY_HOST: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
pub const ENV_LISTEN: &str = "IDENTITY_SIDECAR_LISTEN";
pub const ENV_ADMIN_LISTEN: &str = "IDENTITY_SIDECAR_ADMIN_LISTEN";
pub const ENV_AUDIT_LOG: &str = "IDENTITY_SIDECAR_AUDIT_LOG";
