//! InfluxDB line protocol, written straight into byte buffers: one point per sample,
//! `<metric name>[,<label>=<value>...] value=<float> <timestamp>`.
//!
//! Escaping follows the line-protocol reference (InfluxDB 1.x and 2.x parse it the same way):
//! commas and spaces in the measurement; commas, equals signs and spaces in tag keys, tag
//! values and field keys; double quotes and backslashes in string field values. Two things
//! the protocol cannot carry at all are adjusted rather than losing the point:
//! - a line break (the parser ends the point there) becomes a space;
//! - trailing backslashes are removed (`C:\` → `C:`): the parser takes a backslash as
//!   escaping whatever follows it, so a key or tag value cannot end in one.
//!
//! Tags are sorted by key, as InfluxDB asks, and a label with an empty value is left out
//! (line protocol has no empty tag values; for Prometheus an empty label is an absent one).
//! NaN and ±Inf cannot be written as a field value: such samples are skipped and counted.

use std::time::{SystemTime, UNIX_EPOCH};

use kubevirt_metrics_flags::InfluxPrecision;

use crate::core::metric::{Family, LabelName, Sample};

/// The one field every point carries.
pub const FIELD: &str = "value";

/// A batch in line protocol, cut into request bodies of at most `max_lines` points each.
#[derive(Debug, Default)]
pub struct Encoded {
    pub chunks: Vec<Vec<u8>>,
    /// Points written, over all chunks.
    pub points: usize,
    /// Samples left out because their value is NaN or infinite.
    pub skipped_non_finite: usize,
}

/// Encodes every sample of `families`. Samples without their own timestamp get
/// `default_time`; all timestamps are written in `precision`.
pub fn encode(
    families: &[Family],
    default_time: SystemTime,
    precision: InfluxPrecision,
    max_lines: usize,
) -> Encoded {
    let max_lines = max_lines.max(1);
    let default_timestamp = system_time(default_time, precision);
    let mut out = Encoded::default();
    let mut chunk = Vec::new();
    let mut lines_in_chunk = 0;
    let mut order = Vec::new();
    let mut remaining: usize = families.iter().map(|f| f.samples.len()).sum();
    for family in families {
        for sample in &family.samples {
            remaining -= 1;
            if !sample.value.is_finite() {
                out.skipped_non_finite += 1;
                continue;
            }
            if lines_in_chunk == max_lines {
                out.chunks.push(std::mem::take(&mut chunk));
                lines_in_chunk = 0;
            }
            if chunk.is_empty() {
                // Room for the typical KubeVirt point (name, 5-8 labels, value, time).
                chunk.reserve(max_lines.min(remaining + 1).saturating_mul(192));
            }
            let timestamp = sample
                .timestamp_ms
                .map_or(default_timestamp, |ms| from_millis(ms, precision));
            write_point(&mut chunk, &mut order, family, sample, timestamp);
            lines_in_chunk += 1;
            out.points += 1;
        }
    }
    if !chunk.is_empty() {
        out.chunks.push(chunk);
    }
    out
}

/// Appends one point and its newline. `order` is scratch space for sorting labels.
fn write_point(
    buf: &mut Vec<u8>,
    order: &mut Vec<usize>,
    family: &Family,
    sample: &Sample,
    timestamp: i64,
) {
    escape_measurement(buf, &family.name);
    escape_measurement(buf, sample.suffix);
    let labels = &sample.labels;
    if labels.windows(2).all(|pair| pair[0].0 <= pair[1].0) {
        for (name, value) in labels {
            write_tag(buf, name, value);
        }
    } else {
        order.clear();
        order.extend(0..labels.len());
        order.sort_unstable_by(|&a, &b| labels[a].0.cmp(&labels[b].0));
        for &index in order.iter() {
            let (name, value) = &labels[index];
            write_tag(buf, name, value);
        }
    }
    buf.push(b' ');
    buf.extend_from_slice(FIELD.as_bytes());
    buf.push(b'=');
    write_float(buf, sample.value);
    buf.push(b' ');
    buf.extend_from_slice(itoa::Buffer::new().format(timestamp).as_bytes());
    buf.push(b'\n');
}

fn write_tag(buf: &mut Vec<u8>, name: &LabelName, value: &str) {
    if is_blank(value) || is_blank(name) {
        return;
    }
    buf.push(b',');
    escape_key(buf, name);
    buf.push(b'=');
    escape_key(buf, value);
}

/// Whether nothing of `text` would remain once trailing backslashes are removed.
fn is_blank(text: &str) -> bool {
    text.trim_end_matches('\\').is_empty()
}

/// A float field value: always with a decimal point or an exponent (`1.0`, `1e300`), so
/// InfluxDB types the field as float on the first write and every later one agrees.
/// Callers make sure the value is finite.
pub fn write_float(buf: &mut Vec<u8>, value: f64) {
    buf.extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
}

/// A measurement name: commas and spaces escaped.
pub fn escape_measurement(buf: &mut Vec<u8>, text: &str) {
    escape(buf, text, |b| matches!(b, b',' | b' '));
}

/// A tag key, tag value or field key: commas, equals signs and spaces escaped.
pub fn escape_key(buf: &mut Vec<u8>, text: &str) {
    escape(buf, text, |b| matches!(b, b',' | b'=' | b' '));
}

/// A string field value, quoted: double quotes and backslashes escaped.
pub fn write_string_field(buf: &mut Vec<u8>, text: &str) {
    buf.push(b'"');
    for &byte in text.as_bytes() {
        if matches!(byte, b'"' | b'\\') {
            buf.push(b'\\');
        }
        buf.push(byte);
    }
    buf.push(b'"');
}

fn escape(buf: &mut Vec<u8>, text: &str, special: impl Fn(u8) -> bool) {
    let text = text.trim_end_matches('\\').as_bytes();
    let needs_work = |b: u8| special(b) || b == b'\n' || b == b'\r';
    if !text.iter().any(|&b| needs_work(b)) {
        buf.extend_from_slice(text);
        return;
    }
    for &byte in text {
        let byte = if byte == b'\n' || byte == b'\r' {
            b' '
        } else {
            byte
        };
        if special(byte) {
            buf.push(b'\\');
        }
        buf.push(byte);
    }
}

/// Units of `precision` per second.
fn per_second(precision: InfluxPrecision) -> i128 {
    match precision {
        InfluxPrecision::Ns => 1_000_000_000,
        InfluxPrecision::Us => 1_000_000,
        InfluxPrecision::Ms => 1_000,
        InfluxPrecision::S => 1,
    }
}

/// A sample's own timestamp (milliseconds since the epoch) in `precision`, rounded down.
pub fn from_millis(ms: i64, precision: InfluxPrecision) -> i64 {
    let units = i128::from(ms) * per_second(precision);
    clamp(units.div_euclid(1_000))
}

/// A wall-clock time in `precision`, rounded down.
pub fn system_time(time: SystemTime, precision: InfluxPrecision) -> i64 {
    let nanos = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    clamp(
        nanos
            .saturating_mul(per_second(precision))
            .div_euclid(1_000_000_000),
    )
}

fn clamp(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// The `precision` query parameter: InfluxDB 2.x says `us`, 1.x says `u` (and reads `us`
/// as nanoseconds).
pub fn precision_param(precision: InfluxPrecision, v1: bool) -> &'static str {
    match (precision, v1) {
        (InfluxPrecision::Us, true) => "u",
        (precision, _) => precision.as_str(),
    }
}
