//! The CEL rules of `exporters` and `aggregations`, evaluated locally by kube-cel on the CRD
//! schema the operator generates, over the shared case table
//! `testdata/exporters/validation-cases.yaml` (the e2e test `operator_exporters` runs the
//! same table against the real kube-apiserver, schema checks included).
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

struct Case {
    name: String,
    spec: Value,
    message: Option<String>,
    schema_only: bool,
}

/// The table, each case made into a whole spec (see the file's header).
fn cases() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/exporters/validation-cases.yaml"
    );
    let table: Vec<Value> = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    table
        .into_iter()
        .map(|case| {
            let mut spec = json!({
                "defaults": {"image": "registry.example/collectors:v1"},
                "components": {"virtApi": case.get("component").cloned().unwrap_or(json!({}))},
            });
            if let Some(exporters) = case.get("exporters") {
                spec["defaults"]["exporters"] = exporters.clone();
            }
            if let Some(aggregations) = case.get("aggregations") {
                spec["aggregations"] = aggregations.clone();
            }
            Case {
                name: case["name"].as_str().unwrap().to_owned(),
                spec,
                message: case["message"].as_str().map(str::to_owned),
                schema_only: case["schemaOnly"].as_bool().unwrap_or(false),
            }
        })
        .collect()
}

fn violations(schema: &Value, spec: &Value) -> Vec<String> {
    let object = json!({
        "apiVersion": "metrics.kubevirt.io/v1alpha1",
        "kind": "MetricsSidecarPolicy",
        "metadata": {"name": "p", "namespace": "kubevirt"},
        "spec": spec,
    });
    match kube_cel::Validator::new().validate(schema, &object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

#[test]
fn every_case_of_the_table_is_judged_as_written() {
    let schema = schema();
    let cases = cases();
    assert!(cases.len() >= 30, "the case table is there");
    let mut checked = 0;
    for case in cases.iter().filter(|c| !c.schema_only) {
        let found = violations(&schema, &case.spec);
        match &case.message {
            None => assert!(found.is_empty(), "{}: rejected: {found:?}", case.name),
            Some(part) => assert!(
                found.iter().any(|m| m.contains(part.as_str())),
                "{}: expected a rejection with {part:?}, got {found:?}",
                case.name
            ),
        }
        checked += 1;
    }
    assert!(checked >= 25);
}

#[test]
fn the_same_rules_hold_in_every_component() {
    // The exporters live in the settings every component flattens: a bad sink is refused
    // in spec.components.virtHandler as in spec.defaults.
    let schema = schema();
    let spec = json!({
        "defaults": {"image": "registry.example/collectors:v1"},
        "components": {"virtHandler": {"exporters": {"remoteWrite": {"url": "mimir:8080"}}}},
    });
    let found = violations(&schema, &spec);
    assert!(
        found
            .iter()
            .any(|m| m.contains("remoteWrite.url must be an http:// or https:// URL")),
        "{found:?}"
    );
}

#[test]
fn extra_args_that_repeat_an_exported_flag_pass_the_crd() {
    // The CRD cannot see across spec.defaults.extraArgs and a component's exporters; the
    // plan refuses it (tests/exporters_plan.rs) and the status carries the message.
    let spec = json!({
        "defaults": {"image": "registry.example/collectors:v1", "extraArgs": ["--otlp-endpoint=http://a:4318"]},
        "components": {"virtApi": {"exporters": {"otlp": {"endpoint": "http://b:4318"}}}},
    });
    assert_eq!(violations(&schema(), &spec), Vec::<String>::new());
}
