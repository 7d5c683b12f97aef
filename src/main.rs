//! Binary entry point; the subcommands live in the library (`identity_sidecar::cli`).
fn main() -> std::process::ExitCode {
    identity_sidecar::cli::main()
}
