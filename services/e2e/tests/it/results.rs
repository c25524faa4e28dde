//! Results by reference: a result larger than the inline limit is stored in `job_blobs`,
//! the snapshot points at it, and `GET /v1/jobs/{id}/result` serves it either way.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::helpers::{Options, System, assert_problem};

async fn result_of(system: &System, id: &str) -> reqwest::Response {
    system
        .http
        .get(system.url(&format!("/v1/jobs/{id}/result")))
        .send()
        .await
        .expect("GET result")
}

#[tokio::test]
async fn a_large_result_is_stored_by_reference_and_served_whole() {
    // Every hash result (~100 bytes of JSON) is "large" here.
    let system = System::start_with(Options {
        inline_result_max_bytes: 32,
        ..Options::default()
    })
    .await;
    let job = system
        .submit("hash", json!({"size": 1000, "rounds": 2}))
        .await;
    let id = job["id"].as_str().expect("id");
    let done = system.wait_terminal(id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["result"].is_null(), "{done}");
    let reference = &done["result_ref"];
    assert_eq!(reference["content_type"], "application/json");
    let blob = reference["blob"].as_str().expect("blob id");
    let size = reference["size"].as_u64().expect("size");

    let response = result_of(&system, id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    let bytes = response.bytes().await.expect("body");
    assert_eq!(bytes.len() as u64, size);
    let result: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(result["rounds"], 2);
    assert_eq!(result["digest"].as_str().map(str::len), Some(64));

    // The same bytes are the blob, which lives as long as the job.
    let blob_bytes = system
        .http
        .get(system.url(&format!("/v1/blobs/{blob}")))
        .send()
        .await
        .expect("GET blob")
        .bytes()
        .await
        .expect("blob body");
    assert_eq!(blob_bytes, bytes);
}

#[tokio::test]
async fn a_small_result_stays_inline_and_the_result_endpoint_serves_it_too() {
    let system = System::start().await;
    let job = system.submit("sleep", json!({"ms": 1})).await;
    let id = job["id"].as_str().expect("id");
    let done = system.wait_terminal(id, Duration::from_secs(20)).await;
    assert!(done["result_ref"].is_null(), "{done}");
    let response = result_of(&system, id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let result: Value = response.json().await.expect("json");
    assert_eq!(result, done["result"]);
}

#[tokio::test]
async fn a_job_without_a_result_is_409_and_an_unknown_one_404() {
    let system = System::start().await;
    let running = system.submit("sleep", json!({"ms": 60_000})).await;
    let id = running["id"].as_str().expect("id");
    let problem = assert_problem(result_of(&system, id).await, StatusCode::CONFLICT).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("queued") || d.contains("running")),
        "{problem}"
    );

    let failed = system.submit("flaky", json!({"fail": "permanent"})).await;
    let id = failed["id"].as_str().expect("id");
    system.wait_terminal(id, Duration::from_secs(20)).await;
    let problem = assert_problem(result_of(&system, id).await, StatusCode::CONFLICT).await;
    assert_eq!(problem["state"], "failed");

    let unknown = result_of(&system, "0190a0a0-0000-7000-8000-000000000000").await;
    assert_problem(unknown, StatusCode::NOT_FOUND).await;
}
