//! The sidecars' command line: flags and environment of the four collectors, their defaults
//! (one table, [`defaults`]), the families each collector can serve ([`catalog`]) and the
//! log set-up every binary of the project shares ([`telemetry`]).
//!
//! Both the collectors and the operator depend on this crate: the collectors parse these
//! structs, the operator builds them (`..Default::default()`) and calls `to_args()` to render
//! a sidecar's arguments, so what it writes into the KubeVirt CR is always something the
//! collector parses (a round-trip test holds the two together), without the operator
//! compiling any collector code.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

pub mod catalog;
mod control_plane;
pub mod defaults;
mod export;
pub mod telemetry;

pub use control_plane::*;
pub use defaults::{DEFAULT_NAMESPACE, DEFAULT_PORT, VIRT_CONTROLLER_LEASE, VIRT_OPERATOR_LEASE};
pub use export::{ClientTls, ExportArgs, InfluxPrecision, OtlpCompression, OtlpProtocol};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Mode {
    /// Export only the families the co-located component does not serve itself.
    #[default]
    Complement,
    /// Export every family this collector can produce (KubeVirt's own scraping is off).
    Full,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complement => "complement",
            Self::Full => "full",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Source {
    /// virt-launcher's cmd socket, found through the node's VMIs (inside a KubeVirt pod).
    #[default]
    Launcher,
    /// One or more libvirt connections (`--libvirt-uri`).
    Libvirt,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Launcher => "launcher",
            Self::Libvirt => "libvirt",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Flags every collector takes.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CommonArgs {
    /// Address to serve /metrics, /healthz and /readyz on. When not given, the port comes
    /// from METRICS_PORT (as VEP-1827 shows) or defaults to 9443, on all interfaces.
    #[arg(long, env = "COLLECTOR_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,

    /// Port used when --listen is not given.
    #[arg(long, env = "METRICS_PORT", value_name = "PORT", hide = true)]
    pub metrics_port: Option<u16>,

    /// complement: leave out every family the co-located component already serves (the
    /// default, so no series is scraped twice from one pod); full: export everything.
    #[arg(long, env = "COLLECTOR_MODE", value_enum, default_value_t = Mode::Complement)]
    pub mode: Mode,

    /// The co-located component's own metrics endpoint, asked which families it serves.
    #[arg(long, env = "COLLECTOR_COMPONENT_METRICS_URL", default_value = defaults::COMPONENT_METRICS_URL)]
    pub component_metrics_url: String,

    /// CA bundle to verify the component's serving certificate (KubeVirt's CA).
    #[arg(long, env = "COLLECTOR_COMPONENT_CA", value_name = "FILE")]
    pub component_ca: Option<PathBuf>,

    /// Do not verify the component's certificate. Meant for the in-pod loopback address only.
    #[arg(long, env = "COLLECTOR_COMPONENT_INSECURE_SKIP_VERIFY")]
    pub component_insecure_skip_verify: bool,

    /// Complement mode reads the component's whole /metrics at start (retrying until it
    /// answers), after it was unreachable, when its /healthz reports a changed
    /// configuration, and otherwise once per this period. In between it asks only /healthz.
    #[arg(long, env = "COLLECTOR_COMPONENT_RECHECK_INTERVAL", value_parser = humantime::parse_duration, default_value = defaults::COMPONENT_RECHECK_INTERVAL)]
    pub component_recheck_interval: Duration,

    /// Serve HTTPS with this certificate (PEM); reloaded when the file changes.
    #[arg(
        long,
        env = "COLLECTOR_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) for --tls-cert.
    #[arg(
        long,
        env = "COLLECTOR_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// How often to collect. Scrapes in between are served from the last collection.
    #[arg(long, env = "COLLECTOR_INTERVAL", value_parser = humantime::parse_duration, default_value = defaults::INTERVAL)]
    pub interval: Duration,

    /// Deadline of one whole collection pass.
    #[arg(long, env = "COLLECTOR_COLLECTION_TIMEOUT", value_parser = humantime::parse_duration, default_value = defaults::COLLECTION_TIMEOUT)]
    pub collection_timeout: Duration,

    /// Log format.
    #[arg(long, env = "COLLECTOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// At most this many open HTTP connections; past it, the connection idle the longest is
    /// closed to make room, and a new one is refused only when all are busy or not yet read.
    #[arg(long, env = "COLLECTOR_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// A connection must send a complete request within this long of opening or of its
    /// previous response (idle keep-alive connections are closed after it).
    #[arg(long, env = "COLLECTOR_HTTP_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = defaults::HTTP_IDLE_TIMEOUT)]
    pub http_idle_timeout: Duration,

    /// A request head must arrive within this long of its first byte.
    #[arg(long, env = "COLLECTOR_HTTP_HEADER_TIMEOUT", value_parser = humantime::parse_duration, default_value = defaults::HTTP_HEADER_TIMEOUT)]
    pub http_header_timeout: Duration,

    /// A response write that makes no progress for this long ends the connection.
    #[arg(long, env = "COLLECTOR_HTTP_WRITE_TIMEOUT", value_parser = humantime::parse_duration, default_value = defaults::HTTP_WRITE_TIMEOUT)]
    pub http_write_timeout: Duration,

    /// Larger request heads (request line and headers) are answered 431.
    #[arg(long, env = "COLLECTOR_HTTP_MAX_HEADER_BYTES", default_value_t = defaults::HTTP_MAX_HEADER_BYTES)]
    pub http_max_header_bytes: usize,

    /// Threads that run the sidecar's tasks (collection, serving, pushing). Blocking work
    /// (encoding a page, libvirt calls) runs on its own threads besides. Without this bound a
    /// sidecar on a node without a CPU limit would start one per core of the node, and
    /// spreading a pass's calls over more threads costs more CPU in wake-ups than it saves.
    #[arg(long, env = "COLLECTOR_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..), default_value_t = defaults::WORKER_THREADS)]
    pub worker_threads: u16,

    /// Push sinks and aggregation.
    #[command(flatten)]
    pub export: ExportArgs,
}

impl Default for CommonArgs {
    fn default() -> Self {
        Self {
            listen: None,
            metrics_port: None,
            mode: Mode::Complement,
            component_metrics_url: defaults::COMPONENT_METRICS_URL.to_owned(),
            component_ca: None,
            component_insecure_skip_verify: false,
            component_recheck_interval: defaults::duration(defaults::COMPONENT_RECHECK_INTERVAL),
            tls_cert: None,
            tls_key: None,
            interval: defaults::duration(defaults::INTERVAL),
            collection_timeout: defaults::duration(defaults::COLLECTION_TIMEOUT),
            log_format: LogFormat::Text,
            max_connections: defaults::MAX_CONNECTIONS,
            http_idle_timeout: defaults::duration(defaults::HTTP_IDLE_TIMEOUT),
            http_header_timeout: defaults::duration(defaults::HTTP_HEADER_TIMEOUT),
            http_write_timeout: defaults::duration(defaults::HTTP_WRITE_TIMEOUT),
            http_max_header_bytes: defaults::HTTP_MAX_HEADER_BYTES,
            worker_threads: defaults::WORKER_THREADS,
            export: ExportArgs::default(),
        }
    }
}

impl CommonArgs {
    /// The address to listen on: `--listen`, else `0.0.0.0:$METRICS_PORT`, else `0.0.0.0:9443`.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                self.metrics_port.unwrap_or(DEFAULT_PORT),
            )
        })
    }

    /// Renders the flags that differ from the defaults, in a fixed order, so the same
    /// configuration always gives the same argument list (the operator relies on this).
    pub fn to_args(&self) -> Vec<String> {
        let defaults = Self::default();
        let mut args = Vec::new();
        if let Some(listen) = self.listen {
            push(&mut args, "--listen", listen.to_string());
        }
        if let Some(port) = self.metrics_port {
            push(&mut args, "--metrics-port", port.to_string());
        }
        if self.mode != defaults.mode {
            push(&mut args, "--mode", self.mode.as_str().to_owned());
        }
        if self.component_metrics_url != defaults.component_metrics_url {
            push(
                &mut args,
                "--component-metrics-url",
                self.component_metrics_url.clone(),
            );
        }
        if let Some(ca) = &self.component_ca {
            push(&mut args, "--component-ca", ca.display().to_string());
        }
        if self.component_insecure_skip_verify {
            args.push("--component-insecure-skip-verify".to_owned());
        }
        if self.component_recheck_interval != defaults.component_recheck_interval {
            push(
                &mut args,
                "--component-recheck-interval",
                humantime::format_duration(self.component_recheck_interval).to_string(),
            );
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            push(&mut args, "--tls-cert", cert.display().to_string());
            push(&mut args, "--tls-key", key.display().to_string());
        }
        if self.interval != defaults.interval {
            push(
                &mut args,
                "--interval",
                humantime::format_duration(self.interval).to_string(),
            );
        }
        if self.collection_timeout != defaults.collection_timeout {
            push(
                &mut args,
                "--collection-timeout",
                humantime::format_duration(self.collection_timeout).to_string(),
            );
        }
        if self.log_format == LogFormat::Json {
            push(&mut args, "--log-format", "json".to_owned());
        }
        if self.max_connections != defaults.max_connections {
            push(
                &mut args,
                "--max-connections",
                self.max_connections.to_string(),
            );
        }
        for (flag, value, default) in [
            (
                "--http-idle-timeout",
                self.http_idle_timeout,
                defaults.http_idle_timeout,
            ),
            (
                "--http-header-timeout",
                self.http_header_timeout,
                defaults.http_header_timeout,
            ),
            (
                "--http-write-timeout",
                self.http_write_timeout,
                defaults.http_write_timeout,
            ),
        ] {
            if value != default {
                push(
                    &mut args,
                    flag,
                    humantime::format_duration(value).to_string(),
                );
            }
        }
        if self.http_max_header_bytes != defaults.http_max_header_bytes {
            push(
                &mut args,
                "--http-max-header-bytes",
                self.http_max_header_bytes.to_string(),
            );
        }
        if self.worker_threads != defaults.worker_threads {
            push(
                &mut args,
                "--worker-threads",
                self.worker_threads.to_string(),
            );
        }
        self.export.push_args(&mut args);
        args
    }
}

/// virt-handler-metrics: KubeVirt's per-VMI runtime metrics.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "virt-handler-metrics",
    version,
    about = "Serves KubeVirt's kubevirt_vmi_* runtime metrics next to virt-handler"
)]
pub struct HandlerArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Where domain statistics come from.
    #[arg(long, env = "COLLECTOR_SOURCE", value_enum, default_value_t = Source::Launcher)]
    pub source: Source,

    /// libvirt connection URI for --source libvirt; repeat for one connection per VMI.
    #[arg(
        long = "libvirt-uri",
        env = "COLLECTOR_LIBVIRT_URI",
        value_delimiter = ',',
        default_value = defaults::LIBVIRT_URI
    )]
    pub libvirt_uris: Vec<String>,

    /// This node's name; selects the node's VMIs (`kubevirt.io/nodeName`) and fills the
    /// `node` label.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,

    /// Where the kubelet's pods directory is mounted (virt-handler mounts it at /pods).
    #[arg(long, env = "COLLECTOR_PODS_DIR", default_value = defaults::PODS_DIR)]
    pub pods_dir: PathBuf,

    /// At most this many VMIs are asked at the same time.
    #[arg(long, env = "COLLECTOR_MAX_CONCURRENCY", default_value_t = defaults::MAX_CONCURRENCY)]
    pub max_concurrency: usize,

    /// Deadline for one VMI's statistics.
    #[arg(long, env = "COLLECTOR_VMI_TIMEOUT", value_parser = humantime::parse_duration, default_value = defaults::VMI_TIMEOUT)]
    pub vmi_timeout: Duration,
}

impl Default for HandlerArgs {
    fn default() -> Self {
        Self {
            common: CommonArgs::default(),
            source: Source::Launcher,
            libvirt_uris: vec![defaults::LIBVIRT_URI.to_owned()],
            node_name: String::new(),
            pods_dir: PathBuf::from(defaults::PODS_DIR),
            max_concurrency: defaults::MAX_CONCURRENCY,
            vmi_timeout: defaults::duration(defaults::VMI_TIMEOUT),
        }
    }
}

impl HandlerArgs {
    pub fn to_args(&self) -> Vec<String> {
        let defaults = Self::default();
        let mut args = self.common.to_args();
        if self.source != defaults.source {
            push(&mut args, "--source", self.source.as_str().to_owned());
        }
        if self.libvirt_uris != defaults.libvirt_uris {
            for uri in &self.libvirt_uris {
                push(&mut args, "--libvirt-uri", uri.clone());
            }
        }
        if !self.node_name.is_empty() {
            push(&mut args, "--node-name", self.node_name.clone());
        }
        if self.pods_dir != defaults.pods_dir {
            push(&mut args, "--pods-dir", self.pods_dir.display().to_string());
        }
        if self.max_concurrency != defaults.max_concurrency {
            push(
                &mut args,
                "--max-concurrency",
                self.max_concurrency.to_string(),
            );
        }
        if self.vmi_timeout != defaults.vmi_timeout {
            push(
                &mut args,
                "--vmi-timeout",
                humantime::format_duration(self.vmi_timeout).to_string(),
            );
        }
        args
    }
}

fn push(args: &mut Vec<String>, flag: &str, value: String) {
    args.push(flag.to_owned());
    args.push(value);
}
