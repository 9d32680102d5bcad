//! Leader election on a `coordination.k8s.io` Lease, through `kube-lease-manager`.
//!
//! Only the lease holder runs the controller. Losing the lease stops the controller (as
//! controller-runtime does): a replica that cannot renew its lease must stop writing at
//! once, and the pod restarts as a standby.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot set up the leader lease {namespace}/{name}: {source}")]
    Setup {
        namespace: String,
        name: String,
        source: LeaseManagerError,
    },
    #[error("the leader lease task stopped before this replica became leader")]
    Stopped,
}

/// Where the lease lives and who we are.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub grace: Duration,
}

/// A held lease. Dropping it (or [`Leadership::release`]) lets the background task give
/// the lease up.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

/// Waits until this replica holds the lease, or until `stop` resolves (`None`).
///
/// A stop while waiting still waits for the lease task to give the lease up: it may have
/// just taken it, and a process that exits first leaves the next replica waiting for the
/// lease to expire.
pub async fn acquire(
    client: Client,
    settings: &LeaseSettings,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Option<Leadership>, LeaderError> {
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration.as_secs().max(2))
        .with_grace(settings.grace.as_secs().max(1))
        .with_field_manager(format!("{}-lease", super::FIELD_MANAGER))
        .build()
        .await
        .map_err(|source| LeaderError::Setup {
            namespace: settings.namespace.clone(),
            name: settings.name.clone(),
            source,
        })?;
    let (state, task) = manager.watch().await;
    let mut candidate = Leadership { state, task };
    tracing::info!(lease = %settings.name, namespace = %settings.namespace, identity = %settings.identity,
        "waiting for the leader lease");
    tokio::select! {
        held = candidate.held() => held?,
        () = stop => {
            candidate.release().await;
            return Ok(None);
        }
    }
    tracing::info!(identity = %settings.identity, "acquired the leader lease");
    Ok(Some(candidate))
}

impl Leadership {
    /// Resolves once the lease is held; fails if the lease task ended first.
    async fn held(&mut self) -> Result<(), LeaderError> {
        match self.state.wait_for(|held| *held).await {
            Ok(_) => Ok(()),
            Err(_) => Err(LeaderError::Stopped),
        }
    }

    /// A future that resolves when the lease is lost (or its task ends); for
    /// `graceful_shutdown_on`.
    pub fn lost_signal(&self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        let mut state = self.state.clone();
        async move {
            let _ = state.wait_for(|held| !*held).await;
        }
    }

    /// Gives the lease up so a standby replica takes over without waiting for expiry.
    pub async fn release(self) {
        let Leadership { state, task } = self;
        drop(state);
        match task.await {
            Ok(Ok(_)) => {
                tracing::info!("leader lease task stopped; the lease is given up if it was held")
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "releasing the leader lease failed"),
            Err(err) => tracing::warn!(error = %err, "leader lease task failed"),
        }
    }
}
