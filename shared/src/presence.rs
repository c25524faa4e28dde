//! Presence: every processor replica says, once a second, that it is alive and what it
//! is doing, in KV `job_workers` (key `<processor>.<instance>`). The bucket's max age
//! makes a replica that died without a word disappear within [`TTL`].
//!
//! It answers what JetStream cannot: consumer info counts a consumer's messages, but a
//! processor's consumers serve several kinds, so "how many `hash` jobs run now" and "how
//! many succeeded in the last minute" come from the replicas themselves. `GET /v1/stats`
//! sums these records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::job::Kind;

/// How often a replica writes its record.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A record not renewed for this long is gone (the bucket's max age).
pub const TTL: Duration = Duration::from_secs(10);

/// What one replica writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// The processor (its consumer's name).
    pub name: String,
    /// This replica, for as long as the process lives.
    pub instance: String,
    /// Jobs it runs at once at most.
    pub concurrency: usize,
    pub started_at: DateTime<Utc>,
    /// When this record was written.
    pub seen_at: DateTime<Utc>,
    pub kinds: BTreeMap<String, KindActivity>,
}

/// One replica's work on one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindActivity {
    /// Messages it holds unacked (running or waiting for a run slot).
    pub held: u64,
    /// Of those, the ones delivered more than once.
    pub redelivered: u64,
    /// Handlers running now.
    pub running: u64,
    /// Since the replica started.
    pub succeeded: u64,
    pub failed: u64,
    /// The succeeded jobs' times from submission (or `run_at`) to success, summed, in
    /// milliseconds: over a window, its growth divided by `succeeded`'s is the mean latency.
    #[serde(default)]
    pub latency_ms_total: u64,
}

/// The live counts of one replica; the runtime holds guards, the publisher reads.
#[derive(Debug)]
pub struct Presence {
    name: String,
    instance: String,
    concurrency: usize,
    started_at: DateTime<Utc>,
    counts: HashMap<Kind, Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    held: AtomicU64,
    redelivered: AtomicU64,
    running: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    latency_ms_total: AtomicU64,
}

impl Presence {
    pub fn new(name: &str, kinds: impl IntoIterator<Item = Kind>, concurrency: usize) -> Self {
        Self {
            name: name.to_string(),
            instance: crate::job::JobId::new_v7().to_string(),
            concurrency,
            started_at: crate::job::now(),
            counts: kinds.into_iter().map(|k| (k, Counts::default())).collect(),
        }
    }

    /// The record's key: `<processor>.<instance>`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.name, self.instance)
    }

    /// Counts a held message until the guard drops.
    pub fn hold(self: &Arc<Self>, kind: &Kind, redelivered: bool) -> Guard {
        self.guard(kind, Counted::Held { redelivered })
    }

    /// Counts a running handler until the guard drops.
    pub fn run(self: &Arc<Self>, kind: &Kind) -> Guard {
        self.guard(kind, Counted::Running)
    }

    /// A job succeeded, `latency` after it was submitted (or due).
    pub fn succeeded(&self, kind: &Kind, latency: Duration) {
        if let Some(c) = self.counts.get(kind) {
            c.succeeded.fetch_add(1, Ordering::Relaxed);
            let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
            c.latency_ms_total.fetch_add(ms, Ordering::Relaxed);
        }
    }

    pub fn failed(&self, kind: &Kind) {
        if let Some(c) = self.counts.get(kind) {
            c.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn guard(self: &Arc<Self>, kind: &Kind, counted: Counted) -> Guard {
        self.change(kind, counted, |c| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        Guard {
            presence: Arc::clone(self),
            kind: kind.clone(),
            counted,
        }
    }

    fn change(&self, kind: &Kind, counted: Counted, apply: impl Fn(&AtomicU64)) {
        let Some(c) = self.counts.get(kind) else {
            return;
        };
        match counted {
            Counted::Held { redelivered } => {
                apply(&c.held);
                if redelivered {
                    apply(&c.redelivered);
                }
            }
            Counted::Running => apply(&c.running),
        }
    }

    pub fn record(&self) -> WorkerRecord {
        WorkerRecord {
            name: self.name.clone(),
            instance: self.instance.clone(),
            concurrency: self.concurrency,
            started_at: self.started_at,
            seen_at: crate::job::now(),
            kinds: self
                .counts
                .iter()
                .map(|(kind, c)| {
                    (
                        kind.to_string(),
                        KindActivity {
                            held: c.held.load(Ordering::Relaxed),
                            redelivered: c.redelivered.load(Ordering::Relaxed),
                            running: c.running.load(Ordering::Relaxed),
                            succeeded: c.succeeded.load(Ordering::Relaxed),
                            failed: c.failed.load(Ordering::Relaxed),
                            latency_ms_total: c.latency_ms_total.load(Ordering::Relaxed),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Writes the record every [`INTERVAL`] until `stop`, then deletes it.
    pub async fn publish(self: Arc<Self>, bucket: kv::Store, stop: CancellationToken) {
        let key = self.key();
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Ok(body) = serde_json::to_vec(&self.record()) else {
                continue;
            };
            // Bounded: a slow server must not pile up writes; the next tick tries again.
            match tokio::time::timeout(INTERVAL, bucket.put(&key, body.into())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "Could not write this replica's presence.")
                }
                Err(_) => tracing::debug!("Writing this replica's presence timed out."),
            }
        }
        // Gone at once rather than after the TTL.
        let _ = tokio::time::timeout(INTERVAL, bucket.delete(&key)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Counted {
    Held { redelivered: bool },
    Running,
}

/// Counted while it lives.
#[derive(Debug)]
pub struct Guard {
    presence: Arc<Presence>,
    kind: Kind,
    counted: Counted,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.presence.change(&self.kind, self.counted, |c| {
            c.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_while_they_live() {
        let kind = Kind::new("hash").expect("a valid kind");
        let presence = Arc::new(Presence::new("processor-cpu", [kind.clone()], 4));
        let held = presence.hold(&kind, true);
        let running = presence.run(&kind);
        presence.succeeded(&kind, Duration::from_millis(250));
        let now = presence.record().kinds["hash"];
        assert_eq!(
            now,
            KindActivity {
                held: 1,
                redelivered: 1,
                running: 1,
                succeeded: 1,
                failed: 0,
                latency_ms_total: 250,
            }
        );
        drop((held, running));
        let later = presence.record().kinds["hash"];
        assert_eq!((later.held, later.redelivered, later.running), (0, 0, 0));
        assert_eq!(later.succeeded, 1);
    }
}
