//! Rollout safety and early injection on a real API server (KUBECONFIG, or kube-apiserver
//! + etcd from KUBEBUILDER_ASSETS):
//! - a virt-handler pod whose `metrics-sidecar` crash-loops (its status written through the
//!   pods/status subresource, as a kubelet would) takes virt-handler's entry out of the
//!   KubeVirt CR and leaves virt-controller's; the policy is Degraded with the container's
//!   reason and last message, a Warning event says so, and the entry stays out until the
//!   policy's spec changes;
//! - a sidecar unready past `spec.rollout.unhealthyTimeout` does the same, not earlier;
//! - a KubeVirt CR that virt-operator is still deploying gets our entries at once, and the
//!   status says KubeVirt is still deploying; one being deleted is not written to.
//!
//! Skips loudly when no server is available.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use kubevirt_metrics_operator::api::{Component, KubeVirt, MetricsSidecarPolicy};
use support::pods::*;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_safety_and_early_injection_against_a_real_api_server() -> anyhow::Result<()> {
    let Some(server) = apiserver::start(
        "operator_rollout::rollout_safety_and_early_injection_against_a_real_api_server",
    )
    .await?
    else {
        return Ok(());
    };
    let client = server.client.clone();
    install_crds(&client).await?;

    eprintln!("e2e scenario: a crash-looping sidecar is rolled back until the spec changes");
    crash_loop_rolls_back(&server).await?;
    eprintln!("e2e scenario: a sidecar unready past spec.rollout.unhealthyTimeout is rolled back");
    unready_past_the_bound(&server).await?;
    eprintln!(
        "e2e scenario: a KubeVirt CR still deploying gets our entries; a deleting one is not written"
    );
    deploying_then_deleting(&server).await?;
    drop(server);
    Ok(())
}

/// Component names of the operator's own entries in the CR, in list order.
fn our_components(kv: &KubeVirt) -> Vec<String> {
    kv.patches()
        .iter()
        .filter(|e| kubevirt_metrics_operator::plan::entry_owner(e).is_some())
        .filter_map(|e| e["resourceName"].as_str().map(str::to_owned))
        .collect()
}

fn condition(policy: &MetricsSidecarPolicy, type_: &str) -> Option<(String, String, String)> {
    policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn policy(client: &Client, ns: &str) -> anyhow::Result<MetricsSidecarPolicy> {
    Ok(get_policy(client, ns, "metrics")
        .await?
        .expect("the policy exists"))
}

/// Sets up a namespace with KubeVirt (Deployed), the workloads, a policy for virt-handler
/// and virt-controller with `rollout`, and the operator; waits for both entries.
async fn injected(
    server: &apiserver::ApiServer,
    prefix: &str,
    rollout: Value,
) -> anyhow::Result<(String, Operator)> {
    let client = &server.client;
    let ns = namespace(client, prefix).await?;
    create_kubevirt(client, &ns, None, "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(
        client,
        &ns,
        "metrics",
        json!({
            "defaults": {"image": IMAGE},
            "components": {"virtHandler": {}, "virtController": {}},
            "rollout": rollout,
        }),
    )
    .await?;
    let operator = start_operator(server, &ns).await?;
    eventually("both entries in the KubeVirt CR", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok((our_components(&kv) == ["virt-handler", "virt-controller"]).then_some(()))
    })
    .await?;
    Ok((ns, operator))
}

/// A virt-handler pod carrying the sidecar exactly as the operator plans it now.
async fn handler_pod(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<k8s_openapi::api::core::v1::Pod> {
    let kv = get_kubevirt(client, ns, "kubevirt").await?;
    let sidecar = planned_sidecar(&policy(client, ns).await?, &kv, Component::VirtHandler)?;
    assert_eq!(sidecar["name"], "metrics-sidecar");
    create_component_pod(client, ns, name, Component::VirtHandler, &sidecar).await
}

async fn crash_loop_rolls_back(server: &apiserver::ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let (ns, operator) = injected(server, "crashloop", json!({})).await?;
    let pod = handler_pod(client, &ns, "virt-handler-e2e01").await?;
    let crash_loop = json!({
        "ready": false, "started": false, "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff",
            "message": "back-off 1m20s restarting failed container=metrics-sidecar pod=virt-handler-e2e01"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
            "message": "listen 0.0.0.0:9443: address already in use",
            "startedAt": now(), "finishedAt": now()}},
    });
    set_pod_status(
        client,
        &ns,
        &pod,
        crash_loop,
        json!([{"type": "Ready", "status": "False", "lastTransitionTime": now()}]),
    )
    .await?;

    // virt-handler's entry goes; virt-controller's stays.
    let kv = eventually("virt-handler's entry removed", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok((our_components(&kv) == ["virt-controller"]).then_some(kv))
    })
    .await?;
    let p = eventually("Degraded with the container's reason", WAIT, || async {
        let p = policy(client, &ns).await?;
        let degraded = condition(&p, "Degraded");
        Ok(degraded
            .is_some_and(|(status, reason, _)| status == "True" && reason == "SidecarUnhealthy")
            .then_some(p))
    })
    .await?;
    let (_, _, message) = condition(&p, "Degraded").unwrap();
    assert!(
        message.contains("sidecar of virt-handler rolled back (CrashLoopBackOff)"),
        "{message}"
    );
    assert!(
        message.contains(&format!("pod {ns}/virt-handler-e2e01")),
        "{message}"
    );
    assert!(
        message.contains("back-off 1m20s restarting failed container"),
        "{message}"
    );
    assert!(
        message.contains(
            "last terminated: Error (exit code 1): listen 0.0.0.0:9443: address already in use"
        ),
        "{message}"
    );
    let status = p.status.clone().unwrap();
    assert_eq!(status.rolled_back.len(), 1);
    assert_eq!(status.rolled_back[0].component, Component::VirtHandler);
    assert_eq!(
        Some(status.rolled_back[0].generation),
        p.metadata.generation
    );
    assert_eq!(status.rolled_back[0].reason, "CrashLoopBackOff");
    assert_eq!(
        status.injected_components.as_deref(),
        Some("virt-controller")
    );
    let handler = status
        .components
        .iter()
        .find(|c| c.component == Component::VirtHandler)
        .unwrap();
    assert!(!handler.injected);

    let warnings = eventually("a Warning event", WAIT, || async {
        let events = policy_events(client, &ns, "metrics", "SidecarRolledBack").await?;
        Ok((!events.is_empty()).then_some(events))
    })
    .await?;
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    let note = warnings[0].note.clone().unwrap_or_default();
    assert!(note.contains("address already in use"), "{note}");

    // virt-operator would now roll virt-handler back to pods without the sidecar.
    delete_pod(client, &ns, "virt-handler-e2e01").await?;

    // No re-injection while the generation holds: a metadata change triggers reconciles.
    let policies = Api::<MetricsSidecarPolicy>::namespaced(client.clone(), &ns);
    let successes = "kubevirt_metrics_operator_reconciles_total{result=\"success\"}";
    let before = operator.metric(successes).await?;
    policies
        .patch(
            "metrics",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"poke": "1"}}})),
        )
        .await?;
    eventually("a reconcile after the poke", WAIT, || async {
        Ok((operator.metric(successes).await? > before).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = get_kubevirt(client, &ns, "kubevirt").await?;
    assert_eq!(
        our_components(&still),
        ["virt-controller"],
        "not re-injected"
    );
    assert_eq!(
        still.resource_version(),
        kv.resource_version(),
        "not written"
    );

    // The spec changes (a fixed image): virt-handler comes back, Degraded clears.
    policies
        .patch(
            "metrics",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"defaults": {"image": "quay.io/kubevirt/metrics-sidecars:v0.1.1"}}})),
        )
        .await?;
    eventually("virt-handler re-injected", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        let mut names = our_components(&kv);
        names.sort();
        Ok((names == ["virt-controller", "virt-handler"]).then_some(()))
    })
    .await?;
    let p = eventually("the rollback record gone", WAIT, || async {
        let p = policy(client, &ns).await?;
        Ok(p.status
            .as_ref()
            .is_some_and(|s| {
                s.observed_generation == p.metadata.generation && s.rolled_back.is_empty()
            })
            .then_some(p))
    })
    .await?;
    assert_eq!(condition(&p, "Degraded").unwrap().0, "False");

    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn unready_past_the_bound(server: &apiserver::ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let (ns, operator) = injected(server, "unready", json!({"unhealthyTimeout": "8s"})).await?;
    let pod = handler_pod(client, &ns, "virt-handler-e2e02").await?;
    let started = now();
    set_pod_status(
        client,
        &ns,
        &pod,
        json!({"ready": false, "started": true, "restartCount": 0,
            "state": {"running": {"startedAt": started}}}),
        json!([{"type": "ContainersReady", "status": "False", "lastTransitionTime": started},
            {"type": "Ready", "status": "False", "lastTransitionTime": started}]),
    )
    .await?;

    // Within the bound: still injected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kv = get_kubevirt(client, &ns, "kubevirt").await?;
    assert_eq!(
        our_components(&kv),
        ["virt-handler", "virt-controller"],
        "unready for 2s of 8s: kept"
    );

    // Past it: rolled back, with nothing else happening to trigger a reconcile.
    eventually("virt-handler's entry removed after 8s", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok((our_components(&kv) == ["virt-controller"]).then_some(()))
    })
    .await?;
    let p = eventually("Degraded", WAIT, || async {
        let p = policy(client, &ns).await?;
        Ok((condition(&p, "Degraded").is_some_and(|(s, _, _)| s == "True")).then_some(p))
    })
    .await?;
    let (_, reason, message) = condition(&p, "Degraded").unwrap();
    assert_eq!(reason, "SidecarUnhealthy");
    assert!(
        message.contains("sidecar of virt-handler rolled back (Unready)"),
        "{message}"
    );
    assert!(
        message.contains("(spec.rollout.unhealthyTimeout 8s)"),
        "{message}"
    );
    assert!(
        !policy_events(client, &ns, "metrics", "SidecarRolledBack")
            .await?
            .is_empty()
    );
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn deploying_then_deleting(server: &apiserver::ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "deploying").await?;
    // virt-operator has only just accepted the CR: phase Deploying, no workloads yet.
    create_kubevirt(client, &ns, None, "Deploying").await?;
    create_policy(
        client,
        &ns,
        "metrics",
        json!({"defaults": {"image": IMAGE}, "components": {"virtHandler": {}}}),
    )
    .await?;
    let operator = start_operator(server, &ns).await?;
    eventually("our entry in a Deploying CR", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok((our_components(&kv) == ["virt-handler"]).then_some(()))
    })
    .await?;
    let p = eventually("status: KubeVirt still deploying", WAIT, || async {
        let p = policy(client, &ns).await?;
        Ok((ready_reason(&p).as_deref() == Some("KubeVirtDeploying")).then_some(p))
    })
    .await?;
    let (status, _, message) = condition(&p, "Progressing").unwrap();
    assert_eq!(status, "True");
    assert_eq!(
        message,
        format!(
            "KubeVirt CR {ns}/kubevirt is still deploying (status.phase Deploying): the sidecar entries are written and virt-operator applies them as it deploys"
        )
    );

    // virt-operator finishes: the status moves on to the rollout.
    create_workloads(client, &ns).await?;
    set_phase(client, &ns, "kubevirt", "Deployed").await?;
    eventually("RolloutInProgress once Deployed", WAIT, || async {
        let p = policy(client, &ns).await?;
        Ok((ready_reason(&p).as_deref() == Some("RolloutInProgress")).then_some(()))
    })
    .await?;

    // KubeVirt is being torn down: a policy change writes nothing to the CR.
    set_phase(client, &ns, "kubevirt", "Deleting").await?;
    eventually("KubeVirtDeleting", WAIT, || async {
        let p = policy(client, &ns).await?;
        Ok((ready_reason(&p).as_deref() == Some("KubeVirtDeleting")).then_some(()))
    })
    .await?;
    let rv = get_kubevirt(client, &ns, "kubevirt")
        .await?
        .resource_version();
    Api::<MetricsSidecarPolicy>::namespaced(client.clone(), &ns)
        .patch(
            "metrics",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"defaults": {"image": "quay.io/kubevirt/metrics-sidecars:v0.2.0"}}})),
        )
        .await?;
    eventually("the new generation observed", WAIT, || async {
        let p = policy(client, &ns).await?;
        Ok(p.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == p.metadata.generation)
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kv = get_kubevirt(client, &ns, "kubevirt").await?;
    assert_eq!(
        kv.resource_version(),
        rv,
        "a Deleting KubeVirt CR is not written to"
    );
    assert!(
        !kv.patches()[0]["patch"]
            .as_str()
            .unwrap_or_default()
            .contains("v0.2.0"),
        "the old entry is left as it was"
    );
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}
