//! What the root-only tests (pod namespaces, images, manifests) need from the machine, and the one
//! rule for when they may not run: a loud SKIP, or a failure when the environment requires them.
#![allow(dead_code)] // each test crate uses a different subset

use std::process::{Command, Stdio};

/// True when `program` is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the test cannot run here: not root (when `root_for` says why root is needed), or a tool
/// missing. `None` when everything is there.
pub fn missing(root_for: Option<&str>, tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if let Some(why) = root_for
        && unsafe { libc::geteuid() } != 0
    {
        return Some(format!("needs root ({why})"));
    }
    tools
        .iter()
        .find(|p| !have(p))
        .map(|p| format!("`{p}` not found (run scripts/install-system-deps)"))
}

/// Says SKIP loudly, or fails when `var=1` or `CI=true` demands the test (CI runs as root after
/// scripts/install-system-deps, so it never skips there).
pub fn skip(var: &str, why: &str) {
    if std::env::var(var).as_deref() == Ok("1") || std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} (and {var}=1 or CI=true requires this test to run)");
    }
    eprintln!("\n********************************************************************");
    eprintln!("SKIP: {why}");
    eprintln!("********************************************************************\n");
}
