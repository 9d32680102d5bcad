//! The collection loop: collect every interval, keep the last result, serve it.
//!
//! Every collector binary is a thin `main` around [`block_on`] and [`run`]:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use kubevirt_metrics_collectors::core::{collect::Collector, runtime};
//! # use kubevirt_metrics_flags::CommonArgs;
//! # fn example(common: CommonArgs, collector: Arc<dyn Collector>) {
//! kubevirt_metrics_flags::telemetry::init(common.log_format, "info");
//! runtime::block_on("virt-api-metrics", common.worker_threads, async {
//!     if let Err(error) = runtime::run("virt-api-metrics", &common, collector).await {
//!         tracing::error!(%error, "virt-api-metrics failed");
//!         std::process::exit(1);
//!     }
//! });
//! # }
//! ```
//!
//! One pass: the [`Collector`] runs with a deadline of `--collection-timeout`; then, in
//! complement mode, the component is checked (its cheap `/healthz` every pass, its whole
//! `/metrics` only when [`CheckSchedule`] says so, or never when the collector read that page
//! itself). Then the families the component serves are withheld, the self-metrics are added,
//! and the result is published as the snapshot every scrape is served from. `/readyz` turns
//! 200 after the first pass, whatever the component did: a sidecar that never becomes ready
//! would stall KubeVirt's rollout.
//!
//! Export: the [`Pipeline`] is built at start from the export flags (a bad sink or rule is a
//! start-up error). Each pass's families go through its aggregation before anything sees
//! them; the self-metrics are added after it (never aggregated); the result is what
//! `/metrics` serves and, as one [`Batch`] sharing the same families, what every push sink
//! is handed. Pushing never waits for a sink. On shutdown the sinks get a bounded last
//! push.
//!
//! Passes run on the interval tick, and also ahead of it: when the collector's [`Trigger`]
//! fires (the VMI watch has synced, a VMI started; coalesced over `TRIGGER_DEBOUNCE`), and
//! while a component check is owed (with backoff). Those extra passes keep `MIN_PASS_GAP`
//! from the previous one.
//!
//! Complement mode withholds every family the component has served at any successful check
//! since start (not only at the last one). A family such as `kubevirt_vmi_memory_*` appears
//! in the component's output only while VMIs run; remembering it means a sidecar never
//! publishes it in the window between a VMI starting and the next check, which would
//! otherwise duplicate series for up to one interval. Until the first successful check the
//! sidecar publishes none of its collector's families (only self-metrics); when the component
//! cannot be reached later, the known set is kept.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::core::collect::{Collector, ComponentRead, Problem, Trigger};
use crate::core::component::schedule::{CheckSchedule, Reason};
use crate::core::component::{ComponentClient, ComponentEndpoint, ComponentError};
use crate::core::export::pipeline::{Pipeline, PipelineError};
use crate::core::export::{Batch, Resource};
use crate::core::metric::Family;
use crate::core::selfmetrics::{BuildInfo, SelfMetrics, SelfMetricsError};
use crate::core::server::{Published, Server, ServerError, ServerLimits, TlsFiles};
use kubevirt_metrics_flags::{CommonArgs, Mode};

/// How long past its deadline a collector may take before its pass is abandoned. Collectors
/// should honour the deadline themselves; this only catches one that does not.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("--interval must be longer than zero")]
    ZeroInterval,
    #[error("--tls-cert and --tls-key must be given together")]
    IncompleteTls,
    #[error("{0}")]
    Limit(&'static str),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error(transparent)]
    SelfMetrics(#[from] SelfMetricsError),
    #[error(transparent)]
    Export(#[from] PipelineError),
    #[error("installing the signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("the {task} task failed: {reason}")]
    Task { task: &'static str, reason: String },
}

/// The tokio runtime a sidecar runs on: `worker_threads` workers (`--worker-threads`), not
/// one per core of the node as `#[tokio::main]` would start.
pub fn tokio_runtime(worker_threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(worker_threads.max(1)))
        .enable_all()
        .build()
}

/// A sidecar binary's `main`: runs `main` on [`tokio_runtime`]; a runtime that cannot be
/// built (no threads left) ends the process with an error.
pub fn block_on(name: &str, worker_threads: u16, main: impl std::future::Future<Output = ()>) {
    match tokio_runtime(worker_threads) {
        Ok(runtime) => runtime.block_on(main),
        Err(error) => {
            tracing::error!(%error, "{name}: cannot start the tokio runtime");
            std::process::exit(1);
        }
    }
}

/// Runs a sidecar until SIGTERM or SIGINT, then shuts down gracefully.
///
/// `name` is the binary's name (`virt-handler-metrics`, ...), used in logs and in
/// `kubevirt_metrics_sidecar_build_info`. Errors are start-up errors (bad flags, port in
/// use, unreadable certificate); once running, nothing a peer does ends the process.
pub async fn run(
    name: &'static str,
    common: &CommonArgs,
    collector: Arc<dyn Collector>,
) -> Result<(), RuntimeError> {
    let running = start(name, common, collector).await?;
    shutdown_signal().await?;
    tracing::info!("signal received; shutting down");
    running.stop().await
}

/// A started sidecar: serving, and collecting in the background.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    published: Published,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    collection: JoinHandle<()>,
}

impl Running {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What is being served right now.
    pub fn published(&self) -> &Published {
        &self.published
    }

    /// Stops collecting and serving; responses in flight finish first.
    pub async fn stop(self) -> Result<(), RuntimeError> {
        self.shutdown.cancel();
        let task_error = |task| {
            move |e: tokio::task::JoinError| RuntimeError::Task {
                task,
                reason: e.to_string(),
            }
        };
        self.collection.await.map_err(task_error("collection"))?;
        self.server.await.map_err(task_error("server"))?;
        Ok(())
    }
}

/// Binds the listener, starts serving and collecting, and returns at once. [`run`] is this
/// plus waiting for a signal; tests use it directly.
pub async fn start(
    name: &'static str,
    common: &CommonArgs,
    collector: Arc<dyn Collector>,
) -> Result<Running, RuntimeError> {
    if common.interval.is_zero() {
        return Err(RuntimeError::ZeroInterval);
    }
    let tls = match (&common.tls_cert, &common.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) => None,
        _ => return Err(RuntimeError::IncompleteTls),
    };
    let metrics = SelfMetrics::new(BuildInfo {
        collector: name,
        mode: common.mode.as_str(),
    })?;
    let pipeline = Pipeline::from_args(&common.export, &Resource::from_env(name), &metrics)?;
    let component = match common.mode {
        Mode::Complement => Some(ComponentCheck {
            client: ComponentClient::new(&ComponentEndpoint::from_args(common))?,
            schedule: CheckSchedule::new(common.component_recheck_interval, common.interval),
        }),
        Mode::Full => None,
    };
    let server = Server::bind(common.listen_addr(), tls.as_ref(), server_limits(common)?).await?;
    let local_addr = server.local_addr();
    tracing::info!(
        collector = name,
        listen = %local_addr,
        tls = server.is_tls(),
        mode = common.mode.as_str(),
        interval = ?common.interval,
        collection_timeout = ?common.collection_timeout,
        worker_threads = common.worker_threads,
        component = %common.component_metrics_url,
        component_recheck_interval = ?common.component_recheck_interval,
        sinks = ?pipeline.sink_names(),
        "serving /metrics, /healthz, /readyz"
    );

    let published = Published::new();
    published.publish(metrics.families());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(server.serve(
        published.clone(),
        Some(metrics.clone()),
        shutdown.child_token(),
    ));
    let collection_loop = CollectionLoop {
        collector,
        component,
        metrics,
        pipeline,
        published: published.clone(),
        interval: common.interval,
        timeout: common.collection_timeout,
        served: None,
        problems: ProblemLog::default(),
        last_pass: None,
    };
    let collection = tokio::spawn(collection_loop.run(shutdown.child_token()));
    Ok(Running {
        local_addr,
        published,
        shutdown,
        server,
        collection,
    })
}

/// The HTTP server's limits from the flags.
fn server_limits(common: &CommonArgs) -> Result<ServerLimits, RuntimeError> {
    if common.max_connections == 0 {
        return Err(RuntimeError::Limit("--max-connections must be at least 1"));
    }
    if common.http_max_header_bytes < MIN_HEADER_BYTES {
        return Err(RuntimeError::Limit(
            "--http-max-header-bytes must be at least 1024",
        ));
    }
    Ok(ServerLimits {
        max_connections: common.max_connections,
        idle_timeout: common.http_idle_timeout,
        header_timeout: common.http_header_timeout,
        write_timeout: common.http_write_timeout,
        max_header_bytes: common.http_max_header_bytes,
    })
}

/// Below this no real client's request fits (Prometheus sends about 300 bytes).
const MIN_HEADER_BYTES: usize = 1024;

async fn shutdown_signal() -> Result<(), RuntimeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(RuntimeError::Signal)?;
    tokio::select! {
        _ = terminate.recv() => Ok(()),
        interrupted = tokio::signal::ctrl_c() => interrupted.map_err(RuntimeError::Signal),
    }
}

/// A triggered pass waits this long so that triggers close together make one pass.
const TRIGGER_DEBOUNCE: Duration = Duration::from_secs(1);
/// Passes outside the interval tick (triggers, component retries) start at least this long
/// after the previous pass, so a burst of VMI creations cannot make a storm of passes.
const MIN_PASS_GAP: Duration = Duration::from_secs(2);

/// Why the loop runs a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Tick,
    /// The collector's trigger fired: fresh data exists.
    Trigger,
    /// A component check is owed and its backoff has passed.
    ComponentRetry,
}

/// Complement mode's view of the component: the client and when to read its page.
struct ComponentCheck {
    client: ComponentClient,
    schedule: CheckSchedule,
}

struct CollectionLoop {
    collector: Arc<dyn Collector>,
    /// `None` in full mode.
    component: Option<ComponentCheck>,
    metrics: SelfMetrics,
    pipeline: Pipeline,
    published: Published,
    interval: Duration,
    timeout: Duration,
    /// Every family the component has served at a successful check; `None` before the first.
    served: Option<BTreeSet<String>>,
    problems: ProblemLog,
    last_pass: Option<Instant>,
}

impl CollectionLoop {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let trigger = self.collector.trigger();
        loop {
            let retry_at = self.component_retry_at();
            let wake = tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => Wake::Tick,
                () = fired(trigger.as_ref()) => Wake::Trigger,
                () = sleep_until(retry_at) => Wake::ComponentRetry,
            };
            if wake != Wake::Tick {
                let debounce = if wake == Wake::Trigger {
                    TRIGGER_DEBOUNCE
                } else {
                    Duration::ZERO
                };
                let mut at = Instant::now() + debounce;
                if let Some(last) = self.last_pass {
                    at = at.max(last + MIN_PASS_GAP);
                }
                tracing::debug!(?wake, "collecting ahead of the interval");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.pass() => {}
            }
            if wake != Wake::Tick {
                // The next tick comes one interval after this pass, not right after it.
                ticker.reset();
            }
        }
        self.pipeline.shutdown().await;
    }

    /// When an owed component check should be tried again ahead of the interval.
    fn component_retry_at(&self) -> Option<Instant> {
        let check = self.component.as_ref()?;
        let wait = check.schedule.retry_after()?;
        let base = self.last_pass.unwrap_or_else(Instant::now);
        Some(base + wait)
    }

    async fn pass(&mut self) {
        let started = Instant::now();
        self.last_pass = Some(started);
        let deadline = started + self.timeout;
        let collected =
            tokio::time::timeout_at(deadline + DEADLINE_GRACE, self.collector.collect(deadline))
                .await;
        let took = started.elapsed();

        let mut problems = Vec::new();
        let mut component_read = None;
        let families = match collected {
            Ok(collection) => {
                self.metrics
                    .observe_collection(took, false, SystemTime::now());
                self.metrics.set_targets(collection.targets_seen);
                self.metrics.add_stale_dropped(collection.stale_dropped);
                for problem in &collection.problems {
                    self.metrics.count_problem(problem.source, problem.kind);
                }
                problems.extend(collection.problems);
                component_read = collection.component;
                collection.families
            }
            Err(_elapsed) => {
                self.metrics
                    .observe_collection(took, true, SystemTime::now());
                self.metrics.count_problem("collector", "timeout");
                problems.push(Problem {
                    source: "collector",
                    kind: "timeout",
                    target: "collection".to_owned(),
                    message: format!(
                        "the collection pass did not finish within {:?}; nothing from it is published",
                        self.timeout + DEADLINE_GRACE
                    ),
                });
                Vec::new()
            }
        };
        if let Some(read) = &component_read {
            self.metrics.add_component_scrapes(read.scrapes);
        }
        self.check_component(component_read, &mut problems).await;
        self.problems.update(&problems);

        let (publish, withheld) =
            complement(families, self.component.is_some(), self.served.as_ref());
        self.metrics.set_withheld_families(withheld);
        let mut publish = self.pipeline.aggregate(publish);
        publish.extend(self.metrics.families());
        let families = Arc::new(publish);
        self.published.publish_shared(Arc::clone(&families));
        self.published.mark_ready();
        self.pipeline.push(&Batch {
            families,
            collected_at: SystemTime::now(),
        });
    }

    /// Complement mode: learns which families the component serves, reading its page only
    /// when [`CheckSchedule`] says so (or reusing the page the collector read this pass).
    async fn check_component(&mut self, read: Option<ComponentRead>, problems: &mut Vec<Problem>) {
        let Some(check) = &mut self.component else {
            return;
        };
        let now = Instant::now();
        if let Some(read) = read {
            // The collector read the page (a relay): no request of our own.
            match read.served {
                Some(names) => {
                    check.schedule.succeeded(now, None);
                    self.record_served(names);
                }
                None if read.scrapes > 0 => check.schedule.failed(now, true),
                None => {}
            }
            return;
        }
        self.metrics.count_component_probe();
        let identity = match check.client.probe().await {
            Ok(answer) => answer.identity,
            Err(error) => {
                check.schedule.failed(now, false);
                let failure = self.check_failure(&error);
                problems.push(failure);
                return;
            }
        };
        let Some(reason) = check.schedule.due(now, identity.as_deref()) else {
            return;
        };
        tracing::debug!(reason = reason.as_str(), "reading the component's families");
        self.metrics.add_component_scrapes(1);
        let checked = check.client.served_families().await;
        let Some(check) = &mut self.component else {
            return;
        };
        match checked {
            Ok(names) => {
                if reason != Reason::First {
                    tracing::info!(
                        reason = reason.as_str(),
                        "re-read the families the component serves"
                    );
                }
                check.schedule.succeeded(Instant::now(), identity);
                self.record_served(names);
            }
            Err(error) => {
                check.schedule.failed(Instant::now(), true);
                let failure = self.check_failure(&error);
                problems.push(failure);
            }
        }
    }

    fn record_served(&mut self, names: BTreeSet<String>) {
        let served = self.served.get_or_insert_with(BTreeSet::new);
        served.extend(names);
        self.metrics.set_component_families(served.len());
    }

    fn check_failure(&self, error: &ComponentError) -> Problem {
        self.metrics.count_component_check_failure(error.kind());
        Problem {
            source: "component",
            kind: error.kind(),
            target: self
                .component
                .as_ref()
                .map(|c| c.client.url().to_owned())
                .unwrap_or_default(),
            message: if self.served.is_some() {
                format!("{error}; keeping the families known from earlier checks")
            } else {
                format!("{error}; publishing no collector family until the component answers")
            },
        }
    }
}

async fn fired(trigger: Option<&Trigger>) {
    match trigger {
        Some(trigger) => trigger.fired().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The families to publish and how many were withheld. In complement mode (`complement`),
/// families the component serves are withheld, and all of them while `served` is unknown.
fn complement(
    families: Vec<Family>,
    complement: bool,
    served: Option<&BTreeSet<String>>,
) -> (Vec<Family>, usize) {
    if !complement {
        return (families, 0);
    }
    let Some(served) = served else {
        let withheld = families.len();
        return (Vec::new(), withheld);
    };
    let before = families.len();
    let kept: Vec<Family> = families
        .into_iter()
        .filter(|family| !served.contains(family.name.as_ref()))
        .collect();
    let withheld = before - kept.len();
    (kept, withheld)
}

/// Logs each problem once: when it first appears (per source, kind and target), and once
/// more when a pass no longer reports it. The target is logged as `subject` (`target` is
/// the log record's module path in the JSON format).
#[derive(Debug, Default)]
struct ProblemLog {
    active: HashSet<(&'static str, &'static str, String)>,
}

impl ProblemLog {
    fn update(&mut self, problems: &[Problem]) {
        let mut now = HashSet::with_capacity(problems.len());
        for problem in problems {
            let key = (problem.source, problem.kind, problem.target.clone());
            if !self.active.contains(&key) && !now.contains(&key) {
                tracing::warn!(
                    source = problem.source,
                    kind = problem.kind,
                    subject = %problem.target,
                    "{}",
                    problem.message
                );
            }
            now.insert(key);
        }
        for (source, kind, target) in self.active.difference(&now) {
            tracing::info!(source, kind, subject = %target, "problem cleared");
        }
        self.active = now;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::core::metric::MetricType;

    #[test]
    fn the_runtime_has_the_workers_asked_for_and_at_least_one() {
        for (asked, workers) in [(1, 1), (3, 3), (0, 1)] {
            let runtime = tokio_runtime(asked).unwrap();
            assert_eq!(
                runtime.metrics().num_workers(),
                workers,
                "--worker-threads {asked}"
            );
        }
    }

    fn families(names: &[&'static str]) -> Vec<Family> {
        names
            .iter()
            .map(|n| Family::new(*n, "", MetricType::Gauge))
            .collect()
    }

    fn names(families: &[Family]) -> Vec<&str> {
        families.iter().map(|f| f.name.as_ref()).collect()
    }

    #[test]
    fn complement_withholds_served_families_and_everything_before_the_first_check() {
        let all = || families(&["a", "b", "c"]);
        let (kept, withheld) = complement(all(), false, None);
        assert_eq!((names(&kept), withheld), (vec!["a", "b", "c"], 0));

        let (kept, withheld) = complement(all(), true, None);
        assert_eq!((names(&kept), withheld), (vec![], 3));

        let served: BTreeSet<String> = ["b".to_owned(), "zzz".to_owned()].into();
        let (kept, withheld) = complement(all(), true, Some(&served));
        assert_eq!((names(&kept), withheld), (vec!["a", "c"], 1));
    }

    #[test]
    fn problem_log_tracks_active_problems() {
        let problem = |target: &str| Problem {
            source: "launcher",
            kind: "timeout",
            target: target.to_owned(),
            message: "slow".to_owned(),
        };
        let mut log = ProblemLog::default();
        log.update(&[problem("ns/a"), problem("ns/a"), problem("ns/b")]);
        assert_eq!(log.active.len(), 2);
        log.update(&[problem("ns/b")]);
        assert_eq!(log.active.len(), 1);
        log.update(&[]);
        assert!(log.active.is_empty());
    }
}
