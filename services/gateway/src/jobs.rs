//! `/v1/jobs` routes.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use jetjobs::JobId;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::submit::{self, Accepted, Identity, SubmitBody};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Longest `Idempotency-Key` accepted (the IETF draft leaves it to the server).
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// `POST /v1/jobs`: a new job, or with `Idempotency-Key` the job that key already made.
pub async fn create(
    State(state): State<AppState>,
    request_headers: HeaderMap,
    ApiJson(body): ApiJson<SubmitBody>,
) -> Result<Response, ApiError> {
    if body.id.is_some() {
        return Err(ApiError::bad_request(
            "`id` is chosen by the server on POST; use PUT /v1/jobs/{id} to choose it",
        ));
    }
    let identity = match request_headers.get(IDEMPOTENCY_KEY) {
        None => Identity::Fresh,
        Some(value) => Identity::IdempotencyKey(idempotency_key(value)?),
    };
    let kind = body.kind.clone();
    let job = submit::submit(&state, identity, body).await?;
    count_submission(&state, &kind, &job);
    // A replayed POST answers like the original did (202), as the IETF draft suggests.
    accepted(StatusCode::ACCEPTED, job)
}

/// `PUT /v1/jobs/{id}`: the client chooses the id; repeating the same PUT is harmless.
pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SubmitBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if let Some(body_id) = body.id
        && JobId::from(body_id) != id
    {
        return Err(ApiError::bad_request(format!(
            "the body's id {body_id} differs from the path's id {id}"
        )));
    }
    let kind = body.kind.clone();
    let job = submit::submit(&state, Identity::ClientId(id), body).await?;
    count_submission(&state, &kind, &job);
    // An identical repeat of a PUT changes nothing: 200 with the current snapshot.
    let status = if job.replayed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    accepted(status, job)
}

/// `GET /v1/jobs/{id}`: the job's snapshot.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match submit::read_snapshot(&state, id).await? {
        Some(snapshot) => Ok(json_response(StatusCode::OK, snapshot)),
        None => Err(ApiError::not_found(format!("there is no job {id}"))),
    }
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
    raw.parse::<JobId>().map_err(|e| {
        ApiError::bad_request(format!("{raw:?} is not a job id (a UUID is expected): {e}"))
    })
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
