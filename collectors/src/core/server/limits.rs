//! What one client may hold of the server, and what happens past it.
//!
//! - At most `max_connections` connections. When all are taken, the one idle the longest
//!   (no request in progress: a keep-alive connection between scrapes, a client that never
//!   sent anything, a slow request head, a response handed to the socket that its reader
//!   does not read) is closed to make room; only when every connection is busy with a
//!   request, or not read from yet, is the new one refused. So idle hoarders cannot lock
//!   Prometheus and the kubelet's probes out, and a probe that has sent its request is
//!   never closed before the server has read it (`tests/server_slots.rs`).
//! - hyper's header read timeout (`idle_timeout`): a connection must deliver a complete
//!   request head within this long of opening or of its previous response.
//! - `header_timeout`, from the first byte of a request head to its end (slow loris).
//! - `write_timeout`: a response write that makes no progress for this long ends the
//!   connection (a reader that never reads).
//! - `max_header_bytes`: larger request heads get 431 (hyper's own limit).
//!
//! Everything refused or cut off is counted by reason
//! (`kubevirt_metrics_sidecar_http_refused_total{reason}`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::core::selfmetrics::SelfMetrics;

/// The server's limits; [`Default`] is what the flags default to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub max_header_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Why a connection or request was refused or cut off (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every connection slot was busy with a request.
    ConnectionLimit,
    /// Closed while idle to make room for a new connection.
    IdleEvicted,
    /// No complete request head within the idle timeout.
    IdleTimeout,
    /// A request head took longer than the header timeout.
    HeaderTimeout,
    /// A response write made no progress within the write timeout.
    WriteTimeout,
    /// The request head was larger than the limit (answered 431).
    HeaderTooLarge,
    /// Not HTTP/1 (answered 400 where possible).
    Malformed,
    /// The TLS handshake failed or took too long.
    TlsHandshake,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLimit => "connection_limit",
            Self::IdleEvicted => "idle_evicted",
            Self::IdleTimeout => "idle_timeout",
            Self::HeaderTimeout => "header_timeout",
            Self::WriteTimeout => "write_timeout",
            Self::HeaderTooLarge => "header_too_large",
            Self::Malformed => "malformed",
            Self::TlsHandshake => "tls_handshake",
        }
    }

    /// Classifies how hyper ended a connection, if it was a refusal.
    pub fn of_hyper_error(error: &hyper::Error) -> Option<Self> {
        if error.is_parse_too_large() {
            Some(Self::HeaderTooLarge)
        } else if error.is_parse() {
            Some(Self::Malformed)
        } else if error.is_timeout() {
            Some(Self::IdleTimeout)
        } else {
            None
        }
    }
}

/// Counts refusals when the server has self-metrics to count them in.
#[derive(Clone, Default)]
pub struct RefusalCounter(Option<SelfMetrics>);

impl RefusalCounter {
    pub fn new(metrics: Option<SelfMetrics>) -> Self {
        Self(metrics)
    }

    pub fn count(&self, refusal: Refusal) {
        tracing::debug!(
            reason = refusal.as_str(),
            "HTTP connection refused or cut off"
        );
        if let Some(metrics) = &self.0 {
            metrics.count_http_refused(refusal.as_str());
        }
    }

    fn set_open(&self, open: usize) {
        if let Some(metrics) = &self.0 {
            metrics.set_http_connections(open);
        }
    }
}

/// What the server knows of one connection.
#[derive(Debug)]
pub struct ConnectionState {
    /// Requests whose response has not been fully written yet.
    in_flight: AtomicU32,
    /// Requests started, ever (tells the IO wrapper that a head is complete).
    started: AtomicU64,
    /// When it last finished a response (or opened), in ms since the registry's epoch.
    last_active_ms: AtomicU64,
    /// Set by the IO wrapper when one of its timeouts ended the connection.
    cut: AtomicU8,
    /// Whether everything the client had sent was once read (a read found nothing more,
    /// or a request began), or its TLS handshake began. Until then the connection is not
    /// idle but new: what its client already sent has not been looked at.
    read_from: AtomicBool,
    /// Cancelled to evict the connection.
    evict: CancellationToken,
    epoch: Instant,
}

const CUT_NONE: u8 = 0;
const CUT_HEADER: u8 = 1;
const CUT_WRITE: u8 = 2;

impl ConnectionState {
    fn new(epoch: Instant) -> Self {
        let state = Self {
            in_flight: AtomicU32::new(0),
            started: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
            cut: AtomicU8::new(CUT_NONE),
            read_from: AtomicBool::new(false),
            evict: CancellationToken::new(),
            epoch,
        };
        state.touch();
        state
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Idle, and read from at least once: closing it loses nothing its client sent.
    fn is_evictable(&self) -> bool {
        self.read_from.load(Ordering::Acquire) && self.is_idle()
    }

    /// Nothing its client sent is left unread (see `read_from`); called by the IO wrapper,
    /// and by the server as a TLS handshake begins (the wrapper does not see its reads).
    pub fn mark_read_from(&self) {
        self.read_from.store(true, Ordering::Release);
    }

    /// A request head is complete and is being answered; the guard ends it when the
    /// response has been written (or abandoned).
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.mark_read_from();
        InFlight(Arc::clone(self))
    }

    /// Completes when this connection is to be closed to make room.
    pub fn evicted(&self) -> impl Future<Output = ()> + '_ {
        self.evict.cancelled()
    }

    /// Which of the IO wrapper's timeouts, if any, ended the connection.
    pub fn cut_reason(&self) -> Option<Refusal> {
        match self.cut.load(Ordering::Acquire) {
            CUT_HEADER => Some(Refusal::HeaderTimeout),
            CUT_WRITE => Some(Refusal::WriteTimeout),
            _ => None,
        }
    }
}

/// Held while one request is answered.
#[derive(Debug)]
pub struct InFlight(Arc<ConnectionState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections, for the limit and for eviction.
pub struct Connections {
    max: usize,
    epoch: Instant,
    open: Mutex<Registry>,
    emptied: Notify,
    counter: RefusalCounter,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    by_id: HashMap<u64, Arc<ConnectionState>>,
}

/// A connection's place in [`Connections`]; leaving it frees the place.
pub struct Slot {
    id: u64,
    pub state: Arc<ConnectionState>,
    connections: Arc<Connections>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.release(self.id);
    }
}

impl Connections {
    pub fn new(max: usize, counter: RefusalCounter) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            epoch: Instant::now(),
            open: Mutex::new(Registry::default()),
            emptied: Notify::new(),
            counter,
        })
    }

    /// A place for a new connection: a free one, or the one of the connection idle the
    /// longest (which is told to close); `None` when every connection is busy or new.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut registry = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if registry.by_id.len() >= self.max {
            let oldest_idle = registry
                .by_id
                .iter()
                .filter(|(_, state)| state.is_evictable())
                .min_by_key(|(_, state)| state.last_active_ms.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            let Some(id) = oldest_idle else {
                drop(registry);
                self.counter.count(Refusal::ConnectionLimit);
                return None;
            };
            if let Some(state) = registry.by_id.remove(&id) {
                state.evict.cancel();
            }
            self.counter.count(Refusal::IdleEvicted);
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let state = Arc::new(ConnectionState::new(self.epoch));
        registry.by_id.insert(id, Arc::clone(&state));
        self.counter.set_open(registry.by_id.len());
        Some(Slot {
            id,
            state,
            connections: Arc::clone(self),
        })
    }

    fn release(&self, id: u64) {
        let mut registry = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        registry.by_id.remove(&id);
        self.counter.set_open(registry.by_id.len());
        if registry.by_id.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Waits until no connection is open (registered before checking, so no wake-up is lost).
    pub async fn drained(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .by_id
                .is_empty()
            {
                return;
            }
            emptied.await;
        }
    }
}

/// The connection's byte stream with the header and write timeouts applied.
pub struct GuardedIo<S> {
    inner: S,
    state: Arc<ConnectionState>,
    header_timeout: Duration,
    write_timeout: Duration,
    /// Armed at the first byte of a request head; `started` as it was then.
    head: Option<(Pin<Box<Sleep>>, u64)>,
    write: Option<Pin<Box<Sleep>>>,
}

impl<S> GuardedIo<S> {
    pub fn new(inner: S, state: Arc<ConnectionState>, limits: &ServerLimits) -> Self {
        Self {
            inner,
            state,
            header_timeout: limits.header_timeout,
            write_timeout: limits.write_timeout,
            head: None,
            write: None,
        }
    }

    fn cut(&self, code: u8, what: &str) -> io::Error {
        self.state.cut.store(code, Ordering::Release);
        io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
    }

    /// A write is pending: starts the write timer, and gives the error once it has run out.
    fn write_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.write_timeout;
        let timer = self
            .write
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(self.cut(CUT_WRITE, "response write")));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let started = this.state.started.load(Ordering::Acquire);
        if this.head.as_ref().is_some_and(|(_, at)| *at != started) {
            // The head completed: hyper has started answering it.
            this.head = None;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if polled.is_pending() {
            // Everything its client sent so far has been read and parsed: a complete head
            // has begun a request already, so closing the connection now loses nothing.
            this.state.mark_read_from();
        }
        let got_bytes = buf.filled().len() > before;
        if got_bytes && this.head.is_none() && this.state.is_idle() {
            let timer = Box::pin(tokio::time::sleep(this.header_timeout));
            this.head = Some((timer, started));
        }
        if let Some((timer, _)) = &mut this.head
            && timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(this.cut(CUT_HEADER, "request head")));
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Pending => self.write_stalled(cx),
            ready => {
                self.write = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.write_stalled(cx),
            ready => {
                self.write = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.write_stalled(cx),
            ready => {
                self.write = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.write_stalled(cx),
            ready => {
                self.write = None;
                ready
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn full(max: usize) -> (Arc<Connections>, Vec<Slot>) {
        let connections = Connections::new(max, RefusalCounter::default());
        let slots = (0..max).map(|_| connections.admit().unwrap()).collect();
        (connections, slots)
    }

    fn is_evicted(slot: &Slot) -> bool {
        slot.state.evict.is_cancelled()
    }

    #[test]
    fn a_connection_not_read_from_is_never_closed_for_room() {
        let (connections, slots) = full(2);
        assert!(connections.admit().is_none(), "both are unread: refuse");
        assert!(!slots.iter().any(is_evicted));
    }

    #[test]
    fn the_idle_connection_that_was_read_from_makes_room() {
        let (connections, slots) = full(3);
        slots[1].state.mark_read_from();
        let _newcomer = connections.admit().unwrap();
        assert!(is_evicted(&slots[1]));
        assert!(!is_evicted(&slots[0]) && !is_evicted(&slots[2]));
    }

    #[test]
    fn a_connection_answering_a_request_is_not_closed_for_room() {
        let (connections, slots) = full(1);
        let in_flight = slots[0].state.begin_request();
        assert!(connections.admit().is_none(), "busy: refuse");
        drop(in_flight);
        // The request began, so it was read from; now it is idle again.
        assert!(connections.admit().is_some());
        assert!(is_evicted(&slots[0]));
    }
}
