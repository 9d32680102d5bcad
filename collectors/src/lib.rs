//! Metrics-collector sidecars for KubeVirt's components.
//!
//! Layout: `config` (flags, also used by the operator), `model` (domain statistics),
//! `exposition` (metric families), `families` (KubeVirt's exact metric families, pure),
//! `exporters` (wire formats, pure), and, with the `runtime` feature, `sources` (where
//! numbers come from), `server` (HTTP(S) endpoint), `runtime` (the collection loop and its
//! cache), `component` (the co-located component's own /metrics), `controller` and `relay`
//! (the control-plane collectors).

pub mod config;
pub mod exporters;
pub mod exposition;
pub mod families;
pub mod model;
pub mod wire;

#[cfg(feature = "runtime")]
pub mod collect;
#[cfg(feature = "runtime")]
pub mod component;
#[cfg(feature = "runtime")]
pub mod controller;
#[cfg(feature = "runtime")]
pub mod relay;
#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "runtime")]
pub mod selfmetrics;
#[cfg(feature = "runtime")]
pub mod server;
#[cfg(feature = "runtime")]
pub mod sources;
#[cfg(feature = "runtime")]
pub mod vmi_collector;
