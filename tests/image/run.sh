#!/bin/sh
# Builds both images from the Dockerfile with buildah (offline, as root) and runs them for real.
# Run by tests/image.rs; usable alone: tests/image/run.sh
#
#  1. scripts/build-static -> the builder stage's output, handed in as `--build-context builder=`
#     (the same script the builder stage runs, so the Dockerfile stays under test);
#  2. a stand-in for the init base (host iptables, see standin-iptables-rootfs) committed as a
#     local image, since no registry is reachable;
#  3. the runtime image's rootfs, mounted read-only, runs its entrypoint as the image's user in a
#     network namespace: /healthz, /readyz and a token through IMDS from a fake Entra ID;
#  4. the init image's entrypoint (init-network) runs from its rootfs in the same namespace, and
#     a request to 169.254.169.254 then reaches the sidecar from (1);
#  5. the webhook image holds its own binary only and runs it as uid 10501;
#  6. every image carries its binary's SBOM at /usr/share/doc/<binary>/sbom.cdx.json and the OCI
#     labels (source, revision, version, licenses, created) from the build arguments, and the
#     binaries' --version names the same commit and date.
# Prints the image sizes. Cleans up (containers, images, namespace, processes) on any exit.
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${IMAGE_TEST_DIR:-$repo/target/image-test}
id=$$
ns=isc-img-$id
img=localhost/identity-sidecar-test:$id
init_img=localhost/identity-sidecar-init-test:$id
webhook_img=localhost/identity-sidecar-webhook-test:$id
node_img=localhost/identity-sidecar-node-test:$id
base_img=localhost/isc-iptables-standin:$id
ctrs=""
pids=""
py=$(python3 -c 'import sys; print(sys.executable)')

say() { printf 'image test: %s\n' "$*"; }
fail() { printf 'image test: FAIL: %s\n' "$*" >&2; exit 1; }
cleanup() {
    rc=$?
    set +e
    for p in $pids; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
    for c in $ctrs; do buildah umount "$c" >/dev/null 2>&1; buildah rm "$c" >/dev/null 2>&1; done
    buildah rmi "$img" "$init_img" "$webhook_img" "$node_img" "$base_img" >/dev/null 2>&1
    if [ "$rc" != 0 ] && [ -s "$work/sidecar.log" ]; then
        echo "--- sidecar log"
        tail -n 30 "$work/sidecar.log"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work"
rm -f "$work/sidecar.log" "$work/entra.jsonl"

# What is built: the build arguments a release passes (docs/releasing.md), from git.
commit=$(git -C "$repo" rev-parse HEAD)
git -C "$repo" diff --quiet HEAD -- || commit="$commit-dirty"
epoch=$(git -C "$repo" log -1 --format=%ct)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)
source_url=https://github.com/identity-sidecar/identity-sidecar

say "building the static binary (scripts/build-static)"
"$repo/scripts/build-static" "$work/builder/out"
# FROM scratch has no libc: the binary must be static.
case $(ldd "$work/builder/out/identity-sidecar" 2>&1) in
    *"statically linked"* | *"not a dynamic"*) ;;
    *) fail "binary is not static: $(ldd "$work/builder/out/identity-sidecar" 2>&1)" ;;
esac

# The production binary has no mock Entra ID: `dev` / `mock-aad` explain and exit 2, and
# neither the mock's module nor its crates left a trace (panic locations survive stripping).
bin="$work/builder/out/identity-sidecar"
for sub in dev mock-aad; do
    rc=0; out=$("$bin" "$sub" 2>&1) || rc=$?
    [ "$rc" = 2 ] || fail "'identity-sidecar $sub' exited $rc, want 2: $out"
    case $out in *"not built into this binary"*) ;; *) fail "'$sub' said: $out" ;; esac
done
for needle in mock_aad jsonwebtoken rcgen "unknown admin endpoint"; do
    if grep -qaF "$needle" "$bin"; then fail "the production binary contains '$needle'"; fi
done
say "production binary: no mock (dev/mock-aad exit 2, no mock code or crates)"

say "stand-in for the init base image"
"$repo/tests/image/standin-iptables-rootfs" "$work/iptables-base"
c=$(buildah from scratch)
ctrs="$ctrs $c"
buildah copy "$c" "$work/iptables-base/" / >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
buildah commit -q "$c" "$base_img" >/dev/null

build() { # build TARGET TAG
    buildah build --isolation chroot --pull=never --quiet \
        --build-context "builder=$work/builder" \
        --build-arg "INIT_BASE=$base_img" \
        --build-arg "VCS_REF=$commit" --build-arg "SOURCE_DATE_EPOCH=$epoch" \
        --build-arg "CREATED=$created" --build-arg "VERSION=$version" \
        -f "$repo/Dockerfile" --target "$1" -t "$2" "$repo" >/dev/null
}
say "buildah build --target runtime"
build runtime "$img"
say "buildah build --target init"
build init "$init_img"

user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$img")
[ "$user" = "10501:10501" ] || fail "runtime image user is '$user', want 10501:10501"
entry=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$img")
say "runtime image: user $user, entrypoint $entry"

size() { buildah images --format '{{.Size}}' "$1" | head -n1; }
runtime_size=$(size "$img")
init_size=$(size "$init_img")

# --- the runtime image, read-only root, as its user, in a namespace of its own ---------------
c=$(buildah from --pull=never "$img")
ctrs="$ctrs $c"
root=$(buildah mount "$c")
# The container runtime creates mount points for volumes; so do we, before going read-only.
mkdir -p "$root/var/run/secrets/azure/tokens"
mkdir -p "$work/tokens"
"$py" - "$work/tokens/azure-identity-token" <<'PY'
import base64, json, sys, time
e = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
now = int(time.time())
jwt = e({"alg": "RS256", "kid": "k"}) + "." + e({"aud": ["api://AzureADTokenExchange"],
      "iss": "https://oidc.example", "sub": "system:serviceaccount:default:app",
      "iat": now, "exp": now + 3600}) + ".c2ln"
open(sys.argv[1], "w").write(jwt)
PY
chmod 0755 "$work/tokens"
chmod 0644 "$work/tokens/azure-identity-token"

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 169.254.169.254/32 dev lo

ip netns exec "$ns" "$py" "$repo/tests/pod/fakes.py" entra --host 127.0.0.1 --port 18080 \
    --log "$work/entra.jsonl" --token-file "$work/tokens/azure-identity-token" > "$work/entra.out" 2>&1 &
pids="$pids $!"

entrypoint=/usr/local/bin/identity-sidecar
# The image's user, read-only root, no environment, no shell: only the image's own files.
ip netns exec "$ns" env user="$user" unshare --mount --propagation private sh -c '
    root=$1; tokens=$2; shift 2
    mount --bind "$root" "$root"
    mount -o remount,bind,ro "$root"
    mount --bind -o ro "$tokens" "$root/var/run/secrets/azure/tokens"
    if touch "$root/.rw-probe" 2>/dev/null; then echo "root file system is writable" >&2; exit 97; fi
    chroot=$(command -v chroot)
    exec env -i "$chroot" --userspec="$user" "$root" "$@"
' sh "$root" "$work/tokens" \
    $entrypoint serve \
    --client-id 11111111-1111-1111-1111-111111111111 \
    --tenant-id 44444444-4444-4444-4444-444444444444 \
    --token-file /var/run/secrets/azure/tokens/azure-identity-token \
    --authority-host http://127.0.0.1:18080 \
    --listen 127.0.0.1:8000 > "$work/sidecar.log" 2>&1 &
pids="$pids $!"

client() { ip netns exec "$ns" "$py" "$repo/tests/pod/client.py" "$@"; }
client wait http://127.0.0.1:8000/healthz 30 || fail "/healthz never answered 200"
say "/healthz 200 from the image's entrypoint (uid $user, read-only root)"
client wait http://127.0.0.1:8000/readyz 10 || fail "/readyz never answered 200"
# `identity-sidecar probe`, from the image, as its user (the legacy overlay's postStart start-up wait).
ip netns exec "$ns" env -i "$(command -v chroot)" --userspec="$user" "$root" \
    /usr/local/bin/identity-sidecar probe /readyz || fail "exec probe /readyz failed"
say "exec probe (identity-sidecar probe /readyz) from the image: ok"
token_url='http://127.0.0.1:8000/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com'
got=$(client get "$token_url" --metadata)
case $got in
    "200 "*fake-entra-access-token-for-pod-test*) say "token via IMDS from the image: ok" ;;
    *) fail "token request: $got" ;;
esac

# The runtime image has no iptables: init-network there must say where to run it instead.
out=$(ip netns exec "$ns" env -i "$(command -v chroot)" "$root" \
    /usr/local/bin/identity-sidecar init-network 2>&1) && fail "init-network without iptables succeeded"
case $out in
    *"no iptables program found"*"init image"*) say "init-network in the runtime image: clear error" ;;
    *) fail "init-network without iptables said: $out" ;;
esac

# --- the init image: its entrypoint installs the rules; IMDS then reaches the sidecar ---------
c=$(buildah from --pull=never "$init_img")
ctrs="$ctrs $c"
init_root=$(buildah mount "$c")
init_entry=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$init_img")
[ "$init_entry" = '[/usr/local/bin/identity-sidecar init-network]' ] \
    || fail "init entrypoint is $init_entry"
ip netns exec "$ns" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$(command -v chroot)" "$init_root" /usr/local/bin/identity-sidecar init-network \
    || fail "init-network from the init image failed"
ip netns exec "$ns" iptables-nft -t nat -S | grep -q -- '-j IDENTITY_SIDECAR' \
    || fail "init image installed no rules"
got=$(client get "$(echo "$token_url" | sed "s/127.0.0.1:8000/169.254.169.254/")" --metadata)
case $got in
    "200 "*fake-entra-access-token-for-pod-test*) say "init image: 169.254.169.254 now reaches the sidecar" ;;
    *) fail "token via 169.254.169.254 after init-network: $got" ;;
esac

# --- the webhook image: its own binary, not the sidecar's, run as its user -------------------
say "buildah build --target webhook"
build webhook "$webhook_img"
wuser=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$webhook_img")
[ "$wuser" = "10501:10501" ] || fail "webhook image user is '$wuser', want 10501:10501"
c=$(buildah from --pull=never "$webhook_img")
ctrs="$ctrs $c"
wroot=$(buildah mount "$c")
[ ! -e "$wroot/usr/local/bin/identity-sidecar" ] || fail "the webhook image carries the sidecar binary"
out=$(env -i "$(command -v chroot)" --userspec="$wuser" "$wroot" \
    /usr/local/bin/identity-sidecar-webhook --version 2>&1) || fail "webhook --version: $out"
case $out in
    identity-sidecar-webhook*) say "webhook image: $out as uid $wuser" ;;
    *) fail "webhook --version said: $out" ;;
esac
say "webhook image size: $(size "$webhook_img")"

# --- what a review reads from each image: OCI labels, the SBOM, --version -------------------
say "buildah build --target node"
build node "$node_img"
c=$(buildah from --pull=never "$node_img")
ctrs="$ctrs $c"
nroot=$(buildah mount "$c")
cmp "$nroot/usr/share/doc/identity-sidecar-node/sbom.cdx.json" \
    "$work/builder/out/identity-sidecar-node.cdx.json" || fail "node image: SBOM missing or not the build's"
label() { buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"org.opencontainers.image.$2\"}}" "$1"; }
for image in "$img" "$init_img" "$webhook_img" "$node_img"; do
    for kv in "source=$source_url" "revision=$commit" "version=$version" \
        "licenses=MIT OR Apache-2.0" "created=$created"; do
        got=$(label "$image" "${kv%%=*}")
        [ "$got" = "${kv#*=}" ] || fail "$image: label org.opencontainers.image.${kv%%=*} is '$got', want '${kv#*=}'"
    done
done
say "OCI labels on all four images: revision $commit, version $version, created $created"
cmp "$root/usr/share/doc/identity-sidecar/sbom.cdx.json" "$work/builder/out/identity-sidecar.cdx.json" \
    || fail "runtime image: SBOM missing or not the build's"
cmp "$init_root/usr/share/doc/identity-sidecar/sbom.cdx.json" "$work/builder/out/identity-sidecar.cdx.json" \
    || fail "init image: SBOM missing or not the build's"
cmp "$wroot/usr/share/doc/identity-sidecar-webhook/sbom.cdx.json" \
    "$work/builder/out/identity-sidecar-webhook.cdx.json" || fail "webhook image: SBOM missing or not the build's"
say "SBOMs in the images at /usr/share/doc/<binary>/sbom.cdx.json"
want_version="$version (commit $commit, built $created)"
v=$(env -i "$(command -v chroot)" --userspec="$user" "$root" /usr/local/bin/identity-sidecar --version)
[ "$v" = "identity-sidecar $want_version" ] || fail "runtime image --version: '$v', want 'identity-sidecar $want_version'"
[ "$out" = "identity-sidecar-webhook $want_version" ] \
    || fail "webhook image --version: '$out', want 'identity-sidecar-webhook $want_version'"
nv=$(env -i "$(command -v chroot)" "$nroot" /usr/local/bin/identity-sidecar-node --version)
[ "$nv" = "identity-sidecar-node $want_version" ] || fail "node image --version: '$nv', want 'identity-sidecar-node $want_version'"
say "--version: $v"

say "runtime image size: $runtime_size"
say "init image size: $init_size (on the stand-in base: host iptables)"
say "binary size: $(du -h "$work/builder/out/identity-sidecar" | cut -f1)"
say "ok"
