//! The release artifacts a security review checks, built for real by `scripts/build-static`
//! (the script the Dockerfile runs): the static binaries and their CycloneDX SBOMs.
//!
//! - the dependency list `cargo auditable` embedded in each binary, read back with
//!   `auditable-info`, is exactly the production feature set's resolution of Cargo.lock as
//!   `cargo metadata` reports it for the package scripts/build-static builds (the checkout less
//!   its dev-dependencies, tests and examples), holds every crate `cargo tree` says is compiled
//!   into the production build (nothing missing), and no mock crate, aws-lc or other crate
//!   that only dev-dependencies bring. `cargo metadata` still over-reports a few crates behind
//!   weak (`dep?/feature`) features (cargo#10718): listed, never missing;
//! - each SBOM validates against the CycloneDX 1.5 JSON schema (vendored in tests/sbom/schema,
//!   checked by the `jsonschema` package), lists the same crates as the embedded list, and is
//!   dated by the commit, with no random serial number (so it is reproducible);
//! - `--version` of every binary names the version, the commit and the commit's date.
//!
//! Needs musl-tools, the musl target, cargo-auditable and cargo-cyclonedx
//! (scripts/install-cargo-tools), git and the SBOM venv (scripts/install-sbom-tools); what is
//! missing follows the skip rule of tests/support/system.rs.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

#[path = "support/system.rs"]
mod system;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const TARGET: &str = "x86_64-unknown-linux-musl";
/// scripts/build-static's feature set (its default: `webhook`, `node` and `mimalloc`).
const PRODUCTION_FEATURES: &str = "webhook,node,mimalloc";
const BINARIES: [&str; 3] = [
    "identity-sidecar",
    "identity-sidecar-webhook",
    "identity-sidecar-node",
];
/// Crates only the mock Entra ID and `dev` use (the `mock` feature), or only aws-lc-rs brings.
const MOCK_ONLY: [&str; 5] = [
    "jsonwebtoken",
    "aws-lc-rs",
    "aws-lc-sys",
    "toml",
    "tempfile",
];
/// Crates that only dev-dependencies, or their features (reqwest's `rustls`, `blocking`), bring.
const DEV_ONLY: [&str; 3] = ["quinn", "proptest", "json-patch"];

fn sbom_python() -> PathBuf {
    std::env::var_os("IDENTITY_SIDECAR_SBOM_TOOLS")
        .map_or_else(
            || PathBuf::from(REPO).join(".cache/sbom/venv"),
            PathBuf::from,
        )
        .join("bin/python")
}

fn musl_target_installed() -> bool {
    Command::new("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|dir| {
            std::fs::read_dir(dir).is_ok_and(|mut d| {
                d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd")))
            })
        })
}

fn unavailable() -> Option<String> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map_or_else(
            || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
            PathBuf::from,
        )
        .join("bin");
    for tool in ["cargo-auditable", "cargo-cyclonedx"] {
        if !system::have(tool) && !cargo_bin.join(tool).exists() {
            return Some(format!("`{tool}` not found (scripts/install-cargo-tools)"));
        }
    }
    if let Some(why) = system::missing(None, &["musl-gcc", "git"]) {
        return Some(why);
    }
    if !musl_target_installed() {
        return Some(format!("Rust target {TARGET} not installed"));
    }
    if !sbom_python().exists() {
        return Some("the SBOM venv is missing (scripts/install-sbom-tools)".into());
    }
    None
}

/// `scripts/build-static` once per test run; its output directory.
fn built() -> &'static Path {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = PathBuf::from(REPO).join("target/artifacts-test/out");
        let status = Command::new(format!("{REPO}/scripts/build-static"))
            .arg(&out)
            .current_dir(REPO)
            // The default feature set, whatever the caller's environment says.
            .env_remove("IDENTITY_SIDECAR_FEATURES")
            .env_remove("IDENTITY_SIDECAR_TARGET")
            .env_remove("IDENTITY_SIDECAR_COMMIT")
            .env_remove("SOURCE_DATE_EPOCH")
            .status()
            .expect("run scripts/build-static");
        assert!(status.success(), "scripts/build-static failed: {status}");
        out
    })
}

fn git(args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(REPO)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

type Crate = (String, String);

/// What `cargo auditable` embedded in `bin`: every package as (name, version), and the root's.
fn embedded(bin: &Path) -> (BTreeSet<Crate>, Crate) {
    let info = auditable_info::audit_info_from_file(bin, Default::default())
        .unwrap_or_else(|e| panic!("{}: no dependency list: {e}", bin.display()));
    let roots: Vec<_> = info.packages.iter().filter(|p| p.root).collect();
    assert_eq!(roots.len(), 1, "one root package, got {roots:?}");
    let root = (roots[0].name.clone(), roots[0].version.to_string());
    let all = info
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.version.to_string()))
        .collect();
    (all, root)
}

/// The production feature set's resolved dependencies for the musl target, as `cargo metadata`
/// reports them for `manifest`: every package reachable from the crate through normal and build
/// dependencies (not dev), plus the crate itself.
fn resolved(manifest: &Path) -> BTreeSet<Crate> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--locked",
            "--manifest-path",
            manifest.to_str().expect("UTF-8 path"),
            "--format-version",
            "1",
            "--no-default-features",
            "--features",
            PRODUCTION_FEATURES,
            "--filter-platform",
            TARGET,
        ])
        .current_dir(REPO)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let nodes = meta["resolve"]["nodes"].as_array().expect("resolve.nodes");
    let by_id = |id: &str| nodes.iter().find(|n| n["id"] == id).expect("node");
    let packages = meta["packages"].as_array().expect("packages");
    let crate_of = |id: &str| {
        let p = packages.iter().find(|p| p["id"] == id).expect("package");
        (
            p["name"].as_str().expect("name").to_owned(),
            p["version"].as_str().expect("version").to_owned(),
        )
    };
    let root = meta["resolve"]["root"].as_str().expect("resolve.root");
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        for dep in by_id(&id)["deps"].as_array().expect("deps") {
            let non_dev = dep["dep_kinds"]
                .as_array()
                .expect("dep_kinds")
                .iter()
                .any(|k| k["kind"] != "dev");
            if non_dev {
                todo.push(dep["pkg"].as_str().expect("pkg").to_owned());
            }
        }
    }
    seen.iter().map(|id| crate_of(id)).collect()
}

/// What the production build compiles, exactly (cargo tree follows the feature resolver the
/// build uses): the crate and every normal and build dependency, for the musl target.
fn compiled() -> BTreeSet<Crate> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "-e",
            "normal,build",
            "--no-default-features",
            "--features",
            PRODUCTION_FEATURES,
            "--target",
            TARGET,
            "--prefix",
            "none",
        ])
        .current_dir(REPO)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            let version = words.next()?.strip_prefix('v')?;
            Some((name.to_owned(), version.to_owned()))
        })
        .collect()
}

/// Every (name, version) a Cargo.lock pins.
fn lock_file(path: &Path) -> BTreeSet<Crate> {
    let lock = std::fs::read_to_string(path).expect("read Cargo.lock");
    let mut pins = BTreeSet::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let Some(v) = line.strip_prefix("version = ")
            && let Some(n) = name.take()
        {
            pins.insert((n, v.trim_matches('"').to_owned()));
        }
    }
    pins
}

fn read_sbom(bin: &str) -> Value {
    let path = built().join(format!("{bin}.cdx.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The SBOM's components as (name, version), from their package URLs (`pkg:cargo/NAME@VERSION`).
fn sbom_crates(sbom: &Value) -> BTreeSet<Crate> {
    let mut crates = BTreeSet::new();
    let mut stack: Vec<&Value> = sbom["components"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(c) = stack.pop() {
        stack.extend(c["components"].as_array().into_iter().flatten());
        let purl = c["purl"]
            .as_str()
            .unwrap_or_else(|| panic!("component without purl: {c}"));
        let spec = purl
            .strip_prefix("pkg:cargo/")
            .unwrap_or_else(|| panic!("not a cargo purl: {purl}"));
        let spec = spec.split(['?', '#']).next().unwrap_or(spec);
        let (name, version) = spec
            .split_once('@')
            .unwrap_or_else(|| panic!("purl without version: {purl}"));
        crates.insert((name.to_owned(), version.to_owned()));
    }
    crates
}

/// The commit the build names: HEAD, `-dirty` with uncommitted changes to tracked files.
fn expected_commit() -> String {
    let head = git(&["rev-parse", "HEAD"]);
    let clean = Command::new("git")
        .args(["diff", "--quiet", "HEAD", "--"])
        .current_dir(REPO)
        .status()
        .is_ok_and(|s| s.success());
    if clean { head } else { format!("{head}-dirty") }
}

fn expected_date() -> String {
    let epoch: u64 = git(&["log", "-1", "--format=%ct"])
        .parse()
        .expect("commit time");
    String::from_utf8(identity_sidecar::build_info::rfc3339(epoch).to_vec()).expect("ASCII")
}

#[test]
fn embedded_dependency_lists_are_the_production_feature_sets_resolution() {
    if let Some(why) = unavailable() {
        system::skip(&format!("artifacts: {why}"));
        return;
    }
    built();
    // The package build-static built: the checkout less its test-only parts, with a Cargo.lock
    // that pins nothing the checkout's does not.
    let dist = PathBuf::from(REPO).join("target/dist-src");
    let want = resolved(&dist.join("Cargo.toml"));
    let pinned = lock_file(&PathBuf::from(REPO).join("Cargo.lock"));
    let unpinned: Vec<_> = lock_file(&dist.join("Cargo.lock"))
        .difference(&pinned)
        .cloned()
        .collect();
    assert!(
        unpinned.is_empty(),
        "target/dist-src/Cargo.lock adds {unpinned:?}"
    );
    let root = (
        "identity-sidecar".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    );
    assert!(want.contains(&root), "{want:?}");
    for c in &want {
        assert!(
            c == &root || pinned.contains(c),
            "{c:?} is not pinned in Cargo.lock"
        );
    }
    let exact = compiled();
    assert!(
        exact.contains(&root) && exact.len() > 100,
        "cargo tree: {exact:?}"
    );
    for bin in BINARIES {
        let (got, got_root) = embedded(&built().join(bin));
        assert_eq!(got_root, root, "{bin}: root package");
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{bin}: embedded list differs from the production resolution:\n  missing {missing:?}\n  extra {extra:?}"
        );
        // Nothing compiled in is missing from the list.
        let unlisted: Vec<_> = exact.difference(&got).collect();
        assert!(
            unlisted.is_empty(),
            "{bin}: compiled in but not listed: {unlisted:?}"
        );
        for name in MOCK_ONLY.iter().chain(&DEV_ONLY) {
            assert!(
                !got.iter().any(|(n, _)| n == name),
                "{bin}: lists {name}, which the production build does not compile"
            );
        }
        // One crypto provider: ring, as rustls and rcgen use it.
        assert!(got.iter().any(|(n, _)| n == "ring"), "{bin}: no ring");
        let surplus: Vec<_> = got
            .difference(&exact)
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        eprintln!(
            "{bin}: {} crates listed, {} compiled; listed but not compiled (cargo metadata and \
             weak features): {}",
            got.len(),
            exact.len(),
            surplus.join(", ")
        );
    }
}

#[test]
fn sboms_validate_against_the_cyclonedx_schema_and_list_the_embedded_crates() {
    if let Some(why) = unavailable() {
        system::skip(&format!("artifacts: {why}"));
        return;
    }
    let paths: Vec<PathBuf> = BINARIES
        .iter()
        .map(|b| built().join(format!("{b}.cdx.json")))
        .collect();
    let out = Command::new(sbom_python())
        .arg(format!("{REPO}/tests/sbom/validate.py"))
        .args(&paths)
        .output()
        .expect("run tests/sbom/validate.py");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schema validation failed:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator can see a violation: a component without its required name.
    let broken = built().join("broken.cdx.json");
    let mut doc = read_sbom(BINARIES[0]);
    doc["components"][0]
        .as_object_mut()
        .expect("a component")
        .remove("name");
    std::fs::write(&broken, doc.to_string()).expect("write");
    let bad = Command::new(sbom_python())
        .arg(format!("{REPO}/tests/sbom/validate.py"))
        .arg(&broken)
        .output()
        .expect("run validate.py");
    assert!(!bad.status.success(), "a broken SBOM validated");

    let epoch: i64 = git(&["log", "-1", "--format=%ct"])
        .parse()
        .expect("commit time");
    for bin in BINARIES {
        let sbom = read_sbom(bin);
        assert_eq!(sbom["bomFormat"], "CycloneDX", "{bin}");
        assert_eq!(sbom["specVersion"], "1.5", "{bin}");
        // Reproducible: dated by the commit, no random serial number.
        let ts = sbom["metadata"]["timestamp"]
            .as_str()
            .expect("metadata.timestamp");
        let ts = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{bin}: timestamp {ts}: {e}"));
        assert_eq!(
            ts.unix_timestamp(),
            epoch,
            "{bin}: timestamp is not the commit's time"
        );
        assert!(
            sbom.get("serialNumber").is_none(),
            "{bin}: random serialNumber"
        );
        let listed = sbom_crates(&sbom);
        let (embedded, root) = embedded(&built().join(bin));
        let mut deps = embedded.clone();
        deps.remove(&root);
        let missing: Vec<_> = deps.difference(&listed).collect();
        let extra: Vec<_> = listed.difference(&deps).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{bin}: SBOM components differ from the embedded list:\n  missing {missing:?}\n  extra {extra:?}"
        );
        eprintln!(
            "{bin}: SBOM valid, {} components, as embedded",
            listed.len()
        );
    }
}

#[test]
fn version_names_the_commit_and_its_date() {
    if let Some(why) = unavailable() {
        system::skip(&format!("artifacts: {why}"));
        return;
    }
    let (commit, date) = (expected_commit(), expected_date());
    for bin in BINARIES {
        let out = Command::new(built().join(bin))
            .arg("--version")
            .output()
            .expect("run --version");
        assert!(out.status.success(), "{bin} --version");
        let line = String::from_utf8_lossy(&out.stdout);
        let want = format!(
            "{bin} {} (commit {commit}, built {date})\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(line, want, "{bin} --version");
    }
}

/// rcgen runs on ring in the production webhook (no aws-lc-rs in it): its `certs` still makes a
/// CA and a serving pair that belong together.
#[test]
fn production_webhook_makes_certificates_with_ring() {
    if let Some(why) = unavailable() {
        system::skip(&format!("artifacts: {why}"));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(built().join("identity-sidecar-webhook"))
        .args(["certs", "--out-dir"])
        .arg(dir.path())
        .output()
        .expect("run identity-sidecar-webhook certs");
    assert!(
        out.status.success(),
        "certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read(dir.path().join(f)).expect(f);
    identity_sidecar::webhook::tls::certified_key(&read("tls.crt"), &read("tls.key"))
        .expect("tls.crt and tls.key form a pair");
    assert!(String::from_utf8_lossy(&read("ca.crt")).contains("BEGIN CERTIFICATE"));
}
