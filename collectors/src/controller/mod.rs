//! virt-controller-metrics: cluster metrics derived from watched KubeVirt objects.
