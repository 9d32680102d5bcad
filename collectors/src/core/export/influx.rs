//! InfluxDB line-protocol push (1.x `/write`, 2.x `/api/v2/write`). Placeholder until the
//! sink lands: `--influx-url` is refused rather than ignored.

use kubevirt_metrics_flags::ExportArgs;

use super::{ConfigError, Sink};

/// The InfluxDB sink `args` ask for, if any.
pub fn from_args(args: &ExportArgs) -> Result<Option<Box<dyn Sink>>, ConfigError> {
    match &args.influx_url {
        None => Ok(None),
        Some(_) => Err(ConfigError::Invalid {
            flag: "--influx-url",
            message: "the InfluxDB sink is not built into this version".to_owned(),
        }),
    }
}
