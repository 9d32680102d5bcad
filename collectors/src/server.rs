//! HTTP(S) endpoint: /metrics, /healthz, /readyz.
