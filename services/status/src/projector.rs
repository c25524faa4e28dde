//! Sharded, compare-and-set projection of job events into KV.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, kv};
use futures::StreamExt as _;
use jetjobs::JobId;
use jetjobs::state::{self, JobEvent, JobSnapshot};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Compare-and-set conflicts tolerated for one write before the events are retried later.
const MAX_CAS_TRIES: usize = 16;
/// Events a shard takes from its queue at once; events of one job among them are
/// folded into a single KV write.
const SHARD_CHUNK: usize = 128;

pub struct Projector {
    bucket: kv::Store,
    shards: usize,
    buffer: usize,
    cache_per_shard: usize,
}

#[derive(Debug, thiserror::Error)]
enum ProjectError {
    #[error("reading the snapshot: {0}")]
    Read(#[source] kv::EntryError),
    #[error("writing the snapshot: {0}")]
    Write(String),
    #[error("the snapshot kept changing under us ({MAX_CAS_TRIES} conflicting writes)")]
    Contended,
}

/// Where a job's snapshot stands in KV: its revision (if the key exists) and value.
struct Stored {
    revision: Option<u64>,
    snapshot: Option<JobSnapshot>,
}

impl Projector {
    pub fn new(bucket: kv::Store, shards: usize, buffer: usize, cache_per_shard: usize) -> Self {
        Self {
            bucket,
            shards: shards.max(1),
            buffer: buffer.max(1),
            cache_per_shard,
        }
    }

    /// Pulls events and projects them until `shutdown`; then lets every shard finish and
    /// ack what it has already taken.
    pub async fn run(
        self,
        consumer: jetstream::consumer::PullConsumer,
        batch: usize,
        shutdown: CancellationToken,
    ) {
        let tracker = TaskTracker::new();
        let shards: Vec<mpsc::Sender<jetstream::Message>> = (0..self.shards)
            .map(|_| {
                let (tx, rx) = mpsc::channel(self.buffer);
                let shard = Shard {
                    bucket: self.bucket.clone(),
                    cache: HashMap::new(),
                    cache_limit: self.cache_per_shard,
                };
                tracker.spawn(shard.run(rx));
                tx
            })
            .collect();

        let mut backoff = Duration::from_millis(100);
        'pull: while !shutdown.is_cancelled() {
            let messages = consumer
                .stream()
                .max_messages_per_batch(batch.max(1))
                .expires(Duration::from_secs(5))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot pull events; retrying.");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                let next = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break 'pull,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        let shard = shard_of(&message.subject, shards.len());
                        // A full shard makes us wait here: that is the backpressure.
                        if shards[shard].send(message).await.is_err() {
                            break 'pull;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Event pull interrupted; pulling again.");
                        break;
                    }
                    None => break,
                }
            }
        }
        drop(shards);
        tracker.close();
        tracker.wait().await;
    }
}

/// Events of one job always land on the same shard, so they are written in order and
/// never race each other for the same key.
fn shard_of(subject: &str, shards: usize) -> usize {
    subject
        .rsplit('.')
        .next()
        .and_then(|id| id.parse::<JobId>().ok())
        .map_or(0, |id| (id.as_uuid().as_u128() % shards as u128) as usize)
}

struct Shard {
    bucket: kv::Store,
    /// Revision and value of snapshots this shard wrote last, for jobs still running.
    cache: HashMap<JobId, (u64, JobSnapshot)>,
    cache_limit: usize,
}

impl Shard {
    async fn run(mut self, mut queue: mpsc::Receiver<jetstream::Message>) {
        let mut chunk = Vec::with_capacity(SHARD_CHUNK);
        while queue.recv_many(&mut chunk, SHARD_CHUNK).await > 0 {
            let mut jobs: Vec<(JobId, Vec<JobEvent>, Vec<jetstream::Message>)> = Vec::new();
            for message in chunk.drain(..) {
                let event: JobEvent = match serde_json::from_slice(&message.payload) {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::error!(subject = %message.subject, error = %e, "Undecodable event; dropping it.");
                        ack(&message, AckKind::Term).await;
                        continue;
                    }
                };
                match jobs.iter_mut().find(|(id, _, _)| *id == event.job_id) {
                    Some((_, events, messages)) => {
                        events.push(event);
                        messages.push(message);
                    }
                    None => jobs.push((event.job_id, vec![event], vec![message])),
                }
            }
            for (id, events, messages) in jobs {
                let outcome = self.project(id, &events).await;
                let reply = match &outcome {
                    Ok(()) => AckKind::Ack,
                    Err(e) => {
                        tracing::warn!(job_id = %id, error = %e, "Projection failed; the events will come again.");
                        AckKind::Nak(Some(Duration::from_secs(1)))
                    }
                };
                for message in &messages {
                    ack(message, reply).await;
                }
            }
        }
    }

    /// Applies `events` (in order) to the job's snapshot and writes the result with a
    /// compare-and-set on the revision it was read at.
    async fn project(&mut self, id: JobId, events: &[JobEvent]) -> Result<(), ProjectError> {
        let key = id.to_string();
        for _ in 0..MAX_CAS_TRIES {
            let stored = match self.cache.get(&id) {
                Some((revision, snapshot)) => Stored {
                    revision: Some(*revision),
                    snapshot: Some(snapshot.clone()),
                },
                None => read(&self.bucket, &key).await?,
            };
            let mut next = stored.snapshot;
            let mut changed = false;
            for event in events {
                match state::apply(next.as_ref(), event) {
                    Ok(snapshot) => {
                        next = Some(snapshot);
                        changed = true;
                    }
                    Err(skip) => {
                        tracing::debug!(job_id = %id, event = event.change.name(), attempt = event.attempt, %skip, "Event skipped.");
                    }
                }
            }
            let Some(snapshot) = next.filter(|_| changed) else {
                return Ok(());
            };
            let value = serde_json::to_vec(&snapshot)
                .map_err(|e| ProjectError::Write(e.to_string()))?
                .into();
            let written = match stored.revision {
                Some(revision) => match self.bucket.update(&key, value, revision).await {
                    Ok(revision) => Ok(revision),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(None),
                    Err(e) => Err(Some(e.to_string())),
                },
                None => match self.bucket.create(&key, value).await {
                    Ok(revision) => Ok(revision),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(None),
                    Err(e) => Err(Some(e.to_string())),
                },
            };
            match written {
                Ok(revision) => {
                    self.remember(id, revision, snapshot);
                    return Ok(());
                }
                // Someone else wrote first (the gateway's first snapshot, another
                // replica): read again and re-apply.
                Err(None) => {
                    self.cache.remove(&id);
                }
                Err(Some(e)) => {
                    self.cache.remove(&id);
                    return Err(ProjectError::Write(e));
                }
            }
        }
        Err(ProjectError::Contended)
    }

    fn remember(&mut self, id: JobId, revision: u64, snapshot: JobSnapshot) {
        if snapshot.state.is_terminal() {
            // Nothing will move it again; a late event re-reads KV, which is rare.
            self.cache.remove(&id);
            return;
        }
        if self.cache.len() >= self.cache_limit {
            self.cache.clear();
        }
        self.cache.insert(id, (revision, snapshot));
    }
}

async fn read(bucket: &kv::Store, key: &str) -> Result<Stored, ProjectError> {
    let Some(entry) = bucket.entry(key).await.map_err(ProjectError::Read)? else {
        return Ok(Stored {
            revision: None,
            snapshot: None,
        });
    };
    let snapshot = match entry.operation {
        kv::Operation::Put => match serde_json::from_slice(&entry.value) {
            Ok(snapshot) => Some(snapshot),
            Err(e) => {
                tracing::warn!(%key, error = %e, "Stored snapshot is not valid; replacing it.");
                None
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    Ok(Stored {
        revision: Some(entry.revision),
        snapshot,
    })
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(subject = %message.subject, error = %e, "Ack not sent; the event will be redelivered.");
    }
}

#[cfg(test)]
mod tests {
    use super::shard_of;

    #[test]
    fn events_of_one_job_share_a_shard() {
        let id = "0193a5b2-0000-7000-8000-00000000002a";
        let a = shard_of(&format!("jobs.events.hash.{id}"), 64);
        let b = shard_of(&format!("jobs.events.other.{id}"), 64);
        assert_eq!(a, b);
        assert_eq!(shard_of("jobs.events.hash.not-an-id", 64), 0);
    }
}
