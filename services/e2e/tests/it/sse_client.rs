//! A small Server-Sent Events client for the tests: reads `event`/`id`/`data` blocks from
//! a streaming response.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::System;

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: u64,
    pub data: Value,
}

pub struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    /// Opens `path`, resuming after `last_event_id` if given, and expects a 200 stream.
    pub async fn open(system: &System, path: &str, last_event_id: Option<u64>) -> Self {
        let response = Self::request(system, path, last_event_id).await;
        assert_eq!(response.status(), StatusCode::OK, "SSE {path}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    pub async fn request(
        system: &System,
        path: &str,
        last_event_id: Option<u64>,
    ) -> reqwest::Response {
        let mut request = system.http.get(system.url(path));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        request.send().await.expect("SSE request")
    }

    /// The next event, or `None` once the server closed the stream. Panics if nothing
    /// arrives within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        tokio::time::timeout(within, self.next_event())
            .await
            .unwrap_or_else(|_| panic!("no SSE event within {within:?}"))
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&block) {
                    return Some(event);
                }
            }
            let chunk = self.response.chunk().await.expect("SSE body")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("SSE is UTF-8"));
        }
    }

    /// Every event until the server closes the stream.
    pub async fn collect_until_closed(&mut self, within: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(event) => events.push(event),
                None => return events,
            }
        }
    }
}

/// One block; `None` for a block of comments only (keep-alives).
fn parse(block: &str) -> Option<SseEvent> {
    let mut event = String::from("message");
    let mut id = None;
    let mut data = Vec::new();
    for line in block.lines() {
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_string(),
            "id" => id = Some(value.parse().expect("numeric id")),
            "data" => data.push(value.to_string()),
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(SseEvent {
        event,
        id: id.expect("every event has an id"),
        data: serde_json::from_str(&data.join("\n")).expect("data is JSON"),
    })
}
