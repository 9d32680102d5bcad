//! The contract between what gathers numbers and what serves them.
//!
//! A [`Collector`] runs once per collection interval (never once per scrape: scrapes are
//! served from the last [`Collection`]), within a deadline, and must never fail as a whole:
//! whatever went wrong for one VMI, one source or one watch is reported as a [`Problem`] and
//! the rest is still returned.

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::exposition::Family;
use crate::model::VmiStats;

/// One thing that went wrong during a collection, counted in the self-metrics and logged once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The source, e.g. `libvirt`, `launcher`, `kubernetes`, `component`.
    pub source: &'static str,
    /// A short, bounded kind for the metric label, e.g. `timeout`, `connect`, `decode`.
    pub kind: &'static str,
    /// What it concerned (a VMI `namespace/name`, a URI, a resource); log only, never a label.
    pub target: String,
    pub message: String,
}

/// What one collection pass produced.
#[derive(Debug, Default)]
pub struct Collection {
    pub families: Vec<Family>,
    pub problems: Vec<Problem>,
    /// Results thrown away because they were older than the collection interval.
    pub stale_dropped: u64,
    /// How many VMIs (or objects) were looked at; exported as a self-metric.
    pub targets_seen: u64,
}

/// Produces metric families; implemented by every collector binary's core.
pub trait Collector: Send + Sync + 'static {
    fn collect(&self, deadline: Instant) -> BoxFuture<'_, Collection>;
}

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
}
