//! The node agent's entry point (node mode, `manifests/node`); the agent lives in the library
//! (`identity_sidecar::node`).
#[cfg(all(target_env = "musl", feature = "mimalloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    identity_sidecar::node::main()
}
