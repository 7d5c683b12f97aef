//! AKS identity bindings: the token request goes through the cluster's token proxy
//! (`AZURE_KUBERNETES_TOKEN_PROXY`) with its SNI name and CA, exactly as azure-identity 1.27's
//! `WorkloadIdentityCredential(enable_azure_proxy=True)` sends it. The stand-in proxy
//! (tests/support/token_proxy.rs) serves only its SNI name with its own CA and forwards to the
//! mock Entra ID. The real SDK is the control: both must get a token, and the proxy must see the
//! same request.
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use identity_sidecar::cmd::flags;
use identity_sidecar::mock_aad::{self, MockAad, MockAadConfig};
use support::mock_entra::minted_token_file;
use support::mock_sdk::{Client, sdks_or_skip};
use support::request::assert_status;
use support::token_proxy::TokenProxy;
use support::{Process, guid};

const SNI: &str = "token-proxy.aks.test";
const BASE_PATH: &str = "/identitybinding/";

struct Setup {
    mock: MockAad,
    proxy: TokenProxy,
    dir: tempfile::TempDir,
    token_file: PathBuf,
    ca_file: PathBuf,
}

async fn setup() -> Setup {
    let mock = mock_aad::start(MockAadConfig::default())
        .await
        .expect("mock starts");
    let proxy = TokenProxy::start(
        SNI,
        BASE_PATH,
        mock.authority_url(),
        mock.ca_pem().expect("mock CA"),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = minted_token_file(&mock, dir.path());
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, proxy.ca_pem()).expect("write CA");
    Setup {
        mock,
        proxy,
        dir,
        token_file,
        ca_file,
    }
}

impl Setup {
    /// A sidecar in this process whose token request goes through the proxy with `sni`.
    async fn sidecar(&self, sni: &str) -> support::Sidecar {
        let mut args = support::args(self.mock.authority_url(), &self.token_file);
        args.client_id = Some(guid(self.mock.client_id()));
        args.tenant_id = Some(self.mock.tenant_id().into());
        args.token_proxy = Some(flags::token_proxy(&self.proxy.url()).expect("proxy URL"));
        args.token_proxy_sni_name = Some(sni.into());
        args.token_proxy_ca_file = Some(self.ca_file.clone());
        support::Sidecar::start(args).await
    }

    /// The identity-binding environment, as the webhook injects it.
    fn env(&self, sni: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_CLIENT_ID", self.mock.client_id().into()),
            ("AZURE_TENANT_ID", self.mock.tenant_id().into()),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                self.token_file.display().to_string(),
            ),
            ("AZURE_AUTHORITY_HOST", self.mock.authority_url().into()),
            ("AZURE_KUBERNETES_TOKEN_PROXY", self.proxy.url()),
            ("AZURE_KUBERNETES_SNI_NAME", sni.into()),
            (
                "AZURE_KUBERNETES_CA_FILE",
                self.ca_file.display().to_string(),
            ),
        ]
    }

    fn doctor(&self, sni: &str) -> (Option<i32>, String) {
        let env = self.env(sni);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Process::spawn(&["doctor"], &env).wait(Duration::from_secs(60))
    }
}

fn imds(resource: &str) -> String {
    format!("api-version=2018-02-01&resource={resource}")
}

#[tokio::test]
async fn sidecar_and_azure_identity_send_the_same_request_through_the_token_proxy() {
    let s = setup().await;
    let sidecar = s.sidecar(SNI).await;
    let resp = sidecar.imds(&imds("https://management.azure.com")).await;
    assert_status(resp, 200).await;
    let ready: serde_json::Value = sidecar.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["token_proxy"], s.proxy.url(), "{ready}");
    sidecar.stop().await;
    let from_sidecar = s.proxy.seen();
    assert_eq!(from_sidecar.len(), 1, "{from_sidecar:?}");
    let expected = format!(
        "POST /identitybinding/{}/oauth2/v2.0/token HTTP/1.1",
        s.mock.tenant_id()
    );
    assert_eq!(from_sidecar[0].line, expected);
    assert_eq!(from_sidecar[0].host, s.proxy.addr.to_string());
    assert_eq!(from_sidecar[0].sni, SNI);
    eprintln!(
        "token proxy saw from the sidecar: {} (Host: {}, SNI {})",
        from_sidecar[0].line, from_sidecar[0].host, from_sidecar[0].sni
    );

    // The control: azure-identity's own identity-binding support, unmodified.
    let Some(sdks) =
        sdks_or_skip("sidecar_and_azure_identity_send_the_same_request_through_the_token_proxy")
    else {
        return;
    };
    let env: BTreeMap<String, String> = s
        .env(SNI)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain([(
            "REQUESTS_CA_BUNDLE".to_string(),
            s.mock.ca_pem_path().expect("CA").display().to_string(),
        )])
        .collect();
    let outcome = sdks.run(Client::Python, "workload-proxy", &[], &env).await;
    assert!(outcome.ok, "azure-identity: {}", outcome.raw);
    let seen = s.proxy.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    eprintln!(
        "token proxy saw from azure-identity: {} (Host: {}, SNI {})",
        seen[1].line, seen[1].host, seen[1].sni
    );
    assert_eq!(seen[1].line, seen[0].line);
    assert_eq!(seen[1].host, seen[0].host);
    assert_eq!(seen[1].sni, seen[0].sni);
}

// Multi-threaded: the test blocks on the doctor process while the proxy serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sni_name_is_refused_and_doctor_explains_it() {
    let s = setup().await;
    let sidecar = s.sidecar("wrong.aks.test").await;
    let resp = sidecar.imds(&imds("https://management.azure.com")).await;
    assert_eq!(resp.status(), 503);
    assert!(s.proxy.seen().is_empty());
    assert!(
        s.proxy.refused().contains(&Some("wrong.aks.test".into())),
        "{:?}",
        s.proxy.refused()
    );
    sidecar.stop().await;

    let (code, out) = s.doctor("wrong.aks.test");
    eprintln!("doctor with a wrong SNI:\n{out}");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("the token proxy refused the TLS handshake for SNI wrong.aks.test"),
        "{out}"
    );
    assert!(
        out.contains(&format!("binding  token proxy {}", s.proxy.url())),
        "{out}"
    );

    let (code, out) = s.doctor(SNI);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("through the token proxy"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_and_doctor_says_so() {
    let s = setup().await;
    // Trust a CA that did not sign the proxy's certificate.
    let other = TokenProxy::start(
        SNI,
        "/",
        s.mock.authority_url(),
        s.mock.ca_pem().expect("CA"),
    )
    .await;
    std::fs::write(&s.ca_file, other.ca_pem()).expect("write CA");
    let sidecar = s.sidecar(SNI).await;
    let resp = sidecar.imds(&imds("https://management.azure.com")).await;
    assert_eq!(resp.status(), 503);
    assert!(s.proxy.seen().is_empty());
    sidecar.stop().await;
    let (code, out) = s.doctor(SNI);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not signed by the trusted CA"), "{out}");
}

#[tokio::test]
async fn the_ca_file_rotates_while_the_sidecar_runs() {
    let s = setup().await;
    let sidecar = s.sidecar(SNI).await;
    let ok = |resource: &'static str| {
        let sidecar = &sidecar;
        async move {
            let resp = sidecar.imds(&imds(resource)).await;
            let status = resp.status();
            (status, resp.text().await.unwrap_or_default())
        }
    };
    let (status, body) = ok("https://vault.azure.net").await;
    assert_eq!(status, 200, "{body}");

    // Mid-rotation the file is empty for a moment: the previous CA stays.
    std::fs::write(&s.ca_file, "").expect("empty CA");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = ok("https://storage.azure.com").await;
    assert_eq!(status, 200, "{body}");

    // The proxy's certificate now comes from a new CA, and the file holds that CA.
    let new_ca = s.proxy.rotate();
    std::fs::write(&s.ca_file, new_ca).expect("new CA");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = ok("https://graph.microsoft.com").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.proxy.seen().len(), 3);
    sidecar.stop().await;
    drop(s.dir);
}

#[test]
fn identity_binding_settings_are_checked_at_start() {
    let base = [
        ("AZURE_CLIENT_ID", support::CLIENT_ID),
        ("AZURE_TENANT_ID", support::TENANT_ID),
        ("AZURE_FEDERATED_TOKEN_FILE", "/tmp/token"),
    ];
    let run = |extra: &[(&str, &str)]| {
        let mut env = base.to_vec();
        env.extend_from_slice(extra);
        Process::spawn(&["serve"], &env).wait(Duration::from_secs(20))
    };
    let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
    for (extra, names) in [
        (
            vec![
                ("AZURE_KUBERNETES_TOKEN_PROXY", "https://proxy.local/"),
                ("AZURE_KUBERNETES_CA_FILE", "/tmp/ca.crt"),
                ("AZURE_KUBERNETES_CA_DATA", pem),
            ],
            vec!["AZURE_KUBERNETES_CA_FILE", "AZURE_KUBERNETES_CA_DATA"],
        ),
        (
            vec![
                ("AZURE_KUBERNETES_SNI_NAME", "proxy.local"),
                ("AZURE_KUBERNETES_CA_DATA", pem),
            ],
            vec![
                "AZURE_KUBERNETES_TOKEN_PROXY",
                "AZURE_KUBERNETES_SNI_NAME",
                "AZURE_KUBERNETES_CA_DATA",
            ],
        ),
        (
            vec![("AZURE_KUBERNETES_TOKEN_PROXY", "http://proxy.local/")],
            vec!["AZURE_KUBERNETES_TOKEN_PROXY", "https"],
        ),
        (
            vec![("AZURE_KUBERNETES_TOKEN_PROXY", "https://u:p@proxy.local/")],
            vec!["AZURE_KUBERNETES_TOKEN_PROXY", "user name or password"],
        ),
        (
            vec![("AZURE_KUBERNETES_TOKEN_PROXY", "https://proxy.local/?a=b")],
            vec!["AZURE_KUBERNETES_TOKEN_PROXY", "query"],
        ),
        (
            vec![("AZURE_KUBERNETES_TOKEN_PROXY", "https://proxy.local/#f")],
            vec!["AZURE_KUBERNETES_TOKEN_PROXY", "fragment"],
        ),
    ] {
        let (code, out) = run(&extra);
        assert_eq!(code, Some(2), "{extra:?}: {out}");
        for n in names {
            assert!(out.contains(n), "{extra:?} should name {n}: {out}");
        }
    }
}
