//! Dead letters over HTTP: `GET /v1/dead-letters` lists the jobs that failed for good
//! while they are dead, and `POST /v1/dead-letters/replay` queues them again, by id or
//! all of a kind.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{System, assert_problem};

const WAIT: Duration = Duration::from_secs(30);

/// A job that fails its first run for good (`permanent`) and succeeds when replayed.
async fn dead_job(system: &System) -> String {
    let response = system
        .post(&json!({
            "kind": "flaky",
            "payload": {"fail": "permanent", "times": 1}
        }))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.expect("snapshot")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let dead = system.wait_terminal(&id, WAIT).await;
    assert_eq!(dead["state"], "failed", "{dead}");
    id
}

async fn list(system: &System, query: &str) -> reqwest::Response {
    system
        .http
        .get(system.url(&format!("/v1/dead-letters{query}")))
        .send()
        .await
        .expect("GET dead letters")
}

async fn listed(system: &System, query: &str) -> Vec<Value> {
    let response = list(system, query).await;
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.expect("page");
    page["dead_letters"]
        .as_array()
        .expect("dead_letters")
        .clone()
}

async fn replay(system: &System, body: &Value) -> reqwest::Response {
    system
        .http
        .post(system.url("/v1/dead-letters/replay"))
        .json(body)
        .send()
        .await
        .expect("POST replay")
}

/// The dead letter of `id` shows up (it is written just after the `failed` event).
async fn wait_listed(system: &System, id: &str) -> Value {
    jetjobs::testing::eventually(WAIT, || async {
        listed(system, "?kind=flaky&limit=1000")
            .await
            .into_iter()
            .find(|l| l["id"] == id)
    })
    .await
    .unwrap_or_else(|| panic!("job {id} never listed as a dead letter"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_is_listed_until_it_is_replayed_and_then_runs() {
    let system = System::start().await;
    let id = dead_job(&system).await;
    let letter = wait_listed(&system, &id).await;
    assert_eq!(letter["kind"], "flaky");
    assert_eq!(letter["attempt"], 1);
    assert_eq!(letter["replayable"], true);
    assert!(
        letter["error"]
            .as_str()
            .is_some_and(|e| e.contains("flaky")),
        "{letter}"
    );
    assert!(letter["failed_at"].as_str().is_some(), "{letter}");
    assert!(
        listed(&system, "?kind=sleep").await.is_empty(),
        "filtered by kind"
    );

    let response = replay(&system, &json!({"ids": [id]})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let outcome: Value = response.json().await.expect("outcome");
    assert_eq!(outcome["replayed"], json!([id]), "{outcome}");
    assert_eq!(outcome["failed"], json!([]));
    assert_eq!(outcome["remaining"], 0);

    let done = system
        .wait_for(&id, WAIT, |s| s["state"] == "succeeded")
        .await;
    assert_eq!(done["attempt"], 2);
    assert!(
        listed(&system, "").await.iter().all(|l| l["id"] != id),
        "a replayed job is no longer a dead letter"
    );
    // Replaying it again: it is not dead any more.
    let outcome: Value = replay(&system, &json!({"ids": [id]}))
        .await
        .json()
        .await
        .expect("outcome");
    assert_eq!(outcome["replayed"], json!([]));
    assert_eq!(outcome["failed"][0]["status"], 409, "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_all_of_a_kind_queues_every_dead_job_of_it() {
    let system = System::start().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(dead_job(&system).await);
    }
    for id in &ids {
        wait_listed(&system, id).await;
    }
    // Pages of one walk all three, oldest first.
    let mut walked = Vec::new();
    let mut query = "?kind=flaky&limit=1".to_string();
    loop {
        let page: Value = list(&system, &query).await.json().await.expect("page");
        walked.extend(
            page["dead_letters"]
                .as_array()
                .expect("dead_letters")
                .iter()
                .map(|l| l["id"].as_str().expect("id").to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?kind=flaky&limit=1&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(walked, ids);

    let response = replay(&system, &json!({"all": true, "kind": "flaky"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let outcome: Value = response.json().await.expect("outcome");
    let mut replayed: Vec<String> = outcome["replayed"]
        .as_array()
        .expect("replayed")
        .iter()
        .map(|v| v.as_str().expect("id").to_string())
        .collect();
    replayed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(replayed, expected, "{outcome}");
    assert_eq!(outcome["remaining"], 0);
    for id in &ids {
        system
            .wait_for(id, WAIT, |s| s["state"] == "succeeded")
            .await;
    }
    assert!(listed(&system, "?kind=flaky").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_says_what_it_could_not_do_and_refuses_bad_bodies() {
    let system = System::start().await;
    let unknown = jetjobs::JobId::new_v7().to_string();
    let outcome: Value = replay(&system, &json!({"ids": [unknown, "not-a-uuid"]}))
        .await
        .json()
        .await
        .expect("outcome");
    assert_eq!(outcome["replayed"], json!([]));
    let failed = outcome["failed"].as_array().expect("failed");
    assert_eq!(failed.len(), 2, "{outcome}");
    assert_eq!(failed[0]["id"], unknown.as_str());
    assert_eq!(failed[0]["status"], 404);
    assert_eq!(failed[1]["status"], 400);
    assert!(failed[1]["detail"].as_str().is_some_and(|d| !d.is_empty()));

    for body in [
        json!({}),
        json!({"ids": []}),
        json!({"ids": ["x"], "all": true}),
        json!({"ids": ["x"], "kind": "flaky"}),
        json!({"all": true, "kind": "Not A Kind!"}),
    ] {
        let problem = assert_problem(
            replay(&system, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert!(problem["detail"].as_str().is_some(), "{body}: {problem}");
    }
    assert_problem(
        replay(&system, &json!({"everything": true})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_problem(list(&system, "?limit=0").await, StatusCode::BAD_REQUEST).await;
    assert_problem(list(&system, "?cursor=nope").await, StatusCode::BAD_REQUEST).await;
    assert_problem(list(&system, "?kind=Bad!").await, StatusCode::BAD_REQUEST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_job_that_dies_again_is_a_dead_letter_again() {
    let system = System::start().await;
    let response = system
        .post(&json!({"kind": "flaky", "payload": {"fail": "permanent"}}))
        .await;
    let id = response.json::<Value>().await.expect("snapshot")["id"]
        .as_str()
        .expect("id")
        .to_string();
    system.wait_terminal(&id, WAIT).await;
    let first = wait_listed(&system, &id).await;
    assert_eq!(first["attempt"], 1);

    let outcome: Value = replay(&system, &json!({"ids": [id]}))
        .await
        .json()
        .await
        .expect("outcome");
    assert_eq!(outcome["replayed"], json!([id]), "{outcome}");
    // It fails again on attempt 2: one dead letter, the new one (the replay removed only
    // the one it read).
    let again = jetjobs::testing::eventually(WAIT, || async {
        let letters: Vec<Value> = listed(&system, "?kind=flaky")
            .await
            .into_iter()
            .filter(|l| l["id"] == id.as_str())
            .collect();
        (letters.len() == 1 && letters[0]["attempt"] == 2).then_some(letters)
    })
    .await
    .expect("listed again, once, for attempt 2");
    assert!(again[0]["seq"].as_u64() > first["seq"].as_u64());
}
