//! Changing a job after it was accepted: cancelling it (`DELETE`) and retrying it after
//! it failed for good (`POST .../retry`), and what a failure leaves behind.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, System, assert_problem};

const WAIT: Duration = Duration::from_secs(30);

async fn delete(system: &System, id: &str) -> reqwest::Response {
    system
        .http
        .delete(system.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .expect("DELETE")
}

async fn retry(system: &System, id: &str) -> reqwest::Response {
    system
        .http
        .post(system.url(&format!("/v1/jobs/{id}/retry")))
        .send()
        .await
        .expect("POST retry")
}

fn types(events: &[(String, u64)]) -> Vec<(&str, u64)> {
    events.iter().map(|(t, a)| (t.as_str(), *a)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_job_never_runs() {
    // One slot, held by a long job: the next job waits in JOBS.
    let system = System::start_with(Options {
        io_concurrency: 1,
        ..Options::default()
    })
    .await;
    let blocker = system.submit("sleep", json!({"ms": 1500})).await;
    let blocker = blocker["id"].as_str().expect("id").to_string();
    system
        .wait_for(&blocker, WAIT, |s| s["state"] == "running")
        .await;
    let queued = system.submit("sleep", json!({"ms": 10})).await;
    let queued = queued["id"].as_str().expect("id").to_string();

    let response = delete(&system, &queued).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("snapshot");
    assert_eq!(body["state"], "cancelled");
    assert_eq!(body["error"], "cancelled by the client");

    // The slot frees up, the processor takes the next message — which is the cancelled
    // job's — and must not run it.
    system.wait_terminal(&blocker, WAIT).await;
    let after = system.submit("noop", json!({})).await;
    system
        .wait_terminal(after["id"].as_str().expect("id"), WAIT)
        .await;
    let snapshot = system.wait_terminal(&queued, WAIT).await;
    assert_eq!(snapshot["state"], "cancelled");
    assert_eq!(snapshot["attempt"], 0, "it never started");
    assert_eq!(
        types(&system.events_of("sleep", &queued).await),
        [("cancelled", 0)]
    );
    assert_eq!(
        system.stream_messages("JOBS").await,
        0,
        "nothing left queued"
    );

    // Ended is ended.
    let again = assert_problem(delete(&system, &queued).await, StatusCode::CONFLICT).await;
    assert_eq!(again["state"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_stopped_by_a_cancellation() {
    let system = System::start_with(Options {
        io_concurrency: 1,
        ..Options::default()
    })
    .await;
    let job = system.submit("sleep", json!({"ms": 60_000})).await;
    let id = job["id"].as_str().expect("id").to_string();
    system
        .wait_for(&id, WAIT, |s| s["state"] == "running")
        .await;

    let response = delete(&system, &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let snapshot = system.wait_terminal(&id, WAIT).await;
    assert_eq!(snapshot["state"], "cancelled");
    assert_eq!(snapshot["attempt"], 1);

    // The handler stopped: its only slot serves the next job long before the minute is up.
    let next = system.submit("noop", json!({})).await;
    let next = system
        .wait_terminal(next["id"].as_str().expect("id"), Duration::from_secs(20))
        .await;
    assert_eq!(next["state"], "succeeded");
    let events = system.events_of("sleep", &id).await;
    assert!(
        !events
            .iter()
            .any(|(t, _)| t == "succeeded" || t == "failed"),
        "one end only: {events:?}"
    );
    assert_eq!(
        events.iter().filter(|(t, _)| t == "cancelled").count(),
        1,
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_finished_or_unknown_job_is_refused() {
    let system = System::start().await;
    let done = system.submit("noop", json!({})).await;
    let done = done["id"].as_str().expect("id").to_string();
    system.wait_terminal(&done, WAIT).await;
    let problem = assert_problem(delete(&system, &done).await, StatusCode::CONFLICT).await;
    assert_eq!(problem["state"], "succeeded");
    assert_eq!(system.get_job(&done).await.1["state"], "succeeded");

    let missing = uuid::Uuid::now_v7().to_string();
    assert_problem(delete(&system, &missing).await, StatusCode::NOT_FOUND).await;
    assert_problem(delete(&system, "not-a-uuid").await, StatusCode::BAD_REQUEST).await;
    assert_problem(retry(&system, &missing).await, StatusCode::NOT_FOUND).await;
    let problem = assert_problem(retry(&system, &done).await, StatusCode::CONFLICT).await;
    assert_eq!(problem["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_keeps_every_error_and_a_retry_runs_it_again() {
    let system = System::start().await;
    // Fails attempts 1–3; with two attempts allowed it dies after attempt 2.
    let response = system
        .post(&json!({
            "kind": "flaky",
            "payload": {"fail": "retryable", "times": 3},
            "max_attempts": 2
        }))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.expect("snapshot")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let dead = system.wait_terminal(&id, WAIT).await;
    assert_eq!(dead["state"], "failed");
    assert_eq!(dead["attempt"], 2);
    assert_eq!(dead["error"], "flaky: attempt 2 failed as asked");
    let errors: Vec<u64> = dead["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["attempt"].as_u64().expect("attempt"))
        .collect();
    assert_eq!(errors, [1, 2]);
    assert_eq!(system.stream_messages("JOBS_DEAD").await, 1);

    let response = retry(&system, &id).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    let requeued: Value = response.json().await.expect("snapshot");
    assert_eq!(requeued["state"], "queued");
    assert_eq!(requeued["max_attempts"], 4, "a new series of two attempts");

    let done = system
        .wait_for(&id, WAIT, |s| s["state"] == "succeeded")
        .await;
    assert_eq!(done["attempt"], 4);
    assert_eq!(done["result"], json!({"attempt": 4}));
    let errors: Vec<u64> = done["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["attempt"].as_u64().expect("attempt"))
        .collect();
    assert_eq!(errors, [1, 2, 3], "the history is kept");
    let events = system.events_of("flaky", &id).await;
    assert_eq!(
        types(&events),
        // Quick runs go straight to their outcome (no `started`).
        [
            ("retrying", 1),
            ("failed", 2),
            ("requeued", 2),
            ("retrying", 3),
            ("succeeded", 4),
        ]
    );
    // A finished retry cannot be retried.
    assert_problem(retry(&system, &id).await, StatusCode::CONFLICT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_panics_and_hangs_each_fail_with_their_reason() {
    let system = System::start().await;
    let submit = |payload: Value, max_attempts: u32, timeout_secs: Option<u64>| {
        let mut body = json!({"kind": "flaky", "payload": payload, "max_attempts": max_attempts});
        if let Some(secs) = timeout_secs {
            body["timeout_secs"] = json!(secs);
        }
        let system = &system;
        async move {
            let response = system.post(&body).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            response.json::<Value>().await.expect("snapshot")["id"]
                .as_str()
                .expect("id")
                .to_string()
        }
    };
    let permanent = submit(json!({"fail": "permanent"}), 5, None).await;
    let panics = submit(json!({"fail": "panic"}), 2, None).await;
    let hangs = submit(json!({"fail": "hang"}), 2, Some(1)).await;
    // Meanwhile the processor keeps serving other work.
    let fine = submit(json!({"fail": "retryable", "times": 0}), 1, None).await;

    let snapshot = system.wait_terminal(&permanent, WAIT).await;
    assert_eq!(
        (snapshot["state"].as_str(), snapshot["attempt"].as_u64()),
        (Some("failed"), Some(1)),
        "a permanent error is not retried"
    );
    assert_eq!(
        snapshot["error"],
        "flaky: attempt 1 failed permanently as asked"
    );

    let snapshot = system.wait_terminal(&panics, WAIT).await;
    assert_eq!(snapshot["state"], "failed");
    assert_eq!(snapshot["attempt"], 2, "a panic is retryable");
    assert_eq!(
        snapshot["error"],
        "the handler panicked: flaky: attempt 2 panicked as asked"
    );

    let snapshot = system.wait_terminal(&hangs, WAIT).await;
    assert_eq!(snapshot["state"], "failed");
    assert_eq!(snapshot["attempt"], 2);
    assert_eq!(snapshot["error"], "timed out after 1s");

    let snapshot = system.wait_terminal(&fine, WAIT).await;
    assert_eq!(snapshot["state"], "succeeded");
    assert_eq!(system.stream_messages("JOBS_DEAD").await, 3);
}
