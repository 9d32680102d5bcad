#!/usr/bin/env bash
# virt-handler-metrics' launcher source at N = 10, 100, 400 VMIs against KubeVirt v1.9.0's
# own virt-launcher command servers (one socket per VMI, stats of a real QEMU guest varied
# per VMI) and KubeVirt's own virt-handler /metrics on the same launchers, in one run:
# our pass vs the bare gRPC round trips (ratio), CPU per pass, first pass vs dial+Info+calls,
# KubeVirt's scrape, our cached scrape, the sidecar's RSS/PSS/anonymous memory and its
# growth per VMI, complement mode's reads of KubeVirt's page, and at the largest N the
# sidecar's memory and heap over SOAK_COLLECTIONS collections and SOAK_SCRAPES scrapes.
# The measuring code is collectors/benches/launcher_scale.rs.
#
#   bench/launcher-scale.sh
#
# Env: VMIS (10,100,400), ITERATIONS and PAIR_SECONDS (back-to-back pairs of our pass and
# the bare calls per N: at least 30, and for at least 20 s), SCRAPES (300),
# KUBEVIRT_SCRAPES (10), COMPLEMENT_SECONDS (15), SOAK_COLLECTIONS (10000), SOAK_SCRAPES (10000; 0 and 0 skip
# the soak), KEPT_ONLY=1 (only our pass against the bare calls on kept connections),
# KUBEVIRT_PEER (else ../shared/kubevirt-peer/unpack.sh), WORKER_THREADS (the sidecar's
# --worker-threads for its runtime and the passes measured here; default the sidecar's).
# Release build, once.
set -euo pipefail
cd "$(dirname "$0")/.."

VMIS=${VMIS:-10,100,400}
STATS=$(realpath "${STATS_FILE:-../shared/kubevirt-peer/domainstats-ci-linux.json}")
PEER=${KUBEVIRT_PEER:-$(bash ../shared/kubevirt-peer/unpack.sh)}
[[ -x $PEER ]] || { echo "no KubeVirt peer (KUBEVIRT_PEER or ../shared/kubevirt-peer)" >&2; exit 1; }

echo "== building (release)"
cargo bench --quiet -p kubevirt-metrics-collectors --bench launcher_scale --no-run 2>/dev/null
echo "== machine: $(nproc) cores, $(uname -r), $(free -g | awk '/Mem:/{print $2}') GiB RAM, peer $(sha256sum "$PEER" | cut -c1-12) (KubeVirt v1.9.0), load $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench --quiet -p kubevirt-metrics-collectors --bench launcher_scale -- \
  --peer "$PEER" --stats-file "$STATS" --vmis "$VMIS" \
  --iterations "${ITERATIONS:-30}" --pair-seconds "${PAIR_SECONDS:-20}" --scrapes "${SCRAPES:-300}" \
  --kubevirt-scrapes "${KUBEVIRT_SCRAPES:-10}" --complement-seconds "${COMPLEMENT_SECONDS:-15}" \
  --soak-collections "${SOAK_COLLECTIONS:-10000}" --soak-scrapes "${SOAK_SCRAPES:-10000}" \
  ${KEPT_ONLY:+--kept-only} ${WORKER_THREADS:+--worker-threads "$WORKER_THREADS"}
