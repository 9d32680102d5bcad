//! Domain statistics from virt-launcher over KubeVirt's cmd v1 gRPC protocol — the
//! default source of virt-handler-metrics inside a KubeVirt pod.
//!
//! One pass: take the node's VMIs ([`discovery`]), find each one's command socket under
//! the kubelet's pods directory ([`socket`]), and ask at most `max_concurrency` launchers
//! at a time ([`client`]) for `GetDomainStats`, `GetFilesystems` and, for running VMIs
//! that are not migrating, `GetDomainDirtyRateStats` — the calls virt-handler makes for
//! its own `/metrics`. The three calls of one VMI run concurrently on one kept
//! connection. Whatever goes wrong for one VMI (no socket, unresponsive marker, hung or
//! failing launcher, malformed JSON) becomes a [`Problem`] and never costs the others
//! their numbers; the pass always ends by its deadline.
//!
//! Differences from virt-handler, on purpose: connections are kept across passes (it
//! dials and negotiates per scrape), and the socket and the unresponsive marker are looked
//! for only when there is no kept connection to speak for the launcher ([`socket`]); no
//! `grpc-timeout` is sent ([`client`]); a failed `GetFilesystems` costs only the filesystem
//! series (it drops the VMI's whole report); failures are counted instead of only logged.

pub mod client;
pub mod discovery;
pub mod payload;
pub mod proto;
pub mod socket;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use foldhash::HashMap;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt};
use tokio::time::Instant;

pub use client::{Answers, ClientError, ClientPool, LauncherClient, RpcTimeouts};
pub use discovery::{StaticVmis, VmiLister, VmiSnapshot, WatchedVmis};
pub use socket::SocketError;

use crate::core::collect::{Problem, Trigger};
use crate::handler::source::{SourceReport, StatsSource};
use crate::handler::stats::{DomainStats, VmiIdentity, VmiStats};
use crate::k8s::objects::VirtualMachineInstance;
use kubevirt_metrics_flags::HandlerArgs;

/// The `source` of every problem this module reports about a launcher.
pub const SOURCE: &str = "launcher";

/// How far ahead of the pass deadline each VMI must be done, at most, so that what it
/// gathered still makes it into the pass.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LauncherSettings {
    /// This node; selects active pods (and, in [`LauncherSource::start`], the VMIs).
    pub node_name: String,
    /// The kubelet's pods directory as mounted in this container.
    pub pods_dir: PathBuf,
    /// At most this many launchers are asked at once.
    pub max_concurrency: usize,
    /// Everything asked of one launcher in one pass must finish within this.
    pub vmi_timeout: Duration,
    pub rpc: RpcTimeouts,
}

impl LauncherSettings {
    pub fn from_args(args: &HandlerArgs) -> Self {
        Self {
            node_name: args.node_name.clone(),
            pods_dir: args.pods_dir.clone(),
            max_concurrency: args.max_concurrency,
            vmi_timeout: args.vmi_timeout,
            rpc: RpcTimeouts::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error(
        "the node name is not set (NODE_NAME or --node-name); the launcher source needs it to select this node's VMIs"
    )]
    NoNodeName,
    #[error("cannot build a Kubernetes client (KUBECONFIG or in-cluster config): {0}")]
    Kube(#[from] kube::Error),
}

/// Statistics of this node's VMIs, asked of their virt-launchers.
pub struct LauncherSource {
    lister: Arc<dyn VmiLister>,
    settings: LauncherSettings,
    pool: ClientPool,
    identities: Identities,
}

impl LauncherSource {
    /// Connects to the Kubernetes API (KUBECONFIG, else in-cluster) and starts watching
    /// the node's VMIs. Returns at once; until the first list arrives, passes report a
    /// `not_synced` problem and no VMIs.
    pub async fn start(args: &HandlerArgs) -> Result<Self, LauncherError> {
        let settings = LauncherSettings::from_args(args);
        if settings.node_name.is_empty() {
            return Err(LauncherError::NoNodeName);
        }
        let client = kube::Client::try_default().await?;
        let lister = WatchedVmis::start(client, &settings.node_name);
        tracing::info!(
            node = %settings.node_name,
            pods_dir = %settings.pods_dir.display(),
            "launcher source started"
        );
        Ok(Self::with_lister(Arc::new(lister), settings))
    }

    /// A source over VMIs from anywhere, e.g. a [`StaticVmis`] in tests.
    pub fn with_lister(lister: Arc<dyn VmiLister>, settings: LauncherSettings) -> Self {
        Self {
            lister,
            settings,
            pool: ClientPool::default(),
            identities: Identities::default(),
        }
    }

    pub fn settings(&self) -> &LauncherSettings {
        &self.settings
    }

    /// How many launcher connections are currently kept.
    pub fn open_connections(&self) -> usize {
        self.pool.len()
    }

    /// One collection pass; ends by `deadline` whatever the launchers do.
    pub async fn collect_pass(&self, deadline: Instant) -> SourceReport {
        let VmiSnapshot { vmis, problems } = self.lister.snapshot();
        let mut report = SourceReport {
            problems,
            targets_seen: vmis.len() as u64,
            ..SourceReport::default()
        };

        let jobs = self.locate(vmis, &mut report.problems);
        let fetched = self.fetch_all(&jobs, deadline).await;
        let identities = self
            .identities
            .of(jobs.iter().map(|job| &job.vmi), &self.settings.node_name);
        report.vmis.reserve(jobs.len());
        for ((Job { vmi, socket, .. }, fetched), identity) in
            jobs.iter().zip(fetched).zip(identities)
        {
            let outcome = match fetched {
                None => Outcome::problem(problem(vmi, "timeout", "the pass deadline came first")),
                Some(Ok(Fetched::Failed(failure))) => Outcome::problem(failure),
                Some(Ok(Fetched::Replies(replies))) => {
                    std::panic::catch_unwind(AssertUnwindSafe(|| {
                        self.assemble(vmi, identity, socket, replies)
                    }))
                    .unwrap_or_else(|panic| internal(vmi, &*panic))
                }
                Some(Err(panic)) => internal(vmi, &*panic),
            };
            report.problems.extend(outcome.problems);
            report.vmis.extend(outcome.stats);
        }
        report
            .vmis
            .sort_by(|a, b| (&a.vmi.namespace, &a.vmi.name).cmp(&(&b.vmi.namespace, &b.vmi.name)));
        report
    }

    /// The VMIs that have a launcher socket to ask, with it and its kept connection; and
    /// the kept connections of the others dropped. A running VMI without a socket is a
    /// problem.
    fn locate(
        &self,
        vmis: Vec<Arc<VirtualMachineInstance>>,
        problems: &mut Vec<Problem>,
    ) -> Vec<Job> {
        let pass = self.pool.begin_pass();
        let mut jobs = Vec::with_capacity(vmis.len());
        for vmi in vmis {
            match self.find_socket(&vmi, pass) {
                Ok((socket, client)) => jobs.push(Job {
                    vmi,
                    socket,
                    client,
                    pass,
                }),
                Err(err) => {
                    // A VMI that is not running yet (or any more) has no launcher to ask;
                    // virt-handler skips it silently, and so do we.
                    if vmi.is_running() || matches!(err, SocketError::Unresponsive { .. }) {
                        problems.push(problem(&vmi, err.kind(), &err));
                    } else {
                        tracing::debug!(vmi = %vmi.key(), phase = %vmi.status.phase, %err, "no launcher socket");
                    }
                }
            }
        }
        self.pool.keep_used_since(pass);
        jobs
    }

    /// Every job's replies as they came, by `deadline`; `None` for a job still waiting then.
    ///
    /// `max_concurrency` workers ask the VMIs in turn, each the next one not yet asked, all
    /// from this task (their connections run on tasks of their own). A task per VMI
    /// measured about 5 µs per VMI more in spawning and waking, for no gain on one worker
    /// (`--worker-threads`); a future per VMI in a `FuturesUnordered` cost an allocation
    /// and copies of its five kilobytes per VMI. Decoding waits until the last reply is in:
    /// decoding between the calls ran at a third of the speed, its code evicted by theirs.
    async fn fetch_all(
        &self,
        jobs: &[Job],
        deadline: Instant,
    ) -> Vec<Option<std::thread::Result<Fetched>>> {
        let cutoff = vmi_cutoff(deadline);
        let fetched = Mutex::new(
            std::iter::repeat_with(|| None)
                .take(jobs.len())
                .collect::<Vec<_>>(),
        );
        let next_job = AtomicUsize::new(0);
        let worker = || async {
            loop {
                let i = next_job.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                // The VMI's own `--vmi-timeout` from now, or the pass cutoff if sooner.
                let vmi_deadline = cutoff.min(Instant::now() + self.settings.vmi_timeout);
                let replies = AssertUnwindSafe(self.fetch(job, vmi_deadline))
                    .catch_unwind()
                    .await;
                fetched.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(replies);
            }
        };
        let concurrency = self.settings.max_concurrency.clamp(1, jobs.len().max(1));
        let mut workers: FuturesUnordered<_> = (0..concurrency).map(|_| worker()).collect();
        let all_answered = async { while workers.next().await.is_some() {} };
        // Past the deadline, the VMIs still waiting are left as `None`.
        let _ = tokio::time::timeout_at(deadline, all_answered).await;
        drop(workers);
        fetched.into_inner().unwrap_or_else(PoisonError::into_inner)
    }

    /// The VMI's socket, as virt-handler finds it; except that a kept connection to the
    /// launcher of the VMI's one pod here stands for the socket and against virt-handler's
    /// unresponsive marker: a hung call or a transport failure drops the connection, after
    /// which both are looked for again. This saves the lookups in the kubelet's deep
    /// directories for every VMI whose launcher answers.
    fn find_socket(
        &self,
        vmi: &VirtualMachineInstance,
        pass: u64,
    ) -> Result<(PathBuf, Option<LauncherClient>), SocketError> {
        let settings = &self.settings;
        socket::find_socket(
            &settings.pods_dir,
            &settings.node_name,
            vmi.active_pods(),
            |socket| self.pool.kept(socket, pass),
        )
    }

    /// Everything one VMI's launcher has to say, by `deadline`, as it said it.
    async fn fetch(&self, job: &Job, deadline: Instant) -> Fetched {
        let Job {
            vmi,
            socket,
            client,
            pass,
        } = job;
        if deadline <= Instant::now() {
            return Fetched::Failed(problem(vmi, "timeout", "no time left in the pass to ask"));
        }
        let dialled;
        let client = match client {
            Some(kept) => kept,
            None => match self
                .pool
                .connect(socket, self.settings.rpc, deadline, *pass)
                .await
            {
                Ok(client) => {
                    dialled = client;
                    &dialled
                }
                Err(err) => return Fetched::Failed(problem(vmi, err.kind(), &err)),
            },
        };
        let answers = client.scrape(vmi.dirty_rate_eligible(), deadline).await;
        Fetched::Replies(Replies {
            answers,
            collected_at: SystemTime::now(),
        })
    }

    /// One VMI's replies decoded into its statistics and problems. A transport failure or
    /// a hang drops the VMI's kept connection.
    fn assemble(
        &self,
        vmi: &VirtualMachineInstance,
        identity: Arc<VmiIdentity>,
        socket: &Path,
        replies: Replies,
    ) -> Outcome {
        let Replies {
            answers:
                Answers {
                    stats,
                    filesystems,
                    dirty_rate,
                },
            collected_at,
        } = replies;
        let mut outcome = Outcome::default();
        let mut broken = false;
        let mut failed = |outcome: &mut Outcome, err: ClientError| {
            broken |= err.breaks_connection();
            outcome.problems.push(problem(vmi, err.kind(), &err));
        };

        let domain = match stats {
            Ok(Some(json)) => match payload::domain_stats_from_json(&json) {
                Ok(domain) if has_domain(&domain) => Some(domain),
                Ok(_) => {
                    outcome.no_domain(vmi);
                    None
                }
                Err(err) => {
                    outcome.problems.push(problem(vmi, "decode", &err));
                    None
                }
            },
            Ok(None) => {
                outcome.no_domain(vmi);
                None
            }
            Err(err) => {
                failed(&mut outcome, err);
                None
            }
        };
        let filesystems = match filesystems {
            Ok(json) => payload::filesystems_from_json(&json).unwrap_or_else(|err| {
                outcome.problems.push(problem(vmi, "decode", &err));
                Vec::new()
            }),
            Err(err) => {
                failed(&mut outcome, err);
                Vec::new()
            }
        };
        let dirty_rate_mbs = match dirty_rate {
            Some(Ok(mbs)) => Some(mbs),
            // A KubeVirt v1.5 launcher has no such call (and its virt-handler no such metric).
            Some(Err(err)) if err.is_unimplemented() => {
                tracing::debug!(vmi = %vmi.key(), %err, "launcher predates the dirty-rate call");
                None
            }
            Some(Err(err)) => {
                failed(&mut outcome, err);
                None
            }
            None => None,
        };
        if broken {
            self.pool.forget(socket);
            // The socket was not looked for while the connection stood for it.
            if let Some(err) = socket::gone(socket) {
                return Outcome::problem(problem(vmi, err.kind(), &err));
            }
        }

        // The dirty rate is its own collector in virt-handler and survives a failed
        // GetDomainStats; the filesystems belong to the domain report.
        outcome.stats = match (domain, dirty_rate_mbs) {
            (Some(domain), _) => Some((domain, filesystems)),
            (None, Some(_)) => Some((DomainStats::default(), Vec::new())),
            (None, None) => None,
        }
        .map(|(domain, filesystems)| VmiStats {
            vmi: identity,
            domain,
            filesystems,
            dirty_rate_mbs,
            collected_at,
        });
        outcome
    }
}

impl StatsSource for LauncherSource {
    fn collect(&self, deadline: Instant) -> BoxFuture<'_, SourceReport> {
        Box::pin(self.collect_pass(deadline))
    }

    /// The VMI list's: collect as soon as the watch has synced or a VMI starts running.
    fn trigger(&self) -> Option<Trigger> {
        self.lister.trigger()
    }
}

/// Each VMI's identity, built once per version of its object and shared by every pass:
/// the lister hands out the same `Arc` until the watch delivers a change. Keyed by that
/// `Arc`'s address, which cannot be reused while the entry holds the `Arc`.
#[derive(Default)]
struct Identities(Mutex<HashMap<usize, Identified>>);

/// A VMI object and the identity built from it.
type Identified = (Arc<VirtualMachineInstance>, Arc<VmiIdentity>);

impl Identities {
    /// The identities of `vmis`, in their order; those of VMIs not among them are forgotten.
    fn of<'a>(
        &self,
        vmis: impl ExactSizeIterator<Item = &'a Arc<VirtualMachineInstance>>,
        fallback_node: &str,
    ) -> Vec<Arc<VmiIdentity>> {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = HashMap::with_capacity_and_hasher(vmis.len(), Default::default());
        let identities = vmis
            .map(|vmi| {
                let key = Arc::as_ptr(vmi) as usize;
                let entry = known
                    .remove(&key)
                    .unwrap_or_else(|| (Arc::clone(vmi), Arc::new(vmi.identity(fallback_node))));
                let identity = Arc::clone(&entry.1);
                kept.insert(key, entry);
                identity
            })
            .collect();
        *known = kept;
        identities
    }
}

/// What one VMI's launcher answered, not yet decoded.
enum Fetched {
    /// It could not be asked (no time left, no connection): nothing to decode.
    Failed(Problem),
    Replies(Replies),
}

/// One VMI to ask this pass.
struct Job {
    vmi: Arc<VirtualMachineInstance>,
    socket: PathBuf,
    /// The kept connection to its launcher; `None` dials.
    client: Option<LauncherClient>,
    /// The pass's mark on the connections it uses.
    pass: u64,
}

struct Replies {
    answers: Answers,
    collected_at: SystemTime,
}

#[derive(Debug, Default)]
struct Outcome {
    stats: Option<VmiStats>,
    problems: Vec<Problem>,
}

impl Outcome {
    fn problem(problem: Problem) -> Self {
        Self {
            stats: None,
            problems: vec![problem],
        }
    }

    /// The launcher answered but has no domain: normal while a VMI starts or stops
    /// (virt-handler ignores it then), worth counting for a VMI that claims to run.
    fn no_domain(&mut self, vmi: &VirtualMachineInstance) {
        if vmi.is_running() {
            self.problems
                .push(problem(vmi, "no_domain", "the launcher reports no domain"));
        } else {
            tracing::debug!(vmi = %vmi.key(), phase = %vmi.status.phase, "launcher has no domain");
        }
    }
}

/// A panic while asking or decoding: that VMI's problem, not the pass's.
fn internal(vmi: &VirtualMachineInstance, panic: &(dyn std::any::Any + Send)) -> Outcome {
    let message = format!("panicked: {}", panic_message(panic));
    Outcome::problem(problem(vmi, "internal", message))
}

/// What a caught panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string payload")
}

/// virt-handler drops a report whose domain has no name (a VM that is going away).
fn has_domain(domain: &DomainStats) -> bool {
    domain.name.as_deref().is_some_and(|name| !name.is_empty())
}

/// The latest instant a VMI may still be worked on: a little before the pass deadline, so
/// partial answers (stats in, dirty rate hung) still land in the pass.
fn vmi_cutoff(deadline: Instant) -> Instant {
    let left = deadline.saturating_duration_since(Instant::now());
    let margin = DEADLINE_MARGIN.min(left / 10);
    deadline.checked_sub(margin).unwrap_or(deadline)
}

fn problem(
    vmi: &VirtualMachineInstance,
    kind: &'static str,
    message: impl std::fmt::Display,
) -> Problem {
    tracing::debug!(vmi = %vmi.key(), kind, %message, "launcher problem");
    Problem {
        source: SOURCE,
        kind,
        target: vmi.key(),
        message: message.to_string(),
    }
}
