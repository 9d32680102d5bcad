//! Exporters and aggregation through the plan, as the KubeVirt CR and virt-operator's
//! Deployment receive them: the collector flags (parsed back by the collectors' own flag
//! types), one optional projected Secret volume per sink mounted read-only, per-component
//! overrides, removal, every problem of a component reported at once, and `render`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use kubevirt_metrics_flags::{
    ApiArgs, ControllerArgs, ExportArgs, HandlerArgs, InfluxPrecision, OperatorArgs, OtlpProtocol,
};
use kubevirt_metrics_operator::api::Component;
use kubevirt_metrics_operator::plan::exporters::SECRETS_ROOT;
use kubevirt_metrics_operator::plan::{self, Plan, PlanDefaults, PlannedSidecar};
use kubevirt_metrics_operator::render;
use serde_json::{Value, json};

fn policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/plan/exporters/policy.yaml")
}

fn policy_text() -> String {
    std::fs::read_to_string(policy_file()).unwrap()
}

fn plan_of(text: &str) -> Result<Plan, plan::PlanError> {
    let policy = render::parse_policy(text).unwrap();
    plan::plan(&policy, None, &PlanDefaults::default())
}

fn sidecar(plan: &Plan, component: Component) -> &PlannedSidecar {
    plan.sidecars
        .iter()
        .find(|s| s.component == component)
        .unwrap()
}

/// The export flags of a sidecar, parsed by the collector binary's own flag definitions.
fn export_args(sidecar: &PlannedSidecar) -> ExportArgs {
    let binary = sidecar.container["command"][0].as_str().unwrap().to_owned();
    let argv = std::iter::once(binary).chain(
        sidecar.container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned()),
    );
    match sidecar.component {
        Component::VirtHandler => HandlerArgs::try_parse_from(argv).unwrap().common.export,
        Component::VirtController => ControllerArgs::try_parse_from(argv).unwrap().common.export,
        Component::VirtApi => ApiArgs::try_parse_from(argv).unwrap().common.export,
        Component::VirtOperator => OperatorArgs::try_parse_from(argv).unwrap().common.export,
    }
}

fn file(sink: &str, name: &str) -> Option<PathBuf> {
    Some(PathBuf::from(format!("{SECRETS_ROOT}/{sink}/{name}")))
}

fn volume<'a>(sidecar: &'a PlannedSidecar, name: &str) -> &'a Value {
    sidecar
        .volumes
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{}: no volume {name}", sidecar.component))
}

#[test]
fn flags_come_from_defaults_and_component_overrides() {
    if std::env::vars().any(|(k, _)| k.starts_with("COLLECTOR_")) {
        eprintln!(
            "SKIPPED test: flags_come_from_defaults_and_component_overrides (COLLECTOR_* set in the environment feeds the flags)"
        );
        return;
    }
    let plan = plan_of(&policy_text()).unwrap();

    let handler = export_args(sidecar(&plan, Component::VirtHandler));
    assert_eq!(
        handler.otlp_endpoint.as_deref(),
        Some("https://otel-collector.monitoring:4317")
    );
    assert_eq!(handler.otlp_protocol, OtlpProtocol::Grpc);
    assert_eq!(handler.otlp_headers, vec!["X-Scope-OrgID=kubevirt"]);
    assert_eq!(handler.otlp_bearer_token_file, file("otlp", "bearer-token"));
    assert_eq!(handler.otlp_ca, file("otlp", "ca.crt"));
    assert_eq!(
        handler.remote_write_url.as_deref(),
        Some("https://mimir.monitoring/api/v1/push")
    );
    assert_eq!(handler.remote_write_username.as_deref(), Some("kubevirt"));
    assert_eq!(
        handler.remote_write_password_file,
        file("remote-write", "password")
    );
    assert_eq!(handler.remote_write_ca, file("remote-write", "ca.crt"));
    assert_eq!(
        handler.remote_write_client_cert,
        file("remote-write", "tls.crt")
    );
    assert_eq!(
        handler.remote_write_client_key,
        file("remote-write", "tls.key")
    );
    // virt-handler's own sink and aggregations (which replace spec.aggregations whole).
    assert_eq!(
        handler.influx_url.as_deref(),
        Some("http://influxdb.monitoring:8086")
    );
    assert_eq!(
        (
            handler.influx_org.as_deref(),
            handler.influx_bucket.as_deref()
        ),
        (Some("ops"), Some("kubevirt"))
    );
    assert_eq!(handler.influx_db, None);
    assert_eq!(handler.influx_token_file, file("influxdb", "token"));
    assert_eq!(handler.influx_precision, InfluxPrecision::S);
    assert_eq!(handler.push_queue_capacity, 16);
    assert_eq!(handler.push_timeout, Duration::from_secs(5));
    assert_eq!(handler.push_max_backoff, Duration::from_secs(60));
    assert_eq!(
        handler.aggregate,
        vec![
            "sum by (namespace) (kubevirt_vmi_memory_resident_bytes)",
            "sum by (namespace) (kubevirt_vmi_vcpu_seconds_total)"
        ]
    );
    assert_eq!(handler.drop_families, vec!["kubevirt_vmi_vcpu_delay_.*"]);
    assert!(handler.drop_labels.is_empty(), "replaced as a whole");

    // virt-controller turns the default OTLP sink off and keeps remote write.
    let controller = export_args(sidecar(&plan, Component::VirtController));
    assert_eq!(controller.otlp_endpoint, None);
    assert_eq!(controller.otlp_bearer_token_file, None);
    assert!(controller.remote_write_url.is_some());
    assert_eq!(controller.influx_url, None);

    // virt-api: only the defaults, and spec.aggregations.
    let api = export_args(sidecar(&plan, Component::VirtApi));
    assert!(api.otlp_endpoint.is_some() && api.influx_url.is_none());
    assert_eq!(api.drop_labels, vec!["kubernetes_vmi_label_app"]);
    assert!(api.aggregate.is_empty());
}

#[test]
fn secrets_are_mounted_by_reference_read_only_and_optional() {
    let plan = plan_of(&policy_text()).unwrap();
    let handler = sidecar(&plan, Component::VirtHandler);
    let names: Vec<&str> = handler
        .volumes
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "kubevirt-metrics-otlp",
            "kubevirt-metrics-remote-write",
            "kubevirt-metrics-influxdb"
        ]
    );
    assert_eq!(
        volume(handler, "kubevirt-metrics-remote-write"),
        &json!({"name": "kubevirt-metrics-remote-write", "projected": {"sources": [
            {"secret": {"name": "mimir-auth", "items": [{"key": "password", "path": "password"}], "optional": true}},
            {"secret": {"name": "monitoring-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}], "optional": true}},
            {"secret": {"name": "mimir-client", "items": [
                {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}], "optional": true}},
        ]}})
    );
    let mounts: Vec<&Value> = handler.container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"].as_str().unwrap().starts_with("kubevirt-metrics-"))
        .collect();
    assert_eq!(mounts.len(), 3);
    for mount in mounts {
        assert_eq!(mount["readOnly"], true, "{mount}");
        assert!(
            mount["mountPath"]
                .as_str()
                .unwrap()
                .starts_with(SECRETS_ROOT)
        );
    }
    // virt-controller has OTLP off: no OTLP volume, no OTLP mount.
    let controller = sidecar(&plan, Component::VirtController);
    assert!(
        controller
            .volumes
            .iter()
            .all(|v| v["name"] != "kubevirt-metrics-otlp")
    );

    // The volumes travel in the same patch entry as the container, and in virt-operator's
    // apply body; nothing but Secret names and keys is written.
    let entry = plan
        .entries
        .iter()
        .find(|e| e.resource_name == "virt-handler")
        .unwrap();
    let body: Value = serde_json::from_str(&entry.patch).unwrap();
    assert_eq!(
        body["spec"]["template"]["spec"]["volumes"],
        json!(handler.volumes)
    );
    let operator = plan.virt_operator.as_ref().unwrap();
    assert_eq!(
        operator["spec"]["template"]["spec"]["volumes"],
        json!(sidecar(&plan, Component::VirtOperator).volumes)
    );
    let fields: BTreeSet<&str> = handler.secrets.iter().map(|s| s.field.as_str()).collect();
    assert!(fields.contains("influxdb.tokenSecretRef") && fields.contains("otlp.tls.caSecretRef"));
}

#[test]
fn without_exporters_the_volumes_and_flags_go_away() {
    let with = plan_of(&policy_text()).unwrap();
    // The same policy with every exporter and aggregation removed.
    let mut policy: Value = serde_yaml::from_str(&policy_text()).unwrap();
    policy["spec"]["defaults"]
        .as_object_mut()
        .unwrap()
        .remove("exporters");
    policy["spec"]
        .as_object_mut()
        .unwrap()
        .remove("aggregations");
    policy["spec"]["components"]["virtHandler"] = json!({});
    policy["spec"]["components"]["virtController"] = json!({});
    let without = plan_of(&serde_json::to_string(&policy).unwrap()).unwrap();
    for entry in &without.entries {
        assert!(
            !entry.patch.contains("kubevirt-metrics-"),
            "{}",
            entry.patch
        );
        assert!(!entry.patch.contains("\"volumes\""), "{}", entry.patch);
        assert!(!entry.patch.contains("--otlp") && !entry.patch.contains("--aggregate"));
    }
    let operator = without.virt_operator.as_ref().unwrap();
    assert!(
        operator["spec"]["template"]["spec"]
            .get("volumes")
            .is_none()
    );
    // Our entry for each workload is replaced in place, so the old volume leaves with it.
    assert_eq!(with.entries.len(), without.entries.len());
}

#[test]
fn every_problem_of_a_component_is_reported_at_once() {
    // What the CRD would refuse, rendered from a file (no API server involved).
    let text = r#"
apiVersion: metrics.kubevirt.io/v1alpha1
kind: MetricsSidecarPolicy
metadata: {name: p, namespace: kubevirt}
spec:
  defaults: {image: "r/c:v1"}
  components:
    virtApi:
      exporters:
        otlp: {endpoint: "otel:4317"}
        remoteWrite:
          url: http://mimir/api/v1/push
          bearerTokenSecretRef: {name: a, key: token}
          basicAuth: {username: kv, passwordSecretRef: {name: b, key: password}}
          tls: {certSecretRef: {name: c, key: tls.crt}}
        influxdb: {url: "http://influx:8086", database: kv, org: ops, bucket: b}
        queue: {capacity: 0, maxBackoff: 2h}
"#;
    let err = plan_of(text).unwrap_err().to_string();
    for part in [
        "virt-api: exporters: ",
        "otlp.endpoint: must be an http:// or https:// URL with a host",
        "remoteWrite: bearerTokenSecretRef and basicAuth exclude each other",
        "remoteWrite.tls: certSecretRef and keySecretRef must be set together",
        "influxdb: database (InfluxDB 1.x) and org/bucket (InfluxDB 2.x) exclude each other",
        "queue.capacity: must be between 1 and 1000",
        "queue.maxBackoff: \"2h\" must be between 1s and 1h",
    ] {
        assert!(err.contains(part), "{part:?} missing in: {err}");
    }
}

#[test]
fn extra_args_repeating_an_exported_flag_are_refused() {
    let text = r#"
apiVersion: metrics.kubevirt.io/v1alpha1
kind: MetricsSidecarPolicy
metadata: {name: p, namespace: kubevirt}
spec:
  defaults: {image: "r/c:v1", extraArgs: ["--otlp-endpoint=http://a:4318", "--drop-label", "x"]}
  components:
    virtApi:
      exporters: {otlp: {endpoint: "http://b:4318"}}
  aggregations: {dropLabels: [node]}
"#;
    let err = plan_of(text).unwrap_err().to_string();
    assert_eq!(
        err,
        "virt-api: exporters: extraArgs: --otlp-endpoint is also set by exporters or aggregations; set it in one place"
    );
    // Repeatable flags (--drop-label) and flags the policy does not render are fine.
    let ok = text.replace("\"--otlp-endpoint=http://a:4318\", ", "");
    assert!(plan_of(&ok).is_ok());
}

#[test]
fn render_names_every_secret_the_sidecars_read() {
    let plan = plan_of(&policy_text()).unwrap();
    assert_eq!(
        plan.secret_names(),
        [
            "influx-auth",
            "mimir-auth",
            "mimir-client",
            "monitoring-ca",
            "otlp-auth"
        ]
    );
}

#[test]
fn render_prints_flags_volumes_and_mounts_or_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let run = |policy: &Path| {
        Command::new(env!("CARGO_BIN_EXE_kubevirt-metrics-operator"))
            .arg("render")
            .arg("-f")
            .arg(policy)
            .arg("--kubevirt")
            .arg(policy.with_file_name("kubevirt.yaml"))
            .output()
            .unwrap()
    };
    let out = run(&policy_file());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "kubevirt-metrics-operator render: warning: the sidecars' exporters read the Secrets influx-auth, mimir-auth, mimir-client, monitoring-ca, otlp-auth in namespace kubevirt: create them there (a missing Secret or key leaves that sink without its file)\n"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for part in [
        r#""--otlp-endpoint","https://otel-collector.monitoring:4317""#,
        r#""--influx-token-file","/var/run/secrets/kubevirt-metrics/influxdb/token""#,
        r#"{"name":"kubevirt-metrics-influxdb","mountPath":"/var/run/secrets/kubevirt-metrics/influxdb","readOnly":true}"#,
        r#""volumes":[{"name":"kubevirt-metrics-otlp","projected""#,
    ] {
        assert!(stdout.contains(part), "{part} missing in:\n{stdout}");
    }

    let bad = dir.path().join("policy.yaml");
    std::fs::write(
        &bad,
        policy_text().replace("https://mimir.monitoring/api/v1/push", "mimir/api/v1/push"),
    )
    .unwrap();
    std::fs::copy(
        policy_file().with_file_name("kubevirt.yaml"),
        dir.path().join("kubevirt.yaml"),
    )
    .unwrap();
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("virt-handler: exporters: remoteWrite.url: must be an http:// or https:// URL with a host"),
        "{stderr}"
    );
}
