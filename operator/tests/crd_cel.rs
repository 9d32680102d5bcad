//! Every CEL rule of the MetricsSidecarPolicy CRD rejects what it should and admits what it
//! should, evaluated locally by kube-cel (the evaluator behind kube's `cel` feature) on the
//! CRD schema the operator generates, with the schema defaults applied first, as the
//! apiserver does.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use kube::CustomResourceExt;
use kubevirt_metrics_operator::api::MetricsSidecarPolicy;
use serde_json::{Value, json};

fn schema() -> Value {
    let crd = MetricsSidecarPolicy::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has a schema");
    serde_json::to_value(schema).unwrap()
}

fn object(spec: Value) -> Value {
    json!({
        "apiVersion": "metrics.kubevirt.io/v1alpha1",
        "kind": "MetricsSidecarPolicy",
        "metadata": {"name": "p", "namespace": "kubevirt"},
        "spec": spec,
    })
}

/// The messages of every failed rule.
fn violations(spec: Value) -> Vec<String> {
    match kube_cel::Validator::new().validate(&schema(), &object(spec), None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

fn assert_admitted(spec: Value) {
    let found = violations(spec.clone());
    assert!(found.is_empty(), "{spec} was rejected: {found:?}");
}

fn assert_rejected(spec: Value, message_part: &str) {
    let found = violations(spec.clone());
    assert!(
        found.iter().any(|m| m.contains(message_part)),
        "{spec} should be rejected with {message_part:?}, got {found:?}"
    );
}

/// A valid spec with `settings` as the defaults.
fn with_defaults(settings: Value) -> Value {
    let mut defaults = json!({"image": "registry.example/collectors:v1"});
    for (k, v) in settings.as_object().unwrap() {
        defaults[k] = v.clone();
    }
    json!({"defaults": defaults, "components": {"virtHandler": {}}})
}

#[test]
fn every_rule_compiles_and_fits_the_cost_budget() {
    let compiled = kube_cel::compile_schema(&schema());
    assert!(
        !compiled.has_errors(),
        "{:?}",
        compiled.compilation_errors()
    );
    let crd = serde_json::to_string(&schema()).unwrap();
    let rules: Vec<String> = collect_rules(&schema());
    assert!(
        rules.len() >= 10,
        "expected the CEL rules in the schema: {crd}"
    );
    for rule in rules {
        let warnings = kube_cel::estimate_rule_cost(&rule, &compiled);
        let costly: Vec<_> = warnings
            .iter()
            .filter(|w| matches!(w.kind, kube_cel::WarningKind::CostExceeded))
            .collect();
        assert!(costly.is_empty(), "{rule}: {costly:?}");
    }
}

fn collect_rules(schema: &Value) -> Vec<String> {
    let mut rules = Vec::new();
    let mut stack = vec![schema];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                if let Some(Value::Array(list)) = map.get("x-kubernetes-validations") {
                    rules.extend(
                        list.iter()
                            .filter_map(|r| r["rule"].as_str().map(str::to_owned)),
                    );
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    rules
}

#[test]
fn samples_are_admitted() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/samples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml")
            || path.file_name().and_then(|n| n.to_str()) == Some("kustomization.yaml")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let sample: Value = serde_yaml::from_str(&text).unwrap();
        let found = violations(sample["spec"].clone());
        assert!(found.is_empty(), "{}: {found:?}", path.display());
        seen += 1;
    }
    assert!(seen >= 2, "expected samples in {dir}");
}

#[test]
fn minimal_policies_are_admitted() {
    assert_admitted(json!({}));
    assert_admitted(with_defaults(json!({})));
    assert_admitted(json!({"components": {"virtHandler": {"image": "r/c:v1"}}}));
    assert_admitted(json!({"components": {"virtApi": {"enabled": false}}}));
}

#[test]
fn port_must_be_unprivileged_and_in_range() {
    for port in [0, 80, 1023, 65536, 70000] {
        assert_rejected(
            with_defaults(json!({"port": port})),
            "between 1024 and 65535",
        );
    }
    for port in [1024, 9443, 65535] {
        assert_admitted(with_defaults(json!({"port": port})));
    }
}

#[test]
fn port_must_not_clash_with_kubevirt_ports() {
    for port in [8186, 8187, 8443, 8444] {
        assert_rejected(
            with_defaults(json!({"port": port})),
            "KubeVirt components use",
        );
        assert_rejected(
            json!({"defaults": {"image": "r/c:v1"}, "components": {"virtController": {"port": port}}}),
            "KubeVirt components use",
        );
    }
}

#[test]
fn port_name_must_not_be_metrics_or_another_taken_name() {
    for name in ["metrics", "vmstats", "virt-api", "webhooks"] {
        assert_rejected(with_defaults(json!({"portName": name})), "already uses");
    }
    assert_admitted(with_defaults(json!({"portName": "sidecar-metrics"})));
    assert_admitted(with_defaults(json!({"portName": "kv-metrics2"})));
}

#[test]
fn port_name_must_be_an_iana_service_name() {
    for name in [
        "Metrics",
        "side_car",
        "-x",
        "x-",
        "1234",
        "a-very-long-name16",
        "",
    ] {
        assert_rejected(
            with_defaults(json!({"portName": name})),
            "IANA service name",
        );
    }
}

#[test]
fn interval_must_be_a_duration() {
    for bad in ["30", "1.5m", "1m 30s", "thirty", "-30s", "1d"] {
        assert_rejected(with_defaults(json!({"interval": bad})), "duration such as");
    }
    for ok in ["30s", "1m", "1m30s", "5s", "10m", "5000ms"] {
        assert_admitted(with_defaults(json!({"interval": ok})));
    }
}

#[test]
fn interval_must_be_within_bounds() {
    for bad in ["1s", "4999ms", "11m", "1h"] {
        assert_rejected(
            with_defaults(json!({"interval": bad})),
            "between 5s and 10m",
        );
    }
}

#[test]
fn an_enabled_component_needs_an_image() {
    for (key, name) in [
        ("virtHandler", "virt-handler"),
        ("virtController", "virt-controller"),
        ("virtApi", "virt-api"),
        ("virtOperator", "virt-operator"),
    ] {
        let listed = json!({"components": {key: {}}});
        assert_rejected(listed, &format!("{name} is enabled but has no image"));
        assert_admitted(json!({"components": {key: {"enabled": false}}}));
        assert_admitted(json!({"components": {key: {"image": "r/c:v1"}}}));
        assert_admitted(json!({"defaults": {"image": "r/c:v1"}, "components": {key: {}}}));
    }
}

#[test]
fn image_must_not_be_empty_or_contain_spaces() {
    assert_rejected(with_defaults(json!({"image": ""})), "non-empty image");
    assert_rejected(with_defaults(json!({"image": "a b"})), "non-empty image");
}

#[test]
fn env_must_not_override_downward_api_variables() {
    for name in ["NODE_NAME", "POD_NAME", "POD_NAMESPACE"] {
        assert_rejected(
            with_defaults(json!({"env": [{"name": name, "value": "x"}]})),
            "must not set NODE_NAME, POD_NAME or POD_NAMESPACE",
        );
    }
    assert_admitted(with_defaults(
        json!({"env": [{"name": "RUST_LOG", "value": "debug"}]}),
    ));
}

#[test]
fn kubevirt_ref_name_must_not_be_empty() {
    assert_rejected(json!({"kubevirtRef": {"name": ""}}), "must not be empty");
    assert_admitted(json!({"kubevirtRef": {"name": "kubevirt"}}));
}

/// A valid spec with `rollout` set.
fn with_rollout(rollout: Value) -> Value {
    let mut spec = with_defaults(json!({}));
    spec["rollout"] = rollout;
    spec
}

#[test]
fn unhealthy_timeout_must_be_a_duration_within_bounds() {
    for bad in ["300", "5 m", "five", "-5m", "1d"] {
        assert_rejected(
            with_rollout(json!({"unhealthyTimeout": bad})),
            "unhealthyTimeout must be a duration such as",
        );
    }
    for bad in ["4s", "4999ms", "61m", "2h"] {
        assert_rejected(
            with_rollout(json!({"unhealthyTimeout": bad})),
            "unhealthyTimeout must be between 5s and 1h",
        );
    }
    for ok in ["5s", "90s", "5m", "1m30s", "1h"] {
        assert_admitted(with_rollout(json!({"unhealthyTimeout": ok})));
    }
    assert_admitted(with_rollout(json!({})));
}
