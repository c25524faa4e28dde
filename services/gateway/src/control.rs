//! Changing a job after it was accepted: `DELETE /v1/jobs/{id}` (cancel) and
//! `POST /v1/jobs/{id}/retry`.
//!
//! Both write through `jetjobs::protocol::EventLog`, the fenced-write protocol the
//! processors use: the stream decides whether a cancellation or a run's outcome came
//! first, so a job ends exactly once.

use async_nats::HeaderMap;
use async_nats::jetstream::stream::DirectGetErrorKind;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use jetjobs::fence::Superseded;
use jetjobs::job::JobRequest;
use jetjobs::protocol::{self, EventLog, Fenced, Published, Retries};
use jetjobs::state::{self, Change, JobEvent, JobSnapshot, JobState};
use jetjobs::subjects;
use jetjobs::{JobId, Kind};
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::jobs::{accepted_response, json_response, parse_id};
use crate::submit::{self, nats_unavailable};

/// Fenced writes that lose to another writer are tried again on the new state this often.
const TRIES: usize = 5;

/// `DELETE /v1/jobs/{id}`: cancels a scheduled, queued or running job. A scheduled or
/// queued job never runs (a delayed job's schedule is removed too); a running one sees
/// `ctx.cancelled()`. `200` with the cancelled snapshot; `409` if the
/// job has already ended.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    operation_id = "cancelJob",
    tag = "jobs",
    summary = "Cancel a job",
    description = "A scheduled or queued job never runs; a running one is stopped. The job \
        stays readable, `cancelled`.",
    params(crate::jobs::JobIdParam),
    responses(
        (status = 200, description = "The cancelled snapshot.", body = jetjobs::JobSnapshot),
        (status = 400, description = "A malformed id.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "There is no such job.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has already ended; `state` says how.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let log = event_log(&state);
    for _ in 0..TRIES {
        let job = Job::read(&state, id).await?;
        if job.current.state.is_terminal() {
            return Err(ApiError::conflict(format!(
                "job {id} has already ended ({}); only a queued or running job can be cancelled",
                job.current.state
            ))
            .with("state", json!(job.current.state)));
        }
        let event = job.event(
            job.current.attempt,
            job.current.max_attempts,
            Change::Cancelled {
                reason: "cancelled by the client".to_string(),
            },
        );
        let mut seq = job.last_seq;
        match log
            .write_fenced(&event, &trace(), &mut seq, Retries::REQUEST)
            .await
        {
            Fenced::Recorded => {}
            // It ended meanwhile (the next read says how), or a new run started: read
            // the job again and cancel that.
            Fenced::Superseded(_) => continue,
            Fenced::TooLarge => return Err(ApiError::internal("a cancellation is too large")),
            Fenced::NotConfirmed => {
                return Err(ApiError::unavailable(
                    format!("the cancellation of job {id} could not be confirmed; retry"),
                    1,
                ));
            }
        }
        // Running handlers stop at once; a lost notice only means the run finishes and
        // its outcome, which can no longer be stored, is dropped.
        if let Err(e) = state
            .client
            .publish(subjects::cancel(&job.current.kind, id), Bytes::new())
            .await
        {
            tracing::warn!(job_id = %id, error = %e, "Could not notify processors of a cancellation.");
        }
        if job.current.run_at.is_some() || job.current.expires_at.is_some() {
            crate::delay::forget(&state, &job.current.kind, id).await;
        }
        let snapshot = state::apply(Some(&job.current), &event).unwrap_or(job.current);
        return Ok(json_response(StatusCode::OK, encode(&snapshot)?));
    }
    Err(busy(id))
}

/// `POST /v1/jobs/{id}/retry`: queues a failed (dead-lettered) job again, with a new
/// series of attempts numbered on from the last, the same id and its history kept.
/// Repeating it while the retry is still queued changes nothing.
///
/// The job is queued first, then `requeued` is recorded. The retry's message carries the
/// attempt it continues from, so the processor that takes it records `requeued` itself
/// if this request died in between: a requeue recorded before a publish that failed would
/// leave a snapshot saying `queued` with nothing queued.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/retry",
    operation_id = "retryJob",
    tag = "jobs",
    summary = "Retry a failed job",
    description = "Queues a failed job again: same id, same request (from its dead letter), a \
        new series of attempts numbered on from the last, its history kept.",
    params(crate::jobs::JobIdParam),
    responses(
        (status = 202, description = "Queued again.", body = jetjobs::JobSnapshot,
            headers(("Location" = String, description = "`/v1/jobs/{id}`."))),
        (status = 400, description = "A malformed id.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "There is no such job.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not `failed`; `state` says what it is.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 410, description = "The job's dead letter has aged out of `JOBS_DEAD`.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The job is larger than NATS accepts in one message.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let snapshot = requeue(&state, id).await?;
    accepted_response(StatusCode::ACCEPTED, id, encode(&snapshot)?, false)
}

/// Queues a failed job again (what `POST /v1/jobs/{id}/retry` and the dead-letter replay
/// do), and removes its dead letter once it is queued: a job is a dead letter while it
/// is dead. Returns the job as it is now.
pub(crate) async fn requeue(state: &AppState, id: JobId) -> Result<JobSnapshot, ApiError> {
    let log = event_log(state);
    let job = Job::read(state, id).await?;
    let current = &job.current;
    let requeued = current.state == JobState::Queued && current.attempt > 0;
    if current.state != JobState::Failed && !requeued {
        return Err(ApiError::conflict(format!(
            "job {id} is {}; only a failed job can be retried",
            current.state
        ))
        .with("state", json!(current.state)));
    }
    if requeued {
        // A repeat (the first may have died before it removed the dead letter).
        forget_dead_letter(state, &current.kind, id, None).await;
        return Ok(current.clone());
    }
    let (original, dead_seq) = dead_request(state, current, id).await?;
    let per_series = original
        .max_attempts
        .saturating_sub(original.prior_attempts)
        .max(1);
    let request = JobRequest {
        prior_attempts: current.attempt,
        max_attempts: current.attempt.saturating_add(per_series),
        ..original
    };
    let message = protocol::job_message(
        &request,
        &format!("{id}.retry.{}", current.attempt),
        trace(),
    )
    .map_err(|e| ApiError::internal(e.to_string()))?;
    match log.publish(message, Retries::REQUEST).await {
        Published::Stored(_) => {}
        Published::SubjectFull => {
            return Err(ApiError::unavailable(
                format!("job {id}'s last run is still being settled; retry in a moment"),
                1,
            ));
        }
        Published::StoreFull => {
            return Err(
                ApiError::unavailable("the job queue is full; retry later", 5)
                    .with("queue", json!("full")),
            );
        }
        Published::TooLarge => {
            return Err(ApiError::too_large(
                "the job is larger than the NATS server accepts in one message",
            ));
        }
        Published::WrongLastSequence | Published::NotConfirmed => {
            return Err(ApiError::unavailable(
                format!(
                    "job {id} could not be confirmed as queued again; repeating this request is safe"
                ),
                1,
            ));
        }
    }
    let event = job.event(current.attempt, request.max_attempts, Change::Requeued);
    let mut seq = job.last_seq;
    match log
        .write_fenced(&event, &trace(), &mut seq, Retries::REQUEST)
        .await
    {
        Fenced::Recorded => {}
        // A processor took the retry first and recorded `requeued` (and more) itself.
        Fenced::Superseded(Superseded::Taken | Superseded::Finished) => {}
        Fenced::TooLarge | Fenced::NotConfirmed => {
            tracing::warn!(job_id = %id, "Could not record the requeue; the processor that takes the job will.");
        }
    }
    forget_dead_letter(state, &current.kind, id, Some(dead_seq)).await;
    Ok(state::apply(Some(current), &event).unwrap_or_else(|_| current.clone()))
}

/// Removes a requeued job's dead letter: up to `upto` (the one read), so a dead letter
/// of a later failure of the same job, stored meanwhile, stays. A failure here leaves
/// the dead letter listed with the job queued; replaying it again removes it.
async fn forget_dead_letter(state: &AppState, kind: &Kind, id: JobId, upto: Option<u64>) {
    let purge = state.dead.purge().filter(subjects::dead(kind, id));
    let purged = match upto {
        Some(seq) => purge.sequence(seq + 1).await,
        None => purge.await,
    };
    if let Err(e) = purged {
        tracing::warn!(job_id = %id, error = %e, "Could not remove a requeued job's dead letter.");
    }
}

fn event_log(state: &AppState) -> EventLog {
    EventLog::new(state.js.clone(), state.events.clone())
}

/// This request's trace context, for the messages it writes.
fn trace() -> HeaderMap {
    let mut headers = HeaderMap::new();
    jetjobs::trace_context::inject_current(&mut headers);
    headers
}

/// What the gateway knows of a job: its snapshot as the events say it is now.
struct Job {
    current: JobSnapshot,
    /// Sequence of the last event on the job's subject (0: none).
    last_seq: u64,
}

impl Job {
    async fn read(state: &AppState, id: JobId) -> Result<Self, ApiError> {
        let Some(stored) = submit::read_snapshot(state, id).await? else {
            return Err(ApiError::not_found(format!("there is no job {id}")));
        };
        let stored: JobSnapshot = serde_json::from_slice(&stored)
            .map_err(|e| ApiError::internal(format!("job {id} has an unreadable snapshot: {e}")))?;
        // The projection may be a moment behind the events; the last event decides.
        let subject = subjects::event(&stored.kind, id);
        let (current, last_seq) = match state.events.direct_get_last_for_subject(subject).await {
            Ok(message) => {
                let event: JobEvent = serde_json::from_slice(&message.payload).map_err(|e| {
                    ApiError::internal(format!("job {id} has an unreadable event: {e}"))
                })?;
                let current = state::apply(Some(&stored), &event).unwrap_or(stored);
                (current, message.sequence)
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => (stored, 0),
            Err(e) => return Err(nats_unavailable("reading the job's events", e)),
        };
        Ok(Self { current, last_seq })
    }

    fn event(&self, attempt: u32, max_attempts: u32, change: Change) -> JobEvent {
        JobEvent {
            job_id: self.current.id,
            kind: self.current.kind.clone(),
            attempt,
            max_attempts,
            created_at: self.current.created_at,
            at: jetjobs::job::now(),
            callback_url: self.current.callback_url.clone(),
            callback_events: self.current.callback_events.clone(),
            scheduling: self.current.scheduling(),
            change,
        }
    }
}

/// The request of a job that failed for good, from its dead letter.
/// With the dead letter's stream sequence.
async fn dead_request(
    state: &AppState,
    current: &JobSnapshot,
    id: JobId,
) -> Result<(JobRequest, u64), ApiError> {
    let message = match state
        .dead
        .direct_get_last_for_subject(subjects::dead(&current.kind, id))
        .await
    {
        Ok(message) => message,
        // A processor stores `failed`, then the dead letter: a retry right after the
        // failure can come in between (schemathesis did, and got a 410 for a job that
        // had failed milliseconds before). Nothing ages out of JOBS_DEAD that soon.
        Err(e)
            if e.kind() == DirectGetErrorKind::NotFound
                && jetjobs::job::now() - current.updated_at < DEAD_LETTER_GRACE =>
        {
            return Err(ApiError::unavailable(
                format!(
                    "job {id} has just failed and its dead letter is not stored yet; retry in a moment"
                ),
                1,
            ));
        }
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "gone",
                format!(
                    "job {id}'s request is no longer in JOBS_DEAD (its retention has passed), \
                     so it cannot be retried; submit it again as a new job"
                ),
            ));
        }
        Err(e) => return Err(nats_unavailable("reading the dead letter", e)),
    };
    let request = serde_json::from_slice(&message.payload).map_err(|e| {
        ApiError::conflict(format!(
            "job {id} failed because its message could not be decoded ({e}); \
             retrying it would fail the same way"
        ))
    })?;
    Ok((request, message.sequence))
}

/// How long after a job failed its missing dead letter means "not stored yet" rather than
/// "aged out": longer than a processor takes to store it (or, if it died, than the
/// redelivery that stores it: the ack wait), far shorter than JOBS_DEAD's retention.
const DEAD_LETTER_GRACE: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

fn encode(snapshot: &JobSnapshot) -> Result<Bytes, ApiError> {
    serde_json::to_vec(snapshot)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn busy(id: JobId) -> ApiError {
    ApiError::unavailable(
        format!("job {id} kept changing while this request tried to change it; retry"),
        1,
    )
}
