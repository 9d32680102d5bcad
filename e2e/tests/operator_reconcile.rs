//! The operator against a real Kubernetes API server (KUBECONFIG, or kube-apiserver + etcd
//! from KUBEBUILDER_ASSETS): the real KubeVirt v1.9.0 CRD with its schema, our CRD with its
//! CEL rules, real merge-patch / server-side-apply semantics, the status subresource and
//! resourceVersion conflicts. Skips loudly when no server is available.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cloned_ref_to_slice_refs
)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use kubevirt_metrics_operator::api::{KubeVirt, MetricsSidecarPolicy};
use kubevirt_metrics_operator::controller::metrics::{Metrics, WriteTarget};
use kubevirt_metrics_operator::controller::{Context, Settings, apply};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn foreign() -> Value {
    // Whitespace inside the JSON string: it must come back byte for byte.
    json!({"resourceName": "virt-api", "resourceType": "Deployment", "type": "strategic",
        "patch": "{ \"spec\" : { \"template\" : { \"metadata\" : { \"labels\" : { \"team\" : \"infra\" } } } } }"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_scenarios_against_a_real_api_server() -> anyhow::Result<()> {
    let Some(server) =
        apiserver::start("operator_reconcile::operator_scenarios_against_a_real_api_server")
            .await?
    else {
        return Ok(());
    };
    let client = server.client.clone();
    install_crds(&client).await?;

    eprintln!("e2e scenario: inject, no-op, update, delete");
    inject_update_delete(&server).await?;
    eprintln!("e2e scenario: 409 conflict then retry");
    conflict_then_retry(&server).await?;
    eprintln!("e2e scenario: paused");
    paused(&server).await?;
    eprintln!("e2e scenario: second policy loses, then takes over");
    second_policy(&server).await?;
    eprintln!("e2e scenario: waiting for KubeVirt");
    waiting_for_kubevirt(&server).await?;
    eprintln!("e2e scenario: CEL rejects an invalid policy");
    cel_rejects(&client).await?;
    drop(server);
    Ok(())
}

async fn inject_update_delete(server: &apiserver::ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "inject").await?;
    let kept = foreign();
    create_kubevirt(client, &ns, Some(vec![kept.clone()]), "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(
        client,
        &ns,
        "metrics",
        json!({
            "defaults": {"image": IMAGE},
            "components": {"virtHandler": {}, "virtController": {}, "virtOperator": {}},
        }),
    )
    .await?;
    let operator = start_operator(server, &ns).await?;

    // Injection: the foreign entry first and unchanged, then ours.
    let kv = eventually("our entries in the KubeVirt CR", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok((kv.patches().len() == 3).then_some(kv))
    })
    .await?;
    let policy = get_policy(client, &ns, "metrics").await?.expect("policy");
    let ours = planned_entries(&policy, &kv)?;
    assert_eq!(
        kv.patches()[0],
        kept,
        "foreign entry kept in place, byte for byte"
    );
    assert_eq!(&kv.patches()[1..], ours.as_slice());
    assert!(
        policy
            .finalizers()
            .iter()
            .any(|f| f == "metrics.kubevirt.io/cleanup")
    );

    // virt-operator: our container by server-side apply, under our field manager.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let vo = eventually("the sidecar in virt-operator", WAIT, || async {
        let d = deployments.get("virt-operator").await?;
        let has = d
            .spec
            .template
            .spec
            .as_ref()
            .is_some_and(|s| s.containers.iter().any(|c| c.name == "metrics-sidecar"));
        Ok(has.then_some(d))
    })
    .await?;
    let containers = &vo.spec.template.spec.as_ref().expect("pod spec").containers;
    assert_eq!(
        containers[0].name, "virt-operator",
        "the component keeps index 0"
    );
    assert!(vo.managed_fields().iter().any(|m| m.manager.as_deref()
        == Some("kubevirt-metrics-operator")
        && m.operation.as_deref() == Some("Apply")));

    // Status through the status subresource.
    let policy = eventually("status with observedGeneration", WAIT, || async {
        let p = get_policy(client, &ns, "metrics").await?.expect("policy");
        Ok(p.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == p.metadata.generation)
            .then_some(p))
    })
    .await?;
    let status = policy.status.clone().expect("status");
    assert_eq!(
        status.injection_method.map(|m| m.as_str()),
        Some("CustomizeComponents")
    );
    assert_eq!(status.components.len(), 3);
    // Nothing runs virt-operator here, so the DaemonSet never gets the sidecar: rolling out.
    assert_eq!(ready_reason(&policy).as_deref(), Some("RolloutInProgress"));

    // Health, readiness, metrics.
    assert_eq!(operator.http_get("/healthz").await?.0, 200);
    assert_eq!(operator.http_get("/readyz").await?.0, 200);
    assert_eq!(
        operator.metric("kubevirt_metrics_operator_leader").await?,
        1.0
    );
    assert_eq!(
        operator
            .metric("kubevirt_metrics_operator_patch_writes_total{target=\"kubevirt\"}")
            .await?,
        1.0
    );

    // No-op: poke the policy (a label change triggers a reconcile); nothing is written.
    let kv_rv = get_kubevirt(client, &ns, "kubevirt")
        .await?
        .resource_version();
    let policies = Api::<MetricsSidecarPolicy>::namespaced(client.clone(), &ns);
    policies
        .patch(
            "metrics",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"poke": "1"}}})),
        )
        .await?;
    let reconciles_before = operator
        .metric("kubevirt_metrics_operator_reconciles_total{result=\"success\"}")
        .await?;
    eventually("a reconcile after the poke", WAIT, || async {
        let now = operator
            .metric("kubevirt_metrics_operator_reconciles_total{result=\"success\"}")
            .await?;
        Ok((now > reconciles_before).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        get_kubevirt(client, &ns, "kubevirt")
            .await?
            .resource_version(),
        kv_rv,
        "no-op: the KubeVirt CR is not written"
    );
    assert_eq!(
        operator
            .metric("kubevirt_metrics_operator_patch_writes_total{target=\"kubevirt\"}")
            .await?,
        1.0
    );
    assert_eq!(
        operator
            .metric("kubevirt_metrics_operator_patch_writes_total{target=\"deployment\"}")
            .await?,
        1.0
    );

    // Update: new image, virt-controller off.
    policies
        .patch(
            "metrics",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "defaults": {"image": "quay.io/kubevirt/metrics-sidecars:v0.2.0"},
                "components": {"virtController": {"enabled": false}},
            }})),
        )
        .await?;
    let kv = eventually("the updated entries", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok((kv.patches().len() == 2
            && kv.patches()[1]["patch"]
                .as_str()
                .is_some_and(|p| p.contains("v0.2.0")))
        .then_some(kv))
    })
    .await?;
    let policy = get_policy(client, &ns, "metrics").await?.expect("policy");
    assert_eq!(kv.patches()[0], kept);
    assert_eq!(
        &kv.patches()[1..],
        planned_entries(&policy, &kv)?.as_slice()
    );

    // Deletion: exactly our traces go, then the policy.
    policies.delete("metrics", &DeleteParams::default()).await?;
    eventually("the policy gone", WAIT, || async {
        Ok(get_policy(client, &ns, "metrics")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let kv = get_kubevirt(client, &ns, "kubevirt").await?;
    assert_eq!(kv.patches(), &[kept][..], "only the foreign entry is left");
    let vo = deployments.get("virt-operator").await?;
    let containers = &vo.spec.template.spec.as_ref().expect("pod spec").containers;
    assert!(
        containers.iter().all(|c| c.name != "metrics-sidecar"),
        "sidecar removed from virt-operator"
    );
    assert!(
        !vo.spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .is_some_and(|a| a.contains_key("metrics.kubevirt.io/sidecar-policy"))
    );

    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn conflict_then_retry(server: &apiserver::ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "conflict").await?;
    let stale = create_kubevirt(client, &ns, Some(vec![foreign()]), "Deployed").await?;
    let policy = policy_object(
        "metrics",
        &ns,
        json!({"defaults": {"image": IMAGE}, "components": {"virtHandler": {}}}),
    )?;
    // Someone writes the CR after our copy was read.
    let concurrent = json!({"resourceName": "virt-controller", "resourceType": "Deployment", "type": "merge",
        "patch": "{\"metadata\":{\"labels\":{\"x\":\"y\"}}}"});
    let kvs = Api::<KubeVirt>::namespaced(client.clone(), &ns);
    kvs.patch(
        "kubevirt",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"customizeComponents": {"patches": [foreign(), concurrent]}}}),
        ),
    )
    .await?;

    let metrics = std::sync::Arc::new(Metrics::new()?);
    // The write as the operator's ServiceAccount makes it, with config/rbac's rights.
    let operator_client = rbac::operator_client(client, &server.kubeconfig, &ns).await?;
    let ctx = Context::new(operator_client, metrics.clone(), Settings::default(), None);
    let plan = kubevirt_metrics_operator::plan::plan(&policy, Some(&stale), &Default::default())?;
    let written = apply::kubevirt(&ctx, &stale, &plan).await?;
    assert!(written.wrote);
    assert_eq!(
        metrics.conflicts(WriteTarget::KubeVirt),
        1,
        "the stale resourceVersion was refused once"
    );
    let kv = get_kubevirt(client, &ns, "kubevirt").await?;
    let mut want = vec![foreign(), concurrent_entry()];
    want.extend(plan.entry_values());
    assert_eq!(
        kv.patches(),
        want.as_slice(),
        "the concurrent entry survived"
    );
    delete_namespace(client, &ns).await;
    Ok(())
}

fn concurrent_entry() -> Value {
    json!({"resourceName": "virt-controller", "resourceType": "Deployment", "type": "merge",
        "patch": "{\"metadata\":{\"labels\":{\"x\":\"y\"}}}"})
}

async fn paused(server: &apiserver::ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "paused").await?;
    let kv = create_kubevirt(client, &ns, Some(vec![foreign()]), "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(client, &ns, "metrics", json!({"paused": true, "defaults": {"image": IMAGE}, "components": {"virtHandler": {}, "virtOperator": {}}})).await?;
    let operator = start_operator(server, &ns).await?;
    let policy = eventually("status Paused", WAIT, || async {
        let p = get_policy(client, &ns, "metrics").await?.expect("policy");
        Ok((ready_reason(&p).as_deref() == Some("Paused")).then_some(p))
    })
    .await?;
    assert!(policy.finalizers().is_empty(), "no finalizer while paused");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        get_kubevirt(client, &ns, "kubevirt")
            .await?
            .resource_version(),
        kv.resource_version()
    );
    let vo = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("virt-operator")
        .await?;
    assert_eq!(
        vo.spec.template.spec.as_ref().map(|s| s.containers.len()),
        Some(1)
    );
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn second_policy(server: &apiserver::ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "second").await?;
    create_kubevirt(client, &ns, None, "Deployed").await?;
    create_workloads(client, &ns).await?;
    let spec = json!({"defaults": {"image": IMAGE}, "components": {"virtHandler": {}}});
    create_policy(client, &ns, "a-first", spec.clone()).await?;
    // Created in the same second is possible: the name then decides, and "a-first" < "b-second".
    create_policy(client, &ns, "b-second", spec).await?;
    let operator = start_operator(server, &ns).await?;
    let owner_of = |kv: &KubeVirt| -> Vec<String> {
        kv.patches()
            .iter()
            .filter_map(kubevirt_metrics_operator::plan::entry_owner)
            .collect()
    };
    eventually("a-first injected", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok((owner_of(&kv) == vec![format!("{ns}/a-first")]).then_some(()))
    })
    .await?;
    let loser = eventually("b-second reports the conflict", WAIT, || async {
        let p = get_policy(client, &ns, "b-second").await?.expect("policy");
        Ok((ready_reason(&p).as_deref() == Some("ConflictingPolicy")).then_some(p))
    })
    .await?;
    assert!(loser.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True")
    }));

    // The winner goes: its entries go, and the other policy takes over.
    Api::<MetricsSidecarPolicy>::namespaced(client.clone(), &ns)
        .delete("a-first", &DeleteParams::default())
        .await?;
    eventually("b-second took over", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok((owner_of(&kv) == vec![format!("{ns}/b-second")]).then_some(()))
    })
    .await?;
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn waiting_for_kubevirt(server: &apiserver::ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "waiting").await?;
    create_workloads(client, &ns).await?;
    create_policy(
        client,
        &ns,
        "metrics",
        json!({"defaults": {"image": IMAGE}, "components": {"virtHandler": {}}}),
    )
    .await?;
    let operator = start_operator(server, &ns).await?;
    let reason_is = |want: &'static str| {
        let ns = ns.clone();
        move || {
            let ns = ns.clone();
            async move {
                let p = get_policy(client, &ns, "metrics").await?.expect("policy");
                Ok((ready_reason(&p).as_deref() == Some(want)).then_some(()))
            }
        }
    };
    eventually("KubeVirtNotFound", WAIT, reason_is("KubeVirtNotFound")).await?;
    // Written while virt-operator is still deploying, so virt-handler rolls out once.
    create_kubevirt(client, &ns, None, "Deploying").await?;
    eventually("entries while Deploying", WAIT, || async {
        Ok((get_kubevirt(client, &ns, "kubevirt").await?.patches().len() == 1).then_some(()))
    })
    .await?;
    eventually("KubeVirtDeploying", WAIT, reason_is("KubeVirtDeploying")).await?;
    set_phase(client, &ns, "kubevirt", "Deployed").await?;
    eventually(
        "RolloutInProgress once Deployed",
        WAIT,
        reason_is("RolloutInProgress"),
    )
    .await?;
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn cel_rejects(client: &Client) -> anyhow::Result<()> {
    let ns = namespace(client, "cel").await?;
    let err = create_policy(
        client,
        &ns,
        "bad",
        json!({"components": {"virtHandler": {}}}),
    )
    .await;
    let message = format!(
        "{:#}",
        err.expect_err("a policy with an enabled component and no image is rejected")
    );
    assert!(message.contains("image"), "{message}");
    let err = create_policy(
        client,
        &ns,
        "bad-port",
        json!({"defaults": {"image": IMAGE, "port": 8443}}),
    )
    .await;
    assert!(err.is_err(), "port 8443 is rejected");
    delete_namespace(client, &ns).await;
    Ok(())
}

/// Always runs: the harness's generated CA, serving certificate, service-account key and
/// kubeconfig load into a kube client configuration (the part of the local API server
/// setup that needs no binaries).
#[tokio::test]
async fn harness_certificates_and_kubeconfig_are_well_formed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    apiserver::self_check(dir.path()).await?;
    Ok(())
}
