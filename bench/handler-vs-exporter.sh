#!/usr/bin/env bash
# virt-handler-metrics (--source libvirt) vs Debian's prometheus-libvirt-exporter, on the
# same libvirtd, in one run: 100 and 1000 test-driver domains (test+unix:///default) and
# the real QEMU/TCG guest (qemu:///system). For each: the libvirt bulk-stats call alone,
# our whole collection pass, scrape latency (median), CPU time per scrape, RSS, ratios; at
# 1000 domains also the handler's RSS over 10,000 scrapes and the in-process RSS over
# 10,000 passes. The measuring code is collectors/benches/handler_vs_exporter.rs.
#
#   scripts/real-peers.sh up && bench/handler-vs-exporter.sh
#
# Env: SCRAPES (default 30), ITERATIONS (30), RSS_SCRAPES (10000), RSS_PASSES (10000).
# Release builds, once. The test-domain count is put back as it was afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

SCRAPES=${SCRAPES:-30}
ITERATIONS=${ITERATIONS:-30}
RSS_SCRAPES=${RSS_SCRAPES:-10000}
RSS_PASSES=${RSS_PASSES:-10000}
PEERS=scripts/real-peers.sh

# shellcheck source=bench/libvirt-common.sh
source bench/libvirt-common.sh

original=$TEST_DOMAINS
trap 'bash $PEERS test-domains "$original" >/dev/null' EXIT

echo "== machine: $(nproc) cores, $(uname -r), libvirt $(virsh --version), prometheus-libvirt-exporter $(dpkg-query -W -f='${Version}' prometheus-libvirt-exporter)"
bash $PEERS test-domains 100 >/dev/null
run "test driver, 100 domains" "$TEST_URI"
bash $PEERS test-domains 1000 >/dev/null
run "test driver, 1000 domains (the exporter stops at 512: libvirt-go ListDomains)" "$TEST_URI" \
  --rss-scrapes "$RSS_SCRAPES" --rss-passes "$RSS_PASSES"
if [[ $GUEST == 1 ]]; then
  run "QEMU/TCG guest $GUEST_DOMAIN" "$QEMU_URI"
fi
