//! A client for one virt-launcher's command socket, and a pool that keeps them.
//!
//! Like virt-handler's cmd client: gRPC without TLS over the unix socket with authority
//! `localhost`, `CmdInfo/Info` first to agree on a cmd version (the highest the launcher
//! offers that we speak, as KubeVirt's `GetHighestCompatibleVersion` picks it; only version
//! 1 exists), then `kubevirt.cmd.v1.Cmd` calls with per-call timeouts (5 s for the quick
//! calls, 20 s for the dirty-rate calculation). Unlike virt-handler, which dials and
//! negotiates on every scrape, a connection is kept per socket across passes and dropped
//! when it misbehaves; and the timeouts are our timers only, not sent (see [`request`]).
//!
//! The launcher reports most failures in-band (`Response{success: false}` with gRPC status
//! OK); newer launchers also answer with gRPC errors. Both become a [`ClientError`], and so
//! does a reply that does not decode as KubeVirt's message (a protocol mismatch), with what
//! the launcher offered printed as it is.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use foldhash::HashMap;
use futures::future::{OptionFuture, join3, maybe_done};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Uri};

use super::proto::cmd_v1::{self, cmd_client::CmdClient};
use super::proto::info::{CmdInfoRequest, cmd_info_client::CmdInfoClient};

/// The cmd protocol versions this client speaks (virt-handler's `supportedCmdVersions`).
pub const SUPPORTED_CMD_VERSIONS: [u32; 1] = [1];

/// Per-call limits; a call never outlives the deadline it is given either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcTimeouts {
    /// Dialling the socket (virt-handler: 2 s).
    pub connect: Duration,
    /// `Info`, `GetDomainStats`, `GetFilesystems` (virt-handler: `shortTimeout`, 5 s).
    pub short: Duration,
    /// `GetDomainDirtyRateStats`, which samples for a second (virt-handler: `longTimeout`, 20 s).
    pub long: Duration,
}

impl Default for RpcTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            short: Duration::from_secs(5),
            long: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {}: {source}", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call} timed out after {after:?}")]
    Timeout { call: &'static str, after: Duration },
    #[error("{call} failed: {status}")]
    Rpc {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("launcher failed {call}: {message}")]
    Launcher { call: &'static str, message: String },
    #[error("launcher offers cmd versions {offered:?}; we support {SUPPORTED_CMD_VERSIONS:?}")]
    Version { offered: Vec<u32> },
    /// The reply is not KubeVirt's message as we declare it: a field of another type than
    /// ours, a malformed payload. Redialling will not help.
    #[error("{call} reply does not decode as KubeVirt's message: {detail}")]
    Protocol { call: &'static str, detail: String },
}

impl ClientError {
    /// The bounded problem kind for self-metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Timeout { .. } => "timeout",
            Self::Rpc { .. } => "rpc",
            Self::Launcher { .. } => "launcher",
            Self::Version { .. } => "version",
            Self::Protocol { .. } => "protocol",
        }
    }

    /// Whether the launcher does not know the call at all (`UNIMPLEMENTED`), e.g.
    /// `GetDomainDirtyRateStats` on a KubeVirt v1.5 launcher, which predates it.
    pub fn is_unimplemented(&self) -> bool {
        matches!(self, Self::Rpc { status, .. } if status.code() == tonic::Code::Unimplemented)
    }

    /// Whether the connection that produced this error should be thrown away. An in-band
    /// failure or an unimplemented call says nothing bad about the connection; a hang or a
    /// transport failure does.
    pub fn breaks_connection(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } | Self::Version { .. } => true,
            Self::Launcher { .. } | Self::Protocol { .. } => false,
            Self::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
            ),
        }
    }
}

/// A negotiated connection to one launcher. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct LauncherClient {
    cmd: CmdClient<Channel>,
    timeouts: RpcTimeouts,
}

impl LauncherClient {
    /// Dials `socket` and agrees on a cmd version, all before `deadline`.
    pub async fn connect(
        socket: &Path,
        timeouts: RpcTimeouts,
        deadline: Instant,
    ) -> Result<Self, ClientError> {
        let channel = dial(socket, limit(timeouts.connect, deadline)).await?;
        negotiate(channel.clone(), limit(timeouts.short, deadline)).await?;
        Ok(Self {
            cmd: CmdClient::new(channel),
            timeouts,
        })
    }

    /// What virt-handler asks of a launcher on a scrape: `GetDomainStats`, `GetFilesystems`
    /// and, when `dirty_rate` is set, `GetDomainDirtyRateStats`, all at once on this
    /// connection and all by `deadline`.
    ///
    /// One timer bounds the three calls until the quick ones' timeout; only a dirty-rate
    /// call still running then gets a timer of its own, for the rest of its longer one. (A
    /// timer per call measured about 1 µs per VMI and pass in registering and cancelling.)
    pub async fn scrape(&self, dirty_rate: bool, deadline: Instant) -> Answers {
        let started = Instant::now();
        let quick = Budget::until(self.timeouts.short, deadline, started);
        let slow = Budget::until(self.timeouts.long, deadline, started);
        let cmd = &self.cmd;
        let stats = domain_stats(cmd.clone(), quick);
        let filesystems = filesystems(cmd.clone(), quick);
        let dirty = OptionFuture::from(dirty_rate.then(|| dirty_rate_mbs(cmd.clone(), slow)));
        let (mut stats, mut filesystems, mut dirty) = (
            pin!(maybe_done(stats)),
            pin!(maybe_done(filesystems)),
            pin!(maybe_done(dirty)),
        );
        let all = join3(stats.as_mut(), filesystems.as_mut(), dirty.as_mut());
        if tokio::time::timeout(quick.after, all).await.is_err() && slow.after > quick.after {
            let rest = slow.after.saturating_sub(started.elapsed());
            let _ = tokio::time::timeout(rest, dirty.as_mut()).await;
        }
        let timeout = |call, after| ClientError::Timeout { call, after };
        Answers {
            stats: stats
                .take_output()
                .unwrap_or_else(|| Err(timeout(STATS, quick.after))),
            filesystems: filesystems
                .take_output()
                .unwrap_or_else(|| Err(timeout(FILESYSTEMS, quick.after))),
            dirty_rate: dirty
                .take_output()
                .unwrap_or_else(|| Some(Err(timeout(DIRTY_RATE, slow.after)))),
        }
    }
}

const STATS: &str = "GetDomainStats";
const FILESYSTEMS: &str = "GetFilesystems";
const DIRTY_RATE: &str = "GetDomainDirtyRateStats";

/// The timeout a call runs under, counted from when it started.
#[derive(Debug, Clone, Copy)]
struct Budget {
    after: Duration,
    started: Instant,
}

impl Budget {
    /// `timeout`, or less if `deadline` comes sooner.
    fn until(timeout: Duration, deadline: Instant, started: Instant) -> Self {
        Self {
            after: timeout.min(deadline.saturating_duration_since(started)),
            started,
        }
    }
}

/// The `stats.DomainStats` JSON; `None` when the launcher has no domain (yet, or any
/// more: it answers with "" or `null` then).
async fn domain_stats(
    mut cmd: CmdClient<Channel>,
    budget: Budget,
) -> Result<Option<String>, ClientError> {
    let reply = classify(STATS, budget, cmd.get_domain_stats(request()).await)?;
    check(STATS, reply.response)?;
    let json = reply.domain_stats;
    let trimmed = json.trim();
    Ok((!trimmed.is_empty() && trimmed != "null").then_some(json))
}

async fn filesystems(mut cmd: CmdClient<Channel>, budget: Budget) -> Result<String, ClientError> {
    let reply = classify(FILESYSTEMS, budget, cmd.get_filesystems(request()).await)?;
    check(FILESYSTEMS, reply.response)?;
    Ok(reply.guest_filesystems_response)
}

async fn dirty_rate_mbs(mut cmd: CmdClient<Channel>, budget: Budget) -> Result<i64, ClientError> {
    let reply = cmd.get_domain_dirty_rate_stats(request()).await;
    let reply = classify(DIRTY_RATE, budget, reply)?;
    check(DIRTY_RATE, reply.response)?;
    Ok(reply.dirty_rate_mbs)
}

/// A launcher's answers to one scrape, each as it came.
#[derive(Debug)]
pub struct Answers {
    /// The `stats.DomainStats` JSON, or `None` when the launcher has no domain.
    pub stats: Result<Option<String>, ClientError>,
    /// The guest agent's filesystem list as JSON.
    pub filesystems: Result<String, ClientError>,
    /// The domain's dirty page rate in MiB/s; `None` when it was not asked for.
    pub dirty_rate: Option<Result<i64, ClientError>>,
}

/// The smaller of a call's own timeout and what is left until `deadline`.
fn limit(timeout: Duration, deadline: Instant) -> Duration {
    timeout.min(deadline.saturating_duration_since(Instant::now()))
}

/// An empty request, without a `grpc-timeout`. Our own timer bounds every call, and
/// dropping a call resets its stream, which cancels the launcher's context as its deadline
/// would. The header would cost every launcher a deadline timer per call, three per scrape
/// (measured at 400 VMIs: the whole pass 3–4% slower with it, and our CPU too).
fn request() -> tonic::Request<cmd_v1::EmptyRequest> {
    tonic::Request::new(cmd_v1::EmptyRequest {})
}

/// One call under a timer of its own.
async fn bounded<T>(
    call: &'static str,
    after: Duration,
    reply: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ClientError> {
    let started = Instant::now();
    match tokio::time::timeout(after, reply).await {
        Err(_) => Err(ClientError::Timeout { call, after }),
        Ok(reply) => classify(call, Budget { after, started }, reply),
    }
}

/// A call's result, as a [`ClientError`] where it failed.
fn classify<T>(
    call: &'static str,
    Budget { after, started }: Budget,
    reply: Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, ClientError> {
    match reply {
        // A server with a deadline of its own may answer with an error just before our
        // timer fires: that is still a timeout.
        Err(status)
            if status.code() == tonic::Code::DeadlineExceeded || started.elapsed() >= after =>
        {
            Err(ClientError::Timeout { call, after })
        }
        Err(status) if is_decode_failure(&status) => Err(ClientError::Protocol {
            call,
            detail: status.message().to_owned(),
        }),
        Err(status) => Err(ClientError::Rpc {
            call,
            status: Box::new(status),
        }),
        Ok(reply) => Ok(reply.into_inner()),
    }
}

/// Whether tonic could not decode the reply into our message type (it reports that as
/// `INTERNAL` with prost's error, which names the message and field).
fn is_decode_failure(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Internal
        && status
            .message()
            .starts_with("failed to decode Protobuf message")
}

/// Turns an in-band `Response{success: false}` into an error. A missing `Response` is
/// accepted, as virt-handler does.
fn check(call: &'static str, response: Option<cmd_v1::Response>) -> Result<(), ClientError> {
    match response {
        Some(response) if !response.success => Err(ClientError::Launcher {
            call,
            message: response.message,
        }),
        _ => Ok(()),
    }
}

async fn dial(socket: &Path, after: Duration) -> Result<Channel, ClientError> {
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    });
    // The URI only supplies the `:authority` header; the connector ignores it. No
    // `connect_timeout` on the endpoint: our timer bounds the dial, and tonic would wrap the
    // connection in a timeout stream that every read and write of every call goes through
    // (0.1 ms per pass of 400 VMIs in perf). A reconnect tonic attempts later is bounded by
    // the call that waits on it.
    let endpoint = Endpoint::from_static("http://localhost");
    match tokio::time::timeout(after, endpoint.connect_with_connector(connector)).await {
        Err(_) => Err(ClientError::Timeout {
            call: "connect",
            after,
        }),
        Ok(Err(source)) => Err(ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        }),
        Ok(Ok(channel)) => Ok(channel),
    }
}

async fn negotiate(channel: Channel, after: Duration) -> Result<(), ClientError> {
    const CALL: &str = "Info";
    let mut info = CmdInfoClient::new(channel);
    let reply = bounded(CALL, after, info.info(CmdInfoRequest {})).await?;
    let offered = reply.supported_cmd_versions;
    match highest_compatible(&offered, &SUPPORTED_CMD_VERSIONS) {
        // Only cmd v1 exists; a future version would pick its own client here.
        Some(1) => Ok(()),
        Some(_) | None => Err(ClientError::Version { offered }),
    }
}

/// The highest version the launcher offers that we support, as KubeVirt's
/// `GetHighestCompatibleVersion` picks it.
pub fn highest_compatible(offered: &[u32], supported: &[u32]) -> Option<u32> {
    offered
        .iter()
        .copied()
        .filter(|v| supported.contains(v))
        .max()
}

/// Negotiated clients by socket path, reused across passes.
///
/// A pass looks each VMI's socket up once ([`ClientPool::kept`]), which also marks the
/// connection as in use by that pass; the connections no pass has used since are then
/// dropped by their mark ([`ClientPool::keep_used_since`]), without hashing every path again.
/// (Socket paths are about 110 bytes; four hash-and-compare lookups of them per VMI per
/// pass measured about 1 µs per VMI.)
#[derive(Debug, Default)]
pub struct ClientPool {
    clients: Mutex<HashMap<OsString, Kept>>,
    passes: AtomicU64,
}

#[derive(Debug)]
struct Kept {
    client: LauncherClient,
    /// The last pass that used it.
    used_by: u64,
}

impl ClientPool {
    /// A new pass's mark, later than every earlier pass's.
    pub fn begin_pass(&self) -> u64 {
        self.passes.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The kept client for `socket`, if any, marked as used by `pass`.
    pub fn kept(&self, socket: &Path, pass: u64) -> Option<LauncherClient> {
        let mut clients = self.lock();
        let kept = clients.get_mut(socket.as_os_str())?;
        kept.used_by = kept.used_by.max(pass);
        Some(kept.client.clone())
    }

    /// A new client for `socket`, kept for later passes and marked as used by `pass`.
    pub async fn connect(
        &self,
        socket: &Path,
        timeouts: RpcTimeouts,
        deadline: Instant,
        pass: u64,
    ) -> Result<LauncherClient, ClientError> {
        let client = LauncherClient::connect(socket, timeouts, deadline).await?;
        let kept = Kept {
            client: client.clone(),
            used_by: pass,
        };
        self.lock().insert(socket.as_os_str().to_owned(), kept);
        Ok(client)
    }

    /// Drops the connection to `socket`; the next pass dials again.
    pub fn forget(&self, socket: &Path) {
        self.lock().remove(socket.as_os_str());
    }

    /// Drops the connections that neither `pass` nor a later pass has used (VMIs gone or
    /// moved). A pass that runs alongside a later one keeps what the later one uses.
    pub fn keep_used_since(&self, pass: u64) {
        self.lock().retain(|_, kept| kept.used_by >= pass);
    }

    /// How many connections are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OsString, Kept>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_highest_version_both_sides_know() {
        assert_eq!(highest_compatible(&[1], &[1]), Some(1));
        assert_eq!(highest_compatible(&[3, 1, 2], &[1, 2]), Some(2));
        assert_eq!(highest_compatible(&[2], &[1]), None);
        assert_eq!(highest_compatible(&[], &[1]), None);
    }

    #[test]
    fn a_version_mismatch_prints_the_numbers() {
        let err = ClientError::Version {
            offered: vec![2, 3],
        };
        assert_eq!(
            err.to_string(),
            "launcher offers cmd versions [2, 3]; we support [1]"
        );
        assert_eq!(err.kind(), "version");
    }
}
