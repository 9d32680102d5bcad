//! The OTLP sink against a receiver built on the official protocol definitions
//! (`otlp_support`), over OTLP/HTTP and OTLP/gRPC: KubeVirt's virt-handler families
//! (`testdata/component/virt-handler-metrics.prom`: counters, gauges, histograms, a summary,
//! timestamped migration samples, plus one untyped family) are pushed, and the decoded
//! requests must carry the mapping the OpenTelemetry specification gives for Prometheus data.
//! Then the sink's answers to a failing receiver: retryable or permanent, as OTLP says.

#![allow(clippy::unwrap_used)]

#[path = "otlp_support/https.rs"]
mod otlp_https;
#[path = "otlp_support/mod.rs"]
mod otlp_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubevirt_metrics_collectors::core::component::parse;
use kubevirt_metrics_collectors::core::export::{Batch, Resource, SendError, Sink, otlp};
use kubevirt_metrics_collectors::core::metric::{Family, MetricType, Sample};
use kubevirt_metrics_flags::{ExportArgs, OtlpCompression, OtlpProtocol};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, metric, number_data_point,
};
use otlp_support::{Receiver, Reply};

type Attributes = Vec<(String, String)>;

fn families() -> Vec<Family> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/component/virt-handler-metrics.prom");
    let mut families = parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut untyped = Family::new(
        "kubevirt_test_untyped",
        "An untyped family.",
        MetricType::Untyped,
    );
    untyped
        .samples
        .push(Sample::new(vec![(("node").into(), ("node-a").into())], 4.5));
    families.push(untyped);
    let kinds: BTreeSet<MetricType> = families.iter().map(|f| f.kind).collect();
    assert_eq!(kinds.len(), 5, "the input has every family type: {kinds:?}");
    assert!(
        families
            .iter()
            .flat_map(|f| &f.samples)
            .any(|s| s.timestamp_ms.is_some()),
        "the input has timestamped samples"
    );
    families
}

fn resource() -> Resource {
    Resource {
        service_name: "virt-handler-metrics".to_owned(),
        service_version: "0.1.0".to_owned(),
        node_name: Some("node-a".to_owned()),
        pod_name: Some("kubevirt-metrics-handler-x7".to_owned()),
        namespace: Some("kubevirt".to_owned()),
    }
}

struct Setup {
    args: ExportArgs,
    _token: tempfile::NamedTempFile,
}

fn setup(endpoint: String, protocol: OtlpProtocol, compression: OtlpCompression) -> Setup {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "s3cr3t\n").unwrap();
    let args = ExportArgs {
        otlp_endpoint: Some(endpoint),
        otlp_protocol: protocol,
        otlp_compression: compression,
        otlp_headers: vec!["X-Scope-OrgID=tenant-a".to_owned()],
        otlp_bearer_token_file: Some(token.path().to_owned()),
        push_timeout: Duration::from_secs(1),
        ..ExportArgs::default()
    };
    Setup {
        args,
        _token: token,
    }
}

fn sink(args: &ExportArgs) -> Box<dyn Sink> {
    otlp::from_args(args, &resource()).unwrap().unwrap()
}

fn batch(families: &Arc<Vec<Family>>, seconds: u64) -> Batch {
    Batch {
        families: families.clone(),
        collected_at: UNIX_EPOCH + Duration::from_secs(seconds),
    }
}

fn nanos(seconds: u64) -> u64 {
    seconds * 1_000_000_000
}

fn attributes(kvs: &[KeyValue]) -> Attributes {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(value)) => value.clone(),
                other => panic!("attribute {} is not a string: {other:?}", kv.key),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn series_labels(sample: &Sample) -> Attributes {
    sample
        .labels
        .iter()
        .filter(|(name, _)| name != "le" && name != "quantile")
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn label(sample: &Sample, name: &str) -> f64 {
    let value = &sample.labels.iter().find(|(n, _)| n == name).unwrap().1;
    if value == "+Inf" {
        f64::INFINITY
    } else {
        value.parse().unwrap()
    }
}

fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

/// A cumulative point: (metric, attributes, time).
type Point = (String, Attributes, u64);
/// The cumulative points of one pass: (start, value or count).
type Starts = BTreeMap<Point, (u64, f64)>;

/// Asserts the whole mapping of one decoded request against the families pushed; returns
/// the start and time of every cumulative point.
fn assert_mapping(
    request: &ExportMetricsServiceRequest,
    families: &[Family],
    batch_ns: u64,
) -> Starts {
    assert_eq!(request.resource_metrics.len(), 1);
    let resource_metrics = &request.resource_metrics[0];
    let resource_attributes: BTreeMap<_, _> =
        attributes(&resource_metrics.resource.as_ref().unwrap().attributes)
            .into_iter()
            .collect();
    let expected: BTreeMap<String, String> = [
        ("service.name", "virt-handler-metrics"),
        ("service.version", "0.1.0"),
        ("k8s.node.name", "node-a"),
        ("k8s.pod.name", "kubevirt-metrics-handler-x7"),
        ("k8s.namespace.name", "kubevirt"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(resource_attributes, expected);
    assert_eq!(resource_metrics.scope_metrics.len(), 1);
    let scope = resource_metrics.scope_metrics[0].scope.as_ref().unwrap();
    assert_eq!(scope.name, "kubevirt-metrics-collectors");
    assert!(!scope.version.is_empty());

    let metrics = &resource_metrics.scope_metrics[0].metrics;
    let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    let expected_names: Vec<&str> = families
        .iter()
        .filter(|f| !f.is_empty())
        .map(|f| f.name.as_ref())
        .collect();
    assert_eq!(
        names.iter().copied().collect::<BTreeSet<_>>(),
        expected_names.iter().copied().collect::<BTreeSet<_>>(),
        "one metric per family, named as /metrics names it (`_total` kept)"
    );
    assert_eq!(names.len(), expected_names.len(), "no family twice");

    let mut starts = Starts::new();
    for family in families.iter().filter(|f| !f.is_empty()) {
        let metric = metrics.iter().find(|m| m.name == family.name).unwrap();
        assert_eq!(metric.description, family.help, "{}", family.name);
        let prometheus_type = match family.kind {
            MetricType::Untyped => "unknown",
            other => other.as_str(),
        };
        assert_eq!(
            attributes(&metric.metadata),
            vec![("prometheus.type".to_owned(), prometheus_type.to_owned())]
        );
        match family.kind {
            MetricType::Counter => assert_counter(family, metric, batch_ns, &mut starts),
            MetricType::Gauge | MetricType::Untyped => assert_gauge(family, metric, batch_ns),
            MetricType::Histogram => assert_histogram(family, metric, batch_ns, &mut starts),
            MetricType::Summary => assert_summary(family, metric, batch_ns, &mut starts),
        }
    }
    starts
}

fn expected_time(sample: &Sample, batch_ns: u64) -> u64 {
    sample
        .timestamp_ms
        .map_or(batch_ns, |ms| u64::try_from(ms).unwrap() * 1_000_000)
}

fn number_value(value: Option<&number_data_point::Value>) -> f64 {
    match value {
        Some(number_data_point::Value::AsDouble(value)) => *value,
        Some(number_data_point::Value::AsInt(value)) => *value as f64,
        None => panic!("a point without a value"),
    }
}

fn assert_counter(family: &Family, metric: &Metric, batch_ns: u64, starts: &mut Starts) {
    let Some(metric::Data::Sum(sum)) = &metric.data else {
        panic!("{}: counter is not a Sum: {:?}", family.name, metric.data);
    };
    assert!(sum.is_monotonic, "{}", family.name);
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    assert_eq!(
        sum.data_points.len(),
        family.samples.len(),
        "{}",
        family.name
    );
    for sample in &family.samples {
        let labels = series_labels(sample);
        let time = expected_time(sample, batch_ns);
        let point = sum
            .data_points
            .iter()
            .find(|p| attributes(&p.attributes) == labels && p.time_unix_nano == time)
            .unwrap_or_else(|| panic!("{}: no point for {labels:?} at {time}", family.name));
        assert!(
            same(number_value(point.value.as_ref()), sample.value),
            "{}",
            family.name
        );
        assert!(point.start_time_unix_nano > 0);
        assert!(point.start_time_unix_nano <= point.time_unix_nano);
        starts.insert(
            (family.name.to_string(), labels, time),
            (
                point.start_time_unix_nano,
                number_value(point.value.as_ref()),
            ),
        );
    }
}

fn assert_gauge(family: &Family, metric: &Metric, batch_ns: u64) {
    let Some(metric::Data::Gauge(gauge)) = &metric.data else {
        panic!("{}: not a Gauge: {:?}", family.name, metric.data);
    };
    assert_eq!(
        gauge.data_points.len(),
        family.samples.len(),
        "{}",
        family.name
    );
    for sample in &family.samples {
        let labels = series_labels(sample);
        let time = expected_time(sample, batch_ns);
        let point = gauge
            .data_points
            .iter()
            .find(|p| attributes(&p.attributes) == labels && p.time_unix_nano == time)
            .unwrap_or_else(|| panic!("{}: no point for {labels:?} at {time}", family.name));
        assert!(
            same(number_value(point.value.as_ref()), sample.value),
            "{}",
            family.name
        );
    }
}

/// A histogram's or summary's expected series: labels → (points by bound, sum, count, time).
type Expected = BTreeMap<Attributes, (Vec<(f64, f64)>, Option<f64>, Option<f64>, u64)>;

fn expected_series(family: &Family, bound: &str, batch_ns: u64) -> Expected {
    let mut series = Expected::new();
    for sample in &family.samples {
        let entry = series
            .entry(series_labels(sample))
            .or_insert_with(|| (Vec::new(), None, None, 0));
        entry.3 = entry.3.max(expected_time(sample, batch_ns));
        match sample.suffix {
            "_sum" => entry.1 = Some(sample.value),
            "_count" => entry.2 = Some(sample.value),
            _ => entry.0.push((label(sample, bound), sample.value)),
        }
    }
    for entry in series.values_mut() {
        entry.0.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

fn assert_histogram(family: &Family, metric: &Metric, batch_ns: u64, starts: &mut Starts) {
    let Some(metric::Data::Histogram(histogram)) = &metric.data else {
        panic!("{}: not a Histogram: {:?}", family.name, metric.data);
    };
    assert_eq!(
        histogram.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let expected = expected_series(family, "le", batch_ns);
    assert_eq!(
        histogram.data_points.len(),
        expected.len(),
        "{}",
        family.name
    );
    for (labels, (buckets, sum, count, time)) in expected {
        let point = histogram
            .data_points
            .iter()
            .find(|p| attributes(&p.attributes) == labels)
            .unwrap_or_else(|| panic!("{}: no point for {labels:?}", family.name));
        let bounds: Vec<f64> = buckets
            .iter()
            .map(|b| b.0)
            .filter(|b| b.is_finite())
            .collect();
        assert_eq!(point.explicit_bounds, bounds, "{}", family.name);
        assert_eq!(point.bucket_counts.len(), bounds.len() + 1);
        let mut cumulative = 0u64;
        for (index, &(_, expected)) in buckets.iter().enumerate() {
            cumulative += point.bucket_counts[index];
            assert_eq!(
                cumulative as f64, expected,
                "{} bucket {index}",
                family.name
            );
        }
        assert_eq!(point.count as f64, count.unwrap());
        assert_eq!(point.sum, sum);
        assert_eq!(point.time_unix_nano, time);
        assert!(point.start_time_unix_nano > 0 && point.start_time_unix_nano <= time);
        starts.insert(
            (family.name.to_string(), labels, time),
            (point.start_time_unix_nano, point.count as f64),
        );
    }
}

fn assert_summary(family: &Family, metric: &Metric, batch_ns: u64, starts: &mut Starts) {
    let Some(metric::Data::Summary(summary)) = &metric.data else {
        panic!("{}: not a Summary: {:?}", family.name, metric.data);
    };
    let expected = expected_series(family, "quantile", batch_ns);
    assert_eq!(summary.data_points.len(), expected.len(), "{}", family.name);
    for (labels, (quantiles, sum, count, time)) in expected {
        let point = summary
            .data_points
            .iter()
            .find(|p| attributes(&p.attributes) == labels)
            .unwrap_or_else(|| panic!("{}: no point for {labels:?}", family.name));
        let decoded: Vec<(f64, f64)> = point
            .quantile_values
            .iter()
            .map(|q| (q.quantile, q.value))
            .collect();
        assert_eq!(decoded.len(), quantiles.len());
        for (got, want) in decoded.iter().zip(&quantiles) {
            assert!(
                got.0 == want.0 && same(got.1, want.1),
                "{}: {got:?} != {want:?}",
                family.name
            );
        }
        assert_eq!(point.count as f64, count.unwrap());
        assert_eq!(point.sum, sum.unwrap_or(0.0));
        assert_eq!(point.time_unix_nano, time);
        assert!(point.start_time_unix_nano > 0 && point.start_time_unix_nano <= time);
        starts.insert(
            (family.name.to_string(), labels, time),
            (point.start_time_unix_nano, point.count as f64),
        );
    }
}

/// Two passes through one sink; every request decoded by the receiver is checked.
async fn push_and_check(receiver: &Receiver, protocol: OtlpProtocol, compression: OtlpCompression) {
    let setup = setup(receiver.endpoint(), protocol, compression);
    let sink = sink(&setup.args);
    assert_eq!(sink.name(), "otlp");
    let families = Arc::new(families());

    sink.send(&batch(&families, 1_800_000_100)).await.unwrap();
    sink.send(&batch(&families, 1_800_000_130)).await.unwrap();
    let received = receiver.take();
    assert_eq!(received.len(), 2, "one request per send");

    for request in &received {
        let headers = &request.headers;
        assert_eq!(headers["x-scope-orgid"], "tenant-a");
        assert_eq!(headers["authorization"], "Bearer s3cr3t");
        if protocol == OtlpProtocol::Http {
            assert_eq!(headers["content-type"], "application/x-protobuf");
        }
        let gzip = match protocol {
            OtlpProtocol::Http => headers.get("content-encoding"),
            OtlpProtocol::Grpc => headers.get("grpc-encoding"),
        };
        assert_eq!(
            gzip.is_some_and(|v| v == "gzip"),
            compression == OtlpCompression::Gzip
        );
    }

    let first = assert_mapping(&received[0].request, &families, nanos(1_800_000_100));
    let second = assert_mapping(&received[1].request, &families, nanos(1_800_000_130));
    assert!(!first.is_empty());
    assert_eq!(first.len(), second.len());
    assert_sequences(&first);
    for (point, start) in &second {
        if point.2 < nanos(1_800_000_130) {
            // A sample with its own (older) timestamp, sent again: same point, same start.
            assert_eq!(start.0, first[point].0, "{point:?}");
        } else {
            // A point at the new batch time continues the sequence of the first pass.
            let earlier = first
                .iter()
                .filter(|(p, _)| p.0 == point.0 && p.1 == point.1)
                .max_by_key(|(p, _)| p.2)
                .unwrap();
            assert!(start.1 >= earlier.1.1, "values unchanged, no reset");
            assert_eq!(start.0, earlier.1.0, "{point:?}");
        }
    }
    assert!(
        second.iter().any(|(point, start)| start.0 < point.2),
        "batch-timed series advance"
    );
}

/// Within one pass, the points of each cumulative series in time order: the first has an
/// unknown start (start = time: spec "Cumulative streams: handling unknown start time"),
/// each later one keeps the start, unless its value went down (a reset) when its start is
/// the previous point's time.
fn assert_sequences(starts: &Starts) {
    let mut previous: Option<(&Point, &(u64, f64))> = None;
    let mut resets = 0;
    for (point, start) in starts {
        match previous {
            Some((p, s)) if p.0 == point.0 && p.1 == point.1 => {
                if start.1 < s.1 {
                    assert_eq!(
                        start.0, p.2,
                        "a reset starts at the previous point: {point:?}"
                    );
                    resets += 1;
                } else {
                    assert_eq!(start.0, s.0, "{point:?}");
                }
            }
            _ => assert_eq!(start.0, point.2, "first point of a series: {point:?}"),
        }
        previous = Some((point, start));
    }
    assert!(resets > 0, "the input has a counter that went down");
}

#[tokio::test]
async fn http_push_carries_kubevirt_families_as_otel_says() {
    let receiver = Receiver::http().await;
    push_and_check(&receiver, OtlpProtocol::Http, OtlpCompression::Gzip).await;
    push_and_check(&receiver, OtlpProtocol::Http, OtlpCompression::None).await;
}

#[tokio::test]
async fn grpc_push_carries_kubevirt_families_as_otel_says() {
    let receiver = Receiver::grpc().await;
    push_and_check(&receiver, OtlpProtocol::Grpc, OtlpCompression::Gzip).await;
    push_and_check(&receiver, OtlpProtocol::Grpc, OtlpCompression::None).await;
}

#[tokio::test]
async fn http_endpoint_with_the_metrics_path_is_used_as_is() {
    let receiver = Receiver::http().await;
    let setup = setup(
        format!("{}/v1/metrics", receiver.endpoint()),
        OtlpProtocol::Http,
        OtlpCompression::None,
    );
    let families = Arc::new(families());
    sink(&setup.args)
        .send(&batch(&families, 1_800_000_000))
        .await
        .unwrap();
    assert_eq!(receiver.take().len(), 1);
}

async fn outcome(
    sink: &dyn Sink,
    families: &Arc<Vec<Family>>,
) -> (Result<(), SendError>, Duration) {
    let started = Instant::now();
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let result = sink.send(&batch(families, seconds)).await;
    (result, started.elapsed())
}

fn assert_retryable(result: &Result<(), SendError>, what: &str) {
    assert!(
        matches!(result, Err(SendError::Retryable(_))),
        "{what}: expected Retryable, got {result:?}"
    );
}

fn assert_permanent(result: &Result<(), SendError>, what: &str) {
    assert!(
        matches!(result, Err(SendError::Permanent(_))),
        "{what}: expected Permanent, got {result:?}"
    );
}

#[tokio::test]
async fn http_faults_are_retryable_or_permanent_as_otlp_says() {
    let receiver = Receiver::http().await;
    let setup = setup(
        receiver.endpoint(),
        OtlpProtocol::Http,
        OtlpCompression::None,
    );
    let sink = sink(&setup.args);
    let families = Arc::new(families());

    for code in [429, 502, 503, 504] {
        receiver.reply(Reply::HttpStatus(code));
        assert_retryable(
            &outcome(sink.as_ref(), &families).await.0,
            &code.to_string(),
        );
    }
    for code in [400, 401, 403, 404, 413, 500] {
        receiver.reply(Reply::HttpStatus(code));
        let (result, _) = outcome(sink.as_ref(), &families).await;
        assert_permanent(&result, &code.to_string());
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains(&format!("receiver says {code}")),
            "{message}"
        );
    }
    receiver.reply(Reply::Partial);
    outcome(sink.as_ref(), &families).await.0.unwrap();

    receiver.reply(Reply::Hang);
    let (result, elapsed) = outcome(sink.as_ref(), &families).await;
    assert_retryable(&result, "a receiver that never answers");
    assert!(
        elapsed < Duration::from_secs(5),
        "the push timeout holds: {elapsed:?}"
    );

    receiver.reply(Reply::Ok);
    outcome(sink.as_ref(), &families).await.0.unwrap();
    assert_eq!(
        receiver.take().len(),
        13,
        "every attempt reached the receiver"
    );

    let endpoint = receiver.endpoint();
    receiver.stop().await;
    let (result, _) = outcome(sink.as_ref(), &families).await;
    assert_retryable(&result, "receiver gone mid-run");
    let gone = setup_sink(endpoint, OtlpProtocol::Http);
    assert_retryable(
        &outcome(gone.0.as_ref(), &families).await.0,
        "receiver down at start",
    );
}

fn setup_sink(endpoint: String, protocol: OtlpProtocol) -> (Box<dyn Sink>, Setup) {
    let setup = setup(endpoint, protocol, OtlpCompression::None);
    (sink(&setup.args), setup)
}

#[tokio::test]
async fn grpc_faults_are_retryable_or_permanent_as_otlp_says() {
    use tonic::Code;
    let receiver = Receiver::grpc().await;
    let setup = setup(
        receiver.endpoint(),
        OtlpProtocol::Grpc,
        OtlpCompression::None,
    );
    let sink = sink(&setup.args);
    let families = Arc::new(families());

    for code in [
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Aborted,
        Code::Cancelled,
        Code::DataLoss,
        Code::OutOfRange,
    ] {
        receiver.reply(Reply::Grpc(code));
        assert_retryable(
            &outcome(sink.as_ref(), &families).await.0,
            &format!("{code:?}"),
        );
    }
    // RESOURCE_EXHAUSTED is retried only when the server says recovery is possible.
    receiver.reply(Reply::GrpcExhaustedRetryLater);
    assert_retryable(
        &outcome(sink.as_ref(), &families).await.0,
        "RESOURCE_EXHAUSTED with RetryInfo",
    );
    for code in [
        Code::ResourceExhausted,
        Code::InvalidArgument,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::Unimplemented,
        Code::Internal,
    ] {
        receiver.reply(Reply::Grpc(code));
        let (result, _) = outcome(sink.as_ref(), &families).await;
        assert_permanent(&result, &format!("{code:?}"));
        assert!(result.unwrap_err().to_string().contains("receiver says no"));
    }
    receiver.reply(Reply::Partial);
    outcome(sink.as_ref(), &families).await.0.unwrap();

    receiver.reply(Reply::Hang);
    let (result, elapsed) = outcome(sink.as_ref(), &families).await;
    assert_retryable(&result, "a receiver that never answers");
    assert!(
        elapsed < Duration::from_secs(5),
        "the push timeout holds: {elapsed:?}"
    );

    receiver.reply(Reply::Ok);
    outcome(sink.as_ref(), &families).await.0.unwrap();
    assert_eq!(
        receiver.take().len(),
        16,
        "every attempt reached the receiver"
    );

    let endpoint = receiver.endpoint();
    receiver.stop().await;
    let (result, _) = outcome(sink.as_ref(), &families).await;
    assert_retryable(&result, "receiver gone mid-run");
    let gone = setup_sink(endpoint, OtlpProtocol::Grpc);
    assert_retryable(
        &outcome(gone.0.as_ref(), &families).await.0,
        "receiver down at start",
    );
}

#[tokio::test]
async fn grpc_over_mutual_tls_with_the_given_ca() {
    use otlp_support::TestCa;
    let server_ca = TestCa::new("otlp-server-ca");
    let client_ca = TestCa::new("otlp-client-ca");
    let client = client_ca.leaf();
    let receiver = Receiver::grpc_tls(&server_ca.leaf(), &client_ca.pem).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    let endpoint = format!("https://localhost:{}", receiver.addr.port());
    let mut setup = setup(endpoint, OtlpProtocol::Grpc, OtlpCompression::Gzip);
    setup.args.otlp_ca = Some(write("ca.crt", &server_ca.pem));
    setup.args.otlp_client_cert = Some(write("tls.crt", &client.cert_pem));
    setup.args.otlp_client_key = Some(write("tls.key", &client.key_pem));
    let families = Arc::new(families());
    sink(&setup.args)
        .send(&batch(&families, 1_800_000_000))
        .await
        .unwrap();
    let received = receiver.take();
    assert_eq!(received.len(), 1);
    assert_mapping(&received[0].request, &families, nanos(1_800_000_000));

    // Without the CA the receiver's certificate is not trusted: nothing is sent.
    setup.args.otlp_ca = None;
    let result = sink(&setup.args)
        .send(&batch(&families, 1_800_000_030))
        .await;
    assert!(result.is_err(), "an untrusted receiver was accepted");
    assert!(receiver.take().is_empty());
}

#[tokio::test]
async fn http_over_tls_with_the_given_ca() {
    let ca = otlp_support::TestCa::new("otlp-http-ca");
    let receiver = otlp_https::receiver(&ca.leaf()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let endpoint = format!("https://localhost:{}", receiver.addr.port());
    let mut setup = setup(endpoint, OtlpProtocol::Http, OtlpCompression::Gzip);
    setup.args.otlp_ca = Some(ca_file);
    let families = Arc::new(families());
    sink(&setup.args)
        .send(&batch(&families, 1_800_000_000))
        .await
        .unwrap();
    let received = receiver.take();
    assert_eq!(received.len(), 1);
    assert_mapping(&received[0].request, &families, nanos(1_800_000_000));
    let agent = received[0].headers["user-agent"].to_str().unwrap();
    assert!(agent.starts_with("kubevirt-metrics-collectors/"), "{agent}");

    // Without the CA the receiver is not trusted, and nothing is sent...
    setup.args.otlp_ca = None;
    let result = sink(&setup.args)
        .send(&batch(&families, 1_800_000_030))
        .await;
    assert!(result.is_err(), "an untrusted receiver was accepted");
    assert!(receiver.take().is_empty());
    // ...unless verification is switched off.
    setup.args.otlp_insecure_skip_verify = true;
    sink(&setup.args)
        .send(&batch(&families, 1_800_000_060))
        .await
        .unwrap();
    assert_eq!(receiver.take().len(), 1);
}

#[test]
fn bad_flags_are_refused_at_start() {
    let refused = |args: ExportArgs| {
        otlp::from_args(&args, &resource())
            .err()
            .map(|e| e.to_string())
    };
    let base = ExportArgs {
        otlp_endpoint: Some("http://127.0.0.1:4318".to_owned()),
        ..ExportArgs::default()
    };
    assert!(
        otlp::from_args(&ExportArgs::default(), &resource())
            .unwrap()
            .is_none()
    );
    let message = refused(ExportArgs {
        otlp_headers: vec!["no-equals-sign".to_owned()],
        ..base.clone()
    })
    .unwrap();
    assert!(message.contains("--otlp-header"), "{message}");
    let message = refused(ExportArgs {
        otlp_bearer_token_file: Some("/nonexistent/token".into()),
        ..base.clone()
    })
    .unwrap();
    assert!(message.contains("--otlp-bearer-token-file"), "{message}");
    let message = refused(ExportArgs {
        otlp_endpoint: Some("otel-collector:4318".to_owned()),
        ..base.clone()
    })
    .unwrap();
    assert!(message.contains("--otlp-endpoint"), "{message}");
    let message = refused(ExportArgs {
        otlp_protocol: OtlpProtocol::Grpc,
        otlp_insecure_skip_verify: true,
        otlp_endpoint: Some("https://127.0.0.1:4317".to_owned()),
        ..base
    })
    .unwrap();
    assert!(message.contains("--otlp-insecure-skip-verify"), "{message}");
}
