//! Who leads: the holder of a coordination.k8s.io Lease, compared with this pod's name.
//!
//! virt-controller and virt-operator elect their leader with client-go's leader election on
//! Leases named `virt-controller` and `virt-operator` in KubeVirt's namespace; the holder
//! identity is the leader's pod name (its host name).

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

use super::api_error_kind;
use crate::core::collect::Problem;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("reading Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading Lease {namespace}/{name}: no answer before the collection deadline")]
    Timeout { namespace: String, name: String },
}

impl LeaseError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Api { source, .. } => api_error_kind(source),
            Self::Timeout { .. } => "timeout",
        }
    }

    pub fn to_problem(&self) -> Problem {
        let (namespace, name) = match self {
            Self::Api {
                namespace, name, ..
            }
            | Self::Timeout { namespace, name } => (namespace, name),
        };
        Problem {
            source: "kubernetes",
            kind: self.kind(),
            target: format!("Lease {namespace}/{name}"),
            message: self.to_string(),
        }
    }
}

/// The identity leader election records for this pod: `--pod-name`, else the host name.
pub fn identity(pod_name: &str) -> String {
    if !pod_name.is_empty() {
        return pod_name.to_owned();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

/// Whether `identity` holds the Lease. A missing Lease, or one without a holder, is held by
/// nobody.
pub fn holds(lease: Option<&Lease>, identity: &str) -> bool {
    !identity.is_empty()
        && lease
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.as_deref())
            == Some(identity)
}

/// Reads one Lease on demand.
#[derive(Clone)]
pub struct LeaseReader {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
}

impl LeaseReader {
    pub fn new(client: Client, namespace: &str, name: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether this pod holds the Lease now, answered before `deadline`.
    pub async fn held(&self, deadline: tokio::time::Instant) -> Result<bool, LeaseError> {
        let lease = tokio::time::timeout_at(deadline, self.api.get_opt(&self.name))
            .await
            .map_err(|_| LeaseError::Timeout {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
            })?
            .map_err(|source| LeaseError::Api {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            })?;
        Ok(holds(lease.as_ref(), &self.identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    fn lease(holder: Option<&str>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn only_the_holder_leads() {
        assert!(holds(
            Some(&lease(Some("virt-controller-a"))),
            "virt-controller-a"
        ));
        assert!(!holds(
            Some(&lease(Some("virt-controller-b"))),
            "virt-controller-a"
        ));
        assert!(!holds(Some(&lease(None)), "virt-controller-a"));
        assert!(!holds(None, "virt-controller-a"));
        assert!(!holds(Some(&lease(Some(""))), ""));
    }

    #[test]
    fn identity_prefers_the_pod_name() {
        assert_eq!(identity("virt-controller-a"), "virt-controller-a");
        assert!(!identity("").is_empty());
    }
}
