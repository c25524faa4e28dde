//! `GET /v1/stats` and its live form `GET /v1/stats/events`: per kind, per consumer, per
//! processor replica, and the rates of the last minute.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::System;

const WAIT: Duration = Duration::from_secs(30);

async fn stats(system: &System) -> Value {
    let response = system
        .http
        .get(system.url("/v1/stats"))
        .send()
        .await
        .expect("GET stats");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("stats")
}

fn kind<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .find(|k| k["kind"] == name)
        .unwrap_or_else(|| panic!("no kind {name} in {stats}"))
}

/// Polls the stats until `check` holds (they are a moment behind: presence is written
/// every second, rates sampled every two).
async fn stats_until(system: &System, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = stats(system).await;
        if check(&now) {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stats never showed {what}; last: {now}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_running_waiting_and_dead_jobs_per_kind() {
    let system = System::start().await;
    // One sleep at a time: of three, one runs and two wait.
    let response = system
        .http
        .put(system.url("/v1/kinds/sleep/limits"))
        .json(&json!({"max_running": 1}))
        .send()
        .await
        .expect("PUT limits");
    assert_eq!(response.status(), StatusCode::OK);
    let mut sleepers = Vec::new();
    for _ in 0..3 {
        sleepers.push(system.submit("sleep", json!({"ms": 20_000})).await);
    }
    let dead = system
        .post(&json!({"kind": "flaky", "payload": {"fail": "permanent"}}))
        .await;
    assert_eq!(dead.status(), StatusCode::ACCEPTED);

    let now = stats_until(
        &system,
        "1 running and 2 waiting sleeps, 1 dead flaky",
        |s| {
            let sleep = kind(s, "sleep");
            sleep["running"] == 1 && sleep["waiting"] == 2 && kind(s, "flaky")["dead_lettered"] == 1
        },
    )
    .await;
    assert_eq!(kind(&now, "noop")["waiting"], 0);
    assert_eq!(kind(&now, "hash")["dead_lettered"], 0);
    assert!(now["at"].as_str().is_some());

    // The replicas say who they are and what they run.
    let processors = now["processors"].as_array().expect("processors");
    let io = processors
        .iter()
        .find(|p| p["name"] == "processor-io")
        .unwrap_or_else(|| panic!("processor-io missing: {now}"));
    assert_eq!(io["running"], 1);
    assert!(
        io["kinds"]
            .as_array()
            .is_some_and(|k| k.contains(&json!("sleep"))),
        "{io}"
    );
    // Every durable consumer, connected while its processor pulls.
    let consumers = now["consumers"].as_array().expect("consumers");
    let consumer = |name: &str| {
        consumers
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no consumer {name} in {now}"))
    };
    assert_eq!(consumer("processor-io")["stream"], "JOBS");
    assert_eq!(consumer("processor-io")["connected"], true);
    assert_eq!(
        consumer("processor-io-low")["connected"],
        true,
        "an idle low lane pulls nothing, but its processor is there"
    );
    assert_eq!(consumer("status-projector")["stream"], "JOB_EVENTS");
    assert_eq!(consumer("scheduler")["stream"], "JOBS_SCHEDULES");

    // Cancelled, they are neither running nor waiting any more.
    for job in &sleepers {
        let id = job["id"].as_str().expect("id");
        system
            .http
            .delete(system.url(&format!("/v1/jobs/{id}")))
            .send()
            .await
            .expect("DELETE");
    }
    stats_until(&system, "no sleep running or waiting", |s| {
        let sleep = kind(s, "sleep");
        sleep["running"] == 0 && sleep["waiting"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_follow_what_was_submitted_and_finished_in_the_last_minute() {
    let system = System::start().await;
    let before = stats(&system).await;
    assert_eq!(before["rates"]["window_secs"], 60);
    for _ in 0..20 {
        system.submit("noop", json!({})).await;
    }
    let failed = system
        .post(&json!({"kind": "flaky", "payload": {"fail": "permanent"}}))
        .await;
    assert_eq!(failed.status(), StatusCode::ACCEPTED);
    let now = stats_until(&system, "submitted, succeeded and failed rates", |s| {
        let rates = &s["rates"];
        rates["submitted_per_sec"].as_f64() > Some(0.0)
            && rates["succeeded_per_sec"].as_f64() > Some(0.0)
            && rates["failed_per_sec"].as_f64() > Some(0.0)
    })
    .await;
    // 21 jobs within the first minute: a rate of at most 21 per second can be seen, and
    // a latency (noop: milliseconds, not minutes).
    let rates = &now["rates"];
    assert!(rates["submitted_per_sec"].as_f64() <= Some(21.0), "{rates}");
    let latency = rates["latency_ms"].as_f64().expect("a latency");
    assert!((0.0..60_000.0).contains(&latency), "{rates}");

    // The chart's points: 10 s apart, oldest first, and together they saw the jobs.
    let history = jetjobs::testing::eventually(WAIT, || async {
        let history: Value = system
            .http
            .get(system.url("/v1/stats/history"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let succeeded: f64 = history["points"]
            .as_array()?
            .iter()
            .filter_map(|p| p["succeeded_per_sec"].as_f64())
            .sum();
        (succeeded > 0.0).then_some(history)
    })
    .await
    .expect("a history point with successes");
    assert_eq!(history["step_secs"], 10);
    let times: Vec<&str> = history["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["at"].as_str().expect("at"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stats_stream_sends_the_document_every_second() {
    let system = System::start().await;
    let response = system
        .http
        .get(system.url("/v1/stats/events"))
        .send()
        .await
        .expect("GET stats events");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let started = std::time::Instant::now();
    while text.matches("event: stats").count() < 2 {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("a chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not flooded"
    );
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let document: Value = serde_json::from_str(data).expect("JSON stats");
    assert!(document["kinds"].as_array().is_some(), "{document}");
}
