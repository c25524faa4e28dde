//! Sharded, compare-and-set projection of job events into KV.
//!
//! The live service ([`Projector::run`]) and `--rebuild` ([`crate::rebuild`]) feed the same
//! shards, so a rebuilt bucket is made by exactly the code that maintains the live one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, kv};
use futures::StreamExt as _;
use jetjobs::JobId;
use jetjobs::batch::GroupCommit;
use jetjobs::protocol::{Outgoing, Published};
use jetjobs::state::{self, JobEvent, JobSnapshot};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// Compare-and-set conflicts tolerated for one write before the events are retried later.
const MAX_CAS_TRIES: usize = 16;
/// Events a shard takes from its queue at once; events of one job among them are
/// folded into a single KV write.
const SHARD_CHUNK: usize = 128;
/// How long one pull request stays open on the server. On shutdown the open request is
/// drained (its events handed back) until it ends, so this also bounds how long that takes.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Tries for one job's events before a live shard hands them back (nak), and before a
/// replay, which has no redelivery to fall back on, counts them as failed.
const LIVE_TRIES: u32 = 3;
const REPLAY_TRIES: u32 = 5;

pub struct Projector {
    bucket: kv::Store,
    shards: usize,
    buffer: usize,
    cache_per_shard: usize,
    /// Group commit of the live shards' writes: snapshots written while others are in
    /// flight share one atomic batch (one fsync). A rebuild writes on its own.
    writer: Option<GroupCommit>,
}

/// What a shard does with an event once it has dealt with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// From the durable consumer: ack once written, nak to have it come again.
    Live,
    /// Replayed by a rebuild from an ordered consumer: nothing to answer, and a failed
    /// write is tried again here, then counted.
    Replay,
}

/// Counters shared by the shards of one projection.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Events decoded and projected (whether or not they changed the snapshot).
    pub events: AtomicU64,
    /// Snapshots written to KV.
    pub writes: AtomicU64,
    /// Events that are not valid JSON events.
    pub undecodable: AtomicU64,
    /// Events whose snapshot could not be written (replay only; live ones come again).
    pub failed: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
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

/// The running shards of one projection: hand events in with [`Shards::sender`].
pub(crate) struct Shards {
    senders: Vec<mpsc::Sender<jetstream::Message>>,
    tracker: TaskTracker,
    stats: Arc<Stats>,
}

impl Shards {
    /// The queue of the shard that owns the job `subject` is about.
    pub fn sender(&self, subject: &str) -> &mpsc::Sender<jetstream::Message> {
        &self.senders[shard_of(subject, self.senders.len())]
    }

    /// Closes the queues and waits until every shard has projected (and answered for)
    /// what it holds.
    pub async fn finish(self) -> Arc<Stats> {
        drop(self.senders);
        self.tracker.close();
        self.tracker.wait().await;
        self.stats
    }
}

impl Projector {
    pub fn new(bucket: kv::Store, shards: usize, buffer: usize, cache_per_shard: usize) -> Self {
        Self {
            bucket,
            shards: shards.max(1),
            buffer: buffer.max(1),
            cache_per_shard,
            writer: None,
        }
    }

    /// Live shards write through `writer` (the bucket must allow atomic batches).
    pub fn with_group_commit(mut self, writer: GroupCommit) -> Self {
        self.writer = Some(writer);
        self
    }

    pub(crate) fn start(&self, mode: Mode) -> Shards {
        let tracker = TaskTracker::new();
        let stats = Arc::new(Stats::default());
        let senders = (0..self.shards)
            .map(|_| {
                let (tx, rx) = mpsc::channel(self.buffer);
                let shard = Shard {
                    writer: self.writer.clone().filter(|_| mode == Mode::Live),
                    bucket: self.bucket.clone(),
                    cache: BTreeMap::new(),
                    cache_limit: self.cache_per_shard,
                    mode,
                    stats: Arc::clone(&stats),
                };
                tracker.spawn(shard.run(rx));
                tx
            })
            .collect();
        Shards {
            senders,
            tracker,
            stats,
        }
    }

    /// Pulls events and projects them until `shutdown`.
    ///
    /// On shutdown it stops asking for events, lets every shard project and ack what it
    /// has already taken, and naks (without delay) every event the server still delivers
    /// to the open pull request, so another replica (or the next start) gets them at once
    /// instead of after `ack_wait`.
    pub async fn run(
        self,
        consumer: jetstream::consumer::PullConsumer,
        batch: usize,
        shutdown: CancellationToken,
    ) {
        let shards = self.start(Mode::Live);
        let mut backoff = Duration::from_millis(100);
        let mut handed_back = 0_usize;
        // One pull request at a time. The server shares messages out among a consumer's
        // open requests in turn, so reading several would reorder a job's events (a
        // `progress` after its `succeeded` is then skipped, and the live snapshot differs
        // from a rebuilt one). The shard queues cover the round trip between requests.
        while !shutdown.is_cancelled() {
            let pull = consumer
                .batch()
                .max_messages(batch.max(1))
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let mut messages = match pull {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot pull events; retrying.");
                    pause(&mut backoff, &shutdown).await;
                    continue;
                }
            };
            let mut failed = false;
            // Read the request to its end even after shutdown: what the server sends to it
            // is ours to answer for.
            while let Some(next) = messages.next().await {
                let message = match next {
                    Ok(message) => message,
                    Err(e) => {
                        tracing::warn!(error = %e, "Event pull interrupted; pulling again.");
                        failed = true;
                        break;
                    }
                };
                if shutdown.is_cancelled() {
                    ack(&message, AckKind::Nak(None)).await;
                    handed_back += 1;
                    continue;
                }
                let sender = shards.sender(&message.subject);
                // A full shard makes us wait here: that is the backpressure.
                tokio::select! {
                    biased;
                    permit = sender.reserve() => match permit {
                        Ok(permit) => permit.send(message),
                        Err(_) => {
                            tracing::error!(subject = %message.subject, "A shard has stopped; handing the event back.");
                            ack(&message, AckKind::Nak(None)).await;
                        }
                    },
                    () = shutdown.cancelled() => {
                        ack(&message, AckKind::Nak(None)).await;
                        handed_back += 1;
                    }
                }
            }
            if failed {
                pause(&mut backoff, &shutdown).await;
            } else {
                backoff = Duration::from_millis(100);
            }
        }
        if handed_back > 0 {
            tracing::info!(
                events = handed_back,
                "Handed back events it will not project."
            );
        }
        shards.finish().await;
    }
}

/// Waits `backoff` (or until shutdown) and doubles it, up to 5 s.
async fn pause(backoff: &mut Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(*backoff) => {}
        () = shutdown.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

/// Events of one job always land on the same shard, so they are written in order and
/// never race each other for the same key.
fn shard_of(subject: &str, shards: usize) -> usize {
    // `jobs.events.<kind>.<id>` and the job's webhook records on `….<id>.webhook`.
    subject
        .split('.')
        .nth(3)
        .and_then(|id| id.parse::<JobId>().ok())
        .map_or(0, |id| (id.as_uuid().as_u128() % shards as u128) as usize)
}

struct Shard {
    bucket: kv::Store,
    writer: Option<GroupCommit>,
    /// Revision and value of snapshots this shard wrote last, for jobs still running.
    /// Ordered by job id, which is time-ordered (UUIDv7): at its limit the oldest job's
    /// entry goes, not the whole cache.
    cache: BTreeMap<JobId, (u64, JobSnapshot)>,
    cache_limit: usize,
    mode: Mode,
    stats: Arc<Stats>,
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
                        Stats::add(&self.stats.undecodable, 1);
                        self.answer(&message, AckKind::Term).await;
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
                let span = self.span(id, &events, &messages);
                let projected = self
                    .project_with_retries(id, &events)
                    .instrument(span.clone())
                    .await;
                let entered = span.enter();
                let reply = match projected {
                    Ok(()) => AckKind::Ack,
                    Err(e) if self.mode == Mode::Live => {
                        tracing::warn!(job_id = %id, error = %e, "Projection failed; the events will come again.");
                        span.record("otel.status_code", "error");
                        AckKind::Nak(Some(Duration::from_secs(1)))
                    }
                    Err(e) => {
                        tracing::error!(job_id = %id, error = %e, "Projection failed; the job's snapshot may be behind.");
                        Stats::add(&self.stats.failed, events.len());
                        AckKind::Term
                    }
                };
                drop(entered);
                Stats::add(&self.stats.events, events.len());
                for message in &messages {
                    self.answer(message, reply).await;
                }
            }
        }
    }

    /// The span of one projection: live, a child of the span that published the job's
    /// newest event (a processor's attempt), so it joins the job's trace. A rebuild
    /// replays history and traces nothing.
    fn span(
        &self,
        id: JobId,
        events: &[JobEvent],
        messages: &[jetstream::Message],
    ) -> tracing::Span {
        if self.mode != Mode::Live {
            return tracing::Span::none();
        }
        let span = tracing::info_span!(
            "project",
            otel.name = "project job events",
            otel.status_code = tracing::field::Empty,
            job_id = %id,
            events = events.len(),
            last = events.last().map(|e| e.change.name()).unwrap_or_default(),
            trace_id = tracing::field::Empty,
        );
        let parent = messages
            .last()
            .map(|m| jetjobs::trace_context::extract(m.headers.as_ref()))
            .unwrap_or_default();
        jetjobs::telemetry::join_trace(&span, parent);
        span
    }

    async fn answer(&self, message: &jetstream::Message, kind: AckKind) {
        if self.mode == Mode::Live {
            ack(message, kind).await;
        }
    }

    /// A failed write is tried again at once, a few times: a live event handed back comes
    /// again only after later events of its job were applied, which could hide it (a
    /// `progress` after `succeeded` is skipped); a replayed one gets no other chance.
    async fn project_with_retries(
        &mut self,
        id: JobId,
        events: &[JobEvent],
    ) -> Result<(), ProjectError> {
        let tries = match self.mode {
            Mode::Live => LIVE_TRIES,
            Mode::Replay => REPLAY_TRIES,
        };
        let mut delay = Duration::from_millis(100);
        let mut outcome = self.project(id, events).await;
        for _ in 1..tries {
            let Err(e) = &outcome else { break };
            tracing::warn!(job_id = %id, error = %e, "Projection failed; trying again.");
            tokio::time::sleep(delay).await;
            delay *= 2;
            outcome = self.project(id, events).await;
        }
        outcome
    }

    /// Applies `events` (in order) to the job's snapshot and writes the result with a
    /// compare-and-set on the revision it was read at.
    async fn project(&mut self, id: JobId, events: &[JobEvent]) -> Result<(), ProjectError> {
        let key = id.to_string();
        for _ in 0..MAX_CAS_TRIES {
            // Taken out of the cache, not copied: a successful write puts the new
            // snapshot back, a failed one must re-read anyway.
            let stored = match self.cache.remove(&id) {
                Some((revision, snapshot)) => Stored {
                    revision: Some(revision),
                    snapshot: Some(snapshot),
                },
                None => read(&self.bucket, &key).await?,
            };
            let Stored {
                revision,
                snapshot: mut current,
            } = stored;
            let mut moved = false;
            for event in events {
                match state::apply(current.as_ref(), event) {
                    Ok(snapshot) => {
                        current = Some(snapshot);
                        moved = true;
                    }
                    Err(skip) => {
                        tracing::debug!(job_id = %id, event = event.change.name(), attempt = event.attempt, %skip, "Event skipped.");
                    }
                }
            }
            let snapshot = match current {
                Some(snapshot) if moved => snapshot,
                unchanged => {
                    // Nothing moved: what was read is still current.
                    if let (Some(revision), Some(snapshot)) = (revision, unchanged) {
                        self.remember(id, revision, snapshot);
                    }
                    return Ok(());
                }
            };
            let value = serde_json::to_vec(&snapshot)
                .map_err(|e| ProjectError::Write(e.to_string()))?
                .into();
            let written = match (&self.writer, revision) {
                // The same compare-and-set as `kv::Store::update`/`create` (expected last
                // subject sequence = the revision read, 0 for a new key), gathered.
                (Some(writer), revision) => {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(
                        jetjobs::subjects::headers::EXPECTED_LAST_SUBJECT_SEQ,
                        revision.unwrap_or(0).to_string().as_str(),
                    );
                    let put = Outgoing {
                        subject: format!("$KV.{}.{key}", self.bucket.name),
                        headers,
                        payload: value,
                    };
                    match writer.publish(put).await {
                        Published::Stored(revision) => Ok(revision),
                        Published::WrongLastSequence => Err(None),
                        Published::StoreFull => {
                            Err(Some("the bucket is full (maximum bytes)".to_string()))
                        }
                        Published::TooLarge => {
                            Err(Some("the snapshot is larger than NATS accepts".to_string()))
                        }
                        Published::SubjectFull | Published::NotConfirmed => {
                            Err(Some("JetStream did not confirm the write".to_string()))
                        }
                    }
                }
                (None, Some(revision)) => match self.bucket.update(&key, value, revision).await {
                    Ok(revision) => Ok(revision),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(None),
                    Err(e) => Err(Some(e.to_string())),
                },
                (None, None) => match self.bucket.create(&key, value).await {
                    Ok(revision) => Ok(revision),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(None),
                    Err(e) => Err(Some(e.to_string())),
                },
            };
            match written {
                Ok(revision) => {
                    Stats::add(&self.stats.writes, 1);
                    self.remember(id, revision, snapshot);
                    return Ok(());
                }
                // Someone else wrote first (the gateway's first snapshot, another
                // replica): read again and re-apply. (The cache no longer holds the job.)
                Err(None) => {}
                Err(Some(e)) => return Err(ProjectError::Write(e)),
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
        if self.cache_limit == 0 {
            return;
        }
        if self.cache.len() >= self.cache_limit && !self.cache.contains_key(&id) {
            self.cache.pop_first();
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
        let c = shard_of(&format!("jobs.events.hash.{id}.webhook"), 64);
        assert_eq!(a, b);
        assert_eq!(a, c, "webhook records go with their job's events");
        assert_eq!(shard_of("jobs.events.hash.not-an-id", 64), 0);
    }
}
