//! The sidecar's own health metrics.
