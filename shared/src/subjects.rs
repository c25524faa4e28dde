//! Subject, header and object names: the wire contract between services.
//!
//! Subjects are lower case, namespace first, identifiers last, so an operator can
//! filter with wildcards: `nats sub 'jobs.events.hash.>'`.

use crate::job::{JobId, Kind};

/// `jobs.submit.<kind>`: job requests, on stream `JOBS`.
pub fn submit(kind: &Kind) -> String {
    format!("jobs.submit.{kind}")
}
pub const SUBMIT_ALL: &str = "jobs.submit.>";

/// `jobs.events.<kind>.<id>`: every change to a job, on stream `JOB_EVENTS`.
pub fn event(kind: &Kind, id: JobId) -> String {
    format!("jobs.events.{kind}.{id}")
}
pub const EVENTS_ALL: &str = "jobs.events.>";

/// `jobs.dead.<kind>`: jobs that exhausted their attempts, on stream `JOBS_DEAD`.
pub fn dead(kind: &Kind) -> String {
    format!("jobs.dead.{kind}")
}
pub const DEAD_ALL: &str = "jobs.dead.>";

pub mod headers {
    /// JetStream deduplication id: the job id on `JOBS`, `<id>.<type>.<attempt>` on `JOB_EVENTS`.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// The job kind, so tools can route or filter without parsing the payload.
    pub const KIND: &str = "Jetjobs-Kind";
    /// The job id, on every message about a job.
    pub const JOB_ID: &str = "Jetjobs-Job-Id";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
}
