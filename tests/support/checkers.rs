//! The Python checkers that the manifest and webhook tests run (`tests/manifests/check*.py`,
//! `tests/webhook/validate.py`): where their tools are installed, and the one assertion on a
//! checker's report (`ok`/`FAIL` lines, then "N passed, N failed").
#![allow(dead_code)] // each test crate uses a different subset

use std::path::PathBuf;
use std::process::{Command, Stdio};

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
