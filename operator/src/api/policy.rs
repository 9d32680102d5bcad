//! `MetricsSidecarPolicy` (metrics.kubevirt.io/v1alpha1): which KubeVirt components get a
//! metrics-collector sidecar, and how it is configured.
//!
//! Shape: `spec.defaults` holds sidecar settings for every component; each entry under
//! `spec.components` turns one component on (present means enabled unless `enabled: false`)
//! and may override any default. Settings are resolved field by field: component value, else
//! `spec.defaults`, else the operator's built-in default (see `plan::PlanDefaults`).
//! Lists (`extraArgs`, `env`) are replaced as a whole, never concatenated, so the result is
//! predictable from the YAML alone.
//!
//! Validation that users should see at `kubectl apply` time is written as CEL rules
//! (`x-kubernetes-validations`), each tested in `tests/crd_cel.rs`.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::component::Component;
use super::exporters::{Aggregations, Exporters};

/// The ports KubeVirt's components already use (metrics/webhook/console/vmstats); a sidecar
/// port equal to one of them would clash inside the pod.
pub const RESERVED_PORTS: [i32; 4] = [8186, 8187, 8443, 8444];

/// Port names the components' own containers already use; names are unique per pod.
pub const RESERVED_PORT_NAMES: [&str; 4] = ["metrics", "vmstats", "virt-api", "webhooks"];

// kube-derive repeats `type_` per printcolumn, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "metrics.kubevirt.io",
    version = "v1alpha1",
    kind = "MetricsSidecarPolicy",
    plural = "metricssidecarpolicies",
    singular = "metricssidecarpolicy",
    namespaced,
    shortname = "msp",
    category = "kubevirt-metrics",
    status = "MetricsSidecarPolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Method",
        type_ = "string",
        description = "How the sidecars are injected",
        json_path = ".status.injectionMethod"
    ),
    printcolumn(
        name = "Components",
        type_ = "string",
        description = "Components that carry a sidecar",
        json_path = ".status.injectedComponents"
    ),
    printcolumn(
        name = "Paused",
        type_ = "boolean",
        priority = 1,
        json_path = ".spec.paused"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "Collector sidecars for KubeVirt's components: which components get one, and how it is configured. Lives in the KubeVirt namespace."
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.components) || !has(self.components.virtHandler) || !self.components.virtHandler.enabled || has(self.components.virtHandler.image) || (has(self.defaults) && has(self.defaults.image))")
        .message("virt-handler is enabled but has no image: set spec.defaults.image or spec.components.virtHandler.image")
        .reason(Reason::FieldValueRequired)
        .field_path(".components.virtHandler"),
    validation = Rule::new("!has(self.components) || !has(self.components.virtController) || !self.components.virtController.enabled || has(self.components.virtController.image) || (has(self.defaults) && has(self.defaults.image))")
        .message("virt-controller is enabled but has no image: set spec.defaults.image or spec.components.virtController.image")
        .reason(Reason::FieldValueRequired)
        .field_path(".components.virtController"),
    validation = Rule::new("!has(self.components) || !has(self.components.virtApi) || !self.components.virtApi.enabled || has(self.components.virtApi.image) || (has(self.defaults) && has(self.defaults.image))")
        .message("virt-api is enabled but has no image: set spec.defaults.image or spec.components.virtApi.image")
        .reason(Reason::FieldValueRequired)
        .field_path(".components.virtApi"),
    validation = Rule::new("!has(self.components) || !has(self.components.virtOperator) || !self.components.virtOperator.enabled || has(self.components.virtOperator.image) || (has(self.defaults) && has(self.defaults.image))")
        .message("virt-operator is enabled but has no image: set spec.defaults.image or spec.components.virtOperator.image")
        .reason(Reason::FieldValueRequired)
        .field_path(".components.virtOperator")
)]
pub struct MetricsSidecarPolicySpec {
    /// The KubeVirt CR to inject into, in the policy's namespace. When omitted, the only
    /// KubeVirt CR in the namespace is used (more than one is reported in status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubevirt_ref: Option<KubeVirtRef>,

    /// Stop all writes: the operator neither injects, updates nor removes anything while
    /// paused (status is still reported). Useful during KubeVirt upgrades or debugging.
    #[serde(default)]
    pub paused: bool,

    /// Sidecar settings that apply to every component unless the component overrides them.
    #[serde(default)]
    pub defaults: SidecarSettings,

    /// Components that get a sidecar. A component listed here is enabled unless it says
    /// `enabled: false`; a component not listed gets none.
    #[serde(default)]
    pub components: Components,

    /// Rollout safety: when a sidecar crash-loops or stays unready, the operator takes that
    /// component's sidecar out again, so a KubeVirt rollout or upgrade is never blocked by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSettings>,

    /// Monitoring objects the operator manages for the sidecars (scrape object, alerts,
    /// NetworkPolicy) and KubeVirt rule backports. The Prometheus Operator objects are made
    /// only when its CRDs (monitoring.coreos.com/v1) are served; status says why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSettings>,

    /// Aggregation and dropping every sidecar applies before `/metrics` and each push sink
    /// (a component's own `aggregations` replaces this as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Aggregations>,
}

/// How Prometheus is told to scrape the sidecars.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScrapeObject {
    /// One PodMonitor selecting the component pods' sidecar ports (default).
    #[default]
    PodMonitor,
    /// A headless Service per component with a sidecar, and one ServiceMonitor.
    ServiceMonitor,
    /// No scrape object: scrape the sidecars yourself.
    None,
}

/// `spec.monitoring`: what the operator creates besides the sidecars. Every object is
/// owned by the policy (ownerReference) and removed when the policy is deleted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSettings {
    /// `PodMonitor` (default), `ServiceMonitor` or `None`. Labelled like KubeVirt's own
    /// ServiceMonitor, so the Prometheus that scrapes KubeVirt scrapes the sidecars too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape: Option<ScrapeObject>,

    /// A PrometheusRule with the sidecars' health alerts (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<bool>,

    /// A NetworkPolicy admitting the sidecar ports, made only when the namespace has
    /// KubeVirt's own NetworkPolicies (which admit only 8443 and 8187) (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<bool>,

    /// Install the recording rules and alerts of KubeVirt v1.9.0 that the running release
    /// (`status.observedKubeVirtVersion` of the KubeVirt CR) lacks, when their input metrics
    /// are served (default false).
    #[serde(default)]
    pub backports: bool,
}

impl MonitoringSettings {
    pub fn scrape(&self) -> ScrapeObject {
        self.scrape.unwrap_or_default()
    }
    pub fn alerts(&self) -> bool {
        self.alerts.unwrap_or(true)
    }
    pub fn network_policy(&self) -> bool {
        self.network_policy.unwrap_or(true)
    }
}

/// Default of `spec.rollout.unhealthyTimeout`.
pub const DEFAULT_UNHEALTHY_TIMEOUT: &str = "5m";

/// How the operator guards KubeVirt's rollout against a failing sidecar.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSettings {
    /// How long a `metrics-sidecar` container may stay unready in a pod of a patched
    /// workload before the operator removes that component's sidecar (default 5m), between
    /// 5s and 1h, e.g. `5m`, `90s`. A crash-looping sidecar is removed at once. The
    /// component stays without a sidecar until the policy's spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("unhealthyTimeout must be a duration such as 5m, 90s or 1m30s"),
        validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || (duration(self) >= duration('5s') && duration(self) <= duration('1h'))").message("unhealthyTimeout must be between 5s and 1h")
    )]
    pub unhealthy_timeout: Option<String>,
}

/// Names a KubeVirt CR in the policy's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtRef {
    /// Name of the KubeVirt CR.
    #[x_kube(validation = Rule::new("size(self) > 0").message("kubevirtRef.name must not be empty"))]
    pub name: String,
}

/// Per-component switches and overrides.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Components {
    /// The virt-handler DaemonSet (per-VMI runtime metrics); through customizeComponents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virt_handler: Option<VirtHandlerSettings>,
    /// The virt-controller Deployment; through customizeComponents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virt_controller: Option<ComponentSettings>,
    /// The virt-api Deployment; through customizeComponents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virt_api: Option<ComponentSettings>,
    /// The virt-operator Deployment. virt-operator does not manage its own Deployment, so
    /// this one is patched directly with server-side apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virt_operator: Option<ComponentSettings>,
}

impl Components {
    /// Whether the policy asks for a sidecar in `component`.
    pub fn enabled(&self, component: Component) -> bool {
        match component {
            Component::VirtHandler => self.virt_handler.as_ref().is_some_and(|c| c.enabled),
            Component::VirtController => self.virt_controller.as_ref().is_some_and(|c| c.enabled),
            Component::VirtApi => self.virt_api.as_ref().is_some_and(|c| c.enabled),
            Component::VirtOperator => self.virt_operator.as_ref().is_some_and(|c| c.enabled),
        }
    }

    /// The component's own `aggregations`, if it sets them.
    pub fn aggregations(&self, component: Component) -> Option<&Aggregations> {
        match component {
            Component::VirtHandler => self.virt_handler.as_ref()?.aggregations.as_ref(),
            Component::VirtController => self.virt_controller.as_ref()?.aggregations.as_ref(),
            Component::VirtApi => self.virt_api.as_ref()?.aggregations.as_ref(),
            Component::VirtOperator => self.virt_operator.as_ref()?.aggregations.as_ref(),
        }
    }

    /// The component's overrides, if the component is listed.
    pub fn settings(&self, component: Component) -> Option<&SidecarSettings> {
        match component {
            Component::VirtHandler => self.virt_handler.as_ref().map(|c| &c.sidecar),
            Component::VirtController => self.virt_controller.as_ref().map(|c| &c.sidecar),
            Component::VirtApi => self.virt_api.as_ref().map(|c| &c.sidecar),
            Component::VirtOperator => self.virt_operator.as_ref().map(|c| &c.sidecar),
        }
    }
}

fn enabled_by_default() -> bool {
    true
}

/// A control-plane component's sidecar: on/off plus overrides of `spec.defaults`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSettings {
    /// Inject a sidecar into this component (default true when the component is listed).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,

    /// Replaces `spec.aggregations` for this component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Aggregations>,

    #[serde(flatten)]
    pub sidecar: SidecarSettings,
}

impl Default for ComponentSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            aggregations: None,
            sidecar: SidecarSettings::default(),
        }
    }
}

/// virt-handler's sidecar: like the others, plus where domain statistics come from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtHandlerSettings {
    /// Inject a sidecar into virt-handler (default true when listed).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,

    /// Where domain statistics come from: `launcher` (virt-launcher's cmd socket under the
    /// kubelet pods directory, the default) or `libvirt` (URIs given in `extraArgs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<StatsSource>,

    /// Replaces `spec.aggregations` for virt-handler (where the per-VMI series are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Aggregations>,

    #[serde(flatten)]
    pub sidecar: SidecarSettings,
}

impl Default for VirtHandlerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            source: None,
            aggregations: None,
            sidecar: SidecarSettings::default(),
        }
    }
}

/// Settings of one sidecar container. Every field is optional: unset fields fall back to
/// `spec.defaults`, then to the operator's built-in defaults.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSettings {
    /// Collector image (one image holds the four collector binaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("size(self) > 0 && !self.contains(' ')").message("image must be a non-empty image reference without spaces"))]
    pub image: Option<String>,

    /// Image pull policy of the sidecar (default IfNotPresent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Resources of the sidecar container (default: requests cpu 10m, memory 32Mi; limit
    /// memory 128Mi; no CPU limit, so collection is never throttled into timeouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Container port the sidecar serves /metrics, /healthz and /readyz on (default 9443).
    /// Must not be a port the component uses (8186, 8187, 8443, 8444). NetworkPolicies from
    /// KubeVirt, where installed, admit only 8443/8187: allow this port separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self >= 1024 && self <= 65535").message("port must be between 1024 and 65535"),
        validation = Rule::new("!(self in [8186, 8187, 8443, 8444])").message("port must not be one the KubeVirt components use (8186, 8187, 8443, 8444)")
    )]
    pub port: Option<i32>,

    /// Name of the sidecar's container port (default `sidecar-metrics`). Not `metrics`: the
    /// component's own port has that name, and port names are unique within a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    #[x_kube(
        validation = Rule::new("size(self) <= 15 && self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$') && self.matches('[a-z]')").message("portName must be an IANA service name: at most 15 lowercase letters, digits and '-', with at least one letter"),
        validation = Rule::new("!(self in ['metrics', 'vmstats', 'virt-api', 'webhooks'])").message("portName must not be a name the component's container already uses (metrics, vmstats, virt-api, webhooks)")
    )]
    pub port_name: Option<String>,

    /// Serve HTTPS with the component's own serving certificate (default: enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,

    /// How often the sidecar collects (default 30s), between 5s and 10m, e.g. `30s`, `1m`,
    /// `1m30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("interval must be a duration such as 30s, 1m or 1m30s"),
        validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || (duration(self) >= duration('5s') && duration(self) <= duration('10m'))").message("interval must be between 5s and 10m")
    )]
    pub interval: Option<String>,

    /// `complement` (default): export only the families the component does not serve itself,
    /// so no series is scraped twice from one pod; `full`: export everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<CollectorMode>,

    /// Extra command-line arguments, appended after the ones the operator renders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub extra_args: Option<Vec<String>>,

    /// Extra environment variables of the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(e, !(e.name in ['NODE_NAME', 'POD_NAME', 'POD_NAMESPACE']))").message("env must not set NODE_NAME, POD_NAME or POD_NAMESPACE: the operator sets them from the downward API"))]
    pub env: Option<Vec<EnvVar>>,

    /// Replaces the sidecar's security context. The default is the least the source needs
    /// (see the README); only set this when your platform needs something else (e.g. an
    /// SELinux type on OpenShift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,

    /// Push sinks (OTLP, Prometheus remote write, InfluxDB) next to `/metrics`; none by
    /// default. Per sink, a component's setting replaces the one in `spec.defaults`.
    /// Credentials are Secret references, mounted read-only into the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporters: Option<Exporters>,
}

/// TLS of the sidecar's endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSettings {
    /// Serve HTTPS with the component's serving certificate (mounted read-only from the
    /// component's existing certificate volume). When false, plain HTTP.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CollectorMode {
    Complement,
    Full,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StatsSource {
    Launcher,
    Libvirt,
}

/// What the operator observed and did. Filled by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSidecarPolicyStatus {
    /// The policy generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Progressing` and `Degraded` (see `api::conditions` for reasons).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The KubeVirt CR the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubevirt: Option<ObjectName>,

    /// How the sidecars are injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection_method: Option<InjectionMethod>,

    /// Comma-separated components that carry a sidecar now (for `kubectl get msp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_components: Option<String>,

    /// One entry per enabled component.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentStatus>,

    /// Components whose sidecar the operator took out because it crash-looped or stayed
    /// unready. They stay out while `metadata.generation` equals the recorded generation:
    /// change the policy's spec to inject them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled_back: Vec<RolledBack>,

    /// The monitoring objects the operator manages for this policy, or why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringStatus>,
}

/// What `spec.monitoring` produced.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringStatus {
    /// Objects in place, as `Kind/name` (in the policy's namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    /// Why something asked for is not there (e.g. the prometheus-operator CRDs are not
    /// served), in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The KubeVirt rule backports, when `spec.monitoring.backports` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backports: Option<BackportsStatus>,
}

/// Which KubeVirt v1.9.0 rules were backported, and which not.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackportsStatus {
    /// `status.observedKubeVirtVersion` of the KubeVirt CR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubevirt_version: Option<String>,
    /// The release of the embedded data that describes it (same minor), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_release: Option<String>,
    /// Recording rules installed (recorded series names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recording_rules: Vec<String>,
    /// Alerts installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<String>,
    /// Rules the running release lacks but whose input metrics nobody serves, as
    /// `name (missing: metric, ...)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// Why nothing is installed, when so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One component rolled back for an unhealthy sidecar, and the evidence.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolledBack {
    /// virt-handler, virt-controller, virt-api or virt-operator.
    pub component: Component,
    /// The policy's `metadata.generation` when it was rolled back; a newer generation
    /// injects it again.
    pub generation: i64,
    /// `<namespace>/<name>` of the pod whose sidecar failed.
    pub pod: String,
    /// The container's reason: its waiting reason (CrashLoopBackOff, ImagePullBackOff, ...),
    /// its last termination reason (Error, OOMKilled, ...), or `Unready`.
    pub reason: String,
    /// The container's last message (waiting or termination message, exit code), in words.
    pub message: String,
    /// When the operator rolled it back.
    pub time: Time,
}

/// Namespace and name of an object.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
}

/// The write channel the operator uses.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectionMethod {
    /// Entries in the KubeVirt CR's `spec.customizeComponents.patches`.
    CustomizeComponents,
    /// JSON-patch operations in the HyperConverged CR's `kubevirt.kubevirt.io/jsonpatch`
    /// annotation (OpenShift Virtualization: HCO owns the KubeVirt CR).
    HyperConvergedJsonPatch,
}

impl InjectionMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CustomizeComponents => "CustomizeComponents",
            Self::HyperConvergedJsonPatch => "HyperConvergedJsonPatch",
        }
    }
}

/// Per-component state.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// virt-handler, virt-controller, virt-api or virt-operator.
    pub component: Component,
    /// Whether the sidecar is in the desired workload spec (patch written or applied).
    pub injected: bool,
    /// The sidecar image asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The rollout as the live DaemonSet/Deployment reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Why the component is not (yet) as asked, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Pod counts from the workload's status (DaemonSet: desiredNumberScheduled,
/// updatedNumberScheduled, numberReady; Deployment: replicas, updatedReplicas, readyReplicas).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub desired: i32,
    pub updated: i32,
    pub ready: i32,
}

impl RolloutStatus {
    /// Every desired pod runs the current template and is ready.
    pub fn complete(&self) -> bool {
        self.updated >= self.desired && self.ready >= self.desired
    }
}

/// The `injectedComponents` printer-column text for a list of component states.
pub fn injected_components_summary(components: &[ComponentStatus]) -> String {
    let names: Vec<&str> = components
        .iter()
        .filter(|c| c.injected)
        .map(|c| c.component.as_str())
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(",")
    }
}
