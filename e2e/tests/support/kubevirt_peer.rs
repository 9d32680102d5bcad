//! KubeVirt itself as a test peer: `kv-domainstats` from `../shared/kubevirt-peer` (a test
//! program linked from KubeVirt v1.9.0's source; see the README there) runs KubeVirt's real
//! virt-launcher command server for K VMIs and KubeVirt's real virt-handler `/metrics`.
//!
//! Found through `KUBEVIRT_PEER`, else by running `../shared/kubevirt-peer/unpack.sh`; when
//! neither works the test says so loudly and skips, as [`super::apiserver::start`] does.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The node the peer's VMIs run on (its default `--node`).
pub const NODE: &str = "node01";

/// The peer program, or `None` after printing a loud SKIPPED line.
pub fn find(test_name: &str) -> anyhow::Result<Option<PathBuf>> {
    if let Some(path) = std::env::var_os("KUBEVIRT_PEER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.is_file(),
            "KUBEVIRT_PEER={} is not a file",
            path.display()
        );
        return Ok(Some(path));
    }
    let unpack = super::repo_path("../shared/kubevirt-peer/unpack.sh");
    if unpack.is_file() {
        let out = Command::new("bash")
            .arg(&unpack)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", unpack.display()))?;
        anyhow::ensure!(out.status.success(), "{} failed", unpack.display());
        let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
        anyhow::ensure!(path.is_file(), "{} printed no program", unpack.display());
        return Ok(Some(path));
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n=================================================================\n\
         SKIPPED: no KubeVirt peer (set KUBEVIRT_PEER or provide ../shared/kubevirt-peer)\n\
         SKIPPED test: {test_name}\n\
         ================================================================="
    );
    Ok(None)
}

/// The stats file the peer's launchers serve (a real guest's `GetDomainStats` payload).
pub fn stats_file() -> PathBuf {
    super::repo_path("../shared/kubevirt-peer/domainstats-ci-linux.json")
}

/// The VMI objects matching `serve` with the same `vmis` and `namespace`.
pub fn print_vmis(program: &Path, vmis: usize, namespace: &str) -> anyhow::Result<Vec<Value>> {
    let out = Command::new(program)
        .args(["--vmis", &vmis.to_string(), "--vmi-namespace", namespace])
        .args(["--output", "json", "print-vmis"])
        .stderr(Stdio::inherit())
        .output()
        .context("kv-domainstats print-vmis")?;
    anyhow::ensure!(out.status.success(), "print-vmis failed: {}", out.status);
    let list: Value = serde_json::from_slice(&out.stdout)?;
    let items = list["items"]
        .as_array()
        .context("print-vmis: no items")?
        .clone();
    anyhow::ensure!(
        items.len() == vmis,
        "print-vmis printed {} VMIs",
        items.len()
    );
    Ok(items)
}

/// A running `kv-domainstats serve`: K launchers under `workdir/pods` and KubeVirt's
/// virt-handler `/metrics` on `metrics_url`. Killed (and its workdir removed) on drop.
pub struct Serving {
    pub workdir: tempfile::TempDir,
    pub metrics_url: String,
    child: Child,
}

impl Serving {
    /// The kubelet-style pods directory holding the launchers' sockets.
    pub fn pods_dir(&self) -> PathBuf {
        self.workdir.path().join("pods")
    }

    /// KubeVirt's own virt-handler `/metrics` page.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = reqwest::get(&self.metrics_url).await?;
        anyhow::ensure!(
            response.status().is_success(),
            "KubeVirt's /metrics: {}",
            response.status()
        );
        Ok(response.text().await?)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn serve(program: &Path, vmis: usize, namespace: &str) -> anyhow::Result<Serving> {
    // Socket paths are <workdir>/pods/<36-char uid>/volumes/kubernetes.io~empty-dir/
    // sockets/launcher-sock and unix socket paths end at 107 bytes: /tmp/kvXXXX fits.
    let workdir = tempfile::Builder::new()
        .prefix("kv")
        .rand_bytes(4)
        .tempdir_in("/tmp")?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let log = workdir.path().join("peer.log");
    let log_file = std::fs::File::create(&log)?;
    let child = Command::new(program)
        .args(["--vmis", &vmis.to_string(), "--vmi-namespace", namespace])
        .arg("--stats-file")
        .arg(stats_file())
        .arg("--workdir")
        .arg(workdir.path())
        .args(["--listen", &listen, "serve"])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("starting kv-domainstats serve")?;
    let mut serving = Serving {
        workdir,
        metrics_url: format!("http://{listen}/metrics"),
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = serving.child.try_wait()? {
            bail!(
                "kv-domainstats exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if serving.metrics().await.is_ok() {
            return Ok(serving);
        }
        if Instant::now() > deadline {
            bail!(
                "kv-domainstats /metrics not up after 30s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
