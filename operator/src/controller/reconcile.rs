//! One reconciliation of one policy: observe → validate → plan → apply → status.
//!
//! - observe: the namespace's KubeVirt CRs and policies; then the target's HyperConverged
//!   owner, the component workloads and their pods (`observe`).
//! - validate: which CR, whether it is usable (it exists and is not being deleted; one that
//!   virt-operator is still deploying is written to), whether this policy owns it (`target`).
//! - plan: the pure `crate::plan`, minus the components whose sidecar crash-looped or stayed
//!   unready (`rollout`; they stay out until the policy's generation changes).
//! - apply: optimistic writes, none when nothing changes (`apply`).
//! - status: conditions and per-component facts, written only when they change (`status`).
//!
//! The finalizer (`metrics.kubevirt.io/cleanup`) makes deletion remove exactly this
//! policy's entries first. A paused policy writes nothing but its status: no finalizer is
//! added while paused, and deleting a paused policy leaves its entries in place (with a
//! Warning event saying so) — unpause before deleting to remove them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::{Api, Resource, ResourceExt};
use serde_json::Value;

use super::apply::{self, ApplyError};
use super::context::Context;
use super::events::{self, Notice, reasons};
use super::forbidden;
use super::monitoring;
use super::observe::{self, Workloads};
use super::rollout;
use super::status::{self, Report, State};
use super::target::{self, Waiting};
use crate::api::{
    Component, ComponentStatus, FINALIZER, HyperConverged, InjectionMethod,
    KUBEVIRT_JSONPATCH_ANNOTATION, KubeVirt, MetricsSidecarPolicy, ObjectName, RolledBack,
};
use crate::plan::{self, Plan, PlanError, PlannedSidecar, is_owned_by};

/// Errors of one reconciliation. The controller logs them, counts them and requeues.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the policy has no namespace")]
    NoNamespace,
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        source: kube::Error,
    },
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<ReconcileError>>),
}

impl ReconcileError {
    /// Short label for the `reconcile_errors_total{error}` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::NoNamespace => "no_namespace",
            ReconcileError::Read { .. } => "read",
            ReconcileError::Apply(ApplyError::Conflicts { .. }) => "conflicts",
            ReconcileError::Apply(_) => "write",
            ReconcileError::Plan(_) => "plan",
            ReconcileError::Status(_) => "status",
            ReconcileError::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
        }
    }
}

fn read(what: &'static str) -> impl FnOnce(kube::Error) -> ReconcileError {
    move |source| ReconcileError::Read { what, source }
}

/// The reconcile function handed to the kube-runtime `Controller` (and called directly by
/// the mock-API tests).
pub async fn reconcile(
    policy: Arc<MetricsSidecarPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_policy(policy.clone(), &ctx).await;
    match &result {
        Ok(_) => ctx.metrics.reconcile_succeeded(started.elapsed()),
        Err(err) if forbidden::report(&ctx, &policy, err).await => {
            ctx.metrics.reconcile_failed("forbidden", started.elapsed())
        }
        Err(err) => ctx.metrics.reconcile_failed(err.kind(), started.elapsed()),
    }
    result
}

/// Requeue after a failure; conflicts and API hiccups clear by themselves.
pub fn error_policy(
    policy: Arc<MetricsSidecarPolicy>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(policy = %policy.name_any(), namespace = ?policy.namespace(), error = %error, "reconcile failed");
    Action::requeue(ctx.settings.error_backoff)
}

async fn reconcile_policy(
    policy: Arc<MetricsSidecarPolicy>,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let namespace = policy.namespace().ok_or(ReconcileError::NoNamespace)?;
    let has_finalizer = policy.finalizers().iter().any(|f| f == FINALIZER);
    if policy.spec.paused && !has_finalizer {
        // Adding the finalizer would be a write; a paused policy makes none.
        if policy.meta().deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        return converge(&policy, ctx).await;
    }
    let api = Api::<MetricsSidecarPolicy>::namespaced(ctx.client.clone(), &namespace);
    finalizer::finalizer(&api, FINALIZER, policy, |event| async move {
        match event {
            FinalizerEvent::Apply(policy) => converge(&policy, ctx).await,
            FinalizerEvent::Cleanup(policy) => cleanup(&policy, ctx).await,
        }
    })
    .await
    .map_err(|e| ReconcileError::Finalizer(Box::new(e)))
}

/// The Ready reason the policy shows now (to publish events on transitions only).
fn previous_reason(policy: &MetricsSidecarPolicy) -> Option<&str> {
    policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::conditions::READY)
        .map(|c| c.reason.as_str())
}

fn object_name(kv: &KubeVirt) -> ObjectName {
    ObjectName {
        namespace: kv.namespace().unwrap_or_default(),
        name: kv.name_any(),
    }
}

/// Writes the status for `report` and publishes `notice` if the Ready reason changed.
async fn finish(
    ctx: &Context,
    policy: &MetricsSidecarPolicy,
    report: Report,
    notice: Option<Notice>,
) -> Result<(), ReconcileError> {
    let desired = status::desired(policy, &report, &status::now());
    let new_reason = desired
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::conditions::READY)
        .map(|c| c.reason.clone());
    let transition = previous_reason(policy) != new_reason.as_deref();
    status::write(ctx, policy, &desired)
        .await
        .map_err(ReconcileError::Status)?;
    if let Some(notice) = notice.filter(|_| transition) {
        events::publish(ctx, policy, &notice).await;
    }
    Ok(())
}

/// The Apply branch: bring the KubeVirt CR (and virt-operator's Deployment) to the plan.
async fn converge(policy: &MetricsSidecarPolicy, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = policy.namespace().ok_or(ReconcileError::NoNamespace)?;
    let seen = observe::namespace(ctx, &namespace)
        .await
        .map_err(read("KubeVirt CRs and policies"))?;

    let kv = match target::live_target(policy, &seen.kubevirts) {
        Ok(kv) => kv,
        Err(waiting) => return wait(ctx, policy, &namespace, waiting).await,
    };
    let report = |state, method, components| Report {
        state,
        kubevirt: Some(object_name(kv)),
        method,
        components,
        rolled_back: Vec::new(),
        monitoring: None,
    };
    if let Err(winner) = target::arbitrate(policy, kv, &seen.policies, &seen.kubevirts) {
        let note = format!(
            "policy {namespace}/{winner} is older and owns KubeVirt CR {namespace}/{}; this policy changes nothing",
            kv.name_any()
        );
        let report = report(State::Conflict { winner }, None, Vec::new());
        let notice = Notice::warning(reasons::CONFLICTING_POLICY, "Arbitrate", note);
        finish(ctx, policy, report, Some(notice)).await?;
        return Ok(Action::requeue(ctx.settings.wait * 2));
    }

    let method = target::injection_method(kv);
    let hco = match target::hyperconverged_owner(kv) {
        Some(owner) => match observe::hyperconverged(ctx, &namespace, &owner.name)
            .await
            .map_err(read("HyperConverged"))?
        {
            Some(hco) => Some(hco),
            None => {
                let message = format!(
                    "KubeVirt CR {namespace}/{} is owned by HyperConverged {namespace}/{}, which cannot be found",
                    kv.name_any(),
                    owner.name
                );
                let report = report(
                    State::HyperConvergedMissing(message),
                    Some(method),
                    Vec::new(),
                );
                finish(ctx, policy, report, None).await?;
                return Ok(Action::requeue(ctx.settings.wait));
            }
        },
        None => None,
    };
    let workloads = observe::workloads(ctx, &namespace)
        .await
        .map_err(read("component workloads"))?;
    let pods = observe::component_pods(ctx, &namespace)
        .await
        .map_err(read("component pods"))?;

    let full_plan = match plan::plan(policy, Some(kv), &ctx.settings.plan_defaults) {
        Ok(plan) => plan,
        Err(err) => {
            let report = report(
                State::InvalidSpec(err.to_string()),
                Some(method),
                Vec::new(),
            );
            let notice = Notice::warning(
                crate::api::conditions::REASON_INVALID_SPEC,
                "Plan",
                err.to_string(),
            );
            finish(ctx, policy, report, Some(notice)).await?;
            return Ok(Action::await_change());
        }
    };

    if policy.spec.paused {
        let in_place = owned_in_cr(kv, hco.as_ref(), &full_plan.owner);
        let components = component_report(
            ctx,
            &full_plan,
            &workloads,
            &in_place,
            &namespace,
            true,
            &[],
        );
        let report = report(
            State::Paused,
            Some(method),
            components.into_iter().map(|(s, _)| s).collect(),
        );
        let notice = Notice::normal(
            reasons::PAUSED,
            "Pause",
            "spec.paused is true: no changes are made",
        );
        finish(ctx, policy, report, Some(notice)).await?;
        return Ok(Action::requeue(ctx.settings.resync));
    }

    // Rollout safety: components rolled back at this generation stay out; the others'
    // pods are judged now.
    let held = rollout::active(policy);
    let held_components: Vec<Component> = held.iter().map(|r| r.component).collect();
    let decision = rollout::decide(
        &rollout::watched(&full_plan, &workloads, &held_components),
        &pods,
        rollout::unhealthy_timeout(policy),
        policy.metadata.generation.unwrap_or(0),
        &status::now(),
    );
    let mut rolled_back = held;
    rolled_back.extend(decision.rollbacks.iter().cloned());
    let excluded: Vec<Component> = rolled_back.iter().map(|r| r.component).collect();
    let plan = full_plan.without(&excluded);

    let result = match leave_other_crs(ctx, kv, &seen.kubevirts, &plan.owner).await {
        Ok(()) => write_all(ctx, kv, hco.as_ref(), &plan, &workloads).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(wrote) => {
            let monitoring = match monitoring::converge(ctx, policy, kv, &full_plan).await {
                Ok(outcome) => outcome,
                // Reported as missing RBAC by `forbidden::report`.
                Err(err) if forbidden::find(&err).is_some() => return Err(err),
                Err(err) => {
                    tracing::warn!(policy = %policy.name_any(), %namespace, error = %err, "monitoring objects");
                    monitoring::Outcome {
                        status: crate::api::MonitoringStatus {
                            notes: vec![format!("monitoring objects not written: {err}")],
                            ..Default::default()
                        },
                        waiting_for_crds: true,
                        wrote: false,
                    }
                }
            };
            let in_place: BTreeSet<String> = plan
                .entries
                .iter()
                .map(|e| e.resource_name.clone())
                .collect();
            let components = component_report(
                ctx,
                &full_plan,
                &workloads,
                &in_place,
                &namespace,
                false,
                &rolled_back,
            );
            let waiting_for: Vec<Component> = components
                .iter()
                .filter(|(_, done)| !done)
                .map(|(s, _)| s.component)
                .collect();
            let state = match target::deploying_phase(kv) {
                Some(phase) => State::KubeVirtDeploying {
                    name: kv.name_any(),
                    phase,
                },
                None if waiting_for.is_empty() => State::Injected,
                None => State::RollingOut { waiting_for },
            };
            let mut requeue = if state == State::Injected {
                ctx.settings.resync
            } else {
                ctx.settings.wait
            };
            if monitoring.waiting_for_crds {
                // CRDs installed later are found by discovery at the next reconcile.
                requeue = requeue.min(ctx.settings.wait);
            }
            if let Some(recheck) = decision.recheck_after {
                // An unready sidecar reaches its bound then; no event marks that moment.
                requeue = requeue.min(recheck + Duration::from_secs(1));
            }
            let mut report = report(
                state,
                Some(method),
                components.into_iter().map(|(s, _)| s).collect(),
            );
            report.rolled_back = decision.rollbacks.clone();
            report.monitoring = Some(monitoring.status);
            finish(ctx, policy, report, None).await?;
            for rollback in &decision.rollbacks {
                events::publish(ctx, policy, &rolled_back_notice(rollback)).await;
            }
            if wrote && decision.rollbacks.is_empty() {
                events::publish(ctx, policy, &injected_notice(&plan, kv, method)).await;
            }
            Ok(Action::requeue(requeue))
        }
        // Reported as missing RBAC by `forbidden::report` once the error reaches `reconcile`.
        Err(err) if forbidden::is_forbidden_write(&err) => Err(err.into()),
        Err(err) => {
            let mut report = report(
                State::WriteFailed(err.to_string()),
                Some(method),
                Vec::new(),
            );
            report.rolled_back = decision.rollbacks;
            let notice = Notice::warning(reasons::WRITE_FAILED, "Inject", err.to_string());
            finish(ctx, policy, report, Some(notice)).await?;
            Err(err.into())
        }
    }
}

/// The Warning a user sees when a component's sidecar is taken out.
fn rolled_back_notice(rollback: &RolledBack) -> Notice {
    Notice::warning(
        reasons::SIDECAR_ROLLED_BACK,
        "Rollback",
        format!(
            "removed the sidecar of {} so KubeVirt's rollout is not blocked ({}): {}. Change the policy's spec to inject it again",
            rollback.component, rollback.reason, rollback.message
        ),
    )
}

async fn wait(
    ctx: &Context,
    policy: &MetricsSidecarPolicy,
    namespace: &str,
    waiting: Waiting,
) -> Result<Action, ReconcileError> {
    let note = waiting.message(namespace);
    let report = Report::bare(State::Waiting(waiting));
    let notice = Notice::normal(reasons::WAITING_FOR_KUBEVIRT, "Wait", note);
    finish(ctx, policy, report, Some(notice)).await?;
    Ok(Action::requeue(ctx.settings.wait))
}

/// Our entries out of every other KubeVirt CR of the namespace (left behind when
/// `spec.kubevirtRef` moved to another CR). No request when there are none.
async fn leave_other_crs(
    ctx: &Context,
    target: &KubeVirt,
    kubevirts: &[KubeVirt],
    owner: &str,
) -> Result<(), ApplyError> {
    for other in kubevirts {
        let ours_there = other.patches().iter().any(|e| is_owned_by(e, owner));
        if other.name_any() != target.name_any() && ours_there {
            apply::kubevirt_cleanup(ctx, other, owner).await?;
        }
    }
    Ok(())
}

/// Every write of the Apply branch. `Ok(true)` when anything was written.
async fn write_all(
    ctx: &Context,
    kv: &KubeVirt,
    hco: Option<&HyperConverged>,
    plan: &Plan,
    workloads: &Workloads,
) -> Result<bool, ApplyError> {
    let mut wrote = match hco {
        Some(hco) => {
            apply::hyperconverged(ctx, hco, &plan.owner, &plan.entry_values())
                .await?
                .wrote
        }
        None => apply::kubevirt(ctx, kv, plan).await?.wrote,
    };
    if let Some(live) = workloads.deployment(Component::VirtOperator) {
        wrote |= match &plan.virt_operator {
            Some(body) => apply::virt_operator(ctx, live, body).await?,
            None => apply::virt_operator_cleanup(ctx, live, &plan.owner).await?,
        };
    }
    Ok(wrote)
}

/// Resource names of the workloads that hold an entry of `owner` now: in the KubeVirt CR,
/// or in the HyperConverged annotation when HCO owns the CR.
fn owned_in_cr(kv: &KubeVirt, hco: Option<&HyperConverged>, owner: &str) -> BTreeSet<String> {
    let entries: Vec<Value> = match hco {
        None => kv.patches().to_vec(),
        Some(hco) => hco
            .annotations()
            .get(KUBEVIRT_JSONPATCH_ANNOTATION)
            .and_then(|text| serde_json::from_str::<Vec<Value>>(text).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|op| op.get("value").cloned())
            .flat_map(|value| match value {
                Value::Array(items) => items,
                other => vec![other],
            })
            .collect(),
    };
    entries
        .iter()
        .filter(|e| is_owned_by(e, owner))
        .filter_map(|e| {
            e.get("resourceName")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

/// One status line per enabled component, and whether it counts as done. A rolled-back
/// component is not injected, says why, and counts as done (nothing to wait for).
fn component_report(
    ctx: &Context,
    plan: &Plan,
    workloads: &Workloads,
    in_cr: &BTreeSet<String>,
    namespace: &str,
    observed_only: bool,
    rolled_back: &[RolledBack],
) -> Vec<(ComponentStatus, bool)> {
    plan.sidecars
        .iter()
        .map(|sidecar| {
            let component = sidecar.component;
            let live = status::live(workloads, component, container_name(ctx, sidecar));
            if let Some(r) = rolled_back.iter().find(|r| r.component == component) {
                let mut line = status::component_status(
                    component,
                    false,
                    Some(sidecar.image.clone()),
                    &live,
                    namespace,
                );
                line.message = Some(format!("sidecar rolled back ({}): {}", r.reason, r.message));
                return (line, true);
            }
            let injected = if component.via_customize_components() {
                in_cr.contains(component.workload_name())
            } else {
                // Applied in this reconcile (or already in place); when only observing,
                // the live Deployment tells.
                (!observed_only && live.rollout.is_some()) || live.has_sidecar
            };
            let line = status::component_status(
                component,
                injected,
                Some(sidecar.image.clone()),
                &live,
                namespace,
            );
            let done = status::component_done(&line, &live);
            (line, done)
        })
        .collect()
}

fn container_name<'a>(ctx: &'a Context, sidecar: &'a PlannedSidecar) -> &'a str {
    sidecar
        .container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(&ctx.settings.plan_defaults.container_name)
}

fn injected_notice(plan: &Plan, kv: &KubeVirt, method: InjectionMethod) -> Notice {
    let names: Vec<&str> = plan.sidecars.iter().map(|s| s.component.as_str()).collect();
    let target = format!(
        "KubeVirt CR {}/{}",
        kv.namespace().unwrap_or_default(),
        kv.name_any()
    );
    if names.is_empty() {
        Notice::normal(
            reasons::REMOVED,
            "Remove",
            format!("removed every sidecar from {target}"),
        )
    } else {
        Notice::normal(
            reasons::INJECTED,
            "Inject",
            format!(
                "sidecars for {} written to {target} via {}",
                names.join(", "),
                method.as_str()
            ),
        )
    }
}

/// The Cleanup branch: take out exactly this policy's entries, then let the finalizer go.
async fn cleanup(policy: &MetricsSidecarPolicy, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = policy.namespace().ok_or(ReconcileError::NoNamespace)?;
    let owner = plan::owner_of(policy)?;
    if policy.spec.paused {
        let note = "the policy was deleted while paused: its sidecar entries stay in the KubeVirt CR. Recreate it unpaused and delete it again to remove them";
        events::publish(
            ctx,
            policy,
            &Notice::warning(reasons::CLEANUP_SKIPPED, "Remove", note),
        )
        .await;
        return Ok(Action::await_change());
    }
    let seen = observe::namespace(ctx, &namespace)
        .await
        .map_err(read("KubeVirt CRs and policies"))?;
    // Every CR of the namespace, not only the current target: entries left behind by an
    // earlier `kubevirtRef` go too. No request for a CR without entries of ours.
    let mut wrote = false;
    let mut touched = Vec::new();
    for kv in &seen.kubevirts {
        let written = match target::hyperconverged_owner(kv) {
            Some(hco_ref) => match observe::hyperconverged(ctx, &namespace, &hco_ref.name)
                .await
                .map_err(read("HyperConverged"))?
            {
                Some(hco) => apply::hyperconverged(ctx, &hco, &owner, &[]).await?.wrote,
                None => false,
            },
            None => apply::kubevirt_cleanup(ctx, kv, &owner).await?.wrote,
        };
        if written {
            touched.push(kv.name_any());
        }
        wrote |= written;
    }
    let workloads = observe::workloads(ctx, &namespace)
        .await
        .map_err(read("component workloads"))?;
    if let Some(live) = workloads.deployment(Component::VirtOperator) {
        wrote |= apply::virt_operator_cleanup(ctx, live, &owner).await?;
    }
    let removed = monitoring::remove_all(ctx, policy, &namespace).await?;
    if wrote || !removed.is_empty() {
        let mut note = if touched.is_empty() {
            "removed this policy's sidecar from the virt-operator Deployment".to_owned()
        } else {
            format!(
                "removed this policy's sidecars from KubeVirt CR {namespace}/{}",
                touched.join(", ")
            )
        };
        if !wrote {
            note.clear();
        }
        if !removed.is_empty() {
            if !note.is_empty() {
                note.push_str("; ");
            }
            note.push_str(&format!("deleted {}", removed.join(", ")));
        }
        events::publish(
            ctx,
            policy,
            &Notice::normal(reasons::REMOVED, "Remove", note),
        )
        .await;
    }
    Ok(Action::await_change())
}
