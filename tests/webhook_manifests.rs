//! The webhook's manifests (`manifests/webhook`, kustomize): the cert-manager kustomization and
//! the static-certs one fed by `identity-sidecar-webhook certs` both render with `kubectl
//! kustomize`, validate offline with kubernetes-validate --strict (1.29 and 1.37), and keep the
//! rules of issue 13 (2 replicas + PDB, hardened pod, objectSelector, failurePolicy Fail,
//! reinvocationPolicy IfNeeded, sideEffects None, timeout <= 5 s, kube-system and the webhook's
//! namespace excluded, RBAC limited to reading ServiceAccounts). The checks live in
//! `tests/manifests/check_webhook.py`. Without kubectl or the tools it prints a loud SKIP, or fails
//! when the environment requires them (tests/support/system.rs).
use std::path::Path;
use std::process::{Command, Stdio};

#[path = "support/checkers.rs"]
mod checkers;
#[path = "support/system.rs"]
mod system;

use checkers::{assert_checks_pass, webhook_tools};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

#[test]
fn webhook_manifests_render_validate_and_keep_the_rules() {
    if !system::have("kubectl") {
        system::skip("kubectl not found: webhook manifests not rendered or validated");
        return;
    }
    let Some(venv) = webhook_tools() else {
        return;
    };
    // A copy, so the generated key never lands in the source tree.
    let tmp = tempfile::tempdir().expect("tmp");
    let webhook = tmp.path().join("webhook");
    copy_dir(&Path::new(REPO).join("manifests/webhook"), &webhook);
    let certs = Command::new(env!("CARGO_BIN_EXE_identity-sidecar-webhook"))
        .args(["certs", "--out-dir"])
        .arg(webhook.join("static-certs"))
        .stdin(Stdio::null())
        .output()
        .expect("run certs");
    assert!(
        certs.status.success(),
        "certs failed: {}",
        String::from_utf8_lossy(&certs.stderr)
    );
    assert_checks_pass(
        Command::new(venv.join("bin/python"))
            .arg(format!("{REPO}/tests/manifests/check_webhook.py"))
            .arg(venv.join("bin/kubernetes-validate"))
            .arg(&webhook),
        "webhook manifests: 2 passed, 0 failed",
    );
}
