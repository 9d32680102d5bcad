//! Prometheus remote write into a real Prometheus 2.42 (`--web.enable-remote-write-receiver`):
//! for one collection pass, every series `/metrics` served (KubeVirt's families and the
//! sidecar's self-metrics; histograms as their flat series; NaN and infinities; samples with
//! their own timestamps) is stored by Prometheus with the same name, labels and value, and
//! nothing else is. Prometheus decodes the protobuf and snappy; we only read its query API.
//!
//! The same check runs on the QEMU guest of the real peers through the libvirt source
//! (`scripts/real-peers.sh up`), as virt-handler-metrics would collect it.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod export_remote_write_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use export_remote_write_support::{Prometheus, exposition_series, same_value};
use futures::FutureExt;
use futures::future::BoxFuture;
use kubevirt_metrics_collectors::core::collect::{Collection, Collector};
use kubevirt_metrics_collectors::core::metric::{Family, MetricType, Sample};
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_collectors::handler::collector::VmiCollector;
use kubevirt_metrics_collectors::handler::libvirt::LibvirtSource;
use kubevirt_metrics_flags::{CommonArgs, Mode};
use tokio::time::Instant;

const PASS: &str = "kubevirt_metrics_sidecar_collections_total";

/// KubeVirt-shaped families whose values change every pass.
struct ChangingCollector {
    passes: AtomicU64,
    /// Own timestamps of the migration samples: set at the first pass (after the sink
    /// started), then repeated by every pass, as KubeVirt repeats a finished migration's.
    migration_ms: Mutex<Option<i64>>,
}

fn labels(pairs: &[(&'static str, &str)]) -> kubevirt_metrics_collectors::core::metric::Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

impl ChangingCollector {
    fn families(&self, pass: f64, migration_ms: i64) -> Vec<Family> {
        let vmi = |name: &str| {
            labels(&[
                ("kubernetes_vmi_label_kubevirt_io_nodeName", "node01"),
                ("name", name),
                ("namespace", "default"),
                ("node", "node01"),
            ])
        };
        let mut received = Family::new(
            "kubevirt_vmi_network_receive_bytes_total",
            "Total network traffic received in bytes.",
            MetricType::Counter,
        );
        for (vm, base) in [("fedora-1", 1000.0), ("win2k22", 5.0e9)] {
            let mut l = vmi(vm).to_vec();
            l.insert(0, ("interface".into(), "default".into()));
            received.samples.push(Sample::new(l, base + pass * 1500.0));
        }
        let mut memory = Family::new(
            "kubevirt_vmi_memory_resident_bytes",
            "Resident set size of the process running the domain.",
            MetricType::Gauge,
        );
        memory
            .samples
            .push(Sample::new(vmi("fedora-1"), 1048576.0 + pass));
        memory.samples.push(Sample::new(vmi("win2k22"), f64::NAN));
        let mut filesystem = Family::new(
            "kubevirt_vmi_filesystem_used_bytes",
            "Used VM filesystem capacity in bytes.",
            MetricType::Gauge,
        );
        filesystem.samples.push(Sample::new(
            labels(&[
                ("disk_name", "vda"),
                ("file_system_type", "NTFS"),
                ("mount_point", "C:\\"),
                ("name", "win \"2022\""),
                ("namespace", "default"),
            ]),
            2.5e10,
        ));
        let mut limit = Family::new(
            "kubevirt_test_unbounded",
            "An infinite gauge.",
            MetricType::Gauge,
        );
        limit
            .samples
            .push(Sample::new(labels(&[("side", "upper")]), f64::INFINITY));
        limit
            .samples
            .push(Sample::new(labels(&[("side", "lower")]), f64::NEG_INFINITY));
        let mut migration = Family::new(
            "kubevirt_vmi_migration_data_processed_bytes",
            "The total Guest OS data processed and migrated to the new VM.",
            MetricType::Gauge,
        );
        for (offset, value) in [(0, 1.0e9), (200, 2.0e9)] {
            // Two samples of one series, as after a migration's progress was read twice.
            migration
                .samples
                .push(Sample::new(vmi("fedora-1"), value).with_timestamp(migration_ms + offset));
        }
        let mut histogram = Family::new(
            "kubevirt_vmi_phase_transition_time_from_creation_seconds",
            "Histogram of VM phase transitions duration from creation time in seconds.",
            MetricType::Histogram,
        );
        let mut cumulative = 0.0;
        for (le, step) in [("0.5", 0.0), ("1", 1.0), ("1e+06", pass), ("+Inf", 0.0)] {
            cumulative += step;
            let mut l = labels(&[("phase", "Running")]).to_vec();
            l.push(("le".into(), le.into()));
            let mut sample = Sample::new(l, cumulative);
            sample.suffix = "_bucket";
            histogram.samples.push(sample);
        }
        let mut sum = Sample::new(labels(&[("phase", "Running")]), 7.5 * pass);
        sum.suffix = "_sum";
        let mut count = Sample::new(labels(&[("phase", "Running")]), cumulative);
        count.suffix = "_count";
        histogram.samples.extend([sum, count]);
        vec![received, memory, filesystem, limit, migration, histogram]
    }
}

impl Collector for ChangingCollector {
    fn collect(&self, _deadline: Instant) -> BoxFuture<'_, Collection> {
        async move {
            let pass = self.passes.fetch_add(1, Ordering::SeqCst) + 1;
            if pass == 1 {
                // Both migration samples lie after the sink's start and before this pass ends.
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            let migration_ms = *self.migration_ms.lock().unwrap().get_or_insert_with(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64
                    - 300
            });
            Collection {
                families: self.families(pass as f64, migration_ms),
                problems: Vec::new(),
                stale_dropped: 0,
                targets_seen: 2,
                component: None,
            }
        }
        .boxed()
    }
}

fn common(prometheus: &Prometheus) -> CommonArgs {
    let mut common = CommonArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        mode: Mode::Full,
        interval: Duration::from_secs(1),
        collection_timeout: Duration::from_secs(20),
        ..CommonArgs::default()
    };
    common.export.remote_write_url = Some(prometheus.remote_write_url());
    common
}

/// Scrapes `/metrics` (text 0.0.4) until Prometheus holds that pass, then compares every
/// series Prometheus has at the pass's time with the scraped ones.
async fn pushed_series_equal_the_scraped_ones(prometheus: &Prometheus, base: &str, passes: usize) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut compared = 0;
    let mut last_pass = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while compared < passes {
        assert!(
            std::time::Instant::now() < deadline,
            "only {compared} passes compared"
        );
        let body = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let scraped = exposition_series(&body);
        let pass = scraped
            .iter()
            .find(|((name, labels), _)| {
                name == PASS && labels.get("result").map(String::as_str) == Some("ok")
            })
            .map(|(_, v)| *v);
        let Some(pass) = pass.filter(|p| last_pass != Some(*p)) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        last_pass = Some(pass);
        // The batch of that pass carries the same self-metric value.
        let mut at = None;
        for _ in 0..50 {
            at = prometheus
                .time_of(&format!("{PASS}{{result=\"ok\"}}"), pass)
                .await;
            if at.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(at) = at else {
            // That pass's batch was replaced on /metrics before we read it; try the next.
            continue;
        };
        let stored = prometheus.all_at(at).await;
        let missing: Vec<_> = scraped
            .keys()
            .filter(|s| !stored.contains_key(*s))
            .collect();
        let extra: Vec<_> = stored
            .keys()
            .filter(|s| !scraped.contains_key(*s))
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "pass {pass}: not stored by Prometheus: {missing:#?}\nstored but not on /metrics: {extra:#?}"
        );
        for (series, value) in &scraped {
            let stored = stored[series];
            assert!(
                same_value(*value, stored),
                "pass {pass}: {series:?} is {value} on /metrics, {stored} in Prometheus"
            );
        }
        eprintln!("pass {pass}: {} series equal", scraped.len());
        compared += 1;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}

#[tokio::test]
async fn every_series_of_a_pass_reaches_prometheus_unchanged() {
    let prometheus = Prometheus::start().await;
    let collector = Arc::new(ChangingCollector {
        passes: AtomicU64::new(0),
        migration_ms: Mutex::new(None),
    });
    let running = runtime::start("virt-handler-metrics", &common(&prometheus), collector)
        .await
        .unwrap();
    let base = format!("http://{}", running.local_addr());
    pushed_series_equal_the_scraped_ones(&prometheus, &base, 3).await;

    // The repeated migration samples were stored once each, not rejected: the sink never
    // failed, and both samples are in Prometheus.
    let failures = prometheus
        .query(
            "kubevirt_metrics_sidecar_push_failures_total{sink=\"remote_write\"}",
            None,
        )
        .await;
    assert_eq!(failures.len(), 2);
    for series in &failures {
        assert_eq!(series["value"][1], "0", "{series}");
    }
    let migration = prometheus
        .query("kubevirt_vmi_migration_data_processed_bytes[10m]", None)
        .await;
    assert_eq!(migration[0]["values"].as_array().unwrap().len(), 2);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn the_qemu_guest_reaches_prometheus_unchanged() {
    let peers = e2e::Peers::load();
    assert!(
        peers.guest,
        "the QEMU guest is disabled (KVMS_GUEST=0); run scripts/real-peers.sh up with KVMS_GUEST=1"
    );
    let prometheus = Prometheus::start().await;
    let mut common = common(&prometheus);
    common.interval = Duration::from_secs(2);
    let source = LibvirtSource::new(
        std::slice::from_ref(&peers.qemu_uri),
        "e2e-node",
        4,
        Duration::from_secs(10),
    );
    let collector = Arc::new(VmiCollector::new(Arc::new(source), common.interval));
    let running = runtime::start("virt-handler-metrics", &common, collector)
        .await
        .unwrap();
    let base = format!("http://{}", running.local_addr());
    pushed_series_equal_the_scraped_ones(&prometheus, &base, 2).await;
    let guest = prometheus
        .query(
            &format!(
                "kubevirt_vmi_cpu_usage_seconds_total{{name=\"{}\",namespace=\"{}\"}}",
                peers.guest_name, peers.guest_namespace
            ),
            None,
        )
        .await;
    assert_eq!(guest.len(), 1, "the guest's series reached Prometheus");
    running.stop().await.unwrap();
}
