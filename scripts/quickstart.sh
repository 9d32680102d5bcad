#!/usr/bin/env bash
# The main job on a local default: bring up a local QEMU guest under libvirtd (named like a
# KubeVirt domain, default_testvm), start virt-handler-metrics against it, and show the
# kubevirt_vmi_* series it serves. Debian bookworm, as root.
#
#   scripts/quickstart.sh          run, print the metrics, stop the collector (peers stay up)
#   KEEP_RUNNING=1 scripts/quickstart.sh    leave the collector running on 127.0.0.1:9443
#
# Stop the peers afterwards with: scripts/real-peers.sh down
set -euo pipefail
cd "$(dirname "$0")/.."

LISTEN=${QUICKSTART_LISTEN:-127.0.0.1:9443}
WORK=.work/quickstart
mkdir -p "$WORK"

echo "==> local libvirtd + QEMU/TCG guest (first run installs packages and builds the guest)"
KVMS_TEST_DOMAINS=${KVMS_TEST_DOMAINS:-0} bash scripts/real-peers.sh up

echo "==> building virt-handler-metrics"
cargo build --quiet --locked -p kubevirt-metrics-collectors --bin virt-handler-metrics

echo "==> starting virt-handler-metrics on $LISTEN (source: libvirt qemu:///system, mode: full)"
target/debug/virt-handler-metrics \
  --source libvirt --libvirt-uri qemu:///system \
  --node-name "$(hostname)" --mode full \
  --listen "$LISTEN" --interval 5s \
  >"$WORK/collector.log" 2>&1 &
pid=$!
if [ "${KEEP_RUNNING:-0}" != 1 ]; then
  trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
fi

for _ in $(seq 1 100); do
  curl -fsS "http://$LISTEN/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$WORK/collector.log"; exit 1; }
  sleep 0.2
done
# Two collections apart, so the counters have moved.
sleep 6

echo "==> curl http://$LISTEN/metrics | grep '^kubevirt_vmi_'"
curl -fsS "http://$LISTEN/metrics" | grep '^kubevirt_vmi_' | tee "$WORK/metrics.txt"
count=$(wc -l <"$WORK/metrics.txt")
families=$(cut -d'{' -f1 "$WORK/metrics.txt" | cut -d' ' -f1 | sort -u | wc -l)
echo "==> $count kubevirt_vmi_* series in $families families (log: $WORK/collector.log)"
[ "$count" -gt 0 ]
if [ "${KEEP_RUNNING:-0}" = 1 ]; then
  echo "collector left running as pid $pid; stop it with: kill $pid"
fi
