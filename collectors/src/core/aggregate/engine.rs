//! Evaluating one rule over one pass's families, with PromQL's semantics at one instant.
//!
//! What Prometheus would hold after scraping these families, and so what we reproduce:
//! - a series is one metric name (family name + `_bucket`/`_sum`/`_count`) and one label set;
//!   a label with an empty value is no label at all;
//! - when a series appears more than once (migration samples carry their own timestamps),
//!   only its newest sample is visible at the instant; a sample without a timestamp is the
//!   newest (Prometheus stamps it with the scrape time);
//! - `sum`, `avg`, `min`, `max`, `count` as PromQL 2.x's `aggregation()` computes them:
//!   `sum` adds in series order (NaN and opposite infinities give NaN), `avg` is the running
//!   mean PromQL keeps (equal to sum/count up to rounding, and well-defined with infinities),
//!   `min`/`max` ignore NaN unless every value is NaN, `count` counts series.

use foldhash::HashMap;

use crate::core::metric::{Family, LabelName, LabelValue, Labels, MetricType, Sample};

use super::rule::{Grouping, Op, Rule};

/// The running value of one output series.
#[derive(Debug, Clone, Copy)]
struct Accumulator {
    value: f64,
    mean: f64,
    count: u64,
}

impl Accumulator {
    fn new(v: f64) -> Self {
        Self {
            value: v,
            mean: v,
            count: 1,
        }
    }

    /// One more series, as PromQL's `aggregation()` folds it in.
    fn add(&mut self, op: Op, v: f64) {
        self.count += 1;
        match op {
            Op::Sum => self.value += v,
            Op::Min => {
                if self.value > v || self.value.is_nan() {
                    self.value = v;
                }
            }
            Op::Max => {
                if self.value < v || self.value.is_nan() {
                    self.value = v;
                }
            }
            Op::Avg => {
                if self.mean.is_infinite() {
                    // An infinite mean stays as it is unless an opposite infinity or a NaN
                    // arrives (PromQL avoids Inf - Inf turning a correct Inf into NaN).
                    if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                        return;
                    }
                    if v.is_finite() {
                        return;
                    }
                }
                let n = self.count as f64;
                self.mean += v / n - self.mean / n;
            }
            Op::Count => {}
        }
    }

    fn result(&self, op: Op) -> f64 {
        match op {
            Op::Sum | Op::Min | Op::Max => self.value,
            Op::Avg => self.mean,
            Op::Count => self.count as f64,
        }
    }
}

/// One output series being built: the first input sample of its group stands for its labels.
struct Group<'a> {
    first: &'a Sample,
    acc: Accumulator,
    /// The newest input timestamp, while every input had one.
    timestamp_ms: Option<i64>,
}

/// The metric names Prometheus would store for each family (family name + sample suffix),
/// computed once per pass and shared by every rule.
pub fn metric_names(families: &[Family]) -> Vec<Vec<(&'static str, String)>> {
    families
        .iter()
        .map(|family| {
            suffixes(family)
                .into_iter()
                .map(|suffix| (suffix, format!("{}{suffix}", family.name)))
                .collect()
        })
        .collect()
}

/// The output families of `rule` over `families` (with their [`metric_names`]), one per
/// matched metric name, and the indices of the input families it read (for `drop`).
pub fn evaluate(
    rule: &Rule,
    families: &[Family],
    names: &[Vec<(&'static str, String)>],
    read: &mut Vec<usize>,
) -> Vec<Family> {
    let mut out = Vec::new();
    for (index, (family, metrics)) in families.iter().zip(names).enumerate() {
        let mut matched = false;
        for (suffix, metric) in metrics {
            if !rule.selector.matches(metric) {
                continue;
            }
            matched = true;
            let samples: Vec<&Sample> = family
                .samples
                .iter()
                .filter(|s| s.suffix == *suffix)
                .collect();
            if let Some(output) = aggregate(rule, metric, &newest_only(samples)) {
                out.push(output);
            }
        }
        if matched {
            read.push(index);
        }
    }
    out
}

/// The distinct sample suffixes of a family, in first-seen order (at most four). Samples
/// come grouped, so comparing with the previous suffix's pointer settles almost all.
fn suffixes(family: &Family) -> Vec<&'static str> {
    let mut found: Vec<&'static str> = Vec::with_capacity(4);
    let mut previous: Option<&'static str> = None;
    for sample in &family.samples {
        if previous.is_some_and(|p| std::ptr::eq(p, sample.suffix)) {
            continue;
        }
        previous = Some(sample.suffix);
        if !found.contains(&sample.suffix) {
            found.push(sample.suffix);
        }
    }
    found
}

/// Labels as Prometheus stores them: without the empty-valued ones.
fn present(labels: &Labels) -> impl Iterator<Item = &(LabelName, LabelValue)> {
    labels.iter().filter(|(_, value)| !value.is_empty())
}

/// The samples PromQL sees at one instant: the newest of each series. Families without
/// timestamped samples (all but the migration ones) pass through untouched.
fn newest_only(samples: Vec<&Sample>) -> Vec<&Sample> {
    if samples.iter().all(|s| s.timestamp_ms.is_none()) {
        return samples;
    }
    let newness = |s: &Sample| s.timestamp_ms.unwrap_or(i64::MAX);
    let mut newest: HashMap<Vec<(&str, &str)>, usize> = HashMap::default();
    let mut kept: Vec<&Sample> = Vec::with_capacity(samples.len());
    for sample in samples {
        let key: Vec<(&str, &str)> = present(&sample.labels)
            .map(|(n, v)| (n.as_ref(), v.as_str()))
            .collect();
        match newest.get(&key) {
            Some(&at) => {
                if newness(sample) >= newness(kept[at]) {
                    kept[at] = sample;
                }
            }
            None => {
                newest.insert(key, kept.len());
                kept.push(sample);
            }
        }
    }
    kept
}

/// The rule over one metric's samples; `None` when there are none.
fn aggregate(rule: &Rule, metric: &str, samples: &[&Sample]) -> Option<Family> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut index: HashMap<Vec<&str>, usize> = HashMap::default();
    let mut key: Vec<&str> = Vec::new();
    for &sample in samples {
        key.clear();
        group_key(&rule.grouping, sample, &mut key);
        match index.get(key.as_slice()) {
            Some(&at) => {
                let group = &mut groups[at];
                group.acc.add(rule.op, sample.value);
                group.timestamp_ms = match (group.timestamp_ms, sample.timestamp_ms) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            None => {
                index.insert(key.clone(), groups.len());
                groups.push(Group {
                    first: sample,
                    acc: Accumulator::new(sample.value),
                    timestamp_ms: sample.timestamp_ms,
                });
            }
        }
    }
    if groups.is_empty() {
        return None;
    }
    let mut out_samples: Vec<Sample> = groups
        .iter()
        .map(|group| Sample {
            suffix: "",
            labels: output_labels(&rule.grouping, group.first),
            value: group.acc.result(rule.op),
            timestamp_ms: group.timestamp_ms,
        })
        .collect();
    out_samples.sort_by(compare_labels);
    let name = rule.output_name(metric, || level_labels(&out_samples));
    let mut family = Family::new(
        name,
        format!(
            "{} over the sidecar's series at collection time (aggregation rule `{}`).",
            rule.expression(metric),
            rule.text
        ),
        MetricType::Gauge,
    );
    family.samples = out_samples;
    Some(family)
}

/// The values that decide a sample's group: for `by`, the listed labels' values (empty when
/// absent, as PromQL groups them); for `without`, every other present label, name and value.
fn group_key<'a>(grouping: &Grouping, sample: &'a Sample, key: &mut Vec<&'a str>) {
    match grouping {
        Grouping::By(labels) => {
            for wanted in labels {
                let value = sample
                    .labels
                    .iter()
                    .find(|(name, _)| name == wanted)
                    .map_or("", |(_, value)| value.as_str());
                key.push(value);
            }
        }
        Grouping::Without(labels) => {
            for (name, value) in present(&sample.labels) {
                if !labels.iter().any(|l| l == name) {
                    key.push(name);
                    key.push(value);
                }
            }
        }
    }
}

/// The output series' labels, sorted by name as Prometheus keeps them.
fn output_labels(grouping: &Grouping, sample: &Sample) -> Labels {
    let mut labels: Vec<_> = match grouping {
        Grouping::By(wanted) => wanted
            .iter()
            .filter_map(|w| {
                present(&sample.labels)
                    .find(|(name, _)| name == w)
                    .map(|(name, value)| (name.clone(), value.clone()))
            })
            .collect(),
        Grouping::Without(dropped) => present(&sample.labels)
            .filter(|(name, _)| !dropped.iter().any(|d| d == name))
            .cloned()
            .collect(),
    };
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels.into()
}

/// The level of a `without` rule's default name: the labels its output keeps, sorted,
/// leaving out `kubernetes_vmi_label_*` (copies of each VMI's own labels: they differ from
/// VMI to VMI, as a target's labels do, which the convention leaves out of the level).
fn level_labels(samples: &[Sample]) -> Vec<&str> {
    let names: std::collections::BTreeSet<&str> = samples
        .iter()
        .flat_map(|s| s.labels.iter().map(|(name, _)| name.as_str()))
        .filter(|name| !name.starts_with("kubernetes_vmi_label_"))
        .collect();
    names.into_iter().collect()
}

/// client_golang's series order: by the number of labels, then by the values in turn.
fn compare_labels(a: &Sample, b: &Sample) -> std::cmp::Ordering {
    fn values(s: &Sample) -> impl Iterator<Item = &str> {
        s.labels.iter().map(|(_, v)| v.as_str())
    }
    a.labels
        .len()
        .cmp(&b.labels.len())
        .then_with(|| values(a).cmp(values(b)))
        .then_with(|| a.timestamp_ms.cmp(&b.timestamp_ms))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::core::aggregate::rule::parse;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(n, v)| (LabelName::from(*n), LabelValue::from(*v)))
            .collect()
    }

    fn family(name: &str, kind: MetricType, samples: Vec<Sample>) -> Family {
        let mut f = Family::new(name.to_owned(), "help", kind);
        f.samples = samples;
        f
    }

    fn vcpu(ns: &str, vmi: &str, id: &str, v: f64) -> Sample {
        Sample::new(
            labels(&[
                ("id", id),
                ("name", vmi),
                ("namespace", ns),
                ("state", "running"),
            ]),
            v,
        )
    }

    fn input() -> Vec<Family> {
        vec![family(
            "vcpu_seconds_total",
            MetricType::Counter,
            vec![
                vcpu("a", "x", "0", 1.0),
                vcpu("a", "x", "1", 2.0),
                vcpu("a", "y", "0", 4.0),
                vcpu("b", "z", "0", 8.0),
            ],
        )]
    }

    fn run(rule: &str, families: &[Family]) -> Vec<Family> {
        evaluate(
            &parse(rule).unwrap(),
            families,
            &metric_names(families),
            &mut Vec::new(),
        )
    }

    fn series(f: &Family) -> Vec<(Vec<(String, String)>, f64)> {
        f.samples
            .iter()
            .map(|s| {
                (
                    s.labels
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect(),
                    s.value,
                )
            })
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn sum_by_keeps_only_the_listed_labels() {
        let out = run("sum by (namespace) (vcpu_seconds_total)", &input());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "namespace:vcpu_seconds_total:sum");
        assert_eq!(out[0].kind, MetricType::Gauge);
        assert_eq!(
            series(&out[0]),
            vec![
                (pairs(&[("namespace", "a")]), 7.0),
                (pairs(&[("namespace", "b")]), 8.0)
            ]
        );
    }

    #[test]
    fn every_operation() {
        for (op, a, b) in [
            ("sum", 7.0, 8.0),
            ("avg", 7.0 / 3.0, 8.0),
            ("min", 1.0, 8.0),
            ("max", 4.0, 8.0),
            ("count", 3.0, 1.0),
        ] {
            let out = run(
                &format!("{op} by (namespace) (vcpu_seconds_total)"),
                &input(),
            );
            let got = series(&out[0]);
            assert!((got[0].1 - a).abs() < 1e-12, "{op}: {got:?}");
            assert!((got[1].1 - b).abs() < 1e-12, "{op}: {got:?}");
            assert_eq!(out[0].name, format!("namespace:vcpu_seconds_total:{op}"));
        }
    }

    #[test]
    fn without_keeps_every_other_label_and_names_the_level_after_them() {
        let out = run("avg without (id) (vcpu_seconds_total)", &input());
        assert_eq!(out[0].name, "name_namespace_state:vcpu_seconds_total:avg");
        assert_eq!(
            series(&out[0]),
            vec![
                (
                    pairs(&[("name", "x"), ("namespace", "a"), ("state", "running")]),
                    1.5
                ),
                (
                    pairs(&[("name", "y"), ("namespace", "a"), ("state", "running")]),
                    4.0
                ),
                (
                    pairs(&[("name", "z"), ("namespace", "b"), ("state", "running")]),
                    8.0
                ),
            ]
        );
    }

    #[test]
    fn no_grouping_gives_one_series_and_an_empty_level() {
        let out = run("count(vcpu_seconds_total)", &input());
        assert_eq!(out[0].name, ":vcpu_seconds_total:count");
        assert_eq!(series(&out[0]), vec![(vec![], 4.0)]);
    }

    #[test]
    fn empty_and_missing_labels_group_together_and_are_not_output() {
        let families = vec![family(
            "g",
            MetricType::Gauge,
            vec![
                Sample::new(labels(&[("ns", ""), ("pod", "p1")]), 1.0),
                Sample::new(labels(&[("pod", "p2")]), 2.0),
                Sample::new(labels(&[("ns", "x"), ("pod", "p3")]), 4.0),
            ],
        )];
        let out = run("sum by (ns) (g) as g_by_ns", &families);
        assert_eq!(out[0].name, "g_by_ns");
        assert_eq!(
            series(&out[0]),
            vec![(vec![], 3.0), (pairs(&[("ns", "x")]), 4.0)]
        );
    }

    #[test]
    fn nan_and_infinities_as_promql() {
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        let families = vec![family(
            "g",
            MetricType::Gauge,
            vec![
                Sample::new(labels(&[("k", "nan-first"), ("i", "1")]), nan),
                Sample::new(labels(&[("k", "nan-first"), ("i", "2")]), 5.0),
                Sample::new(labels(&[("k", "nan-first"), ("i", "3")]), 3.0),
                Sample::new(labels(&[("k", "all-nan"), ("i", "1")]), nan),
                Sample::new(labels(&[("k", "inf"), ("i", "1")]), inf),
                Sample::new(labels(&[("k", "inf"), ("i", "2")]), 1.0),
                Sample::new(labels(&[("k", "inf-minus-inf"), ("i", "1")]), inf),
                Sample::new(labels(&[("k", "inf-minus-inf"), ("i", "2")]), -inf),
            ],
        )];
        let value = |op: &str, k: &str| {
            let out = run(&format!("{op} by (k) (g)"), &families);
            out[0]
                .samples
                .iter()
                .find(|s| s.labels[0].1 == k)
                .unwrap()
                .value
        };
        assert_eq!(value("min", "nan-first"), 3.0);
        assert_eq!(value("max", "nan-first"), 5.0);
        assert!(value("sum", "nan-first").is_nan());
        assert!(value("avg", "nan-first").is_nan());
        assert!(value("min", "all-nan").is_nan());
        assert_eq!(value("count", "all-nan"), 1.0);
        assert_eq!(value("avg", "inf"), inf);
        assert_eq!(value("sum", "inf"), inf);
        assert!(value("sum", "inf-minus-inf").is_nan());
        assert!(value("avg", "inf-minus-inf").is_nan());
    }

    #[test]
    fn histograms_aggregate_per_flat_metric_name() {
        let bucket = |ns: &str, le: &str, v: f64| Sample {
            suffix: "_bucket",
            ..Sample::new(labels(&[("le", le), ("namespace", ns)]), v)
        };
        let count = |ns: &str, v: f64| Sample {
            suffix: "_count",
            ..Sample::new(labels(&[("namespace", ns)]), v)
        };
        let families = vec![family(
            "h",
            MetricType::Histogram,
            vec![
                bucket("a", "1", 1.0),
                bucket("a", "+Inf", 2.0),
                count("a", 2.0),
                bucket("b", "1", 3.0),
                bucket("b", "+Inf", 5.0),
                count("b", 5.0),
            ],
        )];
        let out = run("sum by (le) ({__name__=~\"h_.*\"})", &families);
        let names: Vec<&str> = out.iter().map(|f| f.name.as_ref()).collect();
        assert_eq!(names, ["le:h_bucket:sum", "le:h_count:sum"]);
        assert_eq!(
            series(&out[0]),
            vec![
                (pairs(&[("le", "+Inf")]), 7.0),
                (pairs(&[("le", "1")]), 4.0)
            ]
        );
        assert_eq!(series(&out[1]), vec![(vec![], 7.0)]);
        // The family name alone is no series name, as in PromQL.
        assert!(run("sum(h)", &families).is_empty());
    }

    #[test]
    fn only_the_newest_sample_of_a_series_counts() {
        let families = vec![family(
            "m",
            MetricType::Gauge,
            vec![
                Sample::new(labels(&[("vmi", "a")]), 1.0).with_timestamp(1000),
                Sample::new(labels(&[("vmi", "a")]), 2.0).with_timestamp(3000),
                Sample::new(labels(&[("vmi", "b")]), 10.0).with_timestamp(2000),
            ],
        )];
        let out = run("sum(m)", &families);
        assert_eq!(out[0].samples[0].value, 12.0);
        assert_eq!(out[0].samples[0].timestamp_ms, Some(3000));
    }

    #[test]
    fn a_regex_selector_aggregates_each_matched_metric_on_its_own() {
        let families = vec![
            family(
                "net_rx_bytes_total",
                MetricType::Counter,
                vec![Sample::new(labels(&[("namespace", "a")]), 1.0)],
            ),
            family(
                "net_tx_bytes_total",
                MetricType::Counter,
                vec![Sample::new(labels(&[("namespace", "a")]), 2.0)],
            ),
            family(
                "net_tx_bytes_total_other",
                MetricType::Counter,
                vec![Sample::new(labels(&[("namespace", "a")]), 4.0)],
            ),
        ];
        let mut read = Vec::new();
        let out = evaluate(
            &parse(r#"sum by (namespace) ({__name__=~"net_.x_bytes_total"})"#).unwrap(),
            &families,
            &metric_names(&families),
            &mut read,
        );
        assert_eq!(read, [0, 1], "anchored: the third does not match");
        assert_eq!(out[0].name, "namespace:net_rx_bytes_total:sum");
        assert_eq!(out[0].samples[0].value, 1.0);
        assert_eq!(out[1].name, "namespace:net_tx_bytes_total:sum");
        assert_eq!(out[1].samples[0].value, 2.0);
    }
}
