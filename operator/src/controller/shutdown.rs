//! Stopping the controller within a bound.
//!
//! kube-runtime's graceful shutdown waits for the running reconciles, then ends the
//! controller's stream. But a controller stopped before its first list of policies has
//! arrived never ends: its runner holds the queue until the store is ready, and the watch
//! that would make it ready is what the shutdown drops (kube-runtime 5.0, `Runner` with
//! `delay_tasks_until`). A SIGTERM during start-up would then hang until the kubelet's
//! SIGKILL, and the lease would never be given up. So the operator waits for what it can
//! see running, and no longer than a grace period, as controller-runtime's
//! `GracefulShutdownTimeout` does.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// How many reconciles are running right now.
#[derive(Debug)]
pub struct InFlight(watch::Sender<usize>);

/// One running reconcile; dropping it (the reconcile ended or was dropped) counts it out.
#[must_use = "the reconcile counts as running only while this is held"]
pub struct Running(watch::Sender<usize>);

impl Default for InFlight {
    fn default() -> Self {
        Self(watch::Sender::new(0))
    }
}

impl InFlight {
    /// Counts a reconcile in until the returned guard is dropped.
    pub fn enter(&self) -> Running {
        self.0.send_modify(|running| *running += 1);
        Running(self.0.clone())
    }

    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Resolves once no reconcile is running.
    async fn idle(&self) {
        let mut running = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = running.wait_for(|running| *running == 0).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0
            .send_modify(|running| *running = running.saturating_sub(1));
    }
}

/// How the controller came to a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The controller's stream ended by itself.
    Finished,
    /// Asked to stop; nothing was running (any longer), so the controller was dropped.
    Idle,
    /// Asked to stop; reconciles still running after the grace period were dropped.
    GraceElapsed { running: usize },
}

/// Drives `controller` until it ends, or until `stop` resolves and then either no
/// reconcile is running or `grace` has passed.
///
/// After `stop` the controller starts no new reconcile (its graceful shutdown is triggered
/// by the same signal), so nothing that matters is lost by dropping it once idle. A
/// reconcile dropped after the grace period is no worse than a crash: every write is
/// idempotent and the next leader reconciles again.
pub async fn drive(
    controller: impl Future<Output = ()>,
    stop: impl Future<Output = ()>,
    in_flight: &InFlight,
    grace: Duration,
) -> Stopped {
    tokio::pin!(controller);
    tokio::select! {
        () = &mut controller => return Stopped::Finished,
        () = stop => {}
    }
    tokio::select! {
        () = &mut controller => Stopped::Finished,
        () = in_flight.idle() => Stopped::Idle,
        () = tokio::time::sleep(grace) => Stopped::GraceElapsed { running: in_flight.count() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(20);

    #[tokio::test(start_paused = true)]
    async fn a_controller_that_never_ends_is_dropped_at_once_when_nothing_runs() {
        let in_flight = InFlight::default();
        let stopped = drive(std::future::pending(), async {}, &in_flight, GRACE).await;
        assert_eq!(stopped, Stopped::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_reconcile_is_waited_for() {
        let in_flight = InFlight::default();
        let running = in_flight.enter();
        let started = tokio::time::Instant::now();
        let finish = async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(running);
        };
        let controller = async {
            finish.await;
            std::future::pending::<()>().await;
        };
        let stopped = drive(controller, async {}, &in_flight, GRACE).await;
        assert_eq!(stopped, Stopped::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(in_flight.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_that_hangs_is_dropped_after_the_grace_period() {
        let in_flight = InFlight::default();
        let _stuck = in_flight.enter();
        let started = tokio::time::Instant::now();
        let stopped = drive(std::future::pending(), async {}, &in_flight, GRACE).await;
        assert_eq!(stopped, Stopped::GraceElapsed { running: 1 });
        assert_eq!(started.elapsed(), GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_that_ends_by_itself_is_not_stopped() {
        let in_flight = InFlight::default();
        let _running = in_flight.enter();
        let stopped = drive(async {}, std::future::pending(), &in_flight, GRACE).await;
        assert_eq!(stopped, Stopped::Finished);
    }

    #[test]
    fn a_dropped_reconcile_counts_out() {
        let in_flight = InFlight::default();
        let first = in_flight.enter();
        let second = in_flight.enter();
        assert_eq!(in_flight.count(), 2);
        drop(first);
        drop(second);
        assert_eq!(in_flight.count(), 0);
    }
}
