//! Aggregation equals PromQL: a real Prometheus 2.42 (`/usr/bin/prometheus`, Debian's
//! `prometheus`, which `scripts/real-peers.sh install` installs) scrapes the un-aggregated
//! families (20 VMIs in 3 namespaces from the captured launcher payloads, KubeVirt's own
//! families, plus a gauge with NaN and infinities and a histogram), then for every rule the
//! rule's PromQL expression, evaluated by Prometheus at the scrape's timestamp, must give the
//! series `Aggregation::apply` gives: the same label sets, values equal within 1e-9 relative
//! (NaN where PromQL says NaN).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use kubevirt_metrics_collectors::core::aggregate::Aggregation;
use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::core::metric::{Family, LabelName, Labels, MetricType, Sample};
use kubevirt_metrics_collectors::handler::families;
use kubevirt_metrics_collectors::handler::launcher::payload;
use kubevirt_metrics_collectors::handler::stats::{VmiIdentity, VmiStats};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const JOB: &str = "aggregate";

/// Every rule checked, each on its own: all operations, `by`, `without`, no grouping, regex
/// selectors, labels some series lack or carry empty, NaN and infinities, histogram series.
const RULES: &[&str] = &[
    "sum by (namespace) (kubevirt_vmi_memory_resident_bytes)",
    "sum(kubevirt_vmi_memory_resident_bytes)",
    "sum by (kubernetes_vmi_label_app) (kubevirt_vmi_memory_resident_bytes)",
    "avg without (id, state) (kubevirt_vmi_vcpu_seconds_total)",
    "avg by (namespace) (kubevirt_vmi_cpu_usage_seconds_total)",
    "min by (namespace, node) (kubevirt_vmi_cpu_usage_seconds_total)",
    "max by (namespace) (kubevirt_vmi_memory_resident_bytes)",
    "count without (namespace) (kubevirt_vmi_vcpu_delay_seconds_total)",
    r#"max without (name) ({__name__=~"kubevirt_vmi_network_.*_bytes_total"})"#,
    r#"sum by (namespace, interface) ({__name__=~"kubevirt_vmi_network_(receive|transmit)_packets_total"})"#,
    r#"count by (namespace) ({__name__=~"kubevirt_vmi_storage_.*"})"#,
    r#"avg by (drive) ({__name__=~"kubevirt_vmi_storage_iops_.*_total"})"#,
    "sum by (group) (aggregate_test_special_values)",
    "avg by (group) (aggregate_test_special_values)",
    "min by (group) (aggregate_test_special_values)",
    "max by (group) (aggregate_test_special_values)",
    "count by (group) (aggregate_test_special_values)",
    "sum without (series) (aggregate_test_special_values)",
    "count by (owner) (aggregate_test_special_values)",
    "sum by (le) (aggregate_test_duration_seconds_bucket)",
    r#"avg by (namespace) ({__name__=~"aggregate_test_duration_seconds_(sum|count)"})"#,
];

// ------------------------------------------------------------------ the input

fn testdata(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/launcher-payloads")
            .join(file),
    )
    .unwrap()
}

/// 20 VMIs in 3 namespaces, alternating the two captured guests, every counter scaled per
/// VMI so that no two series are equal; some VMIs carry an `app` label, one an empty one.
fn vmis() -> Vec<VmiStats> {
    let db = payload::domain_stats_from_json(&testdata("captured-domainstats-db.json")).unwrap();
    let testvm =
        payload::domain_stats_from_json(&testdata("captured-domainstats-testvm.json")).unwrap();
    let filesystems =
        payload::filesystems_from_json(&testdata("captured-filesystems-db.json")).unwrap();
    (0..20u64)
        .map(|i| {
            let mut domain = if i % 2 == 0 {
                db.clone()
            } else {
                testvm.clone()
            };
            let scale = |v: &mut Option<u64>| {
                if let Some(v) = v.as_mut() {
                    *v = *v * (i + 1) + i * 7_919;
                }
            };
            if let Some(cpu) = domain.cpu.as_mut() {
                scale(&mut cpu.time);
            }
            if let Some(memory) = domain.memory.as_mut() {
                scale(&mut memory.rss);
            }
            for vcpu in &mut domain.vcpus {
                scale(&mut vcpu.time);
                scale(&mut vcpu.delay);
            }
            for net in &mut domain.nets {
                scale(&mut net.rx_bytes);
                scale(&mut net.tx_bytes);
                scale(&mut net.rx_pkts);
            }
            for block in &mut domain.blocks {
                scale(&mut block.rd_reqs);
                scale(&mut block.wr_bytes);
            }
            let mut labels = BTreeMap::new();
            match i % 4 {
                0 => {
                    labels.insert("app".to_owned(), "postgres".to_owned());
                }
                1 => {
                    labels.insert("app".to_owned(), "web".to_owned());
                }
                2 if i == 2 => {
                    labels.insert("app".to_owned(), String::new());
                }
                _ => {}
            }
            VmiStats {
                vmi: VmiIdentity {
                    namespace: ["prod", "dev", "ci"][(i % 3) as usize].to_owned(),
                    name: format!("vm-{i:02}"),
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
                dirty_rate_mbs: Some(i as i64),
                collected_at: UNIX_EPOCH,
            }
        })
        .collect()
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(n, v)| (LabelName::new_static(n), (*v).into()))
        .collect()
}

/// A gauge whose groups hold NaN first, NaN only, +Inf with a number, +Inf and -Inf, and
/// an `owner` label some series carry, one of them empty.
fn special_values() -> Family {
    let mut family = Family::new(
        "aggregate_test_special_values",
        "Values PromQL treats specially.",
        MetricType::Gauge,
    );
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    for (group, values) in [
        ("nan-first", &[nan, 5.0, 3.0][..]),
        ("nan-last", &[2.0, 9.5, nan][..]),
        ("nan-only", &[nan, nan][..]),
        ("inf", &[1.0, inf, 2.0][..]),
        ("inf-and-minus-inf", &[inf, -inf][..]),
        ("minus-inf", &[-inf, -1.0][..]),
        ("finite", &[0.1, 0.2, 0.3, 1e15, -7.25][..]),
    ] {
        for (i, v) in values.iter().enumerate() {
            let series = i.to_string();
            // An empty label is no label to Prometheus: `owner=""` must group with none.
            let owner = match (group, i) {
                ("finite", 0) | ("inf", 1) => Some(""),
                ("finite", 1) => Some("team-a"),
                _ => None,
            };
            let pairs = match owner {
                Some(owner) => labels(&[("group", group), ("owner", owner), ("series", &series)]),
                None => labels(&[("group", group), ("series", &series)]),
            };
            family.samples.push(Sample::new(pairs, *v));
        }
    }
    family
}

/// A histogram per VMI-like series in three namespaces.
fn histogram() -> Family {
    let mut family = Family::new(
        "aggregate_test_duration_seconds",
        "A histogram.",
        MetricType::Histogram,
    );
    for (n, namespace) in ["prod", "dev", "ci"].iter().enumerate() {
        for vmi in 0..3 {
            let base = (n * 3 + vmi) as f64;
            let series = format!("vm-{vmi}");
            let mut cumulative = 0.0;
            for (k, le) in ["0.1", "1", "10", "+Inf"].iter().enumerate() {
                cumulative += base + k as f64;
                family.samples.push(Sample {
                    suffix: "_bucket",
                    ..Sample::new(
                        labels(&[("le", le), ("name", &series), ("namespace", namespace)]),
                        cumulative,
                    )
                });
            }
            for (suffix, v) in [("_sum", base * 1.7 + 0.25), ("_count", cumulative)] {
                family.samples.push(Sample {
                    suffix,
                    ..Sample::new(labels(&[("name", &series), ("namespace", namespace)]), v)
                });
            }
        }
    }
    family
}

fn input() -> Vec<Family> {
    let mut families = families::render(&vmis(), &[]);
    families.push(special_values());
    families.push(histogram());
    families
}

/// Every series name Prometheus stores for these families.
fn metric_names(families: &[Family]) -> Vec<String> {
    let mut names: Vec<String> = families
        .iter()
        .flat_map(|f| f.samples.iter().map(|s| format!("{}{}", f.name, s.suffix)))
        .collect();
    names.sort();
    names.dedup();
    names
}

// ------------------------------------------------------------------ the peers

/// Serves one fixed body as Prometheus text 0.0.4 to every request.
async fn serve(body: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    text::CONTENT_TYPE,
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Prometheus in its own directory and port, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let file = |name: &str| -> PathBuf { dir.path().join(name) };
        std::fs::write(file("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(file("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                file("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", file("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query; `None` while Prometheus is not answering yet.
    async fn query(&self, expr: &str, time: Option<f64>) -> Option<serde_json::Value> {
        let mut params = vec![("query", expr.to_owned())];
        if let Some(time) = time {
            params.push(("time", format!("{time:.3}")));
        }
        let body = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&params)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        assert_eq!(answer["status"], "success", "{expr}: {body}");
        Some(answer["data"]["result"].clone())
    }

    /// The timestamp (s) of the newest complete scrape of our target.
    async fn scraped(&mut self) -> f64 {
        let start = Instant::now();
        loop {
            let expr = format!("timestamp(up{{job=\"{JOB}\"}} == 1)");
            if let Some(result) = self.query(&expr, None).await
                && let Some(ts) = result[0]["value"][1].as_str()
            {
                return ts.parse().unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no successful scrape in 60 s:\n{}",
                self.log()
            );
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

// ------------------------------------------------------------------ the comparison

type Series = BTreeMap<Vec<(String, String)>, f64>;

fn parse_value(s: &str) -> f64 {
    match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().unwrap(),
    }
}

/// PromQL's answer, without the target labels the scrape added (`job`, `instance`).
fn promql_series(result: &serde_json::Value) -> Series {
    result
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let labels = item["metric"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(name, _)| *name != "job" && *name != "instance")
                .map(|(name, value)| (name.clone(), value.as_str().unwrap().to_owned()))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            (labels, parse_value(item["value"][1].as_str().unwrap()))
        })
        .collect()
}

fn our_series(family: &Family) -> Series {
    let mut out = Series::new();
    for sample in &family.samples {
        let labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let mut sorted = labels.clone();
        sorted.sort();
        assert_eq!(labels, sorted, "{}: labels not sorted by name", family.name);
        assert!(
            out.insert(labels, sample.value).is_none(),
            "{}: a series twice",
            family.name
        );
    }
    out
}

fn same_value(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn compare(expr: &str, ours: &Series, promql: &Series) -> Vec<String> {
    let mut problems = Vec::new();
    for (labels, theirs) in promql {
        match ours.get(labels) {
            None => problems.push(format!(
                "{expr}: PromQL has {labels:?} = {theirs}, we do not"
            )),
            Some(v) if !same_value(*v, *theirs) => {
                problems.push(format!("{expr}: {labels:?}: PromQL {theirs}, ours {v}"));
            }
            Some(_) => {}
        }
    }
    for (labels, v) in ours {
        if !promql.contains_key(labels) {
            problems.push(format!("{expr}: we have {labels:?} = {v}, PromQL does not"));
        }
    }
    problems
}

#[tokio::test]
async fn aggregation_equals_promql_at_the_same_instant() {
    if !Path::new(PROMETHEUS).exists() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED: no {PROMETHEUS} (apt prometheus; scripts/real-peers.sh install)\n\
             SKIPPED test: aggregation_equals_promql_at_the_same_instant"
        );
        return;
    }
    let input = input();
    let names = metric_names(&input);
    let target = serve(text::encode(&input)).await;
    let mut prometheus = Prometheus::start(target);
    let at = prometheus.scraped().await;

    let mut problems = Vec::new();
    let mut compared = 0;
    for rule_text in RULES {
        let aggregation = Aggregation::from_rules_text("test", rule_text).unwrap();
        let rule = &aggregation.rules()[0];
        let output = aggregation.apply(input.clone());
        let matched: Vec<&String> = names.iter().filter(|m| rule.selector.matches(m)).collect();
        assert!(!matched.is_empty(), "{rule_text} matches nothing");
        let new: Vec<&Family> = output
            .iter()
            .filter(|f| !input.iter().any(|i| i.name == f.name))
            .collect();
        assert_eq!(
            new.len(),
            matched.len(),
            "{rule_text}: one output family per matched metric {matched:?}, got {:?}",
            new.iter().map(|f| &f.name).collect::<Vec<_>>()
        );
        for metric in matched {
            let suffix = format!(":{metric}:{}", rule.op.as_str());
            let family = new
                .iter()
                .find(|f| f.name.ends_with(&suffix))
                .unwrap_or_else(|| panic!("{rule_text}: no output for {metric}"));
            assert_eq!(family.kind, MetricType::Gauge);
            let expr = rule.expression(metric);
            let result = prometheus.query(&expr, Some(at)).await.unwrap();
            let promql = promql_series(&result);
            assert!(!promql.is_empty(), "{expr}: PromQL has no result");
            problems.extend(compare(&expr, &our_series(family), &promql));
            compared += promql.len();
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!(
        "aggregation equals PromQL: {compared} series over {} rules",
        RULES.len()
    );
}
