//! The container images, built and run for real without a Docker engine: runs
//! `tests/image/run.sh`, which builds both Dockerfile targets with buildah (the builder stage
//! stood in for by `scripts/build-static`'s output, the init base by the host's iptables), then
//! runs the runtime image's entrypoint as its user on a read-only root (`/healthz`, `/readyz`, a
//! token) and the init image's `init-network`, and checks each image's OCI labels, SBOM and
//! `--version`. Needs root, buildah, musl-tools and the musl target (scripts/install-system-deps),
//! cargo-auditable and cargo-cyclonedx (scripts/install-cargo-tools); what is missing follows the
//! one skip rule of `tests/support/system.rs` (a failure under CI or as root, a visible SKIP
//! elsewhere).
use std::process::{Command, Stdio};

#[path = "support/system.rs"]
mod system;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn musl_target_installed() -> bool {
    Command::new("rustc")
        .args([
            "--print",
            "target-libdir",
            "--target",
            "x86_64-unknown-linux-musl",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .is_some_and(|dir| {
            std::path::Path::new(&dir).join("libstd.rlib").exists() || {
                std::fs::read_dir(&dir).is_ok_and(|mut d| {
                    d.any(|e| {
                        e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
                    })
                })
            }
        })
}

fn unavailable() -> Option<String> {
    let tools = [
        "buildah",
        "musl-gcc",
        "ip",
        "iptables-nft",
        "chroot",
        "unshare",
        "python3",
        "git",
        "cargo-auditable",
        "cargo-cyclonedx",
    ];
    if let Some(why) = system::missing(Some("buildah, chroot, network namespaces"), &tools) {
        return Some(why);
    }
    if !musl_target_installed() {
        return Some("Rust target x86_64-unknown-linux-musl not installed".into());
    }
    None
}

#[test]
fn images_build_with_buildah_and_run_read_only_as_their_user() {
    if let Some(why) = unavailable() {
        system::skip(&format!("image test: {why}"));
        return;
    }
    let status = Command::new(format!("{REPO}/tests/image/run.sh"))
        .stdin(Stdio::null())
        .status()
        .expect("run tests/image/run.sh");
    assert!(status.success(), "tests/image/run.sh failed: {status}");
}

/// The uid that `init-network` exempts must be the one the image runs as, and the one the
/// manifests run the sidecar as; otherwise passthrough loops or the app escapes the redirect.
#[test]
fn image_user_manifests_and_init_network_agree_on_the_sidecar_uid() {
    use identity_sidecar::netfilter::SIDECAR_UID;
    let read = |p: &str| {
        std::fs::read_to_string(format!("{REPO}/{p}")).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let dockerfile = read("Dockerfile");
    let users: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .collect();
    assert!(
        users.contains(&format!("{SIDECAR_UID}:{SIDECAR_UID}").as_str()),
        "Dockerfile USER lines {users:?} do not include {SIDECAR_UID}:{SIDECAR_UID}"
    );
    // The runtime stage is the last one, so its USER is the last USER line.
    assert_eq!(
        users.last().copied(),
        Some(format!("{SIDECAR_UID}:{SIDECAR_UID}").as_str())
    );
    let deployment = read("manifests/base/deployment.yaml");
    assert!(deployment.contains(&format!("runAsUser: {SIDECAR_UID}")));
    assert!(deployment.contains(&format!("fsGroup: {SIDECAR_UID}")));
    let intercept = read("manifests/overlays/imds-intercept/init-network.yaml");
    assert!(intercept.contains(&format!("\"--uid\", \"{SIDECAR_UID}\"")));
}
