//! `/healthz` (the process is alive) and `/readyz` (it can do its job).

use axum::Json;
use axum::extract::State;
use jetjobs::layout::{self, Requirement};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when NATS is connected and every stream and bucket the gateway uses exists.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.client.connection_state() != async_nats::connection::State::Connected {
        return Err(ApiError::unavailable("not connected to NATS", 1));
    }
    layout::require(&state.js, &requirements())
        .await
        .map_err(|e| ApiError::unavailable(e.to_string(), 5))?;
    Ok(Json(json!({"status": "ready"})))
}

pub fn requirements() -> Vec<Requirement> {
    vec![
        Requirement::Stream(layout::JOBS_STREAM),
        Requirement::Stream(layout::EVENTS_STREAM),
        Requirement::Stream(layout::DEAD_STREAM),
        Requirement::Stream(layout::INDEX_STREAM),
        Requirement::Stream(layout::BLOBS_STREAM),
        Requirement::Consumer {
            stream: layout::SCHEDULES_STREAM,
            name: layout::SCHEDULER_CONSUMER.to_string(),
        },
        Requirement::Bucket(layout::SCHEDULES_BUCKET),
        Requirement::Bucket(layout::LIMITS_BUCKET),
        Requirement::Bucket(layout::STATUS_BUCKET),
        Requirement::Bucket(layout::KINDS_BUCKET),
        Requirement::Bucket(layout::IDEMPOTENCY_BUCKET),
    ]
}
