//! The operator's own Prometheus metrics, served on `/metrics` by [`super::health`].
//!
//! One registry per [`Metrics`] value (not the process-global default registry), so tests
//! and several controllers in one process do not share counters.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Errors building or encoding the metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("prometheus: {0}")]
    Prometheus(#[from] prometheus::Error),
    #[error("metrics text is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// What a write went to; a label value of `patch_writes_total` and `write_conflicts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTarget {
    /// `spec.customizeComponents.patches` of a KubeVirt CR.
    KubeVirt,
    /// The `kubevirt.kubevirt.io/jsonpatch` annotation of a HyperConverged CR.
    HyperConverged,
    /// The server-side apply of our sidecar into the virt-operator Deployment.
    Deployment,
    /// The status subresource of a MetricsSidecarPolicy.
    Status,
    /// The monitoring objects of `spec.monitoring` (PodMonitor, ServiceMonitor,
    /// PrometheusRule, Service, NetworkPolicy): applied or deleted.
    Monitoring,
}

impl WriteTarget {
    pub fn label(self) -> &'static str {
        match self {
            WriteTarget::KubeVirt => "kubevirt",
            WriteTarget::HyperConverged => "hyperconverged",
            WriteTarget::Deployment => "deployment",
            WriteTarget::Status => "status",
            WriteTarget::Monitoring => "monitoring",
        }
    }
}

/// Counters and histograms of the reconcile loop.
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    writes: IntCounterVec,
    conflicts: IntCounterVec,
    duration: Histogram,
    leader: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "kubevirt_metrics_operator_reconciles_total",
                "Reconciliations of MetricsSidecarPolicy objects, by result.",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "kubevirt_metrics_operator_reconcile_errors_total",
                "Failed reconciliations, by error kind.",
            ),
            &["error"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "kubevirt_metrics_operator_patch_writes_total",
                "Successful writes to the API server, by target.",
            ),
            &["target"],
        )?;
        let conflicts = IntCounterVec::new(
            Opts::new(
                "kubevirt_metrics_operator_write_conflicts_total",
                "Writes rejected with 409 Conflict (stale resourceVersion) and retried, by target.",
            ),
            &["target"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "kubevirt_metrics_operator_reconcile_duration_seconds",
                "Duration of one reconciliation.",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        let leader = IntGauge::new(
            "kubevirt_metrics_operator_leader",
            "1 while this replica holds the leader lease and reconciles, else 0.",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(conflicts.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            writes,
            conflicts,
            duration,
            leader,
        })
    }

    pub fn reconcile_succeeded(&self, took: Duration) {
        self.reconciles.with_label_values(&["success"]).inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn reconcile_failed(&self, error_kind: &str, took: Duration) {
        self.reconciles.with_label_values(&["error"]).inc();
        self.errors.with_label_values(&[error_kind]).inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn write_done(&self, target: WriteTarget) {
        self.writes.with_label_values(&[target.label()]).inc();
    }

    pub fn write_conflicted(&self, target: WriteTarget) {
        self.conflicts.with_label_values(&[target.label()]).inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Number of successful writes to `target` so far (for tests and logs).
    pub fn writes(&self, target: WriteTarget) -> u64 {
        self.writes.with_label_values(&[target.label()]).get()
    }

    /// Number of 409 conflicts on `target` so far.
    pub fn conflicts(&self, target: WriteTarget) -> u64 {
        self.conflicts.with_label_values(&[target.label()]).get()
    }

    /// Prometheus text exposition 0.0.4 of every metric.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8(buf)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_exposition() {
        let m = Metrics::new().unwrap();
        m.reconcile_succeeded(Duration::from_millis(20));
        m.reconcile_failed("kube_api", Duration::from_millis(5));
        m.write_done(WriteTarget::KubeVirt);
        m.write_conflicted(WriteTarget::KubeVirt);
        m.set_leader(true);
        let text = m.encode().unwrap();
        assert!(text.contains("kubevirt_metrics_operator_reconciles_total{result=\"success\"} 1"));
        assert!(text.contains("kubevirt_metrics_operator_reconciles_total{result=\"error\"} 1"));
        assert!(
            text.contains("kubevirt_metrics_operator_reconcile_errors_total{error=\"kube_api\"} 1")
        );
        assert!(
            text.contains("kubevirt_metrics_operator_patch_writes_total{target=\"kubevirt\"} 1")
        );
        assert!(
            text.contains("kubevirt_metrics_operator_write_conflicts_total{target=\"kubevirt\"} 1")
        );
        assert!(text.contains("kubevirt_metrics_operator_reconcile_duration_seconds_count 2"));
        assert!(text.contains("kubevirt_metrics_operator_leader 1"));
        assert_eq!(m.writes(WriteTarget::KubeVirt), 1);
        assert_eq!(m.conflicts(WriteTarget::KubeVirt), 1);
    }
}
