#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian bookworm machine (as root): brings up the real
# peers the tests use (libvirtd + a QEMU/TCG guest, the libvirt test driver, Prometheus and
# promtool), installs the offline tools (kubectl for strategic-merge proofs and kustomize,
# Python validators), then runs every Rust test and the manifest checks.
#
# Idempotent: a second run reuses what the first one installed and started.
# Set KEEP_PEERS=1 to leave the peers running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .work

log() { printf '\n==> %s\n' "$*"; }

log "real peers (libvirtd, QEMU guest, Prometheus)"
bash scripts/real-peers.sh up
if [ "${KEEP_PEERS:-0}" != 1 ]; then
  trap 'bash scripts/real-peers.sh down >.work/peers-down.log 2>&1 || true' EXIT
fi

log "offline tools (kubectl, Python validators)"
bash scripts/install-tools.sh

export PATH="$PWD/.work/bin:$PATH"

log "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

log "manifests (kustomize render + offline schema validation)"
bash scripts/validate-config.sh

log "tests"
mkdir -p .work
cargo test --workspace --locked 2>&1 | tee .work/test-output.log

# One closing line for the whole run (cargo prints one per test binary, the last of which is
# usually an empty doc-test run).
awk '/^test result:/ { p += $4; f += $6 } /^SKIPPED test:/ { s += 1 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' .work/test-output.log
