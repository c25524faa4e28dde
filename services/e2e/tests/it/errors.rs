//! Bad input gets a clear problem+json answer with the right status, and changes nothing.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Options, System, assert_problem};

/// A POST with a body sent as is, for bodies `json()` would never produce.
async fn post_raw(
    system: &System,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    system
        .http
        .post(system.url("/v1/jobs"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("send")
}

/// What a rejected request could have left behind: jobs, snapshots, claims.
async fn footprint(system: &System) -> (u64, u64, u64) {
    (
        system.stream_last_seq("JOBS").await,
        system.bucket_last_seq("job_status").await,
        system.bucket_last_seq("job_idempotency").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_a_problem_and_leaves_nothing_behind() {
    let system = System::start_with(Options {
        max_body_bytes: 4096,
        ..Options::default()
    })
    .await;
    let before = footprint(&system).await;
    let jobs = system.url("/v1/jobs");
    let http = &system.http;

    // Malformed JSON.
    let response = post_raw(&system, "application/json", "{\"kind\": ").await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;

    // JSON nested far too deep is malformed too, not a crash.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let response = post_raw(
        &system,
        "application/json",
        format!("{{\"kind\":\"noop\",\"payload\":{deep}}}"),
    )
    .await;
    // Over the 4 KiB limit here; the next check uses a body under it.
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    let deep = format!("{}{}", "[".repeat(1_000), "]".repeat(1_000));
    let response = post_raw(
        &system,
        "application/json",
        format!("{{\"kind\":\"noop\",\"payload\":{deep}}}"),
    )
    .await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;

    // Wrong content type.
    let response = post_raw(&system, "text/plain", r#"{"kind":"noop"}"#).await;
    assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;

    // Too large.
    let response = system
        .post(&json!({"kind": "noop", "payload": {"blob": "x".repeat(10_000)}}))
        .await;
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;

    // Well-formed JSON of the wrong shape.
    for body in [
        json!({"payload": {}}),
        json!({"kind": 42}),
        json!({"kind": "noop", "max_attempts": "three"}),
        json!({"kind": "noop", "unexpected": true}),
        json!({"kind": "Not A Kind"}),
        json!({"kind": "noop", "max_attempts": 0}),
        json!({"kind": "noop", "max_attempts": 1000}),
        json!({"kind": "noop", "timeout_secs": 0}),
    ] {
        let response = system.post(&body).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(problem["detail"].is_string(), "{body}: {problem}");
    }

    // An id on POST is the server's to choose.
    let response = system
        .post(&json!({"kind": "noop", "id": uuid::Uuid::now_v7()}))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;

    // Unknown kind: 422 listing what is registered.
    let response = system.post(&json!({"kind": "transcode"})).await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        problem["kinds"],
        json!(["flaky", "hash", "noop", "sleep", "thumbnail"])
    );
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("transcode"))
    );

    // Ids: malformed is 400, unknown is 404.
    let response = http
        .get(system.url("/v1/jobs/not-a-uuid"))
        .send()
        .await
        .expect("send");
    assert_problem(response, StatusCode::BAD_REQUEST).await;
    let response = http
        .get(system.url(&format!("/v1/jobs/{}", uuid::Uuid::now_v7())))
        .send()
        .await
        .expect("send");
    assert_problem(response, StatusCode::NOT_FOUND).await;

    // PUT whose body id differs from the path.
    let response = http
        .put(system.url(&format!("/v1/jobs/{}", uuid::Uuid::now_v7())))
        .json(&json!({"id": uuid::Uuid::now_v7(), "kind": "noop"}))
        .send()
        .await
        .expect("send");
    assert_problem(response, StatusCode::BAD_REQUEST).await;
    let response = http
        .put(system.url("/v1/jobs/nope"))
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .expect("send");
    assert_problem(response, StatusCode::BAD_REQUEST).await;

    // Bad Idempotency-Key.
    let response = http
        .post(&jobs)
        .header("idempotency-key", "k".repeat(300))
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .expect("send");
    assert_problem(response, StatusCode::BAD_REQUEST).await;

    // Unknown route.
    let response = http
        .get(system.url("/v2/nothing"))
        .send()
        .await
        .expect("send");
    assert_problem(response, StatusCode::NOT_FOUND).await;

    // Unsupported method on a known route.
    let response = http
        .delete(system.url("/v1/jobs"))
        .send()
        .await
        .expect("send");
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;

    // Rejections that come with an id or a key must not leave a claim behind either.
    for body in [
        json!({"kind": "transcode"}),
        json!({"kind": "noop", "max_attempts": 0}),
    ] {
        let response = http
            .post(&jobs)
            .header("idempotency-key", "bad-request-key")
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        let response = http
            .put(system.url(&format!("/v1/jobs/{}", uuid::Uuid::now_v7())))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }

    assert_eq!(
        footprint(&system).await,
        before,
        "rejected requests left jobs, snapshots or claims behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let system = System::start().await;
    let response = system
        .http
        .get(system.url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let response = system
        .http
        .get(system.url("/readyz"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);

    // Without its bucket the gateway is not ready, and says what is missing.
    system
        .js
        .delete_key_value("job_idempotency")
        .await
        .expect("delete bucket");
    let response = system
        .http
        .get(system.url("/readyz"))
        .send()
        .await
        .expect("send");
    let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("job_idempotency")),
        "{problem}"
    );
}
