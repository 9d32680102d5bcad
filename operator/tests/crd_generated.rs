//! The committed CRD under `crds/` is exactly what the Rust types generate
//! (`kubevirt-metrics-operator crd`), and it has the names, columns and subresources users
//! rely on. `UPDATE_GOLDEN=1` rewrites the committed file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use kube::CustomResourceExt;
use kubevirt_metrics_operator::api::{MetricsSidecarPolicy, crd_yaml};

const COMMITTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/metricssidecarpolicies.metrics.kubevirt.io.yaml"
);

#[test]
fn committed_crd_is_fresh() {
    let generated = crd_yaml().unwrap();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(COMMITTED, &generated).unwrap();
        eprintln!("updated {COMMITTED}");
        return;
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "{COMMITTED} is stale: regenerate it with \
         `cargo run -p kubevirt-metrics-operator -- crd > crds/metricssidecarpolicies.metrics.kubevirt.io.yaml` \
         (or UPDATE_GOLDEN=1 cargo test -p kubevirt-metrics-operator --test crd_generated)"
    );
}

#[test]
fn crd_has_the_names_columns_and_subresources_users_see() {
    let crd = MetricsSidecarPolicy::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("metricssidecarpolicies.metrics.kubevirt.io")
    );
    assert_eq!(crd.spec.group, "metrics.kubevirt.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "MetricsSidecarPolicy");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["msp".to_owned()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["kubevirt-metrics".to_owned()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Ready", "Method", "Components", "Paused", "Age"]);
}

/// kubectl expands categories before resource names: a category equal to one of KubeVirt's
/// names would make `kubectl get kubevirt` (or `get vm`, ...) list our policies instead.
#[test]
fn no_name_or_category_shadows_a_kubevirt_resource() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/kubevirt-v1.9.0/crds.yaml"
    ))
    .unwrap();
    let mut kubevirt_names = std::collections::BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let crd: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        let names = &crd["spec"]["names"];
        for key in ["plural", "singular", "kind"] {
            if let Some(name) = names[key].as_str() {
                kubevirt_names.insert(name.to_lowercase());
            }
        }
        for short in names["shortNames"].as_array().into_iter().flatten() {
            kubevirt_names.insert(short.as_str().unwrap().to_lowercase());
        }
    }
    assert!(kubevirt_names.contains("kubevirt") && kubevirt_names.contains("vmi"));
    let ours = MetricsSidecarPolicy::crd().spec.names;
    let mut our_names: Vec<String> = ours.categories.clone().unwrap_or_default();
    our_names.extend(ours.short_names.clone().unwrap_or_default());
    our_names.push(ours.plural.clone());
    our_names.extend(ours.singular.clone());
    for name in our_names {
        assert!(
            !kubevirt_names.contains(&name.to_lowercase()),
            "{name:?} is also a KubeVirt resource name"
        );
    }
}
