//! The watch hub: one KV watch on `job_status`, shared by every request that waits for a
//! job to change (`Prefer: wait`, long-poll, per-job SSE, WebSocket).
//!
//! One ordered consumer per gateway instead of one per waiting request: a thousand clients
//! waiting on their jobs cost one consumer on the server and one broadcast channel here.
//! The hub starts on the first subscription and stops when the last subscriber is gone, so
//! an idle gateway holds no consumer at all.
//!
//! Most waiters care about one job (`Prefer: wait`, long-poll, per-job SSE): they
//! subscribe to its key ([`Hub::subscribe_key`]) and are handed only that key's changes,
//! looked up in a map — a change costs one lookup, not one wake-up per waiter. Only
//! subscribers that filter on more than a key (WebSocket kind subscriptions) take the
//! broadcast of every change ([`Hub::subscribe`]).
//!
//! [`Hub::subscribe`] returns only once the consumer exists: a subscriber that then reads a
//! key's current value misses no later change. The broadcast channel is bounded; a
//! subscriber that falls behind gets [`Event::Lagged`] and must re-read what it cares
//! about from KV. If the watch itself ends (NATS trouble), every subscriber gets
//! `Lagged` too, and the next receive starts a fresh watch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt as _;
use jetjobs::JobState;
use serde::Deserialize;
use tokio::sync::{Mutex, Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Changes a subscriber may fall behind by before it is told it lagged.
const CHANNEL_CAPACITY: usize = 4096;
/// The same for a subscriber to one key: a job changes a handful of times.
const KEY_CHANNEL_CAPACITY: usize = 16;

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
    keyed: Arc<Keyed>,
    /// Poked when a subscriber leaves, so the watch task can stop if it was the last.
    left: Arc<Notify>,
}

/// The subscribers to single keys of one running watch.
#[derive(Default)]
struct Keyed {
    /// A std mutex: held only for a lookup or an insert, never across an await.
    waiters: std::sync::Mutex<HashMap<String, Vec<KeyWaiter>>>,
    next_id: AtomicU64,
}

struct KeyWaiter {
    id: u64,
    sender: mpsc::Sender<Arc<Change>>,
    /// Set when a change could not be queued: the subscriber re-reads the key.
    lagged: Arc<AtomicBool>,
}

impl Keyed {
    fn is_empty(&self) -> bool {
        self.waiters.lock().map_or(true, |w| w.is_empty())
    }

    fn register(&self, key: &str) -> (u64, mpsc::Receiver<Arc<Change>>, Arc<AtomicBool>) {
        let (sender, receiver) = mpsc::channel(KEY_CHANNEL_CAPACITY);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.entry(key.to_string()).or_default().push(KeyWaiter {
                id,
                sender,
                lagged: lagged.clone(),
            });
        }
        (id, receiver, lagged)
    }

    fn unregister(&self, key: &str, id: u64) {
        if let Ok(mut waiters) = self.waiters.lock()
            && let Some(list) = waiters.get_mut(key)
        {
            list.retain(|w| w.id != id);
            if list.is_empty() {
                waiters.remove(key);
            }
        }
    }

    fn wants(&self, key: &str) -> bool {
        self.waiters
            .lock()
            .is_ok_and(|waiters| waiters.contains_key(key))
    }

    fn dispatch(&self, change: &Arc<Change>) {
        let Ok(waiters) = self.waiters.lock() else {
            return;
        };
        for waiter in waiters.get(&change.key).into_iter().flatten() {
            if let Err(mpsc::error::TrySendError::Full(_)) = waiter.sender.try_send(change.clone())
            {
                waiter.lagged.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Closes every key subscription (the watch ended): each sees a lag and rejoins.
    fn close_all(&self) {
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.clear();
        }
    }
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
        let joined = self.join(None).await?;
        Ok(Subscription {
            hub: self.clone(),
            key: None,
            joined: Some(joined),
        })
    }

    /// A subscription to the changes of one key (one job) from now on.
    pub async fn subscribe_key(&self, key: &str) -> Result<Subscription, HubError> {
        let joined = self.join(Some(key)).await?;
        Ok(Subscription {
            hub: self.clone(),
            key: Some(key.to_string()),
            joined: Some(joined),
        })
    }

    /// Joins the running watch (starting it if there is none), for every change or for
    /// `key`'s. Joined under the lock, so the watch cannot stop between the two.
    async fn join(&self, key: Option<&str>) -> Result<Joined, HubError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError("the gateway is shutting down".to_string()));
        }
        let mut running = self.inner.running.lock().await;
        if running.is_none() {
            let watch = self
                .inner
                .status
                .watch_all()
                .await
                .map_err(|e| HubError(e.to_string()))?;
            let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
            let keyed = Arc::new(Keyed::default());
            let left = Arc::new(Notify::new());
            *running = Some(Running {
                sender: sender.clone(),
                keyed: keyed.clone(),
                left: left.clone(),
            });
            tokio::spawn(forward(self.inner.clone(), watch, sender, keyed, left));
            tracing::debug!("Started the job_status watch.");
        }
        let Some(current) = running.as_ref() else {
            return Err(HubError("the job_status watch is not running".to_string()));
        };
        let receiver = match key {
            None => Receiver::All(current.sender.subscribe()),
            Some(key) => {
                let (id, receiver, lagged) = current.keyed.register(key);
                Receiver::Key {
                    id,
                    receiver,
                    lagged,
                    keyed: current.keyed.clone(),
                }
            }
        };
        Ok(Joined {
            receiver,
            left: current.left.clone(),
        })
    }
}

/// Forwards the watch to the broadcast channel until nobody listens, the watch fails, or
/// the gateway shuts down.
async fn forward(
    inner: Arc<Inner>,
    mut watch: kv::Watch,
    sender: broadcast::Sender<Arc<Change>>,
    keyed: Arc<Keyed>,
    left: Arc<Notify>,
) {
    loop {
        tokio::select! {
            () = inner.shutdown.cancelled() => break,
            () = left.notified() => {
                // Checked under the lock: `subscribe` adds receivers only while holding it,
                // so no one can join between this check and the watch being removed.
                let mut running = inner.running.lock().await;
                if sender.receiver_count() == 0 && keyed.is_empty() {
                    *running = None;
                    tracing::debug!("Stopped the job_status watch: nobody listens.");
                    return;
                }
            }
            next = watch.next() => match next {
                Some(Ok(entry)) => {
                    let everyone = sender.receiver_count() > 0;
                    // Most changes are of jobs nobody here waits for: those are not even
                    // parsed. (A waiter that registers just after this check reads the
                    // key itself next, and the change is stored before it is watched.)
                    if !everyone && !keyed.wants(&entry.key) {
                        continue;
                    }
                    let change = Arc::new(Change::from_entry(entry));
                    keyed.dispatch(&change);
                    if everyone {
                        // Receivers that left since the check are not an error here.
                        let _ = sender.send(change);
                    }
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
    // Dropping the sender closes every receiver, which they see as a lag; key
    // subscribers see their channel close the same way.
    keyed.close_all();
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
    /// `None`: every change; otherwise this key's only.
    key: Option<String>,
    /// `None` after the watch it joined ended, until the next `recv` joins the new one.
    joined: Option<Joined>,
}

struct Joined {
    receiver: Receiver,
    left: Arc<Notify>,
}

enum Receiver {
    All(broadcast::Receiver<Arc<Change>>),
    Key {
        id: u64,
        receiver: mpsc::Receiver<Arc<Change>>,
        lagged: Arc<AtomicBool>,
        keyed: Arc<Keyed>,
    },
}

impl Subscription {
    /// The next change. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Event, HubError> {
        let joined = match self.joined.as_mut() {
            Some(joined) => joined,
            None => {
                // The previous watch ended: join (or start) a new one. Whatever changed in
                // between is the caller's to re-read, which `Lagged` (already returned) said.
                let joined = self.hub.join(self.key.as_deref()).await?;
                self.joined.insert(joined)
            }
        };
        let next = match &mut joined.receiver {
            Receiver::All(receiver) => match receiver.recv().await {
                Ok(change) => Some(Event::Change(change)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "A job_status subscriber lagged.");
                    Some(Event::Lagged)
                }
                Err(broadcast::error::RecvError::Closed) => None,
            },
            Receiver::Key {
                receiver, lagged, ..
            } => {
                if lagged.swap(false, Ordering::Relaxed) {
                    Some(Event::Lagged)
                } else {
                    receiver.recv().await.map(Event::Change)
                }
            }
        };
        match next {
            Some(event) => Ok(event),
            None => {
                self.leave();
                Ok(Event::Lagged)
            }
        }
    }

    fn leave(&mut self) {
        if let Some(joined) = self.joined.take() {
            if let (Receiver::Key { id, keyed, .. }, Some(key)) = (&joined.receiver, &self.key) {
                keyed.unregister(key, *id);
            }
            // Drop the receiver first so the watch task counts one fewer.
            let left = joined.left.clone();
            drop(joined);
            left.notify_one();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, revision: u64) -> Arc<Change> {
        Arc::new(Change {
            key: key.to_string(),
            revision,
            value: Bytes::new(),
            state: Some(JobState::Running),
            kind: Some("noop".to_string()),
        })
    }

    #[test]
    fn a_key_subscriber_gets_its_key_only_and_a_full_queue_is_a_lag() {
        let keyed = Keyed::default();
        let (a_id, mut a, a_lagged) = keyed.register("a");
        let (_, mut b, _) = keyed.register("b");
        keyed.dispatch(&change("b", 1));
        keyed.dispatch(&change("a", 2));
        assert_eq!(a.try_recv().map(|c| c.revision).ok(), Some(2));
        assert!(a.try_recv().is_err(), "nothing of key b");
        assert_eq!(b.try_recv().map(|c| c.revision).ok(), Some(1));

        for revision in 0..(KEY_CHANNEL_CAPACITY as u64 + 3) {
            keyed.dispatch(&change("a", 10 + revision));
        }
        assert!(
            a_lagged.load(Ordering::Relaxed),
            "changes were dropped: a lag"
        );

        keyed.unregister("a", a_id);
        keyed.unregister("b", 999);
        assert!(!keyed.is_empty(), "b is still subscribed");
        keyed.close_all();
        assert!(keyed.is_empty());
        assert!(
            matches!(b.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)),
            "closing tells the subscriber"
        );
    }
}
