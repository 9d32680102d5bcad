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

log "offline tools (kubectl, helm, Python validators)"
bash scripts/install-tools.sh

export PATH="$PWD/.work/bin:$PATH"

# The real Kubernetes API server (envtest pair) and KubeVirt's own launcher/virt-handler code
# as a test peer, both shipped beside the project in ../shared. A cluster named by KUBECONFIG
# wins over the local API server.
log "Kubernetes API server assets and the KubeVirt peer"
command -v xz >/dev/null || { apt-get update -qq && apt-get install -y -qq xz-utils >/dev/null; }
if [ -z "${KUBECONFIG:-}" ] && [ -z "${KUBEBUILDER_ASSETS:-}" ] && [ -f ../shared/k8s/assets.sh ]; then
  KUBEBUILDER_ASSETS=$(bash ../shared/k8s/assets.sh)
  export KUBEBUILDER_ASSETS
fi
if [ -z "${KUBEVIRT_PEER:-}" ] && [ -f ../shared/kubevirt-peer/unpack.sh ]; then
  KUBEVIRT_PEER=$(bash ../shared/kubevirt-peer/unpack.sh)
  export KUBEVIRT_PEER
fi
echo "KUBECONFIG=${KUBECONFIG:-} KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS:-} KUBEVIRT_PEER=${KUBEVIRT_PEER:-}"

log "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

log "manifests (kustomize render + offline schema validation, promtool rules, Helm chart)"
bash scripts/validate-config.sh
bash scripts/validate-chart.sh

log "tests"
mkdir -p .work
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee .work/test-output.log
status=${PIPESTATUS[0]}
set -e

# One closing line for the whole run, printed whatever the outcome (cargo prints one per test
# binary, the last of which is usually an empty doc-test run). A test that skipped prints a
# `SKIPPED test:` line and returns early, which cargo counts as passed: it is counted here as
# skipped, not passed; `#[ignore]`d tests count as skipped too.
read -r passed failed skipped < <(awk '
  /^test result:/ { p += $4; f += $6; i += $8 }
  /^SKIPPED test:/ { s += 1 }
  END { printf "%d %d %d\n", p - s, f, s + i }' .work/test-output.log)
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "cargo test exited with $status before every test ran (a build error?): see .work/test-output.log"
fi
# CI (.ci/run sets REQUIRE_NO_SKIPS=1) runs everything: a skipped test fails the run.
if [ "${REQUIRE_NO_SKIPS:-0}" = 1 ] && [ "$skipped" -gt 0 ]; then
  echo "REQUIRE_NO_SKIPS=1 and $skipped tests skipped:"
  grep '^SKIPPED' .work/test-output.log || true
  [ "$status" -ne 0 ] || status=1
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
