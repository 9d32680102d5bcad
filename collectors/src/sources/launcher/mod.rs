//! Domain statistics from virt-launcher over KubeVirt's cmd v1 gRPC protocol.
