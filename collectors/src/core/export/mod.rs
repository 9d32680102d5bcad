//! Push sinks: after each collection pass (and aggregation), the same families that
//! `/metrics` serves leave through every configured sink — OTLP ([`otlp`]), Prometheus remote
//! write ([`remote_write`]), InfluxDB line protocol ([`influx`]).
//!
//! A sink only encodes and sends one [`Batch`]; queueing, retries and its self-metrics are
//! the pipeline's ([`pipeline`]), the same for every sink, so a slow or dead endpoint never
//! blocks collection or `/metrics` and costs bounded memory.

pub mod http;
pub mod influx;
pub mod otlp;
pub mod pipeline;
pub mod remote_write;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;

use crate::core::metric::Family;

/// The families of one collection pass, as `/metrics` shows them at that moment.
#[derive(Debug, Clone)]
pub struct Batch {
    pub families: Arc<Vec<Family>>,
    /// When the pass ended; the timestamp of every sample without its own.
    pub collected_at: SystemTime,
}

/// Who is pushing: OTLP resource attributes, and nothing else needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resource {
    /// The collector binary, e.g. `virt-handler-metrics` (`service.name`).
    pub service_name: String,
    /// This build's version (`service.version`).
    pub service_version: String,
    /// `k8s.node.name` (from `NODE_NAME`), `k8s.pod.name` (`POD_NAME`, else the host name),
    /// `k8s.namespace.name` (`POD_NAMESPACE`); absent outside Kubernetes.
    pub node_name: Option<String>,
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
}

impl Resource {
    /// From the downward-API variables the operator sets on every sidecar.
    pub fn from_env(service_name: &str) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            service_name: service_name.to_owned(),
            service_version: env!("CARGO_PKG_VERSION").to_owned(),
            node_name: var("NODE_NAME"),
            pod_name: var("POD_NAME").or_else(|| var("HOSTNAME")),
            namespace: var("POD_NAMESPACE"),
        }
    }
}

/// Why one send failed; decides whether the pipeline retries the batch.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: no connection, timeout, HTTP 5xx or 429, gRPC UNAVAILABLE...
    #[error("{0}")]
    Retryable(String),
    /// Sending the same batch again cannot help (HTTP 4xx other than 429, a rejected
    /// payload): the batch is dropped and counted as failed.
    #[error("{0}")]
    Permanent(String),
}

/// A push endpoint. Implementations encode and send; they keep no queue.
pub trait Sink: Send + Sync + 'static {
    /// `otlp`, `remote_write` or `influx`: the `sink` label of the self-metrics.
    fn name(&self) -> &'static str;
    /// Sends one batch, within the pipeline's per-request deadline.
    fn send<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SendError>>;
}

/// A sink's flags do not make a usable sink. Reported at start (the sidecar exits with the
/// message), so a typo never silently disables an export.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
    #[error("{flag}: reading {path}: {source}")]
    File {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag}: building the HTTP client: {source}")]
    Client {
        flag: &'static str,
        #[source]
        source: reqwest::Error,
    },
}
