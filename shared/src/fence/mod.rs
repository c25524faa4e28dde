//! The fence: which writer gets to record a job's next event.
//!
//! Every write that changes a job — a run's `started`, its outcome, a cancellation, a
//! retry's `requeued` — goes to the job's own subject `jobs.events.<kind>.<id>` with
//! `Nats-Expected-Last-Subject-Sequence`: the stream stores it only if the subject's last
//! event is still the one its writer last saw. Nothing else is ever written there
//! (progress reports and webhook records have subjects of their own), so a refused write
//! always means another writer who had seen this one's event came in between.
//!
//! This module holds the decisions, as pure functions over what the stream says, so they
//! can be tested on their own and explored by the model test; `protocol` does the I/O.

use crate::job::JobRequest;
use crate::state::{Change, JobEvent};

/// A writer's claim on a job: the attempt it writes for, and the sequence of the last
/// event on the job's subject that it knows of (0: the subject is empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub attempt: u32,
    pub seq: u64,
}

/// Why a fenced write was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Superseded {
    /// The job already ended: another run's outcome or a cancellation was stored first.
    Finished,
    /// Someone who had seen this writer's last event wrote after it: a newer run (a later
    /// delivery of the job) took it over.
    Taken,
}

/// What to do after a fenced write was refused, given the subject's last event now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// The write is in fact stored, at this sequence: its PubAck was lost and the retry
    /// came after the duplicate window, so the stream saw it as a new write.
    Recorded(u64),
    /// The subject is empty now (its events aged out): write again, expecting that.
    Retry(u64),
    /// Drop the write.
    Superseded(Superseded),
}

/// Decides what a refused write of `mine` means. `last` is the job subject's last event
/// and its sequence, read after the refusal.
pub fn on_conflict(mine: &JobEvent, last: Option<(u64, &JobEvent)>) -> Conflict {
    match last {
        None => Conflict::Retry(0),
        Some((seq, last)) if last.msg_id() == mine.msg_id() => Conflict::Recorded(seq),
        Some((_, last)) if last.change.is_terminal() => Conflict::Superseded(Superseded::Finished),
        Some(_) => Conflict::Superseded(Superseded::Taken),
    }
}

/// What a processor does with a delivery of a job, given the job subject's last event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Run it as `fence.attempt`, claiming the run on `fence.seq`. With `requeue`, this
    /// delivery is a retry of the failure at `fence.seq` (`POST /retry` queued it), and the
    /// run first records `requeued` for attempt `fence.attempt - 1`.
    Run { fence: Fence, requeue: bool },
    /// The job's outcome is recorded; only the ack of an earlier delivery was lost. With
    /// `failed_at`, it failed at that attempt, and its dead letter must exist before the
    /// delivery is acked (the run that failed it may have died before writing it).
    Finished { failed_at: Option<u32> },
}

/// Decides what a delivery of `request` does. Runs are counted from the job's events,
/// not from JetStream's delivery count, so a job handed back on shutdown does not use up
/// an attempt.
pub fn plan(request: &JobRequest, last: Option<(u64, &JobEvent)>) -> Plan {
    let Some((seq, last)) = last else {
        return Plan::Run {
            fence: Fence {
                attempt: request.prior_attempts.saturating_add(1),
                seq: 0,
            },
            requeue: false,
        };
    };
    match &last.change {
        // A retry's message carries the attempt it continues from: this failure, so it
        // reopens the job. A redelivery of the message that failed (or of an older
        // retry) carries fewer, and finds the job finished.
        Change::Failed { .. } if request.prior_attempts >= last.attempt => Plan::Run {
            fence: Fence {
                attempt: last.attempt.saturating_add(1),
                seq,
            },
            requeue: true,
        },
        Change::Failed { .. } => Plan::Finished {
            failed_at: Some(last.attempt),
        },
        change if change.is_terminal() => Plan::Finished { failed_at: None },
        _ => Plan::Run {
            fence: Fence {
                attempt: last.attempt.saturating_add(1),
                seq,
            },
            requeue: false,
        },
    }
}

/// Whether a delivery may skip reading the job's events: a first delivery of a job that
/// was never run has none (a `Nats-Expected-Last-Subject-Sequence` of 0 checks it). A
/// delayed job has one, its `queued`, written when it left the schedule.
pub fn needs_lookup(request: &JobRequest, delivered: u64) -> bool {
    delivered > 1 || request.prior_attempts > 0 || request.scheduling.run_at.is_some()
}

#[cfg(test)]
mod model;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobId, Kind, now};

    fn request(prior_attempts: u32) -> JobRequest {
        JobRequest {
            id: JobId::new_v7(),
            kind: Kind::new("noop").expect("valid"),
            payload: serde_json::Value::Null,
            max_attempts: 3,
            timeout_secs: None,
            created_at: now(),
            prior_attempts,
            callback_url: None,
            callback_events: None,
            scheduling: Default::default(),
        }
    }

    fn event(request: &JobRequest, attempt: u32, change: Change) -> JobEvent {
        JobEvent::new(request, attempt, change)
    }

    fn failed() -> Change {
        Change::Failed {
            error: "boom".into(),
        }
    }

    #[test]
    fn a_new_job_runs_first_attempt_on_an_empty_subject() {
        let r = request(0);
        assert_eq!(
            plan(&r, None),
            Plan::Run {
                fence: Fence { attempt: 1, seq: 0 },
                requeue: false
            }
        );
        assert!(!needs_lookup(&r, 1));
        assert!(needs_lookup(&r, 2));
        assert!(needs_lookup(&request(3), 1));
    }

    #[test]
    fn a_delayed_job_runs_its_first_attempt_after_its_queued_event() {
        let mut r = request(0);
        r.scheduling.run_at = Some(now());
        // Its first delivery already has an event (`queued`, from the scheduler): a
        // claim on an empty subject would be refused and the job never run.
        assert!(needs_lookup(&r, 1));
        let queued = event(&r, 0, Change::Queued);
        assert_eq!(
            plan(&r, Some((4, &queued))),
            Plan::Run {
                fence: Fence { attempt: 1, seq: 4 },
                requeue: false
            }
        );
    }

    #[test]
    fn a_redelivery_continues_after_the_last_run() {
        let r = request(0);
        let started = event(&r, 1, Change::Started);
        assert_eq!(
            plan(&r, Some((7, &started))),
            Plan::Run {
                fence: Fence { attempt: 2, seq: 7 },
                requeue: false
            }
        );
    }

    #[test]
    fn a_finished_job_is_only_acked_and_a_failed_one_keeps_its_dead_letter() {
        let r = request(0);
        let done = event(
            &r,
            1,
            Change::Succeeded {
                result: serde_json::json!({}),
                result_ref: None,
            },
        );
        assert_eq!(
            plan(&r, Some((3, &done))),
            Plan::Finished { failed_at: None }
        );
        let cancelled = event(
            &r,
            0,
            Change::Cancelled {
                reason: "client".into(),
            },
        );
        assert_eq!(
            plan(&r, Some((1, &cancelled))),
            Plan::Finished { failed_at: None }
        );
        let dead = event(&r, 3, failed());
        assert_eq!(
            plan(&r, Some((9, &dead))),
            Plan::Finished { failed_at: Some(3) }
        );
    }

    #[test]
    fn a_retry_message_reopens_exactly_the_failure_it_was_made_for() {
        let original = request(0);
        let dead = event(&original, 3, failed());
        let retry = JobRequest {
            prior_attempts: 3,
            ..original.clone()
        };
        assert_eq!(
            plan(&retry, Some((9, &dead))),
            Plan::Run {
                fence: Fence { attempt: 4, seq: 9 },
                requeue: true
            }
        );
        // The retry failed again: its own redelivery must not reopen the job.
        let dead_again = event(&retry, 6, failed());
        assert_eq!(
            plan(&retry, Some((20, &dead_again))),
            Plan::Finished { failed_at: Some(6) }
        );
    }

    #[test]
    fn a_refused_write_is_dropped_unless_it_is_in_fact_stored() {
        let r = request(0);
        let mine = event(
            &r,
            1,
            Change::Succeeded {
                result: serde_json::json!(1),
                result_ref: None,
            },
        );
        assert_eq!(on_conflict(&mine, Some((5, &mine))), Conflict::Recorded(5));
        let cancelled = event(
            &r,
            1,
            Change::Cancelled {
                reason: "client".into(),
            },
        );
        assert_eq!(
            on_conflict(&mine, Some((5, &cancelled))),
            Conflict::Superseded(Superseded::Finished)
        );
        let newer = event(&r, 2, Change::Started);
        assert_eq!(
            on_conflict(&mine, Some((6, &newer))),
            Conflict::Superseded(Superseded::Taken)
        );
        assert_eq!(on_conflict(&mine, None), Conflict::Retry(0));
    }
}
