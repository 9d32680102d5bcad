//! `kubevirt_vm_*` families of virt-controller (`vmstats_collector.go`).

use super::defs::*;
use super::instancetype::{effective_spec, vm_instancetype, vm_preference};
use super::vmi::{MODEL_NONE, push_vnics};
use super::{float, labels, push_unique, seconds, vm_labels};
use crate::controller::store::ClusterState;
use crate::core::metric::{Family, Sample};
use crate::k8s::objects::quantity::Quantity;
use crate::k8s::objects::*;

const STARTING: &[&str] = &["Provisioning", "Starting", "WaitingForVolumeBinding"];
const RUNNING: &[&str] = &["Running"];
const MIGRATING: &[&str] = &["Migrating"];
const NON_RUNNING: &[&str] = &["Stopped", "Paused", "Stopping", "Terminating"];
const ERROR: &[&str] = &[
    "CrashLoopBackOff",
    "Unknown",
    "ErrorUnschedulable",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrorPvcNotFound",
    "DataVolumeError",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum StatusGroup {
    Starting,
    Running,
    Migrating,
    NonRunning,
    Error,
    Unknown,
}

fn status_group(printable_status: &str) -> StatusGroup {
    let is = |group: &[&str]| group.contains(&printable_status);
    if is(STARTING) {
        StatusGroup::Starting
    } else if is(RUNNING) {
        StatusGroup::Running
    } else if is(MIGRATING) {
        StatusGroup::Migrating
    } else if is(NON_RUNNING) {
        StatusGroup::NonRunning
    } else if is(ERROR) {
        StatusGroup::Error
    } else {
        StatusGroup::Unknown
    }
}

impl StatusGroup {
    fn label(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Migrating => "migrating",
            Self::NonRunning => "non_running",
            Self::Error => "error",
            Self::Unknown => "<unknown>",
        }
    }

    /// Index into the five transition-timestamp families; an unknown status counts as error.
    fn timestamp_index(self) -> usize {
        match self {
            Self::Starting => 0,
            Self::Running => 1,
            Self::Migrating => 2,
            Self::NonRunning => 3,
            Self::Error | Self::Unknown => 4,
        }
    }
}

pub fn render(state: &ClusterState) -> Vec<Family> {
    let mut timestamps = [
        VM_STARTING_TIMESTAMP.family(),
        VM_RUNNING_TIMESTAMP.family(),
        VM_MIGRATING_TIMESTAMP.family(),
        VM_NON_RUNNING_TIMESTAMP.family(),
        VM_ERROR_TIMESTAMP.family(),
    ];
    let mut requests = VM_RESOURCE_REQUESTS.family();
    let mut limits = VM_RESOURCE_LIMITS.family();
    let mut info = VM_INFO.family();
    let mut disks = VM_DISK_ALLOCATED_SIZE.family();
    let mut created = VM_CREATE_DATE.family();
    let mut vnics = VM_VNIC_INFO.family();
    let mut vm_labels_family = VM_LABELS.family();
    let labels_config = vm_labels::LabelsConfig::from_state(state);

    for vm in state.vms.values() {
        let meta = &vm.metadata;
        let group = status_group(&vm.status.printable_status);
        info.samples
            .push(Sample::new(info_labels(state, vm, group), 1.0));
        push_resources(&mut requests, &mut limits, state, vm);
        push_timestamps(&mut timestamps, vm, group);
        if let Some(template) = &vm.spec.template {
            push_disks(&mut disks, state, vm, template);
            push_vnics(
                &mut vnics,
                &meta.name,
                &meta.namespace,
                &template.spec.domain.devices.interfaces,
                &template.spec.networks,
            );
        }
        if let Some(ts) = meta.creation_timestamp {
            created.samples.push(Sample::new(
                labels([("name", &meta.name), ("namespace", &meta.namespace)]),
                seconds(ts),
            ));
        }
        if let Some(sample) = vm_labels::sample(vm, &labels_config) {
            vm_labels_family.samples.push(sample);
        }
    }
    let mut families: Vec<Family> = timestamps.into_iter().collect();
    families.extend([
        requests,
        limits,
        info,
        disks,
        created,
        vnics,
        vm_labels_family,
    ]);
    families
}

fn info_labels(
    state: &ClusterState,
    vm: &VirtualMachine,
    group: StatusGroup,
) -> crate::core::metric::Labels {
    let meta = &vm.metadata;
    let template = vm.spec.template.as_ref();
    let annotation = |key: &str| {
        template
            .and_then(|t| t.metadata.annotations.get(key))
            .map_or("", String::as_str)
    };
    let machine_type = template
        .and_then(|t| t.spec.domain.machine.as_ref())
        .map_or("", |m| m.type_.as_str());
    let status = vm.status.printable_status.to_lowercase();
    let instance_type = vm_instancetype(state, vm);
    let preference = vm_preference(state, vm);
    labels([
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("os", annotation(ANNOTATION_OS)),
        ("workload", annotation(ANNOTATION_WORKLOAD)),
        ("flavor", annotation(ANNOTATION_FLAVOR)),
        ("machine_type", machine_type),
        ("instance_type", &instance_type),
        ("preference", &preference),
        ("status", &status),
        ("status_group", group.label()),
    ])
}

/// The five `*_status_last_transition_timestamp_seconds` series of a VM: the latest
/// transition of its Ready/Failure/Paused conditions (or -1) on the family of its status
/// group, 0 on the others.
fn push_timestamps(families: &mut [Family; 5], vm: &VirtualMachine, group: StatusGroup) {
    let last_transition = vm
        .status
        .conditions
        .iter()
        .filter(|c| matches!(c.type_.as_str(), "Ready" | "Failure" | "Paused"))
        .filter_map(|c| c.last_transition_time)
        .map(|t| t.0)
        .fold(-1, i64::max);
    let current = group.timestamp_index();
    for (i, family) in families.iter_mut().enumerate() {
        let value = if i == current {
            float(last_transition)
        } else {
            0.0
        };
        family.samples.push(Sample::new(
            labels([
                ("name", &vm.metadata.name),
                ("namespace", &vm.metadata.namespace),
            ]),
            value,
        ));
    }
}

fn push_resources(
    requests: &mut Family,
    limits: &mut Family,
    state: &ClusterState,
    vm: &VirtualMachine,
) {
    let Some(spec) = effective_spec(state, vm) else {
        return;
    };
    let name = vm.metadata.name.as_str();
    let namespace = vm.metadata.namespace.as_str();
    let mut request = |resource: &str, unit: &str, source: &str, value: f64| {
        requests.samples.push(Sample::new(
            labels([
                ("name", name),
                ("namespace", namespace),
                ("resource", resource),
                ("unit", unit),
                ("source", source),
            ]),
            value,
        ));
    };
    let domain = &spec.domain;
    let resources = &domain.resources;
    let nonzero = |q: Option<&Quantity>| q.copied().filter(|q| !q.is_zero());

    // Memory requests from domain resources, guest memory and hugepages.
    if let Some(memory) = nonzero(resources.requests.get("memory")) {
        request("memory", "bytes", "domain", float(memory.value()));
    }
    if let Some(memory) = &domain.memory {
        if let Some(guest) = nonzero(memory.guest.as_ref()) {
            request("memory", "bytes", "guest", float(guest.value()));
        }
        if let Some(page_size) = memory
            .hugepages
            .as_ref()
            .and_then(|h| Quantity::parse(&h.page_size).ok())
        {
            request("memory", "bytes", "hugepages", float(page_size.value()));
        }
    }
    // CPU topology requested in the domain.
    if let Some(cpu) = &domain.cpu {
        for (unit, count) in [
            ("cores", cpu.cores),
            ("threads", cpu.threads),
            ("sockets", cpu.sockets),
        ] {
            if count != 0 {
                request("cpu", unit, "domain", f64::from(count));
            }
        }
    }
    // CPU requests from domain resources, or KubeVirt's one-vCPU default.
    match nonzero(resources.requests.get("cpu")) {
        Some(cpu) => request(
            "cpu",
            "cores",
            "requests",
            float(cpu.milli_value()) / 1000.0,
        ),
        None if domain.cpu.is_none() => {
            for unit in ["cores", "threads", "sockets"] {
                request("cpu", unit, "default", 1.0);
            }
        }
        None => {}
    }
    // What the guest ends up with.
    request(
        "cpu",
        "cores",
        "guest_effective",
        vcpus(domain.cpu.as_ref()) as f64,
    );
    if let Some(memory) = nonzero(guest_effective_memory(domain).as_ref()) {
        request("memory", "bytes", "guest_effective", float(memory.value()));
    }

    if let Some(memory) = nonzero(resources.limits.get("memory")) {
        limits.samples.push(Sample::new(
            labels([
                ("name", name),
                ("namespace", namespace),
                ("resource", "memory"),
                ("unit", "bytes"),
            ]),
            float(memory.value()),
        ));
    }
    if let Some(cpu) = nonzero(resources.limits.get("cpu")) {
        limits.samples.push(Sample::new(
            labels([
                ("name", name),
                ("namespace", namespace),
                ("resource", "cpu"),
                ("unit", "cores"),
            ]),
            float(cpu.milli_value()) / 1000.0,
        ));
    }
}

/// KubeVirt's `GetNumberOfVCPUs`: cores × sockets × threads, counting unset parts as 1.
fn vcpus(cpu: Option<&Cpu>) -> u64 {
    let Some(cpu) = cpu else {
        return 1;
    };
    let product = [cpu.cores, cpu.sockets, cpu.threads]
        .into_iter()
        .filter(|&n| n != 0)
        .map(u64::from)
        .product::<u64>();
    product.max(1)
}

/// KubeVirt's `GetVirtualMemory`: guest memory, else the limit when no request is set, else
/// the request.
fn guest_effective_memory(domain: &DomainSpec) -> Option<Quantity> {
    if let Some(guest) = domain.memory.as_ref().and_then(|m| m.guest) {
        return Some(guest);
    }
    let request = domain.resources.requests.get("memory");
    match (request, domain.resources.limits.get("memory")) {
        (None, Some(limit)) => Some(*limit),
        (request, _) => request.copied(),
    }
}

fn push_disks(
    family: &mut Family,
    state: &ClusterState,
    vm: &VirtualMachine,
    template: &VmiTemplate,
) {
    let from = family.samples.len();
    let meta = &vm.metadata;
    for volume in &template.spec.volumes {
        let (claim, is_data_volume) = if let Some(pvc) = &volume.persistent_volume_claim {
            (pvc.claim_name.as_str(), false)
        } else if let Some(dv) = &volume.data_volume {
            (dv.name.as_str(), true)
        } else {
            continue;
        };
        if claim.is_empty() {
            continue;
        }
        let Some(pvc) = state.pvcs.get(&object_key(&meta.namespace, claim)) else {
            continue;
        };
        let size = is_data_volume
            .then(|| data_volume_template_size(vm, claim))
            .flatten()
            .or_else(|| pvc.spec.resources.requests.get("storage").copied())
            .unwrap_or(Quantity::ZERO);
        let volume_mode = pvc.spec.volume_mode.as_deref().unwrap_or(MODEL_NONE);
        let labels = labels([
            ("name", &meta.name),
            ("namespace", &meta.namespace),
            ("persistentvolumeclaim", &pvc.metadata.name),
            ("volume_mode", volume_mode),
            ("device", &volume.name),
        ]);
        push_unique(family, from, labels, float(size.value()));
    }
}

/// The storage request in the VM's DataVolume template of that name (`spec.pvc` or
/// `spec.storage`; a template without a request counts as 0, as in KubeVirt).
fn data_volume_template_size(vm: &VirtualMachine, name: &str) -> Option<Quantity> {
    let template = vm
        .spec
        .data_volume_templates
        .iter()
        .find(|t| t.metadata.name == name)?;
    let storage = template
        .spec
        .pvc
        .as_ref()
        .or(template.spec.storage.as_ref())?;
    Some(
        storage
            .resources
            .requests
            .get("storage")
            .copied()
            .unwrap_or(Quantity::ZERO),
    )
}
