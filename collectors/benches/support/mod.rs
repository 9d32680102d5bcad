//! What the benchmarks share: statistics, CPU and memory of processes, child processes,
//! and scraping as Prometheus does. Numbers are printed, never asserted.

#![allow(dead_code)] // each bench uses its own part of this

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What Prometheus 2.42 sends as `Accept`.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

pub fn fail(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(2)
}

pub fn number(s: &str) -> usize {
    s.parse()
        .unwrap_or_else(|_| fail(&format!("not a number: {s}")))
}

/// The `q` quantile (0..=1) of `xs`, nearest rank.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank]
}

pub fn median(xs: &[f64]) -> f64 {
    quantile(xs, 0.5)
}

/// A median with its 95% bootstrap interval: how far the median of these samples could
/// be from the true one, so that a ratio near a target is read as met, missed or not yet
/// decided instead of by one number that moves ±0.05 between runs on a shared VM.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

impl Estimate {
    /// Percentile bootstrap, 2,000 resamples; a fixed seed, so that the same samples always
    /// print the same interval.
    pub fn of(xs: &[f64]) -> Self {
        const RESAMPLES: usize = 2_000;
        if xs.is_empty() {
            return Self::unknown();
        }
        let mut rng = fastrand::Rng::with_seed(0x6b76_6d73);
        let mut resample = vec![0.0; xs.len()];
        let mut medians = Vec::with_capacity(RESAMPLES);
        for _ in 0..RESAMPLES {
            for slot in &mut resample {
                *slot = xs[rng.usize(..xs.len())];
            }
            medians.push(median(&resample));
        }
        Self {
            median: median(xs),
            low: quantile(&medians, 0.025),
            high: quantile(&medians, 0.975),
        }
    }

    pub fn unknown() -> Self {
        Self {
            median: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
        }
    }

    /// Whether the whole interval is at or under `limit` (`met`), above it (`missed`), or
    /// holds it (`undecided`: more samples, or a quieter machine, would tell).
    pub fn against(&self, limit: f64) -> &'static str {
        if self.high <= limit {
            "met"
        } else if self.low > limit {
            "missed"
        } else {
            "undecided"
        }
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} [{:.2}, {:.2}]", self.median, self.low, self.high)
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time (user + system) of this whole process so far.
pub fn self_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: usage points to writable memory of the right type.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    // SAFETY: getrusage filled it (and it was zeroed anyway).
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU time of another process: the sum of its threads' run times from
/// `/proc/PID/task/*/schedstat` (nanoseconds; `/proc/PID/stat` only counts 10 ms ticks).
/// Threads that already exited are not counted: measure processes with long-lived threads.
pub fn proc_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// A process's memory from `/proc/PID/smaps_rollup`, KiB. RSS counts every mapped page of
/// the shared libraries; `anon` (`Anonymous`) is the heap, stacks and other private memory
/// the process made itself: what a leak grows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss: u64,
    pub pss: u64,
    pub anon: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Self {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Self {
            rss: field("Rss:"),
            pss: field("Pss:"),
            anon: field("Anonymous:"),
        }
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rss {} KiB (pss {}, anon {})",
            self.rss, self.pss, self.anon
        )
    }
}

/// glibc's heap of this process: bytes handed out and not freed (`uordblks` + `hblkhd`)
/// and bytes the allocator holds free (`fordblks`). In-use growing is a leak; free growing
/// with in-use flat is fragmentation or caches of the allocator.
#[derive(Debug, Clone, Copy, Default)]
pub struct Heap {
    pub in_use_kib: u64,
    pub free_kib: u64,
}

impl Heap {
    pub fn now() -> Self {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let info = unsafe { libc::mallinfo2() };
        Self {
            in_use_kib: ((info.uordblks + info.hblkhd) / 1024) as u64,
            free_kib: (info.fordblks / 1024) as u64,
        }
    }
}

impl std::fmt::Display for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "heap in use {} KiB, free in arenas {} KiB",
            self.in_use_kib, self.free_kib
        )
    }
}

/// Least squares `y = a + b·x`; returns (a, b, largest |residual| relative to y).
pub fn linear_fit(points: &[(f64, f64)]) -> (f64, f64, f64) {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(sxy, sxx), (x, y)| {
        (sxy + (x - mx) * (y - my), sxx + (x - mx) * (x - mx))
    });
    let b = if sxx == 0.0 { 0.0 } else { sxy / sxx };
    let a = my - b * mx;
    let worst = points
        .iter()
        .map(|(x, y)| ((a + b * x) - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max);
    (a, b, worst)
}

/// A child process killed and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(bin: &str, args: &[String]) -> Proc {
    spawn_logged(bin, args, None)
}

/// Starts `bin`; its stdout and stderr go to `log` (or nowhere).
pub fn spawn_logged(bin: &str, args: &[String], log: Option<&std::path::Path>) -> Proc {
    let (out, err) = match log {
        Some(path) => {
            let file = std::fs::File::create(path)
                .unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
            let copy = file
                .try_clone()
                .unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
            (Stdio::from(file), Stdio::from(copy))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("RUST_LOG", "warn")
        .spawn()
        .map(Proc)
        .unwrap_or_else(|e| fail(&format!("cannot start {bin}: {e}")))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&format!("no free port: {e}")))
}

/// A client that sends what Prometheus sends and does not decompress: a scrape's latency is
/// the server's answer on the wire, not our gunzip.
pub fn prometheus_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_gzip()
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()))
}

/// One scrape as Prometheus sends it (`Accept` OpenMetrics, `Accept-Encoding: gzip`);
/// returns the bytes received.
pub async fn scrape_once(client: &reqwest::Client, url: &str) -> usize {
    let resp = client
        .get(url)
        .header(reqwest::header::ACCEPT, PROMETHEUS_ACCEPT)
        .header(reqwest::header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap_or_else(|e| fail(&format!("GET {url}: {e}")));
    if !resp.status().is_success() {
        fail(&format!("GET {url}: {}", resp.status()));
    }
    resp.bytes()
        .await
        .unwrap_or_else(|e| fail(&format!("GET {url}: {e}")))
        .len()
}

/// The page in text 0.0.4, uncompressed (for reading self-metrics).
pub async fn text_page(client: &reqwest::Client, url: &str) -> String {
    let resp = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| fail(&format!("GET {url}: {e}")));
    resp.text()
        .await
        .unwrap_or_else(|e| fail(&format!("GET {url}: {e}")))
}

/// The sum of a family's samples in a text page (0 when absent).
pub fn sample_sum(page: &str, family: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn wait_ready(client: &reqwest::Client, url: &str, child: &mut Proc) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(status)) = child.0.try_wait() {
            fail(&format!("{url}: the process exited ({status})"));
        }
        if let Ok(resp) = client.get(url).send().await
            && resp.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fail(&format!("{url} not ready after 60 s"));
}
