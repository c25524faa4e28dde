//! Group commit: JetStream atomic batch publish (ADR-50), and a publisher that gathers
//! concurrent writes into such batches.
//!
//! Why: with `sync_interval: always` every stored message costs an fsync, and a stream
//! never shares one fsync between separate publishes. An atomic batch of N messages is
//! staged and committed with about four fsyncs whatever N is (nats-server 2.15; measured
//! with strace: 100 publishes = 100 fsyncs, one batch of 100 = 4). So a writer under load
//! gathers what is waiting into one batch, and a lone write goes out on its own — a batch
//! of one would cost four fsyncs instead of one.
//!
//! async-nats 0.51 knows the stream flag, the headers and the PubAck fields, but has no
//! batch publisher: [`publish_atomic`] is it. Every message but the last goes out without
//! a reply subject; the last carries `Nats-Batch-Commit: 1` and is a request, answered
//! with one PubAck for the whole batch (or one error, and then nothing of it is stored).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::protocol::{self, Outgoing, Published, Retries};

/// The server's limit on messages in one atomic batch.
pub const MAX_BATCH: usize = 1000;

pub const BATCH_ID: &str = "Nats-Batch-Id";
pub const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
pub const BATCH_COMMIT: &str = "Nats-Batch-Commit";

/// What the server answered for a committed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchAck {
    pub stream: String,
    /// The stream sequence of the batch's last message; the batch is contiguous.
    pub last_sequence: u64,
    pub count: u64,
}

impl BatchAck {
    /// The stream sequence of message `index` of the batch.
    pub fn sequence_of(&self, index: usize) -> u64 {
        let from_end = self.count.saturating_sub(1 + index as u64);
        self.last_sequence.saturating_sub(from_end)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("an atomic batch needs at least one message")]
    Empty,
    #[error("an atomic batch holds at most {MAX_BATCH} messages, not {0}")]
    TooLarge(usize),
    /// JetStream refused the batch: nothing of it is stored.
    #[error("JetStream refused the batch: {description} (error {err_code})")]
    Refused { err_code: u64, description: String },
    /// No answer to the commit: the batch may or may not be stored.
    #[error("the batch commit was not confirmed: {0}")]
    NotConfirmed(String),
}

impl BatchError {
    /// Whether the server certainly stored nothing.
    pub fn nothing_stored(&self) -> bool {
        !matches!(self, Self::NotConfirmed(_))
    }
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    error: Option<ReplyError>,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: Option<u64>,
}

#[derive(Deserialize)]
struct ReplyError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Publishes `messages` as one atomic batch: all of them are stored, contiguously and in
/// order, or none. Each may carry `Nats-Msg-Id` and `Nats-Expected-Last-Subject-Sequence`
/// (checked at commit; a duplicate id or a wrong sequence refuses the whole batch).
pub async fn publish_atomic(
    client: &async_nats::Client,
    messages: &[Outgoing],
) -> Result<BatchAck, BatchError> {
    let last = match messages.len() {
        0 => return Err(BatchError::Empty),
        n if n > MAX_BATCH => return Err(BatchError::TooLarge(n)),
        n => n - 1,
    };
    let id = uuid::Uuid::now_v7().simple().to_string();
    for (index, message) in messages.iter().enumerate() {
        let mut headers = message.headers.clone();
        headers.insert(BATCH_ID, id.as_str());
        headers.insert(BATCH_SEQUENCE, (index + 1).to_string().as_str());
        if index < last {
            client
                .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
                .await
                .map_err(|e| BatchError::Refused {
                    err_code: 0,
                    description: format!("not sent: {e}"),
                })?;
            continue;
        }
        headers.insert(BATCH_COMMIT, "1");
        let reply = client
            .request_with_headers(message.subject.clone(), headers, message.payload.clone())
            .await
            .map_err(|e| BatchError::NotConfirmed(e.to_string()))?;
        let reply: Reply = serde_json::from_slice(&reply.payload).map_err(|e| {
            BatchError::NotConfirmed(format!("an unreadable answer to the commit: {e}"))
        })?;
        if let Some(error) = reply.error {
            return Err(BatchError::Refused {
                err_code: error.err_code,
                description: error.description,
            });
        }
        return Ok(BatchAck {
            stream: reply.stream,
            last_sequence: reply.seq,
            count: reply.count.unwrap_or(messages.len() as u64),
        });
    }
    Err(BatchError::Empty)
}

/// How a [`GroupCommit`] gathers writes.
#[derive(Clone, Copy, Debug)]
pub struct GroupConfig {
    /// Gather at all: off, every write is its own publish.
    pub enabled: bool,
    /// Fewer waiting writes than this go out one by one (a batch costs ~4 fsyncs).
    pub min_batch: usize,
    /// At most this many writes in one batch (≤ [`MAX_BATCH`]).
    pub max_batch: usize,
    /// Batches (or groups of single publishes) in flight at once; the server allows 50
    /// open batches per stream.
    pub in_flight: usize,
    /// Writes waiting to be gathered; a full queue makes writers wait (backpressure).
    pub queue: usize,
    /// Retries of a write that goes out on its own (or after a refused batch).
    pub retries: Retries,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_batch: 5,
            max_batch: 256,
            in_flight: 8,
            queue: 4096,
            retries: Retries::REQUEST,
        }
    }
}

struct Write {
    message: Outgoing,
    done: oneshot::Sender<Published>,
}

/// Publishes through group commit: concurrent writes to one stream are gathered into
/// atomic batches while earlier batches are in flight; a lone write goes out at once.
/// Each writer gets the same [`Published`] it would have got publishing alone: when a
/// batch is refused (one duplicate, one wrong sequence or a full stream refuses all of
/// it), its writes are published one by one, so each gets its own answer.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Write>,
    js: jetstream::Context,
    retries: Retries,
    enabled: bool,
}

impl GroupCommit {
    /// Starts the gathering task; it ends with `shutdown` or when every handle is gone.
    pub fn start(
        client: async_nats::Client,
        js: jetstream::Context,
        config: GroupConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(config.queue.max(1));
        if config.enabled {
            tokio::spawn(gather(client, js.clone(), config, receiver, shutdown));
        }
        Self {
            queue,
            js,
            retries: config.retries,
            enabled: config.enabled,
        }
    }

    /// Publishes `message`, in a batch with whatever else is waiting.
    pub async fn publish(&self, message: Outgoing) -> Published {
        if !self.enabled {
            return protocol::publish(&self.js, message, self.retries).await;
        }
        let (done, answer) = oneshot::channel();
        let write = Write { message, done };
        if let Err(mpsc::error::SendError(write)) = self.queue.send(write).await {
            // The gatherer is gone (shutdown): publish alone.
            return protocol::publish(&self.js, write.message, self.retries).await;
        }
        answer.await.unwrap_or(Published::NotConfirmed)
    }
}

async fn gather(
    client: async_nats::Client,
    js: jetstream::Context,
    config: GroupConfig,
    mut receiver: mpsc::Receiver<Write>,
    shutdown: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(config.in_flight.max(1)));
    let max_batch = config.max_batch.clamp(1, MAX_BATCH);
    loop {
        // The permit first: while every slot is busy, writes pile up in the queue, and
        // the next batch takes them all — the busier the stream, the bigger the batch.
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let first = tokio::select! {
            () = shutdown.cancelled() => None,
            first = receiver.recv() => first,
        };
        let Some(first) = first else {
            // Shutdown or no writers left: answer what is still queued, one by one.
            receiver.close();
            while let Some(write) = receiver.recv().await {
                let published = protocol::publish(&js, write.message, config.retries).await;
                let _ = write.done.send(published);
            }
            return;
        };
        let mut writes = vec![first];
        while writes.len() < max_batch {
            match receiver.try_recv() {
                Ok(write) => writes.push(write),
                Err(_) => break,
            }
        }
        let (client, js) = (client.clone(), js.clone());
        tokio::spawn(async move {
            commit(&client, &js, writes, config).await;
            drop(permit);
        });
    }
}

async fn commit(
    client: &async_nats::Client,
    js: &jetstream::Context,
    writes: Vec<Write>,
    config: GroupConfig,
) {
    if writes.len() >= config.min_batch.max(2) {
        let messages: Vec<Outgoing> = writes.iter().map(|w| w.message.clone()).collect();
        match tokio::time::timeout(COMMIT_TIMEOUT, publish_atomic(client, &messages)).await {
            Ok(Ok(ack)) => {
                for (index, write) in writes.into_iter().enumerate() {
                    let _ = write.done.send(Published::Stored(ack.sequence_of(index)));
                }
                return;
            }
            // Refused or unconfirmed: one by one below. Every write carries its
            // `Nats-Msg-Id`, so one the batch did store is deduplicated, and one whose
            // fence the batch moved is answered by the fence as it would be alone.
            Ok(Err(e)) => {
                tracing::debug!(error = %e, writes = writes.len(), "Batch not committed; publishing its writes one by one.");
            }
            Err(_) => {
                tracing::debug!(
                    writes = writes.len(),
                    "Batch commit timed out; publishing its writes one by one."
                );
            }
        }
    }
    let singles = writes.into_iter().map(|write| async move {
        let published = protocol::publish(js, write.message, config.retries).await;
        let _ = write.done.send(published);
    });
    futures::future::join_all(singles).await;
}

/// How long a batch commit may take before its writes are sent one by one.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
