//! The launcher source against fake virt-launchers: real gRPC servers on unix sockets, under
//! a temporary directory laid out like the kubelet's pods directory, whose replies are
//! encoded from KubeVirt's protocol facts (`testdata/launcher-protocol/`, not our protos)
//! and carry payloads captured from a real guest. No Kubernetes API server: the
//! VMIs come from a `StaticVmis`.

#![allow(clippy::unwrap_used)]

#[path = "support/fake_launcher.rs"]
mod fake_launcher;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fake_launcher::{Calls, FakeLauncher, Reply, Script};
use kubevirt_metrics_collectors::handler::launcher::{
    LauncherSettings, LauncherSource, RpcTimeouts, StaticVmis,
};
use kubevirt_metrics_collectors::handler::{SourceReport, StatsSource};
use kubevirt_metrics_collectors::k8s::objects::VirtualMachineInstance;
use tokio::time::Instant;

const NODE: &str = "node-1";
/// Timers fire late on a busy machine, never early.
const SCHEDULING_SLACK: Duration = Duration::from_millis(500);
// Real pod UIDs are 36 characters; with a short temp dir the socket path stays under the
// 108-byte limit of unix socket addresses, as it does under /pods.
const POD_TESTVM: &str = "8d2f2a4e-7c1b-4f6a-9f43-2b8e1f0c6d11";
const POD_DB: &str = "2b7c9e31-0d4f-4e8a-8c65-9a1e7f3b5d22";
const POD_OTHER: &str = "f4a1c2d3-5e6f-4a7b-8c9d-0e1f2a3b4c33";

fn payload(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/launcher-payloads")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pods_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kv")
        .tempdir_in("/tmp")
        .unwrap()
}

fn vmi(namespace: &str, name: &str, pod_uid: &str, phase: &str) -> VirtualMachineInstance {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": name, "namespace": namespace, "uid": format!("uid-{name}"),
            "labels": {"kubevirt.io/nodeName": NODE, "kubevirt.io/domain": name, "app": "demo"}
        },
        "status": {"phase": phase, "nodeName": NODE, "activePods": {pod_uid: NODE}}
    }))
    .unwrap()
}

fn settings(pods: &Path, vmi_timeout: Duration) -> LauncherSettings {
    LauncherSettings {
        node_name: NODE.to_owned(),
        pods_dir: pods.to_path_buf(),
        max_concurrency: 2,
        vmi_timeout,
        rpc: RpcTimeouts::default(),
    }
}

fn source(
    pods: &Path,
    vmis: Vec<VirtualMachineInstance>,
    vmi_timeout: Duration,
) -> (LauncherSource, Arc<StaticVmis>) {
    let lister = Arc::new(StaticVmis::new(vmis));
    let source = LauncherSource::with_lister(lister.clone(), settings(pods, vmi_timeout));
    (source, lister)
}

async fn pass(source: &LauncherSource, within: Duration) -> SourceReport {
    StatsSource::collect(source, Instant::now() + within).await
}

fn testvm_launcher(pods: &Path) -> FakeLauncher {
    FakeLauncher::start(
        pods,
        POD_TESTVM,
        // No guest agent in that guest: Go encodes the empty list as null.
        Script::serving(&payload("captured-domainstats-testvm.json"), "null", 0),
    )
}

fn db_launcher(pods: &Path) -> FakeLauncher {
    FakeLauncher::start(
        pods,
        POD_DB,
        Script::serving(
            &payload("captured-domainstats-db.json"),
            &payload("captured-filesystems-db.json"),
            3,
        ),
    )
}

fn kinds(report: &SourceReport) -> Vec<(&str, &str, &str)> {
    let mut kinds: Vec<_> = report
        .problems
        .iter()
        .map(|p| (p.source, p.kind, p.target.as_str()))
        .collect();
    kinds.sort();
    kinds
}

fn names(report: &SourceReport) -> Vec<String> {
    report
        .vmis
        .iter()
        .map(|s| format!("{}/{}", s.vmi.namespace, s.vmi.name))
        .collect()
}

#[tokio::test]
async fn captured_payloads_decode_into_the_model_with_identity_labels() {
    let pods = pods_dir();
    let testvm = testvm_launcher(pods.path());
    let db = db_launcher(pods.path());
    let (source, _) = source(
        pods.path(),
        vec![
            vmi("default", "testvm", POD_TESTVM, "Running"),
            vmi("prod", "db-1", POD_DB, "Running"),
        ],
        Duration::from_secs(5),
    );

    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(kinds(&report), [], "{:#?}", report.problems);
    assert_eq!(report.targets_seen, 2);
    assert_eq!(names(&report), ["default/testvm", "prod/db-1"]);

    let first = &report.vmis[0];
    assert_eq!(first.vmi.node, NODE);
    assert_eq!(
        first.vmi.labels.get("app").map(String::as_str),
        Some("demo")
    );
    assert_eq!(first.domain.name.as_deref(), Some("default_testvm"));
    let cpu = first.domain.cpu.as_ref().unwrap();
    assert_eq!(cpu.time, Some(3_317_204_000));
    let memory = first.domain.memory.as_ref().unwrap();
    assert_eq!(
        (memory.rss, memory.cached, memory.total),
        (Some(188_572), Some(2488), Some(98_304))
    );
    assert_eq!(first.domain.vcpus.len(), 1);
    assert_eq!(first.domain.nets[0].alias.as_deref(), Some("default"));
    assert_eq!(first.domain.blocks[0].alias.as_deref(), Some("rootdisk"));
    assert_eq!(
        first.domain.blocks[0].errors, None,
        "ErrorsSet=false must stay unset"
    );
    assert_eq!(
        first.domain.cpu_map.as_deref(),
        Some(&[vec![true, true]][..])
    );
    assert!(first.filesystems.is_empty());
    assert_eq!(first.dirty_rate_mbs, Some(0));

    let second = &report.vmis[1];
    assert_eq!(second.domain.name.as_deref(), Some("prod_db-1"));
    assert_eq!(second.domain.blocks.len(), 2);
    assert_eq!(second.dirty_rate_mbs, Some(3));
    let mounts: Vec<_> = second
        .filesystems
        .iter()
        .map(|f| f.mount_point.as_str())
        .collect();
    assert_eq!(mounts, ["/", "/boot"]);
    assert_eq!(second.filesystems[0].total_bytes, 31_131_365_376);
    assert_eq!(
        second.domain.load.as_ref().and_then(|l| l.load1m),
        Some(0.42)
    );

    // A second pass reuses the negotiated connections: no new Info call.
    let again = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(names(&again), ["default/testvm", "prod/db-1"]);
    assert_eq!(source.open_connections(), 2);
    for launcher in [&testvm, &db] {
        assert_eq!(Calls::get(&launcher.calls.info), 1);
        assert_eq!(Calls::get(&launcher.calls.domain_stats), 2);
        assert_eq!(Calls::get(&launcher.calls.filesystems), 2);
        assert_eq!(Calls::get(&launcher.calls.dirty_rate), 2);
    }
}

#[tokio::test]
async fn dirty_rate_is_asked_only_of_running_vmis_that_are_not_migrating() {
    let pods = pods_dir();
    let testvm = testvm_launcher(pods.path());
    let db = db_launcher(pods.path());
    let mut migrating = vmi("prod", "db-1", POD_DB, "Running");
    migrating.status.migration_state = serde_json::from_value(serde_json::json!({
        "startTimestamp": "2026-11-28T08:00:00Z", "completed": false, "failed": false
    }))
    .unwrap();
    let (source, _) = source(
        pods.path(),
        vec![vmi("default", "testvm", POD_TESTVM, "Paused"), migrating],
        Duration::from_secs(5),
    );
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(kinds(&report), []);
    assert_eq!(names(&report), ["default/testvm", "prod/db-1"]);
    assert!(report.vmis.iter().all(|s| s.dirty_rate_mbs.is_none()));
    assert_eq!(Calls::get(&testvm.calls.dirty_rate), 0);
    assert_eq!(Calls::get(&db.calls.dirty_rate), 0);
}

#[tokio::test]
async fn a_launcher_that_never_answers_costs_only_its_own_vmi() {
    let pods = pods_dir();
    let _testvm = testvm_launcher(pods.path());
    let _db = db_launcher(pods.path());
    let _hung = FakeLauncher::start(pods.path(), POD_OTHER, Script::hanging());
    let (source, _) = source(
        pods.path(),
        vec![
            vmi("default", "testvm", POD_TESTVM, "Running"),
            vmi("prod", "db-1", POD_DB, "Running"),
            vmi("stuck", "vm", POD_OTHER, "Running"),
        ],
        Duration::from_millis(700),
    );

    let started = Instant::now();
    let deadline = Duration::from_secs(3);
    let report = pass(&source, deadline).await;
    let took = started.elapsed();
    // The point is not waiting for the hung launcher at all; allow for a loaded machine.
    assert!(
        took <= deadline + SCHEDULING_SLACK,
        "the pass took {took:?}, past its {deadline:?} deadline"
    );
    assert_eq!(names(&report), ["default/testvm", "prod/db-1"]);
    // All three calls of the hung VMI time out; each is counted.
    let problems = kinds(&report);
    assert!(!problems.is_empty());
    assert!(
        problems
            .iter()
            .all(|p| *p == ("launcher", "timeout", "stuck/vm")),
        "{problems:?}"
    );
    // The hung connection is not kept.
    assert_eq!(source.open_connections(), 2);
}

#[tokio::test]
async fn the_pass_deadline_wins_over_a_longer_vmi_timeout() {
    let pods = pods_dir();
    let _testvm = testvm_launcher(pods.path());
    let _hung = FakeLauncher::start(pods.path(), POD_OTHER, Script::hanging());
    let (source, _) = source(
        pods.path(),
        vec![
            vmi("stuck", "vm", POD_OTHER, "Running"),
            vmi("default", "testvm", POD_TESTVM, "Running"),
        ],
        Duration::from_secs(60),
    );
    let started = Instant::now();
    let deadline = Duration::from_millis(1500);
    let report = pass(&source, deadline).await;
    let took = started.elapsed();
    // The point is not waiting for the hung launcher at all; allow for a loaded machine.
    assert!(
        took <= deadline + SCHEDULING_SLACK,
        "the pass took {took:?}, past its {deadline:?} deadline"
    );
    assert_eq!(names(&report), ["default/testvm"]);
    assert!(kinds(&report).contains(&("launcher", "timeout", "stuck/vm")));
}

/// One pass over VMI prod/db-1, whose launcher follows `script`, with the quick calls'
/// timeout at 300 ms and the dirty-rate call's at 2 s; and how long the pass took.
async fn pass_with_split_timeouts(script: Script) -> (SourceReport, Duration) {
    let pods = pods_dir();
    let _db = FakeLauncher::start(pods.path(), POD_DB, script);
    let settings = LauncherSettings {
        rpc: RpcTimeouts {
            connect: Duration::from_secs(2),
            short: Duration::from_millis(300),
            long: Duration::from_secs(2),
        },
        ..settings(pods.path(), Duration::from_secs(10))
    };
    let vmis = vec![vmi("prod", "db-1", POD_DB, "Running")];
    let source = LauncherSource::with_lister(Arc::new(StaticVmis::new(vmis)), settings);
    let started = Instant::now();
    let report = pass(&source, Duration::from_secs(10)).await;
    (report, started.elapsed())
}

/// The db launcher's captured answers.
fn db_script() -> Script {
    Script::serving(
        &payload("captured-domainstats-db.json"),
        &payload("captured-filesystems-db.json"),
        3,
    )
}

/// The report's one problem: a timeout of prod/db-1 whose message says `what`.
fn assert_one_timeout(report: &SourceReport, what: &str) {
    assert_eq!(kinds(report), [("launcher", "timeout", "prod/db-1")]);
    let message = &report.problems[0].message;
    assert!(message.contains(what), "{message}");
}

#[tokio::test]
async fn the_dirty_rate_call_has_its_longer_timeout_after_the_quick_calls_are_done() {
    // The real call samples for a second; here it answers after twice the quick timeout.
    let script = Script {
        dirty_rate_mbs: Reply::Late(Duration::from_millis(600), 7),
        ..db_script()
    };
    let (report, _) = pass_with_split_timeouts(script).await;
    assert_eq!(kinds(&report), []);
    assert_eq!(report.vmis[0].dirty_rate_mbs, Some(7));
    assert!(!report.vmis[0].filesystems.is_empty());
}

#[tokio::test]
async fn a_hung_quick_call_times_out_on_its_own_timeout_and_the_dirty_rate_still_lands() {
    let script = Script {
        domain_stats: Reply::Hang,
        dirty_rate_mbs: Reply::Late(Duration::from_millis(600), 7),
        ..db_script()
    };
    let (report, took) = pass_with_split_timeouts(script).await;
    assert!(
        took < Duration::from_secs(2),
        "the pass waited {took:?} for the late reply's timeout"
    );
    assert_one_timeout(&report, "GetDomainStats timed out after 300ms");
    // Virt-handler's dirty-rate collector is its own: it survives a failed GetDomainStats.
    assert_eq!(report.vmis[0].dirty_rate_mbs, Some(7));
}

#[tokio::test]
async fn a_dirty_rate_call_past_its_longer_timeout_times_out_alone() {
    let script = Script {
        dirty_rate_mbs: Reply::Hang,
        ..db_script()
    };
    let (report, took) = pass_with_split_timeouts(script).await;
    assert!(
        took >= Duration::from_secs(2),
        "the dirty rate had only {took:?}"
    );
    assert!(
        took <= Duration::from_secs(2) + SCHEDULING_SLACK,
        "the pass took {took:?}"
    );
    assert_one_timeout(&report, "GetDomainDirtyRateStats timed out after 2s");
    assert_eq!(report.vmis[0].dirty_rate_mbs, None);
    assert!(!report.vmis[0].filesystems.is_empty());
}

#[tokio::test]
async fn malformed_json_is_a_decode_problem() {
    let pods = pods_dir();
    let _bad = FakeLauncher::start(
        pods.path(),
        POD_OTHER,
        Script::serving(
            r#"{"Name":"bad_vm","Cpu":{"TimeSet":true,"Time":"#,
            r#"[{"diskName":"#,
            1,
        ),
    );
    let _testvm = testvm_launcher(pods.path());
    let (source, _) = source(
        pods.path(),
        vec![
            vmi("bad", "vm", POD_OTHER, "Running"),
            vmi("default", "testvm", POD_TESTVM, "Running"),
        ],
        Duration::from_secs(5),
    );
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(
        kinds(&report),
        [
            ("launcher", "decode", "bad/vm"),
            ("launcher", "decode", "bad/vm")
        ]
    );
    // The dirty rate of the bad VMI still arrived, as virt-handler's separate collector
    // would report it; nothing else of it.
    assert_eq!(names(&report), ["bad/vm", "default/testvm"]);
    let bad = &report.vmis[0];
    assert_eq!(bad.dirty_rate_mbs, Some(1));
    assert_eq!(bad.domain, Default::default());
    assert!(bad.filesystems.is_empty());
    // A decode error says nothing bad about the connection.
    assert_eq!(source.open_connections(), 2);
}

#[tokio::test]
async fn in_band_failure_and_grpc_errors_are_problems() {
    let pods = pods_dir();
    let _failing = FakeLauncher::start(
        pods.path(),
        POD_OTHER,
        Script {
            domain_stats: Reply::InBandFailure(
                "virError(Code=42, Message='Domain not found')".to_owned(),
            ),
            filesystems: Reply::Value("null".to_owned()),
            dirty_rate_mbs: Reply::Status(tonic::Code::Internal, "dirty rate failed".to_owned()),
            ..Script::serving("", "", 0)
        },
    );
    let db = db_launcher(pods.path());
    let (source, _) = source(
        pods.path(),
        vec![
            vmi("sad", "vm", POD_OTHER, "Running"),
            vmi("prod", "db-1", POD_DB, "Running"),
        ],
        Duration::from_secs(5),
    );
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(
        kinds(&report),
        [
            ("launcher", "launcher", "sad/vm"),
            ("launcher", "rpc", "sad/vm")
        ]
    );
    let launcher_failure = report
        .problems
        .iter()
        .find(|p| p.kind == "launcher")
        .unwrap();
    assert!(
        launcher_failure.message.contains("Domain not found"),
        "{launcher_failure:?}"
    );
    assert_eq!(names(&report), ["prod/db-1"]);
    assert_eq!(Calls::get(&db.calls.domain_stats), 1);
}

#[tokio::test]
async fn a_launcher_without_a_domain_is_counted_only_for_running_vmis() {
    let pods = pods_dir();
    let empty = |uid| FakeLauncher::start(pods.path(), uid, Script::serving("", "null", 0));
    let _a = empty(POD_TESTVM);
    let _b = FakeLauncher::start(pods.path(), POD_DB, Script::serving("null", "null", 0));
    let (source, _) = source(
        pods.path(),
        vec![
            vmi("default", "testvm", POD_TESTVM, "Scheduled"),
            vmi("prod", "db-1", POD_DB, "Running"),
        ],
        Duration::from_secs(5),
    );
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(kinds(&report), [("launcher", "no_domain", "prod/db-1")]);
    // db-1 is running and not migrating: its dirty rate still counts.
    assert_eq!(names(&report), ["prod/db-1"]);
}

#[tokio::test]
async fn a_vmi_is_identified_once_per_version_of_its_object() {
    let pods = pods_dir();
    let _testvm = testvm_launcher(pods.path());
    let (source, lister) = source(
        pods.path(),
        vec![vmi("default", "testvm", POD_TESTVM, "Running")],
        Duration::from_secs(5),
    );
    let first = pass(&source, Duration::from_secs(10)).await;
    let again = pass(&source, Duration::from_secs(10)).await;
    assert!(
        Arc::ptr_eq(&first.vmis[0].vmi, &again.vmis[0].vmi),
        "the same VMI object: the same identity"
    );

    // The watch delivers a new version of the VMI: a new label, a new identity.
    let mut relabelled = vmi("default", "testvm", POD_TESTVM, "Running");
    relabelled.metadata.labels = [("app".to_owned(), "renamed".to_owned())]
        .into_iter()
        .collect();
    lister.set(vec![relabelled]);
    let changed = pass(&source, Duration::from_secs(10)).await;
    assert!(!Arc::ptr_eq(&first.vmis[0].vmi, &changed.vmis[0].vmi));
    assert_eq!(
        changed.vmis[0].vmi.labels.get("app").map(String::as_str),
        Some("renamed")
    );
}

#[tokio::test]
async fn a_vmi_whose_socket_disappears_is_a_problem_and_its_connection_is_dropped() {
    let pods = pods_dir();
    let testvm = testvm_launcher(pods.path());
    let _db = db_launcher(pods.path());
    let (source, lister) = source(
        pods.path(),
        vec![
            vmi("default", "testvm", POD_TESTVM, "Running"),
            vmi("prod", "db-1", POD_DB, "Running"),
        ],
        Duration::from_secs(5),
    );
    assert_eq!(
        names(&pass(&source, Duration::from_secs(10)).await).len(),
        2
    );
    assert_eq!(source.open_connections(), 2);

    // The launcher pod goes away while the VMI still claims to run.
    testvm.vanish();
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(kinds(&report), [("launcher", "socket", "default/testvm")]);
    assert_eq!(names(&report), ["prod/db-1"]);
    assert_eq!(source.open_connections(), 1);

    // And then the VMI is deleted: it is simply gone, with no problem.
    lister.set(vec![vmi("prod", "db-1", POD_DB, "Running")]);
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(kinds(&report), []);
    assert_eq!(names(&report), ["prod/db-1"]);
}

#[tokio::test]
async fn a_dead_launcher_behind_a_kept_connection_is_redialled_next_pass() {
    let pods = pods_dir();
    let testvm = testvm_launcher(pods.path());
    let (source, _) = source(
        pods.path(),
        vec![vmi("default", "testvm", POD_TESTVM, "Running")],
        Duration::from_secs(2),
    );
    assert_eq!(
        names(&pass(&source, Duration::from_secs(10)).await).len(),
        1
    );

    // The process dies, its socket file stays.
    testvm.die();
    let report = pass(&source, Duration::from_secs(10)).await;
    assert!(report.vmis.is_empty());
    let problems = kinds(&report);
    assert!(
        problems
            .iter()
            .all(|(_, kind, target)| ["rpc", "timeout"].contains(kind)
                && *target == "default/testvm"),
        "{problems:?}"
    );
    assert_eq!(source.open_connections(), 0);

    // Nothing listens any more: dialling fails.
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(kinds(&report), [("launcher", "connect", "default/testvm")]);
}

#[tokio::test]
async fn the_unresponsive_marker_skips_the_launcher() {
    let pods = pods_dir();
    let testvm = testvm_launcher(pods.path());
    testvm.mark_unresponsive();
    let (source, _) = source(
        pods.path(),
        vec![vmi("default", "testvm", POD_TESTVM, "Running")],
        Duration::from_secs(5),
    );
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(
        kinds(&report),
        [("launcher", "unresponsive", "default/testvm")]
    );
    assert!(report.vmis.is_empty());
    assert_eq!(
        Calls::get(&testvm.calls.info),
        0,
        "an unresponsive launcher is not dialled"
    );
}

#[tokio::test]
async fn the_unresponsive_marker_counts_again_once_the_kept_connection_fails() {
    let pods = pods_dir();
    let testvm = testvm_launcher(pods.path());
    let (source, _) = source(
        pods.path(),
        vec![vmi("default", "testvm", POD_TESTVM, "Running")],
        Duration::from_secs(5),
    );
    assert_eq!(
        names(&pass(&source, Duration::from_secs(10)).await),
        ["default/testvm"]
    );

    // Marked while our connection answers: we keep asking the launcher that answers.
    testvm.mark_unresponsive();
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(kinds(&report), []);
    assert_eq!(names(&report), ["default/testvm"]);

    // The launcher stops answering: the connection is dropped, then the marker counts.
    testvm.die();
    let report = pass(&source, Duration::from_secs(10)).await;
    assert!(report.vmis.is_empty());
    assert_eq!(source.open_connections(), 0);
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(
        kinds(&report),
        [("launcher", "unresponsive", "default/testvm")]
    );
    assert_eq!(Calls::get(&testvm.calls.info), 1, "not dialled again");
}

#[tokio::test]
async fn a_launcher_without_cmd_v1_is_a_version_problem() {
    let pods = pods_dir();
    let mut script = Script::serving(&payload("captured-domainstats-testvm.json"), "null", 0);
    script.cmd_versions = vec![2];
    let future = FakeLauncher::start(pods.path(), POD_TESTVM, script);
    let (source, _) = source(
        pods.path(),
        vec![vmi("default", "testvm", POD_TESTVM, "Running")],
        Duration::from_secs(5),
    );
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(kinds(&report), [("launcher", "version", "default/testvm")]);
    assert_eq!(
        report.problems[0].message,
        "launcher offers cmd versions [2]; we support [1]"
    );
    assert_eq!(Calls::get(&future.calls.info), 1);
    assert_eq!(Calls::get(&future.calls.domain_stats), 0);
    assert_eq!(source.open_connections(), 0);
}

#[tokio::test]
async fn negotiation_takes_the_highest_version_both_sides_speak() {
    let pods = pods_dir();
    let mut script = Script::serving(&payload("captured-domainstats-testvm.json"), "null", 0);
    // A future launcher that still serves v1 next to newer versions.
    script.cmd_versions = vec![3, 1, 2];
    let _launcher = FakeLauncher::start(pods.path(), POD_TESTVM, script);
    let (source, _) = source(
        pods.path(),
        vec![vmi("default", "testvm", POD_TESTVM, "Running")],
        Duration::from_secs(5),
    );
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(kinds(&report), []);
    assert_eq!(names(&report), ["default/testvm"]);
}

#[tokio::test]
async fn a_reply_of_another_type_is_a_protocol_problem_that_says_where() {
    let pods = pods_dir();
    let mut script = Script::serving(&payload("captured-domainstats-testvm.json"), "null", 0);
    // Field 1 of the Info reply as a 32-bit fixed value instead of KubeVirt's varints.
    script.protocol = script.protocol.retyped(
        "kubevirt.cmd.info.CmdInfoResponse",
        "supportedCmdVersions",
        "fixed32",
        "singular",
    );
    let _odd = FakeLauncher::start(pods.path(), POD_TESTVM, script);
    let db = db_launcher(pods.path());
    let (source, _) = source(
        pods.path(),
        vec![
            vmi("default", "testvm", POD_TESTVM, "Running"),
            vmi("prod", "db-1", POD_DB, "Running"),
        ],
        Duration::from_secs(5),
    );
    let report = pass(&source, Duration::from_secs(10)).await;
    assert_eq!(kinds(&report), [("launcher", "protocol", "default/testvm")]);
    let message = &report.problems[0].message;
    assert!(
        message.starts_with("Info reply does not decode as KubeVirt's message: ")
            && message.contains("CmdInfoResponse.supported_cmd_versions")
            && message.contains("wire type"),
        "{message}"
    );
    assert_eq!(names(&report), ["prod/db-1"]);
    assert_eq!(Calls::get(&db.calls.domain_stats), 1);
}

#[tokio::test]
async fn a_kubevirt_v1_5_launcher_has_no_dirty_rate_and_that_is_no_problem() {
    let pods = pods_dir();
    let old = FakeLauncher::start(
        pods.path(),
        POD_DB,
        Script::serving(
            &payload("captured-domainstats-db.json"),
            &payload("captured-filesystems-db.json"),
            3,
        )
        .spoken_as("v1.5"),
    );
    let (source, _) = source(
        pods.path(),
        vec![vmi("prod", "db-1", POD_DB, "Running")],
        Duration::from_secs(5),
    );
    for _ in 0..2 {
        let report = pass(&source, Duration::from_secs(10)).await;
        assert_eq!(kinds(&report), []);
        assert_eq!(names(&report), ["prod/db-1"]);
        assert_eq!(report.vmis[0].dirty_rate_mbs, None);
        assert!(!report.vmis[0].filesystems.is_empty());
    }
    // The fake never routed the call: v1.5 has no such method.
    assert_eq!(Calls::get(&old.calls.dirty_rate), 0);
    assert_eq!(Calls::get(&old.calls.info), 1, "the connection is kept");
}

#[tokio::test]
async fn sockets_are_found_like_virt_handler_does() {
    let pods = pods_dir();
    let _testvm = testvm_launcher(pods.path());
    let _db = db_launcher(pods.path());
    let two_pods_here: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "moving", "namespace": "prod"},
        "status": {"phase": "Running", "nodeName": NODE,
                   "activePods": {POD_TESTVM: NODE, POD_DB: NODE}}
    }))
    .unwrap();
    let elsewhere: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "away", "namespace": "prod"},
        "status": {"phase": "Running", "nodeName": "node-2", "activePods": {POD_DB: "node-2"}}
    }))
    .unwrap();
    let pending = vmi("prod", "starting", POD_OTHER, "Scheduling");
    let (source, _) = source(
        pods.path(),
        vec![two_pods_here, elsewhere, pending],
        Duration::from_secs(5),
    );
    let report = pass(&source, Duration::from_secs(10)).await;
    // Two live sockets (a same-node migration): wait. No pod on this node: nothing to ask.
    // Not running yet and no socket: silently skipped.
    assert_eq!(
        kinds(&report),
        [
            ("launcher", "socket", "prod/away"),
            ("launcher", "socket", "prod/moving")
        ]
    );
    assert!(report.vmis.is_empty());
    assert_eq!(report.targets_seen, 3);
}

#[tokio::test]
async fn concurrency_is_bounded() {
    // Four hung launchers, concurrency 2, 400 ms per VMI: two rounds of timeouts; with
    // unbounded concurrency this would take one round.
    let pods = pods_dir();
    let uids: Vec<String> = (0..4)
        .map(|i| format!("0000000{i}-0000-4000-8000-000000000000"))
        .collect();
    let _launchers: Vec<_> = uids
        .iter()
        .map(|uid| FakeLauncher::start(pods.path(), uid, Script::hanging()))
        .collect();
    let vmis = uids
        .iter()
        .enumerate()
        .map(|(i, uid)| vmi("ns", &format!("vm{i}"), uid, "Running"))
        .collect();
    let (source, _) = source(pods.path(), vmis, Duration::from_millis(400));
    let started = Instant::now();
    let report = pass(&source, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "took {took:?}: more than 2 launchers at once"
    );
    let mut timed_out: Vec<_> = report.problems.iter().map(|p| p.target.clone()).collect();
    timed_out.dedup();
    assert_eq!(timed_out.len(), 4, "{:?}", report.problems);
}

/// The VMI watch against a scripted API server (no real one is needed): it lists and
/// watches only this node's VMIs, reads real list JSON, and reports itself synced.
#[tokio::test]
async fn the_vmi_watch_selects_this_nodes_vmis() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
    use kubevirt_metrics_collectors::handler::launcher::{VmiLister, WatchedVmis};

    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorded = Arc::clone(&seen);
    let api = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let uri = request.uri().to_string();
        recorded.lock().unwrap().push(uri.clone());
        async move {
            let body: BoxBody<Bytes, std::convert::Infallible> = if uri.contains("watch=true") {
                // A watch that stays open with nothing new.
                StreamBody::new(futures::stream::pending::<
                    Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
                >())
                .boxed()
            } else {
                let list = serde_json::json!({
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachineInstanceList",
                    "metadata": {"resourceVersion": "1234"},
                    "items": [
                        vmi_json("default", "testvm", POD_TESTVM),
                        vmi_json("prod", "db-1", POD_DB),
                    ]
                });
                Full::new(Bytes::from(list.to_string())).boxed()
            };
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(body)
                    .unwrap(),
            )
        }
    });
    let client = kube::Client::new(api, "default");
    let watched = WatchedVmis::start(client, NODE);

    let started = Instant::now();
    let snapshot = loop {
        let snapshot = watched.snapshot();
        if snapshot.problems.is_empty() || started.elapsed() > Duration::from_secs(5) {
            break snapshot;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(snapshot.problems, [], "the watch never synced");
    let mut keys: Vec<_> = snapshot.vmis.iter().map(|v| v.key()).collect();
    keys.sort();
    assert_eq!(keys, ["default/testvm", "prod/db-1"]);
    assert_eq!(snapshot.vmis[0].status.active_pods.len(), 1);

    let uris = seen.lock().unwrap().clone();
    assert!(!uris.is_empty());
    for uri in &uris {
        assert!(
            uri.starts_with("/apis/kubevirt.io/v1/virtualmachineinstances?")
                && uri.contains("labelSelector=kubevirt.io%2FnodeName%3Dnode-1"),
            "{uri}"
        );
    }
}

/// A VMI as the API server returns it.
fn vmi_json(namespace: &str, name: &str, pod_uid: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                     "resourceVersion": "1200",
                     "labels": {"kubevirt.io/nodeName": NODE}},
        "spec": {"domain": {"devices": {}, "resources": {}}},
        "status": {"phase": "Running", "nodeName": NODE, "activePods": {pod_uid: NODE}}
    })
}

#[tokio::test]
async fn starting_without_a_node_name_fails_clearly() {
    use clap::Parser;
    use kubevirt_metrics_collectors::handler::launcher::LauncherError;
    use kubevirt_metrics_flags::HandlerArgs;

    let mut args = HandlerArgs::parse_from(["virt-handler-metrics"]);
    args.node_name.clear();
    let err = LauncherSource::start(&args).await.err().unwrap();
    assert!(matches!(err, LauncherError::NoNodeName), "{err}");
    assert!(err.to_string().contains("NODE_NAME"));
}
