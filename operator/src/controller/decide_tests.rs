//! The decisions of every reconcile branch, on plain objects (the release's own workload
//! manifests from testdata), without any API: what is written, what the status shows,
//! which events go out and when the policy is looked at again.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::api::conditions;
use crate::controller::apply::ApplyError;
use k8s_openapi::api::core::v1::Pod;
use kube::core::Status;
use serde_json::json;

const NS: &str = "kubevirt";
const IMAGE: &str = "quay.io/kubevirt/metrics-sidecars:v0.1.0";
const OWNER: &str = "kubevirt/metrics";
const CREATED: &str = "2026-01-01T00:00:00Z";
const NOW: &str = "2026-01-01T00:10:00Z";

fn t(s: &str) -> Time {
    Time(s.parse().unwrap())
}

fn inputs(settings: &Settings) -> Inputs<'_> {
    Inputs {
        settings,
        now: t(NOW),
    }
}

/// A policy `name` with the finalizer, enabling virt-handler and virt-controller.
fn policy_json(name: &str, created: &str) -> Value {
    json!({
        "apiVersion": "metrics.kubevirt.io/v1alpha1",
        "kind": "MetricsSidecarPolicy",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1,
            "creationTimestamp": created, "finalizers": ["metrics.kubevirt.io/cleanup"],
        },
        "spec": {
            "defaults": {"image": IMAGE},
            "components": {"virtHandler": {}, "virtController": {}},
        },
    })
}

fn policy_from(value: Value) -> MetricsSidecarPolicy {
    serde_json::from_value(value).unwrap()
}

fn policy() -> MetricsSidecarPolicy {
    policy_from(policy_json("metrics", CREATED))
}

fn manifest(file: &str) -> Value {
    let path = format!(
        "{}/../testdata/kubevirt-v1.9.0/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(text.trim_start_matches("---\n")).unwrap()
}

/// The release sample KubeVirt CR, deployed, with `patches` when given.
fn kubevirt(patches: Option<Vec<Value>>) -> KubeVirt {
    let mut kv = manifest("kubevirt-cr.yaml");
    kv["metadata"]["resourceVersion"] = json!("5");
    kv["status"] = json!({"phase": "Deployed", "observedKubeVirtVersion": "v1.9.0"});
    if let Some(patches) = patches {
        kv["spec"]["customizeComponents"]["patches"] = Value::Array(patches);
    }
    serde_json::from_value(kv).unwrap()
}

fn named(mut kv: KubeVirt, name: &str) -> KubeVirt {
    kv.metadata.name = Some(name.to_owned());
    kv
}

fn hco_owned(mut kv: KubeVirt) -> KubeVirt {
    kv.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({
            "apiVersion": "hco.kubevirt.io/v1beta1", "kind": "HyperConverged",
            "name": "kubevirt-hyperconverged", "uid": "hco-uid", "controller": true,
        }))
        .unwrap(),
    ]);
    kv
}

fn hyperconverged(annotation: Option<String>) -> HyperConverged {
    let mut hco = json!({
        "apiVersion": "hco.kubevirt.io/v1beta1", "kind": "HyperConverged",
        "metadata": {"name": "kubevirt-hyperconverged", "namespace": NS, "resourceVersion": "30"},
        "spec": {},
    });
    if let Some(a) = annotation {
        hco["metadata"]["annotations"] = json!({ KUBEVIRT_JSONPATCH_ANNOTATION: a });
    }
    serde_json::from_value(hco).unwrap()
}

fn plan_of(policy: &MetricsSidecarPolicy) -> Plan {
    plan::plan(policy, Some(&kubevirt(None)), &Default::default()).unwrap()
}

fn our_entries(policy: &MetricsSidecarPolicy) -> Vec<Value> {
    plan_of(policy).entry_values()
}

fn foreign_virt_api() -> Value {
    json!({"resourceName": "virt-api", "resourceType": "Deployment",
        "patch": r#"{"spec":{"replicas":3}}"#, "type": "strategic"})
}

fn with_sidecar(mut workload: Value, sidecar: bool, rolled_out: Value) -> Value {
    if sidecar {
        workload["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "metrics-sidecar", "image": IMAGE}));
    }
    workload["metadata"]["generation"] = json!(4);
    workload["status"] = rolled_out;
    workload
}

fn deployment(file: &str, sidecar: bool) -> Deployment {
    let d = manifest(file);
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let status = json!({"replicas": replicas, "updatedReplicas": replicas,
        "readyReplicas": replicas, "observedGeneration": 4});
    serde_json::from_value(with_sidecar(d, sidecar, status)).unwrap()
}

/// The component workloads, rolled out, with or without the sidecar (virt-operator never).
fn workloads(sidecar: bool) -> Workloads {
    let status = json!({"desiredNumberScheduled": 3, "currentNumberScheduled": 3,
        "numberMisscheduled": 0, "updatedNumberScheduled": 3, "numberReady": 3,
        "observedGeneration": 4});
    let handler = with_sidecar(manifest("virt-handler-daemonset.yaml"), sidecar, status);
    Workloads {
        daemon_sets: vec![serde_json::from_value(handler).unwrap()],
        deployments: vec![
            deployment("virt-controller-deployment.yaml", sidecar),
            deployment("virt-api-deployment.yaml", sidecar),
            deployment("virt-operator-deployment.yaml", false),
        ],
    }
}

fn observed(
    kubevirts: Vec<KubeVirt>,
    policies: Vec<MetricsSidecarPolicy>,
    workloads: Workloads,
) -> Observed {
    Observed {
        namespace: NS.to_owned(),
        kubevirts,
        policies,
        workloads,
        ..Observed::default()
    }
}

/// The policy, its only KubeVirt CR with `patches`, and the workloads (sidecar or not).
fn world(policy: &MetricsSidecarPolicy, patches: Option<Vec<Value>>, sidecar: bool) -> Observed {
    observed(
        vec![kubevirt(patches)],
        vec![policy.clone()],
        workloads(sidecar),
    )
}

fn report(decision: &Decision) -> &Report {
    decision.finish.report.as_ref().unwrap()
}

/// Asserts a decision that writes nothing and leaves the monitoring objects alone.
fn assert_shows_only(decision: &Decision) {
    assert!(decision.writes.is_empty(), "{:?}", decision.writes);
    assert_eq!(decision.monitoring, MonitoringStep::Untouched);
    assert_eq!(decision.after_writes, AfterWrites::Announce(None));
}

fn notice(decision: &Decision) -> &Notice {
    decision.finish.notice.as_ref().unwrap()
}

/// The Ready condition the policy would show for the decision's report.
fn ready_reason(policy: &MetricsSidecarPolicy, report: &Report) -> String {
    status::desired(policy, report, &t(NOW))
        .conditions
        .into_iter()
        .find(|c| c.type_ == conditions::READY)
        .unwrap()
        .reason
}

fn api_error(code: u16) -> kube::Error {
    kube::Error::Api(Box::new(Status {
        code,
        message: "refused".into(),
        ..Status::default()
    }))
}

fn monitoring_outcome(waiting_for_crds: bool) -> monitoring::Outcome {
    monitoring::Outcome {
        status: crate::api::MonitoringStatus {
            notes: vec!["no prometheus-operator CRDs".into()],
            ..Default::default()
        },
        waiting_for_crds,
        wrote: false,
    }
}

// ---- Apply branch: before any write ----

#[test]
fn no_kubevirt_cr_waits_and_says_where_to_create_it() {
    let p = policy();
    let settings = Settings::default();
    let d = converge(
        &p,
        &observed(vec![], vec![p.clone()], Workloads::default()),
        &inputs(&settings),
    );
    assert_shows_only(&d);
    assert_eq!(
        report(&d).state,
        State::Waiting(Waiting::NotFound { name: None })
    );
    assert_eq!(report(&d).kubevirt, None);
    let n = notice(&d);
    assert_eq!(
        (n.warning, n.reason),
        (false, reasons::WAITING_FOR_KUBEVIRT)
    );
    assert!(n.note.contains("no KubeVirt CR in namespace kubevirt"));
    assert_eq!(d.requeue, Some(settings.wait));
}

#[test]
fn a_kubevirt_cr_being_deleted_is_waited_for_not_written() {
    let p = policy();
    let mut kv = kubevirt(None);
    kv.metadata.deletion_timestamp = Some(t(NOW));
    let settings = Settings::default();
    let d = converge(
        &p,
        &observed(vec![kv], vec![p.clone()], workloads(false)),
        &inputs(&settings),
    );
    assert_shows_only(&d);
    assert_eq!(
        report(&d).state,
        State::Waiting(Waiting::Deleting {
            name: "kubevirt".into()
        })
    );
    assert_eq!(ready_reason(&p, report(&d)), "KubeVirtDeleting");
    assert_eq!(d.requeue, Some(settings.wait));
}

#[test]
fn a_kubevirt_cr_still_deploying_gets_our_entries_and_says_so() {
    let p = policy();
    let mut kv = kubevirt(None);
    kv.status.as_mut().unwrap().phase = Some("Deploying".into());
    let settings = Settings::default();
    let d = converge(
        &p,
        &observed(vec![kv], vec![p.clone()], workloads(false)),
        &inputs(&settings),
    );
    assert!(matches!(d.writes.as_slice(), [Write::KubeVirt { .. }]));
    assert_eq!(
        report(&d).state,
        State::KubeVirtDeploying {
            name: "kubevirt".into(),
            phase: "Deploying".into()
        }
    );
    assert_eq!(d.requeue, Some(settings.wait));
}

#[test]
fn the_younger_policy_changes_nothing_and_names_the_owner() {
    let older = policy_from(policy_json("first", "2025-06-01T00:00:00Z"));
    let younger = policy_from(policy_json("second", CREATED));
    let settings = Settings::default();
    let d = converge(
        &younger,
        &observed(
            vec![kubevirt(None)],
            vec![younger.clone(), older],
            Workloads::default(),
        ),
        &inputs(&settings),
    );
    assert_shows_only(&d);
    let r = report(&d);
    assert_eq!(
        r.state,
        State::Conflict {
            winner: "first".into()
        }
    );
    assert_eq!(r.kubevirt.as_ref().unwrap().name, "kubevirt");
    assert_eq!(r.method, None);
    let n = notice(&d);
    assert_eq!((n.warning, n.reason), (true, reasons::CONFLICTING_POLICY));
    assert!(
        n.note
            .contains("policy kubevirt/first is older and owns KubeVirt CR kubevirt/kubevirt")
    );
    assert_eq!(d.requeue, Some(settings.wait * 2));
}

#[test]
fn a_missing_hyperconverged_owner_is_reported_without_writes() {
    let p = policy();
    let settings = Settings::default();
    let d = converge(
        &p,
        &observed(
            vec![hco_owned(kubevirt(None))],
            vec![p.clone()],
            Workloads::default(),
        ),
        &inputs(&settings),
    );
    assert_shows_only(&d);
    let r = report(&d);
    assert!(matches!(&r.state, State::HyperConvergedMissing(m)
        if m.contains("owned by HyperConverged kubevirt/kubevirt-hyperconverged, which cannot be found")));
    assert_eq!(r.method, Some(InjectionMethod::HyperConvergedJsonPatch));
    assert_eq!(d.finish.notice, None);
    assert_eq!(d.requeue, Some(settings.wait));
}

#[test]
fn a_spec_that_cannot_be_planned_waits_for_a_change() {
    let mut value = policy_json("metrics", CREATED);
    value["spec"]["defaults"] = json!({});
    let p = policy_from(value);
    let settings = Settings::default();
    let d = converge(&p, &world(&p, None, false), &inputs(&settings));
    assert_shows_only(&d);
    assert!(matches!(&report(&d).state, State::InvalidSpec(m) if m.contains("has no image")));
    let n = notice(&d);
    assert_eq!(
        (n.warning, n.reason),
        (true, conditions::REASON_INVALID_SPEC)
    );
    assert_eq!(d.requeue, None);
}

#[test]
fn a_paused_policy_only_reports_what_is_in_place() {
    let mut value = policy_json("metrics", CREATED);
    value["spec"]["paused"] = json!(true);
    let p = policy_from(value);
    let settings = Settings::default();
    let stale = our_entries(&policy());
    let d = converge(&p, &world(&p, Some(stale), true), &inputs(&settings));
    assert_shows_only(&d);
    let r = report(&d);
    assert_eq!(r.state, State::Paused);
    let injected: Vec<(Component, bool)> = r
        .components
        .iter()
        .map(|c| (c.component, c.injected))
        .collect();
    assert_eq!(
        injected,
        [
            (Component::VirtHandler, true),
            (Component::VirtController, true)
        ]
    );
    assert_eq!(notice(&d).reason, reasons::PAUSED);
    assert_eq!(d.requeue, Some(settings.resync));
}

// ---- Apply branch: the writes ----

#[test]
fn a_first_injection_plans_our_entries_and_announces_them() {
    let p = policy();
    let settings = Settings::default();
    let kv = kubevirt(Some(vec![foreign_virt_api()]));
    let d = converge(
        &p,
        &observed(vec![kv.clone()], vec![p.clone()], workloads(false)),
        &inputs(&settings),
    );
    let [Write::KubeVirt { kubevirt, plan }] = d.writes.as_slice() else {
        panic!("{:?}", d.writes)
    };
    assert_eq!(kubevirt, &kv);
    assert_eq!(plan.entry_values(), our_entries(&p));
    assert_eq!(
        d.monitoring,
        MonitoringStep::Converge {
            plan: plan_of(&p),
            kubevirt_version: Some("v1.9.0".into())
        }
    );
    let r = report(&d);
    assert_eq!(
        r.state,
        State::RollingOut {
            waiting_for: vec![Component::VirtHandler, Component::VirtController]
        }
    );
    assert_eq!(r.method, Some(InjectionMethod::CustomizeComponents));
    assert!(r.components.iter().all(|c| c.injected));
    assert_eq!(d.finish.notice, None);
    assert!(d.finish.events.is_empty());
    let AfterWrites::Announce(Some(announce)) = &d.after_writes else {
        panic!("{:?}", d.after_writes)
    };
    assert_eq!(announce.reason, reasons::INJECTED);
    assert_eq!(
        announce.note,
        "sidecars for virt-handler, virt-controller written to KubeVirt CR kubevirt/kubevirt via CustomizeComponents"
    );
    assert_eq!(d.requeue, Some(settings.wait));
}

#[test]
fn an_unchanged_world_plans_no_write_and_resyncs() {
    let p = policy();
    let settings = Settings::default();
    let mut patches = vec![foreign_virt_api()];
    patches.extend(our_entries(&p));
    let d = converge(&p, &world(&p, Some(patches), true), &inputs(&settings));
    assert!(d.writes.is_empty(), "{:?}", d.writes);
    assert_eq!(report(&d).state, State::Injected);
    assert_eq!(d.requeue, Some(settings.resync));
    // Nothing written: no event either.
    let outcome = settle(
        d,
        Ok(Applied {
            monitoring: Some(monitoring_outcome(false)),
            ..Applied::default()
        }),
        &settings,
    );
    assert!(outcome.finish.events.is_empty());
    assert_eq!(
        outcome.finish.report.unwrap().monitoring,
        Some(monitoring_outcome(false).status)
    );
    assert_eq!(outcome.result.unwrap(), Action::requeue(settings.resync));
}

#[test]
fn moving_kubevirt_ref_removes_ours_from_the_old_cr_first() {
    let mut value = policy_json("metrics", CREATED);
    value["spec"]["kubevirtRef"] = json!({"name": "kubevirt-b"});
    let p = policy_from(value);
    let settings = Settings::default();
    let old = kubevirt(Some(our_entries(&p)));
    let new = named(kubevirt(None), "kubevirt-b");
    let untouched = named(kubevirt(Some(vec![foreign_virt_api()])), "kubevirt-c");
    let d = converge(
        &p,
        &observed(
            vec![old.clone(), new.clone(), untouched],
            vec![p.clone()],
            workloads(false),
        ),
        &inputs(&settings),
    );
    assert_eq!(d.writes.len(), 2, "{:?}", d.writes);
    assert_eq!(
        d.writes[0],
        Write::KubeVirtRemoval {
            kubevirt: old,
            owner: OWNER.into()
        }
    );
    assert!(matches!(&d.writes[1], Write::KubeVirt { kubevirt, .. } if kubevirt == &new));
    // Only the removal changed something (the new CR was already written): no Injected.
    let quiet = settle(
        d.clone(),
        Ok(Applied {
            wrote: vec![true, false],
            ..Applied::default()
        }),
        &settings,
    );
    assert!(quiet.finish.events.is_empty());
    let announced = settle(
        d,
        Ok(Applied {
            wrote: vec![true, true],
            ..Applied::default()
        }),
        &settings,
    );
    assert_eq!(announced.finish.events[0].reason, reasons::INJECTED);
}

#[test]
fn a_hyperconverged_owner_gets_the_annotation_and_the_cr_is_left_alone() {
    let p = policy();
    let settings = Settings::default();
    let kv = hco_owned(kubevirt(None));
    let mut seen = observed(vec![kv], vec![p.clone()], workloads(false));
    seen.hco = Some(hyperconverged(None));
    let d = converge(&p, &seen, &inputs(&settings));
    let [
        Write::HyperConverged {
            kubevirt,
            owner,
            entries,
            ..
        },
    ] = d.writes.as_slice()
    else {
        panic!("{:?}", d.writes)
    };
    assert_eq!((kubevirt.as_str(), owner.as_str()), ("kubevirt", OWNER));
    assert_eq!(entries, &our_entries(&p));
    assert_eq!(
        report(&d).method,
        Some(InjectionMethod::HyperConvergedJsonPatch)
    );

    // The annotation already holds our operations: nothing to write, and the status
    // counts them as in place.
    let annotation = plan::hco_annotation(None, OWNER, &our_entries(&p))
        .unwrap()
        .annotation;
    seen.hco = Some(hyperconverged(annotation));
    let d = converge(&p, &seen, &inputs(&settings));
    assert!(d.writes.is_empty(), "{:?}", d.writes);
    assert!(report(&d).components.iter().all(|c| c.injected));
}

fn with_virt_operator(mut value: Value) -> MetricsSidecarPolicy {
    value["spec"]["components"] = json!({"virtOperator": {}});
    policy_from(value)
}

/// virt-operator's Deployment as it is after `body` was applied (plus server defaults).
fn virt_operator_applied(body: &Value) -> Deployment {
    let mut live =
        serde_json::to_value(deployment("virt-operator-deployment.yaml", false)).unwrap();
    let template = &mut live["spec"]["template"];
    template["metadata"]["annotations"] =
        body["spec"]["template"]["metadata"]["annotations"].clone();
    for container in body["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
    {
        let mut container = container.clone();
        container["terminationMessagePath"] = json!("/dev/termination-log");
        template["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(container);
    }
    serde_json::from_value(live).unwrap()
}

#[test]
fn virt_operator_is_applied_only_when_its_sidecar_differs() {
    let p = with_virt_operator(policy_json("metrics", CREATED));
    let settings = Settings::default();
    let body = plan_of(&p).virt_operator.unwrap();
    let d = converge(&p, &world(&p, None, false), &inputs(&settings));
    let [Write::VirtOperator { body: planned, .. }] = d.writes.as_slice() else {
        panic!("{:?}", d.writes)
    };
    assert_eq!(planned, &body);

    let mut seen = world(&p, None, false);
    seen.workloads.deployments[2] = virt_operator_applied(&body);
    let d = converge(&p, &seen, &inputs(&settings));
    assert!(d.writes.is_empty(), "{:?}", d.writes);
}

#[test]
fn virt_operator_loses_only_this_policys_sidecar() {
    let with = with_virt_operator(policy_json("metrics", CREATED));
    let applied = virt_operator_applied(&plan_of(&with).virt_operator.unwrap());
    let without = policy();
    let settings = Settings::default();
    let mut seen = world(&without, Some(our_entries(&without)), true);
    seen.workloads.deployments[2] = applied.clone();
    let d = converge(&without, &seen, &inputs(&settings));
    assert_eq!(d.writes, [Write::VirtOperatorRemoval { live: applied }]);

    // Another policy's marker: not ours to remove.
    let mut other = policy_json("other", CREATED);
    other["metadata"]["namespace"] = json!("elsewhere");
    let other = with_virt_operator(other);
    seen.workloads.deployments[2] = virt_operator_applied(&plan_of(&other).virt_operator.unwrap());
    let d = converge(&without, &seen, &inputs(&settings));
    assert!(d.writes.is_empty(), "{:?}", d.writes);
}

// ---- Apply branch: rollout safety ----

/// A virt-handler pod running the sidecar planned for `policy`, with `sidecar_status`.
fn handler_pod(policy: &MetricsSidecarPolicy, sidecar_status: Value) -> Pod {
    let sidecar = plan_of(policy).sidecars[0].container.clone();
    let mut status =
        json!({"name": "metrics-sidecar", "restartCount": 0, "image": "", "imageID": ""});
    for (k, v) in sidecar_status.as_object().unwrap() {
        status[k] = v.clone();
    }
    serde_json::from_value(json!({
        "metadata": {"name": "virt-handler-x7k2p", "namespace": NS,
            "labels": {"kubevirt.io": "virt-handler"}, "creationTimestamp": CREATED},
        "spec": {"containers": [
            {"name": "virt-handler", "image": "quay.io/kubevirt/virt-handler:v1.9.0"},
            {"name": sidecar["name"], "image": sidecar["image"], "args": sidecar["args"]},
        ]},
        "status": {"phase": "Running", "startTime": CREATED, "containerStatuses": [status]},
    }))
    .unwrap()
}

#[test]
fn a_crash_looping_sidecar_is_rolled_back_and_the_policy_shows_sidecar_unhealthy() {
    let p = policy();
    let settings = Settings::default();
    let mut seen = world(&p, Some(our_entries(&p)), true);
    seen.pods = vec![handler_pod(
        &p,
        json!({"ready": false, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "no such file"}}}),
    )];
    let d = converge(&p, &seen, &inputs(&settings));
    // virt-handler's entry goes; virt-controller's stays.
    let [Write::KubeVirt { plan, .. }] = d.writes.as_slice() else {
        panic!("{:?}", d.writes)
    };
    assert_eq!(plan.entry_values(), our_entries(&p)[1..].to_vec());
    // The monitoring objects follow the policy, not the rollback.
    assert!(matches!(&d.monitoring, MonitoringStep::Converge { plan, .. } if plan == &plan_of(&p)));
    let r = report(&d);
    assert_eq!(r.rolled_back.len(), 1);
    let rollback = &r.rolled_back[0];
    assert_eq!(
        (
            rollback.component,
            rollback.reason.as_str(),
            rollback.generation
        ),
        (Component::VirtHandler, "CrashLoopBackOff", 1)
    );
    assert_eq!(rollback.pod, "kubevirt/virt-handler-x7k2p");
    let line = &r.components[0];
    assert!(!line.injected);
    assert!(
        line.message
            .as_deref()
            .unwrap()
            .starts_with("sidecar rolled back (CrashLoopBackOff)")
    );
    assert_eq!(ready_reason(&p, r), conditions::REASON_SIDECAR_UNHEALTHY);
    let [event] = d.finish.events.as_slice() else {
        panic!("{:?}", d.finish.events)
    };
    assert_eq!(
        (event.warning, event.reason),
        (true, reasons::SIDECAR_ROLLED_BACK)
    );
    assert!(event.note.contains("removed the sidecar of virt-handler"));
    // A rollback is no injection to announce.
    assert_eq!(d.after_writes, AfterWrites::Announce(None));
}

#[test]
fn a_rollback_holds_while_the_generation_does() {
    let mut p = policy();
    p.status = Some(crate::api::MetricsSidecarPolicyStatus {
        rolled_back: vec![RolledBack {
            component: Component::VirtHandler,
            generation: 1,
            pod: "kubevirt/virt-handler-x7k2p".into(),
            reason: "CrashLoopBackOff".into(),
            message: "m".into(),
            time: t(CREATED),
        }],
        ..Default::default()
    });
    let settings = Settings::default();
    let d = converge(
        &p,
        &world(&p, Some(our_entries(&p)[1..].to_vec()), true),
        &inputs(&settings),
    );
    assert!(d.writes.is_empty(), "{:?}", d.writes);
    assert!(report(&d).rolled_back.is_empty(), "no new rollback");
    assert!(d.finish.events.is_empty());
    assert_eq!(
        ready_reason(&p, report(&d)),
        conditions::REASON_SIDECAR_UNHEALTHY
    );

    p.metadata.generation = Some(2);
    let d = converge(
        &p,
        &world(&p, Some(our_entries(&p)[1..].to_vec()), true),
        &inputs(&settings),
    );
    let [Write::KubeVirt { plan, .. }] = d.writes.as_slice() else {
        panic!("the spec changed: inject again; {:?}", d.writes)
    };
    assert_eq!(plan.entry_values(), our_entries(&p));
}

#[test]
fn an_unready_sidecar_is_looked_at_again_when_it_reaches_its_bound() {
    let p = policy();
    let settings = Settings {
        wait: Duration::from_secs(600),
        ..Settings::default()
    };
    let mut seen = world(&p, Some(our_entries(&p)), true);
    seen.pods = vec![handler_pod(
        &p,
        json!({"ready": false, "state": {"running": {"startedAt": "2026-01-01T00:08:00Z"}}}),
    )];
    let d = converge(&p, &seen, &inputs(&settings));
    assert!(report(&d).rolled_back.is_empty());
    // Unready for 2m of the 5m bound: 3m left, plus a second.
    assert_eq!(d.requeue, Some(Duration::from_secs(181)));
}

// ---- settle: what the writes did ----

#[test]
fn monitoring_waiting_for_its_crds_shortens_the_requeue() {
    let p = policy();
    let settings = Settings::default();
    let d = converge(&p, &world(&p, None, false), &inputs(&settings));
    let outcome = settle(
        d,
        Ok(Applied {
            wrote: vec![true],
            monitoring: Some(monitoring_outcome(true)),
            removed: Vec::new(),
        }),
        &Settings {
            wait: Duration::from_secs(7),
            ..Settings::default()
        },
    );
    assert_eq!(
        outcome.result.unwrap(),
        Action::requeue(Duration::from_secs(7))
    );
    assert_eq!(
        outcome.finish.report.unwrap().monitoring,
        Some(monitoring_outcome(true).status)
    );
    assert_eq!(outcome.finish.events[0].reason, reasons::INJECTED);
}

#[test]
fn a_refused_write_shows_write_failed_and_keeps_the_rollbacks() {
    let p = policy();
    let settings = Settings::default();
    let mut seen = world(&p, Some(our_entries(&p)), true);
    seen.pods = vec![handler_pod(
        &p,
        json!({"ready": false, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}),
    )];
    let d = converge(&p, &seen, &inputs(&settings));
    let rollbacks = report(&d).rolled_back.clone();
    let err = ApplyError::Conflicts {
        target: "kubevirt",
        attempts: 5,
    };
    let outcome = settle(d, Err(ReconcileError::Apply(err)), &settings);
    let err = outcome.result.unwrap_err();
    assert_eq!(err.kind(), "conflicts");
    let r = outcome.finish.report.unwrap();
    assert!(matches!(&r.state, State::WriteFailed(m) if m.contains("changed under us 5 times")));
    assert!(r.components.is_empty());
    assert_eq!(r.rolled_back, rollbacks);
    assert_eq!(r.method, Some(InjectionMethod::CustomizeComponents));
    let n = outcome.finish.notice.unwrap();
    assert_eq!((n.warning, n.reason), (true, reasons::WRITE_FAILED));
    assert!(
        outcome.finish.events.is_empty(),
        "no rollback event after a failed write"
    );
}

#[test]
fn a_forbidden_write_or_read_is_left_to_the_forbidden_report() {
    let p = policy();
    let settings = Settings::default();
    let errors = [
        ReconcileError::Apply(ApplyError::Kube {
            target: "kubevirt",
            source: api_error(403),
        }),
        ReconcileError::Read {
            what: "NetworkPolicies",
            source: api_error(403),
        },
    ];
    for err in errors {
        let d = converge(&p, &world(&p, None, false), &inputs(&settings));
        let outcome = settle(d, Err(err), &settings);
        assert_eq!(outcome.finish, Finish::default());
        let err = outcome.result.unwrap_err();
        assert!(forbidden::find(&err).is_some(), "{err}");
    }
}

// ---- Cleanup branch ----

#[test]
fn deleting_a_paused_policy_removes_nothing_and_warns() {
    let mut value = policy_json("metrics", CREATED);
    value["spec"]["paused"] = json!(true);
    let p = policy_from(value);
    assert!(!removes_on_deletion(&p));
    let d = cleanup(&p, OWNER, &ObservedForCleanup::default());
    assert_shows_only(&d);
    assert_eq!(d.finish.report, None);
    let [event] = d.finish.events.as_slice() else {
        panic!("{:?}", d.finish.events)
    };
    assert_eq!(
        (event.warning, event.reason),
        (true, reasons::CLEANUP_SKIPPED)
    );
    let outcome = settle(d, Ok(Applied::default()), &Settings::default());
    assert_eq!(outcome.result.unwrap(), Action::await_change());
    assert_eq!(outcome.finish.events.len(), 1);
}

#[test]
fn deletion_removes_ours_from_every_cr_the_operator_deployment_and_monitoring() {
    let p = policy();
    let mut ours_and_foreign = vec![foreign_virt_api()];
    ours_and_foreign.extend(our_entries(&p));
    let with_ours = kubevirt(Some(ours_and_foreign));
    let without = named(kubevirt(Some(vec![foreign_virt_api()])), "kubevirt-b");
    let under_hco = named(hco_owned(kubevirt(None)), "kubevirt-hco");
    let annotation = plan::hco_annotation(None, OWNER, &our_entries(&p))
        .unwrap()
        .annotation;
    let seen = ObservedForCleanup {
        namespace: NS.into(),
        kubevirts: vec![with_ours.clone(), without, under_hco],
        hyperconvergeds: vec![hyperconverged(annotation)],
    };
    let d = cleanup(&p, OWNER, &seen);
    assert_eq!(d.writes.len(), 3, "{:?}", d.writes);
    assert_eq!(
        d.writes[0],
        Write::KubeVirtRemoval {
            kubevirt: with_ours,
            owner: OWNER.into()
        }
    );
    assert!(
        matches!(&d.writes[1], Write::HyperConverged { kubevirt, entries, .. }
        if kubevirt == "kubevirt-hco" && entries.is_empty())
    );
    assert_eq!(
        d.writes[2],
        Write::VirtOperatorSweep {
            namespace: NS.into(),
            owner: OWNER.into()
        }
    );
    assert_eq!(
        d.monitoring,
        MonitoringStep::RemoveAll {
            namespace: NS.into()
        }
    );
    assert_eq!(
        d.finish.report, None,
        "a deleted policy's status is not written"
    );

    let outcome = settle(
        d.clone(),
        Ok(Applied {
            wrote: vec![true, true, false],
            monitoring: None,
            removed: vec!["PodMonitor/kubevirt-metrics-sidecars".into()],
        }),
        &Settings::default(),
    );
    assert_eq!(outcome.result.unwrap(), Action::await_change());
    let [event] = outcome.finish.events.as_slice() else {
        panic!("{:?}", outcome.finish.events)
    };
    assert_eq!((event.warning, event.reason), (false, reasons::REMOVED));
    assert_eq!(
        event.note,
        "removed this policy's sidecars from KubeVirt CR kubevirt/kubevirt, kubevirt-hco; deleted PodMonitor/kubevirt-metrics-sidecars"
    );
}

#[test]
fn deletion_says_only_what_it_removed() {
    let p = policy();
    let d = cleanup(
        &p,
        OWNER,
        &ObservedForCleanup {
            namespace: NS.into(),
            ..Default::default()
        },
    );
    assert_eq!(
        d.writes.len(),
        1,
        "only the virt-operator sweep: {:?}",
        d.writes
    );
    let note = |wrote: bool, removed: &[&str]| {
        let applied = Applied {
            wrote: vec![wrote],
            monitoring: None,
            removed: removed.iter().map(|s| s.to_string()).collect(),
        };
        settle(d.clone(), Ok(applied), &Settings::default())
            .finish
            .events
            .first()
            .map(|e| e.note.clone())
    };
    assert_eq!(note(false, &[]), None);
    assert_eq!(
        note(true, &[]).as_deref(),
        Some("removed this policy's sidecar from the virt-operator Deployment")
    );
    assert_eq!(
        note(false, &["ServiceMonitor/x"]).as_deref(),
        Some("deleted ServiceMonitor/x")
    );
}

#[test]
fn a_failed_removal_is_an_error_and_shows_nothing() {
    let p = policy();
    let d = cleanup(&p, OWNER, &ObservedForCleanup::default());
    let err = ApplyError::Conflicts {
        target: "kubevirt",
        attempts: 5,
    };
    let outcome = settle(d, Err(ReconcileError::Apply(err)), &Settings::default());
    assert_eq!(outcome.finish, Finish::default());
    assert_eq!(outcome.result.unwrap_err().kind(), "conflicts");
}

#[test]
fn subset_tolerates_server_defaults_but_not_changes() {
    let want = json!({"name": "s", "args": ["--a"], "ports": [{"containerPort": 9443}]});
    let have = json!({"name": "s", "args": ["--a"], "ports": [{"containerPort": 9443, "protocol": "TCP"}], "terminationMessagePath": "/dev/termination-log"});
    assert!(json_subset(&want, &have));
    assert!(!json_subset(&json!({"args": ["--a", "--b"]}), &have));
    assert!(!json_subset(&json!({"name": "t"}), &have));
    assert!(!json_subset(&json!({"image": "x"}), &have));
}
