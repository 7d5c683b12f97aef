#!/bin/sh
# Scale benchmark of node mode (issue 20, item 8): N pods served by one node agent against N
# sidecars, side by side in one run (examples/node_bench.rs says what is measured). The agent and
# the sidecar measured are the static binaries the images ship (scripts/build-static
# target/static-out, built here when missing); the harness (fake Kubernetes API, mock Entra ID,
# the pods' namespaces and cgroups, the load) is the debug example. Needs root and `ip`.
#   bench/node.sh [--pods N] [--duration S] [--load-pods N] [--conns N]
#   bench/node.sh --smoke      5 pods, 1-second load: keeps the script working
#   (--smoke measures the debug binaries: its numbers mean nothing, it only runs every step)
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    # Root is there under CI and scripts/test's installs; a developer's unprivileged run skips.
    echo "bench/node.sh: SKIP: needs root (network namespaces and cgroups)" >&2
    exit 0
fi
bin=target/debug/examples/node_bench
if [ "${1:-}" = "--smoke" ]; then
    cargo build --locked --quiet --example node_bench --bin identity-sidecar-node --bin identity-sidecar
    exec "$bin" --agent target/debug/identity-sidecar-node --sidecar target/debug/identity-sidecar \
        --pods 5 --duration 1 --load-pods 2 --conns 2
fi
if [ ! -x target/static-out/identity-sidecar-node ] || [ ! -x target/static-out/identity-sidecar ]; then
    scripts/build-static target/static-out
fi
cargo build --locked --quiet --example node_bench
exec "$bin" "$@"
