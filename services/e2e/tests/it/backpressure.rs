//! A full queue is a 503 with `Retry-After`, never a silent drop, and nothing is half-made.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Options, System, assert_problem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after_and_accepts_again_once_drained() {
    // One slot and room for four jobs in JOBS: one running, three waiting.
    let system = System::start_with(Options {
        io_concurrency: 1,
        jobs_max_msgs: 4,
        ..Options::default()
    })
    .await;
    let mut accepted = Vec::new();
    for _ in 0..4 {
        let job = system.submit("sleep", json!({"ms": 300})).await;
        accepted.push(job["id"].as_str().expect("id").to_string());
    }
    // The first job's `started` is projected, so the count below moves for nothing but
    // the refused submission (the next change comes when it ends, 300 ms in).
    system
        .wait_for(&accepted[0], Duration::from_secs(10), |s| {
            s["state"] == "running"
        })
        .await;
    let statuses_before = system.bucket_last_seq("job_status").await;

    let response = system
        .http
        .post(system.url("/v1/jobs"))
        .header("idempotency-key", "when-full")
        .json(&json!({"kind": "sleep", "payload": {"ms": 300}}))
        .send()
        .await
        .expect("POST");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(retry_after.is_some_and(|s| s > 0), "Retry-After in seconds");
    assert_eq!(problem["queue"], "full", "{problem}");
    assert_eq!(
        system.stream_messages("JOBS").await,
        4,
        "nothing was dropped or added"
    );
    assert_eq!(
        system.bucket_last_seq("job_status").await,
        statuses_before,
        "no snapshot for a job that was refused"
    );

    // The refusal freed its Idempotency-Key: once the queue drains, the same request is
    // a new job, not a replay of a failure.
    for id in &accepted {
        let done = system.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(done["state"], "succeeded");
    }
    let response = system
        .http
        .post(system.url("/v1/jobs"))
        .header("idempotency-key", "when-full")
        .json(&json!({"kind": "sleep", "payload": {"ms": 300}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}
