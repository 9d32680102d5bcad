//! KubeVirt's metric list (`testdata/kubevirt-metrics.tsv`, generated from KubeVirt's
//! sources), read once for the tests that check our families against it.

use std::collections::BTreeMap;
use std::path::Path;

pub struct TsvRow {
    pub kind: String,
    /// Label names in the TSV's order; `kubernetes_vmi_label_*` / `label_*` stand for a
    /// dynamic family of labels.
    pub labels: Vec<String>,
    pub help: String,
}

/// KubeVirt's own metrics of `component` (not the client_golang process collectors), by name.
pub fn kubevirt_metrics(repo_root: &Path, component: &str) -> BTreeMap<String, TsvRow> {
    let path = repo_root.join("testdata/kubevirt-metrics.tsv");
    let tsv = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    tsv.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 5, "malformed TSV line: {line}");
            (cols[0] == component && !cols[4].starts_with("[client_golang")).then(|| {
                let labels = cols[3]
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
                let row = TsvRow {
                    kind: cols[2].to_owned(),
                    labels,
                    help: cols[4].to_owned(),
                };
                (cols[1].to_owned(), row)
            })
        })
        .collect()
}
