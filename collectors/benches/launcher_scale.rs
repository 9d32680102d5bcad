//! The launcher source at scale, against KubeVirt v1.9.0's own virt-launcher command server
//! (`kv-domainstats serve` from `../shared/kubevirt-peer`: N launchers, one socket each,
//! serving the stats of a real QEMU guest scaled per VMI) and KubeVirt's own virt-handler
//! `/metrics` on the same launchers. Run by `bench/launcher-scale.sh`; by hand:
//!
//! ```text
//! cargo bench -p kubevirt-metrics-collectors --bench launcher_scale -- \
//!     --peer $KUBEVIRT_PEER --stats-file ../shared/kubevirt-peer/domainstats-ci-linux.json
//! ```
//!
//! Per N, all in one run, ours and the baseline alternating pass by pass so that both see
//! the same background load:
//! - `bare calls, kept`: the gRPC round trips alone on kept connections — per VMI
//!   `GetDomainStats`, `GetFilesystems` and `GetDomainDirtyRateStats` at once, 4 VMIs at a
//!   time (the collector's `--max-concurrency`): exactly the calls a steady-state pass makes;
//! - `our pass, kept`: one whole collection (the launcher source on its kept connections,
//!   KubeVirt's families, the text encoding), in process. Its ratio to the bare calls is
//!   printed whole (`ratio`), without the text encoding (`coll/b`: what a collection does;
//!   the sidecar encodes a page when the first scrape asks for it, in the format asked),
//!   and for the source alone (`src/b`);
//! - `bare calls, dialled` and `our first pass`: the same with a new connection per VMI
//!   (dial + `CmdInfo/Info` + the three calls), what a fresh sidecar does once and what
//!   virt-handler does on every scrape;
//! - KubeVirt's virt-handler `/metrics` scrape (it calls every launcher each time);
//! - the sidecar as its own process (this program re-run with `--sidecar`, VMIs from a file
//!   instead of the API watch): cached scrape latency as Prometheus asks (OpenMetrics, gzip),
//!   CPU per scrape, RSS/PSS/anonymous memory, and memory growth per VMI over the Ns;
//! - complement mode against KubeVirt's page: how often the sidecar read that page
//!   (`kubevirt_metrics_sidecar_component_scrapes_total`) over a run of 1 s passes;
//! - at the largest N (`--soak-collections`, `--soak-scrapes`): the sidecar's memory and
//!   glibc heap over that many collections and scrapes, both at once.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use kubevirt_metrics_collectors::core::format::negotiate::Format;
use kubevirt_metrics_collectors::core::format::text;
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_collectors::core::server::Published;
use kubevirt_metrics_collectors::handler::VmiCollector;
use kubevirt_metrics_collectors::handler::families;
use kubevirt_metrics_collectors::handler::launcher::payload;
use kubevirt_metrics_collectors::handler::launcher::proto::cmd_v1::{
    EmptyRequest, cmd_client::CmdClient,
};
use kubevirt_metrics_collectors::handler::launcher::proto::info::{
    CmdInfoRequest, cmd_info_client::CmdInfoClient,
};
use kubevirt_metrics_collectors::handler::launcher::{
    LauncherSettings, LauncherSource, RpcTimeouts, StaticVmis, socket,
};
use kubevirt_metrics_collectors::k8s::objects::VirtualMachineInstance;
use kubevirt_metrics_flags::{CommonArgs, LogFormat, Mode, defaults};
use support::*;

const NODE: &str = "node01";
/// virt-handler-metrics' default `--max-concurrency`.
const CONCURRENCY: usize = 4;
/// Between measured passes: real passes run seconds apart.
const PAUSE: Duration = Duration::from_millis(20);

struct Args {
    peer: String,
    stats_file: String,
    workdir: PathBuf,
    vmis: Vec<usize>,
    /// Back-to-back pairs (ours, bare calls) at least, per N...
    iterations: usize,
    /// ...and at least this long, so that small N, whose pairs are quick, get more of them.
    pair_seconds: f64,
    cold_iterations: usize,
    scrapes: usize,
    kubevirt_scrapes: usize,
    complement_seconds: u64,
    soak_collections: usize,
    soak_scrapes: usize,
    /// Measure only the kept-connection passes (ours against the bare calls).
    kept_only: bool,
    /// Profiling: after setup, run only this kind of pass (`ours`, `source`, `bare`, or
    /// `render`: the families and text page of one collected pass, again and again)
    /// `--iterations` times back to back, e.g. under `perf record`.
    only_loop: Option<String>,
    /// The runtime's workers, for the passes measured here and for the sidecar process
    /// (virt-handler-metrics' `--worker-threads`).
    worker_threads: u16,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Args {
    let mut args = Args {
        peer: std::env::var("KUBEVIRT_PEER").unwrap_or_default(),
        stats_file: "../shared/kubevirt-peer/domainstats-ci-linux.json".into(),
        workdir: "/tmp/kvb".into(),
        vmis: vec![10, 100, 400],
        iterations: 30,
        pair_seconds: 20.0,
        cold_iterations: 10,
        scrapes: 300,
        kubevirt_scrapes: 10,
        complement_seconds: 15,
        soak_collections: 0,
        soak_scrapes: 0,
        kept_only: false,
        only_loop: None,
        worker_threads: defaults::WORKER_THREADS,
    };
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--peer" => args.peer = value(),
            "--stats-file" => args.stats_file = value(),
            "--workdir" => args.workdir = value().into(),
            "--vmis" => args.vmis = value().split(',').map(number).collect(),
            "--iterations" => args.iterations = number(&value()),
            "--pair-seconds" => args.pair_seconds = number(&value()) as f64,
            "--cold-iterations" => args.cold_iterations = number(&value()),
            "--scrapes" => args.scrapes = number(&value()),
            "--kubevirt-scrapes" => args.kubevirt_scrapes = number(&value()),
            "--complement-seconds" => args.complement_seconds = number(&value()) as u64,
            "--soak-collections" => args.soak_collections = number(&value()),
            "--soak-scrapes" => args.soak_scrapes = number(&value()),
            "--kept-only" => args.kept_only = true,
            "--loop" => args.only_loop = Some(value()),
            "--worker-threads" => {
                args.worker_threads = u16::try_from(number(&value()))
                    .unwrap_or_else(|_| fail("--worker-threads: too many"))
                    .max(1)
            }
            "--bench" => {} // added by `cargo bench`
            other => fail(&format!("unknown flag {other}")),
        }
    }
    if args.peer.is_empty() {
        fail("no KubeVirt peer: --peer or KUBEVIRT_PEER");
    }
    // Unix socket paths end at 107 bytes; the pod part is 103 characters long.
    if args.workdir.as_os_str().len() > 12 {
        fail("--workdir must be short (at most 12 characters): launcher socket paths are limited");
    }
    args
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("--sidecar") {
        argv.next();
        return sidecar::main(argv.collect());
    }
    let args = parse_args(argv);
    // With a subscriber, as in the sidecar: without one, every span of h2, hyper and tonic
    // (a few per call) would be handed to the `log` crate, a cost the sidecar does not pay,
    // in our passes and in the bare calls alike. (The level does not matter: those spans
    // are below any default.)
    kubevirt_metrics_flags::telemetry::init(LogFormat::Text, "warn");
    // Measured on a worker thread of the runtime the sidecar runs on, as its collection loop
    // runs (a spawned task): from the thread that blocks on the runtime, every task a pass
    // spawns would go through the runtime's shared queue and wake a worker.
    runtime::tokio_runtime(args.worker_threads)
        .unwrap_or_else(|e| fail(&e.to_string()))
        .block_on(async {
            if let Err(err) = tokio::spawn(bench(args)).await {
                fail(&format!("benchmark task: {err}"));
            }
        });
}

async fn bench(args: Args) {
    println!(
        "== runtime: {} worker thread(s), for the passes measured here and in the sidecar (--worker-threads)",
        args.worker_threads
    );
    let largest = args.vmis.iter().copied().max().unwrap_or(0);
    let mut growth = Vec::new();
    let mut rows = Vec::new();
    for &n in &args.vmis {
        let soak = n == largest && (args.soak_collections > 0 || args.soak_scrapes > 0);
        let row = bench_n(&args, n, soak).await;
        if !args.kept_only {
            growth.push((n as f64, row.sidecar_memory));
        }
        rows.push(row);
    }
    print_summary(&rows, &growth);
}

/// One row of the summary table.
struct Row {
    n: usize,
    bare_kept_ms: f64,
    pass_kept_ms: f64,
    bare_cpu_ms: f64,
    pass_cpu_ms: f64,
    ratios: Ratios,
    bare_dialled_ms: f64,
    first_pass_ms: f64,
    kubevirt_scrape_ms: f64,
    cached_scrape_ms: f64,
    cached_scrape_p99_ms: f64,
    sidecar_memory: Memory,
    component_scrapes: f64,
    complement_collections: f64,
}

/// The 1.2x the issue sets for a collection against its bare calls.
const TARGET: f64 = 1.2;

/// Our pass against the bare calls, one value per back-to-back pair: the pairs share their
/// moment's load, so their ratios vary less than the two sides' own times.
#[derive(Default)]
struct PairRatios {
    whole: Vec<f64>,
    /// Source and render: the collection, without encoding a page.
    collection: Vec<f64>,
    source: Vec<f64>,
    cpu: Vec<f64>,
    collection_cpu: Vec<f64>,
    source_cpu: Vec<f64>,
}

impl PairRatios {
    /// One pair: `bare` the bare calls, `ours` our pass, `parts` its split (last entry).
    fn push(&mut self, bare: &Sample, ours: &Sample, parts: &Parts) {
        let (bare_ms, source_ms, render_ms) =
            (bare.wall[0], last(&parts.source), last(&parts.render));
        self.whole.push(ours.wall[0] / bare_ms);
        self.collection.push((source_ms + render_ms) / bare_ms);
        self.source.push(source_ms / bare_ms);
        self.cpu.push(ours.cpu[0] / bare.cpu[0]);
        self.collection_cpu
            .push((ours.cpu[0] - last(&parts.encode_cpu)) / bare.cpu[0]);
        self.source_cpu.push(last(&parts.source_cpu) / bare.cpu[0]);
    }

    fn estimate(&self) -> Ratios {
        Ratios {
            whole: Estimate::of(&self.whole),
            collection: Estimate::of(&self.collection),
            source: Estimate::of(&self.source),
            cpu: Estimate::of(&self.cpu),
            collection_cpu: Estimate::of(&self.collection_cpu),
            source_cpu: Estimate::of(&self.source_cpu),
        }
    }
}

fn last(xs: &[f64]) -> f64 {
    xs.last().copied().unwrap_or(f64::NAN)
}

#[derive(Clone, Copy)]
struct Ratios {
    whole: Estimate,
    collection: Estimate,
    source: Estimate,
    cpu: Estimate,
    collection_cpu: Estimate,
    /// The source's share: the calls and the decoding, without KubeVirt's families.
    source_cpu: Estimate,
}

/// A running `kv-domainstats serve` with N launchers and KubeVirt's handler `/metrics`.
struct Peer {
    proc: Proc,
    metrics_url: String,
    workdir: PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

async fn start_peer(args: &Args, n: usize) -> Peer {
    let workdir = args.workdir.clone();
    let _ = std::fs::remove_dir_all(&workdir);
    std::fs::create_dir_all(&workdir).unwrap_or_else(|e| fail(&e.to_string()));
    let listen = format!("127.0.0.1:{}", free_port());
    let peer_args: Vec<String> = [
        "--vmis",
        &n.to_string(),
        "--stats-file",
        &args.stats_file,
        "--workdir",
        &workdir.display().to_string(),
        "--listen",
        &listen,
        "serve",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Outside the workdir: its log is kept for a look when something fails.
    let log = PathBuf::from(format!("{}-peer.log", workdir.display()));
    let mut proc = spawn_logged(&args.peer, &peer_args, Some(&log));
    let metrics_url = format!("http://{listen}/metrics");
    wait_ready(&reqwest::Client::new(), &metrics_url, &mut proc).await;
    Peer {
        proc,
        metrics_url,
        workdir,
    }
}

/// The VMI objects of the peer's launchers (`kv-domainstats print-vmis`), as JSON.
fn peer_vmis(args: &Args, n: usize) -> serde_json::Value {
    let out = std::process::Command::new(&args.peer)
        .args(["--vmis", &n.to_string(), "--output", "json", "print-vmis"])
        .output()
        .unwrap_or_else(|e| fail(&format!("print-vmis: {e}")));
    if !out.status.success() {
        fail(&format!("print-vmis: {}", out.status));
    }
    let list: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| fail(&format!("print-vmis: {e}")));
    list["items"].clone()
}

fn parse_vmis(items: &serde_json::Value) -> Vec<VirtualMachineInstance> {
    serde_json::from_value(items.clone()).unwrap_or_else(|e| fail(&format!("VMIs: {e}")))
}

fn settings(pods_dir: &Path) -> LauncherSettings {
    LauncherSettings {
        node_name: NODE.to_owned(),
        pods_dir: pods_dir.to_path_buf(),
        max_concurrency: CONCURRENCY,
        vmi_timeout: Duration::from_secs(5),
        rpc: RpcTimeouts::default(),
    }
}

fn source(vmis: &[VirtualMachineInstance], pods_dir: &Path) -> LauncherSource {
    LauncherSource::with_lister(Arc::new(StaticVmis::new(vmis.to_vec())), settings(pods_dir))
}

/// Wall time and CPU (of this process and of the peer) of one measured run.
#[derive(Default)]
struct Sample {
    wall: Vec<f64>,
    cpu: Vec<f64>,
    peer_cpu: Vec<f64>,
}

impl Sample {
    /// Reading the peer's CPU walks its threads' files under `/proc`, about 0.2 ms of this
    /// process's CPU: it stays outside this process's window, or it would add the same
    /// constant to both sides of every ratio and pull them towards 1 (by up to 0.1 at N = 10).
    async fn measure<T, F: std::future::Future<Output = T>>(&mut self, peer: u32, run: F) -> T {
        let p0 = proc_cpu(peer);
        let (c0, t0) = (self_cpu(), Instant::now());
        let out = run.await;
        let (wall, cpu) = (t0.elapsed(), self_cpu() - c0);
        self.wall.push(ms(wall));
        self.cpu.push(ms(cpu));
        self.peer_cpu.push(ms(proc_cpu(peer).saturating_sub(p0)));
        out
    }

    fn extend(&mut self, other: Sample) {
        self.wall.extend(other.wall);
        self.cpu.extend(other.cpu);
        self.peer_cpu.extend(other.peer_cpu);
    }
}

/// Where one pass's time went (ms).
#[derive(Default)]
struct Parts {
    source: Vec<f64>,
    render: Vec<f64>,
    encode: Vec<f64>,
    /// CPU of the encoding (the process', as [`Sample`]'s), to tell the collection's apart.
    encode_cpu: Vec<f64>,
    /// CPU of the source, measured the same way.
    source_cpu: Vec<f64>,
    bytes: usize,
    /// Where the passes publish their families, as the sidecar does.
    published: Published,
}

/// One whole collection in process: the launcher source, KubeVirt's families, the text
/// encoding as the sidecar's first scrape of a pass does it (the families published, the
/// page encoded on the blocking pool into the replaced page's buffer). Fails on problems:
/// a benchmark of a collection that failed measures nothing.
async fn our_pass(source: &LauncherSource, n: usize, parts: &mut Parts) {
    let (t0, cpu0) = (Instant::now(), self_cpu());
    let report = source
        .collect_pass(tokio::time::Instant::now() + Duration::from_secs(60))
        .await;
    let (t1, cpu1) = (Instant::now(), self_cpu());
    if !report.problems.is_empty() || report.vmis.len() != n {
        fail(&format!(
            "collection: {} VMIs, problems {:?}",
            report.vmis.len(),
            &report.problems[..report.problems.len().min(3)]
        ));
    }
    let families = families::render(&report.vmis, &[]);
    let (t2, cpu2) = (Instant::now(), self_cpu());
    parts.published.publish(families);
    let page = parts.published.snapshot().body(Format::Text, false).await;
    parts.bytes = page.unwrap_or_else(|e| fail(&e.to_string())).len();
    parts.source.push(ms(t1 - t0));
    parts.source_cpu.push(ms(cpu1 - cpu0));
    parts.render.push(ms(t2 - t1));
    parts.encode.push(ms(t2.elapsed()));
    parts.encode_cpu.push(ms(self_cpu() - cpu2));
}

async fn bench_n(args: &Args, n: usize, soak: bool) -> Row {
    println!("\n== N = {n} VMIs (KubeVirt v1.9.0 launcher command servers, one socket each)");
    let peer = start_peer(args, n).await;
    let peer_pid = peer.proc.pid();
    let pods_dir = peer.workdir.join("pods");
    let items = peer_vmis(args, n);
    let vmis = parse_vmis(&items);
    let sockets: Vec<PathBuf> = (1..=n)
        .map(|i| socket::socket_path(&pods_dir, &format!("00000000-0000-0000-0000-{i:012}")))
        .collect();

    if let Some(kind) = &args.only_loop {
        loop_only(kind, args.iterations, &vmis, &pods_dir, &sockets, n).await;
        // `exit` skips destructors: stop the launchers first.
        drop(peer);
        std::process::exit(0);
    }

    // Dialled: a new connection per VMI (dial, Info, the three calls) against our first pass.
    let (mut bare_dialled, mut first_pass) = (Sample::default(), Sample::default());
    let mut first_parts = Parts::default();
    let cold_iterations = if args.kept_only {
        0
    } else {
        args.cold_iterations + 1
    };
    for i in 0..cold_iterations {
        let fresh = source(&vmis, &pods_dir);
        let (mut a, mut b) = (Sample::default(), Sample::default());
        if i % 2 == 0 {
            a.measure(peer_pid, bare_calls_dialled(&sockets)).await;
            tokio::time::sleep(PAUSE).await;
            b.measure(peer_pid, our_pass(&fresh, n, &mut first_parts))
                .await;
        } else {
            b.measure(peer_pid, our_pass(&fresh, n, &mut first_parts))
                .await;
            tokio::time::sleep(PAUSE).await;
            a.measure(peer_pid, bare_calls_dialled(&sockets)).await;
        }
        tokio::time::sleep(PAUSE).await;
        if i > 0 {
            bare_dialled.extend(a);
            first_pass.extend(b);
        }
    }

    // Kept connections: the steady state. What the kept connections cost in memory is
    // read from this process's heap around dialling them.
    let ours = source(&vmis, &pods_dir);
    let mut parts = Parts::default();
    let clients = dial_all(&sockets).await;
    let decode_ms = decode_only(&clients).await;
    let (families_kib, text_kib) = published_size(&ours, n).await;
    for _ in 0..3 {
        our_pass(&ours, n, &mut parts).await;
        bare_calls_kept(&clients).await;
    }
    parts = Parts {
        published: parts.published,
        ..Parts::default()
    };
    let (mut bare_kept, mut pass_kept) = (Sample::default(), Sample::default());
    let mut pairs = PairRatios::default();
    let started = Instant::now();
    let mut i = 0;
    while i < args.iterations
        || (started.elapsed().as_secs_f64() < args.pair_seconds && i < 50 * args.iterations)
    {
        let (mut a, mut b) = (Sample::default(), Sample::default());
        if i % 2 == 0 {
            a.measure(peer_pid, bare_calls_kept(&clients)).await;
            tokio::time::sleep(PAUSE).await;
            b.measure(peer_pid, our_pass(&ours, n, &mut parts)).await;
        } else {
            b.measure(peer_pid, our_pass(&ours, n, &mut parts)).await;
            tokio::time::sleep(PAUSE).await;
            a.measure(peer_pid, bare_calls_kept(&clients)).await;
        }
        tokio::time::sleep(PAUSE).await;
        pairs.push(&a, &b, &parts);
        bare_kept.extend(a);
        pass_kept.extend(b);
        i += 1;
    }
    drop(clients);
    drop(ours);
    let bytes = parts.bytes;
    let ratios = pairs.estimate();
    println!(
        "bare calls, kept conns     median {:8.2} ms  p90 {:8.2}  cpu {:7.2} ms/pass  (launchers' cpu {:7.2})",
        median(&bare_kept.wall),
        quantile(&bare_kept.wall, 0.9),
        median(&bare_kept.cpu),
        median(&bare_kept.peer_cpu)
    );
    println!(
        "our pass, kept conns       median {:8.2} ms  p90 {:8.2}  cpu {:7.2} ms/pass  (launchers' cpu {:7.2})  {bytes} B text",
        median(&pass_kept.wall),
        quantile(&pass_kept.wall, 0.9),
        median(&pass_kept.cpu),
        median(&pass_kept.peer_cpu)
    );
    println!(
        "  of it: source {:.2} ms (decoded VMI stats), render {:.2} ms (KubeVirt's families), text encoding {:.2} ms",
        median(&parts.source),
        median(&parts.render),
        median(&parts.encode)
    );
    println!(
        "  ratios to the bare calls, median of {} back-to-back pairs [95% bootstrap interval]: our pass {};  \
         collection (source + render, no encoding) {};  source alone {};  cpu {}, of the collection {}, of the source alone {}  (ratio of the medians: our pass {:.2}, cpu {:.2})",
        pairs.whole.len(),
        ratios.whole,
        ratios.collection,
        ratios.source,
        ratios.cpu,
        ratios.collection_cpu,
        ratios.source_cpu,
        median(&pass_kept.wall) / median(&bare_kept.wall),
        median(&pass_kept.cpu) / median(&bare_kept.cpu)
    );
    println!("  decoding the {n} GetDomainStats JSON payloads alone (no I/O): {decode_ms:.2} ms");
    println!(
        "  what a sidecar keeps between passes: the rendered families {families_kib} KiB of heap ({:.1} KiB per VMI) + the encoded page {text_kib} KiB",
        families_kib as f64 / n as f64
    );
    if args.kept_only {
        drop(peer);
        return Row {
            n,
            bare_kept_ms: median(&bare_kept.wall),
            pass_kept_ms: median(&pass_kept.wall),
            bare_cpu_ms: median(&bare_kept.cpu),
            pass_cpu_ms: median(&pass_kept.cpu),
            ratios,
            bare_dialled_ms: f64::NAN,
            first_pass_ms: f64::NAN,
            kubevirt_scrape_ms: f64::NAN,
            cached_scrape_ms: f64::NAN,
            cached_scrape_p99_ms: f64::NAN,
            sidecar_memory: Memory::default(),
            component_scrapes: f64::NAN,
            complement_collections: f64::NAN,
        };
    }
    println!(
        "bare calls, dialled        median {:8.2} ms  cpu {:7.2} ms/pass   (dial + Info + 3 calls per VMI)",
        median(&bare_dialled.wall),
        median(&bare_dialled.cpu)
    );
    println!(
        "our first pass, dialled    median {:8.2} ms  cpu {:7.2} ms/pass   ratio {:.2}",
        median(&first_pass.wall),
        median(&first_pass.cpu),
        median(&first_pass.wall) / median(&bare_dialled.wall)
    );

    // KubeVirt's own virt-handler /metrics: every scrape calls every launcher.
    let client = prometheus_client();
    scrape_once(&client, &peer.metrics_url).await;
    let mut kubevirt = Sample::default();
    let mut kubevirt_bytes = 0;
    for _ in 0..args.kubevirt_scrapes {
        kubevirt
            .measure(peer_pid, async {
                kubevirt_bytes = scrape_once(&client, &peer.metrics_url).await;
            })
            .await;
        tokio::time::sleep(PAUSE).await;
    }
    println!(
        "KubeVirt virt-handler /metrics scrape  median {:8.2} ms  (its process' cpu {:7.2} ms/scrape)  {kubevirt_bytes} B gzip",
        median(&kubevirt.wall),
        median(&kubevirt.peer_cpu)
    );

    // The sidecar as a process of its own, full mode, one collection, then cached scrapes.
    let vmis_file = PathBuf::from(format!("{}-vmis.json", args.workdir.display()));
    std::fs::write(&vmis_file, items.to_string()).unwrap_or_else(|e| fail(&e.to_string()));
    let mut full = Sidecar::start(args, &vmis_file, &pods_dir, "full", "1h", None).await;
    full.wait_collections(1.0, n).await;
    let settled = Memory::of(full.proc.pid());
    let url = full.metrics_url();
    for _ in 0..10 {
        scrape_once(&client, &url).await;
    }
    let mut latencies = Vec::with_capacity(args.scrapes);
    let mut page_bytes = 0;
    let cpu0 = proc_cpu(full.proc.pid());
    for _ in 0..args.scrapes {
        let t0 = Instant::now();
        page_bytes = scrape_once(&client, &url).await;
        latencies.push(ms(t0.elapsed()));
    }
    let scrape_cpu = ms(proc_cpu(full.proc.pid()) - cpu0) / args.scrapes as f64;
    let memory = Memory::of(full.proc.pid());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heap = full.heap();
    drop(full);
    println!(
        "our cached scrape          median {:8.3} ms  p99 {:8.3}  cpu {:6.3} ms/scrape  {page_bytes} B gzip OpenMetrics",
        median(&latencies),
        quantile(&latencies, 0.99),
        scrape_cpu
    );
    println!(
        "  KubeVirt scrape / our cached scrape = {:.0}x;  KubeVirt scrape / our fresh pass = {:.1}x",
        median(&kubevirt.wall) / median(&latencies),
        median(&kubevirt.wall) / median(&pass_kept.wall)
    );
    println!(
        "sidecar memory after its collection: {settled};  after {} scrapes: {memory}; {}",
        args.scrapes, heap
    );

    // Complement mode against KubeVirt's page, 1 s passes.
    let complement = Sidecar::start(
        args,
        &vmis_file,
        &pods_dir,
        "complement",
        "1s",
        Some(&peer.metrics_url),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(args.complement_seconds)).await;
    let page = complement.page().await;
    let collections = sample_sum(&page, "kubevirt_metrics_sidecar_collections_total");
    let component_scrapes = sample_sum(&page, "kubevirt_metrics_sidecar_component_scrapes_total");
    let probes = sample_sum(&page, "kubevirt_metrics_sidecar_component_probes_total");
    let withheld = sample_sum(&page, "kubevirt_metrics_sidecar_withheld_families");
    drop(complement);
    println!(
        "complement mode, {} s of 1 s passes: {collections} collections, KubeVirt's /metrics read {component_scrapes} time(s) \
         (kubevirt_metrics_sidecar_component_scrapes_total), /healthz probed {probes} times, {withheld} families withheld",
        args.complement_seconds
    );

    if soak {
        soak_run(args, &vmis_file, &pods_dir, n).await;
    }
    let _ = std::fs::remove_file(&vmis_file);
    drop(peer);

    Row {
        n,
        bare_kept_ms: median(&bare_kept.wall),
        pass_kept_ms: median(&pass_kept.wall),
        bare_cpu_ms: median(&bare_kept.cpu),
        pass_cpu_ms: median(&pass_kept.cpu),
        ratios,
        bare_dialled_ms: median(&bare_dialled.wall),
        first_pass_ms: median(&first_pass.wall),
        kubevirt_scrape_ms: median(&kubevirt.wall),
        cached_scrape_ms: median(&latencies),
        cached_scrape_p99_ms: quantile(&latencies, 0.99),
        sidecar_memory: settled,
        component_scrapes,
        complement_collections: collections,
    }
}

/// Memory while the sidecar collects back to back and is scraped as fast as it answers.
async fn soak_run(args: &Args, vmis_file: &Path, pods_dir: &Path, n: usize) {
    let mut sidecar = Sidecar::start(args, vmis_file, pods_dir, "full", "1ms", None).await;
    sidecar.wait_collections(1.0, n).await;
    let pid = sidecar.proc.pid();
    let url = sidecar.metrics_url();
    let client = prometheus_client();
    let started = Instant::now();
    let marks = [
        100.0, 1000.0, 2500.0, 5000.0, 7500.0, 10000.0, 15000.0, 20000.0,
    ];
    let mut next_mark = 0;
    let mut scrapes = 0usize;
    let mut lines = Vec::new();
    let target_collections = args.soak_collections as f64;
    loop {
        for _ in 0..20 {
            if scrapes < args.soak_scrapes {
                scrape_once(&client, &url).await;
                scrapes += 1;
            }
        }
        if scrapes >= args.soak_scrapes {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let collections = sidecar.collections().await;
        while next_mark < marks.len()
            && marks[next_mark] <= target_collections
            && collections >= marks[next_mark]
        {
            lines.push(format!(
                "  {:>6} collections, {scrapes:>6} scrapes, {:6.0} s: {}  {}",
                collections,
                started.elapsed().as_secs_f64(),
                Memory::of(pid),
                sidecar.heap()
            ));
            println!("{}", lines.last().map(String::as_str).unwrap_or_default());
            next_mark += 1;
        }
        if collections >= target_collections && scrapes >= args.soak_scrapes {
            break;
        }
    }
    println!(
        "soak at N = {n}: {} collections back to back and {} scrapes at once took {:.0} s (memory lines above)",
        args.soak_collections,
        args.soak_scrapes,
        started.elapsed().as_secs_f64()
    );
}

fn print_summary(rows: &[Row], growth: &[(f64, Memory)]) {
    println!("\n== summary (ms; ratios measured in the same run)");
    println!(
        "{:>5} | {:>9} {:>9} {:>6} {:>6} {:>6} | {:>8} {:>8} | {:>9} {:>9} {:>6} | {:>10} | {:>8} {:>8} | {:>9} {:>9} {:>9} | {:>12}",
        "N",
        "bare",
        "our pass",
        "ratio",
        "coll/b",
        "src/b",
        "cpu bare",
        "cpu pass",
        "bare dial",
        "1st pass",
        "ratio",
        "KubeVirt",
        "cached",
        "p99",
        "rss KiB",
        "pss KiB",
        "anon KiB",
        "comp. reads"
    );
    for r in rows {
        println!(
            "{:>5} | {:>9.2} {:>9.2} {:>6.2} {:>6.2} {:>6.2} | {:>8.2} {:>8.2} | {:>9.2} {:>9.2} {:>6.2} | {:>10.1} | {:>8.3} {:>8.3} | {:>9} {:>9} {:>9} | {:>4} in {:>3}",
            r.n,
            r.bare_kept_ms,
            r.pass_kept_ms,
            r.ratios.whole.median,
            r.ratios.collection.median,
            r.ratios.source.median,
            r.bare_cpu_ms,
            r.pass_cpu_ms,
            r.bare_dialled_ms,
            r.first_pass_ms,
            r.first_pass_ms / r.bare_dialled_ms,
            r.kubevirt_scrape_ms,
            r.cached_scrape_ms,
            r.cached_scrape_p99_ms,
            r.sidecar_memory.rss,
            r.sidecar_memory.pss,
            r.sidecar_memory.anon,
            r.component_scrapes,
            r.complement_collections,
        );
    }
    println!(
        "\nratios to the bare calls at each N, median of back-to-back pairs [95% bootstrap interval], against the 1.2x target"
    );
    for r in rows {
        let Ratios {
            whole,
            collection,
            source,
            cpu,
            collection_cpu,
            source_cpu,
        } = r.ratios;
        println!(
            "{:>5} | time: our pass {whole} {:<9} collection {collection} {:<9} source {source} {:<9} | cpu: our pass {cpu} {:<9} collection {collection_cpu} {:<9} source {source_cpu} {}",
            r.n,
            whole.against(TARGET),
            collection.against(TARGET),
            source.against(TARGET),
            cpu.against(TARGET),
            collection_cpu.against(TARGET),
            source_cpu.against(TARGET),
        );
    }
    if growth.len() >= 2 {
        let fit = |pick: fn(&Memory) -> u64| {
            let points: Vec<(f64, f64)> =
                growth.iter().map(|(n, m)| (*n, pick(m) as f64)).collect();
            linear_fit(&points)
        };
        for (name, pick) in [
            ("rss", (|m: &Memory| m.rss) as fn(&Memory) -> u64),
            ("pss", |m: &Memory| m.pss),
            ("anon", |m: &Memory| m.anon),
        ] {
            let (a, b, worst) = fit(pick);
            println!(
                "memory growth ({name}): {b:.1} KiB per VMI over {a:.0} KiB; largest deviation from the line {:.1}%",
                worst * 100.0
            );
        }
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let scale = last.n as f64 / first.n as f64;
        println!(
            "growth N {} -> {} ({scale:.0}x VMIs): our pass {:.1}x, bare calls {:.1}x, cpu/pass {:.1}x, cached scrape {:.1}x, KubeVirt scrape {:.1}x",
            first.n,
            last.n,
            last.pass_kept_ms / first.pass_kept_ms,
            last.bare_kept_ms / first.bare_kept_ms,
            last.pass_cpu_ms / first.pass_cpu_ms,
            last.cached_scrape_ms / first.cached_scrape_ms,
            last.kubevirt_scrape_ms / first.kubevirt_scrape_ms
        );
    }
}

/// `--loop KIND`: one kind of pass only, back to back, for a profiler; prints its medians.
async fn loop_only(
    kind: &str,
    passes: usize,
    vmis: &[VirtualMachineInstance],
    pods_dir: &Path,
    sockets: &[PathBuf],
    n: usize,
) {
    let ours = source(vmis, pods_dir);
    let clients = dial_all(sockets).await;
    let mut parts = Parts::default();
    let mut sample = Sample::default();
    let mut rendered = Vec::new();
    for _ in 0..passes {
        match kind {
            "ours" => sample.measure(0, our_pass(&ours, n, &mut parts)).await,
            "source" => {
                sample
                    .measure(0, async {
                        let report = ours
                            .collect_pass(tokio::time::Instant::now() + Duration::from_secs(60))
                            .await;
                        std::hint::black_box(report);
                    })
                    .await
            }
            "bare" => sample.measure(0, bare_calls_kept(&clients)).await,
            "render" => {
                if rendered.is_empty() {
                    rendered = ours
                        .collect_pass(tokio::time::Instant::now() + Duration::from_secs(60))
                        .await
                        .vmis;
                }
                sample
                    .measure(0, async {
                        parts.published.publish(families::render(&rendered, &[]));
                        let page = parts.published.snapshot().body(Format::Text, false).await;
                        std::hint::black_box(page.map(|page| page.len()).ok());
                    })
                    .await
            }
            other => fail(&format!("--loop {other}: ours, source, bare or render")),
        }
    }
    println!(
        "--loop {kind}: {passes} passes, median {:.2} ms, cpu {:.2} ms/pass",
        median(&sample.wall),
        median(&sample.cpu)
    );
}

// ------------------------------------------------------------------ the bare round trips

async fn dial(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    });
    Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .unwrap_or_else(|e| fail(&format!("dial {}: {e}", socket.display())))
}

/// Dial and `CmdInfo/Info`, as every new connection does.
async fn dial_and_negotiate(socket: &Path) -> CmdClient<Channel> {
    let channel = dial(socket).await;
    let info = CmdInfoClient::new(channel.clone())
        .info(CmdInfoRequest {})
        .await
        .unwrap_or_else(|e| fail(&format!("Info: {e}")));
    std::hint::black_box(info);
    CmdClient::new(channel)
}

async fn dial_all(sockets: &[PathBuf]) -> Vec<CmdClient<Channel>> {
    let mut clients = Vec::with_capacity(sockets.len());
    for chunk in sockets.chunks(CONCURRENCY) {
        clients.extend(
            futures::future::join_all(chunk.iter().map(PathBuf::as_path).map(dial_and_negotiate))
                .await,
        );
    }
    clients
}

/// The three calls of one VMI at once, replies decoded by tonic and dropped.
async fn three_calls(client: &CmdClient<Channel>) {
    let (mut a, mut b, mut c) = (client.clone(), client.clone(), client.clone());
    let (stats, filesystems, dirty) = tokio::join!(
        a.get_domain_stats(EmptyRequest {}),
        b.get_filesystems(EmptyRequest {}),
        c.get_domain_dirty_rate_stats(EmptyRequest {}),
    );
    let stats = stats.unwrap_or_else(|e| fail(&format!("GetDomainStats: {e}")));
    let filesystems = filesystems.unwrap_or_else(|e| fail(&format!("GetFilesystems: {e}")));
    let dirty = dirty.unwrap_or_else(|e| fail(&format!("GetDomainDirtyRateStats: {e}")));
    std::hint::black_box((stats, filesystems, dirty));
}

/// The heap the families of one pass hold (what the server keeps to encode scrapes from),
/// and the size of their text encoding, KiB.
async fn published_size(source: &LauncherSource, n: usize) -> (i64, usize) {
    let report = source
        .collect_pass(tokio::time::Instant::now() + Duration::from_secs(60))
        .await;
    if report.vmis.len() != n {
        fail("collection incomplete");
    }
    let before = Heap::now().in_use_kib as i64;
    let families = families::render(&report.vmis, &[]);
    let held = Heap::now().in_use_kib as i64 - before;
    let text = text::encode(&families).len() / 1024;
    drop(families);
    (held, text)
}

/// Median time to decode every VMI's `GetDomainStats` JSON (fetched once), without I/O.
async fn decode_only(clients: &[CmdClient<Channel>]) -> f64 {
    let mut payloads = Vec::with_capacity(clients.len());
    for client in clients {
        let reply = client
            .clone()
            .get_domain_stats(EmptyRequest {})
            .await
            .unwrap_or_else(|e| fail(&format!("GetDomainStats: {e}")));
        payloads.push(reply.into_inner().domain_stats);
    }
    let mut times = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        for json in &payloads {
            let decoded = payload::domain_stats_from_json(json)
                .unwrap_or_else(|e| fail(&format!("decode: {e}")));
            std::hint::black_box(decoded);
        }
        times.push(ms(t0.elapsed()));
    }
    median(&times)
}

/// Every VMI's three calls, at most `CONCURRENCY` VMIs at once. (A loop over
/// `FuturesUnordered` rather than a stream combinator with a closure: the closure's
/// higher-ranked lifetime keeps the compiler from proving the benchmark `Send`.)
async fn bare_calls_kept(clients: &[CmdClient<Channel>]) {
    let mut pending = clients.iter();
    let mut running = futures::stream::FuturesUnordered::new();
    running.extend(pending.by_ref().take(CONCURRENCY).map(three_calls));
    while running.next().await.is_some() {
        running.extend(pending.next().map(three_calls));
    }
}

async fn dial_and_call(socket: &Path) {
    three_calls(&dial_and_negotiate(socket).await).await
}

/// As [`bare_calls_kept`], dialling and negotiating first.
async fn bare_calls_dialled(sockets: &[PathBuf]) {
    let mut pending = sockets.iter().map(PathBuf::as_path);
    let mut running = futures::stream::FuturesUnordered::new();
    running.extend(pending.by_ref().take(CONCURRENCY).map(dial_and_call));
    while running.next().await.is_some() {
        running.extend(pending.next().map(dial_and_call));
    }
}

// ------------------------------------------------------------------ the sidecar process

/// This program re-run as a sidecar (`--sidecar`), killed on drop.
struct Sidecar {
    proc: Proc,
    base: String,
    heap_file: PathBuf,
    client: reqwest::Client,
}

impl Sidecar {
    async fn start(
        bench: &Args,
        vmis_file: &Path,
        pods_dir: &Path,
        mode: &str,
        interval: &str,
        component_url: Option<&str>,
    ) -> Self {
        let port = free_port();
        let heap_file = PathBuf::from(format!("{}.heap", vmis_file.display()));
        let exe = std::env::current_exe().unwrap_or_else(|e| fail(&e.to_string()));
        let mut args: Vec<String> = vec![
            "--sidecar".into(),
            vmis_file.display().to_string(),
            pods_dir.display().to_string(),
            format!("127.0.0.1:{port}"),
            mode.into(),
            interval.into(),
            heap_file.display().to_string(),
            bench.worker_threads.to_string(),
        ];
        args.extend(component_url.map(str::to_owned));
        let mut proc = spawn(&exe.display().to_string(), &args);
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        wait_ready(&client, &format!("{base}/healthz"), &mut proc).await;
        Self {
            proc,
            base,
            heap_file,
            client,
        }
    }

    fn metrics_url(&self) -> String {
        format!("{}/metrics", self.base)
    }

    async fn page(&self) -> String {
        text_page(&self.client, &self.metrics_url()).await
    }

    async fn collections(&self) -> f64 {
        sample_sum(
            &self.page().await,
            "kubevirt_metrics_sidecar_collections_total",
        )
    }

    /// Waits until `at_least` collections have run and the last one saw `n` VMIs.
    async fn wait_collections(&mut self, at_least: f64, n: usize) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let page = self.page().await;
            let done = sample_sum(&page, "kubevirt_metrics_sidecar_collections_total") >= at_least
                && sample_sum(&page, "kubevirt_metrics_sidecar_targets") == n as f64;
            if done {
                let problems = sample_sum(&page, "kubevirt_metrics_sidecar_problems_total");
                if problems > 0.0 {
                    fail(&format!("the sidecar counted {problems} problems"));
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fail("the sidecar did not collect within 120 s");
    }

    /// The sidecar's glibc heap, as it last wrote it.
    fn heap(&self) -> String {
        std::fs::read_to_string(&self.heap_file)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.heap_file);
    }
}

mod sidecar {
    //! `--sidecar VMIS_FILE PODS_DIR LISTEN MODE INTERVAL HEAP_FILE WORKERS [COMPONENT_URL]`: the
    //! virt-handler-metrics runtime with the launcher source, its VMIs from a file instead of
    //! the API watch; writes its glibc heap counters to HEAP_FILE every 200 ms.

    use super::*;

    pub fn main(argv: Vec<String>) {
        let [
            vmis_file,
            pods_dir,
            listen,
            mode,
            interval,
            heap_file,
            workers,
            rest @ ..,
        ] = argv.as_slice()
        else {
            fail(
                "--sidecar VMIS_FILE PODS_DIR LISTEN MODE INTERVAL HEAP_FILE WORKERS [COMPONENT_URL]",
            );
        };
        let worker_threads: u16 = workers
            .parse()
            .unwrap_or_else(|e| fail(&format!("workers: {e}")));
        let heap_file = PathBuf::from(heap_file);
        std::thread::spawn(move || {
            loop {
                let _ = std::fs::write(&heap_file, Heap::now().to_string());
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let text = std::fs::read_to_string(vmis_file).unwrap_or_else(|e| fail(&e.to_string()));
        let items: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| fail(&e.to_string()));
        let vmis = parse_vmis(&items);
        let interval: Duration =
            humantime::parse_duration(interval).unwrap_or_else(|e| fail(&format!("interval: {e}")));
        let mut common = CommonArgs {
            listen: Some(
                listen
                    .parse()
                    .unwrap_or_else(|e| fail(&format!("listen: {e}"))),
            ),
            mode: if mode == "full" {
                Mode::Full
            } else {
                Mode::Complement
            },
            interval,
            collection_timeout: Duration::from_secs(30),
            worker_threads,
            ..CommonArgs::default()
        };
        if let Some(url) = rest.first() {
            common.component_metrics_url = url.clone();
        }
        let source = LauncherSource::with_lister(
            Arc::new(StaticVmis::new(vmis)),
            settings(Path::new(pods_dir)),
        );
        let collector = Arc::new(VmiCollector::new(Arc::new(source), interval));
        // As virt-handler-metrics' main.
        runtime::tokio_runtime(worker_threads)
            .unwrap_or_else(|e| fail(&e.to_string()))
            .block_on(async {
                if let Err(e) = runtime::run("virt-handler-metrics", &common, collector).await {
                    fail(&e.to_string());
                }
            });
    }
}
