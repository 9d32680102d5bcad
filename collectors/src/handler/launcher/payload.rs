//! KubeVirt's launcher payloads (JSON with Go field names and `...Set` flags) → [`crate::handler::stats`].
//! Pure code, shared by the launcher source and the golden tests.
//!
//! `GetDomainStats` carries `stats.DomainStats` (`pkg/virt-launcher/virtwrap/stats/types.go`)
//! marshalled by Go's `encoding/json` without tags, so keys are the Go field names. Every
//! value has a companion `...Set` flag and virt-handler emits a value only when its flag is
//! true; here that becomes `Some`. A flag that is true while its value is missing gives the
//! Go zero value, as Go's decoder would. Unknown keys are ignored (newer launchers add
//! fields), `null` pointers and slices become `None`/empty.
//!
//! `GetFilesystems` carries `v1.VirtualMachineInstanceFileSystemList` with camelCase json tags.

mod fast;

use serde::Deserialize;

use fast::go_struct;

use crate::handler::stats::{
    BlockStats, CpuStats, DirtyRateStats, DomainStats, Filesystem, GuestLoad, MemoryStats,
    MigrationJobInfo, NetStats, VcpuState, VcpuStats,
};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed {what} JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Decodes the `domainStats` string of `GetDomainStatsResponse`.
pub fn domain_stats_from_json(json: &str) -> Result<DomainStats, WireError> {
    let raw = match fast::decode::<go::DomainStats>(json) {
        Some(raw) => raw,
        None => serde_json::from_str(json).map_err(|source| WireError::Json {
            what: "domain stats",
            source,
        })?,
    };
    Ok(raw.into_model())
}

/// Decodes the `guestFilesystemsResponse` string of `GetFilesystems`.
///
/// virt-launcher marshals a bare `[]v1.VirtualMachineInstanceFileSystem` (`null` when the
/// agent reported none) and virt-handler wraps it into a
/// `VirtualMachineInstanceFileSystemList`; both shapes are accepted. An empty string is an
/// empty list, as virt-handler's client treats it.
pub fn filesystems_from_json(json: &str) -> Result<Vec<Filesystem>, WireError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let raw: go::FileSystems = serde_json::from_str(json).map_err(|source| WireError::Json {
        what: "guest filesystems",
        source,
    })?;
    let items = match raw {
        go::FileSystems::Bare(items) => items,
        go::FileSystems::List { items } => items,
    };
    Ok(items
        .unwrap_or_default()
        .into_iter()
        .map(go::FileSystem::into_model)
        .collect())
}

/// `Some(value)` when the Go `...Set` flag is true (the zero value if the value is absent).
fn when_set<T: Default>(flag: Option<bool>, value: Option<T>) -> Option<T> {
    if flag.unwrap_or(false) {
        Some(value.unwrap_or_default())
    } else {
        None
    }
}

/// Mirrors of the Go structs. Every field is optional so that a missing key or a `null`
/// decodes like Go's zero value instead of failing the whole payload.
mod go {
    use super::*;

    go_struct! {
        pub(super) struct DomainStats {
            "Name" => name: String,
            "UUID" => uuid: String,
            "Cpu" => cpu: Cpu,
            "Memory" => memory: Memory,
            "MigrateDomainJobInfo" => migrate_job: JobInfo,
            "Vcpu" => vcpu: Vec<Vcpu>,
            "Net" => net: Vec<Net>,
            "Block" => block: Vec<Block>,
            "CPUMapSet" => cpu_map_set: bool,
            "CPUMap" => cpu_map: Vec<Option<Vec<bool>>>,
            "DirtyRate" => dirty_rate: DirtyRate,
            "Load" => load: Load,
        }
    }

    impl DomainStats {
        pub(super) fn into_model(self) -> crate::handler::stats::DomainStats {
            let cpu_map = self.cpu_map.map(|rows| {
                rows.into_iter()
                    .map(Option::unwrap_or_default)
                    .collect::<Vec<_>>()
            });
            crate::handler::stats::DomainStats {
                name: self.name.filter(|n| !n.is_empty()),
                uuid: self.uuid.filter(|u| !u.is_empty()),
                cpu: self.cpu.map(Cpu::into_model),
                memory: self.memory.map(Memory::into_model),
                migrate_job: self.migrate_job.and_then(JobInfo::into_model),
                vcpus: list(self.vcpu, Vcpu::into_model),
                nets: list(self.net, Net::into_model),
                blocks: list(self.block, Block::into_model),
                cpu_map: when_set(self.cpu_map_set, cpu_map),
                dirty_rate: self.dirty_rate.map(DirtyRate::into_model),
                load: self.load.map(Load::into_model),
            }
        }
    }

    fn list<G, M>(items: Option<Vec<G>>, convert: fn(G) -> M) -> Vec<M> {
        items.unwrap_or_default().into_iter().map(convert).collect()
    }

    go_struct! {
        struct Cpu {
            "TimeSet" => time_set: bool,
            "Time" => time: u64,
            "UserSet" => user_set: bool,
            "User" => user: u64,
            "SystemSet" => system_set: bool,
            "System" => system: u64,
        }
    }

    impl Cpu {
        fn into_model(self) -> CpuStats {
            CpuStats {
                time: when_set(self.time_set, self.time),
                user: when_set(self.user_set, self.user),
                system: when_set(self.system_set, self.system),
            }
        }
    }

    go_struct! {
        struct Memory {
            "UnusedSet" => unused_set: bool,
            "Unused" => unused: u64,
            "CachedSet" => cached_set: bool,
            "Cached" => cached: u64,
            "AvailableSet" => available_set: bool,
            "Available" => available: u64,
            "ActualBalloonSet" => actual_balloon_set: bool,
            "ActualBalloon" => actual_balloon: u64,
            "RSSSet" => rss_set: bool,
            "RSS" => rss: u64,
            "SwapInSet" => swap_in_set: bool,
            "SwapIn" => swap_in: u64,
            "SwapOutSet" => swap_out_set: bool,
            "SwapOut" => swap_out: u64,
            "MajorFaultSet" => major_fault_set: bool,
            "MajorFault" => major_fault: u64,
            "MinorFaultSet" => minor_fault_set: bool,
            "MinorFault" => minor_fault: u64,
            "UsableSet" => usable_set: bool,
            "Usable" => usable: u64,
            "TotalSet" => total_set: bool,
            "Total" => total: u64,
        }
    }

    impl Memory {
        fn into_model(self) -> MemoryStats {
            MemoryStats {
                unused: when_set(self.unused_set, self.unused),
                cached: when_set(self.cached_set, self.cached),
                available: when_set(self.available_set, self.available),
                actual_balloon: when_set(self.actual_balloon_set, self.actual_balloon),
                rss: when_set(self.rss_set, self.rss),
                swap_in: when_set(self.swap_in_set, self.swap_in),
                swap_out: when_set(self.swap_out_set, self.swap_out),
                major_fault: when_set(self.major_fault_set, self.major_fault),
                minor_fault: when_set(self.minor_fault_set, self.minor_fault),
                usable: when_set(self.usable_set, self.usable),
                total: when_set(self.total_set, self.total),
            }
        }
    }

    go_struct! {
        struct JobInfo {
            "DataTotalSet" => data_total_set: bool,
            "DataTotal" => data_total: u64,
            "DataProcessedSet" => data_processed_set: bool,
            "DataProcessed" => data_processed: u64,
            "MemoryBpsSet" => memory_bps_set: bool,
            "MemoryBps" => memory_bps: u64,
            "DataRemainingSet" => data_remaining_set: bool,
            "DataRemaining" => data_remaining: u64,
            "MemDirtyRateSet" => mem_dirty_rate_set: bool,
            "MemDirtyRate" => mem_dirty_rate: u64,
        }
    }

    impl JobInfo {
        /// virt-launcher always sends this struct, empty outside a migration; an empty one
        /// becomes `None` so "is this VMI migrating" is a plain `is_some()`.
        fn into_model(self) -> Option<MigrationJobInfo> {
            let job = MigrationJobInfo {
                data_total: when_set(self.data_total_set, self.data_total),
                data_processed: when_set(self.data_processed_set, self.data_processed),
                memory_bps: when_set(self.memory_bps_set, self.memory_bps),
                data_remaining: when_set(self.data_remaining_set, self.data_remaining),
                mem_dirty_rate: when_set(self.mem_dirty_rate_set, self.mem_dirty_rate),
            };
            (job != MigrationJobInfo::default()).then_some(job)
        }
    }

    go_struct! {
        struct Vcpu {
            "StateSet" => state_set: bool,
            "State" => state: i64,
            "TimeSet" => time_set: bool,
            "Time" => time: u64,
            "WaitSet" => wait_set: bool,
            "Wait" => wait: u64,
            "DelaySet" => delay_set: bool,
            "Delay" => delay: u64,
        }
    }

    impl Vcpu {
        fn into_model(self) -> VcpuStats {
            VcpuStats {
                state: when_set(self.state_set, self.state).map(VcpuState::from_libvirt),
                time: when_set(self.time_set, self.time),
                wait: when_set(self.wait_set, self.wait),
                delay: when_set(self.delay_set, self.delay),
            }
        }
    }

    go_struct! {
        struct Net {
            "NameSet" => name_set: bool,
            "Name" => name: String,
            "AliasSet" => alias_set: bool,
            "Alias" => alias: String,
            "RxBytesSet" => rx_bytes_set: bool,
            "RxBytes" => rx_bytes: u64,
            "RxPktsSet" => rx_pkts_set: bool,
            "RxPkts" => rx_pkts: u64,
            "RxErrsSet" => rx_errs_set: bool,
            "RxErrs" => rx_errs: u64,
            "RxDropSet" => rx_drop_set: bool,
            "RxDrop" => rx_drop: u64,
            "TxBytesSet" => tx_bytes_set: bool,
            "TxBytes" => tx_bytes: u64,
            "TxPktsSet" => tx_pkts_set: bool,
            "TxPkts" => tx_pkts: u64,
            "TxErrsSet" => tx_errs_set: bool,
            "TxErrs" => tx_errs: u64,
            "TxDropSet" => tx_drop_set: bool,
            "TxDrop" => tx_drop: u64,
        }
    }

    impl Net {
        fn into_model(self) -> NetStats {
            NetStats {
                name: when_set(self.name_set, self.name),
                alias: when_set(self.alias_set, self.alias),
                rx_bytes: when_set(self.rx_bytes_set, self.rx_bytes),
                rx_pkts: when_set(self.rx_pkts_set, self.rx_pkts),
                rx_errs: when_set(self.rx_errs_set, self.rx_errs),
                rx_drop: when_set(self.rx_drop_set, self.rx_drop),
                tx_bytes: when_set(self.tx_bytes_set, self.tx_bytes),
                tx_pkts: when_set(self.tx_pkts_set, self.tx_pkts),
                tx_errs: when_set(self.tx_errs_set, self.tx_errs),
                tx_drop: when_set(self.tx_drop_set, self.tx_drop),
            }
        }
    }

    go_struct! {
        struct Block {
            "NameSet" => name_set: bool,
            "Name" => name: String,
            /// No `Set` flag in Go: an empty string means "no alias".
            "Alias" => alias: String,
            "BackingIndexSet" => backing_index_set: bool,
            "BackingIndex" => backing_index: u64,
            "PathSet" => path_set: bool,
            "Path" => path: String,
            "RdReqsSet" => rd_reqs_set: bool,
            "RdReqs" => rd_reqs: u64,
            "RdBytesSet" => rd_bytes_set: bool,
            "RdBytes" => rd_bytes: u64,
            "RdTimesSet" => rd_times_set: bool,
            "RdTimes" => rd_times: u64,
            "WrReqsSet" => wr_reqs_set: bool,
            "WrReqs" => wr_reqs: u64,
            "WrBytesSet" => wr_bytes_set: bool,
            "WrBytes" => wr_bytes: u64,
            "WrTimesSet" => wr_times_set: bool,
            "WrTimes" => wr_times: u64,
            "FlReqsSet" => fl_reqs_set: bool,
            "FlReqs" => fl_reqs: u64,
            "FlTimesSet" => fl_times_set: bool,
            "FlTimes" => fl_times: u64,
            "ErrorsSet" => errors_set: bool,
            "Errors" => errors: u64,
            "AllocationSet" => allocation_set: bool,
            "Allocation" => allocation: u64,
            "CapacitySet" => capacity_set: bool,
            "Capacity" => capacity: u64,
            "PhysicalSet" => physical_set: bool,
            "Physical" => physical: u64,
        }
    }

    impl Block {
        fn into_model(self) -> BlockStats {
            BlockStats {
                name: when_set(self.name_set, self.name),
                alias: self.alias.filter(|a| !a.is_empty()),
                backing_index: when_set(self.backing_index_set, self.backing_index),
                path: when_set(self.path_set, self.path),
                rd_reqs: when_set(self.rd_reqs_set, self.rd_reqs),
                rd_bytes: when_set(self.rd_bytes_set, self.rd_bytes),
                rd_times: when_set(self.rd_times_set, self.rd_times),
                wr_reqs: when_set(self.wr_reqs_set, self.wr_reqs),
                wr_bytes: when_set(self.wr_bytes_set, self.wr_bytes),
                wr_times: when_set(self.wr_times_set, self.wr_times),
                fl_reqs: when_set(self.fl_reqs_set, self.fl_reqs),
                fl_times: when_set(self.fl_times_set, self.fl_times),
                errors: when_set(self.errors_set, self.errors),
                allocation: when_set(self.allocation_set, self.allocation),
                capacity: when_set(self.capacity_set, self.capacity),
                physical: when_set(self.physical_set, self.physical),
            }
        }
    }

    go_struct! {
        struct DirtyRate {
            "CalcStatusSet" => calc_status_set: bool,
            "CalcStatus" => calc_status: i64,
            "CalcStartTimeSet" => calc_start_time_set: bool,
            "CalcStartTime" => calc_start_time: i64,
            "CalcPeriodSet" => calc_period_set: bool,
            "CalcPeriod" => calc_period: i64,
            "MegabytesPerSecondSet" => megabytes_per_second_set: bool,
            "MegabytesPerSecond" => megabytes_per_second: i64,
        }
    }

    impl DirtyRate {
        fn into_model(self) -> DirtyRateStats {
            DirtyRateStats {
                calc_status: when_set(self.calc_status_set, self.calc_status),
                calc_start_time: when_set(self.calc_start_time_set, self.calc_start_time),
                calc_period: when_set(self.calc_period_set, self.calc_period),
                megabytes_per_second: when_set(
                    self.megabytes_per_second_set,
                    self.megabytes_per_second,
                ),
            }
        }
    }

    go_struct! {
        struct Load {
            "Load1mSet" => load1m_set: bool,
            "Load1m" => load1m: f64,
            "Load5mSet" => load5m_set: bool,
            "Load5m" => load5m: f64,
            "Load15mSet" => load15m_set: bool,
            "Load15m" => load15m: f64,
        }
    }

    impl Load {
        fn into_model(self) -> GuestLoad {
            GuestLoad {
                load1m: when_set(self.load1m_set, self.load1m),
                load5m: when_set(self.load5m_set, self.load5m),
                load15m: when_set(self.load15m_set, self.load15m),
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum FileSystems {
        /// What virt-launcher sends.
        Bare(Option<Vec<FileSystem>>),
        /// `VirtualMachineInstanceFileSystemList`, as virt-handler holds it.
        List { items: Option<Vec<FileSystem>> },
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct FileSystem {
        disk_name: Option<String>,
        mount_point: Option<String>,
        file_system_type: Option<String>,
        /// Go `int`: signed on the wire.
        used_bytes: Option<i64>,
        total_bytes: Option<i64>,
    }

    impl FileSystem {
        /// Negative sizes (a Go `int` overflowed by a huge guest filesystem) are clamped
        /// to zero rather than failing the whole list.
        pub(super) fn into_model(self) -> Filesystem {
            let bytes = |v: Option<i64>| u64::try_from(v.unwrap_or(0)).unwrap_or(0);
            Filesystem {
                disk_name: self.disk_name.unwrap_or_default(),
                mount_point: self.mount_point.unwrap_or_default(),
                file_system_type: self.file_system_type.unwrap_or_default(),
                used_bytes: bytes(self.used_bytes),
                total_bytes: bytes(self.total_bytes),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_are_some_only_when_their_set_flag_is_true() {
        let json = r#"{
            "Name": "ns_vm", "UUID": "u-1",
            "Cpu": {"TimeSet": true, "Time": 5, "UserSet": false, "User": 7, "SystemSet": true},
            "Memory": {"RSSSet": true, "RSS": 1024, "TotalSet": false, "Total": 99},
            "Vcpu": [{"StateSet": true, "State": 2, "TimeSet": true, "Time": 1,
                      "WaitSet": false, "Wait": 3, "DelaySet": true, "Delay": 4}],
            "CPUMapSet": false, "CPUMap": [[true]]
        }"#;
        let stats = domain_stats_from_json(json).unwrap();
        assert_eq!(stats.name.as_deref(), Some("ns_vm"));
        assert_eq!(stats.uuid.as_deref(), Some("u-1"));
        let cpu = stats.cpu.unwrap();
        assert_eq!(cpu.time, Some(5));
        assert_eq!(cpu.user, None);
        // Set without a value: Go's zero value.
        assert_eq!(cpu.system, Some(0));
        let memory = stats.memory.unwrap();
        assert_eq!(memory.rss, Some(1024));
        assert_eq!(memory.total, None);
        assert_eq!(
            stats.vcpus,
            vec![VcpuStats {
                state: Some(VcpuState::Blocked),
                time: Some(1),
                wait: None,
                delay: Some(4),
            }]
        );
        assert_eq!(stats.cpu_map, None);
    }

    #[test]
    fn null_pointers_and_slices_are_absent() {
        let json = r#"{"Name":"d","UUID":"","Cpu":null,"Memory":null,
            "MigrateDomainJobInfo":null,"Vcpu":null,"Net":null,"Block":null,
            "CPUMapSet":true,"CPUMap":null,"DirtyRate":null,"Load":null}"#;
        let stats = domain_stats_from_json(json).unwrap();
        assert_eq!(
            stats,
            DomainStats {
                name: Some("d".into()),
                cpu_map: Some(vec![]),
                ..DomainStats::default()
            }
        );
        assert_eq!(
            domain_stats_from_json("{}").unwrap(),
            DomainStats::default()
        );
    }

    #[test]
    fn an_empty_job_info_is_no_migration() {
        let idle = r#"{"MigrateDomainJobInfo":{"DataTotalSet":false,"DataTotal":0,
            "MemDirtyRateSet":false,"MemDirtyRate":0}}"#;
        assert_eq!(domain_stats_from_json(idle).unwrap().migrate_job, None);
        let busy = r#"{"MigrateDomainJobInfo":{"DataTotalSet":true,"DataTotal":10,
            "MemoryBpsSet":true,"MemoryBps":3,"MemDirtyRateSet":true,"MemDirtyRate":4096}}"#;
        assert_eq!(
            domain_stats_from_json(busy).unwrap().migrate_job,
            Some(MigrationJobInfo {
                data_total: Some(10),
                memory_bps: Some(3),
                mem_dirty_rate: Some(4096),
                ..MigrationJobInfo::default()
            })
        );
    }

    #[test]
    fn block_alias_has_no_set_flag_and_empty_means_none() {
        let json = r#"{"Block":[
            {"NameSet":true,"Name":"vda","Alias":"rootdisk","RdReqsSet":true,"RdReqs":3},
            {"NameSet":true,"Name":"vdb","Alias":""},
            {"NameSet":false,"Name":"","Alias":"x"}]}"#;
        let blocks = domain_stats_from_json(json).unwrap().blocks;
        assert_eq!(blocks[0].alias.as_deref(), Some("rootdisk"));
        assert_eq!(blocks[0].rd_reqs, Some(3));
        assert_eq!(blocks[1].alias, None);
        assert_eq!(blocks[2].name, None);
        assert_eq!(blocks[2].alias.as_deref(), Some("x"));
    }

    #[test]
    fn net_alias_follows_its_set_flag_even_when_empty() {
        let json = r#"{"Net":[{"NameSet":true,"Name":"tap0","AliasSet":true,"Alias":""},
                              {"NameSet":true,"Name":"tap1","AliasSet":false,"Alias":"x"}]}"#;
        let nets = domain_stats_from_json(json).unwrap().nets;
        assert_eq!(nets[0].alias.as_deref(), Some(""));
        assert_eq!(nets[1].alias, None);
    }

    #[test]
    fn unknown_fields_are_ignored_and_full_u64_range_survives() {
        let json = r#"{"Name":"d","NrVirtCpu":4,"CgroupMemory":{"AnonSet":true},
            "Cpu":{"TimeSet":true,"Time":18446744073709551615,"Future":1}}"#;
        let stats = domain_stats_from_json(json).unwrap();
        assert_eq!(stats.cpu.unwrap().time, Some(u64::MAX));
    }

    #[test]
    fn load_is_float() {
        let json = r#"{"Load":{"Load1mSet":true,"Load1m":0.25,"Load5mSet":false,
            "Load5m":1,"Load15mSet":true,"Load15m":3}}"#;
        let load = domain_stats_from_json(json).unwrap().load.unwrap();
        assert_eq!(
            load,
            GuestLoad {
                load1m: Some(0.25),
                load5m: None,
                load15m: Some(3.0)
            }
        );
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        for bad in [
            "",
            "{",
            "[]",
            "null",
            r#"{"Cpu":{"TimeSet":"yes"}}"#,
            r#"{"Cpu":{"TimeSet":true,"Time":-1}}"#,
            r#"{"Vcpu":{"StateSet":true}}"#,
            r#"{"CPUMap":[[1]]}"#,
            r#"{"Name":"d"} trailing"#,
        ] {
            let err = domain_stats_from_json(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("malformed domain stats JSON"),
                "{bad}: {err}"
            );
        }
        for bad in [
            "{",
            "42",
            r#"{"items":{}}"#,
            r#"{"items":[{"usedBytes":"1"}]}"#,
            r#"[{"usedBytes":1.5}]"#,
        ] {
            assert!(filesystems_from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filesystems_use_camel_case_tags() {
        let json = r#"{"metadata":{},"items":[
            {"diskName":"vda1","mountPoint":"/","fileSystemType":"ext4",
             "usedBytes":1000,"totalBytes":4000,"disk":[{"serial":"abc","busType":"virtio"}]},
            {"diskName":"","mountPoint":"/boot","fileSystemType":"vfat","usedBytes":-5}]}"#;
        assert_eq!(
            filesystems_from_json(json).unwrap(),
            vec![
                Filesystem {
                    disk_name: "vda1".into(),
                    mount_point: "/".into(),
                    file_system_type: "ext4".into(),
                    total_bytes: 4000,
                    used_bytes: 1000,
                },
                Filesystem {
                    disk_name: String::new(),
                    mount_point: "/boot".into(),
                    file_system_type: "vfat".into(),
                    total_bytes: 0,
                    used_bytes: 0,
                },
            ]
        );
        assert_eq!(filesystems_from_json(r#"{"items":null}"#).unwrap(), vec![]);
        assert_eq!(filesystems_from_json("null").unwrap(), vec![]);
        assert_eq!(filesystems_from_json("").unwrap(), vec![]);
        assert_eq!(filesystems_from_json("[]").unwrap(), vec![]);
        let bare = r#"[{"diskName":"vda1","mountPoint":"/","fileSystemType":"xfs",
            "usedBytes":2,"totalBytes":3,"disk":[{"serial":"rootdisk","busType":"virtio"}]}]"#;
        assert_eq!(filesystems_from_json(bare).unwrap().len(), 1);
        assert_eq!(filesystems_from_json(r#"{"metadata":{}}"#).unwrap(), vec![]);
    }
}
