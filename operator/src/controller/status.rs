//! The policy's status: what the reconcile found and did, as conditions a user can act on
//! and per-component facts from the live DaemonSet/Deployments. Computing it is pure;
//! [`write`] sends it only when it differs from what the object already shows.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::context::Context;
use super::metrics::WriteTarget;
use super::observe::Workloads;
use super::rollout;
use super::target::Waiting;
use crate::api::conditions::{self as cond};
use crate::api::{
    Component, ComponentStatus, InjectionMethod, MetricsSidecarPolicy, MetricsSidecarPolicyStatus,
    MonitoringStatus, ObjectName, RolledBack, RolloutStatus, injected_components_summary,
};

/// Reason of a `Degraded=False` condition.
pub const REASON_AS_EXPECTED: &str = "AsExpected";

/// The situation one reconcile ended in.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Every enabled sidecar is in its live workload and rolled out.
    Injected,
    /// Written; KubeVirt (or the Deployment controller) is still rolling pods.
    RollingOut { waiting_for: Vec<Component> },
    /// No usable KubeVirt CR yet.
    Waiting(Waiting),
    /// `spec.paused`.
    Paused,
    /// An older policy owns the KubeVirt CR.
    Conflict { winner: String },
    /// The spec cannot be planned.
    InvalidSpec(String),
    /// A write was refused (not a conflict: those are retried).
    WriteFailed(String),
    /// The KubeVirt CR is owned by a HyperConverged object that cannot be read.
    HyperConvergedMissing(String),
    /// Written, but virt-operator has not finished deploying KubeVirt (`status.phase` is
    /// `phase`, not Deployed); it applies our entries as it deploys.
    KubeVirtDeploying { name: String, phase: String },
    /// The API server answered 403: the operator's RBAC misses a rule (`forbidden`).
    Forbidden(String),
}

/// Everything [`desired`] needs besides the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub state: State,
    pub kubevirt: Option<ObjectName>,
    pub method: Option<InjectionMethod>,
    pub components: Vec<ComponentStatus>,
    /// Rollbacks decided in this reconcile. Earlier ones of the same policy generation are
    /// kept from the current status by [`desired`], whatever the state.
    pub rolled_back: Vec<RolledBack>,
    /// The monitoring objects, when this reconcile got that far; otherwise the status
    /// keeps what it showed.
    pub monitoring: Option<MonitoringStatus>,
}

impl Report {
    /// A report with no target details (waiting, conflicts before the target is known).
    pub fn bare(state: State) -> Self {
        Self {
            state,
            kubevirt: None,
            method: None,
            components: Vec::new(),
            rolled_back: Vec::new(),
            monitoring: None,
        }
    }
}

/// Seconds precision, as the API server stores it, so a status read back compares equal.
pub fn now() -> Time {
    let secs = Timestamp::now().as_second();
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The status the policy should show.
pub fn desired(
    policy: &MetricsSidecarPolicy,
    report: &Report,
    now: &Time,
) -> MetricsSidecarPolicyStatus {
    let generation = policy.metadata.generation;
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let namespace = policy.namespace().unwrap_or_default();
    let rolled_back = rollbacks_to_show(policy, &report.rolled_back);
    let triples = condition_triples(&report.state, &namespace, &report.components);
    let [ready, progressing, degraded] = with_rollbacks(&report.state, triples, &rolled_back);
    let conditions = [
        (cond::READY, ready),
        (cond::PROGRESSING, progressing),
        (cond::DEGRADED, degraded),
    ]
    .into_iter()
    .map(|(type_, (status, reason, message))| {
        condition(previous, type_, status, reason, message, generation, now)
    })
    .collect();
    MetricsSidecarPolicyStatus {
        observed_generation: generation,
        conditions,
        kubevirt: report.kubevirt.clone(),
        injection_method: report.method,
        injected_components: Some(injected_components_summary(&report.components)),
        components: report.components.clone(),
        rolled_back,
        monitoring: report
            .monitoring
            .clone()
            .or_else(|| policy.status.as_ref().and_then(|s| s.monitoring.clone())),
    }
}

/// The rollbacks of the policy's current generation: those already in its status, updated
/// by the ones just decided; in component order.
fn rollbacks_to_show(policy: &MetricsSidecarPolicy, new: &[RolledBack]) -> Vec<RolledBack> {
    let mut all = rollout::active(policy);
    for record in new {
        all.retain(|r| r.component != record.component);
        all.push(record.clone());
    }
    all.sort_by_key(|r| r.component);
    all
}

type Triple = (bool, &'static str, String);

/// While a component is rolled back, the policy is not Ready and is Degraded, with the
/// container's reason and last message, whatever else went well.
fn with_rollbacks(state: &State, triples: [Triple; 3], rolled_back: &[RolledBack]) -> [Triple; 3] {
    let applies = matches!(
        state,
        State::Injected | State::RollingOut { .. } | State::KubeVirtDeploying { .. }
    );
    if rolled_back.is_empty() || !applies {
        return triples;
    }
    let [_, progressing, _] = triples;
    let message = rollback_message(rolled_back);
    [
        (false, cond::REASON_SIDECAR_UNHEALTHY, message.clone()),
        progressing,
        (true, cond::REASON_SIDECAR_UNHEALTHY, message),
    ]
}

/// "sidecar of virt-handler rolled back (CrashLoopBackOff): pod ...; it stays out until ..."
pub fn rollback_message(rolled_back: &[RolledBack]) -> String {
    let parts: Vec<String> = rolled_back
        .iter()
        .map(|r| {
            format!(
                "sidecar of {} rolled back ({}): {}",
                r.component, r.reason, r.message
            )
        })
        .collect();
    format!(
        "{}. It stays out until the policy's spec changes (generation {})",
        parts.join("; "),
        rolled_back.first().map_or(0, |r| r.generation)
    )
}

fn condition_triples(
    state: &State,
    namespace: &str,
    components: &[ComponentStatus],
) -> [Triple; 3] {
    let ok = || (false, REASON_AS_EXPECTED, "no problems found".to_owned());
    match state {
        State::Injected => {
            let names = injected_components_summary(components);
            let message = if names == "none" {
                "no component is enabled; nothing to inject".to_owned()
            } else {
                format!("sidecars are in place and rolled out: {names}")
            };
            [
                (true, cond::REASON_INJECTED, message.clone()),
                (false, cond::REASON_INJECTED, message),
                ok(),
            ]
        }
        State::RollingOut { waiting_for } => {
            let names: Vec<&str> = waiting_for.iter().map(|c| c.as_str()).collect();
            let message = format!("waiting for the rollout of {}", names.join(", "));
            [
                (false, cond::REASON_ROLLOUT_IN_PROGRESS, message.clone()),
                (true, cond::REASON_ROLLOUT_IN_PROGRESS, message),
                ok(),
            ]
        }
        State::Waiting(waiting) => {
            let message = waiting.message(namespace);
            let degraded = if waiting.needs_user() {
                (true, waiting.reason(), message.clone())
            } else {
                ok()
            };
            [
                (false, waiting.reason(), message.clone()),
                (!waiting.needs_user(), waiting.reason(), message),
                degraded,
            ]
        }
        State::Paused => {
            let message = "spec.paused is true: the operator makes no changes (status still reports what is in place)".to_owned();
            [
                (false, cond::REASON_PAUSED, message.clone()),
                (false, cond::REASON_PAUSED, message.clone()),
                (false, cond::REASON_PAUSED, message),
            ]
        }
        State::Conflict { winner } => {
            let message = format!(
                "policy {namespace}/{winner} is older and already injects into the same KubeVirt CR; this policy changes nothing. Delete one of the two policies"
            );
            [
                (false, cond::REASON_CONFLICTING_POLICY, message.clone()),
                (false, cond::REASON_CONFLICTING_POLICY, message.clone()),
                (true, cond::REASON_CONFLICTING_POLICY, message),
            ]
        }
        State::InvalidSpec(message) => [
            (false, cond::REASON_INVALID_SPEC, message.clone()),
            (false, cond::REASON_INVALID_SPEC, message.clone()),
            (true, cond::REASON_INVALID_SPEC, message.clone()),
        ],
        State::WriteFailed(message) => [
            (false, cond::REASON_WRITE_FAILED, message.clone()),
            (
                true,
                cond::REASON_WRITE_FAILED,
                format!("retrying: {message}"),
            ),
            (true, cond::REASON_WRITE_FAILED, message.clone()),
        ],
        State::KubeVirtDeploying { name, phase } => {
            let message = format!(
                "KubeVirt CR {namespace}/{name} is still deploying (status.phase {phase}): the sidecar entries are written and virt-operator applies them as it deploys"
            );
            [
                (false, cond::REASON_KUBEVIRT_DEPLOYING, message.clone()),
                (true, cond::REASON_KUBEVIRT_DEPLOYING, message),
                ok(),
            ]
        }
        State::Forbidden(message) => [
            (false, cond::REASON_FORBIDDEN, message.clone()),
            (false, cond::REASON_FORBIDDEN, message.clone()),
            (true, cond::REASON_FORBIDDEN, message.clone()),
        ],
        State::HyperConvergedMissing(message) => [
            (false, cond::REASON_KUBEVIRT_NOT_FOUND, message.clone()),
            (false, cond::REASON_KUBEVIRT_NOT_FOUND, message.clone()),
            (true, cond::REASON_KUBEVIRT_NOT_FOUND, message.clone()),
        ],
    }
}

/// A condition that keeps its `lastTransitionTime` while its status does not change.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// What the live workload of a component says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// The workload's pod template holds the sidecar container.
    pub has_sidecar: bool,
    /// Pod counts; `None` when the workload does not exist.
    pub rollout: Option<RolloutStatus>,
    /// The workload controller has seen the current spec and every pod is updated and ready.
    pub settled: bool,
}

fn template_has(template: &PodTemplateSpec, container: &str) -> bool {
    template
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == container))
}

pub fn live_daemon_set(ds: &DaemonSet, container: &str) -> Live {
    let has_sidecar = template_has(&ds.spec.template, container);
    let status = ds.status.clone().unwrap_or_default();
    let rollout = RolloutStatus {
        desired: status.desired_number_scheduled,
        updated: status.updated_number_scheduled.unwrap_or(0),
        ready: status.number_ready,
    };
    let observed = status.observed_generation >= ds.metadata.generation;
    Live {
        has_sidecar,
        rollout: Some(rollout),
        settled: observed && rollout.complete(),
    }
}

pub fn live_deployment(deployment: &Deployment, container: &str) -> Live {
    let spec = &deployment.spec;
    let has_sidecar = template_has(&spec.template, container);
    let status = deployment.status.clone().unwrap_or_default();
    let rollout = RolloutStatus {
        desired: spec.replicas.unwrap_or(1),
        updated: status.updated_replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
    };
    let observed = status.observed_generation >= deployment.metadata.generation;
    Live {
        has_sidecar,
        rollout: Some(rollout),
        settled: observed && rollout.complete(),
    }
}

pub fn live(workloads: &Workloads, component: Component, container: &str) -> Live {
    let found = if component.resource_type() == "DaemonSet" {
        workloads
            .daemon_set(component)
            .map(|ds| live_daemon_set(ds, container))
    } else {
        workloads
            .deployment(component)
            .map(|d| live_deployment(d, container))
    };
    found.unwrap_or(Live {
        has_sidecar: false,
        rollout: None,
        settled: false,
    })
}

/// One component's status line; `injected` says whether our patch (or apply) is in place.
pub fn component_status(
    component: Component,
    injected: bool,
    image: Option<String>,
    live: &Live,
    namespace: &str,
) -> ComponentStatus {
    let message = if live.rollout.is_none() {
        Some(format!(
            "{} {namespace}/{} not found",
            component.resource_type(),
            component.workload_name()
        ))
    } else if !injected {
        Some("sidecar not injected".to_owned())
    } else if !live.has_sidecar {
        Some(if component.via_customize_components() {
            format!(
                "waiting for virt-operator to add the sidecar to the {}",
                component.resource_type()
            )
        } else {
            "waiting for the Deployment to show the sidecar".to_owned()
        })
    } else if !live.settled {
        live.rollout.map(|r| {
            format!(
                "rolling out: {}/{} updated, {}/{} ready",
                r.updated, r.desired, r.ready, r.desired
            )
        })
    } else {
        None
    };
    ComponentStatus {
        component,
        injected,
        image,
        rollout: live.rollout,
        message,
    }
}

/// Whether a component counts as done for `Ready`.
pub fn component_done(status: &ComponentStatus, live: &Live) -> bool {
    status.injected && live.has_sidecar && live.settled
}

/// Writes `status` to the status subresource with server-side apply (we are its only
/// writer; fields we stop setting disappear), unless the object already shows it.
pub async fn write(
    ctx: &Context,
    policy: &MetricsSidecarPolicy,
    status: &MetricsSidecarPolicyStatus,
) -> Result<bool, kube::Error> {
    if policy.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let namespace = policy.namespace().unwrap_or_default();
    let api = Api::<MetricsSidecarPolicy>::namespaced(ctx.client.clone(), &namespace);
    let body = json!({
        "apiVersion": "metrics.kubevirt.io/v1alpha1",
        "kind": "MetricsSidecarPolicy",
        "status": status,
    });
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(super::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    ctx.metrics.write_done(WriteTarget::Status);
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::MetricsSidecarPolicySpec;

    fn policy() -> MetricsSidecarPolicy {
        let mut p = MetricsSidecarPolicy::new("p", MetricsSidecarPolicySpec::default());
        p.metadata.namespace = Some("kubevirt".into());
        p.metadata.generation = Some(3);
        p
    }

    fn report(state: State) -> Report {
        Report::bare(state)
    }

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn find<'a>(status: &'a MetricsSidecarPolicyStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut p = policy();
        let first = desired(
            &p,
            &report(State::RollingOut {
                waiting_for: vec![Component::VirtHandler],
            }),
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(first.observed_generation, Some(3));
        assert_eq!(find(&first, "Ready").status, "False");
        assert_eq!(find(&first, "Progressing").status, "True");
        assert_eq!(
            find(&first, "Progressing").message,
            "waiting for the rollout of virt-handler"
        );
        p.status = Some(first.clone());
        let again = desired(
            &p,
            &report(State::RollingOut {
                waiting_for: vec![Component::VirtHandler],
            }),
            &t("2026-01-01T00:05:00Z"),
        );
        assert_eq!(again, first, "same situation, same status: no write");
        let done = desired(&p, &report(State::Injected), &t("2026-01-01T00:06:00Z"));
        assert_eq!(
            find(&done, "Ready").last_transition_time,
            t("2026-01-01T00:06:00Z")
        );
        assert_eq!(
            find(&done, "Degraded").last_transition_time,
            t("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn waiting_reasons_say_what_to_do() {
        let p = policy();
        let s = desired(
            &p,
            &report(State::Waiting(Waiting::NotFound { name: None })),
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(find(&s, "Ready").reason, "KubeVirtNotFound");
        assert_eq!(find(&s, "Degraded").status, "True");
        let s = desired(
            &p,
            &report(State::Waiting(Waiting::Deleting { name: "kv".into() })),
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(find(&s, "Progressing").status, "True");
        assert_eq!(find(&s, "Degraded").status, "False");
        let s = desired(
            &p,
            &report(State::KubeVirtDeploying {
                name: "kv".into(),
                phase: "Deploying".into(),
            }),
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(find(&s, "Ready").reason, "KubeVirtDeploying");
        assert_eq!(find(&s, "Progressing").status, "True");
        assert_eq!(
            find(&s, "Progressing").message,
            "KubeVirt CR kubevirt/kv is still deploying (status.phase Deploying): the sidecar entries are written and virt-operator applies them as it deploys"
        );
        assert_eq!(find(&s, "Degraded").status, "False");
        let s = desired(
            &p,
            &report(State::Conflict {
                winner: "old".into(),
            }),
            &t("2026-01-01T00:00:00Z"),
        );
        assert!(find(&s, "Ready").message.contains("kubevirt/old is older"));
        assert_eq!(s.injected_components.as_deref(), Some("none"));
    }

    fn rolled_back(component: Component, generation: i64) -> RolledBack {
        RolledBack {
            component,
            generation,
            pod: "kubevirt/virt-handler-a".into(),
            reason: "CrashLoopBackOff".into(),
            message: "pod kubevirt/virt-handler-a, container metrics-sidecar: back-off".into(),
            time: t("2026-01-01T00:00:00Z"),
        }
    }

    #[test]
    fn a_rollback_degrades_the_policy_and_is_kept_for_its_generation() {
        let mut p = policy();
        let mut r = report(State::Injected);
        r.rolled_back = vec![rolled_back(Component::VirtHandler, 3)];
        let s = desired(&p, &r, &t("2026-01-01T00:00:00Z"));
        let degraded = find(&s, "Degraded");
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "SidecarUnhealthy");
        assert_eq!(
            degraded.message,
            "sidecar of virt-handler rolled back (CrashLoopBackOff): pod kubevirt/virt-handler-a, container metrics-sidecar: back-off. It stays out until the policy's spec changes (generation 3)"
        );
        assert_eq!(find(&s, "Ready").status, "False");
        assert_eq!(s.rolled_back, r.rolled_back);

        // Next reconcile decides nothing new: the record stays while the generation holds.
        p.status = Some(s.clone());
        let again = desired(&p, &report(State::Injected), &t("2026-01-01T00:01:00Z"));
        assert_eq!(again, s);
        // The spec changed: the record goes, and so does Degraded.
        p.metadata.generation = Some(4);
        let after = desired(&p, &report(State::Injected), &t("2026-01-01T00:02:00Z"));
        assert!(after.rolled_back.is_empty());
        assert_eq!(find(&after, "Degraded").status, "False");
    }

    #[test]
    fn component_messages_follow_the_rollout() {
        let live = Live {
            has_sidecar: true,
            rollout: Some(RolloutStatus {
                desired: 3,
                updated: 1,
                ready: 2,
            }),
            settled: false,
        };
        let s = component_status(
            Component::VirtHandler,
            true,
            Some("img".into()),
            &live,
            "kubevirt",
        );
        assert_eq!(
            s.message.as_deref(),
            Some("rolling out: 1/3 updated, 2/3 ready")
        );
        assert!(!component_done(&s, &live));
        let missing = Live {
            has_sidecar: false,
            rollout: None,
            settled: false,
        };
        let s = component_status(Component::VirtApi, true, None, &missing, "kubevirt");
        assert_eq!(
            s.message.as_deref(),
            Some("Deployment kubevirt/virt-api not found")
        );
        let pending = Live {
            has_sidecar: false,
            rollout: Some(RolloutStatus::default()),
            settled: true,
        };
        let s = component_status(Component::VirtHandler, true, None, &pending, "kubevirt");
        assert_eq!(
            s.message.as_deref(),
            Some("waiting for virt-operator to add the sidecar to the DaemonSet")
        );
    }
}
