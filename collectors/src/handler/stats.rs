//! One model of a VMI's domain statistics, fed by every source.
//!
//! KubeVirt's launcher sends `stats.DomainStats` as JSON where each value has a companion
//! `...Set` flag; libvirt's bulk stats simply omit fields they do not know. Both collapse to
//! `Option`: `None` means "not reported", and no sample is emitted for it, exactly as
//! virt-handler skips values whose `Set` flag is false. Units are libvirt's raw units (KiB,
//! nanoseconds); conversion to KubeVirt's units happens once, in `families`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use crate::core::metric::{LabelValue, Labels};

/// Which VMI a set of statistics belongs to, and the labels KubeVirt derives from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmiIdentity {
    pub namespace: String,
    pub name: String,
    /// `vmi.status.nodeName`; in libvirt mode, the node name the collector was given.
    pub node: String,
    /// The VMI's own labels; each becomes one `kubernetes_vmi_label_*` label.
    pub labels: BTreeMap<String, String>,
    /// The labels `families` derives from the fields above, once per identity.
    pub series_labels: LabelCache,
}

/// Labels derived from an identity, built the first time they are asked for. The launcher
/// source shares one identity per VMI object across passes, so each VMI is labelled once
/// per version of it, not once per pass; and so are its devices' series (a vCPU, a disk, a
/// NIC: the identity's labels and the device's), kept from one pass to the next. Building
/// those was the largest part of rendering (about 170 ns a series, for a copy of the
/// identity's labels and a new shared allocation), and a device's labels do not change
/// while the VMI runs.
///
/// A cache, not part of the identity: identities compare equal whether it is filled or
/// not, and a clone starts empty, so an identity cloned to be edited (`Arc::make_mut`)
/// cannot carry labels of the one it came from. An identity is not edited once labelled.
#[derive(Debug, Default)]
pub struct LabelCache {
    identity: OnceLock<Labels>,
    /// By the order in which the last pass asked for them.
    devices: Mutex<Vec<DeviceLabels>>,
}

/// A device's series labels, and the device labels they were built with.
#[derive(Debug)]
pub struct DeviceLabels {
    pub extra: Vec<(&'static str, LabelValue)>,
    pub labels: Labels,
}

impl DeviceLabels {
    /// Whether these labels were built with exactly `extra`.
    pub fn built_with(&self, extra: &[(&'static str, &str)]) -> bool {
        self.extra.len() == extra.len()
            && self
                .extra
                .iter()
                .zip(extra)
                .all(|((name, value), (other_name, other_value))| {
                    name == other_name && value.as_str() == *other_value
                })
    }
}

impl LabelCache {
    pub fn get_or_init(&self, build: impl FnOnce() -> Labels) -> &Labels {
        self.identity.get_or_init(build)
    }

    /// The devices' labels the last pass left, to be given back with [`Self::put_devices`]
    /// (a pass that does not, e.g. one that panicked, only costs the next one a rebuild).
    pub fn take_devices(&self) -> Vec<DeviceLabels> {
        std::mem::take(&mut *self.devices.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn put_devices(&self, devices: Vec<DeviceLabels>) {
        *self.devices.lock().unwrap_or_else(PoisonError::into_inner) = devices;
    }
}

impl Clone for LabelCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for LabelCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LabelCache {}

/// Everything collected for one VMI in one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct VmiStats {
    /// Shared: a source may hand the same identity to every pass.
    pub vmi: Arc<VmiIdentity>,
    pub domain: DomainStats,
    /// From the guest agent (`GetFilesystems`); empty when the agent reports none.
    pub filesystems: Vec<Filesystem>,
    /// `GetDomainDirtyRateStats.dirtyRateMbs`, in MiB/s.
    pub dirty_rate_mbs: Option<i64>,
    /// When the source produced these numbers; used to drop stale results and to stamp
    /// migration samples.
    pub collected_at: SystemTime,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainStats {
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub migrate_job: Option<MigrationJobInfo>,
    pub vcpus: Vec<VcpuStats>,
    pub nets: Vec<NetStats>,
    pub blocks: Vec<BlockStats>,
    /// Per vCPU, which host CPUs it may run on (`virDomainGetVcpuPinInfo`).
    pub cpu_map: Option<Vec<Vec<bool>>>,
    pub dirty_rate: Option<DirtyRateStats>,
    pub load: Option<GuestLoad>,
}

/// Nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub time: Option<u64>,
    pub user: Option<u64>,
    pub system: Option<u64>,
}

/// KiB, except the fault counters (plain counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub unused: Option<u64>,
    pub cached: Option<u64>,
    pub available: Option<u64>,
    pub actual_balloon: Option<u64>,
    pub rss: Option<u64>,
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_fault: Option<u64>,
    pub minor_fault: Option<u64>,
    pub usable: Option<u64>,
    /// `balloon.current` of the bulk stats.
    pub total: Option<u64>,
}

/// libvirt job stats of an outgoing migration, in bytes and bytes/s. `mem_dirty_rate` is
/// bytes/s: virt-launcher already multiplies libvirt's pages/s by `memory_page_size`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationJobInfo {
    pub data_total: Option<u64>,
    pub data_processed: Option<u64>,
    pub memory_bps: Option<u64>,
    pub data_remaining: Option<u64>,
    pub mem_dirty_rate: Option<u64>,
}

/// libvirt's `VIR_VCPU_*` states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuState {
    Offline,
    Running,
    Blocked,
    Unknown,
}

impl VcpuState {
    pub fn from_libvirt(state: i64) -> Self {
        match state {
            0 => Self::Offline,
            1 => Self::Running,
            2 => Self::Blocked,
            _ => Self::Unknown,
        }
    }

    /// The label value KubeVirt writes (lower case, whatever its HELP text says).
    pub fn label(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Running => "running",
            Self::Blocked => "blocked",
            Self::Unknown => "unknown",
        }
    }
}

/// Times in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuStats {
    pub state: Option<VcpuState>,
    pub time: Option<u64>,
    pub wait: Option<u64>,
    pub delay: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// The tap device name (`vnet0`).
    pub name: Option<String>,
    /// The device alias, which KubeVirt sets to the VMI interface name.
    pub alias: Option<String>,
    pub rx_bytes: Option<u64>,
    pub rx_pkts: Option<u64>,
    pub rx_errs: Option<u64>,
    pub rx_drop: Option<u64>,
    pub tx_bytes: Option<u64>,
    pub tx_pkts: Option<u64>,
    pub tx_errs: Option<u64>,
    pub tx_drop: Option<u64>,
}

/// Times in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// The target name (`vda`).
    pub name: Option<String>,
    /// The device alias, which KubeVirt sets to the VMI disk name.
    pub alias: Option<String>,
    pub backing_index: Option<u64>,
    pub path: Option<String>,
    pub rd_reqs: Option<u64>,
    pub rd_bytes: Option<u64>,
    pub rd_times: Option<u64>,
    pub wr_reqs: Option<u64>,
    pub wr_bytes: Option<u64>,
    pub wr_times: Option<u64>,
    pub fl_reqs: Option<u64>,
    pub fl_times: Option<u64>,
    pub errors: Option<u64>,
    pub allocation: Option<u64>,
    pub capacity: Option<u64>,
    pub physical: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyRateStats {
    pub calc_status: Option<i64>,
    pub calc_start_time: Option<i64>,
    pub calc_period: Option<i64>,
    pub megabytes_per_second: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestLoad {
    pub load1m: Option<f64>,
    pub load5m: Option<f64>,
    pub load15m: Option<f64>,
}

/// One entry of the guest agent's filesystem list (`VirtualMachineInstanceFileSystem`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filesystem {
    pub disk_name: String,
    pub mount_point: String,
    pub file_system_type: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}
