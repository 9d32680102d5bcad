//! Aggregation against the text encoding of the same input: issue 9 asks that a pass's
//! aggregation cost less than encoding it. The input is 1,000 VMIs' worth of KubeVirt's
//! families (`families::render` over the two captured launcher payloads, alternating, with
//! per-VMI values and labels, as a node running 1,000 VMIs would publish). Run:
//!
//! ```text
//! cargo bench -p kubevirt-metrics-collectors --bench aggregate [-- --vmis 1000 --iterations 30]
//! ```
//!
//! Printed per rule set: the median time of `Aggregation::apply` (the input handed over by
//! value, as the runtime does; the clone that makes each iteration's input is not timed),
//! the median time of `text::encode` of the input, and their ratio.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Instant, UNIX_EPOCH};

use kubevirt_metrics_collectors::core::aggregate::Aggregation;
use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::core::metric::Family;
use kubevirt_metrics_collectors::handler::families;
use kubevirt_metrics_collectors::handler::launcher::payload;
use kubevirt_metrics_collectors::handler::stats::{VmiIdentity, VmiStats};
use kubevirt_metrics_flags::ExportArgs;
use support::*;

/// The README's typical use: per-namespace CPU and memory, per-VMI per-vCPU series dropped.
const TYPICAL: &[&str] = &[
    "sum by (namespace) (kubevirt_vmi_vcpu_seconds_total) drop",
    "sum by (namespace) (kubevirt_vmi_vcpu_delay_seconds_total) drop",
    "sum by (namespace) (kubevirt_vmi_vcpu_wait_seconds_total) drop",
    "sum by (namespace) (kubevirt_vmi_cpu_usage_seconds_total) drop",
    "sum by (namespace) (kubevirt_vmi_memory_resident_bytes) drop",
    "sum by (namespace) (kubevirt_vmi_memory_domain_bytes) drop",
    "sum by (namespace) (kubevirt_vmi_memory_available_bytes)",
    "sum by (namespace) (kubevirt_vmi_memory_usable_bytes)",
];

fn testdata(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/launcher-payloads")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())))
}

fn input(n: u64) -> Vec<Family> {
    let decode = |file: &str| {
        payload::domain_stats_from_json(&testdata(file))
            .unwrap_or_else(|e| fail(&format!("{file}: {e}")))
    };
    let db = decode("captured-domainstats-db.json");
    let testvm = decode("captured-domainstats-testvm.json");
    let filesystems = payload::filesystems_from_json(&testdata("captured-filesystems-db.json"))
        .unwrap_or_else(|e| fail(&e.to_string()));
    let vmis: Vec<VmiStats> = (0..n)
        .map(|i| {
            let mut domain = if i % 2 == 0 {
                db.clone()
            } else {
                testvm.clone()
            };
            if let Some(cpu) = domain.cpu.as_mut() {
                cpu.time = cpu.time.map(|t| t + i * 1_000_003);
            }
            if let Some(memory) = domain.memory.as_mut() {
                memory.rss = memory.rss.map(|r| r + i * 17);
            }
            let labels = BTreeMap::from([
                ("app".to_owned(), format!("app-{}", i % 13)),
                ("kubevirt.io/domain".to_owned(), format!("vm-{i:04}")),
                ("kubevirt.io/nodeName".to_owned(), "node01".to_owned()),
            ]);
            VmiStats {
                vmi: VmiIdentity {
                    namespace: format!("ns-{:02}", i % 20),
                    name: format!("vm-{i:04}"),
                    node: "node01".to_owned(),
                    labels,
                    ..Default::default()
                }
                .into(),
                domain,
                filesystems: if i % 2 == 0 {
                    filesystems.clone()
                } else {
                    Vec::new()
                },
                dirty_rate_mbs: Some(i as i64 % 50),
                collected_at: UNIX_EPOCH,
            }
        })
        .collect();
    families::render(&vmis, &[])
}

fn median_ms(mut run: impl FnMut() -> f64, iterations: usize) -> f64 {
    let times: Vec<f64> = (0..iterations).map(|_| run()).collect();
    quantile(&times, 0.5)
}

fn main() {
    let mut vmis = 1000u64;
    let mut iterations = 30usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--vmis" => vmis = number(&args.next().unwrap_or_default()) as u64,
            "--iterations" => iterations = number(&args.next().unwrap_or_default()),
            "--bench" => {}
            other => fail(&format!("unknown flag {other}")),
        }
    }
    let families = input(vmis);
    let series: usize = families.iter().map(|f| f.samples.len()).sum();
    let encode = median_ms(
        || {
            let t0 = Instant::now();
            std::hint::black_box(text::encode(&families));
            t0.elapsed().as_secs_f64() * 1e3
        },
        iterations,
    );
    let bytes = text::encode(&families).len();
    println!(
        "input: {vmis} VMIs, {} families, {series} series; text encoding {:.1} MiB",
        families.len(),
        bytes as f64 / (1024.0 * 1024.0)
    );
    println!("text::encode                         median {encode:8.2} ms");

    let sets: Vec<(&str, ExportArgs)> = vec![
        (
            "typical (README: per-namespace CPU and memory)",
            ExportArgs {
                aggregate: TYPICAL.iter().map(|r| (*r).to_owned()).collect(),
                ..ExportArgs::default()
            },
        ),
        (
            "every series: sum by (namespace) ({__name__=~\".+\"})",
            ExportArgs {
                aggregate: vec![r#"sum by (namespace) ({__name__=~".+"})"#.to_owned()],
                ..ExportArgs::default()
            },
        ),
        (
            "without: avg without (id, state) (the 3 vCPU families)",
            ExportArgs {
                aggregate: vec![
                    r#"avg without (id, state) ({__name__=~"kubevirt_vmi_vcpu_.*"})"#.to_owned(),
                ],
                ..ExportArgs::default()
            },
        ),
        (
            "worst case, no reduction: avg without (name) (every series)",
            ExportArgs {
                aggregate: vec![r#"avg without (name) ({__name__=~".+"})"#.to_owned()],
                ..ExportArgs::default()
            },
        ),
        (
            "--drop-label name (every series relabelled, merged)",
            ExportArgs {
                drop_labels: vec!["name".to_owned()],
                ..ExportArgs::default()
            },
        ),
    ];
    for (title, args) in sets {
        let aggregation = Aggregation::from_args(&args).unwrap_or_else(|e| fail(&e.to_string()));
        let mut out_series = 0;
        let apply = median_ms(
            || {
                let owned = families.clone();
                let t0 = Instant::now();
                let out = aggregation.apply(owned);
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                out_series = out.iter().map(|f| f.samples.len()).sum();
                drop(std::hint::black_box(out));
                ms
            },
            iterations,
        );
        println!(
            "apply: {title:<58} median {apply:8.2} ms  = {:.3} x text::encode  ({out_series} series out)",
            apply / encode
        );
    }
}
