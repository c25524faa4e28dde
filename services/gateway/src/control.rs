//! Changing a job after it was accepted: `DELETE /v1/jobs/{id}` (cancel) and
//! `POST /v1/jobs/{id}/retry`.
//!
//! Both write an event on the job's own subject with `Nats-Expected-Last-Subject-Sequence`,
//! the same fence the processors use: the stream decides whether a cancellation or a
//! run's outcome came first, so a job ends exactly once, and a retry is stored only
//! onto the failure it retries.

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use jetjobs::job::JobRequest;
use jetjobs::state::{self, Change, JobEvent, JobSnapshot, JobState};
use jetjobs::subjects::{self, headers};
use jetjobs::{JobId, Kind};
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::jobs::{accepted_response, json_response, parse_id};
use crate::submit::{self, nats_unavailable};

/// Fenced writes that lose to another writer are tried again on the new state this often.
const TRIES: usize = 5;

/// `DELETE /v1/jobs/{id}`: cancels a queued or running job. A queued job never runs; a
/// running one sees `ctx.cancelled()`. `200` with the cancelled snapshot; `409` if the
/// job has already ended.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
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
        if !fenced_publish(&state, &event, job.last_seq).await? {
            continue;
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
        let snapshot = state::apply(Some(&job.current), &event).unwrap_or(job.current);
        return Ok(json_response(StatusCode::OK, encode(&snapshot)?));
    }
    Err(busy(id))
}

/// `POST /v1/jobs/{id}/retry`: queues a failed (dead-lettered) job again, with a new
/// series of attempts numbered on from the last, the same id and its history kept.
/// Repeating it while the retry is still queued changes nothing.
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    for _ in 0..TRIES {
        let job = Job::read(&state, id).await?;
        let current = &job.current;
        let requeued = current.state == JobState::Queued && current.attempt > 0;
        if current.state != JobState::Failed && !requeued {
            return Err(ApiError::conflict(format!(
                "job {id} is {}; only a failed job can be retried",
                current.state
            ))
            .with("state", json!(current.state)));
        }
        let original = dead_request(&state, &current.kind, id).await?;
        let per_series = original
            .max_attempts
            .saturating_sub(original.prior_attempts)
            .max(1);
        let request = JobRequest {
            prior_attempts: current.attempt,
            max_attempts: if requeued {
                current.max_attempts
            } else {
                current.attempt.saturating_add(per_series)
            },
            ..original
        };
        let event = job.event(current.attempt, request.max_attempts, Change::Requeued);
        // The requeue is stored first: a processor that took the job before it would see
        // the failure as the job's last word and not run it.
        if !requeued && !fenced_publish(&state, &event, job.last_seq).await? {
            continue;
        }
        let msg_id = format!("{id}.retry.{}", current.attempt);
        if let Err(failure) = submit::publish_as(&state, &request, &msg_id).await {
            // The requeue is stored; repeating the request queues the job.
            return Err(failure.error);
        }
        let snapshot = state::apply(Some(current), &event).unwrap_or_else(|_| current.clone());
        return accepted_response(StatusCode::ACCEPTED, id, encode(&snapshot)?, false);
    }
    Err(busy(id))
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
            change,
        }
    }
}

/// Publishes `event` if the job's last event is still `expected`; `false` if another
/// writer came first (the caller reads the job again).
async fn fenced_publish(
    state: &AppState,
    event: &JobEvent,
    expected: u64,
) -> Result<bool, ApiError> {
    let payload = serde_json::to_vec(event).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut message_headers = HeaderMap::new();
    message_headers.insert(headers::MSG_ID, event.msg_id().as_str());
    message_headers.insert(headers::KIND, event.kind.as_str());
    message_headers.insert(headers::JOB_ID, event.job_id.to_string().as_str());
    message_headers.insert(
        headers::EXPECTED_LAST_SUBJECT_SEQ,
        expected.to_string().as_str(),
    );
    jetjobs::trace_context::inject_current(&mut message_headers);
    let sent = state
        .js
        .publish_with_headers(
            subjects::event(&event.kind, event.job_id),
            message_headers,
            payload.into(),
        )
        .await;
    let acked = match sent {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    };
    match acked {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
        Err(e) => Err(nats_unavailable("recording the change", e)),
    }
}

/// The request of a job that failed for good, from its dead letter.
async fn dead_request(state: &AppState, kind: &Kind, id: JobId) -> Result<JobRequest, ApiError> {
    let message = match state
        .dead
        .direct_get_last_for_subject(subjects::dead(kind, id))
        .await
    {
        Ok(message) => message,
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
    serde_json::from_slice(&message.payload).map_err(|e| {
        ApiError::conflict(format!(
            "job {id} failed because its message could not be decoded ({e}); \
             retrying it would fail the same way"
        ))
    })
}

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
