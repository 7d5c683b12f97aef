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
    Process::run_to_end(&["doctor"], &envs, Duration::from_secs(30)).await
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

/// `identity-sidecar token ARGS` with only `envs` of the Azure variables.
async fn token(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let args = [&["token"], args].concat();
    Process::run_to_end(&args, envs, Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_fetches_prints_and_decodes() {
    let started = SidecarOnFakeEntra::start().await;
    let base = format!("http://{}", started.sc.addr);
    let endpoint = format!("{base}/msi/token");
    let (code, out) = token(&["--raw"], &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", &base)]).await;
    assert_eq!((code, out.trim()), (Some(0), "fake-access-token-1"));
    let (code, out) = token(
        &["--resource", "https://vault.azure.net"],
        &[
            ("IDENTITY_ENDPOINT", &endpoint),
            ("IDENTITY_HEADER", IDENTITY_HEADER),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["resource"], "https://vault.azure.net");
    let (code, out) = token(
        &["--flavor", "app-service"],
        &[
            ("IDENTITY_ENDPOINT", &endpoint),
            ("IDENTITY_HEADER", "wrong"),
        ],
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("401") && out.contains("does not match"),
        "{out}"
    );
    let (code, out) = token(&["--endpoint", &base, "--client-id", OTHER_CLIENT_ID], &[]).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("Identity not found"), "{out}");
    // --decode on a non-JWT access token explains itself.
    let (code, out) = token(&["--endpoint", &base, "--decode"], &[]).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("not a readable JWT"), "{out}");
}
