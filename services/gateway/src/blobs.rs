//! `POST /v1/blobs` and `GET /v1/blobs/{id}`: uploads streamed into Object Store
//! `job_blobs` as they arrive, downloads streamed out (with single byte ranges).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jetjobs::blobs::{BlobError, BlobInfo};
use tokio::io::AsyncReadExt as _;
use tokio_util::io::ReaderStream;

use crate::AppState;
use crate::error::ApiError;

pub const OCTET_STREAM: &str = "application/octet-stream";

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::TooLarge { limit } => ApiError::too_large(format!(
                "the body is larger than the limit of {limit} bytes (JETJOBS_MAX_BLOB_BYTES); nothing was stored"
            )),
            BlobError::Body(detail) => ApiError::bad_request(format!(
                "the body could not be read to its end ({detail}); nothing was stored"
            )),
            BlobError::NotFound(id) => ApiError::not_found(format!("no blob {id}")),
            BlobError::Full => ApiError::unavailable(
                "the blob store (job_blobs) is full; nothing was stored, retry later",
                30,
            ),
            BlobError::Nats(detail) => {
                ApiError::unavailable(format!("the blob store did not answer: {detail}"), 1)
            }
        }
    }
}

/// The request's media type, or `application/octet-stream`.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 255)
        .unwrap_or(OCTET_STREAM)
        .to_string()
}

/// Refuses a body whose `Content-Length` already says it is too large, before reading
/// it. (A compressed body's length says nothing of its decoded size: that is checked as
/// it is decoded.)
pub fn refuse_declared_size(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    let encoded = headers.contains_key(header::CONTENT_ENCODING);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if !encoded && length > limit => Err(BlobError::TooLarge { limit }.into()),
        _ => Ok(()),
    }
}

/// What `POST /v1/blobs` answers: the stored blob.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema: `jetjobs::blobs::BlobInfo` is what is written
pub struct Blob {
    id: String,
    /// Bytes.
    size: u64,
    /// SHA-256 of the bytes, lower-case hex.
    sha256: String,
    content_type: String,
}

#[utoipa::path(
    post,
    path = "/v1/blobs",
    operation_id = "uploadBlob",
    tag = "blobs",
    summary = "Upload a blob",
    description = "Streamed into Object Store `job_blobs` as it arrives (at most \
        `JETJOBS_MAX_BLOB_BYTES`, decoded). A job names it in its kind's upload field; an \
        upload no job takes is deleted after `JETJOBS_BLOB_TTL_SECS`.",
    request_body(content((Option<serde_json::Value> = "*/*")), description = "The bytes, any content, possibly none; `Content-Type` is kept."),
    responses(
        (status = 201, description = "Stored.", body = Blob,
            headers(("Location" = String, description = "`/v1/blobs/{id}`.")),
            links(("downloadBlob" = (operation_id = "downloadBlob", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "The body could not be read.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive in time.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than `JETJOBS_MAX_BLOB_BYTES`.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "An unsupported `Content-Encoding`.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn upload(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let limit = state.blob_limits.max_bytes;
    refuse_declared_size(request.headers(), limit)?;
    let content_type = content_type(request.headers());
    let id = uuid::Uuid::now_v7().to_string();
    let body = request.into_body().into_data_stream();
    let info = state
        .blobs
        .put(&id, &content_type, None, body, limit)
        .await?;
    Ok(created(&info))
}

pub fn created(info: &BlobInfo) -> Response {
    let location = format!("/v1/blobs/{}", info.id);
    let mut response = (StatusCode::CREATED, axum::Json(info)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[utoipa::path(
    get,
    path = "/v1/blobs/{id}",
    operation_id = "downloadBlob",
    tag = "blobs",
    summary = "Download a blob",
    description = "The whole blob, or a `Range` of it (`206`).",
    params(
        ("id" = String, Path, description = "The blob's id."),
        ("Range" = Option<String>, Header, description = "`bytes=<first>-<last>` (one range)."),
    ),
    responses(
        (status = 200, description = "The blob, as uploaded, with its `Content-Type`.", content_type = "*/*", body = serde_json::Value,
            headers(
                ("ETag" = String, description = "The blob's digest."),
                ("Accept-Ranges" = String, description = "`bytes`."),
            )),
        (status = 206, description = "The requested range.", content_type = "*/*", body = serde_json::Value,
            headers(
                ("Content-Range" = String, description = "`bytes <first>-<last>/<size>`."),
                ("ETag" = String, description = "The blob's digest."),
            )),
        (status = 404, description = "There is no such blob.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range is outside the blob.", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Content-Range" = String, description = "`bytes */<size>`."))),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let info = state
        .blobs
        .info(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no blob {id}")))?;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(value) => match parse_range(value, info.size) {
            Range::Whole => None,
            Range::Bytes(start, end) => Some((start, end)),
            Range::Unsatisfiable => {
                let mut response = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range-not-satisfiable",
                    format!("the blob has {} bytes; {value} is outside them", info.size),
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", info.size)) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(response);
            }
        },
    };
    let mut reader = state.blobs.reader(&id).await?;
    let (status, start, length) = match range {
        None => (StatusCode::OK, 0, info.size),
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
    };
    if start > 0 {
        // Object Store has no seek: the chunks before the range are read and dropped.
        let skipped = tokio::io::copy(&mut (&mut reader).take(start), &mut tokio::io::sink())
            .await
            .map_err(|e| ApiError::unavailable(format!("reading the blob: {e}"), 1))?;
        if skipped != start {
            return Err(ApiError::unavailable(
                "the blob changed while being read",
                1,
            ));
        }
    }
    let body = Body::from_stream(ReaderStream::with_capacity(reader.take(length), 64 * 1024));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    let put = |h: &mut HeaderMap, name, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    put(h, header::CONTENT_TYPE, info.content_type.clone());
    put(h, header::CONTENT_LENGTH, length.to_string());
    put(h, header::ETAG, info.etag());
    put(h, header::ACCEPT_RANGES, "bytes".to_string());
    if status == StatusCode::PARTIAL_CONTENT {
        put(
            h,
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{}", start + length - 1, info.size),
        );
    }
    Ok(response)
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// No usable range (malformed, several ranges): the whole blob, as RFC 9110 allows.
    Whole,
    /// First and last byte, inclusive.
    Bytes(u64, u64),
    Unsatisfiable,
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range of a blob of `size` bytes.
fn parse_range(value: &str, size: u64) -> Range {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), parse(first), parse(last)) {
        // bytes=-n: the last n bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                Range::Unsatisfiable
            } else {
                Range::Bytes(size.saturating_sub(n), size - 1)
            }
        }
        (false, Some(a), None) if last.trim().is_empty() => {
            if a >= size {
                Range::Unsatisfiable
            } else {
                Range::Bytes(a, size - 1)
            }
        }
        (false, Some(a), Some(b)) if a <= b => {
            if a >= size {
                Range::Unsatisfiable
            } else {
                Range::Bytes(a, b.min(size - 1))
            }
        }
        _ => Range::Whole,
    }
}

/// Limits and lifetimes of blobs.
#[derive(Clone, Copy, Debug)]
pub struct BlobLimits {
    pub max_bytes: u64,
    pub ttl: Duration,
}

/// Deletes, now and then, uploads no job took within the TTL and blobs whose job's
/// snapshot is gone. Every gateway replica runs it: deleting is idempotent.
pub async fn sweep_forever(state: AppState, shutdown: tokio_util::sync::CancellationToken) {
    let ttl = state.blob_limits.ttl;
    let every = (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let status = state.status.clone();
        let exists = |job: String| {
            let status = status.clone();
            async move { !matches!(status.get(&job).await, Ok(None)) }
        };
        match state.blobs.sweep(ttl, exists).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "Deleted expired blobs."),
            Err(e) => tracing::warn!(error = %e, "Sweeping job_blobs failed; will try again."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Range::Bytes(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Range::Bytes(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Range::Bytes(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Range::Bytes(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), Range::Bytes(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=200-300", 100), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Range::Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Range::Whole);
        assert_eq!(parse_range("items=0-1", 100), Range::Whole);
    }
}
