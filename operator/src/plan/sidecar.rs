//! The sidecar container, as JSON with a fixed key order (so the same settings always give
//! the same bytes), and its command-line arguments rendered by the collectors' own flag types.
//!
//! What each sidecar gets, and why:
//! - the component's serving-certificate volume, read-only at the component's path, to serve
//!   HTTPS with KubeVirt's certificate (no new volume, so the pod's volume list is untouched);
//! - virt-handler only: the existing `kubelet-pods` hostPath volume (the kubelet's pods
//!   directory) read-only at `/pods`, where each VMI's launcher socket lives
//!   (`/pods/<podUID>/volumes/kubernetes.io~empty-dir/sockets/launcher-sock`); connecting to
//!   a Unix socket works through a read-only mount; and `NODE_NAME` from the downward API;
//! - a container port named `sidecar-metrics` (never `metrics`, which the component's port
//!   already is in the same pod);
//! - readiness on `/readyz`, liveness on `/healthz`, lenient: a sidecar restart fails
//!   virt-operator's canary rollout of virt-handler;
//! - the least privilege its source needs (see [`security_context`]);
//! - with push sinks: their flags, and read-only mounts of the Secret volumes their
//!   credentials come from (see `plan::exporters`; the volumes go into the pod by the same
//!   patch).

use std::path::PathBuf;
use std::time::Duration;

use kubevirt_metrics_flags::{
    ApiArgs, CommonArgs, ControllerArgs, DEFAULT_NAMESPACE, DEFAULT_PORT, HandlerArgs, Mode,
    OperatorArgs, Source as CollectorSource, VIRT_CONTROLLER_LEASE, VIRT_OPERATOR_LEASE, defaults,
};
use serde_json::{Value, json};

use super::PlanError;
use super::settings::ResolvedSidecar;
use crate::api::{CollectorMode, Component, StatsSource};

/// The hostPath volume of virt-handler's pod holding `/var/lib/kubelet/pods`.
pub const KUBELET_PODS_VOLUME: &str = "kubelet-pods";
/// Where virt-handler (and so the sidecar) mounts it.
pub const KUBELET_PODS_MOUNT: &str = "/pods";

/// The sidecar's container object.
pub fn container(sidecar: &ResolvedSidecar) -> Result<Value, PlanError> {
    let component = sidecar.component;
    let scheme = if sidecar.tls { "HTTPS" } else { "HTTP" };
    let port = sidecar.port;
    let mut args = collector_args(sidecar);
    args.extend(sidecar.extra_args.iter().cloned());

    let mut container = json!({
        "name": sidecar.container_name,
        "image": sidecar.image,
        "imagePullPolicy": sidecar.pull_policy.as_str(),
        "command": [component.collector_binary()],
        "args": args,
    });
    let object = container
        .as_object_mut()
        .ok_or(PlanError::Internal("container is not an object"))?;
    let env = env(sidecar)?;
    if !env.is_empty() {
        object.insert("env".to_owned(), Value::Array(env));
    }
    object.insert(
        "ports".to_owned(),
        json!([{"name": sidecar.port_name, "containerPort": port, "protocol": "TCP"}]),
    );
    object.insert(
        "readinessProbe".to_owned(),
        json!({
            "httpGet": {"path": "/readyz", "port": port, "scheme": scheme},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        }),
    );
    object.insert(
        "livenessProbe".to_owned(),
        json!({
            "httpGet": {"path": "/healthz", "port": port, "scheme": scheme},
            "initialDelaySeconds": 15,
            "periodSeconds": 30,
            "timeoutSeconds": 10,
            "failureThreshold": 6,
        }),
    );
    object.insert("resources".to_owned(), to_json(&sidecar.resources)?);
    let security = match &sidecar.security_context {
        Some(custom) => to_json(custom)?,
        None => security_context(component, sidecar.source),
    };
    object.insert("securityContext".to_owned(), security);
    object.insert(
        "terminationMessagePolicy".to_owned(),
        json!("FallbackToLogsOnError"),
    );
    let mounts = volume_mounts(sidecar);
    if !mounts.is_empty() {
        object.insert("volumeMounts".to_owned(), Value::Array(mounts));
    }
    Ok(container)
}

/// The collector's flags, rendered by the collectors' own `to_args()` so the operator only
/// ever writes flags the collector parses.
pub fn collector_args(sidecar: &ResolvedSidecar) -> Vec<String> {
    let common = common_args(sidecar);
    match sidecar.component {
        Component::VirtHandler => HandlerArgs {
            common,
            source: match sidecar.source {
                StatsSource::Launcher => CollectorSource::Launcher,
                StatsSource::Libvirt => CollectorSource::Libvirt,
            },
            libvirt_uris: vec!["qemu:///system".to_owned()],
            // NODE_NAME comes from the environment (downward API), not a flag: the value
            // differs per node and the patch must be the same for every pod.
            node_name: String::new(),
            pods_dir: PathBuf::from(KUBELET_PODS_MOUNT),
            max_concurrency: 4,
            vmi_timeout: Duration::from_secs(5),
        }
        .to_args(),
        // Namespace and pod name come from the environment (downward API), like NODE_NAME:
        // the flags keep their defaults so the patch is the same for every pod.
        Component::VirtController => ControllerArgs {
            common,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            pod_name: String::new(),
            leader_lease: VIRT_CONTROLLER_LEASE.to_owned(),
            ignore_leadership: false,
            backports: Vec::new(),
        }
        .to_args(),
        Component::VirtApi => ApiArgs {
            common,
            backports: Vec::new(),
        }
        .to_args(),
        Component::VirtOperator => OperatorArgs {
            common,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            pod_name: String::new(),
            leader_lease: VIRT_OPERATOR_LEASE.to_owned(),
            backports: Vec::new(),
        }
        .to_args(),
    }
}

fn common_args(sidecar: &ResolvedSidecar) -> CommonArgs {
    let (_, cert_dir) = sidecar.component.serving_cert_volume();
    let (tls_cert, tls_key) = if sidecar.tls {
        (
            Some(PathBuf::from(format!("{cert_dir}/tls.crt"))),
            Some(PathBuf::from(format!("{cert_dir}/tls.key"))),
        )
    } else {
        (None, None)
    };
    CommonArgs {
        metrics_port: (sidecar.port != DEFAULT_PORT).then_some(sidecar.port),
        mode: match sidecar.mode {
            CollectorMode::Complement => Mode::Complement,
            CollectorMode::Full => Mode::Full,
        },
        // The component is asked on 127.0.0.1 inside its own pod. Its certificate names the
        // Service, not 127.0.0.1, and KubeVirt's CA is not mounted in the pod, so the
        // loopback call cannot be verified; nothing leaves the pod's network namespace.
        component_insecure_skip_verify: true,
        tls_cert,
        tls_key,
        interval: sidecar.interval,
        // The collectors' default timeout, shortened to the interval when that is less.
        collection_timeout: defaults::duration(defaults::COLLECTION_TIMEOUT).min(sidecar.interval),
        export: sidecar.export.args.clone(),
        ..CommonArgs::default()
    }
}

fn env(sidecar: &ResolvedSidecar) -> Result<Vec<Value>, PlanError> {
    let from_field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mut env = Vec::new();
    // OTLP names the node, pod and namespace in its resource attributes; every sidecar
    // that pushes OTLP gets all three.
    let otlp = sidecar.export.args.otlp_endpoint.is_some();
    if sidecar.component == Component::VirtHandler || otlp {
        env.push(from_field("NODE_NAME", "spec.nodeName"));
    }
    // Where KubeVirt lives (its Leases, CR, ConfigMaps) and which pod this is (compared
    // with the Lease holder to export leader-only metrics once).
    if matches!(
        sidecar.component,
        Component::VirtController | Component::VirtOperator
    ) || otlp
    {
        env.push(from_field("POD_NAMESPACE", "metadata.namespace"));
        env.push(from_field("POD_NAME", "metadata.name"));
    }
    for var in &sidecar.env {
        env.push(to_json(var)?);
    }
    Ok(env)
}

fn volume_mounts(sidecar: &ResolvedSidecar) -> Vec<Value> {
    let mut mounts = Vec::new();
    if sidecar.component == Component::VirtHandler && sidecar.source == StatsSource::Launcher {
        mounts.push(json!({
            "name": KUBELET_PODS_VOLUME,
            "mountPath": KUBELET_PODS_MOUNT,
            "readOnly": true,
        }));
    }
    if sidecar.tls {
        let (volume, path) = sidecar.component.serving_cert_volume();
        mounts.push(json!({"name": volume, "mountPath": path, "readOnly": true}));
    }
    mounts.extend(sidecar.export.mounts.iter().cloned());
    mounts
}

/// The default security context: the least each sidecar needs.
///
/// - virt-handler with the `launcher` source must open other pods' launcher sockets under
///   the kubelet's pods directory. Those directories are root-owned (0750) and, with
///   non-root virt-launcher, the sockets belong to the qemu user (107): so it runs as root
///   with every capability dropped except `DAC_OVERRIDE` (to connect to a socket it does not
///   own). On SELinux hosts other pods' files carry their own MCS categories; the type
///   `spc_t` is what lets a container reach them (virt-handler gets the same by being
///   privileged). Not privileged, no privilege escalation, read-only root filesystem.
/// - every other sidecar only reads its certificate and talks over the network: non-root,
///   all capabilities dropped, RuntimeDefault seccomp, read-only root filesystem. No fixed
///   UID, so OpenShift's restricted-v2 can assign one (the image must use a numeric USER).
pub fn security_context(component: Component, source: StatsSource) -> Value {
    if component == Component::VirtHandler && source == StatsSource::Launcher {
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["DAC_OVERRIDE"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "seLinuxOptions": {"type": "spc_t"},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    } else {
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, PlanError> {
    serde_json::to_value(value).map_err(PlanError::Serialize)
}
