//! A fake virt-launcher: KubeVirt's `CmdInfo` and `Cmd` (v1) gRPC services on a unix
//! socket laid out where the kubelet puts a launcher pod's `sockets` emptyDir. Each call
//! answers as scripted, including never, in-band failure, and gRPC errors.
//!
//! The replies are encoded from `testdata/launcher-protocol/` (KubeVirt's own field numbers
//! and types, per release) by a hand-written encoder, never from the collector's generated
//! code: a type we got wrong in `collectors/proto` then fails the tests instead of being
//! shared by client and fake. The fake also serves only the methods the release has (a
//! v1.5 launcher has no `GetDomainDirtyRateStats`). Dropping it stops the server.

#![allow(dead_code, clippy::unwrap_used)]

#[path = "launcher_fixture.rs"]
pub mod launcher_fixture;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut};
use kubevirt_metrics_collectors::handler::launcher::socket;
use launcher_fixture::{Method, Protocol, Value, encode};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Response, Status};

/// How one call is answered.
#[derive(Debug, Clone)]
pub enum Reply<T> {
    Value(T),
    /// `Response{success: false, message}` with gRPC status OK, as the launcher does.
    InBandFailure(String),
    /// A gRPC error status, as newer launchers do.
    Status(tonic::Code, String),
    /// Answers with the value after a while, as the real dirty-rate call does after
    /// sampling for a second.
    Late(Duration, T),
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Script {
    /// KubeVirt's protocol the fake speaks: a release from the fixture, which a test may
    /// alter to play a launcher that sends something else.
    pub protocol: Protocol,
    pub cmd_versions: Vec<u32>,
    pub domain_stats: Reply<String>,
    pub filesystems: Reply<String>,
    pub dirty_rate_mbs: Reply<i64>,
}

impl Script {
    pub fn serving(domain_stats: &str, filesystems: &str, dirty_rate_mbs: i64) -> Self {
        Self {
            protocol: launcher_fixture::release(launcher_fixture::NEWEST),
            cmd_versions: vec![1],
            domain_stats: Reply::Value(domain_stats.to_owned()),
            filesystems: Reply::Value(filesystems.to_owned()),
            dirty_rate_mbs: Reply::Value(dirty_rate_mbs),
        }
    }

    pub fn hanging() -> Self {
        Self {
            domain_stats: Reply::Hang,
            filesystems: Reply::Hang,
            dirty_rate_mbs: Reply::Hang,
            ..Self::serving("", "", 0)
        }
    }

    /// The same, spoken as KubeVirt `release` (e.g. `v1.5`) defines the protocol.
    pub fn spoken_as(mut self, release: &str) -> Self {
        self.protocol = launcher_fixture::release(release);
        self
    }
}

/// How often each call was made.
#[derive(Debug, Default)]
pub struct Calls {
    pub info: AtomicUsize,
    pub domain_stats: AtomicUsize,
    pub filesystems: AtomicUsize,
    pub dirty_rate: AtomicUsize,
}

impl Calls {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

/// The server runs on a runtime of its own: shutting that down closes every connection
/// at once, as a launcher process dying does (aborting the accept loop alone would leave
/// accepted connections served).
pub struct FakeLauncher {
    pub pod_uid: String,
    pub socket: PathBuf,
    pub calls: Arc<Calls>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl FakeLauncher {
    /// Serves `script` on `<pods_dir>/<pod_uid>/volumes/kubernetes.io~empty-dir/sockets/launcher-sock`.
    pub fn start(pods_dir: &Path, pod_uid: &str, script: Script) -> Self {
        let socket = socket::socket_path(pods_dir, pod_uid);
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _entered = runtime.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        let calls = Arc::new(Calls::default());
        let launcher = Launcher {
            script: Arc::new(script),
            calls: Arc::clone(&calls),
        };
        runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let served = tonic::transport::Server::builder()
                .serve_with_incoming(launcher, incoming)
                .await;
            if let Err(err) = served {
                eprintln!("fake launcher stopped: {err}");
            }
        });
        Self {
            pod_uid: pod_uid.to_owned(),
            socket,
            calls,
            runtime: Mutex::new(Some(runtime)),
        }
    }

    /// Stops serving and removes the socket, as when the launcher pod goes away.
    pub fn vanish(&self) {
        self.die();
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Stops serving but leaves the socket file behind (a dead launcher).
    pub fn die(&self) {
        if let Some(runtime) = self.runtime.lock().unwrap().take() {
            runtime.shutdown_background();
        }
    }

    /// Puts virt-handler's unresponsive marker next to the socket.
    pub fn mark_unresponsive(&self) {
        let marker = self.socket.with_file_name(socket::UNRESPONSIVE_MARKER);
        std::fs::write(marker, b"").unwrap();
    }
}

impl Drop for FakeLauncher {
    fn drop(&mut self) {
        self.die();
    }
}

/// Passes already-encoded messages through tonic's gRPC framing untouched: the bytes come
/// from the fixture-driven encoder, and requests (all empty messages) are not decoded.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

#[derive(Clone)]
struct Launcher {
    script: Arc<Script>,
    calls: Arc<Calls>,
}

impl tonic::server::NamedService for Launcher {
    const NAME: &'static str = "kubevirt.cmd.v1.Cmd";
}

/// Routes by the gRPC path to the methods the scripted release has; anything else is
/// `UNIMPLEMENTED`, as from a gRPC server that does not register the method.
impl tower::Service<http::Request<tonic::body::Body>> for Launcher {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let method = self
            .script
            .protocol
            .methods
            .iter()
            .find(|m| m.path() == path)
            .cloned();
        let launcher = self.clone();
        Box::pin(async move {
            let Some(method) = method else {
                return Ok(Status::unimplemented(format!("unknown method {path}")).into_http());
            };
            let handler = tower::service_fn(move |_: Request<Vec<u8>>| {
                let launcher = launcher.clone();
                let method = method.clone();
                async move { launcher.answer(&method).await.map(Response::new) }
            });
            Ok(tonic::server::Grpc::new(RawCodec)
                .unary(handler, request)
                .await)
        })
    }
}

impl Launcher {
    /// The encoded reply to `method`, as scripted.
    async fn answer(&self, method: &Method) -> Result<Vec<u8>, Status> {
        let protocol = &self.script.protocol;
        let output = &method.output[1..];
        let script = &self.script;
        match method.method.as_str() {
            "Info" => {
                self.calls.info.fetch_add(1, Ordering::SeqCst);
                let mut versions = script
                    .cmd_versions
                    .iter()
                    .map(|v| Value::Uint(u64::from(*v)));
                // Repeated in KubeVirt; a test may play a launcher that sends one value.
                let repeated = protocol.field(output, "supportedCmdVersions").label == "repeated";
                let value = if repeated {
                    Value::List(versions.collect())
                } else {
                    versions.next().unwrap_or(Value::Uint(0))
                };
                Ok(encode(protocol, output, &[("supportedCmdVersions", value)]))
            }
            "GetDomainStats" => {
                self.calls.domain_stats.fetch_add(1, Ordering::SeqCst);
                reply(
                    protocol,
                    output,
                    "domainStats",
                    &script.domain_stats,
                    |json| Value::Str(json.clone()),
                )
                .await
            }
            "GetFilesystems" => {
                self.calls.filesystems.fetch_add(1, Ordering::SeqCst);
                reply(
                    protocol,
                    output,
                    "guestFilesystemsResponse",
                    &script.filesystems,
                    |json| Value::Str(json.clone()),
                )
                .await
            }
            "GetDomainDirtyRateStats" => {
                self.calls.dirty_rate.fetch_add(1, Ordering::SeqCst);
                reply(
                    protocol,
                    output,
                    "dirtyRateMbs",
                    &script.dirty_rate_mbs,
                    |mbs| Value::Int(*mbs),
                )
                .await
            }
            "Ping" => Ok(encode(protocol, output, &[("success", Value::Bool(true))])),
            other => Err(Status::unimplemented(format!(
                "{other} is not part of the fake"
            ))),
        }
    }
}

/// Encodes `output` with its in-band `response` and, on success, the value in `field`
/// (a failed call carries the field's zero value, which proto3 leaves out).
async fn reply<T>(
    protocol: &Protocol,
    output: &str,
    field: &'static str,
    reply: &Reply<T>,
    value: impl FnOnce(&T) -> Value,
) -> Result<Vec<u8>, Status> {
    let response = |success: bool, message: &str| {
        (
            "response",
            Value::Message(vec![
                ("success", Value::Bool(success)),
                ("message", Value::Str(message.to_owned())),
            ]),
        )
    };
    match reply {
        Reply::Value(v) => Ok(encode(
            protocol,
            output,
            &[response(true, ""), (field, value(v))],
        )),
        Reply::InBandFailure(message) => Ok(encode(protocol, output, &[response(false, message)])),
        Reply::Status(code, message) => Err(Status::new(*code, message.clone())),
        Reply::Late(after, v) => {
            tokio::time::sleep(*after).await;
            Ok(encode(
                protocol,
                output,
                &[response(true, ""), (field, value(v))],
            ))
        }
        Reply::Hang => std::future::pending().await,
    }
}
