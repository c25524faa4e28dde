//! The same request, however often retried, creates one job (DESIGN invariant 4).

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{System, assert_problem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_a_client_id_is_idempotent_and_refuses_a_different_body() {
    let system = System::start().await;
    // Any UUID will do, not only the v7 the server makes.
    let id = uuid::Uuid::from_u128(uuid::Uuid::now_v7().as_u128().reverse_bits());
    let url = system.url(&format!("/v1/jobs/{id}"));
    let body = json!({"kind": "noop", "payload": {}});

    let first = system.http.put(&url).json(&body).send().await.expect("PUT");
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(
        first
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    let snapshot: Value = first.json().await.expect("snapshot");
    assert_eq!(snapshot["id"], id.to_string());

    system
        .wait_terminal(&id.to_string(), Duration::from_secs(30))
        .await;
    // The same PUT again, even with the id repeated in the body: the same job, 200.
    for repeat in [
        body.clone(),
        json!({"id": id, "kind": "noop", "payload": {}}),
    ] {
        let again = system
            .http
            .put(&url)
            .json(&repeat)
            .send()
            .await
            .expect("PUT");
        assert_eq!(again.status(), StatusCode::OK);
        let snapshot: Value = again.json().await.expect("snapshot");
        assert_eq!(snapshot["id"], id.to_string());
        assert_eq!(snapshot["state"], "succeeded", "the current snapshot");
    }

    for different in [
        json!({"kind": "noop", "payload": {}, "max_attempts": 2}),
        json!({"kind": "sleep", "payload": {"ms": 1}}),
    ] {
        let response = system
            .http
            .put(&url)
            .json(&different)
            .send()
            .await
            .expect("PUT");
        assert_problem(response, StatusCode::CONFLICT).await;
    }
    assert_eq!(
        system.stream_last_seq("JOBS").await,
        1,
        "one job was queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_submissions_with_one_idempotency_key_make_one_job() {
    let system = System::start().await;
    let body = json!({"kind": "sleep", "payload": {"ms": 300}});
    let requests = (0..32).map(|_| {
        let request = system
            .http
            .post(system.url("/v1/jobs"))
            .header("Idempotency-Key", "order-1234-receipt")
            .json(&body);
        async move {
            let response = request.send().await.expect("POST");
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            let replayed = response.headers().contains_key("idempotent-replayed");
            let snapshot: Value = response.json().await.expect("snapshot");
            (snapshot["id"].as_str().expect("id").to_string(), replayed)
        }
    });
    let answers = futures::future::join_all(requests).await;
    let ids: HashSet<&String> = answers.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 1, "every request got the same job: {ids:?}");
    assert_eq!(
        answers.iter().filter(|(_, replayed)| !replayed).count(),
        1,
        "exactly one request created it"
    );
    let id = answers[0].0.clone();
    let done = system.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["attempt"], 1);
    assert_eq!(
        system.stream_last_seq("JOBS").await,
        1,
        "one message queued"
    );

    // A retry long after completion still answers with the same job.
    let response = system
        .http
        .post(system.url("/v1/jobs"))
        .header("Idempotency-Key", "order-1234-receipt")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let snapshot: Value = response.json().await.expect("snapshot");
    assert_eq!(snapshot["id"], id.as_str());
    assert_eq!(snapshot["state"], "succeeded");

    // The key with another body is a client bug: 422, and no job.
    let response = system
        .http
        .post(system.url("/v1/jobs"))
        .header("Idempotency-Key", "order-1234-receipt")
        .json(&json!({"kind": "sleep", "payload": {"ms": 301}}))
        .send()
        .await
        .expect("POST");
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(system.stream_last_seq("JOBS").await, 1);

    // Another key is another job.
    let response = system
        .http
        .post(system.url("/v1/jobs"))
        .header("Idempotency-Key", "order-1235-receipt")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let other: Value = response.json().await.expect("snapshot");
    assert_ne!(other["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_puts_of_one_id_make_one_job_even_while_it_runs() {
    let system = System::start().await;
    let id = uuid::Uuid::now_v7();
    let url = system.url(&format!("/v1/jobs/{id}"));
    let body = json!({"kind": "sleep", "payload": {"ms": 500}});
    let puts = (0..16).map(|_| {
        let request = system.http.put(&url).json(&body);
        async move { request.send().await.expect("PUT").status() }
    });
    let statuses = futures::future::join_all(puts).await;
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::ACCEPTED || *s == StatusCode::OK),
        "{statuses:?}"
    );
    // While it is still running, the same PUT answers the live snapshot.
    let again = system.http.put(&url).json(&body).send().await.expect("PUT");
    assert_eq!(again.status(), StatusCode::OK);
    let snapshot: Value = again.json().await.expect("snapshot");
    assert!(matches!(
        snapshot["state"].as_str(),
        Some("queued" | "running")
    ));

    let done = system
        .wait_terminal(&id.to_string(), Duration::from_secs(30))
        .await;
    assert_eq!(done["attempt"], 1);
    assert_eq!(system.stream_last_seq("JOBS").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_onto_the_id_of_a_posted_job_is_a_conflict() {
    let system = System::start().await;
    let posted = system.submit("noop", json!({})).await;
    let id = posted["id"].as_str().expect("id");
    let response = system
        .http
        .put(system.url(&format!("/v1/jobs/{id}")))
        .json(&json!({"kind": "sleep", "payload": {"ms": 1}}))
        .send()
        .await
        .expect("PUT");
    assert_problem(response, StatusCode::CONFLICT).await;
    assert_eq!(system.stream_last_seq("JOBS").await, 1, "no second job");
}
