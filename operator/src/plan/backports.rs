//! Backports: the v1.9.0 recording rules and alerts a running KubeVirt release lacks.
//!
//! The data is KubeVirt's own, embedded from `operator/data/kubevirt-releases/` (copied from
//! the project's shared data; its README names the source: each release's
//! `SetupRules`+`BuildPrometheusRule`, and `docs/observability/metrics.md`, at tags v1.4.1,
//! v1.5.3, v1.6.6, v1.7.4, v1.8.4 and v1.9.0). `rules.tsv` says which rule exists in which
//! release, `metrics.tsv` which metric, and `v1.9.0/prometheusrule.yaml` holds the rules as
//! v1.9.0 builds them (expressions, `for`, labels, annotations).
//!
//! The rule, conservative on purpose (a backport must never collide with what the running
//! release records, and never alert on a metric nobody serves):
//! 1. The running release is found by its minor version in `status.observedKubeVirtVersion`
//!    (the data has the newest patch of each minor). A minor without data installs nothing.
//! 2. Candidates: every v1.9.0 rule whose name (any variant) the running release has neither
//!    as a rule nor, per its metrics.md, as a metric or recording rule. So a rule whose
//!    expression merely changed is never installed twice, and a name that was a metric in
//!    the running release (`kubevirt_vmi_migration_data_total_bytes` before v1.8.4) is not
//!    recorded over it.
//! 3. A candidate is installed only when every series its expression reads is available:
//!    - a KubeVirt metric the running release serves (its metrics.md lists it);
//!    - a series recorded by a rule the running release has, or by another installed
//!      backport (worked out to a fixed point);
//!    - a `kubevirt_vmi_*` family of the virt-handler sidecar (the collectors' handler
//!      families), when the policy injects that sidecar: in `complement` mode it serves
//!      exactly the families virt-handler lacks, in `full` mode all;
//!    - any other name not containing `kubevirt` (kube-state-metrics, cAdvisor, apiserver
//!      series), which KubeVirt's own rules assume just the same.
//!
//!    Any other `kubevirt` name makes the candidate skipped, with the name in status.
//! 4. Expressions as v1.9.0 builds them for namespace `kubevirt`; `namespace='kubevirt'`
//!    matchers are rewritten to the policy's namespace, as KubeVirt's generator would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use serde_json::Value;

use super::promql;

/// The releases the data covers, oldest first.
pub const RELEASES: [&str; 6] = ["v1.4.1", "v1.5.3", "v1.6.6", "v1.7.4", "v1.8.4", "v1.9.0"];

const RULES_TSV: &str = include_str!("../../data/kubevirt-releases/rules.tsv");
const METRICS_TSV: &str = include_str!("../../data/kubevirt-releases/metrics.tsv");
const V1_9_0_RULES: &str = include_str!("../../data/kubevirt-releases/v1.9.0/prometheusrule.yaml");

#[derive(Debug, thiserror::Error)]
pub enum BackportError {
    #[error("embedded KubeVirt release data is malformed: {0}")]
    Data(String),
}

/// Recording rule or alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleKind {
    Record,
    Alert,
}

/// A row of `rules.tsv`: one rule's life across the releases.
#[derive(Debug, Clone)]
struct RuleRow {
    name: String,
    first: usize,
    last: usize,
}

/// A row of `metrics.tsv`.
#[derive(Debug, Clone)]
struct MetricRow {
    name: String,
    first: usize,
    last: usize,
}

/// One rule of v1.9.0's PrometheusRule, as built.
#[derive(Debug, Clone)]
pub struct SourceRule {
    pub kind: RuleKind,
    pub name: String,
    /// The rule object (`record`/`alert`, `expr`, `for`, `labels`, `annotations`).
    pub body: Value,
}

impl SourceRule {
    pub fn expr(&self) -> &str {
        self.body.get("expr").and_then(Value::as_str).unwrap_or("")
    }
}

/// The embedded data, parsed once.
struct Data {
    rules: Vec<RuleRow>,
    metrics: Vec<MetricRow>,
    source: Vec<SourceRule>,
}

static DATA: LazyLock<Result<Data, String>> = LazyLock::new(|| load().map_err(|e| e.to_string()));

fn data() -> Result<&'static Data, BackportError> {
    DATA.as_ref().map_err(|e| BackportError::Data(e.clone()))
}

fn release_index(tag: &str) -> Result<usize, BackportError> {
    RELEASES
        .iter()
        .position(|r| *r == tag)
        .ok_or_else(|| BackportError::Data(format!("unknown release {tag:?}")))
}

fn load() -> Result<Data, BackportError> {
    let mut rules = Vec::new();
    for line in RULES_TSV.lines().skip(1).filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [kind, name, first, last, ..] = cols.as_slice() else {
            return Err(BackportError::Data(format!("rules.tsv line {line:?}")));
        };
        if !matches!(*kind, "alert" | "record") {
            return Err(BackportError::Data(format!("rules.tsv kind {kind:?}")));
        }
        rules.push(RuleRow {
            name: (*name).to_owned(),
            first: release_index(first)?,
            last: release_index(last)?,
        });
    }
    let mut metrics = Vec::new();
    for line in METRICS_TSV.lines().skip(1).filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [name, _type, first, last, ..] = cols.as_slice() else {
            return Err(BackportError::Data(format!("metrics.tsv line {line:?}")));
        };
        metrics.push(MetricRow {
            name: (*name).to_owned(),
            first: release_index(first)?,
            last: release_index(last)?,
        });
    }
    let object: Value = serde_yaml::from_str(V1_9_0_RULES)
        .map_err(|e| BackportError::Data(format!("v1.9.0/prometheusrule.yaml: {e}")))?;
    let mut source = Vec::new();
    let groups = object
        .pointer("/spec/groups")
        .and_then(Value::as_array)
        .ok_or_else(|| BackportError::Data("v1.9.0 PrometheusRule has no groups".into()))?;
    for group in groups {
        for rule in group
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (kind, name) = match (rule.get("record"), rule.get("alert")) {
                (Some(Value::String(n)), None) => (RuleKind::Record, n.clone()),
                (None, Some(Value::String(n))) => (RuleKind::Alert, n.clone()),
                _ => return Err(BackportError::Data(format!("rule without name: {rule}"))),
            };
            source.push(SourceRule {
                kind,
                name,
                body: rule.clone(),
            });
        }
    }
    Ok(Data {
        rules,
        metrics,
        source,
    })
}

/// Which data release describes a running KubeVirt version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseMatch {
    /// The data's release of the same minor (`v1.6.6` for `v1.6.2`).
    Known { data_release: &'static str },
    /// No data for this minor (e.g. v1.3, v1.10), or the version cannot be read.
    Unknown,
}

/// `v1.6.6`, `1.6.6`, `v1.6.6-rc.1`, `v1.6.6-12-gabcdef` → the data release of minor 1.6.
pub fn match_release(observed: &str) -> ReleaseMatch {
    let version = observed.trim().trim_start_matches('v');
    let mut parts = version.split(['.', '-', '+']);
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
        return ReleaseMatch::Unknown;
    };
    if major.parse::<u32>().is_err() || minor.parse::<u32>().is_err() {
        return ReleaseMatch::Unknown;
    }
    let prefix = format!("v{major}.{minor}.");
    match RELEASES.iter().find(|r| r.starts_with(&prefix)) {
        Some(release) => ReleaseMatch::Known {
            data_release: release,
        },
        None => ReleaseMatch::Unknown,
    }
}

/// What the backport decision needs besides the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackportInputs<'a> {
    /// The data release describing the running KubeVirt (from [`match_release`]).
    pub data_release: &'a str,
    /// Whether the policy injects the virt-handler sidecar (which serves the handler's
    /// `kubevirt_vmi_*` families).
    pub handler_sidecar: bool,
    /// The policy's namespace (KubeVirt's).
    pub namespace: &'a str,
}

/// A rule left out, and the series it lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub kind: RuleKind,
    pub name: String,
    pub missing: Vec<String>,
}

/// The decision: rules to install (in v1.9.0's order, recording rules first) and those left
/// out for a missing input.
#[derive(Debug, Clone)]
pub struct Backports {
    pub data_release: String,
    pub rules: Vec<SourceRule>,
    pub skipped: Vec<Skipped>,
}

impl Backports {
    /// Distinct names of the installed rules of `kind`.
    pub fn names(&self, kind: RuleKind) -> BTreeSet<&str> {
        self.rules
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.name.as_str())
            .collect()
    }
}

/// Whether the running release (index `at`) has `name` as a rule of any kind or variant.
fn release_has_rule(data: &Data, name: &str, at: usize) -> bool {
    data.rules
        .iter()
        .any(|r| r.name == name && r.first <= at && at <= r.last)
}

/// Whether the running release's metrics.md lists `name` (metric or recording rule).
fn release_lists_metric(data: &Data, name: &str, at: usize) -> bool {
    data.metrics
        .iter()
        .any(|m| m.name == name && m.first <= at && at <= m.last)
}

/// The backports for `inputs` (see the module doc for the rule).
pub fn decide(inputs: &BackportInputs<'_>) -> Result<Backports, BackportError> {
    let data = data()?;
    let at = release_index(inputs.data_release)?;
    let handler_families: BTreeSet<&str> = if inputs.handler_sidecar {
        kubevirt_metrics_flags::catalog::HANDLER_FAMILIES
            .iter()
            .copied()
            .collect()
    } else {
        BTreeSet::new()
    };
    let candidates: Vec<&SourceRule> = data
        .source
        .iter()
        .filter(|r| {
            !release_has_rule(data, &r.name, at) && !release_lists_metric(data, &r.name, at)
        })
        .collect();
    let inputs_of: BTreeMap<usize, BTreeSet<String>> = candidates
        .iter()
        .enumerate()
        .map(|(i, r)| (i, promql::metric_names(r.expr())))
        .collect();
    let mut recorded: BTreeSet<String> = BTreeSet::new();
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    let available = |name: &str, recorded: &BTreeSet<String>| {
        !name.contains("kubevirt")
            || release_lists_metric(data, name, at)
            || release_has_rule(data, name, at)
            || recorded.contains(name)
            || handler_families.contains(name)
    };
    loop {
        let before = chosen.len();
        for (i, rule) in candidates.iter().enumerate() {
            if chosen.contains(&i) {
                continue;
            }
            let ready = inputs_of
                .get(&i)
                .is_some_and(|names| names.iter().all(|n| available(n, &recorded)));
            if ready {
                chosen.insert(i);
                if rule.kind == RuleKind::Record {
                    recorded.insert(rule.name.clone());
                }
            }
        }
        if chosen.len() == before {
            break;
        }
    }
    let mut rules = Vec::new();
    let mut skipped = Vec::new();
    for (i, rule) in candidates.iter().enumerate() {
        if chosen.contains(&i) {
            let mut rule = (*rule).clone();
            localize(&mut rule.body, inputs.namespace);
            rules.push(rule);
        } else {
            let missing = inputs_of
                .get(&i)
                .map(|names| {
                    names
                        .iter()
                        .filter(|n| !available(n, &recorded))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            skipped.push(Skipped {
                kind: rule.kind,
                name: rule.name.clone(),
                missing,
            });
        }
    }
    skipped.dedup_by(|a, b| a.kind == b.kind && a.name == b.name);
    Ok(Backports {
        data_release: inputs.data_release.to_owned(),
        rules,
        skipped,
    })
}

/// `namespace='kubevirt'` / `namespace="kubevirt"` → the policy's namespace.
fn localize(rule: &mut Value, namespace: &str) {
    if namespace == "kubevirt" {
        return;
    }
    if let Some(Value::String(expr)) = rule.get_mut("expr") {
        *expr = expr
            .replace("namespace='kubevirt'", &format!("namespace='{namespace}'"))
            .replace(
                "namespace=\"kubevirt\"",
                &format!("namespace=\"{namespace}\""),
            );
    }
}

/// The rule groups of the backport PrometheusRule: recording rules, then alerts (the two
/// groups v1.9.0 uses, renamed so they never clash with KubeVirt's own group names).
pub fn rule_groups(backports: &Backports) -> Value {
    let of = |kind: RuleKind| -> Vec<Value> {
        backports
            .rules
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.body.clone())
            .collect()
    };
    let mut groups = Vec::new();
    let records = of(RuleKind::Record);
    if !records.is_empty() {
        groups.push(serde_json::json!({
            "name": "kubevirt-backports-recordingRules.rules",
            "rules": records,
        }));
    }
    let alerts = of(RuleKind::Alert);
    if !alerts.is_empty() {
        groups.push(serde_json::json!({
            "name": "kubevirt-backports-alerts.rules",
            "rules": alerts,
        }));
    }
    Value::Array(groups)
}

#[cfg(test)]
#[path = "backports_tests.rs"]
mod tests;
