//! The sidecar's HTTP server under hostile and heavy load on 127.0.0.1, all at once: 200
//! idle connections (three times the connection limit), a reader that pipelines requests
//! and never reads the answers, a slow-loris request head, an oversized head, garbage bytes,
//! and a flood of scrapes. Throughout, `/healthz` and `/metrics` answer within a few
//! seconds; afterwards what was refused is counted and memory has not run away. The sidecar
//! runs on a runtime of its own with the binaries' default worker count (one), the load on
//! the test's.

#![allow(clippy::unwrap_used)]

mod server_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kubevirt_metrics_flags::Mode;
use server_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// What "still serving" means: every check answers within this.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
const IDLE_CONNECTIONS: usize = 200;
const FLOOD_REQUESTS: usize = 400;
const FLOOD_CONCURRENCY: usize = 16;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Waits (bounded) until the server closes `stream`; returns how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    while started.elapsed() < limit {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_serving_prometheus_and_probes_under_hostile_load() {
    tokio::time::timeout(Duration::from_secs(50), hostile_load())
        .await
        .expect("the whole test is bounded");
}

async fn hostile_load() {
    let collector = Arc::new(ScriptedCollector::new(big_families()));
    let mut common = args(Mode::Full);
    common.http_header_timeout = HEADER_TIMEOUT;
    common.http_write_timeout = WRITE_TIMEOUT;
    let sidecar = SidecarOnItsRuntime::start(common, collector).await;
    let addr = sidecar.running.local_addr();
    let base = format!("http://{addr}");
    wait_ready(&http_client(), &base).await;
    let rss_before = rss_kib();

    // The watchdog: a fresh connection per check, as the kubelet's probes make.
    let stop = Arc::new(AtomicBool::new(false));
    let watchdog = tokio::spawn({
        let (stop, base) = (stop.clone(), base.clone());
        async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(ANSWER_WITHIN)
                .build()
                .unwrap();
            let (mut checks, mut slowest) = (0, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                for path in ["/healthz", "/metrics"] {
                    let started = Instant::now();
                    let response = client.get(format!("{base}{path}")).send().await;
                    let response = response
                        .unwrap_or_else(|e| panic!("{path} after {:?}: {e:?}", started.elapsed()));
                    assert_eq!(response.status(), 200, "{path}");
                    let body = response.text().await.unwrap();
                    assert!(!body.is_empty(), "{path}");
                    slowest = slowest.max(started.elapsed());
                    checks += 1;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (checks, slowest)
        }
    });

    // 200 idle connections: the oldest are closed to make room, never the busy ones.
    let mut idle = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }

    // A reader that asks for many pages and never reads them.
    let mut slow_reader = never_reading_reader(addr).await;

    // A slow loris: one byte of request head every 300 ms.
    let loris = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        while started.elapsed() < Duration::from_secs(15) {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return Some(started.elapsed()),
                    Ok(_) => {}
                },
                () = tokio::time::sleep(Duration::from_millis(300)) => {
                    if stream.write_all(b"X").await.is_err() {
                        return Some(started.elapsed());
                    }
                }
            }
        }
        None
    });

    // An oversized request head, and bytes that are not HTTP.
    let mut oversized = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: sidecar\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let _ = oversized.write_all(head.as_bytes()).await;
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        .await
        .unwrap();

    // A flood of scrapes over kept connections.
    let flood_started = Instant::now();
    let flood_client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut flood = tokio::task::JoinSet::new();
    for worker in 0..FLOOD_CONCURRENCY {
        let (client, url) = (flood_client.clone(), format!("{base}/metrics"));
        flood.spawn(async move {
            let mut bytes = 0;
            for _ in (worker..FLOOD_REQUESTS).step_by(FLOOD_CONCURRENCY) {
                let response = client.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                bytes += response.bytes().await.unwrap().len();
            }
            bytes
        });
    }
    let mut flooded = 0;
    while let Some(bytes) = flood.join_next().await {
        flooded += bytes.unwrap();
    }
    eprintln!(
        "{FLOOD_REQUESTS} scrapes, {} MB, in {:?}",
        flooded / 1_000_000,
        flood_started.elapsed()
    );

    // The hostile connections end by the limits.
    assert!(
        closed_within(&mut oversized, Duration::from_secs(5))
            .await
            .is_some(),
        "an oversized head closes its connection"
    );
    assert!(
        closed_within(&mut garbage, Duration::from_secs(5))
            .await
            .is_some(),
        "garbage closes its connection"
    );
    let loris_closed = loris.await.unwrap().expect("the slow loris is cut off");
    assert!(
        loris_closed < HEADER_TIMEOUT + Duration::from_secs(3),
        "{loris_closed:?}"
    );
    // The never-reading reader is cut off by the write timeout (its receive window stays
    // full; reading now drains what was already in flight, then the end).
    tokio::time::sleep(WRITE_TIMEOUT + Duration::from_secs(1)).await;
    assert!(
        closed_within(&mut slow_reader, Duration::from_secs(10))
            .await
            .is_some(),
        "the slow reader is cut off"
    );

    stop.store(true, Ordering::SeqCst);
    let (checks, slowest) = watchdog.await.unwrap();
    eprintln!("{checks} health and metrics checks, slowest {slowest:?}");
    assert!(checks >= 10, "{checks}");

    // Everything refused is counted (the counters are published with the next pass).
    let client = http_client();
    let refused = |reason: &str| {
        format!("kubevirt_metrics_sidecar_http_refused_total{{reason=\"{reason}\"}}")
    };
    wait_until(Duration::from_secs(10), "the refusals counted", || async {
        let body = get_text(&client, &format!("{base}/metrics")).await.1;
        let count = |reason: &str| sample_value(&body, &refused(reason)).unwrap_or(0.0);
        count("idle_evicted") >= (IDLE_CONNECTIONS - 64) as f64
            && count("write_timeout") >= 1.0
            && count("header_timeout") >= 1.0
            && count("header_too_large") >= 1.0
            && count("malformed") >= 1.0
    })
    .await;

    drop(idle);
    let rss_after = rss_kib();
    eprintln!("RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    sidecar.stop().await;
}
