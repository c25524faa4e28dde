//! Per-job bookkeeping: which jobs are out, when each was sent, and when it finished.
//! Pure and synchronous, so the awkward orderings can be tested without a gateway.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use jetjobs::JobState;
use uuid::Uuid;

use crate::report::{Percentiles, Summary};

/// Latencies are recorded in microseconds, up to an hour, to 3 significant digits.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;
/// Error examples keep the start of the message: enough to tell causes apart.
const EXAMPLE_CHARS: usize = 200;

/// The answer to one submit request.
#[derive(Clone, Debug)]
pub struct Submitted {
    pub sent_at: Instant,
    pub received_at: Instant,
    pub outcome: Result<Accepted, SubmitError>,
}

/// A job the gateway took, as its `202` body describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Accepted {
    pub id: Uuid,
    pub state: JobState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The gateway answered with a non-success status.
    Status { status: u16, body: String },
    /// No answer: connection refused or reset, timeout.
    Transport(String),
    /// A success status whose body is not a job snapshot.
    InvalidBody(String),
}

impl SubmitError {
    /// How errors are grouped in the report.
    pub fn key(&self) -> String {
        match self {
            Self::Status { status, .. } => status.to_string(),
            Self::Transport(_) => "transport".to_string(),
            Self::InvalidBody(_) => "invalid_body".to_string(),
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Status { body, .. } => body,
            Self::Transport(message) | Self::InvalidBody(message) => message,
        }
    }
}

/// A terminal `job_status` entry, stamped when the watcher saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Terminal {
    pub id: Uuid,
    pub state: JobState,
    pub seen_at: Instant,
}

enum Job {
    /// Accepted, not finished yet.
    Pending {
        sent_at: Instant,
    },
    /// Finished before its submit answer arrived (or not one of ours: another client's).
    SeenFirst {
        state: JobState,
        seen_at: Instant,
    },
    Done,
}

pub struct Tracker {
    jobs: HashMap<Uuid, Job>,
    submit_us: Histogram<u64>,
    e2e_us: Histogram<u64>,
    answered: u64,
    accepted: u64,
    pending: u64,
    succeeded: u64,
    failed: u64,
    other: u64,
    http_errors: BTreeMap<String, u64>,
    error_examples: BTreeMap<String, String>,
    last_answer: Option<Instant>,
    last_done: Option<Instant>,
}

impl Tracker {
    pub fn new(expected_jobs: u64) -> Self {
        let histogram = || {
            // Constant, valid bounds: creation cannot fail.
            #[allow(clippy::expect_used)]
            Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds")
        };
        Self {
            jobs: HashMap::with_capacity(usize::try_from(expected_jobs).unwrap_or(0).min(1 << 20)),
            submit_us: histogram(),
            e2e_us: histogram(),
            answered: 0,
            accepted: 0,
            pending: 0,
            succeeded: 0,
            failed: 0,
            other: 0,
            http_errors: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            last_answer: None,
            last_done: None,
        }
    }

    pub fn on_submitted(&mut self, submitted: Submitted) {
        self.answered += 1;
        self.last_answer = later(self.last_answer, submitted.received_at);
        self.submit_us.saturating_record(micros(
            submitted
                .received_at
                .saturating_duration_since(submitted.sent_at),
        ));
        let accepted = match submitted.outcome {
            Ok(accepted) => accepted,
            Err(error) => {
                let key = error.key();
                *self.http_errors.entry(key.clone()).or_default() += 1;
                self.error_examples
                    .entry(key)
                    .or_insert_with(|| error.message().chars().take(EXAMPLE_CHARS).collect());
                return;
            }
        };
        self.accepted += 1;
        let sent_at = submitted.sent_at;
        let finished = match self.jobs.remove(&accepted.id) {
            Some(Job::SeenFirst { state, seen_at }) => Some((state, seen_at)),
            // The same id twice (a gateway bug): track the job once; the run then ends
            // incomplete, since fewer distinct jobs than requested ran.
            Some(existing @ (Job::Done | Job::Pending { .. })) => {
                self.jobs.insert(accepted.id, existing);
                return;
            }
            None => None,
        };
        // A fast job can be terminal in the 202 body already.
        let finished = finished.or_else(|| {
            accepted
                .state
                .is_terminal()
                .then_some((accepted.state, submitted.received_at))
        });
        match finished {
            Some((state, at)) => self.finish(accepted.id, state, sent_at, at),
            None => {
                self.pending += 1;
                self.jobs.insert(accepted.id, Job::Pending { sent_at });
            }
        }
    }

    pub fn on_terminal(&mut self, terminal: Terminal) {
        match self.jobs.get(&terminal.id) {
            Some(&Job::Pending { sent_at }) => {
                self.pending -= 1;
                self.finish(terminal.id, terminal.state, sent_at, terminal.seen_at);
            }
            // Terminal states are final; a repeated entry changes nothing.
            Some(Job::Done | Job::SeenFirst { .. }) => {}
            None => {
                self.jobs.insert(
                    terminal.id,
                    Job::SeenFirst {
                        state: terminal.state,
                        seen_at: terminal.seen_at,
                    },
                );
            }
        }
    }

    fn finish(&mut self, id: Uuid, state: JobState, sent_at: Instant, at: Instant) {
        self.jobs.insert(id, Job::Done);
        self.e2e_us
            .saturating_record(micros(at.saturating_duration_since(sent_at)));
        self.last_done = later(self.last_done, at);
        match state {
            JobState::Succeeded => self.succeeded += 1,
            JobState::Failed => self.failed += 1,
            _ => self.other += 1,
        }
    }

    /// Submit requests answered, successfully or not.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    pub fn errors(&self) -> u64 {
        self.answered - self.accepted
    }

    pub fn done(&self) -> u64 {
        self.succeeded + self.failed + self.other
    }

    /// Every request answered, and every accepted job finished.
    pub fn all_settled(&self, jobs: u64) -> bool {
        self.answered >= jobs && self.pending == 0
    }

    /// The numbers so far. `started` is when the first request was sent, `ended` when the run stopped.
    pub fn summary(&self, run: RunInfo, started: Instant, ended: Instant) -> Summary {
        let secs = |until: Option<Instant>| {
            until.map_or(0.0, |t| t.saturating_duration_since(started).as_secs_f64())
        };
        let rate = |count: u64, secs: f64| if secs > 0.0 { count as f64 / secs } else { 0.0 };
        let submit_secs = secs(self.last_answer);
        let e2e_secs = secs(self.last_done);
        let done = self.done();
        Summary {
            kind: run.kind,
            jobs: run.jobs,
            concurrency: run.concurrency,
            wall_secs: ended.saturating_duration_since(started).as_secs_f64(),
            accepted: self.accepted,
            submit_errors: self.errors(),
            submit_secs,
            submit_throughput: rate(self.accepted, submit_secs),
            done,
            e2e_secs,
            e2e_throughput: rate(done, e2e_secs),
            succeeded: self.succeeded,
            failed: self.failed,
            other: self.other,
            pending: self.pending,
            not_submitted: run.jobs.saturating_sub(self.answered),
            complete: if run.submit_only {
                self.accepted == run.jobs
            } else {
                done == run.jobs
            },
            stopped_by: run.stopped_by,
            submit_latency_ms: Percentiles::from_micros(&self.submit_us),
            e2e_latency_ms: Percentiles::from_micros(&self.e2e_us),
            http_errors: self.http_errors.clone(),
            error_examples: self.error_examples.clone(),
        }
    }
}

/// What the summary says about the run besides the measurements.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub kind: String,
    pub jobs: u64,
    pub concurrency: usize,
    /// The run did not wait for the jobs to finish (`--submit-only`).
    pub submit_only: bool,
    /// Why the run ended before every job settled, if it did.
    pub stopped_by: Option<String>,
}

fn later(current: Option<Instant>, candidate: Instant) -> Option<Instant> {
    Some(current.map_or(candidate, |c| c.max(candidate)))
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Histograms keep 3 significant digits: a value comes back within 0.1%.
    fn assert_close(got: f64, exact: f64) {
        assert!(
            (got - exact).abs() <= exact / 1000.0,
            "{got} is not {exact}"
        );
    }

    fn info(jobs: u64) -> RunInfo {
        RunInfo {
            kind: "noop".to_string(),
            jobs,
            concurrency: 2,
            submit_only: false,
            stopped_by: None,
        }
    }

    fn ms(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn accepted(id: Uuid, state: JobState, sent_at: Instant, received_at: Instant) -> Submitted {
        Submitted {
            sent_at,
            received_at,
            outcome: Ok(Accepted { id, state }),
        }
    }

    #[test]
    fn measures_submit_and_end_to_end_latency() {
        let t0 = Instant::now();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut tracker = Tracker::new(2);
        tracker.on_submitted(accepted(a, JobState::Queued, t0, ms(t0, 2)));
        tracker.on_submitted(accepted(b, JobState::Queued, ms(t0, 1), ms(t0, 5)));
        assert!(!tracker.all_settled(2));
        tracker.on_terminal(Terminal {
            id: a,
            state: JobState::Succeeded,
            seen_at: ms(t0, 10),
        });
        tracker.on_terminal(Terminal {
            id: b,
            state: JobState::Failed,
            seen_at: ms(t0, 21),
        });
        assert!(tracker.all_settled(2));

        let summary = tracker.summary(info(2), t0, ms(t0, 25));
        assert_eq!((summary.accepted, summary.done, summary.pending), (2, 2, 0));
        assert_eq!(
            (summary.succeeded, summary.failed, summary.other),
            (1, 1, 0)
        );
        assert!(summary.complete);
        assert_eq!(summary.submit_latency_ms.count, 2);
        assert_close(summary.submit_latency_ms.p50, 2.0);
        assert_close(summary.submit_latency_ms.max, 4.0);
        assert_close(summary.e2e_latency_ms.p50, 10.0);
        assert_close(summary.e2e_latency_ms.max, 20.0);
        assert_eq!(summary.submit_secs, 0.005);
        assert_eq!(summary.e2e_secs, 0.021);
        assert_eq!(summary.wall_secs, 0.025);
        assert!((summary.e2e_throughput - 2.0 / 0.021).abs() < 1e-9);
    }

    #[test]
    fn a_job_can_finish_before_its_submit_answer_arrives() {
        let t0 = Instant::now();
        let id = Uuid::now_v7();
        let mut tracker = Tracker::new(1);
        tracker.on_terminal(Terminal {
            id,
            state: JobState::Succeeded,
            seen_at: ms(t0, 3),
        });
        assert!(!tracker.all_settled(1), "the request is not answered yet");
        tracker.on_submitted(accepted(id, JobState::Queued, t0, ms(t0, 4)));
        assert!(tracker.all_settled(1));
        let summary = tracker.summary(info(1), t0, ms(t0, 4));
        assert_eq!((summary.succeeded, summary.pending), (1, 0));
        assert_close(summary.e2e_latency_ms.max, 3.0);
    }

    #[test]
    fn a_terminal_202_body_counts_and_later_entries_do_not_count_twice() {
        let t0 = Instant::now();
        let id = Uuid::now_v7();
        let mut tracker = Tracker::new(1);
        tracker.on_submitted(accepted(id, JobState::Succeeded, t0, ms(t0, 7)));
        assert!(tracker.all_settled(1));
        tracker.on_terminal(Terminal {
            id,
            state: JobState::Succeeded,
            seen_at: ms(t0, 9),
        });
        let summary = tracker.summary(info(1), t0, ms(t0, 9));
        assert_eq!((summary.done, summary.succeeded), (1, 1));
        assert_close(summary.e2e_latency_ms.max, 7.0);
    }

    #[test]
    fn other_clients_jobs_are_ignored() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(1);
        tracker.on_terminal(Terminal {
            id: Uuid::now_v7(),
            state: JobState::Failed,
            seen_at: t0,
        });
        assert_eq!(tracker.done(), 0);
    }

    #[test]
    fn errors_are_grouped_and_the_run_is_incomplete() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(3);
        let error = |outcome| Submitted {
            sent_at: t0,
            received_at: ms(t0, 1),
            outcome: Err(outcome),
        };
        tracker.on_submitted(error(SubmitError::Status {
            status: 503,
            body: "queue full".into(),
        }));
        tracker.on_submitted(error(SubmitError::Status {
            status: 503,
            body: "still full".into(),
        }));
        tracker.on_submitted(error(SubmitError::Transport("connection refused".into())));
        assert!(tracker.all_settled(3));
        let summary = tracker.summary(info(3), t0, ms(t0, 1));
        assert!(!summary.complete);
        assert_eq!(summary.submit_errors, 3);
        assert_eq!(summary.http_errors.get("503"), Some(&2));
        assert_eq!(summary.http_errors.get("transport"), Some(&1));
        assert_eq!(
            summary.error_examples.get("503").map(String::as_str),
            Some("queue full")
        );
        assert_eq!(summary.e2e_latency_ms.count, 0);
        assert_eq!(summary.e2e_throughput, 0.0);
    }
}
