//! The Helm chart (`charts/kubevirt-metrics-sidecars`):
//! - `helm lint --strict` and `helm template`, validated offline against the Kubernetes
//!   schemas and the CRDs (`scripts/validate-chart.sh`, which CI also runs);
//! - the CRD, the alert rules and the dashboard are byte copies of `crds/`,
//!   `config/prometheus/rules/` and `config/grafana/`;
//! - for the same settings the chart renders the same objects as `config/`.
//!
//! What "the same objects" means: `helm template` with every optional object enabled
//! (release namespace `kubevirt-metrics-operator`, monitoring in `kubevirt`, dashboard in
//! `monitoring`) against `kubectl kustomize` of `config/default`, `config/samples` (the
//! first policy), `config/prometheus` (namespace `kubevirt`) and `config/grafana`
//! (namespace `monitoring`). Objects are matched by apiVersion, kind, namespace and name;
//! both sides must hold the same set, and each pair must be equal as parsed YAML after
//! removing, from `metadata.labels` and `spec.template.metadata.labels`, the labels Helm
//! adds (`helm.sh/chart`, `app.kubernetes.io/managed-by`, `app.kubernetes.io/instance`,
//! `app.kubernetes.io/version`) and, on the CRD only, the `app.kubernetes.io/part-of` that
//! kustomize adds (a chart's `crds/` is not templated). Left out: config/default's Namespace
//! object (`helm install --create-namespace` makes the release namespace).
//!
//! Without helm (scripts/install-kube-tools.sh) or kubectl these tests print SKIPPED and pass;
//! scripts/test.sh installs both, so nothing skips in CI.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize as _;
use serde_json::Value;

const CHART: &str = "charts/kubevirt-metrics-sidecars";
const HELM_LABELS: &[&str] = &[
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

fn root() -> PathBuf {
    e2e::workspace_root()
}

/// `name` from the project's `.work/bin` or PATH; `None` after a loud SKIPPED line.
fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let local = root().join(".work/bin").join(name);
    let found = std::iter::once(local)
        .chain(
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
                .map(|dir| dir.join(name)),
        )
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "\n=================================================================\n\
             SKIPPED: no {name} (scripts/install-tools.sh installs it into .work/bin)\n\
             SKIPPED test: {test}\n\
             ================================================================="
        );
    }
    found
}

fn output(program: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {}:\n{}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn key(doc: &Value) -> String {
    format!(
        "{} {} {}/{}",
        doc["apiVersion"].as_str().unwrap_or_default(),
        doc["kind"].as_str().unwrap_or_default(),
        doc["metadata"]["namespace"].as_str().unwrap_or_default(),
        doc["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn strip_labels(labels: &mut Value, names: &[&str]) {
    if let Some(map) = labels.as_object_mut() {
        for name in names {
            map.remove(*name);
        }
    }
}

/// The comparison's normal form (see the module doc).
fn normalize(mut doc: Value) -> Value {
    let crd = doc["kind"] == "CustomResourceDefinition";
    strip_labels(&mut doc["metadata"]["labels"], HELM_LABELS);
    if crd {
        strip_labels(
            &mut doc["metadata"]["labels"],
            &["app.kubernetes.io/part-of"],
        );
    }
    if doc["spec"]["template"]["metadata"]["labels"].is_object() {
        strip_labels(
            &mut doc["spec"]["template"]["metadata"]["labels"],
            HELM_LABELS,
        );
    }
    let metadata = doc["metadata"].as_object_mut().unwrap();
    if metadata
        .get("labels")
        .is_some_and(|l| l.is_null() || l.as_object().is_some_and(serde_json::Map::is_empty))
    {
        metadata.remove("labels");
    }
    doc
}

/// Paths where `a` and `b` differ, with both values (short).
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                differences(&format!("{path}.{k}"), va, vb, out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if a != b => {
            let short = |v: &Value| v.to_string().chars().take(200).collect::<String>();
            out.push(format!("{path}: {} vs {}", short(a), short(b)));
        }
        _ => {}
    }
}

fn by_key(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter().map(|d| (key(&d), normalize(d))).collect()
}

fn with_namespace(mut docs: Vec<Value>, namespace: &str) -> Vec<Value> {
    for doc in &mut docs {
        doc["metadata"]["namespace"] = Value::String(namespace.to_owned());
    }
    docs
}

const ALL_ON: &[&str] = &[
    "--set",
    "policy.enabled=true",
    "--set",
    "monitoring.podMonitor.enabled=true",
    "--set",
    "monitoring.networkPolicy.enabled=true",
    "--set",
    "monitoring.prometheusRule.enabled=true",
    "--set",
    "monitoring.grafanaDashboard.enabled=true",
    "--set",
    "monitoring.grafanaDashboard.namespace=monitoring",
];

#[test]
fn chart_renders_what_config_renders() {
    const TEST: &str = "chart_renders_what_config_renders";
    let (Some(helm), Some(kubectl)) = (tool("helm", TEST), tool("kubectl", TEST)) else {
        return;
    };
    let mut args = vec![
        "template",
        "kms",
        CHART,
        "--namespace",
        "kubevirt-metrics-operator",
        "--include-crds",
    ];
    args.extend_from_slice(ALL_ON);
    let chart = by_key(documents(&output(&helm, &args)));

    let kustomize = |tree: &str| documents(&output(&kubectl, &["kustomize", tree]));
    let mut config: Vec<Value> = kustomize("config/default")
        .into_iter()
        .filter(|d| d["kind"] != "Namespace")
        .collect();
    config.extend(kustomize("config/samples"));
    config.extend(with_namespace(kustomize("config/prometheus"), "kubevirt"));
    config.extend(with_namespace(kustomize("config/grafana"), "monitoring"));
    let config = by_key(config);

    let chart_keys: Vec<&String> = chart.keys().collect();
    let config_keys: Vec<&String> = config.keys().collect();
    assert_eq!(
        chart_keys, config_keys,
        "the chart and config/ render different objects"
    );
    for (key, ours) in &chart {
        let mut diffs = Vec::new();
        differences("", ours, &config[key], &mut diffs);
        assert!(
            diffs.is_empty(),
            "{key} differs (chart vs config):\n  {}",
            diffs.join("\n  ")
        );
    }
    eprintln!(
        "e2e: the chart renders the same {} objects as config/",
        chart.len()
    );
}

/// With the default values only the operator is installed (what config/default installs).
#[test]
fn chart_defaults_install_only_the_operator() {
    const TEST: &str = "chart_defaults_install_only_the_operator";
    let Some(helm) = tool("helm", TEST) else {
        return;
    };
    let docs = documents(&output(
        &helm,
        &[
            "template",
            "kms",
            CHART,
            "--namespace",
            "ops",
            "--include-crds",
        ],
    ));
    let mut kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    assert!(
        docs.iter()
            .filter(|d| d["kind"] != "CustomResourceDefinition"
                && !d["kind"].as_str().unwrap().starts_with("Cluster"))
            .all(|d| d["metadata"]["namespace"] == "ops")
    );
}

#[test]
fn chart_files_are_byte_copies() {
    for (ours, theirs) in [
        (
            "charts/kubevirt-metrics-sidecars/crds/metricssidecarpolicies.metrics.kubevirt.io.yaml",
            "crds/metricssidecarpolicies.metrics.kubevirt.io.yaml",
        ),
        (
            "charts/kubevirt-metrics-sidecars/files/kubevirt-metrics-sidecars.rules.yml",
            "config/prometheus/rules/kubevirt-metrics-sidecars.rules.yml",
        ),
        (
            "charts/kubevirt-metrics-sidecars/files/dashboards/kubevirt-metrics-sidecars.json",
            "config/grafana/kubevirt-metrics-sidecars.json",
        ),
    ] {
        let a = std::fs::read(root().join(ours)).unwrap();
        let b = std::fs::read(root().join(theirs)).unwrap();
        assert!(
            a == b,
            "{ours} is not a copy of {theirs}: cp {theirs} {ours}"
        );
    }
    // The chart's crds/ holds exactly the project's CRDs.
    let listed = |dir: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        listed("charts/kubevirt-metrics-sidecars/crds"),
        listed("crds")
    );
}

/// `helm lint --strict`, `helm template` and offline schema validation of the output.
#[test]
fn chart_lints_and_validates_offline() {
    const TEST: &str = "chart_lints_and_validates_offline";
    let Some(helm) = tool("helm", TEST) else {
        return;
    };
    let out = Command::new("bash")
        .arg("scripts/validate-chart.sh")
        .env("HELM", &helm)
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/validate-chart.sh failed:\n{text}"
    );
    assert!(text.contains("chart OK"), "{text}");
    assert!(
        text.contains("3 custom resources against their CRDs"),
        "the policy, PodMonitor and PrometheusRule were not all checked:\n{text}"
    );
}
