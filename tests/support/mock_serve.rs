//! `identity-sidecar serve` as a real process against the in-process mock Entra ID over TLS (the
//! mock's CA through `SSL_CERT_FILE`), with a federated token the mock trusts: the set-up of the
//! operations tests (audit log, admin listener scraped by a real Prometheus).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use identity_sidecar::mock_aad::{self, MockAad, MockAadConfig};

use super::{IDENTITY_HEADER, Process};

/// The mock, the token file and the sidecar process.
pub struct MockServe {
    pub mock: MockAad,
    pub dir: tempfile::TempDir,
    pub token_file: PathBuf,
    /// The federated token's text (a secret: it must never appear in a log).
    pub federated_token: String,
    pub process: Process,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
}

impl MockServe {
    /// Starts the mock (with `cfg`) and `serve --log-format json` with the `extra` flags.
    pub async fn start(cfg: MockAadConfig, extra: &[&str]) -> MockServe {
        let mock = mock_aad::start(cfg).await.expect("mock Entra ID starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = super::mock_entra::minted_token_file(&mock, dir.path());
        let federated_token = std::fs::read_to_string(&token_file).expect("read token");
        let ca = mock
            .ca_pem_path()
            .expect("the mock serves TLS")
            .display()
            .to_string();
        let token_path = token_file.display().to_string();
        let mut args: Vec<String> = [
            "serve",
            "--client-id",
            mock.client_id(),
            "--tenant-id",
            mock.tenant_id(),
            "--token-file",
            &token_path,
            "--authority-host",
            mock.authority_url(),
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            Process::spawn(
                &a,
                &[
                    ("SSL_CERT_FILE", ca.as_str()),
                    ("IDENTITY_HEADER", IDENTITY_HEADER),
                ],
            )
        })
        .await
        .expect("spawn");
        let addr = process.wait_listening();
        let admin = log_field(&process.logs(), "admin_listen").and_then(|a| a.parse().ok());
        MockServe {
            mock,
            dir,
            token_file,
            federated_token,
            process,
            addr,
            admin,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// The lines of the log that are audit lines, parsed.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        self.process
            .logs()
            .lines()
            .filter(|l| l.contains(r#""log":"audit""#))
            .map(|l| serde_json::from_str(l).expect("an audit line is one JSON object"))
            .collect()
    }
}

/// The first value of `"key":"value"` in JSON log lines.
pub fn log_field(logs: &str, key: &str) -> Option<String> {
    let start = logs.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let rest = &logs[start..];
    Some(rest[..rest.find('"')?].to_string())
}
