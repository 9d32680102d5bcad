//! virt-api-metrics and virt-operator-metrics: relays of the component's own /metrics.
