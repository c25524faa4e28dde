//! Server-Sent Events: `GET /v1/jobs/{id}/events` (one job, until it ends) and
//! `GET /v1/events` (every job, or some kinds, for dashboards).
//!
//! Every event is `event: snapshot`, `id: <KV revision>`, `data: <snapshot JSON>`. The
//! revision is the `job_status` stream sequence, so `Last-Event-ID` resumes exactly: the
//! revisions after it that KV still holds (5 per job) are sent, none at or before it.
//!
//! Each stream is a task writing into a small bounded channel that the response body
//! reads: a client that stops reading stops the task (it waits on the channel), and a
//! client that goes away ends it (the channel closes).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use futures::StreamExt as _;
use jetjobs::Kind;
use tokio::sync::mpsc;

use crate::AppState;
use crate::error::ApiError;
use crate::jobs::parse_id;
use crate::waiting;
use crate::watch::{self, Change};

/// Events buffered between a stream's task and its response body.
const BUFFER: usize = 16;
/// Longest a history read may take before the stream gives up (the client can resume).
const HISTORY_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /v1/jobs/{id}/events`: the job's current snapshot, then every change, until the
/// terminal snapshot.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    operation_id = "streamJobEvents",
    tag = "events",
    summary = "A job's changes (Server-Sent Events)",
    description = "The job's current snapshot, then every change until its terminal snapshot, \
        after which the stream closes. Each event is `event: snapshot`, `id: <KV revision>`, \
        `data: <snapshot JSON>`; comments keep an idle stream alive.",
    params(
        crate::jobs::JobIdParam,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this revision."),
    ),
    responses(
        (status = 200, description = "The stream of snapshots.", content_type = "text/event-stream",
            body = String),
        (status = 400, description = "A malformed id or `Last-Event-ID`.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "There is no such job.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let after = last_event_id(&headers)?;
    let key = id.to_string();
    // Subscribed before the first read, so nothing between the read and the watch is lost.
    let mut subscription = state
        .push
        .hub
        .subscribe_key(&key)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string(), 1))?;
    let current = waiting::read(&state.status, &key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no job {id}")))?;
    let first = match after {
        None => vec![current.clone()],
        Some(after) if current.revision <= after => Vec::new(),
        Some(after) => history_after(&state.status, &key, after).await?,
    };
    // Resuming after the end: nothing more will come.
    let ended = after.is_some_and(|after| current.revision <= after && current.is_terminal());

    let (sender, receiver) = mpsc::channel(BUFFER);
    let status = state.status.clone();
    let shutdown = state.push.shutdown.clone();
    tokio::spawn(async move {
        if ended {
            return;
        }
        let mut last = after.unwrap_or(0);
        for change in first {
            match send(&sender, &change, &mut last).await {
                Sent::More => {}
                Sent::Done => return,
            }
        }
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                () = sender.closed() => return,
                event = subscription.recv() => event,
            };
            let changes = match event {
                Ok(watch::Event::Change(change)) if change.key == key => vec![change],
                Ok(watch::Event::Change(_)) => continue,
                Ok(watch::Event::Lagged) => match history_after(&status, &key, last).await {
                    Ok(changes) => changes,
                    Err(e) => {
                        tracing::warn!(detail = %e.detail, "Ending an SSE stream after a lag.");
                        return;
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "Ending an SSE stream: no watch.");
                    return;
                }
            };
            for change in changes {
                match send(&sender, &change, &mut last).await {
                    Sent::More => {}
                    Sent::Done => return,
                }
            }
        }
    });
    Ok(sse_response(receiver, state.push.sse_keepalive))
}

enum Sent {
    More,
    /// The job ended or the client left.
    Done,
}

/// Sends `change` unless it is not newer than `last`; the stream is done after a terminal
/// snapshot.
async fn send(sender: &mpsc::Sender<Event>, change: &Change, last: &mut u64) -> Sent {
    if !change.is_snapshot() || change.revision <= *last {
        return Sent::More;
    }
    let Some(event) = event(change) else {
        return Sent::More;
    };
    if sender.send(event).await.is_err() {
        return Sent::Done;
    }
    *last = change.revision;
    if change.is_terminal() {
        Sent::Done
    } else {
        Sent::More
    }
}

fn event(change: &Change) -> Option<Event> {
    let data = std::str::from_utf8(&change.value).ok()?;
    Some(
        Event::default()
            .event("snapshot")
            .id(change.revision.to_string())
            .data(data),
    )
}

/// The key's snapshots with a revision above `after`, oldest first, as far as KV keeps them.
async fn history_after(
    status: &kv::Store,
    key: &str,
    after: u64,
) -> Result<Vec<Arc<Change>>, ApiError> {
    let read = async {
        let mut history = status
            .history(key)
            .await
            .map_err(|e| ApiError::unavailable(format!("reading the job's history: {e}"), 1))?;
        let mut changes = Vec::new();
        while let Some(entry) = history.next().await {
            let entry = entry
                .map_err(|e| ApiError::unavailable(format!("reading the job's history: {e}"), 1))?;
            let change = Change::from_entry(entry);
            if change.is_snapshot() && change.revision > after {
                changes.push(Arc::new(change));
            }
        }
        Ok(changes)
    };
    tokio::time::timeout(HISTORY_TIMEOUT, read)
        .await
        .map_err(|_| ApiError::unavailable("reading the job's history timed out", 1))?
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    // An empty Last-Event-ID is what EventSource sends after an event without an id.
    if text.is_empty() {
        return Ok(None);
    }
    // A revision is at most i64::MAX, as the document says (`int64`).
    text.parse::<i64>()
        .ok()
        .and_then(|revision| u64::try_from(revision).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Last-Event-ID must be an event id this API sent (a KV revision), got {text:?}"
            ))
        })
}

fn sse_response(mut receiver: mpsc::Receiver<Event>, keepalive: Duration) -> Response {
    let events =
        futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).map(Ok::<_, Infallible>);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response();
    // Proxies such as nginx would otherwise buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `GET /v1/events[?kind=a&kind=b]`: every snapshot change of every job (or of those
/// kinds), from now on or after `Last-Event-ID`. Never ends by itself.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "streamEvents",
    tag = "events",
    summary = "Every job's changes (Server-Sent Events)",
    description = "Every snapshot change of every job, or of the given kinds, from now on (or \
        after `Last-Event-ID`). Same event format as a job's stream; never ends by itself. At \
        most `JETJOBS_MAX_EVENT_STREAMS` at once per gateway (then `503`).",
    params(
        ("kind" = Option<Vec<String>>, Query, explode = true, description = "Only jobs of these kinds."),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this revision."),
    ),
    responses(
        (status = 200, description = "The stream of snapshots.", content_type = "text/event-stream",
            body = String),
        (status = 400, description = "A malformed or unknown parameter, or `Last-Event-ID`.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn all_events(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kinds = kinds_param(query.as_deref())?;
    let after = last_event_id(&headers)?;
    let permit = state
        .push
        .event_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::unavailable(
                "too many event streams are open on this gateway; retry later",
                5,
            )
        })?;
    // One consumer per stream (not the hub): a resume must start at its own revision.
    let watch = match after {
        Some(after) => state.status.watch_all_from_revision(after + 1).await,
        None => state.status.watch_all().await,
    }
    .map_err(|e| ApiError::unavailable(format!("cannot watch job_status: {e}"), 1))?;

    let (sender, receiver) = mpsc::channel(BUFFER);
    let shutdown = state.push.shutdown.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut watch = watch;
        let mut last = after.unwrap_or(0);
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                () = sender.closed() => return,
                next = watch.next() => next,
            };
            let change = match next {
                Some(Ok(entry)) => Change::from_entry(entry),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Ending an event stream: the watch failed.");
                    return;
                }
                None => return,
            };
            let wanted = kinds.is_empty()
                || change
                    .kind
                    .as_deref()
                    .is_some_and(|kind| kinds.iter().any(|k| k.as_str() == kind));
            if wanted && let Sent::Done = send(&sender, &change, &mut last).await {
                // A terminal snapshot ends one job, not this stream.
                if sender.is_closed() {
                    return;
                }
            }
        }
    });
    Ok(sse_response(receiver, state.push.sse_keepalive))
}

fn kinds_param(query: Option<&str>) -> Result<Vec<Kind>, ApiError> {
    let Some(query) = query else {
        return Ok(Vec::new());
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let mut kinds = Vec::new();
    for (name, value) in pairs {
        if name != "kind" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {name:?}; only `kind` (repeatable) is accepted"
            )));
        }
        let kind = Kind::new(value.as_str())
            .map_err(|e| ApiError::bad_request(format!("kind {value:?} is malformed: {e}")))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}
