//! Harness of the operator e2e tests: an API server ([`apiserver`]), the real KubeVirt
//! v1.9.0 CRDs and objects from `testdata/`, our CRD from `crds/`, and the operator run
//! in-process against it.
#![allow(dead_code)]

pub mod apiserver;
pub mod kubectl;
pub mod kubevirt_peer;
pub mod pods;
pub mod rbac;
pub mod user_view;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize as _;
use serde_json::{Value, json};

use kubevirt_metrics_operator::api::{KubeVirt, MetricsSidecarPolicy};
use kubevirt_metrics_operator::controller::{RunConfig, run_with_client};

pub const IMAGE: &str = "quay.io/kubevirt/metrics-sidecars:v0.1.0";
const MANAGER: &str = "kmo-e2e";

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Every YAML document of a file, as JSON.
pub fn documents(relative: &str) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(repo_path(relative))
        .with_context(|| format!("reading {relative}"))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if !value.is_null() {
            out.push(serde_json::to_value(value)?);
        }
    }
    Ok(out)
}

async fn apply_crd(client: &Client, crd: &Value) -> anyhow::Result<String> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let mut crd = crd.clone();
    if let Some(meta) = crd["metadata"].as_object_mut() {
        meta.remove("creationTimestamp");
    }
    if let Some(object) = crd.as_object_mut() {
        object.remove("status");
    }
    let name = crd["metadata"]["name"]
        .as_str()
        .context("CRD without a name")?
        .to_owned();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .with_context(|| format!("applying CRD {name}"))?;
    Ok(name)
}

async fn established(client: &Client, names: &[String]) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for name in names {
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(api.clone(), name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not established after 60s"))??;
    }
    Ok(())
}

async fn crd_exists(client: &Client, name: &str) -> anyhow::Result<bool> {
    Ok(Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(name)
        .await?
        .is_some())
}

/// The 22 real KubeVirt v1.9.0 CRDs (server-side apply: they are too large for client-side
/// apply) unless the cluster already has KubeVirt, and our CRD from `crds/`.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let mut names = Vec::new();
    if crd_exists(client, "kubevirts.kubevirt.io").await? {
        eprintln!("e2e: KubeVirt CRDs already installed; using them");
    } else {
        for crd in documents("testdata/kubevirt-v1.9.0/crds.yaml")? {
            names.push(apply_crd(client, &crd).await?);
        }
    }
    for crd in our_crds()? {
        names.push(apply_crd(client, &crd).await?);
    }
    established(client, &names).await
}

/// Our CRD as committed under `crds/` (what users apply).
fn our_crds() -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let dir = repo_path("crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    for file in files {
        let relative = format!(
            "crds/{}",
            file.file_name().unwrap_or_default().to_string_lossy()
        );
        // crds/ also holds its kustomization.yaml: only CRDs are applied.
        out.extend(
            documents(&relative)?
                .into_iter()
                .filter(|doc| doc["kind"] == "CustomResourceDefinition"),
        );
    }
    if out.is_empty() {
        bail!("no CRD YAML under crds/ (run `kubevirt-metrics-operator crd > crds/...`)");
    }
    Ok(out)
}

/// The real prometheus-operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule,
/// v0.93.0) from `testdata/prometheus-operator/crds.yaml`, applied like KubeVirt's.
pub async fn install_prometheus_operator_crds(client: &Client) -> anyhow::Result<()> {
    let mut names = Vec::new();
    for crd in documents("testdata/prometheus-operator/crds.yaml")? {
        names.push(apply_crd(client, &crd).await?);
    }
    established(client, &names).await
}

/// A stand-in HyperConverged CRD (hco.kubevirt.io/v1beta1, schema open): HCO's real CRD is
/// not in testdata; the operator only reads metadata and writes one annotation.
pub async fn install_hyperconverged_crd(client: &Client) -> anyhow::Result<()> {
    if crd_exists(client, "hyperconvergeds.hco.kubevirt.io").await? {
        return Ok(());
    }
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "hyperconvergeds.hco.kubevirt.io"},
        "spec": {
            "group": "hco.kubevirt.io",
            "names": {"kind": "HyperConverged", "plural": "hyperconvergeds", "singular": "hyperconverged", "listKind": "HyperConvergedList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1beta1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            }],
        },
    });
    let name = apply_crd(client, &crd).await?;
    established(client, &[name]).await
}

/// A fresh namespace `kmo-<prefix>-<random>`.
pub async fn namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let suffix: String = {
        use std::io::Read;
        let mut bytes = [0u8; 3];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let name = format!("kmo-{prefix}-{suffix}");
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(name)
}

/// Deletes a namespace (a local apiserver has no namespace controller, so it just stays
/// Terminating; the whole server goes away after the test).
pub async fn delete_namespace(client: &Client, ns: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

fn in_namespace(mut object: Value, ns: &str) -> Value {
    object["metadata"]["namespace"] = json!(ns);
    object
}

/// The release sample KubeVirt CR, optionally with `patches`, then its status phase set
/// through the status subresource (nothing runs virt-operator here).
pub async fn create_kubevirt(
    client: &Client,
    ns: &str,
    patches: Option<Vec<Value>>,
    phase: &str,
) -> anyhow::Result<KubeVirt> {
    let mut kv = in_namespace(
        documents("testdata/kubevirt-v1.9.0/kubevirt-cr.yaml")?.remove(0),
        ns,
    );
    if let Some(patches) = patches {
        kv["spec"]["customizeComponents"]["patches"] = Value::Array(patches);
    }
    let api = Api::<KubeVirt>::namespaced(client.clone(), ns);
    let created = api
        .create(&PostParams::default(), &serde_json::from_value(kv)?)
        .await?;
    set_phase(client, ns, &created.name_any(), phase).await
}

pub async fn set_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: &str,
) -> anyhow::Result<KubeVirt> {
    let api = Api::<KubeVirt>::namespaced(client.clone(), ns);
    Ok(api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await?)
}

/// virt-handler, virt-controller, virt-api and virt-operator from testdata. Made inert for
/// a real cluster: Deployments at 0 replicas, the DaemonSet on no node.
pub async fn create_workloads(client: &Client, ns: &str) -> anyhow::Result<()> {
    let mut ds = in_namespace(
        documents("testdata/kubevirt-v1.9.0/virt-handler-daemonset.yaml")?.remove(0),
        ns,
    );
    ds["spec"]["template"]["spec"]["nodeSelector"] = json!({"kmo-e2e/no-such-node": "true"});
    Api::<DaemonSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &serde_json::from_value(ds)?)
        .await
        .context("creating virt-handler")?;
    for file in [
        "virt-controller-deployment.yaml",
        "virt-api-deployment.yaml",
        "virt-operator-deployment.yaml",
    ] {
        let mut d = in_namespace(
            documents(&format!("testdata/kubevirt-v1.9.0/{file}"))?.remove(0),
            ns,
        );
        d["spec"]["replicas"] = json!(0);
        Api::<Deployment>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &serde_json::from_value(d)?)
            .await
            .with_context(|| format!("creating {file}"))?;
    }
    Ok(())
}

pub fn policy_object(name: &str, ns: &str, spec: Value) -> anyhow::Result<MetricsSidecarPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "metrics.kubevirt.io/v1alpha1",
        "kind": "MetricsSidecarPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))?)
}

pub async fn create_policy(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> anyhow::Result<MetricsSidecarPolicy> {
    Ok(Api::<MetricsSidecarPolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &policy_object(name, ns, spec)?)
        .await?)
}

/// The operator, running in-process for one namespace, with leader election on a Lease
/// in that namespace.
pub struct Operator {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), kubevirt_metrics_operator::controller::Error>>,
}

/// The operator for namespace `ns`, running as its own ServiceAccount with exactly the RBAC
/// of `config/rbac` (installed into `ns` first), never as the admin.
pub async fn start_operator(server: &apiserver::ApiServer, ns: &str) -> anyhow::Result<Operator> {
    let client = rbac::operator_client(&server.client, &server.kubeconfig, ns).await?;
    start_operator_with(&client, ns).await
}

/// The operator with a given client (tests of deliberately broken RBAC).
pub async fn start_operator_with(client: &Client, ns: &str) -> anyhow::Result<Operator> {
    let config = RunConfig {
        namespace: Some(ns.to_owned()),
        lease_namespace: ns.to_owned(),
        identity: Some(format!("e2e-{ns}")),
        ..operator_config()
    };
    spawn_operator(client, config).await
}

/// The operator as `config/manager` runs it: every namespace, its Lease in `lease_ns`.
pub async fn start_operator_cluster_wide(
    client: &Client,
    lease_ns: &str,
) -> anyhow::Result<Operator> {
    let config = RunConfig {
        namespace: None,
        lease_namespace: lease_ns.to_owned(),
        identity: Some(format!("e2e-cluster-{lease_ns}")),
        ..operator_config()
    };
    spawn_operator(client, config).await
}

fn operator_config() -> RunConfig {
    RunConfig {
        http_address: SocketAddr::from(([127, 0, 0, 1], 0)),
        leader_election: true,
        lease_duration: Duration::from_secs(10),
        lease_grace: Duration::from_secs(3),
        ..RunConfig::default()
    }
}

async fn spawn_operator(client: &Client, config: RunConfig) -> anyhow::Result<Operator> {
    kubevirt_metrics_operator::controller::init_logging(
        kubevirt_metrics_operator::controller::LogFormat::Text,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run_with_client(
        client.clone(),
        config,
        async {
            let _ = stopped.await;
        },
        Some(bound_tx),
    ));
    let address = tokio::time::timeout(Duration::from_secs(10), bound_rx).await??;
    Ok(Operator {
        address,
        stop: Some(stop),
        task,
    })
}

impl Operator {
    /// Whether the operator is still running (it has not returned, with or without error).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Kills the operator where it stands, as a crashed or OOM-killed pod: no graceful
    /// shutdown. Unlike a dead pod's, its lease is given up soon after: kube-lease-manager's
    /// task is spawned apart, survives the abort and releases the lease once it sees its
    /// holder gone.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// GET on the operator's HTTP endpoint: (status code, body).
    pub async fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let response = reqwest::get(format!("http://{}{path}", self.address)).await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// The value of a sample line of the operator's /metrics, 0 when absent.
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let (_, text) = self.http_get("/metrics").await?;
        Ok(text
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0))
    }

    /// Graceful stop (as SIGTERM does); fails if the operator returned an error.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task).await???;
        Ok(())
    }
}

/// Polls `check` until it yields `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn get_kubevirt(client: &Client, ns: &str, name: &str) -> anyhow::Result<KubeVirt> {
    Ok(Api::<KubeVirt>::namespaced(client.clone(), ns)
        .get(name)
        .await?)
}

pub async fn get_policy(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<Option<MetricsSidecarPolicy>> {
    Ok(Api::<MetricsSidecarPolicy>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

/// The Ready condition's reason, if any.
pub fn ready_reason(policy: &MetricsSidecarPolicy) -> Option<String> {
    policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone())
}

/// Our entries for `policy`, as the plan builds them from the object the server holds.
pub fn planned_entries(policy: &MetricsSidecarPolicy, kv: &KubeVirt) -> anyhow::Result<Vec<Value>> {
    Ok(
        kubevirt_metrics_operator::plan::plan(policy, Some(kv), &Default::default())?
            .entry_values(),
    )
}
