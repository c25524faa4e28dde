//! Recurring schedules: `/v1/schedules…`, and the jobs their firings make.
//!
//! A schedule is two things: its definition in KV `job_schedules` (what `GET` shows,
//! whether it is paused, the last jobs it made), and a message on `jobs.cron.<name>` in
//! `JOBS_SCHEDULES` that nats-server fires on its cadence (ADR-51: 6-field cron with an
//! optional time zone, or `@every`). The definition is written first and the message
//! follows it; pausing or deleting removes the message. A firing checks the definition
//! before it makes a job, so a firing already under way when a schedule was paused or
//! deleted makes nothing.
//!
//! Each firing makes exactly one job: its id is derived from the schedule's name and the
//! firing's time (`Nats-Schedule-Next`), so handling the same firing twice, on any
//! replica, finds the same job. No process of ours keeps time, so none is a singleton.

use std::str::FromStr as _;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt as _;
use jetjobs::JobId;
use jetjobs::job::{JobRequest, Scheduling, now};
use jetjobs::subjects::{self, headers};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::submit::{self, SubmitBody};

/// The jobs of a schedule kept in its definition, newest last.
const LAST_JOBS_KEPT: usize = 10;
/// Writers of one definition retry a lost compare-and-set this often.
const CAS_TRIES: usize = 5;

/// The body of `POST /v1/schedules` and `PUT /v1/schedules/{name}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "nightly-report", "cron": "0 30 2 * * *",
    "time_zone": "Europe/Paris", "job": {"kind": "noop"}}))]
pub struct ScheduleBody {
    /// Required on POST; on PUT, if given, it must equal the path's name.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    name: Option<String>,
    /// Six fields, seconds first (`0 */5 * * * *`), or `@hourly`, `@daily`, ...; or
    /// `every`, not both.
    #[serde(default)]
    cron: Option<String>,
    /// An interval such as `30s`, `5m` or `1h30m` (at least 1 s).
    #[serde(default)]
    every: Option<String>,
    /// An IANA zone for a cron schedule (`Europe/Paris`); UTC if absent.
    #[serde(default)]
    time_zone: Option<String>,
    /// The job each firing makes: a submit body without `id`, `run_at` or `delay_secs`
    /// (`expires_in_secs` counts from each firing).
    job: SubmitBody,
}

/// A schedule as the API shows it: its definition and `next_run_at`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema: what `view` writes
pub struct ScheduleView {
    name: String,
    #[schema(required = false)]
    cron: Option<String>,
    #[schema(required = false)]
    every: Option<String>,
    #[schema(required = false)]
    time_zone: Option<String>,
    /// The job each firing makes.
    job: SubmitBody,
    paused: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The ids of the last jobs its firings made, oldest first.
    last_jobs: Vec<JobId>,
    /// The next firing; `null` while paused.
    next_run_at: Option<DateTime<Utc>>,
}

/// `GET /v1/schedules`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ScheduleList {
    /// By name.
    schedules: Vec<ScheduleView>,
}

/// A schedule's definition as stored in `job_schedules` and shown by the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Definition {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    every: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_zone: Option<String>,
    job: SubmitBody,
    paused: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The ids of the last jobs its firings made, oldest first.
    #[serde(default)]
    last_jobs: Vec<JobId>,
}

/// What a firing carries: the schedule's name and the job to make.
#[derive(Serialize, Deserialize)]
struct Template {
    name: String,
    job: SubmitBody,
}

/// When a schedule fires.
enum Cadence {
    Cron {
        cron: Box<croner::Cron>,
        zone: Option<chrono_tz::Tz>,
    },
    Every(u64),
}

impl Cadence {
    /// The `Nats-Schedule` header.
    fn pattern(&self, definition: &Definition) -> String {
        match self {
            Self::Cron { .. } => definition.cron.clone().unwrap_or_default(),
            Self::Every(secs) => format!("@every {secs}s"),
        }
    }
}

/// A name, a cadence and a job that can be scheduled, or the 422 that says why not.
fn cadence(
    cron: Option<&str>,
    every: Option<&str>,
    time_zone: Option<&str>,
) -> Result<Cadence, ApiError> {
    match (cron, every) {
        (Some(_), Some(_)) | (None, None) => Err(ApiError::invalid(
            "give exactly one of cron (e.g. \"0 */5 * * * *\") or every (e.g. \"30s\")",
        )
        .with("field", json!("cron"))),
        (Some(pattern), None) => {
            let cron = croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Required)
                .build()
                .parse(pattern)
                .map_err(|e| {
                    ApiError::invalid(format!(
                        "cron {pattern:?} is not a schedule: {e} (six fields, seconds first: \"0 */5 * * * *\")"
                    ))
                    .with("field", json!("cron"))
                })?;
            let zone = time_zone
                .map(|zone| {
                    chrono_tz::Tz::from_str(zone).map_err(|_| {
                        ApiError::invalid(format!(
                            "time_zone {zone:?} is not an IANA time zone such as \"Europe/Paris\""
                        ))
                        .with("field", json!("time_zone"))
                    })
                })
                .transpose()?;
            Ok(Cadence::Cron {
                cron: Box::new(cron),
                zone,
            })
        }
        (None, Some(interval)) => {
            if time_zone.is_some() {
                return Err(ApiError::invalid(
                    "time_zone applies to cron schedules only, not to every",
                )
                .with("field", json!("time_zone")));
            }
            let secs = parse_interval(interval).ok_or_else(|| {
                ApiError::invalid(format!(
                    "every {interval:?} is not an interval of at least 1 s such as \"30s\", \"5m\" or \"1h30m\""
                ))
                .with("field", json!("every"))
            })?;
            Ok(Cadence::Every(secs))
        }
    }
}

/// `30s`, `5m`, `1h30m`, `2h`: whole hours, minutes and seconds, at least 1 s in all.
fn parse_interval(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut units_seen = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let scale = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        // Each unit once, in order (1h30m, not 30m1h or 1m1m).
        if digits.is_empty()
            || units_seen.contains(c)
            || units_seen.chars().any(|u| unit_rank(u) >= unit_rank(c))
        {
            return None;
        }
        units_seen.push(c);
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(scale)?)?;
        digits.clear();
    }
    (digits.is_empty() && total >= 1).then_some(total)
}

fn unit_rank(unit: char) -> u8 {
    match unit {
        'h' => 0,
        'm' => 1,
        _ => 2,
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "schedule name {name:?} must be 1 to 64 characters of a-z, 0-9, '_' and '-'"
        ))
        .with("field", json!("name")))
    }
}

/// The job a schedule makes must be one that could be submitted now.
async fn check_job(state: &AppState, job: &SubmitBody) -> Result<(), ApiError> {
    if job.id.is_some()
        || job.run_at.is_some()
        || job.delay_secs.is_some()
        || job.expires_at.is_some()
    {
        return Err(ApiError::invalid(
            "a schedule's job takes no id, run_at, delay_secs or expires_at: each firing makes a new job that runs at once (expires_in_secs counts from the firing)",
        )
        .with("field", json!("job")));
    }
    if let Some(secs) = job.expires_in_secs
        && !(secs.is_finite() && secs > 0.0)
    {
        return Err(ApiError::invalid("job.expires_in_secs must be more than 0")
            .with("field", json!("job.expires_in_secs")));
    }
    let registered = submit::check_options(state, job).await?;
    let job = job.clone();
    tokio::task::spawn_blocking(move || submit::check_payload(&registered, &job))
        .await
        .map_err(|e| ApiError::internal(format!("checking the payload: {e}")))?
}

/// `POST /v1/schedules`: `201` with `Location`; `409` if the name is taken.
#[utoipa::path(
    post,
    path = "/v1/schedules",
    operation_id = "createSchedule",
    tag = "schedules",
    summary = "Create a recurring schedule",
    request_body(content((ScheduleBody = "application/json"))),
    responses(
        (status = 201, description = "Created.", body = ScheduleView,
            headers(("Location" = String, description = "`/v1/schedules/{name}`.")),
            links(
                ("getSchedule" = (operation_id = "getSchedule", parameters(("name" = "$response.body#/name")))),
                ("deleteSchedule" = (operation_id = "deleteSchedule", parameters(("name" = "$response.body#/name")))),
                ("pauseSchedule" = (operation_id = "pauseSchedule", parameters(("name" = "$response.body#/name")))),
            )),
        (status = 409, description = "A schedule of that name exists.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad name, cron, interval, zone or job.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body, _): ApiJson<ScheduleBody>,
) -> Result<Response, ApiError> {
    let Some(name) = body.name.clone() else {
        return Err(ApiError::invalid("a schedule needs a name").with("field", json!("name")));
    };
    check_name(&name)?;
    let (definition, cadence) = definition(&state, name, body, None).await?;
    let revision = match state
        .schedule_defs
        .create(&definition.name, encode(&definition)?)
        .await
    {
        Ok(revision) => revision,
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            return Err(ApiError::conflict(format!(
                "schedule {} already exists; PUT /v1/schedules/{} replaces it",
                definition.name, definition.name
            )));
        }
        Err(e) => return Err(submit::nats_unavailable("storing the schedule", e)),
    };
    if let Err(error) = arm(&state, &definition, &cadence).await {
        // Nothing half-made: the definition goes with the refused schedule.
        if let Err(e) = state
            .schedule_defs
            .delete_expect_revision(&definition.name, Some(revision))
            .await
        {
            tracing::warn!(schedule = %definition.name, error = %e, "Could not remove the definition of a refused schedule.");
        }
        return Err(error);
    }
    respond(&state, StatusCode::CREATED, &definition).await
}

/// `PUT /v1/schedules/{name}`: replaces the schedule (`200`), or creates it (`201`). A
/// paused schedule stays paused.
#[utoipa::path(
    put,
    path = "/v1/schedules/{name}",
    operation_id = "replaceSchedule",
    tag = "schedules",
    summary = "Create or replace a schedule",
    params(("name" = String, Path, pattern = "^[a-z0-9_-]{1,64}$", description = "The schedule's name: 1 to 64 of a-z, 0-9, `_` and `-`.")),
    request_body(content((ScheduleBody = "application/json"))),
    responses(
        (status = 200, description = "Replaced (a paused schedule stays paused).", body = ScheduleView),
        (status = 201, description = "Created.", body = ScheduleView,
            headers(("Location" = String, description = "`/v1/schedules/{name}`."))),
        (status = 400, description = "A body `name` that is not the path's.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad name, cron, interval, zone or job.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replace(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body, _): ApiJson<ScheduleBody>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    if body.name.as_ref().is_some_and(|given| *given != name) {
        return Err(ApiError::invalid(format!(
            "the body's name does not match the path's ({name})"
        ))
        .with("field", json!("name")));
    }
    for _ in 0..CAS_TRIES {
        let existing = read(&state, &name).await?;
        let (definition, cadence) = definition(
            &state,
            name.clone(),
            ScheduleBody {
                name: None,
                cron: body.cron.clone(),
                every: body.every.clone(),
                time_zone: body.time_zone.clone(),
                job: body.job.clone(),
            },
            existing.as_ref().map(|(d, _)| d),
        )
        .await?;
        let written = match &existing {
            Some((_, revision)) => state
                .schedule_defs
                .update(&name, encode(&definition)?, *revision)
                .await
                .map(drop)
                .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
            None => state
                .schedule_defs
                .create(&name, encode(&definition)?)
                .await
                .map(drop)
                .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
        };
        match written {
            Ok(()) => {}
            // Changed meanwhile: read it again.
            Err(true) => continue,
            Err(false) => {
                return Err(ApiError::unavailable(
                    "could not store the schedule; retry",
                    1,
                ));
            }
        }
        if !definition.paused {
            arm(&state, &definition, &cadence).await?;
        }
        let status = if existing.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        return respond(&state, status, &definition).await;
    }
    Err(busy(&name))
}

/// `DELETE /v1/schedules/{name}`: `204`; the schedule makes no more jobs (its jobs stay).
#[utoipa::path(
    delete,
    path = "/v1/schedules/{name}",
    operation_id = "deleteSchedule",
    tag = "schedules",
    summary = "Delete a schedule",
    description = "It makes no more jobs; the jobs it made stay.",
    params(("name" = String, Path, pattern = "^[a-z0-9_-]{1,64}$", description = "The schedule's name: 1 to 64 of a-z, 0-9, `_` and `-`.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "There is no such schedule.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed name.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    if read(&state, &name).await?.is_none() {
        return Err(not_found(&name));
    }
    disarm(&state, &name).await?;
    state
        .schedule_defs
        .purge(&name)
        .await
        .map_err(|e| submit::nats_unavailable("removing the schedule", e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/schedules/{name}/pause`.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/pause",
    operation_id = "pauseSchedule",
    tag = "schedules",
    summary = "Pause a schedule",
    params(("name" = String, Path, pattern = "^[a-z0-9_-]{1,64}$", description = "The schedule's name: 1 to 64 of a-z, 0-9, `_` and `-`.")),
    responses(
        (status = 200, description = "Paused.", body = ScheduleView),
        (status = 404, description = "There is no such schedule.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed name.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&state, &name, true).await
}

/// `POST /v1/schedules/{name}/resume`.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/resume",
    operation_id = "resumeSchedule",
    tag = "schedules",
    summary = "Resume a paused schedule",
    params(("name" = String, Path, pattern = "^[a-z0-9_-]{1,64}$", description = "The schedule's name: 1 to 64 of a-z, 0-9, `_` and `-`.")),
    responses(
        (status = 200, description = "Resumed.", body = ScheduleView),
        (status = 404, description = "There is no such schedule.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed name.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&state, &name, false).await
}

async fn set_paused(state: &AppState, name: &str, paused: bool) -> Result<Response, ApiError> {
    check_name(name)?;
    for _ in 0..CAS_TRIES {
        let Some((mut definition, revision)) = read(state, name).await? else {
            return Err(not_found(name));
        };
        let cadence = cadence(
            definition.cron.as_deref(),
            definition.every.as_deref(),
            definition.time_zone.as_deref(),
        )?;
        if definition.paused != paused {
            definition.paused = paused;
            definition.updated_at = now();
            match state
                .schedule_defs
                .update(name, encode(&definition)?, revision)
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(submit::nats_unavailable("storing the schedule", e)),
            }
        }
        // Also when nothing changed: a pause or resume repeated after a failure finishes
        // what the first one began.
        if paused {
            disarm(state, name).await?;
        } else {
            arm(state, &definition, &cadence).await?;
        }
        return respond(state, StatusCode::OK, &definition).await;
    }
    Err(busy(name))
}

/// `GET /v1/schedules`: every schedule, by name.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    operation_id = "listSchedules",
    tag = "schedules",
    summary = "Every schedule",
    responses((status = 200, description = "Every schedule, by name.", body = ScheduleList))
)]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut names: Vec<String> = state
        .schedule_defs
        .keys()
        .await
        .map_err(|e| submit::nats_unavailable("listing schedules", e))?
        .try_collect()
        .await
        .map_err(|e| submit::nats_unavailable("listing schedules", e))?;
    names.sort();
    let mut schedules = Vec::with_capacity(names.len());
    for name in names {
        let Some((definition, _)) = read(&state, &name).await? else {
            continue;
        };
        schedules.push(view(&state, &definition).await?);
    }
    Ok(axum::Json(json!({ "schedules": schedules })).into_response())
}

/// `GET /v1/schedules/{name}`.
#[utoipa::path(
    get,
    path = "/v1/schedules/{name}",
    operation_id = "getSchedule",
    tag = "schedules",
    summary = "A schedule",
    params(("name" = String, Path, pattern = "^[a-z0-9_-]{1,64}$", description = "The schedule's name: 1 to 64 of a-z, 0-9, `_` and `-`.")),
    responses(
        (status = 200, description = "Its definition, `paused`, `next_run_at`, `last_jobs`.", body = ScheduleView),
        (status = 404, description = "There is no such schedule.", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed name.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let Some((definition, _)) = read(&state, &name).await? else {
        return Err(not_found(&name));
    };
    Ok(axum::Json(view(&state, &definition).await?).into_response())
}

/// A new definition from a body (keeping what `existing` had that a body cannot set).
async fn definition(
    state: &AppState,
    name: String,
    body: ScheduleBody,
    existing: Option<&Definition>,
) -> Result<(Definition, Cadence), ApiError> {
    let cadence = cadence(
        body.cron.as_deref(),
        body.every.as_deref(),
        body.time_zone.as_deref(),
    )?;
    check_job(state, &body.job).await?;
    let at = now();
    let definition = Definition {
        name,
        cron: body.cron.map(|c| c.trim().to_string()),
        every: body.every,
        time_zone: body.time_zone,
        job: body.job,
        paused: existing.is_some_and(|d| d.paused),
        created_at: existing.map_or(at, |d| d.created_at),
        updated_at: at,
        last_jobs: existing.map(|d| d.last_jobs.clone()).unwrap_or_default(),
    };
    Ok((definition, cadence))
}

/// Stores (or replaces) the schedule's message, which the server fires on its cadence.
async fn arm(state: &AppState, definition: &Definition, cadence: &Cadence) -> Result<(), ApiError> {
    let payload = serde_json::to_vec(&Template {
        name: definition.name.clone(),
        job: definition.job.clone(),
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert(headers::SCHEDULE, cadence.pattern(definition).as_str());
    headers.insert(
        headers::SCHEDULE_TARGET,
        subjects::fire(&definition.name).as_str(),
    );
    if let Some(zone) = &definition.time_zone {
        headers.insert(headers::SCHEDULE_TIME_ZONE, zone.as_str());
    }
    headers.insert(headers::KIND, definition.job.kind.as_str());
    // No `Nats-Msg-Id`: a schedule resumed within the duplicate window would be dropped
    // as a duplicate of itself. Each one replaces the last (the server's rollup).
    let ack = state
        .js
        .publish_with_headers(subjects::cron(&definition.name), headers, payload.into())
        .await
        .map_err(|e| submit::nats_unavailable("storing the schedule", e))?;
    match tokio::time::timeout(std::time::Duration::from_secs(5), ack).await {
        Ok(Ok(_)) => Ok(()),
        // The server checks the pattern too (its cron dialect, the zones it knows).
        Ok(Err(e)) if e.to_string().to_lowercase().contains("schedule") => Err(ApiError::invalid(
            format!("nats-server refused the schedule: {e}"),
        )
        .with(
            "field",
            json!(if definition.time_zone.is_some() {
                "time_zone"
            } else {
                "cron"
            }),
        )),
        Ok(Err(e)) => Err(submit::nats_unavailable("storing the schedule", e)),
        Err(_) => Err(ApiError::unavailable(
            "the schedule could not be confirmed; repeat the request",
            1,
        )),
    }
}

/// Removes the schedule's message: it fires no more.
async fn disarm(state: &AppState, name: &str) -> Result<(), ApiError> {
    state
        .schedules
        .purge()
        .filter(subjects::cron(name).as_str())
        .await
        .map(drop)
        .map_err(|e| submit::nats_unavailable("stopping the schedule", e))
}

async fn read(state: &AppState, name: &str) -> Result<Option<(Definition, u64)>, ApiError> {
    let entry = state
        .schedule_defs
        .entry(name)
        .await
        .map_err(|e| submit::nats_unavailable("reading the schedule", e))?;
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        return Ok(None);
    };
    let definition = serde_json::from_slice(&entry.value)
        .map_err(|e| ApiError::internal(format!("schedule {name} is unreadable: {e}")))?;
    Ok(Some((definition, entry.revision)))
}

fn encode(definition: &Definition) -> Result<Bytes, ApiError> {
    serde_json::to_vec(definition)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn respond(
    state: &AppState,
    status: StatusCode,
    definition: &Definition,
) -> Result<Response, ApiError> {
    let mut response = (status, axum::Json(view(state, definition).await?)).into_response();
    if status == StatusCode::CREATED {
        let location = HeaderValue::try_from(format!("/v1/schedules/{}", definition.name))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The definition as shown: with `next_run_at` (null while paused).
async fn view(state: &AppState, definition: &Definition) -> Result<serde_json::Value, ApiError> {
    let next = if definition.paused {
        None
    } else {
        next_run_at(state, definition).await
    };
    let mut value =
        serde_json::to_value(definition).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "next_run_at".into(),
            json!(next.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))),
        );
    }
    Ok(value)
}

async fn next_run_at(state: &AppState, definition: &Definition) -> Option<DateTime<Utc>> {
    let cadence = cadence(
        definition.cron.as_deref(),
        definition.every.as_deref(),
        definition.time_zone.as_deref(),
    )
    .ok()?;
    let now = Utc::now();
    match cadence {
        Cadence::Cron { cron, zone } => match zone {
            Some(zone) => cron
                .find_next_occurrence(&now.with_timezone(&zone), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            None => cron.find_next_occurrence(&now, false).ok(),
        },
        Cadence::Every(secs) => {
            // `@every` fires at the schedule's stored time (rounded to the second) plus
            // whole intervals.
            let stored = state
                .schedules
                .direct_get_last_for_subject(subjects::cron(&definition.name))
                .await
                .ok()?;
            let base = DateTime::<Utc>::from_timestamp(stored.time.unix_timestamp(), 0)?
                + chrono::TimeDelta::milliseconds(if stored.time.millisecond() >= 500 {
                    1000
                } else {
                    0
                });
            let step = i64::try_from(secs).ok()?;
            let elapsed = (now - base).num_seconds().max(0);
            Some(base + chrono::TimeDelta::seconds((elapsed / step + 1) * step))
        }
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("there is no schedule {name}"))
}

fn busy(name: &str) -> ApiError {
    ApiError::unavailable(
        format!("schedule {name} kept changing while this request tried to change it; retry"),
        1,
    )
}

/// A recurring schedule fired: make its job, once. `true` when the firing is settled.
pub async fn fired(state: &AppState, name: &str, message: &jetstream::Message) -> bool {
    let template: Template = match serde_json::from_slice(&message.payload) {
        Ok(template) => template,
        Err(e) => {
            tracing::error!(schedule = %name, error = %e, "A schedule's firing is unreadable; dropping it.");
            return true;
        }
    };
    // Paused or deleted since it fired: no job.
    let definition = match read(state, name).await {
        Ok(Some((definition, _))) if !definition.paused => definition,
        Ok(_) => return true,
        Err(_) => return false,
    };
    let fired_at = message.info().map_or_else(
        |_| now(),
        |info| {
            DateTime::<Utc>::from_timestamp_micros(
                i64::try_from(info.published.unix_timestamp_nanos() / 1000).unwrap_or(0),
            )
            .unwrap_or_else(now)
        },
    );
    // The firing's identity: the time the schedule fires next, which the server sets on
    // every firing and which a duplicate of the same firing shares.
    let next = message
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::SCHEDULE_NEXT))
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|| fired_at.to_rfc3339());
    let id = firing_id(name, &next, fired_at);
    let job = template.job;
    let max_attempts = match state.kinds.lookup(&job.kind).await {
        Ok(Some(registered)) => job.max_attempts.unwrap_or(registered.info.max_attempts),
        Ok(None) => job
            .max_attempts
            .unwrap_or(jetjobs::kinds::DEFAULT_MAX_ATTEMPTS),
        Err(_) => return false,
    };
    let priority = job.priority.unwrap_or_default();
    // Checked: an expiry past the calendar's end (`1e300` seconds) is none, not a panic
    // of the scheduler at every firing.
    let expires_at = job.expires_in_secs.and_then(|secs| {
        fired_at.checked_add_signed(chrono::TimeDelta::microseconds(
            (secs * 1e6).min(i64::MAX as f64) as i64,
        ))
    });
    let request = JobRequest {
        id,
        kind: job.kind,
        payload: job.payload,
        max_attempts,
        timeout_secs: job.timeout_secs,
        created_at: fired_at,
        prior_attempts: 0,
        callback_url: job.callback_url,
        callback_events: job.callback_events,
        scheduling: Scheduling {
            run_at: None,
            expires_at,
            schedule: Some(template.name),
            priority,
        },
    };
    if crate::delay::schedule_expiry(state, &request)
        .await
        .is_err()
    {
        return false;
    }
    let (indexed, published) = tokio::join!(
        submit::write_index(state, &request),
        submit::publish(state, &request)
    );
    if published.is_err() {
        return false;
    }
    if let Err(e) = indexed {
        tracing::warn!(job_id = %id, error = %e, "A scheduled job could not be indexed for listing.");
    }
    if let Err(e) = submit::write_first_snapshot(state, &request).await {
        // Queued; the status service writes the snapshot when it starts.
        tracing::warn!(job_id = %id, error = %e.detail, "A scheduled job's first snapshot is late.");
    }
    remember_job(state, &definition.name, id).await;
    tracing::debug!(schedule = %name, job_id = %id, "Schedule fired.");
    true
}

/// A UUIDv7 for a firing, all of it from what a duplicate of the firing shares: the
/// schedule's name and the firing's identity (its next firing time), whose time also
/// gives the id's time bits (so ids of one schedule sort by firing).
fn firing_id(name: &str, next: &str, fired_at: DateTime<Utc>) -> JobId {
    let digest = Sha256::digest(format!("{name}\n{next}").as_bytes());
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let at = DateTime::parse_from_rfc3339(next).map_or(fired_at, |t| t.with_timezone(&Utc));
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    JobId::from(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
}

/// Adds `id` to the schedule's last jobs (compare-and-set; a lost race only loses the
/// entry, never the job).
async fn remember_job(state: &AppState, name: &str, id: JobId) {
    for _ in 0..CAS_TRIES {
        let Ok(Some((mut definition, revision))) = read(state, name).await else {
            return;
        };
        if definition.last_jobs.contains(&id) {
            return;
        }
        definition.last_jobs.push(id);
        let excess = definition.last_jobs.len().saturating_sub(LAST_JOBS_KEPT);
        definition.last_jobs.drain(..excess);
        let Ok(value) = encode(&definition) else {
            return;
        };
        match state.schedule_defs.update(name, value, revision).await {
            Ok(_) => return,
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => {
                tracing::warn!(schedule = %name, error = %e, "Could not record a schedule's job.");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_hours_minutes_seconds() {
        assert_eq!(parse_interval("30s"), Some(30));
        assert_eq!(parse_interval("5m"), Some(300));
        assert_eq!(parse_interval("1h30m"), Some(5400));
        assert_eq!(parse_interval("1h0m5s"), Some(3605));
        for bad in [
            "", "0s", "30", "s", "1.5s", "500ms", "30m1h", "1m1m", "-1s", "1d",
        ] {
            assert_eq!(parse_interval(bad), None, "{bad}");
        }
    }

    #[test]
    fn cadences_say_what_is_wrong() {
        assert!(cadence(Some("0 */5 * * * *"), None, Some("Europe/Paris")).is_ok());
        assert!(cadence(Some("@hourly"), None, None).is_ok());
        assert!(cadence(None, Some("1s"), None).is_ok());
        for (cron, every, zone, field) in [
            (Some("61 * * * * *"), None, None, "cron"),
            (Some("*/5 * * * *"), None, None, "cron"),
            (Some("0 * * * * *"), None, Some("Mars/Olympus"), "time_zone"),
            (None, Some("1s"), Some("UTC"), "time_zone"),
            (None, Some("soon"), None, "every"),
            (Some("0 * * * * *"), Some("1s"), None, "cron"),
            (None, None, None, "cron"),
        ] {
            let Err(error) = cadence(cron, every, zone) else {
                panic!("{cron:?} {every:?} {zone:?} was accepted");
            };
            assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(
                error.extensions.get("field"),
                Some(&json!(field)),
                "{}",
                error.detail
            );
        }
    }

    #[test]
    fn a_firing_has_one_id_however_often_it_is_handled() {
        let at = now();
        let a = firing_id("nightly", "2030-01-01T00:00:00Z", at);
        assert_eq!(a, firing_id("nightly", "2030-01-01T00:00:00Z", at));
        assert_ne!(a, firing_id("nightly", "2030-01-01T00:00:01Z", at));
        assert_ne!(a, firing_id("hourly", "2030-01-01T00:00:00Z", at));
        assert_eq!(a.as_uuid().get_version_num(), 7);
    }
}
