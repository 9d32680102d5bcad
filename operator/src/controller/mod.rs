//! The controller: everything that runs inside `kubevirt-metrics-operator run`. It owns the
//! reconcile loop of MetricsSidecarPolicy and its operational pieces; what a policy wants is
//! planned by the pure `crate::plan`, not here.
//!
//! A kube-runtime `Controller` on MetricsSidecarPolicy, also triggered by KubeVirt CRs,
//! HyperConverged CRs (when that CRD is served), other policies of the same namespace, and
//! the component workloads (virt-handler DaemonSet; virt-controller, virt-api,
//! virt-operator Deployments, selected by their `kubevirt.io` label) and their pods (a
//! sidecar that crash-loops or stays unready is rolled back, see [`rollout`]).
//!
//! One reconciliation is a pipeline, in this order ([`reconcile`]):
//! 1. [`observe`]: every read, into one value;
//! 2. [`decide`]: pure — the writes, the status report, the events, the requeue (using
//!    [`target`], [`rollout`] and [`status`]);
//! 3. [`apply`]: the writes, then the monitoring objects ([`monitoring`]);
//! 4. `decide::settle`: pure — what the writes did, folded into the report;
//! 5. `finish` (in [`reconcile`]): the only status write and event publication.
//!
//! Errors leave the pipeline to `reconcile`, which counts them ([`metrics`]) and reports a
//! 403 on the policy ([`forbidden`]); `error_policy` logs them once and requeues.
//! [`events`], [`health`], [`leader`], [`shutdown`] are the operational pieces; [`run`] wires
//! them: HTTP endpoint, CRD check, discovery, leader election, controller, shutdown.

pub mod apply;
pub mod context;
pub mod decide;
pub mod events;
pub mod forbidden;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod monitoring;
pub mod observe;
pub mod reconcile;
pub mod rollout;
pub mod shutdown;
pub mod status;
pub mod target;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

pub use crate::api::{FIELD_MANAGER, FINALIZER};
pub use context::{Context, Settings};
pub use reconcile::{ReconcileError, error_policy, reconcile};

use crate::api::{HyperConverged, KubeVirt, MetricsSidecarPolicy};

/// Errors that stop the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Kubernetes client configuration (KUBECONFIG or in-cluster): {0}")]
    ClientConfig(#[source] kube::Error),
    #[error(
        "the MetricsSidecarPolicy CRD is not installed or not readable (apply crds/ first): {0}"
    )]
    CrdNotInstalled(#[source] kube::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    Health(#[from] health::HealthError),
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
    #[error("lost the leader lease; stopping so a standby takes over")]
    LeaseLost,
    #[error("cannot install the signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Log output format, as the sidecars take it.
pub use kubevirt_metrics_flags::LogFormat;

/// Flags of `kubevirt-metrics-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunConfig {
    /// Watch only this namespace (the one KubeVirt is installed in). Default: all namespaces.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    pub http_address: SocketAddr,

    /// Elect a leader through a Lease; only the leader reconciles.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the Lease.
    #[arg(long, default_value = "kubevirt-metrics-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// How long a lease is valid without renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// How long before expiry the holder renews.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_grace: Duration,

    /// Periodic resync of a policy whose sidecars are in place.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync: Duration,

    /// On SIGTERM, how long running reconciles may take to finish before they are dropped;
    /// keep it under the pod's `terminationGracePeriodSeconds`, which must also leave time to
    /// give the lease up.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Policies reconciled at the same time.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u16,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            http_address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            leader_election: true,
            lease_name: "kubevirt-metrics-operator".to_owned(),
            lease_namespace: "default".to_owned(),
            identity: None,
            lease_duration: Duration::from_secs(15),
            lease_grace: Duration::from_secs(5),
            resync: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(20),
            concurrency: 4,
            log_format: LogFormat::Text,
        }
    }
}

/// Structured logs on stderr (`RUST_LOG` filters; default `info`). A second call is a no-op.
pub fn init_logging(format: LogFormat) {
    kubevirt_metrics_flags::telemetry::init(format, "info,kube=warn");
}

/// `kubevirt-metrics-operator run`: the client from `KUBECONFIG` or the in-cluster config,
/// stopped gracefully by SIGTERM or Ctrl-C.
pub async fn run(config: RunConfig) -> Result<(), Error> {
    init_logging(config.log_format);
    let client = Client::try_default().await.map_err(Error::ClientConfig)?;
    let signal = termination_signal().map_err(Error::Signal)?;
    run_with_client(client, config, signal, None).await
}

/// Resolves on the first SIGTERM or SIGINT.
fn termination_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// A one-shot broadcast: every clone of [`Stop::wait`] resolves once `stop` is set.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    fn wait(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

/// Tells the caller (tests) where the HTTP endpoint listens once it is bound.
pub type BoundAddress = tokio::sync::oneshot::Sender<SocketAddr>;

/// The operator with a given client, until `shutdown` resolves (or the lease is lost).
pub async fn run_with_client(
    client: Client,
    config: RunConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<BoundAddress>,
) -> Result<(), Error> {
    let metrics = Arc::new(metrics::Metrics::new()?);
    let health_state = health::HealthState::new(metrics.clone());
    let listener = health::bind(config.http_address).await?;
    if let (Some(tx), Ok(addr)) = (bound, listener.local_addr()) {
        let _ = tx.send(addr);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let server = tokio::spawn(health::serve(listener, health_state.clone(), stop.wait()));

    let result = serve_controller(client, &config, metrics, &health_state, &stop).await;
    health_state.set_ready(false);
    match result {
        Ok(()) => {
            // Normal shutdown: the signal already reached the HTTP server.
            stop.wait().await;
        }
        Err(_) => server.abort(),
    }
    match server.await {
        Ok(Err(err)) if result.is_ok() => return Err(err.into()),
        _ => {}
    }
    tracing::info!("operator stopped");
    result
}

async fn serve_controller(
    client: Client,
    config: &RunConfig,
    metrics: Arc<metrics::Metrics>,
    health_state: &health::HealthState,
    stop: &Stop,
) -> Result<(), Error> {
    let policies: Api<MetricsSidecarPolicy> =
        namespaced_or_all(&client, config.namespace.as_deref());
    policies
        .list(&ListParams::default().limit(1))
        .await
        .map_err(Error::CrdNotInstalled)?;
    let hyperconverged_crd =
        crd_served(&client, "hco.kubevirt.io/v1beta1", "hyperconvergeds").await;
    tracing::info!(hyperconverged_crd, namespace = ?config.namespace, "starting");
    health_state.set_ready(true);

    let identity = config.identity.clone().unwrap_or_else(default_identity);
    let leadership = if config.leader_election {
        let settings = leader::LeaseSettings {
            name: config.lease_name.clone(),
            namespace: config.lease_namespace.clone(),
            identity: identity.clone(),
            duration: config.lease_duration,
            grace: config.lease_grace,
        };
        match leader::acquire(client.clone(), &settings, stop.wait()).await? {
            Some(held) => Some(held),
            None => return Ok(()),
        }
    } else {
        None
    };
    metrics.set_leader(true);

    let settings = Settings {
        resync: config.resync,
        hyperconverged_crd,
        ..Settings::default()
    };
    let ctx = Context::new(client.clone(), metrics.clone(), settings, Some(identity));
    // Asked to stop, or the lease lost: the controller takes no new work, and `drive`
    // bounds the wait for the running reconciles.
    let stopping = || {
        let asked = stop.wait();
        let lost = leadership.as_ref().map(leader::Leadership::lost_signal);
        async move {
            match lost {
                Some(lost) => tokio::select! {
                    () = asked => {}
                    () = lost => {}
                },
                None => asked.await,
            }
        }
    };
    let controller = build(&client, config, hyperconverged_crd)
        .graceful_shutdown_on(stopping())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(policy = %object.name, "reconciled"),
                // Logged once, by `error_policy`.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(err) => tracing::warn!(error = %err, "controller error"),
            }
        });
    match shutdown::drive(
        controller,
        stopping(),
        &ctx.in_flight,
        config.shutdown_grace,
    )
    .await
    {
        shutdown::Stopped::GraceElapsed { running } => tracing::warn!(
            running,
            grace = ?config.shutdown_grace,
            "reconciles still running after the shutdown grace period were dropped"
        ),
        shutdown::Stopped::Finished | shutdown::Stopped::Idle => {}
    }
    metrics.set_leader(false);

    let stopped = *stop.0.borrow();
    if let Some(leadership) = leadership {
        leadership.release().await;
        if !stopped {
            return Err(Error::LeaseLost);
        }
    }
    Ok(())
}

fn default_identity() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("{FIELD_MANAGER}-{}", std::process::id()))
}

fn namespaced_or_all<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Whether `resource` is served in `group_version` (API discovery).
async fn crd_served(client: &Client, group_version: &str, resource: &str) -> bool {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == resource),
        Err(_) => false,
    }
}

/// Every policy in `namespace`, from the controller's cache.
fn policies_in(
    store: &Store<MetricsSidecarPolicy>,
    namespace: Option<String>,
) -> Vec<ObjectRef<MetricsSidecarPolicy>> {
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace)
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The Controller with all its triggers.
fn build(
    client: &Client,
    config: &RunConfig,
    hyperconverged_crd: bool,
) -> Controller<MetricsSidecarPolicy> {
    let ns = config.namespace.as_deref();
    let wc = || watcher::Config::default().any_semantic();
    let controller = Controller::new(namespaced_or_all::<MetricsSidecarPolicy>(client, ns), wc())
        .with_config(
            controller::Config::default()
                .concurrency(config.concurrency)
                .debounce(Duration::from_millis(500)),
        );
    let store = controller.store();
    let to_policies = |store: Store<MetricsSidecarPolicy>| {
        move |namespace: Option<String>| policies_in(&store, namespace)
    };

    let map = to_policies(store.clone());
    let mut controller = controller.watches(
        namespaced_or_all::<KubeVirt>(client, ns),
        wc(),
        move |kv: KubeVirt| map(kv.namespace()),
    );
    // A policy's change (creation, deletion) can change which policy owns a KubeVirt CR.
    let map = to_policies(store.clone());
    controller = controller.watches(
        namespaced_or_all::<MetricsSidecarPolicy>(client, ns),
        wc(),
        move |p: MetricsSidecarPolicy| map(p.namespace()),
    );
    let map = to_policies(store.clone());
    controller = controller.watches(
        namespaced_or_all::<DaemonSet>(client, ns),
        wc().labels(&observe::daemon_set_selector()),
        move |ds: DaemonSet| map(ds.namespace()),
    );
    let map = to_policies(store.clone());
    controller = controller.watches(
        namespaced_or_all::<Deployment>(client, ns),
        wc().labels(&observe::deployment_selector()),
        move |d: Deployment| map(d.namespace()),
    );
    // Pod status changes (a sidecar crash-looping, turning ready) drive rollout safety.
    let map = to_policies(store.clone());
    controller = controller.watches(
        namespaced_or_all::<Pod>(client, ns),
        wc().labels(&observe::pod_selector()),
        move |pod: Pod| map(pod.namespace()),
    );
    if hyperconverged_crd {
        let map = to_policies(store);
        controller = controller.watches(
            namespaced_or_all::<HyperConverged>(client, ns),
            wc(),
            move |h: HyperConverged| map(h.namespace()),
        );
    }
    controller
}
