//! Shared by the controller tests: fixtures and golden files.
#![allow(dead_code)]

pub mod fake_api;

use std::path::{Path, PathBuf};

use kubevirt_metrics_collectors::controller::store::ClusterState;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("collectors has a parent")
        .to_path_buf()
}

/// Every document of a multi-document YAML file, as JSON values.
pub fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let value = serde_yaml::Value::deserialize(doc).expect("valid YAML");
            serde_json::to_value(value).expect("YAML maps to JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// A [`ClusterState`] holding every object of `testdata/controller/<name>.yaml`.
pub fn fixture_state(name: &str) -> ClusterState {
    let path = repo_root()
        .join("testdata/controller")
        .join(format!("{name}.yaml"));
    let mut state = ClusterState::default();
    for doc in yaml_documents(&path) {
        state.apply_any(doc).expect("fixture object decodes");
    }
    state
}

/// Compares `actual` with `testdata/golden/controller/<name>`; `UPDATE_GOLDEN=1` rewrites it.
pub fn assert_golden(name: &str, actual: &str) {
    let path = repo_root().join("testdata/golden/controller").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("mkdir");
        std::fs::write(&path, actual).expect("write golden");
        eprintln!("updated {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    pretty_assertions::assert_eq!(expected, actual, "golden {} differs", path.display());
}
