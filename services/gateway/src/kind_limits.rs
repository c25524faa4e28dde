//! `GET /v1/kinds`: the registered kinds, their payload schemas and their limits; and
//! `PUT /v1/kinds/{kind}/limits`: a kind's global limits (`max_running`,
//! `max_per_second`), stored in KV `job_limits`, which every processor replica watches
//! and enforces with shared state in NATS (`jetjobs::limits`).

use axum::extract::{Path, State};
use axum::response::{IntoResponse as _, Response};
use jetjobs::Kind;
use jetjobs::limits::KindLimits;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::submit::nats_unavailable;

/// The body of `PUT /v1/kinds/{kind}/limits`: a limit left out (or `null`) is no limit.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Jobs of the kind running at once, across every processor replica.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(format = Int64, minimum = 1, maximum = 4294967295_u64)]
    max_running: Option<u32>,
    /// Jobs of the kind started per second, across every processor replica.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(format = Int64, minimum = 1, maximum = 4294967295_u64)]
    max_per_second: Option<u32>,
}

/// A limit: any JSON number with no fraction (`20` or `20.0`, both integers to JSON
/// Schema and so to the document), or `null`.
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|n| n.fract() == 0.0 && *n >= 0.0 && *n <= f64::from(u32::MAX))
            .map(|n| n as u64)
    });
    whole
        .and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{number} is not a whole number from 0 to {}",
                u32::MAX
            ))
        })
}

/// A kind's global limits; `null`: no limit.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Limits {
    #[schema(minimum = 1)]
    max_running: Option<u32>,
    #[schema(minimum = 1)]
    max_per_second: Option<u32>,
}

/// A registered kind, as `GET /v1/kinds/{kind}` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KindView {
    kind: Kind,
    description: String,
    /// The processor service that runs it.
    processor: String,
    /// Attempts by default.
    max_attempts: u32,
    /// Per-attempt time limit by default.
    timeout_secs: u64,
    /// The JSON Schema its payloads must fit.
    #[schema(value_type = Object)]
    payload_schema: Value,
    /// The payload field that takes an uploaded blob's id (multipart submits fill it).
    upload_field: Option<String>,
    limits: Limits,
}

/// `GET /v1/kinds`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KindList {
    /// By name.
    kinds: Vec<KindView>,
}

/// `GET /v1/kinds`.
#[utoipa::path(
    get,
    path = "/v1/kinds",
    operation_id = "listKinds",
    tag = "kinds",
    summary = "Every registered kind",
    responses((status = 200, description = "Every registered kind: payload schema, defaults, limits.", body = KindList))
)]
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
    Ok(axum::Json(KindList { kinds }).into_response())
}

/// `GET /v1/kinds/{kind}`.
#[utoipa::path(
    get,
    path = "/v1/kinds/{kind}",
    operation_id = "getKind",
    tag = "kinds",
    summary = "A registered kind",
    params(("kind" = String, Path, description = "A registered kind.")),
    responses(
        (status = 200, description = "The kind: payload schema, defaults, limits.", body = KindView),
        (status = 404, description = "No such kind is registered.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
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
#[utoipa::path(
    put,
    path = "/v1/kinds/{kind}/limits",
    operation_id = "putKindLimits",
    tag = "kinds",
    summary = "Set a kind's global limits",
    description = "Jobs over a limit wait; they are not failed. A limit left out (or `null`) is none.",
    params(("kind" = String, Path, description = "A registered kind.")),
    request_body(content((LimitsBody = "application/json"))),
    responses(
        (status = 200, description = "The kind with its new limits.", body = KindView),
        (status = 404, description = "No such kind is registered.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A limit of 0, or a body of the wrong shape.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
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

async fn describe(state: &AppState, kind: &Kind) -> Result<Option<KindView>, ApiError> {
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
    Ok(Some(KindView {
        kind: info.kind.clone(),
        description: info.description.clone(),
        processor: info.processor.clone(),
        max_attempts: info.max_attempts,
        timeout_secs: info.timeout_secs,
        payload_schema: info.payload_schema.clone(),
        upload_field: info.upload_field.clone(),
        limits: Limits {
            max_running: limits.max_running,
            max_per_second: limits.max_per_second,
        },
    }))
}

fn parse_kind(raw: &str) -> Result<Kind, ApiError> {
    Kind::new(raw).map_err(|e| ApiError::not_found(e.to_string()))
}

fn unknown(kind: &Kind) -> ApiError {
    ApiError::not_found(format!("there is no registered kind {kind}"))
}
