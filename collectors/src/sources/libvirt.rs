//! Domain statistics from libvirt (bulk stats), for hosts and per-VMI libvirt sockets.
