# Sourced by the libvirt benchmarks (handler-vs-exporter.sh, libvirt-qemu.sh): loads the real
# peers' state, builds the handler and the measuring bench once (release), and defines
# `run LABEL URI [extra args]`, one measurement of virt-handler-metrics against
# prometheus-libvirt-exporter on one libvirt URI (collectors/benches/handler_vs_exporter.rs).
# Expects PEERS, ITERATIONS and SCRAPES to be set by the caller.
state=${KVMS_PEERS_DIR:-/var/tmp/kvms-peers}/state.env
[[ -f $state ]] || { echo "peers not up: run $PEERS up" >&2; exit 1; }
# shellcheck disable=SC1090
source "$state"

echo "== building (release)"
cargo build --release --quiet -p kubevirt-metrics-collectors --bin virt-handler-metrics
cargo bench --quiet -p kubevirt-metrics-collectors --bench handler_vs_exporter --no-run 2>/dev/null
HANDLER=$PWD/target/release/virt-handler-metrics

run() { # run LABEL URI [extra args]
  local label=$1 uri=$2; shift 2
  cargo bench --quiet -p kubevirt-metrics-collectors --bench handler_vs_exporter -- \
    --label "$label" --uri "$uri" --handler-bin "$HANDLER" --exporter-bin "$LIBVIRT_EXPORTER" \
    --iterations "$ITERATIONS" --scrapes "$SCRAPES" "$@"
}
