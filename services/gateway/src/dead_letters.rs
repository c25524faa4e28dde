//! Dead letters: `GET /v1/dead-letters` lists the jobs that failed for good (oldest
//! first, in cursor pages) from `JOBS_DEAD`, and `POST /v1/dead-letters/replay` queues
//! many of them again at once. A job is a dead letter while it is dead: replaying it
//! (here or with `POST /v1/jobs/{id}/retry`) removes its dead letter.
//!
//! A page is one batched direct get from its cursor (`next_by_subj`), which skips the
//! gaps replays leave; each message's `Nats-Num-Pending` says how many follow, so the
//! list knows whether there is a next page without reading it.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use jetjobs::direct::{self, Request, Stored};
use jetjobs::job::JobRequest;
use jetjobs::layout;
use jetjobs::{JobId, Kind};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::paging;
use crate::submit::nats_unavailable;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;
/// Jobs one replay request queues at most; `remaining` says how many are left.
pub const MAX_REPLAY: usize = 1000;
/// Replays in flight at once in one request.
const REPLAY_CONCURRENCY: usize = 16;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// `null` for a message that was not a job request at all.
    pub id: Option<JobId>,
    pub kind: String,
    /// Its sequence in `JOBS_DEAD`.
    pub seq: u64,
    pub failed_at: Option<DateTime<Utc>>,
    /// The attempt that failed for good (0 if unknown).
    pub attempt: u32,
    pub error: String,
    /// Whether it can be queued again (its request is readable).
    pub replayable: bool,
}

/// The body of `GET /v1/dead-letters`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetter>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    kind: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/dead-letters`.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    operation_id = "listDeadLetters",
    tag = "dead letters",
    summary = "List dead letters",
    description = "Jobs that failed for good, oldest first, from `JOBS_DEAD`. A job is listed \
        while it is dead: replaying it removes it. A message that was not a job at all is \
        listed with `id` null and cannot be replayed.",
    params(
        ("kind" = Option<String>, Query, description = "Only dead letters of this kind."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Per page (50)."),
        ("cursor" = Option<String>, Query, description = "A page's `next_cursor`, with the same kind."),
    ),
    responses(
        (status = 200, description = "A page of dead letters.", body = DeadLetters,
            headers(("Link" = String, description = "`<…&cursor=…>; rel=\"next\"` when there is more."))),
        (status = 400, description = "A bad kind, limit or cursor.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "NATS is unavailable; retry.", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds."))),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params: Params =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).map_err(|e| {
            ApiError::bad_request(format!(
                "malformed query string ({e}); known parameters: kind, limit, cursor"
            ))
        })?;
    let kind = params.kind.as_deref().map(parse_kind).transpose()?;
    let limit = paging::limit(params.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = params
        .cursor
        .as_deref()
        .map(|c| decode_cursor(c, kind.as_ref()))
        .transpose()?;
    let (page, pending) = read(&state, kind.as_ref(), after.unwrap_or(0), limit).await?;
    let next_cursor = match (pending, page.last()) {
        (Some(n), Some(last)) if n > 0 => Some(encode_cursor(last.seq, kind.as_ref())),
        _ => None,
    };
    let link = next_cursor.as_ref().and_then(|cursor| {
        let mut query = vec![("limit", limit.to_string()), ("cursor", cursor.clone())];
        if let Some(kind) = &kind {
            query.push(("kind", kind.to_string()));
        }
        let query = serde_urlencoded::to_string(query).ok()?;
        HeaderValue::from_str(&format!("</v1/dead-letters?{query}>; rel=\"next\"")).ok()
    });
    let mut response = (
        StatusCode::OK,
        axum::Json(DeadLetters {
            dead_letters: page,
            next_cursor,
        }),
    )
        .into_response();
    if let Some(link) = link {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// The body of `POST /v1/dead-letters/replay`: some jobs by id, or all (of a kind).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(examples(json!({"ids": ["019aa6d2-5b1c-7e0a-9f3e-2d4c6b8a0e1f"]}), json!({"all": true, "kind": "hash"})))]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The jobs to queue again (1 to 1000). Each is reported on its own: one that is not
    /// a job id is in `failed` with 400.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 1000)]
    ids: Option<Vec<String>>,
    /// Every dead letter (of `kind`), up to 1000 a request.
    #[serde(default)]
    all: bool,
    /// With `all`: only this kind.
    #[serde(default)]
    kind: Option<String>,
}

/// One job a replay could not queue again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotReplayed {
    pub id: String,
    pub status: u16,
    pub detail: String,
}

/// The answer of `POST /v1/dead-letters/replay`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub replayed: Vec<JobId>,
    pub failed: Vec<NotReplayed>,
    /// Dead letters (of the kind, with `all`) this request did not get to: call again.
    pub remaining: u64,
}

/// `POST /v1/dead-letters/replay`.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/replay",
    operation_id = "replayDeadLetters",
    tag = "dead letters",
    summary = "Replay dead letters",
    description = "Queues failed jobs again, as `POST /v1/jobs/{id}/retry` does one: by id, or \
        all (of a kind), at most 1000 a request (`remaining` says how many it did not get \
        to: call again). Each job's outcome is in the answer; one that cannot be replayed \
        does not stop the others.",
    request_body(content = ReplayRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "What was queued again, and what was not, with why.", body = Replayed),
        (status = 400, description = "A malformed body.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither or both of `ids` and `all`, or a bad kind.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "NATS is unavailable; retry.", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds."))),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    ApiJson(body, _): ApiJson<ReplayRequest>,
) -> Result<Response, ApiError> {
    let (ids, remaining) = match (body.ids, body.all) {
        (Some(_), true) => {
            return Err(ApiError::invalid(
                "give either ids or \"all\": true, not both",
            ));
        }
        (None, false) => {
            return Err(ApiError::invalid(
                "say which dead letters to replay: {\"ids\": [...]} or {\"all\": true} (with \"kind\" to replay one kind)",
            ));
        }
        (Some(ids), false) => {
            if body.kind.is_some() {
                return Err(ApiError::invalid(
                    "\"kind\" goes with \"all\": true; with ids, each job's kind is its own",
                )
                .with("field", json!("kind")));
            }
            if ids.is_empty() || ids.len() > MAX_REPLAY {
                return Err(ApiError::invalid(format!(
                    "ids must hold 1 to {MAX_REPLAY} job ids, got {}",
                    ids.len()
                ))
                .with("field", json!("ids")));
            }
            (ids, 0)
        }
        (None, true) => {
            let kind = body
                .kind
                .as_deref()
                .map(|k| {
                    Kind::new(k).map_err(|e| {
                        ApiError::invalid(format!("kind {k:?} is not valid: {e}"))
                            .with("field", json!("kind"))
                    })
                })
                .transpose()?;
            // The oldest first. One whose request cannot be read (a message that was
            // not a job) is never replayable: it is skipped and stays listed.
            let mut ids = Vec::new();
            let mut after = 0;
            let mut remaining = 0;
            'scan: loop {
                let (page, left) = read(&state, kind.as_ref(), after, MAX_REPLAY).await?;
                let Some(last_seq) = page.last().map(|l| l.seq) else {
                    break;
                };
                let page_len = page.len() as u64;
                for (taken, letter) in (1u64..).zip(page) {
                    if ids.len() == MAX_REPLAY {
                        // What this request did not look at.
                        remaining = page_len - taken + 1 + left.unwrap_or(0);
                        break 'scan;
                    }
                    if let (Some(id), true) = (letter.id, letter.replayable) {
                        ids.push(id.to_string());
                    }
                }
                after = last_seq;
                if left.unwrap_or(0) == 0 {
                    break;
                }
            }
            (ids, remaining)
        }
    };
    let outcomes: Vec<(String, Result<JobId, ApiError>)> = futures::stream::iter(ids)
        .map(|raw| {
            let state = state.clone();
            async move {
                let outcome = match crate::jobs::parse_id(&raw) {
                    Ok(id) => crate::control::requeue(&state, id).await.map(|_| id),
                    Err(e) => Err(e),
                };
                (raw, outcome)
            }
        })
        .buffered(REPLAY_CONCURRENCY)
        .collect()
        .await;
    let mut replayed = Vec::new();
    let mut failed = Vec::new();
    for (raw, outcome) in outcomes {
        match outcome {
            Ok(id) => replayed.push(id),
            Err(e) => failed.push(NotReplayed {
                id: raw,
                status: e.status.as_u16(),
                detail: e.detail,
            }),
        }
    }
    Ok((
        StatusCode::OK,
        axum::Json(Replayed {
            replayed,
            failed,
            remaining,
        }),
    )
        .into_response())
}

/// Up to `limit` dead letters after sequence `after`, and how many follow the last.
async fn read(
    state: &AppState,
    kind: Option<&Kind>,
    after: u64,
    limit: usize,
) -> Result<(Vec<DeadLetter>, Option<u64>), ApiError> {
    let filter = match kind {
        Some(kind) => format!("jobs.dead.{kind}.*"),
        None => jetjobs::subjects::DEAD_ALL.to_string(),
    };
    let stored = direct::batch(
        &state.client,
        layout::DEAD_STREAM,
        &Request {
            seq: Some(after + 1),
            next_by_subj: Some(filter),
            batch: limit.min(direct::MAX_BATCH),
            ..Default::default()
        },
        READ_TIMEOUT,
    )
    .await
    .map_err(|e| nats_unavailable("reading JOBS_DEAD", e))?;
    let pending = stored.last().and_then(Stored::num_pending);
    Ok((stored.into_iter().map(describe).collect(), pending))
}

fn describe(message: Stored) -> DeadLetter {
    let mut tokens = message.subject.splitn(4, '.').skip(2);
    let kind = tokens.next().unwrap_or_default().to_string();
    let id = tokens.next().and_then(|t| t.parse::<JobId>().ok());
    let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_string());
    // `Nats-Msg-Id` is `<id>.dead.<attempt>`.
    let attempt = header(jetjobs::subjects::headers::MSG_ID)
        .and_then(|m| m.rsplit('.').next().and_then(|a| a.parse().ok()))
        .unwrap_or(0);
    let replayable = id.is_some() && serde_json::from_slice::<JobRequest>(&message.payload).is_ok();
    DeadLetter {
        id,
        kind,
        seq: message.sequence,
        failed_at: message.time(),
        attempt,
        error: header(jetjobs::processor::ERROR_HEADER).unwrap_or_default(),
        replayable,
    }
}

fn parse_kind(raw: &str) -> Result<Kind, ApiError> {
    Kind::new(raw).map_err(|e| ApiError::bad_request(format!("kind {raw:?} is not valid: {e}")))
}

/// A cursor is valid with the kind filter it was made with.
fn encode_cursor(after: u64, kind: Option<&Kind>) -> String {
    paging::encode_cursor("d1", after, kind.map_or("*", Kind::as_str))
}

fn decode_cursor(cursor: &str, kind: Option<&Kind>) -> Result<u64, ApiError> {
    paging::decode_cursor(cursor, "d1", kind.map_or("*", Kind::as_str))
}
