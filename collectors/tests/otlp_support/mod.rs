//! An OTLP receiver for the tests, built only on the official protocol definitions (the
//! `opentelemetry-proto` crate's messages and its tonic `MetricsService` server): it decodes
//! every request of both transports and answers as the test tells it.

#![allow(clippy::unwrap_used, dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;

/// One decoded request and the headers (HTTP) or metadata (gRPC) it came with.
#[derive(Debug, Clone)]
pub struct Received {
    pub request: ExportMetricsServiceRequest,
    pub headers: HeaderMap,
}

/// How the receiver answers the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// Success with `partial_success` (3 points rejected).
    Partial,
    /// HTTP: this status; gRPC: this code.
    HttpStatus(u16),
    Grpc(tonic::Code),
    /// RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` in the details (recovery possible).
    GrpcExhaustedRetryLater,
    /// Never answer.
    Hang,
}

#[derive(Clone)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    reply: Arc<Mutex<Reply>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Dropping the receiver stops it as a dying process would: the listener closes and every
/// open connection is told to go away, so a client's next request finds nobody.
impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

impl Receiver {
    /// Waits until the receiver has stopped.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let task = &mut self.task;
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Receiver {
    /// OTLP/HTTP on `/v1/metrics` only (another path answers 404).
    pub async fn http() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self::http_on(listener, addr)
    }

    /// OTLP/HTTP on any listener (e.g. one that speaks TLS).
    pub fn http_on<L>(listener: L, addr: SocketAddr) -> Self
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let shared = Shared::new();
        let app = Router::new()
            .route("/v1/metrics", post(http_export))
            .with_state(shared.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            shared,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// OTLP/gRPC, accepting gzip.
    pub async fn grpc() -> Self {
        Self::grpc_with(None).await
    }

    /// OTLP/gRPC over TLS with `server`'s certificate, requiring a client certificate
    /// signed by `client_ca`.
    pub async fn grpc_tls(server: &Leaf, client_ca: &str) -> Self {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &server.cert_pem,
                &server.key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(client_ca));
        Self::grpc_with(Some(tls)).await
    }

    async fn grpc_with(tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared::new();
        let service = MetricsServiceServer::new(GrpcReceiver(shared.clone()))
            .accept_compressed(CompressionEncoding::Gzip);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut builder = builder;
            builder
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            shared,
            shutdown: Some(shutdown),
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn reply(&self, reply: Reply) {
        *self.shared.reply.lock().unwrap() = reply;
    }

    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.shared.received.lock().unwrap())
    }
}

impl Shared {
    fn new() -> Self {
        Self {
            received: Arc::default(),
            reply: Arc::new(Mutex::new(Reply::Ok)),
        }
    }

    fn record(&self, request: ExportMetricsServiceRequest, headers: HeaderMap) -> Reply {
        self.received
            .lock()
            .unwrap()
            .push(Received { request, headers });
        *self.reply.lock().unwrap()
    }
}

fn response(reply: Reply) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (reply == Reply::Partial).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: 3,
            error_message: "3 points had no value".to_owned(),
        }),
    }
}

async fn http_export(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let raw = match headers.get(header::CONTENT_ENCODING) {
        Some(encoding) if encoding == "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        _ => body.to_vec(),
    };
    let request = match ExportMetricsServiceRequest::decode(&raw[..]) {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    let reply = shared.record(request, headers);
    match reply {
        Reply::Ok | Reply::Partial => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            response(reply).encode_to_vec(),
        )
            .into_response(),
        Reply::HttpStatus(code) => (
            StatusCode::from_u16(code).unwrap(),
            format!("receiver says {code}"),
        )
            .into_response(),
        Reply::Grpc(_) | Reply::GrpcExhaustedRetryLater => {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
    }
}

struct GrpcReceiver(Shared);

/// `google.rpc.Status` details holding one `google.rpc.RetryInfo` (retry in 1 s), encoded
/// from the messages as googleapis defines them (google/rpc/status.proto,
/// error_details.proto; google/protobuf/any.proto, duration.proto).
fn retry_info_details() -> Vec<u8> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Duration {
        #[prost(int64, tag = "1")]
        seconds: i64,
        #[prost(int32, tag = "2")]
        nanos: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        retry_delay: Option<Duration>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Any {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        value: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<Any>,
    }
    let retry = RetryInfo {
        retry_delay: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
    };
    Status {
        code: tonic::Code::ResourceExhausted as i32,
        message: "receiver says later".to_owned(),
        details: vec![Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".to_owned(),
            value: retry.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

#[path = "../common/test_ca.rs"]
mod test_ca;

#[allow(unused_imports)]
pub use test_ca::{Leaf, TestCa, rustls_server_config};

#[tonic::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let reply = self.0.record(request.into_inner(), headers);
        match reply {
            Reply::Ok | Reply::Partial => Ok(tonic::Response::new(response(reply))),
            Reply::Grpc(code) => Err(tonic::Status::new(code, "receiver says no")),
            Reply::GrpcExhaustedRetryLater => Err(tonic::Status::with_details(
                tonic::Code::ResourceExhausted,
                "receiver says later",
                retry_info_details().into(),
            )),
            Reply::HttpStatus(_) => Err(tonic::Status::internal("not an HTTP receiver")),
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(tonic::Status::internal("woke up"))
            }
        }
    }
}
