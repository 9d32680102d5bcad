//! The HyperConverged variant: on OpenShift Virtualization HCO owns the KubeVirt CR and
//! rewrites it from the HyperConverged CR, applying the RFC 6902 operations found in the
//! HyperConverged annotation `kubevirt.kubevirt.io/jsonpatch` to the KubeVirt CR it builds.
//!
//! Our operations add our patch entries to `/spec/customizeComponents/patches`. Every other
//! operation stays, in its place; ours always come last. HCO builds `customizeComponents`
//! empty (no `patches` array), so unless an earlier operation creates the array, ours start
//! with one `add` of the whole array holding our entries; otherwise each entry is appended
//! with `/-`. Operations are recognised as ours by the marker inside the entries they add.

use serde_json::{Value, json};

use super::PlanError;
use super::entries::is_owned_by;

const PATCHES_PATH: &str = "/spec/customizeComponents/patches";
const CUSTOMIZE_PATH: &str = "/spec/customizeComponents";

/// The annotation value to write (None: remove the annotation), and whether anything changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HcoChange {
    pub annotation: Option<String>,
    pub changed: bool,
}

/// The annotation with our operations for `ours` (entries of the policy `owner`); an empty
/// `ours` removes our operations.
pub fn hco_annotation(
    existing: Option<&str>,
    owner: &str,
    ours: &[Value],
) -> Result<HcoChange, PlanError> {
    let existing_ops = parse_ops(existing)?;
    let foreign: Vec<Value> = existing_ops
        .iter()
        .filter(|op| !is_our_op(op, owner))
        .cloned()
        .collect();
    let mut ops = foreign.clone();
    if !ours.is_empty() {
        if foreign.iter().any(creates_patches_array) {
            ops.extend(ours.iter().map(
                |entry| json!({"op": "add", "path": format!("{PATCHES_PATH}/-"), "value": entry}),
            ));
        } else {
            ops.push(json!({"op": "add", "path": PATCHES_PATH, "value": ours}));
        }
    }
    if ops == existing_ops {
        return Ok(HcoChange {
            annotation: existing.map(str::to_owned),
            changed: false,
        });
    }
    let annotation = if ops.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&ops).map_err(PlanError::Serialize)?)
    };
    Ok(HcoChange {
        annotation,
        changed: true,
    })
}

fn parse_ops(existing: Option<&str>) -> Result<Vec<Value>, PlanError> {
    let Some(text) = existing.filter(|t| !t.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(ops)) => Ok(ops),
        Ok(_) => Err(PlanError::BadHcoAnnotation(
            "not a JSON array of operations".to_owned(),
        )),
        Err(error) => Err(PlanError::BadHcoAnnotation(error.to_string())),
    }
}

/// An `add` of our entry (`.../patches/-`), or of an array made only of our entries.
fn is_our_op(op: &Value, owner: &str) -> bool {
    let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
    if !path.starts_with(PATCHES_PATH) {
        return false;
    }
    match op.get("value") {
        Some(Value::Array(entries)) => {
            !entries.is_empty() && entries.iter().all(|e| is_owned_by(e, owner))
        }
        Some(entry) => is_owned_by(entry, owner),
        None => false,
    }
}

/// Whether a (foreign) operation leaves a `patches` array behind.
fn creates_patches_array(op: &Value) -> bool {
    let kind = op.get("op").and_then(Value::as_str).unwrap_or_default();
    if kind != "add" && kind != "replace" {
        return false;
    }
    let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
    let value = op.get("value");
    (path == PATCHES_PATH && value.is_some_and(Value::is_array))
        || (path == CUSTOMIZE_PATH
            && value
                .and_then(|v| v.get("patches"))
                .is_some_and(Value::is_array))
}
