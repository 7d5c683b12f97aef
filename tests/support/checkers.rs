//! The Python checkers that the manifest and webhook tests run (`tests/manifests/check*.py`,
//! `tests/webhook/validate.py`): where their tools are installed, the one assertion on a
//! checker's report (`ok`/`FAIL` lines, then "N passed, N failed"), and the second opinion on
//! the webhook's patches.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// The venv of `scripts/install-webhook-tools` (kubernetes-validate, jsonpatch):
/// `IDENTITY_SIDECAR_WEBHOOK_TOOLS`, else `.cache/webhook/venv`. `None` after the skip rule of
/// `system::skip` when it is not installed.
pub fn webhook_tools() -> Option<PathBuf> {
    let venv = std::env::var_os("IDENTITY_SIDECAR_WEBHOOK_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/webhook/venv"));
    if venv.join("bin/kubernetes-validate").exists() {
        return Some(venv);
    }
    super::system::skip(&format!(
        "jsonpatch and kubernetes-validate are not installed in {}: run \
         scripts/install-webhook-tools",
        venv.display()
    ));
    None
}

/// Runs the checker `cmd` (stdin closed) and asserts that it exits 0 and that its output holds
/// `summary` (its closing "N passed, 0 failed" line); shows all of its output otherwise.
pub fn assert_checks_pass(cmd: &mut Command, summary: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    assert!(text.contains(summary), "unexpected output:\n{text}");
}

/// Writes one patched pod, `DIR/NAME.case.json`, as `tests/webhook/validate.py` reads it: the
/// pod, the webhook's patch, and the pod the patch must give.
pub fn write_patch_case(dir: &Path, name: &str, pod: &Value, patch: &[Value], expected: &Value) {
    let case = json!({"name": name, "pod": pod, "patch": patch, "expected": expected});
    std::fs::write(
        dir.join(format!("{name}.case.json")),
        serde_json::to_vec(&case).expect("json"),
    )
    .expect("write case");
}

/// The second opinion on the `n` cases in `dir`: Python's jsonpatch gives each the expected pod
/// and kubernetes-validate --strict accepts it (1.29 and the newest schema). Without the tools,
/// the skip rule.
pub fn assert_patches_valid(dir: &Path, n: usize) {
    let Some(venv) = webhook_tools() else {
        return;
    };
    assert_checks_pass(
        Command::new(venv.join("bin/python"))
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/webhook/validate.py"))
            .arg(dir)
            .arg(venv.join("bin/kubernetes-validate")),
        &format!("webhook corpus: {n} passed, 0 failed"),
    );
}
