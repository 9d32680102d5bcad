//! The slice of each Kubernetes/KubeVirt object that the collectors read, and no more: the
//! caches hold tens of thousands of these, so every field here earns its place. Each
//! consumer slims what it keeps ([`Slim`] for virt-controller's store,
//! [`VirtualMachineInstance::slim_for_discovery`] for virt-handler's VMI list).
//!
//! Field names follow the API's JSON (camelCase). Everything defaults when absent, as Go's
//! zero values do; only malformed values (a quantity or timestamp that does not parse) make
//! an object fail to decode, as it would in KubeVirt's informer.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};

pub mod quantity;
pub mod timestamp;

use quantity::Quantity;
use timestamp::Timestamp;

/// A field whose presence is all that matters (`masquerade: {}`).
pub type Present = Option<IgnoredAny>;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: SmallMap<String>,
    pub annotations: SmallMap<String>,
    pub creation_timestamp: Option<Timestamp>,
}

impl Meta {
    /// `namespace/name`, or `name` for cluster-scoped objects (client-go's store key).
    pub fn key(&self) -> String {
        object_key(&self.namespace, &self.name)
    }

    fn keep_labels(&mut self, keep: impl Fn(&str) -> bool) {
        self.labels.retain(|k, _| keep(k));
    }

    fn keep_annotations(&mut self, keep: impl Fn(&str) -> bool) {
        self.annotations.retain(|k, _| keep(k));
    }
}

/// A small string-keyed map, sorted by key, as one exact-size vector. Objects carry a
/// handful of labels, annotations and resources each; a `BTreeMap` node would reserve room
/// for eleven entries, which made the cache twice the size of the JSON it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SmallMap<V>(Vec<(String, V)>);

impl<V> Default for SmallMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> SmallMap<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: String, value: V) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&String, &V) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
        self.0.shrink_to_fit();
    }

    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<V> FromIterator<(String, V)> for SmallMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let sorted: BTreeMap<String, V> = iter.into_iter().collect();
        let mut entries: Vec<(String, V)> = sorted.into_iter().collect();
        entries.shrink_to_fit();
        Self(entries)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SmallMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `null` (as the API writes for an empty map) is an empty map.
        let map = Option::<BTreeMap<String, V>>::deserialize(deserializer)?;
        Ok(map.map(|m| m.into_iter().collect()).unwrap_or_default())
    }
}

pub fn object_key(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

// ---- well-known keys ----------------------------------------------------------------------

pub const ANNOTATION_OS: &str = "vm.kubevirt.io/os";
pub const ANNOTATION_WORKLOAD: &str = "vm.kubevirt.io/workload";
pub const ANNOTATION_FLAVOR: &str = "vm.kubevirt.io/flavor";
pub const ANNOTATION_INSTANCETYPE: &str = "kubevirt.io/instancetype-name";
pub const ANNOTATION_CLUSTER_INSTANCETYPE: &str = "kubevirt.io/cluster-instancetype-name";
pub const ANNOTATION_PREFERENCE: &str = "kubevirt.io/preference-name";
pub const ANNOTATION_CLUSTER_PREFERENCE: &str = "kubevirt.io/cluster-preference-name";
pub const LABEL_OUTDATED_LAUNCHER_IMAGE: &str = "kubevirt.io/outdatedLauncherImage";
pub const LABEL_CREATED_BY: &str = "kubevirt.io/created-by";
pub const LABEL_INSTANCETYPE_VENDOR: &str = "instancetype.kubevirt.io/vendor";
pub const VM_LABELS_CONFIG_MAP: &str = "kubevirt-vm-labels-config";

fn is_system_info_annotation(key: &str) -> bool {
    matches!(key, ANNOTATION_OS | ANNOTATION_WORKLOAD | ANNOTATION_FLAVOR)
}

// ---- VirtualMachine / VirtualMachineInstance ----------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachine {
    pub metadata: Meta,
    pub spec: VmSpec,
    pub status: VmStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VmSpec {
    pub template: Option<VmiTemplate>,
    pub instancetype: Option<Matcher>,
    pub preference: Option<Matcher>,
    pub data_volume_templates: Vec<DataVolumeTemplate>,
}

/// `spec.instancetype` / `spec.preference` of a VM.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Matcher {
    pub name: String,
    pub kind: String,
    pub revision_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VmStatus {
    pub printable_status: String,
    pub conditions: Vec<Condition>,
    pub instancetype_ref: Option<InstancetypeStatusRef>,
    pub preference_ref: Option<InstancetypeStatusRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct InstancetypeStatusRef {
    pub controller_revision_ref: Option<NameRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct NameRef {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub last_transition_time: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VmiTemplate {
    pub metadata: TemplateMeta,
    pub spec: VmiSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TemplateMeta {
    pub labels: SmallMap<String>,
    pub annotations: SmallMap<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VmiSpec {
    pub domain: DomainSpec,
    pub networks: Vec<Network>,
    pub volumes: Vec<Volume>,
    pub eviction_strategy: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DomainSpec {
    pub resources: Resources,
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub machine: Option<Machine>,
    pub devices: Devices,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub requests: SmallMap<Quantity>,
    pub limits: SmallMap<Quantity>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Cpu {
    pub cores: u32,
    pub sockets: u32,
    pub threads: u32,
    pub model: String,
    #[serde(rename = "dedicatedCpuPlacement")]
    pub dedicated_cpu_placement: bool,
    pub isolate_emulator_thread: bool,
    pub numa: Present,
    pub realtime: Present,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Memory {
    pub guest: Option<Quantity>,
    pub hugepages: Option<Hugepages>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Hugepages {
    pub page_size: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Machine {
    #[serde(rename = "type")]
    pub type_: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Devices {
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Interface {
    pub name: String,
    pub model: String,
    pub masquerade: Present,
    pub bridge: Present,
    pub sriov: Present,
    pub binding: Option<PluginBinding>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PluginBinding {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Network {
    pub name: String,
    pub pod: Present,
    pub multus: Option<MultusNetwork>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MultusNetwork {
    pub network_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub persistent_volume_claim: Option<ClaimRef>,
    pub data_volume: Option<NameRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClaimRef {
    pub claim_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DataVolumeTemplate {
    pub metadata: NameRef,
    pub spec: DataVolumeSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DataVolumeSpec {
    pub pvc: Option<StorageSpec>,
    pub storage: Option<StorageSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StorageSpec {
    pub resources: Resources,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VirtualMachineInstance {
    pub metadata: Meta,
    pub spec: VmiSpec,
    pub status: VmiStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VmiStatus {
    pub phase: String,
    pub node_name: String,
    #[serde(rename = "guestOSInfo")]
    pub guest_os_info: GuestOsInfo,
    pub machine: Option<Machine>,
    pub interfaces: Vec<StatusInterface>,
    pub migration_state: Option<MigrationState>,
    pub conditions: Vec<Condition>,
    pub memory: Option<MemoryStatus>,
    /// Pod UID → node of every pod that belongs to the VMI (the launcher pods, two while
    /// migrating): where virt-handler-metrics finds the launcher socket.
    pub active_pods: SmallMap<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GuestOsInfo {
    pub kernel_release: String,
    pub machine: String,
    pub name: String,
    pub version_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StatusInterface {
    pub name: String,
    pub interface_name: String,
    pub ip_address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MigrationState {
    pub start_timestamp: Option<Timestamp>,
    pub end_timestamp: Option<Timestamp>,
    pub completed: bool,
    pub failed: bool,
    pub migration_uid: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MemoryStatus {
    pub memory_overhead: Option<Quantity>,
}

// ---- migrations, storage, pods, snapshots ---------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Migration {
    pub metadata: Meta,
    pub spec: MigrationSpec,
    pub status: MigrationStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MigrationSpec {
    pub vmi_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct MigrationStatus {
    pub phase: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PersistentVolumeClaim {
    pub metadata: Meta,
    pub spec: PvcSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PvcSpec {
    pub volume_mode: Option<String>,
    pub resources: Resources,
}

/// A virt-launcher pod (labelled `kubevirt.io/created-by` with its VMI's UID).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: Meta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PodStatus {
    pub phase: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VirtualMachineSnapshot {
    pub metadata: Meta,
    pub spec: SnapshotSpec,
    pub status: Option<SnapshotStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SnapshotSpec {
    pub source: NameRef,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SnapshotStatus {
    pub phase: String,
    pub creation_time: Option<Timestamp>,
}

// ---- instance types, preferences, revisions --------------------------------------------------

/// A `VirtualMachine(Cluster)Instancetype`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Instancetype {
    pub metadata: Meta,
    pub spec: InstancetypeSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct InstancetypeSpec {
    pub cpu: InstancetypeCpu,
    pub memory: InstancetypeMemory,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct InstancetypeCpu {
    pub guest: u32,
    pub model: Option<String>,
    #[serde(rename = "dedicatedCPUPlacement")]
    pub dedicated_cpu_placement: Option<bool>,
    pub isolate_emulator_thread: Option<bool>,
    pub numa: Present,
    pub realtime: Present,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct InstancetypeMemory {
    pub guest: Option<Quantity>,
    pub hugepages: Option<Hugepages>,
    pub overcommit_percent: i32,
}

/// A `VirtualMachine(Cluster)Preference`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Preference {
    pub metadata: Meta,
    pub spec: PreferenceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PreferenceSpec {
    pub cpu: Option<PreferenceCpu>,
    pub prefer_spread_socket_to_core_ratio: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PreferenceCpu {
    #[serde(rename = "preferredCPUTopology")]
    pub preferred_cpu_topology: Option<String>,
    pub spread_options: Option<SpreadOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SpreadOptions {
    pub across: Option<String>,
    pub ratio: Option<u32>,
}

/// A `ControllerRevision` holding a snapshot of an instance type or preference, as KubeVirt
/// stores them for VMs (`spec.instancetype.revisionName`). Other revisions are kept as
/// [`RevisionObject::Other`] so the store stays small.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ControllerRevision {
    pub metadata: Meta,
    pub data: RevisionObject,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum RevisionObject {
    Instancetype(InstancetypeSpec),
    Preference(PreferenceSpec),
    #[default]
    Other,
}

impl<'de> Deserialize<'de> for RevisionObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            kind: String,
            #[serde(default)]
            spec: serde_json::Value,
        }
        let raw = Option::<Raw>::deserialize(deserializer)?;
        let Some(raw) = raw else {
            return Ok(Self::Other);
        };
        let object = match raw.kind.as_str() {
            "VirtualMachineInstancetype" | "VirtualMachineClusterInstancetype" => {
                Self::Instancetype(
                    serde_json::from_value(raw.spec).map_err(serde::de::Error::custom)?,
                )
            }
            "VirtualMachinePreference" | "VirtualMachineClusterPreference" => Self::Preference(
                serde_json::from_value(raw.spec).map_err(serde::de::Error::custom)?,
            ),
            _ => Self::Other,
        };
        Ok(object)
    }
}

// ---- configuration -------------------------------------------------------------------------

/// ConfigMap `kubevirt-vm-labels-config`: only its `data`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct VmLabelsConfigMap {
    pub metadata: Meta,
    pub data: Option<BTreeMap<String, String>>,
}

/// The KubeVirt CR: only the cluster-wide eviction strategy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct KubeVirt {
    pub metadata: Meta,
    pub spec: KubeVirtSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct KubeVirtSpec {
    pub configuration: KubeVirtConfiguration,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct KubeVirtConfiguration {
    pub eviction_strategy: Option<String>,
}

// ---- slimming ------------------------------------------------------------------------------

/// Drops what the metrics never read (big annotations such as
/// `kubectl.kubernetes.io/last-applied-configuration`, unrelated labels), so the cache stays
/// small. Rendering a slimmed object gives the same output as rendering the original.
pub trait Slim {
    fn slim(&mut self);
}

impl Slim for VirtualMachine {
    fn slim(&mut self) {
        // VM labels are all kept: kubevirt_vm_labels exports them (filtered at render time,
        // because the ConfigMap's lists can change without the VM changing).
        self.metadata.annotations.clear();
        if let Some(template) = &mut self.spec.template {
            template
                .metadata
                .annotations
                .retain(|k, _| is_system_info_annotation(k));
        }
    }
}

impl Slim for VirtualMachineInstance {
    fn slim(&mut self) {
        self.status.active_pods.clear();
        self.metadata
            .keep_labels(|k| k == LABEL_OUTDATED_LAUNCHER_IMAGE);
        self.metadata.keep_annotations(|k| {
            is_system_info_annotation(k)
                || matches!(
                    k,
                    ANNOTATION_INSTANCETYPE
                        | ANNOTATION_CLUSTER_INSTANCETYPE
                        | ANNOTATION_PREFERENCE
                        | ANNOTATION_CLUSTER_PREFERENCE
                )
        });
        self.spec.volumes.clear();
    }
}

impl Slim for Pod {
    fn slim(&mut self) {
        self.metadata.keep_labels(|k| k == LABEL_CREATED_BY);
        self.metadata.annotations.clear();
    }
}

impl Slim for Instancetype {
    fn slim(&mut self) {
        self.metadata
            .keep_labels(|k| k == LABEL_INSTANCETYPE_VENDOR);
        self.metadata.annotations.clear();
    }
}

impl Slim for Preference {
    fn slim(&mut self) {
        self.metadata
            .keep_labels(|k| k == LABEL_INSTANCETYPE_VENDOR);
        self.metadata.annotations.clear();
    }
}

macro_rules! slim_metadata_only {
    ($($t:ty),*) => {$(
        impl Slim for $t {
            fn slim(&mut self) {
                self.metadata.labels.clear();
                self.metadata.annotations.clear();
            }
        }
    )*};
}

slim_metadata_only!(
    Migration,
    PersistentVolumeClaim,
    ControllerRevision,
    VirtualMachineSnapshot,
    VmLabelsConfigMap,
    KubeVirt
);

impl VirtualMachineInstance {
    /// `namespace/name`, for logs, problems and store keys.
    pub fn key(&self) -> String {
        self.metadata.key()
    }

    pub fn is_running(&self) -> bool {
        self.status.phase == "Running"
    }

    /// What virt-handler-metrics keeps of a VMI: its identity (all labels, which become
    /// `kubernetes_vmi_label_*`) and the status fields that find the launcher and decide the
    /// dirty-rate call.
    pub fn slim_for_discovery(&mut self) {
        self.metadata.annotations.clear();
        self.metadata.creation_timestamp = None;
        self.spec = VmiSpec::default();
        let status = &mut self.status;
        status.guest_os_info = GuestOsInfo::default();
        status.machine = None;
        status.interfaces = Vec::new();
        status.conditions = Vec::new();
        status.memory = None;
    }
}

/// An object that does not decode into its slim type; it is skipped and reported, the rest
/// of the watch goes on.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {kind} {key}: {source}")]
pub struct DecodeError {
    pub kind: &'static str,
    pub key: String,
    #[source]
    pub source: serde_json::Error,
}

/// A watched object as the API served it, as JSON (`managedFields` dropped: never read,
/// often big). Every watch of the collectors goes through `DynamicObject` and this, so one
/// slim type serves every consumer.
pub fn to_json(object: DynamicObject) -> Result<serde_json::Value, DecodeError> {
    let DynamicObject {
        mut metadata, data, ..
    } = object;
    metadata.managed_fields = None;
    let mut value = data;
    let metadata = serde_json::to_value(metadata).map_err(|source| DecodeError {
        kind: "metadata",
        key: String::new(),
        source,
    })?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("metadata".to_owned(), metadata);
    } else {
        value = serde_json::json!({ "metadata": metadata });
    }
    Ok(value)
}

/// Decodes one object of `kind` (its `kind` name, for the error).
pub fn decode<T: DeserializeOwned>(
    kind: &'static str,
    value: serde_json::Value,
) -> Result<T, DecodeError> {
    let key = key_of(&value);
    serde_json::from_value(value).map_err(|source| DecodeError { kind, key, source })
}

fn key_of(value: &serde_json::Value) -> String {
    let field = |f: &str| {
        value
            .pointer(&format!("/metadata/{f}"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    };
    object_key(field("namespace"), field("name"))
}
