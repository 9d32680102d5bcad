//! Reconcile against a scripted API server: deletion cleanup, the HyperConverged path,
//! paused policies, a second policy on the same KubeVirt CR, a KubeVirt CR still deploying
//! (written to) or being deleted (not written to).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cloned_ref_to_slice_refs
)]

mod reconcile_support;

use kube::runtime::controller::Action;
use pretty_assertions::assert_eq;
use reconcile_support::*;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::Duration;

use kubevirt_metrics_operator::controller::metrics::WriteTarget;

fn deleting(mut policy: Value) -> Value {
    policy["metadata"]["deletionTimestamp"] = json!("2026-02-01T00:00:00Z");
    policy
}

#[tokio::test]
async fn deletion_removes_exactly_our_entries_then_the_finalizer() {
    let (ctx, mut server) = setup();
    let mut p = policy("metrics", CREATED);
    p["spec"]["components"]["virtOperator"] = json!({});
    let p = deleting(p);
    let ours = our_entries(&p);
    let a = foreign_virt_api();
    let other = other_policy_entries().remove(1);
    let before = vec![ours[0].clone(), a.clone(), ours[1].clone(), other.clone()];
    let task = spawn_reconcile(&p, &ctx);

    server
        .lists(&[kubevirt("20", Some(before))], &[p.clone()])
        .await;
    let r = server.expect("PATCH", &format!("{KV_PATH}/kubevirt")).await;
    assert_eq!(
        r.body.clone().unwrap(),
        json!({"spec": {"customizeComponents": {"patches": [a.clone(), other.clone()]}}, "metadata": {"resourceVersion": "20"}})
    );
    r.ok(&kubevirt("21", Some(vec![a, other])));

    let mut operator = deployments(true);
    operator[2] = virt_operator_with_marker(OWNER);
    server.workloads(&[virt_handler(true)], &operator).await;
    let r = server
        .expect("PATCH", &format!("{DEPLOY_PATH}/virt-operator"))
        .await;
    assert_eq!(r.query, APPLY_QUERY);
    assert_eq!(
        r.body.clone().unwrap(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "virt-operator", "namespace": "kubevirt"}})
    );
    r.ok(&deployments(false)[2]);
    server.monitoring_cleanup_reads().await;

    let (type_, reason, _) = server.event().await;
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Removed"));

    let r = server.expect("PATCH", &format!("{MSP_PATH}/metrics")).await;
    assert_eq!(
        r.body.clone().unwrap(),
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "metrics.kubevirt.io/cleanup"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    r.ok(&p);
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert_eq!(ctx.metrics.writes(WriteTarget::KubeVirt), 1);
    assert_eq!(ctx.metrics.writes(WriteTarget::Deployment), 1);
    server.done(ctx).await;
}

#[tokio::test]
async fn deletion_with_nothing_of_ours_left_only_drops_the_finalizer() {
    let (ctx, mut server) = setup();
    let p = deleting(policy("metrics", CREATED));
    let a = foreign_virt_api();
    let task = spawn_reconcile(&p, &ctx);
    server
        .lists(&[kubevirt("20", Some(vec![a]))], &[p.clone()])
        .await;
    server
        .workloads(&[virt_handler(false)], &deployments(false))
        .await;
    server.monitoring_cleanup_reads().await;
    let r = server.expect("PATCH", &format!("{MSP_PATH}/metrics")).await;
    r.ok(&p);
    task.await.unwrap().unwrap();
    server.done(ctx).await;
}

fn hco_owned_kubevirt(rv: &str) -> Value {
    let mut kv = kubevirt(rv, None);
    kv["metadata"]["name"] = json!("kubevirt-kubevirt-hyperconverged");
    kv["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "hco.kubevirt.io/v1beta1", "kind": "HyperConverged",
        "name": "kubevirt-hyperconverged", "uid": "hco-uid", "controller": true,
    }]);
    kv
}

fn hco_path() -> String {
    format!("{HCO_PATH}/kubevirt-hyperconverged")
}

/// The JSON patch operations in a HyperConverged write's annotation.
fn jsonpatch_annotation<T: DeserializeOwned>(body: &Value) -> T {
    serde_json::from_str(
        body["metadata"]["annotations"]["kubevirt.kubevirt.io/jsonpatch"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

fn hyperconverged(rv: &str, annotation: Option<&str>) -> Value {
    let mut hco = json!({
        "apiVersion": "hco.kubevirt.io/v1beta1", "kind": "HyperConverged",
        "metadata": {"name": "kubevirt-hyperconverged", "namespace": NS, "resourceVersion": rv, "uid": "hco-uid"},
        "spec": {"featureGates": {"downwardMetrics": true}},
    });
    if let Some(a) = annotation {
        hco["metadata"]["annotations"] = json!({"kubevirt.kubevirt.io/jsonpatch": a});
    }
    hco
}

#[tokio::test]
async fn a_hyperconverged_owner_gets_the_annotation_and_the_kubevirt_cr_is_untouched() {
    let (ctx, mut server) = setup();
    let p = policy("metrics", CREATED);
    let ours = our_entries(&p);
    let foreign_op = r#"[{"op":"add","path":"/spec/configuration/cpuRequest","value":"100m"}]"#;
    let task = spawn_reconcile(&p, &ctx);

    server
        .lists(&[hco_owned_kubevirt("30")], &[p.clone()])
        .await;
    let r = server.expect("GET", &hco_path()).await;
    r.ok(&hyperconverged("40", Some(foreign_op)));
    server
        .workloads(&[virt_handler(false)], &deployments(false))
        .await;
    server.pods(&[]).await;

    let r = server.expect("PATCH", &hco_path()).await;
    r.assert_merge_patch();
    let body = r.body.clone().unwrap();
    assert_eq!(body["metadata"]["resourceVersion"], "40");
    let written: Vec<Value> = jsonpatch_annotation(&body);
    let mut want: Vec<Value> = serde_json::from_str(foreign_op).unwrap();
    want.push(json!({"op": "add", "path": "/spec/customizeComponents/patches", "value": ours}));
    assert_eq!(
        written, want,
        "the foreign operation first and unchanged, ours after it"
    );
    r.ok(&hyperconverged(
        "41",
        Some(&serde_json::to_string(&want).unwrap()),
    ));

    server.monitoring_reads().await;
    let status = server.status_apply("metrics").await;
    assert_eq!(status["injectionMethod"], "HyperConvergedJsonPatch");
    assert_eq!(
        status["kubevirt"]["name"],
        "kubevirt-kubevirt-hyperconverged"
    );
    let (_, reason, note) = server.event().await;
    assert_eq!(reason, "Injected");
    assert!(note.contains("HyperConvergedJsonPatch"), "{note}");
    task.await.unwrap().unwrap();
    assert_eq!(ctx.metrics.writes(WriteTarget::HyperConverged), 1);
    assert_eq!(ctx.metrics.writes(WriteTarget::KubeVirt), 0);
    server.done(ctx).await;
}

#[tokio::test]
async fn deleting_under_hco_removes_our_operations_only() {
    let (ctx, mut server) = setup();
    let p = deleting(policy("metrics", CREATED));
    let ours = our_entries(&p);
    let foreign_op =
        json!({"op": "add", "path": "/spec/configuration/cpuRequest", "value": "100m"});
    let current = serde_json::to_string(&json!([foreign_op.clone(), {"op": "add", "path": "/spec/customizeComponents/patches", "value": ours}])).unwrap();
    let task = spawn_reconcile(&p, &ctx);
    server
        .lists(&[hco_owned_kubevirt("30")], &[p.clone()])
        .await;
    server
        .expect("GET", &hco_path())
        .await
        .ok(&hyperconverged("40", Some(&current)));
    let r = server.expect("PATCH", &hco_path()).await;
    let body = r.body.clone().unwrap();
    assert_eq!(body["metadata"]["resourceVersion"], "40");
    let left: Value = jsonpatch_annotation(&body);
    assert_eq!(left, json!([foreign_op]));
    r.ok(&hyperconverged("41", None));
    server
        .workloads(&[virt_handler(true)], &deployments(true))
        .await;
    server.monitoring_cleanup_reads().await;
    server.event().await;
    server
        .expect("PATCH", &format!("{MSP_PATH}/metrics"))
        .await
        .ok(&p);
    task.await.unwrap().unwrap();
    server.done(ctx).await;
}

#[tokio::test]
async fn a_paused_policy_writes_only_its_status() {
    let (ctx, mut server) = setup();
    let mut p = policy("metrics", CREATED);
    p["spec"]["paused"] = json!(true);
    p["spec"]["components"]["virtOperator"] = json!({});
    let task = spawn_reconcile(&p, &ctx);
    // Nothing of ours in the CR, virt-operator without sidecar: still no write.
    server.reads(&[kubevirt("5", None)], &[p.clone()]).await;
    let status = server.status_apply("metrics").await;
    assert_eq!(condition(&status, "Ready")["reason"], "Paused");
    assert_eq!(status["injectedComponents"], "none");
    assert_eq!(status["components"][0]["injected"], false);
    let (_, reason, _) = server.event().await;
    assert_eq!(reason, "Paused");
    task.await.unwrap().unwrap();
    assert_eq!(
        ctx.metrics.writes(WriteTarget::KubeVirt) + ctx.metrics.writes(WriteTarget::Deployment),
        0
    );
    server.done(ctx).await;
}

#[tokio::test]
async fn a_paused_policy_gets_no_finalizer_and_keeps_stale_entries() {
    let (ctx, mut server) = setup();
    let old = policy("metrics", CREATED);
    let stale = our_entries(&old);
    let mut p = old.clone();
    p["metadata"].as_object_mut().unwrap().remove("finalizers");
    p["spec"]["paused"] = json!(true);
    p["spec"]["components"] = json!({});
    let task = spawn_reconcile(&p, &ctx);
    server
        .reads(&[kubevirt("5", Some(stale))], &[p.clone()])
        .await;
    let status = server.status_apply("metrics").await;
    assert_eq!(condition(&status, "Ready")["reason"], "Paused");
    server.event().await;
    task.await.unwrap().unwrap();
    server.done(ctx).await;
}

#[tokio::test]
async fn deleting_a_paused_policy_leaves_everything_and_warns() {
    let (ctx, mut server) = setup();
    let mut p = deleting(policy("metrics", CREATED));
    p["spec"]["paused"] = json!(true);
    let task = spawn_reconcile(&p, &ctx);
    let (type_, reason, note) = server.event().await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Warning", "CleanupSkipped")
    );
    assert!(note.contains("paused"), "{note}");
    server
        .expect("PATCH", &format!("{MSP_PATH}/metrics"))
        .await
        .ok(&p);
    task.await.unwrap().unwrap();
    server.done(ctx).await;
}

#[tokio::test]
async fn the_younger_of_two_policies_changes_nothing_and_says_why() {
    let (ctx, mut server) = setup();
    let older = policy("metrics", CREATED);
    let younger = policy("second", "2026-01-05T00:00:00Z");
    let task = spawn_reconcile(&younger, &ctx);
    server
        .lists(&[kubevirt("5", None)], &[younger.clone(), older.clone()])
        .await;
    let status = server.status_apply("second").await;
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "ConflictingPolicy");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("kubevirt/metrics is older")
    );
    assert_eq!(condition(&status, "Degraded")["status"], "True");
    let (type_, reason, _) = server.event().await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Warning", "ConflictingPolicy")
    );
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(60))
    );

    // The same situation again: same status, no event, no write.
    let mut again = younger.clone();
    again["status"] = status;
    let task = spawn_reconcile(&again, &ctx);
    server
        .lists(&[kubevirt("5", None)], &[again.clone(), older])
        .await;
    task.await.unwrap().unwrap();
    server.done(ctx).await;
}

#[tokio::test]
async fn a_kubevirt_cr_that_is_still_deploying_gets_our_entries_and_the_status_says_so() {
    for phase in [Some("Deploying"), None] {
        let (ctx, mut server) = setup();
        let p = policy("metrics", CREATED);
        let ours = our_entries(&p);
        let mut kv = kubevirt("5", None);
        match phase {
            Some(phase) => kv["status"]["phase"] = json!(phase),
            None => {
                kv.as_object_mut().unwrap().remove("status");
            }
        }
        let task = spawn_reconcile(&p, &ctx);
        server.lists(&[kv], &[p.clone()]).await;
        // Nothing is rolled out yet: virt-operator is still creating the workloads.
        server.workloads(&[], &[]).await;
        server.pods(&[]).await;
        let r = server.expect("PATCH", &format!("{KV_PATH}/kubevirt")).await;
        r.assert_merge_patch();
        let body = r.body.clone().unwrap();
        assert_eq!(body["metadata"]["resourceVersion"], "5");
        assert_eq!(
            body["spec"]["customizeComponents"]["patches"],
            Value::Array(ours.clone()),
            "written before virt-operator reports Deployed"
        );
        r.ok(&kubevirt("6", Some(ours)));
        server.monitoring_reads().await;
        let status = server.status_apply("metrics").await;
        let ready = condition(&status, "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "KubeVirtDeploying");
        let progressing = condition(&status, "Progressing");
        assert_eq!(progressing["status"], "True");
        assert_eq!(progressing["reason"], "KubeVirtDeploying");
        assert_eq!(
            progressing["message"],
            format!(
                "KubeVirt CR kubevirt/kubevirt is still deploying (status.phase {}): the sidecar entries are written and virt-operator applies them as it deploys",
                phase.unwrap_or("unset")
            )
        );
        assert_eq!(condition(&status, "Degraded")["status"], "False");
        assert_eq!(status["injectedComponents"], "virt-handler,virt-controller");
        let (type_, reason, _) = server.event().await;
        assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Injected"));
        assert_eq!(
            task.await.unwrap().unwrap(),
            Action::requeue(Duration::from_secs(30))
        );
        server.done(ctx).await;
    }
}

#[tokio::test]
async fn a_kubevirt_cr_being_deleted_is_not_written_to() {
    for (phase, deletion_timestamp) in [
        ("Deleting", true),
        ("Deleting", false),
        ("Deleted", false),
        ("Deployed", true),
    ] {
        let (ctx, mut server) = setup();
        let p = policy("metrics", CREATED);
        let mut kv = kubevirt("5", None);
        kv["status"]["phase"] = json!(phase);
        if deletion_timestamp {
            kv["metadata"]["deletionTimestamp"] = json!("2026-01-02T00:00:00Z");
        }
        let task = spawn_reconcile(&p, &ctx);
        server.lists(&[kv], &[p.clone()]).await;
        // No workload read and no write: only the status and the event.
        let status = server.status_apply("metrics").await;
        assert_eq!(condition(&status, "Ready")["reason"], "KubeVirtDeleting");
        assert_eq!(
            condition(&status, "Ready")["message"],
            "KubeVirt CR kubevirt/kubevirt is being deleted; waiting for a new one"
        );
        let (_, reason, _) = server.event().await;
        assert_eq!(reason, "WaitingForKubeVirt");
        task.await.unwrap().unwrap();
        assert_eq!(ctx.metrics.writes(WriteTarget::KubeVirt), 0);
        server.done(ctx).await;
    }
}

#[tokio::test]
async fn no_kubevirt_cr_at_all_is_reported() {
    let (ctx, mut server) = setup();
    let p = policy("metrics", CREATED);
    let task = spawn_reconcile(&p, &ctx);
    server.lists(&[], &[p.clone()]).await;
    let status = server.status_apply("metrics").await;
    assert_eq!(condition(&status, "Ready")["reason"], "KubeVirtNotFound");
    assert_eq!(condition(&status, "Degraded")["status"], "True");
    server.event().await;
    task.await.unwrap().unwrap();
    server.done(ctx).await;
}
