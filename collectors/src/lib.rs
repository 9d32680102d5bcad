//! Metrics-collector sidecars for KubeVirt's components.
//!
//! - [`core`]: what every collector shares — the metric model, the wire formats, the HTTP(S)
//!   server, the collection loop, self-metrics and the check of the co-located component.
//! - [`handler`]: virt-handler-metrics — the VMI statistics model, its sources (virt-launcher,
//!   libvirt) and KubeVirt's `kubevirt_vmi_*` families.
//! - [`controller`]: virt-controller-metrics — the watched objects, their store and
//!   KubeVirt's cluster families.
//! - [`relay`]: virt-api-metrics and virt-operator-metrics — the component's own page,
//!   relayed, plus backports.
//! - [`k8s`]: the little the collectors need from the Kubernetes API besides watches (Lease
//!   reading, API error kinds).
//!
//! Flags live in the `kubevirt-metrics-flags` crate, shared with the operator.

pub mod controller;
pub mod core;
pub mod handler;
pub mod k8s;
pub mod relay;
