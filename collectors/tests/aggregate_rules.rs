//! The aggregation flags as a user gives them: rules that parse (and what they mean), rules
//! that do not (and the message naming the rule and the column), and `apply` on KubeVirt's
//! own families: what `/metrics` then shows.

#![allow(clippy::unwrap_used)]

use std::time::UNIX_EPOCH;

use kubevirt_metrics_collectors::core::aggregate::rule::parse;
use kubevirt_metrics_collectors::core::aggregate::{
    AggregateError, Aggregation, Grouping, Op, Selector,
};
use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::core::metric::{Family, MetricType};
use kubevirt_metrics_collectors::handler::families;
use kubevirt_metrics_collectors::handler::launcher::payload;
use kubevirt_metrics_collectors::handler::stats::{VmiIdentity, VmiStats};
use kubevirt_metrics_flags::ExportArgs;

fn labels(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn good_rules_parse_to_what_promql_means() {
    let rule = parse("sum by (namespace) (kubevirt_vmi_memory_resident_bytes)").unwrap();
    assert_eq!(rule.op, Op::Sum);
    assert_eq!(rule.grouping, Grouping::By(labels(&["namespace"])));
    assert!(
        matches!(&rule.selector, Selector::Name(n) if n == "kubevirt_vmi_memory_resident_bytes")
    );
    assert_eq!(rule.name, None);
    assert!(rule.keep_input);

    // Modifier after the expression, upper case, trailing comma, duplicates, name and drop.
    let rule =
        parse("AVG(kubevirt_vmi_vcpu_seconds_total) WITHOUT (vcpu, id, id,) as vcpu_avg drop")
            .unwrap();
    assert_eq!(rule.op, Op::Avg);
    assert_eq!(rule.grouping, Grouping::Without(labels(&["id", "vcpu"])));
    assert_eq!(rule.name.as_deref(), Some("vcpu_avg"));
    assert!(!rule.keep_input);

    // Regex selectors are anchored, like PromQL's.
    let rule =
        parse(r#"max by (namespace) ({__name__=~"kubevirt_vmi_network_.*_bytes_total"}) keep"#)
            .unwrap();
    assert!(
        rule.selector
            .matches("kubevirt_vmi_network_receive_bytes_total")
    );
    assert!(
        !rule
            .selector
            .matches("kubevirt_vmi_network_receive_bytes_total_x")
    );
    assert!(
        !rule
            .selector
            .matches("x_kubevirt_vmi_network_receive_bytes_total")
    );
    // Go escapes in strings, as in a PromQL query: `\\.` is the regex `\.`.
    let rule = parse(r#"count({__name__=~"a\\.b|c"})"#).unwrap();
    assert!(rule.selector.matches("c") && !rule.selector.matches("axb"));
    let rule = parse("min({__name__='exact_name'}) by () # comment").unwrap();
    assert!(matches!(&rule.selector, Selector::Name(n) if n == "exact_name"));
    assert_eq!(rule.grouping, Grouping::By(vec![]));
    let rule = parse("count (up)").unwrap();
    assert_eq!(rule.grouping, Grouping::By(vec![]));
}

#[test]
fn default_names_follow_the_recording_rule_convention() {
    let rule = parse("sum by (node, namespace) (kubevirt_vmi_memory_resident_bytes)").unwrap();
    assert_eq!(
        rule.output_name("kubevirt_vmi_memory_resident_bytes", Vec::new),
        "namespace_node:kubevirt_vmi_memory_resident_bytes:sum"
    );
    let rule = parse("sum(kubevirt_vmi_memory_resident_bytes)").unwrap();
    assert_eq!(
        rule.output_name("kubevirt_vmi_memory_resident_bytes", Vec::new),
        ":kubevirt_vmi_memory_resident_bytes:sum"
    );
    let rule = parse("max without (vcpu) (x)").unwrap();
    assert_eq!(
        rule.output_name("x", || vec!["name", "namespace"]),
        "name_namespace:x:max"
    );
}

/// (rule, column, words the message must contain)
const BAD_RULES: &[(&str, usize, &str)] = &[
    ("", 1, "empty rule"),
    ("median by (a) (x)", 1, "unknown operation `median`"),
    ("sum by (a (x)", 11, "expected `,` or `)`"),
    ("sum by (a) x", 12, "expected `(`"),
    ("sum by (a) (x", 14, "expected `)`"),
    ("sum by (a) (x) by (b)", 16, "a second `by`/`without`"),
    ("sum between (a) (x)", 5, "expected `by`, `without` or `(`"),
    ("sum by (__name__) (x)", 9, "`__name__` cannot be grouped"),
    ("sum by (a-b) (x)", 10, "unexpected character `-`"),
    (
        "sum by (a) (x{ns=\"a\"})",
        14,
        "label matchers are not supported",
    ),
    ("sum ({job=\"x\"})", 7, "only a `__name__` matcher"),
    ("sum ({__name__=~\"(\"})", 17, "invalid regex"),
    ("sum ({__name__=~\"x)", 17, "unterminated string"),
    ("sum ({__name__=\"1x\"})", 16, "is not a metric name"),
    (
        "sum ({__name__=~\"a.*\"}) as b",
        28,
        "needs an exact metric name",
    ),
    ("sum (x) as", 11, "expected a metric name after `as`"),
    ("sum (x) as 9x", 12, "`9x` is not a metric name"),
    ("sum (x) keep drop", 14, "unexpected `drop`"),
    ("sum (x) retain", 9, "expected `as NAME`, `keep` or `drop`"),
    ("sum ({__name__=~\"\\d\"})", 18, "unknown escape"),
];

#[test]
fn bad_rules_are_refused_with_the_rule_and_the_column() {
    for (text, column, words) in BAD_RULES {
        let args = ExportArgs {
            aggregate: vec![(*text).to_owned(), "sum(x)".to_owned()],
            ..ExportArgs::default()
        };
        if text.is_empty() {
            // An empty element of the env list is skipped, not an error.
            assert!(Aggregation::from_args(&args).is_ok());
            assert_eq!(parse(text).unwrap_err().message, "empty rule");
            continue;
        }
        let err = Aggregation::from_args(&args).unwrap_err();
        let message = err.to_string();
        match &err {
            AggregateError::Rule {
                origin,
                rule,
                column: at,
                ..
            } => {
                assert_eq!(origin, "--aggregate", "{text}");
                assert_eq!(rule, text, "{message}");
                assert_eq!(at, column, "{text}: {message}");
            }
            other => panic!("{text}: {other}"),
        }
        assert!(message.contains(words), "{text}: {message}");
        assert!(message.contains(text), "{message}");
    }
}

#[test]
fn rules_file_with_comments_and_the_line_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules");
    std::fs::write(
        &path,
        "# per-namespace memory\n\nsum by (namespace) (kubevirt_vmi_memory_resident_bytes)  # RSS\n   \n  avg without (id) (kubevirt_vmi_vcpu_seconds_total)\n",
    )
    .unwrap();
    let args = ExportArgs {
        aggregate_file: Some(path.clone()),
        ..ExportArgs::default()
    };
    let aggregation = Aggregation::from_args(&args).unwrap();
    assert_eq!(aggregation.rules().len(), 2);
    assert!(!aggregation.is_empty());

    std::fs::write(&path, "sum(x)\n# fine\nsum by (a) (y) as\n").unwrap();
    let message = Aggregation::from_args(&args).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{}:3: rule `sum by (a) (y) as`", path.display())),
        "{message}"
    );

    let missing = ExportArgs {
        aggregate_file: Some(dir.path().join("absent")),
        ..ExportArgs::default()
    };
    let message = Aggregation::from_args(&missing).unwrap_err().to_string();
    assert!(message.starts_with("--aggregate-file "), "{message}");
}

#[test]
fn drop_flags_are_checked() {
    for (families, dropped, words) in [
        (
            vec!["a(".to_owned()],
            vec![],
            "--drop-family: `a(` is not a valid regex",
        ),
        (
            vec![],
            vec!["le".to_owned()],
            "--drop-label: `le` cannot be dropped",
        ),
        (
            vec![],
            vec!["a-b".to_owned()],
            "--drop-label: `a-b` is not a label name",
        ),
    ] {
        let args = ExportArgs {
            drop_families: families,
            drop_labels: dropped,
            ..ExportArgs::default()
        };
        let message = Aggregation::from_args(&args).unwrap_err().to_string();
        assert!(message.contains(words), "{message}");
    }
    let twice = ExportArgs {
        aggregate: vec!["sum by (a) (x)".into(), "sum by (a) (x)".into()],
        ..ExportArgs::default()
    };
    let message = Aggregation::from_args(&twice).unwrap_err().to_string();
    assert!(
        message.contains("another rule already writes `a:x:sum`"),
        "{message}"
    );
    assert!(
        Aggregation::from_args(&ExportArgs::default())
            .unwrap()
            .is_empty()
    );
}

// ------------------------------------------------------------------ apply on KubeVirt's families

fn testdata(file: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/launcher-payloads")
            .join(file),
    )
    .unwrap()
}

/// Four VMIs in two namespaces, from the captured launcher payloads.
fn kubevirt_families() -> Vec<Family> {
    let db = payload::domain_stats_from_json(&testdata("captured-domainstats-db.json")).unwrap();
    let vmis: Vec<VmiStats> = [
        ("prod", "db-1"),
        ("prod", "db-2"),
        ("dev", "db-3"),
        ("dev", "db-4"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (namespace, name))| {
        let mut domain = db.clone();
        if let Some(memory) = domain.memory.as_mut() {
            // KiB, as libvirt reports it: 1, 2, 3, 4 MiB.
            memory.rss = Some(1024 * (i as u64 + 1));
        }
        VmiStats {
            vmi: VmiIdentity {
                namespace: (*namespace).to_owned(),
                name: (*name).to_owned(),
                node: "node01".to_owned(),
                labels: Default::default(),
                ..Default::default()
            }
            .into(),
            domain,
            filesystems: Vec::new(),
            dirty_rate_mbs: None,
            collected_at: UNIX_EPOCH,
        }
    })
    .collect();
    families::render(&vmis, &[])
}

fn args(rules: &[&str]) -> ExportArgs {
    ExportArgs {
        aggregate: rules.iter().map(|r| (*r).to_owned()).collect(),
        ..ExportArgs::default()
    }
}

#[test]
fn metrics_page_after_keep_drop_and_drop_family() {
    let input = kubevirt_families();
    let aggregation = Aggregation::from_args(&ExportArgs {
        drop_families: vec!["kubevirt_vmi_storage_.*".into()],
        ..args(&[
            "sum by (namespace) (kubevirt_vmi_memory_resident_bytes)",
            "sum by (namespace) (kubevirt_vmi_vcpu_seconds_total) drop",
        ])
    })
    .unwrap();
    let page = text::encode(&aggregation.apply(input.clone()));
    assert!(
        page.contains(
            "# TYPE namespace:kubevirt_vmi_memory_resident_bytes:sum gauge\n\
         namespace:kubevirt_vmi_memory_resident_bytes:sum{namespace=\"dev\"} 7.340032e+06\n\
         namespace:kubevirt_vmi_memory_resident_bytes:sum{namespace=\"prod\"} 3.145728e+06\n"
        ),
        "{page}"
    );
    assert!(page.contains("# HELP namespace:kubevirt_vmi_memory_resident_bytes:sum sum by (namespace) (kubevirt_vmi_memory_resident_bytes) over the sidecar's series"));
    // keep: the input is still there; drop: it is not; --drop-family: gone too.
    assert!(page.contains("\nkubevirt_vmi_memory_resident_bytes{"));
    assert!(page.contains("\nnamespace:kubevirt_vmi_vcpu_seconds_total:sum{namespace=\"dev\"} "));
    assert!(!page.contains("\nkubevirt_vmi_vcpu_seconds_total{"));
    assert!(!page.contains("kubevirt_vmi_storage_"));
    assert!(page.contains("\nkubevirt_vmi_network_receive_bytes_total{"));
    // Family order is the encoders' order, the families sorted by name.
    let names: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
}

#[test]
fn drop_label_merges_series_and_a_colliding_output_is_left_out() {
    let input = kubevirt_families();
    let aggregation = Aggregation::from_args(&ExportArgs {
        drop_labels: vec!["name".into()],
        ..args(&[
            "sum(kubevirt_vmi_memory_resident_bytes) as kubevirt_vmi_network_receive_bytes_total",
        ])
    })
    .unwrap();
    let out = aggregation.apply(input);
    let rss = out
        .iter()
        .find(|f| f.name == "kubevirt_vmi_memory_resident_bytes")
        .unwrap();
    let got: Vec<(String, f64)> = rss
        .samples
        .iter()
        .map(|s| {
            assert!(s.labels.iter().all(|(n, _)| n != "name"));
            let ns = s.labels.iter().find(|(n, _)| n == "namespace").unwrap();
            (ns.1.to_string(), s.value)
        })
        .collect();
    assert_eq!(
        got,
        [("prod".into(), 3_145_728.0), ("dev".into(), 7_340_032.0)]
    );
    // The rule's output would shadow a real family: the real one stays, counter and all.
    let same: Vec<&Family> = out
        .iter()
        .filter(|f| f.name == "kubevirt_vmi_network_receive_bytes_total")
        .collect();
    assert_eq!(same.len(), 1);
    assert_eq!(same[0].kind, MetricType::Counter);
}
