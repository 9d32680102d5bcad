//! virt-api-metrics and virt-operator-metrics: relays of the component's own /metrics.
//!
//! Almost everything virt-api and virt-operator export lives only inside their process
//! (connection gauges, the VM admission counter, workqueue and REST client metrics), so no
//! other process can compute it. These sidecars read the co-located component's
//! `https://127.0.0.1:8443/metrics` once per collection and serve its families again,
//! unchanged in names, labels and values, through the sidecar's export paths (so the same
//! numbers can leave in every format the server offers).
//!
//! In complement mode the runtime withholds every family the component serves, so a relay
//! then serves only what the component lacks: its backports. The relay hands the names it
//! read to the runtime ([`crate::core::collect::ComponentRead`]), so the component's page is read
//! once per pass, not twice. In full mode it serves the
//! component's families plus the backports.
//!
//! Backports (off by default) derive metrics newer KubeVirt versions export, for versions
//! that lack them, and are added only when the component's own output does not have the
//! family:
//! - virt-operator `kubevirt_virt_operator_leading_status`: 1 when this pod holds Lease
//!   `virt-operator`, else 0 (KubeVirt's gauge is 0 on the non-leaders too).
//! - virt-api `kubevirt_virt_api_ready_status` (new in v1.9.0): 1 when virt-api's metrics
//!   endpoint answered this pass. virt-api serves `/metrics` on the TLS server whose start
//!   sets that gauge, so an answer means the server is up; no answer means no series, as when
//!   virt-api itself is down.
//!
//! When the component cannot be read, the relay serves none of its families for that pass
//! (a stale copy would claim a dead component is alive); the failure is a reported problem.

use std::collections::BTreeSet;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::core::collect::{Collection, Collector, ComponentRead, Problem};
use crate::core::component::ComponentClient;
use crate::core::metric::{Family, MetricType, Sample};
use crate::k8s::lease::LeaseReader;

pub const VIRT_OPERATOR_LEADING_STATUS: &str = "kubevirt_virt_operator_leading_status";
const VIRT_OPERATOR_LEADING_STATUS_HELP: &str = "Indication for an operating virt-operator.";
pub const VIRT_API_READY_STATUS: &str = "kubevirt_virt_api_ready_status";
const VIRT_API_READY_STATUS_HELP: &str =
    "Indication for a virt-api server that is ready to serve requests.";

/// A metric a relay can add for component versions that lack it.
#[derive(Clone)]
pub enum Backport {
    /// `kubevirt_virt_operator_leading_status` from Lease `virt-operator`.
    OperatorLeadingStatus(Box<LeaseReader>),
    /// `kubevirt_virt_api_ready_status` from the component answering.
    ApiReadyStatus,
}

impl Backport {
    fn family_name(&self) -> &'static str {
        match self {
            Self::OperatorLeadingStatus(_) => VIRT_OPERATOR_LEADING_STATUS,
            Self::ApiReadyStatus => VIRT_API_READY_STATUS,
        }
    }
}

/// Implements [`Collector`] for virt-api-metrics and virt-operator-metrics.
pub struct RelayCollector {
    component: ComponentClient,
    backports: Vec<Backport>,
}

impl RelayCollector {
    pub fn new(component: ComponentClient, backports: Vec<Backport>) -> Self {
        Self {
            component,
            backports,
        }
    }

    async fn pass(&self, deadline: Instant) -> Collection {
        let mut problems = Vec::new();
        let fetched = match tokio::time::timeout_at(deadline, self.component.fetch()).await {
            Ok(Ok(families)) => Some(families),
            Ok(Err(error)) => {
                problems.push(Problem {
                    source: "component",
                    kind: error.kind(),
                    target: self.component.url().to_owned(),
                    message: format!("{error}; relaying nothing this pass"),
                });
                None
            }
            Err(_) => {
                problems.push(Problem {
                    source: "component",
                    kind: "timeout",
                    target: self.component.url().to_owned(),
                    message: "no answer before the collection deadline; relaying nothing this pass"
                        .to_owned(),
                });
                None
            }
        };
        let answered = fetched.is_some();
        let mut families = fetched.unwrap_or_default();
        let served: BTreeSet<String> = families.iter().map(|f| f.name.to_string()).collect();
        let targets_seen = u64::try_from(families.len()).unwrap_or(u64::MAX);
        for backport in &self.backports {
            if served.contains(backport.family_name()) {
                continue;
            }
            match backport {
                Backport::OperatorLeadingStatus(lease) => match lease.held(deadline).await {
                    Ok(held) => families.push(gauge(
                        VIRT_OPERATOR_LEADING_STATUS,
                        VIRT_OPERATOR_LEADING_STATUS_HELP,
                        held,
                    )),
                    Err(error) => problems.push(error.to_problem()),
                },
                Backport::ApiReadyStatus => {
                    if answered {
                        families.push(gauge(
                            VIRT_API_READY_STATUS,
                            VIRT_API_READY_STATUS_HELP,
                            true,
                        ));
                    }
                }
            }
        }
        Collection {
            families,
            problems,
            stale_dropped: 0,
            targets_seen,
            // The complement check reuses this page instead of asking for it again.
            component: Some(ComponentRead {
                scrapes: 1,
                served: answered.then_some(served),
            }),
        }
    }
}

fn gauge(name: &'static str, help: &'static str, on: bool) -> Family {
    let mut family = Family::new(name, help, MetricType::Gauge);
    family
        .samples
        .push(Sample::new(Vec::new(), if on { 1.0 } else { 0.0 }));
    family
}

impl Collector for RelayCollector {
    fn collect(&self, deadline: Instant) -> BoxFuture<'_, Collection> {
        Box::pin(self.pass(deadline))
    }
}
