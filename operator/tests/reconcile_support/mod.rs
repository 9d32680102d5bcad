//! A scripted API server for reconcile tests (the `ApiServerVerifier` pattern of
//! kube-rs/controller-rs): the reconcile runs against a `kube::Client` whose transport is a
//! `tower_test` mock, and the test answers each request in order after asserting its
//! method, path, query and body. Any request the script does not expect fails the test,
//! and so does a missing one.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, Resource};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

use kubevirt_metrics_operator::api::MetricsSidecarPolicy;
use kubevirt_metrics_operator::controller::metrics::Metrics;
use kubevirt_metrics_operator::controller::{Context, ReconcileError, Settings, reconcile};

pub const NS: &str = "kubevirt";
pub const IMAGE: &str = "quay.io/kubevirt/metrics-sidecars:v0.1.0";
pub const OWNER: &str = "kubevirt/metrics";
/// The creationTimestamp of the test policies (the older one, where two compete).
pub const CREATED: &str = "2026-01-01T00:00:00Z";

pub const KV_PATH: &str = "/apis/kubevirt.io/v1/namespaces/kubevirt/kubevirts";
pub const MSP_PATH: &str =
    "/apis/metrics.kubevirt.io/v1alpha1/namespaces/kubevirt/metricssidecarpolicies";
pub const DS_PATH: &str = "/apis/apps/v1/namespaces/kubevirt/daemonsets";
pub const DEPLOY_PATH: &str = "/apis/apps/v1/namespaces/kubevirt/deployments";
pub const HCO_PATH: &str = "/apis/hco.kubevirt.io/v1beta1/namespaces/kubevirt/hyperconvergeds";
pub const PODS_PATH: &str = "/api/v1/namespaces/kubevirt/pods";
pub const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/kubevirt/events";

pub const MONITORING_DISCOVERY_PATH: &str = "/apis/monitoring.coreos.com/v1";
pub const NP_PATH: &str = "/apis/networking.k8s.io/v1/namespaces/kubevirt/networkpolicies";
pub const SERVICES_PATH: &str = "/api/v1/namespaces/kubevirt/services";
pub const MANAGED_SELECTOR: &str =
    "&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dkubevirt-metrics-operator";

/// The query of a server-side apply (forced) and of a merge patch by this operator.
pub const APPLY_QUERY: &str = "&force=true&fieldManager=kubevirt-metrics-operator";
pub const PATCH_QUERY: &str = "&fieldManager=kubevirt-metrics-operator";

pub const DS_SELECTOR: &str = "&labelSelector=kubevirt.io%3Dvirt-handler";
pub const DEPLOY_SELECTOR: &str =
    "&labelSelector=kubevirt.io+in+%28virt-controller%2Cvirt-api%2Cvirt-operator%29";

pub const POD_SELECTOR: &str =
    "&labelSelector=kubevirt.io+in+%28virt-handler%2Cvirt-controller%2Cvirt-api%2Cvirt-operator%29";

/// One received request.
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
    send: SendResponse<Response<Body>>,
}

impl Received {
    pub fn reply(self, code: u16, body: &Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let response = Response::builder()
            .status(code)
            .body(Body::from(bytes))
            .unwrap();
        self.send.send_response(response);
    }

    pub fn ok(self, body: &Value) {
        self.reply(200, body);
    }

    /// Replies with the request's own body (what a create or a patch echo back, roughly).
    pub fn echo(self) {
        let body = self.body.clone().unwrap_or(Value::Null);
        self.reply(200, &body);
    }

    pub fn conflict(self, what: &str) {
        self.reply(
            409,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("Operation cannot be fulfilled on {what}: the object has been modified; please apply your changes to the latest version and try again"),
                "reason": "Conflict", "code": 409,
            }),
        );
    }

    /// Asserts a forced server-side apply by this operator.
    pub fn assert_server_side_apply(&self) {
        assert_eq!(self.query, APPLY_QUERY);
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
    }

    /// Asserts a JSON merge patch by this operator.
    pub fn assert_merge_patch(&self) {
        assert_eq!(self.query, PATCH_QUERY);
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
    }

    pub fn not_found(self) {
        self.reply(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404}),
        );
    }
}

pub struct Server {
    handle: Handle<Request<Body>, Response<Body>>,
    pub log: Vec<String>,
}

/// A client wired to a scripted server, and a context with a fresh metrics registry.
pub fn setup() -> (Arc<Context>, Server) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let metrics = Arc::new(Metrics::new().unwrap());
    let ctx = Context::new(
        client,
        metrics,
        Settings::default(),
        Some("test-replica".into()),
    );
    (
        ctx,
        Server {
            handle,
            log: Vec::new(),
        },
    )
}

impl Server {
    /// The next request; asserts its method and path (query checked separately).
    pub async fn expect(&mut self, method: &str, path: &str) -> Received {
        let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {method} {path}; so far: {:#?}",
                    self.log
                )
            });
        let (request, send) = next.unwrap_or_else(|| {
            panic!(
                "client gone while expecting {method} {path}; so far: {:#?}",
                self.log
            )
        });
        let method_got = request.method().to_string();
        let path_got = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&bytes).unwrap())
        };
        self.log.push(format!("{method_got} {path_got}?{query}"));
        assert_eq!(
            (method_got.as_str(), path_got.as_str()),
            (method, path),
            "unexpected request (query {query:?}, body {body:?}); so far: {:#?}",
            self.log
        );
        Received {
            method: method_got,
            path: path_got,
            query,
            content_type,
            body,
            send,
        }
    }

    /// Answers the five reads every Apply reconcile starts with (no component pods).
    pub async fn reads(&mut self, kubevirts: &[Value], policies: &[Value]) {
        self.lists(kubevirts, policies).await;
        self.workloads(&[virt_handler(true)], &deployments(true))
            .await;
        self.pods(&[]).await;
    }

    /// The five reads, before any sidecar is rolled out.
    pub async fn reads_without_sidecars(&mut self, kubevirts: &[Value], policies: &[Value]) {
        self.lists(kubevirts, policies).await;
        self.workloads(&[virt_handler(false)], &deployments(false))
            .await;
        self.pods(&[]).await;
    }

    /// The list of the component workloads' pods (rollout safety).
    pub async fn pods(&mut self, pods: &[Value]) {
        let r = self.expect("GET", PODS_PATH).await;
        assert_eq!(r.query, POD_SELECTOR);
        r.ok(&list("v1", "PodList", pods));
    }

    pub async fn lists(&mut self, kubevirts: &[Value], policies: &[Value]) {
        let r = self.expect("GET", KV_PATH).await;
        assert_eq!(r.query, "");
        r.ok(&list("kubevirt.io/v1", "KubeVirtList", kubevirts));
        let r = self.expect("GET", MSP_PATH).await;
        assert_eq!(r.query, "");
        r.ok(&list(
            "metrics.kubevirt.io/v1alpha1",
            "MetricsSidecarPolicyList",
            policies,
        ));
    }

    pub async fn workloads(&mut self, daemon_sets: &[Value], deployments: &[Value]) {
        let r = self.expect("GET", DS_PATH).await;
        assert_eq!(r.query, DS_SELECTOR);
        r.ok(&list("apps/v1", "DaemonSetList", daemon_sets));
        let r = self.expect("GET", DEPLOY_PATH).await;
        assert_eq!(r.query, DEPLOY_SELECTOR);
        r.ok(&list("apps/v1", "DeploymentList", deployments));
    }

    /// The monitoring step of an Apply reconcile on a cluster without the
    /// prometheus-operator CRDs and without NetworkPolicies: API discovery of
    /// monitoring.coreos.com/v1 (404) and the namespace's NetworkPolicies (none); nothing
    /// is planned, so nothing else is asked.
    pub async fn monitoring_reads(&mut self) {
        let r = self.expect("GET", MONITORING_DISCOVERY_PATH).await;
        r.not_found();
        let r = self.expect("GET", NP_PATH).await;
        assert_eq!(r.query, "");
        r.ok(&list("networking.k8s.io/v1", "NetworkPolicyList", &[]));
    }

    /// The monitoring step of a policy deletion without the prometheus-operator CRDs:
    /// discovery, then our Services and NetworkPolicies (none).
    pub async fn monitoring_cleanup_reads(&mut self) {
        let r = self.expect("GET", MONITORING_DISCOVERY_PATH).await;
        r.not_found();
        let r = self.expect("GET", SERVICES_PATH).await;
        assert_eq!(r.query, MANAGED_SELECTOR);
        r.ok(&list("v1", "ServiceList", &[]));
        let r = self.expect("GET", NP_PATH).await;
        assert_eq!(r.query, MANAGED_SELECTOR);
        r.ok(&list("networking.k8s.io/v1", "NetworkPolicyList", &[]));
    }

    /// The server-side apply of the policy status; returns the applied status.
    pub async fn status_apply(&mut self, policy: &str) -> Value {
        let r = self
            .expect("PATCH", &format!("{MSP_PATH}/{policy}/status"))
            .await;
        r.assert_server_side_apply();
        let body = r.body.clone().unwrap();
        assert_eq!(body["apiVersion"], "metrics.kubevirt.io/v1alpha1");
        assert_eq!(body["kind"], "MetricsSidecarPolicy");
        let mut object = body.clone();
        object["metadata"] = json!({"name": policy, "namespace": NS});
        object["spec"] = json!({});
        r.ok(&object);
        body["status"].clone()
    }

    /// An Event about the policy; returns (type, reason, note).
    pub async fn event(&mut self) -> (String, String, String) {
        let r = self.expect("POST", EVENTS_PATH).await;
        let body = r.body.clone().unwrap();
        assert_eq!(body["regarding"]["kind"], "MetricsSidecarPolicy");
        assert_eq!(body["reportingController"], "kubevirt-metrics-operator");
        assert_eq!(body["reportingInstance"], "test-replica");
        let out = (
            body["type"].as_str().unwrap().to_owned(),
            body["reason"].as_str().unwrap().to_owned(),
            body["note"].as_str().unwrap_or_default().to_owned(),
        );
        r.reply(201, &body);
        out
    }

    /// After the reconcile ended: drops the context (the last client clone), then asserts
    /// that nothing else was sent.
    pub async fn done(mut self, ctx: Arc<Context>) {
        drop(ctx);
        match tokio::time::timeout(Duration::from_secs(2), self.handle.next_request()).await {
            Ok(None) => {}
            Ok(Some((request, _))) => panic!(
                "unexpected extra request {} {}; so far: {:#?}",
                request.method(),
                request.uri(),
                self.log
            ),
            Err(_) => panic!("a client is still alive (a clone of the context outlived the test)"),
        }
    }
}

/// Runs one reconcile in the background; the test answers its requests meanwhile.
pub fn spawn_reconcile(
    policy: &Value,
    ctx: &Arc<Context>,
) -> tokio::task::JoinHandle<Result<Action, ReconcileError>> {
    let policy: MetricsSidecarPolicy = serde_json::from_value(policy.clone()).unwrap();
    tokio::spawn(reconcile(Arc::new(policy), ctx.clone()))
}

pub fn list(api_version: &str, kind: &str, items: &[Value]) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "900"}, "items": items})
}

/// A policy named `name` with a finalizer, enabling virt-handler and virt-controller.
pub fn policy(name: &str, created: &str) -> Value {
    json!({
        "apiVersion": "metrics.kubevirt.io/v1alpha1",
        "kind": "MetricsSidecarPolicy",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1,
            "resourceVersion": "10", "creationTimestamp": created,
            "finalizers": ["metrics.kubevirt.io/cleanup"],
        },
        "spec": {
            "defaults": {"image": IMAGE},
            "components": {"virtHandler": {}, "virtController": {}},
        },
    })
}

/// The release sample KubeVirt CR (testdata), deployed, at resourceVersion `rv`.
pub fn kubevirt(rv: &str, patches: Option<Vec<Value>>) -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/kubevirt-v1.9.0/kubevirt-cr.yaml"
    ))
    .unwrap();
    let mut kv: Value = serde_yaml::from_str(text.trim_start_matches("---\n")).unwrap();
    kv["metadata"]["resourceVersion"] = json!(rv);
    kv["metadata"]["uid"] = json!("kv-uid");
    kv["metadata"]["generation"] = json!(2);
    kv["metadata"]["creationTimestamp"] = json!("2025-12-01T00:00:00Z");
    if let Some(patches) = patches {
        kv["spec"]["customizeComponents"]["patches"] = Value::Array(patches);
    }
    kv["status"] = json!({"phase": "Deployed"});
    kv
}

fn manifest(file: &str) -> Value {
    let path = format!(
        "{}/../testdata/kubevirt-v1.9.0/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(text.trim_start_matches("---\n")).unwrap()
}

fn sidecar_container() -> Value {
    json!({"name": "metrics-sidecar", "image": IMAGE})
}

fn with_sidecar(mut workload: Value, sidecar: bool) -> Value {
    if sidecar {
        workload["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(sidecar_container());
    }
    workload["metadata"]["generation"] = json!(4);
    workload["metadata"]["resourceVersion"] = json!("70");
    workload
}

/// The real virt-handler DaemonSet (testdata), rolled out on 3 nodes.
pub fn virt_handler(sidecar: bool) -> Value {
    let mut ds = with_sidecar(manifest("virt-handler-daemonset.yaml"), sidecar);
    ds["status"] = json!({"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberMisscheduled": 0,
        "updatedNumberScheduled": 3, "numberReady": 3, "observedGeneration": 4});
    ds
}

fn deployment(file: &str, sidecar: bool) -> Value {
    let mut d = with_sidecar(manifest(file), sidecar);
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    d["status"] = json!({"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas, "observedGeneration": 4});
    d
}

/// virt-controller and virt-api (sidecar as asked) and virt-operator (never a sidecar).
pub fn deployments(sidecar: bool) -> Vec<Value> {
    vec![
        deployment("virt-controller-deployment.yaml", sidecar),
        deployment("virt-api-deployment.yaml", sidecar),
        deployment("virt-operator-deployment.yaml", false),
    ]
}

pub fn virt_operator_with_marker(owner: &str) -> Value {
    let mut d = deployment("virt-operator-deployment.yaml", true);
    d["spec"]["template"]["metadata"]["annotations"]["metrics.kubevirt.io/sidecar-policy"] =
        json!(owner);
    d
}

/// A foreign entry, as a user or GitOps tool might have written it.
pub fn foreign(name: &str, patch: &str) -> Value {
    json!({"resourceName": name, "resourceType": "Deployment", "patch": patch, "type": "strategic"})
}

/// The foreign entry most tests keep: virt-api with 3 replicas.
pub fn foreign_virt_api() -> Value {
    foreign("virt-api", r#"{"spec":{"replicas":3}}"#)
}

/// The entries of a policy named "other" in another namespace (a different marker owner).
pub fn other_policy_entries() -> Vec<Value> {
    let mut other = policy("other", CREATED);
    other["metadata"]["namespace"] = json!("elsewhere");
    our_entries(&other)
}

/// Our entries for `policy`, as the plan builds them (the plan is golden-tested on its own).
pub fn our_entries(policy: &Value) -> Vec<Value> {
    let policy: MetricsSidecarPolicy = serde_json::from_value(policy.clone()).unwrap();
    let kv: kubevirt_metrics_operator::api::KubeVirt =
        serde_json::from_value(kubevirt("1", None)).unwrap();
    kubevirt_metrics_operator::plan::plan(&policy, Some(&kv), &Default::default())
        .unwrap()
        .entry_values()
}

/// Condition `type_` of an applied status.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#}"))
}

pub fn object_ref_name<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}
