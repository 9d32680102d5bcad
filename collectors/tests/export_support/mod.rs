//! A remote-write endpoint for fault tests: answers 204, 500, 429, 400 or never, can be
//! stopped (every connection closed, the port refused) and started again on the same port.
//! It checks the protocol headers and that the body is snappy-compressed protobuf, and
//! counts what it got.
#![allow(dead_code)] // Each test binary uses a different part.
#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kubevirt_metrics_collectors::core::export::remote_write::WriteRequest;
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the endpoint does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Accept,
    Status(u16),
    /// Reads the request and never answers.
    Hang,
}

#[derive(Default)]
pub struct Counters {
    pub requests: AtomicUsize,
    pub accepted: AtomicUsize,
    /// Series in the last accepted request.
    pub last_series: AtomicUsize,
    /// Protocol violations seen (wrong header, undecodable body).
    pub violations: Mutex<Vec<String>>,
}

pub struct FakeReceiver {
    pub addr: SocketAddr,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub counters: Arc<Counters>,
    running: Option<CancellationToken>,
}

impl FakeReceiver {
    /// A receiver on a free port, not started (its port refuses connections).
    pub fn down() -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Self {
            addr,
            behaviour: Arc::new(Mutex::new(Behaviour::Accept)),
            counters: Arc::new(Counters::default()),
            running: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    pub fn violations(&self) -> Vec<String> {
        self.counters.violations.lock().unwrap().clone()
    }

    /// Starts listening on the receiver's port.
    pub async fn start(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let token = CancellationToken::new();
        let (behaviour, counters, stop) = (
            Arc::clone(&self.behaviour),
            Arc::clone(&self.counters),
            token.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let (behaviour, counters, stop) =
                    (Arc::clone(&behaviour), Arc::clone(&counters), stop.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (behaviour, counters) = (Arc::clone(&behaviour), Arc::clone(&counters));
                        async move { answer(request, &behaviour, &counters).await }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = connection => {}
                    }
                });
            }
        });
        self.running = Some(token);
    }

    /// Closes the listener and every connection.
    pub fn stop(&mut self) {
        if let Some(token) = self.running.take() {
            token.cancel();
        }
    }
}

impl Drop for FakeReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(
    request: hyper::Request<Incoming>,
    behaviour: &Mutex<Behaviour>,
    counters: &Counters,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    counters.requests.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut violations = Vec::new();
    for (name, expected) in [
        ("content-encoding", "snappy"),
        ("content-type", "application/x-protobuf"),
        ("x-prometheus-remote-write-version", "0.1.0"),
    ] {
        if header(name) != expected {
            violations.push(format!("{name}: {:?}", header(name)));
        }
    }
    if request.method() != hyper::Method::POST {
        violations.push(format!("method {}", request.method()));
    }
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let series = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .map_err(|e| e.to_string())
        .and_then(|raw| WriteRequest::decode(raw.as_slice()).map_err(|e| e.to_string()));
    match series {
        Ok(request) => counters
            .last_series
            .store(request.timeseries.len(), Ordering::SeqCst),
        Err(error) => violations.push(format!("body: {error}")),
    }
    counters.violations.lock().unwrap().extend(violations);
    let behaviour = *behaviour.lock().unwrap();
    let status = match behaviour {
        Behaviour::Accept => {
            counters.accepted.fetch_add(1, Ordering::SeqCst);
            204
        }
        Behaviour::Status(status) => status,
        Behaviour::Hang => std::future::pending().await,
    };
    Ok(hyper::Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(b"")))
        .unwrap())
}
