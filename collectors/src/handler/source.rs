//! The contract between virt-handler-metrics' sources (virt-launcher, libvirt) and its
//! collector: one [`SourceReport`] of [`VmiStats`] per pass.

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::core::collect::{Problem, Trigger};
use crate::handler::stats::VmiStats;

/// What a virt-handler stats source returns for one pass.
#[derive(Debug, Default)]
pub struct SourceReport {
    pub vmis: Vec<VmiStats>,
    pub problems: Vec<Problem>,
    pub stale_dropped: u64,
    pub targets_seen: u64,
}

/// Where virt-handler domain statistics come from: virt-launcher's cmd socket or libvirt.
pub trait StatsSource: Send + Sync + 'static {
    fn collect(&self, deadline: Instant) -> BoxFuture<'_, SourceReport>;

    /// See [`crate::core::collect::Collector::trigger`].
    fn trigger(&self) -> Option<Trigger> {
        None
    }
}
