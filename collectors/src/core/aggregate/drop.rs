//! `--drop-label`: labels removed from every family before the rules read them.
//!
//! Removing a label can make two series one. They are merged the way their type allows:
//! counters, gauges and untyped series are summed (a counter per VMI without the VMI label is
//! the node's counter), histograms too (bucket by bucket, `_sum` and `_count`: the merged
//! histogram of both); a summary's `_sum` and `_count` are summed and its quantiles, which
//! cannot be merged, are left out for the merged series. Samples with different timestamps
//! stay apart.

use foldhash::HashMap;

use crate::core::metric::{Family, Labels, MetricType, Sample};

/// `families` with `labels` removed from every sample.
pub fn drop_labels(families: Vec<Family>, labels: &[String]) -> Vec<Family> {
    families
        .into_iter()
        .map(|family| drop_from_family(family, labels))
        .collect()
}

fn drop_from_family(mut family: Family, dropped: &[String]) -> Family {
    let is_dropped = |name: &str| dropped.iter().any(|d| d == name);
    let mut changed = false;
    for sample in &mut family.samples {
        if sample.labels.iter().any(|(name, _)| is_dropped(name)) {
            sample.labels = sample
                .labels
                .iter()
                .filter(|(name, _)| !is_dropped(name))
                .cloned()
                .collect();
            changed = true;
        }
    }
    if !changed {
        return family;
    }
    // Which earlier sample each sample merges into; keys borrow the samples, nothing cloned.
    let count = family.samples.len();
    let mut merge_into: Vec<Option<usize>> = vec![None; count];
    {
        let mut first: HashMap<(&str, &Labels, Option<i64>), usize> =
            HashMap::with_capacity_and_hasher(count, Default::default());
        for (i, sample) in family.samples.iter().enumerate() {
            let key = (sample.suffix, &sample.labels, sample.timestamp_ms);
            match first.get(&key) {
                Some(&at) => merge_into[i] = Some(at),
                None => {
                    first.insert(key, i);
                }
            }
        }
    }
    let mut unmergeable = vec![false; count];
    for (i, target) in merge_into.iter().enumerate() {
        if let Some(at) = *target {
            if is_quantile(family.kind, &family.samples[i]) {
                unmergeable[at] = true;
            } else {
                let value = family.samples[i].value;
                family.samples[at].value += value;
            }
        }
    }
    let mut index = 0;
    family.samples.retain(|_| {
        let keep = merge_into[index].is_none() && !unmergeable[index];
        index += 1;
        keep
    });
    family
}

fn is_quantile(kind: MetricType, sample: &Sample) -> bool {
    kind == MetricType::Summary && sample.suffix.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pairs: &[(&'static str, &str)], v: f64) -> Sample {
        Sample::new(
            pairs
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect::<Labels>(),
            v,
        )
    }

    #[test]
    fn colliding_series_are_summed() {
        let mut f = Family::new("c_total", "h", MetricType::Counter);
        f.samples = vec![
            sample(&[("name", "a"), ("node", "n1")], 1.0),
            sample(&[("name", "b"), ("node", "n1")], 2.0),
            sample(&[("name", "c"), ("node", "n2")], 4.0),
        ];
        let out = drop_labels(vec![f], &["name".to_owned()]);
        let got: Vec<(String, f64)> = out[0]
            .samples
            .iter()
            .map(|s| (s.labels[0].1.to_string(), s.value))
            .collect();
        assert_eq!(got, [("n1".to_owned(), 3.0), ("n2".to_owned(), 4.0)]);
        assert!(out[0].samples.iter().all(|s| s.labels.len() == 1));
    }

    #[test]
    fn summary_quantiles_that_collide_are_left_out() {
        let mut f = Family::new("s", "h", MetricType::Summary);
        let q = |vmi: &str, v: f64| sample(&[("quantile", "0.5"), ("vmi", vmi)], v);
        let count = |vmi: &str, v: f64| Sample {
            suffix: "_count",
            ..sample(&[("vmi", vmi)], v)
        };
        f.samples = vec![q("a", 1.0), count("a", 3.0), q("b", 2.0), count("b", 4.0)];
        let out = drop_labels(vec![f], &["vmi".to_owned()]);
        assert_eq!(out[0].samples.len(), 1);
        assert_eq!(out[0].samples[0].suffix, "_count");
        assert_eq!(out[0].samples[0].value, 7.0);
    }
}
