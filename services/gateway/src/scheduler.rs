//! The scheduler: what happens when a schedule in `JOBS_SCHEDULES` fires.
//!
//! nats-server keeps the time (ADR-51) and publishes each firing into the same stream;
//! every gateway replica pulls the firings from one durable consumer, `scheduler`, so
//! each firing is handled once, by whichever replica is there, and a firing whose
//! handler died comes back after `ack_wait`. Each handling is idempotent:
//!
//! - `jobs.due.<kind>.<id>`: a delayed job's time came. `queued` is written fenced on
//!   the job's subject first — if the client cancelled the job, that write is refused
//!   and the job never runs, however the two raced — then the job goes to `JOBS`
//!   (`Nats-Msg-Id` = job id, one message per job), then the firing is acked.
//! - `jobs.expired.<kind>.<id>`: a job's expiry came. If it has not started, it is
//!   cancelled (fenced, so a run that started first wins).
//! - `jobs.fire.<name>`: a recurring schedule fired. The job's id is derived from the
//!   schedule's name and the firing's time, so a firing handled twice makes one job.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt as _;
use jetjobs::job::JobRequest;
use jetjobs::protocol::{EventLog, Fenced, Retries};
use jetjobs::state::{Change, JobEvent};
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// Firings handled at once by one replica (10,000 jobs due in the same second are
/// queued this many at a time).
const CONCURRENCY: usize = 64;
/// A firing that could not be handled comes back after this long.
const RETRY: Duration = Duration::from_secs(1);

/// Handles firings until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match consume(&state, &shutdown).await {
            Ok(()) if shutdown.is_cancelled() => return,
            // The message stream ended by itself (its consumer was deleted and made
            // again, say): the scheduler must not stop with it.
            Ok(()) => {
                tracing::warn!("The scheduler's consumer stream ended; starting it again.");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "The scheduler's consumer failed; starting it again.");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn consume(state: &AppState, shutdown: &CancellationToken) -> Result<(), async_nats::Error> {
    let consumer: jetstream::consumer::PullConsumer = state
        .schedules
        .get_consumer(jetjobs::layout::SCHEDULER_CONSUMER)
        .await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(CONCURRENCY)
        .messages()
        .await?;
    let log = Arc::new(EventLog::new(state.js.clone(), state.events.clone()));
    let handled = messages
        .take_until(shutdown.cancelled())
        .for_each_concurrent(CONCURRENCY, |message| {
            let log = Arc::clone(&log);
            async move {
                match message {
                    Ok(message) => handle(state, &log, message).await,
                    Err(e) => tracing::warn!(error = %e, "Scheduler pull failed."),
                }
            }
        });
    handled.await;
    Ok(())
}

async fn handle(state: &AppState, log: &EventLog, message: jetstream::Message) {
    let subject = message.subject.to_string();
    let done = if subject.starts_with("jobs.due.") {
        match decode(&message) {
            Some(request) => due(state, log, &request).await,
            None => true,
        }
    } else if subject.starts_with("jobs.expired.") {
        match decode(&message) {
            Some(request) => expired(state, log, &request).await,
            None => true,
        }
    } else if let Some(name) = subject.strip_prefix("jobs.fire.") {
        crate::schedules::fired(state, name, &message).await
    } else {
        tracing::warn!(%subject, "Not a firing the scheduler knows; dropping it.");
        true
    };
    let ack = if done {
        message.ack().await
    } else {
        message.ack_with(AckKind::Nak(Some(RETRY))).await
    };
    if let Err(e) = ack {
        tracing::warn!(%subject, error = %e, "Could not settle a firing; it comes back.");
    }
}

fn decode(message: &jetstream::Message) -> Option<JobRequest> {
    match serde_json::from_slice(&message.payload) {
        Ok(request) => Some(request),
        Err(e) => {
            tracing::error!(subject = %message.subject, error = %e, "A firing that is not a job request; dropping it.");
            None
        }
    }
}

/// A delayed job's time came: `queued`, then `JOBS`. `true` when the firing is settled.
async fn due(state: &AppState, log: &EventLog, request: &JobRequest) -> bool {
    let event = JobEvent::new(request, request.prior_attempts, Change::Queued);
    let mut seq = 0;
    match log
        .write_fenced(&event, &trace(), &mut seq, Retries::BACKGROUND)
        .await
    {
        Fenced::Recorded => {}
        // Cancelled before its time (or expired), or queued and started already by an
        // earlier handling of this firing: nothing to queue.
        Fenced::Superseded(_) => return true,
        Fenced::TooLarge => {
            tracing::error!(job_id = %request.id, "A delayed job's event is too large; dropping it.");
            return true;
        }
        Fenced::NotConfirmed => return false,
    }
    match crate::submit::publish(state, request).await {
        Ok(()) => {
            tracing::debug!(job_id = %request.id, "Delayed job queued.");
            true
        }
        Err(failure) => {
            // `queued` is recorded: the job shows as queued a moment early, and the
            // firing comes back and publishes it (the same message id, one job).
            tracing::warn!(job_id = %request.id, error = %failure.error.detail, "Could not queue a delayed job yet; retrying.");
            false
        }
    }
}

/// A job's expiry came: cancel it unless it has started. `true` when settled.
async fn expired(state: &AppState, log: &EventLog, request: &JobRequest) -> bool {
    // An expiry stored for a submission that then failed names no job: leave it be.
    match crate::submit::read_snapshot(state, request.id).await {
        Ok(Some(_)) => {}
        Ok(None) => return true,
        Err(_) => return false,
    }
    let mut seq = match log.last(&request.kind, request.id).await {
        Ok(None) => 0,
        Ok(Some((seq, last))) if matches!(last.change, Change::Queued) => seq,
        // Started (it runs to its end) or ended already.
        Ok(Some(_)) => return true,
        Err(e) => {
            tracing::warn!(job_id = %request.id, error = %e, "Cannot read an expiring job's events.");
            return false;
        }
    };
    let event = JobEvent::new(
        request,
        request.prior_attempts,
        Change::expired(&request.scheduling),
    );
    match log
        .write_fenced(&event, &trace(), &mut seq, Retries::BACKGROUND)
        .await
    {
        Fenced::Recorded => {
            tracing::info!(job_id = %request.id, expires_at = ?request.scheduling.expires_at, "Job expired before it started; cancelled.");
            crate::delay::forget(state, &request.kind, request.id).await;
            true
        }
        Fenced::Superseded(_) | Fenced::TooLarge => true,
        Fenced::NotConfirmed => false,
    }
}

fn trace() -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    jetjobs::trace_context::inject_current(&mut headers);
    headers
}
