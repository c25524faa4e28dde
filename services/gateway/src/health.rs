//! `/healthz` (the process is alive) and `/readyz` (it can do its job).

use axum::Json;
use axum::extract::State;
use jetjobs::layout::{self, Requirement};
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;

/// What `/healthz` and `/readyz` answer when all is well.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready`.
    #[schema(example = "ok")]
    status: &'static str,
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "The process is alive.", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready when NATS is connected and every stream and bucket the gateway uses exists.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    summary = "Readiness",
    responses(
        (status = 200, description = "Connected to NATS; every stream and bucket exists.", body = Health),
        (status = 503, description = "Not connected, or something is missing (named in `detail`).",
            body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again."))),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.client.connection_state() != async_nats::connection::State::Connected {
        return Err(ApiError::unavailable("not connected to NATS", 1));
    }
    layout::require(&state.js, &requirements())
        .await
        .map_err(|e| ApiError::unavailable(e.to_string(), 5))?;
    Ok(Json(Health { status: "ready" }))
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
        Requirement::Bucket(layout::WORKERS_BUCKET),
        Requirement::Bucket(layout::STATUS_BUCKET),
        Requirement::Bucket(layout::KINDS_BUCKET),
        Requirement::Bucket(layout::IDEMPOTENCY_BUCKET),
    ]
}
