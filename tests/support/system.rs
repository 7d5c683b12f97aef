//! What the environment-dependent tests (pod namespaces, images, manifests, real SDKs) need from
//! the machine, and the one rule for when they may not run:
//!
//! - under CI (`CI=true`) or as root, a missing prerequisite is a **failure**: `scripts/test`
//!   installs everything there, so a missing tool means a broken install step;
//! - elsewhere (a developer's unprivileged `cargo test`) the test returns early with a visible
//!   `SKIP` line on the process's stderr (not the captured test output, which libtest hides for
//!   passing tests) and a line in the file named by `IDENTITY_SIDECAR_SKIP_LOG`, from which
//!   `scripts/test` counts and lists the skips in its closing summary.
#![allow(dead_code)] // each test crate uses a different subset

use std::io::Write as _;
use std::process::{Command, Stdio};

/// True when `program` is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when a missing prerequisite must fail the test instead of skipping it: under CI or as
/// root.
pub fn prerequisites_required() -> bool {
    std::env::var("CI").as_deref() == Ok("true") || is_root()
}

/// Why the test cannot run here: not root (when `root_for` says why root is needed), or a tool
/// missing. `None` when everything is there.
pub fn missing(root_for: Option<&str>, tools: &[&str]) -> Option<String> {
    if let Some(why) = root_for
        && !is_root()
    {
        return Some(format!("needs root ({why})"));
    }
    tools
        .iter()
        .find(|p| !have(p))
        .map(|p| format!("`{p}` not found (scripts/test installs it)"))
}

/// The running test's name: libtest names each test's thread after the test.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned()
}

/// Applies the skip rule for a test whose prerequisite is missing (`why`): panics under CI or as
/// root; otherwise prints a visible SKIP and records it for `scripts/test`'s summary. The caller
/// returns right after.
pub fn skip(why: &str) {
    let test = test_name();
    if prerequisites_required() {
        panic!(
            "{test} cannot run: {why}. Under CI (CI=true) or as root a missing prerequisite is a \
             failure, not a skip: run scripts/test, which installs what the tests need."
        );
    }
    let _ = writeln!(std::io::stderr(), "\n*** SKIP {test}: {why} ***\n");
    if let Some(path) = std::env::var_os("IDENTITY_SIDECAR_SKIP_LOG") {
        let line = format!("{test}: {}\n", why.replace('\n', " "));
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}
