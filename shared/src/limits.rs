//! Global limits per kind, across every replica: `max_running` (jobs of the kind running
//! at once) and `max_per_second` (starts per second). Set with
//! `PUT /v1/kinds/{kind}/limits`, stored in KV `job_limits`, enforced by the processors
//! with shared state in NATS, never per replica:
//!
//! - a running job holds a lease, a key `<kind>.running.<n>` with `n < max_running` in KV
//!   `job_leases`, created (create-only, so two replicas cannot both hold one) before
//!   the job's `started` and deleted when its handler returns. The bucket's `max_age`
//!   frees the leases of a replica that died; a running job refreshes its lease well
//!   within it;
//! - a start takes a token from `<kind>.rate.<unix second>`, a counter updated with
//!   compare-and-set.
//!
//! A job over a limit is handed back to `JOBS` with a short delay and waits there; it is
//! not failed, and it uses up no attempt (attempts are counted from the job's events).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::job::{JobId, Kind};

/// A kind's limits, the value stored under its name in `job_limits`. `None`: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindLimits {
    pub max_running: Option<u32>,
    pub max_per_second: Option<u32>,
}

impl KindLimits {
    pub fn is_unlimited(&self) -> bool {
        self.max_running.is_none() && self.max_per_second.is_none()
    }
}

/// Whether a job may start now.
pub enum Admission {
    /// Start it, holding this lease (if the kind has `max_running`) until it ends.
    Go(Option<Lease>),
    /// Over a limit: hand it back, to come again after this long.
    Wait(Duration),
}

/// The processors' side: the limits as the watch last saw them, and the leases.
#[derive(Clone)]
pub struct Limiter {
    leases: kv::Store,
    limits: Arc<RwLock<HashMap<Kind, KindLimits>>>,
    /// How often a held lease is written again (a third of the bucket's `max_age`).
    refresh: Duration,
}

/// Compare-and-set tries for a rate token before the job waits a moment instead.
const RATE_TRIES: usize = 5;

impl Limiter {
    /// Opens the buckets and watches `job_limits` until `shutdown`.
    pub async fn start(
        js: &async_nats::jetstream::Context,
        shutdown: CancellationToken,
    ) -> Result<Self, async_nats::Error> {
        let limits_bucket = js.get_key_value(crate::layout::LIMITS_BUCKET).await?;
        let leases = js.get_key_value(crate::layout::LEASES_BUCKET).await?;
        let max_age = leases.status().await?.max_age();
        let limiter = Self {
            leases,
            limits: Arc::default(),
            refresh: (max_age / 3).max(Duration::from_millis(100)),
        };
        let known = Arc::clone(&limiter.limits);
        tokio::spawn(async move {
            tokio::select! {
                () = watch(limits_bucket, known) => {}
                () = shutdown.cancelled() => {}
            }
        });
        Ok(limiter)
    }

    pub fn limits(&self, kind: &Kind) -> KindLimits {
        self.limits
            .read()
            .ok()
            .and_then(|known| known.get(kind).copied())
            .unwrap_or_default()
    }

    /// Decides whether `id`, of `kind`, may start now; takes its lease and rate token.
    pub async fn admit(&self, kind: &Kind, id: JobId) -> Admission {
        let limits = self.limits(kind);
        if limits.is_unlimited() {
            return Admission::Go(None);
        }
        let lease = match limits.max_running {
            Some(max) => match self.lease(kind, id, max).await {
                Some(lease) => Some(lease),
                None => return Admission::Wait(jitter(Duration::from_millis(200))),
            },
            None => None,
        };
        if let Some(max) = limits.max_per_second
            && let Err(wait) = self.rate_token(kind, max).await
        {
            // The lease is released as it drops.
            drop(lease);
            return Admission::Wait(wait);
        }
        Admission::Go(lease)
    }

    /// One of the kind's `max` leases, if one is free. Probing starts at a place that
    /// depends on the job, so replicas do not all contend for lease 0.
    async fn lease(&self, kind: &Kind, id: JobId, max: u32) -> Option<Lease> {
        let max = max.max(1);
        let start = u32::try_from(id.as_uuid().as_u128() % u128::from(max)).unwrap_or(0);
        let value = bytes::Bytes::from(id.to_string());
        for i in 0..max {
            let key = format!("{kind}.running.{}", (start + i) % max);
            match self.leases.create(&key, value.clone()).await {
                Ok(revision) => return Some(Lease::hold(self, key, value, revision)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    tracing::warn!(%kind, error = %e, "Cannot take a running lease; the job waits.");
                    return None;
                }
            }
        }
        None
    }

    /// A start token of this second, or how long to wait for the next second's.
    async fn rate_token(&self, kind: &Kind, max: u32) -> Result<(), Duration> {
        for _ in 0..RATE_TRIES {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let key = format!("{kind}.rate.{}", now.as_secs());
            let until_next = Duration::from_secs(1)
                .saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos())));
            let entry = match self.leases.entry(&key).await {
                Ok(entry) => entry.filter(|e| e.operation == kv::Operation::Put),
                Err(_) => return Err(jitter(Duration::from_millis(100))),
            };
            let taken = match &entry {
                Some(entry) => std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(u32::MAX),
                None => 0,
            };
            if taken >= max {
                return Err(until_next + jitter(Duration::from_millis(50)));
            }
            let next = bytes::Bytes::from((taken + 1).to_string());
            let written = match entry {
                Some(entry) => self
                    .leases
                    .update(&key, next, entry.revision)
                    .await
                    .map(drop)
                    .map_err(drop),
                None => self.leases.create(&key, next).await.map(drop).map_err(drop),
            };
            if written.is_ok() {
                return Ok(());
            }
            // Another replica took a token meanwhile: read again.
        }
        Err(jitter(Duration::from_millis(50)))
    }
}

/// `base` plus up to as much again at random, so replicas that wait do not come back
/// all at once.
fn jitter(base: Duration) -> Duration {
    let millis = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
    base + Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// A running lease: written again every `refresh` while held, deleted when dropped (if
/// it is still ours: a lease that expired meanwhile may be another job's now).
pub struct Lease {
    stop: CancellationToken,
}

impl Lease {
    fn hold(limiter: &Limiter, key: String, value: bytes::Bytes, revision: u64) -> Self {
        let stop = CancellationToken::new();
        let revision = Arc::new(AtomicU64::new(revision));
        let (leases, refresh, stopped) = (limiter.leases.clone(), limiter.refresh, stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(refresh) => {
                        let held = revision.load(Ordering::SeqCst);
                        match leases.update(&key, value.clone(), held).await {
                            Ok(next) => revision.store(next, Ordering::SeqCst),
                            Err(e) => tracing::warn!(%key, error = %e, "Could not refresh a running lease."),
                        }
                    }
                    () = stopped.cancelled() => break,
                }
            }
            let held = revision.load(Ordering::SeqCst);
            if let Err(e) = leases.delete_expect_revision(&key, Some(held)).await {
                tracing::debug!(%key, error = %e, "A running lease was not ours to delete any more.");
            }
        });
        Self { stop }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn watch(bucket: kv::Store, known: Arc<RwLock<HashMap<Kind, KindLimits>>>) {
    loop {
        // With history: the current limits first, then their changes.
        match bucket.watch_with_history(">").await {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let Ok(entry) = entry else { break };
                    let Ok(kind) = Kind::new(entry.key.clone()) else {
                        continue;
                    };
                    let limits = match entry.operation {
                        kv::Operation::Put => serde_json::from_slice(&entry.value).ok(),
                        _ => None,
                    };
                    if let Ok(mut known) = known.write() {
                        match limits {
                            Some(limits) => known.insert(kind, limits),
                            None => known.remove(&kind),
                        };
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot watch job_limits; retrying."),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
