//! The identity a pod is given, from the same annotations as Azure Workload Identity's: the
//! pod's `identity-sidecar.io/client-id` / `tenant-id` override its ServiceAccount's
//! `azure.workload.identity/client-id` / `tenant-id`; the webhook's `--tenant-id` is the last
//! resort for the tenant; the federated token's lifetime comes from
//! `azure.workload.identity/service-account-token-expiration`. Every way of serving (the sidecar,
//! node mode) resolves it here, so a pod is refused for the same reasons with the same words.
use serde_json::Value;

use super::pod::{annotation, display_name};
use super::{Refusal, ServiceAccount, Settings, refuse};
use crate::webhook::names::*;

/// Who the pod's tokens are for, and how long its federated token lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) client_id: String,
    pub(super) tenant_id: String,
    pub(super) expiration: u64,
}

impl Identity {
    pub(super) fn resolve(
        pod: &Value,
        sa: &ServiceAccount,
        settings: &Settings,
    ) -> Result<Identity, Refusal> {
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
        Ok(Identity {
            client_id,
            tenant_id,
            expiration,
        })
    }
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
