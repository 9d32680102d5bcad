//! `kubevirt-metrics-operator render` as a user runs it: what goes to stdout, what to stderr,
//! and the exit status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

const POLICY: &str = r#"apiVersion: metrics.kubevirt.io/v1alpha1
kind: MetricsSidecarPolicy
metadata: {name: metrics, namespace: kubevirt}
spec:
  defaults: {image: "quay.io/kubevirt/metrics-sidecars:v0.1.0"}
  components: {virtHandler: {}}
"#;

const KUBEVIRT: &str = r#"apiVersion: kubevirt.io/v1
kind: KubeVirt
metadata: {name: kubevirt, namespace: kubevirt}
spec:
  customizeComponents:
    patches:
    - {resourceName: virt-api, resourceType: Deployment, type: strategic, patch: '{"spec":{"replicas":3}}'}
"#;

fn render(dir: &Path, policy: &str, kubevirt: Option<&str>) -> Output {
    let policy_file = dir.join("policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubevirt-metrics-operator"));
    command.arg("render").arg("-f").arg(&policy_file);
    if let Some(kv) = kubevirt {
        let kv_file = dir.join("kubevirt.yaml");
        std::fs::write(&kv_file, kv).unwrap();
        command.arg("--kubevirt").arg(&kv_file);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn without_kubevirt_the_list_is_printed_with_a_warning_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let out = render(dir.path(), POLICY, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("kubevirt-metrics-operator render: warning: no --kubevirt given:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("replaces the KubeVirt CR's whole patches list"),
        "{stderr}"
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("customizeComponents"), "{stdout}");
    assert!(!stdout.contains("warning"), "stdout stays commit-ready");

    let out = render(dir.path(), POLICY, Some(KUBEVIRT));
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "", "with --kubevirt: no warning");
    assert!(
        text(&out.stdout).contains("replicas"),
        "the foreign entry is kept"
    );
}

#[test]
fn a_typo_fails_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = render(
        dir.path(),
        &POLICY.replace("virtHandler", "virtHandlr"),
        Some(KUBEVIRT),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("spec.components.virtHandlr"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_paused_policy_prints_nothing_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let paused = POLICY.replace("spec:\n", "spec:\n  paused: true\n");
    let out = render(dir.path(), &paused, Some(KUBEVIRT));
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("policy kubevirt/metrics is paused (spec.paused: true)"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_kubevirt_cr_the_policy_cannot_match_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = render(
        dir.path(),
        POLICY,
        Some(&KUBEVIRT.replace("namespace: kubevirt", "namespace: elsewhere")),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr)
            .contains("the policy is in namespace kubevirt and the KubeVirt CR in elsewhere"),
        "{}",
        text(&out.stderr)
    );
}
