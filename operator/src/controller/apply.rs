//! The writes of a `decide::Decision`, in its order ([`apply`]): our entries into the
//! KubeVirt CR's atomic `patches` list (or the HyperConverged annotation), with optimistic
//! concurrency, the server-side apply of the virt-operator Deployment, then the monitoring
//! objects (`monitoring`). The decision plans only writes that change something; the
//! optimistic writes check again on the copy they write to.
//!
//! Optimistic concurrency: the merge patch carries `metadata.resourceVersion` of the copy
//! the change was computed from, so the API server refuses it with 409 Conflict if someone
//! (a user, a GitOps sync, HCO) wrote the object in between. Then the object is read again
//! and the change recomputed from the fresh copy, so their write survives.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::context::Context;
use super::decide::{self, Applied, Decision, MonitoringStep, Write};
use super::forbidden;
use super::metrics::WriteTarget;
use super::monitoring;
use super::observe;
use super::reconcile::ReconcileError;
use crate::api::{
    Component, HyperConverged, KUBEVIRT_JSONPATCH_ANNOTATION, KubeVirt, MetricsSidecarPolicy,
    MonitoringStatus,
};
use crate::plan::{self, Plan, PlanError};

/// Kept here for the e2e checks that compare applied objects.
pub use super::decide::json_subset;

/// Errors of the write step.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("writing {target}: {source}")]
    Kube {
        target: &'static str,
        source: kube::Error,
    },
    #[error("{target} changed under us {attempts} times in a row (409 Conflict); will retry")]
    Conflicts { target: &'static str, attempts: u32 },
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl ApplyError {
    pub(crate) fn kube(target: WriteTarget, source: kube::Error) -> Self {
        ApplyError::Kube {
            target: target.label(),
            source,
        }
    }
}

/// The result of an optimistic write: the latest copy (None: the object is gone) and
/// whether a write happened.
#[derive(Debug, Clone)]
pub struct Written<K> {
    pub object: Option<K>,
    pub wrote: bool,
}

/// Performs `decision`: its writes in order, then its monitoring step. Stops at the first
/// error; a write error is `ReconcileError::Apply`.
pub async fn apply(
    ctx: &Context,
    policy: &MetricsSidecarPolicy,
    decision: &Decision,
) -> Result<Applied, ReconcileError> {
    let mut applied = Applied::default();
    for write in &decision.writes {
        applied.wrote.push(perform(ctx, write).await?);
    }
    match &decision.monitoring {
        MonitoringStep::Untouched => {}
        MonitoringStep::Converge {
            plan,
            kubevirt_version,
        } => {
            let outcome = converge_monitoring(ctx, policy, plan, kubevirt_version.as_deref());
            applied.monitoring = Some(outcome.await?);
        }
        MonitoringStep::RemoveAll { namespace } => {
            applied.removed = monitoring::remove_all(ctx, policy, namespace).await?;
        }
    }
    Ok(applied)
}

/// One write; `Ok(true)` when it changed something.
async fn perform(ctx: &Context, write: &Write) -> Result<bool, ReconcileError> {
    let wrote = match write {
        Write::KubeVirt { kubevirt: kv, plan } => kubevirt(ctx, kv, plan).await?.wrote,
        Write::KubeVirtRemoval {
            kubevirt: kv,
            owner,
        } => kubevirt_cleanup(ctx, kv, owner).await?.wrote,
        Write::HyperConverged {
            hyperconverged: hco,
            owner,
            entries,
            ..
        } => hyperconverged(ctx, hco, owner, entries).await?.wrote,
        Write::VirtOperator { live, body } => {
            ssa_deployment(ctx, live, body).await?;
            true
        }
        Write::VirtOperatorRemoval { live } => {
            virt_operator_removal(ctx, live).await?;
            true
        }
        Write::VirtOperatorSweep { namespace, owner } => {
            let workloads = observe::workloads(ctx, namespace)
                .await
                .map_err(ReconcileError::read("component workloads"))?;
            match workloads.deployment(Component::VirtOperator) {
                Some(live) if decide::holds_sidecar_of(live, owner) => {
                    virt_operator_removal(ctx, live).await?;
                    true
                }
                _ => false,
            }
        }
    };
    Ok(wrote)
}

/// The monitoring objects for `plan`. Only a 403 fails the reconcile (`forbidden` reports
/// it as missing RBAC); any other failure is a note in the status, so the sidecars do not
/// wait for the Prometheus Operator.
async fn converge_monitoring(
    ctx: &Context,
    policy: &MetricsSidecarPolicy,
    plan: &Plan,
    kubevirt_version: Option<&str>,
) -> Result<monitoring::Outcome, ReconcileError> {
    match monitoring::converge(ctx, policy, kubevirt_version, plan).await {
        Ok(outcome) => Ok(outcome),
        Err(err) if forbidden::find(&err).is_some() => Err(err),
        Err(err) => {
            tracing::warn!(policy = %policy.name_any(), namespace = %plan.namespace, error = %err, "monitoring objects");
            Ok(monitoring::Outcome {
                status: MonitoringStatus {
                    notes: vec![format!("monitoring objects not written: {err}")],
                    ..Default::default()
                },
                waiting_for_crds: true,
                wrote: false,
            })
        }
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(super::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Read-compute-write with `resourceVersion`, re-reading on 409. `body_for` returns the
/// merge patch for a copy of the object (it must carry the copy's resourceVersion), or
/// `None` when the copy is already as wanted.
pub async fn optimistic<K>(
    ctx: &Context,
    api: &Api<K>,
    current: K,
    target: WriteTarget,
    mut body_for: impl FnMut(&K) -> Result<Option<Value>, ApplyError>,
) -> Result<Written<K>, ApplyError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let name = current.name_any();
    let mut current = current;
    for attempt in 1..=ctx.settings.write_attempts.max(1) {
        let Some(body) = body_for(&current)? else {
            return Ok(Written {
                object: Some(current),
                wrote: false,
            });
        };
        match api
            .patch(&name, &patch_params(), &Patch::Merge(&body))
            .await
        {
            Ok(updated) => {
                ctx.metrics.write_done(target);
                tracing::info!(target = target.label(), object = %name, "wrote");
                return Ok(Written {
                    object: Some(updated),
                    wrote: true,
                });
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                ctx.metrics.write_conflicted(target);
                tracing::info!(target = target.label(), object = %name, attempt,
                    "409 Conflict: the object changed since it was read; reading it again");
                match api
                    .get_opt(&name)
                    .await
                    .map_err(|e| ApplyError::kube(target, e))?
                {
                    Some(fresh) => current = fresh,
                    None => {
                        return Ok(Written {
                            object: None,
                            wrote: false,
                        });
                    }
                }
            }
            Err(err) => return Err(ApplyError::kube(target, err)),
        }
    }
    Err(ApplyError::Conflicts {
        target: target.label(),
        attempts: ctx.settings.write_attempts,
    })
}

/// Our entries merged into the KubeVirt CR (empty plan: ours removed).
pub async fn kubevirt(
    ctx: &Context,
    kv: &KubeVirt,
    plan: &Plan,
) -> Result<Written<KubeVirt>, ApplyError> {
    let api = Api::<KubeVirt>::namespaced(ctx.client.clone(), &kv.namespace().unwrap_or_default());
    optimistic(ctx, &api, kv.clone(), WriteTarget::KubeVirt, |current| {
        let change = plan::kubevirt_change(current, plan);
        Ok(change.changed.then(|| {
            plan::kubevirt_merge_patch(&change.patches, current.resource_version().as_deref())
        }))
    })
    .await
}

/// The entries of policy `owner` taken out of the KubeVirt CR.
pub async fn kubevirt_cleanup(
    ctx: &Context,
    kv: &KubeVirt,
    owner: &str,
) -> Result<Written<KubeVirt>, ApplyError> {
    let api = Api::<KubeVirt>::namespaced(ctx.client.clone(), &kv.namespace().unwrap_or_default());
    optimistic(ctx, &api, kv.clone(), WriteTarget::KubeVirt, |current| {
        let change = plan::kubevirt_cleanup(current, owner);
        Ok(change.changed.then(|| {
            plan::kubevirt_merge_patch(&change.patches, current.resource_version().as_deref())
        }))
    })
    .await
}

/// The annotation of `hco` with our operations for `entries` (empty: ours removed).
pub async fn hyperconverged(
    ctx: &Context,
    hco: &HyperConverged,
    owner: &str,
    entries: &[Value],
) -> Result<Written<HyperConverged>, ApplyError> {
    let api =
        Api::<HyperConverged>::namespaced(ctx.client.clone(), &hco.namespace().unwrap_or_default());
    optimistic(
        ctx,
        &api,
        hco.clone(),
        WriteTarget::HyperConverged,
        |current| {
            let existing = current
                .annotations()
                .get(KUBEVIRT_JSONPATCH_ANNOTATION)
                .map(String::as_str);
            let change = plan::hco_annotation(existing, owner, entries)?;
            Ok(change.changed.then(|| {
                json!({
                    "metadata": {
                        "resourceVersion": current.resource_version(),
                        "annotations": {KUBEVIRT_JSONPATCH_ANNOTATION: change.annotation},
                    },
                })
            }))
        },
    )
    .await
}

/// Takes the sidecar out of virt-operator's Deployment (the decision checked the marker:
/// a policy never removes another policy's sidecar).
async fn virt_operator_removal(ctx: &Context, live: &Deployment) -> Result<(), ApplyError> {
    let body = plan::virt_operator::removal_body(&live.namespace().unwrap_or_default());
    ssa_deployment(ctx, live, &body).await
}

async fn ssa_deployment(ctx: &Context, live: &Deployment, body: &Value) -> Result<(), ApplyError> {
    let api =
        Api::<Deployment>::namespaced(ctx.client.clone(), &live.namespace().unwrap_or_default());
    api.patch(
        Component::VirtOperator.workload_name(),
        &PatchParams::apply(super::FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|e| ApplyError::kube(WriteTarget::Deployment, e))?;
    ctx.metrics.write_done(WriteTarget::Deployment);
    tracing::info!(
        target = "deployment",
        object = Component::VirtOperator.workload_name(),
        "applied"
    );
    Ok(())
}
