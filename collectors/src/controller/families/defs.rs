//! Names, types and HELP texts of the virt-controller families this collector rebuilds, exactly
//! as KubeVirt v1.9.0 registers them (`pkg/monitoring/metrics/virt-controller/*.go`; checked
//! against `testdata/kubevirt-metrics.tsv` by `tests/controller_tsv.rs`).

use crate::core::metric::{Family, MetricType};

pub struct Def {
    pub name: &'static str,
    pub kind: MetricType,
    pub help: &'static str,
}

impl Def {
    pub fn family(&self) -> Family {
        Family::new(self.name, self.help, self.kind)
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Def {
    Def {
        name,
        kind: MetricType::Gauge,
        help,
    }
}

const fn counter(name: &'static str, help: &'static str) -> Def {
    Def {
        name,
        kind: MetricType::Counter,
        help,
    }
}

pub const VMSNAPSHOT_SUCCEEDED_TIMESTAMP: Def = gauge(
    "kubevirt_vmsnapshot_succeeded_timestamp_seconds",
    "Returns the timestamp of successful virtual machine snapshot.",
);
pub const MIGRATIONS_PENDING: Def = gauge(
    "kubevirt_vmi_migrations_in_pending_phase",
    "Number of current pending migrations.",
);
pub const MIGRATIONS_SCHEDULING: Def = gauge(
    "kubevirt_vmi_migrations_in_scheduling_phase",
    "Number of current scheduling migrations.",
);
pub const MIGRATIONS_UNSET: Def = gauge(
    "kubevirt_vmi_migrations_in_unset_phase",
    "Number of current unset migrations. These are pending items the virt-controller hasn\u{2019}t processed yet from the queue.",
);
pub const MIGRATIONS_RUNNING: Def = gauge(
    "kubevirt_vmi_migrations_in_running_phase",
    "Number of current running migrations.",
);
pub const MIGRATION_SUCCEEDED: Def = gauge(
    "kubevirt_vmi_migration_succeeded",
    "Indicates if the VMI migration succeeded.",
);
pub const MIGRATION_FAILED: Def = gauge(
    "kubevirt_vmi_migration_failed",
    "Indicates if the VMI migration failed.",
);
pub const VMI_INFO: Def = gauge(
    "kubevirt_vmi_info",
    "Information about VirtualMachineInstances.",
);
pub const VMI_NON_EVICTABLE: Def = gauge(
    "kubevirt_vmi_non_evictable",
    "Indication for a VirtualMachine that its eviction strategy is set to Live Migration but is not migratable.",
);
pub const VMI_STATUS_ADDRESSES: Def = gauge(
    "kubevirt_vmi_status_addresses",
    "The addresses of a VirtualMachineInstance. This metric provides the address of an available network interface associated with the VMI in the 'address' label, and about the type of address, such as internal IP, in the 'type' label.",
);
pub const VMI_MIGRATION_START_TIME: Def = gauge(
    "kubevirt_vmi_migration_start_time_seconds",
    "The time at which the migration started.",
);
pub const VMI_MIGRATION_END_TIME: Def = gauge(
    "kubevirt_vmi_migration_end_time_seconds",
    "The time at which the migration ended.",
);
pub const VMI_VNIC_INFO: Def = gauge(
    "kubevirt_vmi_vnic_info",
    "Details of VirtualMachineInstance (VMI) vNIC interfaces, such as vNIC name, binding type, network name, and binding name for each vNIC of a running instance.",
);
pub const VMI_LAUNCHER_MEMORY_OVERHEAD: Def = gauge(
    "kubevirt_vmi_launcher_memory_overhead_bytes",
    "Estimation of the memory amount required for virt-launcher's infrastructure components (e.g. libvirt, QEMU).",
);
pub const VM_STARTING_TIMESTAMP: Def = counter(
    "kubevirt_vm_starting_status_last_transition_timestamp_seconds",
    "Virtual Machine last transition timestamp to starting status.",
);
pub const VM_RUNNING_TIMESTAMP: Def = counter(
    "kubevirt_vm_running_status_last_transition_timestamp_seconds",
    "Virtual Machine last transition timestamp to running status.",
);
pub const VM_MIGRATING_TIMESTAMP: Def = counter(
    "kubevirt_vm_migrating_status_last_transition_timestamp_seconds",
    "Virtual Machine last transition timestamp to migrating status.",
);
pub const VM_NON_RUNNING_TIMESTAMP: Def = counter(
    "kubevirt_vm_non_running_status_last_transition_timestamp_seconds",
    "Virtual Machine last transition timestamp to paused/stopped status.",
);
pub const VM_ERROR_TIMESTAMP: Def = counter(
    "kubevirt_vm_error_status_last_transition_timestamp_seconds",
    "Virtual Machine last transition timestamp to error status.",
);
pub const VM_RESOURCE_REQUESTS: Def = gauge(
    "kubevirt_vm_resource_requests",
    "Resources requested by Virtual Machine. Reports memory and CPU requests.",
);
pub const VM_RESOURCE_LIMITS: Def = gauge(
    "kubevirt_vm_resource_limits",
    "Resource limits set for a Virtual Machine. Reports CPU and memory limits only when they are defined.",
);
pub const VM_INFO: Def = gauge("kubevirt_vm_info", "Information about Virtual Machines.");
pub const VM_DISK_ALLOCATED_SIZE: Def = gauge(
    "kubevirt_vm_disk_allocated_size_bytes",
    "Allocated disk size of a Virtual Machine in bytes, based on its PersistentVolumeClaim. Includes persistentvolumeclaim (PVC name), volume_mode (disk presentation mode: Filesystem or Block), and device (disk name).",
);
pub const VM_CREATE_DATE: Def = gauge(
    "kubevirt_vm_create_date_timestamp_seconds",
    "Virtual Machine creation timestamp.",
);
pub const VM_VNIC_INFO: Def = gauge(
    "kubevirt_vm_vnic_info",
    "Details of Virtual Machine (VM) vNIC interfaces, such as vNIC name, binding type, network name, and binding name for each vNIC defined in the VM's configuration.",
);
pub const VM_LABELS: Def = gauge(
    "kubevirt_vm_labels",
    "The metric exposes the VM labels as Prometheus labels. Configure allowed and ignored labels via the 'kubevirt-vm-labels-config' ConfigMap.",
);

/// Backport (off by default): leader status derived from the `virt-controller` Lease.
pub const VIRT_CONTROLLER_LEADING_STATUS: Def = gauge(
    "kubevirt_virt_controller_leading_status",
    "Indication for an operating virt-controller.",
);

/// Every family [`super::render`] can produce, in its output order.
pub const RENDERED: &[&Def] = &[
    &VMSNAPSHOT_SUCCEEDED_TIMESTAMP,
    &MIGRATIONS_PENDING,
    &MIGRATIONS_SCHEDULING,
    &MIGRATIONS_UNSET,
    &MIGRATIONS_RUNNING,
    &MIGRATION_SUCCEEDED,
    &MIGRATION_FAILED,
    &VMI_INFO,
    &VMI_NON_EVICTABLE,
    &VMI_STATUS_ADDRESSES,
    &VMI_MIGRATION_START_TIME,
    &VMI_MIGRATION_END_TIME,
    &VMI_VNIC_INFO,
    &VMI_LAUNCHER_MEMORY_OVERHEAD,
    &VM_STARTING_TIMESTAMP,
    &VM_RUNNING_TIMESTAMP,
    &VM_MIGRATING_TIMESTAMP,
    &VM_NON_RUNNING_TIMESTAMP,
    &VM_ERROR_TIMESTAMP,
    &VM_RESOURCE_REQUESTS,
    &VM_RESOURCE_LIMITS,
    &VM_INFO,
    &VM_DISK_ALLOCATED_SIZE,
    &VM_CREATE_DATE,
    &VM_VNIC_INFO,
    &VM_LABELS,
];
