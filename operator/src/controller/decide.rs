//! The decisions of one reconciliation, made from what `observe` read: the writes, the status
//! to show, the events and when to look again. Pure: no client and no clock (the caller
//! passes `now`), so every branch is unit-tested on plain objects.
//!
//! Two steps around `apply`: [`converge`] (a live policy) or [`cleanup`] (a deleted one)
//! decide before anything is written; [`settle`] folds in what `apply` reports (which writes
//! changed something, the monitoring outcome, or the error that stopped it) and yields what
//! `finish` shows and the reconcile's result.
//!
//! Writes are planned only where they change something (the same comparisons `apply` makes
//! again on a fresh copy after a 409 Conflict), so an unchanged world plans no write at all.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use serde_json::Value;

use super::context::Settings;
use super::events::{Notice, reasons};
use super::forbidden;
use super::monitoring;
use super::observe::{Observed, ObservedForCleanup, Workloads};
use super::reconcile::ReconcileError;
use super::rollout;
use super::status::{self, Report, State};
use super::target::{self, Waiting};
use crate::api::{
    Component, ComponentStatus, HyperConverged, InjectionMethod, KUBEVIRT_JSONPATCH_ANNOTATION,
    KubeVirt, MetricsSidecarPolicy, ObjectName, RolledBack,
};
use crate::plan::{self, MARKER_ANNOTATION, Plan, PlannedSidecar, is_owned_by};

/// What a decision needs besides the policy and the observed objects.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub settings: &'a Settings,
    /// The moment rollout safety measures unready time against.
    pub now: Time,
}

/// One write, in the order `apply` performs them.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// `plan`'s entries into the target KubeVirt CR (optimistic; recomputed after a 409).
    KubeVirt { kubevirt: KubeVirt, plan: Plan },
    /// The entries of policy `owner` out of a KubeVirt CR: one `kubevirtRef` no longer names,
    /// or every CR when the policy is deleted.
    KubeVirtRemoval { kubevirt: KubeVirt, owner: String },
    /// Our operations for `entries` (none: ours removed) into the annotation of the
    /// HyperConverged object that owns the KubeVirt CR named `kubevirt`.
    HyperConverged {
        hyperconverged: HyperConverged,
        kubevirt: String,
        owner: String,
        entries: Vec<Value>,
    },
    /// Server-side apply of our sidecar into virt-operator's Deployment.
    VirtOperator { live: Deployment, body: Value },
    /// Server-side apply that takes this policy's sidecar out of virt-operator's Deployment.
    VirtOperatorRemoval { live: Deployment },
    /// Policy deletion: the virt-operator Deployment as it is then, without the sidecar of
    /// `owner` when its marker says it is that policy's.
    VirtOperatorSweep { namespace: String, owner: String },
}

impl Write {
    /// The KubeVirt CR whose entries this write changes, if it is such a write.
    fn kubevirt_name(&self) -> Option<String> {
        match self {
            Write::KubeVirt { kubevirt, .. } | Write::KubeVirtRemoval { kubevirt, .. } => {
                Some(kubevirt.name_any())
            }
            Write::HyperConverged { kubevirt, .. } => Some(kubevirt.clone()),
            _ => None,
        }
    }
}

/// The `spec.monitoring` objects, after the writes.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitoringStep {
    Untouched,
    /// Bring this policy's objects to those planned for `plan` (the plan before rollbacks).
    Converge {
        plan: Plan,
        kubevirt_version: Option<String>,
    },
    /// Delete every object of this policy (policy deletion).
    RemoveAll {
        namespace: String,
    },
}

/// What `finish` shows: the status for `report` (none: the status is left as it is), the
/// `notice` when the Ready reason changes with it, then every one of `events`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Finish {
    pub report: Option<Report>,
    pub notice: Option<Notice>,
    pub events: Vec<Notice>,
}

/// The event that tells what the writes did, published only when one changed something.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterWrites {
    /// `Some(notice)` when a write other than a removal from a CR that is no longer the
    /// target changed something (moving `kubevirtRef` announces the new CR only).
    Announce(Option<Notice>),
    /// Policy deletion: which CRs, the virt-operator Deployment and monitoring objects lost
    /// this policy's parts.
    ReportRemoval { namespace: String },
}

/// Everything one reconciliation does, decided before it does any of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub writes: Vec<Write>,
    pub monitoring: MonitoringStep,
    pub finish: Finish,
    pub after_writes: AfterWrites,
    /// Reconcile again after this long; `None`: only when something changes.
    pub requeue: Option<Duration>,
}

impl Decision {
    /// Nothing to write: a status, maybe an event, and when to look again.
    fn show(report: Report, notice: Option<Notice>, requeue: Option<Duration>) -> Self {
        Self {
            writes: Vec::new(),
            monitoring: MonitoringStep::Untouched,
            finish: Finish {
                report: Some(report),
                notice,
                events: Vec::new(),
            },
            after_writes: AfterWrites::Announce(None),
            requeue,
        }
    }
}

/// What `apply` did with a [`Decision`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied {
    /// One per write, in order: whether it changed something.
    pub wrote: Vec<bool>,
    /// The monitoring objects after [`MonitoringStep::Converge`].
    pub monitoring: Option<monitoring::Outcome>,
    /// The `Kind/name`s deleted by [`MonitoringStep::RemoveAll`].
    pub removed: Vec<String>,
}

/// What `finish` shows and what the reconcile returns.
#[derive(Debug)]
pub struct Outcome {
    pub finish: Finish,
    pub result: Result<Action, ReconcileError>,
}

/// Why a live policy cannot write to a KubeVirt CR now.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// No usable KubeVirt CR.
    Waiting(Waiting),
    /// The older policy `winner` owns the CR `kubevirt`.
    Conflict {
        winner: String,
        kubevirt: ObjectName,
    },
}

/// The KubeVirt CR `policy` may write to: the one it refers to, not being deleted, and not
/// owned by an older policy. `observe` reads the target's details only when there is one.
pub fn owned_target<'a>(
    policy: &MetricsSidecarPolicy,
    kubevirts: &'a [KubeVirt],
    policies: &[MetricsSidecarPolicy],
) -> Result<&'a KubeVirt, Stop> {
    let kv = target::live_target(policy, kubevirts).map_err(Stop::Waiting)?;
    target::arbitrate(policy, kv, policies, kubevirts).map_err(|winner| Stop::Conflict {
        winner,
        kubevirt: object_name(kv),
    })?;
    Ok(kv)
}

/// Whether deleting `policy` removes its parts. A paused policy changes nothing, not even
/// when it goes (so nothing is read either).
pub fn removes_on_deletion(policy: &MetricsSidecarPolicy) -> bool {
    !policy.spec.paused
}

/// The Apply branch: bring the target KubeVirt CR (or its HyperConverged owner), the
/// virt-operator Deployment and the monitoring objects to the policy.
pub fn converge(policy: &MetricsSidecarPolicy, seen: &Observed, inputs: &Inputs) -> Decision {
    let settings = inputs.settings;
    let namespace = seen.namespace.as_str();
    let kv = match owned_target(policy, &seen.kubevirts, &seen.policies) {
        Ok(kv) => kv,
        Err(Stop::Waiting(waiting)) => {
            let note = waiting.message(namespace);
            let notice = Notice::normal(reasons::WAITING_FOR_KUBEVIRT, "Wait", note);
            let report = Report::bare(State::Waiting(waiting));
            return Decision::show(report, Some(notice), Some(settings.wait));
        }
        Err(Stop::Conflict { winner, kubevirt }) => {
            let note = format!(
                "policy {namespace}/{winner} is older and owns KubeVirt CR {namespace}/{}; this policy changes nothing",
                kubevirt.name
            );
            let notice = Notice::warning(reasons::CONFLICTING_POLICY, "Arbitrate", note);
            let report = Report {
                kubevirt: Some(kubevirt),
                ..Report::bare(State::Conflict { winner })
            };
            return Decision::show(report, Some(notice), Some(settings.wait * 2));
        }
    };
    let method = target::injection_method(kv);
    let report = |state, components| Report {
        state,
        kubevirt: Some(object_name(kv)),
        method: Some(method),
        components,
        rolled_back: Vec::new(),
        monitoring: None,
    };
    if let Some(owner) = target::hyperconverged_owner(kv)
        && seen.hco.is_none()
    {
        let message = format!(
            "KubeVirt CR {namespace}/{} is owned by HyperConverged {namespace}/{}, which cannot be found",
            kv.name_any(),
            owner.name
        );
        let report = report(State::HyperConvergedMissing(message), Vec::new());
        return Decision::show(report, None, Some(settings.wait));
    }

    let full_plan = match plan::plan(policy, Some(kv), &settings.plan_defaults) {
        Ok(plan) => plan,
        Err(err) => {
            let notice = Notice::warning(
                crate::api::conditions::REASON_INVALID_SPEC,
                "Plan",
                err.to_string(),
            );
            let report = report(State::InvalidSpec(err.to_string()), Vec::new());
            return Decision::show(report, Some(notice), None);
        }
    };

    // One status line per enabled component, whatever was rolled back.
    let components = |in_cr: &BTreeSet<String>, observed_only, rolled_back: &[RolledBack]| {
        let (plan, workloads) = (&full_plan, &seen.workloads);
        component_report(
            settings,
            plan,
            workloads,
            in_cr,
            namespace,
            observed_only,
            rolled_back,
        )
    };
    if policy.spec.paused {
        let in_place = owned_in_cr(kv, seen.hco.as_ref(), &full_plan.owner);
        let components = components(&in_place, true, &[]);
        let notice = Notice::normal(
            reasons::PAUSED,
            "Pause",
            "spec.paused is true: no changes are made",
        );
        let report = report(State::Paused, lines(components));
        return Decision::show(report, Some(notice), Some(settings.resync));
    }

    // Rollout safety: components rolled back at this generation stay out; the others'
    // pods are judged now.
    let held = rollout::active(policy);
    let held_components: Vec<Component> = held.iter().map(|r| r.component).collect();
    let judged = rollout::decide(
        &rollout::watched(&full_plan, &seen.workloads, &held_components),
        &seen.pods,
        rollout::unhealthy_timeout(policy),
        policy.metadata.generation.unwrap_or(0),
        &inputs.now,
    );
    let mut rolled_back = held;
    rolled_back.extend(judged.rollbacks.iter().cloned());
    let excluded: Vec<Component> = rolled_back.iter().map(|r| r.component).collect();
    let plan = full_plan.without(&excluded);

    let in_place: BTreeSet<String> = plan
        .entries
        .iter()
        .map(|e| e.resource_name.clone())
        .collect();
    let components = components(&in_place, false, &rolled_back);
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
        settings.resync
    } else {
        settings.wait
    };
    if let Some(recheck) = judged.recheck_after {
        // An unready sidecar reaches its bound then; no event marks that moment.
        requeue = requeue.min(recheck + Duration::from_secs(1));
    }
    let report = Report {
        rolled_back: judged.rollbacks.clone(),
        ..report(state, lines(components))
    };
    let announce = judged
        .rollbacks
        .is_empty()
        .then(|| injected_notice(&plan, kv, method));
    Decision {
        writes: workload_writes(kv, seen, &plan),
        monitoring: MonitoringStep::Converge {
            kubevirt_version: kv.observed_version().map(str::to_owned),
            plan: full_plan,
        },
        finish: Finish {
            report: Some(report),
            notice: None,
            events: judged.rollbacks.iter().map(rolled_back_notice).collect(),
        },
        after_writes: AfterWrites::Announce(announce),
        requeue: Some(requeue),
    }
}

/// The Cleanup branch: take exactly this policy's parts out of every KubeVirt CR of the
/// namespace (entries left behind by an earlier `kubevirtRef` go too), out of virt-operator's
/// Deployment, and delete its monitoring objects; then let the finalizer go.
pub fn cleanup(policy: &MetricsSidecarPolicy, owner: &str, seen: &ObservedForCleanup) -> Decision {
    let mut decision = Decision {
        writes: Vec::new(),
        monitoring: MonitoringStep::Untouched,
        finish: Finish::default(),
        after_writes: AfterWrites::Announce(None),
        requeue: None,
    };
    if !removes_on_deletion(policy) {
        let note = "the policy was deleted while paused: its sidecar entries stay in the KubeVirt CR. Recreate it unpaused and delete it again to remove them";
        decision.finish.events = vec![Notice::warning(reasons::CLEANUP_SKIPPED, "Remove", note)];
        return decision;
    }
    for kv in &seen.kubevirts {
        match target::hyperconverged_owner(kv) {
            Some(reference) => {
                let found = seen
                    .hyperconvergeds
                    .iter()
                    .find(|h| h.name_any() == reference.name);
                if let Some(hco) = found
                    && hco_would_change(hco, owner, &[])
                {
                    decision.writes.push(Write::HyperConverged {
                        hyperconverged: hco.clone(),
                        kubevirt: kv.name_any(),
                        owner: owner.to_owned(),
                        entries: Vec::new(),
                    });
                }
            }
            None if plan::kubevirt_cleanup(kv, owner).changed => {
                decision.writes.push(Write::KubeVirtRemoval {
                    kubevirt: kv.clone(),
                    owner: owner.to_owned(),
                });
            }
            None => {}
        }
    }
    decision.writes.push(Write::VirtOperatorSweep {
        namespace: seen.namespace.clone(),
        owner: owner.to_owned(),
    });
    decision.monitoring = MonitoringStep::RemoveAll {
        namespace: seen.namespace.clone(),
    };
    decision.after_writes = AfterWrites::ReportRemoval {
        namespace: seen.namespace.clone(),
    };
    decision
}

/// Folds what `apply` did into the decision. A write the API server refused (other than
/// with 403, which `forbidden` reports) shows as `WriteFailed` where the decision had a
/// status to show; every other error is returned as it is and nothing is shown.
pub fn settle(
    decision: Decision,
    applied: Result<Applied, ReconcileError>,
    settings: &Settings,
) -> Outcome {
    let Decision {
        writes,
        mut finish,
        after_writes,
        mut requeue,
        ..
    } = decision;
    let applied = match applied {
        Ok(applied) => applied,
        Err(ReconcileError::Apply(err)) if !forbidden::is_forbidden_write(&err) => {
            let Some(report) = finish.report else {
                return failed(ReconcileError::Apply(err));
            };
            let report = Report {
                state: State::WriteFailed(err.to_string()),
                components: Vec::new(),
                monitoring: None,
                ..report
            };
            let notice = Notice::warning(reasons::WRITE_FAILED, "Inject", err.to_string());
            return Outcome {
                finish: Finish {
                    report: Some(report),
                    notice: Some(notice),
                    events: Vec::new(),
                },
                result: Err(ReconcileError::Apply(err)),
            };
        }
        Err(err) => return failed(err),
    };
    if let Some(monitoring) = applied.monitoring {
        if monitoring.waiting_for_crds {
            // CRDs installed later are found by discovery at the next reconcile.
            requeue = requeue.map(|r| r.min(settings.wait));
        }
        if let Some(report) = finish.report.as_mut() {
            report.monitoring = Some(monitoring.status);
        }
    }
    let changed: Vec<&Write> = writes
        .iter()
        .zip(&applied.wrote)
        .filter(|(_, wrote)| **wrote)
        .map(|(write, _)| write)
        .collect();
    match after_writes {
        AfterWrites::Announce(Some(notice))
            if changed
                .iter()
                .any(|w| !matches!(w, Write::KubeVirtRemoval { .. })) =>
        {
            finish.events.push(notice);
        }
        AfterWrites::Announce(_) => {}
        AfterWrites::ReportRemoval { namespace } => {
            let touched: Vec<String> = changed.iter().filter_map(|w| w.kubevirt_name()).collect();
            finish.events.extend(removal_notice(
                &namespace,
                &touched,
                !changed.is_empty(),
                &applied.removed,
            ));
        }
    }
    Outcome {
        finish,
        result: Ok(requeue.map_or_else(Action::await_change, Action::requeue)),
    }
}

fn failed(err: ReconcileError) -> Outcome {
    Outcome {
        finish: Finish::default(),
        result: Err(err),
    }
}

/// The writes that bring the workloads to `plan`: our entries out of every other KubeVirt
/// CR of the namespace (left behind when `spec.kubevirtRef` moved), into the target CR or
/// its HyperConverged owner, and into (or out of) virt-operator's Deployment. Only writes
/// that change something.
fn workload_writes(kv: &KubeVirt, seen: &Observed, plan: &Plan) -> Vec<Write> {
    let mut writes: Vec<Write> = seen
        .kubevirts
        .iter()
        .filter(|other| other.name_any() != kv.name_any())
        .filter(|other| plan::kubevirt_cleanup(other, &plan.owner).changed)
        .map(|other| Write::KubeVirtRemoval {
            kubevirt: other.clone(),
            owner: plan.owner.clone(),
        })
        .collect();
    match &seen.hco {
        Some(hco) => {
            let entries = plan.entry_values();
            if hco_would_change(hco, &plan.owner, &entries) {
                writes.push(Write::HyperConverged {
                    hyperconverged: hco.clone(),
                    kubevirt: kv.name_any(),
                    owner: plan.owner.clone(),
                    entries,
                });
            }
        }
        None if plan::kubevirt_change(kv, plan).changed => writes.push(Write::KubeVirt {
            kubevirt: kv.clone(),
            plan: plan.clone(),
        }),
        None => {}
    }
    if let Some(live) = seen.workloads.deployment(Component::VirtOperator) {
        match &plan.virt_operator {
            Some(body) if !virt_operator_in_place(live, body) => writes.push(Write::VirtOperator {
                live: live.clone(),
                body: body.clone(),
            }),
            None if holds_sidecar_of(live, &plan.owner) => {
                writes.push(Write::VirtOperatorRemoval { live: live.clone() });
            }
            _ => {}
        }
    }
    writes
}

/// Whether writing our operations for `entries` would change the HyperConverged annotation.
/// An annotation that cannot be read counts as a change: the write then fails with the
/// reason, and the status says so.
fn hco_would_change(hco: &HyperConverged, owner: &str, entries: &[Value]) -> bool {
    let existing = hco
        .annotations()
        .get(KUBEVIRT_JSONPATCH_ANNOTATION)
        .map(String::as_str);
    plan::hco_annotation(existing, owner, entries).map_or(true, |change| change.changed)
}

/// Whether every field of `want` is in `have` with the same value. Objects may have more
/// keys in `have` (API server defaults); arrays must match element by element.
pub fn json_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| json_subset(v, hv))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| json_subset(a, b))
        }
        _ => want == have,
    }
}

/// The policy marker on virt-operator's pod template: whose sidecar it carries.
fn marker_of(live: &Deployment) -> Option<&str> {
    live.spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(MARKER_ANNOTATION)
        .map(String::as_str)
}

/// Whether the live virt-operator Deployment carries the sidecar of policy `owner`. All
/// policies share one field manager, so the marker decides: a policy never removes another
/// policy's sidecar.
pub fn holds_sidecar_of(live: &Deployment, owner: &str) -> bool {
    marker_of(live) == Some(owner)
}

/// Whether the live virt-operator Deployment already has the apply `body`: our marker and
/// every planned container field (server defaults aside).
fn virt_operator_in_place(live: &Deployment, body: &Value) -> bool {
    let want_marker = body
        .pointer("/spec/template/metadata/annotations")
        .and_then(|a| a.get(MARKER_ANNOTATION))
        .and_then(Value::as_str);
    if marker_of(live) != want_marker {
        return false;
    }
    let Ok(live_json) = serde_json::to_value(live) else {
        return false;
    };
    let live_containers = live_json
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array);
    body.pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|want| {
            let name = want.get("name").and_then(Value::as_str).unwrap_or_default();
            live_containers
                .into_iter()
                .flatten()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
                .is_some_and(|have| json_subset(want, have))
        })
}

fn object_name(kv: &KubeVirt) -> ObjectName {
    ObjectName {
        namespace: kv.namespace().unwrap_or_default(),
        name: kv.name_any(),
    }
}

fn lines(components: Vec<(ComponentStatus, bool)>) -> Vec<ComponentStatus> {
    components.into_iter().map(|(s, _)| s).collect()
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
    settings: &Settings,
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
            let live = status::live(workloads, component, container_name(settings, sidecar));
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

fn container_name<'a>(settings: &'a Settings, sidecar: &'a PlannedSidecar) -> &'a str {
    sidecar
        .container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(&settings.plan_defaults.container_name)
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

/// What a policy deletion removed, when it removed anything: the KubeVirt CRs `touched`
/// (else the virt-operator Deployment, when `wrote`), and the monitoring objects `removed`.
fn removal_notice(
    namespace: &str,
    touched: &[String],
    wrote: bool,
    removed: &[String],
) -> Option<Notice> {
    if !wrote && removed.is_empty() {
        return None;
    }
    let mut note = if !wrote {
        String::new()
    } else if touched.is_empty() {
        "removed this policy's sidecar from the virt-operator Deployment".to_owned()
    } else {
        format!(
            "removed this policy's sidecars from KubeVirt CR {namespace}/{}",
            touched.join(", ")
        )
    };
    if !removed.is_empty() {
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str(&format!("deleted {}", removed.join(", ")));
    }
    Some(Notice::normal(reasons::REMOVED, "Remove", note))
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
