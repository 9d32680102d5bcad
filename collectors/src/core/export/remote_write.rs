//! Prometheus remote-write 1.0 push. Placeholder until the sink lands: `--remote-write-url`
//! is refused rather than ignored.

use kubevirt_metrics_flags::ExportArgs;

use super::{ConfigError, Sink};

/// The remote-write sink `args` ask for, if any.
pub fn from_args(args: &ExportArgs) -> Result<Option<Box<dyn Sink>>, ConfigError> {
    match &args.remote_write_url {
        None => Ok(None),
        Some(_) => Err(ConfigError::Invalid {
            flag: "--remote-write-url",
            message: "the remote-write sink is not built into this version".to_owned(),
        }),
    }
}
