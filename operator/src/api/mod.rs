//! API types: our `MetricsSidecarPolicy` CRD, and the minimal KubeVirt and HyperConverged
//! types the operator reads and writes. No client code here.

pub mod component;
pub mod exporters;
pub mod hyperconverged;
pub mod kubevirt;
pub mod policy;

pub use component::Component;
pub use hyperconverged::{HyperConverged, HyperConvergedSpec, KUBEVIRT_JSONPATCH_ANNOTATION};
pub use kubevirt::{CustomizeComponents, KubeVirt, KubeVirtSpec, KubeVirtStatus};
pub use policy::{
    BackportsStatus, CollectorMode, ComponentSettings, ComponentStatus, Components,
    InjectionMethod, KubeVirtRef, MetricsSidecarPolicy, MetricsSidecarPolicySpec,
    MetricsSidecarPolicyStatus, MonitoringSettings, MonitoringStatus, ObjectName, PullPolicy,
    RolledBack, RolloutSettings, RolloutStatus, ScrapeObject, SidecarSettings, StatsSource,
    TlsSettings, VirtHandlerSettings, injected_components_summary,
};

use kube::CustomResourceExt;

/// Field manager of every write the operator makes (server-side apply of virt-operator's
/// Deployment, updates of the KubeVirt CR, status). GitOps tools can ignore fields it owns.
pub const FIELD_MANAGER: &str = "kubevirt-metrics-operator";

/// Finalizer that lets the operator remove its patches before the policy disappears.
pub const FINALIZER: &str = "metrics.kubevirt.io/cleanup";

/// Condition types and reasons of `MetricsSidecarPolicy.status.conditions`.
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";

    /// Every enabled sidecar is in place and its rollout has finished.
    pub const REASON_INJECTED: &str = "Injected";
    /// Patches are written; KubeVirt is still rolling the pods.
    pub const REASON_ROLLOUT_IN_PROGRESS: &str = "RolloutInProgress";
    /// No KubeVirt CR by the given name, or none in the namespace.
    pub const REASON_KUBEVIRT_NOT_FOUND: &str = "KubeVirtNotFound";
    /// No `kubevirtRef` and more than one KubeVirt CR in the namespace.
    pub const REASON_KUBEVIRT_AMBIGUOUS: &str = "KubeVirtAmbiguous";
    /// The KubeVirt CR is being deleted.
    pub const REASON_KUBEVIRT_DELETING: &str = "KubeVirtDeleting";
    /// Our entries are written, but virt-operator has not finished deploying KubeVirt yet
    /// (`status.phase` is not `Deployed`); it applies them as it deploys.
    pub const REASON_KUBEVIRT_DEPLOYING: &str = "KubeVirtDeploying";
    /// An older policy already targets the same KubeVirt CR; this one changes nothing.
    pub const REASON_CONFLICTING_POLICY: &str = "ConflictingPolicy";
    /// `spec.paused` is true: no writes.
    pub const REASON_PAUSED: &str = "Paused";
    /// The spec cannot be planned (e.g. an unparsable interval that slipped past CEL).
    pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
    /// Writing the KubeVirt CR, HyperConverged CR or virt-operator Deployment failed.
    pub const REASON_WRITE_FAILED: &str = "WriteFailed";
    /// The API server refused a read or write with 403: the operator's RBAC misses a rule.
    pub const REASON_FORBIDDEN: &str = "Forbidden";
    /// A sidecar container crash-looped or stayed unready past `spec.rollout.unhealthyTimeout`
    /// (which would block KubeVirt's rollout): its component's entry was taken out until the
    /// policy changes.
    pub const REASON_SIDECAR_UNHEALTHY: &str = "SidecarUnhealthy";
}

/// The CRD of `MetricsSidecarPolicy` as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let crd = MetricsSidecarPolicy::crd();
    Ok(format!("---\n{}", serde_yaml::to_string(&crd)?))
}
