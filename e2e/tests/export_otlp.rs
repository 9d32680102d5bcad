//! A real QEMU guest's series through the OTLP sink: the libvirt source collects one pass
//! from the guest under the real libvirtd (`scripts/real-peers.sh up`), and the families
//! virt-handler-metrics would serve are pushed over OTLP/HTTP and OTLP/gRPC to a receiver
//! built on the official OpenTelemetry protocol definitions. Every series of the guest's
//! `/metrics` exposition must arrive with the same name, the same labels (as attributes,
//! unchanged) and the same value; nothing else may arrive.

#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "../../collectors/tests/otlp_support/mod.rs"]
mod otlp_support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use e2e::{Peers, parse_series};
use kubevirt_metrics_collectors::core::export::{Batch, Resource, otlp};
use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::handler::StatsSource;
use kubevirt_metrics_collectors::handler::families;
use kubevirt_metrics_collectors::handler::libvirt::LibvirtSource;
use kubevirt_metrics_flags::{ExportArgs, OtlpCompression, OtlpProtocol};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{NumberDataPoint, metric, number_data_point};
use otlp_support::Receiver;
use tokio::time::Instant;

const NODE: &str = "e2e-node";

/// `name{label="value",...}` as the text format writes a series.
fn series_name(name: &str, attributes: &[KeyValue]) -> String {
    if attributes.is_empty() {
        return name.to_owned();
    }
    let labels: Vec<String> = attributes
        .iter()
        .map(|kv| {
            let Some(any_value::Value::StringValue(value)) =
                kv.value.as_ref().and_then(|v| v.value.as_ref())
            else {
                panic!("attribute {} is not a string", kv.key);
            };
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{}=\"{escaped}\"", kv.key)
        })
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

fn value(point: &NumberDataPoint) -> f64 {
    match point.value {
        Some(number_data_point::Value::AsDouble(v)) => v,
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        None => panic!("a point without a value"),
    }
}

/// Every point of a decoded request as `(series, value)`; counters are monotonic
/// cumulative sums, gauges gauges (a guest has no histogram or summary families).
fn decoded_series(request: &ExportMetricsServiceRequest) -> BTreeMap<String, f64> {
    let mut series = BTreeMap::new();
    for resource_metrics in &request.resource_metrics {
        for scope_metrics in &resource_metrics.scope_metrics {
            for metric in &scope_metrics.metrics {
                let points = match &metric.data {
                    Some(metric::Data::Sum(sum)) => {
                        assert!(sum.is_monotonic, "{}", metric.name);
                        &sum.data_points
                    }
                    Some(metric::Data::Gauge(gauge)) => &gauge.data_points,
                    other => panic!("{}: unexpected data {other:?}", metric.name),
                };
                for point in points {
                    let name = series_name(&metric.name, &point.attributes);
                    assert!(
                        series.insert(name.clone(), value(point)).is_none(),
                        "{name} twice"
                    );
                }
            }
        }
    }
    series
}

#[tokio::test]
async fn a_qemu_guests_series_reach_an_otlp_receiver_unchanged() {
    let peers = Peers::load();
    assert!(
        peers.guest,
        "the QEMU guest is disabled (KVMS_GUEST=0); run scripts/real-peers.sh up with KVMS_GUEST=1"
    );
    let source = LibvirtSource::new(
        std::slice::from_ref(&peers.qemu_uri),
        NODE,
        4,
        Duration::from_secs(10),
    );
    let report = source
        .collect(Instant::now() + Duration::from_secs(20))
        .await;
    let guest = report
        .vmis
        .iter()
        .find(|v| v.vmi.namespace == peers.guest_namespace && v.vmi.name == peers.guest_name)
        .unwrap_or_else(|| panic!("guest not in the report: {:?}", report.problems));
    let families = families::render(std::slice::from_ref(guest), &[]);
    let exposition = text::encode(&families);
    let expected: BTreeMap<String, f64> = parse_series(&exposition).into_iter().collect();
    assert!(
        expected.len() > 30,
        "the guest has its CPU, memory, disk and NIC series:\n{exposition}"
    );
    let batch = Batch {
        families: std::sync::Arc::new(families),
        collected_at: SystemTime::now(),
    };

    for protocol in [OtlpProtocol::Http, OtlpProtocol::Grpc] {
        let receiver = match protocol {
            OtlpProtocol::Http => Receiver::http().await,
            OtlpProtocol::Grpc => Receiver::grpc().await,
        };
        let args = ExportArgs {
            otlp_endpoint: Some(receiver.endpoint()),
            otlp_protocol: protocol,
            otlp_compression: OtlpCompression::Gzip,
            ..ExportArgs::default()
        };
        let resource = Resource {
            node_name: Some(NODE.to_owned()),
            ..Resource::from_env("virt-handler-metrics")
        };
        let sink = otlp::from_args(&args, &resource).unwrap().unwrap();
        sink.send(&batch).await.unwrap();
        let received = receiver.take();
        assert_eq!(received.len(), 1, "{protocol:?}");
        let decoded = decoded_series(&received[0].request);
        assert_eq!(
            decoded.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{protocol:?}: the series of /metrics, no more, no less"
        );
        for (series, want) in &expected {
            let got = decoded[series];
            assert!(
                got == *want || (got.is_nan() && want.is_nan()),
                "{protocol:?} {series}: {got} != {want}"
            );
        }
        let resource_attributes = &received[0].request.resource_metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes;
        assert!(
            resource_attributes
                .iter()
                .any(|kv| kv.key == "k8s.node.name"
                    && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()),
                        Some(any_value::Value::StringValue(node)) if node == NODE)),
            "{resource_attributes:?}"
        );
    }
}
