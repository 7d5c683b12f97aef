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

use identity_sidecar::protocol::user_agent::ExpiresOnMode;
use support::fake_entra::FakeEntra;
use support::sdk::{self, Release, matrix_client};
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

struct Env {
    _entra: FakeEntra,
    _dir: tempfile::TempDir,
    sc: Sidecar,
}

async fn start(msi_2017_expires_on: Option<ExpiresOnMode>) -> Env {
    let entra = FakeEntra::start().await;
    let (dir, path) = token_dir("system:serviceaccount:default:app");
    let sc = Sidecar::start(identity_sidecar::cmd::serve::ServeArgs {
        allowed_client_ids: vec![Some(guid(OTHER_CLIENT_ID))],
        msi_2017_expires_on,
        ..args(&entra.authority(), &path)
    })
    .await;
    Env {
        _entra: entra,
        _dir: dir,
        sc,
    }
}

fn msi(sc: &Sidecar) -> Vec<(&'static str, String)> {
    vec![
        ("MSI_ENDPOINT", sc.url("/msi/token")),
        ("MSI_SECRET", IDENTITY_HEADER.to_string()),
    ]
}

fn cloud_shell(sc: &Sidecar) -> Vec<(&'static str, String)> {
    vec![("MSI_ENDPOINT", sc.url("/msi/token"))]
}

fn pod_identity(sc: &Sidecar) -> Vec<(&'static str, String)> {
    vec![(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        format!("http://{}", sc.addr),
    )]
}

fn app_service(sc: &Sidecar) -> Vec<(&'static str, String)> {
    vec![
        ("IDENTITY_ENDPOINT", sc.url("/msi/token")),
        ("IDENTITY_HEADER", IDENTITY_HEADER.to_string()),
    ]
}

/// Everything `dev` prints and the manifests set.
fn dev_env(sc: &Sidecar) -> Vec<(&'static str, String)> {
    [app_service(sc), pod_identity(sc), msi(sc)].concat()
}

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
        let (env, res, cid) = (case.env.clone(), resource.clone(), case.client_id);
        let out = tokio::task::spawn_blocking(move || matrix_client(release, &res, cid, &env))
            .await
            .expect("join");
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
    if !sdk::matrix_available("azure_identity_1_5_0_python") {
        return;
    }
    let e = start(None).await;
    let sc = &e.sc;
    let cases = vec![
        Case {
            what: "MSI_ENDPOINT+MSI_SECRET (2017-09-01, gets the date)",
            env: msi(sc),
            client_id: None,
            expect: Ok(2),
        },
        Case {
            what: "MSI_ENDPOINT+MSI_SECRET, user-assigned (clientid)",
            env: msi(sc),
            client_id: Some(OTHER_CLIENT_ID),
            expect: Ok(2),
        },
        Case {
            what: "everything dev prints (MSI_* is picked first)",
            env: dev_env(sc),
            client_id: None,
            expect: Ok(2),
        },
        Case {
            what: "MSI_ENDPOINT alone (Cloud Shell form)",
            env: cloud_shell(sc),
            client_id: None,
            expect: Ok(1),
        },
        Case {
            what: "IDENTITY_ENDPOINT+IDENTITY_HEADER alone (1.5.0 has no 2019-08-01 client)",
            env: app_service(sc),
            client_id: None,
            expect: Err("No managed identity endpoint found"),
        },
    ];
    // Not run: AZURE_POD_IDENTITY_AUTHORITY_HOST, which azure-identity reads only from 1.7.0
    // (_credentials/imds.py); 1.5.0 goes to 169.254.169.254 and needs the IMDS redirect.
    run_matrix(&e, Release::Py150, "1.5.0", cases).await;

    // Without the User-Agent rule (today's answer, epoch), 1.5.0 gets no token at all.
    let forced = start(Some(ExpiresOnMode::Epoch)).await;
    let cases = vec![Case {
        what: "MSI_ENDPOINT+MSI_SECRET, --msi-2017-expires-on epoch",
        env: msi(&forced.sc),
        client_id: None,
        expect: Err("doesn't match the expected format"),
    }];
    run_matrix(&forced, Release::Py150, "1.5.0", cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_identity_1_5_2_js() {
    if !sdk::matrix_available("azure_identity_1_5_2_js") {
        return;
    }
    let e = start(None).await;
    let sc = &e.sc;
    let cases = vec![
        Case {
            what: "MSI_ENDPOINT+MSI_SECRET (2017-09-01, gets the date)",
            env: msi(sc),
            client_id: None,
            expect: Ok(2),
        },
        Case {
            what: "MSI_ENDPOINT+MSI_SECRET, user-assigned (clientid)",
            env: msi(sc),
            client_id: Some(OTHER_CLIENT_ID),
            expect: Ok(2),
        },
        Case {
            what: "AZURE_POD_IDENTITY_AUTHORITY_HOST (IMDS)",
            env: pod_identity(sc),
            client_id: None,
            expect: Ok(2),
        },
        Case {
            what: "everything dev prints (MSI_* is picked first)",
            env: dev_env(sc),
            client_id: None,
            expect: Ok(2),
        },
        Case {
            what: "MSI_ENDPOINT alone (Cloud Shell form)",
            env: cloud_shell(sc),
            client_id: None,
            expect: Ok(2),
        },
    ];
    run_matrix(&e, Release::Node152, "1.5.2", cases).await;

    // Without the User-Agent rule, Date.parse("<epoch>") is NaN: a token that never expires.
    let forced = start(Some(ExpiresOnMode::Epoch)).await;
    let resource = "https://nan.example.com";
    let env = msi(&forced.sc);
    let out =
        tokio::task::spawn_blocking(move || matrix_client(Release::Node152, resource, None, &env))
            .await
            .expect("join");
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
    if !sdk::matrix_available("azure_identity_1_4_0_js") {
        return;
    }
    let e = start(None).await;
    let cases = vec![Case {
        what: "MSI_ENDPOINT+MSI_SECRET (2017-09-01, gets the date)",
        env: msi(&e.sc),
        client_id: None,
        expect: Ok(1),
    }];
    run_matrix(&e, Release::Node140, "1.4.0", cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_releases_every_flavor() {
    if !sdk::matrix_available("current_releases_every_flavor") {
        return;
    }
    let e = start(None).await;
    let sc = &e.sc;
    let every_flavor = |sc: &Sidecar| {
        [
            (
                "IDENTITY_ENDPOINT+IDENTITY_HEADER (2019-08-01)",
                app_service(sc),
            ),
            ("MSI_ENDPOINT+MSI_SECRET (2017-09-01, epoch)", msi(sc)),
            ("MSI_ENDPOINT alone (Cloud Shell form)", cloud_shell(sc)),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST (IMDS)", pod_identity(sc)),
            (
                "everything dev prints (IDENTITY_* is picked first)",
                dev_env(sc),
            ),
        ]
        .into_iter()
        .map(|(what, env)| Case {
            what,
            env,
            client_id: None,
            // Both cache: the second call (the cycler's, for JS) never reaches the sidecar.
            expect: Ok(1),
        })
        .collect::<Vec<_>>()
    };
    run_matrix(&e, Release::PyCurrent, "1.27.0", every_flavor(sc)).await;
    run_matrix(&e, Release::NodeCurrent, "4.13.1", every_flavor(sc)).await;
}
