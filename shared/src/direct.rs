//! Batched direct gets (ADR-31): many messages of a stream in one request, from any
//! replica. async-nats has single direct gets only; listing needs a run of sequences
//! (`{"seq", "batch"}`), the last snapshot of many keys at once (`{"multi_last"}`) and
//! the first message at a time (`{"start_time"}`).

use std::time::Duration;

use async_nats::{Client, StatusCode};
use bytes::Bytes;
use futures::StreamExt as _;
use serde::Serialize;

/// One stored message.
#[derive(Clone, Debug)]
pub struct Stored {
    pub subject: String,
    pub sequence: u64,
    pub payload: Bytes,
    /// A KV delete or purge marker (`KV-Operation`).
    pub deleted: bool,
    /// The message's headers, whatever they are (moved, not copied: listing reads
    /// thousands of these a page).
    pub headers: async_nats::HeaderMap,
}

impl Stored {
    /// When the server stored it (`Nats-Time-Stamp`).
    pub fn time(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = self.headers.get("Nats-Time-Stamp")?.as_str();
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// In a batch: how many messages matching the request's subject filter come after
    /// this one (`Nats-Num-Pending`). So one message of a batch of 1 counts a subject
    /// filter's messages: 1 + this.
    pub fn num_pending(&self) -> Option<u64> {
        self.headers.get("Nats-Num-Pending")?.as_str().parse().ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("direct get on {stream}: {detail}")]
    Failed { stream: String, detail: String },
    #[error("direct get on {stream} timed out")]
    Timeout { stream: String },
}

/// A batch request's body: set one of `seq`, `multi_last`, `start_time`.
#[derive(Debug, Default, Serialize)]
pub struct Request {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_by_subj: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub multi_last: Vec<String>,
    /// Messages to return; 0 asks for one, without an end-of-batch marker.
    #[serde(skip_serializing_if = "is_zero")]
    pub batch: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Messages on `filter` in `stream`, counted by the server: the first one's
/// `Nats-Num-Pending` says how many follow it (its subject index; no scan here).
pub async fn count(
    client: &Client,
    stream: &str,
    filter: String,
    timeout: Duration,
) -> Result<u64, DirectError> {
    let request = Request {
        seq: Some(1),
        next_by_subj: Some(filter),
        batch: 1,
        ..Default::default()
    };
    let first = batch(client, stream, &request, timeout).await?;
    Ok(first
        .first()
        .map_or(0, |message| 1 + message.num_pending().unwrap_or(0)))
}

/// The most messages one batch asks for.
pub const MAX_BATCH: usize = 1000;

/// Sends `request` to `stream`'s direct-get API and collects the messages up to the
/// end-of-batch marker. No message at all is an empty answer, not an error.
pub async fn batch(
    client: &Client,
    stream: &str,
    request: &Request,
    timeout: Duration,
) -> Result<Vec<Stored>, DirectError> {
    let failed = |detail: String| DirectError::Failed {
        stream: stream.to_string(),
        detail,
    };
    let body = serde_json::to_vec(request).map_err(|e| failed(e.to_string()))?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| failed(e.to_string()))?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            Bytes::from(body),
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, replies.next()).await;
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => return Err(failed("the subscription ended".to_string())),
            Err(_) => {
                return Err(DirectError::Timeout {
                    stream: stream.to_string(),
                });
            }
        };
        match message.status {
            // End of batch, or nothing matched at all.
            Some(status) if status.as_u16() == 204 || status == StatusCode::NOT_FOUND => break,
            Some(status) if status != StatusCode::OK => {
                let description = message.description.unwrap_or_default();
                return Err(failed(format!("{status} {description}")));
            }
            _ => {}
        }
        let Some(headers) = message.headers else {
            continue;
        };
        let header = |name: &str| headers.get(name).map(|v| v.as_str());
        let (Some(subject), Some(sequence)) = (
            header("Nats-Subject").map(str::to_string),
            header("Nats-Sequence").and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let deleted = header("KV-Operation").is_some_and(|op| op == "DEL" || op == "PURGE");
        out.push(Stored {
            subject,
            sequence,
            payload: message.payload,
            deleted,
            headers,
        });
        // A single (non-batch) answer has no end-of-batch marker.
        if request.batch == 0 {
            break;
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(out)
}
