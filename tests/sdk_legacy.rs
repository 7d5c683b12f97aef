//! The client-release matrix: real SDK releases, each pinned in its own environment by
//! `scripts/install-sdks`, unmodified, against `serve`. Every client must get the fake Entra's
//! token and compute the expiry the sidecar answered (not NaN, not "now"); where the client has a
//! working cache, its second call must not reach the sidecar. The README's matrix is this file.
//!
//! | Release | Its own cache |
//! |---|---|
//! | azure-identity 1.5.0 (Python) | never matches its own entries (looks up `target=[resource]`, stores `scope=resource`): every call reaches the sidecar |
//! | @azure/identity 1.4.0 (JS) | none (core-http based; not driven through a cycler here) |
//! | @azure/identity 1.5.2 (JS) | none in the credential; core-rest-pipeline's token cycler (bearerTokenAuthenticationPolicy) keeps the token until near `expiresOnTimestamp` |
//! | azure-identity 1.27.0 (Python), @azure/identity 4.13.1 (JS) | yes (azure-identity's token cache, msal-node's) |
mod support;

use identity_sidecar::cmd::serve::ServeArgs;
use identity_sidecar::protocol::user_agent::ExpiresOnMode;
use support::sdk::{self, Release, SidecarEnv, matrix_client};
use support::sidecar_on_fake_entra::{SidecarOnFakeEntra, other_client_allowed};
use support::*;

/// The scenarios of one release: what is set, and what must come of it.
struct Case {
    what: &'static str,
    env: Vec<(&'static str, String)>,
    client_id: Option<&'static str>,
    /// `Ok(n)`: a token with the right expiry, and `n` token requests seen by the sidecar (two
    /// `getToken` calls for Python; for JS one call plus two requests through the token cycler).
    /// `Err(text)`: the client fails with `text` in its error.
    expect: Result<u64, &'static str>,
}

impl Case {
    /// The client gets a token with the right expiry; `requests` token requests reach the sidecar.
    fn token(what: &'static str, env: Vec<(&'static str, String)>, requests: u64) -> Case {
        Case {
            what,
            env,
            client_id: None,
            expect: Ok(requests),
        }
    }

    /// The client fails with `text` in its error.
    fn fails(what: &'static str, env: Vec<(&'static str, String)>, text: &'static str) -> Case {
        Case {
            what,
            env,
            client_id: None,
            expect: Err(text),
        }
    }

    /// The same case for the user-assigned identity `client_id`.
    fn for_client(self, client_id: &'static str) -> Case {
        Case {
            client_id: Some(client_id),
            ..self
        }
    }
}

type Env = SidecarOnFakeEntra;

/// A sidecar on the fake Entra ID that also serves [`OTHER_CLIENT_ID`].
async fn start(msi_2017_expires_on: Option<ExpiresOnMode>) -> Env {
    SidecarOnFakeEntra::start_with(|a| ServeArgs {
        msi_2017_expires_on,
        ..other_client_allowed(a)
    })
    .await
}

/// With every release of the matrix installed (else the skip rule of `sdk::matrix_available`
/// and `None`), the sidecar of [`start`] with the User-Agent rule for `expires_on`.
async fn matrix_sidecar(test: &str) -> Option<Env> {
    if !sdk::matrix_available(test) {
        return None;
    }
    Some(start(None).await)
}

/// `MSI_ENDPOINT` + `MSI_SECRET` with the right secret.
fn msi(sc: &Sidecar) -> Vec<(&'static str, String)> {
    SidecarEnv::of(sc).msi(IDENTITY_HEADER)
}

fn cloud_shell(sc: &Sidecar) -> Vec<(&'static str, String)> {
    SidecarEnv::of(sc).cloud_shell()
}

fn pod_identity(sc: &Sidecar) -> Vec<(&'static str, String)> {
    SidecarEnv::of(sc).imds()
}

/// `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` with the right header.
fn app_service(sc: &Sidecar) -> Vec<(&'static str, String)> {
    SidecarEnv::of(sc).app_service(IDENTITY_HEADER)
}

/// Everything `dev` prints and the manifests set.
fn dev_env(sc: &Sidecar) -> Vec<(&'static str, String)> {
    [app_service(sc), pod_identity(sc), msi(sc)].concat()
}

/// `release`'s matrix client for `resource` (and `client_id`) under `env`, off the runtime.
async fn run_client(
    release: Release,
    resource: &str,
    client_id: Option<&'static str>,
    env: Vec<(&'static str, String)>,
) -> serde_json::Value {
    let resource = resource.to_string();
    tokio::task::spawn_blocking(move || matrix_client(release, &resource, client_id, &env))
        .await
        .expect("join")
}

const MSI_GETS_THE_DATE: &str = "MSI_ENDPOINT+MSI_SECRET (2017-09-01, gets the date)";
const MSI_USER_ASSIGNED: &str = "MSI_ENDPOINT+MSI_SECRET, user-assigned (clientid)";
const DEV_ENV_MSI_FIRST: &str = "everything dev prints (MSI_* is picked first)";
const CLOUD_SHELL_FORM: &str = "MSI_ENDPOINT alone (Cloud Shell form)";
const POD_IDENTITY_IMDS: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST (IMDS)";

/// Token requests the sidecar answered with 200, on both token endpoints.
async fn served(sc: &Sidecar) -> u64 {
    let m = sc.metrics().await;
    ["imds", "app_service"]
        .iter()
        .filter_map(|e| {
            let needle =
                format!("identity_sidecar_requests_total{{endpoint=\"{e}\",status=\"200\"}} ");
            m.lines()
                .find_map(|l| l.strip_prefix(needle.as_str()))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// The expiry the sidecar gives for `resource` (straight from its cache, through IMDS).
async fn sidecar_expiry(sc: &Sidecar, resource: &str, client_id: Option<&str>) -> u64 {
    let mut q = format!("api-version=2018-02-01&resource={resource}");
    if let Some(c) = client_id {
        q.push_str(&format!("&client_id={c}"));
    }
    let b: serde_json::Value = sc.imds(&q).await.json().await.expect("json");
    b["expires_on"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("sidecar expiry: {b}"))
}

/// The expiries the client reported, in epoch seconds: one per Python call, and JS's one
/// `expiresOnTimestamp` (ms; NaN arrives as JSON null and yields nothing).
fn client_expiries(release: Release, out: &serde_json::Value) -> Vec<u64> {
    match release {
        Release::PyCurrent | Release::Py150 => out["expires_on"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default(),
        Release::NodeCurrent | Release::Node152 | Release::Node140 => out["expires_on_ms"]
            .as_f64()
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| (ms / 1000.0).round() as u64)
            .into_iter()
            .collect(),
    }
}

/// Runs every case of `release` one after the other (each on its own resource) and checks it.
async fn run_matrix(e: &Env, release: Release, version: &str, cases: Vec<Case>) {
    for (i, case) in cases.into_iter().enumerate() {
        let resource = format!("https://matrix{i}.example.com");
        let before = served(&e.sc).await;
        let out = run_client(release, &resource, case.client_id, case.env.clone()).await;
        let requests = served(&e.sc).await - before;
        let what = format!("{release:?} {}", case.what);
        assert_eq!(
            out["version"], version,
            "{what}: the pinned release ran: {out}"
        );
        match case.expect {
            Ok(want_requests) => {
                assert_eq!(out["ok"], true, "{what}: {out}");
                let token = out["token"].as_str().unwrap_or_default();
                assert!(
                    token.starts_with("fake-access-token-"),
                    "{what}: the fake Entra's token: {out}"
                );
                let want = sidecar_expiry(&e.sc, &resource, case.client_id).await;
                assert!(want > now() + 3000, "{what}: the mock token lives an hour");
                // Within 2 s: clients that count from expires_in (JS 1.x Cloud Shell), or keep
                // expires_in in their cache (msal), round to the second on their own clock.
                let got = client_expiries(release, &out);
                assert!(
                    !got.is_empty() && got.iter().all(|g| g.abs_diff(want) <= 2),
                    "{what}: the client read the sidecar's expiry {want}: {out}"
                );
                if let Some(n) = out["cycler_token_requests"].as_u64() {
                    assert_eq!(n, 1, "{what}: the token cycler kept the token: {out}");
                }
                assert_eq!(
                    requests, want_requests,
                    "{what}: token requests that reached the sidecar ({out})"
                );
                println!(
                    "matrix: {what} {version}: token, expiry {got:?} = sidecar's {want}, {requests} sidecar request(s)"
                );
            }
            Err(text) => {
                assert_eq!(out["ok"], false, "{what} must fail: {out}");
                let error = out["error"].as_str().unwrap_or_default();
                assert!(error.contains(text), "{what}: {text:?} in {out}");
                println!("matrix: {what} {version}: fails as expected: {error}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_identity_1_5_0_python() {
    let Some(e) = matrix_sidecar("azure_identity_1_5_0_python").await else {
        return;
    };
    let cases = vec![
        Case::token(MSI_GETS_THE_DATE, msi(&e.sc), 2),
        Case::token(MSI_USER_ASSIGNED, msi(&e.sc), 2).for_client(OTHER_CLIENT_ID),
        Case::token(DEV_ENV_MSI_FIRST, dev_env(&e.sc), 2),
        Case::token(CLOUD_SHELL_FORM, cloud_shell(&e.sc), 1),
        Case::fails(
            "IDENTITY_ENDPOINT+IDENTITY_HEADER alone (1.5.0 has no 2019-08-01 client)",
            app_service(&e.sc),
            "No managed identity endpoint found",
        ),
    ];
    // Not run: AZURE_POD_IDENTITY_AUTHORITY_HOST, which azure-identity reads only from 1.7.0
    // (_credentials/imds.py); 1.5.0 goes to 169.254.169.254 and needs the IMDS redirect.
    run_matrix(&e, Release::Py150, "1.5.0", cases).await;

    // Without the User-Agent rule (today's answer, epoch), 1.5.0 gets no token at all.
    let forced = start(Some(ExpiresOnMode::Epoch)).await;
    let cases = vec![Case::fails(
        "MSI_ENDPOINT+MSI_SECRET, --msi-2017-expires-on epoch",
        msi(&forced.sc),
        "doesn't match the expected format",
    )];
    run_matrix(&forced, Release::Py150, "1.5.0", cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_identity_1_5_2_js() {
    let Some(e) = matrix_sidecar("azure_identity_1_5_2_js").await else {
        return;
    };
    let cases = vec![
        Case::token(MSI_GETS_THE_DATE, msi(&e.sc), 2),
        Case::token(MSI_USER_ASSIGNED, msi(&e.sc), 2).for_client(OTHER_CLIENT_ID),
        Case::token(POD_IDENTITY_IMDS, pod_identity(&e.sc), 2),
        Case::token(DEV_ENV_MSI_FIRST, dev_env(&e.sc), 2),
        Case::token(CLOUD_SHELL_FORM, cloud_shell(&e.sc), 2),
    ];
    run_matrix(&e, Release::Node152, "1.5.2", cases).await;

    // Without the User-Agent rule, Date.parse("<epoch>") is NaN: a token that never expires.
    let forced = start(Some(ExpiresOnMode::Epoch)).await;
    let out = run_client(
        Release::Node152,
        "https://nan.example.com",
        None,
        msi(&forced.sc),
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    assert!(out["expires_on_ms"].is_null(), "NaN (JSON null): {out}");
    println!(
        "matrix: Node152 MSI_ENDPOINT+MSI_SECRET, --msi-2017-expires-on epoch 1.5.2: token, expiry NaN"
    );
}

/// @azure/identity 1.0-1.4 send only core-http's User-Agent (`core-http/<v> Node/<v> OS/(...)`):
/// the third User-Agent rule, on a real release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_identity_1_4_0_js() {
    let Some(e) = matrix_sidecar("azure_identity_1_4_0_js").await else {
        return;
    };
    let cases = vec![Case::token(MSI_GETS_THE_DATE, msi(&e.sc), 1)];
    run_matrix(&e, Release::Node140, "1.4.0", cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_releases_every_flavor() {
    let Some(e) = matrix_sidecar("current_releases_every_flavor").await else {
        return;
    };
    let sc = &e.sc;
    let every_flavor = |sc: &Sidecar| {
        [
            (
                "IDENTITY_ENDPOINT+IDENTITY_HEADER (2019-08-01)",
                app_service(sc),
            ),
            ("MSI_ENDPOINT+MSI_SECRET (2017-09-01, epoch)", msi(sc)),
            (CLOUD_SHELL_FORM, cloud_shell(sc)),
            (POD_IDENTITY_IMDS, pod_identity(sc)),
            (
                "everything dev prints (IDENTITY_* is picked first)",
                dev_env(sc),
            ),
        ]
        .into_iter()
        // Both cache: the second call (the cycler's, for JS) never reaches the sidecar.
        .map(|(what, env)| Case::token(what, env, 1))
        .collect::<Vec<_>>()
    };
    run_matrix(&e, Release::PyCurrent, "1.27.0", every_flavor(sc)).await;
    run_matrix(&e, Release::NodeCurrent, "4.13.1", every_flavor(sc)).await;
}
