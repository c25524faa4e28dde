//! The processor runtime: everything a processor service gets for free around its
//! [`Handler`]s.
//!
//! - a durable pull consumer with bounded concurrency: the runtime never holds more job
//!   messages than it has free slots, however deep the backlog;
//! - `AckProgress` heartbeats while a job runs, so a job longer than `ack_wait` is not
//!   redelivered to another replica;
//! - progress reports, coalesced and rate-limited;
//! - a per-attempt timeout, and panics caught as retryable failures;
//! - retries: a retryable error publishes `retrying` and naks with an exponential,
//!   jittered delay; a permanent error, or the last attempt, publishes `failed` and
//!   copies the job to `JOBS_DEAD`;
//! - the order that makes "no accepted job is lost" hold: publish the outcome event,
//!   wait for its PubAck, and only then ack the job (a double ack, confirmed by the server);
//! - graceful shutdown: stop pulling, let running jobs finish within a grace period, and
//!   nak what is left so another replica takes it at once.

mod cancel;
mod handler;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use bytes::Bytes;
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt as _, StreamExt as _};
use rand::Rng as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use handler::ErasedHandler;
pub use handler::{Handler, JobContext, JobError, KindDef};

use crate::job::{JobId, JobRequest, Kind};
use crate::kinds::{self, KindInfo};
use crate::layout::{self, ProcessorSpec, Requirement};
use crate::metrics::{ConsumerGauges, Exposition, JobMetrics, KindLabel, Registry};
use crate::state::{Change, JobEvent};
use crate::subjects::{self, headers};

/// How a processor runs, independent of what it runs.
#[derive(clap::Args, Clone, Debug)]
pub struct RuntimeConfig {
    /// Jobs run at once by this replica; 0 means the processor's own default (64 for
    /// I/O-bound kinds, one per CPU for CPU-bound ones).
    #[arg(long, env = "JETJOBS_CONCURRENCY", default_value_t = 0)]
    pub concurrency: usize,
    /// Largest number of jobs asked for in one pull request.
    #[arg(long, env = "JETJOBS_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,
    /// How long one pull request waits for jobs before it is renewed.
    #[arg(long, env = "JETJOBS_PULL_EXPIRES_MS", default_value_t = 5_000)]
    pub pull_expires_ms: u64,
    /// Least time between two progress events of one job.
    #[arg(long, env = "JETJOBS_PROGRESS_INTERVAL_MS", default_value_t = 250)]
    pub progress_interval_ms: u64,
    /// First retry delay; doubles with each attempt, with jitter.
    #[arg(long, env = "JETJOBS_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,
    /// Longest retry delay.
    #[arg(long, env = "JETJOBS_RETRY_MAX_MS", default_value_t = 60_000)]
    pub retry_max_ms: u64,
    /// On shutdown, how long running jobs may take to finish before they are released.
    #[arg(long, env = "JETJOBS_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    #[command(flatten)]
    pub admin: crate::metrics::AdminArgs,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            concurrency: 0,
            max_batch: 64,
            pull_expires_ms: 5_000,
            progress_interval_ms: 250,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            shutdown_grace_secs: 20,
            admin: crate::metrics::AdminArgs::default(),
        }
    }
}

impl RuntimeConfig {
    /// Exponential backoff with "equal jitter": half the delay fixed, half random, so
    /// replicas retrying the same failing dependency spread out.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let exp = self
            .retry_base_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.retry_max_ms).max(1);
        let half = capped / 2;
        Duration::from_millis(half + rand::rng().random_range(0..=capped - half))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Layout(#[from] layout::ProvisionError),
    #[error(transparent)]
    Registry(#[from] kinds::RegistryError),
    #[error("{0}")]
    Nats(String),
    #[error("cannot serve metrics: {0}")]
    Admin(String),
    #[error(
        "consumer {consumer} does not receive {missing:?}; run `jetjobs-admin provision` so its filter covers every kind this processor serves"
    )]
    FilterMismatch {
        consumer: String,
        missing: Vec<String>,
    },
}

/// A processor service: a name (its durable consumer) and the handlers of its kinds.
pub struct Processor {
    name: String,
    handlers: HashMap<Kind, Arc<dyn ErasedHandler>>,
    default_concurrency: usize,
}

impl Processor {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            handlers: HashMap::new(),
            default_concurrency: 64,
        }
    }

    /// Concurrency when the configuration leaves it at 0. CPU-bound processors set the
    /// number of CPUs: more jobs at once would only share the same cores.
    pub fn default_concurrency(mut self, jobs: usize) -> Self {
        self.default_concurrency = jobs.max(1);
        self
    }

    /// One job per CPU this process may use.
    pub fn cpus() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }

    pub fn handler(mut self, handler: impl Handler) -> Self {
        let kind = Handler::def(&handler).kind;
        self.handlers.insert(kind, Arc::new(handler));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What provisioning needs to know: the consumer name and the kinds it must receive.
    pub fn spec(&self) -> ProcessorSpec {
        let mut kinds: Vec<Kind> = self.handlers.keys().cloned().collect();
        kinds.sort();
        ProcessorSpec {
            name: self.name.clone(),
            kinds,
        }
    }

    /// The `job_kinds` entries this processor registers.
    pub fn kind_infos(&self) -> Vec<KindInfo> {
        let mut infos: Vec<KindInfo> = self
            .handlers
            .values()
            .map(|h| {
                let def = h.def();
                KindInfo {
                    kind: def.kind,
                    description: def.description,
                    processor: self.name.clone(),
                    max_attempts: def.max_attempts,
                    timeout_secs: def.timeout_secs,
                    payload_schema: h.schema(),
                    registered_at: crate::job::now(),
                }
            })
            .collect();
        infos.sort_by(|a, b| a.kind.cmp(&b.kind));
        infos
    }

    /// A processor service's whole life: connects as the processor's name, runs jobs
    /// until `shutdown`, then drains the connection so what the runtime published
    /// (outcome events, acks) reaches the server before the process exits.
    pub async fn serve(
        self,
        nats: &crate::config::NatsArgs,
        runtime: RuntimeConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let client = nats.connect(&self.name).await?;
        self.run(client.clone(), runtime, shutdown).await?;
        if let Err(e) = client.drain().await {
            tracing::warn!(error = %e, "Could not drain the NATS connection.");
        }
        Ok(())
    }

    /// Checks the layout, registers the kinds, and runs jobs until `shutdown` is cancelled;
    /// then finishes or releases in-flight jobs and returns.
    pub async fn run(
        self,
        client: async_nats::Client,
        config: RuntimeConfig,
        shutdown: CancellationToken,
    ) -> Result<(), RuntimeError> {
        let mut config = config;
        if config.concurrency == 0 {
            config.concurrency = self.default_concurrency;
        }
        let js = jetstream::new(client.clone());
        layout::require(
            &js,
            &[
                Requirement::Stream(layout::JOBS_STREAM),
                Requirement::Stream(layout::EVENTS_STREAM),
                Requirement::Stream(layout::DEAD_STREAM),
                Requirement::Bucket(layout::KINDS_BUCKET),
                Requirement::Consumer {
                    stream: layout::JOBS_STREAM,
                    name: self.name.clone(),
                },
            ],
        )
        .await?;
        let nats = |e: &dyn std::fmt::Display| RuntimeError::Nats(e.to_string());
        let consumer: PullConsumer = js
            .get_stream(layout::JOBS_STREAM)
            .await
            .map_err(|e| nats(&e))?
            .get_consumer(&self.name)
            .await
            .map_err(|e| nats(&e))?;
        let consumer_config = &consumer.cached_info().config;
        let mut filters = consumer_config.filter_subjects.clone();
        filters.push(consumer_config.filter_subject.clone());
        let missing: Vec<String> = self
            .spec()
            .filter_subjects()
            .into_iter()
            .filter(|s| !filters.contains(s))
            .collect();
        if !missing.is_empty() {
            return Err(RuntimeError::FilterMismatch {
                consumer: self.name.clone(),
                missing,
            });
        }
        // A third of ack_wait leaves two chances for a heartbeat to arrive in time.
        let heartbeat = (consumer_config.ack_wait / 3).max(Duration::from_millis(50));

        let kinds_bucket = js
            .get_key_value(layout::KINDS_BUCKET)
            .await
            .map_err(|e| nats(&e))?;
        for info in self.kind_infos() {
            kinds::register(&kinds_bucket, &info).await?;
        }

        let defs = self
            .handlers
            .iter()
            .map(|(kind, h)| (kind.clone(), h.def()))
            .collect();
        let events = js
            .get_stream(layout::EVENTS_STREAM)
            .await
            .map_err(|e| nats(&e))?;
        let mut registry = Registry::default();
        let metrics = JobMetrics::register(&mut registry);
        let consumers = ConsumerGauges::register(
            &mut registry,
            js.clone(),
            vec![(layout::JOBS_STREAM.to_string(), self.name.clone())],
        );
        let admin_shutdown = CancellationToken::new();
        crate::metrics::spawn_admin(
            &config.admin,
            Exposition::new(registry, Some(consumers)),
            admin_shutdown.clone(),
        )
        .await
        .map_err(|e| RuntimeError::Admin(e.to_string()))?;
        // Metrics stay up until the last job is handed back, then go with the runtime.
        let _admin = admin_shutdown.drop_guard();
        let runtime = Arc::new(Runtime {
            metrics,
            client: client.clone(),
            js,
            events,
            handlers: self.handlers,
            defs,
            heartbeat,
            config: config.clone(),
            cancellations: Arc::default(),
        });
        let listening = CancellationToken::new();
        let listener = tokio::spawn(Arc::clone(&runtime.cancellations).listen(
            client.clone(),
            runtime.handlers.keys().cloned().collect(),
            listening.clone(),
        ));
        tracing::info!(
            processor = %self.name,
            kinds = ?runtime.handlers.keys().map(Kind::as_str).collect::<Vec<_>>(),
            concurrency = config.concurrency,
            "Processor started."
        );
        runtime.pull_loop(&consumer, shutdown).await;
        listening.cancel();
        match listener.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "Could not listen for cancellations."),
            Err(e) => tracing::warn!(error = %e, "The cancellation listener failed."),
        }
        if let Err(e) = client.flush().await {
            tracing::warn!(error = %e, "Could not flush the NATS connection on shutdown.");
        }
        tracing::info!(processor = %self.name, "Processor stopped.");
        Ok(())
    }
}

struct Runtime {
    metrics: JobMetrics,
    client: async_nats::Client,
    js: jetstream::Context,
    handlers: HashMap<Kind, Arc<dyn ErasedHandler>>,
    defs: HashMap<Kind, KindDef>,
    /// `JOB_EVENTS`, read to count a job's earlier runs.
    events: jetstream::stream::Stream,
    heartbeat: Duration,
    config: RuntimeConfig,
    cancellations: Arc<cancel::Cancellations>,
}

/// A job message together with the concurrency slot it occupies.
type Slot = (jetstream::Message, OwnedSemaphorePermit);

/// At most this many pull requests are open at once; each holds the slots it asked for.
const MAX_OPEN_PULLS: usize = 4;

impl Runtime {
    async fn pull_loop(self: &Arc<Self>, consumer: &PullConsumer, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let tracker = TaskTracker::new();
        let release = CancellationToken::new();
        let mut pulls: SelectAll<BoxStream<'static, Option<Slot>>> = SelectAll::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = pulls.next(), if !pulls.is_empty() => {
                    // A pull request ended (`Some(None)`), or the last one did (`None`): its
                    // unfilled slots are free, and the `free_slots` guard, read when this
                    // select began, must be read again or no pull is ever sent.
                    let Some(Some((message, permit))) = next else { continue };
                    let runtime = Arc::clone(self);
                    let release = release.child_token();
                    tracker.spawn(async move {
                        runtime.run_job(message, release).await;
                        drop(permit);
                    });
                }
                permits = self.free_slots(&slots), if pulls.len() < MAX_OPEN_PULLS => {
                    let Ok(permits) = permits else { break };
                    match self.pull(consumer, permits).await {
                        Ok(stream) => {
                            backoff = Duration::from_millis(100);
                            pulls.push(stream);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Pull request failed; retrying.");
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                () = shutdown.cancelled() => break,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
        }

        // Jobs the server delivers to still-open pull requests are handed back at once.
        let drain = tokio::spawn(async move {
            while let Some(next) = pulls.next().await {
                let Some((message, _permit)) = next else {
                    continue;
                };
                if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                    tracing::warn!(error = %e, "Could not release a job on shutdown.");
                }
            }
        });
        tracker.close();
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                running = tracker.len(),
                "Grace period over; releasing unfinished jobs to other replicas."
            );
            release.cancel();
            tracker.wait().await;
        }
        let expires = Duration::from_millis(self.config.pull_expires_ms);
        if tokio::time::timeout(expires + Duration::from_secs(1), drain)
            .await
            .is_err()
        {
            tracing::warn!("Open pull requests did not end in time.");
        }
    }

    /// Waits for at least one free slot, then takes as many more as are free (up to a batch).
    async fn free_slots(
        &self,
        slots: &Arc<Semaphore>,
    ) -> Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
        let mut permits = Arc::clone(slots).acquire_owned().await?;
        while permits.num_permits() < self.config.max_batch.max(1) {
            match Arc::clone(slots).try_acquire_owned() {
                Ok(more) => permits.merge(more),
                Err(_) => break,
            }
        }
        Ok(permits)
    }

    /// One pull request for exactly as many jobs as `permits` has slots. Each job comes
    /// out with one slot; the slots of jobs that did not come are freed when it ends.
    async fn pull(
        &self,
        consumer: &PullConsumer,
        permits: OwnedSemaphorePermit,
    ) -> Result<BoxStream<'static, Option<Slot>>, async_nats::Error> {
        let batch = consumer
            .batch()
            .max_messages(permits.num_permits())
            .expires(Duration::from_millis(self.config.pull_expires_ms))
            .messages()
            .await?;
        let stream =
            futures::stream::unfold((batch, permits), |(mut batch, mut permits)| async move {
                match batch.next().await? {
                    Ok(message) => match permits.split(1) {
                        Some(permit) => Some(((message, permit), (batch, permits))),
                        None => {
                            // More than was asked for: never hold a job without a slot.
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                            None
                        }
                    },
                    Err(e) => {
                        // The consumer or JetStream is unavailable (leader change, restart):
                        // pause before this pull's slots are asked for again.
                        tracing::warn!(error = %e, "Pull request ended with an error.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        None
                    }
                }
            });
        // The trailing `None` wakes the pull loop when this request ends, so the slots it
        // did not fill are asked for again at once.
        Ok(stream
            .map(Some)
            .chain(futures::stream::once(async { None }))
            .boxed())
    }

    async fn run_job(self: Arc<Self>, message: jetstream::Message, release: CancellationToken) {
        let delivered = message
            .info()
            .map(|info| u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let mut request: JobRequest = match serde_json::from_slice(&message.payload) {
            Ok(request) => request,
            Err(e) => return self.poison(message, delivered, e).await,
        };
        // A first delivery of a new job has no earlier runs and no events: only
        // redeliveries and retried jobs pay for the lookup.
        let prior = if delivered == 1 && request.prior_attempts == 0 {
            Prior::Last { attempt: 0, seq: 0 }
        } else {
            self.prior_runs(&request).await
        };
        let (attempt, seen) = match prior {
            Prior::Finished => {
                // Its outcome is recorded; only the ack was lost. Do not run it again.
                tracing::info!(job_id = %request.id, "Job already finished; acking the redelivery.");
                return self.confirm_ack(&message).await;
            }
            Prior::Last { attempt, seq } => (attempt + 1, Some(seq)),
            Prior::Unknown => (request.prior_attempts.saturating_add(delivered), None),
        };
        let payload = std::mem::take(&mut request.payload);
        let request = Arc::new(request);
        // One span per attempt, a child of the span that submitted the job (the gateway's
        // request): a job is one trace however many attempts and replicas it takes.
        let span = tracing::info_span!(
            "job",
            otel.name = %format_args!("process {}", request.kind),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            job_id = %request.id,
            kind = %request.kind,
            attempt,
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        crate::telemetry::join_trace(
            &span,
            crate::trace_context::extract(message.headers.as_ref()),
        );
        let fence = Fence { attempt, seq: seen };
        self.attempt(message, request, payload, fence, release)
            .instrument(span)
            .await;
    }

    /// What the job's events say about earlier runs. Counting runs from the events rather
    /// than from JetStream's delivery count means a job handed back on shutdown, or
    /// delivered to a replica that could not take it, does not use up an attempt.
    async fn prior_runs(&self, request: &JobRequest) -> Prior {
        match self.last_event(&request.kind, request.id).await {
            Ok(Some((_, event))) if event.change.is_terminal() => Prior::Finished,
            Ok(Some((seq, event))) => Prior::Last {
                attempt: event.attempt,
                seq,
            },
            Ok(None) => Prior::Last {
                attempt: request.prior_attempts,
                seq: 0,
            },
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the job's last event; counting deliveries instead.");
                Prior::Unknown
            }
        }
    }

    /// The last event on the job's subject and its sequence, if it has any.
    async fn last_event(
        &self,
        kind: &Kind,
        id: JobId,
    ) -> Result<Option<(u64, JobEvent)>, async_nats::Error> {
        match self
            .events
            .direct_get_last_for_subject(subjects::event(kind, id))
            .await
        {
            Ok(message) => {
                let event = serde_json::from_slice::<JobEvent>(&message.payload)?;
                Ok(Some((message.sequence, event)))
            }
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn attempt(
        &self,
        message: jetstream::Message,
        request: Arc<JobRequest>,
        payload: serde_json::Value,
        mut fence: Fence,
        release: CancellationToken,
    ) {
        let attempt = fence.attempt;
        let trace = trace_headers(message.headers.as_ref());
        let Some(handler) = self.handlers.get(&request.kind) else {
            // A replica older than the consumer's filter (a rolling deploy): another
            // replica knows the kind, so hand the job back rather than fail it.
            tracing::warn!("No handler for this kind here; handing the job back.");
            ended_as("handed-back", None);
            if let Err(e) = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await
            {
                tracing::warn!(error = %e, "Could not hand the job back.");
            }
            return;
        };
        if attempt > request.max_attempts {
            let error = format!(
                "gave up after {} attempts: the last ones ended without an outcome (did the processor stop?)",
                request.max_attempts
            );
            return self
                .fail(&message, &request, &mut fence, error, &trace)
                .await;
        }
        let timeout = Duration::from_secs(
            request
                .timeout_secs
                .or_else(|| self.defs.get(&request.kind).map(|d| d.timeout_secs))
                .unwrap_or(crate::kinds::DEFAULT_TIMEOUT_SECS),
        );

        // Registered before `started` is stored, so a cancellation sent right after
        // cannot miss this run.
        let cancelled_by_client = self.cancellations.register(request.id);
        // Heartbeats go on until the job is acked, nacked or released, not just until the
        // handler returns: recording the outcome can take a while when NATS is slow.
        let (progress_tx, progress_rx) = watch::channel(None);
        let leased = CancellationToken::new();
        let keepalive = self.keepalive(
            &message,
            &request,
            attempt,
            progress_rx,
            &trace,
            leased.clone(),
        );
        let work = async {
            // `started` claims the run: it is stored only if the job's events are as this
            // replica last saw them, so a job cancelled while queued, or taken over by a
            // newer delivery, never runs here.
            let started = JobEvent::new(&request, attempt, Change::Started);
            match self.publish_fenced(&started, &trace, &mut fence).await {
                Fenced::Recorded => {}
                Fenced::Superseded(Superseded::Finished) => {
                    tracing::info!(
                        "The job ended before this run started (cancelled?); not running it."
                    );
                    ended_as("superseded", None);
                    self.confirm_ack(&message).await;
                    leased.cancel();
                    return;
                }
                Fenced::Superseded(Superseded::Taken) => {
                    tracing::info!("Another delivery of this job is running it; standing down.");
                    ended_as("superseded", None);
                    leased.cancel();
                    return;
                }
                Fenced::TooLarge | Fenced::NotConfirmed => {
                    // Unacked: it comes back after ack_wait.
                    ended_as("unconfirmed", None);
                    leased.cancel();
                    return;
                }
            }
            tracing::debug!("Job started.");
            let kind = KindLabel::new(&request.kind);
            self.metrics.started.get_or_create(&kind).inc();
            if attempt == request.prior_attempts + 1 {
                let waited = (crate::job::now() - request.created_at)
                    .to_std()
                    .unwrap_or_default();
                self.metrics
                    .queue_wait_seconds
                    .get_or_create(&kind)
                    .observe(waited.as_secs_f64());
            }
            let run_started = std::time::Instant::now();

            let cancel = CancellationToken::new();
            let blocking = TaskTracker::new();
            let ctx = JobContext::new(
                Arc::clone(&request),
                attempt,
                Arc::new(progress_tx),
                cancel.clone(),
                blocking.clone(),
            );
            let run = AssertUnwindSafe(handler.call(payload, ctx)).catch_unwind();
            let ended = tokio::select! {
                outcome = run => Ended::Ran(outcome.unwrap_or_else(|panic| Err(JobError::Retryable(
                    format!("the handler panicked: {}", panic_message(&panic)),
                )))),
                () = tokio::time::sleep(timeout) => Ended::Ran(Err(JobError::Retryable(format!(
                    "timed out after {}s", timeout.as_secs_f64()
                )))),
                () = cancelled_by_client.token.cancelled() => Ended::Cancelled,
                () = release.cancelled() => Ended::Released,
            };
            // Whatever ended the run, the handler must stop (timeouts, shutdown) ...
            cancel.cancel();
            // ... and CPU work it left on the blocking pool keeps this job's slot until it
            // returns, so a timed-out job cannot overbook the cores.
            blocking.close();
            if tokio::time::timeout(BLOCKING_GRACE, blocking.wait())
                .await
                .is_err()
            {
                tracing::warn!("Blocking work ignored cancellation; freeing its slot anyway.");
            }
            if matches!(ended, Ended::Ran(_)) {
                self.metrics
                    .run_seconds
                    .get_or_create(&kind)
                    .observe(run_started.elapsed().as_secs_f64());
            }
            match ended {
                Ended::Ran(outcome) => {
                    self.record(&message, &request, &mut fence, outcome, &trace)
                        .await;
                }
                Ended::Cancelled => self.cancelled(&message, &request).await,
                Ended::Released => {
                    tracing::info!("Releasing the job to another replica (shutdown).");
                    ended_as("released", None);
                    if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                        tracing::warn!(error = %e, "Could not release the job.");
                    }
                }
            }
            leased.cancel();
        };
        tokio::join!(work, keepalive);
    }

    /// The client cancelled the job while it ran: the gateway stored `cancelled` before
    /// it told the processors, so the job only needs its ack. Checked all the same: an
    /// ack without a recorded end would lose the job.
    async fn cancelled(&self, message: &jetstream::Message, request: &JobRequest) {
        match self.last_event(&request.kind, request.id).await {
            Ok(Some((_, event))) if event.change.is_terminal() => {
                tracing::info!("Job cancelled by the client; stopped.");
                ended_as("cancelled", None);
                self.confirm_ack(message).await;
            }
            other => {
                tracing::warn!(last = ?other.map(|e| e.map(|(_, ev)| ev.change.name())), "A cancellation arrived but none is recorded; the job will run again.");
                if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                    tracing::warn!(error = %e, "Could not release the job.");
                }
            }
        }
    }

    /// Publishes the outcome of a run, then acks, naks with a delay, or fails the job.
    async fn record(
        &self,
        message: &jetstream::Message,
        request: &JobRequest,
        fence: &mut Fence,
        outcome: Result<serde_json::Value, JobError>,
        trace: &HeaderMap,
    ) {
        let attempt = fence.attempt;
        match outcome {
            Ok(result) => {
                let event = JobEvent::new(request, attempt, Change::Succeeded { result });
                match self.publish_fenced(&event, trace, fence).await {
                    Fenced::Recorded => {
                        self.metrics
                            .succeeded
                            .get_or_create(&KindLabel::new(&request.kind))
                            .inc();
                        ended_as("succeeded", None);
                        self.confirm_ack(message).await;
                        tracing::debug!("Job succeeded.");
                    }
                    Fenced::Superseded(superseded) => self.stand_down(message, superseded).await,
                    // Retrying cannot make it smaller: fail now, with the reason.
                    Fenced::TooLarge => {
                        let error =
                            "the result is larger than the NATS server accepts in one message; \
                                     return a reference to large results instead"
                                .to_string();
                        self.fail(message, request, fence, error, trace).await;
                    }
                    Fenced::NotConfirmed => {}
                }
            }
            Err(JobError::Retryable(error)) if attempt < request.max_attempts => {
                let delay = self.config.retry_delay(attempt);
                let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                tracing::info!(%error, retry_in_ms, "Job attempt failed; will retry.");
                let error = clip(error);
                let reason = error.clone();
                let event =
                    JobEvent::new(request, attempt, Change::Retrying { error, retry_in_ms });
                match self.publish_fenced(&event, trace, fence).await {
                    Fenced::Recorded => {
                        ended_as("retrying", Some(&reason));
                        self.metrics
                            .retried
                            .get_or_create(&KindLabel::new(&request.kind))
                            .inc();
                        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                            tracing::warn!(error = %e, "Could not schedule the retry; ack_wait will.");
                        }
                    }
                    Fenced::Superseded(superseded) => self.stand_down(message, superseded).await,
                    Fenced::TooLarge | Fenced::NotConfirmed => {}
                }
            }
            Err(JobError::Retryable(error) | JobError::Permanent(error)) => {
                self.fail(message, request, fence, error, trace).await;
            }
        }
    }

    /// This run's outcome lost the race to another one: record nothing. A finished job
    /// only needs its ack; a job another delivery runs is that delivery's to ack.
    async fn stand_down(&self, message: &jetstream::Message, superseded: Superseded) {
        ended_as("superseded", None);
        match superseded {
            Superseded::Finished => {
                tracing::info!(
                    "The job ended meanwhile (another run or a cancellation); dropping this outcome."
                );
                self.confirm_ack(message).await;
            }
            Superseded::Taken => {
                tracing::info!("A newer run of this job took over; dropping this outcome.");
            }
        }
    }

    /// Ends a job as `failed`: the event, then a copy on `JOBS_DEAD`, then the ack.
    async fn fail(
        &self,
        message: &jetstream::Message,
        request: &JobRequest,
        fence: &mut Fence,
        error: String,
        trace: &HeaderMap,
    ) {
        tracing::warn!(%error, "Job failed.");
        let attempt = fence.attempt;
        let error = clip(error);
        let event = JobEvent::new(
            request,
            attempt,
            Change::Failed {
                error: error.clone(),
            },
        );
        match self.publish_fenced(&event, trace, fence).await {
            Fenced::Recorded => ended_as("failed", Some(&error)),
            Fenced::Superseded(superseded) => return self.stand_down(message, superseded).await,
            Fenced::TooLarge | Fenced::NotConfirmed => return,
        }
        let kind = KindLabel::new(&request.kind);
        self.metrics.failed.get_or_create(&kind).inc();
        // Only the run whose `failed` was stored writes the dead letter, so there is one.
        let dead = self
            .dead_letter(
                subjects::dead(&request.kind, request.id),
                &request.kind,
                Some(request.id),
                attempt,
                &error,
                message.payload.clone(),
                trace,
            )
            .await;
        if dead.is_stored() {
            self.metrics.dead_lettered.get_or_create(&kind).inc();
            self.confirm_ack(message).await;
        }
    }

    /// A message that is not a job request cannot be retried into shape: it is
    /// terminated at once, copied to the dead-letter stream, and, if its subject names
    /// its job, that job is recorded as failed with the reason.
    async fn poison(&self, message: jetstream::Message, attempt: u32, error: serde_json::Error) {
        let (kind, job_id) = subjects::parse_submit(&message.subject);
        let job_id = job_id.or_else(|| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::JOB_ID))
                .and_then(|v| v.as_str().parse::<JobId>().ok())
        });
        let reason = format!("the job message cannot be decoded: {error}");
        tracing::error!(subject = %message.subject, ?job_id, %reason, "Poison message.");
        let trace = trace_headers(message.headers.as_ref());
        let Some(kind) = kind else {
            self.terminate(&message).await;
            return;
        };
        let label = KindLabel::new(&kind);
        let subject = match job_id {
            Some(id) => subjects::dead(&kind, id),
            None => subjects::dead_undecodable(&kind),
        };
        let mut ok = self
            .dead_letter(
                subject,
                &kind,
                job_id,
                attempt,
                &reason,
                message.payload.clone(),
                &trace,
            )
            .await
            .is_stored();
        if ok {
            self.metrics.dead_lettered.get_or_create(&label).inc();
        }
        if let Some(id) = job_id {
            let request = JobRequest {
                id,
                kind,
                payload: serde_json::Value::Null,
                max_attempts: 1,
                timeout_secs: None,
                created_at: crate::job::now(),
                prior_attempts: 0,
                callback_url: None,
                callback_events: None,
            };
            let event = JobEvent::new(&request, attempt, Change::Failed { error: reason });
            let failed = self.publish_event(&event, &trace).await.is_stored();
            if failed {
                self.metrics.failed.get_or_create(&label).inc();
            }
            ok &= failed;
        }
        if ok {
            self.terminate(&message).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        subject: String,
        kind: &Kind,
        job_id: Option<JobId>,
        attempt: u32,
        error: &str,
        payload: Bytes,
        trace: &HeaderMap,
    ) -> Published {
        let mut headers = trace.clone();
        headers.insert(headers::KIND, kind.as_str());
        if let Some(id) = job_id {
            headers.insert(headers::JOB_ID, id.to_string().as_str());
            headers.insert(headers::MSG_ID, format!("{id}.dead.{attempt}").as_str());
        }
        // Header values are one line; the full error is in the job's `failed` event.
        let line: String = error
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        headers.insert("Jetjobs-Error", line.as_str());
        self.publish_reliably(subject, headers, payload).await
    }

    /// Sends heartbeats and progress events until `done`.
    async fn keepalive(
        &self,
        message: &jetstream::Message,
        request: &JobRequest,
        attempt: u32,
        mut progress: watch::Receiver<Option<crate::job::Progress>>,
        trace: &HeaderMap,
        done: CancellationToken,
    ) {
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let min_gap = Duration::from_millis(self.config.progress_interval_ms);
        let mut last_report = tokio::time::Instant::now() - min_gap;
        loop {
            tokio::select! {
                biased;
                () = done.cancelled() => return,
                _ = heartbeat.tick() => {
                    if let Err(e) = message.ack_with(AckKind::Progress).await {
                        tracing::warn!(error = %e, "Heartbeat not sent.");
                    }
                }
                changed = progress.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let wait = min_gap.saturating_sub(last_report.elapsed());
                    if !wait.is_zero() {
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = done.cancelled() => return,
                        }
                    }
                    let Some(current) = *progress.borrow_and_update() else { continue };
                    // Not waiting for the PubAck: a slow one must not hold back heartbeats,
                    // and a lost progress report is superseded by the next.
                    let event = JobEvent::new(request, attempt, Change::Progress(current));
                    if let Err(e) = self.send_event(&event, trace).await {
                        tracing::debug!(error = %e, "Progress event not sent.");
                    }
                    last_report = tokio::time::Instant::now();
                }
            }
        }
    }

    /// Sends an event and returns its PubAck future without waiting for it.
    async fn send_event(
        &self,
        event: &JobEvent,
        trace: &HeaderMap,
    ) -> Result<jetstream::context::PublishAckFuture, async_nats::Error> {
        let (subject, headers, payload) = event_message(event, trace)?;
        Ok(self
            .js
            .publish_with_headers(subject, headers, payload)
            .await?)
    }

    /// Publishes an event and waits for its PubAck, retrying a few times.
    async fn publish_event(&self, event: &JobEvent, trace: &HeaderMap) -> Published {
        match event_message(event, trace) {
            Ok((subject, headers, payload)) => {
                self.publish_reliably(subject, headers, payload).await
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot encode an event.");
                Published::NotConfirmed
            }
        }
    }

    /// Publishes an event of this run only if the job's events are as the run last saw
    /// them (`Nats-Expected-Last-Subject-Sequence`): the stream, not a lock, decides which
    /// of two runs of a job records its outcome. When the check fails the job's last event
    /// says why: another run or a cancellation ended the job, a newer run took over, or
    /// only this run's own progress (or a stale run's) came in between, and the publish
    /// is tried again after it.
    async fn publish_fenced(
        &self,
        event: &JobEvent,
        trace: &HeaderMap,
        fence: &mut Fence,
    ) -> Fenced {
        let (subject, headers, payload) = match event_message(event, trace) {
            Ok(message) => message,
            Err(e) => {
                tracing::error!(error = %e, "Cannot encode an event.");
                return Fenced::NotConfirmed;
            }
        };
        let claiming = matches!(event.change, Change::Started);
        for _ in 0..FENCE_TRIES {
            let mut headers = headers.clone();
            if let Some(seq) = fence.seq {
                headers.insert(headers::EXPECTED_LAST_SUBJECT_SEQ, seq.to_string().as_str());
            }
            match self
                .publish_reliably(subject.clone(), headers, payload.clone())
                .await
            {
                Published::Stored(seq) => {
                    fence.seq = Some(seq);
                    return Fenced::Recorded;
                }
                Published::TooLarge => return Fenced::TooLarge,
                Published::NotConfirmed => return Fenced::NotConfirmed,
                Published::WrongLastSequence => {}
            }
            let (seq, last) = match self.last_event(&event.kind, event.job_id).await {
                Ok(Some(last)) => last,
                // Nothing there any more (the events aged out): nothing to collide with.
                Ok(None) => {
                    fence.seq = Some(0);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read the job's last event.");
                    return Fenced::NotConfirmed;
                }
            };
            if last.change.is_terminal() {
                return Fenced::Superseded(Superseded::Finished);
            }
            let newer = last.attempt > fence.attempt
                || (last.attempt == fence.attempt
                    && (claiming || matches!(last.change, Change::Requeued)));
            if newer {
                return Fenced::Superseded(Superseded::Taken);
            }
            fence.seq = Some(seq);
        }
        tracing::warn!("The job's events kept changing under this run; leaving it to redelivery.");
        Fenced::NotConfirmed
    }

    /// Publishes until JetStream confirms. Safe to repeat: every message carries a
    /// `Nats-Msg-Id`, so a retry of a publish that did land is dropped as a duplicate.
    async fn publish_reliably(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Published {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=PUBLISH_TRIES {
            let sent = self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await;
            if let Err(e) = &sent
                && e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded
            {
                tracing::error!(%subject, bytes = payload.len(), "Message too large for NATS.");
                return Published::TooLarge;
            }
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(ack) => return Published::Stored(ack.sequence),
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    return Published::WrongLastSequence;
                }
                Err(e) if attempt < PUBLISH_TRIES => {
                    tracing::warn!(%subject, error = %e, "Publish not confirmed; retrying.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    // Leave the job unacked: it is redelivered after ack_wait and runs again.
                    tracing::error!(%subject, error = %e, "Publish failed; the job will be redelivered.");
                }
            }
        }
        Published::NotConfirmed
    }

    /// Acks and waits for the server to confirm, so a lost ack cannot make a finished job
    /// run again unnoticed. Uses the client's shared reply inbox (one request) rather
    /// than a subscription per ack.
    async fn confirm_ack(&self, message: &jetstream::Message) {
        self.confirm(message, b"+ACK").await;
    }

    /// Terminates a message that can never be processed, so it is not redelivered.
    async fn terminate(&self, message: &jetstream::Message) {
        self.confirm(message, b"+TERM").await;
    }

    async fn confirm(&self, message: &jetstream::Message, ack: &'static [u8]) {
        let Some(reply) = message.reply.clone() else {
            return;
        };
        if let Err(e) = self.client.request(reply, Bytes::from_static(ack)).await {
            tracing::warn!(error = %e, "Ack not confirmed; the job may be delivered again (its outcome is already recorded).");
        }
    }
}

const PUBLISH_TRIES: u32 = 5;
/// How long a finished or abandoned job waits for CPU work it started to return.
const BLOCKING_GRACE: Duration = Duration::from_secs(60);

/// What a job's events say about its earlier runs.
enum Prior {
    /// It reached a terminal state.
    Finished,
    /// Its last event: the attempt it belongs to (0: never started) and its sequence
    /// on the job's subject (0: there is none).
    Last { attempt: u32, seq: u64 },
    /// The events could not be read; fall back to the delivery count.
    Unknown,
}

/// A run's claim on its job: which attempt it is, and the sequence of the last event on
/// the job's subject that this run knows of (`None`: unknown, publish unchecked).
struct Fence {
    attempt: u32,
    seq: Option<u64>,
}

/// Tries of a fenced publish that finds only its own run's (or a stale run's) events in
/// the way; more means something keeps writing to the job, and redelivery sorts it out.
const FENCE_TRIES: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fenced {
    Recorded,
    Superseded(Superseded),
    TooLarge,
    NotConfirmed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Superseded {
    /// The job already ended: another run's outcome or a cancellation was stored first.
    Finished,
    /// A newer run (a later delivery of the job) is running it.
    Taken,
}

/// How a run ended.
enum Ended {
    Ran(Result<serde_json::Value, JobError>),
    /// The client cancelled the job.
    Cancelled,
    /// Shutdown: the job goes back to the stream for another replica.
    Released,
}

/// Longest error message kept in an event (a handler may return a whole response body).
const MAX_ERROR_LEN: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Published {
    /// Stored by JetStream (PubAck received) at this stream sequence.
    Stored(u64),
    /// Over the server's `max_payload`: no retry can help.
    TooLarge,
    /// The subject's last message is not the expected one (a fenced publish lost).
    WrongLastSequence,
    /// Not confirmed after every retry; the job stays unacked and comes back.
    NotConfirmed,
}

impl Published {
    fn is_stored(self) -> bool {
        matches!(self, Self::Stored(_))
    }
}

fn clip(mut error: String) -> String {
    if error.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
        error.push('…');
    }
    error
}

fn event_message(
    event: &JobEvent,
    trace: &HeaderMap,
) -> Result<(String, HeaderMap, Bytes), serde_json::Error> {
    let payload = serde_json::to_vec(event)?;
    let mut headers = trace.clone();
    headers.insert(headers::MSG_ID, event.msg_id().as_str());
    headers.insert(headers::KIND, event.kind.as_str());
    headers.insert(headers::JOB_ID, event.job_id.to_string().as_str());
    Ok((
        subjects::event(&event.kind, event.job_id),
        headers,
        payload.into(),
    ))
}

/// Records how this attempt ended on its span: the `outcome` attribute, and an error
/// status for the runs that failed (retried or not).
fn ended_as(outcome: &'static str, error: Option<&str>) {
    let span = tracing::Span::current();
    span.record("outcome", outcome);
    if let Some(error) = error {
        span.record("otel.status_code", "error");
        span.record("otel.status_description", error);
    }
}

/// The trace context for every message about the job: this attempt's span, or the
/// job message's own context when spans are not exported.
fn trace_headers(incoming: Option<&HeaderMap>) -> HeaderMap {
    crate::trace_context::outgoing(incoming)
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_stay_capped() {
        let config = RuntimeConfig {
            retry_base_ms: 100,
            retry_max_ms: 1_000,
            ..Default::default()
        };
        for _ in 0..100 {
            let first = config.retry_delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = config.retry_delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(config.retry_delay(30) <= Duration::from_millis(1_000));
        }
    }
}
