//! Binary entry point; the subcommands live in the library (`identity_sidecar::cmd`).
fn main() -> std::process::ExitCode {
    identity_sidecar::cmd::main()
}
