//! One delivery of a job, from the message to its ack: what the job's events say about
//! it ([`fence::plan`]), the run's claim (`started`), the handler under its timeout, its
//! cancellation and shutdown, and recording the outcome.
//!
//! The order that makes "no accepted job is lost" hold: the outcome event is stored
//! (PubAck) before the job is acked; every write is fenced, so a delivery that lost the
//! race to another one, or to a cancellation, records nothing.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::FutureExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::handler::{JobContext, JobError};
use super::keepalive::Lease;
use super::runtime::{Runtime, clip, ended_as, panic_message, trace_headers};
use crate::fence::{self, Fence, Plan, Superseded};
use crate::job::JobRequest;
use crate::metrics::KindLabel;
use crate::protocol::{Fenced, Retries};
use crate::state::{Change, JobEvent};

/// How long a finished or abandoned job waits for CPU work it started to return.
const BLOCKING_GRACE: Duration = Duration::from_secs(60);
/// When a job's events cannot be read, how long before its delivery comes back.
const LOOKUP_RETRY: Duration = Duration::from_secs(2);

/// How a run ended.
enum Ended {
    Ran(Result<serde_json::Value, JobError>),
    /// The client cancelled the job.
    Cancelled,
    /// Shutdown: the job goes back to the stream for another replica.
    Released,
}

/// A delivery being worked on: the message, its request, and the trace context of every
/// message about it. The run's claim, its [`Fence`], travels beside it.
struct Delivery {
    message: jetstream::Message,
    request: Arc<JobRequest>,
    trace: HeaderMap,
}

impl Runtime {
    pub(super) async fn run_job(
        self: Arc<Self>,
        message: jetstream::Message,
        release: CancellationToken,
    ) {
        let delivered = message.info().map_or(1, |info| info.delivered.max(1));
        let mut request: JobRequest = match serde_json::from_slice(&message.payload) {
            Ok(request) => request,
            Err(e) => {
                let attempt = u32::try_from(delivered).unwrap_or(u32::MAX);
                return self.poison(message, attempt, e).await;
            }
        };
        // A first delivery of a new job has no earlier runs and no events: only
        // redeliveries and retried jobs pay for the lookup.
        let last = if fence::needs_lookup(&request, u64::try_from(delivered).unwrap_or(1)) {
            match self.events.last(&request.kind, request.id).await {
                Ok(last) => last,
                Err(e) => {
                    // Never run a job whose events are unknown: its claim could not be
                    // fenced, and a finished job would run again.
                    tracing::warn!(job_id = %request.id, error = %e, "Cannot read the job's events; handing it back.");
                    return self.nak(&message, Some(LOOKUP_RETRY)).await;
                }
            }
        } else {
            None
        };
        let (fence, requeue) = match fence::plan(&request, last.as_ref().map(|(s, e)| (*s, e))) {
            Plan::Run { fence, requeue } => (fence, requeue),
            Plan::Finished { failed_at: None } => {
                // Its outcome is recorded; only the ack was lost. Do not run it again.
                tracing::info!(job_id = %request.id, "Job already finished; acking the redelivery.");
                return self.ack(&message).await;
            }
            Plan::Finished {
                failed_at: Some(attempt),
            } => {
                let error = match last.map(|(_, event)| event.change) {
                    Some(Change::Failed { error }) => error,
                    _ => String::new(),
                };
                let trace = trace_headers(message.headers.as_ref());
                // The run that failed the job may have died before its dead letter was
                // stored: the job is acked only once the dead letter is there.
                if self
                    .ensure_dead_letter(&message, &request, attempt, &error, &trace)
                    .await
                {
                    self.ack(&message).await;
                }
                return;
            }
        };
        let payload = std::mem::take(&mut request.payload);
        // Counted as held (`GET /v1/stats`) until this delivery is settled.
        let _held = self.presence.hold(&request.kind, delivered > 1);
        // One span per attempt, a child of the span that submitted the job (the gateway's
        // request): a job is one trace however many attempts and replicas it takes.
        // The processor runtime's spans keep one target whatever file they are made in.
        let span = tracing::info_span!(
            target: "jetjobs::processor",
            "job",
            otel.name = %format_args!("process {}", request.kind),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            job_id = %request.id,
            kind = %request.kind,
            attempt = fence.attempt,
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        crate::telemetry::join_trace(
            &span,
            crate::trace_context::extract(message.headers.as_ref()),
        );
        let delivery = Delivery {
            trace: HeaderMap::new(),
            message,
            request: Arc::new(request),
        };
        self.attempt(delivery, fence, payload, requeue, release)
            .instrument(span)
            .await;
    }

    async fn attempt(
        &self,
        mut delivery: Delivery,
        mut fence: Fence,
        payload: serde_json::Value,
        requeue: bool,
        release: CancellationToken,
    ) {
        // Inside the attempt's span: every message about this run carries its context.
        delivery.trace = trace_headers(delivery.message.headers.as_ref());
        let request = Arc::clone(&delivery.request);
        let Some(handler) = self.handlers.get(&request.kind).cloned() else {
            // A replica older than the consumer's filter (a rolling deploy): another
            // replica knows the kind, so hand the job back rather than fail it.
            tracing::warn!("No handler for this kind here; handing the job back.");
            ended_as("handed-back", None);
            return self
                .nak(&delivery.message, Some(Duration::from_secs(5)))
                .await;
        };
        if requeue {
            // This delivery is a retry of a failed job: record that the job is queued
            // again (the gateway does too; the same message id makes them one event).
            let requeued =
                JobEvent::new(&request, fence.attempt.saturating_sub(1), Change::Requeued);
            if !self.claim(&delivery, &mut fence, &requeued).await {
                return;
            }
        }
        if fence.attempt > request.max_attempts {
            let error = format!(
                "gave up after {} attempts: the last ones ended without an outcome (did the processor stop?)",
                request.max_attempts
            );
            return self.fail(&delivery, &mut fence, error).await;
        }
        let timeout = Duration::from_secs(
            request
                .timeout_secs
                .or_else(|| self.defs.get(&request.kind).map(|d| d.timeout_secs))
                .unwrap_or(crate::kinds::DEFAULT_TIMEOUT_SECS),
        );

        // Heartbeats go on until the job is acked, nacked or released, not just until the
        // handler returns: waiting for a run slot and recording the outcome count too.
        let (progress_tx, progress_rx) = watch::channel(None);
        let settled = CancellationToken::new();
        let claimed = CancellationToken::new();
        let keepalive = self.keepalive(
            Lease {
                message: &delivery.message,
                request: &request,
                attempt: fence.attempt,
                trace: &delivery.trace,
            },
            progress_rx,
            claimed.clone(),
            settled.clone(),
        );
        let work = async {
            // A run slot first: a job waiting for one is still `queued`.
            let slot = tokio::select! {
                slot = self.run_slots.acquire(self.slot_priority(&delivery)) => slot.ok(),
                () = self.stop_starting.cancelled() => None,
            };
            let Some(slot) = slot else {
                ended_as("released", None);
                self.nak(&delivery.message, None).await;
                return;
            };
            // Checked with the run slot in hand, right before `started`: a job that waited
            // for a slot past its expiry must not start either.
            if fence.attempt == 1 && request.scheduling.expired(crate::job::now()) {
                drop(slot);
                return self.expire(&delivery, &mut fence).await;
            }
            // The kind's limits across replicas: over one, the job goes back to wait.
            let lease = match self.limits.admit(&request.kind, request.id).await {
                crate::limits::Admission::Go(lease) => lease,
                crate::limits::Admission::Wait(delay) => {
                    drop(slot);
                    ended_as("limited", None);
                    return self.nak(&delivery.message, Some(delay)).await;
                }
            };
            // Registered before `started` is stored, so a cancellation sent right after
            // cannot miss this run.
            let cancelled_by_client = self.cancellations.register(request.id);
            // `started` claims the run: it is stored only if the job's events are as this
            // delivery last saw them, so a job cancelled while queued, or taken over by a
            // newer delivery, records nothing from this run. Stored before the run, or,
            // for most runs, only once the run outlives `started_after_ms` (see
            // `run_then_claim`).
            let started = JobEvent::new(&request, fence.attempt, Change::Started);
            let deferred = self.defers_claim(&delivery, &fence);
            if !deferred {
                if !self.claim(&delivery, &mut fence, &started).await {
                    return;
                }
                claimed.cancel();
            }
            tracing::debug!(deferred, "Job started.");
            let running = self.presence.run(&request.kind);
            let kind = KindLabel::new(&request.kind);
            self.metrics.started.get_or_create(&kind).inc();
            if fence.attempt == request.prior_attempts + 1 {
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
                fence.attempt,
                Arc::new(progress_tx),
                cancel.clone(),
                blocking.clone(),
                self.blobs.clone(),
            );
            let run = AssertUnwindSafe(handler.call(payload, ctx)).catch_unwind();
            let run = async {
                tokio::select! {
                    outcome = run => Ended::Ran(outcome.unwrap_or_else(|panic| Err(JobError::Retryable(
                        format!("the handler panicked: {}", panic_message(&panic)),
                    )))),
                    () = tokio::time::sleep(timeout) => Ended::Ran(Err(JobError::Retryable(format!(
                        "timed out after {}s", timeout.as_secs_f64()
                    )))),
                    () = cancelled_by_client.token.cancelled() => Ended::Cancelled,
                    () = release.cancelled() => Ended::Released,
                }
            };
            let ended = if deferred {
                self.run_then_claim(run, &delivery, &mut fence, &started, &claimed)
                    .await
            } else {
                Ok(run.await)
            };
            // Whatever ended the run, the handler must stop (timeouts, shutdown) ...
            cancel.cancel();
            // ... and CPU work it left on the blocking pool keeps this job's run slot
            // until it returns, so a timed-out job cannot overbook the cores.
            blocking.close();
            if tokio::time::timeout(BLOCKING_GRACE, blocking.wait())
                .await
                .is_err()
            {
                tracing::warn!("Blocking work ignored cancellation; freeing its slot anyway.");
            }
            // The next job may start while this one's outcome is recorded. A limit's
            // lease is held until then: in JOB_EVENTS, a job of a limited kind starts
            // only after the one whose lease it takes has ended.
            drop(slot);
            drop(running);
            drop(cancelled_by_client);
            if matches!(ended, Ok(Ended::Ran(_))) {
                self.metrics
                    .run_seconds
                    .get_or_create(&kind)
                    .observe(run_started.elapsed().as_secs_f64());
            }
            let ended = match ended {
                Ok(ended) => ended,
                // The late claim was refused: the run was stopped above, and records
                // nothing.
                Err(refused) => {
                    self.claimed(&delivery, refused).await;
                    drop(lease);
                    return;
                }
            };
            match ended {
                Ended::Ran(outcome) => self.record(&delivery, &mut fence, outcome).await,
                Ended::Cancelled => self.cancelled(&delivery).await,
                Ended::Released => {
                    tracing::info!("Releasing the job to another replica (shutdown).");
                    ended_as("released", None);
                    self.nak(&delivery.message, None).await;
                }
            }
            drop(lease);
        };
        let work = async {
            work.await;
            settled.cancel();
        };
        tokio::join!(work, keepalive);
    }

    /// Whether this run may start before its `started` is stored. Not when the client
    /// asked for a `started` webhook, and not when an earlier delivery of this message
    /// recorded no run (its processor died, or it was handed back): claiming first then
    /// makes every further run count, so a job that kills its processor still runs out of
    /// attempts instead of coming back forever.
    fn defers_claim(&self, delivery: &Delivery, fence: &Fence) -> bool {
        if self.config.started_after_ms == 0 {
            return false;
        }
        let request = &delivery.request;
        if request
            .callback_events
            .as_ref()
            .is_some_and(|events| events.contains(&crate::webhook::CallbackEvent::Started))
        {
            return false;
        }
        let Ok(info) = delivery.message.info() else {
            return false;
        };
        let runs_of_this_message = fence.attempt.saturating_sub(request.prior_attempts);
        info.delivered <= i64::from(runs_of_this_message)
    }

    /// Runs a job whose claim is deferred: a run that ends within `started_after_ms`
    /// goes straight to its outcome, whose write is fenced like the claim would have
    /// been (so a run that lost the job to a cancellation or another delivery records
    /// nothing either way). A longer run stores `started` then, while it goes on; if that
    /// is refused, the run is dropped (stopped) and the refusal returned.
    async fn run_then_claim(
        &self,
        run: impl std::future::Future<Output = Ended>,
        delivery: &Delivery,
        fence: &mut Fence,
        started: &JobEvent,
        claimed: &CancellationToken,
    ) -> Result<Ended, Fenced> {
        let mut run = std::pin::pin!(run);
        tokio::select! {
            biased;
            ended = &mut run => return Ok(ended),
            () = tokio::time::sleep(Duration::from_millis(self.config.started_after_ms)) => {}
        }
        // A claim once begun is seen through even if the run ends meanwhile: its outcome
        // must be fenced on whatever the claim stored.
        let mut claim = std::pin::pin!(self.write(delivery, fence, started));
        let mut ended = None;
        let fenced = loop {
            tokio::select! {
                fenced = &mut claim => break fenced,
                done = &mut run, if ended.is_none() => ended = Some(done),
            }
        };
        match fenced {
            Fenced::Recorded => {
                claimed.cancel();
                tracing::debug!("Job started (claimed while running).");
                Ok(match ended {
                    Some(ended) => ended,
                    None => run.await,
                })
            }
            refused => Err(refused),
        }
    }

    /// Writes an event that claims the job for this delivery (`requeued`, `started`);
    /// `false` if the claim failed, in which case the delivery has been dealt with.
    async fn claim(&self, delivery: &Delivery, fence: &mut Fence, event: &JobEvent) -> bool {
        let fenced = self.write(delivery, fence, event).await;
        self.claimed(delivery, fenced).await
    }

    /// What a claim's write means for the delivery: `true` if it may run.
    async fn claimed(&self, delivery: &Delivery, fenced: Fenced) -> bool {
        match fenced {
            Fenced::Recorded => true,
            Fenced::Superseded(Superseded::Finished) => {
                tracing::info!(
                    "The job ended before this run started (cancelled?); not running it."
                );
                ended_as("superseded", None);
                self.settle_finished(delivery).await;
                false
            }
            Fenced::Superseded(Superseded::Taken) => {
                tracing::info!("Another delivery of this job is running it; standing down.");
                ended_as("superseded", None);
                false
            }
            Fenced::TooLarge | Fenced::NotConfirmed => {
                // Unacked: it comes back after ack_wait.
                ended_as("unconfirmed", None);
                false
            }
        }
    }

    /// The priority a delivery waits for its run slot with: a low job that has waited
    /// in `JOBS` past `low_priority_max_wait_secs` (the low lane took it for that
    /// reason) waits like a normal one, or the normal jobs held here would starve it.
    fn slot_priority(&self, delivery: &Delivery) -> crate::job::Priority {
        use crate::job::Priority;
        let priority = delivery.request.scheduling.priority;
        if priority != Priority::Low {
            return priority;
        }
        let max_wait = Duration::from_secs(self.config.low_priority_max_wait_secs);
        let waited = delivery.message.info().ok().and_then(|info| {
            let nanos = u64::try_from(info.published.unix_timestamp_nanos()).ok()?;
            (std::time::UNIX_EPOCH + Duration::from_nanos(nanos))
                .elapsed()
                .ok()
        });
        if waited.is_some_and(|waited| waited >= max_wait) {
            Priority::Normal
        } else {
            Priority::Low
        }
    }

    /// A job that was not started before its `expires_at` ends `cancelled` without
    /// running. Fenced like any claim: if the job was cancelled, or expired by the
    /// scheduler, meanwhile, this write is refused and the delivery is only acked.
    async fn expire(&self, delivery: &Delivery, fence: &mut Fence) {
        let request = &delivery.request;
        let event = JobEvent::new(
            request,
            request.prior_attempts,
            Change::expired(&request.scheduling),
        );
        if self.claim(delivery, fence, &event).await {
            tracing::info!(expires_at = ?request.scheduling.expires_at, "Job expired before it started; cancelled.");
            ended_as("expired", None);
            self.ack(&delivery.message).await;
        }
    }

    /// The client cancelled the job while it ran: the gateway stored `cancelled` before
    /// it told the processors, so the job only needs its ack. Checked all the same: an
    /// ack without a recorded end would lose the job.
    async fn cancelled(&self, delivery: &Delivery) {
        let request = &delivery.request;
        match self.events.last(&request.kind, request.id).await {
            Ok(Some((_, event))) if event.change.is_terminal() => {
                tracing::info!("Job cancelled by the client; stopped.");
                ended_as("cancelled", None);
                self.ack(&delivery.message).await;
            }
            other => {
                tracing::warn!(last = ?other.map(|e| e.map(|(_, ev)| ev.change.name())), "A cancellation arrived but none is recorded; the job will run again.");
                self.nak(&delivery.message, None).await;
            }
        }
    }

    /// Publishes the outcome of a run, then acks, naks with a delay, or fails the job.
    async fn record(
        &self,
        delivery: &Delivery,
        fence: &mut Fence,
        outcome: Result<serde_json::Value, JobError>,
    ) {
        let request = Arc::clone(&delivery.request);
        let attempt = fence.attempt;
        // A large result goes to job_blobs first; if it cannot be stored, the run is
        // lost (retried), not the job.
        let outcome = match outcome {
            Ok(result) => self
                .by_reference(&request, result)
                .await
                .map_err(JobError::Retryable),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(change) => {
                let event = JobEvent::new(&request, attempt, change);
                match self.write(delivery, fence, &event).await {
                    Fenced::Recorded => {
                        self.metrics
                            .succeeded
                            .get_or_create(&KindLabel::new(&request.kind))
                            .inc();
                        let since = request
                            .scheduling
                            .run_at
                            .map_or(request.created_at, |at| at.max(request.created_at));
                        let latency = (crate::job::now() - since).to_std().unwrap_or_default();
                        self.presence.succeeded(&request.kind, latency);
                        ended_as("succeeded", None);
                        self.ack(&delivery.message).await;
                        tracing::debug!("Job succeeded.");
                    }
                    Fenced::Superseded(superseded) => self.stand_down(delivery, superseded).await,
                    // Retrying cannot make it smaller: fail now, with the reason.
                    Fenced::TooLarge => {
                        let error =
                            "the result is larger than the NATS server accepts in one message; \
                                     return a reference to large results instead"
                                .to_string();
                        self.fail(delivery, fence, error).await;
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
                    JobEvent::new(&request, attempt, Change::Retrying { error, retry_in_ms });
                match self.write(delivery, fence, &event).await {
                    Fenced::Recorded => {
                        ended_as("retrying", Some(&reason));
                        self.metrics
                            .retried
                            .get_or_create(&KindLabel::new(&request.kind))
                            .inc();
                        self.nak(&delivery.message, Some(delay)).await;
                    }
                    Fenced::Superseded(superseded) => self.stand_down(delivery, superseded).await,
                    Fenced::TooLarge | Fenced::NotConfirmed => {}
                }
            }
            Err(JobError::Retryable(error) | JobError::Permanent(error)) => {
                self.fail(delivery, fence, error).await;
            }
        }
    }

    /// The `succeeded` change for `result`: inline, or, when its JSON is larger than
    /// `inline_result_max_bytes`, stored in `job_blobs` under the job's id (a rerun
    /// replaces it) and referenced.
    async fn by_reference(
        &self,
        request: &JobRequest,
        result: serde_json::Value,
    ) -> Result<Change, String> {
        let limit = self.config.inline_result_max_bytes;
        // Measured without building the encoding for small results: serde_json's writer
        // into a counting sink.
        let size = json_size(&result);
        if size <= limit {
            return Ok(Change::Succeeded {
                result,
                result_ref: None,
            });
        }
        let id = request.id.to_string();
        let encoded = if size >= 64 * 1024 {
            tokio::task::spawn_blocking(move || serde_json::to_vec(&result))
                .await
                .map_err(|e| e.to_string())?
        } else {
            serde_json::to_vec(&result)
        }
        .map_err(|e| format!("encoding the result: {e}"))?;
        let body = futures::stream::iter(
            encoded
                .chunks(128 * 1024)
                .map(|c| Ok::<_, std::convert::Infallible>(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let info = self
            .blobs
            .put(&id, "application/json", Some(&id), body, u64::MAX)
            .await
            .map_err(|e| format!("storing the result in job_blobs: {e}"))?;
        Ok(Change::Succeeded {
            result: serde_json::Value::Null,
            result_ref: Some(crate::ResultRef {
                blob: info.id,
                size: info.size,
                content_type: info.content_type,
            }),
        })
    }

    async fn write(&self, delivery: &Delivery, fence: &mut Fence, event: &JobEvent) -> Fenced {
        self.events
            .write_fenced(event, &delivery.trace, &mut fence.seq, Retries::BACKGROUND)
            .await
    }

    /// This run's outcome lost the race to another one: record nothing. A finished job
    /// only needs its ack; a job another delivery runs is that delivery's to ack.
    async fn stand_down(&self, delivery: &Delivery, superseded: Superseded) {
        ended_as("superseded", None);
        match superseded {
            Superseded::Finished => {
                tracing::info!(
                    "The job ended meanwhile (another run or a cancellation); dropping this outcome."
                );
                self.settle_finished(delivery).await;
            }
            Superseded::Taken => {
                tracing::info!("A newer run of this job took over; dropping this outcome.");
            }
        }
    }

    /// Acks a delivery of a job that has ended by another writer's hand. If it failed,
    /// the delivery that failed it may have died before writing its dead letter: the ack
    /// waits until the dead letter is there, or the job would never reach `JOBS_DEAD`.
    async fn settle_finished(&self, delivery: &Delivery) {
        let request = &delivery.request;
        // Aged out, or unreadable: redelivery decides again.
        let Ok(Some((_, event))) = self.events.last(&request.kind, request.id).await else {
            return;
        };
        let settled = match event.change {
            Change::Failed { error } => {
                self.ensure_dead_letter(
                    &delivery.message,
                    request,
                    event.attempt,
                    &error,
                    &delivery.trace,
                )
                .await
            }
            change => change.is_terminal(),
        };
        // Not ended after all (a newer run) settles nothing: that run acks the job.
        if settled {
            self.ack(&delivery.message).await;
        }
    }

    /// Ends a job as `failed`: the event, then a copy on `JOBS_DEAD`, then the ack. If
    /// the copy is not stored the job stays unacked, and its redelivery writes it.
    async fn fail(&self, delivery: &Delivery, fence: &mut Fence, error: String) {
        tracing::warn!(%error, "Job failed.");
        let request = Arc::clone(&delivery.request);
        let attempt = fence.attempt;
        let error = clip(error);
        let event = JobEvent::new(
            &request,
            attempt,
            Change::Failed {
                error: error.clone(),
            },
        );
        match self.write(delivery, fence, &event).await {
            Fenced::Recorded => ended_as("failed", Some(&error)),
            Fenced::Superseded(superseded) => return self.stand_down(delivery, superseded).await,
            Fenced::TooLarge | Fenced::NotConfirmed => return,
        }
        self.metrics
            .failed
            .get_or_create(&KindLabel::new(&request.kind))
            .inc();
        self.presence.failed(&request.kind);
        // Only the delivery whose `failed` was stored (or a redelivery after it) writes
        // the dead letter, so there is one.
        let dead = self
            .dead_letter(
                &request.kind,
                Some(request.id),
                attempt,
                &error,
                delivery.message.payload.clone(),
                &delivery.trace,
            )
            .await;
        if dead.is_stored() {
            self.ack(&delivery.message).await;
        }
    }
}

/// The length of `value`'s JSON encoding, without keeping the encoding.
fn json_size(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
