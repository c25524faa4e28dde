//! `GET /v1/jobs/{id}/history`: what happened to a job, in order — every event in
//! `JOB_EVENTS` on its subject (`started`, `retrying`, `succeeded`, ...), its progress
//! reports and its webhook delivery records, oldest first, in cursor pages.
//!
//! The three kinds of event live on two subjects (`jobs.events.<kind>.<id>` and
//! `jobs.events.<kind>.<id>.*`), so a page is two batched direct gets from the cursor,
//! merged by stream sequence: O(page) reads, however long the stream or the history.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use chrono::{DateTime, Utc};
use jetjobs::direct::{self, Request, Stored};
use jetjobs::layout;
use jetjobs::state::{Change, JobEvent, JobSnapshot, JobState};
use jetjobs::{JobId, subjects};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::jobs::parse_id;
use crate::paging;
use crate::submit::{self, nats_unavailable};

const DEFAULT_LIMIT: usize = 500;
const MAX_LIMIT: usize = 1000;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One entry of a job's history.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Entry {
    /// The job was accepted (from its snapshot: submission writes no event).
    Created {
        seq: u64,
        #[serde(rename = "type")]
        kind: &'static str,
        at: DateTime<Utc>,
        attempt: u32,
        max_attempts: u32,
        /// The job's payload, while a request of the job is kept: waiting or running in
        /// `JOBS`, delayed in `JOBS_SCHEDULES`, dead in `JOBS_DEAD`. A job that ended
        /// otherwise has none left (`JOBS` is a work queue).
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<serde_json::Value>,
    },
    /// An event in `JOB_EVENTS`; its `type` and fields are the change's.
    Event {
        seq: u64,
        at: DateTime<Utc>,
        attempt: u32,
        max_attempts: u32,
        #[serde(flatten)]
        change: Change,
    },
}

/// One entry of a job's history: the common fields, then the fields of its `type`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only its schema is used: `Entry` is what is sent.
pub struct EntryDoc {
    /// Its sequence in `JOB_EVENTS` (0 for `created`, which is no event).
    seq: u64,
    /// `created` (with `payload` while the job's request is kept), `queued`, `started`, `progress`, `retrying`, `succeeded`, `failed`,
    /// `cancelled`, `requeued` or `webhook`.
    #[schema(rename = "type")]
    kind: String,
    at: DateTime<Utc>,
    /// The run it belongs to (0 before the first).
    attempt: u32,
    max_attempts: u32,
    /// `progress`.
    current: Option<u64>,
    /// `progress`.
    total: Option<u64>,
    /// `retrying`, `failed`; for `webhook`, why the delivery failed.
    error: Option<String>,
    /// `retrying`; for `webhook`, when the next delivery is due.
    retry_in_ms: Option<u64>,
    /// `succeeded` (null when stored as a blob, see `result_ref`).
    result: Option<serde_json::Value>,
    /// `succeeded`, when the result is a blob.
    result_ref: Option<jetjobs::state::ResultRef>,
    /// `cancelled`.
    reason: Option<String>,
    /// `webhook`: the delivered event's type.
    event: Option<String>,
    /// `webhook`: the delivered event's sequence.
    event_seq: Option<u64>,
    /// `webhook`: 1 for the first try of that event.
    delivery_attempt: Option<u32>,
    /// `webhook`: `pending`, `delivered`, `retrying` or `failed`.
    outcome: Option<String>,
    /// `webhook`: the receiver's HTTP status.
    status: Option<u16>,
    /// `created`: the job's payload, while its request is kept (waiting, running, delayed
    /// or dead); not after it succeeded or was cancelled.
    payload: Option<serde_json::Value>,
}

/// The body of `GET /v1/jobs/{id}/history`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    pub id: JobId,
    pub kind: jetjobs::Kind,
    /// The job's trace (W3C trace id, 32 hex digits): the submitting request's, which
    /// every attempt joins; null if its events carry none (tracing off).
    pub trace_id: Option<String>,
    #[schema(value_type = Vec<EntryDoc>)]
    pub events: Vec<Entry>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/jobs/{id}/history`.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/history",
    operation_id = "jobHistory",
    tag = "jobs",
    summary = "What happened to a job",
    description = "The job's events in order, oldest first: when it was created, queued, \
        started (each attempt), its progress reports, retries with their errors and delays, \
        its outcome or cancellation, and every webhook delivery attempt. In pages of `limit`.",
    params(
        crate::jobs::JobIdParam,
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Entries per page (500)."),
        ("cursor" = Option<String>, Query, description = "A page's `next_cursor`."),
    ),
    responses(
        (status = 200, description = "A page of the job's history.", body = History,
            headers(("Link" = String, description = "`<…&cursor=…>; rel=\"next\"` when there is more."))),
        (status = 400, description = "A malformed id, limit or cursor.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "There is no such job.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "NATS is unavailable; retry.", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds."))),
    )
)]
pub async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let params: Params =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).map_err(|e| {
            ApiError::bad_request(format!(
                "malformed query string ({e}); known parameters: limit, cursor"
            ))
        })?;
    let limit = paging::limit(params.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = params
        .cursor
        .as_deref()
        .map(|c| decode_cursor(c, id))
        .transpose()?;
    let Some(stored) = submit::read_snapshot(&state, id).await? else {
        return Err(ApiError::not_found(format!("there is no job {id}")).for_job(id));
    };
    let snapshot: JobSnapshot = serde_json::from_slice(&stored)
        .map_err(|e| ApiError::internal(format!("job {id} has an unreadable snapshot: {e}")))?;

    let mut events = Vec::with_capacity(limit.min(64));
    if after.is_none() {
        events.push(Entry::Created {
            seq: 0,
            kind: "created",
            at: snapshot.created_at,
            attempt: 0,
            max_attempts: snapshot.max_attempts,
            payload: payload(&state, &snapshot).await,
        });
    }
    // One more than the page holds tells whether there is a next page.
    let wanted = limit + 1 - events.len();
    let from = after.unwrap_or(0) + 1;
    let own = subjects::event(&snapshot.kind, id);
    let (on_job, beside) = tokio::try_join!(
        read(&state, from, own.clone(), wanted),
        read(&state, from, format!("{own}.*"), wanted),
    )?;
    let mut stored: Vec<Stored> = on_job.into_iter().chain(beside).collect();
    stored.sort_by_key(|m| m.sequence);
    stored.dedup_by_key(|m| m.sequence);
    let room = limit - events.len();
    let more = stored.len() > room;
    stored.truncate(room);
    let last_seq = stored.last().map(|m| m.sequence);
    let trace_id = stored.iter().find_map(|m| trace_id(&m.headers));
    for message in stored {
        match serde_json::from_slice::<JobEvent>(&message.payload) {
            Ok(event) => events.push(Entry::Event {
                seq: message.sequence,
                at: event.at,
                attempt: event.attempt,
                max_attempts: event.max_attempts,
                change: event.change,
            }),
            Err(e) => tracing::warn!(
                job_id = %id,
                seq = message.sequence,
                error = %e,
                "Skipping an unreadable event in a job's history."
            ),
        }
    }
    let next_cursor = match (more, last_seq) {
        (true, Some(seq)) => Some(encode_cursor(seq, id)),
        // A page of only the `created` entry (limit 1): events follow from the start.
        (true, None) => Some(encode_cursor(0, id)),
        (false, _) => None,
    };
    let link = next_cursor.as_ref().and_then(|cursor| {
        let query =
            serde_urlencoded::to_string([("limit", limit.to_string()), ("cursor", cursor.clone())])
                .ok()?;
        HeaderValue::from_str(&format!("</v1/jobs/{id}/history?{query}>; rel=\"next\"")).ok()
    });
    let body = History {
        id,
        kind: snapshot.kind,
        trace_id,
        events,
        next_cursor,
    };
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    if let Some(link) = link {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// The job's payload from where its state says its request is; `None` when it is
/// nowhere (succeeded, cancelled) or cannot be read now: the history is worth more than
/// this one field.
async fn payload(state: &AppState, job: &JobSnapshot) -> Option<serde_json::Value> {
    let (stream, subject) = match job.state {
        JobState::Scheduled => (
            layout::SCHEDULES_STREAM,
            subjects::delayed(&job.kind, job.id),
        ),
        JobState::Queued | JobState::Running | JobState::Retrying => (
            layout::JOBS_STREAM,
            subjects::submit(&job.kind, job.id, job.priority),
        ),
        JobState::Failed => (layout::DEAD_STREAM, subjects::dead(&job.kind, job.id)),
        JobState::Succeeded | JobState::Cancelled => return None,
    };
    let request = Request {
        seq: Some(1),
        next_by_subj: Some(subject),
        ..Default::default()
    };
    let found = direct::batch(&state.client, stream, &request, READ_TIMEOUT)
        .await
        .ok()?;
    let request: jetjobs::job::JobRequest = serde_json::from_slice(&found.first()?.payload).ok()?;
    Some(request.payload)
}

/// The trace id of a `traceparent` header (`00-<trace id>-<span id>-<flags>`).
fn trace_id(headers: &async_nats::HeaderMap) -> Option<String> {
    let value = headers.get(jetjobs::subjects::headers::TRACEPARENT)?;
    let id = value.as_str().split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_ascii_lowercase())
}

async fn read(
    state: &AppState,
    from: u64,
    subject: String,
    batch: usize,
) -> Result<Vec<Stored>, ApiError> {
    direct::batch(
        &state.client,
        layout::EVENTS_STREAM,
        &Request {
            seq: Some(from),
            next_by_subj: Some(subject),
            batch: batch.min(direct::MAX_BATCH),
            ..Default::default()
        },
        READ_TIMEOUT,
    )
    .await
    .map_err(|e| nats_unavailable("reading the job's events", e))
}

/// A cursor names the job it pages, so one job's cursor cannot page another's.
fn encode_cursor(after: u64, id: JobId) -> String {
    paging::encode_cursor("h1", after, &id.to_string())
}

fn decode_cursor(cursor: &str, id: JobId) -> Result<u64, ApiError> {
    paging::decode_cursor(cursor, "h1", &id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_belong_to_their_job() {
        let id = JobId::new_v7();
        let cursor = encode_cursor(42, id);
        assert_eq!(decode_cursor(&cursor, id).ok(), Some(42));
        assert!(decode_cursor(&cursor, JobId::new_v7()).is_err());
        assert!(decode_cursor("not-a-cursor", id).is_err());
    }
}
