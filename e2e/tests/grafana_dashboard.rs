//! The Grafana dashboard (`config/grafana/kubevirt-metrics-sidecars.json`, copied into the
//! chart) only queries series somebody serves. Every metric name in every panel query and
//! template variable must be one of:
//! - a KubeVirt family our collectors export: in KubeVirt's metric list
//!   (`testdata/kubevirt-metrics.tsv`) and exported by virt-handler-metrics
//!   (`handler::families::FAMILIES`) or virt-controller-metrics (the families in its golden
//!   expositions, `testdata/golden/controller/*.prom`);
//! - one of our self-metrics (`kubevirt_metrics_sidecar_*`, histogram suffixes included),
//!   or `up`;
//! - a recording rule KubeVirt v1.9.0 ships (`testdata/kubevirt-v1.9.0/kubevirt-rules.yml`)
//!   or we ship (`config/prometheus/rules/`).

#![allow(clippy::unwrap_used)] // tests may unwrap

use kubevirt_metrics_operator::plan::promql;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use kubevirt_metrics_collectors::core::selfmetrics::{BuildInfo, SelfMetrics};
use kubevirt_metrics_collectors::handler::families;
use serde_json::Value;

const DASHBOARD: &str = "config/grafana/kubevirt-metrics-sidecars.json";

fn root() -> PathBuf {
    e2e::workspace_root()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// KubeVirt's metric names (column `name` of the TSV).
fn kubevirt_metric_list() -> BTreeSet<String> {
    read("testdata/kubevirt-metrics.tsv")
        .lines()
        .skip(1)
        .filter_map(|line| line.split('\t').nth(1))
        .map(str::to_owned)
        .collect()
}

/// The KubeVirt families our collectors export, as names a query may use.
fn our_kubevirt_families() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = families::FAMILIES
        .iter()
        .map(|spec| spec.name.to_owned())
        .collect();
    for entry in std::fs::read_dir(root().join("testdata/golden/controller")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        names.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned),
        );
    }
    let listed = kubevirt_metric_list();
    let unlisted: Vec<&String> = names.iter().filter(|n| !listed.contains(*n)).collect();
    assert!(
        unlisted.is_empty(),
        "families we export that KubeVirt's metric list lacks: {unlisted:?}"
    );
    names
}

fn self_metrics() -> BTreeSet<String> {
    let metrics = SelfMetrics::new(BuildInfo {
        collector: "virt-handler-metrics",
        mode: "complement",
    })
    .unwrap();
    // Vectors show up only once a label set has been used.
    metrics.observe_collection(Duration::from_millis(5), true, SystemTime::now());
    metrics.count_problem("launcher", "timeout");
    metrics.count_component_check_failure("connect");
    let mut names = BTreeSet::from(["up".to_owned()]);
    for family in metrics.families() {
        names.insert(family.name.to_string());
        for sample in &family.samples {
            names.insert(format!("{}{}", family.name, sample.suffix));
        }
    }
    names
}

fn recording_rules() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for path in [
        "testdata/kubevirt-v1.9.0/kubevirt-rules.yml",
        "config/prometheus/rules/kubevirt-metrics-sidecars.rules.yml",
    ] {
        let rules: serde_yaml::Value = serde_yaml::from_str(&read(path)).unwrap();
        for group in rules["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                if let Some(name) = rule["record"].as_str() {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets (rows' nested panels too) and
/// query variables, with where it is.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((format!("panel {title:?}"), expr.to_owned()));
                }
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] == "query" {
            let query = variable["query"]["query"]
                .as_str()
                .or_else(|| variable["query"].as_str())
                .unwrap_or_default();
            // label_values(metric{...}, label): the metric is what is queried.
            let expr = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map_or(query, |(selector, _)| selector);
            out.push((format!("variable {}", variable["name"]), expr.to_owned()));
        }
    }
    out
}

#[test]
fn every_dashboard_query_reads_a_served_series() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let kubevirt = our_kubevirt_families();
    let ours = self_metrics();
    let recorded = recording_rules();
    let queries = queries(&dashboard);
    assert!(queries.len() >= 20, "only {} queries found", queries.len());

    let mut unserved = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        let names = promql::metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr:?}");
        for name in names {
            if !(kubevirt.contains(&name) || ours.contains(&name) || recorded.contains(&name)) {
                unserved.push(format!("{place}: {name}"));
            }
            used.insert(name);
        }
    }
    assert!(
        unserved.is_empty(),
        "the dashboard queries metrics nobody serves:\n  {}",
        unserved.join("\n  ")
    );
    // It covers both halves: sidecar health and the VMI families.
    assert!(
        used.iter()
            .filter(|n| n.starts_with("kubevirt_metrics_sidecar_"))
            .count()
            >= 8
    );
    assert!(
        used.iter()
            .filter(|n| n.starts_with("kubevirt_vmi_"))
            .count()
            >= 15
    );
}

#[test]
fn dashboard_is_grafana_shaped() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    assert_eq!(dashboard["uid"], "kubevirt-metrics-sidecars");
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id"
        );
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}: datasource not the variable",
                panel["title"]
            );
            let width =
                panel["gridPos"]["x"].as_u64().unwrap() + panel["gridPos"]["w"].as_u64().unwrap();
            assert!(width <= 24, "{}: wider than the grid", panel["title"]);
        }
    }
}

/// The scanner itself must catch a name nobody serves (the check above can fail).
#[test]
fn an_unserved_metric_is_caught() {
    let names = promql::metric_names("sum(rate(kubevirt_vmi_made_up_total[5m]))");
    let kubevirt = our_kubevirt_families();
    assert!(names.iter().any(|n| !kubevirt.contains(n)));
}
