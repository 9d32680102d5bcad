//! Pure planning of the monitoring objects of a policy (`spec.monitoring`): which objects,
//! with which bytes, for the observed facts (which prometheus-operator CRDs are served,
//! whether the namespace has KubeVirt's NetworkPolicies, the KubeVirt version).
//!
//! - Scrape object: a PodMonitor, or a headless Service per component plus a ServiceMonitor,
//!   with one endpoint per distinct sidecar port. TLS as KubeVirt's own ServiceMonitor
//!   (`scheme: https`, `insecureSkipVerify: true`): the sidecar serves the component's own
//!   certificate, issued by KubeVirt's self-signed CA for the Services, not for pod IPs, and
//!   that CA is not available to Prometheus. Relabelings come from
//!   `config/prometheus/podmonitor.yaml` (embedded, one source): the target's `pod` becomes
//!   `sidecar_pod` (so KubeVirt's `sum(up{pod=~'virt-handler-.*'})` rules do not count the
//!   sidecar), `job` is `kubevirt-metrics-sidecars` (what the alerts select), and
//!   metricRelabelings put `pod` back on the series.
//! - Labels of KubeVirt's own ServiceMonitor (`k8s-app: kubevirt`,
//!   `openshift.io/cluster-monitoring: ""`, `prometheus.kubevirt.io: "true"`) on the
//!   monitors, and KubeVirt's PrometheusRule labels on the rules, so the same Prometheus
//!   selects them.
//! - The sidecar alerts: `config/prometheus/prometheusrule.yaml`, embedded.
//! - The backports: see [`super::backports`].
//! - The NetworkPolicy: only when KubeVirt's own NetworkPolicies are in the namespace. An
//!   allow policy isolates the pods it selects, so without KubeVirt's deny-by-default ones it
//!   would cut every other ingress to the components.
//!
//! Every object carries an ownerReference to the policy (controller, no
//! blockOwnerDeletion) and a hash of its own content, so the controller writes only what
//! changed.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};

use super::backports::{self, BackportInputs, ReleaseMatch, RuleKind};
use super::{Plan, PlanError};
use crate::api::{BackportsStatus, Component, FIELD_MANAGER, MetricsSidecarPolicy, ScrapeObject};

const PODMONITOR_YAML: &str = include_str!("../../../config/prometheus/podmonitor.yaml");
const ALERTS_YAML: &str = include_str!("../../../config/prometheus/prometheusrule.yaml");

/// Label on every object the operator manages here.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Annotation holding the hash of the object as planned.
pub const HASH_ANNOTATION: &str = "metrics.kubevirt.io/content-hash";
/// Label of our sidecar Services (what our ServiceMonitor selects).
pub const SIDECAR_SERVICE_LABEL: &str = "metrics.kubevirt.io/sidecar-metrics";

/// Names of the objects (one set per namespace; only the policy that owns the KubeVirt CR
/// writes them). The same names as `config/prometheus`, so enabling the operator takes those
/// over instead of scraping twice.
pub const SCRAPE_NAME: &str = "kubevirt-metrics-sidecars";
pub const ALERTS_NAME: &str = "kubevirt-metrics-sidecars-rules";
pub const BACKPORTS_NAME: &str = "kubevirt-metrics-sidecars-backports";
pub const NETWORK_POLICY_NAME: &str = "kubevirt-allow-ingress-to-metrics-sidecars";

/// The kinds this module manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    PodMonitor,
    ServiceMonitor,
    PrometheusRule,
    Service,
    NetworkPolicy,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 5] = [
        Self::PodMonitor,
        Self::ServiceMonitor,
        Self::PrometheusRule,
        Self::Service,
        Self::NetworkPolicy,
    ];

    pub fn kind(self) -> &'static str {
        match self {
            Self::PodMonitor => "PodMonitor",
            Self::ServiceMonitor => "ServiceMonitor",
            Self::PrometheusRule => "PrometheusRule",
            Self::Service => "Service",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// (group, version, plural).
    pub fn gvr(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::PodMonitor => ("monitoring.coreos.com", "v1", "podmonitors"),
            Self::ServiceMonitor => ("monitoring.coreos.com", "v1", "servicemonitors"),
            Self::PrometheusRule => ("monitoring.coreos.com", "v1", "prometheusrules"),
            Self::Service => ("", "v1", "services"),
            Self::NetworkPolicy => ("networking.k8s.io", "v1", "networkpolicies"),
        }
    }

    pub fn api_version(self) -> String {
        match self.gvr() {
            ("", version, _) => version.to_owned(),
            (group, version, _) => format!("{group}/{version}"),
        }
    }
}

/// Which prometheus-operator kinds the API server serves (API discovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServedCrds {
    pub pod_monitor: bool,
    pub service_monitor: bool,
    pub prometheus_rule: bool,
}

impl ServedCrds {
    pub fn all() -> Self {
        Self {
            pod_monitor: true,
            service_monitor: true,
            prometheus_rule: true,
        }
    }

    pub fn serves(&self, kind: ObjectKind) -> bool {
        match kind {
            ObjectKind::PodMonitor => self.pod_monitor,
            ObjectKind::ServiceMonitor => self.service_monitor,
            ObjectKind::PrometheusRule => self.prometheus_rule,
            ObjectKind::Service | ObjectKind::NetworkPolicy => true,
        }
    }
}

/// What the controller observed for the monitoring decision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MonitoringFacts {
    pub crds: ServedCrds,
    /// The namespace has KubeVirt's NetworkPolicies (see [`is_kubevirt_network_policy`]).
    pub kubevirt_network_policies: bool,
    /// `status.observedKubeVirtVersion` of the target KubeVirt CR.
    pub kubevirt_version: Option<String>,
}

/// One object to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    pub kind: ObjectKind,
    pub name: String,
    pub body: Value,
}

impl DesiredObject {
    pub fn hash(&self) -> Option<&str> {
        self.body
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(HASH_ANNOTATION))
            .and_then(Value::as_str)
    }

    /// `Kind/name`, as status shows it.
    pub fn display(&self) -> String {
        format!("{}/{}", self.kind.kind(), self.name)
    }
}

/// Everything `spec.monitoring` wants, for the facts given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MonitoringPlan {
    pub objects: Vec<DesiredObject>,
    /// Kinds whose objects of this policy not in `objects` are deleted: every kind the API
    /// serves (prometheus-operator kinds only when their CRD is there).
    pub managed_kinds: Vec<ObjectKind>,
    /// Why something asked for is not planned.
    pub notes: Vec<String>,
    pub backports: Option<BackportsStatus>,
}

/// KubeVirt's NetworkPolicies: virt-operator names every one of its component policies
/// `kubevirt-allow-*` (v1.9.0: `kubevirt-allow-ingress-to-metrics`, ...). Ours has the same
/// prefix, so it is told apart by our managed-by label.
pub fn is_kubevirt_network_policy(
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    name.starts_with("kubevirt-allow-")
        && labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(FIELD_MANAGER)
}

/// The sidecar port facts the scrape objects need, from a planned container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SidecarPort {
    name: String,
    number: i64,
    https: bool,
}

fn sidecar_port(container: &Value) -> Result<SidecarPort, PlanError> {
    let port = container
        .pointer("/ports/0")
        .ok_or(PlanError::Internal("sidecar container without a port"))?;
    let name = port
        .get("name")
        .and_then(Value::as_str)
        .ok_or(PlanError::Internal("sidecar port without a name"))?;
    let number = port
        .get("containerPort")
        .and_then(Value::as_i64)
        .ok_or(PlanError::Internal("sidecar port without a number"))?;
    let https = container
        .pointer("/readinessProbe/httpGet/scheme")
        .and_then(Value::as_str)
        == Some("HTTPS");
    Ok(SidecarPort {
        name: name.to_owned(),
        number,
        https,
    })
}

/// Plans `spec.monitoring` of `policy` for `plan` (its enabled sidecars) and `facts`.
pub fn plan(
    policy: &MetricsSidecarPolicy,
    plan: &Plan,
    facts: &MonitoringFacts,
) -> Result<MonitoringPlan, PlanError> {
    let settings = policy.spec.monitoring.clone().unwrap_or_default();
    let owner = owner_reference(policy)?;
    let namespace = plan.namespace.as_str();
    let mut out = MonitoringPlan {
        managed_kinds: ObjectKind::ALL
            .into_iter()
            .filter(|k| facts.crds.serves(*k))
            .collect(),
        ..MonitoringPlan::default()
    };
    let mut ports: Vec<(Component, SidecarPort)> = Vec::new();
    for sidecar in &plan.sidecars {
        ports.push((sidecar.component, sidecar_port(&sidecar.container)?));
    }
    let components: Vec<&str> = ports.iter().map(|(c, _)| c.workload_name()).collect();
    let distinct: BTreeSet<SidecarPort> = ports.iter().map(|(_, p)| p.clone()).collect();
    let mut missing_crds: BTreeSet<&str> = BTreeSet::new();

    if !ports.is_empty() {
        match settings.scrape() {
            ScrapeObject::PodMonitor if facts.crds.pod_monitor => {
                out.objects
                    .push(pod_monitor(namespace, &owner, &components, &distinct)?);
            }
            ScrapeObject::ServiceMonitor if facts.crds.service_monitor => {
                for (component, port) in &ports {
                    out.objects
                        .push(service(namespace, &owner, *component, port)?);
                }
                out.objects
                    .push(service_monitor(namespace, &owner, &distinct)?);
            }
            ScrapeObject::PodMonitor => {
                missing_crds.insert("PodMonitor");
            }
            ScrapeObject::ServiceMonitor => {
                missing_crds.insert("ServiceMonitor");
            }
            ScrapeObject::None => {}
        }
        if settings.alerts() {
            if facts.crds.prometheus_rule {
                out.objects.push(alerts_rule(namespace, &owner)?);
            } else {
                missing_crds.insert("PrometheusRule");
            }
        }
        if settings.network_policy() {
            if facts.kubevirt_network_policies {
                out.objects
                    .push(network_policy(namespace, &owner, &components, &distinct)?);
            } else {
                out.notes.push(
                    "no NetworkPolicy: the namespace has none of KubeVirt's NetworkPolicies (kubevirt-allow-*), so the sidecar ports are not blocked".to_owned(),
                );
            }
        }
    }
    if settings.backports {
        let handler_sidecar = ports.iter().any(|(c, _)| *c == Component::VirtHandler);
        let (status, object) =
            plan_backports(namespace, &owner, facts, handler_sidecar, &mut missing_crds)?;
        out.backports = Some(status);
        out.objects.extend(object);
    }
    if !missing_crds.is_empty() {
        let kinds: Vec<&str> = missing_crds.into_iter().collect();
        out.notes.insert(
            0,
            format!(
                "the prometheus-operator CRDs (monitoring.coreos.com/v1) for {} are not served: no such object is created; they are created when the CRDs appear",
                kinds.join(", ")
            ),
        );
    }
    Ok(out)
}

fn plan_backports(
    namespace: &str,
    owner: &Value,
    facts: &MonitoringFacts,
    handler_sidecar: bool,
    missing_crds: &mut BTreeSet<&str>,
) -> Result<(BackportsStatus, Option<DesiredObject>), PlanError> {
    let mut status = BackportsStatus {
        kubevirt_version: facts.kubevirt_version.clone(),
        ..BackportsStatus::default()
    };
    let Some(version) = facts.kubevirt_version.as_deref() else {
        status.message = Some(
            "the KubeVirt CR has no status.observedKubeVirtVersion yet: no backports".to_owned(),
        );
        return Ok((status, None));
    };
    let data_release = match backports::match_release(version) {
        ReleaseMatch::Known { data_release } => data_release,
        ReleaseMatch::Unknown => {
            status.message = Some(format!(
                "no rule data for KubeVirt {version} (data covers {}): no backports installed",
                backports::RELEASES.join(", ")
            ));
            return Ok((status, None));
        }
    };
    status.data_release = Some(data_release.to_owned());
    let decided = backports::decide(&BackportInputs {
        data_release,
        handler_sidecar,
        namespace,
    })
    .map_err(|e| PlanError::Backports(e.to_string()))?;
    status.recording_rules = decided
        .names(RuleKind::Record)
        .into_iter()
        .map(str::to_owned)
        .collect();
    status.alerts = decided
        .names(RuleKind::Alert)
        .into_iter()
        .map(str::to_owned)
        .collect();
    status.skipped = decided
        .skipped
        .iter()
        .map(|s| format!("{} (missing: {})", s.name, s.missing.join(", ")))
        .collect();
    if decided.rules.is_empty() {
        status.message = Some(format!(
            "KubeVirt {version} lacks no v1.9.0 rule whose inputs are served: nothing to install"
        ));
        return Ok((status, None));
    }
    if !facts.crds.prometheus_rule {
        missing_crds.insert("PrometheusRule");
        status.message = Some(
            "the PrometheusRule CRD (monitoring.coreos.com/v1) is not served: backports not installed"
                .to_owned(),
        );
        return Ok((status, None));
    }
    let body = json!({
        "apiVersion": ObjectKind::PrometheusRule.api_version(),
        "kind": "PrometheusRule",
        "metadata": metadata(BACKPORTS_NAME, namespace, owner, rule_labels()),
        "spec": {"groups": backports::rule_groups(&decided)},
    });
    Ok((
        status,
        Some(finish(ObjectKind::PrometheusRule, BACKPORTS_NAME, body)?),
    ))
}

fn owner_reference(policy: &MetricsSidecarPolicy) -> Result<Value, PlanError> {
    let reference: OwnerReference = policy
        .controller_owner_ref(&())
        .ok_or(PlanError::Internal("the policy has no uid"))?;
    serde_json::to_value(reference).map_err(PlanError::Serialize)
}

fn kubevirt_monitor_labels() -> Map<String, Value> {
    let mut labels = base_labels();
    labels.insert("k8s-app".into(), json!("kubevirt"));
    labels.insert("openshift.io/cluster-monitoring".into(), json!(""));
    labels.insert("prometheus.kubevirt.io".into(), json!("true"));
    labels
}

fn rule_labels() -> Map<String, Value> {
    let mut labels = base_labels();
    labels.insert("k8s-app".into(), json!("kubevirt"));
    labels.insert("prometheus.kubevirt.io".into(), json!("true"));
    labels
}

fn base_labels() -> Map<String, Value> {
    let mut labels = Map::new();
    labels.insert(MANAGED_BY_LABEL.into(), json!(FIELD_MANAGER));
    labels.insert(
        "app.kubernetes.io/name".into(),
        json!("kubevirt-metrics-sidecars"),
    );
    labels
}

fn metadata(name: &str, namespace: &str, owner: &Value, labels: Map<String, Value>) -> Value {
    json!({
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [owner],
    })
}

/// Adds the content hash annotation (FNV-1a over the JSON bytes without it).
fn finish(kind: ObjectKind, name: &str, mut body: Value) -> Result<DesiredObject, PlanError> {
    let bytes = serde_json::to_vec(&body).map_err(PlanError::Serialize)?;
    let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    });
    let metadata = body
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or(PlanError::Internal("object without metadata"))?;
    metadata.insert(
        "annotations".into(),
        json!({HASH_ANNOTATION: format!("{hash:016x}")}),
    );
    Ok(DesiredObject {
        kind,
        name: name.to_owned(),
        body,
    })
}

/// The relabelings of `config/prometheus/podmonitor.yaml`'s endpoint.
fn shipped_relabelings() -> Result<(Value, Value), PlanError> {
    let shipped: Value = serde_yaml::from_str(PODMONITOR_YAML)
        .map_err(|_| PlanError::Internal("config/prometheus/podmonitor.yaml is not YAML"))?;
    let endpoint = shipped
        .pointer("/spec/podMetricsEndpoints/0")
        .ok_or(PlanError::Internal("podmonitor.yaml has no endpoint"))?;
    let relabelings = endpoint
        .get("relabelings")
        .cloned()
        .ok_or(PlanError::Internal("podmonitor.yaml has no relabelings"))?;
    let metric = endpoint
        .get("metricRelabelings")
        .cloned()
        .ok_or(PlanError::Internal(
            "podmonitor.yaml has no metricRelabelings",
        ))?;
    Ok((relabelings, metric))
}

/// One scrape endpoint (PodMonitor and ServiceMonitor share the shape).
fn endpoint(port: &SidecarPort) -> Result<Value, PlanError> {
    let (relabelings, metric_relabelings) = shipped_relabelings()?;
    let mut endpoint = json!({
        "port": port.name,
        "path": "/metrics",
        "scheme": if port.https { "https" } else { "http" },
    });
    let object = endpoint
        .as_object_mut()
        .ok_or(PlanError::Internal("endpoint is not an object"))?;
    if port.https {
        // As KubeVirt's own ServiceMonitor: its CA is not available to Prometheus.
        object.insert("tlsConfig".into(), json!({"insecureSkipVerify": true}));
    }
    object.insert("honorLabels".into(), json!(true));
    object.insert("relabelings".into(), relabelings);
    object.insert("metricRelabelings".into(), metric_relabelings);
    Ok(endpoint)
}

fn endpoints(ports: &BTreeSet<SidecarPort>) -> Result<Vec<Value>, PlanError> {
    // One endpoint per port name and scheme; the number does not matter to a monitor.
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for port in ports {
        if seen.insert((port.name.clone(), port.https)) {
            out.push(endpoint(port)?);
        }
    }
    Ok(out)
}

fn component_selector(components: &[&str]) -> Value {
    json!({"matchExpressions": [{"key": "kubevirt.io", "operator": "In", "values": components}]})
}

fn pod_monitor(
    namespace: &str,
    owner: &Value,
    components: &[&str],
    ports: &BTreeSet<SidecarPort>,
) -> Result<DesiredObject, PlanError> {
    let mut selector = component_selector(components);
    if let Some(object) = selector.as_object_mut() {
        object.insert(
            "matchLabels".into(),
            json!({"prometheus.kubevirt.io": "true"}),
        );
    }
    let body = json!({
        "apiVersion": ObjectKind::PodMonitor.api_version(),
        "kind": "PodMonitor",
        "metadata": metadata(SCRAPE_NAME, namespace, owner, kubevirt_monitor_labels()),
        "spec": {
            "selector": selector,
            "podMetricsEndpoints": endpoints(ports)?,
        },
    });
    finish(ObjectKind::PodMonitor, SCRAPE_NAME, body)
}

/// The headless Service of one component's sidecar.
pub fn service_name(component: Component) -> String {
    format!("{}-metrics-sidecar", component.workload_name())
}

fn service(
    namespace: &str,
    owner: &Value,
    component: Component,
    port: &SidecarPort,
) -> Result<DesiredObject, PlanError> {
    let name = service_name(component);
    let mut labels = base_labels();
    labels.insert(SIDECAR_SERVICE_LABEL.into(), json!("true"));
    labels.insert("kubevirt.io".into(), json!(component.workload_name()));
    let body = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(&name, namespace, owner, labels),
        "spec": {
            "clusterIP": "None",
            "selector": {"kubevirt.io": component.workload_name()},
            "ports": [{
                "name": port.name,
                "port": port.number,
                "targetPort": port.name,
                "protocol": "TCP",
            }],
        },
    });
    finish(ObjectKind::Service, &name, body)
}

fn service_monitor(
    namespace: &str,
    owner: &Value,
    ports: &BTreeSet<SidecarPort>,
) -> Result<DesiredObject, PlanError> {
    let body = json!({
        "apiVersion": ObjectKind::ServiceMonitor.api_version(),
        "kind": "ServiceMonitor",
        "metadata": metadata(SCRAPE_NAME, namespace, owner, kubevirt_monitor_labels()),
        "spec": {
            "selector": {"matchLabels": {SIDECAR_SERVICE_LABEL: "true"}},
            "namespaceSelector": {"matchNames": [namespace]},
            "endpoints": endpoints(ports)?,
        },
    });
    finish(ObjectKind::ServiceMonitor, SCRAPE_NAME, body)
}

/// The shipped sidecar alerts (`config/prometheus/prometheusrule.yaml`), owned by the policy.
fn alerts_rule(namespace: &str, owner: &Value) -> Result<DesiredObject, PlanError> {
    let shipped: Value = serde_yaml::from_str(ALERTS_YAML)
        .map_err(|_| PlanError::Internal("config/prometheus/prometheusrule.yaml is not YAML"))?;
    let groups = shipped
        .pointer("/spec/groups")
        .cloned()
        .ok_or(PlanError::Internal("prometheusrule.yaml has no groups"))?;
    let mut labels = rule_labels();
    if let Some(Value::Object(shipped_labels)) = shipped.pointer("/metadata/labels") {
        for (k, v) in shipped_labels {
            labels.insert(k.clone(), v.clone());
        }
    }
    let body = json!({
        "apiVersion": ObjectKind::PrometheusRule.api_version(),
        "kind": "PrometheusRule",
        "metadata": metadata(ALERTS_NAME, namespace, owner, labels),
        "spec": {"groups": groups},
    });
    finish(ObjectKind::PrometheusRule, ALERTS_NAME, body)
}

fn network_policy(
    namespace: &str,
    owner: &Value,
    components: &[&str],
    ports: &BTreeSet<SidecarPort>,
) -> Result<DesiredObject, PlanError> {
    let numbers: BTreeSet<i64> = ports.iter().map(|p| p.number).collect();
    let ports: Vec<Value> = numbers
        .into_iter()
        .map(|n| json!({"port": n, "protocol": "TCP"}))
        .collect();
    let body = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(NETWORK_POLICY_NAME, namespace, owner, base_labels()),
        "spec": {
            "podSelector": component_selector(components),
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": ports}],
        },
    });
    finish(ObjectKind::NetworkPolicy, NETWORK_POLICY_NAME, body)
}

/// Whether a live object belongs to `policy` (its controller ownerReference).
pub fn owned_by(owner_references: &[OwnerReference], policy: &MetricsSidecarPolicy) -> bool {
    let uid = policy.uid();
    owner_references
        .iter()
        .any(|r| r.kind == "MetricsSidecarPolicy" && Some(&r.uid) == uid.as_ref())
}

#[cfg(test)]
#[path = "monitoring_tests.rs"]
mod tests;
