//! virt-handler-metrics (`--source libvirt`) against Debian's prometheus-libvirt-exporter on
//! the same libvirtd, plus the libvirt bulk-stats call alone. Run by
//! `bench/handler-vs-exporter.sh`, which brings the peers and the domain counts in place;
//! by hand:
//!
//! ```text
//! cargo bench -p kubevirt-metrics-collectors --bench handler_vs_exporter -- \
//!     --uri test+unix:///default --handler-bin target/release/virt-handler-metrics
//! ```
//!
//! Measured, all in one run and one process:
//! - `bulk`: `virConnectGetAllDomainStats` with our groups and flags on a long-lived
//!   connection, records iterated and freed (the floor for any libvirt-based collector);
//! - `pass`: one whole collection of the libvirt source + KubeVirt families + text encoding,
//!   in process (what virt-handler-metrics does once per interval);
//! - `scrape`: HTTP GET /metrics as Prometheus sends it (its Accept header, gzip), median
//!   latency, CPU time of the serving process per scrape (and of libvirtd), RSS;
//! - optionally the handler's RSS during `--rss-scrapes` scrapes while it collects every
//!   100 ms, and the in-process RSS over `--rss-passes` passes (flat = no leak).
//!
//! Numbers are printed, never asserted: this is a benchmark, not a test.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::handler::StatsSource;
use kubevirt_metrics_collectors::handler::families;
use kubevirt_metrics_collectors::handler::libvirt::{
    LibvirtSource, STATS_FLAGS, STATS_GROUPS, ffi,
};
use support::*;

/// Pause between measured bulk calls and between measured passes. Real passes run once
/// per interval (seconds apart): the previous pass's records are long freed (on the reaper
/// thread) when the next starts, and caches are as cold for the bulk call as for a pass.
const PAUSE: Duration = Duration::from_millis(20);

struct Args {
    uri: String,
    label: String,
    handler_bin: Option<String>,
    exporter_bin: String,
    iterations: usize,
    scrapes: usize,
    rss_scrapes: usize,
    rss_passes: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        uri: "test+unix:///default".into(),
        label: String::new(),
        handler_bin: None,
        exporter_bin: "/usr/bin/prometheus-libvirt-exporter".into(),
        iterations: 30,
        scrapes: 30,
        rss_scrapes: 0,
        rss_passes: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--uri" => args.uri = value(),
            "--label" => args.label = value(),
            "--handler-bin" => args.handler_bin = Some(value()),
            "--exporter-bin" => args.exporter_bin = value(),
            "--iterations" => args.iterations = number(&value()),
            "--scrapes" => args.scrapes = number(&value()),
            "--rss-scrapes" => args.rss_scrapes = number(&value()),
            "--rss-passes" => args.rss_passes = number(&value()),
            "--bench" => {} // added by `cargo bench`
            other => fail(&format!("unknown flag {other}")),
        }
    }
    if args.label.is_empty() {
        args.label = args.uri.clone();
    }
    args
}

/// Series and families of a text page, without self-metrics, by stat group: what each side
/// exports, to compare like with like.
fn page_summary(page: &str) -> String {
    let mut families = std::collections::BTreeMap::<&str, usize>::new();
    for line in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        if name.starts_with("kubevirt_metrics_sidecar_")
            || name.starts_with("go_")
            || name.starts_with("process_")
            || name.starts_with("promhttp_")
        {
            continue;
        }
        *families.entry(name).or_default() += 1;
    }
    let series: usize = families.values().sum();
    let names: Vec<&str> = families.keys().copied().collect();
    format!(
        "{series} series in {} families: {}",
        names.len(),
        names.join(" ")
    )
}

fn memory(pid: u32) -> String {
    Memory::of(pid).to_string()
}

fn libvirtd_pid() -> Option<u32> {
    let out = Command::new("pidof")
        .args(["-s", "libvirtd"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

struct Bulk {
    /// The call, with every typed parameter iterated (ms, median).
    call_ms: f64,
    /// `virDomainStatsRecordListFree` of its records (ms, median).
    free_ms: f64,
    records: usize,
}

/// The bulk call alone, on one long-lived connection: `n` calls after 3 warm-ups.
fn bench_bulk(uri: &str, n: usize) -> Bulk {
    ffi::init();
    let conn = ffi::Conn::open_read_only(uri).unwrap_or_else(|e| fail(&format!("{uri}: {e}")));
    let mut calls = Vec::with_capacity(n);
    let mut frees = Vec::with_capacity(n);
    let mut records = 0;
    for i in 0..n + 3 {
        let start = Instant::now();
        let list = conn
            .all_domain_stats(STATS_GROUPS, STATS_FLAGS)
            .unwrap_or_else(|e| fail(&format!("bulk stats: {e}")));
        let mut params = 0usize;
        for record in list.iter() {
            record.for_each_param(|_, _| params += 1);
        }
        records = list.len();
        let called = start.elapsed();
        drop(list);
        if i >= 3 {
            calls.push(ms(called));
            frees.push(ms(start.elapsed() - called));
        }
        std::hint::black_box(params);
        // The same pause as between measured passes, so both run equally cold.
        std::thread::sleep(PAUSE);
    }
    Bulk {
        call_ms: median(&calls),
        free_ms: median(&frees),
        records,
    }
}

struct PassResult {
    median_ms: f64,
    /// The libvirt source alone (what `--source libvirt` adds on top of the bulk call).
    source_ms: f64,
    cpu_ms: f64,
    bytes: usize,
    vmis: usize,
}

/// One full pass in process: source + families + text encoding.
async fn bench_pass(source: &LibvirtSource, n: usize) -> PassResult {
    let mut times = Vec::with_capacity(n);
    let mut source_times = Vec::with_capacity(n);
    let mut bytes = 0;
    let mut vmis = 0;
    let mut cpu0 = self_cpu();
    for i in 0..n + 3 {
        if i == 3 {
            cpu0 = self_cpu();
        }
        let start = Instant::now();
        let report = source
            .collect(tokio::time::Instant::now() + Duration::from_secs(30))
            .await;
        let source_took = start.elapsed();
        let body = text::encode(&families::render(&report.vmis, &[]));
        let took = start.elapsed();
        if !report.problems.is_empty() {
            fail(&format!("collection problems: {:?}", report.problems));
        }
        if i >= 3 {
            times.push(ms(took));
            source_times.push(ms(source_took));
        }
        bytes = body.len();
        vmis = report.vmis.len();
        drop(report);
        tokio::time::sleep(PAUSE).await;
    }
    // All CPU of the measured passes, freeing their records included (sleeping costs none).
    let cpu = self_cpu() - cpu0;
    PassResult {
        median_ms: median(&times),
        source_ms: median(&source_times),
        cpu_ms: ms(cpu) / n as f64,
        bytes,
        vmis,
    }
}

struct ScrapeResult {
    median_ms: f64,
    cpu_ms: f64,
    libvirtd_cpu_ms: f64,
    memory: String,
    bytes: usize,
}

async fn bench_scrapes(client: &reqwest::Client, url: &str, pid: u32, n: usize) -> ScrapeResult {
    for _ in 0..3 {
        scrape_once(client, url).await;
    }
    let daemon = libvirtd_pid();
    let (cpu0, d0) = (proc_cpu(pid), daemon.map(proc_cpu));
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let start = Instant::now();
        bytes = scrape_once(client, url).await;
        times.push(ms(start.elapsed()));
    }
    let cpu = proc_cpu(pid) - cpu0;
    let daemon_cpu = match (daemon, d0) {
        (Some(p), Some(d0)) => proc_cpu(p).saturating_sub(d0),
        _ => Duration::ZERO,
    };
    ScrapeResult {
        median_ms: median(&times),
        cpu_ms: ms(cpu) / n as f64,
        libvirtd_cpu_ms: ms(daemon_cpu) / n as f64,
        memory: memory(pid),
        bytes,
    }
}

fn handler_args(uri: &str, port: u16, interval: &str) -> Vec<String> {
    [
        "--source",
        "libvirt",
        "--libvirt-uri",
        uri,
        "--node-name",
        "bench",
        "--mode",
        "full",
        "--interval",
        interval,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--listen".to_owned(), format!("127.0.0.1:{port}")])
    .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let client = prometheus_client();
    println!("== {} ({})", args.label, args.uri);

    let uri = args.uri.clone();
    let iterations = args.iterations;
    let bulk = tokio::task::spawn_blocking(move || bench_bulk(&uri, iterations))
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));
    // What any leak-free collector pays per pass at least: the call and freeing its records.
    let bulk_ms = bulk.call_ms + bulk.free_ms;
    let source = LibvirtSource::new(
        std::slice::from_ref(&args.uri),
        "bench",
        4,
        Duration::from_secs(30),
    );
    let pass = bench_pass(&source, args.iterations).await;
    println!(
        "bulk stats call alone      median {:8.3} ms   + free {:.3} ms = {bulk_ms:.3} ms   ({} records)",
        bulk.call_ms, bulk.free_ms, bulk.records
    );
    println!(
        "libvirt source alone       median {:8.3} ms   source/(call+free) = {:.2}   source/call = {:.2}   (records are freed on another thread)",
        pass.source_ms,
        pass.source_ms / bulk_ms,
        pass.source_ms / bulk.call_ms
    );
    println!(
        "pass: source+render+encode median {:8.3} ms   cpu {:7.3} ms/pass   {} VMIs, {} B text   pass/bulk = {:.2}",
        pass.median_ms,
        pass.cpu_ms,
        pass.vmis,
        pass.bytes,
        pass.median_ms / bulk_ms
    );

    // The exporter, scraped as Prometheus would.
    let port = free_port();
    let mut exporter = spawn(
        &args.exporter_bin,
        &[
            format!("--web.listen-address=127.0.0.1:{port}"),
            format!("--libvirt.uri={}", args.uri),
        ],
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_ready(&client, &url, &mut exporter).await;
    let ex = bench_scrapes(&client, &url, exporter.0.id(), args.scrapes).await;
    println!(
        "exporter page: {}",
        page_summary(&text_page(&client, &url).await)
    );
    drop(exporter);
    println!(
        "exporter scrape            median {:8.3} ms   cpu {:7.3} ms/scrape (+ libvirtd {:7.3})   {}   {} B",
        ex.median_ms, ex.cpu_ms, ex.libvirtd_cpu_ms, ex.memory, ex.bytes
    );

    let Some(handler_bin) = args.handler_bin.as_deref() else {
        println!("(no --handler-bin: handler scrape not measured)");
        return;
    };
    let port = free_port();
    let mut handler = spawn(handler_bin, &handler_args(&args.uri, port, "30s"));
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &format!("{base}/readyz"), &mut handler).await;
    let ours = bench_scrapes(
        &client,
        &format!("{base}/metrics"),
        handler.0.id(),
        args.scrapes,
    )
    .await;
    println!(
        "handler page: {}",
        page_summary(&text_page(&client, &format!("{base}/metrics")).await)
    );
    drop(handler);
    println!(
        "handler scrape (cached)    median {:8.3} ms   cpu {:7.3} ms/scrape (+ libvirtd {:7.3})   {}   {} B",
        ours.median_ms, ours.cpu_ms, ours.libvirtd_cpu_ms, ours.memory, ours.bytes
    );
    let ours_per_scrape_cpu = ours.cpu_ms + pass.cpu_ms;
    println!(
        "ratios: scrape latency exporter/handler = {:.1}x;  exporter scrape / our pass (fresh data) = {:.1}x;  \
         cpu exporter / (our pass + serve) = {:.1}x;  source / bulk call = {:.2};  pass / bulk call = {:.2}",
        ex.median_ms / ours.median_ms,
        ex.median_ms / pass.median_ms,
        ex.cpu_ms / ours_per_scrape_cpu,
        pass.source_ms / bulk_ms,
        pass.median_ms / bulk_ms
    );

    if args.rss_scrapes > 0 {
        let port = free_port();
        let mut handler = spawn(handler_bin, &handler_args(&args.uri, port, "100ms"));
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&client, &format!("{base}/readyz"), &mut handler).await;
        let pid = handler.0.id();
        let url = format!("{base}/metrics");
        let start = Instant::now();
        let mut marks = Vec::new();
        for i in 1..=args.rss_scrapes {
            scrape_once(&client, &url).await;
            // Paced so that many collections (every 100 ms) happen during the scrapes.
            tokio::time::sleep(Duration::from_millis(1)).await;
            if i == 100 || i == 1000 || i % 5000 == 0 || i == args.rss_scrapes {
                marks.push(format!("{i}: {}", memory(pid)));
            }
        }
        let took = start.elapsed();
        drop(handler);
        println!(
            "handler memory during {} scrapes ({:.1} s, collecting every 100 ms): {}",
            args.rss_scrapes,
            took.as_secs_f64(),
            marks.join(", ")
        );
    }

    if args.rss_passes > 0 {
        let me = std::process::id();
        let mut marks = Vec::new();
        for i in 1..=args.rss_passes {
            let report = source
                .collect(tokio::time::Instant::now() + Duration::from_secs(30))
                .await;
            std::hint::black_box(text::encode(&families::render(&report.vmis, &[])));
            if i == 100 || i == 1000 || i % 5000 == 0 || i == args.rss_passes {
                marks.push(format!("  {i:>6} passes: {}  {}", memory(me), Heap::now()));
            }
        }
        println!(
            "in-process memory over {} passes (heap in use growing = a leak; only the arenas' free memory growing = allocator fragmentation):\n{}",
            args.rss_passes,
            marks.join("\n")
        );
    }
}
