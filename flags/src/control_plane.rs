//! Flags of virt-controller-metrics, virt-api-metrics and virt-operator-metrics.
//!
//! Each binary takes [`CommonArgs`] plus what it needs to find KubeVirt's objects (the
//! namespace, this pod's name for the leader rule) and the opt-in backports: metrics newer
//! KubeVirt versions export that the sidecar can derive for older ones. Backports are off by
//! default and only ever fill a family the component does not serve itself.

use clap::{Parser, ValueEnum};

use super::{CommonArgs, push};
use crate::defaults::{DEFAULT_NAMESPACE, VIRT_CONTROLLER_LEASE, VIRT_OPERATOR_LEASE};

/// Backports offered by virt-controller-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ControllerBackport {
    /// `kubevirt_virt_controller_leading_status` from the `virt-controller` Lease.
    LeadingStatus,
}

/// Backports offered by virt-operator-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum OperatorBackport {
    /// `kubevirt_virt_operator_leading_status` from the `virt-operator` Lease.
    LeadingStatus,
}

/// Backports offered by virt-api-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ApiBackport {
    /// `kubevirt_virt_api_ready_status` (KubeVirt v1.9.0): 1 while virt-api's TLS server
    /// answers on its metrics endpoint, which is the server that status describes.
    ReadyStatus,
}

/// `--namespace`, `--pod-name` and `--leader-lease` where they differ from the defaults
/// (the leader-rule flags of virt-controller-metrics and virt-operator-metrics).
fn leader_args(
    args: &mut Vec<String>,
    [namespace, pod_name, lease]: [&String; 3],
    default_lease: &str,
) {
    if namespace != DEFAULT_NAMESPACE {
        push(args, "--namespace", namespace.clone());
    }
    if !pod_name.is_empty() {
        push(args, "--pod-name", pod_name.clone());
    }
    if lease != default_lease {
        push(args, "--leader-lease", lease.clone());
    }
}

fn render_backports<T: ValueEnum>(args: &mut Vec<String>, backports: &[T]) {
    for backport in backports {
        if let Some(value) = backport.to_possible_value() {
            push(args, "--backport", value.get_name().to_owned());
        }
    }
}

/// virt-controller-metrics: KubeVirt's cluster metrics from the objects virt-controller watches.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "virt-controller-metrics",
    version,
    about = "Serves KubeVirt's virt-controller cluster metrics (kubevirt_vm_*, kubevirt_vmi_info, migrations, ...) next to virt-controller"
)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// KubeVirt's namespace: where the `virt-controller` Lease, the KubeVirt CR and ConfigMap
    /// `kubevirt-vm-labels-config` live.
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// This pod's name, compared with the Lease holder. Defaults to the host name, which is
    /// the pod name in Kubernetes.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,

    /// Name of the Lease held by the leading virt-controller.
    #[arg(long, env = "COLLECTOR_LEADER_LEASE", default_value = VIRT_CONTROLLER_LEASE)]
    pub leader_lease: String,

    /// Export cluster metrics whether or not the co-located virt-controller leads (a single
    /// replica without the Lease, or tests). With several replicas this duplicates series.
    #[arg(long, env = "COLLECTOR_IGNORE_LEADERSHIP")]
    pub ignore_leadership: bool,

    /// Opt-in backports (comma-separated or repeated).
    #[arg(
        long = "backport",
        env = "COLLECTOR_BACKPORTS",
        value_enum,
        value_delimiter = ','
    )]
    pub backports: Vec<ControllerBackport>,
}

impl Default for ControllerArgs {
    fn default() -> Self {
        Self {
            common: CommonArgs::default(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            pod_name: String::new(),
            leader_lease: VIRT_CONTROLLER_LEASE.to_owned(),
            ignore_leadership: false,
            backports: Vec::new(),
        }
    }
}

impl ControllerArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut args = self.common.to_args();
        leader_args(
            &mut args,
            [&self.namespace, &self.pod_name, &self.leader_lease],
            VIRT_CONTROLLER_LEASE,
        );
        if self.ignore_leadership {
            args.push("--ignore-leadership".to_owned());
        }
        render_backports(&mut args, &self.backports);
        args
    }
}

/// virt-api-metrics: a relay of virt-api's own /metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default, Parser)]
#[command(
    name = "virt-api-metrics",
    version,
    about = "Relays virt-api's own /metrics through the sidecar's export paths"
)]
pub struct ApiArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Opt-in backports (comma-separated or repeated).
    #[arg(
        long = "backport",
        env = "COLLECTOR_BACKPORTS",
        value_enum,
        value_delimiter = ','
    )]
    pub backports: Vec<ApiBackport>,
}

impl ApiArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut args = self.common.to_args();
        render_backports(&mut args, &self.backports);
        args
    }
}

/// virt-operator-metrics: a relay of virt-operator's own /metrics.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "virt-operator-metrics",
    version,
    about = "Relays virt-operator's own /metrics through the sidecar's export paths"
)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// KubeVirt's namespace (where the `virt-operator` Lease lives); only read by backports.
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// This pod's name, compared with the Lease holder (default: the host name).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,

    /// Name of the Lease held by the leading virt-operator.
    #[arg(long, env = "COLLECTOR_LEADER_LEASE", default_value = VIRT_OPERATOR_LEASE)]
    pub leader_lease: String,

    /// Opt-in backports (comma-separated or repeated).
    #[arg(
        long = "backport",
        env = "COLLECTOR_BACKPORTS",
        value_enum,
        value_delimiter = ','
    )]
    pub backports: Vec<OperatorBackport>,
}

impl Default for OperatorArgs {
    fn default() -> Self {
        Self {
            common: CommonArgs::default(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            pod_name: String::new(),
            leader_lease: VIRT_OPERATOR_LEASE.to_owned(),
            backports: Vec::new(),
        }
    }
}

impl OperatorArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut args = self.common.to_args();
        leader_args(
            &mut args,
            [&self.namespace, &self.pod_name, &self.leader_lease],
            VIRT_OPERATOR_LEASE,
        );
        render_backports(&mut args, &self.backports);
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;

    /// Parsing ignores the environment only if the variables are unset; these tests pass
    /// every value explicitly, so what the environment holds does not matter.
    fn parse<T: Parser>(args: &[&str]) -> T {
        T::try_parse_from(args).expect("valid flags")
    }

    #[test]
    fn controller_args_round_trip() {
        let args: ControllerArgs = parse(&[
            "virt-controller-metrics",
            "--mode",
            "full",
            "--namespace",
            "openshift-cnv",
            "--pod-name",
            "virt-controller-7d9f-abcde",
            "--leader-lease",
            "my-lease",
            "--ignore-leadership",
            "--backport",
            "leading-status",
        ]);
        assert_eq!(args.common.mode, Mode::Full);
        assert_eq!(args.backports, [ControllerBackport::LeadingStatus]);
        let rendered = args.to_args();
        let mut argv = vec!["virt-controller-metrics".to_owned()];
        argv.extend(rendered.iter().cloned());
        let again = ControllerArgs::try_parse_from(argv).expect("rendered args parse");
        assert_eq!(again, args);
    }

    #[test]
    fn recheck_and_http_limits_round_trip_and_defaults_render_nothing() {
        let args: ApiArgs = parse(&[
            "virt-api-metrics",
            "--component-recheck-interval",
            "2h",
            "--max-connections",
            "128",
            "--http-idle-timeout",
            "90s",
            "--http-header-timeout",
            "5s",
            "--http-write-timeout",
            "20s",
            "--http-max-header-bytes",
            "8192",
            "--worker-threads",
            "4",
        ]);
        assert_eq!(
            args.common.component_recheck_interval,
            std::time::Duration::from_secs(7200)
        );
        assert_eq!(args.common.max_connections, 128);
        assert_eq!(args.common.worker_threads, 4);
        let mut argv = vec!["virt-api-metrics".to_owned()];
        argv.extend(args.to_args());
        assert_eq!(ApiArgs::try_parse_from(argv).expect("parse"), args);
        let defaults: ApiArgs = parse(&["virt-api-metrics"]);
        assert!(defaults.to_args().is_empty(), "{:?}", defaults.to_args());
        assert_eq!(defaults.common, CommonArgs::default());
    }

    #[test]
    fn zero_worker_threads_is_refused() {
        let err = ApiArgs::try_parse_from(["virt-api-metrics", "--worker-threads", "0"])
            .expect_err("no worker, no sidecar");
        assert!(err.to_string().contains("--worker-threads"), "{err}");
    }

    #[test]
    fn parsed_defaults_equal_the_default_impls() {
        let controller: ControllerArgs = parse(&["virt-controller-metrics"]);
        assert_eq!(controller, ControllerArgs::default());
        assert!(controller.to_args().is_empty());
        let operator: OperatorArgs = parse(&["virt-operator-metrics"]);
        assert_eq!(operator, OperatorArgs::default());
        assert!(operator.to_args().is_empty());
        let handler: crate::HandlerArgs = parse(&["virt-handler-metrics"]);
        assert_eq!(handler, crate::HandlerArgs::default());
        assert!(handler.to_args().is_empty());
    }

    #[test]
    fn relay_args_round_trip() {
        let api: ApiArgs = parse(&["virt-api-metrics", "--backport", "ready-status"]);
        assert_eq!(api.to_args(), ["--backport", "ready-status"]);
        let operator: OperatorArgs = parse(&[
            "virt-operator-metrics",
            "--namespace",
            "kubevirt",
            "--pod-name",
            "virt-operator-1",
            "--backport=leading-status",
        ]);
        assert_eq!(
            operator.to_args(),
            [
                "--pod-name",
                "virt-operator-1",
                "--backport",
                "leading-status"
            ]
        );
        let mut argv = vec!["virt-operator-metrics".to_owned()];
        argv.extend(operator.to_args());
        assert_eq!(OperatorArgs::try_parse_from(argv).expect("parse"), operator);
    }

    #[test]
    fn backports_are_off_by_default_and_unknown_ones_rejected() {
        let args: ControllerArgs = parse(&["virt-controller-metrics", "--namespace", "kubevirt"]);
        assert!(args.backports.is_empty());
        assert!(
            ApiArgs::try_parse_from(["virt-api-metrics", "--backport", "leading-status"]).is_err()
        );
    }
}
