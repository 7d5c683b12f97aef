//! Runs the real Azure SDKs (installed by `scripts/install-sdks` into `.cache/sdk`) as processes:
//! the current releases (`py`, `node`) and the pinned legacy ones (`legacy/*`).
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn cache() -> PathBuf {
    std::env::var_os("IDENTITY_SIDECAR_SDK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/sdk"))
}

/// True when the SDKs are installed. Otherwise fails (under CI or as root) or prints a visible
/// SKIP and returns false: the rule of `system::skip`.
pub fn available(test: &str) -> bool {
    super::mock_sdk::sdks_or_skip(test).is_some()
}

/// A command with a clean environment: only PATH/HOME plus `envs`.
fn clean(program: PathBuf, envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for k in ["PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

fn run(mut cmd: Command) -> serde_json::Value {
    let out = cmd.output().expect("run SDK client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "SDK client printed no JSON.\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `tests/sdk/mi_client.py LIB RESOURCE` inside network namespace `ns` (`ip netns exec`), with
/// no environment but PATH/HOME: what an app in a pod with nothing configured does.
pub fn python_mi_in_netns(ns: &str, lib: &str, resource: &str) -> serde_json::Value {
    let mut cmd = clean(PathBuf::from("ip"), &[]);
    cmd.args(["netns", "exec", ns])
        .arg(cache().join("py/bin/python"))
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/mi_client.py"))
        .args([lib, resource]);
    run(cmd)
}

/// `tests/sdk/mi_client.py LIB RESOURCE [CLIENT_ID]` under `envs`.
pub fn python_mi(
    lib: &str,
    resource: &str,
    client_id: Option<&str>,
    envs: &[(&str, String)],
) -> serde_json::Value {
    let mut cmd = clean(cache().join("py/bin/python"), envs);
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/mi_client.py"))
        .arg(lib)
        .arg(resource);
    if let Some(c) = client_id {
        cmd.arg(c);
    }
    run(cmd)
}

/// `node tests/sdk/mi_client.mjs RESOURCE [CLIENT_ID]` under `envs`.
pub fn node_mi(
    resource: &str,
    client_id: Option<&str>,
    envs: &[(&str, String)],
) -> serde_json::Value {
    let mut envs = envs.to_vec();
    envs.push(("SDK_NODE_DIR", cache().join("node").display().to_string()));
    let mut cmd = clean(PathBuf::from("node"), &envs);
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/mi_client.mjs"))
        .arg(resource);
    if let Some(c) = client_id {
        cmd.arg(c);
    }
    run(cmd)
}

/// A client release of the matrix (tests/sdk_legacy.rs): where `scripts/install-sdks` put it.
#[derive(Clone, Copy, Debug)]
pub enum Release {
    /// azure-identity (Python) as pinned in `PY_PACKAGES` (1.27.0), in `.cache/sdk/py`.
    PyCurrent,
    /// azure-identity 1.5.0 (Python), with the azure-core and msal of its time.
    Py150,
    /// @azure/identity as pinned in `NODE_PACKAGES` (4.13.1), in `.cache/sdk/node`.
    NodeCurrent,
    /// @azure/identity 1.5.2 (JavaScript).
    Node152,
    /// @azure/identity 1.4.0 (JavaScript), the last release whose User-Agent is only core-http's.
    Node140,
}

impl Release {
    pub fn dir(self) -> PathBuf {
        match self {
            Release::PyCurrent => cache().join("py"),
            Release::Py150 => cache().join("legacy/py-azure-identity-1.5.0"),
            Release::NodeCurrent => cache().join("node"),
            Release::Node152 => cache().join("legacy/node-azure-identity-1.5.2"),
            Release::Node140 => cache().join("legacy/node-azure-identity-1.4.0"),
        }
    }

    fn installed(self) -> bool {
        match self {
            Release::PyCurrent | Release::Py150 => self.dir().join("bin/python").exists(),
            Release::NodeCurrent | Release::Node152 | Release::Node140 => {
                self.dir().join("node_modules/@azure/identity").is_dir()
            }
        }
    }
}

/// True when every release of the matrix is installed; otherwise the one skip rule of
/// `system::skip` (a failure under CI or as root, else a visible SKIP) and false.
pub fn matrix_available(test: &str) -> bool {
    if !available(test) {
        return false;
    }
    let missing: Vec<String> = [
        Release::PyCurrent,
        Release::Py150,
        Release::NodeCurrent,
        Release::Node152,
        Release::Node140,
    ]
    .into_iter()
    .filter(|r| !r.installed())
    .map(|r| r.dir().display().to_string())
    .collect();
    if missing.is_empty() {
        return true;
    }
    super::system::skip(&format!(
        "{test}: legacy SDK releases missing ({}): run scripts/install-sdks",
        missing.join(", ")
    ));
    false
}

/// `tests/sdk/matrix_client.{py,mjs} RESOURCE [CLIENT_ID]` of `release`, under `envs` only.
pub fn matrix_client(
    release: Release,
    resource: &str,
    client_id: Option<&str>,
    envs: &[(&str, String)],
) -> serde_json::Value {
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let mut cmd = match release {
        Release::PyCurrent | Release::Py150 => {
            let mut c = clean(release.dir().join("bin/python"), envs);
            c.arg(clients.join("matrix_client.py"));
            c
        }
        Release::NodeCurrent | Release::Node152 | Release::Node140 => {
            let mut envs = envs.to_vec();
            envs.push(("SDK_NODE_DIR", release.dir().display().to_string()));
            let mut c = clean(PathBuf::from("node"), &envs);
            c.arg(clients.join("matrix_client.mjs"));
            c
        }
    };
    cmd.arg(resource);
    if let Some(c) = client_id {
        cmd.arg(c);
    }
    run(cmd)
}

/// Where an SDK finds a sidecar: the environment of each managed-identity flavor, pointing at one
/// sidecar (owned strings, so it moves into `spawn_blocking`).
#[derive(Clone, Debug)]
pub struct SidecarEnv {
    base: String,
}

impl SidecarEnv {
    pub fn of(sc: &super::Sidecar) -> SidecarEnv {
        SidecarEnv {
            base: format!("http://{}", sc.addr),
        }
    }

    /// IMDS, through `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
    pub fn imds(&self) -> Vec<(&'static str, String)> {
        vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST", self.base.clone())]
    }

    /// App Service 2019-08-01: `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` set to `header`.
    pub fn app_service(&self, header: &str) -> Vec<(&'static str, String)> {
        vec![
            ("IDENTITY_ENDPOINT", format!("{}/msi/token", self.base)),
            ("IDENTITY_HEADER", header.to_string()),
        ]
    }

    /// App Service 2017-09-01: `MSI_ENDPOINT` and `MSI_SECRET` set to `secret`.
    pub fn msi(&self, secret: &str) -> Vec<(&'static str, String)> {
        vec![
            ("MSI_ENDPOINT", format!("{}/msi/token", self.base)),
            ("MSI_SECRET", secret.to_string()),
        ]
    }

    /// The Cloud Shell form: `MSI_ENDPOINT` alone.
    pub fn cloud_shell(&self) -> Vec<(&'static str, String)> {
        vec![("MSI_ENDPOINT", format!("{}/msi/token", self.base))]
    }
}

/// Asserts the outcome of each named SDK run: a run named for a `wrong` header or secret, or an
/// `unknown` identity, must fail; every other must get a token the fake Entra ID issued.
pub fn assert_outcomes(outs: &[(&str, serde_json::Value)]) {
    for (what, out) in outs {
        if what.contains("wrong") || what.contains("unknown") {
            assert_eq!(out["ok"], false, "{what} must fail: {out}");
        } else {
            assert_eq!(out["ok"], true, "{what}: {out}");
            let t = out["token"].as_str().unwrap_or_default();
            assert!(
                t.starts_with("fake-access-token-"),
                "{what}: the fake Entra's token, got {out}"
            );
        }
    }
}
