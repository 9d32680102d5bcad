//! A real Prometheus (2.42, from Debian; `scripts/real-peers.sh` installs it) scrapes the
//! sidecar over HTTPS. It negotiates OpenMetrics 1.0 and must ingest the body, and the
//! series it stores must carry KubeVirt's names, in particular the counter without `_total`
//! (`kubevirt_vm_*_status_last_transition_timestamp_seconds`), which OpenMetrics types
//! `unknown` so its name stays unchanged.

#![allow(clippy::unwrap_used)]

mod server_support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kubevirt_metrics_collectors::core::metric::Family;
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_flags::Mode;
use server_support::*;

/// Stops Prometheus when the test ends, however it ends.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test families with explicit timestamps moved to now (Prometheus rejects samples far
/// in the past as out of bounds).
fn families_stamped_now() -> Vec<Family> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut families = kubevirt_families();
    for family in &mut families {
        for (i, sample) in family.samples.iter_mut().enumerate() {
            if sample.timestamp_ms.is_some() {
                sample.timestamp_ms = Some(now_ms - 5_000 + i as i64 * 1_000);
            }
        }
    }
    families
}

async fn query(client: &reqwest::Client, base: &str, expr: &str) -> serde_json::Value {
    client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|body| serde_json::from_str(&body).unwrap())
        .unwrap()
}

fn result_count(answer: &serde_json::Value) -> usize {
    answer["data"]["result"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn prometheus_ingests_openmetrics_with_kubevirts_series_names() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        skipped("no prometheus binary on PATH (scripts/real-peers.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("sidecar-ca");
    let leaf = ca.leaf();
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca.pem).unwrap();

    let mut common = args(Mode::Full);
    common.tls_cert = Some(dir.path().join("tls.crt"));
    common.tls_key = Some(dir.path().join("tls.key"));
    common.interval = Duration::from_secs(1);
    let collector = Arc::new(ScriptedCollector::new(families_stamped_now()));
    let running = runtime::start("test-metrics", &common, collector)
        .await
        .unwrap();

    let port = free_port();
    let config = [
        "global:".to_owned(),
        "  scrape_interval: 1s".to_owned(),
        "  scrape_timeout: 1s".to_owned(),
        "scrape_configs:".to_owned(),
        "  - job_name: sidecar".to_owned(),
        "    scheme: https".to_owned(),
        "    tls_config:".to_owned(),
        format!("      ca_file: {}", dir.path().join("ca.crt").display()),
        "    static_configs:".to_owned(),
        format!("      - targets: ['{}']", running.local_addr()),
        String::new(),
    ]
    .join("\n");
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut prometheus = Prometheus(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = http_client();

    let log_tail =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    let targets;
    let start = std::time::Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{base}/api/v1/targets")).send().await
            && let Ok(answer) = response
                .text()
                .await
                .map(|body| serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default())
        {
            let target = &answer["data"]["activeTargets"][0];
            if target["health"] == "up" || !target["lastError"].as_str().unwrap_or("").is_empty() {
                targets = target.clone();
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no scrape in 60 s:\n{}",
            log_tail()
        );
        if let Ok(Some(status)) = prometheus.0.try_wait() {
            panic!("prometheus exited ({status}):\n{}", log_tail());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        targets["health"],
        "up",
        "scrape failed: {targets}\n{}",
        log_tail()
    );

    for expr in [
        "kubevirt_vm_running_status_last_transition_timestamp_seconds",
        "kubevirt_vmi_network_receive_bytes_total",
        "kubevirt_vmi_filesystem_used_bytes{mount_point=\"C:\\\\\"}",
        "kubevirt_vmi_phase_transition_time_from_creation_seconds_bucket{le=\"1.0\"}",
        "kubevirt_metrics_sidecar_build_info",
    ] {
        let mut found = 0;
        for _ in 0..40 {
            found = result_count(&query(&client, &base, expr).await);
            if found > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(found > 0, "Prometheus has no {expr}\n{}", log_tail());
    }
    for absent in [
        "kubevirt_vm_running_status_last_transition_timestamp_seconds_total",
        "kubevirt_vmi_network_receive_bytes",
    ] {
        assert_eq!(
            result_count(&query(&client, &base, absent).await),
            0,
            "{absent}"
        );
    }
    // The metadata shows the scrape was OpenMetrics: the counter's family is named without
    // `_total`, and the `_total`-less counter is `unknown`.
    let metadata: serde_json::Value = client
        .get(format!("{base}/api/v1/targets/metadata"))
        .query(&[("match_target", "{job=\"sidecar\"}")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|body| serde_json::from_str(&body).unwrap())
        .unwrap();
    let entries = metadata["data"].as_array().cloned().unwrap_or_default();
    let type_of = |metric: &str| {
        entries
            .iter()
            .find(|e| e["metric"] == metric)
            .map(|e| e["type"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(
        type_of("kubevirt_vmi_network_receive_bytes").as_deref(),
        Some("counter")
    );
    assert_eq!(
        type_of("kubevirt_vm_running_status_last_transition_timestamp_seconds").as_deref(),
        Some("unknown")
    );

    running.stop().await.unwrap();
}

/// A loud skip that `scripts/test.sh` counts: straight to the stderr handle (libtest
/// captures `eprintln!` of passing tests), with the test's name (libtest names the thread).
fn skipped(reason: &str) {
    use std::io::Write;
    let name = std::thread::current()
        .name()
        .unwrap_or("unknown")
        .to_owned();
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED: {reason}\nSKIPPED test: {name}"
    );
}
