//! KubeVirt's own v1.9.0 recording rules and alerts keep working when a metrics sidecar
//! runs next to virt-handler: the proof behind the README's "No duplicate series" section.
//!
//! A dedicated Prometheus (Debian's `prometheus`, 1 s scrapes and rule evaluations) loads
//! `testdata/kubevirt-v1.9.0/kubevirt-rules.yml` (KubeVirt's PrometheusRule groups) and
//! scrapes, as in a real cluster:
//! - the component: KubeVirt v1.9.0's real virt-handler `/metrics` for 3 VMIs, served by
//!   `kv-domainstats` (see `support/kubevirt_peer.rs`) against KubeVirt's real launcher
//!   command servers, as the target of KubeVirt's ServiceMonitor (honor_labels);
//! - our virt-handler-metrics sidecar against the same launchers, with the same `pod` and
//!   `namespace` target labels (the same pod), and the relabeling of the shipped PodMonitor
//!   (`config/prometheus/podmonitor.yaml`) unless a run says otherwise;
//! - a kube-state-metrics stand-in with the `kube_pod_status_*` series the handler rules
//!   join with.
//!
//! Runs: the component alone (the baseline), + sidecar in complement mode, + sidecar in
//! complement mode scraped without the PodMonitor's relabeling, + sidecar in full mode.
//! After each, every rule's health and last error come from `/api/v1/rules`, and every
//! recording rule's current value from `/api/v1/query`.
//!
//! Skips loudly without the KubeVirt peer; fails without `prometheus` in PATH.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use kubevirt_metrics_collectors::core::runtime::{self, Running};
use kubevirt_metrics_collectors::handler::VmiCollector;
use kubevirt_metrics_collectors::handler::launcher::{
    LauncherSettings, LauncherSource, RpcTimeouts, StaticVmis,
};
use kubevirt_metrics_collectors::k8s::objects::VirtualMachineInstance;
use kubevirt_metrics_flags::{CommonArgs, Mode};
use support::kubevirt_peer::{self, NODE};

const VMIS: usize = 3;
const VMI_NAMESPACE: &str = "default";
/// The virt-handler pod both targets belong to.
const POD: &str = "virt-handler-7x2kq";
const KUBEVIRT_NAMESPACE: &str = "kubevirt";
const RULES: &str = "testdata/kubevirt-v1.9.0/kubevirt-rules.yml";

/// What kube-state-metrics says about the virt-handler pod (the series the handler rules
/// join with: `cluster:kubevirt_virt_handler_ready:sum`, `..._pods_running:count`).
fn kube_state_metrics() -> String {
    format!(
        "# TYPE kube_pod_status_ready gauge\n\
         kube_pod_status_ready{{namespace=\"{KUBEVIRT_NAMESPACE}\",pod=\"{POD}\",condition=\"true\"}} 1\n\
         kube_pod_status_ready{{namespace=\"{KUBEVIRT_NAMESPACE}\",pod=\"{POD}\",condition=\"false\"}} 0\n\
         # TYPE kube_pod_status_phase gauge\n\
         kube_pod_status_phase{{namespace=\"{KUBEVIRT_NAMESPACE}\",pod=\"{POD}\",phase=\"Running\"}} 1\n\
         # TYPE kube_pod_info gauge\n\
         kube_pod_info{{namespace=\"{KUBEVIRT_NAMESPACE}\",pod=\"{POD}\",node=\"{NODE}\"}} 1\n"
    )
}

/// How the sidecar is scraped in one run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SidecarScrape {
    /// The shipped PodMonitor's relabeling: `pod` kept off the target (so off `up`), put
    /// back on the scraped series.
    PodMonitor,
    /// A plain pod target: `pod` on every series, `up` included.
    PlainPodTarget,
}

/// The Prometheus configuration of one run.
fn prometheus_config(
    rules: &Path,
    component: &str,
    kube_state: &str,
    sidecar: Option<(&str, SidecarScrape)>,
) -> String {
    let mut config = format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: kubevirt-prometheus-metrics
    honor_labels: true
    static_configs:
      - targets: ["{component}"]
        labels: {{namespace: {KUBEVIRT_NAMESPACE}, pod: {POD}}}
  - job_name: kube-state-metrics
    honor_labels: true
    static_configs:
      - targets: ["{kube_state}"]
"#,
        rules = rules.display()
    );
    if let Some((address, scrape)) = sidecar {
        config.push_str(&format!(
            r#"  - job_name: kubevirt-metrics-sidecars
    honor_labels: true
    static_configs:
      - targets: ["{address}"]
        labels: {{namespace: {KUBEVIRT_NAMESPACE}, pod: {POD}}}
"#
        ));
        if scrape == SidecarScrape::PodMonitor {
            // config/prometheus/podmonitor.yaml's relabelings and metricRelabelings.
            config.push_str(
                r#"    relabel_configs:
      - source_labels: [pod]
        target_label: sidecar_pod
      - action: labeldrop
        regex: pod
      - target_label: job
        replacement: kubevirt-metrics-sidecars
    metric_relabel_configs:
      - source_labels: [pod, sidecar_pod]
        separator: ";"
        regex: ";(.+)"
        target_label: pod
        replacement: "$1"
      - action: labeldrop
        regex: sidecar_pod
"#,
            );
        }
    }
    config
}

/// The relabelings above must be the shipped PodMonitor's, or this test proves nothing.
#[test]
fn the_test_relabels_as_the_shipped_pod_monitor() {
    let text =
        std::fs::read_to_string(support::repo_path("config/prometheus/podmonitor.yaml")).unwrap();
    let monitor: Value = serde_yaml::from_str(&text).unwrap();
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["honorLabels"], true);
    let relabelings = serde_json::json!([
        {"sourceLabels": ["pod"], "targetLabel": "sidecar_pod"},
        {"action": "labeldrop", "regex": "pod"},
        {"targetLabel": "job", "replacement": "kubevirt-metrics-sidecars"}
    ]);
    let metric_relabelings = serde_json::json!([
        {"sourceLabels": ["pod", "sidecar_pod"], "separator": ";", "regex": ";(.+)",
         "targetLabel": "pod", "replacement": "$1"},
        {"action": "labeldrop", "regex": "sidecar_pod"}
    ]);
    assert_eq!(endpoint["relabelings"], relabelings);
    assert_eq!(endpoint["metricRelabelings"], metric_relabelings);
}

/// A Prometheus process of its own, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn prometheus_binary() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "prometheus not found in PATH. Install it (Debian: apt-get install prometheus; \
                 scripts/real-peers.sh up does it)"
            )
        })
}

async fn start_prometheus(config: &str) -> anyhow::Result<Prometheus> {
    let dir = tempfile::tempdir()?;
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, config)?;
    let port = free_port()?;
    let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
    let child = Command::new(prometheus_binary())
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting prometheus")?;
    let mut prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = prometheus.child.try_wait()? {
            bail!(
                "prometheus exited with {status}:\n{}",
                std::fs::read_to_string(prometheus._dir.path().join("prometheus.log"))
                    .unwrap_or_default()
            );
        }
        if reqwest::get(format!("{}/-/ready", prometheus.url))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(prometheus);
        }
        anyhow::ensure!(Instant::now() < deadline, "prometheus not ready after 30s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Prometheus {
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let text = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await?
            .text()
            .await?;
        let body: Value = serde_json::from_str(&text)?;
        anyhow::ensure!(body["status"] == "success", "{path}: {body}");
        Ok(body["data"].clone())
    }

    /// Instant query → `{labels without __name__ and instance}` → value.
    async fn query(&self, expr: &str) -> anyhow::Result<BTreeMap<String, f64>> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await?;
        let mut out = BTreeMap::new();
        for sample in data["result"].as_array().context("result")? {
            // serde_json keeps the order Prometheus sends: sorted by label name.
            let labels: Vec<String> = sample["metric"]
                .as_object()
                .context("metric")?
                .iter()
                .filter(|(name, _)| *name != "__name__" && *name != "instance")
                .map(|(name, value)| format!("{name}={}", value))
                .collect();
            let value: f64 = sample["value"][1].as_str().context("value")?.parse()?;
            out.insert(format!("{{{}}}", labels.join(",")), value);
        }
        Ok(out)
    }

    /// Waits until every target has been scraped a few times and the rules evaluated since.
    async fn settle(&self, targets: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let scrapes = self.query("count_over_time(up[1m]) >= 4").await?;
            let up = self.query("up == 1").await?;
            if scrapes.len() == targets && up.len() == targets {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "targets not all up and scraped 4 times after 60s: up={up:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Three evaluation rounds on that data (rules evaluate every second).
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(())
    }
}

/// One rule as Prometheus reports it.
#[derive(Debug)]
struct RuleState {
    name: String,
    recording: bool,
    health: String,
    last_error: String,
}

#[derive(Debug)]
struct Outcome {
    rules: Vec<RuleState>,
    /// Recording rule → its series now.
    values: BTreeMap<String, BTreeMap<String, f64>>,
}

impl Outcome {
    fn errors(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| r.health != "ok" || !r.last_error.is_empty())
            .map(|r| format!("{} ({}): {}", r.name, r.health, r.last_error))
            .collect()
    }

    /// Recording rules whose series differ from `baseline`'s, with both sides.
    fn differences(&self, baseline: &Outcome) -> BTreeMap<String, String> {
        self.values
            .iter()
            .filter(|(name, values)| !same(values, &baseline.values[*name]))
            .map(|(name, values)| {
                (
                    name.clone(),
                    format!(
                        "\n    alone: {}\n    now:   {}",
                        show(&baseline.values[name]),
                        show(values)
                    ),
                )
            })
            .collect()
    }
}

fn show(series: &BTreeMap<String, f64>) -> String {
    let shown: Vec<String> = series.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("[{}]", shown.join(", "))
}

fn lines(differences: &BTreeMap<String, String>) -> String {
    differences
        .iter()
        .map(|(name, detail)| format!("  {name}:{detail}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn same(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> bool {
    a.len() == b.len()
        && a.iter().all(|(key, x)| {
            b.get(key)
                .is_some_and(|y| (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0))
        })
}

async fn observe(prometheus: &Prometheus) -> anyhow::Result<Outcome> {
    let data = prometheus.api("/api/v1/rules", &[]).await?;
    let mut rules = Vec::new();
    for group in data["groups"].as_array().context("groups")? {
        for rule in group["rules"].as_array().context("rules")? {
            rules.push(RuleState {
                name: rule["name"].as_str().unwrap_or_default().to_owned(),
                recording: rule["type"] == "recording",
                health: rule["health"].as_str().unwrap_or_default().to_owned(),
                last_error: rule["lastError"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    anyhow::ensure!(
        rules.iter().filter(|r| r.recording).count() == 57
            && rules.iter().filter(|r| !r.recording).count() == 38,
        "Prometheus did not load KubeVirt v1.9.0's 57 recording rules and 38 alerts"
    );
    let mut values = BTreeMap::new();
    for rule in rules.iter().filter(|r| r.recording) {
        let selector = format!("{{__name__=\"{}\"}}", rule.name);
        values.insert(rule.name.clone(), prometheus.query(&selector).await?);
    }
    Ok(Outcome { rules, values })
}

/// Serves one fixed text page over HTTP until the task is dropped.
async fn serve_static(body: String) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let body = Arc::new(body);
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = Arc::clone(&body);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok((address, task))
}

/// Our virt-handler collector in-process: `--source launcher` over the peer's launchers,
/// the VMIs given directly (the peer prints them), `--component-metrics-url` the peer's
/// KubeVirt `/metrics`.
async fn start_sidecar(
    pods_dir: &Path,
    vmis: &[Value],
    mode: Mode,
    component_url: &str,
) -> anyhow::Result<Running> {
    let vmis: Vec<VirtualMachineInstance> = vmis
        .iter()
        .map(|v| serde_json::from_value(v.clone()))
        .collect::<Result<_, _>>()?;
    let settings = LauncherSettings {
        node_name: NODE.to_owned(),
        pods_dir: pods_dir.to_path_buf(),
        max_concurrency: 4,
        vmi_timeout: Duration::from_secs(5),
        rpc: RpcTimeouts::default(),
    };
    let source = LauncherSource::with_lister(Arc::new(StaticVmis::new(vmis)), settings);
    let common = CommonArgs {
        listen: Some("127.0.0.1:0".parse()?),
        mode,
        interval: Duration::from_secs(1),
        collection_timeout: Duration::from_secs(15),
        component_metrics_url: component_url.to_owned(),
        ..CommonArgs::default()
    };
    let collector = VmiCollector::new(Arc::new(source), common.interval);
    let running = runtime::start("virt-handler-metrics", &common, Arc::new(collector)).await?;
    // Wait for a pass that published what this mode publishes.
    let url = format!("http://{}/metrics", running.local_addr());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = reqwest::get(&url).await?.text().await?;
        let ready = match mode {
            Mode::Full => page.contains("kubevirt_vmi_vcpu_seconds_total{"),
            Mode::Complement => page.lines().any(|l| {
                l.starts_with("kubevirt_metrics_sidecar_component_families ") && !l.ends_with(" 0")
            }),
        };
        if ready {
            return Ok(running);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "sidecar not collecting after 60s:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs Prometheus against the component (and the sidecar, if any) and observes the rules.
async fn run(
    rules: &Path,
    component: &str,
    kube_state: &str,
    sidecar: Option<(&str, SidecarScrape)>,
) -> anyhow::Result<Outcome> {
    Ok(run_with_dashboard(rules, component, kube_state, sidecar)
        .await?
        .0)
}

/// [`run`], and every query of the Grafana dashboard evaluated on the same Prometheus:
/// panel title and expression → how many series it returned.
async fn run_with_dashboard(
    rules: &Path,
    component: &str,
    kube_state: &str,
    sidecar: Option<(&str, SidecarScrape)>,
) -> anyhow::Result<(Outcome, Vec<(String, usize)>)> {
    let config = prometheus_config(rules, component, kube_state, sidecar);
    let prometheus = start_prometheus(&config).await?;
    prometheus
        .settle(2 + usize::from(sidecar.is_some()))
        .await?;
    let outcome = observe(&prometheus).await?;
    let mut dashboard = Vec::new();
    for (title, expr) in dashboard_queries()? {
        // Grafana's variables as "All" and its rate interval.
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$kubevirt_namespace", ".*")
            .replace("$namespace", ".*")
            .replace("$vmi", ".*");
        let series = prometheus
            .query(&expr)
            .await
            .with_context(|| format!("dashboard panel {title:?}: {expr}"))?;
        dashboard.push((format!("{title}: {expr}"), series.len()));
    }
    Ok((outcome, dashboard))
}

/// Panel title → PromQL of every target of the dashboard we ship.
fn dashboard_queries() -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(support::repo_path(
        "config/grafana/kubevirt-metrics-sidecars.json",
    ))?;
    let dashboard: Value = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((
                    panel["title"].as_str().unwrap_or_default().to_owned(),
                    expr.to_owned(),
                ));
            }
        }
    }
    Ok(out)
}

/// Recording rules that must have data in the baseline, so that "equal" means something.
const MUST_HAVE_DATA: &[&str] = &[
    "cluster:kubevirt_virt_handler_ready:sum",
    "cluster:kubevirt_virt_handler_up:sum",
    "cluster:kubevirt_virt_handler_pods_running:count",
    "vmi:kubevirt_vmi_vcpu:count",
    "vmi:kubevirt_vmi_memory_available_bytes:sum",
    "vmi:kubevirt_vmi_memory_headroom_ratio:sum",
    "vmi:kubevirt_vmi_memory_used_bytes:sum",
    "kubevirt_vmi_memory_used_bytes",
    "vmi:kubevirt_vmi_pgmajfaults:rate5m",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubevirt_rules_evaluate_the_same_with_a_complement_sidecar() -> anyhow::Result<()> {
    const TEST: &str = "kubevirt_rules_evaluate_the_same_with_a_complement_sidecar";
    let Some(program) = kubevirt_peer::find(TEST)? else {
        return Ok(());
    };
    let rules = support::repo_path(RULES).canonicalize()?;
    let vmis = kubevirt_peer::print_vmis(&program, VMIS, VMI_NAMESPACE)?;
    let peer = kubevirt_peer::serve(&program, VMIS, VMI_NAMESPACE).await?;
    let component = peer
        .metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let (kube_state, _kube_state_task) = serve_static(kube_state_metrics()).await?;
    let kube_state = kube_state.to_string();

    // 1. The component alone.
    let baseline = run(&rules, &component, &kube_state, None).await?;
    let errors = baseline.errors();
    anyhow::ensure!(
        errors.is_empty(),
        "rules fail on the component alone: {errors:#?}"
    );
    for name in MUST_HAVE_DATA {
        anyhow::ensure!(
            !baseline.values[*name].is_empty(),
            "{name} has no data on the component alone: the stand-ins miss a series"
        );
    }
    anyhow::ensure!(
        baseline.values["vmi:kubevirt_vmi_vcpu:count"].len() == VMIS,
        "vmi:kubevirt_vmi_vcpu:count: {:?}",
        baseline.values["vmi:kubevirt_vmi_vcpu:count"]
    );

    // 2. + the sidecar in complement mode, scraped as the shipped PodMonitor does.
    let sidecar =
        start_sidecar(&peer.pods_dir(), &vmis, Mode::Complement, &peer.metrics_url).await?;
    let address = sidecar.local_addr().to_string();
    let (complement, dashboard) = run_with_dashboard(
        &rules,
        &component,
        &kube_state,
        Some((&address, SidecarScrape::PodMonitor)),
    )
    .await?;
    // 3. The same sidecar scraped as a plain pod target (its `up` carries the pod label).
    let plain = run(
        &rules,
        &component,
        &kube_state,
        Some((&address, SidecarScrape::PlainPodTarget)),
    )
    .await?;
    sidecar.stop().await?;

    let errors = complement.errors();
    anyhow::ensure!(
        errors.is_empty(),
        "rules fail with a complement sidecar: {errors:#?}"
    );
    let differences = complement.differences(&baseline);
    anyhow::ensure!(
        differences.is_empty(),
        "with a complement sidecar, recording rules differ from the component alone:\n{}",
        lines(&differences)
    );
    eprintln!(
        "e2e: complement mode: all {} rules of KubeVirt v1.9.0 evaluate without error and \
         all {} recorded series names equal the component alone",
        complement.rules.len(),
        complement.values.len()
    );

    // The dashboard's queries all evaluate here; the ones on families this setup produces
    // return data (migrations, guest load and failures do not happen in it).
    let empty: Vec<&String> = dashboard
        .iter()
        .filter(|(_, n)| *n == 0)
        .map(|(q, _)| q)
        .collect();
    eprintln!(
        "e2e: {} dashboard queries evaluate; {} return data; empty here: {empty:#?}",
        dashboard.len(),
        dashboard.len() - empty.len()
    );
    for must in [
        "Sidecar targets up",
        "Time spent collecting",
        "Collection duration (p90)",
        "vCPU usage",
        "vCPUs",
        "Memory used",
        "Network receive",
        "Storage IOPS",
    ] {
        anyhow::ensure!(
            dashboard
                .iter()
                .any(|(q, n)| q.starts_with(&format!("{must}: ")) && *n > 0),
            "dashboard panel {must:?} shows no data with a complement sidecar: {dashboard:#?}"
        );
    }

    // Without the PodMonitor's relabeling, KubeVirt's up-based rules count the sidecar as a
    // second virt-handler target: that is why the PodMonitor keeps `pod` off `up`.
    anyhow::ensure!(plain.errors().is_empty(), "{:#?}", plain.errors());
    let plain_differences: BTreeSet<String> = plain.differences(&baseline).into_keys().collect();
    let expected: BTreeSet<String> = [
        "cluster:kubevirt_virt_handler_up:sum",
        "kubevirt_virt_handler_up",
    ]
    .map(str::to_owned)
    .into();
    anyhow::ensure!(
        plain_differences == expected,
        "a plain pod target should change exactly {expected:?}, changed {plain_differences:?}"
    );
    anyhow::ensure!(
        plain.values["cluster:kubevirt_virt_handler_up:sum"]
            .values()
            .eq([2.0].iter()),
        "{:?}",
        plain.values["cluster:kubevirt_virt_handler_up:sum"]
    );
    Ok(())
}

/// Full mode next to a component that serves the same families: the sidecar's series are a
/// second copy per VMI, and the rules that aggregate them count everything twice. This is
/// what complement mode (the default) exists for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubevirt_rules_double_count_with_a_full_mode_sidecar() -> anyhow::Result<()> {
    const TEST: &str = "kubevirt_rules_double_count_with_a_full_mode_sidecar";
    let Some(program) = kubevirt_peer::find(TEST)? else {
        return Ok(());
    };
    let rules = support::repo_path(RULES).canonicalize()?;
    let vmis = kubevirt_peer::print_vmis(&program, VMIS, VMI_NAMESPACE)?;
    let peer = kubevirt_peer::serve(&program, VMIS, VMI_NAMESPACE).await?;
    let component = peer
        .metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let (kube_state, _kube_state_task) = serve_static(kube_state_metrics()).await?;
    let kube_state = kube_state.to_string();

    let baseline = run(&rules, &component, &kube_state, None).await?;
    anyhow::ensure!(baseline.errors().is_empty(), "{:#?}", baseline.errors());
    let sidecar = start_sidecar(&peer.pods_dir(), &vmis, Mode::Full, &peer.metrics_url).await?;
    let address = sidecar.local_addr().to_string();
    let full = run(
        &rules,
        &component,
        &kube_state,
        Some((&address, SidecarScrape::PodMonitor)),
    )
    .await?;
    sidecar.stop().await?;

    let differences = full.differences(&baseline);
    eprintln!(
        "e2e: full mode next to the component: {} recording rules change, {} rules fail {:?}:\n{}",
        differences.len(),
        full.errors().len(),
        full.errors(),
        lines(&differences)
    );
    let changed: BTreeSet<&str> = differences.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = FULL_MODE_BREAKS.iter().copied().collect();
    anyhow::ensure!(
        changed == expected,
        "full mode should break exactly {expected:?}, broke {changed:?}"
    );
    // Double counting, concretely: every VMI has twice its vCPUs.
    for (vmi, count) in &full.values["vmi:kubevirt_vmi_vcpu:count"] {
        let alone = baseline.values["vmi:kubevirt_vmi_vcpu:count"][vmi];
        anyhow::ensure!(*count == 2.0 * alone, "{vmi}: {count} vCPUs, alone {alone}");
    }
    Ok(())
}

/// The recording rules of KubeVirt v1.9.0 that a full-mode virt-handler sidecar next to
/// KubeVirt's own virt-handler changes (observed; the test fails if the set changes).
const FULL_MODE_BREAKS: &[&str] = &[
    "vmi:kubevirt_vmi_vcpu:count",
    "vmi:kubevirt_vmi_memory_available_bytes:sum",
    "vmi:kubevirt_vmi_memory_used_bytes:sum",
    "kubevirt_vmi_memory_used_bytes",
];
