//! Delivering one event: decide whether it is due, POST it signed, record the attempt,
//! then ack (done) or nak with a delay (try again).
//!
//! The order matters for at-least-once: the record is stored (PubAck) before the event
//! is answered, and the event is acked only after a final outcome is recorded. A crash
//! in between makes the event come again; the receiver may then see a delivery twice,
//! with the same `webhook-id`, and can drop the repeat.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt as _, Full, Limited};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use jetjobs::state::{self, JobEvent};
use jetjobs::subjects::{self, headers};
use jetjobs::webhook::{self, AddressPolicy, CallbackEvent, Secret, WebhookRecord, WebhookState};
use serde_json::json;
use tracing::Instrument as _;

use crate::client;
use crate::retry::{self, parse_retry_after};

/// How long a record that could not be stored waits before the event is tried again.
const RECORD_RETRY: Duration = Duration::from_secs(2);

/// How much of a response body is read (and thrown away) so the connection can be
/// reused; a longer body closes the connection instead.
const DRAIN_LIMIT: usize = 16 * 1024;

const USER_AGENT: &str = concat!("jetjobs-notifier/", env!("CARGO_PKG_VERSION"));

pub struct Deliverer {
    pub metrics: jetjobs::metrics::WebhookMetrics,
    pub js: jetstream::Context,
    pub http: client::HttpClient,
    pub secrets: Vec<Secret>,
    pub policy: AddressPolicy,
    /// One delivery (resolve, connect, TLS, send, response head) must finish within it.
    pub timeout: Duration,
    pub retry: retry::Policy,
}

/// What one attempt came to.
enum Outcome {
    Delivered(u16),
    /// Worth another try (a timeout, a refused connection, 5xx, 408, 429).
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// Never worth another try (a refused address, a 4xx, a redirect).
    Failed {
        status: Option<u16>,
        error: String,
    },
}

impl Deliverer {
    /// Handles one message of the `notifier` consumer, answering it in every case.
    pub async fn handle(&self, message: jetstream::Message) {
        let (seq, delivered) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
            ),
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "Event without metadata; skipping it.");
                answer(&message, AckKind::Term).await;
                return;
            }
        };
        let event: JobEvent = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "Undecodable event; no webhook for it.");
                answer(&message, AckKind::Term).await;
                return;
            }
        };
        let Some(callback_event) = event
            .change
            .callback_event()
            .filter(|_| event.wants_webhook())
        else {
            answer(&message, AckKind::Ack).await;
            return;
        };
        let attempt = delivered.max(1);
        // A child of the span that published the event, so deliveries join the job's trace.
        let span = tracing::info_span!(
            "deliver",
            otel.name = "deliver webhook",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            job_id = %event.job_id,
            event = %callback_event,
            attempt,
            outcome = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        jetjobs::telemetry::join_trace(
            &span,
            jetjobs::trace_context::extract(message.headers.as_ref()),
        );
        self.deliver(message, seq, attempt, event, callback_event)
            .instrument(span)
            .await;
    }

    async fn deliver(
        &self,
        message: jetstream::Message,
        seq: u64,
        attempt: u32,
        event: JobEvent,
        callback_event: CallbackEvent,
    ) {
        let webhook_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::MSG_ID))
            .map_or_else(|| event.msg_id(), |id| id.as_str().to_string());

        let outcome = if self.retry.expired(event.at, Utc::now()) {
            // Redelivered after the period (the notifier was down, say): no more tries.
            Outcome::Failed {
                status: None,
                error: format!(
                    "gave up: the retry period ({} s from the event) is over",
                    self.retry.period.as_secs()
                ),
            }
        } else {
            self.attempt(&event, &webhook_id).await
        };

        let (record_outcome, status, error, reply) = match outcome {
            Outcome::Delivered(status) => {
                (WebhookState::Delivered, Some(status), None, AckKind::Ack)
            }
            Outcome::Failed { status, error } => {
                (WebhookState::Failed, status, Some(error), AckKind::Ack)
            }
            Outcome::Retry {
                status,
                error,
                retry_after,
            } => match self.retry.next(attempt, retry_after, event.at, Utc::now()) {
                Some(delay) => (
                    WebhookState::Retrying,
                    status,
                    Some(error),
                    AckKind::Nak(Some(delay)),
                ),
                None => (
                    WebhookState::Failed,
                    status,
                    Some(format!("gave up after the retry period: {error}")),
                    AckKind::Ack,
                ),
            },
        };
        let retry_in_ms = match reply {
            AckKind::Nak(Some(delay)) => Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
            _ => None,
        };
        let record = WebhookRecord {
            event: callback_event,
            event_seq: seq,
            delivery_attempt: attempt,
            outcome: record_outcome,
            status,
            error,
            retry_in_ms,
        };
        tracing::info!(
            job_id = %event.job_id,
            event = %callback_event,
            attempt,
            outcome = ?record.outcome,
            status = ?record.status,
            error = record.error.as_deref().unwrap_or(""),
            "Webhook attempt."
        );
        let counted = match record.outcome {
            WebhookState::Delivered => "delivered",
            WebhookState::Retrying => "retrying",
            WebhookState::Failed => "failed",
            WebhookState::Pending => "pending",
        };
        let span = tracing::Span::current();
        span.record("outcome", counted);
        if let Some(status) = record.status {
            span.record("http.response.status_code", status);
        }
        if record.outcome != WebhookState::Delivered {
            span.record("otel.status_code", "error");
        }
        match self.record(&event, record).await {
            Ok(()) => {
                self.metrics.count(counted);
                answer(&message, reply).await;
            }
            Err(e) => {
                // Unrecorded, the attempt will be made again: at least once, never lost.
                tracing::warn!(job_id = %event.job_id, error = %e, "Could not record a webhook attempt; the event will come again.");
                answer(&message, AckKind::Nak(Some(RECORD_RETRY))).await;
            }
        }
    }

    /// One POST of `event` to its callback.
    async fn attempt(&self, event: &JobEvent, webhook_id: &str) -> Outcome {
        let Some(raw) = &event.callback_url else {
            return Outcome::Failed {
                status: None,
                error: "the job has no callback_url".into(),
            };
        };
        let url = match webhook::parse_callback_url(raw) {
            Ok(url) => url,
            Err(e) => {
                return Outcome::Failed {
                    status: None,
                    error: e.to_string(),
                };
            }
        };
        // Names are checked by the resolver; a literal address never reaches it.
        if let Err(e) = self.policy.check_url(&url) {
            return Outcome::Failed {
                status: None,
                error: e.to_string(),
            };
        }
        let body = match body(event) {
            Ok(body) => body,
            Err(e) => {
                return Outcome::Failed {
                    status: None,
                    error: format!("cannot encode the webhook body: {e}"),
                };
            }
        };
        let timestamp = Utc::now().timestamp();
        let signature = webhook::sign(&self.secrets, webhook_id, timestamp, &body);
        let request = http::Request::post(url.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, USER_AGENT)
            .header(webhook::headers::ID, webhook_id)
            .header(webhook::headers::TIMESTAMP, timestamp.to_string())
            .header(webhook::headers::SIGNATURE, signature)
            .body(Full::new(Bytes::from(body)));
        let mut request = match request {
            Ok(request) => request,
            Err(e) => {
                return Outcome::Failed {
                    status: None,
                    error: format!("cannot build the request: {e}"),
                };
            }
        };
        // The receiver can continue the job's trace.
        jetjobs::trace_context::inject_http_current(request.headers_mut());
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.http.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                if let Some(refused) = client::refusal(&e) {
                    return Outcome::Failed {
                        status: None,
                        error: refused.to_string(),
                    };
                }
                return Outcome::Retry {
                    status: None,
                    error: describe(&e),
                    retry_after: None,
                };
            }
            Err(_) => {
                return Outcome::Retry {
                    status: None,
                    error: format!("timed out after {} s", self.timeout.as_secs()),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // Only the status matters. A short body is read, within what is left of the
        // timeout, so the connection goes back to the pool; a long or slow one is
        // dropped with its connection, so a receiver cannot hold a slot or our memory.
        let drain = Limited::new(response.into_body(), DRAIN_LIMIT).collect();
        let _ = tokio::time::timeout_at(deadline, drain).await;
        let code = status.as_u16();
        if status.is_success() {
            Outcome::Delivered(code)
        } else if status.is_redirection() {
            Outcome::Failed {
                status: Some(code),
                error: format!("the receiver answered {status}; redirects are not followed"),
            }
        } else if code == 408 || code == 429 || status.is_server_error() {
            Outcome::Retry {
                status: Some(code),
                error: format!("the receiver answered {status}"),
                retry_after,
            }
        } else {
            Outcome::Failed {
                status: Some(code),
                error: format!("the receiver answered {status}; not retried"),
            }
        }
    }

    /// Stores the attempt's record and waits for the PubAck.
    async fn record(
        &self,
        event: &JobEvent,
        record: WebhookRecord,
    ) -> Result<(), async_nats::Error> {
        let record = event.webhook_record(record);
        let payload = serde_json::to_vec(&record)?;
        let mut message_headers = HeaderMap::new();
        message_headers.insert(headers::MSG_ID, record.msg_id().as_str());
        message_headers.insert(headers::KIND, record.kind.as_str());
        message_headers.insert(headers::JOB_ID, record.job_id.to_string().as_str());
        jetjobs::trace_context::inject_current(&mut message_headers);
        self.js
            .publish_with_headers(
                subjects::webhook_record(&record.kind, record.job_id),
                message_headers,
                payload.into(),
            )
            .await?
            .await?;
        Ok(())
    }
}

/// `{"type":"job.<event>","timestamp":…,"data":<the job as of the event>}`.
///
/// The snapshot is built from the event alone, so every retry sends the same bytes and
/// the data is what was true when the event happened, not whatever came later.
fn body(event: &JobEvent) -> Result<Vec<u8>, serde_json::Error> {
    let mut data = state::apply(None, event).ok();
    if let Some(snapshot) = &mut data {
        snapshot.webhook = None;
    }
    serde_json::to_vec(&json!({
        "type": format!("job.{}", event.change.name()),
        "timestamp": event.at,
        "data": data,
    }))
}

/// A transport error with its causes (hyper's own text is often just "client error
/// (Connect)"); a certificate the notifier does not trust shows here as rustls' reason.
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let kind = if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

async fn answer(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(subject = %message.subject, error = %e, "Ack not sent; the event will be redelivered.");
    }
}
