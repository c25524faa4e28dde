//! Priorities: `high` jobs start before the `normal` ones that were waiting with them,
//! `low` jobs only when nothing else waits, and never later than their maximum wait.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, System, assert_problem};

const WAIT: Duration = Duration::from_secs(60);

async fn submit(system: &System, payload: Value, priority: &str) -> String {
    let response = system
        .post(&json!({"kind": "sleep", "payload": payload, "priority": priority}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.expect("snapshot");
    if priority != "normal" {
        assert_eq!(body["priority"], priority, "{body}");
    }
    body["id"].as_str().expect("id").to_string()
}

/// The order jobs started in: each job's first run event, by stream order (`started`,
/// or, for a run too short to record it, its outcome).
async fn start_order(system: &System) -> HashMap<String, usize> {
    let stream = system.js.get_stream("JOB_EVENTS").await.expect("stream");
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: "jobs.events.sleep.*".into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut order = HashMap::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        let event: Value = serde_json::from_slice(&message.payload).expect("event");
        if matches!(
            event["type"].as_str(),
            Some("started" | "succeeded" | "retrying" | "failed")
        ) {
            let next = order.len();
            order
                .entry(event["job_id"].as_str().expect("id").to_string())
                .or_insert(next);
        }
    }
    order
}

async fn blocked(options: Options) -> (System, String) {
    let system = System::start_with(Options {
        io_concurrency: 1,
        ..options
    })
    .await;
    // Long enough to submit every job below while it runs.
    let blocker = submit(&system, json!({"ms": 6000}), "normal").await;
    system
        .wait_for(&blocker, WAIT, |s| s["state"] == "running")
        .await;
    (system, blocker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_job_submitted_last_starts_before_the_normal_jobs_waiting_with_it() {
    let (system, blocker) = blocked(Options::default()).await;
    let mut normal = Vec::new();
    for _ in 0..1000 {
        normal.push(submit(&system, json!({"ms": 1}), "normal").await);
    }
    let high = submit(&system, json!({"ms": 1}), "high").await;
    for id in normal.iter().chain([&high, &blocker]) {
        system.wait_terminal(id, WAIT).await;
    }
    let order = start_order(&system).await;
    let high_at = order[&high];
    let before: Vec<&String> = normal.iter().filter(|id| order[*id] < high_at).collect();
    assert!(
        before.is_empty(),
        "normal jobs started before the high one: {before:?}"
    );
    assert_eq!(order[&blocker], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_jobs_run_only_when_nothing_else_waits() {
    let (system, blocker) = blocked(Options::default()).await;
    let mut low = Vec::new();
    for _ in 0..5 {
        low.push(submit(&system, json!({"ms": 1}), "low").await);
    }
    let mut normal = Vec::new();
    for _ in 0..40 {
        normal.push(submit(&system, json!({"ms": 1}), "normal").await);
    }
    for id in normal.iter().chain(&low).chain([&blocker]) {
        system.wait_terminal(id, WAIT).await;
    }
    let order = start_order(&system).await;
    let last_normal = normal.iter().map(|id| order[id]).max().expect("normal");
    let first_low = low.iter().map(|id| order[id]).min().expect("low");
    assert!(
        first_low > last_normal,
        "a low job started ({first_low}) before the last normal one ({last_normal})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_job_is_not_starved_past_its_maximum_wait() {
    let (system, blocker) = blocked(Options {
        low_priority_max_wait_secs: 2,
        ..Options::default()
    })
    .await;
    let low = submit(&system, json!({"ms": 1}), "low").await;
    // Far more normal work than the maximum wait: 300 jobs of 20 ms, one at a time.
    let mut normal = Vec::new();
    for _ in 0..300 {
        normal.push(submit(&system, json!({"ms": 20}), "normal").await);
    }
    for id in normal.iter().chain([&low, &blocker]) {
        system.wait_terminal(id, WAIT).await;
    }
    let order = start_order(&system).await;
    let last_normal = normal.iter().map(|id| order[id]).max().expect("normal");
    assert!(
        order[&low] < last_normal,
        "the low job waited until every normal job had started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_priority_is_refused() {
    let system = System::start().await;
    let response = system
        .post(&json!({"kind": "noop", "payload": {}, "priority": "urgent"}))
        .await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("priority"),
        "{problem}"
    );
}
