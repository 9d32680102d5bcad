//! Reconcile against a scripted API server: the exact requests of injection, no-op,
//! conflict retry, foreign entries and policy updates.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cloned_ref_to_slice_refs
)]

mod reconcile_support;

use kube::runtime::controller::Action;
use pretty_assertions::assert_eq;
use reconcile_support::*;
use serde_json::{Value, json};
use std::time::Duration;

use kubevirt_metrics_operator::controller::metrics::WriteTarget;

fn kv_patch_path() -> String {
    format!("{KV_PATH}/kubevirt")
}

/// Asserts a KubeVirt write: a merge patch carrying the read resourceVersion and the
/// whole `patches` list.
fn assert_kv_write(r: &Received, rv: &str, patches: &[Value]) {
    r.assert_merge_patch();
    let expected = json!({
        "spec": {"customizeComponents": {"patches": patches}},
        "metadata": {"resourceVersion": rv},
    });
    assert_eq!(r.body.as_ref().unwrap(), &expected);
    // Byte-level: each foreign entry's patch string is unchanged.
    assert_eq!(
        r.body.as_ref().unwrap()["spec"]["customizeComponents"]["patches"],
        Value::Array(patches.to_vec())
    );
}

#[tokio::test]
async fn a_new_policy_gets_the_finalizer_first_and_nothing_else() {
    let (ctx, mut server) = setup();
    let mut p = policy("metrics", CREATED);
    p["metadata"].as_object_mut().unwrap().remove("finalizers");
    let task = spawn_reconcile(&p, &ctx);

    let r = server.expect("PATCH", &format!("{MSP_PATH}/metrics")).await;
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(
        r.body.clone().unwrap(),
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["metrics.kubevirt.io/cleanup"]},
        ])
    );
    r.ok(&policy("metrics", CREATED));
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    server.done(ctx).await;
}

#[tokio::test]
async fn first_injection_writes_our_entries_with_the_resource_version() {
    let (ctx, mut server) = setup();
    let p = policy("metrics", CREATED);
    let ours = our_entries(&p);
    assert_eq!(ours.len(), 2, "virt-handler and virt-controller");
    let task = spawn_reconcile(&p, &ctx);

    server
        .reads_without_sidecars(&[kubevirt("5", None)], &[p.clone()])
        .await;
    let r = server.expect("PATCH", &kv_patch_path()).await;
    assert_kv_write(&r, "5", &ours);
    r.ok(&kubevirt("6", Some(ours.clone())));

    server.monitoring_reads().await;
    let status = server.status_apply("metrics").await;
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["injectionMethod"], "CustomizeComponents");
    assert_eq!(
        status["kubevirt"],
        json!({"namespace": "kubevirt", "name": "kubevirt"})
    );
    assert_eq!(status["injectedComponents"], "virt-handler,virt-controller");
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Ready")["reason"], "RolloutInProgress");
    assert_eq!(condition(&status, "Progressing")["status"], "True");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    let handler = &status["components"][0];
    assert_eq!(handler["component"], "virt-handler");
    assert_eq!(handler["injected"], true);
    assert_eq!(handler["image"], IMAGE);
    assert_eq!(
        handler["rollout"],
        json!({"desired": 3, "updated": 3, "ready": 3})
    );
    assert_eq!(
        handler["message"],
        "waiting for virt-operator to add the sidecar to the DaemonSet"
    );

    let (type_, reason, note) = server.event().await;
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Injected"));
    assert!(note.contains("virt-handler, virt-controller"), "{note}");

    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(30))
    );
    assert_eq!(ctx.metrics.writes(WriteTarget::KubeVirt), 1);
    assert_eq!(ctx.metrics.writes(WriteTarget::Status), 1);
    server.done(ctx).await;
}

#[tokio::test]
async fn an_unchanged_world_causes_zero_writes() {
    let (ctx, mut server) = setup();
    let mut p = policy("metrics", CREATED);
    let kept = foreign_virt_api();
    let mut patches = vec![kept];
    patches.extend(our_entries(&p));
    let kv = kubevirt("7", Some(patches));

    // First pass: entries and sidecars are in place, only the status is new.
    let task = spawn_reconcile(&p, &ctx);
    server.reads(&[kv.clone()], &[p.clone()]).await;
    server.monitoring_reads().await;
    let status = server.status_apply("metrics").await;
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "Ready")["reason"], "Injected");
    assert_eq!(condition(&status, "Progressing")["status"], "False");
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );

    // Second pass with that status: reads only.
    p["status"] = status;
    let task = spawn_reconcile(&p, &ctx);
    server.reads(&[kv], &[p.clone()]).await;
    server.monitoring_reads().await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(ctx.metrics.writes(WriteTarget::KubeVirt), 0);
    assert_eq!(ctx.metrics.writes(WriteTarget::Status), 1);
    server.done(ctx).await;
}

#[tokio::test]
async fn a_409_conflict_rereads_and_keeps_the_concurrent_entry() {
    let (ctx, mut server) = setup();
    let p = policy("metrics", CREATED);
    let ours = our_entries(&p);
    let first = foreign_virt_api();
    let concurrent = foreign(
        "virt-controller",
        r#"{"metadata":{"labels":{"team":"infra"}}}"#,
    );
    let task = spawn_reconcile(&p, &ctx);

    server
        .reads_without_sidecars(&[kubevirt("5", Some(vec![first.clone()]))], &[p.clone()])
        .await;
    let r = server.expect("PATCH", &kv_patch_path()).await;
    let mut want = vec![first.clone()];
    want.extend(ours.clone());
    assert_kv_write(&r, "5", &want);
    r.conflict("kubevirts.kubevirt.io \"kubevirt\"");

    // Fresh read: someone appended an entry meanwhile.
    let r = server.expect("GET", &kv_patch_path()).await;
    r.ok(&kubevirt(
        "8",
        Some(vec![first.clone(), concurrent.clone()]),
    ));
    let r = server.expect("PATCH", &kv_patch_path()).await;
    let mut want = vec![first, concurrent];
    want.extend(ours.clone());
    assert_kv_write(&r, "8", &want);
    r.ok(&kubevirt("9", Some(want.clone())));

    server.monitoring_reads().await;
    server.status_apply("metrics").await;
    let (_, reason, _) = server.event().await;
    assert_eq!(reason, "Injected");
    task.await.unwrap().unwrap();
    assert_eq!(ctx.metrics.conflicts(WriteTarget::KubeVirt), 1);
    assert_eq!(ctx.metrics.writes(WriteTarget::KubeVirt), 1);
    server.done(ctx).await;
}

#[tokio::test]
async fn foreign_entries_stay_byte_for_byte_and_in_place() {
    let (ctx, mut server) = setup();
    let p = policy("metrics", CREATED);
    let ours = our_entries(&p);
    // Odd but valid foreign entries: whitespace inside the JSON string, a json-type patch,
    // a wildcard, and an entry of another policy (a different marker owner).
    let a = foreign("virt-api", "{ \"spec\" : { \"replicas\" : 2 } }");
    let b = json!({"resourceName": "*", "resourceType": "Service", "type": "json",
        "patch": "[{\"op\":\"add\",\"path\":\"/metadata/labels/x\",\"value\":\"y\"}]"});
    let other_policy = other_policy_entries().remove(0);
    let mut kv = kubevirt("5", Some(vec![a.clone(), b.clone(), other_policy.clone()]));
    kv["spec"]["customizeComponents"]["flags"] = json!({"handler": {"v": "4"}});
    let task = spawn_reconcile(&p, &ctx);

    server.reads_without_sidecars(&[kv], &[p.clone()]).await;
    let r = server.expect("PATCH", &kv_patch_path()).await;
    let mut want = vec![a, b, other_policy];
    want.extend(ours);
    assert_kv_write(&r, "5", &want);
    // The flags are not part of the write at all.
    assert!(
        r.body.as_ref().unwrap()["spec"]["customizeComponents"]
            .get("flags")
            .is_none()
    );
    r.ok(&kubevirt("6", Some(want)));
    server.monitoring_reads().await;
    server.status_apply("metrics").await;
    server.event().await;
    task.await.unwrap().unwrap();
    server.done(ctx).await;
}

#[tokio::test]
async fn a_policy_update_replaces_our_entries_in_place_and_drops_disabled_ones() {
    let (ctx, mut server) = setup();
    let old = policy("metrics", CREATED);
    let old_entries = our_entries(&old);
    let a = foreign_virt_api();
    let z = foreign("virt-controller", r#"{"spec":{"minReadySeconds":5}}"#);
    // [ours(handler), a, ours(controller), z]
    let before = vec![
        old_entries[0].clone(),
        a.clone(),
        old_entries[1].clone(),
        z.clone(),
    ];

    let mut new = old.clone();
    new["metadata"]["generation"] = json!(2);
    new["spec"]["defaults"]["image"] = json!("quay.io/kubevirt/metrics-sidecars:v0.2.0");
    new["spec"]["components"]["virtController"] = json!({"enabled": false});
    let new_entries = our_entries(&new);
    assert_eq!(new_entries.len(), 1);
    assert_ne!(new_entries[0], old_entries[0]);

    let task = spawn_reconcile(&new, &ctx);
    server
        .reads(&[kubevirt("11", Some(before))], &[new.clone()])
        .await;
    let r = server.expect("PATCH", &kv_patch_path()).await;
    let want = vec![new_entries[0].clone(), a, z];
    assert_kv_write(&r, "11", &want);
    r.ok(&kubevirt("12", Some(want)));
    server.monitoring_reads().await;
    let status = server.status_apply("metrics").await;
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["injectedComponents"], "virt-handler");
    assert_eq!(status["components"].as_array().unwrap().len(), 1);
    server.event().await;
    task.await.unwrap().unwrap();
    server.done(ctx).await;
}

#[tokio::test]
async fn virt_operator_is_patched_by_server_side_apply() {
    let (ctx, mut server) = setup();
    let mut p = policy("metrics", CREATED);
    p["spec"]["components"] = json!({"virtOperator": {}});
    let task = spawn_reconcile(&p, &ctx);

    server
        .reads_without_sidecars(&[kubevirt("5", None)], &[p.clone()])
        .await;
    // No customizeComponents entries wanted and none there: no KubeVirt write.
    let r = server
        .expect("PATCH", &format!("{DEPLOY_PATH}/virt-operator"))
        .await;
    r.assert_server_side_apply();
    let body = r.body.clone().unwrap();
    assert_eq!(body["kind"], "Deployment");
    assert_eq!(
        body["metadata"],
        json!({"name": "virt-operator", "namespace": "kubevirt"})
    );
    assert_eq!(
        body["spec"]["template"]["metadata"]["annotations"]["metrics.kubevirt.io/sidecar-policy"],
        OWNER
    );
    let containers = body["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0]["name"], "metrics-sidecar");
    r.ok(&virt_operator_with_marker(OWNER));
    server.monitoring_reads().await;
    let status = server.status_apply("metrics").await;
    assert_eq!(status["components"][0]["component"], "virt-operator");
    assert_eq!(status["components"][0]["injected"], true);
    server.event().await;
    task.await.unwrap().unwrap();
    assert_eq!(ctx.metrics.writes(WriteTarget::Deployment), 1);
    server.done(ctx).await;
}

#[tokio::test]
async fn moving_kubevirt_ref_takes_our_entries_out_of_the_old_cr() {
    let (ctx, mut server) = setup();
    let mut p = policy("metrics", CREATED);
    p["spec"]["kubevirtRef"] = json!({"name": "kubevirt-b"});
    let ours = our_entries(&p);
    let a = foreign_virt_api();
    let old_cr = kubevirt("5", Some(vec![ours[0].clone(), a.clone()]));
    let mut new_cr = kubevirt("6", None);
    new_cr["metadata"]["name"] = json!("kubevirt-b");
    let task = spawn_reconcile(&p, &ctx);

    server
        .reads_without_sidecars(&[old_cr, new_cr.clone()], &[p.clone()])
        .await;
    let r = server.expect("PATCH", &format!("{KV_PATH}/kubevirt")).await;
    assert_kv_write(&r, "5", &[a.clone()]);
    r.ok(&kubevirt("7", Some(vec![a])));
    let r = server
        .expect("PATCH", &format!("{KV_PATH}/kubevirt-b"))
        .await;
    assert_kv_write(&r, "6", &ours);
    r.ok(&new_cr);
    server.monitoring_reads().await;
    server.status_apply("metrics").await;
    server.event().await;
    task.await.unwrap().unwrap();
    server.done(ctx).await;
}
