//! The HyperConverged path against a real API server: when a HyperConverged object owns the
//! KubeVirt CR, the operator writes through HCO's `kubevirt.kubevirt.io/jsonpatch`
//! annotation (keeping foreign operations) and never touches the KubeVirt CR. Skips loudly
//! when no server is available.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cloned_ref_to_slice_refs
)]

mod support;

use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use kubevirt_metrics_operator::api::{HyperConverged, KubeVirt, MetricsSidecarPolicy};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const ANNOTATION: &str = "kubevirt.kubevirt.io/jsonpatch";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_writes_through_the_hyperconverged_annotation() -> anyhow::Result<()> {
    let Some(server) =
        apiserver::start("operator_hco::operator_writes_through_the_hyperconverged_annotation")
            .await?
    else {
        return Ok(());
    };
    let client = server.client.clone();
    install_crds(&client).await?;
    install_hyperconverged_crd(&client).await?;

    let ns = namespace(&client, "hco").await?;
    let foreign_op = r#"[{"op":"add","path":"/spec/configuration/cpuRequest","value":"100m"}]"#;
    let hcos = Api::<HyperConverged>::namespaced(client.clone(), &ns);
    let hco: HyperConverged = serde_json::from_value(json!({
        "apiVersion": "hco.kubevirt.io/v1beta1", "kind": "HyperConverged",
        "metadata": {"name": "kubevirt-hyperconverged", "namespace": ns, "annotations": {ANNOTATION: foreign_op}},
        "spec": {},
    }))?;
    let hco = hcos.create(&PostParams::default(), &hco).await?;

    // The KubeVirt CR as HCO creates it: owned (controller) by the HyperConverged object.
    let kv = create_kubevirt(&client, &ns, None, "Deployed").await?;
    let kvs = Api::<KubeVirt>::namespaced(client.clone(), &ns);
    kvs.patch(
        &kv.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"ownerReferences": [{
            "apiVersion": "hco.kubevirt.io/v1beta1", "kind": "HyperConverged",
            "name": hco.name_any(), "uid": hco.uid(), "controller": true, "blockOwnerDeletion": false,
        }]}})),
    )
    .await?;
    let kv_rv = kvs.get(&kv.name_any()).await?.resource_version();
    create_workloads(&client, &ns).await?;
    create_policy(
        &client,
        &ns,
        "metrics",
        json!({"defaults": {"image": IMAGE}, "components": {"virtHandler": {}}}),
    )
    .await?;
    let operator = start_operator(&server, &ns).await?;

    let ops = eventually(
        "our operation in the HyperConverged annotation",
        WAIT,
        || async {
            let hco = hcos.get("kubevirt-hyperconverged").await?;
            let ops: Vec<Value> = match hco.annotations().get(ANNOTATION) {
                Some(text) => serde_json::from_str(text)?,
                None => Vec::new(),
            };
            Ok((ops.len() == 2).then_some(ops))
        },
    )
    .await?;
    let foreign: Vec<Value> = serde_json::from_str(foreign_op)?;
    assert_eq!(
        ops[0], foreign[0],
        "the foreign operation stays first and unchanged"
    );
    let policy = get_policy(&client, &ns, "metrics").await?.expect("policy");
    let kv_now = kvs.get(&kv.name_any()).await?;
    assert_eq!(
        ops[1],
        json!({"op": "add", "path": "/spec/customizeComponents/patches", "value": planned_entries(&policy, &kv_now)?})
    );
    assert_eq!(
        kv_now.resource_version(),
        kv_rv,
        "the KubeVirt CR itself is not written"
    );
    let policy = eventually("status HyperConvergedJsonPatch", WAIT, || async {
        let p = get_policy(&client, &ns, "metrics").await?.expect("policy");
        Ok(p.status
            .as_ref()
            .and_then(|s| s.injection_method)
            .is_some()
            .then_some(p))
    })
    .await?;
    assert_eq!(
        policy
            .status
            .as_ref()
            .and_then(|s| s.injection_method)
            .map(|m| m.as_str()),
        Some("HyperConvergedJsonPatch")
    );

    Api::<MetricsSidecarPolicy>::namespaced(client.clone(), &ns)
        .delete("metrics", &DeleteParams::default())
        .await?;
    eventually("the policy gone", WAIT, || async {
        Ok(get_policy(&client, &ns, "metrics")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let hco = hcos.get("kubevirt-hyperconverged").await?;
    let left: Vec<Value> = serde_json::from_str(
        hco.annotations()
            .get(ANNOTATION)
            .map(String::as_str)
            .unwrap_or("[]"),
    )?;
    assert_eq!(left, foreign, "only the foreign operation is left");

    operator.stop().await?;
    delete_namespace(&client, &ns).await;
    drop(server);
    Ok(())
}
