//! The log set-up of every binary of the project (the four collectors and the operator), so
//! they read `RUST_LOG` the same way and none writes colour codes into container logs.

use tracing_subscriber::EnvFilter;

use crate::LogFormat;

/// Logs to stderr as text or JSON. The level comes from `RUST_LOG`, else `default_filter`
/// (e.g. `info`, or `info,kube=warn` for the operator, whose client logs every watch
/// restart). Colours only on a terminal. A second call does nothing.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
