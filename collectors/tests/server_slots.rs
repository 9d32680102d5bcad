//! The connection limit against connections that hoard it: when every slot is held by a
//! client that asked for pages and never reads them, a new scrape still gets in. The
//! handler of a hoarder's request has finished (its response waits in the write buffer), so
//! the hoarder counts as idle and the one idle the longest is closed to make room; the
//! write timeout would cut them all off later anyway. Its own test binary: the hostile-load
//! test measures the process's memory. The sidecar runs on its own one-worker runtime, as
//! the binaries run it.

#![allow(clippy::unwrap_used)]

mod server_support;

use std::sync::Arc;
use std::time::Duration;

use kubevirt_metrics_flags::Mode;
use server_support::*;

const SLOTS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_cannot_lock_a_scrape_out() {
    tokio::time::timeout(Duration::from_secs(40), hoarded_slots())
        .await
        .expect("the whole test is bounded");
}

async fn hoarded_slots() {
    let mut common = args(Mode::Full);
    common.max_connections = SLOTS;
    let collector = Arc::new(ScriptedCollector::new(big_families()));
    let sidecar = SidecarOnItsRuntime::start(common, collector).await;
    let addr = sidecar.running.local_addr();
    let base = format!("http://{addr}");
    // A fresh connection per request, as the kubelet's probes and a restarted Prometheus.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    wait_ready(&client, &base).await;

    let mut hoarders = Vec::new();
    for _ in 0..SLOTS {
        hoarders.push(never_reading_reader(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in ["/healthz", "/metrics", "/healthz"] {
        let response = client.get(format!("{base}{path}")).send().await;
        let response = response.unwrap_or_else(|e| panic!("{path} with every slot hoarded: {e}"));
        assert_eq!(response.status(), 200, "{path}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{path}");
    }

    let evicted = "kubevirt_metrics_sidecar_http_refused_total{reason=\"idle_evicted\"}";
    let refused = "kubevirt_metrics_sidecar_http_refused_total{reason=\"connection_limit\"}";
    wait_until(Duration::from_secs(10), "the evictions counted", || async {
        let body = get_text(&client, &format!("{base}/metrics")).await.1;
        // The first scrape took a hoarder's place; it closed its connection, so the
        // next ones found a free slot.
        sample_value(&body, evicted).unwrap_or(0.0) >= 1.0
            && sample_value(&body, refused).unwrap_or(0.0) == 0.0
    })
    .await;
    drop(hoarders);
    sidecar.stop().await;
}

/// A probe that has sent its request is not the idle connection a burst of new ones
/// evicts, even with the sidecar on one worker accepting them back to back: a connection
/// is not closed for room before what its client sent has been read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_sent_its_request_survives_a_burst_of_connections() {
    tokio::time::timeout(Duration::from_secs(40), probe_in_a_burst())
        .await
        .expect("the whole test is bounded");
}

async fn probe_in_a_burst() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut common = args(Mode::Full);
    common.max_connections = SLOTS;
    let collector = Arc::new(ScriptedCollector::new(big_families()));
    let sidecar = SidecarOnItsRuntime::start(common, collector).await;
    let addr = sidecar.running.local_addr();
    wait_ready(&http_client(), &format!("http://{addr}")).await;
    for round in 0..20 {
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut burst = Vec::new();
        for _ in 0..SLOTS * 4 {
            burst.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), probe.read_to_end(&mut answer));
        read.await.expect("the probe is answered").unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: the probe got {answer:?}"
        );
        drop(burst);
    }
    sidecar.stop().await;
}
