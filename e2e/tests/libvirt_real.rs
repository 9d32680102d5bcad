//! The libvirt source against a real libvirtd: the QEMU/TCG Linux guest `default_testvm`,
//! the test driver (in-process `test:///default`, and `test+unix:///default` behind the
//! daemon) — as brought up by `scripts/real-peers.sh up`.
//!
//! Tests here share one libvirtd and one of them restarts it, so they run one at a time
//! (a process-wide lock).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{Paused, Peers, parse_series};
use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::handler::families;
use kubevirt_metrics_collectors::handler::libvirt::LibvirtSource;
use kubevirt_metrics_collectors::handler::stats::VmiStats;
use kubevirt_metrics_collectors::handler::{SourceReport, StatsSource};
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

const NODE: &str = "e2e-node";

async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

fn source(uri: &str, timeout: Duration) -> LibvirtSource {
    LibvirtSource::new(&[uri.to_owned()], NODE, 4, timeout)
}

async fn collect(source: &LibvirtSource) -> SourceReport {
    source
        .collect(Instant::now() + Duration::from_secs(20))
        .await
}

fn guest<'a>(peers: &Peers, report: &'a SourceReport) -> &'a VmiStats {
    report
        .vmis
        .iter()
        .find(|v| v.vmi.namespace == peers.guest_namespace && v.vmi.name == peers.guest_name)
        .unwrap_or_else(|| {
            panic!(
                "guest {} not in the report: {:?}",
                peers.guest_domain, report.problems
            )
        })
}

/// The guest's exposition, as virt-handler-metrics would serve it.
fn guest_exposition(peers: &Peers, report: &SourceReport) -> String {
    text::encode(&families::render(
        std::slice::from_ref(guest(peers, report)),
        &[],
    ))
}

fn value(exposition: &str, series: &str) -> f64 {
    parse_series(exposition)
        .into_iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no series {series} in:\n{exposition}"))
}

fn guest_peers() -> Peers {
    let peers = Peers::load();
    assert!(
        peers.guest,
        "the QEMU guest is disabled (KVMS_GUEST=0); run scripts/real-peers.sh up with KVMS_GUEST=1"
    );
    peers
}

/// Every family a guest without a guest agent, not migrating and without a dirty-rate
/// calculation can report.
const GUEST_FAMILIES: &[&str] = &[
    "kubevirt_vmi_memory_resident_bytes",
    "kubevirt_vmi_memory_available_bytes",
    "kubevirt_vmi_memory_unused_bytes",
    "kubevirt_vmi_memory_cached_bytes",
    "kubevirt_vmi_memory_swap_in_traffic_bytes",
    "kubevirt_vmi_memory_swap_out_traffic_bytes",
    "kubevirt_vmi_memory_pgmajfault_total",
    "kubevirt_vmi_memory_pgminfault_total",
    "kubevirt_vmi_memory_actual_balloon_bytes",
    "kubevirt_vmi_memory_usable_bytes",
    "kubevirt_vmi_memory_domain_bytes",
    "kubevirt_vmi_cpu_usage_seconds_total",
    "kubevirt_vmi_cpu_user_usage_seconds_total",
    "kubevirt_vmi_cpu_system_usage_seconds_total",
    "kubevirt_vmi_vcpu_seconds_total",
    "kubevirt_vmi_vcpu_wait_seconds_total",
    "kubevirt_vmi_vcpu_delay_seconds_total",
    "kubevirt_vmi_storage_iops_read_total",
    "kubevirt_vmi_storage_iops_write_total",
    "kubevirt_vmi_storage_read_traffic_bytes_total",
    "kubevirt_vmi_storage_write_traffic_bytes_total",
    "kubevirt_vmi_storage_read_times_seconds_total",
    "kubevirt_vmi_storage_write_times_seconds_total",
    "kubevirt_vmi_storage_flush_requests_total",
    "kubevirt_vmi_storage_flush_times_seconds_total",
    "kubevirt_vmi_network_traffic_bytes_total",
    "kubevirt_vmi_network_receive_bytes_total",
    "kubevirt_vmi_network_transmit_bytes_total",
    "kubevirt_vmi_network_receive_packets_total",
    "kubevirt_vmi_network_transmit_packets_total",
    "kubevirt_vmi_network_receive_errors_total",
    "kubevirt_vmi_network_transmit_errors_total",
    "kubevirt_vmi_network_receive_packets_dropped_total",
    "kubevirt_vmi_network_transmit_packets_dropped_total",
    "kubevirt_vmi_node_cpu_affinity",
];

/// Families that need what this guest does not have: a guest agent (load, filesystems), a
/// migration, a dirty-rate calculation.
const NOT_FROM_THIS_GUEST: &[&str] = &[
    "kubevirt_vmi_guest_load_1m",
    "kubevirt_vmi_guest_load_5m",
    "kubevirt_vmi_guest_load_15m",
    "kubevirt_vmi_filesystem_capacity_bytes",
    "kubevirt_vmi_filesystem_used_bytes",
    "kubevirt_vmi_dirty_rate_bytes_per_second",
    "kubevirt_vmi_migration_data_bytes_total",
    "kubevirt_vmi_migration_data_remaining_bytes",
    "kubevirt_vmi_migration_data_processed_bytes",
    "kubevirt_vmi_migration_dirty_memory_rate_bytes",
    "kubevirt_vmi_migration_memory_transfer_rate_bytes",
];

#[tokio::test]
async fn every_family_the_guest_can_report_appears_with_kubevirt_labels() {
    let _serial = serial().await;
    let peers = guest_peers();
    let report = collect(&source(&peers.qemu_uri, Duration::from_secs(10))).await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let families = families::render(std::slice::from_ref(guest(&peers, &report)), &[]);
    let names: BTreeSet<&str> = families.iter().map(|f| f.name.as_ref()).collect();
    let missing: Vec<&&str> = GUEST_FAMILIES
        .iter()
        .filter(|f| !names.contains(**f))
        .collect();
    assert!(missing.is_empty(), "missing families: {missing:?}");
    // Nothing else than what the guest can report, and together they are all families.
    let expected: BTreeSet<&str> = GUEST_FAMILIES.iter().copied().collect();
    assert_eq!(names, expected);
    let all: BTreeSet<&str> = families::family_names().collect();
    let rest: BTreeSet<&str> = all.difference(&expected).copied().collect();
    assert_eq!(rest, NOT_FROM_THIS_GUEST.iter().copied().collect());

    let text = text::encode(&families);
    let id = format!(
        r#"name="{}",namespace="{}",node="{NODE}""#,
        peers.guest_name, peers.guest_namespace
    );
    // Device labels are the KubeVirt aliases (ua- stripped), not vda/vnet0.
    value(
        &text,
        &format!(
            r#"kubevirt_vmi_storage_iops_read_total{{drive="{}",{id}}}"#,
            peers.guest_disk_alias
        ),
    );
    value(
        &text,
        &format!(
            r#"kubevirt_vmi_network_transmit_packets_total{{interface="{}",{id}}}"#,
            peers.guest_iface_alias
        ),
    );
    value(
        &text,
        &format!(r#"kubevirt_vmi_vcpu_seconds_total{{id="0",{id},state="running"}}"#),
    );
    // One vCPU allowed on every host CPU.
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(value(&text, &format!("kubevirt_vmi_node_cpu_affinity{{{id}}}")) >= 1.0);
    assert!(
        value(&text, &format!("kubevirt_vmi_node_cpu_affinity{{{id}}}"))
            <= host_cpus.max(1.0) * 2.0
    );
}

#[tokio::test]
async fn counters_grow_between_two_collections() {
    let _serial = serial().await;
    let peers = guest_peers();
    let source = source(&peers.qemu_uri, Duration::from_secs(10));
    let first = guest_exposition(&peers, &collect(&source).await);
    // The guest reads its disk and sends an ARP request once a second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = guest_exposition(&peers, &collect(&source).await);
    let id = format!(
        r#"name="{}",namespace="{}",node="{NODE}""#,
        peers.guest_name, peers.guest_namespace
    );
    for series in [
        format!("kubevirt_vmi_cpu_usage_seconds_total{{{id}}}"),
        format!(
            r#"kubevirt_vmi_storage_iops_read_total{{drive="{}",{id}}}"#,
            peers.guest_disk_alias
        ),
        format!(
            r#"kubevirt_vmi_network_transmit_packets_total{{interface="{}",{id}}}"#,
            peers.guest_iface_alias
        ),
    ] {
        let (a, b) = (value(&first, &series), value(&second, &series));
        assert!(b > a, "{series} did not grow: {a} -> {b}");
    }
}

#[tokio::test]
async fn memory_matches_virsh_domstats() {
    let _serial = serial().await;
    let peers = guest_peers();
    let report = collect(&source(&peers.qemu_uri, Duration::from_secs(10))).await;
    let text = guest_exposition(&peers, &report);
    let stats = peers
        .domstats(&peers.qemu_uri, &peers.guest_domain)
        .expect("virsh domstats");
    let kib = |field: &str| -> f64 {
        stats
            .get(field)
            .unwrap_or_else(|| panic!("virsh domstats has no {field}: {stats:?}"))
            .parse::<f64>()
            .expect("number")
    };
    let id = format!(
        r#"name="{}",namespace="{}",node="{NODE}""#,
        peers.guest_name, peers.guest_namespace
    );
    // The balloon size does not move on its own: compare exactly.
    assert_eq!(
        value(&text, &format!("kubevirt_vmi_memory_domain_bytes{{{id}}}")),
        kib("balloon.current") * 1024.0
    );
    assert_eq!(
        value(
            &text,
            &format!("kubevirt_vmi_memory_actual_balloon_bytes{{{id}}}")
        ),
        kib("balloon.current") * 1024.0
    );
    // Guest-reported numbers move a little between the two reads; they must be close.
    for (metric, field) in [
        ("kubevirt_vmi_memory_available_bytes", "balloon.available"),
        ("kubevirt_vmi_memory_usable_bytes", "balloon.usable"),
        ("kubevirt_vmi_memory_unused_bytes", "balloon.unused"),
        ("kubevirt_vmi_memory_resident_bytes", "balloon.rss"),
    ] {
        let ours = value(&text, &format!("{metric}{{{id}}}"));
        let virsh = kib(field) * 1024.0;
        assert!(
            (ours - virsh).abs() <= virsh * 0.10 + 4.0 * 1024.0 * 1024.0,
            "{metric} = {ours}, virsh {field}×1024 = {virsh}"
        );
    }
}

/// `promtool check metrics` (Prometheus 2.42) on what the guest gives: no parse error and
/// no lint finding at all. KubeVirt's own names do trip promtool elsewhere —
/// `kubevirt_vmi_phase_count` (virt-controller) gets "non-histogram and non-summary metrics
/// should not have \"_count\" suffix" — but none of virt-handler's per-VMI families does:
/// every counter ends in `_total`, and the byte-count gauges
/// (`kubevirt_vmi_memory_swap_{in,out}_traffic_bytes`) are not linted by name.
#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let _serial = serial().await;
    let peers = guest_peers();
    let report = collect(&source(&peers.qemu_uri, Duration::from_secs(10))).await;
    let text = text::encode(&families::render(&report.vmis, &[]));
    let result = peers.promtool_check_metrics(&text).expect("promtool");
    assert_eq!(
        (result.code, result.findings()),
        (0, vec![]),
        "promtool check metrics:\n{}",
        result.output
    );
}

#[tokio::test]
async fn in_process_test_driver_connection_works() {
    let _serial = serial().await;
    let report = collect(&source("test:///default", Duration::from_secs(10))).await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.targets_seen, 1);
    let vmi = &report.vmis[0];
    // A plain libvirt domain (no `_`): no namespace, its name as is.
    assert_eq!(
        (
            vmi.vmi.namespace.as_str(),
            vmi.vmi.name.as_str(),
            vmi.vmi.node.as_str()
        ),
        ("", "test", NODE)
    );
    assert_eq!(vmi.domain.name.as_deref(), Some("test"));
    assert!(vmi.domain.uuid.is_some());
    // The test driver's bulk stats carry only state.*: nothing to export, and no error.
    assert!(vmi.domain.cpu.is_none() && vmi.domain.memory.is_none());
    assert!(families::render(&report.vmis, &[]).is_empty());
}

#[tokio::test]
async fn daemon_test_driver_lists_every_domain_with_kubevirt_identity() {
    let _serial = serial().await;
    let peers = Peers::load();
    let report = collect(&source(&peers.test_uri, Duration::from_secs(10))).await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Our domains plus the driver's own `test`.
    assert_eq!(report.vmis.len(), peers.test_domains + 1);
    assert_eq!(report.targets_seen as usize, peers.test_domains + 1);
    let (namespace, prefix) = peers
        .test_domain_prefix
        .split_once('_')
        .expect("prefix is <namespace>_<name prefix>");
    let ours = report
        .vmis
        .iter()
        .filter(|v| v.vmi.namespace == namespace && v.vmi.name.starts_with(prefix))
        .count();
    assert_eq!(ours, peers.test_domains);
    // Sorted by namespace, then name.
    let keys: Vec<(&str, &str)> = report
        .vmis
        .iter()
        .map(|v| (v.vmi.namespace.as_str(), v.vmi.name.as_str()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

#[tokio::test]
async fn an_unreachable_uri_is_a_problem_not_a_failure() {
    let _serial = serial().await;
    let bad = "qemu+unix:///system?socket=/nonexistent/libvirt-sock";
    let source = LibvirtSource::new(
        &["test:///default".to_owned(), bad.to_owned()],
        NODE,
        2,
        Duration::from_secs(5),
    );
    for _ in 0..2 {
        let report = collect(&source).await;
        assert_eq!(report.vmis.len(), 1, "the good URI still reports");
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert_eq!(report.problems[0].kind, "connect");
        assert_eq!(report.problems[0].target, bad);
    }
}

#[tokio::test]
async fn a_libvirtd_restart_is_survived_without_restarting_the_collector() {
    let _serial = serial().await;
    let peers = guest_peers();
    if peers.libvirtd_pid().is_none() {
        eprintln!(
            "SKIPPED: libvirtd was not started by scripts/real-peers.sh (not ours to restart)"
        );
        return;
    }
    let source = source(&peers.qemu_uri, Duration::from_secs(10));
    let before = collect(&source).await;
    assert!(before.problems.is_empty(), "{:?}", before.problems);
    guest(&peers, &before);

    let restarted = peers.restart_libvirtd();
    // The test driver's domains lived in the old daemon: bring them back whatever happened.
    let restored = peers.restore();
    restarted.expect("restart libvirtd");
    restored.expect("restore the peers");

    // The old connection is dead; the source notices, counts it, reopens (in the same pass
    // when the daemon is already back) and reports the guest again.
    let mut problems = Vec::new();
    let mut recovered = None;
    for _ in 0..5 {
        let report = collect(&source).await;
        problems.extend(report.problems.iter().map(|p| p.kind));
        if report.problems.is_empty() && !report.vmis.is_empty() {
            recovered = Some(report);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let recovered = recovered.unwrap_or_else(|| panic!("no recovery; problems: {problems:?}"));
    guest(&peers, &recovered);
    assert!(
        problems.contains(&"connection_lost"),
        "the lost connection was not counted: {problems:?}"
    );
}

#[tokio::test]
async fn a_hung_daemon_times_out_then_recovers() {
    let _serial = serial().await;
    let peers = guest_peers();
    let Some(pid) = peers.libvirtd_pid() else {
        eprintln!("SKIPPED: libvirtd was not started by scripts/real-peers.sh (not ours to pause)");
        return;
    };
    let source = source(&peers.qemu_uri, Duration::from_millis(1500));
    assert!(collect(&source).await.problems.is_empty());
    let kinds = {
        let _paused = Paused::new(pid).expect("SIGSTOP libvirtd");
        let first = collect(&source).await;
        // The call is still stuck on its thread: the next pass must not pile up behind it.
        let second = collect(&source).await;
        [first, second].map(|r| r.problems.iter().map(|p| p.kind).collect::<Vec<_>>())
    }; // SIGCONT
    assert_eq!(kinds[0], ["timeout"]);
    assert_eq!(kinds[1], ["busy"]);
    let mut recovered = false;
    for _ in 0..40 {
        let report = collect(&source).await;
        if report.problems.is_empty() && !report.vmis.is_empty() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(recovered, "no recovery after SIGCONT");
}

// --------------------------------------------------------------------------------------
// virt-handler-metrics' serving core (in process) scraped by the real Prometheus.

mod scrape {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use e2e::Peers;
    use kubevirt_metrics_collectors::core::collect::Collector;
    use kubevirt_metrics_collectors::core::runtime::{self, Running};
    use kubevirt_metrics_collectors::handler::VmiCollector;
    use kubevirt_metrics_collectors::handler::libvirt::LibvirtSource;
    use kubevirt_metrics_flags::{CommonArgs, Mode};
    use serde_json::Value;

    use super::{NODE, guest_peers, serial};

    /// virt-handler-metrics with `--source libvirt`, as its `main` wires it, on a free
    /// loopback port, optionally with TLS.
    async fn start_handler(peers: &Peers, tls: Option<(PathBuf, PathBuf)>) -> Running {
        let interval = Duration::from_secs(1);
        let source = LibvirtSource::new(
            std::slice::from_ref(&peers.qemu_uri),
            NODE,
            4,
            Duration::from_secs(5),
        );
        let collector: Arc<dyn Collector> = Arc::new(VmiCollector::new(Arc::new(source), interval));
        let (tls_cert, tls_key) = tls.unzip();
        let common = CommonArgs {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            mode: Mode::Full,
            interval,
            tls_cert,
            tls_key,
            ..CommonArgs::default()
        };
        runtime::start("virt-handler-metrics", &common, collector)
            .await
            .expect("start the handler's serving core")
    }

    async fn get_json(client: &reqwest::Client, url: &str) -> Value {
        client
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .text()
            .await
            .ok()
            .and_then(|body| serde_json::from_str(&body).ok())
            .unwrap_or_else(|| panic!("GET {url}: no JSON"))
    }

    /// Waits until Prometheus scraped `job` successfully and PromQL returns the guest's
    /// CPU series with KubeVirt's labels; returns the target's health record.
    async fn wait_for_guest_series(peers: &Peers, job: &str) -> Value {
        let client = reqwest::Client::new();
        let query = format!(
            r#"kubevirt_vmi_cpu_usage_seconds_total{{job="{job}",namespace="{}",name="{}",node="{NODE}"}}"#,
            peers.guest_namespace, peers.guest_name
        );
        let url = format!("{}/api/v1/query", peers.prometheus_url);
        let mut last_target = Value::Null;
        for _ in 0..60 {
            let targets = get_json(
                &client,
                &format!("{}/api/v1/targets?state=active", peers.prometheus_url),
            )
            .await;
            if let Some(target) = targets["data"]["activeTargets"]
                .as_array()
                .and_then(|ts| ts.iter().find(|t| t["labels"]["job"] == job))
            {
                last_target = target.clone();
                if target["health"] == "up" {
                    let result =
                        get_json(&client, &format!("{url}?query={}", percent_encode(&query))).await;
                    let series = &result["data"]["result"];
                    if series.as_array().is_some_and(|s| s.len() == 1) {
                        let value: f64 = series[0]["value"][1]
                            .as_str()
                            .and_then(|v| v.parse().ok())
                            .expect("sample value");
                        assert!(value > 0.0, "cpu seconds {value}");
                        return target.clone();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("Prometheus did not ingest {query} within 30 s; target: {last_target:#}");
    }

    /// Enough of `application/x-www-form-urlencoded` for a PromQL selector.
    fn percent_encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn prometheus_scrapes_http_and_queries_the_guest() {
        let _serial = serial().await;
        let peers = guest_peers();
        let handler = start_handler(&peers, None).await;
        let addr = handler.local_addr().to_string();
        let job = "e2e-libvirt-http";
        let _target = peers.scrape_target(job, &addr, false);
        let target = wait_for_guest_series(&peers, job).await;
        // Prometheus 2.42 asks for OpenMetrics first; an invalid body (e.g. no `# EOF`)
        // would have left the target down with a lastError.
        assert_eq!(target["lastError"], "", "{target:#}");
        // And the body it negotiated really is OpenMetrics.
        let resp = reqwest::Client::new()
            .get(format!("http://{addr}/metrics"))
            .header(
                "Accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )
            .send()
            .await
            .expect("scrape");
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let body = resp.text().await.unwrap();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(body.ends_with("# EOF\n"), "no # EOF at the end");
        handler.stop().await.expect("stop");
    }

    #[tokio::test]
    async fn prometheus_scrapes_https_with_a_self_signed_certificate() {
        let _serial = serial().await;
        let peers = guest_peers();
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let handler = start_handler(&peers, Some((cert_path, key_path))).await;
        let addr = handler.local_addr().to_string();
        let job = "e2e-libvirt-https";
        let _target = peers.scrape_target(job, &addr, true);
        let target = wait_for_guest_series(&peers, job).await;
        assert_eq!(target["scrapeUrl"], format!("https://{addr}/metrics"));
        assert_eq!(target["lastError"], "", "{target:#}");
        handler.stop().await.expect("stop");
    }
}
