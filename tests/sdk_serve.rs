//! The real SDKs, unmodified, against `serve`: Python azure-identity `ManagedIdentityCredential`
//! (IMDS, App Service 2019, MSI 2017), msal `ManagedIdentityClient`, and @azure/identity
//! `ManagedIdentityCredential` (IMDS, App Service). Each must get the token the fake Entra issued,
//! and a wrong identity header must fail.
mod support;

use support::fake_entra::FakeEntra;
use support::sdk::{self, node_mi, python_mi};
use support::*;

const RES: &str = "https://management.azure.com";

struct Env {
    _entra: FakeEntra,
    _dir: tempfile::TempDir,
    sc: Sidecar,
}

async fn start() -> Env {
    let entra = FakeEntra::start().await;
    let (dir, path) = token_dir("system:serviceaccount:default:app");
    let sc = Sidecar::start(identity_sidecar::cmd::serve::ServeArgs {
        allowed_client_ids: vec![Some(guid(OTHER_CLIENT_ID))],
        ..args(&entra.authority(), &path)
    })
    .await;
    Env {
        _entra: entra,
        _dir: dir,
        sc,
    }
}

fn imds_env(sc: &Sidecar) -> Vec<(&'static str, String)> {
    vec![(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        format!("http://{}", sc.addr),
    )]
}

fn app_service_env(sc: &Sidecar, header: &str) -> Vec<(&'static str, String)> {
    vec![
        ("IDENTITY_ENDPOINT", sc.url("/msi/token")),
        ("IDENTITY_HEADER", header.to_string()),
    ]
}

fn msi_env(sc: &Sidecar, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MSI_ENDPOINT", sc.url("/msi/token")),
        ("MSI_SECRET", secret.to_string()),
    ]
}

fn assert_token(out: &serde_json::Value, what: &str) {
    assert_eq!(out["ok"], true, "{what}: {out}");
    let t = out["token"].as_str().unwrap_or_default();
    assert!(
        t.starts_with("fake-access-token-"),
        "{what}: the fake Entra's token, got {out}"
    );
}

fn assert_fails(out: &serde_json::Value, what: &str) {
    assert_eq!(out["ok"], false, "{what} must fail: {out}");
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_azure_identity_all_three_flavors() {
    if !sdk::available("python_azure_identity_all_three_flavors") {
        return;
    }
    let e = start().await;
    let (imds, app, msi) = (
        imds_env(&e.sc),
        app_service_env(&e.sc, IDENTITY_HEADER),
        msi_env(&e.sc, IDENTITY_HEADER),
    );
    let (bad_app, bad_msi) = (app_service_env(&e.sc, "wrong"), msi_env(&e.sc, "wrong"));
    let outs = blocking(move || {
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
                python_mi("azure-identity", RES, None, &bad_app),
            ),
            (
                "msi 2017",
                python_mi("azure-identity", RES, Some(CLIENT_ID), &msi),
            ),
            (
                "msi 2017 wrong secret",
                python_mi("azure-identity", RES, None, &bad_msi),
            ),
        ]
    })
    .await;
    for (what, out) in &outs {
        match *what {
            "imds unknown identity" | "app service wrong header" | "msi 2017 wrong secret" => {
                assert_fails(out, what)
            }
            _ => assert_token(out, what),
        }
    }
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
    if !sdk::available("python_msal_managed_identity_client") {
        return;
    }
    let e = start().await;
    let (imds, app, bad_app) = (
        imds_env(&e.sc),
        app_service_env(&e.sc, IDENTITY_HEADER),
        app_service_env(&e.sc, "nope"),
    );
    let outs = blocking(move || {
        vec![
            ("msal imds", python_mi("msal", RES, None, &imds)),
            (
                "msal imds user-assigned",
                python_mi("msal", RES, Some(OTHER_CLIENT_ID), &imds),
            ),
            ("msal app service", python_mi("msal", RES, None, &app)),
            (
                "msal app service wrong header",
                python_mi("msal", RES, None, &bad_app),
            ),
        ]
    })
    .await;
    for (what, out) in &outs {
        if what.contains("wrong") {
            assert_fails(out, what)
        } else {
            assert_token(out, what)
        }
    }
    assert!(
        outs[0].1["expires_in"].as_u64().is_some_and(|n| n > 3000),
        "msal read expires_in: {}",
        outs[0].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_azure_identity_imds_and_app_service() {
    if !sdk::available("node_azure_identity_imds_and_app_service") {
        return;
    }
    let e = start().await;
    let (imds, app, bad_app) = (
        imds_env(&e.sc),
        app_service_env(&e.sc, IDENTITY_HEADER),
        app_service_env(&e.sc, "nope"),
    );
    let outs = blocking(move || {
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
                node_mi(RES, None, &bad_app),
            ),
        ]
    })
    .await;
    for (what, out) in &outs {
        if what.contains("wrong") {
            assert_fails(out, what)
        } else {
            assert_token(out, what)
        }
    }
    // JS reads only expires_on: it must be in the future, or every call would re-fetch.
    let on = outs[0].1["expires_on"].as_u64().unwrap_or(0);
    assert!(on / 1000 > now() + 3000, "expires_on parsed: {}", outs[0].1);
}
