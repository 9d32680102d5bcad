//! virt-handler-metrics' collector: a [`StatsSource`] pass turned into KubeVirt's families.
//!
//! Per pass: ask the source (bounded by the deadline even if the source overruns it), drop
//! VMI results older than one collection interval (KubeVirt drops results older than its
//! `StatsMaxAge`; a result older than our interval would be served as if it were new),
//! feed the migration history, and render ([`crate::handler::families`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::core::collect::{Collection, Collector, Problem, Trigger};
use crate::handler::families::{self, MigrationHistory};
use crate::handler::source::{SourceReport, StatsSource};
use crate::handler::stats::VmiStats;

pub struct VmiCollector {
    source: Arc<dyn StatsSource>,
    interval: Duration,
    history: Mutex<MigrationHistory>,
}

impl VmiCollector {
    pub fn new(source: Arc<dyn StatsSource>, interval: Duration) -> Self {
        Self {
            source,
            interval,
            history: Mutex::new(MigrationHistory::default()),
        }
    }

    async fn collect_once(&self, deadline: Instant) -> Collection {
        let mut problems = Vec::new();
        let report = match tokio::time::timeout_at(deadline, self.source.collect(deadline)).await {
            Ok(report) => report,
            Err(_) => {
                tracing::warn!("stats source did not answer before the collection deadline");
                problems.push(Problem {
                    source: "stats",
                    kind: "timeout",
                    target: String::new(),
                    message: "the stats source did not answer before the collection deadline"
                        .to_owned(),
                });
                SourceReport::default()
            }
        };
        let SourceReport {
            vmis,
            problems: source_problems,
            stale_dropped,
            targets_seen,
        } = report;
        problems.extend(source_problems);

        let (fresh, stale) = split_stale(vmis, SystemTime::now(), self.interval);
        if stale > 0 {
            tracing::debug!(
                stale,
                "dropped VMI results older than the collection interval"
            );
        }
        let migrations = {
            // A panic while holding the lock cannot leave the history inconsistent in a way
            // that matters (worst case a sample is lost), so a poisoned lock is reused.
            let mut history = self
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            history.record(&fresh);
            history.drain()
        };
        Collection {
            families: families::render(&fresh, &migrations),
            problems,
            stale_dropped: stale_dropped + stale,
            targets_seen,
            component: None,
        }
    }
}

impl Collector for VmiCollector {
    fn collect(&self, deadline: Instant) -> BoxFuture<'_, Collection> {
        Box::pin(self.collect_once(deadline))
    }

    fn trigger(&self) -> Option<Trigger> {
        self.source.trigger()
    }
}

/// Keeps results no older than `max_age` at `now` (a result stamped in the future, from a
/// clock step, counts as fresh); returns them and how many were dropped.
fn split_stale(vmis: Vec<VmiStats>, now: SystemTime, max_age: Duration) -> (Vec<VmiStats>, u64) {
    let before = vmis.len();
    let fresh: Vec<VmiStats> = vmis
        .into_iter()
        .filter(|stats| {
            now.duration_since(stats.collected_at)
                .map_or(true, |age| age <= max_age)
        })
        .collect();
    let dropped = (before - fresh.len()) as u64;
    (fresh, dropped)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::handler::stats::{CpuStats, DomainStats, MigrationJobInfo, VmiIdentity};

    fn stats(name: &str, age: Duration, migrating: bool) -> VmiStats {
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
                cpu: Some(CpuStats {
                    time: Some(1_000_000_000),
                    ..CpuStats::default()
                }),
                migrate_job: migrating.then(|| MigrationJobInfo {
                    data_remaining: Some(42),
                    ..MigrationJobInfo::default()
                }),
                ..DomainStats::default()
            },
            filesystems: vec![],
            dirty_rate_mbs: None,
            collected_at: SystemTime::now() - age,
        }
    }

    /// Replays one scripted report per call.
    struct Scripted {
        reports: Mutex<Vec<SourceReport>>,
        calls: AtomicUsize,
    }

    impl StatsSource for Scripted {
        fn collect(&self, _deadline: Instant) -> BoxFuture<'_, SourceReport> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let report = self.reports.lock().unwrap().pop().unwrap_or_default();
            Box::pin(async move { report })
        }
    }

    struct Hung;

    impl StatsSource for Hung {
        fn collect(&self, _deadline: Instant) -> BoxFuture<'_, SourceReport> {
            Box::pin(futures::future::pending())
        }
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn stale_results_are_dropped_and_counted() {
        let source = Arc::new(Scripted {
            reports: Mutex::new(vec![SourceReport {
                vmis: vec![
                    stats("fresh", Duration::ZERO, false),
                    stats("old", Duration::from_secs(31), false),
                ],
                problems: vec![Problem {
                    source: "launcher",
                    kind: "connect",
                    target: "ns/x".into(),
                    message: "refused".into(),
                }],
                stale_dropped: 2,
                targets_seen: 4,
            }]),
            calls: AtomicUsize::new(0),
        });
        let collector = VmiCollector::new(source, Duration::from_secs(30));
        let collection = collector.collect(deadline()).await;
        assert_eq!(collection.stale_dropped, 3);
        assert_eq!(collection.targets_seen, 4);
        assert_eq!(collection.problems.len(), 1);
        assert_eq!(collection.families.len(), 1);
        let cpu = &collection.families[0];
        assert_eq!(cpu.name, "kubevirt_vmi_cpu_usage_seconds_total");
        assert_eq!(cpu.samples.len(), 1);
        assert!(
            cpu.samples[0]
                .labels
                .contains(&("name".into(), "fresh".into()))
        );
    }

    #[tokio::test]
    async fn migration_samples_are_published_once_per_pass() {
        let source = Arc::new(Scripted {
            // Popped from the end: first pass migrating, second pass done.
            reports: Mutex::new(vec![
                SourceReport {
                    vmis: vec![stats("vm", Duration::ZERO, false)],
                    ..SourceReport::default()
                },
                SourceReport {
                    vmis: vec![stats("vm", Duration::ZERO, true)],
                    ..SourceReport::default()
                },
            ]),
            calls: AtomicUsize::new(0),
        });
        let collector = VmiCollector::new(source.clone(), Duration::from_secs(30));
        let first = collector.collect(deadline()).await;
        let remaining = first
            .families
            .iter()
            .find(|f| f.name == "kubevirt_vmi_migration_data_remaining_bytes")
            .expect("migration family");
        assert_eq!(remaining.samples[0].value, 42.0);
        assert!(remaining.samples[0].timestamp_ms.is_some());
        let second = collector.collect(deadline()).await;
        assert!(
            second
                .families
                .iter()
                .all(|f| !f.name.starts_with("kubevirt_vmi_migration_"))
        );
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_hung_source_is_a_timeout_problem_not_a_hang() {
        let collector = VmiCollector::new(Arc::new(Hung), Duration::from_secs(30));
        let collection = collector
            .collect(Instant::now() + Duration::from_millis(50))
            .await;
        assert!(collection.families.is_empty());
        assert_eq!(collection.problems.len(), 1);
        assert_eq!(collection.problems[0].kind, "timeout");
    }
}
