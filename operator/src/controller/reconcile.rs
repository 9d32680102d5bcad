//! One reconciliation of one policy, as a pipeline: observe → decide → apply → settle →
//! finish.
//!
//! - observe: every read the decision needs, into one value (`observe`): the namespace's
//!   KubeVirt CRs and policies; then the target's HyperConverged owner, the component
//!   workloads and their pods.
//! - decide: pure (`decide`): which CR, whether it is usable and whether this policy owns it
//!   (`target`); the plan (`crate::plan`) minus the components whose sidecar crash-looped or
//!   stayed unready (`rollout`; they stay out until the policy's generation changes); the
//!   writes that change something; the status report, the events and the requeue.
//! - apply: the writes, optimistic where a list is shared, then the monitoring objects
//!   (`apply`, `monitoring`).
//! - settle: pure (`decide::settle`): what the writes did, or the failed write, folded into
//!   the status and events.
//! - finish: the one place that writes the status (only when it changes) and publishes the
//!   events.
//!
//! Errors (a failed read, a refused write, a 403) leave `reconcile`: it counts them, lets
//! `forbidden` report a missing RBAC rule on the policy, and `error_policy` logs them once
//! and requeues.
//!
//! The finalizer (`metrics.kubevirt.io/cleanup`) makes deletion remove exactly this
//! policy's entries first. A paused policy writes nothing but its status: no finalizer is
//! added while paused, and deleting a paused policy leaves its entries in place (with a
//! Warning event saying so) — unpause before deleting to remove them.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::{Api, Resource, ResourceExt};

use super::apply::{self, ApplyError};
use super::context::Context;
use super::decide::{self, Finish, Inputs};
use super::events;
use super::forbidden;
use super::observe;
use super::status;
use crate::api::{FINALIZER, MetricsSidecarPolicy};
use crate::plan::{self, PlanError};

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
    /// Maps a failed read of `what`.
    pub(crate) fn read(what: &'static str) -> impl FnOnce(kube::Error) -> ReconcileError {
        move |source| ReconcileError::Read { what, source }
    }

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

/// The reconcile function handed to the kube-runtime `Controller` (and called directly by
/// the mock-API tests).
pub async fn reconcile(
    policy: Arc<MetricsSidecarPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let _running = ctx.in_flight.enter();
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

/// Logs a failed reconcile (the only place it is logged) and requeues it after the error
/// backoff; conflicts and API hiccups clear by themselves.
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
        return pipeline(&policy, ctx, Branch::Apply).await;
    }
    let api = Api::<MetricsSidecarPolicy>::namespaced(ctx.client.clone(), &namespace);
    finalizer::finalizer(&api, FINALIZER, policy, |event| async move {
        match event {
            FinalizerEvent::Apply(policy) => pipeline(&policy, ctx, Branch::Apply).await,
            FinalizerEvent::Cleanup(policy) => pipeline(&policy, ctx, Branch::Cleanup).await,
        }
    })
    .await
    .map_err(|e| ReconcileError::Finalizer(Box::new(e)))
}

/// Which of the finalizer's two branches runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Branch {
    /// The policy is live: bring everything to it.
    Apply,
    /// The policy is being deleted: take its parts out, then the finalizer goes.
    Cleanup,
}

/// observe → decide → apply → settle → finish. A read that fails ends the reconcile before
/// anything is written; `settle` says what a failed write shows.
async fn pipeline(
    policy: &MetricsSidecarPolicy,
    ctx: &Context,
    branch: Branch,
) -> Result<Action, ReconcileError> {
    let namespace = policy.namespace().ok_or(ReconcileError::NoNamespace)?;
    let inputs = Inputs {
        settings: &ctx.settings,
        now: status::now(),
    };
    let decision = match branch {
        Branch::Apply => {
            let seen = observe::for_apply(ctx, policy, &namespace).await?;
            decide::converge(policy, &seen, &inputs)
        }
        Branch::Cleanup => {
            let owner = plan::owner_of(policy)?;
            let seen = observe::for_cleanup(ctx, policy, &namespace).await?;
            decide::cleanup(policy, &owner, &seen)
        }
    };
    let applied = apply::apply(ctx, policy, &decision).await;
    let outcome = decide::settle(decision, applied, &ctx.settings);
    finish(ctx, policy, &outcome.finish, &inputs.now).await?;
    outcome.result
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

/// The one place a reconcile shows what it found: the status for the report (written only
/// when it differs), its notice when the Ready reason changed, then the other events.
async fn finish(
    ctx: &Context,
    policy: &MetricsSidecarPolicy,
    finish: &Finish,
    now: &Time,
) -> Result<(), ReconcileError> {
    if let Some(report) = &finish.report {
        let desired = status::desired(policy, report, now);
        let new_reason = desired
            .conditions
            .iter()
            .find(|c| c.type_ == crate::api::conditions::READY)
            .map(|c| c.reason.clone());
        let transition = previous_reason(policy) != new_reason.as_deref();
        status::write(ctx, policy, &desired)
            .await
            .map_err(ReconcileError::Status)?;
        if let Some(notice) = finish.notice.as_ref().filter(|_| transition) {
            events::publish(ctx, policy, notice).await;
        }
    }
    for notice in &finish.events {
        events::publish(ctx, policy, notice).await;
    }
    Ok(())
}
