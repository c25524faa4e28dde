//! What a job is: its id, its kind, and the request that travels on the `JOBS` stream.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::webhook::CallbackEvent;

/// A job's identity. The gateway makes UUIDv7 (time-ordered, so KV keys and
/// stream sequences sort the same way); a client may choose any UUID with `PUT`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for JobId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hyphenated lower case: valid as a NATS subject token and a KV key.
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// The longest kind name; kinds are subject tokens and KV keys, so they stay short.
pub const MAX_KIND_LEN: usize = 64;

/// A job kind such as `hash` or `sleep`: lower-case ASCII letters, digits, `_` and `-`,
/// starting with a letter or digit. The rule keeps it a single NATS subject token.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "hash")]
pub struct Kind(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid kind {0:?}: a kind is 1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
)]
pub struct InvalidKind(pub String);

impl Kind {
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidKind> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_KIND_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            Ok(Self(name))
        } else {
            Err(InvalidKind(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Kind {
    type Error = InvalidKind;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Kind> for String {
    fn from(value: Kind) -> Self {
        value.0
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Kind {
    type Err = InvalidKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Upper bound on `max_attempts`, whatever a client asks for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 25;
/// Upper bound on `timeout_secs`, whatever a client asks for (one day).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// The message published on `jobs.submit.<kind>.<id>`: everything a processor needs to run the job.
///
/// `max_attempts` and `created_at` also travel in every event, so the status service can
/// build a complete snapshot from events alone (a fast job can finish before the gateway's
/// first write lands, and the KV must be rebuildable from the streams).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub id: JobId,
    pub kind: Kind,
    pub payload: Value,
    /// The last attempt this request may run: attempts are numbered across retries, so
    /// after a retry of a job that failed on attempt 3 with 3 allowed, this is 6.
    pub max_attempts: u32,
    /// Per-attempt time limit; `None` means the kind's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    pub created_at: DateTime<Utc>,
    /// Attempts the job had before this request was queued: 0 for a new job, the failed
    /// attempt's number for a retry (`POST /v1/jobs/{id}/retry`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prior_attempts: u32,
    /// Where the notifier POSTs this job's events (checked by the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// Which events it POSTs; `None` means [`CallbackEvent::DEFAULT`] (how the job ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_events: Option<Vec<CallbackEvent>>,
    /// When the job may run and until when, and the schedule that made it; empty for a
    /// job submitted to run now.
    #[serde(default, skip_serializing_if = "Scheduling::is_empty")]
    pub scheduling: Scheduling,
}

/// A job's timing: delayed (`run_at`), expiring (`expires_at`), or made by a recurring
/// schedule. Carried by the request and by every event (so a snapshot built from events
/// alone, or rebuilt, shows it), and shown at the top level of the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduling {
    /// The job waits in `JOBS_SCHEDULES` until then (state `scheduled`); set only when it
    /// was in the future at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Not started by then, the job ends `cancelled` without running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The recurring schedule whose firing made the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
}

/// Which waiting jobs a processor takes first. Each priority has its own subject in
/// `JOBS` (`jobs.submit.<kind>.<id>`, `….high`, `….low`) and its own consumer, so the
/// broker keeps them apart and the processor chooses: `high` before anything else,
/// `low` only when nothing else waits (or it has waited too long).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Self; 3] = [Self::High, Self::Normal, Self::Low];

    pub fn is_normal(&self) -> bool {
        *self == Self::Normal
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
}

impl Scheduling {
    pub fn is_empty(&self) -> bool {
        self.run_at.is_none()
            && self.expires_at.is_none()
            && self.schedule.is_none()
            && self.priority.is_normal()
    }

    /// Whether the job has expired at `now` (it may still be running: expiry only stops
    /// a job that has not started).
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How far a running job has come, as reported by its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub current: u64,
    pub total: u64,
}

/// Now, truncated to microseconds so that timestamps survive a JSON round trip unchanged.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    chrono::DurationRound::duration_trunc(now, chrono::TimeDelta::microseconds(1)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_single_subject_tokens() {
        for good in ["hash", "sleep", "thumb_nail", "a-b", "x1", "9lives"] {
            assert!(Kind::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Hash",
            "a.b",
            "a b",
            "a*",
            ">",
            "-a",
            "_a",
            &"x".repeat(65),
        ] {
            assert!(Kind::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn job_ids_render_as_hyphenated_lower_case() {
        let id: JobId = "0193A5B2-0000-7000-8000-000000000000"
            .parse()
            .expect("uuid");
        assert_eq!(id.to_string(), "0193a5b2-0000-7000-8000-000000000000");
    }
}
