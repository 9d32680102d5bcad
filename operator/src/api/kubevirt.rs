//! The parts of the KubeVirt CR (kubevirt.io/v1) the operator reads and writes.
//!
//! Only `spec.customizeComponents` is typed. Everything else is kept as raw JSON
//! (`#[serde(flatten)]` maps), so an object read and written back keeps every field we do not
//! know, and `patches` entries stay `serde_json::Value`: foreign entries survive untouched.

use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `KubeVirt` (kubevirt.io/v1). The CRD belongs to KubeVirt; we never generate it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "KubeVirt",
    plural = "kubevirts",
    namespaced,
    schema = "disabled",
    status = "KubeVirtStatus",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customize_components: Option<CustomizeComponents>,

    /// Every other spec field, kept as is.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `spec.customizeComponents`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CustomizeComponents {
    /// The atomic list of patches. Raw JSON so entries we do not own round-trip exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patches: Option<Vec<Value>>,

    /// `flags`, and anything newer KubeVirt versions add.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The status fields the operator looks at.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtStatus {
    /// Deploying, Deployed, Deleting, Deleted (KubeVirt's `KubeVirtPhase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,

    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// KubeVirt's phase once the install is complete.
pub const PHASE_DEPLOYED: &str = "Deployed";
/// virt-operator is tearing KubeVirt down (set once the CR has a deletionTimestamp).
pub const PHASE_DELETING: &str = "Deleting";
/// virt-operator has finished tearing KubeVirt down.
pub const PHASE_DELETED: &str = "Deleted";

impl KubeVirt {
    /// The current `spec.customizeComponents.patches`, empty when absent.
    pub fn patches(&self) -> &[Value] {
        self.spec
            .customize_components
            .as_ref()
            .and_then(|c| c.patches.as_deref())
            .unwrap_or(&[])
    }

    /// `status.phase`, if virt-operator has set one (KubeVirt's unset phase is "").
    pub fn phase(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .filter(|p| !p.is_empty())
    }

    /// `status.observedKubeVirtVersion`: the KubeVirt release virt-operator has deployed.
    pub fn observed_version(&self) -> Option<&str> {
        self.status
            .as_ref()?
            .other
            .get("observedKubeVirtVersion")?
            .as_str()
            .filter(|v| !v.is_empty())
    }

    /// Whether KubeVirt reports a finished install (`status.phase == Deployed`).
    pub fn is_deployed(&self) -> bool {
        self.phase() == Some(PHASE_DEPLOYED)
    }

    /// Whether the CR is going away: a deletionTimestamp, or virt-operator reports phase
    /// Deleting or Deleted. Nothing may be written to it then.
    pub fn is_deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
            || matches!(self.phase(), Some(PHASE_DELETING | PHASE_DELETED))
    }
}
