//! `kubevirt_vm_labels`: VM labels as Prometheus labels, filtered by the allow and ignore
//! lists of ConfigMap `kubevirt-vm-labels-config` (`common/labels/labels_config.go`).
//!
//! Rules, as KubeVirt's config applies them: no ConfigMap, or one without `data`, means
//! `allowlist: "*"` and no ignore list; a missing key takes its default; lists are
//! comma-separated and trimmed; an empty allow list reports nothing; the ignore list wins
//! over the allow list and has no wildcard. Labels come from the VM's metadata merged with
//! its template's (template wins), names become `label_<key>` with every character outside
//! `[A-Za-z0-9_]` replaced by `_` (and a leading `_` when the key does not start with a
//! letter or `_`); empty values are dropped (they are constant labels in operatormetrics).

use std::collections::BTreeMap;

use super::owned;
use crate::controller::store::ClusterState;
use crate::core::metric::{LabelName, Sample};
use crate::k8s::objects::VirtualMachine;

pub struct LabelsConfig {
    allowlist: Vec<String>,
    ignorelist: Vec<String>,
}

impl LabelsConfig {
    pub fn from_state(state: &ClusterState) -> Self {
        let data = state
            .vm_labels_config
            .as_ref()
            .and_then(|cm| cm.data.as_ref());
        let Some(data) = data else {
            return Self::defaults();
        };
        Self {
            allowlist: data
                .get("allowlist")
                .map_or_else(|| vec!["*".to_owned()], |v| parse_list(v)),
            ignorelist: data
                .get("ignorelist")
                .map_or_else(Vec::new, |v| parse_list(v)),
        }
    }

    fn defaults() -> Self {
        Self {
            allowlist: vec!["*".to_owned()],
            ignorelist: Vec::new(),
        }
    }

    pub fn should_report(&self, label: &str) -> bool {
        if self.allowlist.is_empty() || self.ignorelist.iter().any(|l| l == label) {
            return false;
        }
        self.allowlist.iter().any(|l| l == "*" || l == label)
    }
}

fn parse_list(data: &str) -> Vec<String> {
    data.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `label_` plus the key made a valid label name.
pub fn label_name(key: &str) -> String {
    // Go's regexp works on runes: one `_` per character, not per byte. The first-character
    // check is made on the sanitised key.
    let sanitised: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let prefix = if sanitised.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        "label_"
    } else {
        "label__"
    };
    format!("{prefix}{sanitised}")
}

/// The VM's `kubevirt_vm_labels` sample, if it has at least one reported label.
pub fn sample(vm: &VirtualMachine, config: &LabelsConfig) -> Option<Sample> {
    let mut merged: BTreeMap<&str, &str> = vm
        .metadata
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Some(template) = &vm.spec.template {
        merged.extend(
            template
                .metadata
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
    }
    // Two keys can sanitise to one name (`a.b`, `a/b`); the last key in order wins, where Go's
    // map order would pick one at random.
    let mut constant: BTreeMap<String, &str> = BTreeMap::new();
    for (key, value) in merged {
        if config.should_report(key) {
            constant.insert(label_name(key), value);
        }
    }
    if constant.is_empty() {
        return None;
    }
    let mut labels: Vec<_> = constant
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| (owned(name), value.into()))
        .collect();
    labels.push((
        LabelName::new_static("name"),
        vm.metadata.name.as_str().into(),
    ));
    labels.push((
        LabelName::new_static("namespace"),
        vm.metadata.namespace.as_str().into(),
    ));
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    Some(Sample::new(labels, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_are_sanitised_like_kubevirt() {
        assert_eq!(label_name("app"), "label_app");
        assert_eq!(
            label_name("vm.kubevirt.io/template"),
            "label_vm_kubevirt_io_template"
        );
        assert_eq!(
            label_name("app.kubernetes.io/part-of"),
            "label_app_kubernetes_io_part_of"
        );
        assert_eq!(label_name("1st"), "label__1st");
        assert_eq!(label_name("_x"), "label__x");
        assert_eq!(label_name("é"), "label__");
        assert_eq!(label_name("-x"), "label__x");
        assert_eq!(label_name(""), "label__");
    }

    #[test]
    fn lists_follow_kubevirt_rules() {
        let config = |allow: Option<&str>, ignore: Option<&str>| LabelsConfig {
            allowlist: allow.map_or_else(|| vec!["*".into()], parse_list),
            ignorelist: ignore.map_or_else(Vec::new, parse_list),
        };
        assert!(config(None, None).should_report("team"));
        assert!(!config(Some(""), None).should_report("team"));
        assert!(config(Some(" team , env "), None).should_report("env"));
        assert!(!config(Some("team"), None).should_report("env"));
        assert!(!config(Some("*"), Some("team")).should_report("team"));
        assert!(config(Some("*"), Some("*")).should_report("team"));
    }
}
