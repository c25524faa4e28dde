//! `Prefer: wait` on submission and long-poll `GET ?wait=` with `ETag`/`If-None-Match`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{System, assert_problem};

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn post_with_prefer(system: &System, body: &Value, prefer: &str) -> reqwest::Response {
    system
        .http
        .post(system.url("/v1/jobs"))
        .header("prefer", prefer)
        .json(body)
        .send()
        .await
        .expect("POST")
}

#[tokio::test]
async fn prefer_wait_answers_200_with_the_result_of_a_fast_job() {
    let system = System::start().await;
    let response =
        post_with_prefer(&system, &json!({"kind": "noop"}), "respond-async, WAIT=10").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "preference-applied").as_deref(),
        Some("wait=10")
    );
    let location = header(&response, "location").expect("location");
    let job: Value = response.json().await.expect("snapshot");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        location,
        format!("/v1/jobs/{}", job["id"].as_str().expect("id"))
    );

    // Above the gateway's cap (20 s): clamped, and said so.
    let response = post_with_prefer(&system, &json!({"kind": "noop"}), "wait=3600").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "preference-applied").as_deref(),
        Some("wait=20")
    );

    // A malformed preference is ignored (RFC 7240): the usual 202, no Preference-Applied.
    let response = post_with_prefer(&system, &json!({"kind": "noop"}), "wait=soon").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&response, "preference-applied"), None);
}

#[tokio::test]
async fn prefer_wait_answers_202_when_the_job_outlasts_the_wait() {
    let system = System::start().await;
    let response = post_with_prefer(
        &system,
        &json!({"kind": "sleep", "payload": {"ms": 5000}}),
        "wait=1",
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        header(&response, "preference-applied").as_deref(),
        Some("wait=1")
    );
    assert!(header(&response, "location").is_some());
    let job: Value = response.json().await.expect("snapshot");
    assert!(
        matches!(job["state"].as_str(), Some("queued" | "running")),
        "{job}"
    );
}

#[tokio::test]
async fn prefer_wait_works_on_put_and_on_idempotent_replays() {
    let system = System::start().await;
    let id = "019aa6d2-5c1e-7b43-9a0e-2f2f8c1d9b12";
    let body = json!({"kind": "sleep", "payload": {"ms": 300}});
    for _ in 0..2 {
        let response = system
            .http
            .put(system.url(&format!("/v1/jobs/{id}")))
            .header("prefer", "wait=15")
            .json(&body)
            .send()
            .await
            .expect("PUT");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "preference-applied").as_deref(),
            Some("wait=15")
        );
        let job: Value = response.json().await.expect("snapshot");
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["id"], id);
    }
    let mut replays = Vec::new();
    for _ in 0..2 {
        let response = system
            .http
            .post(system.url("/v1/jobs"))
            .header("prefer", "wait=15")
            .header("idempotency-key", "wait-replay")
            .json(&json!({"kind": "sleep", "payload": {"ms": 300}}))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), StatusCode::OK);
        let job: Value = response.json().await.expect("snapshot");
        assert_eq!(job["state"], "succeeded");
        replays.push(job["id"].clone());
    }
    assert_eq!(replays[0], replays[1]);
}

async fn get(system: &System, path: &str, if_none_match: Option<&str>) -> reqwest::Response {
    let mut request = system.http.get(system.url(path));
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    request.send().await.expect("GET")
}

#[tokio::test]
async fn long_poll_waits_for_the_end_and_etags_revalidate() {
    let system = System::start().await;
    let job = system.submit("sleep", json!({"ms": 1500})).await;
    let id = job["id"].as_str().expect("id");
    let path = format!("/v1/jobs/{id}");

    let response = get(&system, &path, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let first_tag = header(&response, "etag").expect("ETag");
    assert!(
        first_tag.starts_with('"') && first_tag.ends_with('"'),
        "{first_tag}"
    );

    // With If-None-Match and wait: back as soon as the job changed.
    let response = get(&system, &format!("{path}?wait=15"), Some(&first_tag)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let changed_tag = header(&response, "etag").expect("ETag");
    assert_ne!(changed_tag, first_tag);

    // Without If-None-Match: back when the job is terminal.
    let response = get(&system, &format!("{path}?wait=15"), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let final_tag = header(&response, "etag").expect("ETag");
    let done: Value = response.json().await.expect("snapshot");
    assert_eq!(done["state"], "succeeded", "{done}");

    // Revalidation: unchanged is 304 at once without wait, after the wait with it.
    let response = get(&system, &path, Some(&final_tag)).await;
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&response, "etag"), Some(final_tag.clone()));
    let response = get(&system, &format!("{path}?wait=1"), Some(&final_tag)).await;
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    let response = get(&system, &path, Some(&format!("W/{final_tag}, \"1\""))).await;
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    // An old tag: the current snapshot at once.
    let response = get(&system, &format!("{path}?wait=15"), Some(&first_tag)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "etag"), Some(final_tag));
    // A terminal job with wait answers at once too.
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        get(&system, &format!("{path}?wait=15"), None),
    )
    .await
    .expect("a terminal job is answered at once");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn long_poll_errors_are_problems() {
    let system = System::start().await;
    let job = system.submit("noop", json!({})).await;
    let id = job["id"].as_str().expect("id");
    let response = get(&system, &format!("/v1/jobs/{id}?wait=soon"), None).await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;
    let response = get(
        &system,
        "/v1/jobs/019aa6d2-5c1e-7b43-9a0e-2f2f8c1d9b11?wait=2",
        None,
    )
    .await;
    assert_problem(response, StatusCode::NOT_FOUND).await;
}
