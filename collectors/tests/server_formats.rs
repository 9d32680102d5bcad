//! The serving core over plain HTTP: format negotiation and bodies, gzip, the snapshot cache,
//! readiness, the collection deadline, bad requests, graceful stop.

#![allow(clippy::unwrap_used)]

mod server_support;

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kubevirt_metrics_collectors::core::collect::Problem;
use kubevirt_metrics_collectors::core::component;
use kubevirt_metrics_collectors::core::format::negotiate::Format;
use kubevirt_metrics_collectors::core::format::{openmetrics, text};
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_flags::Mode;
use server_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const SELF_PREFIX: &str = "kubevirt_metrics_sidecar_";

async fn started_full() -> (runtime::Running, String, Arc<ScriptedCollector>) {
    let collector = Arc::new(ScriptedCollector::new(kubevirt_families()));
    let running = runtime::start("test-metrics", &args(Mode::Full), collector.clone())
        .await
        .unwrap();
    let base = format!("http://{}", running.local_addr());
    let client = http_client();
    wait_ready(&client, &base).await;
    (running, base, collector)
}

async fn scrape(base: &str, accept: Option<&str>) -> (String, String) {
    let mut request = http_client().get(format!("{base}/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, response.text().await.unwrap())
}

#[tokio::test]
async fn text_and_openmetrics_are_negotiated_like_client_golang() {
    let (running, base, _collector) = started_full().await;

    // curl, promtool, a browser: text 0.0.4.
    for accept in [None, Some("*/*"), Some("text/plain;version=0.0.4")] {
        let (content_type, body) = scrape(&base, accept).await;
        assert_eq!(
            content_type, "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        assert!(!body.contains("# EOF"));
    }

    // The text body holds the collector's families exactly as the text encoder writes them
    // (read back with the component parser, self-metrics set aside).
    let (_, text_body) = scrape(&base, None).await;
    let mut served = component::parse(&text_body).unwrap();
    served.retain(|f| !f.name.starts_with(SELF_PREFIX));
    assert_eq!(text::encode(&served), text::encode(&kubevirt_families()));
    assert!(text_body.contains(
        "kubevirt_vmi_filesystem_used_bytes{disk_name=\"vda\",file_system_type=\"NTFS\",mount_point=\"C:\\\\\",name=\"win \\\"2022\\\"\",namespace=\"default\"} 2.5e+10\n"
    ));

    // Prometheus 2.42: OpenMetrics 1.0.0.
    let (content_type, om_body) = scrape(&base, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om_body.ends_with("\n# EOF\n"));
    let own: Vec<_> = kubevirt_families();
    let expected_om = openmetrics::encode(&own);
    for line in expected_om.lines().filter(|l| *l != "# EOF") {
        assert!(om_body.lines().any(|l| l == line), "missing {line:?}");
    }
    for line in [
        "# TYPE kubevirt_vmi_network_receive_bytes counter",
        "# TYPE kubevirt_vm_running_status_last_transition_timestamp_seconds unknown",
        "kubevirt_vm_running_status_last_transition_timestamp_seconds{name=\"fedora-1\",namespace=\"default\"} 1.7613e+09",
        "kubevirt_vmi_migration_data_processed_bytes{name=\"fedora-1\",namespace=\"default\",node=\"node01\"} 1e+09 1.761300000123e+09",
        "kubevirt_vmi_phase_transition_time_from_creation_seconds_bucket{phase=\"Running\",le=\"1.0\"} 1",
    ] {
        assert!(
            om_body.lines().any(|l| l == line),
            "missing {line:?} in\n{om_body}"
        );
    }

    // OpenMetrics without a version: 0.0.1, same body.
    let (content_type, om0_body) = scrape(&base, Some("application/openmetrics-text")).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=0.0.1; charset=utf-8"
    );
    assert_eq!(
        om0_body
            .lines()
            .filter(|l| !l.starts_with(SELF_PREFIX))
            .count(),
        om_body
            .lines()
            .filter(|l| !l.starts_with(SELF_PREFIX))
            .count()
    );

    // A strict OpenMetrics parser accepts the body, and the series names it reads are the
    // names the text format carries: Prometheus stores the same series either way.
    if let Some(parsed) = strict_openmetrics_sample_names(&om_body) {
        let om_names: BTreeSet<String> = parsed.unwrap().into_iter().collect();
        let text_names: BTreeSet<String> = component::parse(&text_body)
            .unwrap()
            .iter()
            .flat_map(|f| {
                f.samples
                    .iter()
                    .map(move |s| format!("{}{}", f.name, s.suffix))
            })
            .collect();
        assert_eq!(om_names, text_names);
        assert!(om_names.contains("kubevirt_vm_running_status_last_transition_timestamp_seconds"));
        assert!(om_names.contains("kubevirt_vmi_network_receive_bytes_total"));
    }

    running.stop().await.unwrap();
}

#[tokio::test]
async fn gzip_is_served_to_clients_that_ask() {
    let (running, base, _collector) = started_full().await;
    let (_, plain) = scrape(&base, Some(PROMETHEUS_ACCEPT)).await;

    let client = reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .build()
        .unwrap();
    let response = client
        .get(format!("{base}/metrics"))
        .header("accept", PROMETHEUS_ACCEPT)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let compressed = response.bytes().await.unwrap();
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    // Same snapshot (a 200 ms interval may have published a new one in between: compare
    // the collector's part).
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.contains(SELF_PREFIX))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&unzipped), strip(&plain));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn one_snapshot_is_encoded_once_per_format() {
    let (running, _base, _collector) = started_full().await;
    let snapshot = running.published().snapshot();
    let first = snapshot.body(Format::Text, false).await.unwrap();
    let second = snapshot.body(Format::Text, false).await.unwrap();
    assert_eq!(first.as_ptr(), second.as_ptr(), "text encoded twice");
    let om1 = snapshot.body(Format::OpenMetrics1, false).await.unwrap();
    let om0 = snapshot.body(Format::OpenMetrics0, false).await.unwrap();
    assert_eq!(om1.as_ptr(), om0.as_ptr(), "OpenMetrics encoded twice");
    let gz1 = snapshot.body(Format::Text, true).await.unwrap();
    let gz2 = snapshot.body(Format::Text, true).await.unwrap();
    assert_eq!(gz1.as_ptr(), gz2.as_ptr(), "gzip compressed twice");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn readiness_waits_for_the_first_collection_and_not_for_the_component() {
    // Complement mode against a component that is not there (a closed port).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let gate = Arc::new(Notify::new());
    let collector = Arc::new(ScriptedCollector::gated(kubevirt_families(), gate.clone()));
    let mut common = args(Mode::Complement);
    common.component_metrics_url = format!("https://{closed_addr}/metrics");
    common.component_insecure_skip_verify = true;
    let running = runtime::start("test-metrics", &common, collector.clone())
        .await
        .unwrap();
    let base = format!("http://{}", running.local_addr());
    let client = http_client();

    assert_eq!(get_text(&client, &format!("{base}/healthz")).await.0, 200);
    wait_until(
        Duration::from_secs(5),
        "the first collection to start",
        || async { collector.calls.load(Ordering::SeqCst) > 0 },
    )
    .await;
    let (status, _) = get_text(&client, &format!("{base}/readyz")).await;
    assert_eq!(status, 503, "ready before the first collection finished");
    // Before the first pass /metrics already answers, with self-metrics only.
    let (status, body) = get_text(&client, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains(
        "kubevirt_metrics_sidecar_build_info{collector=\"test-metrics\",mode=\"complement\""
    ));

    gate.notify_one();
    wait_ready(&client, &base).await;

    // Ready although the component never answered; nothing of the collector is published.
    let (_, body) = get_text(&client, &format!("{base}/metrics")).await;
    assert!(
        type_names(&body).iter().all(|n| n.starts_with(SELF_PREFIX)),
        "{body}"
    );
    assert_eq!(
        sample_value(&body, "kubevirt_metrics_sidecar_withheld_families"),
        Some(kubevirt_families().len() as f64)
    );
    assert!(
        sample_value(
            &body,
            "kubevirt_metrics_sidecar_component_check_failures_total{kind=\"connect\"}"
        )
        .unwrap()
            >= 1.0
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_collector_that_overruns_its_deadline_is_cut_off_and_counted() {
    let collector = Arc::new(ScriptedCollector::new(kubevirt_families()));
    *collector.delay.lock().unwrap() = Duration::from_secs(30);
    let mut common = args(Mode::Full);
    common.collection_timeout = Duration::from_millis(100);
    let running = runtime::start("test-metrics", &common, collector.clone())
        .await
        .unwrap();
    let base = format!("http://{}", running.local_addr());
    let client = http_client();
    // Deadline 100 ms plus the runtime's 1 s grace.
    wait_until(
        Duration::from_secs(5),
        "readiness after a cut-off pass",
        || async { get_text(&client, &format!("{base}/readyz")).await.0 == 200 },
    )
    .await;
    let (_, body) = get_text(&client, &format!("{base}/metrics")).await;
    assert!(
        type_names(&body).iter().all(|n| n.starts_with(SELF_PREFIX)),
        "{body}"
    );
    assert_eq!(
        sample_value(
            &body,
            "kubevirt_metrics_sidecar_problems_total{kind=\"timeout\",source=\"collector\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample_value(
            &body,
            "kubevirt_metrics_sidecar_collections_total{result=\"timeout\"}"
        ),
        Some(1.0)
    );
    assert!(
        !body.contains("kubevirt_metrics_sidecar_last_successful_collection_timestamp_seconds 1")
    );

    // The collector recovers: its families come back, the timeout count stays.
    *collector.delay.lock().unwrap() = Duration::ZERO;
    wait_until(Duration::from_secs(10), "a successful pass", || async {
        let (_, body) = get_text(&client, &format!("{base}/metrics")).await;
        body.contains("kubevirt_vmi_network_receive_bytes_total{")
    })
    .await;
    running.stop().await.unwrap();
}

#[tokio::test]
async fn collector_problems_are_counted_by_source_and_kind() {
    let collector = Arc::new(ScriptedCollector::new(kubevirt_families()));
    *collector.problems.lock().unwrap() = vec![
        Problem {
            source: "launcher",
            kind: "timeout",
            target: "default/fedora-1".to_owned(),
            message: "GetDomainStats timed out".to_owned(),
        },
        Problem {
            source: "launcher",
            kind: "timeout",
            target: "default/win2k22".to_owned(),
            message: "GetDomainStats timed out".to_owned(),
        },
    ];
    let running = runtime::start("test-metrics", &args(Mode::Full), collector)
        .await
        .unwrap();
    let base = format!("http://{}", running.local_addr());
    let client = http_client();
    wait_until(Duration::from_secs(10), "two passes", || async {
        let (_, body) = get_text(&client, &format!("{base}/metrics")).await;
        sample_value(
            &body,
            "kubevirt_metrics_sidecar_problems_total{kind=\"timeout\",source=\"launcher\"}",
        )
        .is_some_and(|v| v >= 4.0)
    })
    .await;
    let (_, body) = get_text(&client, &format!("{base}/metrics")).await;
    assert_eq!(
        sample_value(&body, "kubevirt_metrics_sidecar_targets"),
        Some(2.0)
    );
    // The collector's families are still served alongside the problems.
    assert!(body.contains("kubevirt_vmi_network_receive_bytes_total{"));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn bad_requests_end_their_connection_and_nothing_else() {
    let (running, base, _collector) = started_full().await;
    let addr = running.local_addr();
    let client = http_client();

    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello\r\n\r\n"[..],
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
        b"NOT-A-METHOD \x00\xff HTTP/9.9\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    }
    // A huge header block.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let _ = stream.write_all(huge.as_bytes()).await;
    drop(stream);
    // A client that connects and says nothing.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();

    assert_eq!(get_text(&client, &format!("{base}/nope")).await.0, 404);
    let post = client.post(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    let head = client.head(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let (status, body) = get_text(&client, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("kubevirt_vmi_network_receive_bytes_total{"));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn stop_closes_the_port() {
    let (running, _base, _collector) = started_full().await;
    let addr = running.local_addr();
    tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .expect("stop took too long")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn start_rejects_a_zero_interval_and_a_port_in_use() {
    let collector = Arc::new(ScriptedCollector::new(Vec::new()));
    let mut common = args(Mode::Full);
    common.interval = Duration::ZERO;
    let error = runtime::start("test-metrics", &common, collector.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(error, runtime::RuntimeError::ZeroInterval),
        "{error}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut common = args(Mode::Full);
    common.listen = Some(taken.local_addr().unwrap());
    let error = runtime::start("test-metrics", &common, collector)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("listening on"), "{error}");
}
