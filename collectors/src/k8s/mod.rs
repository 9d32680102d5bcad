//! What the collectors share about the Kubernetes API: KubeVirt's and Kubernetes' objects
//! slimmed to what metrics read ([`objects`], decoded the same way for virt-handler's VMI
//! discovery and virt-controller's store), who holds a leader Lease ([`lease`]), and short
//! names for API errors, used as self-metric labels.

pub mod lease;
pub mod objects;

/// A short kind for a Kubernetes API error: `forbidden` (RBAC), `not_found`, `unauthorized`,
/// `api` (any other status), `connect` (no answer at all).
pub fn api_error_kind(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(status) => status_kind(status.code),
        _ => "connect",
    }
}

pub fn status_kind(code: u16) -> &'static str {
    match code {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        _ => "api",
    }
}
