//! Group commit switched on everywhere (gateway, processors, status): a burst of
//! concurrent submissions — plain, keyed and repeated — is stored in batches and every
//! job still ends once, with every invariant a lone publish gives.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, System};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_under_group_commit_runs_every_job_once() {
    let system = System::start_with(Options {
        group_commit: true,
        ..Options::default()
    })
    .await;

    // 300 submissions at once: every third repeats the Idempotency-Key of the one before
    // (a duplicate inside a batch refuses the whole batch; each write must still get its
    // own, right answer).
    let answers: Vec<(usize, StatusCode, Value)> = futures::stream::iter(0..300)
        .map(|i| {
            let system = &system;
            async move {
                let key = if i % 3 == 2 { i - 1 } else { i };
                let response = system
                    .http
                    .post(system.url("/v1/jobs"))
                    .header("idempotency-key", format!("burst-{key}"))
                    .json(&json!({"kind": "noop"}))
                    .send()
                    .await
                    .expect("POST");
                let status = response.status();
                (i, status, response.json().await.unwrap_or(Value::Null))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    let mut by_key = std::collections::HashMap::new();
    for (i, status, body) in &answers {
        assert_eq!(*status, StatusCode::ACCEPTED, "submission {i}: {body}");
        let key = if i % 3 == 2 { i - 1 } else { *i };
        let id = body["id"].as_str().expect("id").to_string();
        if let Some(earlier) = by_key.insert(key, id.clone()) {
            assert_eq!(earlier, id, "one key, one job");
        }
    }
    let ids: HashSet<String> = by_key.into_values().collect();
    assert_eq!(ids.len(), 200, "200 distinct keys, 200 jobs");

    for id in &ids {
        let done = system.wait_terminal(id, WAIT).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    assert_eq!(
        system.stream_last_seq("JOBS").await,
        200,
        "each job queued once"
    );
    // Each job: exactly one `succeeded`, and no other run (a noop run is too short to
    // record `started`).
    for id in ids.iter().take(20) {
        let events = system.events_of("noop", id).await;
        assert_eq!(events, [("succeeded".to_string(), 1)], "{events:?}");
    }
}
