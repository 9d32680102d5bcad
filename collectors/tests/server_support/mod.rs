//! Shared pieces of the server and complement tests: a scripted collector, KubeVirt-shaped
//! families, certificates, a fake co-located component, and the strict OpenMetrics check.
#![allow(dead_code)] // Each test binary uses a different part.
#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kubevirt_metrics_collectors::core::collect::{Collection, Collector, Problem};
use kubevirt_metrics_collectors::core::metric::{Family, MetricType, Sample};
use kubevirt_metrics_collectors::core::runtime::{self, Running};
use kubevirt_metrics_flags::{CommonArgs, Mode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

// ---------------------------------------------------------------- collector

/// A collector that returns fixed families, optionally after waiting for a gate or a delay.
pub struct ScriptedCollector {
    pub families: Mutex<Vec<Family>>,
    pub problems: Mutex<Vec<Problem>>,
    pub delay: Mutex<Duration>,
    pub gate: Option<Arc<Notify>>,
    pub calls: AtomicUsize,
}

impl ScriptedCollector {
    pub fn new(families: Vec<Family>) -> Self {
        Self {
            families: Mutex::new(families),
            problems: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            gate: None,
            calls: AtomicUsize::new(0),
        }
    }

    pub fn gated(families: Vec<Family>, gate: Arc<Notify>) -> Self {
        Self {
            gate: Some(gate),
            ..Self::new(families)
        }
    }
}

impl Collector for ScriptedCollector {
    fn collect(&self, _deadline: Instant) -> BoxFuture<'_, Collection> {
        async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            let delay = *self.delay.lock().unwrap();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Collection {
                families: self.families.lock().unwrap().clone(),
                problems: self.problems.lock().unwrap().clone(),
                stale_dropped: 0,
                targets_seen: 2,
                component: None,
            }
        }
        .boxed()
    }
}

// ---------------------------------------------------------------- families

fn labels(pairs: &[(&'static str, &str)]) -> kubevirt_metrics_collectors::core::metric::Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

fn vmi(name: &str) -> kubevirt_metrics_collectors::core::metric::Labels {
    labels(&[
        ("kubernetes_vmi_label_kubevirt_io_nodeName", "node01"),
        ("name", name),
        ("namespace", "default"),
        ("node", "node01"),
    ])
}

/// A gauge family named `name` with one sample per VMI.
pub fn vmi_gauge(name: &'static str, help: &'static str) -> Family {
    let mut family = Family::new(name, help, MetricType::Gauge);
    family.samples.push(Sample::new(vmi("fedora-1"), 1048576.0));
    family.samples.push(Sample::new(vmi("win2k22"), 0.5));
    family
}

/// KubeVirt-shaped families covering every encoder path: a `_total` counter, a counter
/// without `_total`, a gauge with an escaped label value, timestamped migration samples, a
/// histogram.
pub fn kubevirt_families() -> Vec<Family> {
    let mut received = Family::new(
        "kubevirt_vmi_network_receive_bytes_total",
        "Total network traffic received in bytes.",
        MetricType::Counter,
    );
    let mut with_interface = vmi("fedora-1").to_vec();
    with_interface.insert(0, ("interface".into(), "default".into()));
    received
        .samples
        .push(Sample::new(with_interface, 123456789.0));

    let mut transition = Family::new(
        "kubevirt_vm_running_status_last_transition_timestamp_seconds",
        "Virtual Machine last transition timestamp to running status.",
        MetricType::Counter,
    );
    transition.samples.push(Sample::new(
        labels(&[("name", "fedora-1"), ("namespace", "default")]),
        1761300000.0,
    ));

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

    let mut migration = Family::new(
        "kubevirt_vmi_migration_data_processed_bytes",
        "The total Guest OS data processed and migrated to the new VM.",
        MetricType::Gauge,
    );
    for (ts, value) in [(1761300000123_i64, 1.0e9), (1761300005123, 2.0e9)] {
        migration.samples.push(
            Sample::new(
                labels(&[
                    ("name", "fedora-1"),
                    ("namespace", "default"),
                    ("node", "node01"),
                ]),
                value,
            )
            .with_timestamp(ts),
        );
    }

    let mut histogram = Family::new(
        "kubevirt_vmi_phase_transition_time_from_creation_seconds",
        "Histogram of VM phase transitions duration from creation time in seconds.",
        MetricType::Histogram,
    );
    let phase = [("phase", "Running")];
    let mut cumulative = 0.0;
    for (le, step) in [("0.5", 0.0), ("1", 1.0), ("1e+06", 2.0), ("+Inf", 0.0)] {
        cumulative += step;
        let mut l = labels(&phase).to_vec();
        l.push(("le".into(), le.into()));
        let mut sample = Sample::new(l, cumulative);
        sample.suffix = "_bucket";
        histogram.samples.push(sample);
    }
    let mut sum = Sample::new(labels(&phase), 7.5);
    sum.suffix = "_sum";
    let mut count = Sample::new(labels(&phase), cumulative);
    count.suffix = "_count";
    histogram.samples.push(sum);
    histogram.samples.push(count);

    vec![received, transition, filesystem, migration, histogram]
}

// ---------------------------------------------------------------- runtime and HTTP

pub fn args(mode: Mode) -> CommonArgs {
    CommonArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        mode,
        interval: Duration::from_millis(200),
        collection_timeout: Duration::from_millis(1500),
        ..CommonArgs::default()
    }
}

/// Polls `check` every 50 ms until it returns true; panics after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (10 s at most) until the server at `base` answers `/readyz` with 200.
pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    wait_until(Duration::from_secs(10), "readiness", || async {
        get_text(client, &format!("{base}/readyz")).await.0 == 200
    })
    .await;
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client that trusts only `ca_pem`, opens a new connection per request and never
/// resumes a TLS session (a resumed session skips the certificate, so a test could not see
/// which one the server presents).
pub fn https_client(ca_pem: &str) -> reqwest::Client {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn get_text(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of the first sample line starting with `prefix` (e.g. `name{labels}`), if any.
pub fn sample_value(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|line| line.starts_with(prefix) && line[prefix.len()..].starts_with(' '))
        .and_then(|line| line[prefix.len()..].trim().split(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Family names on `# TYPE` lines.
pub fn type_names(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------- certificates

#[path = "../common/test_ca.rs"]
mod test_ca;

// Each test binary uses its own part of the support.
use test_ca::rustls_server_config;
#[allow(unused_imports)]
pub use test_ca::{Leaf, TestCa};

/// Writes `contents` to `path` the way a Secret volume updates: a new file renamed over it.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------- fake component

/// What the fake component answers: `body` with `status` on `/metrics` (and any other
/// path), `healthz` with 200 on `/healthz` (KubeVirt's shape, see [`healthz_body`]).
#[derive(Clone)]
pub struct ComponentReply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    pub healthz: String,
}

/// KubeVirt's `/healthz` answer for a component whose configuration is at `config_version`.
pub fn healthz_body(config_version: &str) -> String {
    serde_json::json!({
        "apiserver": {"connectivity": "ok", "version": {"major": "1", "minor": "36"}},
        "config-resource-version": config_version,
    })
    .to_string()
}

/// An HTTPS server on 127.0.0.1 that answers `/metrics` like a KubeVirt component.
pub struct FakeComponent {
    pub addr: SocketAddr,
    pub reply: Arc<Mutex<ComponentReply>>,
    /// Every request, whatever the path.
    pub requests: Arc<AtomicUsize>,
    /// Requests for `/metrics` only: the expensive ones.
    pub scrapes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeComponent {
    pub async fn start(leaf: &Leaf, body: String) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), leaf, body).await
    }

    pub async fn start_on(addr: SocketAddr, leaf: &Leaf, body: String) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(rustls_server_config(leaf));
        let reply = Arc::new(Mutex::new(ComponentReply {
            status: 200,
            body,
            delay: Duration::ZERO,
            healthz: healthz_body("1"),
        }));
        let requests = Arc::new(AtomicUsize::new(0));
        let scrapes = Arc::new(AtomicUsize::new(0));
        let (reply2, requests2, scrapes2) = (reply.clone(), requests.clone(), scrapes.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set, so stopping the server ends them too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let (acceptor, reply, requests, scrapes) = (
                    acceptor.clone(),
                    reply2.clone(),
                    requests2.clone(),
                    scrapes2.clone(),
                );
                connections.spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let reply = reply.lock().unwrap().clone();
                            requests.fetch_add(1, Ordering::SeqCst);
                            let healthz = req.uri().path() == "/healthz";
                            if !healthz {
                                scrapes.fetch_add(1, Ordering::SeqCst);
                            }
                            async move {
                                tokio::time::sleep(reply.delay).await;
                                let (status, content_type, body) = if healthz {
                                    (200, "application/json", reply.healthz)
                                } else {
                                    (
                                        reply.status,
                                        "text/plain; version=0.0.4; charset=utf-8",
                                        reply.body,
                                    )
                                };
                                let response = hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", content_type)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap();
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            reply,
            requests,
            scrapes,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}/metrics", self.addr)
    }

    pub fn set(&self, change: impl FnOnce(&mut ComponentReply)) {
        change(&mut self.reply.lock().unwrap());
    }

    /// Stops listening (new connections are refused; open ones are dropped).
    pub async fn stop(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}

pub fn component_fixture() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/component/virt-handler-metrics.prom");
    std::fs::read_to_string(path).unwrap()
}

// ---------------------------------------------------------------- strict OpenMetrics parser

/// Parses `body` with Python `prometheus_client.openmetrics.parser` (strict) and returns
/// every sample name it read, or `None` (after saying so loudly) when the parser is not
/// installed (`scripts/install-tools.sh` installs it).
pub fn strict_openmetrics_sample_names(body: &str) -> Option<Result<Vec<String>, String>> {
    const SCRIPT: &str = r#"
import sys, json
try:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
except ImportError:
    sys.exit(3)
try:
    names = [s.name for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]
except Exception as e:
    print("%s: %s" % (type(e).__name__, e))
    sys.exit(1)
print(json.dumps(names))
"#;
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED strict OpenMetrics check: python3 not found");
        return None;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    match output.status.code() {
        Some(0) => Some(Ok(serde_json::from_str(&stdout).unwrap())),
        Some(3) => {
            eprintln!(
                "SKIPPED strict OpenMetrics check: Python prometheus_client is not installed \
                 (run scripts/install-tools.sh)"
            );
            None
        }
        _ => Some(Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ))),
    }
}

/// About 150 KB of text: big enough that a reader who never reads blocks the writer.
pub fn big_families() -> Vec<Family> {
    let mut family = Family::new(
        "kubevirt_vmi_memory_resident_bytes",
        "Resident set size of the process running the domain.",
        MetricType::Gauge,
    );
    family.samples = (0..2000)
        .map(|i| {
            Sample::new(
                vec![
                    ("name".into(), format!("vm-{i:05}").into()),
                    ("namespace".into(), "default".into()),
                ],
                f64::from(i) * 1024.0,
            )
        })
        .collect();
    vec![family]
}

/// A connection that asks for [`big_families`]' page 64 times and never reads the answers.
pub async fn never_reading_reader(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(
            "GET /metrics HTTP/1.1\r\nHost: sidecar\r\n\r\n"
                .repeat(64)
                .as_bytes(),
        )
        .await
        .unwrap();
    stream
}

/// A sidecar running on a runtime of its own, built as the binaries build theirs (the
/// default `--worker-threads`), so that a test's clients do not lend it their threads.
pub struct SidecarOnItsRuntime {
    pub running: Running,
    runtime: tokio::runtime::Runtime,
}

impl SidecarOnItsRuntime {
    pub async fn start(common: CommonArgs, collector: Arc<dyn Collector>) -> Self {
        let runtime = runtime::tokio_runtime(common.worker_threads).unwrap();
        let running = runtime
            .spawn(async move {
                runtime::start("virt-handler-metrics", &common, collector)
                    .await
                    .unwrap()
            })
            .await
            .unwrap();
        Self { running, runtime }
    }

    pub async fn stop(self) {
        self.running.stop().await.unwrap();
        self.runtime.shutdown_background();
    }
}
