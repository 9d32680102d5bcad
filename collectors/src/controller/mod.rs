//! virt-controller-metrics: cluster metrics derived from watched KubeVirt objects.
//!
//! [`ControllerCollector`] watches what virt-controller computes its cluster metrics from
//! ([`watch`]) and renders them with [`crate::controller::families::render`] once per
//! collection, but only on the pod whose virt-controller leads ([`crate::k8s::lease`]).
//!
//! # The leader rule, and a leader change
//!
//! KubeVirt starts the informers behind these metrics only in the leading virt-controller,
//! so only the leader exports them. The sidecar follows the same rule: at every collection
//! it reads Lease `virt-controller` in KubeVirt's namespace and exports the cluster families
//! only when `spec.holderIdentity` is this pod's name (`POD_NAME`). Its watches run only
//! while it leads, and it exports only after every watch has listed its objects once (or
//! reported why it cannot), as virt-controller reports leading only after its caches sync.
//!
//! During a change of leader, each sidecar sees the new holder at its next collection, so
//! for up to one collection interval (30 s by default) plus the new leader's initial list,
//! either both sidecars or neither export; the Lease's own hand-over adds up to its lease
//! duration (15 s in KubeVirt) when the old leader died without releasing it. We chose to
//! follow `holderIdentity` alone, without judging expiry from `renewTime`: the holder field
//! names at most one pod at any moment, so outside that window exactly one sidecar exports,
//! and a sidecar never declares itself leader on its own. KubeVirt's own metrics have the
//! same kind of gap (the new leader exports after its caches sync). When the Lease cannot be
//! read, the last decision is kept and the error is reported; before the first successful
//! read the sidecar does not export. `--ignore-leadership` exports regardless (one replica).

pub mod families;
pub mod store;
pub mod watch;

use std::sync::Arc;

use futures::future::BoxFuture;
use kube::Client;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::core::collect::{Collection, Collector, Problem, Trigger};
use crate::k8s::lease::LeaseReader;
use kubevirt_metrics_flags::{ControllerArgs, ControllerBackport};
use store::ObjectKind;
use watch::WatchSet;

/// What a [`ControllerCollector`] needs besides a Kubernetes client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerOptions {
    pub namespace: String,
    /// This pod's identity in leader election (its name).
    pub identity: String,
    pub leader_lease: String,
    pub ignore_leadership: bool,
    pub leading_status_backport: bool,
}

impl ControllerOptions {
    pub fn from_args(args: &ControllerArgs) -> Self {
        Self {
            namespace: args.namespace.clone(),
            identity: crate::k8s::lease::identity(&args.pod_name),
            leader_lease: args.leader_lease.clone(),
            ignore_leadership: args.ignore_leadership,
            leading_status_backport: args.backports.contains(&ControllerBackport::LeadingStatus),
        }
    }
}

/// Implements [`Collector`] for virt-controller-metrics.
pub struct ControllerCollector {
    client: Client,
    options: ControllerOptions,
    /// `None` when nothing needs the Lease (leadership ignored, no backport).
    lease: Option<LeaseReader>,
    inner: Mutex<Inner>,
    /// Fired when the watches have settled: the first export need not wait for the tick.
    trigger: Trigger,
}

#[derive(Default)]
struct Inner {
    /// The last answer from the Lease; `None` until one arrived.
    leading: Option<bool>,
    watches: Option<WatchSet>,
    waiting_logged: bool,
}

impl ControllerCollector {
    pub fn new(client: Client, options: ControllerOptions) -> Self {
        let needs_lease = !options.ignore_leadership || options.leading_status_backport;
        let lease = needs_lease.then(|| {
            LeaseReader::new(
                client.clone(),
                &options.namespace,
                &options.leader_lease,
                options.identity.clone(),
            )
        });
        if needs_lease && options.identity.is_empty() {
            tracing::warn!(
                "no pod name (POD_NAME or --pod-name) and no host name: this sidecar never leads"
            );
        }
        Self {
            client,
            options,
            lease,
            inner: Mutex::new(Inner::default()),
            trigger: Trigger::new(),
        }
    }

    async fn pass(&self, deadline: Instant) -> Collection {
        let mut inner = self.inner.lock().await;
        let mut problems: Vec<Problem> = Vec::new();
        if let Some(lease) = &self.lease {
            match lease.held(deadline).await {
                Ok(held) => {
                    if inner.leading != Some(held) {
                        tracing::info!(
                            lease = self.options.leader_lease,
                            identity = lease.identity(),
                            leading = held,
                            "leadership changed"
                        );
                    }
                    inner.leading = Some(held);
                }
                Err(error) => problems.push(error.to_problem()),
            }
        }
        let exporting = self.options.ignore_leadership || inner.leading == Some(true);
        if exporting {
            if inner.watches.is_none() {
                tracing::info!("starting watches");
                inner.watches = Some(WatchSet::start(
                    &self.client,
                    &self.options.namespace,
                    self.trigger.clone(),
                ));
                inner.waiting_logged = false;
            }
        } else if let Some(watches) = inner.watches.take() {
            tracing::info!("not leading: stopping watches and dropping their cache");
            watches.stop().await;
        }

        let mut collection = Collection::default();
        if let Some(watches) = &inner.watches {
            if watches.settled() {
                let shared = watches.shared();
                let rendered = tokio::task::spawn_blocking(move || {
                    WatchSet::with_state(&shared, |state| {
                        let seen = state.count(ObjectKind::VirtualMachine)
                            + state.count(ObjectKind::VirtualMachineInstance);
                        (families::render(state), seen)
                    })
                })
                .await;
                match rendered {
                    Ok((families, seen)) => {
                        collection.families = families;
                        collection.targets_seen = u64::try_from(seen).unwrap_or(u64::MAX);
                    }
                    Err(error) => problems.push(Problem {
                        source: "collector",
                        kind: "internal",
                        target: "render".to_owned(),
                        message: format!("rendering failed: {error}"),
                    }),
                }
            } else if !inner.waiting_logged {
                tracing::info!("waiting for the initial lists before exporting");
                inner.waiting_logged = true;
            }
        }
        // Read after rendering: a watch that recovered while we rendered must not be
        // reported as failing next to the data it has just delivered.
        if let Some(watches) = &inner.watches {
            problems.extend(watches.problems());
        }
        if self.options.leading_status_backport
            && let Some(leading) = inner.leading
        {
            collection.families.push(families::leading_status(leading));
        }
        collection.problems = problems;
        collection
    }

    /// Whether this pod currently exports the cluster families (for tests and logs).
    pub async fn exporting(&self) -> bool {
        let inner = self.inner.lock().await;
        inner.watches.is_some()
    }
}

impl Collector for ControllerCollector {
    fn collect(&self, deadline: Instant) -> BoxFuture<'_, Collection> {
        Box::pin(self.pass(deadline))
    }

    fn trigger(&self) -> Option<Trigger> {
        Some(self.trigger.clone())
    }
}

/// A collector behind an `Arc`, as the runtime takes it.
pub fn shared(collector: ControllerCollector) -> Arc<dyn Collector> {
    Arc::new(collector)
}
