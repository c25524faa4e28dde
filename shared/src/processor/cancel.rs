//! Client cancellations of running jobs.
//!
//! The gateway stores a job's `cancelled` event and then publishes on
//! `jobs.cancel.<kind>.<id>` (plain NATS). Every replica serving the kind hears it; the one
//! running the job cancels the handler's context. A lost notice only costs time: the
//! run's outcome can no longer be stored (its fenced publish finds the job ended), so the
//! run is dropped when it finishes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::job::{JobId, Kind};
use crate::subjects;

/// The runs in progress on this replica, by job. At most one entry per running job, so
/// bounded by the concurrency limit.
#[derive(Default)]
pub(super) struct Cancellations {
    /// Each run's token, tagged with its registration number.
    running: Mutex<HashMap<JobId, (u64, CancellationToken)>>,
    registrations: AtomicU64,
}

/// A run's registration; removed when the run ends.
pub(super) struct Registered {
    pub token: CancellationToken,
    id: JobId,
    number: u64,
    owner: Arc<Cancellations>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut running = self
            .owner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only our own entry: a newer run of the same job may have replaced it.
        if running
            .get(&self.id)
            .is_some_and(|(number, _)| *number == self.number)
        {
            running.remove(&self.id);
        }
    }
}

impl Cancellations {
    pub(super) fn register(self: &Arc<Self>, id: JobId) -> Registered {
        let token = CancellationToken::new();
        let number = self.registrations.fetch_add(1, Ordering::Relaxed);
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (number, token.clone()));
        Registered {
            token,
            id,
            number,
            owner: Arc::clone(self),
        }
    }

    fn cancel(&self, id: JobId) -> bool {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get(&id) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Listens for cancellations of `kinds` until `stop`.
    pub(super) async fn listen(
        self: Arc<Self>,
        client: async_nats::Client,
        kinds: Vec<Kind>,
        stop: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError> {
        let mut notices = futures::stream::SelectAll::new();
        for kind in &kinds {
            notices.push(client.subscribe(subjects::cancel_filter(kind)).await?);
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                notice = notices.next() => {
                    let Some(notice) = notice else { return Ok(()) };
                    let id = notice
                        .subject
                        .rsplit('.')
                        .next()
                        .and_then(|id| id.parse::<JobId>().ok());
                    if let Some(id) = id
                        && self.cancel(id)
                    {
                        tracing::info!(job_id = %id, "Cancelling a running job at the client's request.");
                    }
                }
            }
        }
    }
}
