//! `GET /v1/jobs/{id}/history`: what happened to a job, from `JOB_EVENTS`, in order and
//! in pages, without the `nats` CLI.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{System, assert_problem};

const WAIT: Duration = Duration::from_secs(30);

async fn history(system: &System, id: &str, query: &str) -> reqwest::Response {
    system
        .http
        .get(system.url(&format!("/v1/jobs/{id}/history{query}")))
        .send()
        .await
        .expect("GET history")
}

fn types(page: &Value) -> Vec<(String, u64)> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().expect("type").to_string(),
                e["attempt"].as_u64().expect("attempt"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_failed_once_tells_its_whole_story_in_order() {
    let system = System::start().await;
    let response = system
        .post(&json!({
            "kind": "flaky",
            "payload": {"fail": "retryable", "times": 1},
            "max_attempts": 3
        }))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.expect("snapshot")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let done = system.wait_terminal(&id, WAIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");

    let response = history(&system, &id, "").await;
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.expect("history");
    assert_eq!(page["id"], id.as_str());
    assert_eq!(page["kind"], "flaky");
    assert!(page["next_cursor"].is_null(), "{page}");
    assert_eq!(
        types(&page),
        // Quick runs record no `started` (`JETJOBS_STARTED_AFTER_MS`): each attempt
        // goes straight to its outcome.
        [
            ("created".to_string(), 0),
            ("retrying".to_string(), 1),
            ("succeeded".to_string(), 2),
        ]
    );
    let events = page["events"].as_array().expect("events");
    assert_eq!(events[0]["seq"], 0);
    assert_eq!(events[0]["at"], done["created_at"]);
    let retrying = &events[1];
    assert_eq!(retrying["error"], "flaky: attempt 1 failed as asked");
    assert!(retrying["retry_in_ms"].as_u64().is_some(), "{retrying}");
    assert_eq!(events[2]["result"], json!({"attempt": 2}));
    let seqs: Vec<u64> = events[1..]
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in stream order: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_are_in_the_history_between_start_and_outcome() {
    let system = System::start().await;
    let job = system
        // Long enough (20 MB hashed) to outlive `JETJOBS_STARTED_AFTER_MS`.
        .submit("hash", json!({"size": 1_000_000, "rounds": 20}))
        .await;
    let id = job["id"].as_str().expect("id");
    let done = system.wait_terminal(id, WAIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let page: Value = history(&system, id, "")
        .await
        .json()
        .await
        .expect("history");
    // Progress reports are sent without a fence (a lost one is superseded by the next),
    // so on a loaded machine the last may be stored just after the outcome: the order of
    // the job's own events is what is fixed.
    let names: Vec<String> = types(&page)
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| t != "progress")
        .collect();
    assert_eq!(names, ["created", "started", "succeeded"], "{page}");
    let progress: Vec<&Value> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "progress")
        .collect();
    assert!(!progress.is_empty(), "no progress in {page}");
    for report in progress {
        assert_eq!(report["total"], 20, "{report}");
        assert!(report["current"].as_u64().is_some(), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_walk_the_whole_history_once_and_bad_requests_are_refused() {
    let system = System::start().await;
    let response = system
        .post(&json!({
            "kind": "flaky",
            "payload": {"fail": "retryable", "times": 2},
            "max_attempts": 3
        }))
        .await;
    let id = response.json::<Value>().await.expect("snapshot")["id"]
        .as_str()
        .expect("id")
        .to_string();
    system.wait_terminal(&id, WAIT).await;
    let whole: Value = history(&system, &id, "")
        .await
        .json()
        .await
        .expect("history");

    let mut walked = Vec::new();
    let mut query = "?limit=2".to_string();
    loop {
        let response = history(&system, &id, &query).await;
        assert_eq!(response.status(), StatusCode::OK);
        let link = response
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let page: Value = response.json().await.expect("page");
        let entries = page["events"].as_array().expect("events");
        assert!(entries.len() <= 2, "{page}");
        walked.extend(entries.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                let link = link.expect("a Link header with a next page");
                assert!(link.contains("rel=\"next\""), "{link}");
                query = format!("?limit=2&cursor={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(Value::Array(walked), whole["events"]);

    // Not a job, no such job, a bad limit, a cursor of another job.
    assert_problem(
        history(&system, "not-a-uuid", "").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let unknown = jetjobs::JobId::new_v7().to_string();
    assert_problem(history(&system, &unknown, "").await, StatusCode::NOT_FOUND).await;
    assert_problem(
        history(&system, &id, "?limit=0").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let other = system.submit("noop", json!({})).await;
    let other = other["id"].as_str().expect("id");
    let first: Value = history(&system, &id, "?limit=1")
        .await
        .json()
        .await
        .expect("page");
    let cursor = first["next_cursor"].as_str().expect("a cursor");
    let problem = assert_problem(
        history(&system, other, &format!("?cursor={cursor}")).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("cursor")),
        "{problem}"
    );
}

/// The `created` entry of a job's history.
async fn created(system: &System, id: &str) -> Value {
    let page: Value = history(system, id, "").await.json().await.expect("history");
    page["events"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_is_shown_while_the_jobs_request_is_kept() {
    let system = System::start().await;
    // Running: its request is in JOBS until it is acked.
    let running = system.submit("sleep", json!({"ms": 20_000})).await;
    let running = running["id"].as_str().expect("id");
    system
        .wait_for(running, WAIT, |s| s["state"] == "running")
        .await;
    assert_eq!(
        created(&system, running).await["payload"],
        json!({"ms": 20_000})
    );
    // Dead: its request is the dead letter.
    let dead = system
        .post(&json!({"kind": "flaky", "payload": {"fail": "permanent"}}))
        .await
        .json::<Value>()
        .await
        .expect("snapshot");
    let dead = dead["id"].as_str().expect("id");
    system.wait_terminal(dead, WAIT).await;
    let shown = jetjobs::testing::eventually(WAIT, || async {
        let entry = created(&system, dead).await;
        (!entry["payload"].is_null()).then_some(entry)
    })
    .await
    .expect("the dead job's payload");
    assert_eq!(shown["payload"], json!({"fail": "permanent"}));
    // Succeeded: JOBS is a work queue, the request is gone, and the entry says nothing.
    let done = system.submit("noop", json!({})).await;
    let done = done["id"].as_str().expect("id");
    system.wait_terminal(done, WAIT).await;
    let entry = created(&system, done).await;
    assert_eq!(entry["type"], "created");
    assert!(entry.get("payload").is_none(), "{entry}");
    system
        .http
        .delete(system.url(&format!("/v1/jobs/{running}")))
        .send()
        .await
        .expect("cancel");
}
