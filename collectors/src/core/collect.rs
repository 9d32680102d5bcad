//! The contract between what gathers numbers and what serves them.
//!
//! A [`Collector`] runs once per collection interval (never once per scrape: scrapes are
//! served from the last [`Collection`]), within a deadline, and must never fail as a whole:
//! whatever went wrong for one VMI, one source or one watch is reported as a [`Problem`] and
//! the rest is still returned. A collector may also offer a [`Trigger`] to collect ahead of
//! the interval when it knows fresh data exists.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::core::metric::Family;

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
    /// Set by a collector that read the co-located component's `/metrics` itself (the relays
    /// do, every pass), so the complement check reuses that page instead of asking again.
    pub component: Option<ComponentRead>,
}

/// What a collector learnt about the co-located component's own `/metrics` in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentRead {
    /// How many times the page was requested, answered or not.
    pub scrapes: u64,
    /// The families the component serves, when a request succeeded.
    pub served: Option<BTreeSet<String>>,
}

/// Fired by a source when fresh data exists ahead of the next interval tick (a watch that
/// has just synced, a VMI that has just started); the collection loop then runs a pass
/// soon, coalescing bursts. Cloning shares the trigger; firing while nobody waits is
/// remembered until the loop looks.
#[derive(Debug, Clone, Default)]
pub struct Trigger(Arc<Notify>);

impl Trigger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a collection soon.
    pub fn fire(&self) {
        self.0.notify_one();
    }

    /// Completes once the trigger has been fired (at most one waiter is meant: the loop).
    pub async fn fired(&self) {
        self.0.notified().await;
    }
}

/// Produces metric families; implemented by every collector binary's core.
pub trait Collector: Send + Sync + 'static {
    fn collect(&self, deadline: Instant) -> BoxFuture<'_, Collection>;

    /// A trigger for collecting ahead of the interval, when the collector can tell that
    /// fresh data exists (`None`: only the interval tick collects).
    fn trigger(&self) -> Option<Trigger> {
        None
    }
}
