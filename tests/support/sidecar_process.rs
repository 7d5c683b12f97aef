//! `identity-sidecar` as a real [`Process`]: `serve` configured the way a pod configures it (the
//! workload identity variables `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`,
//! `AZURE_AUTHORITY_HOST` pointing at a fake Entra ID, a free loopback port), and a one-shot
//! command (`doctor`, `token`) run to its end from an async test.
use std::path::Path;
use std::time::Duration;

use super::{CLIENT_ID, Process, TENANT_ID};

impl Process {
    /// `identity-sidecar serve --listen 127.0.0.1:0 ARGS` for [`CLIENT_ID`] in [`TENANT_ID`],
    /// exchanging `token_file` at `authority`, with `envs` added to the environment.
    pub fn serve(
        authority: &str,
        token_file: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Process {
        let token_file = token_file.to_str().expect("UTF-8 token path");
        let mut all_args = vec!["serve", "--listen", "127.0.0.1:0"];
        all_args.extend_from_slice(args);
        let mut all_envs = vec![
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_TENANT_ID", TENANT_ID),
            ("AZURE_FEDERATED_TOKEN_FILE", token_file),
            ("AZURE_AUTHORITY_HOST", authority),
        ];
        all_envs.extend_from_slice(envs);
        Process::spawn(&all_args, &all_envs)
    }
}

impl Process {
    /// `identity-sidecar ARGS` with `envs`, waited for (up to `timeout`) on a blocking thread, so
    /// the fakes this test serves on its runtime keep answering: exit code and all output.
    pub async fn run_to_end(
        args: &[impl AsRef<str>],
        envs: &[(impl AsRef<str>, impl AsRef<str>)],
        timeout: Duration,
    ) -> (Option<i32>, String) {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let e: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Process::spawn(&a, &e).wait(timeout)
        })
        .await
        .expect("join")
    }
}
