//! `dlq ls` and `dlq replay`: failed jobs land in dead letters; replaying queues them again.

use std::time::Duration;

use crate::helpers::{System, jetjobs, json, ndjson, stdout, submit, terminal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_listed_and_replayed() {
    let system = System::start().await;
    // Each fails its first attempt for good, and succeeds once replayed.
    let fails_once = r#"{"fail": "permanent", "times": 1}"#;
    let first = submit(&system, "flaky", fails_once).await;
    assert_eq!(terminal(&system, &first).await["state"], "failed");

    let listed = json(
        &jetjobs(&system, &["dlq", "ls", "-o", "json"])
            .await
            .success(),
    );
    let letters = listed["dead_letters"].as_array().expect("dead_letters");
    let letter = letters
        .iter()
        .find(|l| l["id"] == first.as_str())
        .unwrap_or_else(|| panic!("{first} is not listed: {listed}"));
    assert_eq!(letter["kind"], "flaky");
    assert_eq!(letter["replayable"], true);
    let table = stdout(
        &jetjobs(&system, &["dlq", "ls", "--kind", "flaky"])
            .await
            .success(),
    );
    assert!(
        table.contains(&first) && table.contains("REPLAYABLE"),
        "{table}"
    );
    let other_kind = jetjobs(&system, &["dlq", "ls", "--kind", "hash", "-o", "json"])
        .await
        .success();
    assert_eq!(json(&other_kind)["dead_letters"], serde_json::json!([]));

    // Replay one by id.
    let replayed = json(
        &jetjobs(&system, &["dlq", "replay", &first, "-o", "json"])
            .await
            .success(),
    );
    assert_eq!(
        replayed["replayed"],
        serde_json::json!([first]),
        "{replayed}"
    );
    system
        .wait_for(&first, Duration::from_secs(60), |s| {
            s["state"] == "succeeded"
        })
        .await;

    // Replay all of a kind.
    let mut dead = Vec::new();
    for _ in 0..3 {
        dead.push(submit(&system, "flaky", fails_once).await);
    }
    for id in &dead {
        assert_eq!(terminal(&system, id).await["state"], "failed");
    }
    let every = ndjson(
        &jetjobs(
            &system,
            &["dlq", "ls", "--all", "--limit", "2", "-o", "json"],
        )
        .await
        .success(),
    );
    assert_eq!(every.len(), 3, "{every:?}");
    let shown = stdout(
        &jetjobs(&system, &["dlq", "replay", "--all", "--kind", "flaky"])
            .await
            .success(),
    );
    assert!(shown.contains("replayed 3 jobs"), "{shown}");
    for id in &dead {
        system
            .wait_for(id, Duration::from_secs(60), |s| s["state"] == "succeeded")
            .await;
    }
    let empty = json(
        &jetjobs(&system, &["dlq", "ls", "-o", "json"])
            .await
            .success(),
    );
    assert_eq!(empty["dead_letters"], serde_json::json!([]), "{empty}");

    // An id that is not dead: named among the failures, exit 1.
    let failed = jetjobs(&system, &["dlq", "replay", &first]).await.code(1);
    assert!(
        stdout(&failed).contains("not replayed: 1"),
        "{}",
        stdout(&failed)
    );
}
