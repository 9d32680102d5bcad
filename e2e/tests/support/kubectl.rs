//! kubectl against the test API server, for what users see through it: printer columns,
//! category and short-name expansion, `apply -k` of the kustomize trees.
//!
//! Found as in `operator/tests/plan_golden.rs`: `KUBECTL`, then `.work/bin/kubectl` (what
//! `scripts/install-kube-tools.sh` installs and `scripts/test.sh` puts on PATH), then `PATH`.
//! A missing kubectl is an error, not a skip: the API server is there and the tests must run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::repo_path;

pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECTL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.exists() {
            bail!("KUBECTL={} does not exist", path.display());
        }
        return Ok(path);
    }
    let local = repo_path(".work/bin/kubectl");
    if local.exists() {
        return Ok(local);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("kubectl"))
        .find(|candidate| candidate.is_file());
    on_path.context(
        "kubectl not found: set KUBECTL, or run scripts/install-kube-tools.sh (installs .work/bin/kubectl)",
    )
}

/// The output of one kubectl run.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// `kubectl --kubeconfig KUBECONFIG ARGS...`, run from the repository root (so `-k config/...`
/// paths work), on a blocking thread.
pub async fn run(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let kubectl = path()?;
    let mut command = Command::new(&kubectl);
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .current_dir(repo_path(""))
        .env_remove("KUBECONFIG");
    let shown = format!("kubectl {}", args.join(" "));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("running {}", kubectl.display()))?;
    let out = Output {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!("e2e: $ {shown}\n{}{}", out.stdout, out.stderr);
    Ok(out)
}

/// [`run`], failing unless kubectl exits 0 with nothing on stderr (warnings count as errors:
/// users see them).
pub async fn ok(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = run(kubeconfig, args).await?;
    if !out.success || !out.stderr.trim().is_empty() {
        bail!(
            "kubectl {} failed or warned:\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
    }
    Ok(out.stdout)
}

/// A table as `kubectl get` prints it, as (column name, cell) pairs per row. Cells are cut
/// at the columns' start positions in the header, so an empty cell stays empty.
pub fn table(text: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let bytes = header.as_bytes();
    let starts: Vec<usize> = (0..bytes.len())
        .filter(|&i| bytes[i] != b' ' && (i == 0 || bytes[i - 1] == b' '))
        .collect();
    let cell = |line: &str, k: usize| -> String {
        let from = starts[k].min(line.len());
        let to = starts.get(k + 1).map_or(line.len(), |&e| e.min(line.len()));
        line.get(from..to).unwrap_or_default().trim().to_owned()
    };
    lines
        .map(|line| {
            (0..starts.len())
                .map(|k| (cell(header, k), cell(line, k)))
                .collect()
        })
        .collect()
}

/// The cell of column `name` in `row`.
pub fn cell<'a>(row: &'a [(String, String)], name: &str) -> Option<&'a str> {
    row.iter()
        .find(|(column, _)| column == name)
        .map(|(_, value)| value.as_str())
}
