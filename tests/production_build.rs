//! The production build (`--no-default-features`, what scripts/build-static and so the image
//! build) carries no mock Entra ID: a reviewer must not find a token minter in the image.
//!
//! Builds that binary into a target directory of its own (a debug build: it keeps its symbols and
//! debug info, so the absence of the mock's module path and crates is meaningful) and checks its
//! `--help`, its answer to `dev` / `mock-aad`, and its bytes. tests/image/run.sh checks the same
//! on the stripped static binary the image ships.
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// `cargo build --no-default-features` once per test run; the path of the binary.
fn production_binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let target_dir = PathBuf::from(REPO).join("target/production-build-test");
        let status = Command::new(env!("CARGO"))
            .current_dir(REPO)
            .args([
                "build",
                "--locked",
                "--no-default-features",
                "--bin",
                "identity-sidecar",
                "--target-dir",
            ])
            .arg(&target_dir)
            .status()
            .expect("run cargo build --no-default-features");
        assert!(status.success(), "cargo build --no-default-features failed");
        target_dir.join("debug/identity-sidecar")
    })
}

fn run(args: &[&str]) -> Output {
    Command::new(production_binary())
        .args(args)
        .output()
        .expect("run the production binary")
}

#[test]
fn help_lists_no_mock_commands() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("serve"), "{help}");
    for hidden in ["mock-aad", "dev ", "mock Entra"] {
        assert!(
            !help.contains(hidden),
            "--help mentions {hidden:?}:\n{help}"
        );
    }
}

#[test]
fn dev_and_mock_aad_say_they_are_not_built_in_and_exit_2() {
    for (command, args) in [
        ("dev", vec!["dev"]),
        ("mock-aad", vec!["mock-aad"]),
        (
            "mock-aad",
            vec!["mock-aad", "--listen", "127.0.0.1:0", "--help"],
        ),
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("not built into this binary")
                && stderr.contains("`mock` feature")
                && stderr.contains(&format!("cargo run --release -- {command}")),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn binary_holds_no_mock_code_or_crates() {
    let bytes = std::fs::read(production_binary()).expect("read the binary");
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The mock's module path (symbols, debug info, panic locations), the crates only it uses,
    // and one of its own messages.
    for needle in [
        "mock_aad",
        "jsonwebtoken",
        "rcgen",
        "unknown admin endpoint",
    ] {
        assert!(
            !contains(needle),
            "the production binary contains {needle:?}"
        );
    }
    // The check can see: the sidecar's own module paths are there.
    assert!(contains("identity_sidecar"), "no symbols to check");
}
