//! After a 202, `GET /v1/jobs/{id}` never answers 404 (DESIGN invariant 2).

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_readable_the_moment_it_is_accepted() {
    let system = System::start().await;
    let submits = (0..300).map(|i| {
        let kind = if i % 2 == 0 { "noop" } else { "sleep" };
        let payload = if i % 2 == 0 {
            json!({})
        } else {
            json!({"ms": 5})
        };
        let system = &system;
        async move {
            let job = system.submit(kind, payload).await;
            let id = job["id"].as_str().expect("id").to_string();
            // Straight after the 202, without any pause.
            let (status, snapshot) = system.get_job(&id).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "job {id} unreadable right after 202"
            );
            assert_eq!(snapshot["id"], id.as_str());
        }
    });
    futures::future::join_all(submits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_readable_even_while_the_status_service_is_down() {
    let mut system = System::start().await;
    system.stop_status().await;
    let job = system.submit("noop", json!({})).await;
    let id = job["id"].as_str().expect("id");
    let (status, snapshot) = system.get_job(id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(snapshot["state"], "queued");

    // When it comes back, it catches up from the stream.
    system.start_status();
    let done = system
        .wait_terminal(id, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(done["state"], "succeeded");
}
