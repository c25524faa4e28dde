//! What every part of a running processor shares.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use tokio_util::sync::CancellationToken;

use super::cancel::Cancellations;
use super::config::RuntimeConfig;
use super::handler::{ErasedHandler, KindDef};
use crate::job::Kind;
use crate::metrics::JobMetrics;
use crate::protocol::EventLog;

pub(super) struct Runtime {
    pub metrics: JobMetrics,
    pub handlers: HashMap<Kind, Arc<dyn ErasedHandler>>,
    pub defs: HashMap<Kind, KindDef>,
    /// `JOB_EVENTS`, through the one fenced-write protocol.
    pub events: EventLog,
    /// `JOBS_DEAD`, read to check that a failed job's dead letter exists.
    pub dead: jetstream::stream::Stream,
    /// `job_blobs`: inputs handlers read, results too large to travel inline.
    pub blobs: crate::blobs::Blobs,
    pub heartbeat: Duration,
    pub config: RuntimeConfig,
    pub cancellations: Arc<Cancellations>,
    /// Handlers running at once: `concurrency`, high priority first.
    pub run_slots: super::slots::RunSlots,
    /// The limits per kind, enforced across replicas.
    pub limits: crate::limits::Limiter,
    /// `JOBS`, read to see how long the next low-priority job has waited.
    pub jobs: jetstream::stream::Stream,
    /// Cancelled on shutdown: jobs still waiting for a run slot are handed back.
    pub stop_starting: CancellationToken,
    /// What this replica holds and runs, published to KV `job_workers`.
    pub presence: Arc<crate::presence::Presence>,
}

impl Runtime {
    /// Acks a job whose outcome is recorded. Not confirmed: a lost ack only means a
    /// redelivery, which finds the outcome recorded (the fence) and is acked without
    /// running again; waiting for the server here would hold the job for a round trip.
    pub async fn ack(&self, message: &jetstream::Message) {
        if let Err(e) = message.ack().await {
            tracing::warn!(error = %e, "Ack not sent; the job will be delivered again (its outcome is recorded).");
        }
    }

    /// Terminates a message that can never be processed, so it is not redelivered.
    pub async fn terminate(&self, message: &jetstream::Message) {
        if let Err(e) = message.ack_with(AckKind::Term).await {
            tracing::warn!(error = %e, "Could not terminate a message; it will be delivered again.");
        }
    }

    /// Hands a job back for another delivery, after `delay` if given.
    pub async fn nak(&self, message: &jetstream::Message, delay: Option<Duration>) {
        if let Err(e) = message.ack_with(AckKind::Nak(delay)).await {
            tracing::warn!(error = %e, "Could not hand the job back; ack_wait will.");
        }
    }
}

/// Records how this attempt ended on its span: the `outcome` attribute, and an error
/// status for the runs that failed (retried or not).
pub(super) fn ended_as(outcome: &'static str, error: Option<&str>) {
    let span = tracing::Span::current();
    span.record("outcome", outcome);
    if let Some(error) = error {
        span.record("otel.status_code", "error");
        span.record("otel.status_description", error);
    }
}

/// The trace context for every message about the job: this attempt's span, or the
/// job message's own context when spans are not exported.
pub(super) fn trace_headers(incoming: Option<&HeaderMap>) -> HeaderMap {
    crate::trace_context::outgoing(incoming)
}

/// Longest error message kept in an event (a handler may return a whole response body).
const MAX_ERROR_LEN: usize = 4096;

pub(super) fn clip(mut error: String) -> String {
    if error.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
        error.push('…');
    }
    error
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}
