//! The metric data every collector produces and every exporter encodes.
//!
//! We keep our own small model rather than the `prometheus` crate's registry types: KubeVirt's
//! families are absolute counters read from libvirt (the registry cannot *set* a counter),
//! migration samples carry explicit timestamps, and the same data must leave as Prometheus
//! text, OpenMetrics and, later, OTLP, JSON and line protocol.

use std::borrow::Cow;

pub use smol_str::SmolStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl MetricType {
    /// The word used on a `# TYPE` line of the Prometheus text format 0.0.4.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
            Self::Untyped => "untyped",
        }
    }
}

/// A label name: static for the fixed ones, built for `kubernetes_vmi_label_*`.
///
/// Names and values are [`SmolStr`]s rather than `String`s: a pass renders about a hundred
/// series per VMI that share the VMI's identity labels, and a `SmolStr` keeps a short string
/// inline and shares a long one, so copying a label into another series allocates nothing.
pub type LabelName = SmolStr;

/// A label value; see [`LabelName`].
pub type LabelValue = SmolStr;

/// Label pairs in exposition order. Producers put them in client_golang's order (sorted by
/// name), so the bytes match what the KubeVirt component itself would serve.
pub type Labels = Vec<(LabelName, LabelValue)>;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Appended to the family name: `""`, or `_bucket`, `_sum`, `_count` for histograms
    /// and summaries.
    pub suffix: &'static str,
    pub labels: Labels,
    pub value: f64,
    /// Milliseconds since the Unix epoch, for samples that carry their own time.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    pub fn new(labels: Labels, value: f64) -> Self {
        Self {
            suffix: "",
            labels,
            value,
            timestamp_ms: None,
        }
    }

    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The full metric name as the 0.0.4 text format writes it on `# TYPE`
    /// (for KubeVirt's counters that includes `_total`).
    pub name: Cow<'static, str>,
    pub help: Cow<'static, str>,
    pub kind: MetricType,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        help: impl Into<Cow<'static, str>>,
        kind: MetricType,
    ) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Families and samples in the order client_golang's registry writes them: families sorted by
/// name, a family's series sorted by label values (positionally), then by timestamp with
/// untimestamped samples last; families without samples left out. Histogram and summary
/// series keep their `_bucket`/`_sum`/`_count` samples together (the sort ignores `le` and
/// `quantile` and is stable).
///
/// Every encoder walks this view, so KubeVirt's byte order holds whatever order the
/// producers used, and nothing is cloned.
pub fn client_golang_order(families: &[Family]) -> Vec<(&Family, Vec<&Sample>)> {
    let mut ordered: Vec<&Family> = families.iter().filter(|f| !f.is_empty()).collect();
    ordered.sort_by(|a, b| a.name.cmp(&b.name));
    ordered
        .into_iter()
        .map(|family| {
            let mut samples: Vec<&Sample> = family.samples.iter().collect();
            samples.sort_by(|a, b| compare_series(a, b));
            (family, samples)
        })
        .collect()
}

fn series_labels(sample: &Sample) -> impl Iterator<Item = &str> {
    sample
        .labels
        .iter()
        .filter(|(name, _)| name != "le" && name != "quantile")
        .map(|(_, value)| value.as_str())
}

fn compare_series(a: &Sample, b: &Sample) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let count = |s: &Sample| series_labels(s).count();
    let by_len = count(a).cmp(&count(b));
    if by_len != Ordering::Equal {
        return by_len;
    }
    let by_values = series_labels(a).cmp(series_labels(b));
    if by_values != Ordering::Equal {
        return by_values;
    }
    match (a.timestamp_ms, b.timestamp_ms) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}
