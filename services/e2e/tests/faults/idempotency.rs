//! Scenario 7: the same submission made many times — racing, and retried after the
//! gateway died at the worst moment (the job stored, the client not answered), also
//! after the stream's duplicate window has passed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::check::{Watcher, verify};
use crate::deployment::{Deployment, Setup};
use crate::report;

async fn post(
    http: &reqwest::Client,
    base: &str,
    key: &str,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let response = http
        .post(format!("{base}/v1/jobs"))
        .header("idempotency-key", key)
        .json(&json!({"kind": "sleep", "payload": {"ms": 50}}))
        .send()
        .await?;
    let status = response.status();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn jobs_in_stream(system: &Deployment) -> (u64, u64) {
    let mut jobs = system.js.get_stream("JOBS").await.expect("JOBS");
    let state = jobs.info().await.expect("info").state.clone();
    (state.messages, state.last_sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s7_one_job_per_idempotency_key_however_it_is_retried() {
    let _turn = crate::serial().await;
    let mut system = Deployment::start(Setup {
        // Short, so the late retry below comes after it.
        duplicate_window: Duration::from_secs(1),
        gateway_env: vec![("JETJOBS_FAILPOINT", "submit-after-publish".to_string())],
        ..Setup::default()
    })
    .await;
    let watcher = Watcher::start(&system.js).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // The processors stop, so jobs stay queued and the gateway's retry path is the one
    // that decides (a finished job would simply be found by its snapshot).
    system.io[0].terminate().await;

    // 1. The gateway dies after the PubAck, before it answers.
    let crashed = post(&http, &system.base, "crash-late-retry").await;
    assert!(
        crashed.is_err(),
        "the gateway should have died before answering, but answered {crashed:?}: \
         was jetjobs-gateway built with `--all-features` (feature `failpoints`)? \
         deploy/local/test.sh builds it so"
    );
    assert_eq!(jobs_in_stream(&system).await.0, 1, "the job was stored");
    let restarted = Instant::now();
    system.gateway.restart_with("JETJOBS_FAILPOINT", None);
    system.wait_ready().await;
    let recovery = restarted.elapsed();
    // The client retries with the same key after the duplicate window has passed: only
    // the claim and the one-message-per-job subject stand between it and a second job.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, late) = post(&http, &system.base, "crash-late-retry")
        .await
        .expect("retry");
    assert_eq!(status, StatusCode::ACCEPTED, "{late}");
    let late_id = late["id"].as_str().expect("id").to_string();
    let (messages, last_seq) = jobs_in_stream(&system).await;
    assert_eq!(
        (messages, last_seq),
        (1, 1),
        "still one job message, never two"
    );

    // 2. Many clients race with the same keys.
    let keys: Vec<String> = (0..20).map(|i| format!("race-{i}")).collect();
    let mut racers = Vec::new();
    for key in &keys {
        for _ in 0..32 {
            let (http, base, key) = (http.clone(), system.base.clone(), key.clone());
            racers.push(tokio::spawn(async move {
                let (status, body) = post(&http, &base, &key).await.expect("post");
                assert_eq!(status, StatusCode::ACCEPTED, "{body}");
                (key, body["id"].as_str().expect("id").to_string())
            }));
        }
    }
    let mut by_key: std::collections::HashMap<String, HashSet<String>> = Default::default();
    for racer in racers {
        let (key, id) = racer.await.expect("racer");
        by_key.entry(key).or_default().insert(id);
    }
    let split: Vec<&String> = by_key
        .iter()
        .filter(|(_, ids)| ids.len() != 1)
        .map(|(key, _)| key)
        .collect();
    let mut ids: Vec<String> = by_key
        .values()
        .flat_map(|ids| ids.iter().cloned())
        .collect();
    ids.push(late_id.clone());
    let (messages, _) = jobs_in_stream(&system).await;

    // Now let them run: each exactly once.
    system.start_io();
    let verdict = verify(&system.js, &watcher, &ids, Duration::from_secs(60)).await;
    report::record(&verdict.row(
        7,
        "Idempotency-Key: 32 racing clients per key; gateway killed after the PubAck, client retrying after the duplicate window",
        Some(recovery),
        format!(
            "20 keys × 32 concurrent POSTs → {} jobs ({} keys split); 1 job whose gateway aborted after the PubAck, retried 2 s later (duplicate window 1 s) → the same job, one message in JOBS; recovery = gateway restart until ready",
            by_key.len(),
            split.len()
        ),
    ));
    verdict.assert_clean();
    assert!(
        split.is_empty(),
        "keys that made more than one job: {split:?}"
    );
    assert_eq!(messages, 21, "one message per key");
    assert_eq!(verdict.count_state("succeeded"), 21);
    let runs = verdict.events[&late_id]
        .iter()
        .filter(|(t, _)| t == "started")
        .count();
    assert_eq!(runs, 1, "the crashed submission ran once");
}
