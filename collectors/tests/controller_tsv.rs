//! Every family the controller collector renders is one KubeVirt's virt-controller exports:
//! same name, type and HELP text, and exactly its label names (testdata/kubevirt-metrics.tsv,
//! generated from KubeVirt's sources). Also runs `promtool check metrics` on the output
//! when promtool is installed.

mod controller_support;
#[path = "common/kubevirt_tsv.rs"]
mod kubevirt_tsv;

use std::collections::BTreeSet;

use controller_support::{fixture_state, repo_root};
use kubevirt_metrics_collectors::controller::families::{self, RENDERED};
use kubevirt_metrics_collectors::core::format::text;
use kubevirt_tsv::{TsvRow, kubevirt_metrics};

fn virt_controller_rows() -> std::collections::BTreeMap<String, TsvRow> {
    kubevirt_metrics(&repo_root(), "virt-controller")
}

#[test]
fn rendered_families_match_kubevirt() {
    let rows = virt_controller_rows();
    let families = families::render(&fixture_state("cluster"));
    assert_eq!(families.len(), RENDERED.len());
    for family in &families {
        let row = rows
            .get(family.name.as_ref())
            .unwrap_or_else(|| panic!("{} is not a virt-controller metric", family.name));
        assert_eq!(family.kind.as_str(), row.kind, "{} type", family.name);
        assert_eq!(family.help, row.help, "{} help", family.name);
        assert!(!family.samples.is_empty(), "fixture covers {}", family.name);
        for sample in &family.samples {
            let names: BTreeSet<String> =
                sample.labels.iter().map(|(n, _)| n.to_string()).collect();
            let row_labels: BTreeSet<String> = row.labels.iter().cloned().collect();
            if row_labels.contains("label_*") {
                let fixed: BTreeSet<String> = names
                    .iter()
                    .filter(|n| !n.starts_with("label_"))
                    .cloned()
                    .collect();
                let expected: BTreeSet<String> = row_labels
                    .iter()
                    .filter(|n| *n != "label_*")
                    .cloned()
                    .collect();
                assert_eq!(fixed, expected, "{} labels", family.name);
            } else {
                assert_eq!(names, row_labels, "{} labels", family.name);
            }
        }
    }
}

#[test]
fn backport_matches_kubevirt() {
    let rows = virt_controller_rows();
    let family = families::leading_status(true);
    let row = &rows[family.name.as_ref()];
    assert_eq!(family.kind.as_str(), row.kind);
    assert_eq!(family.help, row.help);
    assert!(row.labels.is_empty());
}

#[test]
fn promtool_accepts_the_output() {
    let Ok(promtool) = which("promtool") else {
        skipped("promtool not installed");
        return;
    };
    let out = text::encode(&families::render(&fixture_state("cluster")));
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(out.as_bytes())
        .expect("write");
    let result = child.wait_with_output().expect("promtool finishes");
    let report = String::from_utf8_lossy(&result.stderr).to_string()
        + &String::from_utf8_lossy(&result.stdout);
    // Exit 3 = lint findings only. KubeVirt's own names trip the counter-suffix lint
    // (`*_timestamp_seconds` counters without `_total`), which we must keep as they are.
    let lint_only = result.status.code() == Some(3)
        && report
            .lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| l.contains("counter metrics should have \"_total\" suffix"));
    assert!(result.status.success() || lint_only, "promtool: {report}");
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .ok_or(())
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
