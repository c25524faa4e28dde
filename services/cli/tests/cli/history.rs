//! `history`: every event of a job, oldest first, across pages.

use crate::helpers::{System, jetjobs, json, stdout, submit, terminal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_tells_its_story() {
    let system = System::start().await;
    // Fails once (retryable), succeeds on attempt 2; progress from `hash` is covered by
    // the table below only through the event types.
    let id = submit(&system, "flaky", r#"{"fail": "retryable", "times": 1}"#).await;
    assert_eq!(terminal(&system, &id).await["state"], "succeeded");

    let history = json(
        &jetjobs(&system, &["history", &id, "-o", "json"])
            .await
            .success(),
    );
    assert_eq!(history["id"], id.as_str());
    assert_eq!(history["kind"], "flaky");
    let types: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    // Both runs are quicker than `JETJOBS_STARTED_AFTER_MS`: no `started`, each goes
    // straight to its outcome.
    assert_eq!(types, ["created", "retrying", "succeeded"]);

    let table = stdout(&jetjobs(&system, &["history", &id]).await.success());
    assert!(
        table.contains("retrying") && table.contains("succeeded"),
        "{table}"
    );
    assert!(table.contains(&id), "{table}");

    // A long history (a progress report per round) comes whole, over several pages.
    let hashed = submit(&system, "hash", r#"{"size": 1000, "rounds": 700}"#).await;
    assert_eq!(terminal(&system, &hashed).await["state"], "succeeded");
    let long = json(
        &jetjobs(&system, &["history", &hashed, "-o", "json"])
            .await
            .success(),
    );
    let events = long["events"].as_array().expect("events");
    assert_eq!(
        events.last().map(|e| &e["type"]),
        Some(&serde_json::json!("succeeded"))
    );
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {seqs:?}"
    );
}
