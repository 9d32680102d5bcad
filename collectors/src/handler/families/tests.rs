use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::handler::stats::{CpuStats, GuestLoad, VcpuStats};

fn identity(labels: &[(&str, &str)]) -> VmiIdentity {
    VmiIdentity {
        namespace: "ns1".into(),
        name: "vm1".into(),
        node: "node-a".into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

fn vmi_stats(domain: DomainStats) -> VmiStats {
    VmiStats {
        vmi: identity(&[]).into(),
        domain,
        filesystems: vec![],
        dirty_rate_mbs: None,
        collected_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    }
}

fn family<'a>(families: &'a [Family], name: &str) -> &'a Family {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("family {name} missing"))
}

fn label_pairs(sample: &Sample) -> Vec<(String, String)> {
    sample
        .labels
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn family_table_is_complete_and_unique() {
    assert_eq!(FAMILIES.len(), 46);
    let mut names: Vec<&str> = family_names().collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), FAMILIES.len());
    for absent in ABSENT_FAMILIES {
        assert!(!names.contains(absent), "{absent}");
    }
    // Rendering files samples by key: two families with one key would become one.
    let mut keys: Vec<u64> = FAMILIES.iter().map(|spec| spec.key).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), FAMILIES.len());
}

#[test]
fn memory_converts_kib_to_bytes_except_faults() {
    let families = render(
        &[vmi_stats(DomainStats {
            memory: Some(MemoryStats {
                rss: Some(2),
                total: Some(1_048_576),
                major_fault: Some(7),
                minor_fault: Some(9),
                ..MemoryStats::default()
            }),
            ..DomainStats::default()
        })],
        &[],
    );
    let names: Vec<&str> = families.iter().map(|f| f.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "kubevirt_vmi_memory_domain_bytes",
            "kubevirt_vmi_memory_pgmajfault_total",
            "kubevirt_vmi_memory_pgminfault_total",
            "kubevirt_vmi_memory_resident_bytes",
        ]
    );
    assert_eq!(
        family(&families, "kubevirt_vmi_memory_resident_bytes").samples[0].value,
        2048.0
    );
    assert_eq!(
        family(&families, "kubevirt_vmi_memory_domain_bytes").samples[0].value,
        1_073_741_824.0
    );
    assert_eq!(
        family(&families, "kubevirt_vmi_memory_pgmajfault_total").samples[0].value,
        7.0
    );
    let resident = family(&families, "kubevirt_vmi_memory_resident_bytes");
    assert_eq!(resident.kind, MetricType::Gauge);
    assert_eq!(
        resident.help,
        "Resident set size of the process running the domain."
    );
}

#[test]
fn cpu_and_vcpu_convert_nanoseconds_to_seconds() {
    let families = render(
        &[vmi_stats(DomainStats {
            cpu: Some(CpuStats {
                time: Some(1_500_000_000),
                user: None,
                system: Some(1),
            }),
            vcpus: vec![
                VcpuStats {
                    state: Some(VcpuState::Running),
                    time: Some(2_000_000_000),
                    wait: Some(10),
                    delay: None,
                },
                // State not reported: Go's zero value is "offline".
                VcpuStats {
                    state: None,
                    time: Some(3),
                    wait: None,
                    delay: Some(250_000_000),
                },
                // No time: no vcpu_seconds series at all.
                VcpuStats {
                    state: Some(VcpuState::Blocked),
                    time: None,
                    wait: None,
                    delay: None,
                },
            ],
            ..DomainStats::default()
        })],
        &[],
    );
    assert_eq!(
        family(&families, "kubevirt_vmi_cpu_usage_seconds_total").samples[0].value,
        1.5
    );
    assert_eq!(
        family(&families, "kubevirt_vmi_cpu_system_usage_seconds_total").samples[0].value,
        1e-9
    );
    assert!(
        families
            .iter()
            .all(|f| f.name != "kubevirt_vmi_cpu_user_usage_seconds_total")
    );
    let vcpu = family(&families, "kubevirt_vmi_vcpu_seconds_total");
    let series: Vec<(Vec<(String, String)>, f64)> = vcpu
        .samples
        .iter()
        .map(|s| (label_pairs(s), s.value))
        .collect();
    assert_eq!(
        series,
        vec![
            (
                pairs(&[
                    ("id", "0"),
                    ("name", "vm1"),
                    ("namespace", "ns1"),
                    ("node", "node-a"),
                    ("state", "running"),
                ]),
                2.0
            ),
            (
                pairs(&[
                    ("id", "1"),
                    ("name", "vm1"),
                    ("namespace", "ns1"),
                    ("node", "node-a"),
                    ("state", "offline"),
                ]),
                3e-9
            ),
        ]
    );
    let delay = family(&families, "kubevirt_vmi_vcpu_delay_seconds_total");
    assert_eq!(delay.samples.len(), 1);
    assert_eq!(delay.samples[0].value, 0.25);
}

#[test]
fn vmi_labels_are_sanitised_sorted_and_empty_values_dropped() {
    let mut stats = vmi_stats(DomainStats {
        cpu: Some(CpuStats {
            time: Some(1),
            ..CpuStats::default()
        }),
        ..DomainStats::default()
    });
    stats.vmi = VmiIdentity {
        node: String::new(),
        ..identity(&[
            ("kubevirt.io/nodeName", "node-a"),
            ("app.kubernetes.io/part-of", "shop"),
            ("empty", ""),
            ("Zone", "z1"),
        ])
    }
    .into();
    let families = render(&[stats], &[]);
    let sample = &family(&families, "kubevirt_vmi_cpu_usage_seconds_total").samples[0];
    assert_eq!(
        label_pairs(sample),
        pairs(&[
            ("kubernetes_vmi_label_Zone", "z1"),
            ("kubernetes_vmi_label_app_kubernetes_io_part_of", "shop"),
            ("kubernetes_vmi_label_kubevirt_io_nodeName", "node-a"),
            ("name", "vm1"),
            ("namespace", "ns1"),
        ])
    );
}

#[test]
fn colliding_label_keys_keep_the_last_key_and_invalid_names_are_skipped() {
    let mut stats = vmi_stats(DomainStats {
        cpu_map: Some(vec![vec![true, false, true], vec![], vec![true]]),
        ..DomainStats::default()
    });
    stats.vmi = identity(&[("a-b", "dash"), ("a.b", "dot"), ("bad:key", "x")]).into();
    let families = render(&[stats], &[]);
    let sample = &family(&families, "kubevirt_vmi_node_cpu_affinity").samples[0];
    assert_eq!(sample.value, 3.0);
    assert_eq!(
        label_pairs(sample),
        pairs(&[
            ("kubernetes_vmi_label_a_b", "dot"),
            ("name", "vm1"),
            ("namespace", "ns1"),
            ("node", "node-a"),
        ])
    );
}

#[test]
fn storage_drive_is_alias_else_name_and_nameless_devices_are_skipped() {
    let families = render(
        &[vmi_stats(DomainStats {
            blocks: vec![
                BlockStats {
                    name: Some("vda".into()),
                    alias: Some("rootdisk".into()),
                    rd_times: Some(2_500_000_000),
                    fl_reqs: Some(4),
                    ..BlockStats::default()
                },
                BlockStats {
                    name: Some("vdb".into()),
                    alias: Some(String::new()),
                    rd_times: Some(1),
                    ..BlockStats::default()
                },
                BlockStats {
                    name: None,
                    alias: Some("ghost".into()),
                    rd_times: Some(1),
                    ..BlockStats::default()
                },
            ],
            ..DomainStats::default()
        })],
        &[],
    );
    let read_times = family(&families, "kubevirt_vmi_storage_read_times_seconds_total");
    let drives: Vec<(&str, f64)> = read_times
        .samples
        .iter()
        .map(|s| {
            let drive = s.labels.iter().find(|(n, _)| n == "drive").unwrap();
            (drive.1.as_str(), s.value)
        })
        .collect();
    assert_eq!(drives, [("rootdisk", 2.5), ("vdb", 1e-9)]);
    assert_eq!(
        family(&families, "kubevirt_vmi_storage_flush_requests_total").samples[0].value,
        4.0
    );
}

#[test]
fn network_interface_is_alias_when_reported_and_feeds_the_deprecated_family() {
    let families = render(
        &[vmi_stats(DomainStats {
            nets: vec![
                NetStats {
                    name: Some("tap0".into()),
                    alias: Some("default".into()),
                    rx_bytes: Some(100),
                    tx_bytes: Some(200),
                    rx_drop: Some(1),
                    ..NetStats::default()
                },
                NetStats {
                    name: Some("tap1".into()),
                    alias: None,
                    tx_bytes: Some(5),
                    ..NetStats::default()
                },
                NetStats {
                    name: None,
                    alias: Some("ghost".into()),
                    rx_bytes: Some(1),
                    ..NetStats::default()
                },
            ],
            ..DomainStats::default()
        })],
        &[],
    );
    let deprecated = family(&families, "kubevirt_vmi_network_traffic_bytes_total");
    let series: Vec<(String, String, f64)> = deprecated
        .samples
        .iter()
        .map(|s| {
            let get = |name: &str| {
                s.labels
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.to_string())
                    .unwrap()
            };
            (get("interface"), get("type"), s.value)
        })
        .collect();
    assert_eq!(
        series,
        [
            ("default".into(), "rx".into(), 100.0),
            ("default".into(), "tx".into(), 200.0),
            ("tap1".into(), "tx".into(), 5.0),
        ]
    );
    assert_eq!(
        family(&families, "kubevirt_vmi_network_transmit_bytes_total")
            .samples
            .len(),
        2
    );
    assert_eq!(
        family(
            &families,
            "kubevirt_vmi_network_receive_packets_dropped_total"
        )
        .samples[0]
            .value,
        1.0
    );
}

#[test]
fn colliding_series_are_kept_once() {
    // Two NICs with an empty alias both lose their interface label.
    let nic = NetStats {
        name: Some("tap".into()),
        alias: Some(String::new()),
        rx_pkts: Some(1),
        ..NetStats::default()
    };
    let families = render(
        &[vmi_stats(DomainStats {
            nets: vec![nic.clone(), nic],
            ..DomainStats::default()
        })],
        &[],
    );
    let packets = family(&families, "kubevirt_vmi_network_receive_packets_total");
    assert_eq!(packets.samples.len(), 1);
    assert!(
        packets.samples[0]
            .labels
            .iter()
            .all(|(n, _)| n != "interface")
    );
}

#[test]
fn the_first_of_colliding_series_wins_and_ties_do_not_depend_on_input_order() {
    let nic = |rx_pkts| NetStats {
        name: Some("tap".into()),
        alias: Some(String::new()),
        rx_pkts: Some(rx_pkts),
        ..NetStats::default()
    };
    let families = render(
        &[vmi_stats(DomainStats {
            nets: vec![nic(7), nic(9)],
            ..DomainStats::default()
        })],
        &[],
    );
    let packets = family(&families, "kubevirt_vmi_network_receive_packets_total");
    assert_eq!(packets.samples.len(), 1);
    assert_eq!(packets.samples[0].value, 7.0);

    // The same VMI reported twice with different label keys but the same values: the two
    // series tie in client_golang's order (it compares values only) and come out ordered by
    // label names, whichever was reported first.
    let with_label = |key: &str, rx: u64| VmiStats {
        vmi: identity(&[(key, "x")]).into(),
        ..vmi_stats(DomainStats {
            nets: vec![NetStats {
                name: Some("tap".into()),
                rx_pkts: Some(rx),
                ..NetStats::default()
            }],
            memory: Some(MemoryStats {
                rss: Some(rx),
                ..MemoryStats::default()
            }),
            ..DomainStats::default()
        })
    };
    for input in [
        [with_label("b", 2), with_label("a", 1)],
        [with_label("a", 1), with_label("b", 2)],
    ] {
        let families = render(&input, &[]);
        for (name, expected) in [
            ("kubevirt_vmi_network_receive_packets_total", [1.0, 2.0]),
            // A family of identity series alone: the two identities tie here, so it is
            // sorted after all, and the tie is broken by label names as above.
            ("kubevirt_vmi_memory_resident_bytes", [1024.0, 2048.0]),
        ] {
            let values: Vec<f64> = family(&families, name)
                .samples
                .iter()
                .map(|s| s.value)
                .collect();
            assert_eq!(values, expected, "{name}");
        }
    }
}

#[test]
fn a_vmi_reported_twice_gives_its_identity_series_once() {
    let stats = |rss| {
        vmi_stats(DomainStats {
            memory: Some(MemoryStats {
                rss: Some(rss),
                ..MemoryStats::default()
            }),
            ..DomainStats::default()
        })
    };
    let families = render(&[stats(2), stats(1)], &[]);
    let resident = family(&families, "kubevirt_vmi_memory_resident_bytes");
    assert_eq!(resident.samples.len(), 1);
    assert_eq!(resident.samples[0].value, 2048.0);
}

#[test]
fn rendered_series_are_already_in_client_golang_order() {
    let vmi = |namespace: &str, name: &str, app: &str| VmiStats {
        vmi: VmiIdentity {
            namespace: namespace.into(),
            name: name.into(),
            ..identity(&[("app", app)])
        }
        .into(),
        ..vmi_stats(DomainStats {
            memory: Some(MemoryStats {
                rss: Some(1),
                ..MemoryStats::default()
            }),
            blocks: ["vdb", "vda"]
                .into_iter()
                .map(|name| BlockStats {
                    name: Some(name.into()),
                    rd_reqs: Some(1),
                    ..BlockStats::default()
                })
                .collect(),
            ..DomainStats::default()
        })
    };
    let families = render(
        &[
            vmi("ns2", "a", "web"),
            vmi("ns1", "b", "db"),
            vmi("ns1", "a", "web"),
        ],
        &[],
    );
    for (family, ordered) in crate::core::metric::client_golang_order(&families) {
        let rendered: Vec<&Sample> = family.samples.iter().collect();
        assert_eq!(rendered, ordered, "{}", family.name);
    }
    let reads = family(&families, "kubevirt_vmi_storage_iops_read_total");
    let order: Vec<Vec<(String, String)>> = reads.samples.iter().map(label_pairs).collect();
    assert_eq!(order[0][0], ("drive".to_owned(), "vda".to_owned()));
    assert_eq!(
        order[0][1],
        ("kubernetes_vmi_label_app".to_owned(), "db".to_owned())
    );
}

#[test]
fn filesystems_guest_load_and_dirty_rate() {
    let mut stats = vmi_stats(DomainStats {
        load: Some(GuestLoad {
            load1m: Some(0.5),
            load5m: None,
            load15m: Some(0.0),
        }),
        ..DomainStats::default()
    });
    stats.dirty_rate_mbs = Some(3);
    stats.filesystems = vec![
        Filesystem {
            disk_name: "vda1".into(),
            mount_point: "/".into(),
            file_system_type: "ext4".into(),
            total_bytes: 1000,
            used_bytes: 400,
        },
        Filesystem {
            disk_name: "vda1".into(),
            mount_point: "/".into(),
            file_system_type: "ext4".into(),
            total_bytes: 1,
            used_bytes: 1,
        },
        Filesystem {
            disk_name: String::new(),
            mount_point: "/run".into(),
            file_system_type: "tmpfs".into(),
            total_bytes: 10,
            used_bytes: 0,
        },
    ];
    let families = render(&[stats], &[]);
    let capacity = family(&families, "kubevirt_vmi_filesystem_capacity_bytes");
    assert_eq!(capacity.samples.len(), 2);
    let values: Vec<f64> = capacity.samples.iter().map(|s| s.value).collect();
    assert!(values.contains(&1000.0) && values.contains(&10.0));
    let tmpfs = capacity.samples.iter().find(|s| s.value == 10.0).unwrap();
    assert!(tmpfs.labels.iter().all(|(n, _)| n != "disk_name"));
    assert_eq!(
        family(&families, "kubevirt_vmi_guest_load_1m").samples[0].value,
        0.5
    );
    // Reported zero is still a value.
    assert_eq!(
        family(&families, "kubevirt_vmi_guest_load_15m").samples[0].value,
        0.0
    );
    assert!(
        families
            .iter()
            .all(|f| f.name != "kubevirt_vmi_guest_load_5m")
    );
    assert_eq!(
        family(&families, "kubevirt_vmi_dirty_rate_bytes_per_second").samples[0].value,
        3.0 * 1024.0 * 1024.0
    );
}

#[test]
fn migration_samples_carry_only_identity_labels_and_their_timestamp() {
    let sample = MigrationSample {
        namespace: "ns1".into(),
        name: "vm1".into(),
        node: "node-a".into(),
        timestamp_ms: 1_800_000_000_123,
        job: MigrationJobInfo {
            data_total: Some(10),
            data_processed: Some(4),
            memory_bps: Some(2),
            data_remaining: Some(6),
            mem_dirty_rate: Some(8192),
        },
    };
    let families = render(&[], &[sample]);
    assert_eq!(families.len(), 5);
    for family in &families {
        assert_eq!(family.samples.len(), 1);
        let s = &family.samples[0];
        assert_eq!(s.timestamp_ms, Some(1_800_000_000_123));
        assert_eq!(
            label_pairs(s),
            pairs(&[("name", "vm1"), ("namespace", "ns1"), ("node", "node-a")])
        );
    }
    assert_eq!(
        family(&families, "kubevirt_vmi_migration_dirty_memory_rate_bytes").samples[0].value,
        8192.0
    );
    assert_eq!(
        family(&families, "kubevirt_vmi_migration_data_bytes_total").kind,
        MetricType::Counter
    );
}

#[test]
fn nothing_reported_renders_nothing() {
    assert_eq!(render(&[vmi_stats(DomainStats::default())], &[]), vec![]);
    let empty_parts = DomainStats {
        cpu: Some(CpuStats::default()),
        memory: Some(MemoryStats::default()),
        load: Some(GuestLoad::default()),
        ..DomainStats::default()
    };
    assert_eq!(render(&[vmi_stats(empty_parts)], &[]), vec![]);
}

/// The operator decides backports from the flags crate's catalog; it must name exactly the
/// families defined here.
#[test]
fn flags_catalog_lists_exactly_these_families() {
    let defined: Vec<&str> = family_names().collect();
    assert_eq!(
        kubevirt_metrics_flags::catalog::HANDLER_FAMILIES,
        defined.as_slice()
    );
}

/// A source that keeps a VMI's identity across passes (the launcher source does) gets its
/// devices' labels back from the pass before, but only for a device that asks for the same
/// ones: whatever the devices do between passes, each pass renders exactly as a fresh
/// identity would.
#[test]
fn device_labels_kept_between_passes_render_as_a_fresh_identity_does() {
    let kept = Arc::new(identity(&[("app", "db")]));
    let _held_by_the_source = Arc::clone(&kept);
    let disks = |aliases: &[&str]| -> Vec<BlockStats> {
        aliases
            .iter()
            .map(|alias| BlockStats {
                name: Some(format!("vd-{alias}")),
                alias: Some((*alias).to_owned()),
                rd_reqs: Some(alias.len() as u64),
                ..BlockStats::default()
            })
            .collect()
    };
    let pass = |vmi: &Arc<VmiIdentity>, aliases: &[&str]| {
        let vcpus = (0..aliases.len())
            .map(|_| VcpuStats {
                state: Some(VcpuState::Running),
                time: Some(7),
                ..VcpuStats::default()
            })
            .collect();
        let stats = VmiStats {
            vmi: Arc::clone(vmi),
            ..vmi_stats(DomainStats {
                blocks: disks(aliases),
                vcpus,
                ..DomainStats::default()
            })
        };
        render(&[stats], &[])
    };
    type Shown = Vec<(String, Vec<(Vec<(String, String)>, f64)>)>;
    let shown = |families: &[Family]| -> Shown {
        families
            .iter()
            .map(|f| {
                let samples = f.samples.iter().map(|s| (label_pairs(s), s.value));
                (f.name.to_string(), samples.collect())
            })
            .collect()
    };
    let turns: [&[&str]; 6] = [
        &["root", "data"],
        &["root", "data"],
        &["data", "root"],
        &["root"],
        &["root", "data", "logs"],
        &[],
    ];
    for aliases in turns {
        let fresh = pass(&Arc::new(identity(&[("app", "db")])), aliases);
        assert_eq!(shown(&pass(&kept, aliases)), shown(&fresh), "{aliases:?}");
    }

    // The same devices twice: the second pass holds the first one's label sets.
    let addresses = |families: &[Family]| -> Vec<Option<usize>> {
        family(families, "kubevirt_vmi_storage_iops_read_total")
            .samples
            .iter()
            .map(|s| s.labels.shared_address())
            .collect()
    };
    let first = pass(&kept, &["root", "data"]);
    let second = pass(&kept, &["root", "data"]);
    assert!(addresses(&first).iter().all(Option::is_some));
    assert_eq!(addresses(&first), addresses(&second));
}
