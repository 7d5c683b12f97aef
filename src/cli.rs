//! Command-line interface: one subcommand per job, each defined next to the code that runs it.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// identity-sidecar: Azure managed-identity endpoints from a workload-identity token.
#[derive(Debug, Parser)]
#[command(name = "identity-sidecar", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send TCP to 169.254.169.254:80 to the sidecar (run by an init container with NET_ADMIN).
    InitNetwork(crate::init_network::InitNetworkArgs),
}

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::InitNetwork(args) => crate::init_network::run(args),
    }
}
