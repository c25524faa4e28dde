//! Extractors whose rejections are problem+json too.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Bodies from this size on are decoded off the async runtime: a 1 MiB JSON body takes
/// milliseconds to parse, which would stall every other request on that worker.
pub const BLOCKING_BODY_BYTES: usize = 64 * 1024;

/// `axum::Json`, but a malformed, mistyped, oversized or non-JSON body is an [`ApiError`],
/// and a large body is parsed on the blocking pool. The second field is the body's size,
/// so later CPU work on it can go off the runtime too.
pub struct ApiJson<T>(pub T, pub usize);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned + Send + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(&request) {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "the body must be JSON: send `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large("the request body is larger than this gateway accepts")
            } else {
                ApiError::bad_request(e.body_text())
            }
        })?;
        let size = bytes.len();
        let decoded = if size >= BLOCKING_BODY_BYTES {
            tokio::task::spawn_blocking(move || axum::Json::<T>::from_bytes(&bytes))
                .await
                .map_err(|e| ApiError::internal(format!("decoding the body: {e}")))?
        } else {
            axum::Json::<T>::from_bytes(&bytes)
        };
        decoded
            .map(|axum::Json(value)| Self(value, size))
            .map_err(ApiError::from)
    }
}

/// `application/json` or any `application/*+json`, as `axum::Json` accepts.
fn is_json(request: &Request) -> bool {
    let Some(value) = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}
