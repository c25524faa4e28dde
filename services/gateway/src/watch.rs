//! The watch hub: one KV watch on `job_status`, shared by every request that waits for a
//! job to change (`Prefer: wait`, long-poll, per-job SSE, WebSocket).
//!
//! One ordered consumer per gateway instead of one per waiting request: a thousand clients
//! waiting on their jobs cost one consumer on the server and one broadcast channel here.
//! The hub starts on the first subscription and stops when the last subscriber is gone, so
//! an idle gateway holds no consumer at all.
//!
//! [`Hub::subscribe`] returns only once the consumer exists: a subscriber that then reads a
//! key's current value misses no later change. The broadcast channel is bounded; a
//! subscriber that falls behind gets [`Event::Lagged`] and must re-read what it cares
//! about from KV. If the watch itself ends (NATS trouble), every subscriber gets
//! `Lagged` too, and the next receive starts a fresh watch.

use std::sync::Arc;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt as _;
use jetjobs::JobState;
use serde::Deserialize;
use tokio::sync::{Mutex, Notify, broadcast};
use tokio_util::sync::CancellationToken;

/// Changes a subscriber may fall behind by before it is told it lagged.
const CHANNEL_CAPACITY: usize = 4096;

/// One new revision of one key of `job_status`.
#[derive(Debug)]
pub struct Change {
    /// The key: a job id.
    pub key: String,
    pub revision: u64,
    /// The snapshot JSON; empty for a delete or purge.
    pub value: Bytes,
    /// From the snapshot; `None` for a delete/purge or a value that is not a snapshot.
    pub state: Option<JobState>,
    pub kind: Option<String>,
}

impl Change {
    pub fn from_entry(entry: kv::Entry) -> Self {
        let head = match entry.operation {
            kv::Operation::Put => serde_json::from_slice::<Head>(&entry.value).ok(),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let (state, kind) = head.map_or((None, None), |h| (Some(h.state), Some(h.kind)));
        Self {
            key: entry.key,
            revision: entry.revision,
            value: entry.value,
            state,
            kind,
        }
    }

    /// A snapshot (not a delete).
    pub fn is_snapshot(&self) -> bool {
        self.state.is_some()
    }

    pub fn is_terminal(&self) -> bool {
        self.state.is_some_and(JobState::is_terminal)
    }
}

/// The fields of a snapshot the hub's subscribers filter on.
#[derive(Deserialize)]
struct Head {
    state: JobState,
    kind: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot watch job_status: {0}")]
pub struct HubError(String);

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    status: kv::Store,
    shutdown: CancellationToken,
    /// The running watch, if any. A tokio mutex: starting a watch awaits the server, and
    /// concurrent first subscribers must wait for that one watch, not start their own.
    running: Mutex<Option<Running>>,
}

struct Running {
    sender: broadcast::Sender<Arc<Change>>,
    /// Poked when a subscriber leaves, so the watch task can stop if it was the last.
    left: Arc<Notify>,
}

impl Hub {
    pub fn new(status: kv::Store, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                status,
                shutdown,
                running: Mutex::new(None),
            }),
        }
    }

    /// A subscription to every change of `job_status` from now on.
    pub async fn subscribe(&self) -> Result<Subscription, HubError> {
        let (receiver, left) = self.receiver().await?;
        Ok(Subscription {
            hub: self.clone(),
            receiver: Some(receiver),
            left,
        })
    }

    async fn receiver(&self) -> Result<(broadcast::Receiver<Arc<Change>>, Arc<Notify>), HubError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError("the gateway is shutting down".to_string()));
        }
        let mut running = self.inner.running.lock().await;
        if let Some(current) = running.as_ref() {
            return Ok((current.sender.subscribe(), current.left.clone()));
        }
        let watch = self
            .inner
            .status
            .watch_all()
            .await
            .map_err(|e| HubError(e.to_string()))?;
        let (sender, receiver) = broadcast::channel(CHANNEL_CAPACITY);
        let left = Arc::new(Notify::new());
        *running = Some(Running {
            sender: sender.clone(),
            left: left.clone(),
        });
        tokio::spawn(forward(self.inner.clone(), watch, sender, left.clone()));
        tracing::debug!("Started the job_status watch.");
        Ok((receiver, left))
    }
}

/// Forwards the watch to the broadcast channel until nobody listens, the watch fails, or
/// the gateway shuts down.
async fn forward(
    inner: Arc<Inner>,
    mut watch: kv::Watch,
    sender: broadcast::Sender<Arc<Change>>,
    left: Arc<Notify>,
) {
    loop {
        tokio::select! {
            () = inner.shutdown.cancelled() => break,
            () = left.notified() => {
                // Checked under the lock: `subscribe` adds receivers only while holding it,
                // so no one can join between this check and the watch being removed.
                let mut running = inner.running.lock().await;
                if sender.receiver_count() == 0 {
                    *running = None;
                    tracing::debug!("Stopped the job_status watch: nobody listens.");
                    return;
                }
            }
            next = watch.next() => match next {
                Some(Ok(entry)) => {
                    // No receivers (all left since the last check) is not an error here.
                    let _ = sender.send(Arc::new(Change::from_entry(entry)));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "The job_status watch failed; subscribers re-read KV.");
                    break;
                }
                None => {
                    tracing::warn!("The job_status watch ended; subscribers re-read KV.");
                    break;
                }
            },
        }
    }
    // Dropping the sender closes every receiver, which they see as a lag.
    let mut running = inner.running.lock().await;
    if running
        .as_ref()
        .is_some_and(|r| r.sender.same_channel(&sender))
    {
        *running = None;
    }
}

/// What a subscriber receives.
pub enum Event {
    Change(Arc<Change>),
    /// Changes were missed: re-read the keys of interest from KV.
    Lagged,
}

pub struct Subscription {
    hub: Hub,
    receiver: Option<broadcast::Receiver<Arc<Change>>>,
    left: Arc<Notify>,
}

impl Subscription {
    /// The next change. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Event, HubError> {
        let receiver = match self.receiver.as_mut() {
            Some(receiver) => receiver,
            None => {
                // The previous watch ended: join (or start) a new one. Whatever changed in
                // between is the caller's to re-read, which `Lagged` (already returned) said.
                let (receiver, left) = self.hub.receiver().await?;
                self.left = left;
                self.receiver.insert(receiver)
            }
        };
        match receiver.recv().await {
            Ok(change) => Ok(Event::Change(change)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "A job_status subscriber lagged.");
                Ok(Event::Lagged)
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.receiver = None;
                Ok(Event::Lagged)
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Drop the receiver first so the watch task counts one fewer.
        self.receiver = None;
        self.left.notify_one();
    }
}
