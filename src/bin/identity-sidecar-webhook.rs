//! `identity-sidecar-webhook`: the mutating admission webhook, a binary of its own so that the
//! per-pod sidecar binary (`identity-sidecar`) links none of it. The code lives in the library
//! (`identity_sidecar::webhook`).
fn main() -> std::process::ExitCode {
    identity_sidecar::webhook::main()
}
