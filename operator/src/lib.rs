//! kubevirt-metrics-operator: turns MetricsSidecarPolicy objects into collector sidecars in
//! KubeVirt's components, through the KubeVirt CR's `spec.customizeComponents.patches`.
pub mod api;
pub mod controller;
pub mod plan;
pub mod render;
