//! A fake Kubernetes API server on 127.0.0.1 (plain HTTP) that answers what the controller
//! collector asks: lists and watches of the watched resources, and Lease reads. Lists come
//! from fixture objects; watches stay open and deliver events the test pushes; any path can
//! be made to fail with a status code.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

/// The collection path each fixture kind is listed and watched at.
pub fn path_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "VirtualMachine" => "/apis/kubevirt.io/v1/virtualmachines",
        "VirtualMachineInstance" => "/apis/kubevirt.io/v1/virtualmachineinstances",
        "VirtualMachineInstanceMigration" => {
            "/apis/kubevirt.io/v1/virtualmachineinstancemigrations"
        }
        "PersistentVolumeClaim" => "/api/v1/persistentvolumeclaims",
        "VirtualMachineInstancetype" => {
            "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineinstancetypes"
        }
        "VirtualMachineClusterInstancetype" => {
            "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterinstancetypes"
        }
        "VirtualMachinePreference" => {
            "/apis/instancetype.kubevirt.io/v1beta1/virtualmachinepreferences"
        }
        "VirtualMachineClusterPreference" => {
            "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterpreferences"
        }
        "ControllerRevision" => "/apis/apps/v1/controllerrevisions",
        "Pod" => "/api/v1/pods",
        "VirtualMachineSnapshot" => "/apis/snapshot.kubevirt.io/v1beta1/virtualmachinesnapshots",
        "ConfigMap" => "/api/v1/namespaces/kubevirt/configmaps",
        "KubeVirt" => "/apis/kubevirt.io/v1/namespaces/kubevirt/kubevirts",
        _ => return None,
    })
}

pub const ALL_PATHS: [&str; 13] = [
    "/apis/kubevirt.io/v1/virtualmachines",
    "/apis/kubevirt.io/v1/virtualmachineinstances",
    "/apis/kubevirt.io/v1/virtualmachineinstancemigrations",
    "/api/v1/persistentvolumeclaims",
    "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineinstancetypes",
    "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterinstancetypes",
    "/apis/instancetype.kubevirt.io/v1beta1/virtualmachinepreferences",
    "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterpreferences",
    "/apis/apps/v1/controllerrevisions",
    "/api/v1/pods",
    "/apis/snapshot.kubevirt.io/v1beta1/virtualmachinesnapshots",
    "/api/v1/namespaces/kubevirt/configmaps",
    "/apis/kubevirt.io/v1/namespaces/kubevirt/kubevirts",
];

#[derive(Default)]
struct ApiState {
    lists: HashMap<String, Vec<Value>>,
    /// Paths answering with this status instead.
    failing: HashMap<String, u16>,
    /// Lease name -> holder (None: the Lease does not exist).
    leases: HashMap<String, Option<String>>,
    lease_status: Option<u16>,
    watchers: HashMap<String, broadcast::Sender<Value>>,
    requests: Vec<String>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
    task: tokio::task::JoinHandle<()>,
}

fn status(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{reason} (fake API server)"), "reason": reason, "code": code
    })
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(code: u16, value: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

impl FakeApi {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ApiState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let state = shared.clone();
                connections.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let response = handle(&state, &req);
                            async move { Ok::<_, Infallible>(response) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Serves every object of the fixture documents at its kind's path.
    pub fn serve_objects(&self, docs: Vec<Value>) {
        let mut state = self.state.lock().unwrap();
        for path in ALL_PATHS {
            state.lists.entry(path.to_owned()).or_default();
        }
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let path = path_of(&kind).unwrap_or_else(|| panic!("no path for {kind}"));
            state.lists.entry(path.to_owned()).or_default().push(doc);
        }
    }

    pub fn fail(&self, path: &str, code: u16) {
        self.state
            .lock()
            .unwrap()
            .failing
            .insert(path.to_owned(), code);
    }

    pub fn heal(&self, path: &str) {
        self.state.lock().unwrap().failing.remove(path);
    }

    pub fn set_lease(&self, name: &str, holder: Option<&str>) {
        self.state
            .lock()
            .unwrap()
            .leases
            .insert(name.to_owned(), holder.map(str::to_owned));
    }

    pub fn fail_leases(&self, code: Option<u16>) {
        self.state.lock().unwrap().lease_status = code;
    }

    /// Sends a watch event (`ADDED`, `MODIFIED`, `DELETED`) to open watches of `path`.
    pub fn push(&self, path: &str, event_type: &str, object: Value) {
        let sender = {
            let mut state = self.state.lock().unwrap();
            state
                .watchers
                .entry(path.to_owned())
                .or_insert_with(|| broadcast::channel(64).0)
                .clone()
        };
        let _ = sender.send(json!({ "type": event_type, "object": object }));
    }

    /// How many requests asked for `path_prefix`.
    pub fn requests_to(&self, path_prefix: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|p| p.starts_with(path_prefix))
            .count()
    }

    pub fn watching(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .watchers
            .get(path)
            .map_or(0, broadcast::Sender::receiver_count)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn handle(state: &Arc<Mutex<ApiState>>, req: &hyper::Request<Incoming>) -> hyper::Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let mut guard = state.lock().unwrap();
    guard.requests.push(path.clone());
    if let Some(name) =
        path.strip_prefix("/apis/coordination.k8s.io/v1/namespaces/kubevirt/leases/")
    {
        if let Some(code) = guard.lease_status {
            return respond(code, &status(code, "Forbidden"));
        }
        return match guard.leases.get(name) {
            Some(Some(holder)) => respond(
                200,
                &json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": "kubevirt", "resourceVersion": "7"},
                    "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                             "renewTime": "2026-07-27T10:15:30.000000Z"}
                }),
            ),
            Some(None) | None => respond(404, &status(404, "NotFound")),
        };
    }
    if let Some(&code) = guard.failing.get(&path) {
        let reason = if code == 403 {
            "Forbidden"
        } else {
            "InternalError"
        };
        return respond(code, &status(code, reason));
    }
    let Some(items) = guard.lists.get(&path).cloned() else {
        return respond(404, &status(404, "NotFound"));
    };
    if !watch {
        return respond(
            200,
            &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
        );
    }
    let receiver = guard
        .watchers
        .entry(path)
        .or_insert_with(|| broadcast::channel(64).0)
        .subscribe();
    drop(guard);
    let events = futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => {
                    let frame = Frame::data(Bytes::from(format!("{event}\n")));
                    return Some((Ok::<_, Infallible>(frame), receiver));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    hyper::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .unwrap()
}
