//! Reads everything one reconciliation decides on, into one value: [`Observed`] for a live
//! policy, [`ObservedForCleanup`] for a deleted one. Only what the decision looks at is
//! read: the namespace's KubeVirt CRs and policies; then, once the policy has a target it
//! may write to (`decide::owned_target`), the target's HyperConverged owner and — unless
//! that cannot be found — the component workloads and their pods. The order of requests is
//! fixed (the mock API tests assert it).
//!
//! Reads that stay with the writes (`apply`): the fresh copy after a 409 Conflict, and the
//! objects a step reconciles by what is live right before it writes (the monitoring
//! objects, virt-operator's Deployment on policy deletion), which come after the CR writes.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::context::Context;
use super::decide;
use super::reconcile::ReconcileError;
use super::target;
use crate::api::{Component, HyperConverged, KubeVirt, MetricsSidecarPolicy};

/// Label every KubeVirt component workload carries, valued with the component name.
pub const COMPONENT_LABEL: &str = "kubevirt.io";

/// `kubevirt.io=virt-handler`: the only DaemonSet we look at.
pub fn daemon_set_selector() -> String {
    format!(
        "{COMPONENT_LABEL}={}",
        Component::VirtHandler.workload_name()
    )
}

/// `kubevirt.io in (virt-controller,virt-api,virt-operator)`.
pub fn deployment_selector() -> String {
    let names: Vec<&str> = Component::ALL
        .iter()
        .filter(|c| c.resource_type() == "Deployment")
        .map(|c| c.workload_name())
        .collect();
    format!("{COMPONENT_LABEL} in ({})", names.join(","))
}

/// `kubevirt.io in (virt-handler,virt-controller,virt-api,virt-operator)`: the pods of every
/// component workload, in one list. Which pod belongs to which workload is decided by the
/// workload's own selector (`rollout`), this only keeps the list small.
pub fn pod_selector() -> String {
    let names: Vec<&str> = Component::ALL.iter().map(|c| c.workload_name()).collect();
    format!("{COMPONENT_LABEL} in ({})", names.join(","))
}

/// The namespace's KubeVirt CRs and MetricsSidecarPolicies.
#[derive(Debug, Clone, Default)]
pub struct Namespace {
    pub kubevirts: Vec<KubeVirt>,
    pub policies: Vec<MetricsSidecarPolicy>,
}

/// The live component workloads of the target's namespace.
#[derive(Debug, Clone, Default)]
pub struct Workloads {
    pub daemon_sets: Vec<DaemonSet>,
    pub deployments: Vec<Deployment>,
}

impl Workloads {
    pub fn daemon_set(&self, component: Component) -> Option<&DaemonSet> {
        self.daemon_sets
            .iter()
            .find(|d| d.name_any() == component.workload_name())
    }

    pub fn deployment(&self, component: Component) -> Option<&Deployment> {
        self.deployments
            .iter()
            .find(|d| d.name_any() == component.workload_name())
    }
}

/// What the Apply branch of one reconciliation decides on.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub namespace: String,
    pub kubevirts: Vec<KubeVirt>,
    pub policies: Vec<MetricsSidecarPolicy>,
    /// The HyperConverged object that owns the target; `None` when no HyperConverged owns
    /// it, it cannot be found, or there is no target.
    pub hco: Option<HyperConverged>,
    /// Empty unless the target's details were read.
    pub workloads: Workloads,
    pub pods: Vec<Pod>,
}

/// What a policy deletion decides on.
#[derive(Debug, Clone, Default)]
pub struct ObservedForCleanup {
    pub namespace: String,
    pub kubevirts: Vec<KubeVirt>,
    /// The HyperConverged owners of those CRs that exist.
    pub hyperconvergeds: Vec<HyperConverged>,
}

/// All reads of the Apply branch for `policy` in `namespace`.
pub async fn for_apply(
    ctx: &Context,
    policy: &MetricsSidecarPolicy,
    namespace: &str,
) -> Result<Observed, ReconcileError> {
    let seen = self::namespace(ctx, namespace)
        .await
        .map_err(ReconcileError::read("KubeVirt CRs and policies"))?;
    let mut observed = Observed {
        namespace: namespace.to_owned(),
        kubevirts: seen.kubevirts,
        policies: seen.policies,
        ..Observed::default()
    };
    let hco_name = match decide::owned_target(policy, &observed.kubevirts, &observed.policies) {
        // The lists decide alone: waiting for a target, or another policy owns it.
        Err(_) => return Ok(observed),
        Ok(kv) => target::hyperconverged_owner(kv).map(|owner| owner.name.clone()),
    };
    if let Some(name) = hco_name {
        observed.hco = hyperconverged(ctx, namespace, &name)
            .await
            .map_err(ReconcileError::read("HyperConverged"))?;
        if observed.hco.is_none() {
            return Ok(observed);
        }
    }
    observed.workloads = workloads(ctx, namespace)
        .await
        .map_err(ReconcileError::read("component workloads"))?;
    observed.pods = component_pods(ctx, namespace)
        .await
        .map_err(ReconcileError::read("component pods"))?;
    Ok(observed)
}

/// All reads a policy deletion decides on: the namespace's KubeVirt CRs and their
/// HyperConverged owners. None for a policy whose deletion removes nothing.
pub async fn for_cleanup(
    ctx: &Context,
    policy: &MetricsSidecarPolicy,
    namespace: &str,
) -> Result<ObservedForCleanup, ReconcileError> {
    let mut observed = ObservedForCleanup {
        namespace: namespace.to_owned(),
        ..ObservedForCleanup::default()
    };
    if !decide::removes_on_deletion(policy) {
        return Ok(observed);
    }
    observed.kubevirts = self::namespace(ctx, namespace)
        .await
        .map_err(ReconcileError::read("KubeVirt CRs and policies"))?
        .kubevirts;
    for kv in &observed.kubevirts {
        if let Some(owner) = target::hyperconverged_owner(kv)
            && let Some(hco) = hyperconverged(ctx, namespace, &owner.name)
                .await
                .map_err(ReconcileError::read("HyperConverged"))?
        {
            observed.hyperconvergeds.push(hco);
        }
    }
    Ok(observed)
}

pub async fn namespace(ctx: &Context, namespace: &str) -> Result<Namespace, kube::Error> {
    let kubevirts = Api::<KubeVirt>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let policies = Api::<MetricsSidecarPolicy>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await?
        .items;
    Ok(Namespace {
        kubevirts,
        policies,
    })
}

/// A fresh copy of one KubeVirt CR (after a 409 conflict).
pub async fn kubevirt(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<KubeVirt>, kube::Error> {
    Api::<KubeVirt>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
}

pub async fn hyperconverged(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<HyperConverged>, kube::Error> {
    Api::<HyperConverged>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
}

pub async fn workloads(ctx: &Context, namespace: &str) -> Result<Workloads, kube::Error> {
    let daemon_sets = Api::<DaemonSet>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(&daemon_set_selector()))
        .await?
        .items;
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(&deployment_selector()))
        .await?
        .items;
    Ok(Workloads {
        daemon_sets,
        deployments,
    })
}

/// The pods of the component workloads (rollout safety judges their sidecar).
pub async fn component_pods(ctx: &Context, namespace: &str) -> Result<Vec<Pod>, kube::Error> {
    Ok(Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(&pod_selector()))
        .await?
        .items)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn selectors_name_the_component_workloads() {
        assert_eq!(super::daemon_set_selector(), "kubevirt.io=virt-handler");
        assert_eq!(
            super::deployment_selector(),
            "kubevirt.io in (virt-controller,virt-api,virt-operator)"
        );
        assert_eq!(
            super::pod_selector(),
            "kubevirt.io in (virt-handler,virt-controller,virt-api,virt-operator)"
        );
    }
}
