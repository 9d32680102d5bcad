//! The JSON format of `/metrics` (`Accept: application/json` or `?format=json`): the same
//! families, series and order as the text format, for tools that do not parse Prometheus
//! text. The schema is stable and documented in the README ("JSON format"):
//!
//! ```json
//! {"families": [
//!   {"name": "kubevirt_vmi_memory_resident_bytes", "type": "gauge", "help": "...",
//!    "samples": [
//!      {"name": "kubevirt_vmi_memory_resident_bytes",
//!       "labels": {"name": "vm-1", "namespace": "default", "node": "node01"},
//!       "value": 1048576.0},
//!      {"name": "...", "labels": {}, "value": "NaN", "timestamp_ms": 1700000000000}]}]}
//! ```
//!
//! - `type` is the word of the text format's `# TYPE` line: `counter`, `gauge`, `histogram`,
//!   `summary`, `untyped`.
//! - A sample's `name` is the series name, with the histogram/summary suffix (`_bucket`,
//!   `_sum`, `_count`); `le` and `quantile` are ordinary labels, as in the text format.
//! - `labels` keeps the exposition order (sorted by name, `le`/`quantile` last).
//! - `value` is a JSON number when finite; JSON has no NaN or infinities, so those are the
//!   strings `"NaN"`, `"+Inf"` and `"-Inf"` (the spellings of the text format).
//! - `timestamp_ms` (milliseconds since the Unix epoch) is present only on samples that
//!   carry their own time.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::core::metric::{Family, Labels, Sample, client_golang_order};

/// The `Content-Type` of this format.
pub const CONTENT_TYPE: &str = "application/json";

/// The JSON document for `families`, in the text format's order.
pub fn encode(families: &[Family]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, families);
    out
}

/// [`encode`], appended to `out` (see [`super::text::encode_into`]).
pub fn encode_into(out: &mut Vec<u8>, families: &[Family]) {
    let document = Document {
        families: client_golang_order(families)
            .into_iter()
            .map(|(family, samples)| JsonFamily {
                name: &family.name,
                kind: family.kind.as_str(),
                help: &family.help,
                samples: samples
                    .into_iter()
                    .map(|sample| JsonSample { family, sample })
                    .collect(),
            })
            .collect(),
    };
    // Serializing plain strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &document);
}

#[derive(Serialize)]
struct Document<'a> {
    families: Vec<JsonFamily<'a>>,
}

#[derive(Serialize)]
struct JsonFamily<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    help: &'a str,
    samples: Vec<JsonSample<'a>>,
}

struct JsonSample<'a> {
    family: &'a Family,
    sample: &'a Sample,
}

impl Serialize for JsonSample<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let sample = self.sample;
        let fields = if sample.timestamp_ms.is_some() { 4 } else { 3 };
        let mut map = serializer.serialize_map(Some(fields))?;
        map.serialize_entry(
            "name",
            &format_args!("{}{}", self.family.name, sample.suffix),
        )?;
        map.serialize_entry("labels", &JsonLabels(&sample.labels))?;
        map.serialize_entry("value", &JsonValue(sample.value))?;
        if let Some(timestamp_ms) = sample.timestamp_ms {
            map.serialize_entry("timestamp_ms", &timestamp_ms)?;
        }
        map.end()
    }
}

struct JsonLabels<'a>(&'a Labels);

impl Serialize for JsonLabels<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name.as_str(), value.as_str())?;
        }
        map.end()
    }
}

/// A number, or `"NaN"`, `"+Inf"`, `"-Inf"`.
struct JsonValue(f64);

impl Serialize for JsonValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let value = self.0;
        if value.is_nan() {
            serializer.serialize_str("NaN")
        } else if value == f64::INFINITY {
            serializer.serialize_str("+Inf")
        } else if value == f64::NEG_INFINITY {
            serializer.serialize_str("-Inf")
        } else {
            serializer.serialize_f64(value)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::core::metric::MetricType;
    use serde_json::json;

    fn labels(pairs: &[(&'static str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn schema_order_suffixes_and_non_finite_values() {
        let mut gauge = Family::new("z_gauge", "A \"gauge\".", MetricType::Gauge);
        gauge
            .samples
            .push(Sample::new(labels(&[("name", "b")]), f64::NAN));
        gauge
            .samples
            .push(Sample::new(labels(&[("name", "a")]), 2.5).with_timestamp(1_700_000_000_123));
        let mut histogram = Family::new("a_seconds", "", MetricType::Histogram);
        for (le, count) in [("1", 1.0), ("+Inf", 3.0)] {
            let mut bucket = Sample::new(labels(&[("le", le)]), count);
            bucket.suffix = "_bucket";
            histogram.samples.push(bucket);
        }
        let mut sum = Sample::new(Vec::new(), f64::NEG_INFINITY);
        sum.suffix = "_sum";
        histogram.samples.push(sum);
        let mut count = Sample::new(Vec::new(), f64::INFINITY);
        count.suffix = "_count";
        histogram.samples.push(count);
        let empty = Family::new("m_empty", "", MetricType::Counter);

        let body = encode(&[gauge, empty, histogram]);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            json!({"families": [
                {"name": "a_seconds", "type": "histogram", "help": "", "samples": [
                    {"name": "a_seconds_bucket", "labels": {"le": "1"}, "value": 1.0},
                    {"name": "a_seconds_bucket", "labels": {"le": "+Inf"}, "value": 3.0},
                    {"name": "a_seconds_sum", "labels": {}, "value": "-Inf"},
                    {"name": "a_seconds_count", "labels": {}, "value": "+Inf"},
                ]},
                {"name": "z_gauge", "type": "gauge", "help": "A \"gauge\".", "samples": [
                    {"name": "z_gauge", "labels": {"name": "a"}, "value": 2.5,
                     "timestamp_ms": 1_700_000_000_123_i64},
                    {"name": "z_gauge", "labels": {"name": "b"}, "value": "NaN"},
                ]},
            ]})
        );
    }
}
