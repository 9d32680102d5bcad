//! The four KubeVirt components a sidecar can join, and the facts about each that the plan
//! needs (which object carries it, its container, its serving certificate).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A KubeVirt component. Serialized as its workload name (`virt-handler`, ...), which is what
/// users see in `kubectl get` and in KubeVirt's own docs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Component {
    #[serde(rename = "virt-handler")]
    VirtHandler,
    #[serde(rename = "virt-controller")]
    VirtController,
    #[serde(rename = "virt-api")]
    VirtApi,
    #[serde(rename = "virt-operator")]
    VirtOperator,
}

impl Component {
    /// Every component, in the fixed order used for patch entries and status.
    pub const ALL: [Component; 4] = [
        Self::VirtHandler,
        Self::VirtController,
        Self::VirtApi,
        Self::VirtOperator,
    ];

    /// The DaemonSet/Deployment name, which is also the name of the component's container.
    pub fn workload_name(self) -> &'static str {
        match self {
            Self::VirtHandler => "virt-handler",
            Self::VirtController => "virt-controller",
            Self::VirtApi => "virt-api",
            Self::VirtOperator => "virt-operator",
        }
    }

    /// The component's own container; KubeVirt keeps it at index 0.
    pub fn container_name(self) -> &'static str {
        self.workload_name()
    }

    /// Kind of the workload, as `customizeComponents.patches[].resourceType` spells it.
    pub fn resource_type(self) -> &'static str {
        match self {
            Self::VirtHandler => "DaemonSet",
            _ => "Deployment",
        }
    }

    /// virt-operator's Deployment is not part of KubeVirt's install strategy, so
    /// `customizeComponents` cannot reach it: it is patched directly (server-side apply).
    pub fn via_customize_components(self) -> bool {
        self != Self::VirtOperator
    }

    /// The collector binary that serves this component's metrics.
    pub fn collector_binary(self) -> &'static str {
        match self {
            Self::VirtHandler => "virt-handler-metrics",
            Self::VirtController => "virt-controller-metrics",
            Self::VirtApi => "virt-api-metrics",
            Self::VirtOperator => "virt-operator-metrics",
        }
    }

    /// The pod volume holding the component's serving certificate (issued by virt-operator
    /// from the KubeVirt CA), and where the component mounts it. The sidecar mounts the same
    /// volume read-only at the same path, so it serves with KubeVirt's certificate.
    pub fn serving_cert_volume(self) -> (&'static str, &'static str) {
        match self {
            Self::VirtHandler => (
                "kubevirt-virt-handler-server-certs",
                "/etc/virt-handler/servercertificates",
            ),
            Self::VirtController => (
                "kubevirt-controller-certs",
                "/etc/virt-controller/certificates",
            ),
            Self::VirtApi => ("kubevirt-virt-api-certs", "/etc/virt-api/certificates"),
            Self::VirtOperator => ("kubevirt-operator-certs", "/etc/virt-operator/certificates"),
        }
    }

    /// Container ports the component already uses: the sidecar must not take them.
    pub fn taken_ports(self) -> &'static [i32] {
        match self {
            Self::VirtHandler => &[8443, 8186, 8187],
            Self::VirtController | Self::VirtApi => &[8443],
            Self::VirtOperator => &[8443, 8444],
        }
    }

    pub fn as_str(self) -> &'static str {
        self.workload_name()
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
