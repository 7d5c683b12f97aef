//! The node agent's manifests (`manifests/node`, kustomize) render with `kubectl kustomize`,
//! validate offline with kubernetes-validate --strict (1.29 and 1.37), and keep the rules of
//! issue 20 (RBAC get/list/watch on pods and serviceaccounts only, a privileged namespace,
//! hostPID/hostNetwork, the five capabilities and nothing else, the kubelet's pods directory
//! read-only with HostToContainer, system-node-critical, every taint tolerated). The checks live
//! in `tests/manifests/check_node.py`. Without kubectl or the tools it prints a loud SKIP, or
//! fails when the environment requires them (tests/support/system.rs).
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[path = "support/system.rs"]
mod system;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn node_manifests_render_validate_and_keep_the_rules() {
    if !system::have("kubectl") {
        system::skip("kubectl not found: node manifests not rendered or validated");
        return;
    }
    let venv = std::env::var_os("IDENTITY_SIDECAR_WEBHOOK_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(REPO).join(".cache/webhook/venv"));
    if !venv.join("bin/kubernetes-validate").exists() {
        system::skip("kubernetes-validate is not installed: run scripts/install-webhook-tools");
        return;
    }
    let out = Command::new(venv.join("bin/python"))
        .arg(format!("{REPO}/tests/manifests/check_node.py"))
        .arg(venv.join("bin/kubernetes-validate"))
        .arg(format!("{REPO}/manifests/node"))
        .stdin(Stdio::null())
        .output()
        .expect("run check_node.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "node manifest checks failed:\n{text}");
    assert!(
        text.contains("4 passed, 0 failed"),
        "unexpected output:\n{text}"
    );
}
