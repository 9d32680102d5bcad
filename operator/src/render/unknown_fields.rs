//! Fields of a policy document that the API server would drop. A structural CRD schema
//! prunes every field it does not declare, silently (kubectl's strict field validation
//! aside, which GitOps tools do not all use), so a typo such as `virtHandlr` turns a
//! component off without a word. `render` refuses such a policy instead.
//!
//! Checked against the CRD schema the operator generates, walked the way the server prunes:
//! an object's keys against its `properties`, then `additionalProperties`; array items
//! against `items`; `x-kubernetes-preserve-unknown-fields` keeps everything below it.
//! `metadata` is checked against ObjectMeta's fields, which the CRD schema leaves out.
//! Chosen over a strict serde deserialization because `#[serde(flatten)]` (component
//! settings flatten the shared sidecar settings) cannot deny unknown fields, and the
//! schema is exactly what the server applies.

use serde_json::Value;

/// ObjectMeta's fields (meta/v1), the only ones `metadata` keeps.
const OBJECT_META_FIELDS: [&str; 15] = [
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// Paths (`spec.components.virtHandlr`, `spec.defaults.env[0].vaule`) of every field of
/// `document` that `schema` (the CRD's openAPIV3Schema) does not declare.
pub fn unknown_fields(document: &Value, schema: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let Some(object) = document.as_object() else {
        return found;
    };
    let properties = schema.get("properties").and_then(Value::as_object);
    for (key, value) in object {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                if let Some(meta) = value.as_object() {
                    found.extend(
                        meta.keys()
                            .filter(|k| !OBJECT_META_FIELDS.contains(&k.as_str()))
                            .map(|k| format!("metadata.{k}")),
                    );
                }
            }
            _ => match properties.and_then(|p| p.get(key)) {
                Some(child) => walk(value, child, key, &mut found),
                None => found.push(key.clone()),
            },
        }
    }
    found
}

fn walk(value: &Value, schema: &Value, path: &str, found: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(object) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, child) in object {
                let child_path = format!("{path}.{key}");
                if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
                    walk(child, child_schema, &child_path, found);
                } else if let Some(child_schema) = additional.filter(|a| a.is_object()) {
                    walk(child, child_schema, &child_path, found);
                } else if properties.is_some() || additional == Some(&Value::Bool(false)) {
                    found.push(child_path);
                }
                // An object schema declaring neither: nothing to compare with; let it be.
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    walk(item, item_schema, &format!("{path}[{index}]"), found);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    fn schema() -> Value {
        let crd = crate::api::MetricsSidecarPolicy::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap();
        serde_json::to_value(schema).unwrap()
    }

    #[test]
    fn typos_anywhere_are_found_with_their_path() {
        let policy = json!({
            "apiVersion": "metrics.kubevirt.io/v1alpha1",
            "kind": "MetricsSidecarPolicy",
            "metadata": {"name": "p", "namespace": "kubevirt", "lables": {"a": "b"}},
            "spec": {
                "defaults": {"image": "img", "env": [{"name": "A", "vaule": "1"}],
                    "resources": {"limits": {"memory": "1Gi"}, "limit": {}}},
                "components": {"virtHandlr": {}, "virtController": {"imag": "x", "enabled": true}},
                "rollout": {"unhealthyTimout": "1m"},
            },
            "extra": 1,
        });
        let mut found = unknown_fields(&policy, &schema());
        found.sort();
        assert_eq!(
            found,
            vec![
                "extra",
                "metadata.lables",
                "spec.components.virtController.imag",
                "spec.components.virtHandlr",
                "spec.defaults.env[0].vaule",
                "spec.defaults.resources.limit",
                "spec.rollout.unhealthyTimout",
            ]
        );
    }

    #[test]
    fn a_correct_policy_has_none() {
        let policy = json!({
            "apiVersion": "metrics.kubevirt.io/v1alpha1",
            "kind": "MetricsSidecarPolicy",
            "metadata": {"name": "p", "labels": {"anything": "goes"}, "annotations": {"a": "b"}},
            "spec": {
                "kubevirtRef": {"name": "kubevirt"},
                "defaults": {"image": "img", "resources": {"requests": {"cpu": "10m"}},
                    "securityContext": {"capabilities": {"drop": ["ALL"]}}},
                "components": {"virtHandler": {"source": "libvirt", "extraArgs": ["--x"]}},
                "rollout": {"unhealthyTimeout": "1m"},
            },
            "status": {"conditions": []},
        });
        assert_eq!(unknown_fields(&policy, &schema()), Vec::<String>::new());
    }
}
