//! Subject, header and object names: the wire contract between services.
//!
//! Subjects are lower case, namespace first, identifiers last, so an operator can
//! filter with wildcards: `nats sub 'jobs.events.hash.>'`.

use crate::job::{JobId, Kind, Priority};

/// `jobs.submit.<kind>.<id>`: a job request, on stream `JOBS`.
///
/// One subject per job lets `JOBS` hold at most one message per job
/// (`max_msgs_per_subject: 1` with discard-new), so however a submission is retried,
/// a job is never queued twice; and an operator can find a waiting job by its id.
///
/// A `high` or `low` job has the priority as a fifth token (`jobs.submit.<kind>.<id>.high`),
/// which the normal filter `jobs.submit.<kind>.*` does not match: each priority has its
/// own consumer.
pub fn submit(kind: &Kind, id: JobId, priority: Priority) -> String {
    match priority {
        Priority::Normal => format!("jobs.submit.{kind}.{id}"),
        other => format!("jobs.submit.{kind}.{id}.{}", other.as_str()),
    }
}
/// The jobs of one kind and priority: a processor consumer's filter.
pub fn submit_filter(kind: &Kind, priority: Priority) -> String {
    match priority {
        Priority::Normal => format!("jobs.submit.{kind}.*"),
        other => format!("jobs.submit.{kind}.*.{}", other.as_str()),
    }
}
pub const SUBMIT_ALL: &str = "jobs.submit.>";

/// Kind and job id from a `jobs.submit.<kind>.<id>` subject.
pub fn parse_submit(subject: &str) -> (Option<Kind>, Option<JobId>) {
    let mut tokens = subject
        .strip_prefix("jobs.submit.")
        .unwrap_or("")
        .split('.');
    let kind = tokens.next().and_then(|k| Kind::new(k).ok());
    let id = tokens.next().and_then(|id| id.parse().ok());
    (kind, id)
}

/// `jobs.events.<kind>.<id>`: every change to a job, on stream `JOB_EVENTS`.
pub fn event(kind: &Kind, id: JobId) -> String {
    format!("jobs.events.{kind}.{id}")
}
pub const EVENTS_ALL: &str = "jobs.events.>";
/// The jobs' own event subjects only, without webhook records: the notifier's filter.
pub const EVENTS_JOBS_ONLY: &str = "jobs.events.*.*";

/// `jobs.events.<kind>.<id>.progress`: a running job's progress reports, in `JOB_EVENTS`
/// but off the job's own subject. They are sent without a fence (a lost one is superseded
/// by the next), so on the job's subject they could stand between a writer and its fence;
/// here they never can.
pub fn progress(kind: &Kind, id: JobId) -> String {
    format!("jobs.events.{kind}.{id}.progress")
}
/// Every job's progress reports: with [`EVENTS_JOBS_ONLY`], what the notifier delivers.
pub const EVENTS_PROGRESS: &str = "jobs.events.*.*.progress";

/// `jobs.events.<kind>.<id>.webhook`: the notifier's delivery records, in `JOB_EVENTS`
/// (so the status service projects them) but off the job's own subject, on which
/// processors and the gateway fence their writes.
pub fn webhook_record(kind: &Kind, id: JobId) -> String {
    format!("jobs.events.{kind}.{id}.webhook")
}

/// `jobs.dead.<kind>.<id>`: a job that failed for good, on stream `JOBS_DEAD`, with its
/// original request as the payload (what `POST /v1/jobs/{id}/retry` re-enqueues).
pub fn dead(kind: &Kind, id: JobId) -> String {
    format!("jobs.dead.{kind}.{id}")
}
/// Where a message goes that is not a job request at all (and so names no job).
pub fn dead_undecodable(kind: &Kind) -> String {
    format!("jobs.dead.{kind}.undecodable")
}
pub const DEAD_ALL: &str = "jobs.dead.>";

/// `jobs.index.<kind>.<id>`: a job's entry in `JOBS_INDEX`, written once when it is
/// created (`{"id", "kind", "created_at"}`); listing pages over them newest first.
pub fn index(kind: &Kind, id: JobId) -> String {
    format!("jobs.index.{kind}.{id}")
}
pub const INDEX_ALL: &str = "jobs.index.>";

/// `jobs.cancel.<kind>.<id>`: plain NATS (no stream). After a job's `cancelled` event is
/// stored, the gateway tells the processors here, so a running handler stops at once.
/// Losing this message costs only time: the job's outcome can no longer be recorded.
pub fn cancel(kind: &Kind, id: JobId) -> String {
    format!("jobs.cancel.{kind}.{id}")
}
/// The cancellations of one kind, which its processors listen to.
pub fn cancel_filter(kind: &Kind) -> String {
    format!("jobs.cancel.{kind}.*")
}

/// `jobs.at.<kind>.<id>`: a delayed job's schedule in `JOBS_SCHEDULES`, with its request
/// as the body. The server keeps time: at `run_at` it publishes the body to
/// [`due`] and removes the schedule (ADR-51 `@at`).
pub fn delayed(kind: &Kind, id: JobId) -> String {
    format!("jobs.at.{kind}.{id}")
}
/// `jobs.due.<kind>.<id>`: a delayed job whose time came, for the scheduler to queue.
pub fn due(kind: &Kind, id: JobId) -> String {
    format!("jobs.due.{kind}.{id}")
}
/// `jobs.expiry.<kind>.<id>`: a job's expiry, a schedule that fires at `expires_at` into
/// [`expired`].
pub fn expiry(kind: &Kind, id: JobId) -> String {
    format!("jobs.expiry.{kind}.{id}")
}
/// `jobs.expired.<kind>.<id>`: a job's expiry came, for the scheduler to cancel it if it
/// has not started.
pub fn expired(kind: &Kind, id: JobId) -> String {
    format!("jobs.expired.{kind}.{id}")
}
/// `jobs.cron.<name>`: a recurring schedule (cron or `@every`), with the job it makes as
/// the body; it fires into [`fire`].
pub fn cron(name: &str) -> String {
    format!("jobs.cron.{name}")
}
/// `jobs.fire.<name>`: one firing of a recurring schedule, for the scheduler to turn into
/// a job.
pub fn fire(name: &str) -> String {
    format!("jobs.fire.{name}")
}
/// Everything in `JOBS_SCHEDULES`: the schedules, and where they fire.
pub const SCHEDULES_ALL: [&str; 6] = [
    "jobs.at.>",
    "jobs.due.>",
    "jobs.expiry.>",
    "jobs.expired.>",
    "jobs.cron.>",
    "jobs.fire.>",
];
/// What the scheduler consumes: the firings, never the schedules (on a work-queue
/// stream, acking a schedule would delete it).
pub const FIRED: [&str; 3] = ["jobs.due.>", "jobs.expired.>", "jobs.fire.>"];

pub mod headers {
    /// JetStream deduplication id: the job id on `JOBS`, `<id>.<type>.<attempt>` on `JOB_EVENTS`.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// The job kind, so tools can route or filter without parsing the payload.
    pub const KIND: &str = "Jetjobs-Kind";
    /// The job id, on every message about a job.
    pub const JOB_ID: &str = "Jetjobs-Job-Id";
    /// Optimistic concurrency on a job's event subject: the event is stored only if the
    /// subject's last message is the one its writer last saw.
    pub const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    /// ADR-51 message schedules (nats-server 2.12+; cron and `@every` 2.14+).
    pub const SCHEDULE: &str = "Nats-Schedule";
    pub const SCHEDULE_TARGET: &str = "Nats-Schedule-Target";
    pub const SCHEDULE_TIME_ZONE: &str = "Nats-Schedule-Time-Zone";
    /// On a firing: the next firing's time (RFC 3339), or `purge` for a one-shot.
    pub const SCHEDULE_NEXT: &str = "Nats-Schedule-Next";
    /// On a firing: the subject of the schedule that fired.
    pub const SCHEDULER: &str = "Nats-Scheduler";
}
