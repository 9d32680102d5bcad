//! Pure planning: (policy, KubeVirt CR, defaults) → the exact writes the operator makes.
//! Nothing here touches the network; the controller and `render` call the same functions, so
//! what `render` prints is what the controller writes.
//!
//! - [`plan`] resolves every enabled component's sidecar and builds our patch entries (one
//!   per component reachable through `customizeComponents`) and the server-side-apply body
//!   for virt-operator's Deployment.
//! - [`kubevirt_change`] / [`kubevirt_cleanup`] merge those entries into (or take them out
//!   of) a KubeVirt CR's `patches`, keeping every foreign entry in place, and say whether
//!   anything changes; [`kubevirt_merge_patch`] is the request body.
//! - [`hco::hco_annotation`] is the same for the HyperConverged annotation.
//!
//! Byte stability: every JSON object is built with a fixed key order (serde_json keeps
//! insertion order here), maps from user input come from sorted `BTreeMap`s, and lists keep
//! the user's order; the same input always gives the same bytes, so an unchanged policy never
//! rolls virt-handler.

pub mod backports;
pub mod entries;
pub mod exporters;
pub mod hco;
pub mod monitoring;
pub mod promql;
pub mod settings;
pub mod sidecar;
pub mod virt_operator;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use serde_json::{Value, json};

pub use entries::{
    MARKER_ANNOTATION, PatchEntry, entry_owner, is_owned_by, merge_patches, remove_patches,
};
pub use hco::{HcoChange, hco_annotation};
pub use settings::{PlanDefaults, ResolvedSidecar};

use crate::api::hyperconverged::{HCO_GROUP, HCO_KIND};
use crate::api::{Component, KubeVirt, MetricsSidecarPolicy, PullPolicy};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the policy has no namespace")]
    NoNamespace,
    #[error(
        "{component} is enabled but has no image (set spec.defaults.image or the component's image)"
    )]
    MissingImage { component: Component },
    #[error("{component}: port {port} {reason}")]
    InvalidPort {
        component: Component,
        port: i32,
        reason: &'static str,
    },
    #[error("{component}: port name {name:?} is not a valid port name, or one the component uses")]
    InvalidPortName { component: Component, name: String },
    #[error("{component}: interval {value:?}: {reason}")]
    InvalidInterval {
        component: Component,
        value: String,
        reason: String,
    },
    #[error("{component}: exporters: {}", problems.join("; "))]
    Exporters {
        component: Component,
        /// Each `<policy field>: <what is wrong>`.
        problems: Vec<String>,
    },
    #[error("the HyperConverged annotation kubevirt.kubevirt.io/jsonpatch cannot be read: {0}")]
    BadHcoAnnotation(String),
    #[error("backports: {0}")]
    Backports(String),
    #[error("cannot serialize: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// One enabled component's sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSidecar {
    pub component: Component,
    pub image: String,
    pub container: Value,
    /// Pod volumes the sidecar needs besides the component's own (its sinks' Secrets).
    pub volumes: Vec<Value>,
    /// The Secret keys those volumes project, with the policy fields naming them.
    pub secrets: Vec<exporters::SecretUse>,
}

/// Everything one policy wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `<namespace>/<name>` of the policy: the marker value in every patch.
    pub owner: String,
    /// The policy's (and KubeVirt's) namespace.
    pub namespace: String,
    /// Every enabled component, in [`Component::ALL`] order.
    pub sidecars: Vec<PlannedSidecar>,
    /// Our `customizeComponents.patches` entries (virt-handler, virt-controller, virt-api).
    pub entries: Vec<PatchEntry>,
    /// Server-side-apply body for virt-operator's Deployment, when that component is enabled.
    pub virt_operator: Option<Value>,
}

impl Plan {
    /// Our entries as JSON values, ready to merge into a `patches` list.
    pub fn entry_values(&self) -> Vec<Value> {
        self.entries.iter().map(PatchEntry::to_value).collect()
    }

    /// Names of the Secrets (in [`Plan::namespace`]) the sidecars' sinks read, sorted.
    pub fn secret_names(&self) -> Vec<String> {
        let names: std::collections::BTreeSet<&str> = self
            .sidecars
            .iter()
            .flat_map(|s| s.secrets.iter().map(|u| u.secret.name.as_str()))
            .collect();
        names.into_iter().map(str::to_owned).collect()
    }

    /// The plan without the sidecars of `excluded` (components rolled back for an unhealthy
    /// sidecar): their entries go, and virt-operator's apply body when it is among them.
    /// The other entries keep their bytes.
    pub fn without(&self, excluded: &[Component]) -> Plan {
        let mut plan = self.clone();
        plan.sidecars.retain(|s| !excluded.contains(&s.component));
        plan.entries.retain(|e| {
            !excluded
                .iter()
                .any(|c| c.via_customize_components() && c.workload_name() == e.resource_name)
        });
        if excluded.contains(&Component::VirtOperator) {
            plan.virt_operator = None;
        }
        plan
    }
}

/// The marker value of a policy.
pub fn owner_of(policy: &MetricsSidecarPolicy) -> Result<String, PlanError> {
    let namespace = policy.namespace().ok_or(PlanError::NoNamespace)?;
    Ok(format!("{namespace}/{}", policy.name_any()))
}

/// Plans `policy`. `kubevirt` (the target CR, when known) only supplies the default image
/// pull policy; the entries do not depend on the CR's current patches.
pub fn plan(
    policy: &MetricsSidecarPolicy,
    kubevirt: Option<&KubeVirt>,
    defaults: &PlanDefaults,
) -> Result<Plan, PlanError> {
    let owner = owner_of(policy)?;
    let namespace = policy.namespace().ok_or(PlanError::NoNamespace)?;
    let pull_policy = kubevirt.and_then(kubevirt_pull_policy);
    let mut plan = Plan {
        owner,
        namespace,
        sidecars: Vec::new(),
        entries: Vec::new(),
        virt_operator: None,
    };
    for component in Component::ALL {
        if !policy.spec.components.enabled(component) {
            continue;
        }
        let resolved = settings::resolve(&policy.spec, component, pull_policy, defaults)?;
        let container = sidecar::container(&resolved)?;
        if component.via_customize_components() {
            plan.entries.push(entries::sidecar_entry(
                component,
                &plan.owner,
                &resolved.container_name,
                container.clone(),
                &resolved.export.volumes,
            )?);
        } else {
            plan.virt_operator = Some(virt_operator::apply_body(
                &plan.namespace,
                &plan.owner,
                container.clone(),
                &resolved.export.volumes,
            ));
        }
        plan.sidecars.push(PlannedSidecar {
            component,
            image: resolved.image,
            container,
            volumes: resolved.export.volumes,
            secrets: resolved.export.secrets,
        });
    }
    Ok(plan)
}

fn kubevirt_pull_policy(kubevirt: &KubeVirt) -> Option<PullPolicy> {
    match kubevirt.spec.other.get("imagePullPolicy")?.as_str()? {
        "Always" => Some(PullPolicy::Always),
        "IfNotPresent" => Some(PullPolicy::IfNotPresent),
        "Never" => Some(PullPolicy::Never),
        _ => None,
    }
}

/// The KubeVirt CR's `patches` after a write, and whether it differs from now.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeVirtChange {
    pub patches: Vec<Value>,
    pub changed: bool,
}

/// Merges `plan`'s entries into the KubeVirt CR's patches.
pub fn kubevirt_change(kubevirt: &KubeVirt, plan: &Plan) -> KubeVirtChange {
    let existing = kubevirt.patches();
    let patches = merge_patches(existing, &plan.owner, &plan.entry_values());
    let changed = patches != existing;
    KubeVirtChange { patches, changed }
}

/// Takes the entries of the policy `owner` out of the KubeVirt CR's patches.
pub fn kubevirt_cleanup(kubevirt: &KubeVirt, owner: &str) -> KubeVirtChange {
    let existing = kubevirt.patches();
    let patches = remove_patches(existing, owner);
    let changed = patches.len() != existing.len();
    KubeVirtChange { patches, changed }
}

/// The JSON merge patch that writes `patches` to a KubeVirt CR. With `resource_version`
/// the apiserver rejects it (409 Conflict) if the CR changed since it was read: the list is
/// atomic, so a stale write would drop someone else's entry. An empty list removes the field,
/// leaving `customizeComponents` as it was before the operator came.
pub fn kubevirt_merge_patch(patches: &[Value], resource_version: Option<&str>) -> Value {
    let list = if patches.is_empty() {
        Value::Null
    } else {
        Value::Array(patches.to_vec())
    };
    let mut body = json!({"spec": {"customizeComponents": {"patches": list}}});
    if let (Some(rv), Some(object)) = (resource_version, body.as_object_mut()) {
        object.insert("metadata".to_owned(), json!({"resourceVersion": rv}));
    }
    body
}

/// The HyperConverged object that owns `kubevirt` (HCO sets itself as controller owner),
/// if any: then the write goes through its jsonpatch annotation instead.
pub fn hyperconverged_owner(kubevirt: &KubeVirt) -> Option<&OwnerReference> {
    kubevirt.owner_references().iter().find(|owner| {
        owner.kind == HCO_KIND && owner.api_version.split('/').next() == Some(HCO_GROUP)
    })
}
