//! Golden tests of virt-handler's families: launcher payloads (`testdata/launcher-payloads/`)
//! → `handler::launcher::payload` → `handler::families` (with the migration history, pass by pass) → Prometheus
//! text, compared byte for byte with `testdata/golden/handler/`. `UPDATE_GOLDEN=1` rewrites
//! the golden files. The family table is also checked against KubeVirt's metric list
//! (`testdata/kubevirt-metrics.tsv`) and every golden against `promtool check metrics`.

#![allow(clippy::unwrap_used)]

#[path = "common/kubevirt_tsv.rs"]
mod kubevirt_tsv;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::core::metric::Family;
use kubevirt_metrics_collectors::handler::families::{
    self, ABSENT_FAMILIES, FAMILIES, MigrationHistory,
};
use kubevirt_metrics_collectors::handler::launcher::payload;
use kubevirt_metrics_collectors::handler::stats::{VmiIdentity, VmiStats};
use kubevirt_tsv::{TsvRow, kubevirt_metrics};
use serde::Deserialize;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

#[derive(Deserialize)]
struct Scenario {
    #[allow(dead_code)]
    description: String,
    passes: Vec<Pass>,
}

#[derive(Deserialize)]
struct Pass {
    vmis: Vec<VmiPayload>,
}

/// One VMI of one pass: its identity, and the launcher's answers either inline (the JSON
/// value of the string virt-launcher returns) or as a file holding the raw string.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VmiPayload {
    namespace: String,
    name: String,
    node: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    collected_at_ms: u64,
    domain_stats: Option<serde_json::Value>,
    domain_stats_file: Option<String>,
    filesystems: Option<serde_json::Value>,
    filesystems_file: Option<String>,
    dirty_rate_mbs: Option<i64>,
}

fn payload(inline: Option<&serde_json::Value>, file: Option<&str>, dir: &Path) -> String {
    match (inline, file) {
        (_, Some(file)) => std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}")),
        (Some(value), None) => serde_json::to_string(value).unwrap(),
        (None, None) => "null".to_owned(),
    }
}

impl VmiPayload {
    fn decode(&self, dir: &Path) -> VmiStats {
        let domain_json = payload(
            self.domain_stats.as_ref(),
            self.domain_stats_file.as_deref(),
            dir,
        );
        let filesystems_json = payload(
            self.filesystems.as_ref(),
            self.filesystems_file.as_deref(),
            dir,
        );
        VmiStats {
            vmi: VmiIdentity {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                node: self.node.clone(),
                labels: self.labels.clone(),
                ..Default::default()
            }
            .into(),
            domain: payload::domain_stats_from_json(&domain_json)
                .unwrap_or_else(|e| panic!("{}/{}: {e}", self.namespace, self.name)),
            filesystems: payload::filesystems_from_json(&filesystems_json)
                .unwrap_or_else(|e| panic!("{}/{}: {e}", self.namespace, self.name)),
            dirty_rate_mbs: self.dirty_rate_mbs,
            collected_at: UNIX_EPOCH + Duration::from_millis(self.collected_at_ms),
        }
    }
}

fn scenarios() -> Vec<(String, Scenario)> {
    let dir = testdata().join("launcher-payloads");
    let mut found: Vec<(String, Scenario)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            // `captured-*` are raw launcher strings, referenced by scenarios.
            name.ends_with(".json") && !name.starts_with("captured-")
        })
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let scenario: Scenario =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, scenario)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(found.len() >= 4, "scenarios missing in {}", dir.display());
    found
}

/// Every pass of every scenario: (golden file name, families).
fn rendered() -> Vec<(String, Vec<Family>)> {
    let dir = testdata().join("launcher-payloads");
    let mut out = Vec::new();
    for (name, scenario) in scenarios() {
        let mut history = MigrationHistory::default();
        let passes = scenario.passes.len();
        for (index, pass) in scenario.passes.iter().enumerate() {
            let vmis: Vec<VmiStats> = pass.vmis.iter().map(|v| v.decode(&dir)).collect();
            history.record(&vmis);
            let migrations = history.drain();
            let file = if passes == 1 {
                format!("{name}.prom")
            } else {
                format!("{name}.pass{}.prom", index + 1)
            };
            out.push((file, families::render(&vmis, &migrations)));
        }
    }
    out
}

#[test]
fn launcher_payloads_match_golden_exposition() {
    let golden_dir = testdata().join("golden/handler");
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut mismatched = Vec::new();
    for (file, families) in rendered() {
        let actual = text::encode(&families);
        let path = golden_dir.join(&file);
        if update {
            std::fs::create_dir_all(&golden_dir).unwrap();
            std::fs::write(&path, &actual).unwrap();
            eprintln!("rewrote {}", path.display());
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "golden file {} is missing; run with UPDATE_GOLDEN=1",
                path.display()
            )
        });
        if expected != actual {
            eprintln!("--- {file}");
            pretty_assertions::assert_eq!(expected, actual, "{file}");
            mismatched.push(file);
        }
    }
    assert!(mismatched.is_empty(), "golden mismatch: {mismatched:?}");
}

#[test]
fn goldens_cover_every_family() {
    let mut seen = BTreeSet::new();
    for (_, families) in rendered() {
        seen.extend(families.iter().map(|f| f.name.to_string()));
    }
    let missing: Vec<&str> = FAMILIES
        .iter()
        .map(|spec| spec.name)
        .filter(|name| !seen.contains(*name))
        .collect();
    assert!(missing.is_empty(), "no golden shows {missing:?}");
}

#[test]
fn goldens_pass_promtool() {
    let available = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        skipped("promtool is not installed; cannot lint the golden expositions");
        return;
    }
    for (file, families) in rendered() {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text::encode(&families).as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Exit 3 is "lint findings". The only one allowed is the one KubeVirt's own output
        // has: VMI label keys keep their case (`kubernetes_vmi_label_kubevirt_io_nodeName`).
        let only_kubevirts_own_lint = output.status.code() == Some(3)
            && report.lines().all(|line| {
                line.trim().is_empty()
                    || line
                        .ends_with("label names should be written in 'snake_case' not 'camelCase'")
            });
        assert!(
            output.status.success() || only_kubevirts_own_lint,
            "promtool check metrics on {file}: {:?}\n{report}",
            output.status.code(),
        );
    }
}

/// KubeVirt's own virt-handler metrics (not the Go process collectors), by name.
fn kubevirt_handler_metrics() -> BTreeMap<String, TsvRow> {
    kubevirt_metrics(&testdata().join(".."), "virt-handler")
}

#[test]
fn family_table_matches_kubevirts_metric_list() {
    let kubevirt = kubevirt_handler_metrics();
    for spec in FAMILIES {
        let row = kubevirt
            .get(spec.name)
            .unwrap_or_else(|| panic!("{} is not a virt-handler metric", spec.name));
        assert_eq!(row.kind, spec.kind.as_str(), "{}", spec.name);
        assert_eq!(row.help, spec.help, "{}", spec.name);
        let mut expected: Vec<&str> = if spec.vmi_labels {
            vec!["node", "namespace", "name", "kubernetes_vmi_label_*"]
        } else {
            vec!["namespace", "name", "node"]
        };
        expected.extend(spec.extra_labels);
        assert_eq!(row.labels, expected, "{}", spec.name);
    }
    let ours: BTreeSet<&str> = FAMILIES.iter().map(|s| s.name).collect();
    for name in kubevirt.keys() {
        assert!(
            ours.contains(name.as_str()) || ABSENT_FAMILIES.contains(&name.as_str()),
            "{name} is neither produced nor listed as absent"
        );
    }
    for name in ABSENT_FAMILIES {
        assert!(
            kubevirt.contains_key(*name),
            "{name} is not a virt-handler metric"
        );
    }
}

#[test]
fn rendered_label_names_are_kubevirts() {
    let kubevirt = kubevirt_handler_metrics();
    for (file, families) in rendered() {
        for family in &families {
            let row = &kubevirt[family.name.as_ref()];
            let dynamic = row.labels.iter().any(|l| l == "kubernetes_vmi_label_*");
            for sample in &family.samples {
                let names: Vec<&str> = sample.labels.iter().map(|(n, _)| n.as_ref()).collect();
                let mut sorted = names.clone();
                sorted.sort_unstable();
                assert_eq!(names, sorted, "{file}: {} labels not sorted", family.name);
                for name in names {
                    assert!(
                        row.labels.iter().any(|l| l == name)
                            || (dynamic && name.starts_with("kubernetes_vmi_label_")),
                        "{file}: {} has unexpected label {name}",
                        family.name
                    );
                }
            }
        }
    }
}

/// A loud skip that `scripts/test.sh` counts: straight to the stderr handle (libtest
/// captures `eprintln!` of passing tests), with the test's name (libtest names the thread).
fn skipped(reason: &str) {
    use std::io::Write;
    let name = std::thread::current()
        .name()
        .unwrap_or("unknown")
        .to_owned();
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED: {reason}\nSKIPPED test: {name}"
    );
}
