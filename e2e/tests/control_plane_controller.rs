//! virt-controller-metrics against a real Kubernetes API server (KUBECONFIG, or
//! kube-apiserver + etcd from KUBEBUILDER_ASSETS): the real KubeVirt v1.9.0 CRDs installed,
//! the objects of `testdata/controller/cluster.yaml` created through the API (statuses
//! through the status subresource), the sidecar run in-process in full mode and scraped over
//! HTTP. Its series for our namespaces must equal the pure render of the same objects; then
//! the Lease moves to another pod and the cluster families disappear. Skips loudly when no
//! server is available.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use kubevirt_metrics_collectors::controller::families::{self};
use kubevirt_metrics_collectors::controller::store::ClusterState;
use kubevirt_metrics_collectors::controller::{ControllerCollector, ControllerOptions};
use kubevirt_metrics_collectors::core::component;
use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::core::metric::Family;
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_flags::{CommonArgs, Mode};
use support::*;

const ME: &str = "e2e-virt-controller-a";
const WAIT: Duration = Duration::from_secs(60);

/// (kind, group, version, plural, namespaced, has status subresource)
fn resource(kind: &str) -> Option<(&'static str, &'static str, &'static str, bool, bool)> {
    Some(match kind {
        "VirtualMachine" => ("kubevirt.io", "v1", "virtualmachines", true, true),
        // KubeVirt's VMI CRD has no status subresource: the status travels with the object.
        "VirtualMachineInstance" => ("kubevirt.io", "v1", "virtualmachineinstances", true, false),
        "VirtualMachineInstanceMigration" => (
            "kubevirt.io",
            "v1",
            "virtualmachineinstancemigrations",
            true,
            true,
        ),
        "PersistentVolumeClaim" => ("", "v1", "persistentvolumeclaims", true, true),
        "VirtualMachineInstancetype" => (
            "instancetype.kubevirt.io",
            "v1beta1",
            "virtualmachineinstancetypes",
            true,
            false,
        ),
        "VirtualMachineClusterInstancetype" => (
            "instancetype.kubevirt.io",
            "v1beta1",
            "virtualmachineclusterinstancetypes",
            false,
            false,
        ),
        "VirtualMachinePreference" => (
            "instancetype.kubevirt.io",
            "v1beta1",
            "virtualmachinepreferences",
            true,
            false,
        ),
        "VirtualMachineClusterPreference" => (
            "instancetype.kubevirt.io",
            "v1beta1",
            "virtualmachineclusterpreferences",
            false,
            false,
        ),
        "ControllerRevision" => ("apps", "v1", "controllerrevisions", true, false),
        "Pod" => ("", "v1", "pods", true, true),
        "VirtualMachineSnapshot" => (
            "snapshot.kubevirt.io",
            "v1beta1",
            "virtualmachinesnapshots",
            true,
            true,
        ),
        "ConfigMap" => ("", "v1", "configmaps", true, false),
        "KubeVirt" => ("kubevirt.io", "v1", "kubevirts", true, true),
        _ => return None,
    })
}

/// The fixture moved into fresh namespaces, cluster-scoped names made unique, and the few
/// fields a real API server requires (containers, access modes) filled in.
fn rewrite(mut doc: Value, namespaces: &[(&str, String)], suffix: &str) -> Value {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    if let Some(ns) = doc["metadata"]["namespace"].as_str()
        && let Some((_, new)) = namespaces.iter().find(|(old, _)| *old == ns)
    {
        doc["metadata"]["namespace"] = json!(new);
    }
    let cluster_scoped = matches!(
        kind.as_str(),
        "VirtualMachineClusterInstancetype" | "VirtualMachineClusterPreference"
    );
    if cluster_scoped {
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        doc["metadata"]["name"] = json!(format!("{name}-{suffix}"));
    }
    let rename = |v: &mut Value| {
        if let Some(name) = v.as_str() {
            *v = json!(format!("{name}-{suffix}"));
        }
    };
    if kind == "VirtualMachine" {
        for matcher in ["instancetype", "preference"] {
            let m = &mut doc["spec"][matcher];
            let kind = m["kind"].as_str().unwrap_or_default().to_ascii_lowercase();
            if m.is_object() && (kind.is_empty() || kind.contains("cluster")) {
                rename(&mut m["name"]);
            }
        }
    }
    if kind == "VirtualMachineInstance" {
        for key in [
            "kubevirt.io/cluster-instancetype-name",
            "kubevirt.io/cluster-preference-name",
        ] {
            rename(&mut doc["metadata"]["annotations"][key]);
        }
        if let Some(annotations) = doc["metadata"]["annotations"].as_object_mut() {
            annotations.retain(|_, v| !v.is_null());
        }
    }
    if kind == "Pod" && doc["spec"]["containers"].is_null() {
        doc["spec"]["containers"] =
            json!([{"name": "compute", "image": "quay.io/kubevirt/virt-launcher:v1.9.0"}]);
    }
    if kind == "PersistentVolumeClaim" && doc["spec"]["accessModes"].is_null() {
        doc["spec"]["accessModes"] = json!(["ReadWriteOnce"]);
    }
    doc
}

async fn create(client: &Client, doc: &Value) -> anyhow::Result<()> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (group, version, plural, namespaced, has_status) =
        resource(kind).with_context(|| format!("unknown kind {kind}"))?;
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let api: Api<DynamicObject> = if namespaced {
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let mut body = doc.clone();
    if let Some(meta) = body["metadata"].as_object_mut() {
        meta.remove("uid");
        meta.remove("creationTimestamp");
        meta.remove("generation");
        meta.remove("ownerReferences");
    }
    let name = body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let object: DynamicObject = serde_json::from_value(body.clone())?;
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {kind} {name}"))?;
    if has_status && !doc["status"].is_null() {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": doc["status"]})),
        )
        .await
        .with_context(|| format!("setting the status of {kind} {name}"))?;
    }
    Ok(())
}

async fn set_holder(client: &Client, ns: &str, holder: &str) -> anyhow::Result<()> {
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "virt-controller", "namespace": ns},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}
    }))?;
    Api::<Lease>::namespaced(client.clone(), ns)
        .patch(
            "virt-controller",
            &PatchParams::apply("kmo-e2e").force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}

/// The families, restricted to series of `namespaces` (a real cluster has other objects).
fn ours(families: Vec<Family>, namespaces: &BTreeSet<String>) -> Vec<Family> {
    families
        .into_iter()
        .filter(|f| f.name.starts_with("kubevirt_vm"))
        .filter(|f| !f.name.starts_with("kubevirt_vmi_migrations_in_"))
        .map(|mut f| {
            f.samples.retain(|s| {
                s.labels
                    .iter()
                    .any(|(n, v)| n == "namespace" && namespaces.contains(v.as_str()))
            });
            f
        })
        .collect()
}

async fn scrape(url: &str) -> anyhow::Result<Vec<Family>> {
    let body = reqwest::get(url).await?.text().await?;
    Ok(component::parse(&body)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_sidecar_against_a_real_api_server() -> anyhow::Result<()> {
    let Some(server) = apiserver::start("controller_sidecar_against_a_real_api_server").await?
    else {
        return Ok(());
    };
    let client = server.client.clone();
    install_crds(&client).await?;
    let kubevirt_ns = namespace(&client, "cp-kv").await?;
    let tenant_a = namespace(&client, "cp-a").await?;
    let tenant_b = namespace(&client, "cp-b").await?;
    let suffix = tenant_a.rsplit('-').next().unwrap_or("x").to_owned();
    let mapping = [
        ("kubevirt", kubevirt_ns.clone()),
        ("tenant-a", tenant_a.clone()),
        ("tenant-b", tenant_b.clone()),
    ];
    let docs: Vec<Value> = documents("testdata/controller/cluster.yaml")?
        .into_iter()
        .map(|d| rewrite(d, &mapping, &suffix))
        .collect();
    for doc in &docs {
        create(&client, doc).await?;
    }
    set_holder(&client, &kubevirt_ns, ME).await?;

    // What the objects render to, computed purely, as read back from the API server (which
    // assigned UIDs and timestamps of its own).
    let collector = ControllerCollector::new(
        client.clone(),
        ControllerOptions {
            namespace: kubevirt_ns.clone(),
            identity: ME.to_owned(),
            leader_lease: "virt-controller".to_owned(),
            ignore_leadership: false,
            leading_status_backport: true,
        },
    );
    let common = CommonArgs {
        listen: Some("127.0.0.1:0".parse()?),
        mode: Mode::Full,
        interval: Duration::from_millis(500),
        collection_timeout: Duration::from_secs(10),
        ..CommonArgs::default()
    };
    let running = runtime::start("virt-controller-metrics", &common, Arc::new(collector)).await?;
    let url = format!("http://{}/metrics", running.local_addr());
    let namespaces: BTreeSet<String> = [tenant_a.clone(), tenant_b.clone()].into();

    let result = async {
        let expected = expected_from_api(&client, &docs).await?;
        let expected = text::encode(&ours(families::render(&expected), &namespaces));
        eventually("the sidecar to export our objects", WAIT, || async {
            let served = scrape(&url).await?;
            let leading = served.iter().any(|f| {
                f.name == "kubevirt_virt_controller_leading_status" && f.samples[0].value == 1.0
            });
            let got = text::encode(&ours(served, &namespaces));
            Ok((leading && got == expected).then_some(()))
        })
        .await?;

        set_holder(&client, &kubevirt_ns, "e2e-virt-controller-b").await?;
        eventually(
            "the sidecar to stop exporting after losing the Lease",
            WAIT,
            || async {
                let served = scrape(&url).await?;
                let vm_info = served.iter().any(|f| f.name == "kubevirt_vm_info");
                let leading0 = served.iter().any(|f| {
                    f.name == "kubevirt_virt_controller_leading_status" && f.samples[0].value == 0.0
                });
                Ok((!vm_info && leading0).then_some(()))
            },
        )
        .await
    }
    .await;
    running.stop().await?;
    for ns in [&kubevirt_ns, &tenant_a, &tenant_b] {
        delete_namespace(&client, ns).await;
    }
    result
}

/// Reads every fixture object back from the API server (so server-assigned UIDs and
/// creation timestamps are what the render sees) into a [`ClusterState`].
async fn expected_from_api(client: &Client, docs: &[Value]) -> anyhow::Result<ClusterState> {
    let mut state = ClusterState::default();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let (group, version, plural, namespaced, _) = resource(kind).context("kind")?;
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(
                client.clone(),
                doc["metadata"]["namespace"].as_str().unwrap_or("default"),
                &ar,
            )
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let object = api
            .get(doc["metadata"]["name"].as_str().unwrap_or_default())
            .await?;
        let mut value = serde_json::to_value(&object)?;
        value["kind"] = json!(kind);
        state.apply_any(value)?;
    }
    Ok(state)
}
