//! The one API error type: every error answer is RFC 9457 `application/problem+json`
//! with a human-readable `detail`.

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short slug; the problem `type` is `/problems/<slug>`.
    pub kind: &'static str,
    pub detail: String,
    pub extensions: Map<String, Value>,
    pub retry_after_secs: Option<u64>,
    pub job_id: Option<jetjobs::JobId>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
            extensions: Map::new(),
            retry_after_secs: None,
            job_id: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-job", detail)
    }

    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", detail)
    }

    /// NATS is unreachable, slow, or the queue is full: the client should retry later.
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
        }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// The answer concerns a job that may exist although the request failed (a 503 after
    /// the job may have been queued): its id goes in the body and in `Jetjobs-Job-Id`, so
    /// the client can look it up or retry with `PUT /v1/jobs/{id}` instead of making a
    /// second job.
    pub fn for_job(mut self, id: jetjobs::JobId) -> Self {
        self.job_id = Some(id);
        self.with("job_id", json!(id))
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extensions.insert(key.to_string(), value);
        self
    }

    fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), kind = self.kind, detail = %self.detail, "Request failed.");
        } else {
            tracing::debug!(status = self.status.as_u16(), kind = self.kind, detail = %self.detail, "Request rejected.");
        }
        let mut body = json!({
            "type": format!("/problems/{}", self.kind),
            "title": self.title(),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(map) = &mut body {
            map.extend(self.extensions);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(id) = self.job_id
            && let Ok(value) = HeaderValue::from_str(&id.to_string())
        {
            headers.insert(jetjobs::subjects::headers::JOB_ID, value);
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let kind = match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
            StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid-job",
            _ => "bad-request",
        };
        let detail = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "the body must be JSON: send `Content-Type: application/json`".to_string()
            }
            JsonRejection::BytesRejection(_) if status == StatusCode::PAYLOAD_TOO_LARGE => {
                "the request body is larger than this gateway accepts".to_string()
            }
            other => other.body_text(),
        };
        Self::new(status, kind, detail)
    }
}
