//! The command line: one subcommand per job, one file per subcommand. Each file holds the
//! subcommand's flags (parsed and checked by clap, so `--help` is the manual) and the code that
//! runs it.
#[cfg(feature = "mock")]
pub mod dev;
pub mod doctor;
pub mod flags;
pub mod init_network;
#[cfg(feature = "mock")]
pub mod mock_aad;
pub mod probe;
pub mod serve;
pub mod token;

use std::process::ExitCode;

use clap::Subcommand;

/// What `identity-sidecar --help` says it is.
const ABOUT: &str =
    "Azure managed-identity endpoints (IMDS, App Service) from a workload-identity federated token";

#[derive(Subcommand, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing ServeArgs buys nothing"
)]
pub enum Command {
    /// Run the whole chain locally with no cloud: mock Entra ID, rotating token file, and serve.
    #[cfg(feature = "mock")]
    Dev(dev::DevArgs),
    /// Not in this build (built without the `mock` feature).
    #[cfg(not(feature = "mock"))]
    #[command(hide = true, disable_help_flag = true)]
    Dev(NotBuilt),
    /// Serve managed-identity tokens exchanged from the federated token file.
    Serve(serve::ServeArgs),
    /// Send TCP to 169.254.169.254:80 to the sidecar (run by an init container with NET_ADMIN).
    InitNetwork(init_network::InitNetworkArgs),
    /// Exit 0 when the sidecar's /readyz (or another path) answers 200: for exec probes and the
    /// legacy sidecar's start-up wait.
    Probe(probe::ProbeArgs),
    /// Fetch a token from a running sidecar (a curl for pods that have none).
    Token(token::TokenArgs),
    /// Check a federation setup step by step and explain what to fix.
    Doctor(doctor::DoctorArgs),
    /// Run a mock Entra ID and Kubernetes-like token issuer (development and tests only).
    #[cfg(feature = "mock")]
    MockAad(mock_aad::MockAadArgs),
    /// Not in this build (built without the `mock` feature).
    #[cfg(not(feature = "mock"))]
    #[command(hide = true, disable_help_flag = true)]
    MockAad(NotBuilt),
}

/// What `dev` and `mock-aad` parse to in a build without the `mock` feature (the image's): any
/// arguments, so whatever was typed reaches [`not_built`]'s explanation instead of a usage error.
#[cfg(not(feature = "mock"))]
#[derive(clap::Args, Debug)]
pub struct NotBuilt {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<std::ffi::OsString>,
}

/// The production binary's answer to `dev` and `mock-aad`: it cannot mint tokens, on purpose.
#[cfg(not(feature = "mock"))]
fn not_built(command: &str) -> ExitCode {
    eprintln!(
        "identity-sidecar {command}: not built into this binary (built without the `mock` feature, \
         as the production image is); use the dev build: cargo run --release -- {command}"
    );
    ExitCode::from(2)
}

pub fn main() -> ExitCode {
    // The one TLS provider of the sidecar's own clients (reqwest asks for the process default
    // even for plain-http clients); the mock, in dev builds, picks aws-lc-rs explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let command = match crate::cli::try_parse::<Command>("identity-sidecar", ABOUT) {
        Ok(command) => command,
        Err(e) => {
            // doctor explains a malformed setting like any other failed check, with its fix.
            let doctor = std::env::args_os().nth(1).is_some_and(|a| a == "doctor");
            if doctor && e.kind() == clap::error::ErrorKind::ValueValidation {
                return doctor::malformed_setting(&e);
            }
            e.exit()
        }
    };
    match command {
        #[cfg(feature = "mock")]
        Command::Dev(args) => dev::run(args),
        #[cfg(not(feature = "mock"))]
        Command::Dev(_) => not_built("dev"),
        Command::Serve(args) => serve::run(args),
        Command::InitNetwork(args) => init_network::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Token(args) => token::run(args),
        Command::Doctor(args) => doctor::run(args),
        #[cfg(feature = "mock")]
        Command::MockAad(args) => mock_aad::run_blocking(args),
        #[cfg(not(feature = "mock"))]
        Command::MockAad(_) => not_built("mock-aad"),
    }
}
