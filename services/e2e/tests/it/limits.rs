//! Global limits per kind (`PUT /v1/kinds/{kind}/limits`), enforced across replicas with
//! shared state in NATS: `max_running` and `max_per_second`. Jobs over a limit wait.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, System, assert_problem};

const WAIT: Duration = Duration::from_secs(60);

async fn put_limits(system: &System, kind: &str, limits: Value) -> reqwest::Response {
    system
        .http
        .put(system.url(&format!("/v1/kinds/{kind}/limits")))
        .json(&limits)
        .send()
        .await
        .expect("PUT limits")
}

async fn submit_all(system: &System, kind: &str, payload: Value, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let job = system.submit(kind, payload.clone()).await;
        ids.push(job["id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        let done = system.wait_terminal(id, WAIT).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    ids
}

/// The kind's events in stream order: `(job, type, at)`.
async fn events(system: &System, kind: &str) -> Vec<(String, String, DateTime<Utc>)> {
    let stream = system.js.get_stream("JOB_EVENTS").await.expect("stream");
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("jobs.events.{kind}.*"),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut events = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        let event: Value = serde_json::from_slice(&message.payload).expect("event");
        let at = DateTime::parse_from_rfc3339(event["at"].as_str().expect("at"))
            .expect("time")
            .with_timezone(&Utc);
        events.push((
            event["job_id"].as_str().expect("id").to_string(),
            event["type"].as_str().expect("type").to_string(),
            at,
        ));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_are_listed_with_their_schema_and_limits() {
    let system = System::start().await;
    let kinds: Value = system
        .http
        .get(system.url("/v1/kinds"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("kinds");
    let names: Vec<&str> = kinds["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .filter_map(|k| k["kind"].as_str())
        .collect();
    for kind in ["flaky", "hash", "noop", "sleep", "thumbnail"] {
        assert!(names.contains(&kind), "{names:?}");
    }
    let sleep = kinds["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .find(|k| k["kind"] == "sleep")
        .expect("sleep");
    assert!(sleep["payload_schema"].is_object(), "{sleep}");
    assert_eq!(sleep["processor"], "processor-io");
    assert_eq!(
        sleep["limits"],
        json!({"max_running": null, "max_per_second": null})
    );

    let set = put_limits(
        &system,
        "sleep",
        json!({"max_running": 3, "max_per_second": 50}),
    )
    .await;
    assert_eq!(set.status(), StatusCode::OK);
    let set: Value = set.json().await.expect("kind");
    assert_eq!(
        set["limits"],
        json!({"max_running": 3, "max_per_second": 50})
    );
    let again: Value = system
        .http
        .get(system.url("/v1/kinds/sleep"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("kind");
    assert_eq!(again["limits"], set["limits"]);

    let zero = assert_problem(
        put_limits(&system, "sleep", json!({"max_running": 0})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(zero["field"], "max_running");
    assert_problem(
        put_limits(&system, "sleep", json!({"max_running": "two"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_problem(
        put_limits(&system, "nope", json!({"max_running": 1})).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // Cleared: no limit.
    let cleared = put_limits(&system, "sleep", json!({})).await;
    let cleared: Value = cleared.json().await.expect("kind");
    assert_eq!(
        cleared["limits"],
        json!({"max_running": null, "max_per_second": null})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_running_holds_across_three_replicas() {
    let system = System::start_with(Options {
        io_concurrency: 4,
        ..Options::default()
    })
    .await;
    // Two more processor-io replicas: twelve slots in all.
    let url = system.nats.url();
    let _more: Vec<_> = (0..2)
        .map(|_| jetjobs_e2e::system::start_processor_io(&url, 4, false))
        .collect();
    let set = put_limits(&system, "sleep", json!({"max_running": 2})).await;
    assert_eq!(set.status(), StatusCode::OK);
    // Every replica hears of it through its watch.
    tokio::time::sleep(Duration::from_millis(500)).await;

    submit_all(&system, "sleep", json!({"ms": 150}), 12).await;
    // Sampled from the events, in the order the stream stored them: a job's `started`
    // after every event before it, its end likewise.
    let mut running: HashMap<String, bool> = HashMap::new();
    let mut peak = 0;
    for (job, kind, _) in events(&system, "sleep").await {
        match kind.as_str() {
            "started" => {
                running.insert(job, true);
            }
            "succeeded" | "failed" | "retrying" | "cancelled" => {
                running.remove(&job);
            }
            _ => {}
        }
        peak = peak.max(running.len());
    }
    assert_eq!(
        peak, 2,
        "at most two sleep jobs ran at once across three replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_per_second_spreads_the_starts() {
    let system = System::start().await;
    let set = put_limits(&system, "sleep", json!({"max_per_second": 10})).await;
    assert_eq!(set.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Runs long enough to record their `started` (`JETJOBS_STARTED_AFTER_MS`).
    submit_all(&system, "sleep", json!({"ms": 30}), 35).await;
    let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, kind, at) in events(&system, "sleep").await {
        if kind == "started" {
            *per_second.entry(at.timestamp()).or_default() += 1;
        }
    }
    assert!(
        per_second.values().all(|n| *n <= 10),
        "more than 10 starts in a second: {per_second:?}"
    );
    let (first, last) = (
        per_second.keys().next().copied().unwrap_or_default(),
        per_second.keys().last().copied().unwrap_or_default(),
    );
    assert!(
        last - first >= 3,
        "35 starts at 10 a second took {per_second:?}"
    );
}
