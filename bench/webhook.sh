#!/bin/sh
# Benchmark of identity-sidecar-webhook: the `dist` (shipping profile) binary over HTTPS against the tests' fake
# Kubernetes API, 50 keep-alive connections sending pod CREATE AdmissionReviews (ServiceAccount
# cached after the warm-up), 10 seconds per row; prints req/s, p50/p99/p99.9 latency and the
# webhook's CPU per request. Without arguments: back to back (saturation), then paced at
# 1000 admissions/s over the same 50 connections (the latency the API server sees).
#   bench/webhook.sh [--duration SECONDS] [--conns N] [--rate PER_SECOND]
#   bench/webhook.sh --smoke      1 second, back to back: what scripts/test runs
set -eu
cd "$(dirname "$0")/.."
cargo build --profile dist --locked --quiet --bin identity-sidecar-webhook --example webhook_bench
export IDENTITY_SIDECAR_WEBHOOK_BIN=target/dist/identity-sidecar-webhook
if [ "${1:-}" = "--smoke" ]; then
    exec target/dist/examples/webhook_bench --duration 1
fi
if [ $# -gt 0 ]; then
    exec target/dist/examples/webhook_bench "$@"
fi
target/dist/examples/webhook_bench --rate 0
target/dist/examples/webhook_bench --rate 1000 | tail -2
