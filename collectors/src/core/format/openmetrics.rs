//! OpenMetrics 1.0 text, as client_golang's `expfmt.MetricFamilyToOpenMetrics` (plus
//! `FinalizeOpenMetrics`) writes the same families.
//!
//! What differs from text 0.0.4, all as client_golang does it:
//! - a counter's `# HELP`/`# TYPE` name drops `_total`; its samples keep the full name;
//! - a **counter whose name does not end in `_total`** is typed `unknown` and its samples keep
//!   their name. KubeVirt has five (`kubevirt_vm_*_status_last_transition_timestamp_seconds`).
//!   Writing them as OpenMetrics counters would force a `_total` sample suffix, and Prometheus
//!   would then store `..._seconds_total` instead of the `..._seconds` it stores when it scrapes
//!   KubeVirt itself (KubeVirt's handler only speaks 0.0.4), breaking the Perses dashboards and
//!   every query on those names. `unknown` keeps the stored series name identical in both
//!   formats; only the metadata type differs (which PromQL ignores);
//! - untyped is `unknown`;
//! - floats get a `.0` when Go's `%g` would print neither `.` nor an exponent (`1.0`, `0.0`),
//!   including the `le` and `quantile` label values (`le="1.0"`), while bucket and count values
//!   are integers (`5`, not `5.0`);
//! - timestamps are seconds (`1.700000000123e+09`, Go's `%g` of milliseconds / 1000);
//! - HELP also escapes `"`; the body ends with `# EOF`.
//!
//! No `# UNIT` and no `_created` lines (client_golang writes neither by default).

use std::fmt::Write;

use crate::core::metric::{Family, MetricType, Sample, client_golang_order};

use super::text::{LabelBlocks, escape_label_value, format_float, write_labels, write_metadata};

/// The `Content-Type` of OpenMetrics 1.0.0 responses.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` when the client asked for OpenMetrics without a version (0.0.1).
pub const CONTENT_TYPE_0_0_1: &str = "application/openmetrics-text; version=0.0.1; charset=utf-8";

pub fn encode(families: &[Family]) -> String {
    let mut out = String::new();
    encode_into(&mut out, families);
    out
}

/// [`encode`], appended to `out` (see [`super::text::encode_into`]).
pub fn encode_into(out: &mut String, families: &[Family]) {
    out.reserve(estimate_len(families));
    let mut blocks = LabelBlocks::default();
    for (family, samples) in client_golang_order(families) {
        let (meta_name, type_word) = metadata(family);
        // HELP escapes `"` too: the label value escaping.
        write_metadata(out, meta_name, &family.help, type_word, escape_label_value);
        for sample in samples {
            write_sample(out, &mut blocks, family, sample);
        }
    }
    out.push_str("# EOF\n");
}

/// The name for `# HELP`/`# TYPE` and the OpenMetrics type word.
fn metadata(family: &Family) -> (&str, &'static str) {
    match family.kind {
        MetricType::Counter => match family.name.strip_suffix("_total") {
            Some(short) => (short, "counter"),
            None => (&family.name, "unknown"),
        },
        MetricType::Gauge => (&family.name, "gauge"),
        MetricType::Histogram => (&family.name, "histogram"),
        MetricType::Summary => (&family.name, "summary"),
        MetricType::Untyped => (&family.name, "unknown"),
    }
}

fn write_sample(out: &mut String, blocks: &mut LabelBlocks, family: &Family, sample: &Sample) {
    out.push_str(&family.name);
    out.push_str(sample.suffix);
    if family.kind.bound_label().is_some() {
        // The same set writes its bound label differently in a family of another kind.
        write_labels(out, &sample.labels, |out, name, value| {
            if is_bound_label(family.kind, name) {
                push_bound(out, value);
            } else {
                escape_label_value(out, value);
            }
        });
    } else {
        blocks.write(out, &sample.labels);
    }
    out.push(' ');
    if is_count(family.kind, sample.suffix) {
        push_count(out, sample.value);
    } else {
        push_om_float(out, sample.value);
    }
    if let Some(ms) = sample.timestamp_ms {
        out.push(' ');
        push_om_float(out, ms as f64 / 1000.0);
    }
    out.push('\n');
}

/// `le` of a histogram and `quantile` of a summary are floats, written OpenMetrics style.
fn is_bound_label(kind: MetricType, name: &str) -> bool {
    kind.bound_label() == Some(name)
}

fn push_bound(out: &mut String, value: &str) {
    match value.parse::<f64>() {
        Ok(bound) => push_om_float(out, bound),
        // Not a number: leave it as the producer wrote it rather than invent one.
        Err(_) => escape_label_value(out, value),
    }
}

/// Bucket and count samples are integers in client_golang (`writeUint`).
fn is_count(kind: MetricType, suffix: &str) -> bool {
    match kind {
        MetricType::Histogram => suffix == "_bucket" || suffix == "_count",
        MetricType::Summary => suffix == "_count",
        _ => false,
    }
}

fn push_count(out: &mut String, value: f64) {
    // 2^64: the first value a u64 cannot hold.
    const U64_LIMIT: f64 = 18_446_744_073_709_551_616.0;
    if value.fract() == 0.0 && (0.0..U64_LIMIT).contains(&value) {
        // Writing into a String cannot fail.
        let _ = write!(out, "{}", value as u64);
    } else {
        // A producer bug (fractional or negative count); still write valid syntax.
        push_om_float(out, value);
    }
}

/// Go's `%g` (as in text 0.0.4) with `.0` appended when it has neither `.` nor `e`.
fn push_om_float(out: &mut String, v: f64) {
    if v == 0.0 {
        // client_golang compares with == 0, so -0 is "0.0" too.
        out.push_str("0.0");
        return;
    }
    let formatted = format_float(v);
    let needs_point = !v.is_nan() && v.is_finite() && !formatted.contains(['.', 'e']);
    out.push_str(&formatted);
    if needs_point {
        out.push_str(".0");
    }
}

fn estimate_len(families: &[Family]) -> usize {
    families
        .iter()
        .map(|f| 64 + f.help.len() + f.samples.len() * (f.name.len() + 100))
        .sum::<usize>()
        + 8
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::core::metric::{MetricType, Sample};

    fn bucket(labels: &[(&'static str, &str)], le: &str, v: f64) -> Sample {
        let mut l: Vec<_> = labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        l.push(("le".into(), le.into()));
        let mut s = Sample::new(l, v);
        s.suffix = "_bucket";
        s
    }

    #[test]
    fn shared_label_sets_encode_as_copies_do() {
        let (shared, apart) = super::super::text::tests::shared_and_apart();
        let page = encode(&shared);
        assert_eq!(page, encode(&apart));
        // One set, two kinds of family: only the histogram's `le` is a float.
        assert!(page.contains("g{le=\"1\",name=\"a\"} 3.0\n"));
        assert!(page.contains("h_bucket{le=\"1.0\",name=\"a\"} 4\n"));
    }

    #[test]
    fn floats_follow_client_golang() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "0.0"),
            (1.0, "1.0"),
            (-1.0, "-1.0"),
            (42.0, "42.0"),
            (0.5, "0.5"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            push_om_float(&mut s, *v);
            assert_eq!(s, *want, "{v:?}");
        }
    }

    #[test]
    fn counters_gauges_and_timestamps() {
        let mut counter = Family::new(
            "kubevirt_vmi_network_receive_bytes_total",
            "Total network traffic received in bytes.",
            MetricType::Counter,
        );
        counter.samples.push(Sample::new(
            vec![
                ("interface".into(), "default".into()),
                ("name".into(), "vm\"1".into()),
            ],
            1024.0,
        ));
        let mut transition = Family::new(
            "kubevirt_vm_running_status_last_transition_timestamp_seconds",
            "Virtual Machine last transition timestamp to running status.",
            MetricType::Counter,
        );
        transition.samples.push(Sample::new(
            vec![
                ("name".into(), "vm1".into()),
                ("namespace".into(), "ns".into()),
            ],
            1.7e9,
        ));
        let mut migration = Family::new(
            "kubevirt_vmi_migration_data_processed_bytes",
            "The total Guest OS data processed and migrated to the new VM.",
            MetricType::Gauge,
        );
        migration.samples.push(
            Sample::new(vec![("name".into(), "vm1".into())], 3.0).with_timestamp(1_700_000_000_123),
        );
        let untyped = {
            let mut f = Family::new(
                "some_untyped",
                "Quote \" and \\ and\nnewline.",
                MetricType::Untyped,
            );
            f.samples.push(Sample::new(vec![], -0.25));
            f
        };

        let body = encode(&[counter, transition, migration, untyped]);
        assert_eq!(
            body,
            "# HELP kubevirt_vm_running_status_last_transition_timestamp_seconds Virtual Machine last transition timestamp to running status.\n\
             # TYPE kubevirt_vm_running_status_last_transition_timestamp_seconds unknown\n\
             kubevirt_vm_running_status_last_transition_timestamp_seconds{name=\"vm1\",namespace=\"ns\"} 1.7e+09\n\
             # HELP kubevirt_vmi_migration_data_processed_bytes The total Guest OS data processed and migrated to the new VM.\n\
             # TYPE kubevirt_vmi_migration_data_processed_bytes gauge\n\
             kubevirt_vmi_migration_data_processed_bytes{name=\"vm1\"} 3.0 1.700000000123e+09\n\
             # HELP kubevirt_vmi_network_receive_bytes Total network traffic received in bytes.\n\
             # TYPE kubevirt_vmi_network_receive_bytes counter\n\
             kubevirt_vmi_network_receive_bytes_total{interface=\"default\",name=\"vm\\\"1\"} 1024.0\n\
             # HELP some_untyped Quote \\\" and \\\\ and\\nnewline.\n\
             # TYPE some_untyped unknown\n\
             some_untyped -0.25\n\
             # EOF\n"
        );
    }

    #[test]
    fn histograms_and_summaries() {
        let mut h = Family::new(
            "kubevirt_vmi_phase_transition_time_seconds",
            "Histogram.",
            MetricType::Histogram,
        );
        h.samples.push(bucket(&[("phase", "Running")], "0.5", 1.0));
        h.samples.push(bucket(&[("phase", "Running")], "1", 2.0));
        h.samples
            .push(bucket(&[("phase", "Running")], "1e+06", 3.0));
        h.samples.push(bucket(&[("phase", "Running")], "+Inf", 3.0));
        let mut sum = Sample::new(vec![("phase".into(), "Running".into())], 4.0);
        sum.suffix = "_sum";
        let mut count = Sample::new(vec![("phase".into(), "Running".into())], 3.0);
        count.suffix = "_count";
        h.samples.push(sum);
        h.samples.push(count);

        let mut s = Family::new("go_gc_duration_seconds", "Summary.", MetricType::Summary);
        s.samples
            .push(Sample::new(vec![("quantile".into(), "0".into())], 0.0001));
        s.samples
            .push(Sample::new(vec![("quantile".into(), "1".into())], 0.002));
        let mut ssum = Sample::new(vec![], 0.5);
        ssum.suffix = "_sum";
        let mut scount = Sample::new(vec![], 10.0);
        scount.suffix = "_count";
        s.samples.push(ssum);
        s.samples.push(scount);

        let body = encode(&[h, s]);
        assert_eq!(
            body,
            "# HELP go_gc_duration_seconds Summary.\n\
             # TYPE go_gc_duration_seconds summary\n\
             go_gc_duration_seconds{quantile=\"0.0\"} 0.0001\n\
             go_gc_duration_seconds{quantile=\"1.0\"} 0.002\n\
             go_gc_duration_seconds_sum 0.5\n\
             go_gc_duration_seconds_count 10\n\
             # HELP kubevirt_vmi_phase_transition_time_seconds Histogram.\n\
             # TYPE kubevirt_vmi_phase_transition_time_seconds histogram\n\
             kubevirt_vmi_phase_transition_time_seconds_bucket{phase=\"Running\",le=\"0.5\"} 1\n\
             kubevirt_vmi_phase_transition_time_seconds_bucket{phase=\"Running\",le=\"1.0\"} 2\n\
             kubevirt_vmi_phase_transition_time_seconds_bucket{phase=\"Running\",le=\"1e+06\"} 3\n\
             kubevirt_vmi_phase_transition_time_seconds_bucket{phase=\"Running\",le=\"+Inf\"} 3\n\
             kubevirt_vmi_phase_transition_time_seconds_sum{phase=\"Running\"} 4.0\n\
             kubevirt_vmi_phase_transition_time_seconds_count{phase=\"Running\"} 3\n\
             # EOF\n"
        );
    }

    #[test]
    fn empty_input_is_just_eof() {
        assert_eq!(encode(&[]), "# EOF\n");
    }
}
