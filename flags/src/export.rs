//! Export flags every collector takes: push sinks (OTLP, Prometheus remote write, InfluxDB
//! line protocol) and aggregation. All are off by default: with none given, a sidecar serves
//! `/metrics` exactly as before. Secrets are only ever read from files (`--*-file`), so the
//! operator can mount a Secret and no credential appears in a pod spec or the KubeVirt CR.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::{defaults, push};

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with binary protobuf bodies (`POST <endpoint>/v1/metrics`).
    #[default]
    Http,
    /// OTLP/gRPC (`opentelemetry.proto.collector.metrics.v1.MetricsService/Export`).
    Grpc,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// Compression of OTLP request bodies (`OTEL_EXPORTER_OTLP_COMPRESSION` in the OTel SDKs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OtlpCompression {
    #[default]
    None,
    /// gzip: `Content-Encoding: gzip` over HTTP, `grpc-encoding: gzip` over gRPC.
    Gzip,
}

impl OtlpCompression {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
        }
    }
}

/// Timestamp precision of InfluxDB line protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum InfluxPrecision {
    #[default]
    Ns,
    Us,
    Ms,
    S,
}

impl InfluxPrecision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ns => "ns",
            Self::Us => "us",
            Self::Ms => "ms",
            Self::S => "s",
        }
    }
}

/// TLS towards one push endpoint. Each sink has its own, under its own flag prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA bundle (PEM) to verify the endpoint; the system roots when absent.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Do not verify the endpoint's certificate (tests, never production).
    pub insecure_skip_verify: bool,
}

/// Flags of the export pipeline, flattened into every collector's flags.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ExportArgs {
    /// OTLP receiver to push to, e.g. `http://otel-collector:4318` (HTTP) or
    /// `http://otel-collector:4317` (gRPC); `https://` for TLS.
    #[arg(long, env = "COLLECTOR_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport.
    #[arg(long, env = "COLLECTOR_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::Http)]
    pub otlp_protocol: OtlpProtocol,
    /// Compression of the OTLP request bodies.
    #[arg(long, env = "COLLECTOR_OTLP_COMPRESSION", value_enum, default_value_t = OtlpCompression::None)]
    pub otlp_compression: OtlpCompression,
    /// Extra request header (`KEY=VALUE`), repeatable; e.g. a tenant id.
    #[arg(
        long = "otlp-header",
        env = "COLLECTOR_OTLP_HEADERS",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub otlp_headers: Vec<String>,
    /// File whose content is sent as `Authorization: Bearer <token>` to the OTLP receiver.
    #[arg(long, env = "COLLECTOR_OTLP_BEARER_TOKEN_FILE", value_name = "FILE")]
    pub otlp_bearer_token_file: Option<PathBuf>,
    #[arg(long, env = "COLLECTOR_OTLP_CA", value_name = "FILE")]
    pub otlp_ca: Option<PathBuf>,
    #[arg(
        long,
        env = "COLLECTOR_OTLP_CLIENT_CERT",
        value_name = "FILE",
        requires = "otlp_client_key"
    )]
    pub otlp_client_cert: Option<PathBuf>,
    #[arg(
        long,
        env = "COLLECTOR_OTLP_CLIENT_KEY",
        value_name = "FILE",
        requires = "otlp_client_cert"
    )]
    pub otlp_client_key: Option<PathBuf>,
    #[arg(long, env = "COLLECTOR_OTLP_INSECURE_SKIP_VERIFY")]
    pub otlp_insecure_skip_verify: bool,

    /// Prometheus remote-write 1.0 endpoint, e.g. `http://mimir/api/v1/push`.
    #[arg(long, env = "COLLECTOR_REMOTE_WRITE_URL", value_name = "URL")]
    pub remote_write_url: Option<String>,
    /// File holding a bearer token for remote write.
    #[arg(
        long,
        env = "COLLECTOR_REMOTE_WRITE_BEARER_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "remote_write_username"
    )]
    pub remote_write_bearer_token_file: Option<PathBuf>,
    /// Basic-auth user for remote write (the password comes from a file).
    #[arg(
        long,
        env = "COLLECTOR_REMOTE_WRITE_USERNAME",
        requires = "remote_write_password_file"
    )]
    pub remote_write_username: Option<String>,
    #[arg(
        long,
        env = "COLLECTOR_REMOTE_WRITE_PASSWORD_FILE",
        value_name = "FILE",
        requires = "remote_write_username"
    )]
    pub remote_write_password_file: Option<PathBuf>,
    #[arg(long, env = "COLLECTOR_REMOTE_WRITE_CA", value_name = "FILE")]
    pub remote_write_ca: Option<PathBuf>,
    #[arg(
        long,
        env = "COLLECTOR_REMOTE_WRITE_CLIENT_CERT",
        value_name = "FILE",
        requires = "remote_write_client_key"
    )]
    pub remote_write_client_cert: Option<PathBuf>,
    #[arg(
        long,
        env = "COLLECTOR_REMOTE_WRITE_CLIENT_KEY",
        value_name = "FILE",
        requires = "remote_write_client_cert"
    )]
    pub remote_write_client_key: Option<PathBuf>,
    #[arg(long, env = "COLLECTOR_REMOTE_WRITE_INSECURE_SKIP_VERIFY")]
    pub remote_write_insecure_skip_verify: bool,

    /// InfluxDB base URL, e.g. `http://influxdb:8086`. With --influx-db: InfluxDB 1.x
    /// `/write?db=`; with --influx-org and --influx-bucket: InfluxDB 2.x `/api/v2/write`.
    #[arg(long, env = "COLLECTOR_INFLUX_URL", value_name = "URL")]
    pub influx_url: Option<String>,
    /// InfluxDB 1.x database.
    #[arg(long, env = "COLLECTOR_INFLUX_DB", conflicts_with_all = ["influx_org", "influx_bucket"])]
    pub influx_db: Option<String>,
    /// InfluxDB 2.x organisation.
    #[arg(long, env = "COLLECTOR_INFLUX_ORG", requires = "influx_bucket")]
    pub influx_org: Option<String>,
    /// InfluxDB 2.x bucket.
    #[arg(long, env = "COLLECTOR_INFLUX_BUCKET", requires = "influx_org")]
    pub influx_bucket: Option<String>,
    /// File holding the InfluxDB token (`Authorization: Token <token>`).
    #[arg(long, env = "COLLECTOR_INFLUX_TOKEN_FILE", value_name = "FILE")]
    pub influx_token_file: Option<PathBuf>,
    /// Timestamp precision written.
    #[arg(long, env = "COLLECTOR_INFLUX_PRECISION", value_enum, default_value_t = InfluxPrecision::Ns)]
    pub influx_precision: InfluxPrecision,
    #[arg(long, env = "COLLECTOR_INFLUX_CA", value_name = "FILE")]
    pub influx_ca: Option<PathBuf>,
    #[arg(long, env = "COLLECTOR_INFLUX_INSECURE_SKIP_VERIFY")]
    pub influx_insecure_skip_verify: bool,
    /// Gzip the request bodies (`Content-Encoding: gzip`), as InfluxDB recommends.
    #[arg(long, env = "COLLECTOR_INFLUX_GZIP")]
    pub influx_gzip: bool,

    /// Batches each push sink keeps while its endpoint is slow or down; past it the oldest
    /// batch is dropped (and counted).
    #[arg(long, env = "COLLECTOR_PUSH_QUEUE_CAPACITY", default_value_t = defaults::PUSH_QUEUE_CAPACITY)]
    pub push_queue_capacity: usize,
    /// Deadline of one push request.
    #[arg(long, env = "COLLECTOR_PUSH_TIMEOUT", value_parser = humantime::parse_duration, default_value = defaults::PUSH_TIMEOUT)]
    pub push_timeout: Duration,
    /// Longest wait between retries of a failed push (backoff doubles up to it, with jitter).
    #[arg(long, env = "COLLECTOR_PUSH_MAX_BACKOFF", value_parser = humantime::parse_duration, default_value = defaults::PUSH_MAX_BACKOFF)]
    pub push_max_backoff: Duration,

    /// Aggregation rule, repeatable (see the README, "Aggregation"), e.g.
    /// `sum by (namespace) (kubevirt_vmi_memory_resident_bytes)`.
    #[arg(
        long = "aggregate",
        env = "COLLECTOR_AGGREGATE",
        value_name = "RULE",
        value_delimiter = ';'
    )]
    pub aggregate: Vec<String>,
    /// File with one aggregation rule per line (`#` comments).
    #[arg(long, env = "COLLECTOR_AGGREGATE_FILE", value_name = "FILE")]
    pub aggregate_file: Option<PathBuf>,
    /// Families to leave out of every output, by name or anchored regex; repeatable.
    #[arg(
        long = "drop-family",
        env = "COLLECTOR_DROP_FAMILIES",
        value_name = "NAME|REGEX",
        value_delimiter = ','
    )]
    pub drop_families: Vec<String>,
    /// Labels to remove from every family (series that then collide are summed for
    /// counters and gauges); repeatable.
    #[arg(
        long = "drop-label",
        env = "COLLECTOR_DROP_LABELS",
        value_name = "LABEL",
        value_delimiter = ','
    )]
    pub drop_labels: Vec<String>,
}

impl Default for ExportArgs {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Http,
            otlp_compression: OtlpCompression::None,
            otlp_headers: Vec::new(),
            otlp_bearer_token_file: None,
            otlp_ca: None,
            otlp_client_cert: None,
            otlp_client_key: None,
            otlp_insecure_skip_verify: false,
            remote_write_url: None,
            remote_write_bearer_token_file: None,
            remote_write_username: None,
            remote_write_password_file: None,
            remote_write_ca: None,
            remote_write_client_cert: None,
            remote_write_client_key: None,
            remote_write_insecure_skip_verify: false,
            influx_url: None,
            influx_db: None,
            influx_org: None,
            influx_bucket: None,
            influx_token_file: None,
            influx_precision: InfluxPrecision::Ns,
            influx_ca: None,
            influx_insecure_skip_verify: false,
            influx_gzip: false,
            push_queue_capacity: defaults::PUSH_QUEUE_CAPACITY,
            push_timeout: defaults::duration(defaults::PUSH_TIMEOUT),
            push_max_backoff: defaults::duration(defaults::PUSH_MAX_BACKOFF),
            aggregate: Vec::new(),
            aggregate_file: None,
            drop_families: Vec::new(),
            drop_labels: Vec::new(),
        }
    }
}

impl ExportArgs {
    pub fn otlp_tls(&self) -> ClientTls {
        ClientTls {
            ca: self.otlp_ca.clone(),
            cert: self.otlp_client_cert.clone(),
            key: self.otlp_client_key.clone(),
            insecure_skip_verify: self.otlp_insecure_skip_verify,
        }
    }

    pub fn remote_write_tls(&self) -> ClientTls {
        ClientTls {
            ca: self.remote_write_ca.clone(),
            cert: self.remote_write_client_cert.clone(),
            key: self.remote_write_client_key.clone(),
            insecure_skip_verify: self.remote_write_insecure_skip_verify,
        }
    }

    pub fn influx_tls(&self) -> ClientTls {
        ClientTls {
            ca: self.influx_ca.clone(),
            cert: None,
            key: None,
            insecure_skip_verify: self.influx_insecure_skip_verify,
        }
    }

    /// Appends the flags that differ from the defaults, in a fixed order.
    pub fn push_args(&self, args: &mut Vec<String>) {
        let defaults = Self::default();
        let path = |p: &PathBuf| p.display().to_string();
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        let opt = |args: &mut Vec<String>, flag: &str, value: Option<String>| {
            if let Some(value) = value {
                push(args, flag, value);
            }
        };
        opt(args, "--otlp-endpoint", self.otlp_endpoint.clone());
        if self.otlp_protocol != defaults.otlp_protocol {
            push(
                args,
                "--otlp-protocol",
                self.otlp_protocol.as_str().to_owned(),
            );
        }
        if self.otlp_compression != defaults.otlp_compression {
            push(
                args,
                "--otlp-compression",
                self.otlp_compression.as_str().to_owned(),
            );
        }
        for header in &self.otlp_headers {
            push(args, "--otlp-header", header.clone());
        }
        opt(
            args,
            "--otlp-bearer-token-file",
            self.otlp_bearer_token_file.as_ref().map(path),
        );
        opt(args, "--otlp-ca", self.otlp_ca.as_ref().map(path));
        opt(
            args,
            "--otlp-client-cert",
            self.otlp_client_cert.as_ref().map(path),
        );
        opt(
            args,
            "--otlp-client-key",
            self.otlp_client_key.as_ref().map(path),
        );
        if self.otlp_insecure_skip_verify {
            args.push("--otlp-insecure-skip-verify".to_owned());
        }
        opt(args, "--remote-write-url", self.remote_write_url.clone());
        opt(
            args,
            "--remote-write-bearer-token-file",
            self.remote_write_bearer_token_file.as_ref().map(path),
        );
        opt(
            args,
            "--remote-write-username",
            self.remote_write_username.clone(),
        );
        opt(
            args,
            "--remote-write-password-file",
            self.remote_write_password_file.as_ref().map(path),
        );
        opt(
            args,
            "--remote-write-ca",
            self.remote_write_ca.as_ref().map(path),
        );
        opt(
            args,
            "--remote-write-client-cert",
            self.remote_write_client_cert.as_ref().map(path),
        );
        opt(
            args,
            "--remote-write-client-key",
            self.remote_write_client_key.as_ref().map(path),
        );
        if self.remote_write_insecure_skip_verify {
            args.push("--remote-write-insecure-skip-verify".to_owned());
        }
        opt(args, "--influx-url", self.influx_url.clone());
        opt(args, "--influx-db", self.influx_db.clone());
        opt(args, "--influx-org", self.influx_org.clone());
        opt(args, "--influx-bucket", self.influx_bucket.clone());
        opt(
            args,
            "--influx-token-file",
            self.influx_token_file.as_ref().map(path),
        );
        if self.influx_precision != defaults.influx_precision {
            push(
                args,
                "--influx-precision",
                self.influx_precision.as_str().to_owned(),
            );
        }
        opt(args, "--influx-ca", self.influx_ca.as_ref().map(path));
        if self.influx_insecure_skip_verify {
            args.push("--influx-insecure-skip-verify".to_owned());
        }
        if self.influx_gzip {
            args.push("--influx-gzip".to_owned());
        }
        if self.push_queue_capacity != defaults.push_queue_capacity {
            push(
                args,
                "--push-queue-capacity",
                self.push_queue_capacity.to_string(),
            );
        }
        if self.push_timeout != defaults.push_timeout {
            push(args, "--push-timeout", duration(self.push_timeout));
        }
        if self.push_max_backoff != defaults.push_max_backoff {
            push(args, "--push-max-backoff", duration(self.push_max_backoff));
        }
        for rule in &self.aggregate {
            push(args, "--aggregate", rule.clone());
        }
        opt(
            args,
            "--aggregate-file",
            self.aggregate_file.as_ref().map(path),
        );
        for family in &self.drop_families {
            push(args, "--drop-family", family.clone());
        }
        for label in &self.drop_labels {
            push(args, "--drop-label", label.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::{ApiArgs, HandlerArgs, InfluxPrecision, OtlpCompression, OtlpProtocol};

    #[test]
    fn export_flags_round_trip() {
        let args = HandlerArgs::try_parse_from([
            "virt-handler-metrics",
            "--otlp-endpoint",
            "https://otel:4317",
            "--otlp-protocol",
            "grpc",
            "--otlp-compression",
            "gzip",
            "--otlp-header",
            "X-Scope-OrgID=tenant-a",
            "--otlp-header",
            "X-Other=b",
            "--otlp-ca",
            "/etc/otel/ca.crt",
            "--remote-write-url",
            "http://mimir/api/v1/push",
            "--remote-write-username",
            "kv",
            "--remote-write-password-file",
            "/etc/rw/password",
            "--influx-url",
            "http://influx:8086",
            "--influx-org",
            "ops",
            "--influx-bucket",
            "kubevirt",
            "--influx-token-file",
            "/etc/influx/token",
            "--influx-precision",
            "ms",
            "--influx-gzip",
            "--push-queue-capacity",
            "3",
            "--push-timeout",
            "3s",
            "--aggregate",
            "sum by (namespace) (kubevirt_vmi_memory_resident_bytes)",
            "--drop-family",
            "kubevirt_vmi_vcpu_.*",
            "--drop-label",
            "node",
        ])
        .expect("valid flags");
        let export = &args.common.export;
        assert_eq!(export.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(export.otlp_compression, OtlpCompression::Gzip);
        assert_eq!(export.otlp_headers.len(), 2);
        assert_eq!(export.influx_precision, InfluxPrecision::Ms);
        assert!(export.influx_gzip);
        let mut argv = vec!["virt-handler-metrics".to_owned()];
        argv.extend(args.to_args());
        assert_eq!(
            HandlerArgs::try_parse_from(argv).expect("rendered args parse"),
            args
        );
    }

    #[test]
    fn influx_1x_and_2x_targets_exclude_each_other() {
        let both = ApiArgs::try_parse_from([
            "virt-api-metrics",
            "--influx-url",
            "http://influx:8086",
            "--influx-db",
            "kubevirt",
            "--influx-org",
            "ops",
            "--influx-bucket",
            "b",
        ]);
        assert!(both.is_err());
        let bucket_only = ApiArgs::try_parse_from(["virt-api-metrics", "--influx-bucket", "b"]);
        assert!(bucket_only.is_err());
    }
}
