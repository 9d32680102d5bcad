//! The sidecar's own health metrics, all under one prefix, `kubevirt_metrics_sidecar_`, so
//! they can never collide with a KubeVirt family and one selector finds them all.
//!
//! They are kept in a `prometheus` crate registry (counters, gauges, a histogram) and turned
//! into [`Family`] values when a snapshot is published, so they leave through the same
//! encoders as everything else. They are read once per collection pass (the server's HTTP
//! counters change in between, and show up with the next snapshot), which keeps the
//! snapshot cache valid between passes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::proto::{self, MetricType as ProtoType};
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::core::format::text::format_float;
use crate::core::metric::{Family, LabelName, LabelValue, Labels, MetricType, Sample};

/// Every self-metric's name starts with this.
pub const PREFIX: &str = "kubevirt_metrics_sidecar_";

#[derive(Debug, thiserror::Error)]
pub enum SelfMetricsError {
    #[error("registering self-metric: {0}")]
    Register(#[from] prometheus::Error),
}

/// Collection durations from 10 ms to 2 min: a pass over a busy node's VMIs can take seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Clone)]
pub struct SelfMetrics {
    registry: Registry,
    collection_duration: Histogram,
    collections: IntCounterVec,
    problems: IntCounterVec,
    targets: IntGauge,
    stale_dropped: IntCounter,
    component_check_failures: IntCounterVec,
    component_scrapes: IntCounter,
    component_probes: IntCounter,
    component_families: IntGauge,
    withheld_families: IntGauge,
    last_success: Gauge,
    http_refused: IntCounterVec,
    http_connections: IntGauge,
    push: PushMetrics,
}

/// Per push sink (label `sink`): what the export pipeline did with each pass's batch.
#[derive(Clone)]
struct PushMetrics {
    sent: IntCounterVec,
    failures: IntCounterVec,
    dropped: IntCounterVec,
    queue_length: IntGaugeVec,
    last_success: prometheus::GaugeVec,
}

/// Why a push attempt failed (label `reason` of `push_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushFailure {
    /// Retried with backoff (connection refused, timeout, HTTP 429 or 5xx).
    Retryable,
    /// The batch was given up at once (HTTP 4xx, a rejected payload).
    Permanent,
}

impl PushFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Permanent => "permanent",
        }
    }
}

impl std::fmt::Debug for SelfMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfMetrics").finish_non_exhaustive()
    }
}

/// Labels of `kubevirt_metrics_sidecar_build_info`.
#[derive(Debug, Clone, Copy)]
pub struct BuildInfo<'a> {
    /// The binary, e.g. `virt-handler-metrics`.
    pub collector: &'a str,
    /// `complement` or `full`.
    pub mode: &'a str,
}

impl SelfMetrics {
    pub fn new(build: BuildInfo<'_>) -> Result<Self, SelfMetricsError> {
        let registry = Registry::new();
        let collection_duration = Histogram::with_opts(
            HistogramOpts::new(
                name("collection_duration_seconds"),
                "Time one collection pass took, including passes cut off at the collection timeout.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let collections = IntCounterVec::new(
            Opts::new(
                name("collections_total"),
                "Collection passes, by result: ok, or timeout when the collector did not return by its deadline.",
            ),
            &["result"],
        )?;
        let problems = IntCounterVec::new(
            Opts::new(
                name("problems_total"),
                "Problems met while collecting (one per affected target and pass), by source and kind.",
            ),
            &["kind", "source"],
        )?;
        let targets = IntGauge::with_opts(Opts::new(
            name("targets"),
            "Targets (VMIs or objects) the last collection pass looked at.",
        ))?;
        let stale_dropped = IntCounter::with_opts(Opts::new(
            name("stale_results_dropped_total"),
            "Results thrown away because they arrived after their collection interval.",
        ))?;
        let component_check_failures = IntCounterVec::new(
            Opts::new(
                name("component_check_failures_total"),
                "Failed attempts to read the co-located component's /metrics, by kind.",
            ),
            &["kind"],
        )?;
        let component_scrapes = IntCounter::with_opts(Opts::new(
            name("component_scrapes_total"),
            "Requests for the co-located component's whole /metrics page (complement checks and relays).",
        ))?;
        let component_probes = IntCounter::with_opts(Opts::new(
            name("component_probes_total"),
            "Cheap /healthz requests to the co-located component between two reads of its /metrics (complement mode).",
        ))?;
        let component_families = IntGauge::with_opts(Opts::new(
            name("component_families"),
            "Metric families the co-located component is known to serve (complement mode).",
        ))?;
        let withheld_families = IntGauge::with_opts(Opts::new(
            name("withheld_families"),
            "Families this sidecar produced but did not publish because the component serves them, or because the component has not been read yet (complement mode).",
        ))?;
        let last_success = Gauge::with_opts(Opts::new(
            name("last_successful_collection_timestamp_seconds"),
            "Unix time at which the last collection pass finished within its deadline.",
        ))?;
        let http_refused = IntCounterVec::new(
            Opts::new(
                name("http_refused_total"),
                "HTTP connections or requests the sidecar's server refused or cut off, by reason: connection_limit, idle_evicted, idle_timeout, header_timeout, write_timeout, header_too_large, malformed, tls_handshake.",
            ),
            &["reason"],
        )?;
        let http_connections = IntGauge::with_opts(Opts::new(
            name("http_connections"),
            "HTTP connections open on the sidecar's server when the snapshot was published.",
        ))?;
        let push = PushMetrics {
            sent: IntCounterVec::new(
                Opts::new(
                    name("push_batches_sent_total"),
                    "Batches (one per collection pass) a push sink delivered, by sink.",
                ),
                &["sink"],
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    name("push_failures_total"),
                    "Failed push requests, by sink and reason: retryable (retried with backoff) or permanent (the batch was given up).",
                ),
                &["reason", "sink"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    name("push_batches_dropped_total"),
                    "Batches a push sink never delivered: the oldest one when its queue was full, or still queued at shutdown.",
                ),
                &["sink"],
            )?,
            queue_length: IntGaugeVec::new(
                Opts::new(
                    name("push_queue_length"),
                    "Batches waiting in a push sink's queue (at most --push-queue-capacity).",
                ),
                &["sink"],
            )?,
            last_success: prometheus::GaugeVec::new(
                Opts::new(
                    name("push_last_success_timestamp_seconds"),
                    "Unix time of a push sink's last delivered batch; 0 before the first.",
                ),
                &["sink"],
            )?,
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                name("build_info"),
                "Always 1; labels name the collector, its version and its mode.",
            ),
            &["collector", "mode", "version"],
        )?;
        build_info
            .with_label_values(&[build.collector, build.mode, env!("CARGO_PKG_VERSION")])
            .set(1);

        registry.register(Box::new(collection_duration.clone()))?;
        registry.register(Box::new(collections.clone()))?;
        registry.register(Box::new(problems.clone()))?;
        registry.register(Box::new(targets.clone()))?;
        registry.register(Box::new(stale_dropped.clone()))?;
        registry.register(Box::new(component_check_failures.clone()))?;
        registry.register(Box::new(component_scrapes.clone()))?;
        registry.register(Box::new(component_probes.clone()))?;
        registry.register(Box::new(component_families.clone()))?;
        registry.register(Box::new(withheld_families.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(http_refused.clone()))?;
        registry.register(Box::new(http_connections.clone()))?;
        registry.register(Box::new(push.sent.clone()))?;
        registry.register(Box::new(push.failures.clone()))?;
        registry.register(Box::new(push.dropped.clone()))?;
        registry.register(Box::new(push.queue_length.clone()))?;
        registry.register(Box::new(push.last_success.clone()))?;
        registry.register(Box::new(build_info))?;
        Ok(Self {
            registry,
            collection_duration,
            collections,
            problems,
            targets,
            stale_dropped,
            component_check_failures,
            component_scrapes,
            component_probes,
            component_families,
            withheld_families,
            last_success,
            http_refused,
            http_connections,
            push,
        })
    }

    /// A push sink exists: its series appear (at zero) from the first snapshot on.
    pub fn register_push_sink(&self, sink: &str) {
        let push = &self.push;
        push.sent.with_label_values(&[sink]);
        for failure in [PushFailure::Retryable, PushFailure::Permanent] {
            push.failures.with_label_values(&[failure.as_str(), sink]);
        }
        push.dropped.with_label_values(&[sink]);
        push.queue_length.with_label_values(&[sink]).set(0);
        push.last_success.with_label_values(&[sink]).set(0.0);
    }

    /// `sink` delivered a batch at `at`.
    pub fn count_push_sent(&self, sink: &str, at: SystemTime) {
        self.push.sent.with_label_values(&[sink]).inc();
        let unix = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.push.last_success.with_label_values(&[sink]).set(unix);
    }

    pub fn count_push_failure(&self, sink: &str, failure: PushFailure) {
        self.push
            .failures
            .with_label_values(&[failure.as_str(), sink])
            .inc();
    }

    pub fn add_push_dropped(&self, sink: &str, batches: u64) {
        self.push.dropped.with_label_values(&[sink]).inc_by(batches);
    }

    pub fn set_push_queue_length(&self, sink: &str, length: usize) {
        self.push
            .queue_length
            .with_label_values(&[sink])
            .set(i64::try_from(length).unwrap_or(i64::MAX));
    }

    /// One pass finished (`timed_out`: cut off at its deadline) after `took`.
    pub fn observe_collection(&self, took: Duration, timed_out: bool, finished: SystemTime) {
        self.collection_duration.observe(took.as_secs_f64());
        let result = if timed_out { "timeout" } else { "ok" };
        self.collections.with_label_values(&[result]).inc();
        if !timed_out {
            let unix = finished
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            self.last_success.set(unix);
        }
    }

    pub fn count_problem(&self, source: &str, kind: &str) {
        self.problems.with_label_values(&[kind, source]).inc();
    }

    pub fn set_targets(&self, seen: u64) {
        self.targets.set(i64::try_from(seen).unwrap_or(i64::MAX));
    }

    pub fn add_stale_dropped(&self, dropped: u64) {
        self.stale_dropped.inc_by(dropped);
    }

    pub fn count_component_check_failure(&self, kind: &str) {
        self.component_check_failures
            .with_label_values(&[kind])
            .inc();
    }

    pub fn add_component_scrapes(&self, scrapes: u64) {
        self.component_scrapes.inc_by(scrapes);
    }

    pub fn count_component_probe(&self) {
        self.component_probes.inc();
    }

    pub fn set_component_families(&self, known: usize) {
        self.component_families
            .set(i64::try_from(known).unwrap_or(i64::MAX));
    }

    pub fn set_withheld_families(&self, withheld: usize) {
        self.withheld_families
            .set(i64::try_from(withheld).unwrap_or(i64::MAX));
    }

    /// Counted by the server as it happens; published with the next snapshot.
    pub fn count_http_refused(&self, reason: &str) {
        self.http_refused.with_label_values(&[reason]).inc();
    }

    pub fn set_http_connections(&self, open: usize) {
        self.http_connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// The current values, as families for the encoders.
    pub fn families(&self) -> Vec<Family> {
        self.registry.gather().iter().map(to_family).collect()
    }
}

fn name(suffix: &str) -> String {
    format!("{PREFIX}{suffix}")
}

/// Converts a gathered family into our model, the way client_golang would write it: label
/// pairs sorted by name, `le`/`quantile` last, a `+Inf` bucket, then `_sum` and `_count`.
fn to_family(gathered: &proto::MetricFamily) -> Family {
    let kind = match gathered.get_field_type() {
        ProtoType::COUNTER => MetricType::Counter,
        ProtoType::GAUGE => MetricType::Gauge,
        ProtoType::HISTOGRAM => MetricType::Histogram,
        ProtoType::SUMMARY => MetricType::Summary,
        ProtoType::UNTYPED => MetricType::Untyped,
    };
    let mut family = Family::new(gathered.name().to_owned(), gathered.help().to_owned(), kind);
    for metric in gathered.get_metric() {
        let mut labels: Vec<(LabelName, LabelValue)> = metric
            .get_label()
            .iter()
            .map(|pair| (pair.name().into(), pair.value().into()))
            .collect();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        match kind {
            MetricType::Counter => {
                family
                    .samples
                    .push(Sample::new(labels, metric.get_counter().get_value()));
            }
            // Our registry holds no untyped metric; read one as a gauge if it ever does.
            MetricType::Gauge | MetricType::Untyped => {
                family
                    .samples
                    .push(Sample::new(labels, metric.get_gauge().get_value()));
            }
            MetricType::Histogram => {
                push_histogram(&mut family, labels.into(), metric.get_histogram())
            }
            MetricType::Summary => push_summary(&mut family, labels.into(), metric.get_summary()),
        }
    }
    family
}

fn push_histogram(family: &mut Family, labels: Labels, histogram: &proto::Histogram) {
    let mut saw_inf = false;
    for bucket in histogram.get_bucket() {
        saw_inf |= bucket.upper_bound() == f64::INFINITY;
        family.samples.push(suffixed(
            "_bucket",
            with_label(&labels, "le", format_float(bucket.upper_bound())),
            bucket.cumulative_count() as f64,
        ));
    }
    if !saw_inf {
        family.samples.push(suffixed(
            "_bucket",
            with_label(&labels, "le", "+Inf".to_owned()),
            histogram.get_sample_count() as f64,
        ));
    }
    family
        .samples
        .push(suffixed("_sum", labels.clone(), histogram.get_sample_sum()));
    family.samples.push(suffixed(
        "_count",
        labels,
        histogram.get_sample_count() as f64,
    ));
}

fn push_summary(family: &mut Family, labels: Labels, summary: &proto::Summary) {
    for quantile in summary.get_quantile() {
        family.samples.push(suffixed(
            "",
            with_label(&labels, "quantile", format_float(quantile.quantile())),
            quantile.value(),
        ));
    }
    family
        .samples
        .push(suffixed("_sum", labels.clone(), summary.sample_sum()));
    family
        .samples
        .push(suffixed("_count", labels, summary.sample_count() as f64));
}

fn with_label(labels: &Labels, name: &'static str, value: String) -> Labels {
    let mut labels = labels.to_vec();
    labels.push((LabelName::new_static(name), value.into()));
    labels.into()
}

fn suffixed(suffix: &'static str, labels: Labels, value: f64) -> Sample {
    let mut sample = Sample::new(labels, value);
    sample.suffix = suffix;
    sample
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::core::format::text;

    #[test]
    fn every_name_has_the_prefix_and_the_text_is_client_golang_shaped() {
        let metrics = SelfMetrics::new(BuildInfo {
            collector: "virt-handler-metrics",
            mode: "complement",
        })
        .unwrap();
        metrics.observe_collection(
            Duration::from_millis(30),
            false,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        metrics.count_problem("launcher", "timeout");
        metrics.count_problem("launcher", "timeout");
        metrics.set_targets(3);
        metrics.count_component_check_failure("connect");

        let families = metrics.families();
        assert!(families.iter().all(|f| f.name.starts_with(PREFIX)));
        let body = text::encode(&families);
        let build_info = format!(
            "kubevirt_metrics_sidecar_build_info{{collector=\"virt-handler-metrics\",mode=\"complement\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        for line in [
            build_info.as_str(),
            "kubevirt_metrics_sidecar_problems_total{kind=\"timeout\",source=\"launcher\"} 2",
            "kubevirt_metrics_sidecar_collection_duration_seconds_bucket{le=\"0.025\"} 0",
            "kubevirt_metrics_sidecar_collection_duration_seconds_bucket{le=\"0.05\"} 1",
            "kubevirt_metrics_sidecar_collection_duration_seconds_bucket{le=\"+Inf\"} 1",
            "kubevirt_metrics_sidecar_collection_duration_seconds_count 1",
            "kubevirt_metrics_sidecar_last_successful_collection_timestamp_seconds 1.7e+09",
            "kubevirt_metrics_sidecar_targets 3",
            "kubevirt_metrics_sidecar_component_check_failures_total{kind=\"connect\"} 1",
            "# TYPE kubevirt_metrics_sidecar_collections_total counter",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "missing {line:?} in\n{body}"
            );
        }
    }
}
