//! `identity-sidecar doctor` against the real mock Entra ID over TLS: a correct setup passes, and
//! each misconfiguration fails with a message that names the fix.
mod support;

use std::time::{Duration, SystemTime};

use identity_sidecar::mock_aad::{self, FederatedTokenSpec, MockAadConfig};
use support::Process;

struct Setup {
    mock: mock_aad::MockAad,
    dir: tempfile::TempDir,
}

impl Setup {
    fn write(&self, name: &str, token: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("{token}\n")).expect("write token");
        p.display().to_string()
    }

    /// Runs doctor with the webhook's variables, overridden by `over`.
    async fn doctor(&self, token_file: &str, over: &[(&str, &str)]) -> (Option<i32>, String) {
        let ca = self.mock.ca_pem_path().expect("CA").display().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("AZURE_CLIENT_ID".into(), self.mock.client_id().into()),
            ("AZURE_TENANT_ID".into(), self.mock.tenant_id().into()),
            ("AZURE_FEDERATED_TOKEN_FILE".into(), token_file.into()),
            (
                "AZURE_AUTHORITY_HOST".into(),
                self.mock.authority_url().into(),
            ),
            ("SSL_CERT_FILE".into(), ca),
        ];
        for (k, v) in over {
            env.retain(|(n, _)| n != k);
            env.push((k.to_string(), v.to_string()));
        }
        Process::run_to_end(&["doctor"], &env, Duration::from_secs(30)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_against_the_mock() {
    let mock = mock_aad::start(MockAadConfig::default())
        .await
        .expect("mock");
    let s = Setup {
        mock,
        dir: tempfile::tempdir().expect("tmp"),
    };
    let subject = mock_aad::config::DEFAULT_SUBJECT;
    let good = s.write(
        "good",
        &s.mock
            .mint_federated_token(subject, Duration::from_secs(3600))
            .expect("mint"),
    );

    let (code, out) = s.doctor(&good, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(subject) && out.contains("all good"), "{out}");

    // Wrong subject: AADSTS70021, with the issuer and subject to trust and the az commands.
    let wrong = s.write(
        "wrong",
        &s.mock
            .mint_federated_token(
                "system:serviceaccount:prod:other",
                Duration::from_secs(3600),
            )
            .expect("mint"),
    );
    let (code, out) = s.doctor(&wrong, &[]).await;
    assert_eq!(code, Some(1), "{out}");
    for needle in [
        "70021",
        "system:serviceaccount:prod:other",
        s.mock.issuer_url(),
        "az identity federated-credential create",
        "az ad app federated-credential create",
    ] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }

    // Unknown client id: AADSTS700016 and the hint to check the client id.
    let (code, out) = s
        .doctor(
            &good,
            &[("AZURE_CLIENT_ID", "99999999-9999-9999-9999-999999999999")],
        )
        .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("700016") && out.contains("AZURE_CLIENT_ID"),
        "{out}"
    );

    // Unknown tenant: found at discovery, before the exchange.
    let (code, out) = s
        .doctor(
            &good,
            &[("AZURE_TENANT_ID", "12345678-1234-1234-1234-123456789012")],
        )
        .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("does not know tenant") && out.contains("AZURE_TENANT_ID"),
        "{out}"
    );

    // Wrong audience: warned about, and Entra refuses it.
    let spec = FederatedTokenSpec {
        audience: "api://something-else".into(),
        ..FederatedTokenSpec::new(subject, Duration::from_secs(3600))
    };
    let aud = s.write(
        "aud",
        &s.mock.mint_federated_token_with(&spec).expect("mint"),
    );
    let (code, out) = s.doctor(&aud, &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("audience is not api://AzureADTokenExchange"),
        "{out}"
    );

    // Expired token file.
    let spec = FederatedTokenSpec {
        issued_at: SystemTime::now() - Duration::from_secs(7200),
        ..FederatedTokenSpec::new(subject, Duration::from_secs(3600))
    };
    let expired = s.write(
        "expired",
        &s.mock.mint_federated_token_with(&spec).expect("mint"),
    );
    let (code, out) = s.doctor(&expired, &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("expired") && out.contains("kubelet"), "{out}");

    // Unreadable and missing files.
    let unreadable = s.write("unreadable", "x");
    std::fs::set_permissions(
        &unreadable,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .expect("chmod");
    let (code, out) = s.doctor(&unreadable, &[]).await;
    assert_eq!(code, Some(1), "{out}");
    // Root reads anything: then the garbage content is what fails.
    assert!(
        out.contains("cannot be read") || out.contains("does not hold a JWT"),
        "{out}"
    );
    let (code, out) = s.doctor("/nonexistent/token", &[]).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("projected serviceAccountToken volume"),
        "{out}"
    );

    // Unreachable authority, and a TLS authority whose CA is not trusted.
    let (code, out) = s
        .doctor(&good, &[("AZURE_AUTHORITY_HOST", "https://127.0.0.1:9/")])
        .await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("cannot reach") && out.contains("egress"),
        "{out}"
    );
    let (code, out) = s.doctor(&good, &[("SSL_CERT_FILE", "")]).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("cannot reach") && out.contains("SSL_CERT_FILE"),
        "{out}"
    );

    s.mock.shutdown().await;
}
