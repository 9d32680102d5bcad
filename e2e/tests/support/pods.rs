//! Pods of the component workloads, made by hand: a local API server has no scheduler,
//! kubelet or controllers, so the tests create the pods a DaemonSet/Deployment would have,
//! bound to a node that does not exist (they stay Pending), and write their status through
//! the status subresource as a kubelet would.

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use kubevirt_metrics_operator::api::{Component, KubeVirt, MetricsSidecarPolicy};

/// The node every hand-made pod is bound to (no Node object: nothing schedules or runs it).
pub const NODE: &str = "kmo-e2e-node";

/// The sidecar container the operator plans for `component` (name, image, args are what
/// rollout safety compares with a pod's).
pub fn planned_sidecar(
    policy: &MetricsSidecarPolicy,
    kv: &KubeVirt,
    component: Component,
) -> anyhow::Result<Value> {
    let plan = kubevirt_metrics_operator::plan::plan(policy, Some(kv), &Default::default())?;
    plan.sidecars
        .into_iter()
        .find(|s| s.component == component)
        .map(|s| s.container)
        .with_context(|| format!("{component} is not in the plan"))
}

/// The workload's pod selector labels and its own (first) container, from the server.
async fn workload_template(
    client: &Client,
    ns: &str,
    component: Component,
) -> anyhow::Result<(Value, Value)> {
    let name = component.workload_name();
    let (selector, template) = if component.resource_type() == "DaemonSet" {
        let ds = Api::<DaemonSet>::namespaced(client.clone(), ns)
            .get(name)
            .await?;
        (ds.spec.selector, ds.spec.template)
    } else {
        let d = Api::<Deployment>::namespaced(client.clone(), ns)
            .get(name)
            .await?;
        (d.spec.selector, d.spec.template)
    };
    let labels = serde_json::to_value(selector.match_labels.unwrap_or_default())?;
    let first = template
        .spec
        .and_then(|s| s.containers.into_iter().next())
        .with_context(|| format!("{name} has no container"))?;
    Ok((
        labels,
        json!({"name": first.name, "image": first.image.unwrap_or_default()}),
    ))
}

/// The `default` ServiceAccount, which pod admission needs when the ServiceAccount plugin
/// is on (a local API server has no controller creating it).
async fn default_service_account(client: &Client, ns: &str) -> anyhow::Result<()> {
    let api = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    if api.get_opt("default").await?.is_none() {
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
        api.create(&PostParams::default(), &sa).await?;
    }
    Ok(())
}

/// A pod of `component`'s workload, labelled with the workload's selector, running the
/// component's container and `sidecar` (name, image, args), bound to [`NODE`].
pub async fn create_component_pod(
    client: &Client,
    ns: &str,
    name: &str,
    component: Component,
    sidecar: &Value,
) -> anyhow::Result<Pod> {
    default_service_account(client, ns).await?;
    let (labels, main) = workload_template(client, ns, component).await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "nodeName": NODE,
            "automountServiceAccountToken": false,
            "containers": [
                main,
                {"name": sidecar["name"], "image": sidecar["image"], "args": sidecar["args"]},
            ],
        },
    }))?;
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {name}"))
}

/// Writes the pod's status as a kubelet would: phase Running, the component's container
/// ready, the sidecar's status as given (`name`, `image`, `imageID` filled in), and the
/// pod conditions `conditions`.
pub async fn set_pod_status(
    client: &Client,
    ns: &str,
    pod: &Pod,
    sidecar_status: Value,
    conditions: Value,
) -> anyhow::Result<Pod> {
    let containers = &pod.spec.as_ref().context("pod without spec")?.containers;
    let (main, sidecar) = (&containers[0], &containers[1]);
    let now = now();
    let mut sidecar_status = sidecar_status;
    sidecar_status["name"] = json!(sidecar.name);
    sidecar_status["image"] = json!(sidecar.image);
    sidecar_status["imageID"] = json!("");
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": "10.0.0.10",
        "startTime": now,
        "conditions": conditions,
        "containerStatuses": [
            {"name": main.name, "image": main.image, "imageID": "", "ready": true,
                "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}}},
            sidecar_status,
        ],
    }});
    let name = pod.metadata.name.as_deref().context("pod without name")?;
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("writing the status of pod {name}"))
}

pub async fn delete_pod(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default().grace_period(0))
        .await?;
    Ok(())
}

/// The current time as the API server writes it (RFC 3339, seconds).
pub fn now() -> String {
    let secs = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The events.k8s.io Events about the policy `policy` with `reason`.
pub async fn policy_events(
    client: &Client,
    ns: &str,
    policy: &str,
    reason: &str,
) -> anyhow::Result<Vec<Event>> {
    Ok(Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(policy))
        })
        .collect())
}
