#!/usr/bin/env bash
# real-peers.sh — the real peers the e2e tests and benchmarks run against, on Debian
# bookworm, as root, with apt as the only network access:
#
#   * libvirtd (started by hand: no systemd), with one tiny Linux guest under QEMU/TCG named
#     like a KubeVirt domain (<namespace>_<name>, default_testvm): virtio disk, ethernet tap,
#     virtio balloon with a stats period, device aliases `ua-<name>` as KubeVirt sets them;
#   * one connection held open on test+unix:///default with N test-driver domains
#     (the test driver keeps its shared state only while a connection stays open);
#   * Prometheus (+ promtool) on 127.0.0.1, scraping whatever the tests list in
#     $STATE_DIR/prom/targets/*.json (file_sd; one file per test, changes apply in ~1-5 s).
#
#   scripts/real-peers.sh up              install, start, print a summary (idempotent, fast the 2nd time)
#   scripts/real-peers.sh status          what runs, from the pid files; exit 1 if something is down
#   scripts/real-peers.sh down            stop exactly what `up` started (pid files), undefine the guest
#   scripts/real-peers.sh purge           down, then delete the state dir (kernel/initrd/disk caches too)
#   scripts/real-peers.sh test-domains N  set the number of test-driver domains (benchmarks)
#   scripts/real-peers.sh qemu-domains N  set the number of extra QEMU guests like the main one
#                                         (disk, NIC, balloon), booted then paused (benchmarks);
#                                         `down` and `qemu-domains 0` remove them
#   scripts/real-peers.sh env             print the state file (KEY=VALUE, for tests and scripts)
#
# Knobs (environment), also written into the state file:
#   KVMS_PEERS_DIR=/var/tmp/kvms-peers   state, pid files, logs, caches
#   KVMS_ACCEL=qemu                      qemu (TCG, works everywhere) or kvm
#   KVMS_TEST_DOMAINS=100                test-driver domains created by `up`
#   KVMS_PROM_PORT=19090                 Prometheus port on 127.0.0.1
#   KVMS_GUEST=1                         0: skip the QEMU guest (test driver + Prometheus only)
#
# Tests find everything through $KVMS_PEERS_DIR/state.env (see e2e/src/lib.rs).
set -euo pipefail

STATE_DIR=${KVMS_PEERS_DIR:-/var/tmp/kvms-peers}
ACCEL=${KVMS_ACCEL:-qemu}
TEST_DOMAINS=${KVMS_TEST_DOMAINS:-100}
PROM_PORT=${KVMS_PROM_PORT:-19090}
WITH_GUEST=${KVMS_GUEST:-1}

QEMU_URI=qemu:///system
TEST_URI=test+unix:///default
GUEST_NAMESPACE=default
GUEST_NAME=testvm
GUEST_DOMAIN=${GUEST_NAMESPACE}_${GUEST_NAME}
GUEST_MEM_MIB=96
GUEST_IFACE_ALIAS=default   # KubeVirt names the pod network interface "default"
GUEST_DISK_ALIAS=rootdisk
TEST_DOMAIN_PREFIX=bench_vm

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PIDS=$STATE_DIR/pids
LOGS=$STATE_DIR/logs
GUEST_DIR=$STATE_DIR/guest
PROM_DIR=$STATE_DIR/prom
STATE_FILE=$STATE_DIR/state.env
export DEBIAN_FRONTEND=noninteractive LIBVIRT_AUTOSTART=0

log() { printf '[real-peers] %s\n' "$*"; }
die() { printf '[real-peers] ERROR: %s\n' "$*" >&2; exit 1; }
pid_alive() { [[ -f $PIDS/$1.pid ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }
wait_for() { # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}
vsh() { virsh -q -c "$@"; }

# ------------------------------------------------------------------------- packages
PKGS=(libvirt-dev libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86
      qemu-utils pkg-config prometheus prometheus-libvirt-exporter cpio curl)
PKGS+=(influxdb)  # InfluxDB 1.6: e2e/tests/export_influx.rs starts its own influxd (temp dir, free port)

install_packages() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || missing+=("$p")
  done
  # Images of this kind ship qemu-utils 10.x from backports, which Breaks
  # qemu-system-common (<< 8.0): a plain install would REMOVE qemu-utils. Pin bookworm's.
  [[ $(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null) == *bpo* ]] && missing+=(qemu-utils)
  ((${#missing[@]})) || return 0
  log "apt: installing ${missing[*]}"
  apt-get update -qq >"$LOGS/apt-update.log" 2>&1 || { tail -20 "$LOGS/apt-update.log"; die "apt-get update failed"; }
  local args=()
  for p in "${missing[@]}"; do [[ $p == qemu-utils ]] && args+=(qemu-utils/bookworm) || args+=("$p"); done
  # libvirt-daemon-system is deliberately not installed: it pulls in systemd and iptables.
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${args[@]}" \
    >"$LOGS/apt-install.log" 2>&1 || { tail -30 "$LOGS/apt-install.log"; die "apt-get install failed"; }
}

# ------------------------------------------------------------------------- libvirtd
QEMU_CONF_MARK='# kubevirt-metrics-sidecars real-peers'
configure_libvirt() {
  # libvirt resolves its built-in default user before reading qemu.conf.
  getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
  id libvirt-qemu >/dev/null 2>&1 || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
  local conf=/etc/libvirt/qemu.conf
  if ! grep -qF "$QEMU_CONF_MARK" "$conf" 2>/dev/null; then
    [[ -f $conf && ! -f $conf.orig ]] && cp "$conf" "$conf.orig"
    mkdir -p /etc/libvirt
    cat >"$conf" <<EOF
$QEMU_CONF_MARK
# QEMU runs as root without DAC/SELinux/AppArmor relabelling; stdio goes to plain files,
# so no virtlogd is needed.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
EOF
  fi
  cat >"$STATE_DIR/libvirtd.conf" <<EOF
log_outputs = "3:file:$LOGS/libvirtd.log"
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
auth_unix_rw = "none"
auth_unix_ro = "none"
EOF
}

start_libvirtd() {
  if virsh -c "$QEMU_URI" version >/dev/null 2>&1; then
    pid_alive libvirtd || log "libvirtd already running (not started by this script; left alone)"
    return 0
  fi
  setsid /usr/sbin/libvirtd -f "$STATE_DIR/libvirtd.conf" >"$LOGS/libvirtd.out" 2>&1 </dev/null &
  echo $! >"$PIDS/libvirtd.pid"
  # The first start probes QEMU's capabilities (~8 s); later starts take ~0.3 s.
  wait_for 120 virsh -c "$QEMU_URI" version || { tail -20 "$LOGS/libvirtd.log" >&2; die "libvirtd did not come up"; }
  log "libvirtd started (pid $(cat "$PIDS/libvirtd.pid"))"
}

# ------------------------------------------------------------------------- guest
build_guest_boot() { # kernel + initramfs, cached in $GUEST_DIR
  [[ -f $GUEST_DIR/vmlinuz && -f $GUEST_DIR/initrd.gz && $GUEST_DIR/initrd.gz -nt $HERE/real-peers/guest-init.sh ]] && return 0
  log "guest: building kernel + initramfs (Debian cloud kernel, busybox-static)"
  local work=$GUEST_DIR/build kpkg
  rm -rf "$work" && mkdir -p "$work" && cd "$work"
  kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [[ -z $kpkg ]]; then
    apt-get update -qq >"$LOGS/apt-update.log" 2>&1 || true
    kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [[ -n $kpkg ]] || die "cannot resolve linux-image-cloud-amd64"
  # Downloaded and unpacked only, never installed on the host.
  apt-get download -qq "$kpkg" busybox-static >"$LOGS/apt-download.log" 2>&1 \
    || { tail "$LOGS/apt-download.log" >&2; die "apt-get download failed"; }
  mkdir -p kernel bb ird/{bin,proc,sys,dev,mods}
  dpkg-deb -x ./linux-image-*.deb kernel
  dpkg-deb -x ./busybox-static_*.deb bb
  cp kernel/boot/vmlinuz-* "$GUEST_DIR/vmlinuz.new"
  cp bb/bin/busybox ird/bin/busybox
  local mods m
  mods=$(ls -d kernel/lib/modules/*/kernel)
  for m in drivers/virtio/virtio drivers/virtio/virtio_ring drivers/virtio/virtio_pci_modern_dev \
           drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/virtio/virtio_balloon \
           drivers/block/virtio_blk net/core/failover drivers/net/net_failover drivers/net/virtio_net; do
    if [[ -f $mods/$m.ko ]]; then cp "$mods/$m.ko" ird/mods/
    elif [[ -f $mods/$m.ko.xz ]]; then xz -dc "$mods/$m.ko.xz" >"ird/mods/$(basename "$m").ko"
    fi
  done
  install -m 0755 "$HERE/real-peers/guest-init.sh" ird/init
  (cd ird && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$GUEST_DIR/initrd.gz.new")
  mv "$GUEST_DIR/vmlinuz.new" "$GUEST_DIR/vmlinuz"
  mv "$GUEST_DIR/initrd.gz.new" "$GUEST_DIR/initrd.gz"
  echo "$kpkg" >"$GUEST_DIR/kernel-package"
  cd "$STATE_DIR" && rm -rf "$work"
}

guest_xml() { # guest_xml [NAME DISK CONSOLE_LOG]
  local name=${1:-$GUEST_DOMAIN} disk=${2:-$GUEST_DIR/disk.qcow2} console=${3:-$LOGS/$GUEST_DOMAIN-console.log}
  local tcg=''
  [[ $ACCEL == qemu ]] && tcg="<tcg><tb-cache unit='MiB'>32</tb-cache></tcg>"
  cat <<EOF
<domain type='$ACCEL'>
  <name>$name</name>
  <memory unit='MiB'>$GUEST_MEM_MIB</memory>
  <currentMemory unit='MiB'>$GUEST_MEM_MIB</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$GUEST_DIR/vmlinuz</kernel>
    <initrd>$GUEST_DIR/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <features><acpi/>$tcg</features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-$GUEST_DISK_ALIAS'/>
    </disk>
    <interface type='ethernet'>
      <model type='virtio'/>
      <alias name='ua-$GUEST_IFACE_ALIAS'/>
    </interface>
    <memballoon model='virtio'>
      <stats period='2'/>
    </memballoon>
    <serial type='file'><source path='$console'/></serial>
    <video><model type='none'/></video>
  </devices>
</domain>
EOF
}

start_guest() {
  build_guest_boot
  [[ -f $GUEST_DIR/disk.qcow2 ]] || qemu-img create -q -f qcow2 "$GUEST_DIR/disk.qcow2" 64M
  guest_xml >"$GUEST_DIR/$GUEST_DOMAIN.xml"
  if ! vsh "$QEMU_URI" dominfo "$GUEST_DOMAIN" >/dev/null 2>&1; then
    vsh "$QEMU_URI" define "$GUEST_DIR/$GUEST_DOMAIN.xml" >/dev/null
    touch "$PIDS/guest.defined"
  fi
  if [[ $(virsh -c "$QEMU_URI" domstate "$GUEST_DOMAIN" 2>/dev/null) != running ]]; then
    : >"$LOGS/$GUEST_DOMAIN-console.log"
    vsh "$QEMU_URI" start "$GUEST_DOMAIN" >/dev/null
    touch "$PIDS/guest.started"
    log "guest $GUEST_DOMAIN started"
  fi
  wait_for 120 grep -q 'guest: ready' "$LOGS/$GUEST_DOMAIN-console.log" \
    || log "WARNING: $GUEST_DOMAIN did not print 'guest: ready' within 120 s (see $LOGS/$GUEST_DOMAIN-console.log)"
  # Guest-side balloon statistics arrive one stats period after the driver loads.
  wait_for 30 bash -c "virsh -c '$QEMU_URI' domstats --balloon '$GUEST_DOMAIN' | grep -q balloon.usable" \
    || log "WARNING: no guest-side balloon statistics yet"
}

# ------------------------------------------------------------------------- extra QEMU guests
# Benchmarks need many domains with real statistics. They boot like the main guest (disk, NIC
# and balloon drivers loaded, a first round of I/O done, guest-side balloon statistics
# reported), then are paused: a paused guest keeps the per-domain cost of libvirt's and
# QEMU's statistics without using CPU. Their names are listed in $QEMU_DOMAINS_LIST, so
# `down` removes exactly these.
QEMU_DOMAIN_PREFIX=qbench_vm
QEMU_DOMAINS_LIST=$PIDS/qemu-domains.list
QEMU_DOMAINS_DIR=$GUEST_DIR/bench
QEMU_BOOT_BATCH=${KVMS_QEMU_BOOT_BATCH:-4}

qemu_domain_name() { printf '%s%03d' "$QEMU_DOMAIN_PREFIX" "$1"; }

qemu_domain_count() {
  virsh -c "$QEMU_URI" list --all --name 2>/dev/null | grep -c "^$QEMU_DOMAIN_PREFIX" || true
}

# Boots domains FIRST..LAST at once, waits until each is ready with balloon statistics,
# pauses it.
boot_qemu_domains() {
  local first=$1 last=$2 i name console
  for ((i = first; i <= last; i++)); do
    name=$(qemu_domain_name "$i")
    console=$LOGS/$name-console.log
    [[ -f $QEMU_DOMAINS_DIR/$name.qcow2 ]] || qemu-img create -q -f qcow2 "$QEMU_DOMAINS_DIR/$name.qcow2" 64M
    guest_xml "$name" "$QEMU_DOMAINS_DIR/$name.qcow2" "$console" >"$QEMU_DOMAINS_DIR/$name.xml"
    grep -qx "$name" "$QEMU_DOMAINS_LIST" 2>/dev/null || echo "$name" >>"$QEMU_DOMAINS_LIST"
    vsh "$QEMU_URI" define "$QEMU_DOMAINS_DIR/$name.xml" >/dev/null
    : >"$console"
    vsh "$QEMU_URI" start "$name" >/dev/null
  done
  for ((i = first; i <= last; i++)); do
    name=$(qemu_domain_name "$i")
    wait_for 300 grep -q 'guest: ready' "$LOGS/$name-console.log" \
      || die "$name did not print 'guest: ready' within 300 s (see $LOGS/$name-console.log)"
    wait_for 60 bash -c "virsh -c '$QEMU_URI' domstats --balloon '$name' | grep -q balloon.usable" \
      || log "WARNING: $name: no guest-side balloon statistics yet"
    vsh "$QEMU_URI" suspend "$name" >/dev/null
  done
}

remove_qemu_domain() {
  vsh "$QEMU_URI" destroy "$1" >/dev/null 2>&1 || true
  vsh "$QEMU_URI" undefine "$1" >/dev/null 2>&1 || true
  rm -f "$QEMU_DOMAINS_DIR/$1.qcow2" "$QEMU_DOMAINS_DIR/$1.xml" "$LOGS/$1-console.log"
  [[ -f $QEMU_DOMAINS_LIST ]] && sed -i "/^$1\$/d" "$QEMU_DOMAINS_LIST"
  return 0
}

set_qemu_domains() { # set_qemu_domains N
  local want=$1 have i last
  build_guest_boot
  mkdir -p "$QEMU_DOMAINS_DIR"
  have=$(qemu_domain_count)
  for ((i = want + 1; i <= have; i++)); do remove_qemu_domain "$(qemu_domain_name "$i")"; done
  for ((i = have + 1; i <= want; i += QEMU_BOOT_BATCH)); do
    last=$((i + QEMU_BOOT_BATCH - 1 < want ? i + QEMU_BOOT_BATCH - 1 : want))
    boot_qemu_domains "$i" "$last"
  done
  have=$(qemu_domain_count)
  ((have == want)) || die "qemu: wanted $want extra guests, have $have"
  log "qemu: $have extra guests ${QEMU_DOMAIN_PREFIX}NNN (paused) on $QEMU_URI"
}

remove_listed_qemu_domains() {
  [[ -f $QEMU_DOMAINS_LIST ]] || return 0
  local name
  while read -r name; do
    [[ -n $name ]] && remove_qemu_domain "$name"
  done < <(cat "$QEMU_DOMAINS_LIST")
  rm -f "$QEMU_DOMAINS_LIST"
}

# ------------------------------------------------------------------------- test driver
test_domain_count() {
  virsh -c "$TEST_URI" list --name 2>/dev/null | grep -c "^$TEST_DOMAIN_PREFIX" || true
}

start_test_holder() {
  # A long-lived connection keeps test+unix:///default's state (our domains) alive. It is
  # only useful on the daemon it was opened to: after a libvirtd restart `virsh event
  # --loop` lives on with a dead connection, so it is replaced.
  local daemon
  daemon=$(pidof -s libvirtd || true)
  if pid_alive test-holder; then
    [[ $(cat "$PIDS/test-holder.daemon" 2>/dev/null) == "$daemon" ]] && return 0
    stop_pid test-holder
  fi
  setsid virsh -c "$TEST_URI" event --all --loop >"$LOGS/test-holder.log" 2>&1 </dev/null &
  echo $! >"$PIDS/test-holder.pid"
  echo "$daemon" >"$PIDS/test-holder.daemon"
  wait_for 10 virsh -c "$TEST_URI" version || die "test+unix:///default does not answer"
  log "test-driver connection held (pid $(cat "$PIDS/test-holder.pid"))"
}

set_test_domains() { # set_test_domains N
  local want=$1 have i cmds=$STATE_DIR/test-domains.virsh dir=$STATE_DIR/test-domains
  have=$(test_domain_count)
  ((have == want)) && return 0
  mkdir -p "$dir"
  : >"$cmds"
  if ((have < want)); then
    for ((i = 1; i <= want; i++)); do
      local name
      name=$(printf '%s%05d' "$TEST_DOMAIN_PREFIX" "$i")
      [[ -f $dir/$name.xml ]] || printf '%s\n' \
        "<domain type='test'><name>$name</name><memory unit='MiB'>1024</memory><currentMemory unit='MiB'>512</currentMemory><vcpu>2</vcpu>" \
        "<os><type arch='x86_64'>hvm</type></os><devices>" \
        "<disk type='file' device='disk'><source file='/guest-images/$name.img'/><target dev='vda' bus='virtio'/><alias name='ua-rootdisk'/></disk>" \
        "<interface type='network'><source network='default'/><alias name='ua-default'/></interface>" \
        "</devices></domain>" >"$dir/$name.xml"
      echo "create $dir/$name.xml" >>"$cmds"
    done
  else
    for ((i = want + 1; i <= have; i++)); do
      printf 'destroy %s%05d\n' "$TEST_DOMAIN_PREFIX" "$i" >>"$cmds"
    done
  fi
  # One virsh process for the whole batch; `create` of an existing name just fails.
  virsh -c "$TEST_URI" <"$cmds" >"$LOGS/test-domains.log" 2>&1 || true
  have=$(test_domain_count)
  ((have == want)) || die "test driver: wanted $want domains, have $have (see $LOGS/test-domains.log)"
  log "test driver: $have domains on $TEST_URI"
}

# ------------------------------------------------------------------------- Prometheus
start_prometheus() {
  mkdir -p "$PROM_DIR/targets"
  cat >"$PROM_DIR/prometheus.yml" <<EOF
# Tests drop one file_sd file per test into targets/ (labels: job, and __scheme__=https
# for TLS targets); certificates are not verified (self-signed test certificates).
global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}
scrape_configs:
  - job_name: kvms
    tls_config: {insecure_skip_verify: true}
    file_sd_configs: [{files: ['$PROM_DIR/targets/*.json'], refresh_interval: 1s}]
EOF
  promtool check config "$PROM_DIR/prometheus.yml" >"$LOGS/promtool-config.log" 2>&1 \
    || { cat "$LOGS/promtool-config.log" >&2; die "prometheus config rejected"; }
  if pid_alive prometheus; then
    curl -sf -X POST "http://127.0.0.1:$PROM_PORT/-/reload" >/dev/null || true
    return 0
  fi
  if curl -s -o /dev/null "http://127.0.0.1:$PROM_PORT/"; then die "port $PROM_PORT is taken by something else"; fi
  rm -rf "$PROM_DIR/data"
  # (Debian's own prometheus service is not started: policy-rc.d blocks it, and we want ours.)
  setsid prometheus --config.file="$PROM_DIR/prometheus.yml" --storage.tsdb.path="$PROM_DIR/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-lifecycle --log.level=warn \
    >"$LOGS/prometheus.log" 2>&1 </dev/null &
  echo $! >"$PIDS/prometheus.pid"
  wait_for 30 curl -sf "http://127.0.0.1:$PROM_PORT/-/ready" || { tail "$LOGS/prometheus.log" >&2; die "prometheus not ready"; }
  log "prometheus started (pid $(cat "$PIDS/prometheus.pid"))"
}

# ------------------------------------------------------------------------- state file
write_state() {
  local tmp=$STATE_FILE.tmp
  cat >"$tmp" <<EOF
# written by scripts/real-peers.sh up; read by e2e/src/lib.rs and bench/
KVMS_PEERS_DIR=$STATE_DIR
QEMU_URI=$QEMU_URI
TEST_URI=$TEST_URI
TEST_DOMAIN_PREFIX=$TEST_DOMAIN_PREFIX
TEST_DOMAINS=$(test_domain_count)
GUEST=$WITH_GUEST
GUEST_DOMAIN=$GUEST_DOMAIN
GUEST_NAMESPACE=$GUEST_NAMESPACE
GUEST_NAME=$GUEST_NAME
GUEST_IFACE_ALIAS=$GUEST_IFACE_ALIAS
GUEST_DISK_ALIAS=$GUEST_DISK_ALIAS
GUEST_MEM_MIB=$GUEST_MEM_MIB
ACCEL=$ACCEL
LIBVIRTD_PID_FILE=$PIDS/libvirtd.pid
LIBVIRTD_CONF=$STATE_DIR/libvirtd.conf
LIBVIRTD_LOG=$LOGS/libvirtd.log
PROMETHEUS_URL=http://127.0.0.1:$PROM_PORT
PROMETHEUS_TARGETS_DIR=$PROM_DIR/targets
PROMTOOL=$(command -v promtool)
LIBVIRT_EXPORTER=$(command -v prometheus-libvirt-exporter)
EOF
  mv "$tmp" "$STATE_FILE"
}

summary() {
  cat <<EOF
[real-peers] ready ($((SECONDS)) s)
  state file   $STATE_FILE
  libvirt      $(virsh --version), QEMU $(qemu-system-x86_64 --version | awk 'NR==1{print $4}'), accel=$ACCEL
  guest        $QEMU_URI  $( ((WITH_GUEST)) && echo "$GUEST_DOMAIN ($(virsh -c "$QEMU_URI" domstate "$GUEST_DOMAIN" 2>/dev/null))" || echo "(disabled)")
  test driver  $TEST_URI  $(test_domain_count) domains ${TEST_DOMAIN_PREFIX}NNNNN (+ the driver's own 'test')
  prometheus   http://127.0.0.1:$PROM_PORT  targets: $PROM_DIR/targets/*.json  promtool: $(command -v promtool)
  logs         $LOGS
  stop with    $0 down
EOF
}

# ------------------------------------------------------------------------- commands
cmd_up() {
  [[ $(id -u) == 0 ]] || die "must run as root"
  mkdir -p "$PIDS" "$LOGS" "$GUEST_DIR" "$PROM_DIR"
  install_packages
  configure_libvirt
  start_libvirtd
  if ((WITH_GUEST)); then start_guest; fi
  start_test_holder
  set_test_domains "$TEST_DOMAINS"
  start_prometheus
  write_state
  summary
}

stop_pid() { # stop_pid NAME
  if pid_alive "$1"; then
    local pid
    pid=$(cat "$PIDS/$1.pid")
    kill "$pid" 2>/dev/null || true
    wait_for 30 bash -c "! kill -0 $pid" || { kill -9 "$pid" 2>/dev/null || true; }
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$PIDS/$1.pid"
}

cmd_down() {
  rm -f "$STATE_FILE"
  stop_pid prometheus
  stop_pid test-holder   # the test driver forgets its domains with the last connection
  rm -f "$PIDS/test-holder.daemon"
  if virsh -c "$QEMU_URI" version >/dev/null 2>&1; then
    remove_listed_qemu_domains
    if [[ -f $PIDS/guest.started ]]; then
      vsh "$QEMU_URI" destroy "$GUEST_DOMAIN" >/dev/null 2>&1 || true
      log "guest $GUEST_DOMAIN destroyed"
    fi
    if [[ -f $PIDS/guest.defined ]]; then
      vsh "$QEMU_URI" undefine "$GUEST_DOMAIN" >/dev/null 2>&1 || true
    fi
  fi
  rm -f "$PIDS/guest.started" "$PIDS/guest.defined"
  stop_pid libvirtd
}

cmd_status() {
  local rc=0 p
  [[ -f $STATE_FILE ]] && echo "state file: $STATE_FILE" || { echo "state file: missing (not up)"; rc=1; }
  for p in libvirtd test-holder prometheus; do
    if pid_alive "$p"; then echo "$p: running (pid $(cat "$PIDS/$p.pid"))"
    elif [[ $p == libvirtd ]] && virsh -c "$QEMU_URI" version >/dev/null 2>&1; then echo "$p: running (not ours)"
    else echo "$p: down"; rc=1
    fi
  done
  if ((WITH_GUEST)); then
    echo "guest $GUEST_DOMAIN: $(virsh -c "$QEMU_URI" domstate "$GUEST_DOMAIN" 2>/dev/null || echo absent)"
  fi
  echo "test domains: $(test_domain_count)"
  echo "extra QEMU guests: $(qemu_domain_count)"
  return $rc
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  purge) cmd_down; rm -rf "$STATE_DIR"; log "removed $STATE_DIR" ;;
  status) cmd_status ;;
  test-domains)
    [[ ${2:-} =~ ^[0-9]+$ ]] || die "usage: $0 test-domains N"
    pid_alive test-holder || die "not up (run $0 up)"
    set_test_domains "$2"
    [[ -f $STATE_FILE ]] && sed -i "s/^TEST_DOMAINS=.*/TEST_DOMAINS=$2/" "$STATE_FILE"
    ;;
  qemu-domains)
    [[ ${2:-} =~ ^[0-9]+$ ]] || die "usage: $0 qemu-domains N"
    [[ -f $STATE_FILE ]] || die "not up (run $0 up)"
    set_qemu_domains "$2"
    ;;
  env) cat "$STATE_FILE" ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
