//! Domain statistics straight from libvirt (`--source libvirt`): for hosts that run libvirt
//! themselves, and for per-VMI libvirt sockets (one URI per VMI, as KubeVirt's launchers
//! each run their own daemon).
//!
//! One pass asks every URI, at most `--max-concurrency` at a time, each within
//! `--vmi-timeout` (and the pass deadline), for the bulk statistics KubeVirt's launcher
//! asks for — the same groups and flags, see [`STATS_GROUPS`] and [`STATS_FLAGS`] — and turns
//! every record into a [`VmiStats`]. All libvirt calls run on blocking threads; a URI whose
//! previous call still hangs is skipped (counted as `busy`) instead of piling threads up.
//!
//! What the bulk call does not give is read per domain and cached, because it rarely
//! changes: the device aliases (domain XML) and the vCPU pin map. They are read when a
//! domain is first seen, restarted, hot-plugs a device or changes its vCPU count, and
//! otherwise refreshed after [`DEVICE_INFO_MAX_AGE`], a few domains per pass. The memory
//! numbers KubeVirt reads with `virDomainMemoryStats`/`virDomainGetInfo` come with the
//! bulk `balloon` group (see `decode`), so a steady pass costs one RPC per URI.
//!
//! Connections are opened read-only, with keepalive when libvirt's event loop runs. A
//! connection that broke (daemon restarted, socket gone) is dropped and reopened, in the
//! same pass if the daemon is back, and counted as a `connection_lost` problem; nothing here
//! panics or gives up for good.
//!
//! Identity: KubeVirt names domains `<namespace>_<name>`; a domain without `_` (a plain
//! libvirt host) gets namespace `""` and its whole name as `name` (see
//! [`devices::identity`]). `node` is `--node-name`.

pub mod ffi;

mod decode;
mod devices;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::core::collect::Problem;
use crate::handler::source::{SourceReport, StatsSource};
use crate::handler::stats::{DomainStats, VmiStats};
use kubevirt_metrics_flags::HandlerArgs;

pub use devices::{AliasMap, identity};

use decode::Decoder;
use ffi::{Conn, LibvirtError, Record};

/// The statistics groups KubeVirt's launcher asks for (`getDomainStats` in
/// `virtwrap/manager.go`); nothing else, every group costs real time on QEMU.
pub const STATS_GROUPS: u32 = virt::sys::VIR_DOMAIN_STATS_BALLOON
    | virt::sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | virt::sys::VIR_DOMAIN_STATS_VCPU
    | virt::sys::VIR_DOMAIN_STATS_INTERFACE
    | virt::sys::VIR_DOMAIN_STATS_BLOCK
    | virt::sys::VIR_DOMAIN_STATS_DIRTYRATE;

/// Running and paused domains only; `NOWAIT` skips the parts of a domain that would wait
/// for a job already running on it (a busy QEMU monitor) instead of stalling the call.
pub const STATS_FLAGS: u32 = virt::sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING
    | virt::sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_PAUSED
    | virt::sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;

/// How long device aliases and vCPU pin maps are reused before being read again.
pub const DEVICE_INFO_MAX_AGE: Duration = Duration::from_secs(300);

/// At most this many cached domains per URI are refreshed for age in one pass, so that a
/// host with many domains spreads the refresh over passes.
const REFRESHES_PER_PASS: usize = 16;

/// Keepalive: a probe every 5 s, the connection is declared dead after 3 unanswered ones.
const KEEPALIVE_INTERVAL_S: i32 = 5;
const KEEPALIVE_COUNT: u32 = 3;

const SOURCE: &str = "libvirt";

/// Domain statistics from one or more libvirt connections.
pub struct LibvirtSource {
    uris: Vec<Arc<UriWorker>>,
    node: Arc<str>,
    max_concurrency: usize,
    uri_timeout: Duration,
}

impl LibvirtSource {
    /// Uses `--libvirt-uri` (repeatable), `--node-name`, `--max-concurrency` and
    /// `--vmi-timeout` (the per-URI deadline).
    pub fn from_args(args: &HandlerArgs) -> LibvirtSource {
        Self::new(
            &args.libvirt_uris,
            &args.node_name,
            args.max_concurrency,
            args.vmi_timeout,
        )
    }

    pub fn new(
        uris: &[String],
        node: &str,
        max_concurrency: usize,
        uri_timeout: Duration,
    ) -> LibvirtSource {
        let keepalive = ffi::init();
        LibvirtSource {
            uris: uris
                .iter()
                .map(|uri| Arc::new(UriWorker::new(uri.clone(), keepalive)))
                .collect(),
            node: Arc::from(node),
            max_concurrency: max_concurrency.max(1),
            uri_timeout,
        }
    }

    async fn collect_uri(&self, worker: Arc<UriWorker>, deadline: Instant) -> UriReport {
        let Some(busy) = BusyGuard::acquire(&worker) else {
            return UriReport::problem(
                &worker.uri,
                "busy",
                "the previous call on this connection has not returned yet".into(),
            );
        };
        let started = Instant::now();
        let until = deadline.min(started + self.uri_timeout);
        let node = Arc::clone(&self.node);
        let uri = worker.uri.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            worker.collect(&node, until.into_std())
        });
        match tokio::time::timeout_at(until, task).await {
            Ok(Ok(report)) => report,
            Ok(Err(join)) => {
                UriReport::problem(&uri, "internal", format!("collection task failed: {join}"))
            }
            Err(_) => UriReport::problem(
                &uri,
                "timeout",
                format!("no answer within {:?}", until - started),
            ),
        }
    }
}

impl StatsSource for LibvirtSource {
    fn collect(&self, deadline: Instant) -> BoxFuture<'_, SourceReport> {
        Box::pin(async move {
            let reports: Vec<UriReport> = futures::stream::iter(self.uris.iter().cloned())
                .map(|worker| self.collect_uri(worker, deadline))
                .buffer_unordered(self.max_concurrency)
                .collect()
                .await;
            let mut out = SourceReport::default();
            for report in reports {
                out.targets_seen += report.domains_seen;
                out.vmis.extend(report.vmis);
                out.problems.extend(report.problems);
            }
            // Records come in the daemon's hash order and URIs finish in any order.
            out.vmis.sort_unstable_by(|a, b| {
                (&a.vmi.namespace, &a.vmi.name, &a.domain.uuid).cmp(&(
                    &b.vmi.namespace,
                    &b.vmi.name,
                    &b.domain.uuid,
                ))
            });
            out
        })
    }
}

/// What one URI gave in one pass.
#[derive(Default)]
struct UriReport {
    vmis: Vec<VmiStats>,
    problems: Vec<Problem>,
    domains_seen: u64,
}

impl UriReport {
    fn problem(uri: &str, kind: &'static str, message: String) -> Self {
        UriReport {
            problems: vec![problem(uri, kind, message)],
            ..Default::default()
        }
    }
}

fn problem(target: &str, kind: &'static str, message: String) -> Problem {
    Problem {
        source: SOURCE,
        kind,
        target: target.to_owned(),
        message,
    }
}

/// Marks a URI as having a call in flight; cleared when dropped, wherever that happens
/// (after the blocking call returns, or with the closure if it never ran).
struct BusyGuard(Arc<UriWorker>);

impl BusyGuard {
    fn acquire(worker: &Arc<UriWorker>) -> Option<BusyGuard> {
        (!worker.busy.swap(true, Ordering::AcqRel)).then(|| BusyGuard(Arc::clone(worker)))
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// One URI: its connection and what is cached about its domains.
struct UriWorker {
    uri: String,
    busy: AtomicBool,
    keepalive: bool,
    state: Mutex<UriState>,
}

#[derive(Default)]
struct UriState {
    conn: Option<Conn>,
    /// Host CPU count of the connection's host (sizes vCPU pin maps); read once per connection.
    host_cpus: Option<u32>,
    /// By domain UUID.
    domains: HashMap<String, DomainInfo>,
    pass: u64,
    /// Whether the connection was reported lost (logged once until it is back).
    lost: bool,
}

/// Cached per-domain information that the bulk call does not carry.
struct DomainInfo {
    /// The run-time domain ID the info was read for; a restart changes it.
    id: u32,
    vcpus: Option<u64>,
    aliases: AliasMap,
    cpu_map: Option<Vec<Vec<bool>>>,
    read_at: std::time::Instant,
    seen_in_pass: u64,
}

impl UriWorker {
    fn new(uri: String, keepalive: bool) -> Self {
        UriWorker {
            uri,
            busy: AtomicBool::new(false),
            keepalive,
            state: Mutex::new(UriState::default()),
        }
    }

    /// One pass over this URI, on a blocking thread. `until` bounds the optional
    /// per-domain reads; the bulk call itself cannot be interrupted.
    fn collect(&self, node: &str, until: std::time::Instant) -> UriReport {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.pass += 1;
        let mut report = UriReport::default();
        for attempt in 0..2 {
            if state.conn.as_ref().is_some_and(|c| !c.is_alive()) {
                self.lose_connection(&mut state, &mut report, "the connection is no longer alive");
            }
            if state.conn.is_none() {
                match self.connect() {
                    Ok(conn) => {
                        if state.lost {
                            tracing::info!(uri = %self.uri, "libvirt connection re-established");
                            state.lost = false;
                        }
                        state.conn = Some(conn);
                        state.host_cpus = None;
                    }
                    Err(err) => {
                        report
                            .problems
                            .push(problem(&self.uri, "connect", err.to_string()));
                        if !state.lost {
                            tracing::warn!(uri = %self.uri, error = %err, "cannot connect to libvirt");
                            state.lost = true;
                        }
                        return report;
                    }
                }
            }
            let Some(conn) = state.conn.as_ref() else {
                return report;
            };
            match conn.all_domain_stats(STATS_GROUPS, STATS_FLAGS) {
                Ok(list) => {
                    let list_len = list.len() as u64;
                    report.domains_seen = list_len;
                    self.convert(&mut state, &list, node, until, &mut report);
                    list.free_in_background();
                    return report;
                }
                Err(err) if err.is_connection_error() || !conn.is_alive() => {
                    // The daemon went away (restart, socket gone): reopen once right away,
                    // it may already be back.
                    self.lose_connection(&mut state, &mut report, &err.to_string());
                    if attempt == 1 || std::time::Instant::now() >= until {
                        return report;
                    }
                }
                Err(err) => {
                    report
                        .problems
                        .push(problem(&self.uri, "stats", err.to_string()));
                    return report;
                }
            }
        }
        report
    }

    fn connect(&self) -> Result<Conn, LibvirtError> {
        let conn = Conn::open_read_only(&self.uri)?;
        if self.keepalive {
            // Not every driver has keepalive (the in-process test driver has none).
            if let Err(err) = conn.set_keepalive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT) {
                tracing::debug!(uri = %self.uri, error = %err, "no keepalive on this connection");
            }
        }
        Ok(conn)
    }

    fn lose_connection(&self, state: &mut UriState, report: &mut UriReport, why: &str) {
        state.conn = None; // closing a dead connection may fail; Conn ignores that
        state.host_cpus = None;
        report
            .problems
            .push(problem(&self.uri, "connection_lost", why.to_owned()));
        if !state.lost {
            tracing::warn!(uri = %self.uri, error = why, "libvirt connection lost; reopening");
            state.lost = true;
        }
    }

    fn convert(
        &self,
        state: &mut UriState,
        list: &ffi::StatsList,
        node: &str,
        until: std::time::Instant,
        report: &mut UriReport,
    ) {
        let collected_at = SystemTime::now();
        let pass = state.pass;
        let mut refresh_budget = REFRESHES_PER_PASS;
        report.vmis.reserve(list.len());
        for record in list.iter() {
            let Some(name) = record.name() else {
                continue;
            };
            let name = name.to_string_lossy().into_owned();
            let uuid = record.uuid();
            // Decoded straight into its place in the report.
            report.vmis.push(VmiStats {
                vmi: identity(&name, node).into(),
                domain: DomainStats::default(),
                filesystems: Vec::new(),
                dirty_rate_mbs: None,
                collected_at,
            });
            let Some(vmi) = report.vmis.last_mut() else {
                continue;
            };
            let domain = &mut vmi.domain;
            let mut decoder = Decoder::new(domain);
            record.for_each_param(|field, value| decoder.param(field, value));
            let vcpus = decoder.vcpu_current();
            decoder.finish();
            vmi.dirty_rate_mbs = domain
                .dirty_rate
                .as_ref()
                .and_then(|d| d.megabytes_per_second);
            domain.name = Some(name);
            if let Some(uuid) = uuid.as_deref() {
                self.attach_device_info(
                    state,
                    record,
                    uuid,
                    vcpus,
                    domain,
                    (pass, until, &mut refresh_budget),
                    &mut report.problems,
                );
            }
            domain.uuid = uuid;
        }
        state.domains.retain(|_, info| info.seen_in_pass == pass);
    }

    /// Sets aliases and the vCPU pin map on `domain`, reading them when the cache is
    /// missing, outdated or too old (within the pass's refresh budget and deadline).
    #[allow(clippy::too_many_arguments)]
    fn attach_device_info(
        &self,
        state: &mut UriState,
        record: Record<'_>,
        uuid: &str,
        vcpus: Option<u64>,
        domain: &mut DomainStats,
        (pass, until, refresh_budget): (u64, std::time::Instant, &mut usize),
        problems: &mut Vec<Problem>,
    ) {
        let has_devices = !domain.nets.is_empty() || !domain.blocks.is_empty();
        // Nothing to read for a domain without devices or vCPU statistics (e.g. the test
        // driver, whose bulk stats carry only `state.*`).
        if !has_devices && vcpus.is_none() {
            return;
        }
        let id = record.id();
        let must_read = match state.domains.get(uuid) {
            None => true,
            Some(info) => info.id != id || info.vcpus != vcpus || !info.aliases.covers(domain),
        };
        let too_old = !must_read
            && state
                .domains
                .get(uuid)
                .is_some_and(|info| info.read_at.elapsed() >= DEVICE_INFO_MAX_AGE);
        let refresh = too_old && *refresh_budget > 0 && std::time::Instant::now() < until;
        if must_read || refresh {
            if refresh {
                *refresh_budget -= 1;
            }
            match self.read_device_info(state, record, id, vcpus, has_devices) {
                Ok(info) => {
                    state.domains.insert(uuid.to_owned(), info);
                }
                Err(err) => problems.push(problem(
                    &format!(
                        "{} {}",
                        self.uri,
                        record
                            .name()
                            .map(|n| n.to_string_lossy())
                            .unwrap_or_default()
                    ),
                    "domain",
                    err.to_string(),
                )),
            }
        }
        if let Some(info) = state.domains.get_mut(uuid) {
            info.seen_in_pass = pass;
            info.aliases.apply(domain);
            domain.cpu_map.clone_from(&info.cpu_map);
        }
    }

    fn read_device_info(
        &self,
        state: &mut UriState,
        record: Record<'_>,
        id: u32,
        vcpus: Option<u64>,
        has_devices: bool,
    ) -> Result<DomainInfo, DeviceInfoError> {
        let aliases = if has_devices {
            AliasMap::from_domain_xml(&record.xml_desc()?)?
        } else {
            AliasMap::default()
        };
        let cpu_map = match vcpus {
            Some(vcpus) => {
                let host_cpus = match state.host_cpus {
                    Some(n) => n,
                    None => {
                        let conn = state.conn.as_ref().ok_or(DeviceInfoError::NoConnection)?;
                        let n = conn.host_cpus()?;
                        state.host_cpus = Some(n);
                        n
                    }
                };
                let vcpus = u32::try_from(vcpus).unwrap_or(u32::MAX);
                Some(record.vcpu_pin_info(vcpus, host_cpus)?)
            }
            None => None,
        };
        Ok(DomainInfo {
            id,
            vcpus,
            aliases,
            cpu_map,
            read_at: std::time::Instant::now(),
            seen_in_pass: 0,
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum DeviceInfoError {
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error(transparent)]
    Xml(#[from] devices::XmlError),
    #[error("no connection")]
    NoConnection,
}
