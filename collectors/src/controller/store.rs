//! What the watches hold: the slimmed objects virt-controller's informers would hold,
//! keyed like client-go's stores. The watches write it ([`super::watch`]); the families read
//! it ([`super::families::render`]).

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use crate::k8s::objects::{self, DecodeError, *};

/// The kinds of objects the controller collector watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    VirtualMachine,
    VirtualMachineInstance,
    VirtualMachineInstanceMigration,
    PersistentVolumeClaim,
    VirtualMachineInstancetype,
    VirtualMachineClusterInstancetype,
    VirtualMachinePreference,
    VirtualMachineClusterPreference,
    ControllerRevision,
    /// virt-launcher pods (label `kubevirt.io/created-by`).
    Pod,
    VirtualMachineSnapshot,
    /// ConfigMap `kubevirt-vm-labels-config` in KubeVirt's namespace.
    ConfigMap,
    KubeVirt,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 13] = [
        Self::VirtualMachine,
        Self::VirtualMachineInstance,
        Self::VirtualMachineInstanceMigration,
        Self::PersistentVolumeClaim,
        Self::VirtualMachineInstancetype,
        Self::VirtualMachineClusterInstancetype,
        Self::VirtualMachinePreference,
        Self::VirtualMachineClusterPreference,
        Self::ControllerRevision,
        Self::Pod,
        Self::VirtualMachineSnapshot,
        Self::ConfigMap,
        Self::KubeVirt,
    ];

    /// The object's `kind` as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VirtualMachine => "VirtualMachine",
            Self::VirtualMachineInstance => "VirtualMachineInstance",
            Self::VirtualMachineInstanceMigration => "VirtualMachineInstanceMigration",
            Self::PersistentVolumeClaim => "PersistentVolumeClaim",
            Self::VirtualMachineInstancetype => "VirtualMachineInstancetype",
            Self::VirtualMachineClusterInstancetype => "VirtualMachineClusterInstancetype",
            Self::VirtualMachinePreference => "VirtualMachinePreference",
            Self::VirtualMachineClusterPreference => "VirtualMachineClusterPreference",
            Self::ControllerRevision => "ControllerRevision",
            Self::Pod => "Pod",
            Self::VirtualMachineSnapshot => "VirtualMachineSnapshot",
            Self::ConfigMap => "ConfigMap",
            Self::KubeVirt => "KubeVirt",
        }
    }

    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

/// Everything the families are computed from: the watched objects, keyed like client-go's
/// stores (`namespace/name`, or `name` for cluster-scoped objects).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    pub vms: HashMap<String, VirtualMachine>,
    pub vmis: HashMap<String, VirtualMachineInstance>,
    pub migrations: HashMap<String, Migration>,
    pub pvcs: HashMap<String, PersistentVolumeClaim>,
    pub instancetypes: HashMap<String, Instancetype>,
    pub cluster_instancetypes: HashMap<String, Instancetype>,
    pub preferences: HashMap<String, Preference>,
    pub cluster_preferences: HashMap<String, Preference>,
    pub controller_revisions: HashMap<String, ControllerRevision>,
    pub pods: HashMap<String, Pod>,
    pub snapshots: HashMap<String, VirtualMachineSnapshot>,
    /// `None` when the ConfigMap does not exist (KubeVirt then reports every VM label).
    pub vm_labels_config: Option<VmLabelsConfigMap>,
    pub kubevirt: Option<KubeVirt>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
}

/// Decodes one object and slims it to what the families read.
fn decode<T: DeserializeOwned + Slim>(
    kind: ObjectKind,
    value: serde_json::Value,
) -> Result<T, StateError> {
    let mut object: T = objects::decode(kind.as_str(), value)?;
    object.slim();
    Ok(object)
}

impl ClusterState {
    /// Adds or replaces one object (as the API serves it, JSON). The object is slimmed to
    /// what the metrics read. A malformed object is rejected and the old one kept.
    pub fn apply(&mut self, kind: ObjectKind, value: serde_json::Value) -> Result<(), StateError> {
        fn put<T: DeserializeOwned + Slim + HasMeta>(
            map: &mut HashMap<String, T>,
            kind: ObjectKind,
            value: serde_json::Value,
        ) -> Result<(), StateError> {
            let object: T = decode(kind, value)?;
            map.insert(object.meta().key(), object);
            Ok(())
        }
        match kind {
            ObjectKind::VirtualMachine => put(&mut self.vms, kind, value),
            ObjectKind::VirtualMachineInstance => put(&mut self.vmis, kind, value),
            ObjectKind::VirtualMachineInstanceMigration => put(&mut self.migrations, kind, value),
            ObjectKind::PersistentVolumeClaim => put(&mut self.pvcs, kind, value),
            ObjectKind::VirtualMachineInstancetype => put(&mut self.instancetypes, kind, value),
            ObjectKind::VirtualMachineClusterInstancetype => {
                put(&mut self.cluster_instancetypes, kind, value)
            }
            ObjectKind::VirtualMachinePreference => put(&mut self.preferences, kind, value),
            ObjectKind::VirtualMachineClusterPreference => {
                put(&mut self.cluster_preferences, kind, value)
            }
            ObjectKind::ControllerRevision => {
                let revision: ControllerRevision = decode(kind, value)?;
                // Only instance type and preference snapshots are ever read.
                if revision.data != RevisionObject::Other {
                    self.controller_revisions
                        .insert(revision.metadata.key(), revision);
                }
                Ok(())
            }
            ObjectKind::Pod => put(&mut self.pods, kind, value),
            ObjectKind::VirtualMachineSnapshot => put(&mut self.snapshots, kind, value),
            ObjectKind::ConfigMap => {
                let config: VmLabelsConfigMap = decode(kind, value)?;
                if config.metadata.name == VM_LABELS_CONFIG_MAP {
                    self.vm_labels_config = Some(config);
                }
                Ok(())
            }
            ObjectKind::KubeVirt => {
                self.kubevirt = Some(decode(kind, value)?);
                Ok(())
            }
        }
    }

    /// Adds an object whose `kind` field says what it is (fixtures, `kubectl get -o yaml`).
    pub fn apply_any(&mut self, value: serde_json::Value) -> Result<(), StateError> {
        let kind_name = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let kind = ObjectKind::from_kind(&kind_name).ok_or(StateError::UnknownKind(kind_name))?;
        self.apply(kind, value)
    }

    /// Removes one object by store key.
    pub fn delete(&mut self, kind: ObjectKind, key: &str) {
        match kind {
            ObjectKind::VirtualMachine => drop(self.vms.remove(key)),
            ObjectKind::VirtualMachineInstance => drop(self.vmis.remove(key)),
            ObjectKind::VirtualMachineInstanceMigration => drop(self.migrations.remove(key)),
            ObjectKind::PersistentVolumeClaim => drop(self.pvcs.remove(key)),
            ObjectKind::VirtualMachineInstancetype => drop(self.instancetypes.remove(key)),
            ObjectKind::VirtualMachineClusterInstancetype => {
                drop(self.cluster_instancetypes.remove(key))
            }
            ObjectKind::VirtualMachinePreference => drop(self.preferences.remove(key)),
            ObjectKind::VirtualMachineClusterPreference => {
                drop(self.cluster_preferences.remove(key))
            }
            ObjectKind::ControllerRevision => drop(self.controller_revisions.remove(key)),
            ObjectKind::Pod => drop(self.pods.remove(key)),
            ObjectKind::VirtualMachineSnapshot => drop(self.snapshots.remove(key)),
            ObjectKind::ConfigMap => {
                if key.ends_with(VM_LABELS_CONFIG_MAP) {
                    self.vm_labels_config = None;
                }
            }
            ObjectKind::KubeVirt => self.kubevirt = None,
        }
    }

    /// Moves every object of `kind` from `other` into `self`, replacing what `self` had:
    /// a watch's relist, swapped in at once when it completes.
    pub fn replace_kind(&mut self, kind: ObjectKind, other: &mut ClusterState) {
        fn swap<T>(a: &mut HashMap<String, T>, b: &mut HashMap<String, T>) {
            std::mem::swap(a, b);
            b.clear();
        }
        match kind {
            ObjectKind::VirtualMachine => swap(&mut self.vms, &mut other.vms),
            ObjectKind::VirtualMachineInstance => swap(&mut self.vmis, &mut other.vmis),
            ObjectKind::VirtualMachineInstanceMigration => {
                swap(&mut self.migrations, &mut other.migrations)
            }
            ObjectKind::PersistentVolumeClaim => swap(&mut self.pvcs, &mut other.pvcs),
            ObjectKind::VirtualMachineInstancetype => {
                swap(&mut self.instancetypes, &mut other.instancetypes)
            }
            ObjectKind::VirtualMachineClusterInstancetype => swap(
                &mut self.cluster_instancetypes,
                &mut other.cluster_instancetypes,
            ),
            ObjectKind::VirtualMachinePreference => {
                swap(&mut self.preferences, &mut other.preferences)
            }
            ObjectKind::VirtualMachineClusterPreference => swap(
                &mut self.cluster_preferences,
                &mut other.cluster_preferences,
            ),
            ObjectKind::ControllerRevision => swap(
                &mut self.controller_revisions,
                &mut other.controller_revisions,
            ),
            ObjectKind::Pod => swap(&mut self.pods, &mut other.pods),
            ObjectKind::VirtualMachineSnapshot => swap(&mut self.snapshots, &mut other.snapshots),
            ObjectKind::ConfigMap => self.vm_labels_config = other.vm_labels_config.take(),
            ObjectKind::KubeVirt => self.kubevirt = other.kubevirt.take(),
        }
    }

    /// How many objects of `kind` are held.
    pub fn count(&self, kind: ObjectKind) -> usize {
        match kind {
            ObjectKind::VirtualMachine => self.vms.len(),
            ObjectKind::VirtualMachineInstance => self.vmis.len(),
            ObjectKind::VirtualMachineInstanceMigration => self.migrations.len(),
            ObjectKind::PersistentVolumeClaim => self.pvcs.len(),
            ObjectKind::VirtualMachineInstancetype => self.instancetypes.len(),
            ObjectKind::VirtualMachineClusterInstancetype => self.cluster_instancetypes.len(),
            ObjectKind::VirtualMachinePreference => self.preferences.len(),
            ObjectKind::VirtualMachineClusterPreference => self.cluster_preferences.len(),
            ObjectKind::ControllerRevision => self.controller_revisions.len(),
            ObjectKind::Pod => self.pods.len(),
            ObjectKind::VirtualMachineSnapshot => self.snapshots.len(),
            ObjectKind::ConfigMap => usize::from(self.vm_labels_config.is_some()),
            ObjectKind::KubeVirt => usize::from(self.kubevirt.is_some()),
        }
    }

    /// The cluster-wide eviction strategy (`KubeVirt.spec.configuration.evictionStrategy`).
    pub fn cluster_eviction_strategy(&self) -> Option<&str> {
        self.kubevirt
            .as_ref()
            .and_then(|kv| kv.spec.configuration.eviction_strategy.as_deref())
    }
}

trait HasMeta {
    fn meta(&self) -> &Meta;
}

macro_rules! has_meta {
    ($($t:ty),*) => {$(
        impl HasMeta for $t {
            fn meta(&self) -> &Meta {
                &self.metadata
            }
        }
    )*};
}

has_meta!(
    VirtualMachine,
    VirtualMachineInstance,
    Migration,
    PersistentVolumeClaim,
    Instancetype,
    Preference,
    Pod,
    VirtualMachineSnapshot
);
