//! Collection → aggregation → sinks. Built once at start from the export flags; after every
//! collection pass the runtime aggregates the families ([`Pipeline::aggregate`]), publishes
//! them on `/metrics`, and hands the same families to every sink ([`Pipeline::push`]).
//!
//! Each sink has its own worker task and queue, so a slow or dead endpoint costs one sink
//! its data and nothing else:
//! - the queue holds at most `--push-queue-capacity` batches; a new batch arriving at a full
//!   queue pushes out the oldest one (the batch being retried included), counted as dropped;
//!   the data is cumulative, so the newest batch matters most and an endpoint down for an
//!   hour costs `capacity` batches of memory;
//! - one request at a time, each bounded by `--push-timeout`;
//! - [`SendError::Retryable`] failures are retried with exponential backoff and full jitter
//!   (a random wait between zero and `min(--push-max-backoff, BASE × 2^failures)`); the
//!   backoff belongs to the endpoint, not to a batch, and resets on the first success;
//! - [`SendError::Permanent`] failures drop the batch at once.
//!
//! [`Pipeline::push`] never waits: collection and `/metrics` go on whatever a sink does.
//! On shutdown each sink gets one last try at its newest batch within [`FLUSH_DEADLINE`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use kubevirt_metrics_flags::ExportArgs;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Batch, ConfigError, Resource, SendError, Sink, influx, otlp, remote_write};
use crate::core::aggregate::{AggregateError, Aggregation};
use crate::core::metric::Family;
use crate::core::selfmetrics::{PushFailure, SelfMetrics};

/// The first retry waits up to this long; each further failure doubles it, up to
/// `--push-max-backoff`.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// How long shutdown waits for the last push of every sink together.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(3);

/// The export flags do not make a pipeline; the sidecar does not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Sink(#[from] ConfigError),
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    #[error("--push-queue-capacity must be at least 1")]
    ZeroQueueCapacity,
    #[error("--push-timeout must be longer than zero")]
    ZeroTimeout,
    /// Zero would retry a failing endpoint in a tight loop.
    #[error("--push-max-backoff must be longer than zero")]
    ZeroBackoff,
}

/// How every sink's worker behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushSettings {
    pub queue_capacity: usize,
    pub timeout: Duration,
    pub max_backoff: Duration,
}

impl PushSettings {
    pub fn from_args(args: &ExportArgs) -> Result<Self, PipelineError> {
        if args.push_queue_capacity == 0 {
            return Err(PipelineError::ZeroQueueCapacity);
        }
        if args.push_timeout.is_zero() {
            return Err(PipelineError::ZeroTimeout);
        }
        if args.push_max_backoff.is_zero() {
            return Err(PipelineError::ZeroBackoff);
        }
        Ok(Self {
            queue_capacity: args.push_queue_capacity,
            timeout: args.push_timeout,
            max_backoff: args.push_max_backoff,
        })
    }
}

/// The aggregation and the running sink workers.
#[derive(Debug)]
pub struct Pipeline {
    aggregation: Aggregation,
    workers: Vec<Worker>,
    shutdown: CancellationToken,
}

impl Pipeline {
    /// The pipeline the flags ask for, its workers started. With no export flag: no sink,
    /// no aggregation, and [`Pipeline::push`] does nothing.
    pub fn from_args(
        args: &ExportArgs,
        resource: &Resource,
        metrics: &SelfMetrics,
    ) -> Result<Self, PipelineError> {
        let settings = PushSettings::from_args(args)?;
        let aggregation = Aggregation::from_args(args)?;
        let sinks: Vec<Box<dyn Sink>> = [
            otlp::from_args(args, resource)?,
            remote_write::from_args(args)?,
            influx::from_args(args)?,
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok(Self::start(aggregation, sinks, settings, metrics))
    }

    /// A pipeline around given sinks (tests use fakes).
    pub fn start(
        aggregation: Aggregation,
        sinks: Vec<Box<dyn Sink>>,
        settings: PushSettings,
        metrics: &SelfMetrics,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let workers = sinks
            .into_iter()
            .map(|sink| Worker::spawn(Arc::from(sink), settings, metrics.clone(), &shutdown))
            .collect();
        Self {
            aggregation,
            workers,
            shutdown,
        }
    }

    /// The names of the configured sinks, in the order they were built.
    pub fn sink_names(&self) -> Vec<&'static str> {
        self.workers.iter().map(|w| w.sink.name()).collect()
    }

    pub fn has_sinks(&self) -> bool {
        !self.workers.is_empty()
    }

    /// One pass's families after the aggregation rules (untouched without rules).
    pub fn aggregate(&self, families: Vec<Family>) -> Vec<Family> {
        if self.aggregation.is_empty() {
            families
        } else {
            self.aggregation.apply(families)
        }
    }

    /// Queues `batch` for every sink; never waits.
    pub fn push(&self, batch: &Batch) {
        for worker in &self.workers {
            worker.queue.push(batch.clone());
        }
    }

    /// The batches waiting for each sink, by sink name.
    pub fn queue_lengths(&self) -> Vec<(&'static str, usize)> {
        self.workers
            .iter()
            .map(|w| (w.sink.name(), w.queue.len()))
            .collect()
    }

    /// Stops the workers, then gives every sink one last try at its newest batch; returns
    /// within [`FLUSH_DEADLINE`] (plus the time to abort the workers) whatever the
    /// endpoints do.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for worker in &self.workers {
            worker.task.abort();
        }
        let flushes = self.workers.iter().map(Worker::flush);
        if tokio::time::timeout(FLUSH_DEADLINE, join_all(flushes))
            .await
            .is_err()
        {
            tracing::warn!("the final push did not finish within {FLUSH_DEADLINE:?}; giving up");
        }
        for worker in &self.workers {
            let left = worker.queue.drain();
            if left > 0 {
                worker.metrics.add_push_dropped(worker.sink.name(), left);
            }
        }
    }
}

/// One sink, its queue and its task.
struct Worker {
    sink: Arc<dyn Sink>,
    queue: Arc<Queue>,
    metrics: SelfMetrics,
    timeout: Duration,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("sink", &self.sink.name())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    fn spawn(
        sink: Arc<dyn Sink>,
        settings: PushSettings,
        metrics: SelfMetrics,
        shutdown: &CancellationToken,
    ) -> Self {
        metrics.register_push_sink(sink.name());
        let queue = Arc::new(Queue::new(
            sink.name(),
            settings.queue_capacity,
            metrics.clone(),
        ));
        let sending = Sending {
            sink: Arc::clone(&sink),
            queue: Arc::clone(&queue),
            metrics: metrics.clone(),
            settings,
        };
        let task = tokio::spawn(sending.run(shutdown.child_token()));
        tracing::info!(
            sink = sink.name(),
            queue_capacity = settings.queue_capacity,
            timeout = ?settings.timeout,
            max_backoff = ?settings.max_backoff,
            "push sink started"
        );
        Self {
            sink,
            queue,
            metrics,
            timeout: settings.timeout,
            task,
        }
    }

    /// One try at the newest queued batch (shutdown).
    async fn flush(&self) {
        let Some((id, batch)) = self.queue.newest() else {
            return;
        };
        let name = self.sink.name();
        match tokio::time::timeout(self.timeout, self.sink.send(&batch)).await {
            Ok(Ok(())) => {
                // Older queued batches are superseded by this one: nothing is lost.
                self.queue.remove_up_to(id);
                self.metrics.count_push_sent(name, SystemTime::now());
            }
            Ok(Err(error)) => {
                self.metrics.count_push_failure(name, failure_of(&error));
                tracing::warn!(sink = name, %error, "the final push failed");
            }
            Err(_) => {
                self.metrics
                    .count_push_failure(name, PushFailure::Retryable);
                tracing::warn!(sink = name, "the final push timed out");
            }
        }
    }
}

fn failure_of(error: &SendError) -> PushFailure {
    match error {
        SendError::Retryable(_) => PushFailure::Retryable,
        SendError::Permanent(_) => PushFailure::Permanent,
    }
}

/// The worker's loop: take the oldest batch, send it, retry or drop it.
struct Sending {
    sink: Arc<dyn Sink>,
    queue: Arc<Queue>,
    metrics: SelfMetrics,
    settings: PushSettings,
}

impl Sending {
    async fn run(self, shutdown: CancellationToken) {
        let name = self.sink.name();
        let mut backoff = Backoff::new(BACKOFF_BASE, self.settings.max_backoff);
        loop {
            let (id, batch) = tokio::select! {
                () = shutdown.cancelled() => return,
                next = self.queue.oldest() => next,
            };
            let sent = tokio::time::timeout(self.settings.timeout, self.sink.send(&batch)).await;
            let error = match sent {
                Ok(Ok(())) => {
                    self.queue.remove(id);
                    self.metrics.count_push_sent(name, SystemTime::now());
                    if backoff.failures() > 0 {
                        tracing::info!(sink = name, "push endpoint recovered");
                    }
                    backoff.reset();
                    continue;
                }
                Ok(Err(error)) => error,
                Err(_) => SendError::Retryable(format!(
                    "no answer within --push-timeout ({:?})",
                    self.settings.timeout
                )),
            };
            match error {
                SendError::Permanent(message) => {
                    self.queue.remove(id);
                    self.metrics
                        .count_push_failure(name, PushFailure::Permanent);
                    tracing::warn!(sink = name, error = %message, "push rejected; batch dropped");
                    // The endpoint answered: no reason to wait before the next batch.
                    backoff.reset();
                }
                SendError::Retryable(message) => {
                    self.metrics
                        .count_push_failure(name, PushFailure::Retryable);
                    let wait = backoff.next_wait();
                    if backoff.failures() == 1 {
                        tracing::warn!(sink = name, error = %message, "push failed; retrying with backoff");
                    } else {
                        tracing::debug!(sink = name, error = %message, ?wait, "push failed again");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
/// Jitter"): spreads the retries of many sidecars that lost the same endpoint at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The ceiling of the next wait, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Counts one more failure and returns a wait drawn uniformly from `[0, ceiling]`.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

/// A bounded FIFO of batches that drops its oldest entry when full. Entries have ids so the
/// worker removes the batch it sent and not one that replaced it meanwhile.
struct Queue {
    sink: &'static str,
    capacity: usize,
    metrics: SelfMetrics,
    state: Mutex<QueueState>,
    arrived: Notify,
}

#[derive(Default)]
struct QueueState {
    entries: VecDeque<(u64, Batch)>,
    next_id: u64,
}

impl Queue {
    fn new(sink: &'static str, capacity: usize, metrics: SelfMetrics) -> Self {
        Self {
            sink,
            capacity,
            metrics,
            state: Mutex::new(QueueState::default()),
            arrived: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, batch: Batch) {
        let (dropped, length) = {
            let mut state = self.lock();
            let mut dropped = 0;
            while state.entries.len() >= self.capacity {
                state.entries.pop_front();
                dropped += 1;
            }
            let id = state.next_id;
            state.next_id += 1;
            state.entries.push_back((id, batch));
            (dropped, state.entries.len())
        };
        if dropped > 0 {
            self.metrics.add_push_dropped(self.sink, dropped);
            tracing::debug!(
                sink = self.sink,
                "push queue full; dropped the oldest batch"
            );
        }
        self.metrics.set_push_queue_length(self.sink, length);
        self.arrived.notify_one();
    }

    /// The oldest batch, waiting for one if the queue is empty. It stays queued (and can be
    /// dropped by a newer arrival) until the worker removes it.
    async fn oldest(&self) -> (u64, Batch) {
        loop {
            let arrived = self.arrived.notified();
            if let Some(entry) = self.lock().entries.front().cloned() {
                return entry;
            }
            arrived.await;
        }
    }

    fn newest(&self) -> Option<(u64, Batch)> {
        self.lock().entries.back().cloned()
    }

    /// Removes entry `id` if it is still queued.
    fn remove(&self, id: u64) {
        let length = {
            let mut state = self.lock();
            state.entries.retain(|(entry, _)| *entry != id);
            state.entries.len()
        };
        self.metrics.set_push_queue_length(self.sink, length);
    }

    /// Removes entry `id` and every older one.
    fn remove_up_to(&self, id: u64) {
        let length = {
            let mut state = self.lock();
            state.entries.retain(|(entry, _)| *entry > id);
            state.entries.len()
        };
        self.metrics.set_push_queue_length(self.sink, length);
    }

    /// Empties the queue; returns how many batches were in it.
    fn drain(&self) -> u64 {
        let drained = {
            let mut state = self.lock();
            let drained = state.entries.len();
            state.entries.clear();
            drained
        };
        self.metrics.set_push_queue_length(self.sink, 0);
        u64::try_from(drained).unwrap_or(u64::MAX)
    }

    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::core::format::text;
    use crate::core::metric::{MetricType, Sample};
    use crate::core::selfmetrics::BuildInfo;
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A sink that answers from a script and records what it was sent.
    struct FakeSink {
        answer: Arc<Mutex<Answer>>,
        calls: Arc<AtomicUsize>,
        sent: Arc<Mutex<Vec<f64>>>,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Answer {
        Ok,
        Retryable,
        Permanent,
        Hang,
    }

    impl Sink for FakeSink {
        fn name(&self) -> &'static str {
            "fake"
        }

        fn send<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SendError>> {
            async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                let answer = *self.answer.lock().unwrap();
                match answer {
                    Answer::Ok => {
                        self.sent.lock().unwrap().push(value_of(batch));
                        Ok(())
                    }
                    Answer::Retryable => Err(SendError::Retryable("503".to_owned())),
                    Answer::Permanent => Err(SendError::Permanent("400".to_owned())),
                    Answer::Hang => std::future::pending().await,
                }
            }
            .boxed()
        }
    }

    struct Harness {
        pipeline: Pipeline,
        metrics: SelfMetrics,
        answer: Arc<Mutex<Answer>>,
        calls: Arc<AtomicUsize>,
        sent: Arc<Mutex<Vec<f64>>>,
    }

    fn harness(answer: Answer, capacity: usize, max_backoff: Duration) -> Harness {
        let metrics = SelfMetrics::new(BuildInfo {
            collector: "test",
            mode: "full",
        })
        .unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let calls = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let sink = FakeSink {
            answer: Arc::clone(&answer),
            calls: Arc::clone(&calls),
            sent: Arc::clone(&sent),
        };
        let settings = PushSettings {
            queue_capacity: capacity,
            timeout: Duration::from_secs(1),
            max_backoff,
        };
        let pipeline = Pipeline::start(
            Aggregation::from_args(&ExportArgs::default()).unwrap(),
            vec![Box::new(sink)],
            settings,
            &metrics,
        );
        Harness {
            pipeline,
            metrics,
            answer,
            calls,
            sent,
        }
    }

    /// A batch of one gauge whose value identifies the batch.
    fn batch(n: f64) -> Batch {
        let mut family = Family::new("g", "", MetricType::Gauge);
        family.samples.push(Sample::new(Vec::new(), n));
        Batch {
            families: Arc::new(vec![family]),
            collected_at: SystemTime::now(),
        }
    }

    fn value_of(batch: &Batch) -> f64 {
        batch.families[0].samples[0].value
    }

    /// A self-metric line's value.
    fn self_metric(metrics: &SelfMetrics, series: &str) -> f64 {
        let body = text::encode(&metrics.families());
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
            .parse()
            .unwrap()
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    const SENT: &str = "kubevirt_metrics_sidecar_push_batches_sent_total{sink=\"fake\"}";
    const DROPPED: &str = "kubevirt_metrics_sidecar_push_batches_dropped_total{sink=\"fake\"}";
    const QUEUE: &str = "kubevirt_metrics_sidecar_push_queue_length{sink=\"fake\"}";
    const RETRYABLE: &str =
        "kubevirt_metrics_sidecar_push_failures_total{reason=\"retryable\",sink=\"fake\"}";
    const PERMANENT: &str =
        "kubevirt_metrics_sidecar_push_failures_total{reason=\"permanent\",sink=\"fake\"}";
    const LAST_SUCCESS: &str =
        "kubevirt_metrics_sidecar_push_last_success_timestamp_seconds{sink=\"fake\"}";

    #[tokio::test]
    async fn every_batch_is_sent_in_order_and_counted() {
        let h = harness(Answer::Ok, 4, Duration::from_secs(1));
        assert_eq!(self_metric(&h.metrics, SENT), 0.0);
        assert_eq!(self_metric(&h.metrics, LAST_SUCCESS), 0.0);
        for n in 1..=3 {
            h.pipeline.push(&batch(f64::from(n)));
        }
        eventually("three sends", || h.sent.lock().unwrap().len() == 3).await;
        assert_eq!(*h.sent.lock().unwrap(), vec![1.0, 2.0, 3.0]);
        eventually("the counter", || self_metric(&h.metrics, SENT) == 3.0).await;
        assert_eq!(self_metric(&h.metrics, QUEUE), 0.0);
        assert!(self_metric(&h.metrics, LAST_SUCCESS) > 1.7e9);
        assert_eq!(self_metric(&h.metrics, DROPPED), 0.0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_its_oldest_batch_and_the_newest_arrive_after_recovery() {
        let h = harness(Answer::Hang, 3, Duration::from_millis(20));
        h.pipeline.push(&batch(1.0));
        // The worker is stuck sending batch 1; it stays queued.
        eventually("the first call", || h.calls.load(Ordering::SeqCst) == 1).await;
        for n in 2..=10 {
            h.pipeline.push(&batch(f64::from(n)));
            assert!(h.pipeline.queue_lengths()[0].1 <= 3);
        }
        assert_eq!(h.pipeline.queue_lengths(), vec![("fake", 3)]);
        assert_eq!(self_metric(&h.metrics, DROPPED), 7.0);
        assert_eq!(self_metric(&h.metrics, QUEUE), 3.0);
        // The hanging request times out (1 s), is retried; the endpoint is back.
        *h.answer.lock().unwrap() = Answer::Ok;
        eventually("the three newest batches", || {
            h.sent.lock().unwrap().len() == 3
        })
        .await;
        assert_eq!(*h.sent.lock().unwrap(), vec![8.0, 9.0, 10.0]);
        assert!(self_metric(&h.metrics, RETRYABLE) >= 1.0);
        eventually("an empty queue", || self_metric(&h.metrics, QUEUE) == 0.0).await;
    }

    #[tokio::test]
    async fn retryable_failures_are_retried_until_the_endpoint_answers() {
        let h = harness(Answer::Retryable, 4, Duration::from_millis(40));
        h.pipeline.push(&batch(1.0));
        eventually("several retries", || h.calls.load(Ordering::SeqCst) >= 4).await;
        assert!(h.sent.lock().unwrap().is_empty());
        assert_eq!(h.pipeline.queue_lengths(), vec![("fake", 1)]);
        *h.answer.lock().unwrap() = Answer::Ok;
        eventually("the batch", || h.sent.lock().unwrap().len() == 1).await;
        assert_eq!(*h.sent.lock().unwrap(), vec![1.0]);
        assert!(self_metric(&h.metrics, RETRYABLE) >= 3.0);
        assert_eq!(self_metric(&h.metrics, PERMANENT), 0.0);
        assert_eq!(self_metric(&h.metrics, DROPPED), 0.0);
    }

    #[tokio::test]
    async fn permanent_failures_drop_the_batch_without_retrying() {
        let h = harness(Answer::Permanent, 4, Duration::from_secs(60));
        h.pipeline.push(&batch(1.0));
        h.pipeline.push(&batch(2.0));
        eventually("two permanent failures", || {
            self_metric(&h.metrics, PERMANENT) == 2.0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 2, "no retry");
        assert_eq!(h.pipeline.queue_lengths(), vec![("fake", 0)]);
        assert_eq!(self_metric(&h.metrics, RETRYABLE), 0.0);
    }

    #[tokio::test]
    async fn push_never_waits_for_a_hanging_sink_and_shutdown_is_bounded() {
        let h = harness(Answer::Hang, 2, Duration::from_secs(60));
        let started = std::time::Instant::now();
        for n in 0..1000 {
            h.pipeline.push(&batch(f64::from(n)));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let started = std::time::Instant::now();
        h.pipeline.shutdown().await;
        // The final push of the newest batch waits one --push-timeout (1 s), no more.
        assert!(started.elapsed() < FLUSH_DEADLINE + Duration::from_secs(1));
        assert_eq!(self_metric(&h.metrics, QUEUE), 0.0);
        assert_eq!(self_metric(&h.metrics, DROPPED), 1000.0);
    }

    #[tokio::test]
    async fn shutdown_flushes_the_newest_batch() {
        let h = harness(Answer::Retryable, 4, Duration::from_secs(60));
        h.pipeline.push(&batch(1.0));
        h.pipeline.push(&batch(2.0));
        eventually("a failure", || self_metric(&h.metrics, RETRYABLE) >= 1.0).await;
        *h.answer.lock().unwrap() = Answer::Ok;
        let sent = Arc::clone(&h.sent);
        h.pipeline.shutdown().await;
        assert_eq!(*sent.lock().unwrap(), vec![2.0]);
        assert_eq!(self_metric(&h.metrics, QUEUE), 0.0);
        // Batch 1 is superseded by batch 2, not lost.
        assert_eq!(self_metric(&h.metrics, DROPPED), 0.0);
    }

    #[test]
    fn settings_refuse_zero_capacity_timeout_and_backoff() {
        let ok = ExportArgs::default();
        assert_eq!(
            PushSettings::from_args(&ok).unwrap(),
            PushSettings {
                queue_capacity: 8,
                timeout: Duration::from_secs(10),
                max_backoff: Duration::from_secs(120),
            }
        );
        let mut args = ok.clone();
        args.push_queue_capacity = 0;
        assert!(matches!(
            PushSettings::from_args(&args),
            Err(PipelineError::ZeroQueueCapacity)
        ));
        let mut args = ok.clone();
        args.push_timeout = Duration::ZERO;
        assert!(matches!(
            PushSettings::from_args(&args),
            Err(PipelineError::ZeroTimeout)
        ));
        let mut args = ok;
        args.push_max_backoff = Duration::ZERO;
        assert!(matches!(
            PushSettings::from_args(&args),
            Err(PipelineError::ZeroBackoff)
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_full_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let ceiling = backoff.ceiling();
            let wait = backoff.next_wait();
            assert!(wait <= ceiling, "{wait:?} > {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, vec![500, 1000, 2000, 4000, 4000, 4000]);
        for _ in 0..100 {
            backoff.next_wait();
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(4));
        // Jitter: the waits are spread, not all at the ceiling.
        let waits: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff.next_wait()).collect();
        assert!(waits.len() > 10);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(500));
    }
}
