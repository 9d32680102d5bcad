//! The co-located component's own /metrics: which families it serves, and its samples.
