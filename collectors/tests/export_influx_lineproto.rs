//! The line-protocol encoder of the InfluxDB sink: escaping with the examples of InfluxDB's
//! line-protocol reference, tag order, value and timestamp text, what the protocol cannot
//! carry, and request chunks. (InfluxDB itself reads the result back in
//! e2e/tests/export_influx.rs.)

#![allow(clippy::unwrap_used)]

use std::time::{Duration, UNIX_EPOCH};

use kubevirt_metrics_collectors::core::export::influx::lineproto::{
    self, escape_key, escape_measurement, write_float, write_string_field,
};
use kubevirt_metrics_collectors::core::metric::{Family, MetricType, Sample};
use kubevirt_metrics_flags::InfluxPrecision;

fn measurement(text: &str) -> String {
    let mut buf = Vec::new();
    escape_measurement(&mut buf, text);
    String::from_utf8(buf).unwrap()
}

fn key(text: &str) -> String {
    let mut buf = Vec::new();
    escape_key(&mut buf, text);
    String::from_utf8(buf).unwrap()
}

fn string_field(text: &str) -> String {
    let mut buf = Vec::new();
    write_string_field(&mut buf, text);
    String::from_utf8(buf).unwrap()
}

fn float(value: f64) -> String {
    let mut buf = Vec::new();
    write_float(&mut buf, value);
    String::from_utf8(buf).unwrap()
}

fn labels(pairs: &[(&'static str, &str)]) -> kubevirt_metrics_collectors::core::metric::Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

/// Encodes and joins the chunks.
fn lines(families: &[Family], precision: InfluxPrecision) -> String {
    let at = UNIX_EPOCH + Duration::from_nanos(1_800_000_000_123_456_789);
    let encoded = lineproto::encode(families, at, precision, 5_000);
    String::from_utf8(encoded.chunks.concat()).unwrap()
}

#[test]
fn escaping_follows_the_reference_examples() {
    // docs.influxdata.com, "Line protocol reference", special characters:
    // "measurement\ with\ quo⚡️es\ and\ emoji",tag\ key\ with\ sp🚀ces=tag\,value\,with"commas"
    //     field_k\ey="string field value, only \" need be esc🍭ped"
    assert_eq!(
        measurement("\"measurement with quo⚡️es and emoji\""),
        "\"measurement\\ with\\ quo⚡️es\\ and\\ emoji\""
    );
    assert_eq!(key("tag key with sp🚀ces"), "tag\\ key\\ with\\ sp🚀ces");
    assert_eq!(
        key("tag,value,with\"commas\""),
        "tag\\,value\\,with\"commas\""
    );
    assert_eq!(key("field_k\\ey"), "field_k\\ey");
    assert_eq!(
        string_field("string field value, only \" need be esc🍭ped"),
        "\"string field value, only \\\" need be esc🍭ped\""
    );
    // Backslashes in string fields are escaped too.
    assert_eq!(string_field("C:\\dir \"x\""), "\"C:\\\\dir \\\"x\\\"\"");
    // An equals sign needs no escape in a measurement, but does in keys and tag values.
    assert_eq!(measurement("a=b,c d"), "a=b\\,c\\ d");
    assert_eq!(key("a=b,c d"), "a\\=b\\,c\\ d");
    // "weather,location\ place=us-midwest": a space in a tag key.
    assert_eq!(key("location place"), "location\\ place");
    // Plain text is copied as is.
    assert_eq!(
        measurement("kubevirt_vmi_memory_resident_bytes"),
        "kubevirt_vmi_memory_resident_bytes"
    );
    assert_eq!(key("ua-rootdisk"), "ua-rootdisk");
}

#[test]
fn what_line_protocol_cannot_carry_is_adjusted() {
    // A trailing backslash would escape the separator after it (a Windows mount point).
    assert_eq!(key("C:\\"), "C:");
    assert_eq!(key("a\\\\"), "a");
    // A backslash inside stays, and before an escaped character it still reads back.
    assert_eq!(key("a\\b"), "a\\b");
    assert_eq!(key("a\\,b"), "a\\\\,b");
    // A line break ends a point: it becomes an (escaped) space.
    assert_eq!(key("two\nlines\r\n"), "two\\ lines\\ \\ ");
    assert_eq!(measurement("m\n"), "m\\ ");
}

#[test]
fn floats_always_carry_a_point_or_an_exponent() {
    assert_eq!(float(1.0), "1.0");
    assert_eq!(float(0.0), "0.0");
    assert_eq!(float(-0.0), "-0.0");
    assert_eq!(float(-0.005), "-0.005");
    assert_eq!(float(1e300), "1e300");
    assert_eq!(float(5e-324), "5e-324");
    assert_eq!(float(104_857_600.0), "104857600.0");
    assert_eq!(float(18_446_744_073_709_551_615.0), "1.8446744073709552e19");
    assert_eq!(float(0.1 + 0.2), "0.30000000000000004");
    for value in [
        1.0,
        12.5,
        1e22,
        f64::MAX,
        f64::MIN_POSITIVE,
        0.1 + 0.2,
        -7.0,
    ] {
        let text = float(value);
        assert!(text.contains('.') || text.contains('e'), "{text}");
        assert_eq!(text.parse::<f64>().unwrap(), value, "{text} round-trips");
    }
}

#[test]
fn one_point_per_sample_with_sorted_tags_and_the_value_field() {
    let mut gauge = Family::new(
        "kubevirt_vmi_memory_resident_bytes",
        "Resident set size of the process running the domain.",
        MetricType::Gauge,
    );
    // Unsorted, with an empty label (absent for Prometheus) and values needing escapes.
    gauge.samples.push(Sample::new(
        labels(&[
            ("node", "node 01"),
            ("namespace", "default"),
            ("name", "vm,1=x"),
            ("kubernetes_vmi_label_app", ""),
        ]),
        104_857_600.0,
    ));
    let mut counter = Family::new(
        "kubevirt_vmi_network_receive_bytes_total",
        "Total network traffic received in bytes.",
        MetricType::Counter,
    );
    counter.samples.push(
        Sample::new(
            labels(&[("interface", "default"), ("name", "testvm")]),
            4242.5,
        )
        .with_timestamp(1_700_000_000_999),
    );
    let mut histogram = Family::new(
        "kubevirt_rest_client_request_latency_seconds",
        "Request latency in seconds.",
        MetricType::Histogram,
    );
    for (le, count) in [("0.5", 3.0), ("+Inf", 4.0)] {
        let mut sample = Sample::new(labels(&[("verb", "GET"), ("le", le)]), count);
        sample.suffix = "_bucket";
        histogram.samples.push(sample);
    }
    let mut sum = Sample::new(labels(&[("verb", "GET")]), 1.25);
    sum.suffix = "_sum";
    histogram.samples.push(sum);

    assert_eq!(
        lines(&[gauge, counter, histogram], InfluxPrecision::Ns),
        "kubevirt_vmi_memory_resident_bytes,name=vm\\,1\\=x,namespace=default,node=node\\ 01 \
         value=104857600.0 1800000000123456789\n\
         kubevirt_vmi_network_receive_bytes_total,interface=default,name=testvm \
         value=4242.5 1700000000999000000\n\
         kubevirt_rest_client_request_latency_seconds_bucket,le=0.5,verb=GET value=3.0 1800000000123456789\n\
         kubevirt_rest_client_request_latency_seconds_bucket,le=+Inf,verb=GET value=4.0 1800000000123456789\n\
         kubevirt_rest_client_request_latency_seconds_sum,verb=GET value=1.25 1800000000123456789\n"
    );
}

#[test]
fn timestamps_in_every_precision() {
    let mut family = Family::new("m", "", MetricType::Gauge);
    family.samples.push(Sample::new(Vec::new(), 1.0));
    family
        .samples
        .push(Sample::new(Vec::new(), 2.0).with_timestamp(1_700_000_000_999));
    family
        .samples
        .push(Sample::new(Vec::new(), 3.0).with_timestamp(-1_500));
    let expect = [
        (
            InfluxPrecision::Ns,
            ["1800000000123456789", "1700000000999000000", "-1500000000"],
        ),
        (
            InfluxPrecision::Us,
            ["1800000000123456", "1700000000999000", "-1500000"],
        ),
        (
            InfluxPrecision::Ms,
            ["1800000000123", "1700000000999", "-1500"],
        ),
        // Rounded down, also before 1970.
        (InfluxPrecision::S, ["1800000000", "1700000000", "-2"]),
    ];
    for (precision, [batch, own, negative]) in expect {
        assert_eq!(
            lines(std::slice::from_ref(&family), precision),
            format!("m value=1.0 {batch}\nm value=2.0 {own}\nm value=3.0 {negative}\n"),
            "{precision:?}"
        );
    }
    assert_eq!(lineproto::precision_param(InfluxPrecision::Us, true), "u");
    assert_eq!(lineproto::precision_param(InfluxPrecision::Us, false), "us");
    assert_eq!(lineproto::precision_param(InfluxPrecision::Ns, true), "ns");
    assert_eq!(lineproto::precision_param(InfluxPrecision::S, false), "s");
}

#[test]
fn non_finite_values_are_skipped_and_counted() {
    let mut family = Family::new("m", "", MetricType::Gauge);
    for value in [f64::NAN, 1.0, f64::INFINITY, f64::NEG_INFINITY, 2.0] {
        family
            .samples
            .push(Sample::new(labels(&[("a", "b")]), value));
    }
    let encoded = lineproto::encode(&[family], UNIX_EPOCH, InfluxPrecision::S, 10);
    assert_eq!(encoded.points, 2);
    assert_eq!(encoded.skipped_non_finite, 3);
    assert_eq!(
        String::from_utf8(encoded.chunks.concat()).unwrap(),
        "m,a=b value=1.0 0\nm,a=b value=2.0 0\n"
    );
}

#[test]
fn large_batches_are_cut_into_requests() {
    let mut family = Family::new("m", "", MetricType::Gauge);
    for i in 0..12 {
        family
            .samples
            .push(Sample::new(labels(&[("i", &i.to_string())]), f64::from(i)));
    }
    let encoded = lineproto::encode(&[family], UNIX_EPOCH, InfluxPrecision::S, 5);
    let counts: Vec<usize> = encoded
        .chunks
        .iter()
        .map(|chunk| chunk.iter().filter(|&&b| b == b'\n').count())
        .collect();
    assert_eq!(counts, [5, 5, 2]);
    assert_eq!(encoded.points, 12);
    let text = String::from_utf8(encoded.chunks.concat()).unwrap();
    let values: Vec<&str> = text.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(values.first(), Some(&"value=0.0"));
    assert_eq!(values.last(), Some(&"value=11.0"));
    assert!(
        lineproto::encode(&[], UNIX_EPOCH, InfluxPrecision::S, 5)
            .chunks
            .is_empty()
    );
}
