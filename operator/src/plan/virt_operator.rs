//! virt-operator's own Deployment. It is not part of KubeVirt's install strategy, so
//! `customizeComponents` cannot reach it and virt-operator does not revert edits to it: the
//! sidecar goes in by server-side apply with the field manager
//! [`crate::api::FIELD_MANAGER`], which owns exactly the fields in this body (our container,
//! our annotation) and nothing of the installer's. Applying the body without them (from
//! [`removal_body`]) takes them back out.

use serde_json::{Value, json};

use super::entries::MARKER_ANNOTATION;
use crate::api::Component;

/// The apply body that puts `container` into the virt-operator Deployment in `namespace`.
pub fn apply_body(namespace: &str, owner: &str, container: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": Component::VirtOperator.workload_name(), "namespace": namespace},
        "spec": {
            "template": {
                "metadata": {"annotations": {MARKER_ANNOTATION: owner}},
                "spec": {"containers": [container]},
            },
        },
    })
}

/// The apply body that releases every field our manager owns in the Deployment.
pub fn removal_body(namespace: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": Component::VirtOperator.workload_name(), "namespace": namespace},
    })
}
