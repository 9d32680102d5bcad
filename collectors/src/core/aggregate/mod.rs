//! Custom aggregation (`--aggregate`, `--aggregate-file`, `--drop-family`, `--drop-label`):
//! applied to each pass's families before `/metrics` and every sink see them. Placeholder:
//! any rule is refused rather than ignored until the engine lands.

use kubevirt_metrics_flags::ExportArgs;

use crate::core::metric::Family;

#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
}

/// The parsed rules; empty means the families pass through untouched.
#[derive(Debug, Clone, Default)]
pub struct Aggregation {}

impl Aggregation {
    pub fn from_args(args: &ExportArgs) -> Result<Self, AggregateError> {
        if !args.aggregate.is_empty()
            || args.aggregate_file.is_some()
            || !args.drop_families.is_empty()
            || !args.drop_labels.is_empty()
        {
            return Err(AggregateError::Invalid {
                flag: "--aggregate",
                message: "aggregation is not built into this version".to_owned(),
            });
        }
        Ok(Self {})
    }

    pub fn is_empty(&self) -> bool {
        true
    }

    /// The families after the rules, in the same order conventions as the input.
    pub fn apply(&self, families: Vec<Family>) -> Vec<Family> {
        families
    }
}
