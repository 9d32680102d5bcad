//! Rollout safety against a scripted API server: a crash-looping sidecar takes exactly its
//! component's entry out, the policy says why (status and a Warning event), the component
//! stays out while the policy's generation holds, and comes back when the spec changes.

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

use kubevirt_metrics_operator::api::{KubeVirt, MetricsSidecarPolicy};
use kubevirt_metrics_operator::controller::metrics::WriteTarget;

/// The sidecar container the plan gives virt-handler for `policy`.
fn planned_sidecar(policy: &Value) -> Value {
    let policy: MetricsSidecarPolicy = serde_json::from_value(policy.clone()).unwrap();
    let kv: KubeVirt = serde_json::from_value(kubevirt("1", None)).unwrap();
    let plan =
        kubevirt_metrics_operator::plan::plan(&policy, Some(&kv), &Default::default()).unwrap();
    plan.sidecars[0].container.clone()
}

/// A virt-handler pod running the planned sidecar, which crash-loops.
fn crash_looping_pod(policy: &Value) -> Value {
    let sidecar = planned_sidecar(policy);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "virt-handler-x7k2p", "namespace": NS,
            "labels": {"kubevirt.io": "virt-handler"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": "node-1", "containers": [
            {"name": "virt-handler", "image": "quay.io/kubevirt/virt-handler:v1.9.0"},
            {"name": sidecar["name"], "image": sidecar["image"], "args": sidecar["args"]},
        ]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "virt-handler", "ready": true, "restartCount": 0, "image": "", "imageID": "",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
            {"name": "metrics-sidecar", "ready": false, "restartCount": 5, "image": "", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff",
                    "message": "back-off 2m40s restarting failed container=metrics-sidecar"}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                    "message": "error: --tls-cert: no such file"}}},
        ]},
    })
}

fn kv_patch_path() -> String {
    format!("{KV_PATH}/kubevirt")
}

fn with_generation(mut policy: Value, generation: i64) -> Value {
    policy["metadata"]["generation"] = json!(generation);
    policy
}

#[tokio::test]
async fn a_crash_looping_sidecar_takes_out_its_component_only_and_says_why() {
    let (ctx, mut server) = setup();
    let p = policy("metrics", CREATED);
    let ours = our_entries(&p);
    let (handler_entry, controller_entry) = (ours[0].clone(), ours[1].clone());
    assert_eq!(handler_entry["resourceName"], "virt-handler");
    let foreign = foreign_virt_api();
    let before = vec![foreign.clone(), handler_entry, controller_entry.clone()];
    let task = spawn_reconcile(&p, &ctx);

    server
        .lists(&[kubevirt("5", Some(before))], &[p.clone()])
        .await;
    server
        .workloads(&[virt_handler(true)], &deployments(true))
        .await;
    server.pods(&[crash_looping_pod(&p)]).await;

    let r = server.expect("PATCH", &kv_patch_path()).await;
    r.assert_merge_patch();
    let body = r.body.clone().unwrap();
    assert_eq!(body["metadata"]["resourceVersion"], "5");
    let after = vec![foreign, controller_entry];
    assert_eq!(
        body["spec"]["customizeComponents"]["patches"],
        Value::Array(after.clone()),
        "virt-handler's entry out, virt-controller's and the foreign one kept byte for byte"
    );
    r.ok(&kubevirt("6", Some(after)));

    server.monitoring_reads().await;
    let status = server.status_apply("metrics").await;
    let message = "sidecar of virt-handler rolled back (CrashLoopBackOff): pod kubevirt/virt-handler-x7k2p, container metrics-sidecar: back-off 2m40s restarting failed container=metrics-sidecar; last terminated: Error (exit code 2): error: --tls-cert: no such file. It stays out until the policy's spec changes (generation 1)";
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "SidecarUnhealthy");
    assert_eq!(degraded["message"], message);
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Ready")["reason"], "SidecarUnhealthy");
    let record = &status["rolledBack"][0];
    assert_eq!(record["component"], "virt-handler");
    assert_eq!(record["generation"], 1);
    assert_eq!(record["pod"], "kubevirt/virt-handler-x7k2p");
    assert_eq!(record["reason"], "CrashLoopBackOff");
    assert_eq!(status["rolledBack"].as_array().unwrap().len(), 1);
    assert_eq!(status["injectedComponents"], "virt-controller");
    assert_eq!(status["components"][0]["injected"], false);
    assert!(
        status["components"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("sidecar rolled back (CrashLoopBackOff): pod kubevirt/virt-handler-x7k2p")
    );

    let (type_, reason, note) = server.event().await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Warning", "SidecarRolledBack")
    );
    assert!(note.contains("error: --tls-cert: no such file"), "{note}");
    // virt-controller is rolled out and virt-handler has nothing left to wait for: resync.
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(ctx.metrics.writes(WriteTarget::KubeVirt), 1);
    server.done(ctx).await;
}

/// The status the first test ends with, as the server would hold it.
async fn rolled_back_status(p: &Value) -> Value {
    let (ctx, mut server) = setup();
    let ours = our_entries(p);
    let task = spawn_reconcile(p, &ctx);
    server
        .lists(&[kubevirt("5", Some(ours.clone()))], &[p.clone()])
        .await;
    server
        .workloads(&[virt_handler(true)], &deployments(true))
        .await;
    server.pods(&[crash_looping_pod(p)]).await;
    let r = server.expect("PATCH", &kv_patch_path()).await;
    r.ok(&kubevirt("6", Some(ours[1..].to_vec())));
    server.monitoring_reads().await;
    let status = server.status_apply("metrics").await;
    server.event().await;
    task.await.unwrap().unwrap();
    server.done(ctx).await;
    status
}

#[tokio::test]
async fn no_reinjection_while_the_generation_holds_then_reinjected_when_the_spec_changes() {
    let mut p = policy("metrics", CREATED);
    let status = rolled_back_status(&p).await;
    p["status"] = status.clone();
    let ours = our_entries(&p);

    // Same generation; the crashing pod is gone (virt-operator rolled virt-handler back):
    // nothing is written, not even the status.
    let (ctx, mut server) = setup();
    let task = spawn_reconcile(&p, &ctx);
    server
        .reads(&[kubevirt("6", Some(ours[1..].to_vec()))], &[p.clone()])
        .await;
    server.monitoring_reads().await;
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    server.done(ctx).await;

    // The spec changed (generation 2): virt-handler's entry comes back, the record goes.
    let p = with_generation(p, 2);
    let (ctx, mut server) = setup();
    let task = spawn_reconcile(&p, &ctx);
    server
        .reads(&[kubevirt("6", Some(ours[1..].to_vec()))], &[p.clone()])
        .await;
    let r = server.expect("PATCH", &kv_patch_path()).await;
    // Our entry in place stays where it is; the returning one is appended (virt-operator
    // applies patches sorted by length, so order among them does not matter).
    let back = vec![ours[1].clone(), ours[0].clone()];
    assert_eq!(
        r.body.clone().unwrap()["spec"]["customizeComponents"]["patches"],
        Value::Array(back.clone()),
        "virt-handler re-injected"
    );
    r.ok(&kubevirt("7", Some(back)));
    server.monitoring_reads().await;
    let status = server.status_apply("metrics").await;
    assert!(status.get("rolledBack").is_none(), "{status:#}");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    assert_eq!(status["injectedComponents"], "virt-handler,virt-controller");
    let (type_, reason, _) = server.event().await;
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Injected"));
    task.await.unwrap().unwrap();
    server.done(ctx).await;
}
