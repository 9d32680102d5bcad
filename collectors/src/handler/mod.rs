//! virt-handler-metrics: KubeVirt's per-VMI runtime metrics.
//!
//! Data flows one way: a source ([`launcher`], KubeVirt's default, or [`libvirt`]) produces
//! [`stats::VmiStats`] per VMI; [`families`] turns them into KubeVirt's exact `kubevirt_vmi_*`
//! families; [`collector::VmiCollector`] runs a source once per pass for the core loop.

pub mod collector;
pub mod families;
pub mod launcher;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod source;
pub mod stats;

pub use collector::VmiCollector;
pub use source::{SourceReport, StatsSource};
