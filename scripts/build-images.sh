#!/usr/bin/env bash
# build-images.sh — build and smoke-test both images (Dockerfile.operator,
# Dockerfile.collectors) on a machine that cannot pull from any container registry, only
# from the Debian apt mirror and crates.io. As root, with podman (Debian bookworm).
#
#   scripts/build-images.sh           make the local bases if missing, build, smoke-test,
#                                     print sizes, prune dangling layers (idempotent)
#   scripts/build-images.sh clean     remove the built images, the local bases and caches
#
# The two local bases replace the pinned public bases through the Dockerfiles' build args:
#   localhost/kms-base:bookworm     `debootstrap --variant=minbase bookworm` from the apt
#                                   mirror, imported as an image (RUNTIME_IMAGE of both)
#   localhost/kms-builder:bookworm  kms-base + gcc, pkg-config, libvirt-dev + this host's
#                                   rustup stable toolchain at /usr/local/rust (BUILD_IMAGE;
#                                   Debian's rustc 1.63 is too old for this edition-2024 code)
#
# Knobs (environment):
#   KMS_WORK=/var/tmp/kms-images         rootfs scratch, crates cache, logs
#   KMS_STORAGE_DRIVER=                  podman storage driver (default: podman's own;
#                                        set `vfs` where overlay does not work)
#   KMS_DEBIAN_MIRROR=                   default: the first Debian URI in /etc/apt/sources.list*
#   KMS_RUST_TOOLCHAIN=/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu
#   KMS_TAG=dev                          tag of the built images (localhost/NAME:TAG)
#   KMS_SMOKE_PORT=19443                 port of the collectors' smoke test on 127.0.0.1
#   KMS_RUNTIME=                         OCI runtime (default: podman's, crun; runc on hosts with
#                                        cgroups v1+v2 "hybrid" mounts, which crun refuses)
#   KMS_ULIMITS="nofile=16384:16384 nproc=8192:8192"
#                                        container rlimits: podman raises them to the host's
#                                        hard limits by default, which some sandboxes refuse
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${KMS_WORK:-/var/tmp/kms-images}
TOOLCHAIN=${KMS_RUST_TOOLCHAIN:-/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu}
TAG=${KMS_TAG:-dev}
SMOKE_PORT=${KMS_SMOKE_PORT:-19443}
BASE=localhost/kms-base:bookworm
BUILDER=localhost/kms-builder:bookworm
OPERATOR=localhost/kubevirt-metrics-operator:$TAG
COLLECTORS=localhost/kubevirt-metrics-collectors:$TAG

PODMAN=(podman)
if [[ -n ${KMS_STORAGE_DRIVER:-} ]]; then PODMAN+=(--storage-driver "$KMS_STORAGE_DRIVER"); fi
RUNTIME=${KMS_RUNTIME:-}
if [[ -z $RUNTIME && -d /sys/fs/cgroup/unified ]]; then RUNTIME=runc; fi
if [[ -n $RUNTIME ]]; then PODMAN+=(--runtime "$RUNTIME"); fi
# Options of every `podman build` and `podman run`.
LIMITS=()
for limit in ${KMS_ULIMITS:-nofile=16384:16384 nproc=8192:8192}; do LIMITS+=(--ulimit "$limit"); done

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-images: %s\n' "$*" >&2; exit 1; }

debian_mirror() {
    if [[ -n ${KMS_DEBIAN_MIRROR:-} ]]; then echo "$KMS_DEBIAN_MIRROR"; return; fi
    # deb822 (`URIs: ...`) and one-line (`deb URI suite ...`) sources; the first Debian
    # archive that is not the security archive.
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null \
        | awk '/^URIs:/ {print $2} /^deb / {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' \
        | grep -E '/debian/?$' | grep -v security | head -n 1
}

require_tools() {
    [[ $(id -u) == 0 ]] || die "run as root (debootstrap, podman storage)"
    local missing=()
    for tool in podman debootstrap curl ${RUNTIME:-}; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    if ((${#missing[@]})); then
        log "installing ${missing[*]} with apt"
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

image_exists() { "${PODMAN[@]}" image exists "$1"; }

# localhost/kms-base:bookworm — Debian bookworm minbase (apt, dpkg, bash, coreutils, libc).
make_base() {
    if image_exists "$BASE"; then log "reusing $BASE"; return; fi
    local mirror rootfs="$WORK/rootfs"
    mirror=$(debian_mirror)
    [[ -n $mirror ]] || die "no Debian mirror in /etc/apt/sources.list*; set KMS_DEBIAN_MIRROR"
    log "debootstrap minbase bookworm from $mirror (log: $WORK/debootstrap.log)"
    rm -rf "$rootfs"
    nice -n 19 debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || die "debootstrap failed, see $WORK/debootstrap.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "${PODMAN[@]}" import \
        --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$BASE" >/dev/null
    rm -rf "$rootfs"
}

# localhost/kms-builder:bookworm — the base + C toolchain + libvirt headers + host Rust.
make_builder() {
    if image_exists "$BUILDER"; then log "reusing $BUILDER"; return; fi
    [[ -x $TOOLCHAIN/bin/cargo && -x $TOOLCHAIN/bin/rustc ]] || die "no Rust toolchain at $TOOLCHAIN"
    log "building $BUILDER with $("$TOOLCHAIN/bin/rustc" --version)"
    # The toolchain directory itself is the build context (no copy of ~1.4 GB to a temp dir);
    # its docs are left out.
    local containerfile="$WORK/Containerfile.builder" ignorefile="$WORK/builder.ignore"
    printf 'share/doc\nshare/man\n' >"$ignorefile"
    cat >"$containerfile" <<EOF
FROM $BASE
RUN apt-get update \\
    && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config libvirt-dev ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
COPY . /usr/local/rust/
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
    nice -n 19 "${PODMAN[@]}" build "${LIMITS[@]}" --pull=never --network host \
        -f "$containerfile" --ignorefile "$ignorefile" -t "$BUILDER" "$TOOLCHAIN"
}

# A copy of this host's crates (sources and index) so the builds need not download them;
# crates.io is still reachable from the build for anything missing. A copy, not the host's
# own registry, so a build in a container never races a cargo on the host.
seed_crates() {
    local crates="$WORK/cargo-registry"
    if [[ ! -d $crates && -d $HOME/.cargo/registry ]]; then
        log "seeding $crates from $HOME/.cargo/registry"
        cp -a "$HOME/.cargo/registry" "$crates.tmp" && mv "$crates.tmp" "$crates"
    fi
    mkdir -p "$crates"
}

build_image() {
    local dockerfile=$1 image=$2 version revision
    version=$(awk -F'"' '/^version *=/ {print $2; exit}' "$REPO/Cargo.toml")
    revision=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
    log "building $image from $dockerfile (version $version, revision $revision)"
    # --no-cache: buildah 1.28 reused a cached LABEL layer although REVISION had changed
    # (stale labels). Cheap here: cargo's target directory is a cache mount, not a layer.
    nice -n 19 "${PODMAN[@]}" build "${LIMITS[@]}" --pull=never --no-cache --network host \
        -v "$WORK/cargo-registry:/usr/local/cargo/registry" \
        --build-arg "BUILD_IMAGE=$BUILDER" --build-arg "RUNTIME_IMAGE=$BASE" \
        --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
        -f "$REPO/$dockerfile" -t "$image" "$REPO"
}

smoke_operator() {
    log "smoke test: $OPERATOR"
    # Output captured first: `| grep -q` would close the pipe early (SIGPIPE under pipefail).
    local help crd
    help=$("${PODMAN[@]}" run "${LIMITS[@]}" --rm "$OPERATOR" --help)
    grep -q '^Usage: kubevirt-metrics-operator' <<<"$help" || die "operator --help printed no usage"
    crd=$("${PODMAN[@]}" run "${LIMITS[@]}" --rm "$OPERATOR" crd)
    grep -q '^kind: CustomResourceDefinition' <<<"$crd" || die "operator crd printed no CRD"
    log "operator: --help ok, crd ok ($(wc -l <<<"$crd") lines), runs as $("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$OPERATOR")"
}

smoke_collectors() {
    log "smoke test: $COLLECTORS"
    local help name=kms-smoke-collectors
    help=$("${PODMAN[@]}" run "${LIMITS[@]}" --rm "$COLLECTORS" --help)
    grep -q '^Usage: virt-handler-metrics' <<<"$help" || die "virt-handler-metrics --help printed no usage"
    "${PODMAN[@]}" rm -f "$name" >/dev/null 2>&1 || true
    "${PODMAN[@]}" run "${LIMITS[@]}" -d --name "$name" --network host "$COLLECTORS" \
        --source libvirt --libvirt-uri test:///default --mode full --listen "127.0.0.1:$SMOKE_PORT" >/dev/null
    local body="" ok=0
    for _ in $(seq 1 50); do
        if body=$(curl -fsS "http://127.0.0.1:$SMOKE_PORT/metrics" 2>/dev/null) \
            && grep -q '^kubevirt_metrics_sidecar_' <<<"$body"; then ok=1; break; fi
        sleep 0.2
    done
    if ((!ok)); then
        "${PODMAN[@]}" logs "$name" >&2 || true
        "${PODMAN[@]}" rm -f "$name" >/dev/null 2>&1 || true
        die "collectors image served no kubevirt_metrics_sidecar_ lines on 127.0.0.1:$SMOKE_PORT/metrics"
    fi
    "${PODMAN[@]}" rm -f "$name" >/dev/null
    log "collectors: --help ok, /metrics ok ($(grep -c '^kubevirt_' <<<"$body") kubevirt_ samples, $(grep -c '^kubevirt_metrics_sidecar_' <<<"$body") kubevirt_metrics_sidecar_), runs as $("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$COLLECTORS")"
}

clean() {
    "${PODMAN[@]}" rmi -f "$OPERATOR" "$COLLECTORS" "$BUILDER" "$BASE" 2>/dev/null || true
    "${PODMAN[@]}" image prune -f >/dev/null
    # buildah's cache mounts (the shared cargo target directory): buildah-cache as root,
    # buildah-cache-UID rootless
    rm -rf /var/tmp/buildah-cache /var/tmp/buildah-cache-"$(id -u)" "$WORK"
}

main() {
    case ${1:-build} in
        build) ;;
        clean) clean; exit 0 ;;
        *) die "usage: $0 [build|clean]" ;;
    esac
    require_tools
    mkdir -p "$WORK"
    make_base
    make_builder
    seed_crates
    build_image Dockerfile.operator "$OPERATOR"
    build_image Dockerfile.collectors "$COLLECTORS"
    smoke_operator
    smoke_collectors
    "${PODMAN[@]}" image prune -f >/dev/null
    "${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
        | grep -E 'kms-|kubevirt-metrics-'
}

main "$@"
