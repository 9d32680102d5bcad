//! `/metrics` in JSON: chosen by `Accept: application/json` or `?format=json`, the schema
//! the README documents checked field by field against the text format of the same
//! snapshot, non-finite values as strings.

#![allow(clippy::unwrap_used)]

mod server_support;

use std::sync::Arc;

use kubevirt_metrics_collectors::core::metric::{Family, MetricType, Sample};
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_flags::Mode;
use serde_json::{Value, json};
use server_support::*;

fn families() -> Vec<Family> {
    let mut families = kubevirt_families();
    let mut special = Family::new(
        "kubevirt_test_special_values",
        "Values JSON cannot write as numbers.",
        MetricType::Gauge,
    );
    for (kind, value) in [
        ("nan", f64::NAN),
        ("neg", f64::NEG_INFINITY),
        ("pos", f64::INFINITY),
    ] {
        special
            .samples
            .push(Sample::new(vec![("kind".into(), kind.into())], value));
    }
    families.push(special);
    families
}

async fn get(client: &reqwest::Client, url: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut request = client.get(url);
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// `name{labels} value` lines of the text format, self-metrics left out (they change).
fn text_series(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("kubevirt_metrics_sidecar_"))
        .map(str::to_owned)
        .collect()
}

/// The same lines rebuilt from the JSON document.
fn json_series(document: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for family in document["families"].as_array().unwrap() {
        let name = family["name"].as_str().unwrap();
        if name.starts_with("kubevirt_metrics_sidecar_") {
            continue;
        }
        for sample in family["samples"].as_array().unwrap() {
            let labels: Vec<String> = sample["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let v = v.as_str().unwrap();
                    let escaped = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{escaped}\"")
                })
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let value = match &sample["value"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => {
                    let v = n.as_f64().unwrap();
                    // The text format writes Go's %g; compare as numbers through it.
                    format!("{v}")
                }
                other => panic!("value {other}"),
            };
            let mut line = format!("{}{labels} {value}", sample["name"].as_str().unwrap());
            if let Some(ts) = sample.get("timestamp_ms") {
                line.push_str(&format!(" {}", ts.as_i64().unwrap()));
            }
            lines.push(line);
        }
    }
    lines
}

/// Text lines with their value rewritten through f64 so both sides print alike.
fn normalised(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|line| {
            // The value is the first field after the series (label values may hold spaces).
            let split = line
                .rfind('}')
                .map_or_else(|| line.find(' ').unwrap(), |i| i + 1);
            let (series, rest) = line.split_at(split);
            let mut fields = rest.split_whitespace();
            let value = fields.next().unwrap();
            let value = match value {
                "NaN" | "+Inf" | "-Inf" => value.to_owned(),
                v => format!("{}", v.parse::<f64>().unwrap()),
            };
            let ts: Vec<&str> = fields.collect();
            let mut out = format!("{series} {value}");
            for t in ts {
                out.push(' ');
                out.push_str(t);
            }
            out
        })
        .collect()
}

#[tokio::test]
async fn json_by_accept_and_query_matches_the_text_format() {
    let mut common = args(Mode::Full);
    common.interval = std::time::Duration::from_secs(3600);
    let collector = Arc::new(ScriptedCollector::new(families()));
    let running = runtime::start("test-metrics", &common, collector)
        .await
        .unwrap();
    let base = format!("http://{}", running.local_addr());
    let client = http_client();
    wait_ready(&client, &base).await;
    let url = format!("{base}/metrics");

    let (status, content_type, by_accept) = get(&client, &url, Some("application/json")).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let (status, content_type, by_query) = get(&client, &format!("{url}?format=json"), None).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    // Prometheus's own Accept header still gets OpenMetrics, a plain client text.
    let (_, content_type, _) = get(
        &client,
        &url,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    )
    .await;
    assert!(content_type.starts_with("application/openmetrics-text"));
    let (_, content_type, text) = get(&client, &url, None).await;
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    let (status, _, _) = get(&client, &format!("{url}?format=yaml"), None).await;
    assert_eq!(status, 400);

    let document: Value = serde_json::from_str(&by_accept).unwrap();
    let by_query: Value = serde_json::from_str(&by_query).unwrap();
    let strip_self = |doc: &Value| -> Vec<Value> {
        doc["families"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                !f["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("kubevirt_metrics_sidecar_")
            })
            .cloned()
            .collect()
    };
    assert_eq!(strip_self(&document), strip_self(&by_query));

    // The top level holds only "families"; each family exactly its four fields.
    assert_eq!(
        document.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["families"]
    );
    for family in document["families"].as_array().unwrap() {
        let keys: Vec<&String> = family.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["name", "type", "help", "samples"], "{family}");
        for sample in family["samples"].as_array().unwrap() {
            let keys: Vec<&String> = sample.as_object().unwrap().keys().collect();
            assert!(
                keys == ["name", "labels", "value"]
                    || keys == ["name", "labels", "value", "timestamp_ms"],
                "{sample}"
            );
        }
    }

    // Field by field, the families this collector produced.
    let family = |name: &str| -> Value {
        document["families"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no family {name}"))
    };
    assert_eq!(
        family("kubevirt_test_special_values"),
        json!({"name": "kubevirt_test_special_values", "type": "gauge",
               "help": "Values JSON cannot write as numbers.", "samples": [
            {"name": "kubevirt_test_special_values", "labels": {"kind": "nan"}, "value": "NaN"},
            {"name": "kubevirt_test_special_values", "labels": {"kind": "neg"}, "value": "-Inf"},
            {"name": "kubevirt_test_special_values", "labels": {"kind": "pos"}, "value": "+Inf"},
        ]})
    );
    let migration = family("kubevirt_vmi_migration_data_processed_bytes");
    assert_eq!(migration["type"], "gauge");
    assert_eq!(
        migration["samples"][0],
        json!({"name": "kubevirt_vmi_migration_data_processed_bytes",
               "labels": {"name": "fedora-1", "namespace": "default", "node": "node01"},
               "value": 1.0e9, "timestamp_ms": 1761300000123_i64})
    );
    let histogram = family("kubevirt_vmi_phase_transition_time_from_creation_seconds");
    assert_eq!(histogram["type"], "histogram");
    let names: Vec<&str> = histogram["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "kubevirt_vmi_phase_transition_time_from_creation_seconds_bucket",
            "kubevirt_vmi_phase_transition_time_from_creation_seconds_bucket",
            "kubevirt_vmi_phase_transition_time_from_creation_seconds_bucket",
            "kubevirt_vmi_phase_transition_time_from_creation_seconds_bucket",
            "kubevirt_vmi_phase_transition_time_from_creation_seconds_sum",
            "kubevirt_vmi_phase_transition_time_from_creation_seconds_count",
        ]
    );
    assert_eq!(
        histogram["samples"][3]["labels"],
        json!({"phase": "Running", "le": "+Inf"})
    );

    // Every series and value of the text format, in the same order.
    assert_eq!(
        normalised(json_series(&document)),
        normalised(text_series(&text))
    );
    running.stop().await.unwrap();
}
