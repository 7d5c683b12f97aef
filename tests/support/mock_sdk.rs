//! Runs the real-SDK client programs under `tests/sdk/` as processes and reads their JSON line.
//!
//! The SDKs live in the repo-local cache `.cache/sdk/` made by `scripts/install-sdks`. When it is
//! missing, [`sdks_or_skip`] applies the one skip rule of `tests/support/system.rs`: a failure
//! under CI or as root, a visible SKIP elsewhere.
#![allow(dead_code)] // each test crate uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the SDK cache and the client programs are.
#[derive(Clone, Debug)]
pub struct Sdks {
    pub python: PathBuf,
    pub node_dir: PathBuf,
    pub clients: PathBuf,
}

/// Which client program to run.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    /// `tests/sdk/py_client.py` (azure-identity, msal).
    Python,
    /// `tests/sdk/js_client.mjs` (@azure/identity).
    Node,
}

/// The SDK cache, or `None` after printing SKIP (panics instead when SDKs are required).
pub fn sdks_or_skip(test: &str) -> Option<Sdks> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = std::env::var_os("IDENTITY_SIDECAR_SDK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".cache/sdk"));
    let sdks = Sdks {
        python: cache.join("py/bin/python"),
        node_dir: cache.join("node"),
        clients: repo.join("tests/sdk"),
    };
    let node_ok = sdks.node_dir.join("node_modules/@azure/identity").is_dir() && which("node");
    if sdks.python.exists() && node_ok {
        return Some(sdks);
    }
    let message = format!(
        "the real Azure SDKs are not installed in {}: run scripts/install-sdks",
        cache.display()
    );
    super::system::skip(&format!("{test}: {message}"));
    None
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// What a client printed: `{"ok":true,"token":...}` or `{"ok":false,"error":...,"codes":[...]}`.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub token: Option<String>,
    pub error: Option<String>,
    pub codes: Vec<u64>,
    pub raw: String,
}

impl Sdks {
    /// Runs `client MODE [args]` with a clean environment made of `PATH`, `HOME` and `env`.
    pub async fn run(
        &self,
        client: Client,
        mode: &str,
        args: &[&str],
        env: &BTreeMap<String, String>,
    ) -> Outcome {
        let (program, script) = match client {
            Client::Python => (self.python.clone(), self.clients.join("py_client.py")),
            Client::Node => (PathBuf::from("node"), self.clients.join("js_client.mjs")),
        };
        let mut command = tokio::process::Command::new(&program);
        command
            .arg(&script)
            .arg(mode)
            .args(args)
            .env_clear()
            .kill_on_drop(true);
        for name in ["PATH", "HOME", "SYSTEMROOT", "TMPDIR"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command.env("SDK_NODE_DIR", &self.node_dir).envs(env);
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .unwrap_or_else(|_| panic!("{client:?} {mode} did not finish within 60 s"))
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_else(|| {
            panic!("{client:?} {mode} printed no JSON line; status {}\nstdout: {stdout}\nstderr: {stderr}", output.status)
        });
        let json: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{client:?} {mode}: bad JSON line {line}: {e}"));
        Outcome {
            ok: json["ok"].as_bool().unwrap_or(false),
            token: json["token"].as_str().map(str::to_owned),
            error: json["error"].as_str().map(str::to_owned),
            codes: json["codes"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c.as_u64()).collect())
                .unwrap_or_default(),
            raw: line.to_owned(),
        }
    }
}
