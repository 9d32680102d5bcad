#!/usr/bin/env bash
# virt-handler-metrics --source libvirt vs Debian's prometheus-libvirt-exporter on N real
# QEMU/TCG guests under libvirtd (each with disk, NIC and balloon, booted then paused:
# `scripts/real-peers.sh qemu-domains N`; the running main guest makes N+1), in one run per
# N: the libvirt bulk-stats call alone, our pass, their ratio, the exporter's scrape, ours
# (cached), CPU per scrape (and libvirtd's), RSS/PSS/anon, and what each page holds by
# family. At the largest N also the handler's memory over RSS_SCRAPES scrapes while it
# collects every 100 ms, and in-process memory and heap over RSS_PASSES passes. Then the
# leak question on the test driver: LEAK_PASSES in-process passes over 1000 test domains,
# heap in use (a leak) against the allocator's free memory (fragmentation).
# The measuring code is collectors/benches/handler_vs_exporter.rs.
#
#   scripts/real-peers.sh up && bench/libvirt-qemu.sh
#
# Env: QEMU_DOMAINS (10 30), SCRAPES (30), ITERATIONS (30), RSS_SCRAPES (10000),
# RSS_PASSES (2000), LEAK_PASSES (20000; 0 skips). The extra guests and the test-domain
# count are put back as they were afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

QEMU_DOMAINS=${QEMU_DOMAINS:-10 30}
PEERS=scripts/real-peers.sh
ITERATIONS=${ITERATIONS:-30}
SCRAPES=${SCRAPES:-30}
# shellcheck source=bench/libvirt-common.sh
source bench/libvirt-common.sh

original_qemu=$(bash $PEERS status 2>/dev/null | awk -F': ' '/extra QEMU guests/{print $2}')
original_test=$TEST_DOMAINS
trap 'bash $PEERS qemu-domains "${original_qemu:-0}" >/dev/null; bash $PEERS test-domains "$original_test" >/dev/null' EXIT

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r), libvirt $(virsh --version), QEMU $(qemu-system-x86_64 --version | awk 'NR==1{print $4}') accel=$ACCEL, prometheus-libvirt-exporter $(dpkg-query -W -f='${Version}' prometheus-libvirt-exporter)"
largest=$(tr ' ' '\n' <<<"$QEMU_DOMAINS" | sort -n | tail -1)
for n in $QEMU_DOMAINS; do
  bash $PEERS qemu-domains "$n"
  extra=()
  ((n == largest)) && extra=(--rss-scrapes "${RSS_SCRAPES:-10000}" --rss-passes "${RSS_PASSES:-2000}")
  run "$((n + 1)) QEMU/TCG guests ($n paused + the running $GUEST_DOMAIN)" "$QEMU_URI" "${extra[@]}"
done
if ((${LEAK_PASSES:-20000} > 0)); then
  bash $PEERS test-domains 1000 >/dev/null
  run "leak check: test driver, 1000 domains" "$TEST_URI" --iterations 5 --scrapes 5 --rss-passes "${LEAK_PASSES:-20000}"
fi
