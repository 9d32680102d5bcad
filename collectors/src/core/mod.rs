//! What every collector shares: the metric model ([`metric`]) and its label rules
//! ([`labels`]), the wire formats ([`mod@format`]), the HTTP(S) endpoint ([`server`]), the
//! collection loop ([`runtime`]) driving a [`collect::Collector`], aggregation
//! ([`aggregate`]) and push sinks ([`export`]), the sidecar's own metrics ([`selfmetrics`])
//! and the check of the co-located KubeVirt component ([`component`]).

pub mod aggregate;
pub mod collect;
pub mod component;
pub mod export;
pub mod format;
pub mod labels;
pub mod metric;
pub mod runtime;
pub mod selfmetrics;
pub mod server;
