//! How every jetjobs writer talks to the streams: the one place that builds job and event
//! messages, publishes them until JetStream confirms, and writes fenced events.
//!
//! The processors and the gateway's cancel and retry all go through [`EventLog`], so the
//! fence ([`crate::fence`]) and its retry rules exist once.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream::DirectGetErrorKind};
use bytes::Bytes;

use crate::fence::{self, Conflict, Superseded};
use crate::job::{JobId, JobRequest, Kind};
use crate::state::{Change, JobEvent};
use crate::subjects::{self, headers};

/// A message ready to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// The `JOBS` message for `request`: its subject, `Nats-Msg-Id` = `msg_id` (the job id for
/// a submission), the kind and id headers, and the trace context in `trace`.
pub fn job_message(
    request: &JobRequest,
    msg_id: &str,
    trace: HeaderMap,
) -> Result<Outgoing, serde_json::Error> {
    let payload = serde_json::to_vec(request)?;
    let mut headers = trace;
    headers.insert(headers::MSG_ID, msg_id);
    headers.insert(headers::KIND, request.kind.as_str());
    headers.insert(headers::JOB_ID, request.id.to_string().as_str());
    Ok(Outgoing {
        subject: subjects::submit(&request.kind, request.id, request.scheduling.priority),
        headers,
        payload: payload.into(),
    })
}

/// Where an event goes: progress reports and webhook records off the job's own subject,
/// so they can never stand between a writer and its fence.
pub fn event_subject(event: &JobEvent) -> String {
    match event.change {
        Change::Progress(_) => subjects::progress(&event.kind, event.job_id),
        Change::Webhook(_) => subjects::webhook_record(&event.kind, event.job_id),
        _ => subjects::event(&event.kind, event.job_id),
    }
}

/// The `JOB_EVENTS` message for `event`, with the trace context in `trace`.
pub fn event_message(event: &JobEvent, trace: &HeaderMap) -> Result<Outgoing, serde_json::Error> {
    let payload = serde_json::to_vec(event)?;
    let mut headers = trace.clone();
    headers.insert(headers::MSG_ID, event.msg_id().as_str());
    headers.insert(headers::KIND, event.kind.as_str());
    headers.insert(headers::JOB_ID, event.job_id.to_string().as_str());
    Ok(Outgoing {
        subject: event_subject(event),
        headers,
        payload: payload.into(),
    })
}

/// How hard a writer tries before it gives up on a publish. Every publish carries a
/// `Nats-Msg-Id`, so repeating one that did land is deduplicated.
#[derive(Clone, Copy, Debug)]
pub struct Retries {
    pub tries: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Retries {
    /// A processor recording an outcome: an unconfirmed outcome leaves the job unacked
    /// until `ack_wait`, so a few seconds of trying are cheap.
    pub const BACKGROUND: Self = Self {
        tries: 5,
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
    };
    /// A request a client is waiting on: one quick retry, then the client hears about it.
    pub const REQUEST: Self = Self {
        tries: 2,
        first_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(50),
    };
}

/// The outcome of a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// Stored by JetStream (PubAck received) at this stream sequence.
    Stored(u64),
    /// Over the server's `max_payload`: no retry can help.
    TooLarge,
    /// The subject's last message is not the expected one (a fenced publish lost).
    WrongLastSequence,
    /// The subject holds all the messages it may (`JOBS`: one per job).
    SubjectFull,
    /// The stream is full (discard-new): it refuses new messages until space frees.
    StoreFull,
    /// Not confirmed after every retry.
    NotConfirmed,
}

impl Published {
    pub fn is_stored(self) -> bool {
        matches!(self, Self::Stored(_))
    }
}

/// The outcome of a fenced write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fenced {
    Recorded,
    Superseded(Superseded),
    TooLarge,
    NotConfirmed,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("cannot read the job's events: {0}")]
    Read(String),
    #[error("a stored event cannot be decoded: {0}")]
    Decode(#[from] serde_json::Error),
}

/// `JOB_EVENTS`, as the writers of job events use it.
#[derive(Clone)]
pub struct EventLog {
    js: jetstream::Context,
    events: jetstream::stream::Stream,
    /// Group commit of the events of many jobs (a processor's); `None` publishes each
    /// event on its own (the gateway's rare cancel and retry events).
    group: Option<crate::batch::GroupCommit>,
}

impl EventLog {
    pub fn new(js: jetstream::Context, events: jetstream::stream::Stream) -> Self {
        Self {
            js,
            events,
            group: None,
        }
    }

    /// Events written while others are in flight are stored together, in one atomic
    /// batch. A refused batch is published one by one, so every write gets the answer it
    /// would get alone — the fence included.
    pub fn with_group_commit(mut self, group: crate::batch::GroupCommit) -> Self {
        self.group = Some(group);
        self
    }

    /// The last event on the job's own subject and its sequence, if it has any.
    pub async fn last(
        &self,
        kind: &Kind,
        id: JobId,
    ) -> Result<Option<(u64, JobEvent)>, ProtocolError> {
        match self
            .events
            .direct_get_last_for_subject(subjects::event(kind, id))
            .await
        {
            Ok(message) => Ok(Some((
                message.sequence,
                serde_json::from_slice(&message.payload)?,
            ))),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(ProtocolError::Read(e.to_string())),
        }
    }

    /// Sends an event without waiting for its PubAck (progress reports: a lost one is
    /// superseded by the next).
    pub async fn send(&self, event: &JobEvent, trace: &HeaderMap) -> Result<(), String> {
        let message = event_message(event, trace).map_err(|e| e.to_string())?;
        self.js
            .publish_with_headers(message.subject, message.headers, message.payload)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Publishes until JetStream confirms, within `retries` (group commit: within its
    /// own retries).
    pub async fn publish(&self, message: Outgoing, retries: Retries) -> Published {
        match &self.group {
            Some(group) => group.publish(message).await,
            None => publish(&self.js, message, retries).await,
        }
    }

    /// Writes `event` to the job's subject only if the subject's last event is still the
    /// one at `*seq`; on success `*seq` is the new event's sequence. A refusal is
    /// decided by [`fence::on_conflict`] on the subject's last event.
    pub async fn write_fenced(
        &self,
        event: &JobEvent,
        trace: &HeaderMap,
        seq: &mut u64,
        retries: Retries,
    ) -> Fenced {
        let message = match event_message(event, trace) {
            Ok(message) => message,
            Err(e) => {
                tracing::error!(error = %e, "Cannot encode an event.");
                return Fenced::NotConfirmed;
            }
        };
        // At most: the first try, and one more after the subject emptied (aged out).
        for _ in 0..2 {
            let mut fenced = message.clone();
            fenced
                .headers
                .insert(headers::EXPECTED_LAST_SUBJECT_SEQ, seq.to_string().as_str());
            match self.publish(fenced, retries).await {
                Published::Stored(stored) => {
                    *seq = stored;
                    return Fenced::Recorded;
                }
                Published::TooLarge => return Fenced::TooLarge,
                Published::NotConfirmed | Published::StoreFull | Published::SubjectFull => {
                    return Fenced::NotConfirmed;
                }
                Published::WrongLastSequence => {}
            }
            let last = match self.last(&event.kind, event.job_id).await {
                Ok(last) => last,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read the job's last event after a refused write.");
                    return Fenced::NotConfirmed;
                }
            };
            match fence::on_conflict(event, last.as_ref().map(|(s, e)| (*s, e))) {
                Conflict::Recorded(stored) => {
                    *seq = stored;
                    return Fenced::Recorded;
                }
                Conflict::Retry(expected) => *seq = expected,
                Conflict::Superseded(why) => return Fenced::Superseded(why),
            }
        }
        Fenced::NotConfirmed
    }
}

/// Publishes until JetStream confirms, within `retries`.
pub async fn publish(js: &jetstream::Context, message: Outgoing, retries: Retries) -> Published {
    let mut delay = retries.first_delay;
    let tries = retries.tries.max(1);
    for attempt in 1..=tries {
        let sent = js
            .publish_with_headers(
                message.subject.clone(),
                message.headers.clone(),
                message.payload.clone(),
            )
            .await;
        let acked = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) => return Published::Stored(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                tracing::error!(subject = %message.subject, bytes = message.payload.len(), "Message too large for NATS.");
                return Published::TooLarge;
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                return Published::WrongLastSequence;
            }
            Err(e) if e.to_string().contains("maximum messages per subject") => {
                return Published::SubjectFull;
            }
            Err(e) if is_full(&e.to_string()) => {
                tracing::warn!(subject = %message.subject, error = %e, "The stream is full.");
                return Published::StoreFull;
            }
            Err(e) if attempt < tries => {
                tracing::warn!(subject = %message.subject, error = %e, "Publish not confirmed; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(retries.max_delay);
            }
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "Publish not confirmed; giving up.");
            }
        }
    }
    Published::NotConfirmed
}

/// Whether a refusal says the stream is full (discard-new limits), as opposed to a
/// transient failure worth retrying at once.
fn is_full(error: &str) -> bool {
    error.contains("maximum messages") || error.contains("maximum bytes")
}
