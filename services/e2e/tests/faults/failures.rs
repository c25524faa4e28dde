//! Scenario 6: jobs that fail in every way a job can — a message that is not a job at
//! all, a handler that always fails, one that panics, one that hangs past its timeout,
//! one that fails permanently — among jobs that succeed.

use std::time::{Duration, Instant};

use jetjobs::subjects;
use serde_json::{Value, json};

use crate::check::{Watcher, verify};
use crate::deployment::{Deployment, Setup};
use crate::load::Load;
use crate::report;

/// The jobs of the run, by index: what to submit, and how it must end.
fn job(i: usize) -> Value {
    match i % 10 {
        0 | 1 => json!({"kind": "flaky", "payload": {"fail": "retryable"}, "max_attempts": 3}),
        2 => json!({"kind": "flaky", "payload": {"fail": "panic"}, "max_attempts": 2}),
        3 => {
            json!({"kind": "flaky", "payload": {"fail": "hang"}, "max_attempts": 2, "timeout_secs": 1})
        }
        4 => json!({"kind": "flaky", "payload": {"fail": "permanent"}, "max_attempts": 5}),
        _ => json!({"kind": "noop", "payload": {}}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s6_every_kind_of_failure_ends_failed_with_its_reason_and_the_processor_serves_on() {
    let _turn = crate::serial().await;
    let mut system = Deployment::start(Setup::default()).await;
    let watcher = Watcher::start(&system.js).await;
    let started = Instant::now();
    const JOBS: usize = 300;
    let load = Load::start(system.base.clone(), JOBS, 16, job);

    // Poison: messages on job subjects whose payload is not a job request.
    let kind = jetjobs::Kind::new("flaky").expect("kind");
    let mut poison = Vec::new();
    for _ in 0..10 {
        let id = jetjobs::JobId::new_v7();
        system
            .js
            .publish(
                subjects::submit(&kind, id, Default::default()),
                "{not a job".into(),
            )
            .await
            .expect("publish poison")
            .await
            .expect("stored");
        poison.push(id.to_string());
    }

    let loaded = load.finish().await;
    // Load tasks pick indexes in order but finish out of order: map ids back by body.
    let mut ids = loaded.accepted.clone();
    ids.extend(poison.iter().cloned());
    let verdict = verify(&system.js, &watcher, &ids, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();

    let mut failed_as_expected = 0;
    let mut wrong = Vec::new();
    for id in &loaded.accepted {
        let snapshot = &verdict.snapshots[id];
        let state = snapshot["state"].as_str().unwrap_or_default();
        let attempt = snapshot["attempt"].as_u64().unwrap_or_default();
        let error = snapshot["error"].as_str().unwrap_or_default();
        let errors = snapshot["errors"].as_array().map_or(0, Vec::len) as u64;
        let ok = match (state, error) {
            ("succeeded", _) => true,
            ("failed", "flaky: attempt 3 failed as asked") => attempt == 3 && errors == 3,
            ("failed", e) if e.starts_with("the handler panicked: flaky: attempt 2") => {
                attempt == 2 && errors == 2
            }
            ("failed", "timed out after 1s") => attempt == 2 && errors == 2,
            ("failed", "flaky: attempt 1 failed permanently as asked") => {
                attempt == 1 && errors == 1
            }
            _ => false,
        };
        if !ok {
            wrong.push(snapshot.clone());
        } else if state == "failed" {
            failed_as_expected += 1;
        }
    }
    for id in &poison {
        let snapshot = &verdict.snapshots[id];
        let events = &verdict.events[id];
        let ok = snapshot["state"] == "failed"
            && snapshot["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("the job message cannot be decoded"))
            && events.len() == 1;
        if ok {
            failed_as_expected += 1;
        } else {
            wrong.push(json!({"poison": snapshot, "events": format!("{events:?}")}));
        }
    }
    let succeeded = verdict.count_state("succeeded");
    let mut dead = system.js.get_stream("JOBS_DEAD").await.expect("JOBS_DEAD");
    let dead = dead.info().await.expect("info").state.messages;
    let alive = system.io[0].is_running();
    report::record(&verdict.row(
        6,
        "Poison messages, handlers that always fail, panic, hang past their timeout, fail permanently",
        None,
        format!(
            "{} jobs + 10 poison messages in {:.0} s; {succeeded} succeeded, {failed_as_expected} failed with the right reason after the right number of attempts, {} ended otherwise; {dead} dead letters; the processor never restarted",
            loaded.accepted.len(),
            elapsed.as_secs_f64(),
            wrong.len(),
        ),
    ));
    verdict.assert_clean();
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(succeeded, JOBS / 2);
    assert_eq!(
        dead as usize, failed_as_expected,
        "every failed job is dead-lettered once"
    );
    assert!(alive, "the processor survived every failure");
}
