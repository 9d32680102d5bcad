//! Wire formats for [`crate::core::metric::Family`]: Prometheus text 0.0.4 and OpenMetrics.
//! Pure code.

pub mod negotiate;
pub mod openmetrics;
pub mod text;
