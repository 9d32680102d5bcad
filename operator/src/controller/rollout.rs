//! Rollout safety: a sidecar must never block a KubeVirt rollout or upgrade. virt-operator
//! rolls virt-handler through a canary and stops when a pod does not become ready, so a
//! crash-looping or never-ready `metrics-sidecar` would hold KubeVirt back. This module
//! decides, from the listed pods, which components to take the sidecar out of again.
//! Pure: no I/O; the reconcile observes the pods, calls [`decide`], applies the smaller
//! plan and records the outcome in `status.rolledBack`.
//!
//! Rules:
//! - Only pods of a patched workload count: selected by that workload's own
//!   `spec.selector`, not being deleted, and carrying the sidecar container exactly as
//!   planned now (same name, image and args). Pods still running an older sidecar are being
//!   replaced by the rollout and say nothing about the current one.
//! - Only what the kubelet reported counts: a pod without a status for the sidecar (not
//!   scheduled, no kubelet yet) is no evidence.
//! - Crash-looping (waiting reason `CrashLoopBackOff`, or a non-zero exit within the last
//!   `unhealthyTimeout`) rolls the component back at once; one restart already fails
//!   virt-operator's canary.
//! - Unready rolls back once it has lasted `unhealthyTimeout`, measured from the latest of
//!   the pod's start, the container's start and the pod's ContainersReady transition (never
//!   earlier than the container could have become unready).
//! - A rollback holds while the policy's generation is the one recorded; a spec change
//!   injects the component again.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;

use super::observe::Workloads;
use crate::api::policy::DEFAULT_UNHEALTHY_TIMEOUT;
use crate::api::{Component, MetricsSidecarPolicy, RolledBack};
use crate::plan::Plan;
use crate::plan::settings::parse_go_duration;

/// Reason recorded for a container that is running but not ready.
pub const REASON_UNREADY: &str = "Unready";

/// The bound of `spec.rollout.unhealthyTimeout` (5m when unset; an unparsable value, which
/// the CRD's CEL rules reject, also falls back to it).
pub fn unhealthy_timeout(policy: &MetricsSidecarPolicy) -> Duration {
    let default = parse_go_duration(DEFAULT_UNHEALTHY_TIMEOUT).unwrap_or(Duration::from_secs(300));
    policy
        .spec
        .rollout
        .as_ref()
        .and_then(|r| r.unhealthy_timeout.as_deref())
        .and_then(parse_go_duration)
        .unwrap_or(default)
}

/// The rollbacks that still hold: recorded at the policy's current generation.
pub fn active(policy: &MetricsSidecarPolicy) -> Vec<RolledBack> {
    let generation = policy.metadata.generation.unwrap_or(0);
    policy
        .status
        .as_ref()
        .map(|s| s.rolled_back.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter(|r| r.generation == generation)
        .cloned()
        .collect()
}

/// One component to judge: its workload's pod selector and the sidecar as planned.
#[derive(Debug, Clone, PartialEq)]
pub struct Watched {
    pub component: Component,
    pub selector: LabelSelector,
    /// The planned container (`name`, `image`, `args` are compared with the pod's).
    pub sidecar: Value,
}

/// The components of `plan` whose workload exists, except those in `skip`.
pub fn watched(plan: &Plan, workloads: &Workloads, skip: &[Component]) -> Vec<Watched> {
    plan.sidecars
        .iter()
        .filter(|s| !skip.contains(&s.component))
        .filter_map(|s| {
            let selector = if s.component.resource_type() == "DaemonSet" {
                workloads
                    .daemon_set(s.component)
                    .map(|d| d.spec.selector.clone())
            } else {
                workloads
                    .deployment(s.component)
                    .map(|d| d.spec.selector.clone())
            };
            Some(Watched {
                component: s.component,
                selector: selector?,
                sidecar: s.container.clone(),
            })
        })
        .collect()
}

/// What [`decide`] found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// New rollbacks, at most one per component, in the order of `watched`.
    pub rollbacks: Vec<RolledBack>,
    /// The earliest moment an unready sidecar reaches the bound: reconcile again then.
    pub recheck_after: Option<Duration>,
}

/// Judges the pods of every watched component.
pub fn decide(
    watched: &[Watched],
    pods: &[Pod],
    timeout: Duration,
    generation: i64,
    now: &Time,
) -> Decision {
    let mut decision = Decision::default();
    for w in watched {
        let mut candidates: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| selector_matches(&w.selector, p.metadata.labels.as_ref()))
            .filter(|p| carries_planned_sidecar(p, &w.sidecar))
            .collect();
        candidates.sort_by_key(|p| p.name_any());
        for pod in candidates {
            match judge(pod, &w.sidecar, timeout, now) {
                Verdict::Healthy => {}
                Verdict::Wait(left) => {
                    decision.recheck_after =
                        Some(decision.recheck_after.map_or(left, |r| r.min(left)));
                }
                Verdict::Unhealthy { reason, message } => {
                    decision.rollbacks.push(RolledBack {
                        component: w.component,
                        generation,
                        pod: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                        reason,
                        message,
                        time: now.clone(),
                    });
                    break;
                }
            }
        }
    }
    decision
}

#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Healthy,
    /// Unready, within the bound for this much longer.
    Wait(Duration),
    Unhealthy {
        reason: String,
        message: String,
    },
}

fn judge(pod: &Pod, sidecar: &Value, timeout: Duration, now: &Time) -> Verdict {
    let name = sidecar.get("name").and_then(Value::as_str).unwrap_or("");
    let Some(status) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == name))
    else {
        return Verdict::Healthy;
    };
    let pod_name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let waiting = status.state.as_ref().and_then(|s| s.waiting.as_ref());
    let last = last_termination(status);
    if let Some(w) = waiting.filter(|w| w.reason.as_deref() == Some("CrashLoopBackOff")) {
        return Verdict::Unhealthy {
            reason: "CrashLoopBackOff".to_owned(),
            message: describe(&pod_name, name, w.message.as_deref(), last.as_deref()),
        };
    }
    if let Some(terminated) = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .filter(|t| t.exit_code != 0)
        .filter(|t| {
            t.finished_at
                .as_ref()
                .is_none_or(|at| elapsed(at, now) < timeout)
        })
    {
        return Verdict::Unhealthy {
            reason: terminated
                .reason
                .clone()
                .unwrap_or_else(|| "Error".to_owned()),
            message: describe(&pod_name, name, None, last.as_deref()),
        };
    }
    if status.ready {
        return Verdict::Healthy;
    }
    let unready_for = elapsed(&unready_since(pod, status), now);
    if unready_for < timeout {
        return Verdict::Wait(timeout - unready_for);
    }
    let reason = waiting
        .and_then(|w| w.reason.clone())
        .unwrap_or_else(|| REASON_UNREADY.to_owned());
    let detail = format!(
        "not ready for {} (spec.rollout.unhealthyTimeout {})",
        humantime::format_duration(unready_for),
        humantime::format_duration(timeout)
    );
    let said = waiting.and_then(|w| w.message.as_deref());
    let first = match said {
        Some(said) => format!("{detail}: {said}"),
        None => detail,
    };
    Verdict::Unhealthy {
        reason,
        message: describe(&pod_name, name, Some(&first), last.as_deref()),
    }
}

/// "pod ns/p, container c: <said>; last terminated: <reason> (exit code N): <message>".
fn describe(pod: &str, container: &str, said: Option<&str>, last: Option<&str>) -> String {
    let mut text = format!("pod {pod}, container {container}");
    if let Some(said) = said.filter(|s| !s.is_empty()) {
        text.push_str(": ");
        text.push_str(said);
    }
    if let Some(last) = last {
        text.push_str("; last terminated: ");
        text.push_str(last);
    }
    text
}

/// The container's last termination, in words: reason, exit code, message.
fn last_termination(status: &ContainerStatus) -> Option<String> {
    let t = status.last_state.as_ref()?.terminated.as_ref()?;
    let mut text = format!(
        "{} (exit code {})",
        t.reason.as_deref().unwrap_or("terminated"),
        t.exit_code
    );
    if let Some(message) = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        text.push_str(": ");
        text.push_str(message);
    }
    Some(text)
}

/// The latest moment the container can have become unready.
fn unready_since(pod: &Pod, status: &ContainerStatus) -> Time {
    let pod_status = pod.status.as_ref();
    let candidates = [
        pod.metadata.creation_timestamp.clone(),
        pod_status.and_then(|s| s.start_time.clone()),
        status
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.clone()),
        pod_status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.type_ == "ContainersReady" && c.status == "False")
            })
            .and_then(|c| c.last_transition_time.clone()),
    ];
    candidates
        .into_iter()
        .flatten()
        .max_by_key(|t| t.0)
        .unwrap_or(Time(Timestamp::UNIX_EPOCH))
}

fn elapsed(since: &Time, now: &Time) -> Duration {
    let secs = now.0.as_second().saturating_sub(since.0.as_second());
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Whether the pod has the sidecar container exactly as planned (name, image, args).
fn carries_planned_sidecar(pod: &Pod, sidecar: &Value) -> bool {
    let Some(name) = sidecar.get("name").and_then(Value::as_str) else {
        return false;
    };
    let image = sidecar.get("image").and_then(Value::as_str);
    let args: Vec<&str> = sidecar
        .get("args")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers.iter().any(|c| {
            c.name == name
                && c.image.as_deref() == image
                && c.args
                    .as_deref()
                    .unwrap_or(&[])
                    .iter()
                    .map(String::as_str)
                    .eq(args.iter().copied())
        })
    })
}

/// Kubernetes label-selector semantics (matchLabels and matchExpressions ANDed). A selector
/// with neither selects nothing here: a workload always has one, and matching every pod of
/// the namespace would be wrong.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let match_labels = selector.match_labels.as_ref();
    let expressions = selector.match_expressions.as_deref().unwrap_or(&[]);
    if match_labels.is_none_or(BTreeMap::is_empty) && expressions.is_empty() {
        return false;
    }
    let labels_ok = match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = expressions.iter().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2026-01-01T00:10:00Z";
    const FIVE_MIN: Duration = Duration::from_secs(300);

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn sidecar() -> Value {
        json!({"name": "metrics-sidecar", "image": "img:v1", "args": ["--listen", "0.0.0.0:9443"]})
    }

    fn watched(component: Component, app: &str) -> Watched {
        Watched {
            component,
            selector: serde_json::from_value(json!({"matchLabels": {"kubevirt.io": app}})).unwrap(),
            sidecar: sidecar(),
        }
    }

    fn handler() -> Vec<Watched> {
        vec![watched(Component::VirtHandler, "virt-handler")]
    }

    /// A pod of `app` created at 00:00 with the planned sidecar, whose sidecar status is
    /// `sidecar_status` (merged into a ready, running one).
    fn pod(name: &str, app: &str, sidecar_status: Value) -> Pod {
        let mut status = json!({"name": "metrics-sidecar", "ready": true, "restartCount": 0,
            "image": "img:v1", "imageID": "", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}});
        json_merge(&mut status, sidecar_status);
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "kubevirt", "labels": {"kubevirt.io": app},
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [
                {"name": app, "image": "kubevirt/img"},
                {"name": "metrics-sidecar", "image": "img:v1", "args": ["--listen", "0.0.0.0:9443"]},
            ]},
            "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z",
                "containerStatuses": [status]},
        }))
        .unwrap()
    }

    fn json_merge(base: &mut Value, patch: Value) {
        match (base, patch) {
            (Value::Object(b), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        b.remove(&k);
                    } else {
                        json_merge(b.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (b, p) => *b = p,
        }
    }

    fn crash_looping() -> Value {
        json!({"ready": false, "restartCount": 4,
            "state": {"running": null, "waiting": {"reason": "CrashLoopBackOff",
                "message": "back-off 1m20s restarting failed container=metrics-sidecar"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                "message": "cannot bind 0.0.0.0:9443: address in use",
                "finishedAt": "2026-01-01T00:09:00Z"}}})
    }

    fn unready_since(started: &str) -> Value {
        json!({"ready": false, "state": {"running": {"startedAt": started}}})
    }

    #[test]
    fn a_crash_looping_sidecar_rolls_its_component_back_with_reason_and_last_message() {
        let pods = [pod("virt-handler-a", "virt-handler", crash_looping())];
        let d = decide(&handler(), &pods, FIVE_MIN, 7, &t(NOW));
        assert_eq!(d.rollbacks.len(), 1);
        let r = &d.rollbacks[0];
        assert_eq!(r.component, Component::VirtHandler);
        assert_eq!(r.generation, 7);
        assert_eq!(r.pod, "kubevirt/virt-handler-a");
        assert_eq!(r.reason, "CrashLoopBackOff");
        assert_eq!(
            r.message,
            "pod kubevirt/virt-handler-a, container metrics-sidecar: back-off 1m20s restarting failed container=metrics-sidecar; last terminated: Error (exit code 1): cannot bind 0.0.0.0:9443: address in use"
        );
        assert_eq!(r.time, t(NOW));
    }

    #[test]
    fn a_recent_non_zero_exit_counts_as_a_crash_an_old_one_does_not() {
        let restarted = json!({"restartCount": 1, "lastState": {"terminated": {"exitCode": 137,
            "reason": "OOMKilled", "finishedAt": "2026-01-01T00:08:00Z"}}});
        let d = decide(
            &handler(),
            &[pod("p", "virt-handler", restarted)],
            FIVE_MIN,
            1,
            &t(NOW),
        );
        assert_eq!(d.rollbacks[0].reason, "OOMKilled");
        assert!(
            d.rollbacks[0]
                .message
                .ends_with("last terminated: OOMKilled (exit code 137)")
        );

        let long_ago = json!({"restartCount": 1, "lastState": {"terminated": {"exitCode": 1,
            "reason": "Error", "finishedAt": "2026-01-01T00:01:00Z"}}});
        let d = decide(
            &handler(),
            &[pod("p", "virt-handler", long_ago)],
            FIVE_MIN,
            1,
            &t(NOW),
        );
        assert_eq!(d, Decision::default(), "ready now, crashed 9m ago: healthy");
    }

    #[test]
    fn unready_past_the_bound_rolls_back() {
        let pods = [pod(
            "p",
            "virt-handler",
            unready_since("2026-01-01T00:04:00Z"),
        )];
        let d = decide(&handler(), &pods, FIVE_MIN, 2, &t(NOW));
        assert_eq!(d.rollbacks.len(), 1);
        assert_eq!(d.rollbacks[0].reason, "Unready");
        assert_eq!(
            d.rollbacks[0].message,
            "pod kubevirt/p, container metrics-sidecar: not ready for 6m (spec.rollout.unhealthyTimeout 5m)"
        );
        // A waiting reason (e.g. an image that cannot be pulled) is the reason shown.
        let pulling = json!({"ready": false, "state": {"running": null, "waiting": {
            "reason": "ImagePullBackOff", "message": "Back-off pulling image \"img:v1\""}}});
        let d = decide(
            &handler(),
            &[pod("p", "virt-handler", pulling)],
            FIVE_MIN,
            2,
            &t(NOW),
        );
        assert_eq!(d.rollbacks[0].reason, "ImagePullBackOff");
        assert!(d.rollbacks[0].message.contains("Back-off pulling image"));
    }

    #[test]
    fn unready_within_the_bound_waits_and_asks_to_be_checked_again() {
        let pods = [pod(
            "p",
            "virt-handler",
            unready_since("2026-01-01T00:08:00Z"),
        )];
        let d = decide(&handler(), &pods, FIVE_MIN, 2, &t(NOW));
        assert!(d.rollbacks.is_empty());
        assert_eq!(d.recheck_after, Some(Duration::from_secs(180)));
        // The ContainersReady transition moves the start of the wait later still.
        let mut p = pod("p", "virt-handler", unready_since("2026-01-01T00:00:00Z"));
        p.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(json!({"type": "ContainersReady", "status": "False",
                "lastTransitionTime": "2026-01-01T00:09:00Z"}))
            .unwrap(),
        ]);
        let d = decide(&handler(), &[p], FIVE_MIN, 2, &t(NOW));
        assert_eq!(d.recheck_after, Some(Duration::from_secs(240)));
    }

    #[test]
    fn pods_of_another_workload_do_not_count() {
        let pods = [pod("virt-api-x", "virt-api", crash_looping())];
        let d = decide(&handler(), &pods, FIVE_MIN, 1, &t(NOW));
        assert_eq!(d, Decision::default());
        // The same pod under virt-api's own selector does.
        let d = decide(
            &[watched(Component::VirtApi, "virt-api")],
            &pods,
            FIVE_MIN,
            1,
            &t(NOW),
        );
        assert_eq!(d.rollbacks[0].component, Component::VirtApi);
    }

    #[test]
    fn pods_without_the_planned_sidecar_do_not_count() {
        // No sidecar container at all (a pod from before the injection).
        let mut bare = pod("p", "virt-handler", crash_looping());
        bare.spec.as_mut().unwrap().containers.truncate(1);
        // An older sidecar (another image): it is being replaced by the rollout.
        let mut older = pod("q", "virt-handler", crash_looping());
        older.spec.as_mut().unwrap().containers[1].image = Some("img:v0".into());
        // Other args.
        let mut other_args = pod("r", "virt-handler", crash_looping());
        other_args.spec.as_mut().unwrap().containers[1].args = Some(vec!["--mode=full".into()]);
        // Being deleted.
        let mut going = pod("s", "virt-handler", crash_looping());
        going.metadata.deletion_timestamp = Some(t(NOW));
        // No status reported for the sidecar yet (no kubelet).
        let mut unreported = pod("u", "virt-handler", crash_looping());
        unreported.status.as_mut().unwrap().container_statuses = None;
        let d = decide(
            &handler(),
            &[bare, older, other_args, going, unreported],
            FIVE_MIN,
            1,
            &t(NOW),
        );
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn a_healthy_sidecar_keeps_its_component() {
        let pods = [pod("p", "virt-handler", json!({}))];
        assert_eq!(
            decide(&handler(), &pods, FIVE_MIN, 1, &t(NOW)),
            Decision::default()
        );
    }

    #[test]
    fn a_rollback_holds_for_its_generation_only() {
        let mut policy = MetricsSidecarPolicy::new("p", Default::default());
        policy.metadata.generation = Some(3);
        let record = RolledBack {
            component: Component::VirtHandler,
            generation: 3,
            pod: "kubevirt/p".into(),
            reason: "CrashLoopBackOff".into(),
            message: "m".into(),
            time: t(NOW),
        };
        policy.status = Some(crate::api::MetricsSidecarPolicyStatus {
            rolled_back: vec![record.clone()],
            ..Default::default()
        });
        assert_eq!(active(&policy), vec![record]);
        policy.metadata.generation = Some(4);
        assert!(active(&policy).is_empty(), "the spec changed: inject again");
    }

    #[test]
    fn the_timeout_comes_from_the_policy_or_defaults_to_five_minutes() {
        let mut policy = MetricsSidecarPolicy::new("p", Default::default());
        assert_eq!(unhealthy_timeout(&policy), FIVE_MIN);
        policy.spec.rollout = Some(crate::api::RolloutSettings {
            unhealthy_timeout: Some("1m30s".into()),
        });
        assert_eq!(unhealthy_timeout(&policy), Duration::from_secs(90));
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let labels: BTreeMap<String, String> =
            [("kubevirt.io".to_owned(), "virt-handler".to_owned())].into();
        let sel = |v: Value| serde_json::from_value::<LabelSelector>(v).unwrap();
        assert!(selector_matches(
            &sel(json!({"matchLabels": {"kubevirt.io": "virt-handler"}})),
            Some(&labels)
        ));
        assert!(!selector_matches(
            &sel(json!({"matchLabels": {"kubevirt.io": "virt-api"}})),
            Some(&labels)
        ));
        assert!(selector_matches(
            &sel(
                json!({"matchExpressions": [{"key": "kubevirt.io", "operator": "In", "values": ["virt-handler"]}, {"key": "x", "operator": "DoesNotExist"}]})
            ),
            Some(&labels)
        ));
        assert!(!selector_matches(&sel(json!({})), Some(&labels)));
    }
}
