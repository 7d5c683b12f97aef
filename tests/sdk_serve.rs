//! The real SDKs, unmodified, against `serve`: Python azure-identity `ManagedIdentityCredential`
//! (IMDS, App Service 2019, MSI 2017), msal `ManagedIdentityClient`, and @azure/identity
//! `ManagedIdentityCredential` (IMDS, App Service). Each must get the token the fake Entra issued,
//! and a wrong identity header must fail.
mod support;

use support::sdk::{self, SidecarEnv, assert_outcomes, node_mi, python_mi};
use support::sidecar_on_fake_entra::{SidecarOnFakeEntra, other_client_allowed};
use support::*;

const RES: &str = "https://management.azure.com";

/// With the SDKs installed (else the skip rule of `sdk::available` and `None`): a sidecar on the
/// fake Entra ID that also serves [`OTHER_CLIENT_ID`], and the SDKs' environment pointing at it.
async fn start(test: &str) -> Option<(SidecarOnFakeEntra, SidecarEnv)> {
    if !sdk::available(test) {
        return None;
    }
    let started = SidecarOnFakeEntra::start_with(other_client_allowed).await;
    let env = SidecarEnv::of(&started.sc);
    Some((started, env))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_azure_identity_all_three_flavors() {
    let Some((_sidecar, env)) = start("python_azure_identity_all_three_flavors").await else {
        return;
    };
    let outs = blocking(move || {
        let (imds, app, msi) = (
            env.imds(),
            env.app_service(IDENTITY_HEADER),
            env.msi(IDENTITY_HEADER),
        );
        vec![
            ("imds", python_mi("azure-identity", RES, None, &imds)),
            (
                "imds user-assigned",
                python_mi("azure-identity", RES, Some(OTHER_CLIENT_ID), &imds),
            ),
            (
                "imds unknown identity",
                python_mi(
                    "azure-identity",
                    RES,
                    Some("33333333-3333-3333-3333-333333333333"),
                    &imds,
                ),
            ),
            ("app service", python_mi("azure-identity", RES, None, &app)),
            (
                "app service user-assigned",
                python_mi("azure-identity", RES, Some(OTHER_CLIENT_ID), &app),
            ),
            (
                "app service wrong header",
                python_mi("azure-identity", RES, None, &env.app_service("wrong")),
            ),
            (
                "msi 2017",
                python_mi("azure-identity", RES, Some(CLIENT_ID), &msi),
            ),
            (
                "msi 2017 wrong secret",
                python_mi("azure-identity", RES, None, &env.msi("wrong")),
            ),
        ]
    })
    .await;
    assert_outcomes(&outs);
    let unknown = &outs[2].1["error"];
    assert!(
        unknown
            .as_str()
            .is_some_and(|e| e.contains("Identity not found")),
        "the sidecar's message reaches the app: {unknown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_msal_managed_identity_client() {
    let Some((_sidecar, env)) = start("python_msal_managed_identity_client").await else {
        return;
    };
    let outs = blocking(move || {
        let (imds, app) = (env.imds(), env.app_service(IDENTITY_HEADER));
        vec![
            ("msal imds", python_mi("msal", RES, None, &imds)),
            (
                "msal imds user-assigned",
                python_mi("msal", RES, Some(OTHER_CLIENT_ID), &imds),
            ),
            ("msal app service", python_mi("msal", RES, None, &app)),
            (
                "msal app service wrong header",
                python_mi("msal", RES, None, &env.app_service("nope")),
            ),
        ]
    })
    .await;
    assert_outcomes(&outs);
    assert!(
        outs[0].1["expires_in"].as_u64().is_some_and(|n| n > 3000),
        "msal read expires_in: {}",
        outs[0].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_azure_identity_imds_and_app_service() {
    let Some((_sidecar, env)) = start("node_azure_identity_imds_and_app_service").await else {
        return;
    };
    let outs = blocking(move || {
        let (imds, app) = (env.imds(), env.app_service(IDENTITY_HEADER));
        vec![
            ("node imds", node_mi(RES, None, &imds)),
            (
                "node imds user-assigned",
                node_mi(RES, Some(OTHER_CLIENT_ID), &imds),
            ),
            ("node app service", node_mi(RES, None, &app)),
            (
                "node app service user-assigned",
                node_mi(RES, Some(OTHER_CLIENT_ID), &app),
            ),
            (
                "node app service wrong header",
                node_mi(RES, None, &env.app_service("nope")),
            ),
        ]
    })
    .await;
    assert_outcomes(&outs);
    // JS reads only expires_on: it must be in the future, or every call would re-fetch.
    let on = outs[0].1["expires_on"].as_u64().unwrap_or(0);
    assert!(on / 1000 > now() + 3000, "expires_on parsed: {}", outs[0].1);
}
