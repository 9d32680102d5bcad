//! A component's push sinks and aggregation, resolved from the policy: the collector's
//! export flags (rendered by the collectors' own `ExportArgs`), and the Secret volumes and
//! mounts their credentials need.
//!
//! **Resolution.** Each of `otlp`, `remoteWrite`, `influxdb` and `queue` comes as a whole from
//! the component's `exporters` when it sets it, else from `spec.defaults.exporters`; a sink
//! with `enabled: false` is off. `aggregations` comes from the component, else
//! `spec.aggregations`, as a whole.
//!
//! **Secrets.** One projected volume per sink that needs files, named
//! `kubevirt-metrics-<sink>` and mounted read-only at `/var/run/secrets/kubevirt-metrics/<sink>`;
//! it projects only the referenced keys, each under a fixed file name (`bearer-token`,
//! `password`, `token`, `ca.crt`, `tls.crt`, `tls.key`), and the flag names that file. The
//! volume is part of the same patch entry as the container, so removing the entry removes
//! both. Every source is `optional`: a Secret that is missing (or lacks the key) never keeps
//! the KubeVirt component's pod from starting; the sidecar then reports the missing file and
//! [`missing_secrets`] lets the status say which reference is dangling.
//!
//! **Checks.** Everything the CRD's CEL rules reject is rejected here too, all problems of a
//! component at once, because `render` never sees an API server and the plan must never emit
//! flags the sidecar refuses (a sidecar that exits fails virt-handler's canary rollout).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use kubevirt_metrics_flags::{ExportArgs, InfluxPrecision, OtlpCompression, OtlpProtocol};
use serde_json::{Value, json};

use super::PlanError;
use super::settings::parse_go_duration;
use crate::api::exporters::{
    Aggregations, ClientTlsSettings, Exporters, InfluxExporter, InfluxPrecisionSetting,
    OtlpExporter, OtlpProtocolSetting, PushQueue, RemoteWriteExporter, SecretKeyRef,
    ServerTlsSettings,
};
use crate::api::{Component, MetricsSidecarPolicySpec};

/// Where the sinks' Secret volumes are mounted in the sidecar.
pub const SECRETS_ROOT: &str = "/var/run/secrets/kubevirt-metrics";

/// Bounds, the same as the CEL rules.
const MAX_QUEUE_CAPACITY: i32 = 1000;
const TIMEOUT_BOUNDS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(300));
const BACKOFF_BOUNDS: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

/// A push sink, as the policy names it and as the pod sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sink {
    Otlp,
    RemoteWrite,
    Influxdb,
}

impl Sink {
    /// The field under `exporters`.
    pub fn field(self) -> &'static str {
        match self {
            Self::Otlp => "otlp",
            Self::RemoteWrite => "remoteWrite",
            Self::Influxdb => "influxdb",
        }
    }

    /// Directory under [`SECRETS_ROOT`].
    fn dir(self) -> &'static str {
        match self {
            Self::Otlp => "otlp",
            Self::RemoteWrite => "remote-write",
            Self::Influxdb => "influxdb",
        }
    }

    /// Name of the pod volume holding the sink's Secret keys.
    pub fn volume(self) -> String {
        format!("kubevirt-metrics-{}", self.dir())
    }
}

/// One Secret key a sidecar reads, and the policy field that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    /// e.g. `otlp.tls.caSecretRef`.
    pub field: String,
    pub secret: SecretKeyRef,
}

/// A component's exporters and aggregation, ready for the container and the pod.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResolvedExport {
    pub args: ExportArgs,
    /// Pod volumes (one projected volume per sink with Secret files), in [`Sink`] order.
    pub volumes: Vec<Value>,
    /// The sidecar's mounts of those volumes.
    pub mounts: Vec<Value>,
    pub secrets: Vec<SecretUse>,
}

/// Resolves `component`'s exporters and aggregation; every problem found is reported at once.
pub fn resolve(
    spec: &MetricsSidecarPolicySpec,
    component: Component,
) -> Result<ResolvedExport, PlanError> {
    let own = spec
        .components
        .settings(component)
        .and_then(|s| s.exporters.as_ref());
    let base = spec.defaults.exporters.as_ref();

    let mut out = Builder::default();
    if let Some(otlp) = pick(own, base, |e| e.otlp.as_ref()).filter(|s| s.enabled) {
        out.otlp(otlp);
    }
    if let Some(rw) = pick(own, base, |e| e.remote_write.as_ref()).filter(|s| s.enabled) {
        out.remote_write(rw);
    }
    if let Some(influx) = pick(own, base, |e| e.influxdb.as_ref()).filter(|s| s.enabled) {
        out.influx(influx);
    }
    if let Some(queue) = pick(own, base, |e| e.queue.as_ref()) {
        out.queue(queue);
    }
    let aggregations = spec
        .components
        .aggregations(component)
        .or(spec.aggregations.as_ref());
    if let Some(aggregations) = aggregations {
        out.aggregations(aggregations);
    }
    out.finish(component)
}

/// The component's setting, else the default's.
fn pick<'a, T>(
    own: Option<&'a Exporters>,
    base: Option<&'a Exporters>,
    field: fn(&'a Exporters) -> Option<&'a T>,
) -> Option<&'a T> {
    own.and_then(field).or_else(|| base.and_then(field))
}

/// Accumulates flags, files and problems.
#[derive(Default)]
struct Builder {
    args: ExportArgs,
    /// Per sink: (file name, Secret key, policy field).
    files: BTreeMap<Sink, Vec<(&'static str, SecretKeyRef, String)>>,
    problems: Vec<String>,
}

impl Builder {
    fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(format!("{field}: {}", message.into()));
    }

    /// Registers a Secret key as a file of `sink` and returns its path in the sidecar.
    fn file(
        &mut self,
        sink: Sink,
        name: &'static str,
        field: String,
        secret: &SecretKeyRef,
    ) -> PathBuf {
        if let Err(message) = check_secret_ref(secret) {
            self.problem(&field, message);
        }
        self.files
            .entry(sink)
            .or_default()
            .push((name, secret.clone(), field));
        PathBuf::from(format!("{SECRETS_ROOT}/{}/{name}", sink.dir()))
    }

    fn url(&mut self, field: &str, value: Option<&String>) -> Option<String> {
        match value {
            None => {
                self.problem(field, "is required");
                None
            }
            Some(url) => {
                if let Err(message) = check_url(url) {
                    self.problem(field, message);
                }
                Some(url.clone())
            }
        }
    }

    fn otlp(&mut self, otlp: &OtlpExporter) {
        let sink = Sink::Otlp;
        self.args.otlp_endpoint = self.url("otlp.endpoint", otlp.endpoint.as_ref());
        self.args.otlp_protocol = match otlp.protocol {
            Some(OtlpProtocolSetting::Grpc) => OtlpProtocol::Grpc,
            Some(OtlpProtocolSetting::Http) | None => OtlpProtocol::Http,
        };
        if otlp.gzip == Some(true) {
            self.args.otlp_compression = OtlpCompression::Gzip;
        }
        for (name, value) in otlp.headers.iter().flatten() {
            match check_header(name, value) {
                Ok(()) => self.args.otlp_headers.push(format!("{name}={value}")),
                Err(message) => self.problem(&format!("otlp.headers[{name}]"), message),
            }
        }
        if let Some(token) = &otlp.bearer_token_secret_ref {
            let path = self.file(
                sink,
                "bearer-token",
                "otlp.bearerTokenSecretRef".into(),
                token,
            );
            self.args.otlp_bearer_token_file = Some(path);
        }
        if let Some(tls) = &otlp.tls {
            let [ca, cert, key] = self.client_tls(sink, tls);
            self.args.otlp_ca = ca;
            self.args.otlp_client_cert = cert;
            self.args.otlp_client_key = key;
            self.args.otlp_insecure_skip_verify = tls.insecure_skip_verify.unwrap_or(false);
        }
    }

    fn remote_write(&mut self, rw: &RemoteWriteExporter) {
        let sink = Sink::RemoteWrite;
        self.args.remote_write_url = self.url("remoteWrite.url", rw.url.as_ref());
        if rw.bearer_token_secret_ref.is_some() && rw.basic_auth.is_some() {
            self.problem(
                "remoteWrite",
                "bearerTokenSecretRef and basicAuth exclude each other",
            );
        }
        if let Some(token) = &rw.bearer_token_secret_ref {
            let path = self.file(
                sink,
                "bearer-token",
                "remoteWrite.bearerTokenSecretRef".into(),
                token,
            );
            self.args.remote_write_bearer_token_file = Some(path);
        }
        if let Some(basic) = &rw.basic_auth {
            if basic.username.is_empty() || basic.username.contains(':') {
                self.problem(
                    "remoteWrite.basicAuth.username",
                    "must be non-empty and must not contain ':'",
                );
            }
            self.args.remote_write_username = Some(basic.username.clone());
            let path = self.file(
                sink,
                "password",
                "remoteWrite.basicAuth.passwordSecretRef".into(),
                &basic.password_secret_ref,
            );
            self.args.remote_write_password_file = Some(path);
        }
        if let Some(tls) = &rw.tls {
            let [ca, cert, key] = self.client_tls(sink, tls);
            self.args.remote_write_ca = ca;
            self.args.remote_write_client_cert = cert;
            self.args.remote_write_client_key = key;
            self.args.remote_write_insecure_skip_verify = tls.insecure_skip_verify.unwrap_or(false);
        }
    }

    fn influx(&mut self, influx: &InfluxExporter) {
        let sink = Sink::Influxdb;
        self.args.influx_url = self.url("influxdb.url", influx.url.as_ref());
        let non_empty = |v: &Option<String>| v.as_ref().filter(|s| !s.is_empty()).cloned();
        let (database, org, bucket) = (
            non_empty(&influx.database),
            non_empty(&influx.org),
            non_empty(&influx.bucket),
        );
        match (&database, &org, &bucket) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            (Some(_), _, _) => self.problem(
                "influxdb",
                "database (InfluxDB 1.x) and org/bucket (InfluxDB 2.x) exclude each other",
            ),
            (None, None, None) => self.problem(
                "influxdb",
                "needs database (InfluxDB 1.x) or org and bucket (InfluxDB 2.x)",
            ),
            (None, _, _) => self.problem("influxdb", "org and bucket must be set together"),
        }
        self.args.influx_db = database;
        self.args.influx_org = org;
        self.args.influx_bucket = bucket;
        if let Some(token) = &influx.token_secret_ref {
            let path = self.file(sink, "token", "influxdb.tokenSecretRef".into(), token);
            self.args.influx_token_file = Some(path);
        }
        self.args.influx_precision = match influx.precision {
            None | Some(InfluxPrecisionSetting::Ns) => InfluxPrecision::Ns,
            Some(InfluxPrecisionSetting::Us) => InfluxPrecision::Us,
            Some(InfluxPrecisionSetting::Ms) => InfluxPrecision::Ms,
            Some(InfluxPrecisionSetting::S) => InfluxPrecision::S,
        };
        self.args.influx_gzip = influx.gzip.unwrap_or(false);
        if let Some(tls) = &influx.tls {
            self.args.influx_ca = self.server_tls(sink, tls);
            self.args.influx_insecure_skip_verify = tls.insecure_skip_verify.unwrap_or(false);
        }
    }

    /// CA, client certificate and key paths.
    fn client_tls(&mut self, sink: Sink, tls: &ClientTlsSettings) -> [Option<PathBuf>; 3] {
        let field = |f: &str| format!("{}.tls.{f}", sink.field());
        if tls.cert_secret_ref.is_some() != tls.key_secret_ref.is_some() {
            self.problem(
                &format!("{}.tls", sink.field()),
                "certSecretRef and keySecretRef must be set together",
            );
        }
        let ca = self.server_tls(
            sink,
            &ServerTlsSettings {
                ca_secret_ref: tls.ca_secret_ref.clone(),
                insecure_skip_verify: tls.insecure_skip_verify,
            },
        );
        let cert = tls
            .cert_secret_ref
            .as_ref()
            .map(|r| self.file(sink, "tls.crt", field("certSecretRef"), r));
        let key = tls
            .key_secret_ref
            .as_ref()
            .map(|r| self.file(sink, "tls.key", field("keySecretRef"), r));
        [ca, cert, key]
    }

    /// The CA path.
    fn server_tls(&mut self, sink: Sink, tls: &ServerTlsSettings) -> Option<PathBuf> {
        if tls.ca_secret_ref.is_some() && tls.insecure_skip_verify == Some(true) {
            self.problem(
                &format!("{}.tls", sink.field()),
                "caSecretRef and insecureSkipVerify exclude each other",
            );
        }
        let field = format!("{}.tls.caSecretRef", sink.field());
        tls.ca_secret_ref
            .as_ref()
            .map(|r| self.file(sink, "ca.crt", field, r))
    }

    fn queue(&mut self, queue: &PushQueue) {
        if let Some(capacity) = queue.capacity {
            match usize::try_from(capacity) {
                Ok(n) if (1..=MAX_QUEUE_CAPACITY).contains(&capacity) => {
                    self.args.push_queue_capacity = n;
                }
                _ => self.problem("queue.capacity", "must be between 1 and 1000"),
            }
        }
        if let Some(text) = &queue.timeout {
            match bounded_duration(text, TIMEOUT_BOUNDS, "100ms and 5m") {
                Ok(d) => self.args.push_timeout = d,
                Err(m) => self.problem("queue.timeout", m),
            }
        }
        if let Some(text) = &queue.max_backoff {
            match bounded_duration(text, BACKOFF_BOUNDS, "1s and 1h") {
                Ok(d) => self.args.push_max_backoff = d,
                Err(m) => self.problem("queue.maxBackoff", m),
            }
        }
    }

    fn aggregations(&mut self, aggregations: &Aggregations) {
        for rule in &aggregations.rules {
            if rule.trim().is_empty() || rule.contains([';', '\n', '\r']) || rule.len() > 1024 {
                self.problem(
                    "aggregations.rules",
                    format!("{rule:?} must be a non-empty single line of at most 1024 characters without ';'"),
                );
            }
        }
        for family in &aggregations.drop_families {
            if family.is_empty() || family.contains(',') || family.len() > 256 {
                self.problem(
                    "aggregations.dropFamilies",
                    format!("{family:?} must be a non-empty name or regex of at most 256 characters without ','"),
                );
            }
        }
        for label in &aggregations.drop_labels {
            if !is_label_name(label) {
                self.problem(
                    "aggregations.dropLabels",
                    format!("{label:?} is not a Prometheus label name"),
                );
            }
        }
        self.args.aggregate = aggregations.rules.clone();
        self.args.drop_families = aggregations.drop_families.clone();
        self.args.drop_labels = aggregations.drop_labels.clone();
    }

    fn finish(self, component: Component) -> Result<ResolvedExport, PlanError> {
        if !self.problems.is_empty() {
            return Err(PlanError::Exporters {
                component,
                problems: self.problems,
            });
        }
        let mut out = ResolvedExport {
            args: self.args,
            ..ResolvedExport::default()
        };
        for (sink, files) in self.files {
            out.volumes.push(projected_volume(sink, &files));
            out.mounts.push(json!({
                "name": sink.volume(),
                "mountPath": format!("{SECRETS_ROOT}/{}", sink.dir()),
                "readOnly": true,
            }));
            out.secrets.extend(
                files
                    .into_iter()
                    .map(|(_, secret, field)| SecretUse { field, secret }),
            );
        }
        Ok(out)
    }
}

/// A projected volume with one `secret` source per Secret (in first-use order), each
/// projecting only the referenced keys under their fixed file names.
fn projected_volume(sink: Sink, files: &[(&'static str, SecretKeyRef, String)]) -> Value {
    let mut order: Vec<&str> = Vec::new();
    let mut items: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (file, secret, _) in files {
        if !order.contains(&secret.name.as_str()) {
            order.push(&secret.name);
        }
        items
            .entry(&secret.name)
            .or_default()
            .push(json!({"key": secret.key, "path": file}));
    }
    let sources: Vec<Value> = order
        .iter()
        .map(|name| {
            json!({"secret": {
                "name": name,
                "items": items.remove(name).unwrap_or_default(),
                "optional": true,
            }})
        })
        .collect();
    json!({"name": sink.volume(), "projected": {"sources": sources}})
}

/// Flags of `export` that `extra_args` sets again. The collectors take every export flag
/// but the repeatable ones (`--otlp-header`, `--aggregate`, `--drop-family`, `--drop-label`)
/// at most once and refuse to start otherwise, and `extraArgs` and `exporters` may come from
/// different levels (`spec.defaults`, the component): a combination no CRD rule can see.
pub fn conflicting_extra_args(
    component: Component,
    export: &ExportArgs,
    extra_args: &[String],
) -> Result<(), PlanError> {
    const REPEATABLE: [&str; 4] = [
        "--otlp-header",
        "--aggregate",
        "--drop-family",
        "--drop-label",
    ];
    let mut rendered = Vec::new();
    export.push_args(&mut rendered);
    let ours: BTreeSet<&str> = rendered
        .iter()
        .filter(|a| a.starts_with("--") && !REPEATABLE.contains(&a.as_str()))
        .map(String::as_str)
        .collect();
    let problems: Vec<String> = extra_args
        .iter()
        .filter_map(|arg| {
            let flag = arg.split('=').next().unwrap_or_default();
            ours.contains(flag).then(|| {
                format!("extraArgs: {flag} is also set by exporters or aggregations; set it in one place")
            })
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PlanError::Exporters {
            component,
            problems,
        })
    }
}

/// `http://` or `https://`, a host, no credentials, no spaces (what the CEL rules admit).
pub fn check_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|scheme| lower.strip_prefix(scheme))
        .ok_or("must be an http:// or https:// URL with a host")?;
    if url.chars().any(char::is_whitespace) {
        return Err("must be an http:// or https:// URL with a host".to_owned());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("must not carry credentials (user:password@): use a Secret reference".into());
    }
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        return Err("must be an http:// or https:// URL with a host".to_owned());
    }
    Ok(())
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&*+.^_|~-".contains(&b);
    if name.is_empty() || name.len() > 128 || !name.bytes().all(token) {
        return Err("is not an HTTP header name".to_owned());
    }
    let lower = name.to_ascii_lowercase();
    if ["authorization", "proxy-authorization", "cookie"].contains(&lower.as_str()) {
        return Err("credentials come from bearerTokenSecretRef, not headers".to_owned());
    }
    if value.len() > 1024 || value.contains([',', '\n', '\r']) {
        return Err("value must be at most 1024 characters without commas or line breaks".into());
    }
    Ok(())
}

fn check_secret_ref(secret: &SecretKeyRef) -> Result<(), String> {
    let label = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    };
    if secret.name.len() > 253 || !secret.name.split('.').all(label) {
        return Err(format!(
            "secret name {:?} is not a DNS subdomain",
            secret.name
        ));
    }
    let key_ok = !secret.key.is_empty()
        && secret.key.len() <= 253
        && secret
            .key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        && secret.key != "."
        && secret.key != "..";
    if !key_ok {
        return Err(format!("secret key {:?} is not a valid key", secret.key));
    }
    Ok(())
}

fn is_label_name(label: &str) -> bool {
    let mut bytes = label.bytes();
    label.len() <= 128
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A duration within `bounds` (`in_words` says them in the error).
fn bounded_duration(
    text: &str,
    bounds: (Duration, Duration),
    in_words: &str,
) -> Result<Duration, String> {
    let duration = parse_go_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as 10s or 1m"))?;
    if (bounds.0..=bounds.1).contains(&duration) {
        Ok(duration)
    } else {
        Err(format!("{text:?} must be between {in_words}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for ok in [
            "http://otel:4318",
            "https://mimir.example/api/v1/push",
            "http://[::1]:8086",
            "HTTP://influx",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "otel:4318",
            "ftp://x",
            "http://",
            "http:///path",
            "http://u:p@host",
            "http://h ost",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_and_labels() {
        assert!(check_header("X-Scope-OrgID", "tenant-a").is_ok());
        assert!(check_header("Authorization", "Bearer x").is_err());
        assert!(check_header("X-A", "a,b").is_err());
        assert!(check_header("X A", "a").is_err());
        assert!(is_label_name("node") && is_label_name("_x1"));
        assert!(!is_label_name("1x") && !is_label_name("a-b") && !is_label_name(""));
    }

    #[test]
    fn secret_refs() {
        let r = |name: &str, key: &str| SecretKeyRef {
            name: name.into(),
            key: key.into(),
        };
        assert!(check_secret_ref(&r("otlp-auth", "token")).is_ok());
        assert!(check_secret_ref(&r("a.b-c", "tls.crt")).is_ok());
        assert!(check_secret_ref(&r("Bad", "k")).is_err());
        assert!(check_secret_ref(&r("ok", "..")).is_err());
        assert!(check_secret_ref(&r("ok", "a/b")).is_err());
    }
}
