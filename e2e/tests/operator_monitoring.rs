//! `spec.monitoring` on a real API server, the operator running as its ServiceAccount with
//! exactly `config/rbac`:
//! - without the prometheus-operator CRDs nothing fails: the policy is Ready, status says
//!   which objects are not created and why, and the NetworkPolicy (a core kind) is there
//!   because the namespace has KubeVirt's v1.9.0 NetworkPolicies;
//! - the real prometheus-operator CRDs installed later are picked up: the PodMonitor, the
//!   sidecar alerts and the backports for `observedKubeVirtVersion` v1.6.6 appear, owned by
//!   the policy; the backports include rules first in v1.8.4 and none v1.6.6 has;
//! - `scrape: ServiceMonitor` replaces the PodMonitor by Services and a ServiceMonitor;
//! - deleting the policy removes every one of them;
//! - an unknown KubeVirt version (v1.10.0) installs no backport and says so; without
//!   KubeVirt's NetworkPolicies no NetworkPolicy is made.
//!
//! Plus `promtool check rules` on the backported rule set of every release with data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use kubevirt_metrics_operator::api::{KubeVirt, MetricsSidecarPolicy, MonitoringStatus};
use kubevirt_metrics_operator::plan::backports::{self, BackportInputs, RELEASES};
use support::*;

const WAIT: Duration = Duration::from_secs(90);

fn resource(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.to_owned(),
        version: "v1".to_owned(),
        api_version: if group.is_empty() {
            "v1".to_owned()
        } else {
            format!("{group}/v1")
        },
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

fn api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let r = match kind {
        "PodMonitor" => resource("monitoring.coreos.com", kind, "podmonitors"),
        "ServiceMonitor" => resource("monitoring.coreos.com", kind, "servicemonitors"),
        "PrometheusRule" => resource("monitoring.coreos.com", kind, "prometheusrules"),
        "Service" => resource("", kind, "services"),
        "NetworkPolicy" => resource("networking.k8s.io", kind, "networkpolicies"),
        other => panic!("unknown kind {other}"),
    };
    Api::namespaced_with(client.clone(), ns, &r)
}

async fn get(client: &Client, ns: &str, kind: &str, name: &str) -> Option<Value> {
    api(client, ns, kind)
        .get_opt(name)
        .await
        .unwrap()
        .map(|o| serde_json::to_value(o).unwrap())
}

async fn monitoring_status(client: &Client, ns: &str, name: &str) -> Option<MonitoringStatus> {
    get_policy(client, ns, name).await.ok()??.status?.monitoring
}

async fn kubevirt_with_version(client: &Client, ns: &str, version: &str) -> KubeVirt {
    let kv = create_kubevirt(client, ns, None, "Deployed").await.unwrap();
    Api::<KubeVirt>::namespaced(client.clone(), ns)
        .patch_status(
            &kv.metadata.name.clone().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedKubeVirtVersion": version}})),
        )
        .await
        .unwrap()
}

async fn kubevirt_network_policies(client: &Client, ns: &str) {
    let api = Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    for mut np in documents("testdata/kubevirt-v1.9.0/networkpolicies.yaml").unwrap() {
        np["metadata"]["namespace"] = json!(ns);
        api.create(&PostParams::default(), &serde_json::from_value(np).unwrap())
            .await
            .unwrap();
    }
}

fn policy_spec(monitoring: Value) -> Value {
    json!({
        "defaults": {"image": IMAGE},
        "components": {"virtHandler": {}, "virtController": {}},
        "monitoring": monitoring,
    })
}

fn rule_names(rule: &Value) -> BTreeSet<String> {
    rule["spec"]["groups"]
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

fn owned_by_policy(object: &Value, policy: &MetricsSidecarPolicy) {
    let owner = &object["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "MetricsSidecarPolicy", "{object}");
    assert_eq!(
        owner["uid"].as_str(),
        policy.metadata.uid.as_deref(),
        "{object}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_monitoring_objects_on_a_real_api_server() -> anyhow::Result<()> {
    let Some(server) =
        apiserver::start("operator_monitoring::operator_monitoring_objects_on_a_real_api_server")
            .await?
    else {
        return Ok(());
    };
    let client = server.client.clone();
    install_crds(&client).await?;

    eprintln!("e2e scenario: no prometheus-operator CRDs; KubeVirt's NetworkPolicies present");
    let ns = namespace(&client, "mon").await?;
    kubevirt_with_version(&client, &ns, "v1.6.6").await;
    kubevirt_network_policies(&client, &ns).await;
    let operator = start_operator(&server, &ns).await?;
    create_policy(&client, &ns, "mon", policy_spec(json!({"backports": true}))).await?;
    let status = eventually("monitoring status without CRDs", WAIT, || async {
        Ok(monitoring_status(&client, &ns, "mon").await)
    })
    .await?;
    assert_eq!(
        status.objects,
        vec!["NetworkPolicy/kubevirt-allow-ingress-to-metrics-sidecars"]
    );
    assert!(
        status.notes[0].contains("PodMonitor, PrometheusRule")
            && status.notes[0].contains("not served"),
        "{:?}",
        status.notes
    );
    let backports_status = status.backports.clone().unwrap();
    assert!(backports_status.message.unwrap().contains("not served"));
    let policy = get_policy(&client, &ns, "mon").await?.unwrap();
    let degraded = policy
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.status, "False", "nothing fails without the CRDs");
    let np = get(
        &client,
        &ns,
        "NetworkPolicy",
        "kubevirt-allow-ingress-to-metrics-sidecars",
    )
    .await
    .expect("our NetworkPolicy");
    owned_by_policy(&np, &policy);
    assert_eq!(
        np["spec"]["ingress"][0]["ports"],
        json!([{"port": 9443, "protocol": "TCP"}])
    );

    eprintln!("e2e scenario: the prometheus-operator CRDs appear later");
    install_prometheus_operator_crds(&client).await?;
    let backports_rule = eventually("backports PrometheusRule", WAIT, || async {
        Ok(get(
            &client,
            &ns,
            "PrometheusRule",
            "kubevirt-metrics-sidecars-backports",
        )
        .await)
    })
    .await?;
    let pod_monitor = get(&client, &ns, "PodMonitor", "kubevirt-metrics-sidecars")
        .await
        .expect("PodMonitor");
    let alerts = get(
        &client,
        &ns,
        "PrometheusRule",
        "kubevirt-metrics-sidecars-rules",
    )
    .await
    .expect("sidecar alerts");
    for object in [&backports_rule, &pod_monitor, &alerts] {
        owned_by_policy(object, &policy);
    }
    assert_eq!(
        pod_monitor["metadata"]["labels"]["prometheus.kubevirt.io"],
        "true"
    );
    assert_eq!(pod_monitor["metadata"]["labels"]["k8s-app"], "kubevirt");
    let endpoint = &pod_monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["tlsConfig"]["insecureSkipVerify"], true);
    assert!(
        endpoint["relabelings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["targetLabel"] == "job" && r["replacement"] == "kubevirt-metrics-sidecars")
    );
    assert!(rule_names(&alerts).contains("KubevirtMetricsSidecarDown"));
    let backported = rule_names(&backports_rule);
    for first_in_v1_8_4 in [
        "vmi:kubevirt_vmi_vcpu:count",
        "cluster:kubevirt_virt_handler_up:sum",
        "VirtHandlerDown",
    ] {
        assert!(backported.contains(first_in_v1_8_4), "{first_in_v1_8_4}");
    }
    let v1_6_6 = documents("operator/data/kubevirt-releases/v1.6.6/prometheusrule.yaml")?;
    let v1_6_6_has = rule_names(&v1_6_6[0]);
    assert!(v1_6_6_has.contains("GuestVCPUQueueHighWarning"));
    let overlap: Vec<&String> = backported.intersection(&v1_6_6_has).collect();
    assert!(
        overlap.is_empty(),
        "backported what v1.6.6 has: {overlap:?}"
    );
    let status = eventually("status listing the objects", WAIT, || async {
        Ok(monitoring_status(&client, &ns, "mon")
            .await
            .filter(|s| s.objects.len() == 4))
    })
    .await?;
    assert!(status.notes.is_empty(), "{:?}", status.notes);
    let backports_status = status.backports.unwrap();
    assert_eq!(backports_status.data_release.as_deref(), Some("v1.6.6"));
    assert!(
        backports_status
            .alerts
            .contains(&"VirtHandlerDown".to_owned())
    );

    eprintln!("e2e scenario: scrape: ServiceMonitor replaces the PodMonitor");
    Api::<MetricsSidecarPolicy>::namespaced(client.clone(), &ns)
        .patch(
            "mon",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"monitoring": {"scrape": "ServiceMonitor"}}})),
        )
        .await?;
    // One reconcile applies the kinds in turn (the ServiceMonitor before the Services it
    // selects), so wait for all of them, not only for the first.
    let services = [
        "virt-handler-metrics-sidecar",
        "virt-controller-metrics-sidecar",
    ];
    eventually(
        "ServiceMonitor and Services instead of PodMonitor",
        WAIT,
        || async {
            let sm = get(&client, &ns, "ServiceMonitor", "kubevirt-metrics-sidecars").await;
            let pm = get(&client, &ns, "PodMonitor", "kubevirt-metrics-sidecars").await;
            let mut svcs = Vec::new();
            for service in services {
                svcs.push(get(&client, &ns, "Service", service).await);
            }
            let ready = sm.is_some() && pm.is_none() && svcs.iter().all(Option::is_some);
            Ok(ready.then_some(svcs))
        },
    )
    .await?
    .into_iter()
    .flatten()
    .for_each(|svc| owned_by_policy(&svc, &policy));

    eprintln!("e2e scenario: deleting the policy removes every monitoring object");
    Api::<MetricsSidecarPolicy>::namespaced(client.clone(), &ns)
        .delete("mon", &DeleteParams::default())
        .await?;
    eventually("policy gone", WAIT, || async {
        Ok(get_policy(&client, &ns, "mon")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    for (kind, name) in [
        ("ServiceMonitor", "kubevirt-metrics-sidecars"),
        ("PrometheusRule", "kubevirt-metrics-sidecars-rules"),
        ("PrometheusRule", "kubevirt-metrics-sidecars-backports"),
        (
            "NetworkPolicy",
            "kubevirt-allow-ingress-to-metrics-sidecars",
        ),
        ("Service", "virt-handler-metrics-sidecar"),
        ("Service", "virt-controller-metrics-sidecar"),
    ] {
        assert!(
            get(&client, &ns, kind, name).await.is_none(),
            "{kind}/{name} left"
        );
    }
    // KubeVirt's own NetworkPolicies are untouched.
    assert!(
        get(
            &client,
            &ns,
            "NetworkPolicy",
            "kubevirt-allow-ingress-to-metrics"
        )
        .await
        .is_some()
    );
    operator.stop().await?;

    eprintln!("e2e scenario: KubeVirt v1.10.0 (no data), no KubeVirt NetworkPolicies");
    let ns2 = namespace(&client, "mon-new").await?;
    kubevirt_with_version(&client, &ns2, "v1.10.0").await;
    let operator = start_operator(&server, &ns2).await?;
    create_policy(
        &client,
        &ns2,
        "mon",
        policy_spec(json!({"backports": true})),
    )
    .await?;
    let status = eventually("monitoring status for v1.10.0", WAIT, || async {
        Ok(monitoring_status(&client, &ns2, "mon")
            .await
            .filter(|s| s.backports.is_some()))
    })
    .await?;
    let backports_status = status.backports.unwrap();
    assert!(
        backports_status
            .message
            .as_deref()
            .unwrap()
            .contains("no rule data for KubeVirt v1.10.0"),
        "{backports_status:?}"
    );
    assert!(backports_status.recording_rules.is_empty() && backports_status.alerts.is_empty());
    assert_eq!(
        status.objects,
        vec![
            "PodMonitor/kubevirt-metrics-sidecars",
            "PrometheusRule/kubevirt-metrics-sidecars-rules",
        ]
    );
    assert!(status.notes.iter().any(|n| n.contains("no NetworkPolicy")));
    assert!(
        get(
            &client,
            &ns2,
            "PrometheusRule",
            "kubevirt-metrics-sidecars-backports"
        )
        .await
        .is_none()
    );
    assert!(
        get(
            &client,
            &ns2,
            "NetworkPolicy",
            "kubevirt-allow-ingress-to-metrics-sidecars"
        )
        .await
        .is_none()
    );
    operator.stop().await?;
    delete_namespace(&client, &ns).await;
    delete_namespace(&client, &ns2).await;
    drop(server);
    Ok(())
}

/// The backported rule set of every release with data passes `promtool check rules`
/// (promtool from Debian's `prometheus` package; missing promtool fails the test).
#[test]
fn promtool_checks_the_backported_rules() {
    let dir = tempfile::tempdir().unwrap();
    for release in RELEASES {
        let decided = backports::decide(&BackportInputs {
            data_release: release,
            handler_sidecar: true,
            namespace: "kubevirt",
        })
        .unwrap();
        if decided.rules.is_empty() {
            continue;
        }
        let file = dir.path().join(format!("backports-{release}.rules.yml"));
        let groups = json!({"groups": backports::rule_groups(&decided)});
        std::fs::write(&file, serde_yaml::to_string(&groups).unwrap()).unwrap();
        let out = std::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .expect("promtool not found in PATH (Debian: apt-get install prometheus)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{release}: {text}");
        assert!(
            text.contains(&format!("SUCCESS: {} rules found", decided.rules.len())),
            "{release}: {text}"
        );
    }
}
