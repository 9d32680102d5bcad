//! The InfluxDB sink against a real InfluxDB 1.6 (Debian's `influxdb`, started per test):
//! KubeVirt's families — rendered from captured launcher payloads, and from the real QEMU
//! guest through the libvirt source — are pushed through the sink and read back with
//! InfluxQL; every point's measurement, tags, value and time must equal the samples.

#![allow(clippy::unwrap_used)] // tests may unwrap

#[path = "support/influx_server.rs"]
mod influx_server;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::Peers;
use influx_server::{Influx, StoredPoint};
use kubevirt_metrics_collectors::core::export::influx::InfluxSink;
use kubevirt_metrics_collectors::core::export::{Batch, SendError, Sink};
use kubevirt_metrics_collectors::core::metric::{Family, MetricType, Sample};
use kubevirt_metrics_collectors::handler::StatsSource;
use kubevirt_metrics_collectors::handler::families;
use kubevirt_metrics_collectors::handler::launcher::payload;
use kubevirt_metrics_collectors::handler::libvirt::LibvirtSource;
use kubevirt_metrics_collectors::handler::stats::{VmiIdentity, VmiStats};
use kubevirt_metrics_flags::{ExportArgs, InfluxPrecision};

/// A batch time with nanoseconds, to see every precision cut it.
fn collected_at() -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(1_800_000_000_123_456_789)
}

fn testdata(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/launcher-payloads")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The captured real guest and the captured VMI with agent filesystems, with VMI labels
/// whose values need line-protocol escapes and a Windows mount point.
fn captured_vmis() -> Vec<VmiStats> {
    let mut filesystems: serde_json::Value =
        serde_json::from_str(&testdata("captured-filesystems-db.json")).unwrap();
    filesystems.as_array_mut().unwrap().push(serde_json::json!({
        "diskName": "vdb1", "mountPoint": "C:\\", "fileSystemType": "NTFS",
        "usedBytes": 1_048_576, "totalBytes": 4_194_304,
        "disk": [{"serial": "data", "busType": "virtio"}]
    }));
    let vmi = |namespace: &str, name: &str, labels: &[(&str, &str)]| {
        Arc::new(VmiIdentity {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: "ci node,1".to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        })
    };
    vec![
        VmiStats {
            vmi: vmi(
                "default",
                "testvm",
                &[
                    ("kubevirt.io/domain", "testvm"),
                    ("note", "two words, a comma and a=b"),
                    ("empty", ""),
                ],
            ),
            domain: payload::domain_stats_from_json(&testdata("captured-domainstats-testvm.json"))
                .unwrap(),
            filesystems: Vec::new(),
            dirty_rate_mbs: None,
            collected_at: collected_at(),
        },
        VmiStats {
            vmi: vmi(
                "prod",
                "db-1",
                &[("app", "postgres"), ("kubevirt.io/domain", "db-1")],
            ),
            domain: payload::domain_stats_from_json(&testdata("captured-domainstats-db.json"))
                .unwrap(),
            filesystems: payload::filesystems_from_json(&filesystems.to_string()).unwrap(),
            dirty_rate_mbs: Some(17),
            collected_at: collected_at(),
        },
    ]
}

/// KubeVirt's handler families for the captured VMIs, plus what they do not show: samples
/// with their own timestamps (as migration samples have), a histogram, a NaN.
fn captured_families() -> Vec<Family> {
    let mut families = families::render(&captured_vmis(), &[]);
    assert!(families.len() > 30, "rendered {} families", families.len());
    for (index, sample) in families[0].samples.iter_mut().enumerate() {
        sample.timestamp_ms = Some(1_799_999_999_001 + index as i64);
    }
    let mut histogram = Family::new(
        "kubevirt_rest_client_request_latency_seconds",
        "Request latency in seconds. Broken down by verb and URL.",
        MetricType::Histogram,
    );
    let labels =
        |pairs: &[(&'static str, &str)]| -> kubevirt_metrics_collectors::core::metric::Labels {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
    for (le, count) in [("0.005", 1.0), ("0.25", 7.0), ("+Inf", 9.0)] {
        let mut sample = Sample::new(
            labels(&[
                ("le", le),
                ("url", "https://10.96.0.1:443/apis"),
                ("verb", "GET"),
            ]),
            count,
        );
        sample.suffix = "_bucket";
        histogram.samples.push(sample);
    }
    for (suffix, value) in [("_sum", 0.731_f64), ("_count", 9.0)] {
        let mut sample = Sample::new(
            labels(&[("url", "https://10.96.0.1:443/apis"), ("verb", "GET")]),
            value,
        );
        sample.suffix = suffix;
        histogram.samples.push(sample);
    }
    families.push(histogram);
    let mut not_a_number = Family::new("kubevirt_vmi_nan_probe", "", MetricType::Gauge);
    not_a_number
        .samples
        .push(Sample::new(labels(&[("name", "x")]), f64::NAN));
    families.push(not_a_number);
    families
}

/// What InfluxDB must hold for `families`: computed from the samples, not by our encoder.
/// A label with an empty value is absent; the one value line protocol cannot carry, a
/// trailing backslash, reads back without it; NaN is not written.
fn expected(families: &[Family], precision: InfluxPrecision) -> Vec<StoredPoint> {
    let per_second: i128 = match precision {
        InfluxPrecision::Ns => 1_000_000_000,
        InfluxPrecision::Us => 1_000_000,
        InfluxPrecision::Ms => 1_000,
        InfluxPrecision::S => 1,
    };
    let batch_nanos = collected_at()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    let mut points = Vec::new();
    for family in families {
        for sample in &family.samples {
            if sample.value.is_nan() {
                continue;
            }
            let nanos = sample
                .timestamp_ms
                .map_or(batch_nanos, |ms| i128::from(ms) * 1_000_000);
            points.push(StoredPoint {
                measurement: format!("{}{}", family.name, sample.suffix),
                tags: sample
                    .labels
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| {
                        let v = if v == "C:\\" { "C:" } else { v.as_str() };
                        (k.to_string(), v.to_owned())
                    })
                    .collect(),
                time: i64::try_from(nanos * per_second / 1_000_000_000).unwrap(),
                value: sample.value,
            });
        }
    }
    sort(points)
}

fn sort(mut points: Vec<StoredPoint>) -> Vec<StoredPoint> {
    points
        .sort_by(|a, b| (&a.measurement, &a.tags, a.time).cmp(&(&b.measurement, &b.tags, b.time)));
    points
}

fn epoch(precision: InfluxPrecision) -> &'static str {
    match precision {
        InfluxPrecision::Ns => "ns",
        InfluxPrecision::Us => "u",
        InfluxPrecision::Ms => "ms",
        InfluxPrecision::S => "s",
    }
}

fn sink(influx: &Influx, db: &str, precision: InfluxPrecision, gzip: bool) -> InfluxSink {
    let args = ExportArgs {
        influx_url: Some(influx.url.clone()),
        influx_db: Some(db.to_owned()),
        influx_precision: precision,
        influx_gzip: gzip,
        push_timeout: Duration::from_secs(30),
        ..ExportArgs::default()
    };
    InfluxSink::from_args(&args).unwrap().expect("a sink")
}

fn batch(families: Vec<Family>) -> Batch {
    Batch {
        families: Arc::new(families),
        collected_at: collected_at(),
    }
}

/// Asserts the stored points equal the expected ones, naming the first difference.
fn assert_points_equal(stored: Vec<StoredPoint>, expected: &[StoredPoint], what: &str) {
    let stored = sort(stored);
    for (got, want) in stored.iter().zip(expected) {
        assert_eq!(got, want, "{what}: first differing point");
    }
    assert_eq!(
        stored.len(),
        expected.len(),
        "{what}: InfluxDB holds {} points, the families have {}",
        stored.len(),
        expected.len()
    );
}

#[tokio::test]
async fn kubevirt_families_read_back_equal_in_every_precision() {
    let Some(influx) = Influx::start("kubevirt_families_read_back_equal_in_every_precision")
        .await
        .unwrap()
    else {
        return;
    };
    let families = captured_families();
    // Several requests per batch (InfluxDB is asked in chunks), gzip on and off.
    for (precision, gzip) in [
        (InfluxPrecision::Ns, false),
        (InfluxPrecision::Us, true),
        (InfluxPrecision::Ms, false),
        (InfluxPrecision::S, true),
    ] {
        let db = format!("kubevirt {}", precision.as_str());
        influx
            .execute(&format!("CREATE DATABASE \"{db}\""))
            .await
            .unwrap();
        let sink = sink(&influx, &db, precision, gzip).with_lines_per_request(25);
        sink.send(&batch(families.clone()))
            .await
            .unwrap_or_else(|e| panic!("{precision:?}: {e}\n{}", influx.log()));
        let expected = expected(&families, precision);
        assert!(expected.len() > 80, "{} points", expected.len());
        let stored = influx.points(&db, epoch(precision)).await.unwrap();
        assert_points_equal(stored, &expected, &format!("precision {precision:?}"));
    }
}

#[tokio::test]
async fn labels_needing_escapes_read_back_unchanged() {
    let Some(influx) = Influx::start("labels_needing_escapes_read_back_unchanged")
        .await
        .unwrap()
    else {
        return;
    };
    influx.execute("CREATE DATABASE odd").await.unwrap();
    let families = captured_families();
    sink(&influx, "odd", InfluxPrecision::Ms, false)
        .send(&batch(families))
        .await
        .unwrap();
    let stored = influx.points("odd", "ms").await.unwrap();
    let resident: Vec<&StoredPoint> = stored
        .iter()
        .filter(|p| p.measurement == "kubevirt_vmi_memory_resident_bytes")
        .collect();
    let testvm = resident
        .iter()
        .find(|p| p.tags.get("name").map(String::as_str) == Some("testvm"))
        .expect("testvm's resident memory");
    assert_eq!(testvm.tags["node"], "ci node,1");
    assert_eq!(
        testvm.tags["kubernetes_vmi_label_note"],
        "two words, a comma and a=b"
    );
    assert!(!testvm.tags.contains_key("kubernetes_vmi_label_empty"));
    let mounts: Vec<&str> = stored
        .iter()
        .filter(|p| p.measurement == "kubevirt_vmi_filesystem_capacity_bytes")
        .filter_map(|p| p.tags.get("mount_point").map(String::as_str))
        .collect();
    assert!(mounts.contains(&"/boot"), "{mounts:?}");
    assert!(mounts.contains(&"C:"), "{mounts:?}");
    assert!(
        !stored
            .iter()
            .any(|p| p.measurement == "kubevirt_vmi_nan_probe"),
        "a NaN sample reached InfluxDB"
    );
}

#[tokio::test]
async fn rejected_writes_are_permanent() {
    let Some(influx) = Influx::start("rejected_writes_are_permanent")
        .await
        .unwrap()
    else {
        return;
    };
    // No such database: 404 with InfluxDB's message.
    let mut one = Family::new("kubevirt_vmi_memory_domain_bytes", "", MetricType::Gauge);
    one.samples
        .push(Sample::new(vec![(("name").into(), ("testvm").into())], 1.0));
    match sink(&influx, "missing", InfluxPrecision::Ns, false)
        .send(&batch(vec![one.clone()]))
        .await
    {
        Err(SendError::Permanent(message)) => {
            assert!(message.contains("database not found"), "{message}")
        }
        other => panic!("expected Permanent, got {other:?}"),
    }

    // A field type conflict (the measurement holds integers) and a tag InfluxDB refuses
    // (`time`): 400, "partial write"; the other points of the request are written.
    influx.execute("CREATE DATABASE conflicts").await.unwrap();
    let (status, body) = influx
        .write_raw(
            "conflicts",
            "kubevirt_vmi_memory_domain_bytes,name=other value=1i",
        )
        .await
        .unwrap();
    assert_eq!(status, 204, "{body}");
    let mut timed = Family::new("kubevirt_vmi_info", "", MetricType::Gauge);
    timed
        .samples
        .push(Sample::new(vec![(("time").into(), ("noon").into())], 1.0));
    let mut fine = Family::new("kubevirt_vmi_vcpu_count", "", MetricType::Gauge);
    fine.samples
        .push(Sample::new(vec![(("name").into(), ("testvm").into())], 2.0));
    let result = sink(&influx, "conflicts", InfluxPrecision::Ns, false)
        .send(&batch(vec![one, timed, fine]))
        .await;
    match result {
        Err(SendError::Permanent(message)) => {
            assert!(message.contains("400"), "{message}");
            assert!(message.contains("partial write"), "{message}");
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
    let stored = influx.points("conflicts", "ns").await.unwrap();
    assert!(
        stored
            .iter()
            .any(|p| p.measurement == "kubevirt_vmi_vcpu_count" && p.value == 2.0),
        "{stored:?}"
    );
}

#[tokio::test]
async fn qemu_guest_series_reach_influxdb_unchanged() {
    let peers = Peers::load();
    assert!(peers.guest, "the QEMU guest is disabled (KVMS_GUEST=0)");
    let Some(influx) = Influx::start("qemu_guest_series_reach_influxdb_unchanged")
        .await
        .unwrap()
    else {
        return;
    };
    let source = LibvirtSource::new(
        std::slice::from_ref(&peers.qemu_uri),
        "e2e-node",
        4,
        Duration::from_secs(20),
    );
    let report = source
        .collect(tokio::time::Instant::now() + Duration::from_secs(20))
        .await;
    let guest: Vec<VmiStats> = report
        .vmis
        .into_iter()
        .filter(|v| v.vmi.namespace == peers.guest_namespace && v.vmi.name == peers.guest_name)
        .collect();
    assert_eq!(guest.len(), 1, "guest not collected: {:?}", report.problems);
    let families = families::render(&guest, &[]);
    assert!(
        families
            .iter()
            .any(|f| f.name == "kubevirt_vmi_vcpu_seconds_total"),
        "{families:?}"
    );
    influx.execute("CREATE DATABASE guest").await.unwrap();
    sink(&influx, "guest", InfluxPrecision::Ns, true)
        .send(&batch(families.clone()))
        .await
        .unwrap();
    let stored = influx.points("guest", "ns").await.unwrap();
    let expected = expected(&families, InfluxPrecision::Ns);
    let measurements: std::collections::BTreeSet<&str> =
        expected.iter().map(|p| p.measurement.as_str()).collect();
    assert!(measurements.len() >= 30, "{measurements:?}");
    assert_points_equal(stored, &expected, "the QEMU guest");
}
