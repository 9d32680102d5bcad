//! `exporters` and `aggregations` of a MetricsSidecarPolicy on the real kube-apiserver:
//! - every case of `testdata/exporters/validation-cases.yaml` is admitted or refused by the
//!   CRD as the table says, with the message a user sees from `kubectl create`
//!   (CEL rules, enums, required fields, unknown fields);
//! - the patches the plan writes for the golden `exporters` policy, applied by the server's
//!   own strategic merge to the real KubeVirt v1.9.0 workloads, pass pod-template validation
//!   (projected Secret volumes, mounts that resolve), keep the component's container first,
//!   and are idempotent; virt-operator's Deployment gets the volume by server-side apply and
//!   loses it, with the sidecar, when the operator releases its fields;
//! - a combination the CRD cannot see (`extraArgs` repeating an exported flag) reaches the
//!   policy's status as InvalidSpec with the plan's message, and nothing is written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use kubevirt_metrics_operator::api::{Component, FIELD_MANAGER};
use kubevirt_metrics_operator::plan::{self, virt_operator};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporters_against_a_real_api_server() -> anyhow::Result<()> {
    let Some(server) =
        apiserver::start("operator_exporters::exporters_against_a_real_api_server").await?
    else {
        return Ok(());
    };
    install_crds(&server.client).await?;
    eprintln!("e2e scenario: the validation table");
    validation_table(&server).await?;
    eprintln!("e2e scenario: volumes and mounts on the real workloads");
    volumes_on_the_real_workloads(&server.client).await?;
    eprintln!("e2e scenario: a plan error reaches the status");
    plan_error_in_status(&server).await?;
    drop(server);
    Ok(())
}

/// The case table as whole policies in `ns` (the same shape as operator/tests/exporters_cel.rs).
fn table(ns: &str) -> anyhow::Result<Vec<(String, Value, Option<String>)>> {
    let text = std::fs::read_to_string(repo_path("testdata/exporters/validation-cases.yaml"))?;
    let cases: Vec<Value> = serde_yaml::from_str(&text)?;
    Ok(cases
        .into_iter()
        .map(|case| {
            let mut spec = json!({
                "defaults": {"image": IMAGE},
                "components": {"virtApi": case.get("component").cloned().unwrap_or(json!({}))},
            });
            if let Some(exporters) = case.get("exporters") {
                spec["defaults"]["exporters"] = exporters.clone();
            }
            if let Some(aggregations) = case.get("aggregations") {
                spec["aggregations"] = aggregations.clone();
            }
            let policy = json!({
                "apiVersion": "metrics.kubevirt.io/v1alpha1",
                "kind": "MetricsSidecarPolicy",
                "metadata": {"name": "case", "namespace": ns},
                "spec": spec,
            });
            (
                case["name"].as_str().unwrap_or_default().to_owned(),
                policy,
                case["message"].as_str().map(str::to_owned),
            )
        })
        .collect())
}

async fn validation_table(server: &apiserver::ApiServer) -> anyhow::Result<()> {
    let ns = namespace(&server.client, "exporters-cel").await?;
    let dir = tempfile::tempdir()?;
    let cases = table(&ns)?;
    assert!(cases.len() >= 30);
    let mut wrong = Vec::new();
    for (i, (name, policy, message)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case-{i}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(policy)?)?;
        let out = kubectl::run(
            &server.kubeconfig,
            &["create", "--dry-run=server", "-f", file.to_str().unwrap()],
        )
        .await?;
        match message {
            None if !out.success || !out.stderr.trim().is_empty() => {
                wrong.push(format!("{name}: should be admitted, got: {}", out.stderr));
            }
            Some(part) if out.success || !out.stderr.contains(part.as_str()) => {
                wrong.push(format!(
                    "{name}: should be refused with {part:?}, got: {}{}",
                    out.stdout, out.stderr
                ));
            }
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    delete_namespace(&server.client, &ns).await;
    Ok(())
}

fn golden_policy(ns: &str) -> anyhow::Result<kubevirt_metrics_operator::api::MetricsSidecarPolicy> {
    let mut document = documents("testdata/golden/plan/exporters/policy.yaml")?.remove(0);
    document["metadata"]["namespace"] = json!(ns);
    Ok(serde_json::from_value(document)?)
}

async fn template(client: &Client, ns: &str, component: Component) -> anyhow::Result<Value> {
    let name = component.workload_name();
    let template: PodTemplateSpec = if component.resource_type() == "DaemonSet" {
        Api::<DaemonSet>::namespaced(client.clone(), ns)
            .get(name)
            .await?
            .spec
            .template
    } else {
        Api::<Deployment>::namespaced(client.clone(), ns)
            .get(name)
            .await?
            .spec
            .template
    };
    Ok(serde_json::to_value(template)?)
}

/// The sidecar in the live template, and every volume it mounts resolved in the pod.
fn check_template(component: Component, template: &Value, planned: &plan::PlannedSidecar) {
    let spec = &template["spec"];
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(
        containers[0]["name"],
        component.container_name(),
        "{component}: its own container stays first"
    );
    let sidecar = containers
        .iter()
        .find(|c| c["name"] == "metrics-sidecar")
        .unwrap_or_else(|| panic!("{component}: no sidecar in {template}"));
    let volumes = spec["volumes"].as_array().unwrap();
    for want in &planned.volumes {
        let live = volumes
            .iter()
            .find(|v| v["name"] == want["name"])
            .unwrap_or_else(|| panic!("{component}: volume {} missing", want["name"]));
        // The server adds defaultMode; the sources are ours, as planned.
        assert_eq!(
            live["projected"]["sources"], want["projected"]["sources"],
            "{component}"
        );
    }
    for mount in sidecar["volumeMounts"].as_array().unwrap() {
        assert!(
            volumes.iter().any(|v| v["name"] == mount["name"]),
            "{component}: mount {mount} has no volume"
        );
    }
    assert_eq!(sidecar["args"], planned.container["args"], "{component}");
}

async fn volumes_on_the_real_workloads(client: &Client) -> anyhow::Result<()> {
    let ns = namespace(client, "exporters-volumes").await?;
    create_workloads(client, &ns).await?;
    let planned = plan::plan(&golden_policy(&ns)?, None, &Default::default())?;
    for entry in &planned.entries {
        let component = Component::ALL
            .into_iter()
            .find(|c| c.workload_name() == entry.resource_name)
            .unwrap();
        let sidecar = planned
            .sidecars
            .iter()
            .find(|s| s.component == component)
            .unwrap();
        assert!(
            !sidecar.volumes.is_empty(),
            "{component} has Secret volumes"
        );
        let patch = Patch::Strategic(serde_json::from_str::<Value>(&entry.patch)?);
        let generation = |d: Option<i64>| d.unwrap_or_default();
        let first = if component.resource_type() == "DaemonSet" {
            let api = Api::<DaemonSet>::namespaced(client.clone(), &ns);
            let once = api
                .patch(&entry.resource_name, &PatchParams::default(), &patch)
                .await?;
            let twice = api
                .patch(&entry.resource_name, &PatchParams::default(), &patch)
                .await?;
            (
                generation(once.metadata.generation),
                generation(twice.metadata.generation),
            )
        } else {
            let api = Api::<Deployment>::namespaced(client.clone(), &ns);
            let once = api
                .patch(&entry.resource_name, &PatchParams::default(), &patch)
                .await?;
            let twice = api
                .patch(&entry.resource_name, &PatchParams::default(), &patch)
                .await?;
            (
                generation(once.metadata.generation),
                generation(twice.metadata.generation),
            )
        };
        assert_eq!(
            first.0, first.1,
            "{component}: the same patch again changes nothing"
        );
        check_template(component, &template(client, &ns, component).await?, sidecar);
    }

    // virt-operator: server-side apply with the operator's field manager, then released.
    let operator = planned
        .sidecars
        .iter()
        .find(|s| s.component == Component::VirtOperator)
        .unwrap();
    let api = Api::<Deployment>::namespaced(client.clone(), &ns);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let body = planned.virt_operator.clone().unwrap();
    api.patch("virt-operator", &apply, &Patch::Apply(&body))
        .await?;
    let applied = template(client, &ns, Component::VirtOperator).await?;
    check_template(Component::VirtOperator, &applied, operator);
    api.patch(
        "virt-operator",
        &apply,
        &Patch::Apply(&virt_operator::removal_body(&ns)),
    )
    .await?;
    let released = template(client, &ns, Component::VirtOperator).await?;
    let names = |key: &str| -> Vec<String> {
        released["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(names("containers"), vec!["virt-operator"]);
    assert!(
        !names("volumes")
            .iter()
            .any(|n| n.starts_with("kubevirt-metrics-")),
        "our volumes leave with our fields: {:?}",
        names("volumes")
    );
    assert!(
        !names("volumes").is_empty(),
        "virt-operator's own volumes stay"
    );
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn plan_error_in_status(server: &apiserver::ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "exporters-status").await?;
    create_kubevirt(client, &ns, None, "Deployed").await?;
    create_workloads(client, &ns).await?;
    // Admitted by the CRD (extraArgs and exporters sit at different levels) ...
    create_policy(
        client,
        &ns,
        "metrics",
        json!({
            "defaults": {"image": IMAGE, "extraArgs": ["--otlp-endpoint=http://a:4318"]},
            "components": {"virtApi": {"exporters": {"otlp": {"endpoint": "http://otel:4318"}}}},
        }),
    )
    .await?;
    let operator = start_operator(server, &ns).await?;
    // ... refused by the plan, and the user reads why in the status.
    let ready = eventually("Ready=False InvalidSpec", WAIT, || async {
        let policy = get_policy(client, &ns, "metrics").await?;
        Ok(policy
            .as_ref()
            .and_then(|p| user_view::condition(p, "Ready"))
            .filter(|c| c.reason == "InvalidSpec"))
    })
    .await?;
    assert_eq!(ready.status, "False");
    assert_eq!(
        ready.message,
        "virt-api: exporters: extraArgs: --otlp-endpoint is also set by exporters or aggregations; set it in one place"
    );
    let kv = get_kubevirt(client, &ns, "kubevirt").await?;
    assert!(
        kv.patches().is_empty(),
        "nothing is written for an invalid spec"
    );
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}
