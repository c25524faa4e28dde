//! The fence, explored: random interleavings of several deliveries of one job (a frozen
//! worker and its redeliveries), a client's cancel and retry, lost PubAcks, lost acks and
//! dead letters that fail to store, run against a model of the job's subject that
//! behaves as JetStream does (`Nats-Msg-Id` deduplication first, then
//! `Nats-Expected-Last-Subject-Sequence`). Every decision is the runtime's own:
//! [`plan`], [`needs_lookup`] and [`on_conflict`].
//!
//! Progress reports and webhook records are not in the model because they are not on
//! the job's subject (`protocol::event_subject`, tested there): they cannot move a fence.
//!
//! Checked after every step: at most one terminal event per run series, never an event
//! after a terminal one except the `requeued` of a retry of a `failed` job, and a settled
//! (acked) failure always has its dead letter. Checked at the end, once faults stop:
//! every job reaches a terminal event and its message is settled.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::{Conflict, Fence, Plan, needs_lookup, on_conflict, plan};
use crate::job::{JobId, JobRequest, Kind, now};
use crate::state::{Change, JobEvent};

/// The job's subject in `JOB_EVENTS`.
#[derive(Default)]
struct Subject {
    events: Vec<JobEvent>,
    /// `Nats-Msg-Id` → sequence, while inside the duplicate window.
    window: HashMap<String, u64>,
}

enum Write {
    Stored(u64),
    WrongLast,
}

impl Subject {
    fn last(&self) -> Option<(u64, &JobEvent)> {
        self.events.last().map(|e| (self.events.len() as u64, e))
    }

    fn publish(&mut self, event: &JobEvent, expected: u64) -> Write {
        if let Some(seq) = self.window.get(&event.msg_id()) {
            return Write::Stored(*seq);
        }
        if self.events.len() as u64 != expected {
            return Write::WrongLast;
        }
        self.events.push(event.clone());
        let seq = self.events.len() as u64;
        self.window.insert(event.msg_id(), seq);
        Write::Stored(seq)
    }
}

/// The `JOBS` message of the job (one per job): which request it carries and whether a
/// delivery of it is still unsettled.
struct Queue {
    request: Option<JobRequest>,
    deliveries: u64,
    /// Which message: a retry publishes a new one, and an ack of a delivery of the old
    /// one (a worker that was still holding it) settles only the old one.
    message: u64,
}

#[derive(Clone, Copy, Debug)]
enum Stage {
    Fresh,
    Requeue,
    Start,
    Running,
    Done,
}

struct Worker {
    request: JobRequest,
    message: u64,
    delivered: u64,
    fence: Fence,
    stage: Stage,
}

/// What one step of the exploration does; the numbers pick among the live workers and
/// the possible outcomes.
#[derive(Clone, Debug)]
enum Step {
    Advance { worker: usize, choice: u8 },
    Redeliver,
    Cancel,
    Retry,
    ForgetDuplicates,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..4, any::<u8>()).prop_map(|(worker, choice)| Step::Advance { worker, choice }),
        2 => Just(Step::Redeliver),
        1 => Just(Step::Cancel),
        1 => Just(Step::Retry),
        1 => Just(Step::ForgetDuplicates),
    ]
}

struct World {
    subject: Subject,
    queue: Queue,
    workers: Vec<Worker>,
    dead_letters: HashSet<u32>,
    /// Settled: the current message was acked (or terminated).
    settled: bool,
    /// Faults allowed (off for the final run to completion).
    faults: bool,
}

/// A fenced write exactly as `protocol::EventLog::write_fenced` does it.
fn write_fenced(subject: &mut Subject, event: &JobEvent, seq: &mut u64) -> Result<(), ()> {
    for _ in 0..2 {
        match subject.publish(event, *seq) {
            Write::Stored(stored) => {
                *seq = stored;
                return Ok(());
            }
            Write::WrongLast => {}
        }
        match on_conflict(event, subject.last()) {
            Conflict::Recorded(stored) => {
                *seq = stored;
                return Ok(());
            }
            Conflict::Retry(expected) => *seq = expected,
            Conflict::Superseded(_) => return Err(()),
        }
    }
    Err(())
}

impl World {
    fn new(request: JobRequest) -> Self {
        let mut world = Self {
            subject: Subject::default(),
            queue: Queue {
                request: None,
                deliveries: 0,
                message: 0,
            },
            workers: Vec::new(),
            dead_letters: HashSet::new(),
            settled: false,
            faults: true,
        };
        world.enqueue(request);
        world
    }

    fn enqueue(&mut self, request: JobRequest) {
        self.queue = Queue {
            request: Some(request),
            deliveries: 0,
            message: self.queue.message + 1,
        };
        self.settled = false;
        self.deliver();
    }

    fn deliver(&mut self) {
        let Some(request) = self.queue.request.clone() else {
            return;
        };
        if self.settled {
            return;
        }
        self.queue.deliveries += 1;
        self.workers.push(Worker {
            request,
            message: self.queue.message,
            delivered: self.queue.deliveries,
            fence: Fence { attempt: 0, seq: 0 },
            stage: Stage::Fresh,
        });
    }

    /// Worker `i` acks (or terminates) the delivery it holds.
    fn ack(&mut self, i: usize) {
        if self.workers[i].message == self.queue.message {
            self.settled = true;
        }
    }

    /// A delivery that found (or lost to) an ended job, as the runtime's
    /// `settle_finished`: a failure's dead letter must exist before the ack. A job taken
    /// over by a newer run is that run's to settle.
    fn settle_finished(&mut self, i: usize, choice: u8) {
        let Some((_, last)) = self.subject.last() else {
            return;
        };
        if !last.change.is_terminal() {
            return;
        }
        if let Change::Failed { .. } = last.change {
            let attempt = last.attempt;
            if self.lost(choice, 0b100) {
                return; // the dead letter did not store: stays unacked
            }
            self.dead_letters.insert(attempt);
        }
        if !self.lost(choice, 0b10) {
            self.ack(i);
        }
    }

    /// A lost PubAck or ack, when faults are on and the choice says so.
    fn lost(&self, choice: u8, bit: u8) -> bool {
        self.faults && choice & bit != 0
    }

    fn step_worker(&mut self, index: usize, choice: u8) {
        let live: Vec<usize> = (0..self.workers.len())
            .filter(|&i| !matches!(self.workers[i].stage, Stage::Done))
            .collect();
        if live.is_empty() {
            return;
        }
        let i = live[index % live.len()];
        let stage = self.workers[i].stage;
        match stage {
            Stage::Fresh => {
                let w = &self.workers[i];
                let last = if needs_lookup(&w.request, w.delivered) {
                    self.subject.last().map(|(s, e)| (s, e.clone()))
                } else {
                    None
                };
                match plan(&w.request, last.as_ref().map(|(s, e)| (*s, e))) {
                    Plan::Run { fence, requeue } => {
                        let w = &mut self.workers[i];
                        w.fence = fence;
                        w.stage = if requeue {
                            Stage::Requeue
                        } else {
                            Stage::Start
                        };
                    }
                    Plan::Finished { .. } => {
                        self.workers[i].stage = Stage::Done;
                        self.settle_finished(i, choice);
                    }
                }
            }
            Stage::Requeue | Stage::Start => {
                let w = &self.workers[i];
                let event = if matches!(stage, Stage::Requeue) {
                    JobEvent::new(&w.request, w.fence.attempt - 1, Change::Requeued)
                } else {
                    JobEvent::new(&w.request, w.fence.attempt, Change::Started)
                };
                if w.fence.attempt > w.request.max_attempts {
                    return self.outcome(i, choice, Outcome::Fail);
                }
                let mut seq = w.fence.seq;
                let written = write_fenced(&mut self.subject, &event, &mut seq);
                let w = &mut self.workers[i];
                match written {
                    Ok(()) if self.faults && choice & 0b1 != 0 => w.stage = Stage::Done, // PubAck lost
                    Ok(()) => {
                        w.fence.seq = seq;
                        w.stage = if matches!(stage, Stage::Requeue) {
                            Stage::Start
                        } else {
                            Stage::Running
                        };
                    }
                    Err(()) => {
                        w.stage = Stage::Done;
                        self.settle_finished(i, choice);
                    }
                }
            }
            Stage::Running => {
                let outcome = match (choice >> 4) % 3 {
                    _ if !self.faults => Outcome::Succeed,
                    0 => Outcome::Succeed,
                    1 => Outcome::Retry,
                    _ => Outcome::Fail,
                };
                self.outcome(i, choice, outcome);
            }
            Stage::Done => {}
        }
    }

    fn outcome(&mut self, i: usize, choice: u8, outcome: Outcome) {
        let w = &self.workers[i];
        let attempt = w.fence.attempt;
        let outcome = match outcome {
            Outcome::Retry if attempt >= w.request.max_attempts => Outcome::Fail,
            other => other,
        };
        let change = match outcome {
            Outcome::Succeed => Change::Succeeded {
                result: serde_json::json!(attempt),
                result_ref: None,
            },
            Outcome::Retry => Change::Retrying {
                error: "again".into(),
                retry_in_ms: 1,
            },
            Outcome::Fail => Change::Failed { error: "no".into() },
        };
        let event = JobEvent::new(&w.request, attempt, change);
        let mut seq = w.fence.seq;
        let written = write_fenced(&mut self.subject, &event, &mut seq);
        self.workers[i].stage = Stage::Done;
        match written {
            Ok(()) if self.lost(choice, 0b1) => {} // PubAck lost: unacked, redelivered
            Ok(()) => match outcome {
                Outcome::Succeed => {
                    if !self.lost(choice, 0b10) {
                        self.ack(i);
                    }
                }
                // A nak: the message is delivered again (a nak of a message already
                // acked, one a retry replaced, does nothing).
                Outcome::Retry => {
                    if self.workers[i].message == self.queue.message {
                        self.deliver();
                    }
                }
                Outcome::Fail => {
                    if self.lost(choice, 0b100) {
                        return;
                    }
                    self.dead_letters.insert(attempt);
                    if !self.lost(choice, 0b10) {
                        self.ack(i);
                    }
                }
            },
            Err(()) => self.settle_finished(i, choice),
        }
    }

    /// The gateway's `DELETE`: read, refuse if ended, write `cancelled` fenced.
    fn cancel(&mut self, id: JobId) {
        for _ in 0..5 {
            let Some((seq, last)) = self.subject.last().map(|(s, e)| (s, e.clone())) else {
                let request = self.queue.request.clone().unwrap_or_else(|| request(id, 0));
                let event = JobEvent::new(
                    &request,
                    0,
                    Change::Cancelled {
                        reason: "client".into(),
                    },
                );
                let mut seq = 0;
                if write_fenced(&mut self.subject, &event, &mut seq).is_ok() {
                    return;
                }
                continue;
            };
            if last.change.is_terminal() {
                return;
            }
            let request = self.queue.request.clone().unwrap_or_else(|| request(id, 0));
            let event = JobEvent::new(
                &request,
                last.attempt,
                Change::Cancelled {
                    reason: "client".into(),
                },
            );
            let mut seq = seq;
            if write_fenced(&mut self.subject, &event, &mut seq).is_ok() {
                return;
            }
        }
    }

    /// The gateway's `POST /retry`: only once the failure is settled (its dead letter
    /// exists), queue the retry, then record `requeued` (which may be lost).
    fn retry(&mut self, choice_lost: bool) {
        let Some((seq, last)) = self.subject.last().map(|(s, e)| (s, e.clone())) else {
            return;
        };
        if !matches!(last.change, Change::Failed { .. })
            || !self.dead_letters.contains(&last.attempt)
            || !self.settled
        {
            return;
        }
        let Some(original) = self.queue.request.clone() else {
            return;
        };
        let retry = JobRequest {
            prior_attempts: last.attempt,
            max_attempts: last.attempt + 3,
            ..original
        };
        self.enqueue(retry.clone());
        if !choice_lost {
            let event = JobEvent::new(&retry, last.attempt, Change::Requeued);
            let mut seq = seq;
            let _ = write_fenced(&mut self.subject, &event, &mut seq);
        }
    }

    /// With `MODEL_TRACE` set, what each step did: to read a failing case as a story.
    fn trace(&self, step: &dyn std::fmt::Debug) {
        if std::env::var_os("MODEL_TRACE").is_none() {
            return;
        }
        let events: Vec<String> = (self.subject.events.iter())
            .map(|e| format!("{}@{}", e.change.name(), e.attempt))
            .collect();
        let workers: Vec<String> = (self.workers.iter())
            .map(|w| {
                format!(
                    "m{}d{} {:?}@{}",
                    w.message, w.delivered, w.stage, w.fence.attempt
                )
            })
            .collect();
        eprintln!(
            "{step:?}\n  events {events:?}\n  message {} settled {}\n  workers {workers:?}",
            self.queue.message, self.settled
        );
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let events = &self.subject.events;
        for pair in events.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.change.is_terminal() {
                let retried = matches!(a.change, Change::Failed { .. })
                    && matches!(b.change, Change::Requeued);
                prop_assert!(
                    retried,
                    "{} after terminal {}",
                    b.change.name(),
                    a.change.name()
                );
            }
        }
        if self.settled
            && let Some((_, last)) = self.subject.last()
            && let Change::Failed { .. } = last.change
        {
            prop_assert!(
                self.dead_letters.contains(&last.attempt),
                "a failure was acked without its dead letter"
            );
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Succeed,
    Retry,
    Fail,
}

fn request(id: JobId, prior_attempts: u32) -> JobRequest {
    JobRequest {
        id,
        kind: Kind::new("noop").unwrap_or_else(|_| unreachable!()),
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

/// One exploration: the steps with faults, then a run to completion without them.
fn explore(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let id = JobId::new_v7();
    let mut world = World::new(request(id, 0));
    for step in steps {
        match step.clone() {
            Step::Advance { worker, choice } => world.step_worker(worker, choice),
            Step::Redeliver => {
                if world.workers.len() < 8 {
                    world.deliver();
                }
            }
            Step::Cancel => world.cancel(id),
            Step::Retry => world.retry(world.workers.len().is_multiple_of(2)),
            Step::ForgetDuplicates => world.subject.window.clear(),
        }
        world.trace(&step);
        world.check()?;
    }
    // Faults stop; ack_wait redelivers whatever is unsettled until the job is done.
    world.faults = false;
    for _ in 0..200 {
        if world.settled && world.workers.iter().all(|w| matches!(w.stage, Stage::Done)) {
            break;
        }
        if world.workers.iter().all(|w| matches!(w.stage, Stage::Done)) {
            world.deliver();
        }
        world.step_worker(0, 0);
        world.trace(&"run to completion");
        world.check()?;
    }
    prop_assert!(world.settled, "the job's message was never settled");
    let last = world.subject.last().map(|(_, e)| e.change.clone());
    prop_assert!(
        last.as_ref().is_some_and(Change::is_terminal),
        "the job never reached a terminal event: {:?}",
        last.map(|c| c.name())
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn one_outcome_per_job_whatever_the_interleaving(
        steps in proptest::collection::vec(step_strategy(), 0..60),
    ) {
        explore(steps)?;
    }
}

/// Found by the exploration in CI (a retry while stale deliveries of the failed run were
/// still about); kept as a fixed case so it runs every time.
#[test]
fn a_retry_among_stale_deliveries_still_ends() {
    use Step::{Advance, Redeliver, Retry};
    let a = |worker, choice| Advance { worker, choice };
    let steps = vec![
        a(0, 0),
        Redeliver,
        Redeliver,
        a(1, 0),
        a(0, 43),
        a(1, 0),
        a(1, 6),
        a(0, 13),
        a(0, 20),
        a(0, 0),
        a(0, 44),
        a(0, 17),
        Redeliver,
        Redeliver,
        Redeliver,
        Redeliver,
        a(0, 0),
        a(0, 0),
        Retry,
        a(0, 56),
        a(0, 0),
        a(0, 0),
        a(0, 0),
        a(0, 0),
        a(0, 16),
    ];
    if let Err(e) = explore(steps) {
        panic!("{e}");
    }
}
