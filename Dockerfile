# syntax=docker/dockerfile:1
# identity-sidecar images, two targets from one static binary:
#
#   runtime (default)  the sidecar: FROM scratch, the binary, a CA bundle, uid 1501, no shell.
#                      Needs nothing writable: run it with readOnlyRootFilesystem: true.
#   init               the init container of the imds-intercept overlay: the same binary on a
#                      distroless iptables base; its entrypoint is `identity-sidecar init-network`.
#   webhook            the admission webhook (manifests/webhook): FROM scratch, its own binary
#                      (identity-sidecar-webhook), uid 1501; the per-pod image does not carry it.
#
#   docker build -t identity-sidecar .                 (or: buildah build ...)
#   docker build --target init -t identity-sidecar-init .
#   docker build --target webhook -t identity-sidecar-webhook .
#
# Build arguments: RUST_VERSION, BUILDER_IMAGE, RUNTIME_BASE (scratch, or a distroless static
# image), INIT_BASE (needs iptables-nft and/or iptables-legacy in /usr/sbin or PATH).
# The builder stage only runs scripts/build-static; the image test (tests/image.rs) runs the same
# script on the host and hands its output in as this stage (`--build-context builder=DIR`).
ARG RUST_VERSION=1.95
ARG BUILDER_IMAGE=docker.io/library/rust:${RUST_VERSION}-bookworm
ARG RUNTIME_BASE=scratch
ARG INIT_BASE=registry.k8s.io/build-image/distroless-iptables:v0.7.8

FROM ${BUILDER_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# Static musl release binary -> /out/identity-sidecar; CA bundle -> /out/etc/ssl/certs/.
RUN scripts/build-static /out

FROM ${INIT_BASE} AS init
COPY --from=builder /out/identity-sidecar /usr/local/bin/identity-sidecar
# iptables needs uid 0 plus NET_ADMIN (and NET_RAW for the legacy backend); the pod spec adds
# only those capabilities.
USER 0:0
ENTRYPOINT ["/usr/local/bin/identity-sidecar", "init-network"]

FROM ${RUNTIME_BASE} AS webhook
# No CA bundle: the webhook trusts only the cluster's CA (in-cluster service account).
COPY --from=builder /out/identity-sidecar-webhook /usr/local/bin/identity-sidecar-webhook
USER 1501:1501
EXPOSE 9443
ENTRYPOINT ["/usr/local/bin/identity-sidecar-webhook"]
CMD ["serve"]

# Last, so it stays the default target.
FROM ${RUNTIME_BASE} AS runtime
COPY --from=builder /out/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/identity-sidecar /usr/local/bin/identity-sidecar
# 1501 = identity_sidecar::init_network::SIDECAR_UID: init-network exempts this uid from the
# IMDS redirect. Change both together (or pass init-network --uid).
USER 1501:1501
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/identity-sidecar"]
CMD ["serve"]
