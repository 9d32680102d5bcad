//! Flags of virt-controller-metrics, virt-api-metrics and virt-operator-metrics.
