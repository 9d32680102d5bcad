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

/// An error with its causes, for logs and problems:
/// `error sending request: client error (Connect): tcp connect error: Connection refused`:
/// reqwest's own message names no cause, the cause is in the source chain.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
