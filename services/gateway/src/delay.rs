//! Delayed and expiring jobs at submission: when a job may run (`run_at`, `delay_secs`)
//! and until when it may start (`expires_at`, `expires_in_secs`), and the broker-kept
//! schedules (ADR-51 `@at`) that carry them out.
//!
//! A delayed job is not in `JOBS` until its time: its request waits in `JOBS_SCHEDULES`
//! on `jobs.at.<kind>.<id>`, and nats-server publishes it to `jobs.due.<kind>.<id>` at
//! `run_at`, where the gateways' scheduler ([`crate::scheduler`]) queues it. An expiring
//! job also gets `jobs.expiry.<kind>.<id>`, which fires at `expires_at`. No process of
//! ours keeps time, so there is nothing to run as a singleton.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use jetjobs::job::{JobRequest, Scheduling};
use jetjobs::protocol::{Outgoing, Published, Retries};
use jetjobs::subjects::{self, headers};
use jetjobs::{JobId, Kind};
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::submit::{PublishFailure, SubmitBody};

/// The timing fields of a submit body, checked: `run_at` or `delay_secs` (not both),
/// `expires_at` or `expires_in_secs` (not both), both relative to `now`.
pub fn timing(
    body: &SubmitBody,
    now: DateTime<Utc>,
    max_delay: Duration,
) -> Result<Scheduling, ApiError> {
    let run_at = match (body.run_at, body.delay_secs) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give either run_at or delay_secs, not both",
                "delay_secs",
            ));
        }
        (Some(at), None) => Some(at),
        (None, Some(secs)) => Some(after(now, secs, "delay_secs")?),
        (None, None) => None,
    };
    let max = chrono::TimeDelta::from_std(max_delay).unwrap_or(chrono::TimeDelta::MAX);
    if let Some(at) = run_at
        && at - now > max
    {
        return Err(invalid(
            format!(
                "run_at {} is more than {} s ahead (JETJOBS_MAX_DELAY_SECS)",
                at.to_rfc3339_opts(SecondsFormat::Millis, true),
                max_delay.as_secs()
            ),
            if body.run_at.is_some() {
                "run_at"
            } else {
                "delay_secs"
            },
        ));
    }
    // A time already past runs now, like a job without one.
    let run_at = run_at.filter(|at| *at > now);
    let expires_at = match (body.expires_at, body.expires_in_secs) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give either expires_at or expires_in_secs, not both",
                "expires_in_secs",
            ));
        }
        (Some(at), None) => Some(at),
        (None, Some(secs)) => Some(after(run_at.unwrap_or(now), secs, "expires_in_secs")?),
        (None, None) => None,
    };
    if let Some(expires) = expires_at {
        let start = run_at.unwrap_or(now);
        if expires <= start {
            return Err(invalid(
                format!(
                    "expires_at {} is not after the time the job would start ({}): it could never run",
                    expires.to_rfc3339_opts(SecondsFormat::Millis, true),
                    start.to_rfc3339_opts(SecondsFormat::Millis, true)
                ),
                if body.expires_at.is_some() {
                    "expires_at"
                } else {
                    "expires_in_secs"
                },
            ));
        }
    }
    Ok(Scheduling {
        run_at,
        expires_at,
        schedule: None,
        priority: body.priority.unwrap_or_default(),
    })
}

/// `secs` after `at`; a number of seconds past the calendar's end (`1e300`) is a 422, not
/// an overflow (it panicked, and the client saw its connection dropped).
fn after(at: DateTime<Utc>, secs: f64, field: &'static str) -> Result<DateTime<Utc>, ApiError> {
    at.checked_add_signed(seconds(secs, field)?).ok_or_else(|| {
        invalid(
            format!("{field} is further ahead than any date: {secs:e} s"),
            field,
        )
    })
}

fn seconds(secs: f64, field: &'static str) -> Result<chrono::TimeDelta, ApiError> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(invalid(
            format!("{field} must be a number of seconds, 0 or more; got {secs}"),
            field,
        ));
    }
    // Whole microseconds, like every timestamp jetjobs stores. Bounded above by the
    // maximum delay check, but a huge number must not overflow on the way there.
    let micros = (secs * 1e6).min(i64::MAX as f64) as i64;
    Ok(chrono::TimeDelta::microseconds(micros))
}

fn invalid(detail: impl Into<String>, field: &'static str) -> ApiError {
    ApiError::invalid(detail).with("field", json!(field))
}

/// A one-shot schedule in `JOBS_SCHEDULES`: `subject` holds `request` and fires it into
/// `target` at `at`.
fn at_message(
    request: &JobRequest,
    subject: String,
    target: String,
    at: DateTime<Utc>,
    msg_id: String,
) -> Result<Outgoing, ApiError> {
    let payload = serde_json::to_vec(request).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut headers = HeaderMap::new();
    jetjobs::trace_context::inject_current(&mut headers);
    headers.insert(
        headers::SCHEDULE,
        format!("@at {}", at.to_rfc3339_opts(SecondsFormat::Millis, true)).as_str(),
    );
    headers.insert(headers::SCHEDULE_TARGET, target.as_str());
    headers.insert(headers::MSG_ID, msg_id.as_str());
    headers.insert(headers::KIND, request.kind.as_str());
    headers.insert(headers::JOB_ID, request.id.to_string().as_str());
    Ok(Outgoing {
        subject,
        headers,
        payload: payload.into(),
    })
}

/// Stores the schedule that queues a delayed job at its `run_at`.
pub async fn schedule_run(state: &AppState, request: &JobRequest) -> Result<(), PublishFailure> {
    let Some(at) = request.scheduling.run_at else {
        return Ok(());
    };
    let message = at_message(
        request,
        subjects::delayed(&request.kind, request.id),
        subjects::due(&request.kind, request.id),
        at,
        format!("{}.at", request.id),
    )
    .map_err(refused)?;
    store(state, message).await
}

/// Stores the schedule that cancels a job not started by its `expires_at`.
pub async fn schedule_expiry(state: &AppState, request: &JobRequest) -> Result<(), PublishFailure> {
    let Some(at) = request.scheduling.expires_at else {
        return Ok(());
    };
    let message = at_message(
        request,
        subjects::expiry(&request.kind, request.id),
        subjects::expired(&request.kind, request.id),
        at,
        format!("{}.expiry", request.id),
    )
    .map_err(refused)?;
    store(state, message).await
}

fn refused(error: ApiError) -> PublishFailure {
    PublishFailure {
        error,
        nothing_stored: true,
    }
}

async fn store(state: &AppState, message: Outgoing) -> Result<(), PublishFailure> {
    // The stored size: payload, headers and subject, rounded up for the store's framing.
    let size = message.payload.len() + message.subject.len() + 256;
    state
        .schedule_room
        .check(state, size)
        .await
        .map_err(refused)?;
    match jetjobs::protocol::publish(&state.js, message, Retries::REQUEST).await {
        Published::Stored(_) => Ok(()),
        Published::TooLarge => Err(refused(ApiError::too_large(
            "the job is larger than the NATS server accepts in one message",
        ))),
        Published::StoreFull => Err(refused(ApiError::unavailable(
            "the schedule store (JOBS_SCHEDULES) is full; retry later",
            5,
        ))),
        Published::WrongLastSequence | Published::SubjectFull | Published::NotConfirmed => {
            Err(PublishFailure {
                error: ApiError::unavailable("the job's schedule could not be confirmed", 1),
                nothing_stored: false,
            })
        }
    }
}

/// Removes a job's pending schedules (its `run_at`, its expiry): after a cancellation
/// they could only fire into a job that has ended, which the scheduler ignores, so a
/// failure here costs a wasted firing, nothing more.
pub async fn forget(state: &AppState, kind: &Kind, id: JobId) {
    for subject in [subjects::delayed(kind, id), subjects::expiry(kind, id)] {
        if let Err(e) = state.schedules.purge().filter(subject.as_str()).await {
            tracing::warn!(job_id = %id, %subject, error = %e, "Could not remove a cancelled job's schedule; it will fire and be ignored.");
        }
    }
}

/// `JOBS_SCHEDULES` cannot refuse writes when full (the server forbids discard-new with
/// message schedules): it would drop its oldest schedules, which are accepted jobs. So
/// the gateway refuses new schedules once the stream would be over [`HEADROOM`] of either
/// limit. It reads the stream's state at most once a second, and counts what it stored
/// itself since, so a burst between two reads cannot run past the headroom (other
/// replicas' bursts are what the remaining 10 % is for).
#[derive(Default)]
pub struct ScheduleRoom {
    seen: Mutex<Option<Seen>>,
}

#[derive(Clone, Copy)]
struct Seen {
    at: Instant,
    messages: u64,
    bytes: u64,
    max_messages: i64,
    max_bytes: i64,
}

/// The share of `JOBS_SCHEDULES`'s limits past which no new schedule is accepted.
const HEADROOM: f64 = 0.9;
const RECHECK: Duration = Duration::from_secs(1);

impl ScheduleRoom {
    /// Takes room for one message of `bytes`, or refuses with a 503.
    async fn check(&self, state: &AppState, bytes: usize) -> Result<(), ApiError> {
        let fresh = self
            .seen
            .lock()
            .ok()
            .and_then(|seen| *seen)
            .filter(|seen| seen.at.elapsed() < RECHECK);
        if fresh.is_none() {
            let mut stream = state.schedules.clone();
            let info = stream.info().await.map_err(|e| {
                ApiError::unavailable(format!("cannot read JOBS_SCHEDULES: {e}"), 1)
            })?;
            if let Ok(mut seen) = self.seen.lock() {
                *seen = Some(Seen {
                    at: Instant::now(),
                    messages: info.state.messages,
                    bytes: info.state.bytes,
                    max_messages: info.config.max_messages,
                    max_bytes: info.config.max_bytes,
                });
            }
        }
        let over = |used: u64, limit: i64| limit > 0 && used as f64 >= HEADROOM * limit as f64;
        let Ok(mut seen) = self.seen.lock() else {
            return Err(ApiError::internal("the schedule room's lock is poisoned"));
        };
        let Some(seen) = seen.as_mut() else {
            return Err(ApiError::unavailable("cannot read JOBS_SCHEDULES", 1));
        };
        let bytes = bytes as u64;
        if over(seen.messages + 1, seen.max_messages) || over(seen.bytes + bytes, seen.max_bytes) {
            return Err(ApiError::unavailable(
                "the schedule store (JOBS_SCHEDULES) is nearly full; retry later",
                5,
            )
            .with("queue", json!("full")));
        }
        seen.messages += 1;
        seen.bytes += bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> SubmitBody {
        serde_json::from_value(json).expect("body")
    }

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    #[test]
    fn delays_and_expiries_resolve_against_now() {
        let now = jetjobs::job::now();
        let t = timing(
            &body(json!({"kind": "noop", "delay_secs": 2.5, "expires_in_secs": 10})),
            now,
            YEAR,
        )
        .expect("valid");
        let run_at = now + chrono::TimeDelta::milliseconds(2500);
        assert_eq!(t.run_at, Some(run_at));
        assert_eq!(t.expires_at, Some(run_at + chrono::TimeDelta::seconds(10)));
        // A time already past means now.
        let past = timing(
            &body(json!({"kind": "noop", "run_at": "2001-01-01T00:00:00Z"})),
            now,
            YEAR,
        )
        .expect("valid");
        assert_eq!(past.run_at, None);
    }

    #[test]
    fn contradictions_and_impossible_times_are_refused() {
        let now = jetjobs::job::now();
        for bad in [
            json!({"kind": "noop", "run_at": "2030-01-01T00:00:00Z", "delay_secs": 1}),
            json!({"kind": "noop", "expires_at": "2030-01-01T00:00:00Z", "expires_in_secs": 1}),
            json!({"kind": "noop", "delay_secs": -1}),
            json!({"kind": "noop", "delay_secs": 400_000_000.0}),
            json!({"kind": "noop", "delay_secs": 60, "expires_at": "2001-01-01T00:00:00Z"}),
            json!({"kind": "noop", "expires_in_secs": 0}),
        ] {
            let error = timing(&body(bad.clone()), now, YEAR).expect_err(&bad.to_string());
            assert_eq!(
                error.status,
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "{bad}"
            );
        }
    }
}
