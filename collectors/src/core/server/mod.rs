//! HTTP(S) endpoint: `/metrics`, `/healthz`, `/readyz`.
//!
//! Scrapes never collect: they serve the last published [`Snapshot`], encoded once per
//! format (and gzipped once, for clients that accept it) the first time it is asked for, so
//! a scrape every second costs a copy of a reference-counted buffer. A page is written
//! into the buffer of the page it replaces when no response holds that any more ([`pages`]).
//!
//! HTTP/1.1 only (KubeVirt disables HTTP/2 on its endpoints too, CVE-2023-44487), bounded
//! connections, timeouts on idle connections, request heads, response writes and TLS
//! handshakes, a request-head size limit ([`limits`]); a bad request or handshake ends that
//! connection and nothing else, and is counted.

pub mod limits;
mod pages;
pub mod tls;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OnceCell, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::core::format::negotiate::{Format, negotiate};
use crate::core::format::{json, openmetrics, text};
use crate::core::metric::Family;
use crate::core::selfmetrics::SelfMetrics;
pub use limits::ServerLimits;
use limits::{Connections, GuardedIo, Refusal, RefusalCounter, Slot};
use pages::{PageKind, SparePages};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for responses in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("encoding task failed: {0}")]
    Encode(String),
}

/// The serving certificate and key (PEM files), reloaded when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One published set of families, with its encodings cached. The families are shared with
/// the push sinks' batch of the same pass.
#[derive(Debug)]
pub struct Snapshot {
    families: Arc<Vec<Family>>,
    /// One per [`PageKind`], by its index.
    pages: [OnceCell<Encoded>; PageKind::COUNT],
    /// Where its pages' buffers come from and go back to, when it was published.
    spare: Option<Arc<SparePages>>,
}

#[derive(Debug)]
struct Encoded {
    plain: Bytes,
    gzip: OnceCell<Bytes>,
}

impl Encoded {
    fn new(plain: Vec<u8>) -> Self {
        Self {
            plain: Bytes::from(plain),
            gzip: OnceCell::new(),
        }
    }
}

/// Pages of at most this many samples are encoded on the task that asks: about 0.1 ms of
/// work (encoding measured at roughly 60 ns per sample), the most a task should run
/// between two awaits. Ten VMIs make about 1,000.
const INLINE_ENCODING_SAMPLES: usize = 2_000;

impl Snapshot {
    pub fn new(families: Vec<Family>) -> Self {
        Self::shared(Arc::new(families))
    }

    pub fn shared(families: Arc<Vec<Family>>) -> Self {
        Self {
            families,
            pages: Default::default(),
            spare: None,
        }
    }

    /// Encodes into the buffers of replaced pages, and gives its own back when dropped.
    fn reusing(mut self, spare: Arc<SparePages>) -> Self {
        self.spare = Some(spare);
        self
    }

    pub fn families(&self) -> &[Family] {
        &self.families
    }

    fn cell(&self, format: Format) -> &OnceCell<Encoded> {
        &self.pages[PageKind::of(format).index()]
    }

    /// The body in `format`, gzipped if `gzip`; encoded on a blocking thread the first time
    /// and cached for every later scrape of this snapshot.
    pub async fn body(self: &Arc<Self>, format: Format, gzip: bool) -> Result<Bytes, ServerError> {
        let encoded = self
            .cell(format)
            .get_or_try_init(|| self.encoded(format))
            .await?;
        if !gzip {
            return Ok(encoded.plain.clone());
        }
        let plain = encoded.plain.clone();
        encoded
            .gzip
            .get_or_try_init(|| blocking(move || gzip_bytes(&plain)))
            .await
            .cloned()
    }

    /// The page in `format`. A small page is written right here: the trip to the blocking
    /// pool (a thread woken, then parked again) would cost more than writing it.
    async fn encoded(self: &Arc<Self>, format: Format) -> Result<Encoded, ServerError> {
        let samples: usize = self.families.iter().map(|f| f.samples.len()).sum();
        if samples <= INLINE_ENCODING_SAMPLES {
            return Ok(Encoded::new(self.encode(format)));
        }
        let snapshot = Arc::clone(self);
        blocking(move || Encoded::new(snapshot.encode(format))).await
    }

    /// The page in `format`, written into the buffer of a replaced page when one waits.
    fn encode(&self, format: Format) -> Vec<u8> {
        let kind = PageKind::of(format);
        let mut buffer = self
            .spare
            .as_ref()
            .map(|spare| spare.take(kind))
            .unwrap_or_default();
        match kind {
            PageKind::Json => {
                json::encode_into(&mut buffer, &self.families);
                buffer
            }
            PageKind::Text | PageKind::OpenMetrics => {
                // Empty, so valid UTF-8.
                let mut out = String::from_utf8(buffer).unwrap_or_default();
                let encode_into = if kind == PageKind::Text {
                    text::encode_into
                } else {
                    openmetrics::encode_into
                };
                encode_into(&mut out, &self.families);
                out.into_bytes()
            }
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let Some(spare) = &self.spare else {
            return;
        };
        for (kind, cell) in PageKind::ALL.into_iter().zip(&mut self.pages) {
            if let Some(encoded) = cell.take() {
                spare.give_back(kind, encoded.plain);
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ServerError::Encode(e.to_string()))
}

fn gzip_bytes(plain: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(plain.len() / 8),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(plain);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// What the server serves: the current snapshot and whether the first collection is done.
/// Cloned into the collection loop (which publishes) and the server (which reads).
#[derive(Debug, Clone)]
pub struct Published {
    current: Arc<watch::Sender<Arc<Snapshot>>>,
    ready: Arc<AtomicBool>,
    spare: Arc<SparePages>,
}

impl Default for Published {
    fn default() -> Self {
        Self::new()
    }
}

impl Published {
    pub fn new() -> Self {
        Self {
            current: Arc::new(watch::Sender::new(Arc::new(Snapshot::new(Vec::new())))),
            ready: Arc::new(AtomicBool::new(false)),
            spare: Arc::default(),
        }
    }

    /// Replaces what `/metrics` serves.
    pub fn publish(&self, families: Vec<Family>) {
        self.publish_shared(Arc::new(families));
    }

    /// Replaces what `/metrics` serves with families shared with others (the push batch).
    pub fn publish_shared(&self, families: Arc<Vec<Family>>) {
        // Buffers nobody took over a whole interval go; then the replaced snapshot, if no
        // response holds it, gives its pages' buffers to the new one.
        self.spare.expire();
        let snapshot = Snapshot::shared(families).reusing(Arc::clone(&self.spare));
        self.current.send_replace(Arc::new(snapshot));
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.borrow().clone()
    }

    /// `/readyz` answers 200 from now on.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    local_addr: SocketAddr,
    limits: ServerLimits,
}

impl Server {
    /// Binds `addr` and, with `tls`, loads the certificate (a bad one is an error here; later
    /// bad replacements are not).
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<&TlsFiles>,
        limits: ServerLimits,
    ) -> Result<Self, ServerError> {
        let tls = match tls {
            Some(files) => Some(TlsAcceptor::from(tls::server_config(
                &files.cert,
                &files.key,
            )?)),
            None => None,
        };
        let bind_error = |source| ServerError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            tls,
            local_addr,
            limits,
        })
    }

    /// The bound address (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` is cancelled, then lets responses in flight finish (up to a
    /// few seconds). Refusals are counted in `metrics`, when given.
    pub async fn serve(
        self,
        published: Published,
        metrics: Option<SelfMetrics>,
        shutdown: CancellationToken,
    ) {
        let app = router(published);
        let counter = RefusalCounter::new(metrics);
        let connections = Connections::new(self.limits.max_connections, counter.clone());
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = connections.admit() else {
                tracing::debug!(%peer, "every connection is busy; closing the new one");
                continue;
            };
            let connection = Connection {
                slot,
                peer,
                limits: self.limits,
                counter: counter.clone(),
            };
            let (app, tls, shutdown) = (app.clone(), self.tls.clone(), shutdown.clone());
            tokio::spawn(connection.handle(stream, tls, app, shutdown));
            // Let the new connection read what it may already have sent before the next
            // accept. Until it has, it cannot be closed for room (`limits`), so on one
            // worker a burst of connections accepted back to back would fill the slots
            // with unread ones and the next ones would be refused, not let in.
            tokio::task::yield_now().await;
        }
        drop(self.listener);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, connections.drained()).await;
        if drained.is_err() {
            tracing::warn!("connections still open after the drain timeout; closing them");
        }
    }
}

/// One accepted connection and what it may hold.
struct Connection {
    slot: Slot,
    peer: SocketAddr,
    limits: ServerLimits,
    counter: RefusalCounter,
}

impl Connection {
    async fn handle(
        self,
        stream: TcpStream,
        tls: Option<TlsAcceptor>,
        app: Router,
        shutdown: CancellationToken,
    ) {
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&self.slot.state);
        let served = async {
            match tls {
                None => self.serve_http(stream, app, shutdown).await,
                Some(acceptor) => {
                    // A handshake in progress may be closed for room like an idle
                    // connection: its client waits for our answer, and the request
                    // comes only after it.
                    state.mark_read_from();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => self.serve_http(stream, app, shutdown).await,
                        Ok(Err(error)) => {
                            tracing::debug!(peer = %self.peer, %error, "TLS handshake failed");
                            self.counter.count(Refusal::TlsHandshake);
                        }
                        Err(_) => {
                            tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                            self.counter.count(Refusal::TlsHandshake);
                        }
                    }
                }
            }
        };
        // Eviction drops the connection at once: it is idle, nothing is lost.
        tokio::select! {
            () = served => {}
            () = state.evicted() => {}
        }
    }

    async fn serve_http<S>(&self, stream: S, app: Router, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let state = Arc::clone(&self.slot.state);
        let io = GuardedIo::new(stream, Arc::clone(&state), &self.limits);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = state.begin_request();
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await?;
                // The request stays in flight until its body is written (or abandoned).
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    axum::body::Body::new(TrackedBody {
                        body,
                        _in_flight: in_flight,
                    })
                }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.idle_timeout)
            .max_header_size(self.limits.max_header_bytes);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            let refusal = self
                .slot
                .state
                .cut_reason()
                .or_else(|| Refusal::of_hyper_error(&error));
            if let Some(refusal) = refusal {
                self.counter.count(refusal);
            }
            tracing::debug!(peer = %self.peer, %error, "connection ended with an error");
        }
    }
}

/// A response body that keeps its request counted as in flight until it is dropped (fully
/// written, or abandoned with the connection).
struct TrackedBody {
    body: axum::body::Body,
    _in_flight: limits::InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn router(published: Published) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(published)
}

/// The query of `/metrics`: `?format=json|text|openmetrics` overrides `Accept` (for
/// browsers and `curl` users).
#[derive(Debug, Default, serde::Deserialize)]
struct MetricsQuery {
    format: Option<String>,
}

async fn metrics(
    State(published): State<Published>,
    Query(query): Query<MetricsQuery>,
    headers: HeaderMap,
) -> Response {
    let format = match query.format.as_deref() {
        None => negotiate(headers.get(ACCEPT).and_then(|v| v.to_str().ok())),
        Some(name) => match Format::from_query(name) {
            Some(format) => format,
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    "unknown format; use format=text, format=openmetrics or format=json\n",
                )
                    .into_response();
            }
        },
    };
    let gzip = accepts_gzip(headers.get(ACCEPT_ENCODING));
    let snapshot = published.snapshot();
    match snapshot.body(format, gzip).await {
        Ok(body) => {
            let mut response = body.into_response();
            let headers = response.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            headers.insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
            if gzip {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        Err(error) => {
            tracing::error!(%error, "encoding the snapshot failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(published): State<Published>) -> Response {
    if published.is_ready() {
        "ok\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "first collection not finished\n",
        )
            .into_response()
    }
}

/// Whether `Accept-Encoding` lists `gzip` (or `*`) with a non-zero q.
fn accepts_gzip(header: Option<&HeaderValue>) -> bool {
    let Some(value) = header.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    value.split(',').any(|coding| {
        let mut parts = coding.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q_zero = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !q_zero
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gzip_negotiation() {
        let header = |s: &'static str| Some(HeaderValue::from_static(s));
        assert!(accepts_gzip(header("gzip").as_ref()));
        assert!(accepts_gzip(header("deflate, GZIP;q=0.5").as_ref()));
        assert!(accepts_gzip(header("*").as_ref()));
        assert!(!accepts_gzip(header("gzip;q=0").as_ref()));
        assert!(!accepts_gzip(header("identity").as_ref()));
        assert!(!accepts_gzip(None));
    }

    fn families(value: f64) -> Vec<Family> {
        use crate::core::labels::label;
        use crate::core::metric::{MetricType, Sample};
        let mut family = Family::new("a_gauge", "A gauge.", MetricType::Gauge);
        family.samples = (0..1000)
            .map(|i| Sample::new([(label("i"), i.to_string().into())], value))
            .collect();
        vec![family]
    }

    #[tokio::test]
    async fn a_replaced_page_nobody_holds_is_the_next_pages_buffer() {
        let published = Published::new();
        published.publish(families(1.0));
        let old = published
            .snapshot()
            .body(Format::Text, false)
            .await
            .unwrap();
        let at = old.as_ptr();
        drop(old);
        published.publish(families(2.0));
        let new = published
            .snapshot()
            .body(Format::Text, false)
            .await
            .unwrap();
        assert_eq!(new, text::encode(&families(2.0)).into_bytes());
        assert_eq!(new.as_ptr(), at, "written into the replaced page's memory");
    }

    #[tokio::test]
    async fn a_page_still_being_sent_is_not_reused() {
        let published = Published::new();
        published.publish(families(1.0));
        let in_flight = published.snapshot().body(Format::OpenMetrics1, false).await;
        let in_flight = in_flight.unwrap();
        published.publish(families(2.0));
        let new = published.snapshot().body(Format::OpenMetrics1, false).await;
        assert_eq!(
            new.unwrap(),
            openmetrics::encode(&families(2.0)).into_bytes()
        );
        assert_eq!(in_flight, openmetrics::encode(&families(1.0)).into_bytes());
    }
}
