#!/bin/busybox sh
# /init of the tiny test guest (busybox-static initramfs, Debian cloud kernel).
# Loads the virtio drivers, then loops forever doing a little disk and network I/O so
# libvirt's block.* and net.* counters keep moving; the virtio balloon driver reports
# guest-side memory statistics (balloon.available/unused/usable/...) on its own.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for pass in 1 2; do
  for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
           virtio_balloon virtio_blk failover net_failover virtio_net; do
    insmod /mods/$m.ko 2>/dev/null
  done
done
ip link set lo up
ip link set eth0 up 2>/dev/null
ip addr add 169.254.10.2/30 dev eth0 2>/dev/null
echo "guest: ready"
i=0
while true; do
  dd if=/dev/vda of=/dev/null bs=64k count=16 skip=$((i % 64)) iflag=direct 2>/dev/null
  dd if=/dev/zero of=/dev/vda bs=4k count=4 seek=$((i % 256)) oflag=direct 2>/dev/null
  arping -c 1 -w 1 -I eth0 169.254.10.1 >/dev/null 2>&1
  i=$((i + 1))
  sleep 1
done
