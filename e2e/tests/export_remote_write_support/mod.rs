//! A real Prometheus 2.42 with its remote-write receiver, in a temp dir on a free port,
//! killed when dropped; and the comparison of what it stored with what `/metrics` served.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A series: its name and labels (empty values left out, as Prometheus does).
pub type Series = (String, BTreeMap<String, String>);

pub struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    pub base: String,
    pub client: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    /// Starts Prometheus with `--web.enable-remote-write-receiver` and no scrape job, and
    /// waits until it is ready.
    pub async fn start() -> Prometheus {
        assert!(
            std::path::Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: `scripts/real-peers.sh install` installs Debian's prometheus"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            "global:\n  scrape_interval: 1m\n",
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            _dir: dir,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        for _ in 0..300 {
            let ready = prometheus
                .client
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Prometheus did not become ready in 30 s");
    }

    pub fn remote_write_url(&self) -> String {
        format!("{}/api/v1/write", self.base)
    }

    /// `GET /api/v1/query` with `expr` at `time` (seconds), the `data.result` array.
    pub async fn query(&self, expr: &str, time: Option<f64>) -> Vec<serde_json::Value> {
        let mut params = vec![("query", expr.to_owned())];
        if let Some(time) = time {
            params.push(("time", format!("{time:.3}")));
        }
        let body = self
            .client
            .get(format!("{}/api/v1/query", self.base))
            .query(&params)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "{answer}");
        answer["data"]["result"].as_array().unwrap().clone()
    }

    /// The time (ms) of the stored sample of `selector` whose value is `value`, if any.
    pub async fn time_of(&self, selector: &str, value: f64) -> Option<i64> {
        let result = self.query(&format!("{selector}[5m]"), None).await;
        result.iter().find_map(|series| {
            series["values"].as_array()?.iter().find_map(|pair| {
                let v: f64 = pair[1].as_str()?.parse().ok()?;
                let t = pair[0].as_f64()?;
                (v == value).then_some((t * 1000.0).round() as i64)
            })
        })
    }

    /// Every stored series' value at `time_ms` (the newest sample at or before it).
    pub async fn all_at(&self, time_ms: i64) -> BTreeMap<Series, f64> {
        let result = self
            .query("{__name__=~\".+\"}", Some(time_ms as f64 / 1000.0))
            .await;
        result
            .iter()
            .map(|series| {
                let metric = series["metric"].as_object().unwrap();
                let name = metric["__name__"].as_str().unwrap().to_owned();
                let labels = metric
                    .iter()
                    .filter(|(k, _)| *k != "__name__")
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = parse_value(series["value"][1].as_str().unwrap());
                ((name, labels), value)
            })
            .collect()
    }
}

fn parse_value(text: &str) -> f64 {
    match text {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().unwrap(),
    }
}

/// The series of a text-format body (0.0.4) and their values; of a series written several
/// times (samples with their own timestamps), the one with the newest timestamp.
pub fn exposition_series(body: &str) -> BTreeMap<Series, f64> {
    let mut newest: BTreeMap<Series, (i64, f64)> = BTreeMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, rest) = split_series(line);
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().unwrap());
        let timestamp = fields.next().map_or(i64::MAX, |t| t.parse().unwrap());
        let slot = newest.entry(series).or_insert((i64::MIN, value));
        if timestamp >= slot.0 {
            *slot = (timestamp, value);
        }
    }
    newest.into_iter().map(|(s, (_, v))| (s, v)).collect()
}

/// `name{a="x",b="y"} rest` → the series and `rest`, label values unescaped.
fn split_series(line: &str) -> (Series, &str) {
    let name_end = line.find(['{', ' ']).unwrap();
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    if !line[name_end..].starts_with('{') {
        return ((name, labels), &line[name_end..]);
    }
    let mut chars = line[name_end + 1..].char_indices();
    let offset = name_end + 1;
    loop {
        // Label name up to `=`, then a quoted value.
        let mut label = String::new();
        let mut end = None;
        for (i, c) in chars.by_ref() {
            match c {
                '=' => break,
                '}' => {
                    end = Some(offset + i + 1);
                    break;
                }
                ',' => {}
                c => label.push(c),
            }
        }
        if let Some(end) = end {
            return ((name, labels), &line[end..]);
        }
        chars.next(); // opening quote
        let mut value = String::new();
        let mut escaped = false;
        for (_, c) in chars.by_ref() {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => break,
                (false, c) => value.push(c),
            }
        }
        if !value.is_empty() {
            labels.insert(label, value);
        }
    }
}

/// Equal values (NaN equals NaN: both sides stored the same non-number).
pub fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}
