//! `exporters` (in `spec.defaults` and per component) and `aggregations` (`spec.aggregations`
//! and per component) of a MetricsSidecarPolicy: where the sidecars push their metrics, and
//! what they aggregate or drop first.
//!
//! Secrets are only ever named, never written: every credential is a [`SecretKeyRef`] to a
//! Secret in the policy's (KubeVirt's) namespace, mounted read-only into the sidecar, and the
//! sidecar's `--*-file` flag points at the file. No token, password or key reaches the
//! KubeVirt CR, the pod spec or the policy.
//!
//! The CEL rules here reject what the API server can judge alone (URL shape, fields that
//! exclude each other, ranges); `plan::exporters` checks the same again for `render`, which
//! never sees an API server. The aggregation rule grammar is checked by the sidecar, which
//! owns it.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn enabled_by_default() -> bool {
    true
}

/// Push sinks of a sidecar. Each of `otlp`, `remoteWrite`, `influxdb` and `queue` is taken
/// as a whole from the component when the component sets it, else from `spec.defaults`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Exporters {
    /// Push to an OpenTelemetry (OTLP) receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpExporter>,
    /// Push with Prometheus remote write 1.0 (Mimir, Thanos, VictoriaMetrics, Prometheus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_write: Option<RemoteWriteExporter>,
    /// Push InfluxDB line protocol to InfluxDB 1.x (`database`) or 2.x (`org` + `bucket`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub influxdb: Option<InfluxExporter>,
    /// The bounded queue and retries every push sink of the sidecar uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<PushQueue>,
}

/// OTLP push.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.enabled || has(self.endpoint)").message("otlp.endpoint is required unless otlp.enabled is false")
)]
pub struct OtlpExporter {
    /// Push to this sink (default true). `false` in a component turns off a sink that
    /// `spec.defaults` sets.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,

    /// Receiver URL, `http://` or `https://` with a host, e.g. `http://otel-collector:4318`
    /// (HTTP) or `http://otel-collector:4317` (gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != '' && self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]')").message("otlp.endpoint must be an http:// or https:// URL with a host"),
        validation = Rule::new("!self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@')").message("otlp.endpoint must not carry credentials (user:password@): use bearerTokenSecretRef")
    )]
    pub endpoint: Option<String>,

    /// `http` (OTLP/HTTP protobuf, default) or `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocolSetting>,

    /// Extra request headers, e.g. a tenant id (`X-Scope-OrgID: tenant-a`). Not for
    /// credentials: `Authorization` is refused, use `bearerTokenSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    #[x_kube(
        validation = Rule::new("self.all(k, size(k) <= 128 && k.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$'))").message("otlp.headers names must be HTTP header names (letters, digits and !#$%&*+.^_|~-, at most 128)"),
        validation = Rule::new("self.all(k, !(k.lowerAscii() in ['authorization', 'proxy-authorization', 'cookie']))").message("otlp.headers must not set Authorization, Proxy-Authorization or Cookie: credentials come from bearerTokenSecretRef"),
        validation = Rule::new("self.all(k, size(self[k]) <= 1024 && !self[k].contains(',') && !self[k].contains('\\n') && !self[k].contains('\\r'))").message("otlp.headers values must be at most 1024 characters without commas or line breaks")
    )]
    pub headers: Option<BTreeMap<String, String>>,

    /// Sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret_ref: Option<SecretKeyRef>,

    /// TLS towards the receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,

    /// Compress request bodies with gzip (both protocols). Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<bool>,
}

/// OTLP transport.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocolSetting {
    Http,
    Grpc,
}

/// Prometheus remote write 1.0.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.enabled || has(self.url)").message("remoteWrite.url is required unless remoteWrite.enabled is false"),
    validation = Rule::new("!(has(self.bearerTokenSecretRef) && has(self.basicAuth))").message("remoteWrite.bearerTokenSecretRef and remoteWrite.basicAuth exclude each other")
)]
pub struct RemoteWriteExporter {
    /// Push to this sink (default true).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,

    /// Remote-write endpoint, e.g. `http://mimir:8080/api/v1/push`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != '' && self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]')").message("remoteWrite.url must be an http:// or https:// URL with a host"),
        validation = Rule::new("!self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@')").message("remoteWrite.url must not carry credentials (user:password@): use basicAuth or bearerTokenSecretRef")
    )]
    pub url: Option<String>,

    /// Sent as `Authorization: Bearer <token>`. Excludes `basicAuth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret_ref: Option<SecretKeyRef>,

    /// HTTP basic authentication. Excludes `bearerTokenSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,

    /// TLS towards the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// User name in the clear, password from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("size(self) > 0 && !self.contains(':')").message("basicAuth.username must be non-empty and must not contain ':'"))]
    pub username: String,
    pub password_secret_ref: SecretKeyRef,
}

/// InfluxDB line protocol push.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.enabled || has(self.url)").message("influxdb.url is required unless influxdb.enabled is false"),
    validation = Rule::new("!(has(self.database) && (has(self.org) || has(self.bucket)))").message("influxdb.database (InfluxDB 1.x) and influxdb.org/bucket (InfluxDB 2.x) exclude each other"),
    validation = Rule::new("has(self.org) == has(self.bucket)").message("influxdb.org and influxdb.bucket must be set together"),
    validation = Rule::new("!self.enabled || has(self.database) || has(self.org)").message("influxdb needs database (InfluxDB 1.x) or org and bucket (InfluxDB 2.x)")
)]
pub struct InfluxExporter {
    /// Push to this sink (default true).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,

    /// Base URL, e.g. `http://influxdb:8086`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != '' && self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]')").message("influxdb.url must be an http:// or https:// URL with a host"),
        validation = Rule::new("!self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@')").message("influxdb.url must not carry credentials (user:password@): use tokenSecretRef")
    )]
    pub url: Option<String>,

    /// InfluxDB 1.x database (`/write?db=`). Excludes `org` and `bucket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("influxdb.database must not be empty"))]
    pub database: Option<String>,

    /// InfluxDB 2.x organisation (`/api/v2/write`); needs `bucket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("influxdb.org must not be empty"))]
    pub org: Option<String>,

    /// InfluxDB 2.x bucket; needs `org`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("influxdb.bucket must not be empty"))]
    pub bucket: Option<String>,

    /// Sent as `Authorization: Token <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,

    /// Timestamp precision: `ns` (default), `us`, `ms` or `s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<InfluxPrecisionSetting>,

    /// TLS towards InfluxDB (server verification only: the sink has no client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,

    /// Compress request bodies with gzip (`Content-Encoding: gzip`). Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<bool>,
}

/// Timestamp precision of line protocol.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InfluxPrecisionSetting {
    Ns,
    Us,
    Ms,
    S,
}

/// TLS towards a push endpoint, with optional client certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.certSecretRef) == has(self.keySecretRef)").message("tls.certSecretRef and tls.keySecretRef must be set together"),
    validation = Rule::new("!(has(self.caSecretRef) && has(self.insecureSkipVerify) && self.insecureSkipVerify)").message("tls.caSecretRef and tls.insecureSkipVerify exclude each other")
)]
pub struct ClientTlsSettings {
    /// CA bundle (PEM) that verifies the endpoint; the image's system roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate (PEM) for mutual TLS; needs `keySecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeyRef>,
    /// Client key (PEM) for mutual TLS; needs `certSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
    /// Do not verify the endpoint's certificate (tests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// TLS towards a push endpoint, server verification only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.caSecretRef) && has(self.insecureSkipVerify) && self.insecureSkipVerify)").message("tls.caSecretRef and tls.insecureSkipVerify exclude each other")
)]
pub struct ServerTlsSettings {
    /// CA bundle (PEM) that verifies the endpoint; the image's system roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Do not verify the endpoint's certificate (tests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// One key of a Secret in the policy's (KubeVirt's) namespace. The operator mounts only that
/// key, read-only, into the sidecar. The volume is optional, so a missing Secret never keeps
/// the KubeVirt component's pod from starting; the sink then reports the missing file.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("secret name must be a DNS subdomain (lowercase letters, digits, '-' and '.')"))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$') && !(self in ['.', '..'])").message("secret key must consist of letters, digits, '-', '_' and '.'"))]
    pub key: String,
}

/// The push queue of every sink of a sidecar.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PushQueue {
    /// Batches kept per sink while its endpoint is slow or down (default 8), 1 to 1000;
    /// past it the oldest batch is dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0 && self <= 1000").message("queue.capacity must be between 1 and 1000"))]
    pub capacity: Option<i32>,

    /// Deadline of one push request (default 10s), between 100ms and 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("queue.timeout must be a duration such as 10s or 1m"),
        validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || (duration(self) >= duration('100ms') && duration(self) <= duration('5m'))").message("queue.timeout must be between 100ms and 5m")
    )]
    pub timeout: Option<String>,

    /// Longest wait between retries (default 2m), between 1s and 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("queue.maxBackoff must be a duration such as 30s or 2m"),
        validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('1h'))").message("queue.maxBackoff must be between 1s and 1h")
    )]
    pub max_backoff: Option<String>,
}

/// What a sidecar aggregates or leaves out before every output (`/metrics` and each push
/// sink). A component's `aggregations` replaces `spec.aggregations` as a whole.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Aggregations {
    /// Aggregation rules (`--aggregate`), e.g.
    /// `sum by (namespace) (kubevirt_vmi_memory_resident_bytes)`. The grammar is the
    /// sidecar's (README, "Aggregation"); the sidecar refuses a rule it cannot parse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(r, size(r) > 0 && size(r) <= 1024 && r.trim() != '' && !r.contains(';') && !r.contains('\\n'))").message("aggregations.rules must be non-empty single-line strings of at most 1024 characters without ';'"))]
    pub rules: Vec<String>,

    /// Families to leave out, by name or anchored regex (`--drop-family`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    #[x_kube(validation = Rule::new("self.all(f, size(f) > 0 && size(f) <= 256 && !f.contains(','))").message("aggregations.dropFamilies must be non-empty names or regexes of at most 256 characters without ','"))]
    pub drop_families: Vec<String>,

    /// Labels to remove from every family (`--drop-label`); series that then collide are
    /// summed for counters and gauges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 128)))]
    #[x_kube(validation = Rule::new("self.all(l, size(l) <= 128 && l.matches('^[a-zA-Z_][a-zA-Z0-9_]*$'))").message("aggregations.dropLabels must be Prometheus label names"))]
    pub drop_labels: Vec<String>,
}
