//! `identity-sidecar serve` as a real [`Process`], configured the way a pod configures it: the
//! workload identity variables (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`,
//! `AZURE_AUTHORITY_HOST`) pointing at a fake Entra ID, listening on a free loopback port.
use std::path::Path;

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
