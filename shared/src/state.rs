//! The job state machine: the one place that decides what a job's state is.
//!
//! ```text
//! scheduled ─► queued ─► running ─► succeeded | failed | cancelled
//!  (run_at)      ▲          ▲  │                  │
//!                │          └──┴─► retrying       │
//!                └──────── requeued (POST /v1/jobs/{id}/retry) ◄─┘
//! ```
//!
//! A scheduled or queued job can also be cancelled (by the client, or when it expires).
//!
//! Attempts are numbered across retries: a job that failed on attempt 3 and is retried
//! runs attempt 4 next. So a job's life is a sequence of positions, `(attempt, step)`,
//! and a snapshot only ever moves to a later one.
//!
//! Events can be redelivered, reordered, or come from a worker that lost its lease
//! (a stale attempt). [`apply`] turns "the snapshot we have" plus "an event" into either
//! a newer snapshot or a reason to ignore the event, so a snapshot never goes backwards.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::{JobId, JobRequest, Kind, Progress};
use crate::webhook::{CallbackEvent, WebhookRecord, WebhookStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at` in `JOBS_SCHEDULES`.
    Scheduled,
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Position within one attempt; a later event of the same attempt must not rank lower.
    fn rank(self) -> u8 {
        match self {
            Self::Scheduled => 0,
            Self::Queued => 1,
            Self::Running => 2,
            Self::Retrying => 3,
            Self::Succeeded | Self::Failed | Self::Cancelled => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What clients see: the value stored under the job's id in KV `job_status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSnapshot {
    pub id: JobId,
    pub kind: Kind,
    pub state: JobState,
    /// Runs started so far: 0 while first queued.
    pub attempt: u32,
    pub max_attempts: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub progress: Option<Progress>,
    pub result: Option<Value>,
    /// Where a result too large to keep inline is (then `result` is null); read it whole
    /// at `GET /v1/jobs/{id}/result`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ref: Option<ResultRef>,
    /// The last error: why the job failed, is retrying, or was cancelled.
    pub error: Option<String>,
    /// Every failed attempt's error, by attempt (the last [`MAX_ERRORS_KEPT`]), whatever
    /// order the events came in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<AttemptError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_events: Option<Vec<CallbackEvent>>,
    /// Where delivery of the job's webhooks stands (jobs with a callback, once an event
    /// is due).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookStatus>,
    /// When a delayed job runs (it is `scheduled` until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Not started by then, the job is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The recurring schedule that made the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "crate::job::Priority::is_normal")]
    pub priority: crate::job::Priority,
}

/// A result stored in Object Store `job_blobs` instead of inline (claim-check).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResultRef {
    /// The blob's id.
    pub blob: String,
    pub size: u64,
    pub content_type: String,
}

/// One failed attempt, kept so that a failed job explains every failure, not only the last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptError {
    pub attempt: u32,
    pub error: String,
    pub at: DateTime<Utc>,
}

/// Attempt errors kept in a snapshot; retries can add attempts without end, a snapshot
/// must not grow without end.
pub const MAX_ERRORS_KEPT: usize = 32;

impl JobSnapshot {
    /// The job's timing as its requests and events carry it.
    pub fn scheduling(&self) -> crate::job::Scheduling {
        crate::job::Scheduling {
            run_at: self.run_at,
            expires_at: self.expires_at,
            schedule: self.schedule.clone(),
            priority: self.priority,
        }
    }

    /// The snapshot of a job waiting for `request`: `queued` in `JOBS`, or `scheduled` in
    /// `JOBS_SCHEDULES` when it has a `run_at` (the gateway writes it when it accepts a
    /// job; a rebuild writes it for jobs still waiting).
    pub fn queued(request: &JobRequest) -> Self {
        let mut snapshot = Self::new(
            request.id,
            request.kind.clone(),
            request.max_attempts,
            request.created_at,
        );
        snapshot.attempt = request.prior_attempts;
        snapshot.callback_url = request.callback_url.clone();
        snapshot.callback_events = request.callback_events.clone();
        snapshot.set_scheduling(&request.scheduling);
        if request.scheduling.run_at.is_some() && request.prior_attempts == 0 {
            snapshot.state = JobState::Scheduled;
        }
        snapshot
    }

    fn set_scheduling(&mut self, scheduling: &crate::job::Scheduling) {
        self.run_at = scheduling.run_at;
        self.expires_at = scheduling.expires_at;
        self.schedule.clone_from(&scheduling.schedule);
        self.priority = scheduling.priority;
    }

    /// Where the job stands: `(attempt, step within it)`. A job queued again after
    /// attempt k (a retry) stands after everything attempt k did.
    fn position(&self) -> (u32, u8) {
        if self.state == JobState::Queued && self.attempt > 0 {
            (self.attempt, REQUEUED_STEP)
        } else {
            (self.attempt, self.state.rank())
        }
    }

    fn new(id: JobId, kind: Kind, max_attempts: u32, created_at: DateTime<Utc>) -> Self {
        Self {
            id,
            kind,
            state: JobState::Queued,
            attempt: 0,
            max_attempts,
            created_at,
            updated_at: created_at,
            progress: None,
            result: None,
            result_ref: None,
            error: None,
            errors: Vec::new(),
            callback_url: None,
            callback_events: None,
            webhook: None,
            run_at: None,
            expires_at: None,
            schedule: None,
            priority: crate::job::Priority::Normal,
        }
    }
}

/// The step of a `requeued` event: after every other step of its attempt.
const REQUEUED_STEP: u8 = 5;

/// One change to a job, published on `jobs.events.<kind>.<id>` by whoever made it.
///
/// Every event carries the job's fixed facts (`kind`, `max_attempts`, `created_at`, the
/// callback) so the status service can create a snapshot from any event, in any order,
/// and the notifier needs nothing but the event to deliver it.
///
/// Webhook delivery records ([`Change::Webhook`]) travel on `jobs.events.<kind>.<id>.webhook`
/// instead: writers fence on the job's own subject, and a record there would refuse them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub kind: Kind,
    /// The run this event belongs to (1 for the first run).
    pub attempt: u32,
    pub max_attempts: u32,
    pub created_at: DateTime<Utc>,
    /// When the change happened.
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_events: Option<Vec<CallbackEvent>>,
    #[serde(default, skip_serializing_if = "crate::job::Scheduling::is_empty")]
    pub scheduling: crate::job::Scheduling,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    /// A delayed job's time came: it left `JOBS_SCHEDULES` for `JOBS` (attempt 0).
    Queued,
    Started,
    Progress(Progress),
    /// The attempt failed and the job will run again after `retry_in_ms`.
    Retrying {
        error: String,
        retry_in_ms: u64,
    },
    Succeeded {
        result: Value,
        /// Set when the result is stored in `job_blobs` (then `result` is null).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result_ref: Option<ResultRef>,
    },
    Failed {
        error: String,
    },
    Cancelled {
        reason: String,
    },
    /// A failed job was queued again (`POST /v1/jobs/{id}/retry`); its next run is
    /// `attempt + 1`, and it may run up to the event's `max_attempts`.
    Requeued,
    /// One attempt to deliver a webhook for an earlier event (by the notifier). It never
    /// changes the job's state or attempt, and may come after the job ended.
    Webhook(WebhookRecord),
}

impl Change {
    /// How a job that was not started before its `expires_at` ends (by the scheduler's
    /// expiry, or by the processor that finds it expired).
    pub fn expired(scheduling: &crate::job::Scheduling) -> Self {
        let at = scheduling
            .expires_at
            .map_or_else(String::new, |at| at.to_rfc3339());
        Self::Cancelled {
            reason: format!("expired: not started by {at}"),
        }
    }

    /// The short name used in `Nats-Msg-Id` and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Started => "started",
            Self::Progress(_) => "progress",
            Self::Retrying { .. } => "retrying",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Cancelled { .. } => "cancelled",
            Self::Requeued => "requeued",
            Self::Webhook(_) => "webhook",
        }
    }

    /// The state a job is in right after this change; `None` for a webhook record, which
    /// changes no state.
    pub fn state(&self) -> Option<JobState> {
        Some(match self {
            Self::Queued => JobState::Queued,
            Self::Started | Self::Progress(_) => JobState::Running,
            Self::Retrying { .. } => JobState::Retrying,
            Self::Succeeded { .. } => JobState::Succeeded,
            Self::Failed { .. } => JobState::Failed,
            Self::Cancelled { .. } => JobState::Cancelled,
            Self::Requeued => JobState::Queued,
            Self::Webhook(_) => return None,
        })
    }

    /// Whether the job has ended with this change.
    pub fn is_terminal(&self) -> bool {
        self.state().is_some_and(JobState::is_terminal)
    }

    /// The webhook event this change is, if a callback can hear it.
    pub fn callback_event(&self) -> Option<CallbackEvent> {
        Some(match self {
            Self::Started => CallbackEvent::Started,
            Self::Progress(_) => CallbackEvent::Progress,
            Self::Retrying { .. } => CallbackEvent::Retrying,
            Self::Succeeded { .. } => CallbackEvent::Succeeded,
            Self::Failed { .. } => CallbackEvent::Failed,
            Self::Cancelled { .. } => CallbackEvent::Cancelled,
            Self::Requeued => CallbackEvent::Requeued,
            // Leaving the schedule is not a webhook event: `started` follows at once.
            Self::Queued | Self::Webhook(_) => return None,
        })
    }

    /// The step within an attempt: a later event of the same attempt must not rank lower.
    fn step(&self) -> u8 {
        match self {
            Self::Requeued => REQUEUED_STEP,
            other => other.state().map_or(0, JobState::rank),
        }
    }
}

impl JobEvent {
    pub fn new(request: &JobRequest, attempt: u32, change: Change) -> Self {
        Self {
            job_id: request.id,
            kind: request.kind.clone(),
            attempt,
            max_attempts: request.max_attempts,
            created_at: request.created_at,
            at: crate::job::now(),
            callback_url: request.callback_url.clone(),
            callback_events: request.callback_events.clone(),
            scheduling: request.scheduling.clone(),
            change,
        }
    }

    /// Whether this event is one the job's callback wants delivered.
    pub fn wants_webhook(&self) -> bool {
        self.callback_url.is_some()
            && self
                .change
                .callback_event()
                .is_some_and(|e| e.selected_by(self.callback_events.as_deref()))
    }

    /// The record of a delivery attempt for this event, stored at `event_seq` in
    /// `JOB_EVENTS`: the event's facts with the record as the change.
    pub fn webhook_record(&self, record: WebhookRecord) -> Self {
        Self {
            at: crate::job::now(),
            change: Change::Webhook(record),
            ..self.clone()
        }
    }

    /// `Nats-Msg-Id` for this event: a re-published event is deduplicated by JetStream.
    /// Progress events also carry their position, or every one after the first would be
    /// dropped as a duplicate.
    pub fn msg_id(&self) -> String {
        match &self.change {
            Change::Progress(p) => format!(
                "{}.progress.{}.{}.{}",
                self.job_id, self.attempt, p.current, p.total
            ),
            Change::Webhook(r) => format!(
                "{}.webhook.{}.{}.{:?}",
                self.job_id, r.event_seq, r.delivery_attempt, r.outcome
            ),
            other => format!("{}.{}.{}", self.job_id, other.name(), self.attempt),
        }
    }
}

/// Why an event did not change a snapshot. None of these is an error: they are the
/// normal result of at-least-once delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("the job is already in a terminal state")]
    Terminal,
    #[error("the event belongs to an earlier attempt")]
    StaleAttempt,
    #[error("the snapshot already reflects this or a later change")]
    NotNewer,
    #[error("the event is for another job")]
    OtherJob,
    #[error("a webhook record for a job without a snapshot")]
    NoSnapshot,
}

/// Decides whether `event` moves `current` forward, and if so returns the new snapshot.
///
/// The rules, in order:
/// 1. Terminal states are final, except that a `failed` job may be requeued (a retry).
/// 2. A cancellation ends any job that is not terminal, whatever attempt it is on.
/// 3. An event from an earlier attempt than the snapshot's is stale.
/// 4. A later attempt always moves forward.
/// 5. Within one attempt the step may only go forward (`running < retrying < terminal <
///    requeued`); progress only grows.
///
/// Webhook records are ordered among themselves only (see [`apply_webhook`]).
pub fn apply(current: Option<&JobSnapshot>, event: &JobEvent) -> Result<JobSnapshot, Skip> {
    if let Change::Webhook(record) = &event.change {
        return apply_webhook(current, event, record);
    }
    match (advance(current, event), current) {
        // An attempt's error that arrives late (events of one job can be redelivered out
        // of order) still belongs in the history, though it changes nothing else.
        (Err(skip), Some(snapshot))
            if skip != Skip::OtherJob && event.attempt <= snapshot.attempt =>
        {
            let mut next = snapshot.clone();
            if record_error(&mut next, event) {
                Ok(next)
            } else {
                Err(skip)
            }
        }
        (result, _) => result,
    }
}

/// A delivery record moves only the snapshot's `webhook`, and only forward: records are
/// ordered by the delivered event's stream sequence, then the delivery attempt, then a
/// final outcome over `retrying`. A terminal job still takes them: delivery comes after.
fn apply_webhook(
    current: Option<&JobSnapshot>,
    event: &JobEvent,
    record: &WebhookRecord,
) -> Result<JobSnapshot, Skip> {
    // The delivered event is earlier in the stream than its record, so a snapshot exists
    // unless it expired; a record alone cannot say what state the job is in.
    let snapshot = current.ok_or(Skip::NoSnapshot)?;
    if snapshot.id != event.job_id {
        return Err(Skip::OtherJob);
    }
    if snapshot
        .webhook
        .as_ref()
        .is_some_and(|seen| record.order_key() <= seen.order_key())
    {
        return Err(Skip::NotNewer);
    }
    let mut next = snapshot.clone();
    next.webhook = Some(WebhookStatus {
        state: record.outcome,
        event: record.event,
        attempts: record.delivery_attempt,
        last_status: record.status,
        last_error: record.error.clone(),
        last_attempt_at: Some(event.at),
        event_seq: record.event_seq,
    });
    Ok(next)
}

/// Adds the event's error to the history if it is an attempt's error not yet there,
/// keeping the history ordered by attempt and bounded.
fn record_error(snapshot: &mut JobSnapshot, event: &JobEvent) -> bool {
    let (Change::Retrying { error, .. } | Change::Failed { error }) = &event.change else {
        return false;
    };
    let at = match snapshot
        .errors
        .binary_search_by_key(&event.attempt, |e| e.attempt)
    {
        Ok(_) => return false,
        Err(at) => at,
    };
    snapshot.errors.insert(
        at,
        AttemptError {
            attempt: event.attempt,
            error: error.clone(),
            at: event.at,
        },
    );
    if snapshot.errors.len() > MAX_ERRORS_KEPT {
        snapshot.errors.remove(0);
    }
    true
}

fn advance(current: Option<&JobSnapshot>, event: &JobEvent) -> Result<JobSnapshot, Skip> {
    let base = match current {
        Some(snapshot) => {
            if snapshot.id != event.job_id {
                return Err(Skip::OtherJob);
            }
            let requeue = matches!(event.change, Change::Requeued);
            if snapshot.state.is_terminal() {
                let retry = requeue
                    && snapshot.state == JobState::Failed
                    && event.attempt >= snapshot.attempt;
                if !retry {
                    return Err(Skip::Terminal);
                }
            }
            let cancelling = matches!(event.change, Change::Cancelled { .. });
            if !cancelling {
                if event.attempt < snapshot.attempt {
                    return Err(Skip::StaleAttempt);
                }
                if event.attempt == snapshot.attempt && !moves_forward(snapshot, &event.change) {
                    return Err(Skip::NotNewer);
                }
            }
            snapshot.clone()
        }
        None => JobSnapshot::new(
            event.job_id,
            event.kind.clone(),
            event.max_attempts,
            event.created_at,
        ),
    };

    let mut next = base;
    if next.run_at.is_none()
        && next.expires_at.is_none()
        && next.schedule.is_none()
        && next.priority.is_normal()
    {
        next.set_scheduling(&event.scheduling);
    }
    if next.callback_url.is_none() {
        next.callback_url.clone_from(&event.callback_url);
        next.callback_events.clone_from(&event.callback_events);
    }
    if next.webhook.is_none()
        && event.wants_webhook()
        && let Some(due) = event.change.callback_event()
    {
        next.webhook = Some(WebhookStatus::pending(due));
    }
    if event.attempt > next.attempt {
        // A new run starts from a clean slate, except for the last error, which says
        // why this is not the first run.
        next.attempt = event.attempt;
        next.progress = None;
    }
    next.max_attempts = next.max_attempts.max(event.max_attempts);
    next.state = event.change.state().ok_or(Skip::NotNewer)?;
    next.updated_at = event.at.max(next.updated_at);
    if next.state != JobState::Running {
        // Progress describes a run in progress. Dropping it when the run ends also makes
        // the snapshot the same whether a late progress report came before or after the
        // end (it is skipped after it), so a rebuild agrees with the live projection.
        next.progress = None;
    }
    match &event.change {
        Change::Queued | Change::Started => {}
        Change::Progress(progress) => next.progress = Some(*progress),
        Change::Retrying { error, .. } | Change::Failed { error } => {
            next.error = Some(error.clone());
            record_error(&mut next, event);
        }
        Change::Succeeded { result, result_ref } => {
            next.result = Some(result.clone());
            next.result_ref = result_ref.clone();
            next.error = None;
        }
        Change::Cancelled { reason } => next.error = Some(reason.clone()),
        Change::Requeued => {
            next.result = None;
            next.result_ref = None;
        }
        Change::Webhook(_) => {}
    }
    Ok(next)
}

/// Same attempt: does `change` come after what `snapshot` shows?
fn moves_forward(snapshot: &JobSnapshot, change: &Change) -> bool {
    let (from, to) = (snapshot.position().1, change.step());
    match change {
        Change::Progress(progress) if from == to => snapshot
            .progress
            .is_none_or(|seen| progress.current > seen.current),
        _ => to > from,
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> JobRequest {
        JobRequest {
            id: JobId::new_v7(),
            kind: Kind::new("hash").expect("kind"),
            payload: json!({}),
            max_attempts: 3,
            timeout_secs: None,
            created_at: crate::job::now(),
            prior_attempts: 0,
            callback_url: None,
            callback_events: None,
            scheduling: Default::default(),
        }
    }

    fn ev(req: &JobRequest, attempt: u32, change: Change) -> JobEvent {
        JobEvent::new(req, attempt, change)
    }

    fn run(req: &JobRequest, events: &[JobEvent]) -> JobSnapshot {
        let mut snap = Some(JobSnapshot::queued(req));
        for event in events {
            if let Ok(next) = apply(snap.as_ref(), event) {
                snap = Some(next);
            }
        }
        snap.expect("snapshot")
    }

    fn succeeded() -> Change {
        Change::Succeeded {
            result: json!({"ok": true}),
            result_ref: None,
        }
    }

    #[test]
    fn the_happy_path_goes_queued_running_succeeded() {
        let req = request();
        let snap = run(
            &req,
            &[ev(&req, 1, Change::Started), ev(&req, 1, succeeded())],
        );
        assert_eq!(snap.state, JobState::Succeeded);
        assert_eq!(snap.attempt, 1);
        assert_eq!(snap.result, Some(json!({"ok": true})));
    }

    fn delayed() -> JobRequest {
        let mut req = request();
        req.scheduling.run_at = Some(req.created_at + chrono::TimeDelta::seconds(5));
        req.scheduling.expires_at = Some(req.created_at + chrono::TimeDelta::seconds(60));
        req
    }

    #[test]
    fn a_delayed_job_goes_scheduled_queued_running_succeeded() {
        let req = delayed();
        let scheduled = JobSnapshot::queued(&req);
        assert_eq!(scheduled.state, JobState::Scheduled);
        assert_eq!(scheduled.run_at, req.scheduling.run_at);
        let queued = apply(Some(&scheduled), &ev(&req, 0, Change::Queued)).expect("queued");
        assert_eq!((queued.state, queued.attempt), (JobState::Queued, 0));
        let snap = run(
            &req,
            &[
                ev(&req, 0, Change::Queued),
                ev(&req, 1, Change::Started),
                ev(&req, 1, succeeded()),
            ],
        );
        assert_eq!(snap.state, JobState::Succeeded);
        assert_eq!(snap.run_at, req.scheduling.run_at, "run_at stays");
        assert_eq!(snap.expires_at, req.scheduling.expires_at);
    }

    #[test]
    fn a_late_queued_never_moves_a_delayed_job_back() {
        let req = delayed();
        let running = run(
            &req,
            &[ev(&req, 0, Change::Queued), ev(&req, 1, Change::Started)],
        );
        assert_eq!(
            apply(Some(&running), &ev(&req, 0, Change::Queued)),
            Err(Skip::StaleAttempt)
        );
        // Out of order from the start: `started` first, then the schedule's `queued`.
        let snap = run(
            &req,
            &[ev(&req, 1, Change::Started), ev(&req, 0, Change::Queued)],
        );
        assert_eq!(snap.state, JobState::Running);
        let queued_twice = run(&req, &[ev(&req, 0, Change::Queued)]);
        assert_eq!(
            apply(Some(&queued_twice), &ev(&req, 0, Change::Queued)),
            Err(Skip::NotNewer)
        );
    }

    #[test]
    fn a_scheduled_job_can_be_cancelled_and_then_never_queues() {
        let req = delayed();
        let cancelled = run(
            &req,
            &[ev(
                &req,
                0,
                Change::Cancelled {
                    reason: "expired: not started by then".into(),
                },
            )],
        );
        assert_eq!(cancelled.state, JobState::Cancelled);
        assert_eq!(
            cancelled.error.as_deref(),
            Some("expired: not started by then")
        );
        assert_eq!(
            apply(Some(&cancelled), &ev(&req, 0, Change::Queued)),
            Err(Skip::Terminal)
        );
    }

    #[test]
    fn a_snapshot_built_from_events_alone_knows_its_schedule() {
        let mut req = request();
        req.scheduling.schedule = Some("nightly".into());
        let snap = apply(None, &ev(&req, 1, Change::Started)).expect("created");
        assert_eq!(snap.schedule.as_deref(), Some("nightly"));
        assert_eq!(snap, {
            let mut from_request = JobSnapshot::queued(&req);
            from_request =
                apply(Some(&from_request), &ev(&req, 1, Change::Started)).expect("started");
            from_request.updated_at = snap.updated_at;
            from_request
        });
    }

    #[test]
    fn an_event_for_a_missing_snapshot_creates_it() {
        let req = request();
        let snap = apply(None, &ev(&req, 1, succeeded())).expect("applied");
        assert_eq!(snap.state, JobState::Succeeded);
        assert_eq!(snap.max_attempts, 3);
        assert_eq!(snap.created_at, req.created_at);
    }

    #[test]
    fn terminal_states_are_final() {
        let req = request();
        let done = run(&req, &[ev(&req, 1, succeeded())]);
        for change in [
            Change::Started,
            Change::Progress(Progress {
                current: 9,
                total: 10,
            }),
            Change::Failed { error: "x".into() },
            Change::Cancelled { reason: "x".into() },
        ] {
            assert_eq!(
                apply(Some(&done), &ev(&req, 2, change)),
                Err(Skip::Terminal)
            );
        }
    }

    #[test]
    fn a_redelivered_or_late_event_never_moves_a_job_back() {
        let req = request();
        let retrying = run(
            &req,
            &[
                ev(&req, 1, Change::Started),
                ev(
                    &req,
                    1,
                    Change::Retrying {
                        error: "boom".into(),
                        retry_in_ms: 10,
                    },
                ),
            ],
        );
        assert_eq!(retrying.state, JobState::Retrying);
        // The `started` of the same attempt, redelivered.
        assert_eq!(
            apply(Some(&retrying), &ev(&req, 1, Change::Started)),
            Err(Skip::NotNewer)
        );
        let second = apply(Some(&retrying), &ev(&req, 2, Change::Started)).expect("attempt 2");
        assert_eq!((second.state, second.attempt), (JobState::Running, 2));
        assert_eq!(second.error.as_deref(), Some("boom"));
        // A stale worker of attempt 1 finishing late changes nothing.
        assert_eq!(
            apply(Some(&second), &ev(&req, 1, succeeded())),
            Err(Skip::StaleAttempt)
        );
    }

    #[test]
    fn progress_only_grows() {
        let req = request();
        let p = |current| Change::Progress(Progress { current, total: 10 });
        let snap = run(
            &req,
            &[ev(&req, 1, p(5)), ev(&req, 1, p(3)), ev(&req, 1, p(5))],
        );
        assert_eq!(snap.progress.map(|p| p.current), Some(5));
        assert_eq!(snap.state, JobState::Running);
    }

    #[test]
    fn cancellation_ends_any_live_attempt() {
        let req = request();
        let running = run(&req, &[ev(&req, 2, Change::Started)]);
        let cancelled = apply(
            Some(&running),
            &ev(
                &req,
                0,
                Change::Cancelled {
                    reason: "by client".into(),
                },
            ),
        )
        .expect("cancel applies");
        assert_eq!(
            (cancelled.state, cancelled.attempt),
            (JobState::Cancelled, 2)
        );
    }

    #[test]
    fn every_order_of_one_runs_events_ends_in_the_same_snapshot() {
        let req = request();
        let events = [
            ev(&req, 1, Change::Started),
            ev(
                &req,
                1,
                Change::Progress(Progress {
                    current: 1,
                    total: 2,
                }),
            ),
            ev(
                &req,
                1,
                Change::Retrying {
                    error: "e".into(),
                    retry_in_ms: 1,
                },
            ),
            ev(&req, 2, Change::Started),
            ev(&req, 2, succeeded()),
        ];
        let expected = run(&req, &events);
        // All 120 permutations, each also with every event delivered twice.
        let mut order: Vec<usize> = (0..events.len()).collect();
        permute(&mut order, 0, &mut |perm| {
            let shuffled: Vec<JobEvent> = perm
                .iter()
                .flat_map(|&i| [events[i].clone(), events[i].clone()])
                .collect();
            let snap = run(&req, &shuffled);
            assert_eq!(snap.state, expected.state);
            assert_eq!(snap.attempt, expected.attempt);
            assert_eq!(snap.result, expected.result);
            assert_eq!(
                snap.errors, expected.errors,
                "every attempt's error, in any order"
            );
        });
    }

    fn failed(error: &str) -> Change {
        Change::Failed {
            error: error.into(),
        }
    }

    #[test]
    fn a_failed_job_keeps_every_attempts_error() {
        let req = request();
        let retrying = |error: &str| Change::Retrying {
            error: error.into(),
            retry_in_ms: 1,
        };
        let snap = run(
            &req,
            &[
                ev(&req, 1, retrying("first")),
                ev(&req, 2, retrying("second")),
                ev(&req, 3, failed("third")),
                ev(&req, 3, failed("third")),
            ],
        );
        assert_eq!(snap.state, JobState::Failed);
        assert_eq!(snap.error.as_deref(), Some("third"));
        let errors: Vec<(u32, &str)> = snap
            .errors
            .iter()
            .map(|e| (e.attempt, e.error.as_str()))
            .collect();
        assert_eq!(errors, [(1, "first"), (2, "second"), (3, "third")]);
    }

    #[test]
    fn a_retried_failed_job_runs_again_and_stale_events_stay_stale() {
        let req = request();
        let dead = run(&req, &[ev(&req, 3, failed("gave up"))]);
        // Only a failed job can be requeued; the requeue carries the new attempt budget.
        let mut retry = req.clone();
        retry.max_attempts = 6;
        retry.prior_attempts = 3;
        let requeued = apply(Some(&dead), &ev(&retry, 3, Change::Requeued)).expect("requeue");
        assert_eq!(
            (requeued.state, requeued.attempt, requeued.max_attempts),
            (JobState::Queued, 3, 6)
        );
        assert_eq!(requeued.errors.len(), 1, "history is kept");
        // The failure it was requeued after, redelivered, must not undo the requeue.
        assert_eq!(
            apply(Some(&requeued), &ev(&req, 3, failed("gave up"))),
            Err(Skip::NotNewer)
        );
        assert_eq!(
            apply(Some(&requeued), &ev(&req, 2, Change::Started)),
            Err(Skip::StaleAttempt)
        );
        let running = apply(Some(&requeued), &ev(&retry, 4, Change::Started)).expect("run 4");
        assert_eq!((running.state, running.attempt), (JobState::Running, 4));
        let done = apply(Some(&running), &ev(&retry, 4, succeeded())).expect("done");
        assert_eq!(done.state, JobState::Succeeded);
        // The requeue, redelivered after the job succeeded, changes nothing.
        assert_eq!(
            apply(Some(&done), &ev(&retry, 3, Change::Requeued)),
            Err(Skip::Terminal)
        );
        // A written-fresh snapshot of the retried request equals the requeued projection's
        // position, so a rebuild that starts from the waiting request agrees.
        assert_eq!(JobSnapshot::queued(&retry).attempt, 3);
    }

    #[test]
    fn succeeded_and_cancelled_jobs_cannot_be_requeued() {
        let req = request();
        for end in [succeeded(), Change::Cancelled { reason: "x".into() }] {
            let done = run(&req, &[ev(&req, 1, end)]);
            assert_eq!(
                apply(Some(&done), &ev(&req, 1, Change::Requeued)),
                Err(Skip::Terminal)
            );
        }
    }

    fn with_callback(events: Option<Vec<CallbackEvent>>) -> JobRequest {
        JobRequest {
            callback_url: Some("https://example.com/hook".into()),
            callback_events: events,
            ..request()
        }
    }

    fn record(seq: u64, attempt: u32, outcome: WebhookState, status: u16) -> Change {
        Change::Webhook(WebhookRecord {
            event: CallbackEvent::Succeeded,
            event_seq: seq,
            delivery_attempt: attempt,
            outcome,
            status: Some(status),
            error: (status >= 300).then(|| format!("answered {status}")),
            retry_in_ms: (outcome == WebhookState::Retrying).then_some(100),
        })
    }

    use crate::webhook::{WebhookRecord, WebhookState};

    #[test]
    fn events_carry_the_callback_and_a_due_event_makes_the_webhook_pending() {
        let req = with_callback(None);
        let queued = JobSnapshot::queued(&req);
        assert_eq!(queued.callback_url, req.callback_url);
        assert_eq!(queued.webhook, None, "nothing is due while queued");
        let running = run(&req, &[ev(&req, 1, Change::Started)]);
        assert_eq!(
            running.webhook, None,
            "started is not in the default filter"
        );
        // A snapshot made from the terminal event alone carries the callback too.
        let done = apply(None, &ev(&req, 1, succeeded())).expect("applied");
        assert_eq!(done.callback_url, req.callback_url);
        let webhook = done.webhook.expect("pending");
        assert_eq!(
            (webhook.state, webhook.event, webhook.attempts),
            (WebhookState::Pending, CallbackEvent::Succeeded, 0)
        );
        // A job without a callback never shows one.
        let plain = request();
        assert_eq!(run(&plain, &[ev(&plain, 1, succeeded())]).webhook, None);
    }

    #[test]
    fn webhook_records_apply_after_the_end_and_never_change_state_or_attempt() {
        let req = with_callback(None);
        let lifecycle = [ev(&req, 1, Change::Started), ev(&req, 1, succeeded())];
        let done = run(&req, &lifecycle);
        let records = [
            ev(&req, 1, record(7, 1, WebhookState::Retrying, 500)),
            ev(&req, 1, record(7, 2, WebhookState::Retrying, 500)),
            ev(&req, 1, record(7, 3, WebhookState::Delivered, 200)),
        ];
        let all: Vec<JobEvent> = lifecycle.iter().chain(&records).cloned().collect();
        let delivered = run(&req, &all);
        assert_eq!(
            (delivered.state, delivered.attempt),
            (done.state, done.attempt)
        );
        assert_eq!(delivered.updated_at, done.updated_at);
        assert_eq!(delivered.result, done.result);
        let webhook = delivered.webhook.expect("webhook");
        assert_eq!(
            (
                webhook.state,
                webhook.attempts,
                webhook.last_status,
                webhook.last_error
            ),
            (WebhookState::Delivered, 3, Some(200), None)
        );
    }

    #[test]
    fn webhook_records_never_go_backwards_in_any_order() {
        let req = with_callback(Some(vec![CallbackEvent::Started, CallbackEvent::Succeeded]));
        let records = [
            ev(&req, 1, record(3, 1, WebhookState::Retrying, 503)),
            ev(&req, 1, record(3, 2, WebhookState::Delivered, 200)),
            ev(&req, 1, record(9, 1, WebhookState::Retrying, 429)),
            ev(&req, 1, record(9, 2, WebhookState::Retrying, 500)),
            ev(&req, 1, record(9, 2, WebhookState::Failed, 500)),
        ];
        let base = run(
            &req,
            &[ev(&req, 1, Change::Started), ev(&req, 1, succeeded())],
        );
        let mut order: Vec<usize> = (0..records.len()).collect();
        permute(&mut order, 0, &mut |perm| {
            let mut snap = base.clone();
            for &i in perm {
                if let Ok(next) = apply(Some(&snap), &records[i]) {
                    assert_eq!(next.state, base.state);
                    snap = next;
                }
            }
            let webhook = snap.webhook.expect("webhook");
            assert_eq!(
                (webhook.event_seq, webhook.attempts, webhook.state),
                (9, 2, WebhookState::Failed),
                "the latest record wins whatever order they came in: {perm:?}"
            );
        });
        // A redelivered record changes nothing.
        let last = apply(Some(&base), &records[4]).expect("applies");
        assert_eq!(apply(Some(&last), &records[4]), Err(Skip::NotNewer));
        // A record alone cannot make a snapshot.
        assert_eq!(apply(None, &records[0]), Err(Skip::NoSnapshot));
    }

    #[test]
    fn webhook_records_have_their_own_message_ids() {
        let req = with_callback(None);
        let a = ev(&req, 1, record(3, 1, WebhookState::Retrying, 500)).msg_id();
        let b = ev(&req, 1, record(3, 1, WebhookState::Failed, 500)).msg_id();
        let c = ev(&req, 1, record(3, 2, WebhookState::Retrying, 500)).msg_id();
        assert!(a != b && b != c && a != c);
        assert!(a.starts_with(&format!("{}.webhook.3.1", req.id)));
    }

    fn permute(items: &mut Vec<usize>, k: usize, visit: &mut impl FnMut(&[usize])) {
        if k == items.len() {
            visit(items);
            return;
        }
        for i in k..items.len() {
            items.swap(k, i);
            permute(items, k + 1, visit);
            items.swap(k, i);
        }
    }
}
