//! Label rules KubeVirt applies to every family: the `kubernetes_vmi_label_*` names derived
//! from a VMI's labels, which label names are valid, and the client_golang label order.

use crate::core::metric::{LabelName, LabelValue, Labels};

/// Prefix of the label KubeVirt derives from each VMI label (`domainstats.go`, `labelPrefix`).
pub const VMI_LABEL_PREFIX: &str = "kubernetes_vmi_label_";

/// The metric label name for a VMI label key: the prefix plus the key with `.`, `/` and `-`
/// replaced by `_` (KubeVirt's `labelFormatter`; only those three characters, case kept).
pub fn vmi_label_name(key: &str) -> String {
    let mut name = String::with_capacity(VMI_LABEL_PREFIX.len() + key.len());
    name.push_str(VMI_LABEL_PREFIX);
    name.extend(key.chars().map(|c| match c {
        '.' | '/' | '-' => '_',
        c => c,
    }));
    name
}

/// Whether `name` is a valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Finishes a label set the way KubeVirt's collectors do: labels with empty values are left
/// out (operatormetrics drops empty const labels), and the rest are sorted by name, which is
/// the order client_golang writes them in.
pub fn finish_labels(mut labels: Vec<(LabelName, LabelValue)>) -> Labels {
    labels.retain(|(_, value)| !value.is_empty());
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels.into()
}

/// A static label name.
pub(crate) const fn label(name: &'static str) -> LabelName {
    LabelName::new_static(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitises_only_dot_slash_and_dash() {
        assert_eq!(
            vmi_label_name("kubevirt.io/nodeName"),
            "kubernetes_vmi_label_kubevirt_io_nodeName"
        );
        assert_eq!(
            vmi_label_name("vm.kubevirt.io/name"),
            "kubernetes_vmi_label_vm_kubevirt_io_name"
        );
        assert_eq!(
            vmi_label_name("app.kubernetes.io/part-of"),
            "kubernetes_vmi_label_app_kubernetes_io_part_of"
        );
        assert_eq!(vmi_label_name("Team_X"), "kubernetes_vmi_label_Team_X");
        assert_eq!(vmi_label_name("a:b"), "kubernetes_vmi_label_a:b");
    }

    #[test]
    fn label_name_validity() {
        assert!(is_valid_label_name(
            "kubernetes_vmi_label_kubevirt_io_nodeName"
        ));
        assert!(is_valid_label_name("_x"));
        assert!(!is_valid_label_name(""));
        assert!(!is_valid_label_name("1x"));
        assert!(!is_valid_label_name("kubernetes_vmi_label_a:b"));
    }

    #[test]
    fn finishing_drops_empty_values_and_sorts_by_name() {
        let labels = finish_labels(vec![
            (label("node"), "n1".into()),
            (label("drive"), "".into()),
            (label("name"), "vm".into()),
            ("kubernetes_vmi_label_b".into(), "x".into()),
            (label("namespace"), "ns".into()),
        ]);
        let names: Vec<&str> = labels.iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(
            names,
            ["kubernetes_vmi_label_b", "name", "namespace", "node"]
        );
    }
}
