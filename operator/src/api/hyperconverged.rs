//! The HyperConverged CR (hco.kubevirt.io/v1beta1) of OpenShift Virtualization / HCO.
//!
//! HCO owns the KubeVirt CR and overwrites direct edits of it; the supported way to change
//! the KubeVirt CR is the JSON-patch annotation [`KUBEVIRT_JSONPATCH_ANNOTATION`] on the
//! HyperConverged object. The operator only reads metadata and writes that annotation, so the
//! spec is kept as raw JSON.

use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Annotation on HyperConverged holding a JSON array of RFC 6902 operations that HCO applies
/// to the KubeVirt CR it generates.
pub const KUBEVIRT_JSONPATCH_ANNOTATION: &str = "kubevirt.kubevirt.io/jsonpatch";

pub const HCO_GROUP: &str = "hco.kubevirt.io";
pub const HCO_KIND: &str = "HyperConverged";

/// `HyperConverged` (hco.kubevirt.io/v1beta1). The CRD belongs to HCO; we never generate it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "hco.kubevirt.io",
    version = "v1beta1",
    kind = "HyperConverged",
    plural = "hyperconvergeds",
    namespaced,
    schema = "disabled",
    derive = "PartialEq",
    derive = "Default"
)]
pub struct HyperConvergedSpec {
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
