//! The sidecar alerts we ship (`config/prometheus`): `promtool check rules` and `promtool
//! test rules` pass, every alert has a firing and a not-firing unit test, severity, summary,
//! description and a `runbook_url` whose section exists in `docs/runbooks.md`, every series an
//! alert reads is one the sidecars export, and the PrometheusRule holds exactly the groups of
//! the plain rule file promtool checks.
//!
//! promtool comes with Debian's `prometheus` package (`scripts/real-peers.sh` installs it);
//! without it these tests fail with that instruction rather than skip.

#![allow(clippy::unwrap_used)] // tests may unwrap

use kubevirt_metrics_operator::plan::promql;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use kubevirt_metrics_collectors::core::selfmetrics::{BuildInfo, SelfMetrics};
use serde_yaml::Value;

const RULES: &str = "config/prometheus/rules/kubevirt-metrics-sidecars.rules.yml";
const UNIT_TESTS: &str = "config/prometheus/tests/kubevirt-metrics-sidecars.test.yml";
const PROMETHEUS_RULE: &str = "config/prometheus/prometheusrule.yaml";
const RUNBOOKS: &str = "docs/runbooks.md";
const RUNBOOK_BASE: &str =
    "https://github.com/kubevirt/kubevirt-metrics-sidecars/blob/main/docs/runbooks.md#";

fn root() -> PathBuf {
    e2e::workspace_root()
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).expect(path);
    serde_yaml::from_str(&text).expect(path)
}

fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "promtool not found in PATH. Install it (Debian: apt-get install prometheus; \
             scripts/real-peers.sh up does it)"
        )
    })
}

fn run(program: &Path, args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every alerting rule of a rule file, in order.
fn alerts(rules: &Value) -> Vec<Value> {
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules").clone())
        .filter(|rule| rule.get("alert").is_some())
        .collect()
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_default()
}

#[test]
fn promtool_check_rules_passes() {
    let (ok, output) = run(&promtool(), &["check", "rules", RULES], &root());
    assert!(ok, "promtool check rules {RULES}:\n{output}");
    let count = alerts(&yaml(RULES)).len();
    assert!(
        output.contains(&format!("SUCCESS: {count} rules found")),
        "{output}"
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let dir = root().join("config/prometheus");
    let (ok, output) = run(
        &promtool(),
        &["test", "rules", "tests/kubevirt-metrics-sidecars.test.yml"],
        &dir,
    );
    assert!(ok, "promtool test rules {UNIT_TESTS}:\n{output}");
    assert!(output.contains("SUCCESS"), "{output}");
}

/// Each alert is tested at least once with `exp_alerts: []` and once firing.
#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let tests = yaml(UNIT_TESTS);
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = str_of(case, "alertname").to_owned();
            match case["exp_alerts"].as_sequence() {
                Some(expected) if !expected.is_empty() => firing.insert(name),
                _ => silent.insert(name),
            };
        }
    }
    for alert in alerts(&yaml(RULES)) {
        let name = str_of(&alert, "alert");
        assert!(firing.contains(name), "{name}: no unit test where it fires");
        assert!(
            silent.contains(name),
            "{name}: no unit test where it stays silent"
        );
    }
}

#[test]
fn every_alert_has_severity_summary_description_and_a_runbook_section() {
    let runbooks = std::fs::read_to_string(root().join(RUNBOOKS)).expect(RUNBOOKS);
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|title| {
            // GitHub's anchors: lower case, spaces to '-', punctuation dropped.
            title
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let all = alerts(&yaml(RULES));
    assert!(all.len() >= 5, "only {} alerts", all.len());
    for alert in all {
        let name = str_of(&alert, "alert");
        assert!(
            ["critical", "warning", "info"].contains(&str_of(&alert["labels"], "severity")),
            "{name}: severity"
        );
        let annotations = &alert["annotations"];
        assert!(
            !str_of(annotations, "summary").is_empty(),
            "{name}: summary"
        );
        assert!(
            !str_of(annotations, "description").is_empty(),
            "{name}: description"
        );
        let url = str_of(annotations, "runbook_url");
        let anchor = url
            .strip_prefix(RUNBOOK_BASE)
            .unwrap_or_else(|| panic!("{name}: runbook_url {url:?} is not under {RUNBOOK_BASE}"));
        assert_eq!(anchor, name.to_lowercase(), "{name}: runbook anchor");
        assert!(
            anchors.contains(anchor),
            "{name}: docs/runbooks.md has no section #{anchor}"
        );
        for part in [
            "**Meaning.**",
            "**Impact.**",
            "**Diagnosis.**",
            "**Mitigation.**",
        ] {
            let section = runbooks
                .split(&format!("## {name}\n"))
                .nth(1)
                .and_then(|rest| rest.split("\n## ").next())
                .unwrap_or_default();
            assert!(
                section.contains(part),
                "{name}: runbook section lacks {part}"
            );
        }
    }
}

/// Every series an alert reads is a self-metric the sidecars export (or `up`, the scrape
/// job's own series): an alert on a metric nobody serves never fires.
#[test]
fn alerts_read_only_metrics_the_sidecars_export() {
    let metrics = SelfMetrics::new(BuildInfo {
        collector: "virt-handler-metrics",
        mode: "complement",
    })
    .expect("self-metrics");
    // Vectors show up only once a label set has been used.
    metrics.observe_collection(
        std::time::Duration::from_millis(5),
        true,
        std::time::SystemTime::now(),
    );
    metrics.count_problem("launcher", "timeout");
    metrics.count_component_check_failure("connect");
    let mut exported: BTreeSet<String> = BTreeSet::from(["up".to_owned()]);
    for family in metrics.families() {
        for sample in &family.samples {
            exported.insert(format!("{}{}", family.name, sample.suffix));
        }
        exported.insert(family.name.to_string());
    }
    for alert in alerts(&yaml(RULES)) {
        let names = promql::metric_names(str_of(&alert, "expr"));
        assert!(
            !names.is_empty(),
            "{}: no metric found",
            str_of(&alert, "alert")
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "{}: reads {name}, which no sidecar exports (exported: {exported:?})",
                str_of(&alert, "alert")
            );
        }
    }
}

#[test]
fn prometheus_rule_holds_the_rule_file() {
    let rule = yaml(PROMETHEUS_RULE);
    assert_eq!(str_of(&rule, "kind"), "PrometheusRule");
    assert_eq!(
        rule["spec"],
        yaml(RULES),
        "{PROMETHEUS_RULE} spec differs from {RULES}"
    );
    // Labelled like KubeVirt's own PrometheusRule, so the same Prometheus selects it.
    let kubevirt = yaml("testdata/kubevirt-v1.9.0/prometheusrule.yaml");
    for key in ["prometheus.kubevirt.io", "k8s-app"] {
        assert_eq!(
            rule["metadata"]["labels"][key], kubevirt["metadata"]["labels"][key],
            "label {key}"
        );
    }
}
