//! Instance types and preferences: the `instance_type`/`preference` label rule, and applying
//! an instance type to a VM before its resource requests are reported (KubeVirt's
//! `instancetypeMethods.ApplyToVM` on a copy, `pkg/instancetype/apply/{cpu,memory}.go`).

use std::borrow::Cow;

use super::ClusterState;
use crate::k8s::objects::quantity::Quantity;
use crate::k8s::objects::*;

pub const OTHER: &str = "<other>";

/// Vendors whose instance type and preference names are reported; others become `<other>`.
fn is_whitelisted_vendor(vendor: &str) -> bool {
    matches!(vendor, "kubevirt.io" | "redhat.com")
}

/// KubeVirt's `fetchResourceName`: the object's name when it exists and comes from a
/// whitelisted vendor (label `instancetype.kubevirt.io/vendor`), else `<other>`.
fn resource_name(meta: Option<&Meta>) -> String {
    match meta {
        Some(meta)
            if meta
                .labels
                .get(LABEL_INSTANCETYPE_VENDOR)
                .is_some_and(|v| is_whitelisted_vendor(v)) =>
        {
            meta.name.clone()
        }
        _ => OTHER.to_owned(),
    }
}

/// `instance_type` of `kubevirt_vmi_info`, from the VMI's instance type annotations.
pub fn vmi_instancetype(state: &ClusterState, vmi: &VirtualMachineInstance) -> String {
    let annotations = &vmi.metadata.annotations;
    if let Some(name) = annotations.get(ANNOTATION_INSTANCETYPE) {
        let key = object_key(&vmi.metadata.namespace, name);
        return resource_name(state.instancetypes.get(&key).map(|o| &o.metadata));
    }
    if let Some(name) = annotations.get(ANNOTATION_CLUSTER_INSTANCETYPE) {
        return resource_name(state.cluster_instancetypes.get(name).map(|o| &o.metadata));
    }
    String::new()
}

/// `preference` of `kubevirt_vmi_info`.
pub fn vmi_preference(state: &ClusterState, vmi: &VirtualMachineInstance) -> String {
    let annotations = &vmi.metadata.annotations;
    if let Some(name) = annotations.get(ANNOTATION_PREFERENCE) {
        let key = object_key(&vmi.metadata.namespace, name);
        return resource_name(state.preferences.get(&key).map(|o| &o.metadata));
    }
    if let Some(name) = annotations.get(ANNOTATION_CLUSTER_PREFERENCE) {
        return resource_name(state.cluster_preferences.get(name).map(|o| &o.metadata));
    }
    String::new()
}

/// `instance_type` of `kubevirt_vm_info`, from `spec.instancetype` (kind compared without case).
pub fn vm_instancetype(state: &ClusterState, vm: &VirtualMachine) -> String {
    let Some(matcher) = &vm.spec.instancetype else {
        return String::new();
    };
    if matcher
        .kind
        .eq_ignore_ascii_case("VirtualMachineInstancetype")
    {
        let key = object_key(&vm.metadata.namespace, &matcher.name);
        resource_name(state.instancetypes.get(&key).map(|o| &o.metadata))
    } else if matcher
        .kind
        .eq_ignore_ascii_case("VirtualMachineClusterInstancetype")
    {
        resource_name(
            state
                .cluster_instancetypes
                .get(&matcher.name)
                .map(|o| &o.metadata),
        )
    } else {
        String::new()
    }
}

/// `preference` of `kubevirt_vm_info`.
pub fn vm_preference(state: &ClusterState, vm: &VirtualMachine) -> String {
    let Some(matcher) = &vm.spec.preference else {
        return String::new();
    };
    if matcher
        .kind
        .eq_ignore_ascii_case("VirtualMachinePreference")
    {
        let key = object_key(&vm.metadata.namespace, &matcher.name);
        resource_name(state.preferences.get(&key).map(|o| &o.metadata))
    } else if matcher
        .kind
        .eq_ignore_ascii_case("VirtualMachineClusterPreference")
    {
        resource_name(
            state
                .cluster_preferences
                .get(&matcher.name)
                .map(|o| &o.metadata),
        )
    } else {
        String::new()
    }
}

/// The referenced object could not be found (KubeVirt's `ApplyToVM` then fails and the VM is
/// reported as written).
struct NotFound;

fn revision<'a>(
    state: &'a ClusterState,
    namespace: &str,
    name: &str,
) -> Option<&'a RevisionObject> {
    state
        .controller_revisions
        .get(&object_key(namespace, name))
        .map(|r| &r.data)
}

fn revision_name<'a>(
    matcher: &'a Matcher,
    status_ref: Option<&'a InstancetypeStatusRef>,
) -> Option<&'a str> {
    if !matcher.revision_name.is_empty() {
        return Some(&matcher.revision_name);
    }
    status_ref
        .and_then(|r| r.controller_revision_ref.as_ref())
        .map(|r| r.name.as_str())
        .filter(|n| !n.is_empty())
}

fn find_instancetype<'a>(
    state: &'a ClusterState,
    vm: &VirtualMachine,
) -> Result<Option<&'a InstancetypeSpec>, NotFound> {
    let Some(matcher) = &vm.spec.instancetype else {
        return Ok(None);
    };
    let namespace = &vm.metadata.namespace;
    if let Some(name) = revision_name(matcher, vm.status.instancetype_ref.as_ref()) {
        return match revision(state, namespace, name) {
            Some(RevisionObject::Instancetype(spec)) => Ok(Some(spec)),
            _ => Err(NotFound),
        };
    }
    let object = match matcher.kind.to_ascii_lowercase().as_str() {
        "virtualmachineinstancetype" | "virtualmachineinstancetypes" => state
            .instancetypes
            .get(&object_key(namespace, &matcher.name)),
        "virtualmachineclusterinstancetype" | "virtualmachineclusterinstancetypes" | "" => {
            state.cluster_instancetypes.get(&matcher.name)
        }
        _ => None,
    };
    object.map(|o| Some(&o.spec)).ok_or(NotFound)
}

fn find_preference<'a>(
    state: &'a ClusterState,
    vm: &VirtualMachine,
) -> Result<Option<&'a PreferenceSpec>, NotFound> {
    let Some(matcher) = &vm.spec.preference else {
        return Ok(None);
    };
    let namespace = &vm.metadata.namespace;
    if let Some(name) = revision_name(matcher, vm.status.preference_ref.as_ref()) {
        return match revision(state, namespace, name) {
            Some(RevisionObject::Preference(spec)) => Ok(Some(spec)),
            _ => Err(NotFound),
        };
    }
    let object = match matcher.kind.to_ascii_lowercase().as_str() {
        "virtualmachinepreference" | "virtualmachinepreferences" => {
            state.preferences.get(&object_key(namespace, &matcher.name))
        }
        "virtualmachineclusterpreference" | "virtualmachineclusterpreferences" | "" => {
            state.cluster_preferences.get(&matcher.name)
        }
        _ => None,
    };
    object.map(|o| Some(&o.spec)).ok_or(NotFound)
}

/// The VM's template spec with its instance type applied, as virt-controller's metrics see
/// it. Each part (CPU, memory) is applied unless the VM conflicts with it, like KubeVirt,
/// which ignores the conflict error and reports whatever was applied.
pub fn effective_spec<'a>(
    state: &ClusterState,
    vm: &'a VirtualMachine,
) -> Option<Cow<'a, VmiSpec>> {
    let template = vm.spec.template.as_ref()?;
    let original = Cow::Borrowed(&template.spec);
    if vm.spec.instancetype.is_none() && vm.spec.preference.is_none() {
        return Some(original);
    }
    let (Ok(instancetype), Ok(preference)) =
        (find_instancetype(state, vm), find_preference(state, vm))
    else {
        return Some(original);
    };
    let Some(instancetype) = instancetype else {
        // A preference alone changes nothing the metrics read.
        return Some(original);
    };
    let mut spec = template.spec.clone();
    apply_cpu(&instancetype.cpu, preference, &mut spec);
    apply_memory(&instancetype.memory, &mut spec);
    Some(Cow::Owned(spec))
}

fn apply_cpu(it: &InstancetypeCpu, preference: Option<&PreferenceSpec>, spec: &mut VmiSpec) {
    let resources = &spec.domain.resources;
    let has_cpu_resources =
        resources.requests.contains_key("cpu") || resources.limits.contains_key("cpu");
    let cpu = spec.domain.cpu.get_or_insert_with(Cpu::default);
    let conflict = has_cpu_resources
        || cpu.sockets != 0
        || cpu.cores != 0
        || cpu.threads != 0
        || (!cpu.model.is_empty() && it.model.is_some())
        || (cpu.dedicated_cpu_placement && it.dedicated_cpu_placement.is_some())
        || (cpu.isolate_emulator_thread && it.isolate_emulator_thread.is_some())
        || (cpu.numa.is_some() && it.numa.is_some())
        || (cpu.realtime.is_some() && it.realtime.is_some());
    if conflict {
        return;
    }
    apply_guest_topology(it.guest, preference, cpu);
}

/// KubeVirt's `applyGuestCPUTopology`.
fn apply_guest_topology(vcpus: u32, preference: Option<&PreferenceSpec>, cpu: &mut Cpu) {
    cpu.cores = 1;
    cpu.sockets = 1;
    cpu.threads = 1;
    if vcpus == 1 {
        return;
    }
    match preferred_topology(preference) {
        "cores" => cpu.cores = vcpus,
        "sockets" | "any" => cpu.sockets = vcpus,
        "threads" => cpu.threads = vcpus,
        "spread" => {
            let (ratio, across) = spread_options(preference);
            if ratio == 0 {
                return;
            }
            match across {
                "SocketsCores" => {
                    cpu.cores = ratio;
                    cpu.sockets = vcpus / ratio;
                }
                "CoresThreads" => {
                    cpu.threads = ratio;
                    cpu.cores = vcpus / ratio;
                }
                "SocketsCoresThreads" => {
                    const THREADS_PER_CORE: u32 = 2;
                    cpu.threads = THREADS_PER_CORE;
                    cpu.cores = ratio;
                    cpu.sockets = vcpus / THREADS_PER_CORE / ratio;
                }
                _ => {}
            }
        }
        _ => {}
    }
}

/// `GetPreferredTopology`: `sockets` unless the preference says otherwise; the deprecated
/// `prefer*` spellings mean the same.
fn preferred_topology(preference: Option<&PreferenceSpec>) -> &str {
    let topology = preference
        .and_then(|p| p.cpu.as_ref())
        .and_then(|c| c.preferred_cpu_topology.as_deref())
        .unwrap_or("sockets");
    match topology {
        "preferSockets" => "sockets",
        "preferCores" => "cores",
        "preferThreads" => "threads",
        "preferSpread" => "spread",
        "preferAny" => "any",
        other => other,
    }
}

fn spread_options(preference: Option<&PreferenceSpec>) -> (u32, &str) {
    let mut ratio = 2;
    let mut across = "SocketsCores";
    if let Some(preference) = preference {
        if preference.prefer_spread_socket_to_core_ratio != 0 {
            ratio = preference.prefer_spread_socket_to_core_ratio;
        }
        if let Some(options) = preference
            .cpu
            .as_ref()
            .and_then(|c| c.spread_options.as_ref())
        {
            if let Some(a) = &options.across {
                across = a;
            }
            if let Some(r) = options.ratio {
                ratio = r;
            }
        }
    }
    (ratio, across)
}

fn apply_memory(it: &InstancetypeMemory, spec: &mut VmiSpec) {
    let resources = &spec.domain.resources;
    if spec.domain.memory.is_some()
        || resources.requests.contains_key("memory")
        || resources.limits.contains_key("memory")
    {
        return;
    }
    let guest = it.guest.unwrap_or(Quantity::ZERO);
    spec.domain.memory = Some(Memory {
        guest: Some(guest),
        hugepages: it.hugepages.clone(),
    });
    if it.overcommit_percent > 0 {
        // Go computes this in float32 and truncates.
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let requested =
            (guest.value() as f32 * (1.0 - it.overcommit_percent as f32 / 100.0)) as i64;
        spec.domain
            .resources
            .requests
            .insert("memory".to_owned(), Quantity::from_integer(requested));
    }
}
