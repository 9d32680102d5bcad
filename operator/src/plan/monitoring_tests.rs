#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::plan::{PlanDefaults, plan as plan_policy};

fn policy(spec: Value) -> MetricsSidecarPolicy {
    let mut p: MetricsSidecarPolicy = serde_json::from_value(json!({
        "apiVersion": "metrics.kubevirt.io/v1alpha1",
        "kind": "MetricsSidecarPolicy",
        "metadata": {"name": "p", "namespace": "kubevirt", "uid": "uid-1"},
        "spec": spec,
    }))
    .unwrap();
    p.metadata.generation = Some(1);
    p
}

fn handler_and_api(monitoring: Value) -> MetricsSidecarPolicy {
    policy(json!({
        "defaults": {"image": "example.org/collectors:1"},
        "components": {"virtHandler": {}, "virtApi": {"port": 9555, "tls": {"enabled": false}}},
        "monitoring": monitoring,
    }))
}

fn planned(policy: &MetricsSidecarPolicy, facts: &MonitoringFacts) -> MonitoringPlan {
    let p = plan_policy(policy, None, &PlanDefaults::default()).unwrap();
    plan(policy, &p, facts).unwrap()
}

fn with_crds() -> MonitoringFacts {
    MonitoringFacts {
        crds: ServedCrds::all(),
        kubevirt_network_policies: true,
        kubevirt_version: None,
    }
}

fn kinds(plan: &MonitoringPlan) -> Vec<String> {
    plan.objects.iter().map(DesiredObject::display).collect()
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

#[test]
fn default_is_a_pod_monitor_the_alerts_and_a_network_policy() {
    let out = planned(&handler_and_api(json!({})), &with_crds());
    assert_eq!(
        kinds(&out),
        vec![
            "PodMonitor/kubevirt-metrics-sidecars",
            "PrometheusRule/kubevirt-metrics-sidecars-rules",
            "NetworkPolicy/kubevirt-allow-ingress-to-metrics-sidecars",
        ]
    );
    assert!(out.notes.is_empty(), "{:?}", out.notes);
    assert!(out.backports.is_none());
}

#[test]
fn pod_monitor_matches_how_each_sidecar_serves_and_the_shipped_relabelings() {
    let out = planned(&handler_and_api(json!({})), &with_crds());
    let pm = &out.objects[0].body;
    let shipped = yaml(include_str!("../../../config/prometheus/podmonitor.yaml"));
    let shipped_endpoint = &shipped["spec"]["podMetricsEndpoints"][0];
    let endpoints = pm["spec"]["podMetricsEndpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    // virt-handler: HTTPS on the default port name, TLS as KubeVirt's own ServiceMonitor.
    let https = endpoints.iter().find(|e| e["scheme"] == "https").unwrap();
    assert_eq!(https["port"], "sidecar-metrics");
    let kubevirt_sm = yaml(include_str!(
        "../../../testdata/kubevirt-v1.9.0/servicemonitor.yaml"
    ));
    let kubevirt_tls = &kubevirt_sm["spec"]["endpoints"][0]["tlsConfig"];
    assert_eq!(
        https["tlsConfig"]["insecureSkipVerify"],
        kubevirt_tls["insecureSkipVerify"]
    );
    assert_eq!(
        https["honorLabels"],
        kubevirt_sm["spec"]["endpoints"][0]["honorLabels"]
    );
    // virt-api: plain HTTP, no tlsConfig.
    let http = endpoints.iter().find(|e| e["scheme"] == "http").unwrap();
    assert!(http.get("tlsConfig").is_none());
    for e in endpoints {
        assert_eq!(e["relabelings"], shipped_endpoint["relabelings"]);
        assert_eq!(
            e["metricRelabelings"],
            shipped_endpoint["metricRelabelings"]
        );
        let job = e["relabelings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["targetLabel"] == "job")
            .unwrap();
        assert_eq!(job["replacement"], "kubevirt-metrics-sidecars");
    }
    // KubeVirt's ServiceMonitor labels, so the same Prometheus selects it.
    for (k, v) in kubevirt_sm["metadata"]["labels"].as_object().unwrap() {
        assert_eq!(&pm["metadata"]["labels"][k], v, "label {k}");
    }
    assert_eq!(
        pm["spec"]["selector"]["matchExpressions"][0]["values"],
        json!(["virt-handler", "virt-api"])
    );
    assert_eq!(pm["metadata"]["namespace"], "kubevirt");
    let owner = &pm["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "MetricsSidecarPolicy");
    assert_eq!(owner["uid"], "uid-1");
    assert_eq!(owner["controller"], true);
    assert!(owner.get("blockOwnerDeletion").is_none());
}

#[test]
fn service_monitor_mode_makes_a_headless_service_per_component() {
    let out = planned(
        &handler_and_api(json!({"scrape": "ServiceMonitor"})),
        &with_crds(),
    );
    assert_eq!(
        kinds(&out)[..3],
        [
            "Service/virt-handler-metrics-sidecar",
            "Service/virt-api-metrics-sidecar",
            "ServiceMonitor/kubevirt-metrics-sidecars",
        ]
    );
    let api = &out.objects[1].body;
    assert_eq!(api["spec"]["selector"], json!({"kubevirt.io": "virt-api"}));
    assert_eq!(api["spec"]["ports"][0]["port"], 9555);
    assert_eq!(api["spec"]["clusterIP"], "None");
    let sm = &out.objects[2].body;
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!(["kubevirt"])
    );
    assert_eq!(sm["spec"]["endpoints"].as_array().unwrap().len(), 2);
}

#[test]
fn alerts_are_the_shipped_rule_file() {
    let out = planned(&handler_and_api(json!({"scrape": "None"})), &with_crds());
    let rule = out
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::PrometheusRule)
        .unwrap();
    let shipped = yaml(include_str!(
        "../../../config/prometheus/prometheusrule.yaml"
    ));
    assert_eq!(rule.body["spec"], shipped["spec"]);
    assert_eq!(
        rule.body["metadata"]["labels"]["prometheus.kubevirt.io"],
        "true"
    );
    assert!(out.objects.iter().all(|o| o.kind != ObjectKind::PodMonitor));
}

#[test]
fn network_policy_admits_every_sidecar_port_only_next_to_kubevirt_s() {
    let out = planned(&handler_and_api(json!({})), &with_crds());
    let np = &out.objects.last().unwrap().body;
    assert_eq!(
        np["spec"]["ingress"][0]["ports"],
        json!([{"port": 9443, "protocol": "TCP"}, {"port": 9555, "protocol": "TCP"}])
    );
    let facts = MonitoringFacts {
        kubevirt_network_policies: false,
        ..with_crds()
    };
    let out = planned(&handler_and_api(json!({})), &facts);
    assert!(
        out.objects
            .iter()
            .all(|o| o.kind != ObjectKind::NetworkPolicy)
    );
    assert!(out.notes.iter().any(|n| n.contains("no NetworkPolicy")));
    let off = planned(
        &handler_and_api(json!({"networkPolicy": false})),
        &with_crds(),
    );
    assert!(
        off.objects
            .iter()
            .all(|o| o.kind != ObjectKind::NetworkPolicy)
    );
}

#[test]
fn kubevirt_network_policies_are_told_by_name_not_ours() {
    let none = std::collections::BTreeMap::new();
    assert!(is_kubevirt_network_policy(
        "kubevirt-allow-ingress-to-metrics",
        &none
    ));
    assert!(!is_kubevirt_network_policy("default-deny", &none));
    let ours = [(MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned())].into();
    assert!(!is_kubevirt_network_policy(NETWORK_POLICY_NAME, &ours));
}

#[test]
fn without_the_crds_only_the_network_policy_and_a_note() {
    let facts = MonitoringFacts {
        crds: ServedCrds::default(),
        ..with_crds()
    };
    let out = planned(&handler_and_api(json!({"backports": true})), &facts);
    assert_eq!(
        kinds(&out),
        vec!["NetworkPolicy/kubevirt-allow-ingress-to-metrics-sidecars"]
    );
    assert!(
        out.notes[0].contains("PodMonitor, PrometheusRule") && out.notes[0].contains("not served"),
        "{:?}",
        out.notes
    );
    assert_eq!(
        out.managed_kinds,
        vec![ObjectKind::Service, ObjectKind::NetworkPolicy]
    );
}

#[test]
fn backports_follow_the_observed_version() {
    let p = handler_and_api(json!({"backports": true, "scrape": "None", "alerts": false}));
    let facts = |v: Option<&str>| MonitoringFacts {
        kubevirt_version: v.map(str::to_owned),
        ..with_crds()
    };
    let out = planned(&p, &facts(Some("v1.6.6")));
    let status = out.backports.clone().unwrap();
    assert_eq!(status.data_release.as_deref(), Some("v1.6.6"));
    assert!(
        status
            .recording_rules
            .contains(&"vmi:kubevirt_vmi_vcpu:count".to_owned())
    );
    assert!(status.alerts.contains(&"VirtHandlerDown".to_owned()));
    assert!(
        status
            .skipped
            .iter()
            .any(|s| s.starts_with("VMNonRecoverableOSPanic (missing: "))
    );
    let rule = out
        .objects
        .iter()
        .find(|o| o.name == BACKPORTS_NAME)
        .unwrap();
    assert_eq!(rule.body["spec"]["groups"].as_array().unwrap().len(), 2);

    for unknown in [Some("v1.3.0"), Some("v1.10.1")] {
        let out = planned(&p, &facts(unknown));
        let status = out.backports.unwrap();
        assert!(status.message.unwrap().contains("no rule data"));
        assert!(status.recording_rules.is_empty() && status.alerts.is_empty());
        assert!(out.objects.iter().all(|o| o.name != BACKPORTS_NAME));
    }
    let out = planned(&p, &facts(None));
    assert!(
        out.backports
            .unwrap()
            .message
            .unwrap()
            .contains("observedKubeVirtVersion")
    );
    let out = planned(&p, &facts(Some("v1.9.0")));
    assert!(
        out.objects
            .iter()
            .all(|o| o.kind != ObjectKind::PrometheusRule)
    );
    assert!(
        out.backports
            .unwrap()
            .message
            .unwrap()
            .contains("nothing to install")
    );
}

#[test]
fn no_sidecar_no_scrape_objects() {
    let p = policy(json!({"monitoring": {}}));
    let out = planned(&p, &with_crds());
    assert!(out.objects.is_empty());
}

#[test]
fn same_input_same_bytes_and_hash() {
    let a = planned(&handler_and_api(json!({})), &with_crds());
    let b = planned(&handler_and_api(json!({})), &with_crds());
    assert_eq!(a, b);
    assert!(a.objects.iter().all(|o| o.hash().is_some()));
    let c = planned(
        &handler_and_api(json!({"scrape": "PodMonitor"})),
        &MonitoringFacts {
            kubevirt_network_policies: true,
            ..with_crds()
        },
    );
    assert_eq!(a.objects[0].hash(), c.objects[0].hash());
}
