//! Every default of the sidecars' flags, once. clap's `default_value` attributes, the
//! `Default` impls the operator builds from, and `to_args()` (which renders only what
//! differs from these) all read this table. Durations are written the way a user writes them
//! on the command line (humantime), so `--help` shows the same text.

use std::time::Duration;

/// The port the sidecars listen on unless told otherwise. Not 8443 (the component's) and
/// not named `metrics` in the pod (that name is taken by the component's port).
pub const DEFAULT_PORT: u16 = 9443;
/// KubeVirt's namespace in a default install.
pub const DEFAULT_NAMESPACE: &str = "kubevirt";
/// The Lease the leading virt-controller holds.
pub const VIRT_CONTROLLER_LEASE: &str = "virt-controller";
/// The Lease the leading virt-operator holds.
pub const VIRT_OPERATOR_LEASE: &str = "virt-operator";

pub const COMPONENT_METRICS_URL: &str = "https://127.0.0.1:8443/metrics";
pub const COMPONENT_RECHECK_INTERVAL: &str = "1h";
pub const INTERVAL: &str = "30s";
pub const COLLECTION_TIMEOUT: &str = "10s";
pub const MAX_CONNECTIONS: usize = 64;
pub const HTTP_IDLE_TIMEOUT: &str = "60s";
pub const HTTP_HEADER_TIMEOUT: &str = "10s";
pub const HTTP_WRITE_TIMEOUT: &str = "10s";
pub const HTTP_MAX_HEADER_BYTES: usize = 16 * 1024;
/// One: a pass's work is mostly waiting on launchers, and on one worker it costs the node
/// less CPU than on two (see `bench/launcher-scale.sh`).
pub const WORKER_THREADS: u16 = 1;

pub const LIBVIRT_URI: &str = "qemu:///system";
pub const PODS_DIR: &str = "/pods";
pub const MAX_CONCURRENCY: usize = 4;
pub const VMI_TIMEOUT: &str = "5s";

pub const PUSH_QUEUE_CAPACITY: usize = 8;
pub const PUSH_TIMEOUT: &str = "10s";
pub const PUSH_MAX_BACKOFF: &str = "2m";

/// One of the duration defaults above as a [`Duration`]. They are constants checked by the
/// test below, so the fallback (zero) is never taken.
pub fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_duration_default_parses_and_is_positive() {
        for text in [
            COMPONENT_RECHECK_INTERVAL,
            INTERVAL,
            COLLECTION_TIMEOUT,
            HTTP_IDLE_TIMEOUT,
            HTTP_HEADER_TIMEOUT,
            HTTP_WRITE_TIMEOUT,
            VMI_TIMEOUT,
            PUSH_TIMEOUT,
            PUSH_MAX_BACKOFF,
        ] {
            let parsed = humantime::parse_duration(text).expect(text);
            assert!(parsed > Duration::ZERO, "{text}");
            assert_eq!(duration(text), parsed);
        }
    }
}
