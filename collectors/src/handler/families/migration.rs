//! Per-VMI history of outgoing-migration job statistics, the equivalent of virt-handler's
//! `migrationdomainstats` queues.
//!
//! KubeVirt starts a poller per migrating VMI (every 5 s) that appends
//! `DomainStats.MigrateDomainJobInfo` and `time.Now()` to a ring of 10, and each scrape of
//! `/metrics` **drains** the rings: every sample is exported once, with its own timestamp,
//! and a queue is deleted when its migration finished or its VMI is gone.
//!
//! Our collectors run once per `--interval` and every scrape is served from the last
//! collection, so the drain happens per collection instead of per scrape:
//!
//! - [`MigrationHistory::record`] appends one sample per migrating VMI per pass (a VMI is
//!   migrating while its domain stats report job info), skipping a repeated timestamp, and
//!   bounds each ring at [`RING_CAPACITY`] (KubeVirt's buffer size) so a caller that records
//!   more often than it drains (a faster migration poller) cannot grow memory.
//! - [`MigrationHistory::drain`] returns every buffered sample and forgets VMIs that were not
//!   migrating in the last `record` (finished, failed, or gone from the node).
//!
//! Why drain rather than re-export the last N samples on every pass: Prometheus rejects a
//! timestamped sample older than the newest one it holds for that series as out of order
//! (`prometheus_target_scrapes_sample_out_of_order_total`, which kube-prometheus alerts on
//! with `PrometheusOutOfOrderTimestamps`). Re-sending a window would trip that on every
//! scrape of a long migration. Serving one collection to several scrapes only repeats the
//! newest sample with the same timestamp and value, which Prometheus accepts silently. The
//! price is the same as KubeVirt's: a sample is visible only until the next pass, so a
//! scrape interval longer than `--interval` misses some (as it would for any gauge).

use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::handler::stats::{MigrationJobInfo, VmiStats};

/// KubeVirt's `bufferSize` in `migrationdomainstats/queue.go`.
pub const RING_CAPACITY: usize = 10;

/// One migration job sample of one VMI, stamped with when it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSample {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub job: MigrationJobInfo,
}

#[derive(Debug, Default)]
struct Ring {
    samples: VecDeque<MigrationSample>,
    last_recorded_ms: Option<i64>,
    migrating: bool,
}

/// See the module documentation. Keyed by `(namespace, name)`.
#[derive(Debug)]
pub struct MigrationHistory {
    capacity: usize,
    rings: BTreeMap<(String, String), Ring>,
}

impl Default for MigrationHistory {
    fn default() -> Self {
        Self::new(RING_CAPACITY)
    }
}

impl MigrationHistory {
    /// `capacity` is clamped to at least 1.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            rings: BTreeMap::new(),
        }
    }

    /// Records one pass: a sample for every VMI whose domain stats carry migration job info.
    pub fn record(&mut self, vmis: &[VmiStats]) {
        for ring in self.rings.values_mut() {
            ring.migrating = false;
        }
        for stats in vmis {
            let Some(job) = stats.domain.migrate_job.as_ref() else {
                continue;
            };
            if *job == MigrationJobInfo::default() {
                continue;
            }
            let Some(timestamp_ms) = unix_millis(stats.collected_at) else {
                continue;
            };
            let key = (stats.vmi.namespace.clone(), stats.vmi.name.clone());
            let ring = self.rings.entry(key).or_default();
            ring.migrating = true;
            if ring
                .last_recorded_ms
                .is_some_and(|last| timestamp_ms <= last)
            {
                continue;
            }
            ring.last_recorded_ms = Some(timestamp_ms);
            if ring.samples.len() == self.capacity {
                ring.samples.pop_front();
            }
            ring.samples.push_back(MigrationSample {
                namespace: stats.vmi.namespace.clone(),
                name: stats.vmi.name.clone(),
                node: stats.vmi.node.clone(),
                timestamp_ms,
                job: job.clone(),
            });
        }
    }

    /// Takes every buffered sample, and forgets VMIs that were not migrating in the last pass.
    pub fn drain(&mut self) -> Vec<MigrationSample> {
        let mut drained = Vec::new();
        for ring in self.rings.values_mut() {
            drained.extend(ring.samples.drain(..));
        }
        self.rings.retain(|_, ring| ring.migrating);
        drained
    }

    /// How many VMIs are being followed (for tests and self-metrics).
    pub fn tracked_vmis(&self) -> usize {
        self.rings.len()
    }
}

/// `time.Time.UnixMilli()`; `None` before the epoch.
fn unix_millis(at: SystemTime) -> Option<i64> {
    let millis = at.duration_since(UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(millis).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::handler::stats::{DomainStats, VmiIdentity};

    fn stats(name: &str, at_ms: u64, job: Option<MigrationJobInfo>) -> VmiStats {
        VmiStats {
            vmi: VmiIdentity {
                namespace: "ns".into(),
                name: name.into(),
                node: "node-a".into(),
                labels: Default::default(),
                ..Default::default()
            }
            .into(),
            domain: DomainStats {
                migrate_job: job,
                ..DomainStats::default()
            },
            filesystems: vec![],
            dirty_rate_mbs: None,
            collected_at: UNIX_EPOCH + Duration::from_millis(at_ms),
        }
    }

    fn job(remaining: u64) -> Option<MigrationJobInfo> {
        Some(MigrationJobInfo {
            data_remaining: Some(remaining),
            ..MigrationJobInfo::default()
        })
    }

    #[test]
    fn each_sample_is_drained_once_with_its_timestamp() {
        let mut history = MigrationHistory::default();
        history.record(&[stats("a", 1_000, job(30)), stats("b", 1_000, None)]);
        let first = history.drain();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].timestamp_ms, 1_000);
        assert_eq!(first[0].job.data_remaining, Some(30));
        assert_eq!(history.drain(), vec![]);

        history.record(&[stats("a", 31_000, job(10))]);
        let second = history.drain();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].timestamp_ms, 31_000);
    }

    #[test]
    fn finished_or_vanished_vmis_are_forgotten() {
        let mut history = MigrationHistory::default();
        history.record(&[stats("a", 1_000, job(30)), stats("b", 1_000, job(5))]);
        history.drain();
        assert_eq!(history.tracked_vmis(), 2);
        // `a` finished (empty job info), `b` left the node.
        history.record(&[stats("a", 2_000, Some(MigrationJobInfo::default()))]);
        assert_eq!(history.drain(), vec![]);
        assert_eq!(history.tracked_vmis(), 0);
    }

    #[test]
    fn samples_recorded_before_a_vmi_vanished_are_still_drained() {
        let mut history = MigrationHistory::default();
        history.record(&[stats("a", 1_000, job(30))]);
        history.record(&[]);
        assert_eq!(history.drain().len(), 1);
        assert_eq!(history.tracked_vmis(), 0);
    }

    #[test]
    fn rings_are_bounded_and_repeated_timestamps_skipped() {
        let mut history = MigrationHistory::new(3);
        for i in 0..5u64 {
            history.record(&[stats("a", 1_000 + i, job(i))]);
        }
        history.record(&[stats("a", 1_004, job(99))]);
        let drained = history.drain();
        let stamps: Vec<i64> = drained.iter().map(|s| s.timestamp_ms).collect();
        assert_eq!(stamps, [1_002, 1_003, 1_004]);
        assert_eq!(drained[2].job.data_remaining, Some(4));
    }
}
