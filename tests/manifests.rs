//! The Kubernetes manifests: every overlay under `manifests/overlays` renders with
//! `kubectl kustomize`, validates offline against the 1.29+ schemas (`kubernetes-validate
//! --strict`), and keeps the pod-integration rules (native sidecar with a startupProbe, exec
//! probes, the federated token mounted only into the sidecar, no AZURE_FEDERATED_TOKEN_FILE in
//! the app, the sidecar's security context and resources, NET_ADMIN only in imds-intercept).
//! The checks live in `tests/manifests/check.py`; this test runs them. Without kubectl it follows
//! the one skip rule of `tests/support/system.rs` (a failure under CI or as root, else a SKIP).
use std::process::{Command, Stdio};

#[path = "support/checkers.rs"]
mod checkers;
#[path = "support/system.rs"]
mod system;

use checkers::assert_checks_pass;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn every_overlay_renders_validates_and_keeps_the_pod_rules() {
    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !kubectl {
        let why = "kubectl not found: manifests not rendered or validated";
        system::skip(why);
        return;
    }
    assert_checks_pass(
        &mut Command::new(format!("{REPO}/tests/manifests/check.sh")),
        "manifests: 5 passed, 0 failed",
    );
}
