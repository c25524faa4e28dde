//! `GET /v1/kinds`: the registered kinds, their payload schemas and their limits; and
//! `PUT /v1/kinds/{kind}/limits`: a kind's global limits (`max_running`,
//! `max_per_second`), stored in KV `job_limits`, which every processor replica watches
//! and enforces with shared state in NATS (`jetjobs::limits`).

use axum::extract::{Path, State};
use axum::response::{IntoResponse as _, Response};
use jetjobs::Kind;
use jetjobs::limits::KindLimits;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::submit::nats_unavailable;

/// The body of `PUT /v1/kinds/{kind}/limits`: a limit left out (or `null`) is no limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    #[serde(default)]
    max_running: Option<u32>,
    #[serde(default)]
    max_per_second: Option<u32>,
}

/// `GET /v1/kinds`.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let names = state
        .kinds
        .all()
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the kind registry: {e}"), 1))?;
    let mut kinds = Vec::with_capacity(names.len());
    for name in names {
        let Ok(kind) = Kind::new(name) else { continue };
        if let Some(described) = describe(&state, &kind).await? {
            kinds.push(described);
        }
    }
    Ok(axum::Json(json!({ "kinds": kinds })).into_response())
}

/// `GET /v1/kinds/{kind}`.
pub async fn get(
    State(state): State<AppState>,
    Path(kind): Path<String>,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    match describe(&state, &kind).await? {
        Some(described) => Ok(axum::Json(described).into_response()),
        None => Err(unknown(&kind)),
    }
}

/// `PUT /v1/kinds/{kind}/limits`: `200` with the kind as `GET /v1/kinds/{kind}` shows it.
pub async fn put_limits(
    State(state): State<AppState>,
    Path(kind): Path<String>,
    ApiJson(body, _): ApiJson<LimitsBody>,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    for (field, value) in [
        ("max_running", body.max_running),
        ("max_per_second", body.max_per_second),
    ] {
        if value == Some(0) {
            return Err(ApiError::invalid(format!(
                "{field} must be at least 1 (leave it out, or null, for no limit)"
            ))
            .with("field", json!(field)));
        }
    }
    if state
        .kinds
        .lookup(&kind)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the kind registry: {e}"), 1))?
        .is_none()
    {
        return Err(unknown(&kind));
    }
    let limits = KindLimits {
        max_running: body.max_running,
        max_per_second: body.max_per_second,
    };
    let value = serde_json::to_vec(&limits).map_err(|e| ApiError::internal(e.to_string()))?;
    state
        .limits
        .put(kind.as_str(), value.into())
        .await
        .map_err(|e| nats_unavailable("storing the limits", e))?;
    match describe(&state, &kind).await? {
        Some(described) => Ok(axum::Json(described).into_response()),
        None => Err(unknown(&kind)),
    }
}

async fn describe(state: &AppState, kind: &Kind) -> Result<Option<Value>, ApiError> {
    let Some(registered) = state
        .kinds
        .lookup(kind)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the kind registry: {e}"), 1))?
    else {
        return Ok(None);
    };
    let limits: KindLimits = match state
        .limits
        .get(kind.as_str())
        .await
        .map_err(|e| nats_unavailable("reading the limits", e))?
    {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        None => KindLimits::default(),
    };
    let info = &registered.info;
    Ok(Some(json!({
        "kind": info.kind,
        "description": info.description,
        "processor": info.processor,
        "max_attempts": info.max_attempts,
        "timeout_secs": info.timeout_secs,
        "payload_schema": info.payload_schema,
        "upload_field": info.upload_field,
        "limits": limits,
    })))
}

fn parse_kind(raw: &str) -> Result<Kind, ApiError> {
    Kind::new(raw).map_err(|e| ApiError::not_found(e.to_string()))
}

fn unknown(kind: &Kind) -> ApiError {
    ApiError::not_found(format!("there is no registered kind {kind}"))
}
