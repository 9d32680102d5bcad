//! The co-located component's own `/metrics`: which families it serves, and its samples.
//!
//! A sidecar runs in the same pod as virt-handler, virt-controller, virt-api or
//! virt-operator, which already serve their metrics on `https://127.0.0.1:8443/metrics`.
//! In complement mode the runtime withholds the families the component serves, so no series
//! is scraped twice from one pod. It learns them with [`ComponentClient::served_families`],
//! but rarely ([`schedule`]): reading virt-handler's `/metrics` makes virt-handler call every
//! virt-launcher on the node. In between, [`ComponentClient::probe`] asks the component's
//! cheap `/healthz`. The relays use [`ComponentClient::fetch`] (or [`parse`] on text they
//! already have) to re-serve the component's families unchanged, every pass.

mod parse;
pub mod schedule;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use parse::{ParseError, family_names, parse};

use crate::core::metric::Family;
use kubevirt_metrics_flags::CommonArgs;

/// The largest body we read from the component. virt-handler on a node with a few hundred
/// VMIs serves tens of MB; far more than that is a misconfiguration, not metrics.
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Prefer text 0.0.4: it is what the parser reads, and it is what KubeVirt serves anyway.
const ACCEPT: &str = "text/plain;version=0.0.4;q=1,*/*;q=0.1";

/// virt-handler and virt-controller serve `/healthz` on their metrics server (their own
/// probes use it); it answers from a cache, without calling anything.
const PROBE_PATH: &str = "/healthz";
/// The most of a `/healthz` answer we read (KubeVirt's is a few hundred bytes of JSON).
const MAX_PROBE_BYTES: usize = 64 * 1024;
/// A probe must be quick; a component that cannot answer `/healthz` within this is treated
/// as unreachable for the pass.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("reading the component CA bundle {path}: {source}")]
    CaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the component CA bundle {path} holds no usable certificate: {reason}")]
    CaInvalid { path: PathBuf, reason: String },
    #[error("building the HTTP client for the component: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: {}", crate::core::error_chain(.source))]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: body is not UTF-8")]
    NotUtf8 { url: String },
    #[error("{url}: {source}")]
    Parse {
        url: String,
        #[source]
        source: ParseError,
    },
    #[error("{url}: parsing task failed: {reason}")]
    Task { url: String, reason: String },
}

impl ComponentError {
    /// A short, bounded word for the `kind` label of the self-metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CaRead { .. } | Self::CaInvalid { .. } | Self::Client(_) => "config",
            Self::Timeout { .. } => "timeout",
            Self::Request { .. } => "connect",
            Self::Status { .. } => "status",
            Self::TooLarge { .. } => "too_large",
            Self::NotUtf8 { .. } | Self::Parse { .. } => "parse",
            Self::Task { .. } => "internal",
        }
    }
}

/// How to reach the component's metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentEndpoint {
    pub url: String,
    /// PEM bundle to verify the component's certificate with (instead of public roots).
    pub ca: Option<PathBuf>,
    /// Skip certificate verification (in-pod loopback only).
    pub insecure_skip_verify: bool,
    /// Deadline for one whole request, body included.
    pub timeout: Duration,
}

impl ComponentEndpoint {
    /// `--component-metrics-url`, `--component-ca`, `--component-insecure-skip-verify`, with
    /// `--collection-timeout` as the request deadline.
    pub fn from_args(common: &CommonArgs) -> Self {
        Self {
            url: common.component_metrics_url.clone(),
            ca: common.component_ca.clone(),
            insecure_skip_verify: common.component_insecure_skip_verify,
            timeout: common.collection_timeout,
        }
    }
}

/// A reusable HTTP(S) client for one component endpoint (keeps its connection alive).
#[derive(Debug, Clone)]
pub struct ComponentClient {
    client: reqwest::Client,
    url: String,
    /// `/healthz` on the same origin; `None` when the metrics URL does not parse.
    probe_url: Option<String>,
    timeout: Duration,
}

/// What a [`ComponentClient::probe`] learnt: the component answered over HTTP (any status),
/// and, when its `/healthz` is KubeVirt's, the configuration it runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// `config-resource-version` of KubeVirt's `/healthz` answer: the resourceVersion of the
    /// KubeVirt CR the component last loaded its configuration (feature gates) from. `None`
    /// when the answer has no such field (another endpoint, an error status).
    pub identity: Option<String>,
}

impl ComponentClient {
    pub fn new(endpoint: &ComponentEndpoint) -> Result<Self, ComponentError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(endpoint.timeout)
            // The component is in the pod; a cluster-wide HTTPS_PROXY must not catch it.
            .no_proxy()
            .http1_only();
        if let Some(path) = &endpoint.ca {
            for certificate in read_ca_bundle(path)? {
                builder = builder.add_root_certificate(certificate);
            }
            builder = builder.tls_built_in_root_certs(false);
        }
        if endpoint.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        Ok(Self {
            client: builder.build().map_err(ComponentError::Client)?,
            url: endpoint.url.clone(),
            probe_url: probe_url(&endpoint.url),
            timeout: endpoint.timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The cheap check between two reads of `/metrics`: `GET /healthz` on the same origin,
    /// over the kept connection. Any HTTP answer means the component is up; an error means
    /// it is not reachable now (restarting, or gone).
    pub async fn probe(&self) -> Result<ProbeAnswer, ComponentError> {
        let Some(url) = &self.probe_url else {
            return Ok(ProbeAnswer { identity: None });
        };
        let timeout = PROBE_TIMEOUT.min(self.timeout);
        let request_error = |source: reqwest::Error| {
            if source.is_timeout() {
                ComponentError::Timeout {
                    url: url.clone(),
                    timeout,
                }
            } else {
                ComponentError::Request {
                    url: url.clone(),
                    source,
                }
            }
        };
        let mut response = self
            .client
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(request_error)?;
        let ok = response.status().is_success();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > MAX_PROBE_BYTES {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(ProbeAnswer {
            identity: if ok { healthz_identity(&body) } else { None },
        })
    }

    /// The raw text exposition.
    pub async fn fetch_text(&self) -> Result<String, ComponentError> {
        let request_error = |source: reqwest::Error| {
            if source.is_timeout() {
                ComponentError::Timeout {
                    url: self.url.clone(),
                    timeout: self.timeout,
                }
            } else {
                ComponentError::Request {
                    url: self.url.clone(),
                    source,
                }
            }
        };
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, ACCEPT)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ComponentError::Status {
                url: self.url.clone(),
                status: status.as_u16(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(ComponentError::TooLarge {
                    url: self.url.clone(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| ComponentError::NotUtf8 {
            url: self.url.clone(),
        })
    }

    /// Every family the component serves, parsed (on a blocking thread: a large node's
    /// exposition takes a while).
    pub async fn fetch(&self) -> Result<Vec<Family>, ComponentError> {
        let text = self.fetch_text().await?;
        let url = self.url.clone();
        tokio::task::spawn_blocking(move || parse(&text))
            .await
            .map_err(|e| ComponentError::Task {
                url: url.clone(),
                reason: e.to_string(),
            })?
            .map_err(|source| ComponentError::Parse { url, source })
    }

    /// The names of the families the component serves, as written on its `# TYPE` lines
    /// (counters with `_total`), including families it declares without samples. Reads names
    /// only ([`family_names`]): this runs every interval in complement mode.
    pub async fn served_families(&self) -> Result<BTreeSet<String>, ComponentError> {
        let text = self.fetch_text().await?;
        let url = self.url.clone();
        tokio::task::spawn_blocking(move || family_names(&text))
            .await
            .map_err(|e| ComponentError::Task {
                url,
                reason: e.to_string(),
            })
    }
}

/// `/healthz` on the origin of `metrics_url`.
fn probe_url(metrics_url: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(metrics_url).ok()?;
    url.set_path(PROBE_PATH);
    url.set_query(None);
    url.set_fragment(None);
    Some(url.into())
}

/// `config-resource-version` from KubeVirt's `/healthz` JSON
/// (`{"apiserver": {...}, "config-resource-version": "12345"}`), if the body is that.
fn healthz_identity(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.get("config-resource-version")? {
        serde_json::Value::String(version) => Some(version.clone()),
        serde_json::Value::Number(version) => Some(version.to_string()),
        _ => None,
    }
}

fn read_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, ComponentError> {
    let pem = std::fs::read(path).map_err(|source| ComponentError::CaRead {
        path: path.to_owned(),
        source,
    })?;
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ComponentError::CaInvalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(ComponentError::CaInvalid {
            path: path.to_owned(),
            reason: "no PEM certificate found".to_owned(),
        });
    }
    Ok(certificates)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_asks_healthz_on_the_same_origin() {
        assert_eq!(
            probe_url("https://127.0.0.1:8443/metrics?x=1").as_deref(),
            Some("https://127.0.0.1:8443/healthz")
        );
        assert_eq!(probe_url("not a url"), None);
    }

    #[test]
    fn identity_is_kubevirts_config_resource_version() {
        let body = br#"{"apiserver":{"connectivity":"ok","version":{"major":"1"}},"config-resource-version":"4711"}"#;
        assert_eq!(healthz_identity(body).as_deref(), Some("4711"));
        assert_eq!(healthz_identity(b"ok\n"), None);
        assert_eq!(healthz_identity(br#"{"apiserver":{}}"#), None);
    }
}
