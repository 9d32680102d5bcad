//! Helpers for the end-to-end tests: finding the real peers `scripts/real-peers.sh up`
//! started (libvirtd with the QEMU/TCG guest, the test driver, Prometheus, promtool),
//! asking libvirt with `virsh`, restarting or pausing libvirtd, running promtool, and
//! pointing Prometheus at a target for the length of a test.
//!
//! Everything is found through the state file `$KVMS_PEERS_DIR/state.env` (default
//! `/var/tmp/kvms-peers/state.env`). When it is missing, [`Peers::load`] panics with the
//! command that starts the peers: these tests are meant to run, not to skip.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/real-peers.sh` keeps its state unless `KVMS_PEERS_DIR` says otherwise.
pub const DEFAULT_PEERS_DIR: &str = "/var/tmp/kvms-peers";

/// The running peers, as the state file describes them.
#[derive(Debug, Clone)]
pub struct Peers {
    pub dir: PathBuf,
    /// `qemu:///system`, where the guest runs.
    pub qemu_uri: String,
    /// `test+unix:///default`, holding `test_domains` domains named `<prefix>NNNNN`.
    pub test_uri: String,
    pub test_domain_prefix: String,
    pub test_domains: usize,
    /// Whether the QEMU guest was started (`KVMS_GUEST=1`, the default).
    pub guest: bool,
    /// `default_testvm`: KubeVirt's `<namespace>_<name>` naming.
    pub guest_domain: String,
    pub guest_namespace: String,
    pub guest_name: String,
    /// The guest's NIC and disk aliases without KubeVirt's `ua-` prefix.
    pub guest_iface_alias: String,
    pub guest_disk_alias: String,
    pub libvirtd_pid_file: PathBuf,
    pub libvirtd_conf: PathBuf,
    pub prometheus_url: String,
    pub prometheus_targets_dir: PathBuf,
    pub promtool: PathBuf,
    pub libvirt_exporter: PathBuf,
}

impl Peers {
    /// Reads the state file; panics with instructions when the peers are not up.
    pub fn load() -> Peers {
        match Self::try_load() {
            Ok(peers) => peers,
            Err(why) => panic!(
                "the real peers are not up ({why}).\n\
                 Start them (as root, Debian bookworm) with:  scripts/real-peers.sh up\n\
                 (CI does this in scripts/test.sh; stop them with scripts/real-peers.sh down)"
            ),
        }
    }

    pub fn try_load() -> Result<Peers, String> {
        let dir = PathBuf::from(
            std::env::var("KVMS_PEERS_DIR").unwrap_or_else(|_| DEFAULT_PEERS_DIR.to_owned()),
        );
        let file = dir.join("state.env");
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect();
        let get = |key: &str| -> Result<String, String> {
            vars.get(key)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| format!("{} has no {key}", file.display()))
        };
        let peers = Peers {
            qemu_uri: get("QEMU_URI")?,
            test_uri: get("TEST_URI")?,
            test_domain_prefix: get("TEST_DOMAIN_PREFIX")?,
            test_domains: get("TEST_DOMAINS")?
                .parse()
                .map_err(|e| format!("TEST_DOMAINS: {e}"))?,
            guest: get("GUEST")? == "1",
            guest_domain: get("GUEST_DOMAIN")?,
            guest_namespace: get("GUEST_NAMESPACE")?,
            guest_name: get("GUEST_NAME")?,
            guest_iface_alias: get("GUEST_IFACE_ALIAS")?,
            guest_disk_alias: get("GUEST_DISK_ALIAS")?,
            libvirtd_pid_file: get("LIBVIRTD_PID_FILE")?.into(),
            libvirtd_conf: get("LIBVIRTD_CONF")?.into(),
            prometheus_url: get("PROMETHEUS_URL")?,
            prometheus_targets_dir: get("PROMETHEUS_TARGETS_DIR")?.into(),
            promtool: get("PROMTOOL")?.into(),
            libvirt_exporter: get("LIBVIRT_EXPORTER")?.into(),
            dir,
        };
        let out = Command::new("virsh")
            .args(["-c", &peers.qemu_uri, "version"])
            .output()
            .map_err(|e| format!("cannot run virsh: {e}"))?;
        if !out.status.success() {
            return Err(format!("libvirtd does not answer on {}", peers.qemu_uri));
        }
        Ok(peers)
    }

    /// The pid of libvirtd when `real-peers.sh` started it (only then may tests restart it).
    pub fn libvirtd_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&self.libvirtd_pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        process_alive(pid).then_some(pid)
    }

    /// Restarts the libvirtd that `real-peers.sh` started, the same way, and waits until it
    /// answers. Running guests survive; the test driver's shared state does not, so call
    /// [`Peers::restore`] afterwards.
    pub fn restart_libvirtd(&self) -> Result<(), String> {
        let pid = self
            .libvirtd_pid()
            .ok_or("libvirtd was not started by scripts/real-peers.sh")?;
        signal(pid, "TERM")?;
        if !wait_until(Duration::from_secs(30), || !process_alive(pid)) {
            return Err(format!("libvirtd {pid} did not exit"));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs/libvirtd.out"))
            .map_err(|e| e.to_string())?;
        let child = Command::new("setsid")
            .arg("/usr/sbin/libvirtd")
            .arg("-f")
            .arg(&self.libvirtd_conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start libvirtd: {e}"))?;
        std::fs::write(&self.libvirtd_pid_file, format!("{}\n", child.id()))
            .map_err(|e| e.to_string())?;
        // The child is a daemon for the rest of the run; `real-peers.sh down` stops it by pid.
        std::mem::forget(child);
        if wait_until(Duration::from_secs(60), || {
            virsh(&self.qemu_uri, &["version"]).is_ok()
        }) {
            Ok(())
        } else {
            Err("libvirtd did not come back".to_owned())
        }
    }

    /// Re-runs `scripts/real-peers.sh up` (idempotent, fast): brings back what a test
    /// disturbed, e.g. the test-driver domains after a libvirtd restart.
    pub fn restore(&self) -> Result<(), String> {
        let script = workspace_root().join("scripts/real-peers.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("up")
            .env("KVMS_PEERS_DIR", &self.dir)
            .env("KVMS_TEST_DOMAINS", self.test_domains.to_string())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} up failed:\n{}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `virsh domstats --raw` of one domain (all groups) as `field → value`.
    pub fn domstats(&self, uri: &str, domain: &str) -> Result<HashMap<String, String>, String> {
        let text = virsh(uri, &["domstats", "--raw", domain])?;
        Ok(text
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// Runs `promtool check metrics` on a text exposition.
    pub fn promtool_check_metrics(&self, exposition: &str) -> Result<PromtoolResult, String> {
        let mut child = Command::new(&self.promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.promtool.display()))?;
        child
            .stdin
            .take()
            .ok_or("no stdin")?
            .write_all(exposition.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        Ok(PromtoolResult {
            code: out.status.code().unwrap_or(-1),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }

    /// Makes Prometheus scrape `target` (`host:port`) until the returned guard is dropped.
    /// Series get `job="<job>"`; `https` scrapes without verifying the certificate.
    pub fn scrape_target(&self, job: &str, target: &str, https: bool) -> ScrapeTarget {
        let path = self.prometheus_targets_dir.join(format!("{job}.json"));
        let scheme = if https { "https" } else { "http" };
        let body = format!(
            r#"[{{"targets":["{target}"],"labels":{{"job":"{job}","__scheme__":"{scheme}"}}}}]"#
        );
        let tmp = path.with_extension("json.tmp");
        // Write then rename: Prometheus must never read a half-written file.
        if let Err(e) = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, &path)) {
            panic!("cannot write {}: {e}", path.display());
        }
        ScrapeTarget { path }
    }
}

/// What `promtool check metrics` said: exit 0 clean, 3 lint findings only, 1 parse error.
#[derive(Debug, Clone)]
pub struct PromtoolResult {
    pub code: i32,
    pub output: String,
}

impl PromtoolResult {
    /// The lint findings, one per line (`metric_name lint message`).
    pub fn findings(&self) -> Vec<&str> {
        self.output
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// Removes its file_sd file (and so the scrape target) when dropped.
#[must_use]
pub struct ScrapeTarget {
    path: PathBuf,
}

impl Drop for ScrapeTarget {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs `virsh -c uri args...`; stdout on success.
pub fn virsh(uri: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run virsh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "virsh -c {uri} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Sends a signal by name (`TERM`, `STOP`, `CONT`) with `kill`.
pub fn signal(pid: i32, name: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{name} {pid} failed"))
    }
}

pub fn process_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry: look at its state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Keeps a process stopped (SIGSTOP) until dropped (SIGCONT), so a failing test never
/// leaves libvirtd frozen.
pub struct Paused(i32);

impl Paused {
    pub fn new(pid: i32) -> Result<Paused, String> {
        signal(pid, "STOP")?;
        Ok(Paused(pid))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = signal(self.0, "CONT");
    }
}

/// Polls `ready` every 100 ms until it is true (returns true) or `limit` passed (false).
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The repository root (this crate lives in `<root>/e2e`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Parses a Prometheus text exposition into `(name{labels}, value)` pairs, keeping each
/// series line's metric-and-labels part verbatim (enough for assertions in tests).
pub fn parse_series(exposition: &str) -> Vec<(String, f64)> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_parsing() {
        let text = "# HELP a x\n# TYPE a gauge\na{b=\"c d\"} 1.5\nz 2\n";
        assert_eq!(
            parse_series(text),
            vec![("a{b=\"c d\"}".to_owned(), 1.5), ("z".to_owned(), 2.0)]
        );
    }

    #[test]
    fn promtool_findings_are_lines() {
        let r = PromtoolResult {
            code: 3,
            output: "x_count non-histogram and non-summary metrics should not have \"_count\" suffix\n\n".into(),
        };
        assert_eq!(r.findings().len(), 1);
    }
}
