#!/bin/sh
# Benchmark of identity-sidecar-webhook: the release binary over HTTPS against the tests' fake
# Kubernetes API, 50 keep-alive connections sending pod CREATE AdmissionReviews (ServiceAccount
# cached after the warm-up), 10 seconds; prints req/s and p50/p99/p99.9 latency.
#   bench/webhook.sh [--duration SECONDS] [--conns N]      (--smoke: 1 second, what CI runs)
set -eu
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--smoke" ]; then
    set -- --duration 1
fi
cargo build --release --locked --bin identity-sidecar-webhook --example webhook_bench
IDENTITY_SIDECAR_WEBHOOK_BIN=target/release/identity-sidecar-webhook \
    exec target/release/examples/webhook_bench "$@"
