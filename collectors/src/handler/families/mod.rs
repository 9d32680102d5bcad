//! virt-handler's per-VMI runtime families, as KubeVirt exports them.
//!
//! Mirrors `pkg/monitoring/metrics/virt-handler/domainstats/*_metrics.go` (memory, cpu with
//! guest load, vcpu, block, network, node CPU affinity, filesystem), `dirty_rate_*.go` and
//! `migrationdomainstats/migrationstats_collector.go` of KubeVirt v1.9: names, types and
//! HELP text are the ones in `testdata/kubevirt-metrics.tsv` (a test holds them together).
//!
//! Rules copied from KubeVirt's code, including its quirks:
//! - Per-VMI series carry `node`, `namespace`, `name` and one `kubernetes_vmi_label_<key>`
//!   per VMI label ([`crate::core::labels::vmi_label_name`]). Migration series carry only `namespace`,
//!   `name`, `node`. Labels are sorted by name (client_golang's order).
//! - All of these are operatormetrics const labels, so a label whose value is empty is left
//!   out (an empty `node`, a VMI label with an empty value, an empty interface alias...).
//! - A value is emitted only when the source reported it (`Some`). Units: KiB × 1024 → bytes,
//!   ns / 1e9 → seconds, dirty rate MiB/s × 1024 × 1024 → bytes/s; page faults, I/O and
//!   network counters, filesystem sizes, guest load and migration job values as they are
//!   (virt-launcher already multiplies `MemDirtyRate` by the page size, so the migration
//!   dirty-memory rate is bytes/s on the wire; a libvirt source must do that multiplication
//!   itself).
//! - vCPU: `id` is the position in the vCPU list; `state` is lower case and, when the state
//!   was not reported, `offline` (Go's zero value); only vCPUs with a time get the
//!   `vcpu_seconds_total` series.
//! - Block devices without a name are skipped; `drive` is the alias unless it is empty, else
//!   the target name. NICs without a name are skipped; `interface` is the alias whenever one
//!   was reported (even empty), else the name. Rx/tx bytes also feed the deprecated
//!   `kubevirt_vmi_network_traffic_bytes_total{type="rx"|"tx"}`.
//! - `kubevirt_vmi_node_cpu_affinity` is the number of `true` entries of the vCPU pin map.
//! - Filesystems are deduplicated on `diskName + mountPoint + fileSystemType` (concatenated,
//!   as KubeVirt does).
//! - `kubevirt_vmi_dirty_rate_bytes_per_second` comes from
//!   [`VmiStats::dirty_rate_mbs`] (virt-handler's separate `GetDomainDirtyRateStats` call,
//!   which it makes only for running VMIs that are not migrating); the `DirtyRate` group
//!   inside `GetDomainStats` is not exported by KubeVirt and is not here either.
//! - Families without samples are not written (client_golang drops them).
//!
//! Where we differ on purpose: KubeVirt fails the whole `/metrics` response when two series
//! collide (e.g. two NICs whose alias is empty); we keep the first. A VMI label key that does
//! not sanitise to a valid label name (impossible for keys the API server accepted) makes
//! KubeVirt drop every series of that VMI; we drop only that label. When two label keys
//! sanitise to the same name KubeVirt picks one at random (Go map order); we keep the value
//! of the key that sorts last.
//!
//! Intentionally absent ([`ABSENT_FAMILIES`]): what only virt-handler's own process knows —
//! its workqueues, REST client, readiness, VMI sync counter, build info, the node's
//! deprecated machine types, guest panic events (pushed to virt-handler by the launcher's
//! domain notifications) and GPU info (kubelet PodResources).

mod migration;

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt as _};

pub use migration::{MigrationHistory, MigrationSample, RING_CAPACITY};

use crate::core::labels::{finish_labels, is_valid_label_name, label, vmi_label_name};
use crate::core::metric::{
    Family, LabelName, LabelValue, Labels, MetricType, Sample, compare_label_values, series_order,
};
use crate::handler::stats::{
    BlockStats, DeviceLabels, DomainStats, Filesystem, MemoryStats, MigrationJobInfo, NetStats,
    VcpuState, VmiIdentity, VmiStats,
};

/// A family this module produces: everything but its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilySpec {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    /// Whether series carry `node` and the `kubernetes_vmi_label_*` labels (all but migration).
    pub vmi_labels: bool,
    /// Labels beyond the VMI identity, in KubeVirt's documentation order.
    pub extra_labels: &'static [&'static str],
    /// The name's hash, computed at compile time: rendering files some twenty thousand
    /// samples per pass at 400 VMIs by family, and hashing a forty-byte name for each was
    /// most of that. Distinct for every family (a test holds that).
    key: u64,
}

/// 64-bit FNV-1a, usable in `const` context.
const fn name_key(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const fn vmi(
    name: &'static str,
    kind: MetricType,
    extra_labels: &'static [&'static str],
    help: &'static str,
) -> FamilySpec {
    FamilySpec {
        name,
        help,
        kind,
        vmi_labels: true,
        extra_labels,
        key: name_key(name),
    }
}

const fn migration(name: &'static str, kind: MetricType, help: &'static str) -> FamilySpec {
    FamilySpec {
        name,
        help,
        kind,
        vmi_labels: false,
        extra_labels: &[],
        key: name_key(name),
    }
}

use MetricType::{Counter, Gauge};

const DRIVE: &[&str] = &["drive"];
const INTERFACE: &[&str] = &["interface"];
const FS: &[&str] = &["disk_name", "mount_point", "file_system_type"];

pub const MEMORY_RESIDENT: FamilySpec = vmi(
    "kubevirt_vmi_memory_resident_bytes",
    Gauge,
    &[],
    "Resident set size of the process running the domain.",
);
pub const MEMORY_AVAILABLE: FamilySpec = vmi(
    "kubevirt_vmi_memory_available_bytes",
    Gauge,
    &[],
    "Amount of usable memory as seen by the domain. This value may not be accurate if a balloon driver is in use or if the guest OS does not initialize all assigned pages",
);
pub const MEMORY_UNUSED: FamilySpec = vmi(
    "kubevirt_vmi_memory_unused_bytes",
    Gauge,
    &[],
    "The amount of memory left completely unused by the system. Memory that is available but used for reclaimable caches should NOT be reported as free.",
);
pub const MEMORY_CACHED: FamilySpec = vmi(
    "kubevirt_vmi_memory_cached_bytes",
    Gauge,
    &[],
    "The amount of memory that is being used to cache I/O and is available to be reclaimed, corresponds to the sum of `Buffers` + `Cached` + `SwapCached` in `/proc/meminfo`.",
);
pub const MEMORY_SWAP_IN: FamilySpec = vmi(
    "kubevirt_vmi_memory_swap_in_traffic_bytes",
    Gauge,
    &[],
    "The total amount of data read from swap space of the guest in bytes.",
);
pub const MEMORY_SWAP_OUT: FamilySpec = vmi(
    "kubevirt_vmi_memory_swap_out_traffic_bytes",
    Gauge,
    &[],
    "The total amount of memory written out to swap space of the guest in bytes.",
);
pub const MEMORY_PGMAJFAULT: FamilySpec = vmi(
    "kubevirt_vmi_memory_pgmajfault_total",
    Counter,
    &[],
    "The number of page faults when disk IO was required. Page faults occur when a process makes a valid access to virtual memory that is not available. When servicing the page fault, if disk IO is required, it is considered as major fault.",
);
pub const MEMORY_PGMINFAULT: FamilySpec = vmi(
    "kubevirt_vmi_memory_pgminfault_total",
    Counter,
    &[],
    "The number of other page faults, when disk IO was not required. Page faults occur when a process makes a valid access to virtual memory that is not available. When servicing the page fault, if disk IO is NOT required, it is considered as minor fault.",
);
pub const MEMORY_ACTUAL_BALLOON: FamilySpec = vmi(
    "kubevirt_vmi_memory_actual_balloon_bytes",
    Gauge,
    &[],
    "Current balloon size in bytes.",
);
pub const MEMORY_USABLE: FamilySpec = vmi(
    "kubevirt_vmi_memory_usable_bytes",
    Gauge,
    &[],
    "The amount of memory which can be reclaimed by balloon without pushing the guest system to swap, corresponds to 'Available' in /proc/meminfo.",
);
pub const MEMORY_DOMAIN: FamilySpec = vmi(
    "kubevirt_vmi_memory_domain_bytes",
    Gauge,
    &[],
    "The amount of memory in bytes allocated to the domain. The `memory` value in domain xml file.",
);
pub const CPU_USAGE: FamilySpec = vmi(
    "kubevirt_vmi_cpu_usage_seconds_total",
    Counter,
    &[],
    "Total CPU time spent in all modes (sum of both vcpu and hypervisor usage).",
);
pub const CPU_USER_USAGE: FamilySpec = vmi(
    "kubevirt_vmi_cpu_user_usage_seconds_total",
    Counter,
    &[],
    "Total CPU time spent in user mode.",
);
pub const CPU_SYSTEM_USAGE: FamilySpec = vmi(
    "kubevirt_vmi_cpu_system_usage_seconds_total",
    Counter,
    &[],
    "Total CPU time spent in system mode.",
);
pub const GUEST_LOAD_1M: FamilySpec = vmi(
    "kubevirt_vmi_guest_load_1m",
    Gauge,
    &[],
    "Guest system load average over 1 minute as reported by the guest agent. Load is defined as the number of processes in the runqueue or waiting for disk I/O. Requires qemu-guest-agent version 10.0.0 or above.",
);
pub const GUEST_LOAD_5M: FamilySpec = vmi(
    "kubevirt_vmi_guest_load_5m",
    Gauge,
    &[],
    "Guest system load average over 5 minutes as reported by the guest agent. Load is defined as the number of processes in the runqueue or waiting for disk I/O. Requires qemu-guest-agent version 10.0.0 or above.",
);
pub const GUEST_LOAD_15M: FamilySpec = vmi(
    "kubevirt_vmi_guest_load_15m",
    Gauge,
    &[],
    "Guest system load average over 15 minutes as reported by the guest agent. Load is defined as the number of processes in the runqueue or waiting for disk I/O. Requires qemu-guest-agent version 10.0.0 or above.",
);
pub const VCPU_SECONDS: FamilySpec = vmi(
    "kubevirt_vmi_vcpu_seconds_total",
    Counter,
    &["id", "state"],
    "Total amount of time spent in each state by each vcpu (cpu_time excluding hypervisor time). Where `id` is the vcpu identifier and `state` can be one of the following: [`OFFLINE`, `RUNNING`, `BLOCKED`].",
);
pub const VCPU_WAIT_SECONDS: FamilySpec = vmi(
    "kubevirt_vmi_vcpu_wait_seconds_total",
    Counter,
    &["id"],
    "Amount of time spent by each vcpu while waiting on I/O.",
);
pub const VCPU_DELAY_SECONDS: FamilySpec = vmi(
    "kubevirt_vmi_vcpu_delay_seconds_total",
    Counter,
    &["id"],
    "Amount of time spent by each vcpu waiting in the queue instead of running.",
);
pub const STORAGE_IOPS_READ: FamilySpec = vmi(
    "kubevirt_vmi_storage_iops_read_total",
    Counter,
    DRIVE,
    "Total number of I/O read operations.",
);
pub const STORAGE_IOPS_WRITE: FamilySpec = vmi(
    "kubevirt_vmi_storage_iops_write_total",
    Counter,
    DRIVE,
    "Total number of I/O write operations.",
);
pub const STORAGE_READ_TRAFFIC: FamilySpec = vmi(
    "kubevirt_vmi_storage_read_traffic_bytes_total",
    Counter,
    DRIVE,
    "Total number of bytes read from storage.",
);
pub const STORAGE_WRITE_TRAFFIC: FamilySpec = vmi(
    "kubevirt_vmi_storage_write_traffic_bytes_total",
    Counter,
    DRIVE,
    "Total number of written bytes.",
);
pub const STORAGE_READ_TIMES: FamilySpec = vmi(
    "kubevirt_vmi_storage_read_times_seconds_total",
    Counter,
    DRIVE,
    "Total time spent on read operations.",
);
pub const STORAGE_WRITE_TIMES: FamilySpec = vmi(
    "kubevirt_vmi_storage_write_times_seconds_total",
    Counter,
    DRIVE,
    "Total time spent on write operations.",
);
pub const STORAGE_FLUSH_REQUESTS: FamilySpec = vmi(
    "kubevirt_vmi_storage_flush_requests_total",
    Counter,
    DRIVE,
    "Total storage flush requests.",
);
pub const STORAGE_FLUSH_TIMES: FamilySpec = vmi(
    "kubevirt_vmi_storage_flush_times_seconds_total",
    Counter,
    DRIVE,
    "Total time spent on cache flushing.",
);
pub const NETWORK_TRAFFIC_DEPRECATED: FamilySpec = vmi(
    "kubevirt_vmi_network_traffic_bytes_total",
    Counter,
    &["interface", "type"],
    "[Deprecated] Total number of bytes sent and received.",
);
pub const NETWORK_RECEIVE_BYTES: FamilySpec = vmi(
    "kubevirt_vmi_network_receive_bytes_total",
    Counter,
    INTERFACE,
    "Total network traffic received in bytes.",
);
pub const NETWORK_TRANSMIT_BYTES: FamilySpec = vmi(
    "kubevirt_vmi_network_transmit_bytes_total",
    Counter,
    INTERFACE,
    "Total network traffic transmitted in bytes.",
);
pub const NETWORK_RECEIVE_PACKETS: FamilySpec = vmi(
    "kubevirt_vmi_network_receive_packets_total",
    Counter,
    INTERFACE,
    "Total network traffic received packets.",
);
pub const NETWORK_TRANSMIT_PACKETS: FamilySpec = vmi(
    "kubevirt_vmi_network_transmit_packets_total",
    Counter,
    INTERFACE,
    "Total network traffic transmitted packets.",
);
pub const NETWORK_RECEIVE_ERRORS: FamilySpec = vmi(
    "kubevirt_vmi_network_receive_errors_total",
    Counter,
    INTERFACE,
    "Total network received error packets.",
);
pub const NETWORK_TRANSMIT_ERRORS: FamilySpec = vmi(
    "kubevirt_vmi_network_transmit_errors_total",
    Counter,
    INTERFACE,
    "Total network transmitted error packets.",
);
pub const NETWORK_RECEIVE_DROPPED: FamilySpec = vmi(
    "kubevirt_vmi_network_receive_packets_dropped_total",
    Counter,
    INTERFACE,
    "The total number of rx packets dropped on vNIC interfaces.",
);
pub const NETWORK_TRANSMIT_DROPPED: FamilySpec = vmi(
    "kubevirt_vmi_network_transmit_packets_dropped_total",
    Counter,
    INTERFACE,
    "The total number of tx packets dropped on vNIC interfaces.",
);
pub const NODE_CPU_AFFINITY: FamilySpec = vmi(
    "kubevirt_vmi_node_cpu_affinity",
    Gauge,
    &[],
    "Number of VMI CPU affinities to node physical cores.",
);
pub const FILESYSTEM_CAPACITY: FamilySpec = vmi(
    "kubevirt_vmi_filesystem_capacity_bytes",
    Gauge,
    FS,
    "Total VM filesystem capacity in bytes.",
);
pub const FILESYSTEM_USED: FamilySpec = vmi(
    "kubevirt_vmi_filesystem_used_bytes",
    Gauge,
    FS,
    "Used VM filesystem capacity in bytes.",
);
pub const DIRTY_RATE: FamilySpec = vmi(
    "kubevirt_vmi_dirty_rate_bytes_per_second",
    Gauge,
    &[],
    "Guest dirty-rate in bytes per second.",
);
pub const MIGRATION_DATA_TOTAL: FamilySpec = migration(
    "kubevirt_vmi_migration_data_bytes_total",
    Counter,
    "The total Guest OS data to be migrated to the new VM.",
);
pub const MIGRATION_DATA_REMAINING: FamilySpec = migration(
    "kubevirt_vmi_migration_data_remaining_bytes",
    Gauge,
    "The remaining guest OS data to be migrated to the new VM.",
);
pub const MIGRATION_DATA_PROCESSED: FamilySpec = migration(
    "kubevirt_vmi_migration_data_processed_bytes",
    Gauge,
    "The total Guest OS data processed and migrated to the new VM.",
);
pub const MIGRATION_DIRTY_MEMORY_RATE: FamilySpec = migration(
    "kubevirt_vmi_migration_dirty_memory_rate_bytes",
    Gauge,
    "The rate of memory being dirty in the Guest OS.",
);
pub const MIGRATION_MEMORY_TRANSFER_RATE: FamilySpec = migration(
    "kubevirt_vmi_migration_memory_transfer_rate_bytes",
    Gauge,
    "The rate at which the memory is being transferred.",
);

/// Every family this module can produce (46), in KubeVirt's documentation order.
pub const FAMILIES: &[FamilySpec] = &[
    MEMORY_RESIDENT,
    MEMORY_AVAILABLE,
    MEMORY_UNUSED,
    MEMORY_CACHED,
    MEMORY_SWAP_IN,
    MEMORY_SWAP_OUT,
    MEMORY_PGMAJFAULT,
    MEMORY_PGMINFAULT,
    MEMORY_ACTUAL_BALLOON,
    MEMORY_USABLE,
    MEMORY_DOMAIN,
    CPU_USAGE,
    CPU_USER_USAGE,
    CPU_SYSTEM_USAGE,
    GUEST_LOAD_1M,
    GUEST_LOAD_5M,
    GUEST_LOAD_15M,
    VCPU_SECONDS,
    VCPU_WAIT_SECONDS,
    VCPU_DELAY_SECONDS,
    STORAGE_IOPS_READ,
    STORAGE_IOPS_WRITE,
    STORAGE_READ_TRAFFIC,
    STORAGE_WRITE_TRAFFIC,
    STORAGE_READ_TIMES,
    STORAGE_WRITE_TIMES,
    STORAGE_FLUSH_REQUESTS,
    STORAGE_FLUSH_TIMES,
    NETWORK_TRAFFIC_DEPRECATED,
    NETWORK_RECEIVE_BYTES,
    NETWORK_TRANSMIT_BYTES,
    NETWORK_RECEIVE_PACKETS,
    NETWORK_TRANSMIT_PACKETS,
    NETWORK_RECEIVE_ERRORS,
    NETWORK_TRANSMIT_ERRORS,
    NETWORK_RECEIVE_DROPPED,
    NETWORK_TRANSMIT_DROPPED,
    NODE_CPU_AFFINITY,
    FILESYSTEM_CAPACITY,
    FILESYSTEM_USED,
    DIRTY_RATE,
    MIGRATION_DATA_TOTAL,
    MIGRATION_DATA_REMAINING,
    MIGRATION_DATA_PROCESSED,
    MIGRATION_DIRTY_MEMORY_RATE,
    MIGRATION_MEMORY_TRANSFER_RATE,
];

/// virt-handler families that only virt-handler's own process can know; never produced here.
pub const ABSENT_FAMILIES: &[&str] = &[
    "kubevirt_workqueue_depth",
    "kubevirt_workqueue_adds_total",
    "kubevirt_workqueue_queue_duration_seconds",
    "kubevirt_workqueue_work_duration_seconds",
    "kubevirt_workqueue_retries_total",
    "kubevirt_workqueue_longest_running_processor_seconds",
    "kubevirt_workqueue_unfinished_work_seconds",
    "kubevirt_rest_client_request_latency_seconds",
    "kubevirt_rest_client_rate_limiter_duration_seconds",
    "kubevirt_rest_client_requests_total",
    "kubevirt_vmi_sync_total",
    "kubevirt_virt_handler_ready_status",
    "kubevirt_info",
    "kubevirt_node_deprecated_machine_types",
    "kubevirt_vmi_guest_os_panic_total",
    "kubevirt_vmi_gpu_info",
];

/// The names of [`FAMILIES`].
pub fn family_names() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().map(|spec| spec.name)
}

/// Renders every family for the given VMIs and drained migration samples. Families come out
/// sorted by name, series sorted and deduplicated; families without samples are left out.
pub fn render(vmis: &[VmiStats], migrations: &[MigrationSample]) -> Vec<Family> {
    let order = IdentityOrder::of(vmis);
    let mut out = Builder::for_vmis(vmis.len());
    for &at in &order.vmis {
        render_vmi(&mut out, &vmis[at]);
    }
    for sample in migrations {
        render_migration(&mut out, sample);
    }
    out.finish(order.strict)
}

/// The VMIs in the order of their identity labels, which is client_golang's order of the
/// families whose series carry only those: rendered in it, such a family comes out ordered
/// and needs no sort of its own. Most families are such (memory, CPU, load, dirty rate), and
/// sorting each of them was a fifth of rendering at 400 VMIs: one sort of the VMIs replaces
/// twenty of their series.
struct IdentityOrder {
    /// Positions in the VMI list.
    vmis: Vec<usize>,
    /// No two VMIs share their identity labels (a VMI reported twice would): then the
    /// families of identity series are in order without ties, and nothing is left to do.
    strict: bool,
}

impl IdentityOrder {
    fn of(vmis: &[VmiStats]) -> Self {
        let labels: Vec<&Labels> = vmis
            .iter()
            .map(|stats| identity_labels(&stats.vmi))
            .collect();
        let mut order: Vec<usize> = (0..vmis.len()).collect();
        let mut tied = false;
        order.sort_by(|&a, &b| {
            let ordering = compare_label_values(labels[a], labels[b]);
            tied |= ordering.is_eq();
            ordering
        });
        Self {
            vmis: order,
            strict: !tied,
        }
    }
}

struct Builder {
    /// By [`FamilySpec::key`].
    families: HashMap<u64, Building>,
    /// Room for this many samples in a new family: one per VMI, the common case.
    capacity: usize,
}

struct Building {
    family: Family,
    /// Every series so far is one VMI's identity labels alone, without a timestamp, pushed
    /// in [`IdentityOrder`].
    identity_series: bool,
}

impl Builder {
    fn for_vmis(vmis: usize) -> Self {
        Self {
            families: HashMap::with_capacity(FAMILIES.len()),
            capacity: vmis,
        }
    }

    /// A series of the VMI's identity labels alone ([`VmiLabels::plain`]).
    fn push_identity(&mut self, spec: &FamilySpec, labels: &VmiLabels, value: f64) {
        let labels = labels.plain();
        let building = self.building(spec);
        // A second series of the same VMI would tie with its first.
        if let Some(last) = building.family.samples.last() {
            building.identity_series &= !last.labels.is_same_set(&labels);
        }
        building.family.samples.push(Sample {
            suffix: "",
            labels,
            value,
            timestamp_ms: None,
        });
    }

    fn push(&mut self, spec: &FamilySpec, labels: Labels, value: f64, timestamp_ms: Option<i64>) {
        let building = self.building(spec);
        building.identity_series = false;
        building.family.samples.push(Sample {
            suffix: "",
            labels,
            value,
            timestamp_ms,
        });
    }

    fn building(&mut self, spec: &FamilySpec) -> &mut Building {
        self.families.entry(spec.key).or_insert_with(|| Building {
            family: Family {
                samples: Vec::with_capacity(self.capacity),
                ..Family::new(spec.name, spec.help, spec.kind)
            },
            identity_series: true,
        })
    }

    /// The families, sorted by name, their series ordered and deduplicated; `ordered` says
    /// the VMIs came in strict [`IdentityOrder`], so that families of identity series
    /// already are.
    fn finish(self, ordered: bool) -> Vec<Family> {
        let mut families: Vec<Building> = self
            .families
            .into_values()
            .filter(|building| !building.family.samples.is_empty())
            .collect();
        families.sort_by(|a, b| a.family.name.cmp(&b.family.name));
        families
            .into_iter()
            .map(|mut building| {
                let kind = building.family.kind;
                let in_order = ordered && building.identity_series && kind.bound_label().is_none();
                if !in_order {
                    order_and_dedup(&mut building.family);
                }
                building.family
            })
            .collect()
    }
}

/// Puts a family's series in client_golang's order ([`series_order`]), once, here, so that
/// the encoders find them ordered; and drops exact duplicates (same labels and timestamp),
/// keeping the first pushed.
///
/// Series tie in that order when their label values are the same, place by place: the same
/// series twice, or label sets that differ only in their names. Within a tie they are
/// ordered by their whole labels, names included, so nothing depends on the order of the
/// input, and duplicates end up next to each other. Ties are rare (a VMI reported twice, two
/// NICs with the same alias), so the common case is the sort alone.
fn order_and_dedup(family: &mut Family) {
    let order = series_order(family.kind);
    let samples = &mut family.samples;
    // A comparison sort compares every pair that ends up adjacent, so a sort that never saw
    // two series compare equal left no tie to resolve.
    let mut compared_equal = false;
    samples.sort_by(|a, b| {
        let ordering = order(a, b);
        compared_equal |= ordering.is_eq();
        ordering
    });
    if !compared_equal {
        return;
    }
    let mut tied = false;
    let mut start = 0;
    for end in 1..=samples.len() {
        if end < samples.len() && order(&samples[end - 1], &samples[end]).is_eq() {
            continue;
        }
        if end - start > 1 {
            samples[start..end].sort_by(|a, b| {
                a.labels
                    .cmp(&b.labels)
                    .then(a.timestamp_ms.cmp(&b.timestamp_ms))
            });
            tied = true;
        }
        start = end;
    }
    if tied {
        samples.dedup_by(|b, a| a.labels == b.labels && a.timestamp_ms == b.timestamp_ms);
    }
}

/// The identity labels of one VMI, shared by all its series; and its devices' labels,
/// reused from the last pass when a device asks for the same ones in the same turn.
struct VmiLabels<'a> {
    vmi: &'a VmiIdentity,
    base: Labels,
    /// Whether the identity outlives this pass (a source that keeps it holds it too), so
    /// that keeping labels in it can pay.
    kept: bool,
    devices: Vec<DeviceLabels>,
    /// How many devices' labels this pass has asked for so far.
    asked: usize,
}

impl<'a> VmiLabels<'a> {
    fn new(vmi: &'a Arc<VmiIdentity>) -> Self {
        let kept = Arc::strong_count(vmi) > 1;
        Self {
            vmi,
            base: identity_labels(vmi).clone(),
            kept,
            devices: if kept {
                vmi.series_labels.take_devices()
            } else {
                Vec::new()
            },
            asked: 0,
        }
    }

    fn build(vmi: &VmiIdentity) -> Labels {
        // Keyed by sanitised name: when two keys collide the later (greater) key wins.
        let mut dynamic: BTreeMap<String, &str> = BTreeMap::new();
        for (key, value) in &vmi.labels {
            let name = vmi_label_name(key);
            if is_valid_label_name(&name) {
                dynamic.insert(name, value);
            }
        }
        let mut base = Vec::with_capacity(3 + dynamic.len());
        base.push((label("node"), vmi.node.as_str().into()));
        base.push((label("namespace"), vmi.namespace.as_str().into()));
        base.push((label("name"), vmi.name.as_str().into()));
        base.extend(
            dynamic
                .into_iter()
                .map(|(name, value)| (LabelName::from(name), LabelValue::from(value))),
        );
        finish_labels(base)
    }

    fn plain(&self) -> Labels {
        self.base.clone()
    }

    /// The identity labels and `extra` ([`Self::build_with`]); the last pass's when it asked
    /// for the same at this turn.
    fn with(&mut self, extra: &[(&'static str, &str)]) -> Labels {
        if !self.kept {
            return self.build_with(extra);
        }
        let turn = self.asked;
        self.asked += 1;
        if let Some(kept) = self.devices.get(turn)
            && kept.built_with(extra)
        {
            return kept.labels.clone();
        }
        let labels = self.build_with(extra);
        let built = DeviceLabels {
            extra: extra
                .iter()
                .map(|&(name, value)| (name, value.into()))
                .collect(),
            labels: labels.clone(),
        };
        match self.devices.get_mut(turn) {
            Some(slot) => *slot = built,
            None => self.devices.push(built),
        }
        labels
    }

    /// The identity labels and `extra`, finished as [`finish_labels`] would: each extra label
    /// with a value goes into its place by name in the already finished base.
    fn build_with(&self, extra: &[(&'static str, &str)]) -> Labels {
        let mut labels = Vec::with_capacity(self.base.len() + extra.len());
        labels.extend_from_slice(&self.base);
        for (name, value) in extra.iter().filter(|(_, value)| !value.is_empty()) {
            let at = labels.partition_point(|(existing, _)| existing.as_str() <= *name);
            labels.insert(at, (label(name), LabelValue::from(*value)));
        }
        labels.into()
    }
}

impl Drop for VmiLabels<'_> {
    /// Keeps what this pass asked for, and no more: the labels of a device gone stay no
    /// longer than one pass.
    fn drop(&mut self) {
        if !self.kept {
            return;
        }
        let mut devices = std::mem::take(&mut self.devices);
        devices.truncate(self.asked);
        self.vmi.series_labels.put_devices(devices);
    }
}

/// The labels of a VMI's identity series, built once per identity.
fn identity_labels(vmi: &VmiIdentity) -> &Labels {
    vmi.series_labels.get_or_init(|| VmiLabels::build(vmi))
}

/// A family, the value the source reported for it, and how to turn it into KubeVirt's unit.
type Conversion = (&'static FamilySpec, Option<u64>, fn(u64) -> f64);

fn kib_to_bytes(kib: u64) -> f64 {
    kib as f64 * 1024.0
}

fn ns_to_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn count(value: u64) -> f64 {
    value as f64
}

fn render_vmi(out: &mut Builder, stats: &VmiStats) {
    let mut labels = VmiLabels::new(&stats.vmi);
    let domain = &stats.domain;
    if let Some(memory) = &domain.memory {
        render_memory(out, &labels, memory);
    }
    render_cpu_and_load(out, &labels, domain);
    render_vcpus(out, &mut labels, domain);
    for block in &domain.blocks {
        render_block(out, &mut labels, block);
    }
    for net in &domain.nets {
        render_net(out, &mut labels, net);
    }
    if let Some(cpu_map) = &domain.cpu_map {
        let pinned = cpu_map.iter().flatten().filter(|pinned| **pinned).count();
        out.push_identity(&NODE_CPU_AFFINITY, &labels, pinned as f64);
    }
    render_filesystems(out, &mut labels, &stats.filesystems);
    if let Some(mbs) = stats.dirty_rate_mbs {
        // int64 arithmetic first, as KubeVirt does.
        let bytes = mbs.wrapping_mul(1024 * 1024);
        out.push_identity(&DIRTY_RATE, &labels, bytes as f64);
    }
}

fn render_memory(out: &mut Builder, labels: &VmiLabels, memory: &MemoryStats) {
    let values: [Conversion; 11] = [
        (&MEMORY_RESIDENT, memory.rss, kib_to_bytes),
        (&MEMORY_AVAILABLE, memory.available, kib_to_bytes),
        (&MEMORY_UNUSED, memory.unused, kib_to_bytes),
        (&MEMORY_CACHED, memory.cached, kib_to_bytes),
        (&MEMORY_SWAP_IN, memory.swap_in, kib_to_bytes),
        (&MEMORY_SWAP_OUT, memory.swap_out, kib_to_bytes),
        (&MEMORY_PGMAJFAULT, memory.major_fault, count),
        (&MEMORY_PGMINFAULT, memory.minor_fault, count),
        (&MEMORY_ACTUAL_BALLOON, memory.actual_balloon, kib_to_bytes),
        (&MEMORY_USABLE, memory.usable, kib_to_bytes),
        (&MEMORY_DOMAIN, memory.total, kib_to_bytes),
    ];
    for (spec, value, convert) in values {
        if let Some(value) = value {
            out.push_identity(spec, labels, convert(value));
        }
    }
}

fn render_cpu_and_load(out: &mut Builder, labels: &VmiLabels, domain: &DomainStats) {
    if let Some(cpu) = &domain.cpu {
        for (spec, value) in [
            (&CPU_USAGE, cpu.time),
            (&CPU_USER_USAGE, cpu.user),
            (&CPU_SYSTEM_USAGE, cpu.system),
        ] {
            if let Some(ns) = value {
                out.push_identity(spec, labels, ns_to_seconds(ns));
            }
        }
    }
    if let Some(load) = &domain.load {
        for (spec, value) in [
            (&GUEST_LOAD_1M, load.load1m),
            (&GUEST_LOAD_5M, load.load5m),
            (&GUEST_LOAD_15M, load.load15m),
        ] {
            if let Some(value) = value {
                out.push_identity(spec, labels, value);
            }
        }
    }
}

fn render_vcpus(out: &mut Builder, labels: &mut VmiLabels, domain: &DomainStats) {
    for (index, vcpu) in domain.vcpus.iter().enumerate() {
        let id = index.to_string();
        if let Some(time) = vcpu.time {
            let state = vcpu.state.unwrap_or(VcpuState::Offline).label();
            let series = labels.with(&[("id", &id), ("state", state)]);
            out.push(&VCPU_SECONDS, series, ns_to_seconds(time), None);
        }
        if vcpu.wait.is_none() && vcpu.delay.is_none() {
            continue;
        }
        let series = labels.with(&[("id", &id)]);
        if let Some(wait) = vcpu.wait {
            out.push(
                &VCPU_WAIT_SECONDS,
                series.clone(),
                ns_to_seconds(wait),
                None,
            );
        }
        if let Some(delay) = vcpu.delay {
            out.push(&VCPU_DELAY_SECONDS, series, ns_to_seconds(delay), None);
        }
    }
}

fn render_block(out: &mut Builder, labels: &mut VmiLabels, block: &BlockStats) {
    let Some(name) = &block.name else {
        return;
    };
    let drive = match &block.alias {
        Some(alias) if !alias.is_empty() => alias,
        _ => name,
    };
    let series = labels.with(&[("drive", drive)]);
    let values: [Conversion; 8] = [
        (&STORAGE_IOPS_READ, block.rd_reqs, count),
        (&STORAGE_IOPS_WRITE, block.wr_reqs, count),
        (&STORAGE_READ_TRAFFIC, block.rd_bytes, count),
        (&STORAGE_WRITE_TRAFFIC, block.wr_bytes, count),
        (&STORAGE_READ_TIMES, block.rd_times, ns_to_seconds),
        (&STORAGE_WRITE_TIMES, block.wr_times, ns_to_seconds),
        (&STORAGE_FLUSH_REQUESTS, block.fl_reqs, count),
        (&STORAGE_FLUSH_TIMES, block.fl_times, ns_to_seconds),
    ];
    for (spec, value, convert) in values {
        if let Some(value) = value {
            out.push(spec, series.clone(), convert(value), None);
        }
    }
}

fn render_net(out: &mut Builder, labels: &mut VmiLabels, net: &NetStats) {
    let Some(name) = &net.name else {
        return;
    };
    let interface = net.alias.as_ref().unwrap_or(name);
    let series = labels.with(&[("interface", interface)]);
    if let Some(rx) = net.rx_bytes {
        let deprecated = labels.with(&[("interface", interface), ("type", "rx")]);
        out.push(&NETWORK_TRAFFIC_DEPRECATED, deprecated, count(rx), None);
    }
    if let Some(tx) = net.tx_bytes {
        let deprecated = labels.with(&[("interface", interface), ("type", "tx")]);
        out.push(&NETWORK_TRAFFIC_DEPRECATED, deprecated, count(tx), None);
    }
    for (spec, value) in [
        (&NETWORK_RECEIVE_BYTES, net.rx_bytes),
        (&NETWORK_TRANSMIT_BYTES, net.tx_bytes),
        (&NETWORK_RECEIVE_PACKETS, net.rx_pkts),
        (&NETWORK_TRANSMIT_PACKETS, net.tx_pkts),
        (&NETWORK_RECEIVE_ERRORS, net.rx_errs),
        (&NETWORK_TRANSMIT_ERRORS, net.tx_errs),
        (&NETWORK_RECEIVE_DROPPED, net.rx_drop),
        (&NETWORK_TRANSMIT_DROPPED, net.tx_drop),
    ] {
        if let Some(value) = value {
            out.push(spec, series.clone(), count(value), None);
        }
    }
}

fn render_filesystems(out: &mut Builder, labels: &mut VmiLabels, filesystems: &[Filesystem]) {
    let mut seen = std::collections::HashSet::new();
    for fs in filesystems {
        let key = format!("{}{}{}", fs.disk_name, fs.mount_point, fs.file_system_type);
        if !seen.insert(key) {
            continue;
        }
        let series = labels.with(&[
            ("disk_name", &fs.disk_name),
            ("mount_point", &fs.mount_point),
            ("file_system_type", &fs.file_system_type),
        ]);
        out.push(
            &FILESYSTEM_CAPACITY,
            series.clone(),
            count(fs.total_bytes),
            None,
        );
        out.push(&FILESYSTEM_USED, series, count(fs.used_bytes), None);
    }
}

fn render_migration(out: &mut Builder, sample: &MigrationSample) {
    let labels = finish_labels(vec![
        (label("namespace"), sample.namespace.as_str().into()),
        (label("name"), sample.name.as_str().into()),
        (label("node"), sample.node.as_str().into()),
    ]);
    let job: &MigrationJobInfo = &sample.job;
    for (spec, value) in [
        (&MIGRATION_DATA_TOTAL, job.data_total),
        (&MIGRATION_DATA_REMAINING, job.data_remaining),
        (&MIGRATION_DATA_PROCESSED, job.data_processed),
        (&MIGRATION_DIRTY_MEMORY_RATE, job.mem_dirty_rate),
        (&MIGRATION_MEMORY_TRANSFER_RATE, job.memory_bps),
    ] {
        if let Some(value) = value {
            out.push(
                spec,
                labels.clone(),
                count(value),
                Some(sample.timestamp_ms),
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
