#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// v1.6.6's own PrometheusRule, as that release builds it: an independent check of what
/// v1.6.6 already has.
const V1_6_6_RULES: &str = include_str!("../../data/kubevirt-releases/v1.6.6/prometheusrule.yaml");

fn decided(release: &str, handler_sidecar: bool) -> Backports {
    decide(&BackportInputs {
        data_release: release,
        handler_sidecar,
        namespace: "kubevirt",
    })
    .unwrap()
}

fn names_in_rule_file(yaml: &str) -> BTreeSet<String> {
    let object: Value = serde_yaml::from_str(yaml).unwrap();
    object["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| {
            r.get("record")
                .or_else(|| r.get("alert"))
                .and_then(Value::as_str)
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// `rules.tsv` rows (kind, name) whose first_release is `tag` and that v1.9.0 still has.
fn first_in(tag: &str) -> Vec<(String, String)> {
    RULES_TSV
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|c| c[2] == tag && c[3] == "v1.9.0")
        .map(|c| (c[0].to_owned(), c[1].to_owned()))
        .collect()
}

#[test]
fn versions_map_to_the_data_of_their_minor() {
    let known = |v: &str| match match_release(v) {
        ReleaseMatch::Known { data_release } => Some(data_release),
        ReleaseMatch::Unknown => None,
    };
    assert_eq!(known("v1.6.6"), Some("v1.6.6"));
    assert_eq!(known("v1.6.2"), Some("v1.6.6"));
    assert_eq!(known("1.8.4"), Some("v1.8.4"));
    assert_eq!(known("v1.4.0-rc.1"), Some("v1.4.1"));
    assert_eq!(known("v1.7.4-12-gabcdef0"), Some("v1.7.4"));
    for unknown in ["v1.3.2", "v1.10.0", "v2.0.0", "", "latest", "v1", "vX.Y.Z"] {
        assert_eq!(match_release(unknown), ReleaseMatch::Unknown, "{unknown}");
    }
}

#[test]
fn v1_6_6_gets_rules_first_in_v1_7_4_and_v1_8_4_whose_inputs_it_serves() {
    let b = decided("v1.6.6", true);
    let records = b.names(RuleKind::Record);
    let alerts = b.names(RuleKind::Alert);
    for name in [
        "cluster:kubevirt_virt_api_up:sum",
        "cluster:kubevirt_virt_handler_pods_running:count",
        "vmi:kubevirt_vmi_vcpu:count",
        "vmi:kubevirt_vmi_guest_queue_length:sum",
        "vmi:kubevirt_vmi_memory_available_bytes:sum",
        "cluster:kubevirt_virt_controller_pods_running:count",
    ] {
        assert!(records.contains(name), "{name} missing from {records:?}");
    }
    for name in [
        "VirtHandlerDown",
        "KubeVirtVMGuestMemoryPressure",
        "GuestFilesystemAlmostOutOfSpace",
        "VirtualMachineStuckOnNode",
    ] {
        assert!(alerts.contains(name), "{name} missing from {alerts:?}");
    }
    // Both GuestFilesystemAlmostOutOfSpace rules (85 % and 95 %).
    assert_eq!(
        b.rules
            .iter()
            .filter(|r| r.name == "GuestFilesystemAlmostOutOfSpace")
            .count(),
        2
    );
    // Every rule first in v1.7.4 or v1.8.4 is installed, skipped with the missing series,
    // or a name v1.6.6 already has (as a rule, or as a metric).
    let own = names_in_rule_file(V1_6_6_RULES);
    for (kind, name) in first_in("v1.7.4").into_iter().chain(first_in("v1.8.4")) {
        let installed = b.rules.iter().any(|r| r.name == name);
        let skipped = b
            .skipped
            .iter()
            .any(|s| s.name == name && !s.missing.is_empty());
        let already = own.contains(&name) || name == "kubevirt_vmi_migration_data_total_bytes";
        assert!(
            installed || skipped || already,
            "{kind} {name} neither installed nor skipped"
        );
    }
}

#[test]
fn v1_6_6_gets_nothing_it_already_has() {
    let own = names_in_rule_file(V1_6_6_RULES);
    assert!(own.contains("kubevirt_vmi_guest_vcpu_queue"));
    assert!(own.contains("GuestVCPUQueueHighWarning"));
    let b = decided("v1.6.6", true);
    for rule in &b.rules {
        assert!(
            !own.contains(&rule.name),
            "{} is in v1.6.6's own PrometheusRule",
            rule.name
        );
    }
    // A name that is a metric in v1.6.6 is never recorded over it.
    assert!(
        b.rules
            .iter()
            .all(|r| r.name != "kubevirt_vmi_migration_data_total_bytes")
    );
}

#[test]
fn rules_without_served_inputs_are_skipped_with_the_missing_series() {
    let b = decided("v1.6.6", true);
    let skipped = |name: &str| b.skipped.iter().find(|s| s.name == name).cloned();
    let panic = skipped("VMNonRecoverableOSPanic").expect("VMNonRecoverableOSPanic skipped");
    assert_eq!(panic.missing, vec!["kubevirt_vmi_guest_os_panic_total"]);
    // Chained: NoReadyVirtAPI reads a backport that itself lacks its input.
    let ready = skipped("cluster:kubevirt_virt_api_ready:sum").unwrap();
    assert_eq!(ready.missing, vec!["kubevirt_virt_api_ready_status"]);
    assert!(skipped("NoReadyVirtAPI").is_some());
    assert!(b.rules.iter().all(|r| r.name != "NoReadyVirtAPI"));
}

#[test]
fn the_handler_sidecar_makes_its_families_available() {
    // kubevirt_vmi_guest_load_1m is first served by virt-handler in v1.6; the sidecar
    // exports it for older releases.
    let name = "vmi:kubevirt_vmi_guest_queue_length:sum";
    let without = decided("v1.5.3", false);
    assert!(without.rules.iter().all(|r| r.name != name));
    let skipped = without.skipped.iter().find(|s| s.name == name).unwrap();
    assert_eq!(skipped.missing, vec!["kubevirt_vmi_guest_load_1m"]);
    let with = decided("v1.5.3", true);
    assert!(with.rules.iter().any(|r| r.name == name));
}

#[test]
fn the_newest_releases_get_nothing() {
    for release in ["v1.8.4", "v1.9.0"] {
        assert!(decided(release, true).rules.is_empty(), "{release}");
    }
}

#[test]
fn expressions_are_v1_9_0_s_own() {
    let data = data().unwrap();
    let b = decided("v1.4.1", true);
    assert!(!b.rules.is_empty());
    for rule in &b.rules {
        assert!(
            data.source.iter().any(|s| s.body == rule.body),
            "{} differs from v1.9.0",
            rule.name
        );
    }
}

#[test]
fn namespace_matchers_follow_the_policy_namespace() {
    let b = decide(&BackportInputs {
        data_release: "v1.6.6",
        handler_sidecar: true,
        namespace: "openshift-cnv",
    })
    .unwrap();
    let exprs: Vec<&str> = b.rules.iter().map(SourceRule::expr).collect();
    assert!(
        exprs
            .iter()
            .all(|e| !e.contains("'kubevirt'") && !e.contains("\"kubevirt\""))
    );
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("namespace='openshift-cnv'"))
    );
}

#[test]
fn input_names_reads_selectors_only() {
    let expr = r#"sum by (pod, namespace) (rate(kubevirt_a_total{x="}{", y!~'a|b'}[5m] offset 1h))
        * on(pod) group_left(node) topk by(name)(1, kubevirt_vmi_info)
        / ignoring(reason) vmi:kubevirt_b:sum > bool 0.75 or vector(0) unless absent(up{job="x"})"#;
    let names: Vec<String> = crate::plan::promql::metric_names(expr)
        .into_iter()
        .collect();
    assert_eq!(
        names,
        vec![
            "kubevirt_a_total",
            "kubevirt_vmi_info",
            "up",
            "vmi:kubevirt_b:sum"
        ]
    );
}

#[test]
fn rule_groups_hold_records_then_alerts() {
    let groups = rule_groups(&decided("v1.6.6", true));
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert!(
        groups[0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("record").is_some())
    );
    assert!(
        groups[1]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("alert").is_some())
    );
}
