//! Runs the real Azure SDKs (installed by `scripts/install-sdks` into `.cache/sdk`) as processes.
use std::path::PathBuf;
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
