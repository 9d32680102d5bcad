//! `spec.customizeComponents.patches` entries: building ours, finding ours again, merging
//! them into (and removing them from) a list that other people also write.
//!
//! **Marker.** An entry has only `resourceName`, `resourceType`, `patch` and `type`, and
//! KubeVirt's schema prunes anything else, so the marker lives inside the patch body: every
//! patch we write sets the pod-template annotation [`MARKER_ANNOTATION`] =
//! `<policy namespace>/<policy name>`. It is part of the patch, so it survives every
//! round-trip through the API and through GitOps tools, tells which policy owns the entry,
//! and also lands on the pods, where a user can see who added the sidecar.
//!
//! **Order of containers.** A plain strategic patch that adds a container puts it first;
//! virt-operator and KubeVirt expect the component's container at index 0. Each patch carries
//! `$setElementOrder/containers` = [component, sidecar], which pins the order and stays
//! idempotent when virt-operator re-applies it (tests/plan_golden.rs proves it with kubectl's
//! strategic merge on the real v1.9.0 manifests).
//!
//! **Merge.** Foreign entries keep their bytes and their positions. Our entry for a resource
//! replaces our previous one in place; new ones are appended in component order; ours that
//! are no longer wanted are dropped. virt-operator applies patches sorted by length, not list
//! order, and ours touch only our own container and annotation, so order does not matter to
//! the result.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::PlanError;
use crate::api::Component;

/// Pod-template annotation inside each of our patches: `<namespace>/<policy name>`.
pub const MARKER_ANNOTATION: &str = "metrics.kubevirt.io/sidecar-policy";

/// JSON pointer of the marker inside a patch body.
const MARKER_POINTER: &str =
    "/spec/template/metadata/annotations/metrics.kubevirt.io~1sidecar-policy";

/// One `customizeComponents.patches` entry, fields in the order KubeVirt serializes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PatchEntry {
    pub resource_name: String,
    pub resource_type: String,
    /// The patch body as a JSON string (KubeVirt's update webhook rejects YAML).
    pub patch: String,
    #[serde(rename = "type")]
    pub patch_type: String,
}

impl PatchEntry {
    pub fn to_value(&self) -> Value {
        json!({
            "resourceName": self.resource_name,
            "resourceType": self.resource_type,
            "patch": self.patch,
            "type": self.patch_type,
        })
    }
}

/// The strategic patch adding `container` (and the pod `volumes` only it mounts, merged by
/// name) to `component`'s pod template.
pub fn sidecar_entry(
    component: Component,
    owner: &str,
    sidecar_name: &str,
    container: Value,
    volumes: &[Value],
) -> Result<PatchEntry, PlanError> {
    let mut body = json!({
        "spec": {
            "template": {
                "metadata": {"annotations": {MARKER_ANNOTATION: owner}},
                "spec": {
                    "$setElementOrder/containers": [
                        {"name": component.container_name()},
                        {"name": sidecar_name},
                    ],
                    "containers": [container],
                },
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
    Ok(PatchEntry {
        resource_name: component.workload_name().to_owned(),
        resource_type: component.resource_type().to_owned(),
        patch: serde_json::to_string(&body).map_err(PlanError::Serialize)?,
        patch_type: "strategic".to_owned(),
    })
}

/// The policy (`namespace/name`) that wrote `entry`, if it is one of ours.
pub fn entry_owner(entry: &Value) -> Option<String> {
    let patch = entry.get("patch")?.as_str()?;
    // Cheap pre-check: most foreign patches never mention the marker; skip parsing them.
    if !patch.contains(MARKER_ANNOTATION) {
        return None;
    }
    let body: Value = serde_json::from_str(patch).ok()?;
    body.pointer(MARKER_POINTER)?.as_str().map(str::to_owned)
}

/// Whether `entry` was written by the policy `owner` (`namespace/name`).
pub fn is_owned_by(entry: &Value, owner: &str) -> bool {
    entry_owner(entry).as_deref() == Some(owner)
}

/// `existing` with `ours` merged in, for the policy `owner` (see the module docs).
pub fn merge_patches(existing: &[Value], owner: &str, ours: &[Value]) -> Vec<Value> {
    let mut placed = vec![false; ours.len()];
    let mut merged = Vec::with_capacity(existing.len() + ours.len());
    for entry in existing {
        if !is_owned_by(entry, owner) {
            merged.push(entry.clone());
            continue;
        }
        let slot = ours
            .iter()
            .enumerate()
            .find(|(i, candidate)| !placed[*i] && same_target(entry, candidate));
        if let Some((i, candidate)) = slot {
            placed[i] = true;
            merged.push(candidate.clone());
        }
    }
    for (candidate, done) in ours.iter().zip(placed) {
        if !done {
            merged.push(candidate.clone());
        }
    }
    merged
}

/// `existing` without the entries of the policy `owner`.
pub fn remove_patches(existing: &[Value], owner: &str) -> Vec<Value> {
    existing
        .iter()
        .filter(|entry| !is_owned_by(entry, owner))
        .cloned()
        .collect()
}

/// Same workload: `resourceType` compared case-insensitively (as virt-operator does) and the
/// same `resourceName`.
fn same_target(a: &Value, b: &Value) -> bool {
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let kind = |v: &Value| field(v, "resourceType").map(|s| s.to_ascii_lowercase());
    kind(a) == kind(b) && field(a, "resourceName") == field(b, "resourceName")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ours(name: &str, owner: &str, extra: &str) -> Value {
        let patch = json!({"spec":{"template":{"metadata":{"annotations":{MARKER_ANNOTATION: owner}},"x":extra}}});
        json!({"resourceName": name, "resourceType": "Deployment", "patch": patch.to_string(), "type": "strategic"})
    }

    #[test]
    fn owner_is_read_from_the_patch_body() {
        assert_eq!(
            entry_owner(&ours("virt-api", "kubevirt/p", "")).as_deref(),
            Some("kubevirt/p")
        );
        let foreign = json!({"resourceName": "virt-api", "resourceType": "Deployment", "patch": "{\"a\":1}", "type": "merge"});
        assert_eq!(entry_owner(&foreign), None);
        let not_json = json!({"resourceName": "x", "resourceType": "y", "patch": "metrics.kubevirt.io/sidecar-policy: a", "type": "json"});
        assert_eq!(entry_owner(&not_json), None);
    }

    #[test]
    fn merge_replaces_in_place_appends_new_and_drops_stale() {
        let foreign = json!({"resourceName": "virt-api", "resourceType": "Deployment", "patch": "{}", "type": "merge"});
        let existing = vec![
            ours("virt-controller", "ns/p", "old"),
            foreign.clone(),
            ours("virt-api", "ns/p", "old"),
            ours("virt-api", "ns/other", "theirs"),
        ];
        let want = vec![
            ours("virt-controller", "ns/p", "new"),
            ours("virt-handler", "ns/p", "new"),
        ];
        let merged = merge_patches(&existing, "ns/p", &want);
        assert_eq!(
            merged,
            vec![
                want[0].clone(),
                foreign.clone(),
                ours("virt-api", "ns/other", "theirs"),
                want[1].clone()
            ]
        );
        assert_eq!(merge_patches(&merged, "ns/p", &want), merged, "idempotent");
        assert_eq!(
            remove_patches(&merged, "ns/p"),
            vec![foreign, ours("virt-api", "ns/other", "theirs")]
        );
    }
}
