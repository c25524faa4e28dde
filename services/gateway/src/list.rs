//! `GET /v1/jobs`: jobs newest first, in cursor pages or as an NDJSON export.
//!
//! KV cannot list keys in any order, let alone newest first, so the gateway writes one
//! small entry per job to `JOBS_INDEX` (`jobs.index.<kind>.<id>`) as it queues it. A page
//! walks that stream backwards from its cursor (a stream sequence) in windows, each one
//! batched direct get; the snapshots of a window's candidates come in one more batched
//! direct get (`multi_last` on `KV_job_status`). So a page costs a few requests and
//! O(limit) messages whatever the number of jobs; time bounds become sequence bounds
//! through a direct get by start time.
//!
//! A page scans at most [`SCAN_BUDGET_PER_ITEM`] × `limit` entries. When filters match
//! rarely, it may return fewer than `limit` jobs and still a `next_cursor`: walking on
//! returns every job that matched, each once, in order (new jobs land above the first
//! page's start and never shift the pages below it).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use jetjobs::direct::{self, Request};
use jetjobs::layout;
use jetjobs::{JobState, Kind};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::error::ApiError;
use crate::submit::IndexEntry;

pub const NDJSON: &str = "application/x-ndjson";
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;
/// Entries a page may scan per job it returns.
const SCAN_BUDGET_PER_ITEM: usize = 20;
/// The gateway's clock and the server's may differ: time bounds found by the stream's
/// timestamps are widened by this much, then checked exactly on `created_at`.
const CLOCK_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(5);
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The filters of a listing; a cursor is only valid with the ones it was made with.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub kind: Option<Kind>,
    pub states: Vec<JobState>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

impl Filters {
    fn fingerprint(&self) -> String {
        let mut states: Vec<&str> = self.states.iter().map(|s| s.as_str()).collect();
        states.sort_unstable();
        let text = format!(
            "{}|{}|{}|{}",
            self.kind.as_ref().map(Kind::as_str).unwrap_or_default(),
            states.join(","),
            self.created_after
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            self.created_before
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        );
        Sha256::digest(text.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn matches_entry(&self, entry: &IndexEntry) -> bool {
        self.kind.as_ref().is_none_or(|k| *k == entry.kind)
            && self.created_after.is_none_or(|t| entry.created_at > t)
            && self.created_before.is_none_or(|t| entry.created_at < t)
    }
}

#[derive(Debug)]
pub struct Query {
    pub limit: usize,
    pub filters: Filters,
    /// Continue strictly below this index sequence.
    pub below: Option<u64>,
    /// The query string without `cursor`, for the `Link` header.
    rest: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct RawParams {
    limit: Option<String>,
    kind: Option<String>,
    state: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
    cursor: Option<String>,
}

pub fn parse_query(raw: Option<&str>) -> Result<Query, ApiError> {
    let raw = raw.unwrap_or_default();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let known = [
        "limit",
        "kind",
        "state",
        "created_after",
        "created_before",
        "cursor",
    ];
    if let Some((name, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {name:?}; known: {}",
            known.join(", ")
        )));
    }
    let params: RawParams = serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}, got {text:?}"
                )));
            }
        },
    };
    let kind = params
        .kind
        .as_deref()
        .map(|k| {
            Kind::new(k).map_err(|e| ApiError::bad_request(format!("kind {k:?} is not valid: {e}")))
        })
        .transpose()?;
    let mut states = Vec::new();
    if let Some(list) = params.state.as_deref() {
        for name in list.split(',') {
            let state: JobState =
                serde_json::from_value(serde_json::Value::String(name.trim().to_string()))
                    .map_err(|_| {
                        ApiError::bad_request(format!(
                            "state {name:?} is not a job state; one or a comma-separated list of: \
                     scheduled, queued, running, retrying, succeeded, failed, cancelled"
                        ))
                    })?;
            if !states.contains(&state) {
                states.push(state);
            }
        }
    }
    let time = |name: &str, value: Option<&str>| {
        value
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "{name} must be an RFC 3339 time (e.g. 2026-01-31T12:00:00Z), got {text:?}: {e}"
                        ))
                    })
            })
            .transpose()
    };
    let filters = Filters {
        kind,
        states,
        created_after: time("created_after", params.created_after.as_deref())?,
        created_before: time("created_before", params.created_before.as_deref())?,
    };
    let below = params
        .cursor
        .as_deref()
        .map(|c| decode_cursor(c, &filters))
        .transpose()?;
    let rest = pairs.into_iter().filter(|(k, _)| k != "cursor").collect();
    Ok(Query {
        limit,
        filters,
        below,
        rest,
    })
}

fn encode_cursor(below: u64, filters: &Filters) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("v1.{below}.{}", filters.fingerprint()))
}

fn decode_cursor(cursor: &str, filters: &Filters) -> Result<u64, ApiError> {
    let invalid = || {
        ApiError::bad_request(format!(
            "cursor {cursor:?} is not one this API gave out (use a page's next_cursor as it is)"
        ))
    };
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(invalid)?;
    let mut parts = text.split('.');
    let (Some("v1"), Some(seq), Some(fingerprint), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let below = seq.parse::<u64>().map_err(|_| invalid())?;
    if fingerprint != filters.fingerprint() {
        return Err(ApiError::bad_request(
            "the cursor was made for other filters: pass the same kind, state and created_* \
             as the page it came from",
        ));
    }
    Ok(below)
}

/// One page: the snapshots (as stored) and where the next one starts.
pub struct Page {
    pub jobs: Vec<Bytes>,
    pub next_below: Option<u64>,
}

/// The part of a snapshot a state filter reads.
#[derive(Deserialize)]
struct StateOnly {
    state: JobState,
}

/// The sequence range `[low, high]` of `JOBS_INDEX` the filters allow, or `None` when
/// it is empty.
async fn bounds(state: &AppState, query: &Query) -> Result<Option<(u64, u64)>, ApiError> {
    // `JOBS_INDEX` only ever loses entries at its front (max_age), so the low bound can
    // be 1: a window that finds nothing at or below its top means nothing is below it
    // either, and the walk stops there (see `page`).
    let mut low = 1;
    let mut high = match query.below {
        // Below a cursor, nothing newer is wanted: no read needed.
        Some(below) => below.saturating_sub(1),
        None => match last_entry(state).await? {
            Some(last) => last,
            None => return Ok(None),
        },
    };
    if let Some(before) = query.filters.created_before {
        // The first entry stored after `before` (+ margin) and everything above it are
        // too new.
        if let Some(seq) = first_at(state, before + CLOCK_MARGIN).await? {
            high = high.min(seq.saturating_sub(1));
        }
    }
    if let Some(after) = query.filters.created_after {
        match first_at(state, after - CLOCK_MARGIN).await? {
            Some(seq) => low = low.max(seq),
            None => return Ok(None),
        }
    }
    Ok((low <= high && high > 0).then_some((low, high)))
}

/// The newest index entry's sequence, or `None` when the index is empty. From the
/// stream's info, which the server keeps current: a direct get of the last message on
/// `jobs.index.>` looked the same at 10,000 jobs but took ~106 ms at 1,000,000 (a
/// wildcard "last" scans the last block's subjects).
async fn last_entry(state: &AppState) -> Result<Option<u64>, ApiError> {
    let mut index = state.index.clone();
    let info = index
        .info()
        .await
        .map_err(|e| crate::submit::nats_unavailable("reading JOBS_INDEX", e))?;
    Ok((info.state.messages > 0).then_some(info.state.last_sequence))
}

/// The sequence of the first index entry stored at or after `time`.
async fn first_at(state: &AppState, time: DateTime<Utc>) -> Result<Option<u64>, ApiError> {
    let found = direct::batch(
        &state.client,
        layout::INDEX_STREAM,
        &Request {
            start_time: Some(time),
            ..Request::default()
        },
        READ_TIMEOUT,
    )
    .await
    .map_err(|e| crate::submit::nats_unavailable("reading JOBS_INDEX", e))?;
    Ok(found.first().map(|m| m.sequence))
}

/// Reads one page below `query.below` (or from the newest), within `budget` entries.
pub async fn page(state: &AppState, query: &Query, budget: usize) -> Result<Page, ApiError> {
    let Some((low, mut high)) = bounds(state, query).await? else {
        return Ok(Page {
            jobs: Vec::new(),
            next_below: None,
        });
    };
    let unavailable = |e| crate::submit::nats_unavailable("listing jobs", e);
    let mut jobs = Vec::with_capacity(query.limit);
    let mut scanned = 0usize;
    loop {
        if high < low {
            return Ok(Page {
                jobs,
                next_below: None,
            });
        }
        if jobs.len() == query.limit || scanned >= budget {
            return Ok(Page {
                jobs,
                next_below: Some(high + 1),
            });
        }
        let window = (query.limit * 2)
            .clamp(16, direct::MAX_BATCH)
            .min((high - low + 1) as usize);
        let start = high + 1 - window as u64;
        let mut entries = direct::batch(
            &state.client,
            layout::INDEX_STREAM,
            &Request {
                seq: Some(start),
                batch: window,
                ..Request::default()
            },
            READ_TIMEOUT,
        )
        .await
        .map_err(unavailable)?;
        scanned += window;
        // A batch runs on past `high` when entries below it have expired; none at or
        // below `high` means the front of the index is behind this window: the end.
        entries.retain(|m| m.sequence <= high);
        if entries.is_empty() {
            return Ok(Page {
                jobs,
                next_below: None,
            });
        }
        entries.sort_unstable_by_key(|m| std::cmp::Reverse(m.sequence));
        let candidates: Vec<(u64, IndexEntry)> = entries
            .iter()
            .filter_map(|m| {
                let entry: IndexEntry = serde_json::from_slice(&m.payload).ok()?;
                query
                    .filters
                    .matches_entry(&entry)
                    .then_some((m.sequence, entry))
            })
            .collect();
        let snapshots = snapshots_of(state, &candidates)
            .await
            .map_err(unavailable)?;
        for (sequence, entry) in &candidates {
            // No snapshot: expired, or its job is still being created.
            let Some(snapshot) = snapshots.get(&entry.id.to_string()) else {
                continue;
            };
            if !query.filters.states.is_empty() {
                let Ok(only) = serde_json::from_slice::<StateOnly>(snapshot) else {
                    continue;
                };
                if !query.filters.states.contains(&only.state) {
                    continue;
                }
            }
            jobs.push(snapshot.clone());
            if jobs.len() == query.limit {
                return Ok(Page {
                    jobs,
                    next_below: (*sequence > low).then_some(*sequence),
                });
            }
        }
        match start.checked_sub(1) {
            Some(below) => high = below,
            None => {
                return Ok(Page {
                    jobs,
                    next_below: None,
                });
            }
        }
    }
}

/// The current snapshots of `candidates`' jobs, by id, in one batched direct get.
async fn snapshots_of(
    state: &AppState,
    candidates: &[(u64, IndexEntry)],
) -> Result<std::collections::HashMap<String, Bytes>, jetjobs::direct::DirectError> {
    let mut out = std::collections::HashMap::with_capacity(candidates.len());
    if candidates.is_empty() {
        return Ok(out);
    }
    let prefix = format!("$KV.{}.", layout::STATUS_BUCKET);
    for chunk in candidates.chunks(direct::MAX_BATCH) {
        let subjects: Vec<String> = chunk
            .iter()
            .map(|(_, entry)| format!("{prefix}{}", entry.id))
            .collect();
        let found = direct::batch(
            &state.client,
            &layout::bucket_stream(layout::STATUS_BUCKET),
            &Request {
                batch: subjects.len(),
                multi_last: subjects,
                ..Request::default()
            },
            READ_TIMEOUT,
        )
        .await?;
        for message in found {
            if message.deleted {
                continue;
            }
            if let Some(id) = message.subject.strip_prefix(&prefix) {
                out.insert(id.to_string(), message.payload);
            }
        }
    }
    Ok(out)
}

/// A page of `GET /v1/jobs`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema: the page is written from the stored snapshots' bytes
pub struct JobPage {
    /// Newest first by creation.
    jobs: Vec<jetjobs::JobSnapshot>,
    /// The next page's `cursor` (with the same filters); `null`: no more.
    next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/jobs",
    operation_id = "listJobs",
    tag = "jobs",
    summary = "List jobs",
    description = "Newest first by creation. A page reads a bounded window of `JOBS_INDEX`: \
        with a rare filter it may hold fewer than `limit` jobs and still a `next_cursor`. \
        With `Accept: application/x-ndjson`, every matching job, one snapshot per line \
        (an export, not a page).",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Jobs per page (50)."),
        ("kind" = Option<String>, Query, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", description = "Only jobs of this kind."),
        ("state" = Option<String>, Query,
            pattern = "^(scheduled|queued|running|retrying|succeeded|failed|cancelled)(,(scheduled|queued|running|retrying|succeeded|failed|cancelled))*$",
            description = "Only jobs in this state, or any of several comma-separated (`succeeded,failed`)."),
        ("created_after" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339."),
        ("created_before" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339."),
        ("cursor" = Option<String>, Query, description = "A page's `next_cursor`, with the same filters."),
    ),
    responses(
        (status = 200, description = "A page of jobs.",
            content(
                (JobPage = "application/json"),
                (jetjobs::JobSnapshot = "application/x-ndjson"),
            ),
            headers(("Link" = String, description = "`<…&cursor=…>; rel=\"next\"` when there is more."))),
        (status = 400, description = "A bad parameter, or a cursor from other filters.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = parse_query(raw.as_deref())?;
    if wants_ndjson(&headers) {
        return Ok(export(state, query));
    }
    let page = page(&state, &query, query.limit * SCAN_BUDGET_PER_ITEM).await?;
    let next_cursor = page
        .next_below
        .map(|below| encode_cursor(below, &query.filters));
    let mut body = BytesMut::with_capacity(
        32 + page.jobs.iter().map(Bytes::len).sum::<usize>() + page.jobs.len(),
    );
    // The snapshots as stored: no parse and re-encode of each.
    body.put_slice(b"{\"jobs\":[");
    for (i, job) in page.jobs.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(job);
    }
    body.put_slice(b"],\"next_cursor\":");
    body.put_slice(
        serde_json::to_string(&next_cursor)
            .unwrap_or_else(|_| "null".to_string())
            .as_bytes(),
    );
    body.put_u8(b'}');
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.freeze(),
    )
        .into_response();
    if let Some(cursor) = next_cursor {
        let mut params = query.rest.clone();
        params.push(("cursor".to_string(), cursor));
        let query_string = serde_urlencoded::to_string(&params).unwrap_or_default();
        if let Ok(link) = HeaderValue::from_str(&format!("</v1/jobs?{query_string}>; rel=\"next\""))
        {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.split(';').next().unwrap_or_default().trim() == NDJSON)
}

/// Every matching job, one snapshot per line, newest first: pages read one after the
/// other into a channel of a few pages, so memory stays bounded whatever the count.
fn export(state: AppState, mut query: Query) -> Response {
    let (lines, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    query.limit = MAX_LIMIT.min(query.limit.max(200));
    let shutdown = state.push.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let page = tokio::select! {
                () = shutdown.cancelled() => return,
                page = page(&state, &query, query.limit * SCAN_BUDGET_PER_ITEM) => page,
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    // Headers are gone: cutting the stream short is the only signal left.
                    let _ = lines.send(Err(std::io::Error::other(e.detail))).await;
                    return;
                }
            };
            let mut chunk = BytesMut::new();
            for job in &page.jobs {
                chunk.put_slice(job);
                chunk.put_u8(b'\n');
            }
            if !chunk.is_empty() && lines.send(Ok(chunk.freeze())).await.is_err() {
                return; // the client left
            }
            match page.next_below {
                Some(below) => query.below = Some(below),
                None => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream_adapter(receiver));
    (StatusCode::OK, [(header::CONTENT_TYPE, NDJSON)], body).into_response()
}

fn tokio_stream_adapter(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_belong_to_their_filters() {
        let filters = Filters {
            kind: Kind::new("hash").ok(),
            ..Filters::default()
        };
        let cursor = encode_cursor(42, &filters);
        assert_eq!(decode_cursor(&cursor, &filters).ok(), Some(42));
        assert!(decode_cursor(&cursor, &Filters::default()).is_err());
        assert!(decode_cursor("garbage!", &filters).is_err());
        assert!(decode_cursor(&encode_cursor(1, &filters)[1..], &filters).is_err());
    }

    #[test]
    fn queries_are_checked() {
        assert_eq!(parse_query(None).map(|q| q.limit).ok(), Some(DEFAULT_LIMIT));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=ten",
            "state=done",
            "state=queued,nope",
            "created_after=yesterday",
            "created_before=2026-13-01T00:00:00Z",
            "cursor=xyz",
            "kind=Bad%20Kind",
            "color=red",
        ] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
        let q = parse_query(Some("limit=7&state=queued,running&kind=noop")).expect("valid");
        assert_eq!(q.limit, 7);
        assert_eq!(q.filters.states, vec![JobState::Queued, JobState::Running]);
    }
}
