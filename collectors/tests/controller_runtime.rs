//! virt-controller-metrics against a fake Kubernetes API server: the leader rule (Lease
//! holder vs this pod), the watches (lists, then watch events), and faults (RBAC 403, a
//! missing CRD, an object that does not decode, an unreadable Lease).

mod controller_support;

use std::time::Duration;

use controller_support::fake_api::{FakeApi, path_of};
use controller_support::{repo_root, yaml_documents};
use kubevirt_metrics_collectors::controller::families::{self};
use kubevirt_metrics_collectors::controller::store::ClusterState;
use kubevirt_metrics_collectors::controller::{ControllerCollector, ControllerOptions};
use kubevirt_metrics_collectors::core::collect::{Collection, Collector};
use kubevirt_metrics_collectors::core::format::text;
use serde_json::json;
use tokio::time::Instant;

const ME: &str = "virt-controller-7d9f8-aaaaa";
const OTHER: &str = "virt-controller-7d9f8-bbbbb";

fn cluster_docs() -> Vec<serde_json::Value> {
    yaml_documents(&repo_root().join("testdata/controller/cluster.yaml"))
}

fn options() -> ControllerOptions {
    ControllerOptions {
        namespace: "kubevirt".to_owned(),
        identity: ME.to_owned(),
        leader_lease: "virt-controller".to_owned(),
        ignore_leadership: false,
        leading_status_backport: false,
    }
}

async fn collect(collector: &ControllerCollector) -> Collection {
    collector
        .collect(Instant::now() + Duration::from_secs(5))
        .await
}

/// Collects until `done` holds (the watches list asynchronously); panics after 10 s.
async fn collect_until(
    collector: &ControllerCollector,
    what: &str,
    done: impl Fn(&Collection) -> bool,
) -> Collection {
    let limit = Instant::now() + Duration::from_secs(10);
    loop {
        let collection = collect(collector).await;
        if done(&collection) {
            return collection;
        }
        assert!(Instant::now() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has(collection: &Collection, family: &str) -> bool {
    collection
        .families
        .iter()
        .any(|f| f.name == family && !f.is_empty())
}

fn expected_text(docs: &[serde_json::Value]) -> String {
    let mut state = ClusterState::default();
    for doc in docs {
        state.apply_any(doc.clone()).expect("fixture decodes");
    }
    text::encode(&families::render(&state))
}

#[tokio::test]
async fn only_the_lease_holder_exports_and_a_leader_change_hands_over() {
    let api = FakeApi::start().await;
    api.serve_objects(cluster_docs());
    api.set_lease("virt-controller", Some(OTHER));
    let collector = ControllerCollector::new(api.client(), options());

    // Another pod leads: nothing is exported, nothing is watched.
    let collection = collect(&collector).await;
    assert!(collection.families.is_empty());
    assert!(collection.problems.is_empty(), "{:?}", collection.problems);
    assert!(!collector.exporting().await);
    assert_eq!(api.requests_to("/apis/kubevirt.io/v1/virtualmachines"), 0);

    // This pod takes over: after the initial lists, exactly what the fixture renders to.
    api.set_lease("virt-controller", Some(ME));
    let collection = collect_until(&collector, "initial lists", |c| !c.families.is_empty()).await;
    assert_eq!(
        text::encode(&collection.families),
        expected_text(&cluster_docs())
    );
    assert_eq!(collection.targets_seen, 6 + 3, "VMs + VMIs");
    assert!(collection.problems.is_empty(), "{:?}", collection.problems);

    // Leadership moves away: the sidecar stops exporting and watching at its next pass.
    api.set_lease("virt-controller", Some(OTHER));
    let collection = collect(&collector).await;
    assert!(collection.families.is_empty());
    assert!(!collector.exporting().await);
}

#[tokio::test]
async fn watch_events_update_what_is_exported() {
    let api = FakeApi::start().await;
    api.serve_objects(cluster_docs());
    api.set_lease("virt-controller", Some(ME));
    let collector = ControllerCollector::new(api.client(), options());
    collect_until(&collector, "initial lists", |c| has(c, "kubevirt_vm_info")).await;

    let vms = path_of("VirtualMachine").expect("path");
    let added = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "late-vm", "namespace": "tenant-c", "resourceVersion": "2",
                     "creationTimestamp": "2026-07-27T00:00:00Z"},
        "spec": {"template": {"spec": {"domain": {"devices": {}}}}},
        "status": {"printableStatus": "Stopped"}
    });
    // The watch may still be opening; push until the event lands.
    let collection = collect_until(&collector, "ADDED event", |c| {
        api.push(vms, "ADDED", added.clone());
        text::encode(&c.families).contains("name=\"late-vm\"")
    })
    .await;
    assert!(text::encode(&collection.families).contains(
        "kubevirt_vm_info{flavor=\"\",instance_type=\"\",machine_type=\"\",name=\"late-vm\",namespace=\"tenant-c\",os=\"\",preference=\"\",status=\"stopped\",status_group=\"non_running\",workload=\"\"} 1"
    ));

    let vmis = path_of("VirtualMachineInstance").expect("path");
    let deleted = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "db-vm", "namespace": "tenant-a", "resourceVersion": "3"}
    });
    api.push(vmis, "DELETED", deleted);
    collect_until(&collector, "DELETED event", |c| {
        !text::encode(&c.families).contains("kubevirt_vmi_info{evictable=\"false\",flavor=\"\",guest_os_arch=\"\",guest_os_kernel_release=\"\",guest_os_machine=\"\",guest_os_name=\"\",guest_os_version_id=\"\",instance_type=\"\",name=\"db-vm\"")
    })
    .await;
}

#[tokio::test]
async fn a_forbidden_or_missing_resource_does_not_hold_the_others_back() {
    let api = FakeApi::start().await;
    api.serve_objects(cluster_docs());
    api.set_lease("virt-controller", Some(ME));
    api.fail(path_of("PersistentVolumeClaim").expect("path"), 403);
    api.fail(path_of("VirtualMachineSnapshot").expect("path"), 404);
    let collector = ControllerCollector::new(api.client(), options());

    let collection = collect_until(&collector, "settled despite failures", |c| {
        has(c, "kubevirt_vm_info")
    })
    .await;
    // No PVCs, so no disk sizes; no snapshots; everything else is there.
    assert!(!has(&collection, "kubevirt_vm_disk_allocated_size_bytes"));
    assert!(!has(
        &collection,
        "kubevirt_vmsnapshot_succeeded_timestamp_seconds"
    ));
    assert!(has(&collection, "kubevirt_vmi_info"));
    let kinds: Vec<(&str, &str)> = collection
        .problems
        .iter()
        .map(|p| (p.kind, p.target.as_str()))
        .collect();
    assert!(
        kinds.contains(&("forbidden", "persistentvolumeclaims")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("not_found", "virtualmachinesnapshots.snapshot.kubevirt.io")),
        "{kinds:?}"
    );

    // RBAC fixed: the watch recovers (after its backoff) and the problem clears.
    api.heal(path_of("PersistentVolumeClaim").expect("path"));
    let collection = collect_until(&collector, "PVC watch recovery", |c| {
        has(c, "kubevirt_vm_disk_allocated_size_bytes")
    })
    .await;
    assert!(collection.problems.iter().all(|p| p.kind != "forbidden"));
}

#[tokio::test]
async fn an_object_that_does_not_decode_is_reported_and_skipped() {
    let mut docs = cluster_docs();
    docs.push(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "bad-vm", "namespace": "tenant-a"},
        "spec": {"template": {"spec": {"domain": {"resources": {"requests": {"memory": "lots"}}}}}}
    }));
    let api = FakeApi::start().await;
    api.serve_objects(docs);
    api.set_lease("virt-controller", Some(ME));
    let collector = ControllerCollector::new(api.client(), options());

    let collection =
        collect_until(&collector, "initial lists", |c| has(c, "kubevirt_vm_info")).await;
    assert_eq!(
        text::encode(&collection.families),
        expected_text(&cluster_docs())
    );
    assert_eq!(collection.problems.len(), 1, "{:?}", collection.problems);
    let problem = &collection.problems[0];
    assert_eq!((problem.source, problem.kind), ("kubernetes", "decode"));
    assert_eq!(problem.target, "VirtualMachine tenant-a/bad-vm");
    assert!(problem.message.contains("lots"), "{}", problem.message);
}

#[tokio::test]
async fn an_unreadable_lease_keeps_the_last_decision() {
    let api = FakeApi::start().await;
    api.serve_objects(cluster_docs());
    let collector = ControllerCollector::new(api.client(), options());

    // Never read: not leading, and the 403 is reported.
    api.fail_leases(Some(403));
    let collection = collect(&collector).await;
    assert!(collection.families.is_empty());
    assert_eq!(collection.problems.len(), 1);
    assert_eq!(collection.problems[0].kind, "forbidden");
    assert_eq!(
        collection.problems[0].target,
        "Lease kubevirt/virt-controller"
    );

    // Read once as leader, then unreadable: still exporting, problem reported.
    api.fail_leases(None);
    api.set_lease("virt-controller", Some(ME));
    collect_until(&collector, "leading", |c| has(c, "kubevirt_vm_info")).await;
    api.fail_leases(Some(500));
    let collection = collect(&collector).await;
    assert!(has(&collection, "kubevirt_vm_info"));
    assert!(collection.problems.iter().any(|p| p.kind == "api"));

    // No Lease at all: nobody leads.
    api.fail_leases(None);
    api.set_lease("virt-controller", None);
    let collection = collect(&collector).await;
    assert!(collection.families.is_empty());
    assert!(collection.problems.is_empty());
}

#[tokio::test]
async fn ignore_leadership_exports_without_a_lease_and_the_backport_follows_the_lease() {
    let api = FakeApi::start().await;
    api.serve_objects(cluster_docs());
    let collector = ControllerCollector::new(
        api.client(),
        ControllerOptions {
            ignore_leadership: true,
            ..options()
        },
    );
    let collection =
        collect_until(&collector, "initial lists", |c| has(c, "kubevirt_vm_info")).await;
    assert!(collection.problems.is_empty(), "{:?}", collection.problems);
    assert_eq!(api.requests_to("/apis/coordination.k8s.io"), 0);

    // The backport reports this pod's real leadership, 0 or 1.
    let collector = ControllerCollector::new(
        api.client(),
        ControllerOptions {
            leading_status_backport: true,
            ..options()
        },
    );
    api.set_lease("virt-controller", Some(OTHER));
    let out = text::encode(&collect(&collector).await.families);
    assert_eq!(
        out,
        text::encode(&[families::leading_status(false)]),
        "a non-leader exports only the backport"
    );
    api.set_lease("virt-controller", Some(ME));
    let collection = collect_until(&collector, "leading", |c| has(c, "kubevirt_vm_info")).await;
    assert!(
        text::encode(&collection.families)
            .contains("\nkubevirt_virt_controller_leading_status 1\n")
    );
}

/// The first export does not wait for the next interval tick: once every watch has listed
/// its objects, the collector's trigger fires, and the pass it asks for exports.
#[tokio::test]
async fn the_trigger_fires_when_the_watches_have_settled() {
    let api = FakeApi::start().await;
    api.serve_objects(cluster_docs());
    api.set_lease("virt-controller", Some(ME));
    let collector = ControllerCollector::new(api.client(), options());
    let trigger = collector
        .trigger()
        .expect("the controller collector offers a trigger");
    // The first pass finds the Lease held and starts the watches; nothing to export yet.
    let first = collect(&collector).await;
    assert!(!has(&first, "kubevirt_vm_info"));
    tokio::time::timeout(Duration::from_secs(10), trigger.fired())
        .await
        .expect("fired once every watch listed its objects");
    assert!(has(&collect(&collector).await, "kubevirt_vm_info"));
}
