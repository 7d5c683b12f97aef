# syntax=docker/dockerfile:1
# identity-sidecar images, four targets from one static build (three binaries):
#
#   runtime (default)  the sidecar: FROM scratch, the binary, a CA bundle, uid 10501, no shell.
#                      Needs nothing writable: run it with readOnlyRootFilesystem: true.
#   init               the init container of the imds-intercept overlay: the same binary on a
#                      distroless iptables base; its entrypoint is `identity-sidecar init-network`.
#   webhook            the admission webhook (manifests/webhook): FROM scratch, its own binary
#                      (identity-sidecar-webhook), uid 10501; the per-pod image does not carry it.
#   node               the node agent of node mode (manifests/node): FROM scratch, its own binary
#                      (identity-sidecar-node), root with the capabilities its DaemonSet adds.
#
#   docker build -t identity-sidecar .                 (or: buildah build ...)
#   docker build --target init -t identity-sidecar-init .
#   docker build --target webhook -t identity-sidecar-webhook .
#   docker build --target node -t identity-sidecar-node .
#
# Build arguments: RUST_VERSION, BUILDER_IMAGE, RUNTIME_BASE (scratch, or a distroless static
# image), INIT_BASE (needs iptables-nft and/or iptables-legacy in /usr/sbin or PATH), and what
# the build is, which the binaries' `--version` and the images' OCI labels carry (the build
# context has no .git; docs/releasing.md gives the full command):
#   VCS_REF            the commit (git rev-parse HEAD)        -> org.opencontainers.image.revision
#   SOURCE_DATE_EPOCH  the commit's time (git log -1 --format=%ct): the build date in --version
#                      and the SBOMs; BuildKit also stamps the image config with it
#   CREATED            the same instant as RFC 3339 (date -u -d @$SOURCE_DATE_EPOCH
#                      +%Y-%m-%dT%H:%M:%SZ)                   -> org.opencontainers.image.created
#   VERSION            the package version (Cargo.toml)      -> org.opencontainers.image.version
#   IMAGE_SOURCE       the repository URL                    -> org.opencontainers.image.source
#
# Each image carries its binary's CycloneDX SBOM (scripts/build-static) at
# /usr/share/doc/<binary>/sbom.cdx.json, and the binary embeds its dependency list (cargo
# auditable), which trivy, grype and syft read from the image without the SBOM.
#
# Base images are named by tag here. A release pins each by digest through the same arguments,
# with digests read from the registry at release time (`crane digest IMAGE:TAG`, `skopeo inspect
# docker://IMAGE:TAG`, or `docker buildx imagetools inspect`; for a multi-arch image, the index
# digest), never copied from anywhere else:
#   docker build \
#     --build-arg BUILDER_IMAGE=docker.io/library/rust:1.95-bookworm@sha256:<index digest> \
#     --build-arg INIT_BASE=registry.k8s.io/build-image/distroless-iptables:v0.7.8@sha256:<index digest> .
# (`scratch` has no digest.) docs/kubernetes.md#2-images.
#
# Platforms: the builder runs on the target platform and maps TARGETARCH (set by buildx) to the
# musl target: amd64 -> x86_64-unknown-linux-musl, arm64 -> aarch64-unknown-linux-musl, so
# `docker buildx build --platform linux/arm64` works where that platform can run (natively or
# under QEMU). Only linux/amd64 is built and tested in this repository's CI.
#
# The builder stage only runs scripts/build-static; the image test (tests/image.rs) runs the same
# script on the host and hands its output in as this stage (`--build-context builder=DIR`).
ARG RUST_VERSION=1.95
ARG BUILDER_IMAGE=docker.io/library/rust:${RUST_VERSION}-bookworm
ARG RUNTIME_BASE=scratch
ARG INIT_BASE=registry.k8s.io/build-image/distroless-iptables:v0.7.8
ARG VCS_REF=
ARG SOURCE_DATE_EPOCH=
ARG CREATED=
ARG VERSION=
ARG IMAGE_SOURCE=https://github.com/identity-sidecar/identity-sidecar

FROM ${BUILDER_IMAGE} AS builder
ARG TARGETARCH
RUN case "${TARGETARCH:-amd64}" in \
        amd64) echo x86_64-unknown-linux-musl ;; \
        arm64) echo aarch64-unknown-linux-musl ;; \
        *) echo "unsupported TARGETARCH ${TARGETARCH}: add its musl target here" >&2; exit 1 ;; \
    esac > /rust-target \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
# cargo-auditable and cargo-cyclonedx, pinned (the layer is cached until the pins change).
COPY scripts/install-cargo-tools scripts/install-cargo-tools
RUN scripts/install-cargo-tools cargo-auditable cargo-cyclonedx
# Dependencies first, in a layer of their own: the manifest, the lock file and the build script
# with stand-in sources, built exactly as below; a source change then rebuilds only this crate.
# (Cargo checks that every declared target's file exists: each gets a one-line stand-in.)
COPY Cargo.toml Cargo.lock ./
COPY scripts/build-static scripts/build-static
RUN for f in $(sed -n 's/^path = "\(.*\)"/\1/p' Cargo.toml) examples/minimal_server.rs \
        $(sed -n '/^\[\[example\]\]/{n;s/^name = "\(.*\)"/examples\/\1.rs/p;}' Cargo.toml) \
        $(sed -n '/^\[\[test\]\]/{n;s/^name = "\(.*\)"/tests\/\1.rs/p;}' Cargo.toml); do \
        mkdir -p "$(dirname "$f")" && echo 'fn main() {}' > "$f"; \
    done \
 && IDENTITY_SIDECAR_TARGET=$(cat /rust-target) scripts/build-static /tmp/deps \
 && rm -rf /tmp/deps src examples tests \
      target/*/dist/identity-sidecar* target/*/dist/deps/identity_sidecar* \
      target/*/dist/deps/libidentity_sidecar* target/*/dist/.fingerprint/identity-sidecar-*
COPY . .
# Static musl release binaries -> /out/identity-sidecar{,-webhook}, their SBOMs ->
# /out/*.cdx.json; CA bundle -> /out/etc/ssl/certs/.
ARG VCS_REF
ARG SOURCE_DATE_EPOCH
RUN IDENTITY_SIDECAR_TARGET=$(cat /rust-target) IDENTITY_SIDECAR_COMMIT="${VCS_REF}" \
    SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH}" scripts/build-static /out

FROM ${INIT_BASE} AS init
COPY --from=builder /out/identity-sidecar /usr/local/bin/identity-sidecar
COPY --from=builder /out/identity-sidecar.cdx.json /usr/share/doc/identity-sidecar/sbom.cdx.json
ARG VCS_REF
ARG CREATED
ARG VERSION
ARG IMAGE_SOURCE
LABEL org.opencontainers.image.title="identity-sidecar-init" \
      org.opencontainers.image.source="${IMAGE_SOURCE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
# iptables needs uid 0 plus NET_ADMIN (and NET_RAW for the legacy backend); the pod spec adds
# only those capabilities.
USER 0:0
ENTRYPOINT ["/usr/local/bin/identity-sidecar", "init-network"]

FROM ${RUNTIME_BASE} AS webhook
# No CA bundle: the webhook trusts only the cluster's CA (in-cluster service account).
COPY --from=builder /out/identity-sidecar-webhook /usr/local/bin/identity-sidecar-webhook
COPY --from=builder /out/identity-sidecar-webhook.cdx.json \
     /usr/share/doc/identity-sidecar-webhook/sbom.cdx.json
ARG VCS_REF
ARG CREATED
ARG VERSION
ARG IMAGE_SOURCE
LABEL org.opencontainers.image.title="identity-sidecar-webhook" \
      org.opencontainers.image.source="${IMAGE_SOURCE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
USER 10501:10501
EXPOSE 9443
ENTRYPOINT ["/usr/local/bin/identity-sidecar-webhook"]
CMD ["serve"]

# The node agent of node mode (manifests/node): root with the capabilities its DaemonSet adds.
FROM ${RUNTIME_BASE} AS node
COPY --from=builder /out/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/identity-sidecar-node /usr/local/bin/identity-sidecar-node
COPY --from=builder /out/identity-sidecar-node.cdx.json \
     /usr/share/doc/identity-sidecar-node/sbom.cdx.json
ARG VCS_REF
ARG CREATED
ARG VERSION
ARG IMAGE_SOURCE
LABEL org.opencontainers.image.title="identity-sidecar-node" \
      org.opencontainers.image.source="${IMAGE_SOURCE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
USER 0:0
ENTRYPOINT ["/usr/local/bin/identity-sidecar-node"]

# Last, so it stays the default target.
FROM ${RUNTIME_BASE} AS runtime
COPY --from=builder /out/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/identity-sidecar /usr/local/bin/identity-sidecar
COPY --from=builder /out/identity-sidecar.cdx.json /usr/share/doc/identity-sidecar/sbom.cdx.json
ARG VCS_REF
ARG CREATED
ARG VERSION
ARG IMAGE_SOURCE
LABEL org.opencontainers.image.title="identity-sidecar" \
      org.opencontainers.image.source="${IMAGE_SOURCE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
# 10501 = identity_sidecar::init_network::SIDECAR_UID: init-network exempts this uid from the
# IMDS redirect. Change both together (or pass init-network --uid).
USER 10501:10501
# No EXPOSE: the sidecar listens on the pod's loopback only (127.0.0.1:8000), which no other pod
# and no Service can reach; docs/kubernetes.md says why.
ENTRYPOINT ["/usr/local/bin/identity-sidecar"]
CMD ["serve"]
