//! KubeVirt's metric families, exactly: names, types, HELP text, labels and label-value rules.
//! Pure code: statistics or objects in, [`crate::exposition::Family`] out.
