//! Pulling jobs: a bounded pull loop that never holds more job messages than it has
//! room for, however deep the backlog, and hands back what it holds on shutdown.
//!
//! Each priority is a lane with its own consumer (`processor-io`, `-high`, `-low`). The
//! normal lane is the main one; the high lane holds at most `concurrency` more messages,
//! so a high job is delivered at once even when the normal lane's room is taken, and is
//! first in line for the next run slot ([`super::slots`]); the low lane pulls only when
//! the normal consumer has nothing waiting and a run slot is free, or when its oldest job
//! has waited `low_priority_max_wait_secs`.
//!
//! Two limits apply. *Held* messages (running, waiting for a run slot, or having their
//! outcome recorded) are bounded by `concurrency + prefetch`, and pull requests ask for
//! exactly as many as there is room. *Running* handlers are bounded by `concurrency`
//! ([`super::attempt`] takes a run slot just before the handler and gives it back the
//! moment it returns), so a core is not idle while a finished job's outcome is recorded
//! and the next one is pulled.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt as _;
use futures::stream::{BoxStream, SelectAll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::runtime::Runtime;
use crate::job::Priority;

/// A processor's three consumers on `JOBS`, one per priority.
pub(super) struct Lanes {
    pub high: PullConsumer,
    pub normal: PullConsumer,
    pub low: PullConsumer,
}

/// How often the low lane looks again whether it may pull.
const LOW_RECHECK: Duration = Duration::from_millis(250);

/// A job message together with the room it takes among the held messages.
type Held = (jetstream::Message, OwnedSemaphorePermit);

/// At most this many pull requests are open at once; each holds the room it asked for.
const MAX_OPEN_PULLS: usize = 4;

impl Runtime {
    pub(super) async fn pull_loop(self: &Arc<Self>, lanes: &Lanes, shutdown: CancellationToken) {
        let extra = self.config.concurrency.max(1);
        tokio::join!(
            self.lane(&lanes.high, None, extra, shutdown.clone()),
            self.lane(&lanes.normal, None, self.held_limit(), shutdown.clone()),
            self.lane(&lanes.low, Some(&lanes.normal), extra, shutdown),
        );
    }

    /// One lane's pull loop, holding at most `held` of its messages. With `after`, it is
    /// the low lane, which waits for that consumer to have nothing waiting.
    async fn lane(
        self: &Arc<Self>,
        consumer: &PullConsumer,
        after: Option<&PullConsumer>,
        held: usize,
        shutdown: CancellationToken,
    ) {
        let room = Arc::new(Semaphore::new(held));
        let tracker = TaskTracker::new();
        let release = CancellationToken::new();
        let mut pulls: SelectAll<BoxStream<'static, Option<Held>>> = SelectAll::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = pulls.next(), if !pulls.is_empty() => {
                    // A pull request ended (`Some(None)`), or the last one did (`None`): its
                    // unfilled room is free, and the `free_room` guard, read when this
                    // select began, must be read again or no pull is ever sent.
                    let Some(Some((message, permit))) = next else { continue };
                    let runtime = Arc::clone(self);
                    let release = release.child_token();
                    tracker.spawn(async move {
                        runtime.run_job(message, release).await;
                        drop(permit);
                    });
                }
                permits = self.free_room(&room), if pulls.len() < MAX_OPEN_PULLS => {
                    let Ok(mut permits) = permits else { break };
                    // The low lane never leaves a pull request open: one could take a
                    // low job after normal ones had come in.
                    let mut wait = Some(Duration::from_millis(self.config.pull_expires_ms));
                    if let Some(normal) = after {
                        let Some(turn) = self.low_turn(normal, consumer, &shutdown).await else {
                            break;
                        };
                        if turn < permits.num_permits() {
                            permits = permits.split(turn).unwrap_or(permits);
                        }
                        wait = None;
                    }
                    match self.pull(consumer, permits, wait).await {
                        Ok(stream) => {
                            backoff = Duration::from_millis(100);
                            pulls.push(stream);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Pull request failed; retrying.");
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                () = shutdown.cancelled() => break,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
        }

        // Jobs waiting for a run slot have not started: hand them back at once.
        self.stop_starting.cancel();
        // Jobs the server delivers to still-open pull requests are handed back too.
        let drain = tokio::spawn(async move {
            while let Some(next) = pulls.next().await {
                let Some((message, _permit)) = next else {
                    continue;
                };
                if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                    tracing::warn!(error = %e, "Could not release a job on shutdown.");
                }
            }
        });
        tracker.close();
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                running = tracker.len(),
                "Grace period over; releasing unfinished jobs to other replicas."
            );
            release.cancel();
            // Releasing is a nak per job, or recording an outcome that was on its way:
            // bounded, so a server that is gone cannot hold the shutdown.
            if tokio::time::timeout(RELEASE_BUDGET, tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    running = tracker.len(),
                    "Jobs still busy after the grace period; leaving them to redelivery."
                );
            }
        }
        let expires = Duration::from_millis(self.config.pull_expires_ms);
        if tokio::time::timeout(expires + Duration::from_secs(1), drain)
            .await
            .is_err()
        {
            tracing::warn!("Open pull requests did not end in time.");
        }
    }

    /// How many job messages this replica holds at most.
    fn held_limit(&self) -> usize {
        self.config.concurrency.max(1) + self.config.prefetch
    }

    /// Waits for room for at least one message, then takes as much more as is free (up
    /// to a batch).
    async fn free_room(
        &self,
        room: &Arc<Semaphore>,
    ) -> Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
        let mut permits = Arc::clone(room).acquire_owned().await?;
        while permits.num_permits() < self.config.max_batch.max(1) {
            match Arc::clone(room).try_acquire_owned() {
                Ok(more) => permits.merge(more),
                Err(_) => break,
            }
        }
        Ok(permits)
    }

    /// One pull request for exactly as many jobs as `permits` has room. Each job comes
    /// out with its share; the share of jobs that did not come is freed when it ends.
    /// With `wait`, the request waits up to that long for jobs; without, it takes only
    /// the jobs there are now.
    async fn pull(
        &self,
        consumer: &PullConsumer,
        permits: OwnedSemaphorePermit,
        wait: Option<Duration>,
    ) -> Result<BoxStream<'static, Option<Held>>, async_nats::Error> {
        let batch = match wait {
            Some(expires) => {
                consumer
                    .batch()
                    .max_messages(permits.num_permits())
                    .expires(expires)
                    .messages()
                    .await?
            }
            None => {
                consumer
                    .fetch()
                    .max_messages(permits.num_permits())
                    .messages()
                    .await?
            }
        };
        let stream =
            futures::stream::unfold((batch, permits), |(mut batch, mut permits)| async move {
                match batch.next().await? {
                    Ok(message) => match permits.split(1) {
                        Some(permit) => Some(((message, permit), (batch, permits))),
                        None => {
                            // More than was asked for: never hold a job without room.
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                            None
                        }
                    },
                    Err(e) => {
                        // The consumer or JetStream is unavailable (leader change, restart):
                        // pause before this pull's room is asked for again.
                        tracing::warn!(error = %e, "Pull request ended with an error.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        None
                    }
                }
            });
        // The trailing `None` wakes the pull loop when this request ends, so the room it
        // did not fill is asked for again at once.
        Ok(stream
            .map(Some)
            .chain(futures::stream::once(async { None }))
            .boxed())
    }
}

impl Runtime {
    /// Waits until the low lane may pull, and says how many: as many as there are free
    /// run slots while `normal` has nothing waiting, or one when the oldest low job has
    /// waited too long. `None` on shutdown.
    async fn low_turn(
        &self,
        normal: &PullConsumer,
        low: &PullConsumer,
        shutdown: &CancellationToken,
    ) -> Option<usize> {
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            // One request while there is no low job at all (the idle case).
            if matches!(pending(low).await, Some(waiting) if waiting > 0) {
                let free = self.run_slots.available();
                if free > 0 && matches!(pending(normal).await, Some(0)) {
                    return Some(free);
                }
                if self.low_starving(low).await {
                    return Some(1);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(LOW_RECHECK) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// Whether the next low job to deliver has waited longer than
    /// `low_priority_max_wait_secs` (its time in `JOBS`, from a direct get per kind).
    async fn low_starving(&self, low: &PullConsumer) -> bool {
        let mut low = low.clone();
        let Ok(info) = low.info().await else {
            return false;
        };
        if info.num_pending == 0 {
            return false;
        }
        let next = info.delivered.stream_sequence.saturating_add(1);
        let max_wait = Duration::from_secs(self.config.low_priority_max_wait_secs);
        for kind in self.handlers.keys() {
            let subject = crate::subjects::submit_filter(kind, Priority::Low);
            if let Ok(message) = self
                .jobs
                .direct_get_next_for_subject(subject, Some(next))
                .await
            {
                let queued = std::time::SystemTime::UNIX_EPOCH
                    + Duration::from_nanos(
                        u64::try_from(message.time.unix_timestamp_nanos()).unwrap_or_default(),
                    );
                if queued.elapsed().is_ok_and(|waited| waited >= max_wait) {
                    return true;
                }
            }
        }
        false
    }
}

/// Jobs waiting in a consumer, not yet delivered; `None` if it cannot be read.
async fn pending(consumer: &PullConsumer) -> Option<u64> {
    let mut consumer = consumer.clone();
    consumer.info().await.ok().map(|info| info.num_pending)
}

/// After the grace period, how long releasing the unfinished jobs may take.
const RELEASE_BUDGET: Duration = Duration::from_secs(5);
