//! Helpers for the gateway-facing scenarios (hostile HTTP, disk full, NATS loss): the
//! suites' system (`jetjobs_e2e::system`) against a nats-server the scenario owns, a
//! client that gives up on idle connections, and the end-of-run checks on the jobs that
//! got a 202.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use jetjobs::layout;
use serde_json::Value;

pub use jetjobs_e2e::system::{
    Options, Services, eventually, problem, start_processor_cpu, wait_for_kinds,
};

/// An HTTP client that gives up on a pooled connection before the gateway's header
/// timeout closes it, as a well-behaved client of a server with idle timeouts does.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_millis(500))
        // Above the gateway's request timeout (30 s): the gateway answers every request
        // within it (a 503 at worst), so a client that gave up first would report "no
        // answer" for a request the gateway was still bound to answer. It did, once, on
        // a loaded CI machine with the disk full.
        .timeout(Duration::from_secs(45))
        .build()
        .expect("HTTP client")
}

pub fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// Where a job stands at the end of a run.
#[derive(Debug, Default)]
pub struct Outcome {
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub regressions: usize,
}

/// Waits (up to `timeout`) until every job in `ids` has a terminal snapshot, then counts
/// the ones that have none (lost), more than one terminal event (duplicated), and the
/// snapshot revisions in their KV history that moved backwards.
pub async fn check_jobs(js: &jetstream::Context, ids: &[String], timeout: Duration) -> Outcome {
    let status = js
        .get_key_value(layout::STATUS_BUCKET)
        .await
        .expect("job_status");
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<String> = ids.to_vec();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for id in pending {
            let state = match status.get(&id).await {
                Ok(Some(bytes)) => serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v["state"].as_str().map(str::to_string)),
                _ => None,
            };
            if !state.as_deref().is_some_and(is_terminal) {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let terminal_events = terminal_events(js).await;
    let mut regressions = 0;
    for id in ids {
        regressions += history_regressions(&status, id).await;
    }
    Outcome {
        duplicated: ids
            .iter()
            .filter(|id| terminal_events.get(*id).is_some_and(|n| *n > 1))
            .cloned()
            .collect(),
        lost: pending,
        regressions,
    }
}

/// Terminal events per job id, from the whole `JOB_EVENTS` stream.
async fn terminal_events(js: &jetstream::Context) -> HashMap<String, usize> {
    let stream = js
        .get_stream(layout::EVENTS_STREAM)
        .await
        .expect("JOB_EVENTS");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut counts = HashMap::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(1), messages.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        let Ok(event) = serde_json::from_slice::<Value>(&message.payload) else {
            continue;
        };
        if !event["type"].as_str().is_some_and(is_terminal) {
            continue;
        }
        // jobs.events.<kind>.<id>
        if let Some(id) = message.subject.rsplit('.').next() {
            *counts.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Snapshot revisions (of those KV still keeps) that moved the job backwards: to an
/// earlier attempt, or to an earlier state within an attempt, or away from a terminal state.
async fn history_regressions(status: &kv::Store, id: &str) -> usize {
    let Ok(mut history) = status.history(id).await else {
        return 0;
    };
    let mut last: Option<(u64, u8, String)> = None;
    let mut regressions = 0;
    while let Some(Ok(entry)) = history.next().await {
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let Ok(snapshot) = serde_json::from_slice::<Value>(&entry.value) else {
            continue;
        };
        let state = snapshot["state"].as_str().unwrap_or_default().to_string();
        let rank = match state.as_str() {
            "scheduled" => 0,
            "queued" => 1,
            "running" => 2,
            "retrying" => 3,
            _ => 4,
        };
        let attempt = snapshot["attempt"].as_u64().unwrap_or_default();
        if let Some((last_attempt, last_rank, last_state)) = &last {
            let backwards = (attempt, rank) < (*last_attempt, *last_rank);
            let left_terminal = is_terminal(last_state) && state != *last_state;
            if backwards || left_terminal {
                regressions += 1;
            }
        }
        last = Some((attempt, rank, state));
    }
    regressions
}
