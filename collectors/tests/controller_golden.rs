//! Golden tests: KubeVirt objects (YAML fixtures) -> virt-controller families -> Prometheus
//! text, byte for byte. `UPDATE_GOLDEN=1` rewrites the golden files; review the diff.

mod controller_support;

use controller_support::{assert_golden, fixture_state};
use kubevirt_metrics_collectors::controller::families::{self};
use kubevirt_metrics_collectors::controller::store::ClusterState;
use kubevirt_metrics_collectors::core::format::text;

fn golden_for(fixture: &str) {
    let state = fixture_state(fixture);
    let out = text::encode(&families::render(&state));
    assert_golden(&format!("{fixture}.prom"), &out);
}

#[test]
fn cluster() {
    golden_for("cluster");
}

#[test]
fn labels_allowlist() {
    golden_for("labels-allowlist");
}

#[test]
fn cluster_eviction_strategy() {
    golden_for("cluster-eviction");
}

#[test]
fn empty_cluster_has_only_the_migration_counts() {
    let out = text::encode(&families::render(&ClusterState::default()));
    assert_golden("empty.prom", &out);
}

#[test]
fn leading_status_backport() {
    let out = text::encode(&[families::leading_status(true)]);
    assert_eq!(
        out,
        "# HELP kubevirt_virt_controller_leading_status Indication for an operating virt-controller.\n\
         # TYPE kubevirt_virt_controller_leading_status gauge\n\
         kubevirt_virt_controller_leading_status 1\n"
    );
    let out = text::encode(&[families::leading_status(false)]);
    assert!(out.ends_with("kubevirt_virt_controller_leading_status 0\n"));
}

/// Rendering does not depend on the order objects arrived in.
#[test]
fn output_is_independent_of_arrival_order() {
    let path = controller_support::repo_root().join("testdata/controller/cluster.yaml");
    let mut docs = controller_support::yaml_documents(&path);
    docs.reverse();
    let mut state = ClusterState::default();
    for doc in docs {
        state.apply_any(doc).expect("decodes");
    }
    let reversed = text::encode(&families::render(&state));
    let forward = text::encode(&families::render(&fixture_state("cluster")));
    assert_eq!(forward, reversed);
}
