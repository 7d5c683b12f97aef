//! Command-line interface: one subcommand per job, each defined next to the code that runs it.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Serves Azure managed-identity endpoints (IMDS, App Service) from a workload-identity federated token.
#[derive(Debug, Parser)]
#[command(name = "identity-sidecar", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a mock Entra ID and Kubernetes-like token issuer (development and tests only).
    MockAad(crate::mock_aad::MockAadArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::MockAad(args) => crate::mock_aad::run_blocking(args),
    }
}
