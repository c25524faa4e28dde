//! `/v1/jobs` routes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use jetjobs::JobId;
use tokio::time::Instant;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::submit::{self, Accepted, Identity, SubmitBody};
use crate::waiting;
use crate::watch::Change;

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The `{id}` of `/v1/jobs/{id}…`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // a schema: the handlers read the id as text, to answer 400 themselves
pub struct JobIdParam {
    /// The job's id, a UUID (the gateway makes UUIDv7).
    id: uuid::Uuid,
}

/// `Idempotency-Key` on `POST /v1/jobs`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyKey {
    /// Retry-safe submission: every request with the same key and body gets the same job
    /// (1 to 255 visible ASCII characters; a structured-field string `"…"` too).
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]([ -~]*[!-~])?$"
    )]
    idempotency_key: Option<String>,
}

/// `Prefer: wait=N` (RFC 7240) on submissions.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct Prefer {
    /// `wait=N`: answer `200` with the final snapshot if the job ends within N seconds
    /// (at most `JETJOBS_MAX_WAIT_SECS`); it may sit in a list (`respond-async, wait=10`).
    /// A malformed preference is ignored.
    #[param(rename = "Prefer")]
    prefer: Option<String>,
}
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Longest `Idempotency-Key` accepted (the IETF draft leaves it to the server).
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// `POST /v1/jobs`: a new job, or with `Idempotency-Key` the job that key already made.
/// With `Prefer: wait=N`, a job that ends within N seconds is answered `200` with its
/// final snapshot.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    operation_id = "submitJob",
    tag = "jobs",
    summary = "Submit a job",
    description = "Queues a job and answers `202 Accepted` at once with its snapshot and a \
        `Location`. A `multipart/form-data` body carries the job (part `job`) and a file \
        (part `file`), uploaded into the kind's upload field.",
    params(IdempotencyKey, Prefer),
    request_body(content(
        (SubmitBody = "application/json"),
        (crate::multipart::MultipartSubmit = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "`Prefer: wait=N`: the job ended within N seconds.",
            body = jetjobs::JobSnapshot, headers(
            ("Location" = String, description = "`/v1/jobs/{id}`: where the job is."),
            ("Preference-Applied" = String, description = "`wait=<seconds>` when `Prefer: wait` was honoured."),
            ("Idempotent-Replayed" = String, description = "`true` when an earlier request made this job."),
        )),
        (status = 202, description = "Accepted: the job is queued (or scheduled) and readable.",
            body = jetjobs::JobSnapshot, headers(
            ("Location" = String, description = "`/v1/jobs/{id}`: where the job is."),
            ("Preference-Applied" = String, description = "`wait=<seconds>` when `Prefer: wait` was honoured."),
            ("Idempotent-Replayed" = String, description = "`true` when an earlier request made this job."),
        ),
            links(
            ("getJob" = (operation_id = "getJob", parameters(("id" = "$response.body#/id")))),
            ("cancelJob" = (operation_id = "cancelJob", parameters(("id" = "$response.body#/id")))),
            ("getJobResult" = (operation_id = "getJobResult", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 400, description = "Malformed JSON or multipart, an `id` in the body, a bad `Idempotency-Key`.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body, or the uploaded file, is too large.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong shape, unknown kind (with `kinds`), a payload that does \
            not fit the kind's schema (with `errors`), out-of-range options, a refused \
            `callback_url`, a reused `Idempotency-Key`.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    request_headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    if crate::multipart::is_multipart(&request_headers) {
        return create_with_file(state, request_headers, request).await;
    }
    let ApiJson(body, body_bytes) =
        <ApiJson<SubmitBody> as axum::extract::FromRequest<AppState>>::from_request(
            request, &state,
        )
        .await?;
    if body.id.is_some() {
        return Err(ApiError::bad_request(
            "`id` is chosen by the server on POST; use PUT /v1/jobs/{id} to choose it",
        ));
    }
    let identity = match request_headers.get(IDEMPOTENCY_KEY) {
        None => Identity::Fresh,
        Some(value) => Identity::IdempotencyKey(idempotency_key(value)?),
    };
    let waiter = Waiter::start(&state, &request_headers);
    let kind = body.kind.clone();
    let job = submit::submit(&state, identity, body, body_bytes, None).await?;
    count_submission(&state, &kind, &job);
    // A replayed POST answers like the original did (202), as the IETF draft suggests.
    respond(&state, StatusCode::ACCEPTED, job, waiter).await
}

/// `POST /v1/jobs` as `multipart/form-data`: the job (part `job`) and its file (part
/// `file`), streamed into `job_blobs` and named in the kind's upload field. Whatever
/// fails, the file is not left behind.
async fn create_with_file(
    state: AppState,
    request_headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let identity = match request_headers.get(IDEMPOTENCY_KEY) {
        None => Identity::Fresh,
        Some(value) => Identity::IdempotencyKey(idempotency_key(value)?),
    };
    let (body, body_bytes, file) = crate::multipart::read(&state, request).await?;
    let waiter = Waiter::start(&state, &request_headers);
    let kind = body.kind.clone();
    let upload = submit::Upload {
        field: file.field.clone(),
        sha256: file.blob.sha256.clone(),
    };
    let submitted = submit::submit(&state, identity, body, body_bytes, Some(&upload)).await;
    let keep = match &submitted {
        // A repeat found its job, which has the first upload's blob: this copy goes.
        Ok(job) => !job.replayed,
        // A 503 naming the job may mean it is queued, with this blob.
        Err(e) => e.job_id.is_some(),
    };
    if !keep {
        crate::multipart::discard(&state, &file.blob.id).await;
    }
    let job = submitted?;
    count_submission(&state, &kind, &job);
    respond(&state, StatusCode::ACCEPTED, job, waiter).await
}

/// `PUT /v1/jobs/{id}`: the client chooses the id; repeating the same PUT is harmless.
#[utoipa::path(
    put,
    path = "/v1/jobs/{id}",
    operation_id = "putJob",
    tag = "jobs",
    summary = "Submit a job with your own id",
    description = "`202` the first time; the identical request again is `200` with the job's \
        current snapshot; the same id with a different body is `409`. Also how a `503` \
        that named a job is retried.",
    params(JobIdParam, Prefer),
    request_body(content((SubmitBody = "application/json"))),
    responses(
        (status = 200, description = "The same request was made before (or `Prefer: wait=N` and \
            the job ended): the job's snapshot.", body = jetjobs::JobSnapshot, headers(
            ("Location" = String, description = "`/v1/jobs/{id}`: where the job is."),
            ("Preference-Applied" = String, description = "`wait=<seconds>` when `Prefer: wait` was honoured."),
            ("Idempotent-Replayed" = String, description = "`true` when an earlier request made this job."),
        )),
        (status = 202, description = "Accepted: the job is queued (or scheduled) and readable.",
            body = jetjobs::JobSnapshot, headers(
            ("Location" = String, description = "`/v1/jobs/{id}`: where the job is."),
            ("Preference-Applied" = String, description = "`wait=<seconds>` when `Prefer: wait` was honoured."),
            ("Idempotent-Replayed" = String, description = "`true` when an earlier request made this job."),
        ),
            links(
            ("getJob" = (operation_id = "getJob", parameters(("id" = "$response.body#/id")))),
            ("cancelJob" = (operation_id = "cancelJob", parameters(("id" = "$response.body#/id")))),
            ("getJobResult" = (operation_id = "getJobResult", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 400, description = "A malformed id, or a body `id` that is not the path's.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id exists with a different kind, payload or options.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong shape, unknown kind, a payload that does not fit, \
            out-of-range options, a refused `callback_url`.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request_headers: HeaderMap,
    ApiJson(body, body_bytes): ApiJson<SubmitBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if let Some(body_id) = body.id
        && JobId::from(body_id) != id
    {
        return Err(ApiError::bad_request(format!(
            "the body's id {body_id} differs from the path's id {id}"
        )));
    }
    let waiter = Waiter::start(&state, &request_headers);
    let kind = body.kind.clone();
    let job = submit::submit(&state, Identity::ClientId(id), body, body_bytes, None).await?;
    count_submission(&state, &kind, &job);
    // An identical repeat of a PUT changes nothing: 200 with the current snapshot.
    let status = if job.replayed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    respond(&state, status, job, waiter).await
}

/// A `Prefer: wait` being honoured. The subscription to the job's key is made once the
/// job's id is known (after the submission) and before its snapshot is read, so a change
/// after that read cannot be missed and one before it is in what the read returns.
struct Waiter {
    applied: Duration,
    deadline: Instant,
}

impl Waiter {
    fn start(state: &AppState, headers: &HeaderMap) -> Option<Self> {
        let secs = waiting::prefer_wait(headers).filter(|&secs| secs > 0)?;
        let applied = state.push.clamp(secs);
        Some(Self {
            applied,
            deadline: Instant::now() + applied,
        })
    }
}

/// The answer to a submission: at once, or, with a [`Waiter`], `200` once the job ended or
/// `pending` with its newest snapshot when the wait ran out.
async fn respond(
    state: &AppState,
    pending: StatusCode,
    job: Accepted,
    waiter: Option<Waiter>,
) -> Result<Response, ApiError> {
    let Some(waiter) = waiter else {
        return accepted(pending, job);
    };
    let key = job.id.to_string();
    let mut subscription = match state.push.hub.subscribe_key(&key).await {
        Ok(subscription) => subscription,
        Err(e) => {
            // The preference is optional: without a watch, answer at once.
            tracing::warn!(error = %e, "Cannot honour Prefer: wait.");
            return accepted(pending, job);
        }
    };
    // The job is accepted: from here on, trouble only shortens the wait.
    let last = match waiting::read(&state.status, &key).await {
        Ok(current) => {
            waiting::until(
                &state.push,
                &state.status,
                &mut subscription,
                &key,
                current,
                waiter.deadline,
                Change::is_terminal,
            )
            .await
        }
        Err(e) => {
            tracing::warn!(detail = %e.detail, "Cannot wait for a job; answering at once.");
            None
        }
    };
    let (status, snapshot) = match last {
        Some(change) if change.is_terminal() => (StatusCode::OK, change.value.clone()),
        Some(change) => (pending, change.value.clone()),
        None => (pending, job.snapshot),
    };
    let mut response = accepted_response(status, job.id, snapshot, job.replayed)?;
    let applied = HeaderValue::try_from(format!("wait={}", waiter.applied.as_secs()))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    response.headers_mut().insert("preference-applied", applied);
    Ok(response)
}

/// `GET /v1/jobs/{id}`: the job's snapshot, with `ETag: "<revision>"`.
///
/// - `If-None-Match` with the current revision: `304`.
/// - `?wait=N` (long-poll): answers once the job is terminal, or after N seconds with the
///   current snapshot; with `If-None-Match`, once the revision differs, or `304` after N s.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "getJob",
    tag = "jobs",
    summary = "A job's status",
    description = "The job's snapshot, with `ETag: \"<revision>\"`. `If-None-Match` with the \
        current revision is a `304`. `?wait=N` long-polls: the answer comes once the job \
        has ended (or, with `If-None-Match`, once it changed), or after N seconds \
        (at most `JETJOBS_MAX_WAIT_SECS`).",
    params(
        JobIdParam,
        ("wait" = Option<u64>, Query, description = "Long-poll: seconds to wait at most."),
        ("If-None-Match" = Option<String>, Header,
            description = "Entity tags (`\"<revision>\"`, or `*`) the client has."),
    ),
    responses(
        (status = 200, description = "The job's snapshot.", body = jetjobs::JobSnapshot,
            headers(("ETag" = String, description = "`\"<revision>\"` of the snapshot in KV `job_status`."))),
        (status = 304, description = "Not modified: the job is still at the revision the client has.",
            headers(("ETag" = String, description = "`\"<revision>\"` of the snapshot."))),
        (status = 400, description = "A malformed id, or a `wait` that is not whole seconds.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "There is no such job.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let wait = wait_param(query.as_deref())?
        .filter(|&secs| secs > 0)
        .map(|secs| state.push.clamp(secs));
    let key = id.to_string();
    // Subscribed before the read, so no change after the read can be missed.
    let mut subscription = match wait {
        Some(_) => match state.push.hub.subscribe_key(&key).await {
            Ok(subscription) => Some(subscription),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot long-poll; answering at once.");
                None
            }
        },
        None => None,
    };
    let current = waiting::read(&state.status, &key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no job {id}")))?;
    let tags = if_none_match(&request_headers);
    let (Some(wait), Some(subscription)) = (wait, subscription.as_mut()) else {
        return Ok(match tags {
            Some(tags) if tags.matches(current.revision) => not_modified(current.revision),
            _ => snapshot_response(&current),
        });
    };
    let deadline = Instant::now() + wait;
    let last = match &tags {
        Some(tags) => {
            let last = waiting::until(
                &state.push,
                &state.status,
                subscription,
                &key,
                Some(current),
                deadline,
                |change| !tags.matches(change.revision),
            )
            .await;
            match last {
                Some(change) if tags.matches(change.revision) => {
                    return Ok(not_modified(change.revision));
                }
                other => other,
            }
        }
        None => {
            waiting::until(
                &state.push,
                &state.status,
                subscription,
                &key,
                Some(current),
                deadline,
                Change::is_terminal,
            )
            .await
        }
    };
    last.map(|change| snapshot_response(&change))
        .ok_or_else(|| ApiError::not_found(format!("there is no job {id}")))
}

/// `?wait=N` (whole seconds). Unlike a `Prefer` hint, a query parameter is part of the
/// request, so a malformed one is a `400`.
fn wait_param(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let mut wait = None;
    for (name, value) in pairs {
        if name == "wait" {
            // At most i64::MAX, as the document says (`int64`); it is capped anyway.
            wait = Some(
                value
                    .parse::<i64>()
                    .ok()
                    .and_then(|secs| u64::try_from(secs).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "wait must be a whole number of seconds, got {value:?}"
                        ))
                    })?,
            );
        }
    }
    Ok(wait)
}

/// The entity tags of `If-None-Match` (weak or strong: compared weakly, RFC 9110).
struct EntityTags {
    any: bool,
    tags: Vec<String>,
}

impl EntityTags {
    fn matches(&self, revision: u64) -> bool {
        self.any || self.tags.iter().any(|tag| *tag == etag(revision))
    }
}

fn if_none_match(headers: &HeaderMap) -> Option<EntityTags> {
    let mut found = false;
    let mut tags = EntityTags {
        any: false,
        tags: Vec::new(),
    };
    for value in headers.get_all(header::IF_NONE_MATCH) {
        found = true;
        let Ok(value) = value.to_str() else { continue };
        for tag in value.split(',').map(str::trim) {
            if tag == "*" {
                tags.any = true;
            } else {
                tags.tags
                    .push(tag.strip_prefix("W/").unwrap_or(tag).to_string());
            }
        }
    }
    found.then_some(tags)
}

fn etag(revision: u64) -> String {
    format!("\"{revision}\"")
}

fn with_etag(mut response: Response, revision: u64) -> Response {
    if let Ok(value) = HeaderValue::try_from(etag(revision)) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn snapshot_response(change: &Arc<Change>) -> Response {
    with_etag(
        json_response(StatusCode::OK, change.value.clone()),
        change.revision,
    )
}

fn not_modified(revision: u64) -> Response {
    with_etag(StatusCode::NOT_MODIFIED.into_response(), revision)
}

fn count_submission(state: &AppState, kind: &jetjobs::Kind, job: &Accepted) {
    if !job.replayed {
        state
            .metrics
            .submitted
            .get_or_create(&jetjobs::metrics::KindLabel::new(kind))
            .inc();
    }
}

pub fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    let id = raw.parse::<JobId>().map_err(|e| {
        ApiError::bad_request(format!("{raw:?} is not a job id (a UUID is expected): {e}"))
    })?;
    crate::telemetry::note_job(id);
    Ok(id)
}

fn idempotency_key(value: &HeaderValue) -> Result<String, ApiError> {
    let key = value
        .to_str()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
        .trim();
    // The draft standard sends the key as a structured-field string: "abc".
    let key = key
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(key);
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
        )));
    }
    Ok(key.to_string())
}

fn accepted(status: StatusCode, job: Accepted) -> Result<Response, ApiError> {
    accepted_response(status, job.id, job.snapshot, job.replayed)
}

/// A job snapshot with `Location` (and `Idempotent-Replayed` for a replay).
pub fn accepted_response(
    status: StatusCode,
    id: JobId,
    snapshot: Bytes,
    replayed: bool,
) -> Result<Response, ApiError> {
    let mut response = json_response(status, snapshot);
    let headers = response.headers_mut();
    let location = HeaderValue::try_from(format!("/v1/jobs/{id}"))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    headers.insert(header::LOCATION, location);
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Snapshots are stored as JSON already; they are served as stored, without re-encoding.
pub fn json_response(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `GET /v1/jobs/{id}/result`: the result document of a succeeded job, whether it is kept
/// inline in the snapshot or stored in `job_blobs` (streamed from there).
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/result",
    operation_id = "getJobResult",
    tag = "jobs",
    summary = "A succeeded job's result",
    description = "The result document, whether kept inline in the snapshot or stored in \
        `job_blobs` (streamed from there).",
    params(JobIdParam),
    responses(
        (status = 200, description = "The result document (any JSON).", body = serde_json::Value),
        (status = 400, description = "A malformed id.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "There is no such job.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has no result (not finished, failed or cancelled); \
            `state` says which.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 410, description = "The stored result has aged out of `job_blobs`.",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn result(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let snapshot = crate::submit::read_snapshot(&state, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    let snapshot: jetjobs::JobSnapshot = serde_json::from_slice(&snapshot)
        .map_err(|e| ApiError::internal(format!("the stored snapshot is unreadable: {e}")))?;
    if snapshot.state != jetjobs::JobState::Succeeded {
        return Err(ApiError::conflict(format!(
            "job {id} is {}: only a succeeded job has a result",
            snapshot.state
        ))
        .with("state", serde_json::json!(snapshot.state)));
    }
    let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
    match snapshot.result_ref {
        None => {
            let body = serde_json::to_vec(&snapshot.result.unwrap_or(serde_json::Value::Null))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok((StatusCode::OK, json, body).into_response())
        }
        Some(reference) => {
            let reader = state
                .blobs
                .reader(&reference.blob)
                .await
                .map_err(|e| match e {
                    jetjobs::blobs::BlobError::NotFound(_) => ApiError::new(
                        StatusCode::GONE,
                        "result-gone",
                        format!(
                            "job {id}'s result (blob {}) is no longer stored",
                            reference.blob
                        ),
                    ),
                    other => other.into(),
                })?;
            let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                reader,
                64 * 1024,
            ));
            let mut response = (StatusCode::OK, json, body).into_response();
            if let Ok(length) = axum::http::HeaderValue::from_str(&reference.size.to_string()) {
                response
                    .headers_mut()
                    .insert(axum::http::header::CONTENT_LENGTH, length);
            }
            Ok(response)
        }
    }
}
