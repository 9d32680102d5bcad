//! virt-operator's own Deployment. It is not part of KubeVirt's install strategy, so
//! `customizeComponents` cannot reach it and virt-operator does not revert edits to it: the
//! sidecar goes in by server-side apply with the field manager
//! [`crate::api::FIELD_MANAGER`], which owns exactly the fields in this body (our container,
//! our annotation) and nothing of the installer's. Applying the body without them (from
//! [`removal_body`]) takes them back out.

use serde_json::{Value, json};

use super::entries::MARKER_ANNOTATION;
use crate::api::Component;

/// The apply body that puts `container` (and the pod `volumes` only it mounts) into the
/// virt-operator Deployment in `namespace`. Volumes are a map list keyed by name for
/// server-side apply, so ours are owned by our manager alone and leave with [`removal_body`].
pub fn apply_body(namespace: &str, owner: &str, container: Value, volumes: &[Value]) -> Value {
    let mut body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": Component::VirtOperator.workload_name(), "namespace": namespace},
        "spec": {
            "template": {
                "metadata": {"annotations": {MARKER_ANNOTATION: owner}},
                "spec": {"containers": [container]},
            },
        },
    });
    if !volumes.is_empty()
        && let Some(spec) = body
            .pointer_mut("/spec/template/spec")
            .and_then(Value::as_object_mut)
    {
        spec.insert("volumes".to_owned(), Value::Array(volumes.to_vec()));
    }
    body
}

/// The apply body that releases every field our manager owns in the Deployment.
pub fn removal_body(namespace: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": Component::VirtOperator.workload_name(), "namespace": namespace},
    })
}
