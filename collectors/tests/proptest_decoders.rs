//! Property tests of what the sidecars read from outside: virt-launcher's JSON payloads and a
//! component's text exposition. Generated input, malformed on purpose or not: no panic;
//! malformed input is an error value (for the parser: naming a line that exists); well-formed
//! input loses nothing. (The libvirt typed-parameter decoder's properties live next to it,
//! in `src/handler/libvirt/decode.rs`: the module is private.)

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use kubevirt_metrics_collectors::core::component::{family_names, parse};
use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::core::metric::{Family, MetricType, Sample};
use kubevirt_metrics_collectors::handler::launcher::payload::{
    domain_stats_from_json, filesystems_from_json,
};
use kubevirt_metrics_collectors::handler::stats::{CpuStats, Filesystem, NetStats};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Keys a launcher really sends, so generated objects reach the decoder's fields.
const GO_KEYS: &[&str] = &[
    "Name",
    "UUID",
    "Cpu",
    "Memory",
    "MigrateDomainJobInfo",
    "Vcpu",
    "Net",
    "Block",
    "CPUMapSet",
    "CPUMap",
    "DirtyRate",
    "Load",
    "TimeSet",
    "Time",
    "UserSet",
    "User",
    "SystemSet",
    "System",
    "RSSSet",
    "RSS",
    "RxBytesSet",
    "RxBytes",
    "NameSet",
    "StateSet",
    "State",
    "items",
    "diskName",
    "usedBytes",
    "totalBytes",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        prop::sample::select(GO_KEYS).prop_map(str::to_owned),
        ".{0,6}"
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A Go `...Set`-flagged field pair: `{"<key>Set": set, "<key>": value}` (value maybe absent).
fn flagged(object: &mut Map<String, Value>, key: &str, value: Option<u64>) {
    if let Some(value) = value {
        object.insert(format!("{key}Set"), json!(true));
        object.insert(key.to_owned(), json!(value));
    } else {
        object.insert(format!("{key}Set"), json!(false));
    }
}

fn net() -> impl Strategy<Value = NetStats> {
    (
        prop::option::of("[a-z0-9]{1,8}"),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(name, rx_bytes, tx_drop)| NetStats {
            name,
            rx_bytes,
            tx_drop,
            ..NetStats::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn launcher_payloads_never_panic(text in ".{0,200}", value in json_value()) {
        let _ = domain_stats_from_json(&text);
        let _ = filesystems_from_json(&text);
        let encoded = value.to_string();
        let _ = domain_stats_from_json(&encoded);
        let _ = filesystems_from_json(&encoded);
    }

    #[test]
    fn launcher_values_that_are_set_all_arrive(
        name in "[a-zA-Z0-9_-]{1,20}",
        cpu in (prop::option::of(any::<u64>()), prop::option::of(any::<u64>()), prop::option::of(any::<u64>())),
        nets in prop::collection::vec(net(), 0..4),
        unknown in prop::collection::vec(("[A-Z][a-zA-Z]{3,10}Future", json_value()), 0..3),
    ) {
        let mut cpu_json = Map::new();
        flagged(&mut cpu_json, "Time", cpu.0);
        flagged(&mut cpu_json, "User", cpu.1);
        flagged(&mut cpu_json, "System", cpu.2);
        let nets_json: Vec<Value> = nets
            .iter()
            .map(|n| {
                let mut o = Map::new();
                o.insert("NameSet".into(), json!(n.name.is_some()));
                o.insert("Name".into(), json!(n.name.clone().unwrap_or_default()));
                flagged(&mut o, "RxBytes", n.rx_bytes);
                flagged(&mut o, "TxDrop", n.tx_drop);
                Value::Object(o)
            })
            .collect();
        let mut payload = Map::new();
        payload.insert("Name".into(), json!(name));
        payload.insert("Cpu".into(), Value::Object(cpu_json));
        payload.insert("Net".into(), Value::Array(nets_json));
        // Newer launchers add fields; they must not cost the known ones.
        for (key, value) in unknown {
            payload.insert(key, value);
        }
        let decoded = domain_stats_from_json(&Value::Object(payload).to_string()).unwrap();
        prop_assert_eq!(decoded.name.as_deref(), Some(name.as_str()));
        prop_assert_eq!(
            decoded.cpu,
            Some(CpuStats { time: cpu.0, user: cpu.1, system: cpu.2 })
        );
        prop_assert_eq!(decoded.nets, nets);
    }

    #[test]
    fn guest_filesystems_all_arrive_in_both_shapes(
        items in prop::collection::vec(("[a-z]{0,6}", ".{0,16}", "[a-z0-9]{0,6}", any::<i64>(), any::<i64>()), 0..5),
    ) {
        let json_items: Vec<Value> = items
            .iter()
            .map(|(disk, mount, fs, used, total)| json!({
                "diskName": disk, "mountPoint": mount, "fileSystemType": fs,
                "usedBytes": used, "totalBytes": total,
            }))
            .collect();
        let expected: Vec<Filesystem> = items
            .iter()
            .map(|(disk, mount, fs, used, total)| Filesystem {
                disk_name: disk.clone(),
                mount_point: mount.clone(),
                file_system_type: fs.clone(),
                // A negative Go int (overflowed) is clamped, not an error.
                used_bytes: u64::try_from(*used).unwrap_or(0),
                total_bytes: u64::try_from(*total).unwrap_or(0),
            })
            .collect();
        let bare = Value::Array(json_items.clone()).to_string();
        prop_assert_eq!(&filesystems_from_json(&bare).unwrap(), &expected);
        let list = json!({"items": json_items}).to_string();
        prop_assert_eq!(&filesystems_from_json(&list).unwrap(), &expected);
    }
}

// ---------------------------------------------------------------- component text

const SPECIAL_LABELS: [&str; 2] = ["le", "quantile"];

fn label_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,10}".prop_filter("reserved", |n| {
        !n.starts_with("__") && !SPECIAL_LABELS.contains(&n.as_str())
    })
}

/// A label value with everything the text format must escape.
fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![".{0,12}", "[a-z\\\\\"\n ]{0,12}"]
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<i32>().prop_map(f64::from),
        prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
    ]
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        prop::collection::btree_map(label_name(), label_value(), 0..4),
        value(),
        prop::option::of(0i64..4_102_444_800_000),
    )
        .prop_map(|(labels, value, timestamp)| {
            let labels = labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect::<Vec<_>>();
            let sample = Sample::new(labels, value);
            match timestamp {
                Some(ts) => sample.with_timestamp(ts),
                None => sample,
            }
        })
}

/// Well-formed gauge and counter families with distinct names.
fn families() -> impl Strategy<Value = Vec<Family>> {
    prop::collection::btree_map(
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,24}",
        (
            prop_oneof![
                Just(MetricType::Gauge),
                Just(MetricType::Counter),
                Just(MetricType::Untyped)
            ],
            // The format cannot carry leading blanks or a carriage return in HELP
            // (Prometheus' own parser drops them too); everything else must survive.
            prop_oneof![
                Just(String::new()),
                "[^ \t\r\n][^\r\n]{0,29}",
                "[a-z\\\\\n][a-z\\\\\n ]{0,20}",
            ],
            prop::collection::vec(sample(), 1..4),
        ),
        0..5,
    )
    .prop_map(
        |families: BTreeMap<String, (MetricType, String, Vec<Sample>)>| {
            families
                .into_iter()
                .map(|(name, (kind, help, samples))| {
                    let mut family = Family::new(name, help, kind);
                    family.samples = samples;
                    family
                })
                .collect()
        },
    )
}

/// Families with their samples in one fixed order (values compared by bits: `-0.0` and
/// `0.0` are not the same text).
fn canonical(families: &[Family]) -> Vec<(String, String, MetricType, Vec<String>)> {
    families
        .iter()
        .map(|f| {
            let mut samples: Vec<String> = f
                .samples
                .iter()
                .map(|s| {
                    format!(
                        "{}{:?} {} {:?}",
                        s.suffix,
                        s.labels,
                        s.value.to_bits(),
                        s.timestamp_ms
                    )
                })
                .collect();
            samples.sort();
            (f.name.to_string(), f.help.to_string(), f.kind, samples)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn component_text_never_panics_and_errors_name_a_real_line(
        text in prop_oneof![
            ".{0,300}",
            prop::collection::vec(
                prop_oneof![
                    "# (HELP|TYPE) [a-z_]{1,8} .{0,10}",
                    "[a-z_]{1,8}(\\{[a-z]{1,4}=\"[^\"]{0,5}\"?,?\\})? [-+0-9.eEaNIinf]{0,8}( -?[0-9]{0,14})?",
                    ".{0,20}",
                ],
                0..12,
            )
            .prop_map(|lines| lines.join("\n")),
        ],
    ) {
        let lines = text.lines().count();
        match parse(&text) {
            Ok(families) => {
                // Whatever parsed is named by the cheap reader too.
                let names = family_names(&text);
                for family in &families {
                    prop_assert!(names.contains(family.name.as_ref()), "{}", family.name);
                }
            }
            Err(error) => prop_assert!(error.line >= 1 && error.line <= lines, "{error} of {lines} lines"),
        }
    }

    #[test]
    fn component_text_round_trips_without_loss(families in families()) {
        let encoded = text::encode(&families);
        let parsed = parse(&encoded).unwrap();
        // The encoder orders samples as client_golang does; nothing else may change.
        prop_assert_eq!(canonical(&parsed), canonical(&families), "{}", encoded);
        prop_assert_eq!(text::encode(&parsed), encoded.clone());
        let names: Vec<String> = family_names(&encoded).into_iter().collect();
        let mut expected: Vec<String> = families.iter().map(|f| f.name.to_string()).collect();
        expected.sort();
        prop_assert_eq!(names, expected);
    }

    #[test]
    fn one_corrupted_line_is_reported_not_panicked(
        families in families(),
        at in any::<prop::sample::Index>(),
        junk in "[{}\"=, a-z0-9#\\\\]{1,10}",
    ) {
        let encoded = text::encode(&families);
        let mut lines: Vec<String> = encoded.lines().map(str::to_owned).collect();
        prop_assume!(!lines.is_empty());
        let i = at.index(lines.len());
        lines[i].push_str(&junk);
        let corrupted = lines.join("\n");
        if let Err(error) = parse(&corrupted) {
            prop_assert!(error.line >= 1 && error.line <= lines.len(), "{error}");
        }
        let _ = family_names(&corrupted);
    }
}
