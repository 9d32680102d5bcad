//! A fake virt-launcher: KubeVirt's `CmdInfo` and `Cmd` (v1) gRPC services, built from the
//! same protos as the collector, listening on a unix socket laid out where the kubelet
//! puts a launcher pod's `sockets` emptyDir. Each call answers as scripted, including
//! never, in-band failure, and gRPC errors. Dropping it stops the server.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kubevirt_metrics_collectors::sources::launcher::proto::cmd_v1::{
    self, DirtyRateStatsResponse, DomainResponse, DomainStatsResponse, EmptyRequest,
    GuestFilesystemsResponse,
    cmd_server::{Cmd, CmdServer},
};
use kubevirt_metrics_collectors::sources::launcher::proto::info::{
    CmdInfoRequest, CmdInfoResponse,
    cmd_info_server::{CmdInfo, CmdInfoServer},
};
use kubevirt_metrics_collectors::sources::launcher::socket;
use tonic::{Request, Response, Status};

/// How one call is answered.
#[derive(Debug, Clone)]
pub enum Reply<T> {
    Value(T),
    /// `Response{success: false, message}` with gRPC status OK, as the launcher does.
    InBandFailure(String),
    /// A gRPC error status, as newer launchers do.
    Status(tonic::Code, String),
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Script {
    pub cmd_versions: Vec<String>,
    pub domain_stats: Reply<String>,
    pub filesystems: Reply<String>,
    pub dirty_rate_mbs: Reply<i64>,
}

impl Script {
    pub fn serving(domain_stats: &str, filesystems: &str, dirty_rate_mbs: i64) -> Self {
        Self {
            cmd_versions: vec!["1".to_owned()],
            domain_stats: Reply::Value(domain_stats.to_owned()),
            filesystems: Reply::Value(filesystems.to_owned()),
            dirty_rate_mbs: Reply::Value(dirty_rate_mbs),
        }
    }

    pub fn hanging() -> Self {
        Self {
            cmd_versions: vec!["1".to_owned()],
            domain_stats: Reply::Hang,
            filesystems: Reply::Hang,
            dirty_rate_mbs: Reply::Hang,
        }
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
        let service = Launcher {
            script: Arc::new(script),
            calls: Arc::clone(&calls),
        };
        runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let dispatch = Dispatch {
                info: CmdInfoServer::new(service.clone()),
                cmd: CmdServer::new(service),
            };
            let served = tonic::transport::Server::builder()
                .serve_with_incoming(dispatch, incoming)
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

/// Routes a request to `CmdInfo` or `Cmd` by its path, as a gRPC server with both
/// services registered would (tonic's router is a feature this crate does not enable).
#[derive(Clone)]
struct Dispatch {
    info: CmdInfoServer<Launcher>,
    cmd: CmdServer<Launcher>,
}

impl tower::Service<http::Request<tonic::body::Body>> for Dispatch {
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
        if request
            .uri()
            .path()
            .starts_with("/kubevirt.cmd.info.CmdInfo/")
        {
            let mut info = self.info.clone();
            Box::pin(async move { info.call(request).await })
        } else {
            let mut cmd = self.cmd.clone();
            Box::pin(async move { cmd.call(request).await })
        }
    }
}

#[derive(Clone)]
struct Launcher {
    script: Arc<Script>,
    calls: Arc<Calls>,
}

/// Answers a call as scripted; `wrap` builds the reply message from the in-band response
/// and the value.
async fn answer<T: Clone, R>(
    reply: &Reply<T>,
    wrap: impl FnOnce(cmd_v1::Response, Option<T>) -> R,
) -> Result<Response<R>, Status> {
    match reply {
        Reply::Value(value) => Ok(Response::new(wrap(
            cmd_v1::Response {
                success: true,
                message: String::new(),
            },
            Some(value.clone()),
        ))),
        Reply::InBandFailure(message) => Ok(Response::new(wrap(
            cmd_v1::Response {
                success: false,
                message: message.clone(),
            },
            None,
        ))),
        Reply::Status(code, message) => Err(Status::new(*code, message.clone())),
        Reply::Hang => std::future::pending().await,
    }
}

#[tonic::async_trait]
impl CmdInfo for Launcher {
    async fn info(&self, _: Request<CmdInfoRequest>) -> Result<Response<CmdInfoResponse>, Status> {
        self.calls.info.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(CmdInfoResponse {
            supported_cmd_versions: self.script.cmd_versions.clone(),
            supported_kube_virt_api_versions: vec!["v1".to_owned()],
            supported_domain_versions: vec!["v1".to_owned()],
            supported_domain_stats_versions: vec!["v1".to_owned()],
        }))
    }
}

#[tonic::async_trait]
impl Cmd for Launcher {
    async fn get_domain(
        &self,
        _: Request<EmptyRequest>,
    ) -> Result<Response<DomainResponse>, Status> {
        Err(Status::unimplemented("not part of the fake"))
    }

    async fn get_domain_stats(
        &self,
        _: Request<EmptyRequest>,
    ) -> Result<Response<DomainStatsResponse>, Status> {
        self.calls.domain_stats.fetch_add(1, Ordering::SeqCst);
        answer(&self.script.domain_stats, |response, json| {
            DomainStatsResponse {
                response: Some(response),
                domain_stats: json.unwrap_or_default(),
            }
        })
        .await
    }

    async fn get_filesystems(
        &self,
        _: Request<EmptyRequest>,
    ) -> Result<Response<GuestFilesystemsResponse>, Status> {
        self.calls.filesystems.fetch_add(1, Ordering::SeqCst);
        answer(&self.script.filesystems, |response, json| {
            GuestFilesystemsResponse {
                response: Some(response),
                guest_filesystems_response: json.unwrap_or_default(),
            }
        })
        .await
    }

    async fn ping(&self, _: Request<EmptyRequest>) -> Result<Response<cmd_v1::Response>, Status> {
        Ok(Response::new(cmd_v1::Response {
            success: true,
            message: String::new(),
        }))
    }

    async fn get_domain_dirty_rate_stats(
        &self,
        _: Request<EmptyRequest>,
    ) -> Result<Response<DirtyRateStatsResponse>, Status> {
        self.calls.dirty_rate.fetch_add(1, Ordering::SeqCst);
        answer(&self.script.dirty_rate_mbs, |response, mbs| {
            DirtyRateStatsResponse {
                response: Some(response),
                dirty_rate_mbs: mbs.unwrap_or(-1),
            }
        })
        .await
    }
}
