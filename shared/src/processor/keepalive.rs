//! While a job is held: `AckProgress` heartbeats, so a job longer than `ack_wait` is not
//! redelivered to another replica, and the job's progress reports, coalesced and
//! rate-limited.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::runtime::Runtime;
use crate::job::{JobRequest, Progress};
use crate::state::{Change, JobEvent};

/// What a held job's keepalive needs to know about it.
pub(super) struct Lease<'a> {
    pub message: &'a jetstream::Message,
    pub request: &'a JobRequest,
    pub attempt: u32,
    pub trace: &'a HeaderMap,
}

impl Runtime {
    /// Sends heartbeats until `done`, and the run's progress reports. Progress goes to its own
    /// subject, never the job's: a late report cannot stand between the run and its
    /// fence, nor make a finished job look unfinished to a redelivery.
    ///
    /// Reports wait for `claimed` (the run's `started` stored): a run whose claim is
    /// deferred must not show progress before it shows as started, and a quick run that
    /// never claims records its outcome alone.
    pub(super) async fn keepalive(
        &self,
        lease: Lease<'_>,
        mut progress: watch::Receiver<Option<Progress>>,
        claimed: CancellationToken,
        done: CancellationToken,
    ) {
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let min_gap = Duration::from_millis(self.config.progress_interval_ms);
        let mut last_report = tokio::time::Instant::now()
            .checked_sub(min_gap)
            .unwrap_or_else(tokio::time::Instant::now);
        let mut reporting = claimed.is_cancelled();
        loop {
            tokio::select! {
                biased;
                () = done.cancelled() => return,
                _ = heartbeat.tick() => {
                    if let Err(e) = lease.message.ack_with(AckKind::Progress).await {
                        tracing::warn!(error = %e, "Heartbeat not sent.");
                    }
                }
                // Until the claim, a report stays unseen in the channel: sent once it is.
                () = claimed.cancelled(), if !reporting => reporting = true,
                changed = progress.changed(), if reporting => {
                    if changed.is_err() {
                        // The run is over; heartbeats go on until the job is settled.
                        done.cancelled().await;
                        return;
                    }
                    let wait = min_gap.saturating_sub(last_report.elapsed());
                    if !wait.is_zero() {
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = done.cancelled() => return,
                        }
                    }
                    let Some(current) = *progress.borrow_and_update() else { continue };
                    // Not waiting for the PubAck: a slow one must not hold back heartbeats,
                    // and a lost progress report is superseded by the next.
                    let event = JobEvent::new(lease.request, lease.attempt, Change::Progress(current));
                    if let Err(e) = self.events.send(&event, lease.trace).await {
                        tracing::debug!(error = %e, "Progress event not sent.");
                    }
                    last_report = tokio::time::Instant::now();
                }
            }
        }
    }
}
