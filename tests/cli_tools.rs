//! `identity-sidecar token` and `doctor` as real processes.
mod support;

use std::time::Duration;

use support::fake_entra::{FakeEntra, Reply};
use support::sidecar_on_fake_entra::SidecarOnFakeEntra;
use support::*;

fn doctor_env<'a>(entra: &'a str, token_file: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT_ID),
        ("AZURE_FEDERATED_TOKEN_FILE", token_file),
        ("AZURE_AUTHORITY_HOST", entra),
    ]
}

async fn doctor(envs: Vec<(&str, &str)>) -> (Option<i32>, String) {
    let envs: Vec<(String, String)> = envs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Process::spawn(&["doctor"], &e).wait(Duration::from_secs(30))
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_working_setup_and_explains_each_failure() {
    let entra = FakeEntra::start().await;
    let authority = entra.authority();
    let (_dir, path) = token_dir("system:serviceaccount:prod:web");
    let file = path.to_str().expect("utf8").to_string();

    let (code, out) = doctor(doctor_env(&authority, &file)).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("system:serviceaccount:prod:web") && out.contains("all good"),
        "{out}"
    );

    entra.push(Reply::no_matching_federated_credential());
    let (code, out) = doctor(doctor_env(&authority, &file)).await;
    assert_eq!(code, Some(1), "{out}");
    for needle in [
        "AADSTS70021",
        "https://oidc.example/issuer",
        "system:serviceaccount:prod:web",
        "az identity federated-credential create",
        "az ad app federated-credential create --id 11111111",
    ] {
        assert!(out.contains(needle), "{needle:?} missing in:\n{out}");
    }

    for (status, error, code_n, needle) in [
        (401, "invalid_client", 700024, "valid time range"),
        (
            400,
            "unauthorized_client",
            700016,
            "no application 11111111-1111-1111-1111-111111111111",
        ),
        (400, "invalid_request", 90002, "does not know tenant"),
    ] {
        entra.push(Reply::entra_error(status, error, code_n, "x"));
        let (code, out) = doctor(doctor_env(&authority, &file)).await;
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains(needle),
            "{code_n}: {needle:?} missing in:\n{out}"
        );
    }

    // Local problems: missing file, expired token, unreachable authority.
    let (code, out) = doctor(doctor_env(&authority, "/nonexistent/token")).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("projected serviceAccountToken volume"),
        "{out}"
    );
    let (dir2, expired) = token_dir("x");
    std::fs::write(&expired, federated_jwt("system:serviceaccount:a:b", -60)).expect("write");
    let (code, out) = doctor(doctor_env(&authority, expired.to_str().expect("utf8"))).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("expired"), "{out}");
    drop(dir2);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/", l.local_addr().expect("addr"))
    };
    let (code, out) = doctor(doctor_env(&closed, &file)).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("cannot reach") && out.contains("egress"),
        "{out}"
    );
    let (code, out) = doctor(vec![]).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("AZURE_CLIENT_ID"), "{out}");
    // A malformed value is a failed configuration step too, not a usage error.
    let mut bad = doctor_env(&authority, &file);
    bad[0] = ("AZURE_CLIENT_ID", "not-a-guid");
    let (code, out) = doctor(bad).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL  --client-id (env AZURE_CLIENT_ID): \"not-a-guid\" is not a GUID"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_fetches_prints_and_decodes() {
    let started = SidecarOnFakeEntra::start().await;
    let sc = &started.sc;
    let base = format!("http://{}", sc.addr);
    let endpoint = format!("{base}/msi/token");
    let run = |args: Vec<String>, envs: Vec<(String, String)>| {
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let e: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Process::spawn(&a, &e).wait(Duration::from_secs(20))
        })
    };
    let s = |v: &str| v.to_string();
    let (code, out) = run(
        vec![s("token"), s("--raw")],
        vec![(s("AZURE_POD_IDENTITY_AUTHORITY_HOST"), base.clone())],
    )
    .await
    .expect("join");
    assert_eq!((code, out.trim()), (Some(0), "fake-access-token-1"));
    let (code, out) = run(
        vec![s("token"), s("--resource"), s("https://vault.azure.net")],
        vec![
            (s("IDENTITY_ENDPOINT"), endpoint.clone()),
            (s("IDENTITY_HEADER"), s(IDENTITY_HEADER)),
        ],
    )
    .await
    .expect("join");
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["resource"], "https://vault.azure.net");
    let (code, out) = run(
        vec![s("token"), s("--flavor"), s("app-service")],
        vec![
            (s("IDENTITY_ENDPOINT"), endpoint.clone()),
            (s("IDENTITY_HEADER"), s("wrong")),
        ],
    )
    .await
    .expect("join");
    assert_eq!(code, Some(1));
    assert!(
        out.contains("401") && out.contains("does not match"),
        "{out}"
    );
    let (code, out) = run(
        vec![
            s("token"),
            s("--endpoint"),
            base.clone(),
            s("--client-id"),
            s(OTHER_CLIENT_ID),
        ],
        vec![],
    )
    .await
    .expect("join");
    assert_eq!(code, Some(1));
    assert!(out.contains("Identity not found"), "{out}");
    // --decode on a non-JWT access token explains itself.
    let (code, out) = run(
        vec![s("token"), s("--endpoint"), base, s("--decode")],
        vec![],
    )
    .await
    .expect("join");
    assert_eq!(code, Some(1));
    assert!(out.contains("not a readable JWT"), "{out}");
}
