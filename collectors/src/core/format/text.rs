//! Prometheus text format 0.0.4, byte-compatible with client_golang's `expfmt`.
//!
//! Byte compatibility matters: users diff our output against the component's, and golden
//! tests pin it. The two details that differ from a naive encoder are the order
//! ([`client_golang_order`]) and Go's shortest `%g` float formatting ([`format_float`]).

use std::fmt::Write;
use std::ops::Range;

use foldhash::HashMap;

use crate::core::metric::{Family, Labels, client_golang_order};

/// The `Content-Type` of this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn encode(families: &[Family]) -> String {
    let mut out = String::new();
    encode_into(&mut out, families);
    out
}

/// [`encode`], appended to `out`: an earlier page's buffer, cleared, takes the new page
/// without asking the kernel for fresh memory to fault in.
pub fn encode_into(out: &mut String, families: &[Family]) {
    out.reserve(estimate_len(families));
    let mut blocks = LabelBlocks::default();
    for (family, samples) in client_golang_order(families) {
        write_metadata(
            out,
            &family.name,
            &family.help,
            family.kind.as_str(),
            escape_help,
        );
        for sample in samples {
            out.push_str(&family.name);
            out.push_str(sample.suffix);
            blocks.write(out, &sample.labels);
            out.push(' ');
            push_float(out, sample.value);
            if let Some(ts) = sample.timestamp_ms {
                // Writing into a String cannot fail.
                let _ = write!(out, " {ts}");
            }
            out.push('\n');
        }
    }
}

fn estimate_len(families: &[Family]) -> usize {
    families
        .iter()
        .map(|f| 64 + f.help.len() + f.samples.len() * (f.name.len() + 96))
        .sum()
}

/// The `# HELP` and `# TYPE` lines of a family; `escape` is the format's HELP escaping.
pub(crate) fn write_metadata(
    out: &mut String,
    name: &str,
    help: &str,
    type_word: &str,
    escape: fn(&mut String, &str),
) {
    // client_golang writes no HELP line for a family without help (relayed families
    // parsed from an exposition that had none).
    if !help.is_empty() {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        escape(out, help);
        out.push('\n');
    }
    out.push_str("# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(type_word);
    out.push('\n');
}

/// `{name="value",...}` (nothing for no labels); `write_value(out, name, value)` writes
/// each value, escaped, between the quotes.
pub(crate) fn write_labels(
    out: &mut String,
    labels: &crate::core::metric::Labels,
    write_value: impl Fn(&mut String, &str, &str),
) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        write_value(out, name, value);
        out.push('"');
    }
    out.push('}');
}

/// The `{...}` block of each label set that several series share, written once per page and
/// copied after that. A VMI's identity labels head some twenty families, a disk's or a NIC's
/// eight, so at 400 VMIs most blocks of a page are repeats, and copying one costs a fraction
/// of writing and escaping its values again. Sets are told apart by address
/// ([`Labels::shared_address`]): the families stay borrowed while a page is written, so no
/// set can free its address for another.
#[derive(Default)]
pub(crate) struct LabelBlocks(HashMap<usize, Range<usize>>);

impl LabelBlocks {
    /// Appends the block of `labels`, every value escaped as a label value, to `out`: written
    /// the first time, copied from there after. `out` must only grow while this is in use:
    /// blocks are remembered by their place in it.
    pub(crate) fn write(&mut self, out: &mut String, labels: &Labels) {
        let write = |out: &mut String| {
            write_labels(out, labels, |out, _, value| escape_label_value(out, value));
        };
        let Some(address) = labels.shared_address() else {
            write(out);
            return;
        };
        if let Some(written) = self.0.get(&address) {
            out.extend_from_within(written.clone());
            return;
        }
        let start = out.len();
        write(out);
        self.0.insert(address, start..out.len());
    }
}

/// HELP text escapes backslash and newline.
pub fn escape_help(out: &mut String, help: &str) {
    escape(out, help, |byte| match byte {
        b'\\' => Some("\\\\"),
        b'\n' => Some("\\n"),
        _ => None,
    });
}

/// Label values escape backslash, double quote and newline.
pub fn escape_label_value(out: &mut String, value: &str) {
    escape(out, value, |byte| match byte {
        b'\\' => Some("\\\\"),
        b'"' => Some("\\\""),
        b'\n' => Some("\\n"),
        _ => None,
    });
}

/// Appends `text` with the ASCII bytes `replacement` knows replaced, copying the runs
/// between them whole: nearly every label value has none, and this runs once per label of
/// every series on every encoding.
fn escape(out: &mut String, text: &str, replacement: impl Fn(u8) -> Option<&'static str>) {
    let mut run_start = 0;
    for (at, byte) in text.bytes().enumerate() {
        let Some(escaped) = replacement(byte) else {
            continue;
        };
        // Only ASCII bytes are replaced, so `at` is a char boundary.
        out.push_str(&text[run_start..at]);
        out.push_str(escaped);
        run_start = at + 1;
    }
    out.push_str(&text[run_start..]);
}

/// A sample value as client_golang writes it: `NaN`, `+Inf`, `-Inf`, else Go's
/// `strconv.FormatFloat(v, 'g', -1, 64)`.
pub fn format_float(v: f64) -> String {
    let mut s = String::new();
    push_float(&mut s, v);
    s
}

/// Appends a sample value as [`format_float`] writes it, without allocating.
pub fn push_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v == 0.0 {
        // client_golang's writeFloat special-cases zero, so negative zero is "0" too.
        out.push('0');
    } else {
        push_go_g(out, v);
    }
}

/// Go's shortest `%g`: the shortest digits that round-trip, in exponent form when the
/// decimal exponent is < -4 or >= 6 (Go uses precision 6 for this decision in shortest
/// mode), with a sign and at least two exponent digits.
///
/// Every sample of every encoding passes through here, so the digits come from `ryu` (the
/// same shortest digits as Rust's `{:e}`, without the formatting machinery or an
/// allocation), and whole numbers below 10^6, which Go writes as plain integers, skip even
/// that.
fn push_go_g(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e6 {
        // Exact: |v| < 10^6 is an integer that i64 holds.
        out.push_str(itoa::Buffer::new().format(v as i64));
        return;
    }
    if v < 0.0 {
        out.push('-');
    }
    if v.fract() == 0.0 && v.abs() < EXACT_INTEGERS {
        // Byte and packet counters: an integer below 2^53 is its own shortest form, as
        // every shorter digit string is another integer, at least 1 away, while its
        // neighbours are at most 1 away (half of that rounds back). So its digits come
        // from itoa, without ryu and re-parsing ryu's output.
        let mut int = itoa::Buffer::new();
        let int = int.format(v.abs() as i64);
        let exp = int.len() as i32 - 1;
        push_shortest(out, int.trim_end_matches('0'), exp);
        return;
    }
    let mut ryu = ryu::Buffer::new();
    let (digits, exp) = ShortestDigits::of(ryu.format_finite(v.abs()));
    push_shortest(out, digits.as_str(), exp);
}

/// 2^53: every integer below it is an `f64`, exactly.
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

/// A positive value given by its shortest significant `digits` and the decimal exponent of
/// the first, written as Go's `%g` writes it.
fn push_shortest(out: &mut String, digits: &str, exp: i32) {
    if !(-4..6).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let exp = exp.unsigned_abs();
        if exp < 10 {
            out.push('0');
        }
        out.push_str(itoa::Buffer::new().format(exp));
        return;
    }
    let point = exp + 1;
    if point <= 0 {
        out.push_str("0.");
        for _ in 0..-point {
            out.push('0');
        }
        out.push_str(digits);
    } else {
        let point = point as usize;
        if point >= digits.len() {
            out.push_str(digits);
            for _ in digits.len()..point {
                out.push('0');
            }
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
}

/// The significant digits of a positive finite number (no leading or trailing zeros) and
/// the decimal exponent of the first one, read from `ryu`'s output (`1234.5`, `0.00012`,
/// `1e30`, `1.5e-7`).
struct ShortestDigits {
    buf: [u8; 24],
    len: usize,
}

impl ShortestDigits {
    fn of(formatted: &str) -> (Self, i32) {
        let (mantissa, exp) = match formatted.split_once('e') {
            Some((mantissa, exp)) => (mantissa, exp.parse::<i32>().unwrap_or(0)),
            None => (formatted, 0),
        };
        let point = mantissa.find('.').unwrap_or(mantissa.len());
        let mut digits = Self {
            buf: [0; 24],
            len: 0,
        };
        // Position of the decimal point relative to the first significant digit.
        let mut point_after = point as i32;
        for byte in mantissa.bytes().filter(u8::is_ascii_digit) {
            if byte == b'0' && digits.len == 0 {
                point_after -= 1;
                continue;
            }
            if digits.len < digits.buf.len() {
                digits.buf[digits.len] = byte;
                digits.len += 1;
            }
        }
        while digits.len > 1 && digits.buf[digits.len - 1] == b'0' {
            digits.len -= 1;
        }
        (digits, point_after - 1 + exp)
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits were copied in.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("0")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::metric::{MetricType, Sample};

    #[test]
    fn label_values_escape_backslash_quote_and_newline_only() {
        let cases = [
            ("plain", "plain"),
            ("", ""),
            ("C:\\", "C:\\\\"),
            ("win \"2022\"", "win \\\"2022\\\""),
            ("a\nb\tc", "a\\nb\tc"),
            ("ünï\"cödé\\", "ünï\\\"cödé\\\\"),
            ("\"\"\n", "\\\"\\\"\\n"),
        ];
        for (value, want) in cases {
            let mut out = String::from("x");
            escape_label_value(&mut out, value);
            assert_eq!(out, format!("x{want}"), "{value:?}");
        }
        // HELP text keeps its double quotes.
        let mut out = String::new();
        escape_help(&mut out, "a \"b\"\\ ü\n");
        assert_eq!(out, "a \"b\"\\\\ ü\\n");
    }

    /// Go's `%g` spelled out from Rust's `{:e}` (the same shortest digits): slow, and
    /// obviously right, for the property test below.
    fn go_g_reference(v: f64) -> String {
        let sci = format!("{:e}", v.abs());
        let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        let sign = if v < 0.0 { "-" } else { "" };
        if !(-4..6).contains(&exp) {
            let tail = if digits.len() > 1 {
                format!(".{}", &digits[1..])
            } else {
                String::new()
            };
            let exp_sign = if exp < 0 { '-' } else { '+' };
            return format!(
                "{sign}{}{tail}e{exp_sign}{:02}",
                &digits[..1],
                exp.unsigned_abs()
            );
        }
        let point = exp + 1;
        if point <= 0 {
            return format!("{sign}0.{}{digits}", "0".repeat((-point) as usize));
        }
        let point = point as usize;
        if point >= digits.len() {
            format!("{sign}{digits}{}", "0".repeat(point - digits.len()))
        } else {
            format!("{sign}{}.{}", &digits[..point], &digits[point..])
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4096, ..Default::default() })]

        #[test]
        fn floats_format_like_the_reference(
            bits in proptest::prelude::any::<u64>(),
            small in -2_000_000i64..2_000_000,
            scaled in -1e12f64..1e12,
            counter in 0i64..(1 << 53),
            zeros in 0u32..16,
        ) {
            let round = (counter / 10i64.pow(zeros)) * 10i64.pow(zeros);
            for v in [f64::from_bits(bits), small as f64, scaled, scaled.trunc(), small as f64 / 1e3,
                      counter as f64, -(counter as f64), round as f64] {
                if !v.is_finite() || v == 0.0 {
                    continue;
                }
                let (ours, reference) = (format_float(v), go_g_reference(v));
                proptest::prop_assert_eq!(ours.parse::<f64>().ok(), Some(v), "{} does not round-trip", ours);
                if ours != reference {
                    // Rust's `{:e}` rounds an exact tie up; Go (and ryu) round it to even.
                    // Then only the last digit differs, by one, and ours is the even one.
                    let at = ours.find('e').unwrap_or(ours.len()) - 1;
                    let (a, b) = (ours.as_bytes(), reference.as_bytes());
                    proptest::prop_assert_eq!(a.len(), b.len(), "{:?}: {} vs {}", v, ours, reference);
                    proptest::prop_assert_eq!(&a[..at], &b[..at], "{:?}: {} vs {}", v, ours, reference);
                    proptest::prop_assert_eq!(&a[at + 1..], &b[at + 1..], "{:?}: {} vs {}", v, ours, reference);
                    proptest::prop_assert!(a[at] % 2 == 0 && b[at] == a[at] + 1, "{:?}: {} vs {}", v, ours, reference);
                }
            }
        }
    }

    #[test]
    fn floats_match_go_strconv_g() {
        // Expected strings are what Go's strconv.FormatFloat(v, 'g', -1, 64) prints.
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (0.5, "0.5"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (1e6, "1e+06"),
            (1e8, "1e+08"),
            (67108864.0, "6.7108864e+07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (3.25, "3.25"),
            (12.375, "12.375"),
            (1e21, "1e+21"),
            (1.2345e100, "1.2345e+100"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (0.1 + 0.2, "0.30000000000000004"),
            (999999.0, "999999"),
            (1_000_000_000.123, "1.000000000123e+09"),
            // An exact tie (the double is 711330521710.53125): Go's shortest formatting
            // rounds it to even, where Rust's `{:e}` rounds it up.
            (711_330_521_710.531_3, "7.113305217105312e+11"),
            (-711_330_521_710.531_3, "-7.113305217105312e+11"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (999999.5, "999999.5"),
            (-999999.0, "-999999"),
            (1e15, "1e+15"),
        ];
        for (v, want) in cases {
            assert_eq!(format_float(*v), *want, "formatting {v:?}");
        }
    }

    #[test]
    fn encodes_like_client_golang() {
        let mut gauge = Family::new("b_metric", "Help with \\ and\nnewline.", MetricType::Gauge);
        gauge.samples.push(Sample::new(
            vec![
                ("name".into(), "z".into()),
                ("namespace".into(), "ns".into()),
            ],
            2.0,
        ));
        gauge.samples.push(Sample::new(
            vec![
                ("name".into(), "a\"q\\".into()),
                ("namespace".into(), "ns".into()),
            ],
            1e7,
        ));
        let mut counter = Family::new("a_total", "A counter.", MetricType::Counter);
        counter
            .samples
            .push(Sample::new(vec![], 3.0).with_timestamp(1_700_000_000_123));
        let empty = Family::new("c_empty", "Never written.", MetricType::Gauge);

        let text = encode(&[gauge, counter, empty]);
        assert_eq!(
            text,
            "# HELP a_total A counter.\n\
             # TYPE a_total counter\n\
             a_total 3 1700000000123\n\
             # HELP b_metric Help with \\\\ and\\nnewline.\n\
             # TYPE b_metric gauge\n\
             b_metric{name=\"a\\\"q\\\\\",namespace=\"ns\"} 1e+07\n\
             b_metric{name=\"z\",namespace=\"ns\"} 2\n"
        );
    }

    /// Families whose series share label sets, as rendered families do, and the same
    /// families with every set copied apart.
    pub(crate) fn shared_and_apart() -> (Vec<Family>, Vec<Family>) {
        let vmi = |name: &str| -> Labels {
            vec![
                ("name".into(), name.into()),
                ("namespace".into(), "n\"s".into()),
            ]
            .into()
        };
        let (a, b) = (vmi("a"), vmi("b"));
        let with_le: Labels = vec![("le".into(), "1".into()), ("name".into(), "a".into())].into();
        let mut gauge = Family::new("g", "G.", MetricType::Gauge);
        let mut counter = Family::new("c_total", "C.", MetricType::Counter);
        let mut histogram = Family::new("h", "H.", MetricType::Histogram);
        for (labels, v) in [(&b, 2.0), (&a, 1.0)] {
            gauge.samples.push(Sample::new(labels.clone(), v));
            counter.samples.push(Sample::new(labels.clone(), v * 10.0));
        }
        gauge.samples.push(Sample::new(with_le.clone(), 3.0));
        let mut bucket = Sample::new(with_le.clone(), 4.0);
        bucket.suffix = "_bucket";
        histogram.samples.push(bucket);
        let shared = vec![gauge, counter, histogram];
        let apart = shared
            .iter()
            .map(|family| Family {
                samples: family
                    .samples
                    .iter()
                    .map(|sample| Sample {
                        labels: sample.labels.to_vec().into(),
                        ..sample.clone()
                    })
                    .collect(),
                ..family.clone()
            })
            .collect();
        (shared, apart)
    }

    #[test]
    fn shared_label_sets_encode_as_copies_do() {
        let (shared, apart) = shared_and_apart();
        let text = encode(&shared);
        assert_eq!(text, encode(&apart));
        assert!(text.contains("c_total{name=\"a\",namespace=\"n\\\"s\"} 10\n"));
        assert!(text.contains("g{le=\"1\",name=\"a\"} 3\n"));
    }

    #[test]
    fn histogram_series_stay_together() {
        let mut h = Family::new("h_seconds", "H.", MetricType::Histogram);
        for (series, le, v) in [
            ("b", "1", 1.0),
            ("a", "1", 2.0),
            ("b", "+Inf", 3.0),
            ("a", "+Inf", 4.0),
        ] {
            let mut s = Sample::new(
                vec![("x".into(), series.into()), ("le".into(), le.into())],
                v,
            );
            s.suffix = "_bucket";
            h.samples.push(s);
        }
        let text = encode(&[h]);
        let lines: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "h_seconds_bucket{x=\"a\",le=\"1\"} 2",
                "h_seconds_bucket{x=\"a\",le=\"+Inf\"} 4",
                "h_seconds_bucket{x=\"b\",le=\"1\"} 1",
                "h_seconds_bucket{x=\"b\",le=\"+Inf\"} 3",
            ]
        );
    }
}
