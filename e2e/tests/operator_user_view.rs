//! The operator on a real API server, asserted the way a user sees it: `kubectl get msp`
//! (the CRD's printer columns as kubectl renders them), `kubectl get kubevirt`, conditions,
//! Events, the stored KubeVirt CR and virt-operator Deployment. The operator runs as its own
//! ServiceAccount with `config/rbac`.
//!
//! One API server for the file; the scenarios run side by side, each in its own namespace
//! with its own namespaced operator, and every failure is listed at the end.
//! Skips loudly when no server is available.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;

use futures::FutureExt as _;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use kubevirt_metrics_operator::api::{FIELD_MANAGER, KubeVirt, MetricsSidecarPolicy};
use kubevirt_metrics_operator::controller::apply::json_subset;
use kubevirt_metrics_operator::plan::{MARKER_ANNOTATION, entry_owner};
use support::apiserver::ApiServer;
use support::kubectl::{self, cell, table};
use support::user_view::{condition, policy_events, summary};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const SIDECAR: &str = "metrics-sidecar";

type Scenario<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_users_see_on_a_real_api_server() -> anyhow::Result<()> {
    let Some(server) =
        apiserver::start("operator_user_view::what_users_see_on_a_real_api_server").await?
    else {
        return Ok(());
    };
    install_crds(&server.client).await?;
    let s = &server;
    let scenarios: Vec<(&str, Scenario)> = vec![
        (
            "install, update, delete with finalizer",
            Box::pin(install_update_delete(s)),
        ),
        (
            "kubectl get kubevirt still lists the KubeVirt CR",
            Box::pin(get_kubevirt_is_not_shadowed(s)),
        ),
        ("two policies", Box::pin(two_policies(s))),
        ("paused", Box::pin(paused(s))),
        (
            "KubeVirt CR deleted and recreated",
            Box::pin(kubevirt_deleted_and_recreated(s)),
        ),
        (
            "GitOps full replace; README ignoreDifferences",
            Box::pin(gitops_full_replace(s)),
        ),
        (
            "CEL rejections as kubectl prints them",
            Box::pin(cel_rejections(s)),
        ),
        (
            "operator killed mid-reconcile converges",
            Box::pin(killed_mid_reconcile(s)),
        ),
        (
            "operator stopped while starting stops and gives its lease up",
            Box::pin(stopped_while_starting(s)),
        ),
        (
            "operator whose lease another replica took stops",
            Box::pin(lease_taken(s)),
        ),
    ];
    let names: Vec<&str> = scenarios.iter().map(|(n, _)| *n).collect();
    // A failed assertion (a panic) fails its scenario only; the others run to the end.
    let results = futures::future::join_all(
        scenarios
            .into_iter()
            .map(|(_, f)| std::panic::AssertUnwindSafe(f).catch_unwind()),
    )
    .await;
    let mut failed = Vec::new();
    for (name, result) in names.iter().zip(results) {
        let error = match result {
            Ok(Ok(())) => {
                eprintln!("e2e scenario ok: {name}");
                continue;
            }
            Ok(Err(err)) => format!("{err:#}"),
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".to_owned()),
        };
        eprintln!("e2e scenario FAILED: {name}: {error}");
        failed.push(format!("{name}: {error}"));
    }
    drop(server);
    assert!(
        failed.is_empty(),
        "failed scenarios:\n{}",
        failed.join("\n")
    );
    Ok(())
}

fn foreign() -> Value {
    json!({"resourceName": "virt-api", "resourceType": "Deployment", "type": "strategic",
        "patch": "{ \"spec\" : { \"template\" : { \"metadata\" : { \"labels\" : { \"team\" : \"infra\" } } } } }"})
}

fn spec(components: Value) -> Value {
    json!({"defaults": {"image": IMAGE}, "components": components})
}

/// `kubectl get msp -n NS [EXTRA...]` as (column, cell) rows.
async fn get_msp(
    server: &ApiServer,
    ns: &str,
    extra: &[&str],
) -> anyhow::Result<Vec<Vec<(String, String)>>> {
    let mut args = vec!["get", "msp", "-n", ns];
    args.extend_from_slice(extra);
    Ok(table(&kubectl::ok(&server.kubeconfig, &args).await?))
}

fn row<'a>(rows: &'a [Vec<(String, String)>], name: &str) -> &'a [(String, String)] {
    rows.iter()
        .find(|r| cell(r, "NAME") == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in {rows:?}"))
}

async fn wait_reason(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &'static str,
) -> anyhow::Result<MetricsSidecarPolicy> {
    eventually(&format!("{name}: Ready reason {reason}"), WAIT, || async {
        let p = get_policy(client, ns, name).await?.expect("policy");
        let current = p
            .status
            .as_ref()
            .is_some_and(|s| s.observed_generation == p.metadata.generation);
        Ok((current && ready_reason(&p).as_deref() == Some(reason)).then_some(p))
    })
    .await
}

fn container_names(d: &Deployment) -> Vec<String> {
    d.spec
        .template
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

/// Our entries, one per component: no entry twice.
fn assert_no_duplicates(kv: &KubeVirt) {
    let ours: Vec<String> = kv
        .patches()
        .iter()
        .filter(|e| entry_owner(e).is_some())
        .map(|e| format!("{}/{}", e["resourceType"], e["resourceName"]))
        .collect();
    let mut unique = ours.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ours.len(), unique.len(), "duplicate entries: {ours:?}");
}

async fn install_update_delete(server: &ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "view").await?;
    create_kubevirt(client, &ns, Some(vec![foreign()]), "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(
        client,
        &ns,
        "metrics",
        spec(json!({"virtHandler": {}, "virtOperator": {}})),
    )
    .await?;
    let operator = start_operator(server, &ns).await?;
    let policy = wait_reason(client, &ns, "metrics", "RolloutInProgress").await?;

    // kubectl get msp: the printer columns of the CRD, filled from status.
    let rows = get_msp(server, &ns, &[]).await?;
    let header: Vec<&str> = rows[0].iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(header, ["NAME", "READY", "METHOD", "COMPONENTS", "AGE"]);
    let r = row(&rows, "metrics");
    assert_eq!(cell(r, "READY"), Some("False"));
    assert_eq!(cell(r, "METHOD"), Some("CustomizeComponents"));
    assert_eq!(cell(r, "COMPONENTS"), Some("virt-handler,virt-operator"));
    assert!(!cell(r, "AGE").unwrap_or_default().is_empty());
    let wide = get_msp(server, &ns, &["-o", "wide"]).await?;
    assert_eq!(cell(row(&wide, "metrics"), "PAUSED"), Some("false"));

    // Conditions and the event.
    let ready = condition(&policy, "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready
            .message
            .starts_with("waiting for the rollout of virt-handler"),
        "{}",
        ready.message
    );
    assert_eq!(condition(&policy, "Progressing").unwrap().status, "True");
    assert_eq!(condition(&policy, "Degraded").unwrap().status, "False");
    let injected_note = format!(
        "sidecars for virt-handler, virt-operator written to KubeVirt CR {ns}/kubevirt via CustomizeComponents"
    );
    eventually("the Injected event", WAIT, || async {
        let events = summary(&policy_events(client, &ns, "metrics").await?);
        Ok(events
            .contains(&("Normal".into(), "Injected".into(), injected_note.clone()))
            .then_some(()))
    })
    .await?;

    // The KubeVirt CR: the foreign entry first and byte for byte, then ours.
    let kv = get_kubevirt(client, &ns, "kubevirt").await?;
    assert_eq!(kv.patches()[0], foreign());
    assert_eq!(
        &kv.patches()[1..],
        planned_entries(&policy, &kv)?.as_slice()
    );

    // virt-operator: server-side apply keeps the component's container first, and our field
    // manager owns only the sidecar container, not virt-operator's own.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let vo = deployments.get("virt-operator").await?;
    assert_eq!(container_names(&vo), ["virt-operator", SIDECAR]);
    let ours = vo
        .managed_fields()
        .iter()
        .find(|m| {
            m.manager.as_deref() == Some(FIELD_MANAGER) && m.operation.as_deref() == Some("Apply")
        })
        .expect("our Apply entry in managedFields");
    let owned = serde_json::to_string(&ours.fields_v1)?;
    assert!(
        owned.contains(r#"k:{\"name\":\"metrics-sidecar\"}"#),
        "{owned}"
    );
    assert!(
        !owned.contains(r#"k:{\"name\":\"virt-operator\"}"#),
        "{owned}"
    );

    // Update: a new image reaches the KubeVirt CR and virt-operator, order unchanged.
    Api::<MetricsSidecarPolicy>::namespaced(client.clone(), &ns)
        .patch(
            "metrics",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"defaults": {"image": "quay.io/kubevirt/metrics-sidecars:v0.2.0"}}})),
        )
        .await?;
    let policy = wait_reason(client, &ns, "metrics", "RolloutInProgress").await?;
    let kv = eventually("the new image in the KubeVirt CR", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok(kv.patches()[1..]
            .iter()
            .all(|e| e["patch"].as_str().unwrap_or_default().contains("v0.2.0"))
            .then_some(kv))
    })
    .await?;
    assert_eq!(kv.patches()[0], foreign());
    assert_eq!(
        &kv.patches()[1..],
        planned_entries(&policy, &kv)?.as_slice()
    );
    let vo = eventually("the new image in virt-operator", WAIT, || async {
        let d = deployments.get("virt-operator").await?;
        let image = d.spec.template.spec.as_ref().and_then(|s| {
            s.containers
                .iter()
                .find(|c| c.name == SIDECAR)
                .and_then(|c| c.image.clone())
        });
        Ok((image.as_deref() == Some("quay.io/kubevirt/metrics-sidecars:v0.2.0")).then_some(d))
    })
    .await?;
    assert_eq!(container_names(&vo), ["virt-operator", SIDECAR]);
    let r = get_msp(server, &ns, &[]).await?;
    assert_eq!(
        cell(row(&r, "metrics"), "COMPONENTS"),
        Some("virt-handler,virt-operator")
    );

    // Delete: kubectl waits for the finalizer, which removes exactly our traces.
    let out = kubectl::ok(
        &server.kubeconfig,
        &["delete", "msp", "metrics", "-n", &ns, "--timeout=60s"],
    )
    .await?;
    assert!(out.contains("\"metrics\" deleted"), "{out}");
    assert!(get_policy(client, &ns, "metrics").await?.is_none());
    let kv = get_kubevirt(client, &ns, "kubevirt").await?;
    assert_eq!(
        kv.patches(),
        &[foreign()][..],
        "only the foreign entry is left"
    );
    let vo = deployments.get("virt-operator").await?;
    assert_eq!(container_names(&vo), ["virt-operator"]);
    let events = summary(&policy_events(client, &ns, "metrics").await?);
    assert!(
        events.iter().any(|(t, r, n)| t == "Normal"
            && r == "Removed"
            && n.contains(&format!("KubeVirt CR {ns}/kubevirt"))),
        "{events:?}"
    );
    let out = kubectl::run(&server.kubeconfig, &["get", "msp", "-n", &ns]).await?;
    assert!(out.stderr.contains("No resources found"), "{out:?}");
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

/// Issue 7, 5a: our CRD's category must not shadow `kubectl get kubevirt`.
async fn get_kubevirt_is_not_shadowed(server: &ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "category").await?;
    create_kubevirt(client, &ns, None, "Deployed").await?;
    create_policy(client, &ns, "metrics", spec(json!({"virtHandler": {}}))).await?;
    for resource in ["kubevirt", "kubevirts", "kv"] {
        let rows = table(&kubectl::ok(&server.kubeconfig, &["get", resource, "-n", &ns]).await?);
        let header: Vec<&str> = rows[0].iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(header, ["NAME", "AGE", "PHASE"], "kubectl get {resource}");
        assert_eq!(rows.len(), 1, "kubectl get {resource}: {rows:?}");
        assert_eq!(cell(&rows[0], "NAME"), Some("kubevirt"));
        assert_eq!(cell(&rows[0], "PHASE"), Some("Deployed"));
    }
    // Our own category lists the policies.
    let out = kubectl::ok(
        &server.kubeconfig,
        &["get", "kubevirt-metrics", "-n", &ns, "-o", "name"],
    )
    .await?;
    assert_eq!(
        out.trim(),
        "metricssidecarpolicy.metrics.kubevirt.io/metrics"
    );
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn two_policies(server: &ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "two").await?;
    create_kubevirt(client, &ns, None, "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(client, &ns, "a-first", spec(json!({"virtHandler": {}}))).await?;
    create_policy(client, &ns, "b-second", spec(json!({"virtHandler": {}}))).await?;
    let operator = start_operator(server, &ns).await?;
    wait_reason(client, &ns, "a-first", "RolloutInProgress").await?;
    let loser = wait_reason(client, &ns, "b-second", "ConflictingPolicy").await?;
    let degraded = condition(&loser, "Degraded").unwrap();
    assert_eq!(degraded.status, "True");
    assert!(
        degraded
            .message
            .contains(&format!("policy {ns}/a-first is older")),
        "{}",
        degraded.message
    );
    let rows = get_msp(server, &ns, &[]).await?;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        cell(row(&rows, "a-first"), "COMPONENTS"),
        Some("virt-handler")
    );
    assert_eq!(cell(row(&rows, "b-second"), "READY"), Some("False"));
    assert_eq!(cell(row(&rows, "b-second"), "COMPONENTS"), Some("none"));
    let events = summary(&policy_events(client, &ns, "b-second").await?);
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "ConflictingPolicy"),
        "{events:?}"
    );
    let kv = get_kubevirt(client, &ns, "kubevirt").await?;
    let owners: Vec<String> = kv.patches().iter().filter_map(entry_owner).collect();
    assert_eq!(owners, [format!("{ns}/a-first")]);
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn paused(server: &ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "pause").await?;
    let kv = create_kubevirt(client, &ns, Some(vec![foreign()]), "Deployed").await?;
    create_workloads(client, &ns).await?;
    let mut paused_spec = spec(json!({"virtHandler": {}, "virtOperator": {}}));
    paused_spec["paused"] = json!(true);
    create_policy(client, &ns, "metrics", paused_spec).await?;
    let operator = start_operator(server, &ns).await?;
    let policy = wait_reason(client, &ns, "metrics", "Paused").await?;
    let wide = get_msp(server, &ns, &["-o", "wide"]).await?;
    let r = row(&wide, "metrics");
    assert_eq!(cell(r, "PAUSED"), Some("true"));
    assert_eq!(cell(r, "READY"), Some("False"));
    assert_eq!(cell(r, "COMPONENTS"), Some("none"));
    assert!(
        condition(&policy, "Ready")
            .unwrap()
            .message
            .starts_with("spec.paused is true")
    );
    let events = summary(&policy_events(client, &ns, "metrics").await?);
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "Paused"),
        "{events:?}"
    );
    assert!(policy.finalizers().is_empty());
    assert_eq!(
        get_kubevirt(client, &ns, "kubevirt")
            .await?
            .resource_version(),
        kv.resource_version(),
        "a paused policy writes nothing"
    );
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn kubevirt_deleted_and_recreated(server: &ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "recreate").await?;
    create_kubevirt(client, &ns, None, "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(client, &ns, "metrics", spec(json!({"virtHandler": {}}))).await?;
    let operator = start_operator(server, &ns).await?;
    wait_reason(client, &ns, "metrics", "RolloutInProgress").await?;

    Api::<KubeVirt>::namespaced(client.clone(), &ns)
        .delete("kubevirt", &DeleteParams::default())
        .await?;
    let policy = wait_reason(client, &ns, "metrics", "KubeVirtNotFound").await?;
    let degraded = condition(&policy, "Degraded").unwrap();
    assert_eq!(degraded.status, "True");
    assert!(
        degraded
            .message
            .contains(&format!("no KubeVirt CR in namespace {ns}")),
        "{}",
        degraded.message
    );
    let rows = get_msp(server, &ns, &[]).await?;
    assert_eq!(cell(row(&rows, "metrics"), "READY"), Some("False"));

    // A new CR (a reinstall): the entries come back, once.
    create_kubevirt(client, &ns, None, "Deployed").await?;
    let policy = wait_reason(client, &ns, "metrics", "RolloutInProgress").await?;
    let kv = eventually("entries in the new CR", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok((!kv.patches().is_empty()).then_some(kv))
    })
    .await?;
    assert_eq!(kv.patches(), planned_entries(&policy, &kv)?.as_slice());
    assert_no_duplicates(&kv);
    let rows = get_msp(server, &ns, &[]).await?;
    assert_eq!(
        cell(row(&rows, "metrics"), "COMPONENTS"),
        Some("virt-handler")
    );
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

/// The README's Argo CD advice, read from the README itself.
struct IgnoreDifferences {
    kubevirt_pointers: Vec<String>,
    deployment_pointers: Vec<String>,
    deployment_container: String,
}

fn readme_ignore_differences() -> anyhow::Result<IgnoreDifferences> {
    let readme = std::fs::read_to_string(repo_path("README.md"))?;
    let line_with = |needle: &str| {
        readme
            .lines()
            .find(|l| l.contains("ignoreDifferences") && l.contains(needle))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("README has no ignoreDifferences line with {needle}"))
    };
    let between = |line: &str, start: &str, end: &str| -> Option<String> {
        let from = line.find(start)? + start.len();
        let to = line[from..].find(end)? + from;
        Some(line[from..to].to_owned())
    };
    let pointers = |line: &str| -> Vec<String> {
        between(line, "jsonPointers: [", "]")
            .map(|list| list.split(',').map(|p| p.trim().to_owned()).collect())
            .unwrap_or_default()
    };
    let kubevirt = line_with("kind: KubeVirt")?;
    let deployment = line_with("kind: Deployment")?;
    let jq = between(&deployment, "jqPathExpressions: ['", "']")
        .ok_or_else(|| anyhow::anyhow!("no jqPathExpressions in {deployment}"))?;
    // The one jq shape the README uses; anything else must be taught here.
    let container = jq
        .strip_prefix(".spec.template.spec.containers[] | select(.name == \"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .ok_or_else(|| anyhow::anyhow!("unexpected jq expression {jq}"))?;
    Ok(IgnoreDifferences {
        kubevirt_pointers: pointers(&kubevirt),
        deployment_pointers: pointers(&deployment),
        deployment_container: container.to_owned(),
    })
}

fn remove_pointer(object: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(map)) = object.pointer_mut(parent) {
        map.remove(&key);
    }
}

/// What a full replace with the Git manifest would revert in `live` (Argo CD `Replace=true`
/// or a `kubectl replace`): the paths under `spec` where the two differ.
fn replace_drift(git: &Value, live: &Value, path: &str, out: &mut Vec<String>) {
    match (git, live) {
        (Value::Object(g), Value::Object(l)) => {
            for (k, lv) in l {
                match g.get(k) {
                    Some(gv) => replace_drift(gv, lv, &format!("{path}/{k}"), out),
                    // Fields the server defaults are not drift; a key in a map we set is.
                    None if path.ends_with("/annotations") || path.ends_with("/labels") => {
                        out.push(format!("{path}/{k}"))
                    }
                    None => {}
                }
            }
        }
        (Value::Array(g), Value::Array(l)) => {
            if g.len() != l.len() {
                out.push(format!("{path} (length {} vs {})", g.len(), l.len()));
            } else {
                for (i, (gv, lv)) in g.iter().zip(l).enumerate() {
                    replace_drift(gv, lv, &format!("{path}/{i}"), out);
                }
            }
        }
        _ if json_subset(git, live) => {}
        _ => out.push(path.to_owned()),
    }
}

async fn gitops_full_replace(server: &ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "gitops").await?;
    create_kubevirt(client, &ns, Some(vec![foreign()]), "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(
        client,
        &ns,
        "metrics",
        spec(json!({"virtHandler": {}, "virtOperator": {}})),
    )
    .await?;
    let operator = start_operator(server, &ns).await?;
    let policy = wait_reason(client, &ns, "metrics", "RolloutInProgress").await?;
    let kv_writes = "kubevirt_metrics_operator_patch_writes_total{target=\"kubevirt\"}";
    assert_eq!(operator.metric(kv_writes).await?, 1.0);

    // Git's KubeVirt CR: the release sample with the team's own entry, nothing of ours.
    let mut git_kv = documents("testdata/kubevirt-v1.9.0/kubevirt-cr.yaml")?.remove(0);
    git_kv["metadata"]["namespace"] = json!(ns);
    git_kv["spec"]["customizeComponents"]["patches"] = json!([foreign()]);

    // The README's advice holds on the live object: ignoring its pointers, Git and the
    // cluster agree, although our entries are in the live list.
    let advice = readme_ignore_differences()?;
    let kvs = Api::<KubeVirt>::namespaced(client.clone(), &ns);
    let live = serde_json::to_value(kvs.get("kubevirt").await?)?;
    let mut drift = Vec::new();
    replace_drift(&git_kv["spec"], &live["spec"], "/spec", &mut drift);
    assert!(
        !drift.is_empty(),
        "our entries are drift without the advice"
    );
    let (mut git_n, mut live_n) = (git_kv.clone(), live.clone());
    for pointer in &advice.kubevirt_pointers {
        remove_pointer(&mut git_n, pointer);
        remove_pointer(&mut live_n, pointer);
    }
    let mut drift = Vec::new();
    replace_drift(&git_n["spec"], &live_n["spec"], "/spec", &mut drift);
    assert!(
        drift.is_empty(),
        "drift left with the README's pointers {:?}: {drift:?}",
        advice.kubevirt_pointers
    );

    // The same for the virt-operator Deployment (jqPathExpressions + jsonPointers).
    let mut git_vo = documents("testdata/kubevirt-v1.9.0/virt-operator-deployment.yaml")?.remove(0);
    git_vo["spec"]["replicas"] = json!(0);
    let live_vo = serde_json::to_value(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .get("virt-operator")
            .await?,
    )?;
    let mut drift = Vec::new();
    replace_drift(&git_vo["spec"], &live_vo["spec"], "/spec", &mut drift);
    assert!(!drift.is_empty(), "the sidecar is drift without the advice");
    let mut live_n = live_vo.clone();
    if let Some(containers) = live_n
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
    {
        containers.retain(|c| c["name"] != advice.deployment_container.as_str());
    }
    let mut git_n = git_vo.clone();
    for pointer in &advice.deployment_pointers {
        remove_pointer(&mut git_n, pointer);
        remove_pointer(&mut live_n, pointer);
    }
    let mut drift = Vec::new();
    replace_drift(&git_n["spec"], &live_n["spec"], "/spec", &mut drift);
    assert!(
        drift.is_empty(),
        "virt-operator drift left with the README's advice: {drift:?}"
    );

    // Without the advice, Argo CD replaces the CR with Git's (a PUT of the whole object).
    let mut replaced = git_kv.clone();
    replaced["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
    kvs.replace(
        "kubevirt",
        &PostParams::default(),
        &serde_json::from_value(replaced)?,
    )
    .await?;
    assert_eq!(kvs.get("kubevirt").await?.patches(), &[foreign()][..]);
    // The operator restores its entries with one write, keeping the team's entry first.
    let kv = eventually("our entries restored", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok((kv.patches().len() > 1).then_some(kv))
    })
    .await?;
    assert_eq!(kv.patches()[0], foreign());
    assert_eq!(
        &kv.patches()[1..],
        planned_entries(&policy, &kv)?.as_slice()
    );
    assert_no_duplicates(&kv);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        operator.metric(kv_writes).await?,
        2.0,
        "restored in one write"
    );
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn cel_rejections(server: &ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "cel").await?;
    let dir = tempfile::tempdir()?;
    let cases = [
        (
            json!({"components": {"virtHandler": {}}}),
            "spec.components.virtHandler: Required value: virt-handler is enabled but has no image: set spec.defaults.image or spec.components.virtHandler.image",
        ),
        (
            json!({"defaults": {"image": IMAGE, "port": 8443}}),
            "port must not be one the KubeVirt components use (8186, 8187, 8443, 8444)",
        ),
        (
            json!({"defaults": {"image": IMAGE, "port": 80}}),
            "port must be between 1024 and 65535",
        ),
        (
            json!({"defaults": {"image": IMAGE, "portName": "metrics"}}),
            "portName must not be a name the component's container already uses (metrics, vmstats, virt-api, webhooks)",
        ),
        (
            json!({"defaults": {"image": IMAGE, "interval": "1s"}}),
            "interval must be between 5s and 10m",
        ),
        (
            json!({"kubevirtRef": {"name": ""}, "defaults": {"image": IMAGE}}),
            "kubevirtRef.name must not be empty",
        ),
    ];
    for (i, (spec, message)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.yaml"));
        let object = json!({
            "apiVersion": "metrics.kubevirt.io/v1alpha1", "kind": "MetricsSidecarPolicy",
            "metadata": {"name": format!("bad-{i}"), "namespace": ns}, "spec": spec,
        });
        std::fs::write(&file, serde_json::to_vec(&object)?)?;
        let out = kubectl::run(
            &server.kubeconfig,
            &["apply", "--server-side", "-f", file.to_str().unwrap()],
        )
        .await?;
        assert!(!out.success, "{spec} was admitted");
        assert!(
            out.stderr
                .contains(&format!("The MetricsSidecarPolicy \"bad-{i}\" is invalid"))
                && out.stderr.contains(message),
            "{spec}: expected {message:?} in {:?}",
            out.stderr
        );
    }
    let names = Api::<MetricsSidecarPolicy>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await?;
    assert!(names.items.is_empty(), "nothing stored");
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn killed_mid_reconcile(server: &ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "restart").await?;
    create_kubevirt(client, &ns, Some(vec![foreign()]), "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(
        client,
        &ns,
        "metrics",
        spec(json!({"virtHandler": {}, "virtController": {}, "virtOperator": {}})),
    )
    .await?;
    let operator = start_operator(server, &ns).await?;
    // Killed right after its first write to the KubeVirt CR: the virt-operator apply and the
    // status are typically still to come.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        if kv.patches().len() > 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no first write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    operator.kill().await;
    let at_kill = get_policy(client, &ns, "metrics").await?.expect("policy");
    eprintln!(
        "e2e: killed with status {:?}",
        at_kill.status.as_ref().map(|s| &s.conditions)
    );

    // A new process with the same pod identity: the lease, if the dead one's lease task has
    // not given it up yet, is already its own.
    let operator = start_operator(server, &ns).await?;
    // The dead one may have written the status already: judge the new one only once it has
    // reconciled the policy itself.
    eventually("a reconcile by the restarted operator", WAIT, || async {
        let done = operator
            .metric("kubevirt_metrics_operator_reconciles_total{result=\"success\"}")
            .await?;
        Ok((done >= 1.0).then_some(()))
    })
    .await?;
    let policy = wait_reason(client, &ns, "metrics", "RolloutInProgress").await?;
    let kv = get_kubevirt(client, &ns, "kubevirt").await?;
    assert_eq!(kv.patches()[0], foreign());
    assert_eq!(
        &kv.patches()[1..],
        planned_entries(&policy, &kv)?.as_slice()
    );
    assert_no_duplicates(&kv);
    let vo = eventually("the sidecar in virt-operator", WAIT, || async {
        let d = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get("virt-operator")
            .await?;
        Ok((container_names(&d).len() == 2).then_some(d))
    })
    .await?;
    assert_eq!(container_names(&vo), ["virt-operator", SIDECAR]);
    assert!(
        vo.spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .is_some_and(|a| a.contains_key(MARKER_ANNOTATION))
    );
    assert_eq!(
        operator
            .metric("kubevirt_metrics_operator_patch_writes_total{target=\"kubevirt\"}")
            .await?,
        0.0,
        "the restarted operator found its entries in place and did not rewrite them"
    );
    let rows = get_msp(server, &ns, &[]).await?;
    assert_eq!(
        cell(row(&rows, "metrics"), "COMPONENTS"),
        Some("virt-handler,virt-controller,virt-operator")
    );
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

/// SIGTERM as soon as the operator holds its lease, typically before its first list of
/// policies has arrived (a rolling update of the operator hits this window): it stops, and
/// gives the lease up so the next replica does not wait for it to expire.
async fn stopped_while_starting(server: &ApiServer) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, "stop-early").await?;
    create_kubevirt(client, &ns, Some(vec![foreign()]), "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(client, &ns, "metrics", spec(json!({"virtHandler": {}}))).await?;
    let leases = Api::<Lease>::namespaced(client.clone(), &ns);
    let holder = || async {
        let lease = leases.get_opt("kubevirt-metrics-operator").await?;
        anyhow::Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity))
    };
    for round in 0..3 {
        let operator = start_operator(server, &ns).await?;
        // Polled tightly: the window between the lease and the first list is milliseconds.
        let deadline = std::time::Instant::now() + WAIT;
        while holder().await?.is_none() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "round {round}: no lease"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        operator
            .stop()
            .await
            .map_err(|err| anyhow::anyhow!("round {round}: the stop failed: {err:#}"))?;
        assert_eq!(holder().await?, None, "round {round}: the lease given up");
    }
    delete_namespace(client, &ns).await;
    Ok(())
}

/// Another replica takes the Lease (as one does after this one missed its renewals): this
/// one must stop writing and exit with the loss, so that its pod restarts as a standby.
async fn lease_taken(server: &ApiServer) -> anyhow::Result<()> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let client = &server.client;
    let ns = namespace(client, "lease-taken").await?;
    create_kubevirt(client, &ns, Some(vec![foreign()]), "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(client, &ns, "metrics", spec(json!({"virtHandler": {}}))).await?;
    let operator = start_operator(server, &ns).await?;
    let leases = Api::<Lease>::namespaced(client.clone(), &ns);
    eventually("the lease held", WAIT, || async {
        let lease = leases.get_opt("kubevirt-metrics-operator").await?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .map(|_| ()))
    })
    .await?;

    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let taken = json!({"spec": {"holderIdentity": "e2e-standby", "acquireTime": now,
        "renewTime": now, "leaseDurationSeconds": 3600}});
    leases
        .patch(
            "kubevirt-metrics-operator",
            &PatchParams::default(),
            &Patch::Merge(&taken),
        )
        .await?;
    eventually("the operator to stop", WAIT, || async {
        Ok((!operator.is_running()).then_some(()))
    })
    .await?;
    let stopped = operator.stop().await;
    assert!(
        stopped
            .as_ref()
            .is_err_and(|err| format!("{err:#}").contains("lost the leader lease")),
        "exits with the loss: {stopped:?}"
    );
    let lease = leases.get("kubevirt-metrics-operator").await?;
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("e2e-standby"),
        "the other replica's lease left alone"
    );
    delete_namespace(client, &ns).await;
    Ok(())
}
