//! Resolving a component's sidecar settings: component override, else `spec.defaults`, else
//! the operator's built-in default; and checking what CEL also checks, because the plan must
//! never emit a patch that breaks KubeVirt's rollout even if the apiserver did not run CEL.

use std::time::Duration;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, SecurityContext};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use kubevirt_metrics_flags::defaults;

use super::PlanError;
use super::exporters::{self, ResolvedExport};
use crate::api::policy::{RESERVED_PORT_NAMES, RESERVED_PORTS};
use crate::api::{
    CollectorMode, Component, MetricsSidecarPolicySpec, PullPolicy, SidecarSettings, StatsSource,
};

/// Built-in defaults, used where neither the component nor `spec.defaults` says anything.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanDefaults {
    /// Name of the sidecar container in every component's pod.
    pub container_name: String,
    pub port: i32,
    pub port_name: String,
    pub interval: Duration,
    /// Pull policy when the policy sets none and the KubeVirt CR has no `imagePullPolicy`.
    pub pull_policy: PullPolicy,
    pub resources: ResourceRequirements,
}

impl Default for PlanDefaults {
    fn default() -> Self {
        let quantity = |q: &str| Quantity(q.to_owned());
        Self {
            container_name: "metrics-sidecar".to_owned(),
            port: i32::from(defaults::DEFAULT_PORT),
            port_name: "sidecar-metrics".to_owned(),
            interval: defaults::duration(defaults::INTERVAL),
            pull_policy: PullPolicy::IfNotPresent,
            resources: ResourceRequirements {
                requests: Some(
                    [
                        ("cpu".to_owned(), quantity("10m")),
                        ("memory".to_owned(), quantity("32Mi")),
                    ]
                    .into(),
                ),
                limits: Some([("memory".to_owned(), quantity("128Mi"))].into()),
                ..ResourceRequirements::default()
            },
        }
    }
}

/// Interval bounds, the same as the CEL rule on `interval`.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);

/// One component's sidecar, every setting decided.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSidecar {
    pub component: Component,
    pub container_name: String,
    pub image: String,
    pub pull_policy: PullPolicy,
    pub resources: ResourceRequirements,
    pub port: u16,
    pub port_name: String,
    pub tls: bool,
    pub interval: Duration,
    pub mode: CollectorMode,
    /// Only meaningful for virt-handler.
    pub source: StatsSource,
    pub extra_args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub security_context: Option<SecurityContext>,
    /// Push sinks, aggregation, and the Secret volumes they read.
    pub export: ResolvedExport,
}

/// Resolves `component`'s settings from the policy spec. `kubevirt_pull_policy` is the
/// KubeVirt CR's `spec.imagePullPolicy`, followed when the policy sets none, so sidecars
/// pull like the component they sit next to.
pub fn resolve(
    spec: &MetricsSidecarPolicySpec,
    component: Component,
    kubevirt_pull_policy: Option<PullPolicy>,
    defaults: &PlanDefaults,
) -> Result<ResolvedSidecar, PlanError> {
    let own = spec.components.settings(component);
    let base = &spec.defaults;
    let pick = |f: fn(&SidecarSettings) -> Option<&_>| own.and_then(f).or_else(|| f(base));

    let image = pick_image(own, base).ok_or(PlanError::MissingImage { component })?;
    let port = pick(|s: &SidecarSettings| s.port.as_ref())
        .copied()
        .unwrap_or(defaults.port);
    let port = check_port(component, port)?;
    let port_name = own
        .and_then(|s| s.port_name.clone())
        .or_else(|| base.port_name.clone())
        .unwrap_or_else(|| defaults.port_name.clone());
    check_port_name(component, &port_name)?;
    let interval = match own
        .and_then(|s| s.interval.as_deref())
        .or(base.interval.as_deref())
    {
        Some(text) => parse_interval(component, text)?,
        None => defaults.interval,
    };
    let source = match (component, &spec.components.virt_handler) {
        (Component::VirtHandler, Some(handler)) => handler.source.unwrap_or(StatsSource::Launcher),
        _ => StatsSource::Launcher,
    };
    let export = exporters::resolve(spec, component)?;
    let extra_args = own
        .and_then(|s| s.extra_args.clone())
        .or_else(|| base.extra_args.clone())
        .unwrap_or_default();
    exporters::conflicting_extra_args(component, &export.args, &extra_args)?;

    Ok(ResolvedSidecar {
        component,
        container_name: defaults.container_name.clone(),
        image,
        pull_policy: own
            .and_then(|s| s.image_pull_policy)
            .or(base.image_pull_policy)
            .or(kubevirt_pull_policy)
            .unwrap_or(defaults.pull_policy),
        resources: own
            .and_then(|s| s.resources.clone())
            .or_else(|| base.resources.clone())
            .unwrap_or_else(|| defaults.resources.clone()),
        port,
        port_name,
        tls: own
            .and_then(|s| s.tls.as_ref())
            .or(base.tls.as_ref())
            .is_none_or(|t| t.enabled),
        interval,
        mode: own
            .and_then(|s| s.mode)
            .or(base.mode)
            .unwrap_or(CollectorMode::Complement),
        source,
        extra_args,
        env: own
            .and_then(|s| s.env.clone())
            .or_else(|| base.env.clone())
            .unwrap_or_default(),
        security_context: own
            .and_then(|s| s.security_context.clone())
            .or_else(|| base.security_context.clone()),
        export,
    })
}

fn pick_image(own: Option<&SidecarSettings>, base: &SidecarSettings) -> Option<String> {
    own.and_then(|s| s.image.clone())
        .or_else(|| base.image.clone())
        .filter(|image| !image.trim().is_empty())
}

fn check_port(component: Component, port: i32) -> Result<u16, PlanError> {
    let invalid = |reason: &'static str| PlanError::InvalidPort {
        component,
        port,
        reason,
    };
    if !(1024..=65535).contains(&port) {
        return Err(invalid("must be between 1024 and 65535"));
    }
    if RESERVED_PORTS.contains(&port) || component.taken_ports().contains(&port) {
        return Err(invalid("is used by a KubeVirt component"));
    }
    u16::try_from(port).map_err(|_| invalid("must be between 1024 and 65535"))
}

fn check_port_name(component: Component, name: &str) -> Result<(), PlanError> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let valid = !name.is_empty()
        && name.len() <= 15
        && valid_chars
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !RESERVED_PORT_NAMES.contains(&name);
    if valid {
        Ok(())
    } else {
        Err(PlanError::InvalidPortName {
            component,
            name: name.to_owned(),
        })
    }
}

/// Parses an interval the way the CEL rule admits it (`30s`, `1m30s`, ...), then checks the
/// bounds.
fn parse_interval(component: Component, text: &str) -> Result<Duration, PlanError> {
    let invalid = |reason: String| PlanError::InvalidInterval {
        component,
        value: text.to_owned(),
        reason,
    };
    let interval = parse_go_duration(text)
        .ok_or_else(|| invalid("not a duration such as 30s, 1m or 1m30s".to_owned()))?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(invalid("must be between 5s and 10m".to_owned()));
    }
    Ok(interval)
}

/// The subset of Go duration syntax the CRD admits: one or more `<digits><unit>` with unit
/// `ms`, `s`, `m` or `h`, no spaces, no fractions.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(value).ok()?)?)?;
        rest = &rest[len..];
    }
    Some(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_go_duration("1500ms"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "30", "s", "1.5m", "1m 30s", "-1s", "1d"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn port_names() {
        for ok in ["sidecar-metrics", "m9", "kv-metrics2"] {
            assert!(check_port_name(Component::VirtApi, ok).is_ok(), "{ok}");
        }
        for bad in [
            "metrics",
            "vmstats",
            "-x",
            "x-",
            "UPPER",
            "1234",
            "a-very-long-port-name",
        ] {
            assert!(check_port_name(Component::VirtApi, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert!(check_port(Component::VirtHandler, 9443).is_ok());
        for bad in [80, 8443, 8187, 8186, 8444, 70000] {
            assert!(check_port(Component::VirtHandler, bad).is_err(), "{bad}");
        }
    }
}
