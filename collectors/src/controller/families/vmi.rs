//! `kubevirt_vmi_*` families of virt-controller (`vmistats_collector.go`).

use std::collections::HashMap;

use super::defs::*;
use super::instancetype::{vmi_instancetype, vmi_preference};
use super::{float, labels, push_unique, seconds};
use crate::controller::store::ClusterState;
use crate::core::metric::{Family, Sample};
use crate::k8s::objects::*;

pub const MODEL_NONE: &str = "<none>";

pub fn render(state: &ClusterState) -> Vec<Family> {
    let migration_names: HashMap<&str, &str> = state
        .migrations
        .values()
        .map(|m| (m.metadata.uid.as_str(), m.metadata.name.as_str()))
        .collect();
    let pods = LauncherPods::index(state);
    let cluster_eviction = state.cluster_eviction_strategy();

    let mut info = VMI_INFO.family();
    let mut non_evictable = VMI_NON_EVICTABLE.family();
    let mut addresses = VMI_STATUS_ADDRESSES.family();
    let mut start = VMI_MIGRATION_START_TIME.family();
    let mut end = VMI_MIGRATION_END_TIME.family();
    let mut vnics = VMI_VNIC_INFO.family();
    let mut overhead = VMI_LAUNCHER_MEMORY_OVERHEAD.family();

    for vmi in state.vmis.values() {
        let meta = &vmi.metadata;
        let node = vmi.status.node_name.as_str();
        let evictable = is_evictable(vmi, cluster_eviction);
        info.samples
            .push(Sample::new(info_labels(state, vmi, evictable, &pods), 1.0));
        non_evictable.samples.push(Sample::new(
            labels([
                ("node", node),
                ("namespace", &meta.namespace),
                ("name", &meta.name),
            ]),
            if evictable { 0.0 } else { 1.0 },
        ));
        push_addresses(&mut addresses, vmi);
        push_migration_times(&mut start, &mut end, vmi, &migration_names);
        push_vnics(
            &mut vnics,
            &meta.name,
            &meta.namespace,
            &vmi.spec.domain.devices.interfaces,
            &vmi.spec.networks,
        );
        // v1.9.0 reports status.memory.memoryOverhead (feature gate VmiMemoryOverheadReport,
        // beta and on by default). Without it we report nothing rather than guess.
        if let Some(value) = vmi.status.memory.as_ref().and_then(|m| m.memory_overhead) {
            overhead.samples.push(Sample::new(
                labels([("namespace", &meta.namespace), ("name", &meta.name)]),
                float(value.value()),
            ));
        }
    }
    vec![info, non_evictable, addresses, start, end, vnics, overhead]
}

fn info_labels(
    state: &ClusterState,
    vmi: &VirtualMachineInstance,
    evictable: bool,
    pods: &LauncherPods<'_>,
) -> crate::core::metric::Labels {
    let meta = &vmi.metadata;
    let status = &vmi.status;
    let annotation = |key: &str| meta.annotations.get(key).map_or("", String::as_str);
    let phase = status.phase.to_lowercase();
    let instance_type = vmi_instancetype(state, vmi);
    let preference = vmi_preference(state, vmi);
    let machine_type = status.machine.as_ref().map_or("", |m| m.type_.as_str());
    let guest = &status.guest_os_info;
    let outdated = meta.labels.contains_key(LABEL_OUTDATED_LAUNCHER_IMAGE);
    labels([
        ("node", &status.node_name),
        ("namespace", &meta.namespace),
        ("name", &meta.name),
        ("phase", &phase),
        ("os", annotation(ANNOTATION_OS)),
        ("workload", annotation(ANNOTATION_WORKLOAD)),
        ("flavor", annotation(ANNOTATION_FLAVOR)),
        ("instance_type", &instance_type),
        ("preference", &preference),
        ("guest_os_kernel_release", &guest.kernel_release),
        // Sic: KubeVirt puts the machine type in guest_os_machine and the guest agent's
        // `machine` (the architecture) in guest_os_arch.
        ("guest_os_machine", machine_type),
        ("guest_os_arch", &guest.machine),
        ("guest_os_name", &guest.name),
        ("guest_os_version_id", &guest.version_id),
        ("evictable", bool_str(evictable)),
        ("outdated", bool_str(outdated)),
        ("vmi_pod", pods.running_pod_of(vmi)),
    ])
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// KubeVirt's `isVMEvictable`: a VMI whose eviction strategy asks for live migration is
/// evictable only once its `LiveMigratable` condition exists and is not `False`.
pub fn is_evictable(vmi: &VirtualMachineInstance, cluster_strategy: Option<&str>) -> bool {
    let conditions = &vmi.status.conditions;
    let migratable = conditions.iter().find(|c| c.type_ == "LiveMigratable");
    let strategy = vmi.spec.eviction_strategy.as_deref().or(cluster_strategy);
    let migrates_on_eviction = match strategy {
        Some("LiveMigrate") => true,
        Some("LiveMigrateIfPossible") => conditions
            .iter()
            .any(|c| c.type_ == "LiveMigratable" && c.status == "True"),
        _ => false,
    };
    if migrates_on_eviction {
        return migratable.is_some_and(|c| c.status != "False");
    }
    true
}

fn push_addresses(family: &mut Family, vmi: &VirtualMachineInstance) {
    let from = family.samples.len();
    let meta = &vmi.metadata;
    for iface in &vmi.status.interfaces {
        let kind = if iface.ip_address.is_empty() {
            if iface.name.is_empty() && iface.interface_name.is_empty() {
                continue;
            }
            "SystemInterface"
        } else {
            "ExternalInterface"
        };
        let labels = labels([
            ("node", &vmi.status.node_name),
            ("namespace", &meta.namespace),
            ("name", &meta.name),
            ("vnic_name", &iface.name),
            ("interface_name", &iface.interface_name),
            ("address", &iface.ip_address),
            ("type", kind),
        ]);
        push_unique(family, from, labels, 1.0);
    }
}

fn push_migration_times(
    start: &mut Family,
    end: &mut Family,
    vmi: &VirtualMachineInstance,
    migration_names: &HashMap<&str, &str>,
) {
    let Some(state) = &vmi.status.migration_state else {
        return;
    };
    let meta = &vmi.metadata;
    let migration = migration_names
        .get(state.migration_uid.as_str())
        .copied()
        .unwrap_or_default();
    let node = vmi.status.node_name.as_str();
    if let Some(ts) = state.start_timestamp {
        start.samples.push(Sample::new(
            labels([
                ("node", node),
                ("namespace", &meta.namespace),
                ("name", &meta.name),
                ("migration_name", migration),
            ]),
            seconds(ts),
        ));
    }
    if let Some(ts) = state.end_timestamp {
        let status = match (state.completed, state.failed) {
            (false, _) => "",
            (true, true) => "failed",
            (true, false) => "succeeded",
        };
        end.samples.push(Sample::new(
            labels([
                ("node", node),
                ("namespace", &meta.namespace),
                ("name", &meta.name),
                ("migration_name", migration),
                ("status", status),
            ]),
            seconds(ts),
        ));
    }
}

/// `binding_type` and `binding_name` of a vNIC (KubeVirt's `getBinding`).
pub fn binding(iface: &Interface) -> (&str, &str) {
    if iface.masquerade.is_some() {
        ("core", "masquerade")
    } else if iface.bridge.is_some() {
        ("core", "bridge")
    } else if iface.sriov.is_some() {
        ("core", "sriov")
    } else if let Some(plugin) = &iface.binding {
        ("plugin", &plugin.name)
    } else {
        ("", "")
    }
}

/// The `network` label of a vNIC: `pod networking` or the Multus network name; `None` when
/// no pod or Multus network of that name exists (the vNIC is then not reported).
pub fn network_name<'a>(iface_name: &str, networks: &'a [Network]) -> Option<&'a str> {
    networks
        .iter()
        .filter(|n| n.name == iface_name)
        .find_map(|n| {
            if n.pod.is_some() {
                Some("pod networking")
            } else {
                n.multus.as_ref().map(|m| m.network_name.as_str())
            }
        })
}

/// One `*_vnic_info` series per interface with a matching network (VMs and VMIs alike).
pub fn push_vnics(
    family: &mut Family,
    name: &str,
    namespace: &str,
    interfaces: &[Interface],
    networks: &[Network],
) {
    let from = family.samples.len();
    for iface in interfaces {
        let Some(network) = network_name(&iface.name, networks) else {
            continue;
        };
        let (binding_type, binding_name) = binding(iface);
        let model = if iface.model.is_empty() {
            MODEL_NONE
        } else {
            &iface.model
        };
        let labels = labels([
            ("name", name),
            ("namespace", namespace),
            ("vnic_name", &iface.name),
            ("binding_type", binding_type),
            ("network", network),
            ("binding_name", binding_name),
            ("model", model),
        ]);
        push_unique(family, from, labels, 1.0);
    }
}

/// Running virt-launcher pods by (namespace, VMI UID), for the `vmi_pod` label.
struct LauncherPods<'a> {
    by_owner: HashMap<(&'a str, &'a str), Vec<&'a Pod>>,
}

impl<'a> LauncherPods<'a> {
    fn index(state: &'a ClusterState) -> Self {
        let mut by_owner: HashMap<(&str, &str), Vec<&Pod>> = HashMap::new();
        for pod in state.pods.values() {
            if pod.status.phase != "Running" {
                continue;
            }
            if let Some(owner) = pod.metadata.labels.get(LABEL_CREATED_BY) {
                by_owner
                    .entry((pod.metadata.namespace.as_str(), owner.as_str()))
                    .or_default()
                    .push(pod);
            }
        }
        // Several candidates only happen during a migration; KubeVirt takes whichever its
        // index returns first, we take the first by name so the output is stable.
        for pods in by_owner.values_mut() {
            pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        Self { by_owner }
    }

    /// The running launcher pod of `vmi` on the VMI's node, or `""`.
    fn running_pod_of(&self, vmi: &VirtualMachineInstance) -> &'a str {
        self.by_owner
            .get(&(vmi.metadata.namespace.as_str(), vmi.metadata.uid.as_str()))
            .and_then(|pods| {
                pods.iter()
                    .find(|p| p.spec.node_name == vmi.status.node_name)
            })
            .map_or("", |p| p.metadata.name.as_str())
    }
}
