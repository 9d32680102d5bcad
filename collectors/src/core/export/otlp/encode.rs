//! Families → one OTLP `ExportMetricsServiceRequest`, following the OpenTelemetry
//! specification "Prometheus and OpenMetrics Compatibility" (Prometheus metric points to OTLP).
//!
//! - One `ResourceMetrics` (the sidecar: `service.name`, `service.version`, `k8s.*`), one
//!   `ScopeMetrics` (this crate), one `Metric` per family.
//! - The metric name is the family name unchanged, `_total` included: the specification says
//!   the name SHOULD NOT be altered by default (dropping suffixes is an opt-in of a
//!   converter), and the OTel Collector's Prometheus receiver keeps it too, so a KubeVirt
//!   alert or dashboard name found in a backend is the name `/metrics` shows. HELP is the
//!   description; the Prometheus type is kept as `prometheus.type` in the metric metadata.
//!   No unit is derived.
//! - counter → cumulative monotonic Sum; gauge and untyped → Gauge; histogram → cumulative
//!   Histogram (bounds from `le`, bucket counts de-cumulated); summary → Summary. A histogram
//!   or summary series without `_count` is dropped, as the specification requires.
//! - Data-point attributes are KubeVirt's labels unchanged (`le`/`quantile` excepted);
//!   `time_unix_nano` is the sample's own timestamp or the batch time.
//! - Start times of cumulative points ([`StartTimes`]): see there.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, metric, number_data_point,
    summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ResourceProto;

use crate::core::export::{Batch, Resource};
use crate::core::metric::{Family, Labels, MetricType, Sample, series_labels};

/// The instrumentation scope of every metric this crate pushes.
pub const SCOPE_NAME: &str = env!("CARGO_PKG_NAME");

/// The start time of every cumulative series (counters, histograms, summaries), kept across
/// the passes of one sidecar process.
///
/// KubeVirt's counters are not the sidecar's: libvirt and the KubeVirt components count from
/// when a VM or component started, and their values go on unchanged when the sidecar
/// restarts. So the true start is unknown, and the specification's rule for that case
/// applies ("Cumulative streams: handling unknown start time", which the Prometheus
/// compatibility section requires when no `_created` is available): the first point of a
/// series this process pushes has `start_time_unix_nano == time_unix_nano` (a reset at an
/// unknown time, contributing no rate), and every later point repeats that start. After a
/// sidecar restart the same happens again, so a receiver sees a new unbroken sequence and
/// counts no spurious increase; using the process start time instead would claim the whole
/// counter accrued since the sidecar started. When a series' value (a histogram's or
/// summary's count) goes down, the counter was reset under us (the VM restarted): a new
/// sequence starts with a true reset, whose start is the time of the last point before it.
/// Series absent from a pass are forgotten.
#[derive(Debug, Default)]
pub struct StartTimes {
    series: HashMap<u64, SeriesStart>,
    pass: u64,
}

#[derive(Debug, Clone, Copy)]
struct SeriesStart {
    start_ns: u64,
    last_ns: u64,
    last_value: f64,
    pass: u64,
}

impl StartTimes {
    /// Number of series whose start is remembered.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    fn begin_pass(&mut self) {
        self.pass += 1;
    }

    fn end_pass(&mut self) {
        let pass = self.pass;
        self.series.retain(|_, series| series.pass == pass);
    }

    /// The start of the series `key` for a point at `time_ns` with cumulative `value`.
    fn start(&mut self, key: u64, time_ns: u64, value: f64) -> u64 {
        let pass = self.pass;
        match self.series.entry(key) {
            Entry::Vacant(vacant) => {
                vacant.insert(SeriesStart {
                    start_ns: time_ns,
                    last_ns: time_ns,
                    last_value: value,
                    pass,
                });
                time_ns
            }
            Entry::Occupied(mut occupied) => {
                let series = occupied.get_mut();
                series.pass = pass;
                if time_ns <= series.last_ns {
                    // A point already seen, or an older one of a series that carries its
                    // own history (KubeVirt's migration samples): no news about resets.
                    return series.start_ns.min(time_ns);
                }
                if value < series.last_value {
                    series.start_ns = series.last_ns;
                }
                series.last_ns = time_ns;
                series.last_value = value;
                series.start_ns
            }
        }
    }
}

/// The resource attributes of a sidecar (those it knows).
pub fn resource(resource: &Resource) -> ResourceProto {
    let mut attributes = vec![
        string_attribute("service.name", &resource.service_name),
        string_attribute("service.version", &resource.service_version),
    ];
    let optional = [
        ("k8s.node.name", &resource.node_name),
        ("k8s.pod.name", &resource.pod_name),
        ("k8s.namespace.name", &resource.namespace),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            attributes.push(string_attribute(key, value));
        }
    }
    ResourceProto {
        attributes,
        ..Default::default()
    }
}

/// The request carrying one batch. `starts` is updated with the batch's cumulative series.
pub fn request(
    batch: &Batch,
    resource: &ResourceProto,
    starts: &mut StartTimes,
) -> ExportMetricsServiceRequest {
    starts.begin_pass();
    let batch_ns = unix_nanos(batch.collected_at);
    let metrics = batch
        .families
        .iter()
        .filter(|family| !family.is_empty())
        .filter_map(|family| metric(family, batch_ns, starts))
        .collect();
    starts.end_pass();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn metric(family: &Family, batch_ns: u64, starts: &mut StartTimes) -> Option<Metric> {
    let data = match family.kind {
        MetricType::Counter => metric::Data::Sum(Sum {
            data_points: family
                .samples
                .iter()
                .map(|sample| {
                    let key = series_key(family, &sample.labels);
                    let time_ns = sample_ns(sample, batch_ns);
                    number_point(
                        family.kind,
                        sample,
                        starts.start(key, time_ns, sample.value),
                        time_ns,
                    )
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        MetricType::Gauge | MetricType::Untyped => metric::Data::Gauge(Gauge {
            data_points: family
                .samples
                .iter()
                .map(|sample| number_point(family.kind, sample, 0, sample_ns(sample, batch_ns)))
                .collect(),
        }),
        MetricType::Histogram => metric::Data::Histogram(Histogram {
            data_points: histogram_points(family, batch_ns, starts),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        MetricType::Summary => metric::Data::Summary(Summary {
            data_points: summary_points(family, batch_ns, starts),
        }),
    };
    let empty = match &data {
        metric::Data::Histogram(histogram) => histogram.data_points.is_empty(),
        metric::Data::Summary(summary) => summary.data_points.is_empty(),
        _ => false,
    };
    if empty {
        return None;
    }
    Some(Metric {
        name: family.name.to_string(),
        description: family.help.to_string(),
        unit: String::new(),
        metadata: vec![string_attribute(
            "prometheus.type",
            prometheus_type(family.kind),
        )],
        data: Some(data),
    })
}

/// The TYPE word of the Prometheus compatibility specification (`unknown` for untyped).
fn prometheus_type(kind: MetricType) -> &'static str {
    match kind {
        MetricType::Untyped => "unknown",
        other => other.as_str(),
    }
}

fn number_point(kind: MetricType, sample: &Sample, start_ns: u64, time_ns: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes(kind, &sample.labels),
        start_time_unix_nano: start_ns,
        time_unix_nano: time_ns,
        value: Some(number_data_point::Value::AsDouble(sample.value)),
        ..Default::default()
    }
}

/// The `_bucket`/`_sum`/`_count` samples of one histogram or summary series.
struct Series<'a> {
    /// [`series_key`] of the series.
    key: u64,
    labels: &'a Labels,
    /// `(le, cumulative count)` or `(quantile, value)`.
    points: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
    timestamp_ms: Option<i64>,
}

impl Series<'_> {
    /// The start and time of the series' point: its newest sample's timestamp or the
    /// batch's time; the start as [`StartTimes::start`] tracks it by the `_count`.
    fn times(&self, count: f64, batch_ns: u64, starts: &mut StartTimes) -> (u64, u64) {
        let time_ns = self.timestamp_ms.map_or(batch_ns, millis_to_nanos);
        (starts.start(self.key, time_ns, count), time_ns)
    }
}

/// Groups a histogram's or summary's samples by series (labels without its
/// [`MetricType::bound_label`]), in order of first appearance.
fn group_series(family: &Family) -> Vec<Series<'_>> {
    let bound = family.kind.bound_label();
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut series: Vec<Series<'_>> = Vec::new();
    for sample in &family.samples {
        let key = series_key(family, &sample.labels);
        let slot = *index.entry(key).or_insert_with(|| {
            series.push(Series {
                key,
                labels: &sample.labels,
                points: Vec::new(),
                sum: None,
                count: None,
                timestamp_ms: None,
            });
            series.len() - 1
        });
        let entry = &mut series[slot];
        entry.timestamp_ms = entry.timestamp_ms.max(sample.timestamp_ms);
        match sample.suffix {
            "_sum" => entry.sum = Some(sample.value),
            "_count" => entry.count = Some(sample.value),
            _ => {
                let bound = sample
                    .labels
                    .iter()
                    .find(|(name, _)| Some(name.as_str()) == bound)
                    .and_then(|(_, value)| parse_float(value));
                if let Some(bound) = bound {
                    entry.points.push((bound, sample.value));
                }
            }
        }
    }
    series
}

fn histogram_points(
    family: &Family,
    batch_ns: u64,
    starts: &mut StartTimes,
) -> Vec<HistogramDataPoint> {
    group_series(family)
        .into_iter()
        .filter_map(|mut series| {
            let count = series.count?;
            series.points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let total = to_count(count);
            let mut explicit_bounds = Vec::with_capacity(series.points.len());
            let mut bucket_counts = Vec::with_capacity(series.points.len() + 1);
            let mut previous = 0u64;
            for &(bound, cumulative) in &series.points {
                let cumulative = to_count(cumulative);
                bucket_counts.push(cumulative.saturating_sub(previous));
                previous = cumulative;
                if bound.is_finite() {
                    explicit_bounds.push(bound);
                }
            }
            if series
                .points
                .last()
                .is_none_or(|(bound, _)| bound.is_finite())
            {
                bucket_counts.push(total.saturating_sub(previous));
            }
            let (start_ns, time_ns) = series.times(count, batch_ns, starts);
            Some(HistogramDataPoint {
                attributes: attributes(family.kind, series.labels),
                start_time_unix_nano: start_ns,
                time_unix_nano: time_ns,
                count: total,
                sum: series.sum,
                bucket_counts,
                explicit_bounds,
                ..Default::default()
            })
        })
        .collect()
}

fn summary_points(
    family: &Family,
    batch_ns: u64,
    starts: &mut StartTimes,
) -> Vec<SummaryDataPoint> {
    group_series(family)
        .into_iter()
        .filter_map(|series| {
            let count = series.count?;
            let (start_ns, time_ns) = series.times(count, batch_ns, starts);
            Some(SummaryDataPoint {
                attributes: attributes(family.kind, series.labels),
                start_time_unix_nano: start_ns,
                time_unix_nano: time_ns,
                count: to_count(count),
                sum: series.sum.unwrap_or(0.0),
                quantile_values: series
                    .points
                    .iter()
                    .map(|&(quantile, value)| ValueAtQuantile { quantile, value })
                    .collect(),
                ..Default::default()
            })
        })
        .collect()
}

/// KubeVirt's labels as attributes, unchanged and in order, but for a histogram's or
/// summary's bound label, which is structure there.
fn attributes(kind: MetricType, labels: &Labels) -> Vec<KeyValue> {
    series_labels(kind, labels)
        .map(|(name, value)| string_attribute(name, value))
        .collect()
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

/// Identifies a series of `family` (its name and series labels) across passes.
fn series_key(family: &Family, labels: &Labels) -> u64 {
    let mut hasher = DefaultHasher::new();
    family.name.hash(&mut hasher);
    for (label, value) in series_labels(family.kind, labels) {
        label.hash(&mut hasher);
        value.hash(&mut hasher);
    }
    hasher.finish()
}

/// A Go-style float as the text format writes `le` and `quantile` (`+Inf` included).
fn parse_float(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

/// A Prometheus count (a float) as OTLP's integer count.
fn to_count(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    }
}

fn sample_ns(sample: &Sample, batch_ns: u64) -> u64 {
    sample.timestamp_ms.map_or(batch_ns, millis_to_nanos)
}

fn millis_to_nanos(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn labels(pairs: &[(&'static str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(name, value)| ((*name).into(), (*value).into()))
            .collect()
    }

    fn batch(families: Vec<Family>, seconds: u64) -> Batch {
        Batch {
            families: Arc::new(families),
            collected_at: UNIX_EPOCH + Duration::from_secs(seconds),
        }
    }

    fn counter(value: f64) -> Family {
        let mut family = Family::new(
            "kubevirt_vmi_network_receive_bytes_total",
            "h",
            MetricType::Counter,
        );
        family.samples.push(Sample::new(
            labels(&[("name", "vm"), ("namespace", "ns")]),
            value,
        ));
        family
    }

    fn sum_point(request: &ExportMetricsServiceRequest) -> NumberDataPoint {
        let metric = &request.resource_metrics[0].scope_metrics[0].metrics[0];
        match &metric.data {
            Some(metric::Data::Sum(sum)) => sum.data_points[0].clone(),
            other => panic!("not a sum: {other:?}"),
        }
    }

    #[test]
    fn counter_start_is_first_seen_then_kept_then_reset_on_decrease() {
        let resource = resource(&Resource::default());
        let mut starts = StartTimes::default();
        let first = sum_point(&request(
            &batch(vec![counter(10.0)], 100),
            &resource,
            &mut starts,
        ));
        assert_eq!(first.start_time_unix_nano, first.time_unix_nano);
        let second = sum_point(&request(
            &batch(vec![counter(20.0)], 130),
            &resource,
            &mut starts,
        ));
        assert_eq!(second.start_time_unix_nano, 100_000_000_000);
        assert_eq!(second.time_unix_nano, 130_000_000_000);
        let reset = sum_point(&request(
            &batch(vec![counter(3.0)], 160),
            &resource,
            &mut starts,
        ));
        assert_eq!(reset.start_time_unix_nano, 130_000_000_000);
        let after = sum_point(&request(
            &batch(vec![counter(5.0)], 190),
            &resource,
            &mut starts,
        ));
        assert_eq!(after.start_time_unix_nano, 130_000_000_000);
        request(&batch(vec![], 220), &resource, &mut starts);
        assert!(starts.is_empty(), "series gone from a pass are forgotten");
    }

    #[test]
    fn histogram_buckets_are_decumulated_and_inf_is_the_count() {
        let mut family = Family::new("h_seconds", "h", MetricType::Histogram);
        for (le, value) in [("0.5", 2.0), ("1", 5.0), ("+Inf", 7.0)] {
            let mut sample = Sample::new(labels(&[("le", le), ("x", "y")]), value);
            sample.suffix = "_bucket";
            family.samples.push(sample);
        }
        for (suffix, value) in [("_sum", 4.5), ("_count", 7.0)] {
            let mut sample = Sample::new(labels(&[("x", "y")]), value);
            sample.suffix = suffix;
            family.samples.push(sample);
        }
        let request = request(
            &batch(vec![family], 1),
            &resource(&Resource::default()),
            &mut StartTimes::default(),
        );
        let metric = &request.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(metric::Data::Histogram(histogram)) = &metric.data else {
            panic!("not a histogram");
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, vec![0.5, 1.0]);
        assert_eq!(point.bucket_counts, vec![2, 3, 2]);
        assert_eq!((point.count, point.sum), (7, Some(4.5)));
        assert_eq!(point.attributes.len(), 1);
    }

    #[test]
    fn le_and_quantile_are_ordinary_attributes_of_a_gauge_or_counter() {
        let mut gauge = Family::new("g", "h", MetricType::Gauge);
        gauge.samples.push(Sample::new(
            labels(&[("le", "low"), ("quantile", "p50"), ("x", "y")]),
            1.0,
        ));
        let mut counter = counter(2.0);
        counter.samples[0].labels = labels(&[("le", "a"), ("x", "y")]);
        let mut other = counter.samples[0].clone();
        other.labels = labels(&[("le", "b"), ("x", "y")]);
        counter.samples.push(other);
        let request = request(
            &batch(vec![gauge, counter], 1),
            &resource(&Resource::default()),
            &mut StartTimes::default(),
        );
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let keys = |attributes: &[KeyValue]| -> Vec<String> {
            attributes.iter().map(|kv| kv.key.clone()).collect()
        };
        let Some(metric::Data::Gauge(gauge)) = &metrics[0].data else {
            panic!("not a gauge");
        };
        assert_eq!(
            keys(&gauge.data_points[0].attributes),
            ["le", "quantile", "x"]
        );
        let Some(metric::Data::Sum(sum)) = &metrics[1].data else {
            panic!("not a sum");
        };
        // Two series told apart by `le` alone.
        assert_eq!(sum.data_points.len(), 2);
        assert_eq!(keys(&sum.data_points[1].attributes), ["le", "x"]);
    }
}
