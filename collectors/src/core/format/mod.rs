//! Wire formats for [`crate::core::metric::Family`]: Prometheus text 0.0.4, OpenMetrics and
//! our JSON schema. Pure code.

pub mod json;
pub mod negotiate;
pub mod openmetrics;
pub mod text;
