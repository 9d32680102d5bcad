//! Faults of a push endpoint (remote write), each against a running sidecar: the endpoint
//! down at start, going down mid-run, answering 500, 429 and 400, hanging. In every case
//! collection and `/metrics` go on (each scrape answers fast with a fresh pass), the queue
//! never holds more than `--push-queue-capacity` batches, lost batches are counted, and the
//! sink recovers by itself once the endpoint is back (the time it took is printed).

#![allow(clippy::unwrap_used)]

mod export_support;
mod server_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use export_support::{Behaviour, FakeReceiver};
use kubevirt_metrics_collectors::core::runtime::{self, Running};
use kubevirt_metrics_flags::Mode;
use server_support::*;

const CAPACITY: usize = 3;
const SENT: &str = "kubevirt_metrics_sidecar_push_batches_sent_total{sink=\"remote_write\"}";
const DROPPED: &str = "kubevirt_metrics_sidecar_push_batches_dropped_total{sink=\"remote_write\"}";
const QUEUE: &str = "kubevirt_metrics_sidecar_push_queue_length{sink=\"remote_write\"}";
const RETRYABLE: &str =
    "kubevirt_metrics_sidecar_push_failures_total{reason=\"retryable\",sink=\"remote_write\"}";
const PERMANENT: &str =
    "kubevirt_metrics_sidecar_push_failures_total{reason=\"permanent\",sink=\"remote_write\"}";
const LAST_SUCCESS: &str =
    "kubevirt_metrics_sidecar_push_last_success_timestamp_seconds{sink=\"remote_write\"}";
const PASSES: &str = "kubevirt_metrics_sidecar_collections_total{result=\"ok\"}";

struct Sidecar {
    running: Option<Running>,
    base: String,
    client: reqwest::Client,
}

impl Sidecar {
    async fn start(url: &str) -> Self {
        let mut common = args(Mode::Full);
        common.interval = Duration::from_millis(200);
        common.export.remote_write_url = Some(url.to_owned());
        common.export.push_queue_capacity = CAPACITY;
        common.export.push_timeout = Duration::from_millis(500);
        common.export.push_max_backoff = Duration::from_millis(300);
        let collector = Arc::new(ScriptedCollector::new(kubevirt_families()));
        let running = runtime::start("test-metrics", &common, collector)
            .await
            .unwrap();
        let base = format!("http://{}", running.local_addr());
        let client = http_client();
        wait_ready(&client, &base).await;
        Self {
            running: Some(running),
            base,
            client,
        }
    }

    /// One scrape of `/metrics`, which must answer within a second whatever the sink does.
    async fn scrape(&self) -> String {
        let started = Instant::now();
        let (status, body) = get_text(&self.client, &format!("{}/metrics", self.base)).await;
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/metrics took {:?}",
            started.elapsed()
        );
        let queue = sample_value(&body, QUEUE).unwrap();
        assert!(queue <= CAPACITY as f64, "queue length {queue}");
        body
    }

    async fn value(&self, series: &str) -> f64 {
        sample_value(&self.scrape().await, series)
            .unwrap_or_else(|| panic!("no {series} on /metrics"))
    }

    /// Scrapes for `period`, checking that collection goes on meanwhile.
    async fn keeps_collecting_for(&self, period: Duration) {
        let before = self.value(PASSES).await;
        let end = Instant::now() + period;
        while Instant::now() < end {
            self.scrape().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = self.value(PASSES).await;
        assert!(
            after >= before + 3.0,
            "collection stalled: {before} -> {after} passes"
        );
    }

    /// Waits until the sink delivers again; returns how long that took.
    async fn recovers(&self, receiver: &FakeReceiver) -> Duration {
        let started = Instant::now();
        let sent = self.value(SENT).await;
        let accepted = receiver.accepted();
        wait_until(Duration::from_secs(10), "recovery", || async {
            receiver.accepted() > accepted && self.value(SENT).await > sent
        })
        .await;
        let took = started.elapsed();
        // Delivered, then keeps up: the queue drains.
        wait_until(Duration::from_secs(5), "an empty queue", || async {
            self.value(QUEUE).await <= 1.0
        })
        .await;
        assert!(self.value(LAST_SUCCESS).await > 1.7e9);
        took
    }

    async fn stop(mut self) {
        let stopping = Instant::now();
        self.running.take().unwrap().stop().await.unwrap();
        assert!(
            stopping.elapsed() < Duration::from_secs(8),
            "shutdown took {:?}",
            stopping.elapsed()
        );
    }
}

#[tokio::test]
async fn endpoint_down_at_start_then_started() {
    let mut receiver = FakeReceiver::down();
    let sidecar = Sidecar::start(&receiver.url()).await;
    sidecar.keeps_collecting_for(Duration::from_secs(2)).await;
    assert!(sidecar.value(RETRYABLE).await >= 2.0);
    assert!(sidecar.value(DROPPED).await >= 1.0, "a full queue drops");
    assert_eq!(sidecar.value(SENT).await, 0.0);
    assert_eq!(sidecar.value(LAST_SUCCESS).await, 0.0);

    receiver.start().await;
    let took = sidecar.recovers(&receiver).await;
    eprintln!("endpoint down at start: recovered {took:?} after it came up");
    assert!(
        receiver.violations().is_empty(),
        "{:?}",
        receiver.violations()
    );
    // Every series of the pass (the test families and the self-metrics) was pushed.
    assert!(
        receiver
            .counters
            .last_series
            .load(std::sync::atomic::Ordering::SeqCst)
            > 20
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn endpoint_going_down_mid_run_and_back() {
    let mut receiver = FakeReceiver::down();
    receiver.start().await;
    let sidecar = Sidecar::start(&receiver.url()).await;
    wait_until(Duration::from_secs(5), "deliveries", || async {
        sidecar.value(SENT).await >= 3.0
    })
    .await;
    assert_eq!(sidecar.value(RETRYABLE).await, 0.0);

    receiver.stop();
    let dropped = sidecar.value(DROPPED).await;
    sidecar.keeps_collecting_for(Duration::from_secs(2)).await;
    assert!(sidecar.value(RETRYABLE).await >= 1.0);
    assert!(
        sidecar.value(DROPPED).await > dropped,
        "dropped counter grows"
    );

    receiver.start().await;
    let took = sidecar.recovers(&receiver).await;
    eprintln!("endpoint down mid-run: recovered {took:?} after it came back");
    assert!(
        receiver.violations().is_empty(),
        "{:?}",
        receiver.violations()
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn http_500_and_429_are_retried_and_400_drops_the_batch() {
    let mut receiver = FakeReceiver::down();
    receiver.set(Behaviour::Status(500));
    receiver.start().await;
    let sidecar = Sidecar::start(&receiver.url()).await;
    sidecar.keeps_collecting_for(Duration::from_secs(2)).await;
    let after_500 = sidecar.value(RETRYABLE).await;
    assert!(after_500 >= 2.0);
    assert!(sidecar.value(DROPPED).await >= 1.0);
    assert_eq!(sidecar.value(SENT).await, 0.0);

    receiver.set(Behaviour::Status(429));
    sidecar.keeps_collecting_for(Duration::from_secs(1)).await;
    assert!(sidecar.value(RETRYABLE).await > after_500);
    assert_eq!(sidecar.value(PERMANENT).await, 0.0);

    receiver.set(Behaviour::Accept);
    let took = sidecar.recovers(&receiver).await;
    eprintln!("500/429: recovered {took:?} after the endpoint accepted again");

    // 400: the batch is given up at once, not retried, and the next batch goes out.
    receiver.set(Behaviour::Status(400));
    let requests = receiver.requests();
    sidecar.keeps_collecting_for(Duration::from_secs(1)).await;
    let permanent = sidecar.value(PERMANENT).await;
    assert!(permanent >= 2.0, "{permanent}");
    // About one request per pass: no retry storm.
    assert!(receiver.requests() - requests <= 10);
    assert!(sidecar.value(QUEUE).await <= 1.0);
    assert!(
        receiver.violations().is_empty(),
        "{:?}",
        receiver.violations()
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn hanging_endpoint_costs_a_bounded_queue_and_recovers() {
    let mut receiver = FakeReceiver::down();
    receiver.set(Behaviour::Hang);
    receiver.start().await;
    let sidecar = Sidecar::start(&receiver.url()).await;
    sidecar.keeps_collecting_for(Duration::from_secs(3)).await;
    // Each request is cut at --push-timeout (500 ms) and counted as retryable.
    assert!(sidecar.value(RETRYABLE).await >= 2.0);
    assert!(sidecar.value(DROPPED).await >= 3.0);
    assert_eq!(sidecar.value(SENT).await, 0.0);
    assert_eq!(sidecar.value(QUEUE).await, CAPACITY as f64);

    receiver.set(Behaviour::Accept);
    let took = sidecar.recovers(&receiver).await;
    eprintln!("hanging endpoint: recovered {took:?} after it answered again");

    // Shutdown with a hanging endpoint is bounded too.
    receiver.set(Behaviour::Hang);
    tokio::time::sleep(Duration::from_millis(600)).await;
    sidecar.stop().await;
}

#[tokio::test]
async fn a_bad_sink_flag_stops_the_start_with_its_message() {
    for (url, token, expected) in [
        ("ftp://example/", None, "--remote-write-url"),
        (
            "http://127.0.0.1:9/api/v1/write",
            Some("/nonexistent/remote-write-token"),
            "/nonexistent/remote-write-token",
        ),
    ] {
        let mut common = args(Mode::Full);
        common.export.remote_write_url = Some(url.to_owned());
        common.export.remote_write_bearer_token_file = token.map(Into::into);
        let collector = Arc::new(ScriptedCollector::new(kubevirt_families()));
        let error = runtime::start("test-metrics", &common, collector)
            .await
            .expect_err("the sidecar must not start")
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
    let mut common = args(Mode::Full);
    common.export.push_queue_capacity = 0;
    let collector = Arc::new(ScriptedCollector::new(kubevirt_families()));
    let error = runtime::start("test-metrics", &common, collector)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("--push-queue-capacity"), "{error}");
}
