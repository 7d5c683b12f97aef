//! The node agent's manifests (`manifests/node`, kustomize) render with `kubectl kustomize`,
//! validate offline with kubernetes-validate --strict (1.29 and 1.37), and keep the rules of
//! issue 20 (RBAC get/list/watch on pods and serviceaccounts only, a privileged namespace,
//! hostPID/hostNetwork, the five capabilities and nothing else, the kubelet's pods directory
//! read-only with HostToContainer, system-node-critical, every taint tolerated). The checks live
//! in `tests/manifests/check_node.py`. Without kubectl or the tools it prints a loud SKIP, or
//! fails when the environment requires them (tests/support/system.rs).
use std::process::Command;

#[path = "support/checkers.rs"]
mod checkers;
#[path = "support/system.rs"]
mod system;

use checkers::{assert_checks_pass, webhook_tools};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn node_manifests_render_validate_and_keep_the_rules() {
    if !system::have("kubectl") {
        system::skip("kubectl not found: node manifests not rendered or validated");
        return;
    }
    let Some(venv) = webhook_tools() else {
        return;
    };
    assert_checks_pass(
        Command::new(venv.join("bin/python"))
            .arg(format!("{REPO}/tests/manifests/check_node.py"))
            .arg(venv.join("bin/kubernetes-validate"))
            .arg(format!("{REPO}/manifests/node")),
        "node manifests: 4 passed, 0 failed",
    );
}
