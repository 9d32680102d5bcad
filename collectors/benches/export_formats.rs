//! What each output format costs for one node's worth of series: 1,000 VMIs (the captured
//! KubeVirt v1.9.0 launcher payload of a 2-vCPU guest with disks, a NIC and guest-agent
//! filesystems, renamed per VMI over 20 namespaces) → KubeVirt's families → each format.
//!
//! Prints, per format: encode time (median of the runs), bytes, and the ratio to the
//! Prometheus text format of the same input; then the aggregation of the typical
//! per-namespace rules against the text encoding, which it must undercut (issue 9).
//!
//! `cargo bench -p kubevirt-metrics-collectors --bench export_formats [-- --vmis N --runs R]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kubevirt_metrics_collectors::core::aggregate::Aggregation;
use kubevirt_metrics_collectors::core::export::influx::lineproto;
use kubevirt_metrics_collectors::core::export::otlp::encode as otlp;
use kubevirt_metrics_collectors::core::export::remote_write;
use kubevirt_metrics_collectors::core::export::{Batch, Resource};
use kubevirt_metrics_collectors::core::format::{json, openmetrics, text};
use kubevirt_metrics_collectors::core::metric::Family;
use kubevirt_metrics_collectors::handler::families;
use kubevirt_metrics_collectors::handler::launcher::payload;
use kubevirt_metrics_collectors::handler::stats::{VmiIdentity, VmiStats};
use kubevirt_metrics_flags::{ExportArgs, InfluxPrecision};
use prost::Message;

/// The typical rules of the README ("Aggregation"): per-namespace CPU and memory.
const RULES: &[&str] = &[
    "sum by (namespace) (kubevirt_vmi_memory_resident_bytes)",
    "sum by (namespace) (kubevirt_vmi_memory_available_bytes)",
    "sum by (namespace) (kubevirt_vmi_cpu_usage_seconds_total)",
    "sum by (namespace) (kubevirt_vmi_vcpu_seconds_total)",
];

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/launcher-payloads")
}

fn input(vmis: usize) -> Vec<Family> {
    let read = |name: &str| std::fs::read_to_string(testdata().join(name)).expect(name);
    let domain = payload::domain_stats_from_json(&read("captured-domainstats-db.json"))
        .expect("captured domain stats");
    let filesystems = payload::filesystems_from_json(&read("captured-filesystems-db.json"))
        .expect("captured filesystems");
    let stats: Vec<VmiStats> = (0..vmis)
        .map(|i| VmiStats {
            vmi: VmiIdentity {
                namespace: format!("tenant-{:02}", i % 20),
                name: format!("vm-{i:05}"),
                node: "node-a".to_owned(),
                labels: BTreeMap::from([("app".to_owned(), format!("app-{}", i % 7))]),
                ..Default::default()
            }
            .into(),
            domain: domain.clone(),
            filesystems: filesystems.clone(),
            dirty_rate_mbs: Some(3),
            collected_at: SystemTime::now(),
        })
        .collect();
    families::render(&stats, &[])
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Median time of `runs` calls of `encode`, and the size of what it returned.
fn measure(runs: usize, mut encode: impl FnMut() -> usize) -> (Duration, usize) {
    let mut size = 0;
    let times = (0..runs)
        .map(|_| {
            let start = Instant::now();
            size = std::hint::black_box(encode());
            start.elapsed()
        })
        .collect();
    (median(times), size)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut vmis, mut runs) = (1000, 15);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--vmis" => vmis = args.next().and_then(|v| v.parse().ok()).unwrap_or(vmis),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            _ => {}
        }
    }
    let families = input(vmis);
    let series: usize = families.iter().map(|f| f.samples.len()).sum();
    let batch = Batch {
        families: Arc::new(families.clone()),
        collected_at: SystemTime::now(),
    };
    println!(
        "input: {vmis} VMIs, {} families, {series} series; median of {runs} runs",
        families.len()
    );

    let resource = otlp::resource(&Resource::from_env("virt-handler-metrics"));
    let delivered = remote_write::Delivered::new();
    let mut rows: Vec<(&str, Duration, usize)> = Vec::new();
    let (t, b) = measure(runs, || text::encode(&families).len());
    rows.push(("Prometheus text 0.0.4", t, b));
    let (t, b) = measure(runs, || openmetrics::encode(&families).len());
    rows.push(("OpenMetrics text", t, b));
    let (t, b) = measure(runs, || json::encode(&families).len());
    rows.push(("JSON", t, b));
    let (t, b) = measure(runs, || {
        lineproto::encode(&families, batch.collected_at, InfluxPrecision::Ns, 5_000)
            .chunks
            .iter()
            .map(Vec::len)
            .sum()
    });
    rows.push(("InfluxDB line protocol", t, b));
    let (t, b) = measure(runs, || {
        let (request, _) = remote_write::write_request(&batch, &delivered, 0);
        remote_write::compress(&request).len()
    });
    rows.push(("remote write (protobuf+snappy)", t, b));
    let (t, b) = measure(runs, || {
        let mut starts = otlp::StartTimes::default();
        otlp::request(&batch, &resource, &mut starts)
            .encode_to_vec()
            .len()
    });
    rows.push(("OTLP (protobuf)", t, b));

    let text_time = rows[0].1.as_secs_f64();
    println!(
        "{:<32} {:>10} {:>12} {:>8}",
        "format", "encode ms", "bytes", "× text"
    );
    for (name, time, bytes) in &rows {
        println!(
            "{name:<32} {:>10.2} {bytes:>12} {:>8.2}",
            time.as_secs_f64() * 1e3,
            time.as_secs_f64() / text_time
        );
    }

    let export = ExportArgs {
        aggregate: RULES.iter().map(|r| (*r).to_owned()).collect(),
        ..ExportArgs::default()
    };
    let aggregation = Aggregation::from_args(&export).expect("the README's rules parse");
    // The runtime hands `apply` the pass's families by value: clone them outside the clock.
    let mut inputs: Vec<Vec<Family>> = (0..runs).map(|_| families.clone()).collect();
    let (t, out) = measure(runs, || {
        let input = inputs.pop().unwrap_or_default();
        aggregation
            .apply(input)
            .iter()
            .map(|f| f.samples.len())
            .sum()
    });
    println!(
        "aggregation ({} rules, keep): {:.2} ms, {out} series out; {:.2} × text encoding (must be < 1)",
        RULES.len(),
        t.as_secs_f64() * 1e3,
        t.as_secs_f64() / text_time
    );
    println!(
        "CPU per push interval (30 s default): remote write {:.2} %, OTLP {:.2} %, line protocol {:.2} %",
        rows[4].1.as_secs_f64() / 30.0 * 100.0,
        rows[5].1.as_secs_f64() / 30.0 * 100.0,
        rows[3].1.as_secs_f64() / 30.0 * 100.0
    );
}
