//! Binary entry point; the subcommands live in the library (`identity_sidecar::cmd`).
// musl's allocator costs the static build about a third of its throughput (README, Performance);
// mimalloc keeps musl's small idle footprint closer than jemalloc does.
#[cfg(all(target_env = "musl", feature = "mimalloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    identity_sidecar::cmd::main()
}
