//! OTLP push (HTTP/protobuf and gRPC). Placeholder until the OTLP sink lands: no sink is
//! built, and `--otlp-endpoint` is refused rather than ignored.

use kubevirt_metrics_flags::ExportArgs;

use super::{ConfigError, Resource, Sink};

/// The OTLP sink `args` ask for, if any.
pub fn from_args(
    args: &ExportArgs,
    _resource: &Resource,
) -> Result<Option<Box<dyn Sink>>, ConfigError> {
    match &args.otlp_endpoint {
        None => Ok(None),
        Some(_) => Err(ConfigError::Invalid {
            flag: "--otlp-endpoint",
            message: "the OTLP sink is not built into this version".to_owned(),
        }),
    }
}
