//! What every reconciliation shares: the client, the event recorder, metrics, settings.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::metrics::Metrics;
use super::shutdown::InFlight;
use crate::plan::PlanDefaults;

/// Knobs of the reconcile loop (not of the policy).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Requeue after a successful reconcile whose rollout is complete (periodic resync).
    pub resync: Duration,
    /// Requeue while waiting for KubeVirt, a rollout, or another policy.
    pub wait: Duration,
    /// Requeue after an error.
    pub error_backoff: Duration,
    /// Attempts of one optimistic-concurrency write before giving up for this reconcile.
    pub write_attempts: u32,
    /// Whether the HyperConverged CRD is served (discovered at startup). Without it the
    /// operator never reads HyperConverged objects.
    pub hyperconverged_crd: bool,
    /// Built-in sidecar defaults handed to the plan.
    pub plan_defaults: PlanDefaults,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            wait: Duration::from_secs(30),
            error_backoff: Duration::from_secs(15),
            write_attempts: 5,
            hyperconverged_crd: false,
            plan_defaults: PlanDefaults::default(),
        }
    }
}

/// Shared by all reconciliations of one controller.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Reconciles running now; a stop waits for them (see [`super::shutdown`]).
    pub in_flight: InFlight,
}

impl Context {
    /// `instance` names this replica in Events (`reportingInstance`), usually the pod name.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Settings,
        instance: Option<String>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: super::FIELD_MANAGER.to_owned(),
            instance,
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Arc::new(Self {
            client,
            recorder,
            metrics,
            settings,
            in_flight: InFlight::default(),
        })
    }
}
