//! Scenario 17: delayed jobs survive the SIGKILL of every process, nats-server included,
//! and still run once each. Their schedules live in `JOBS_SCHEDULES` (file storage), and
//! nats-server fires the ones whose time passed while it was down as soon as it is back.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::check::{Watcher, verify};
use crate::deployment::{Deployment, Setup};
use crate::load::Load;
use crate::report;

const SETTLE: Duration = Duration::from_secs(90);
const DELAY_SECS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s17_delayed_jobs_survive_a_restart_of_everything_and_run_once() {
    let _turn = crate::serial().await;
    let mut system = Deployment::start(Setup::default()).await;
    let watcher = Watcher::start(&system.js).await;
    let load = Load::start(system.base.clone(), 200, 16, |i| {
        // Half of them also expire, long after they can run: the expiry must not fire
        // into a job that ran.
        if i.is_multiple_of(2) {
            json!({"kind": "noop", "payload": {}, "delay_secs": DELAY_SECS})
        } else {
            json!({"kind": "sleep", "payload": {"ms": 20}, "delay_secs": DELAY_SECS, "expires_in_secs": 600})
        }
    });
    let loaded = load.finish().await;
    assert_eq!(loaded.accepted.len(), 200);

    // Every process dies before any job is due, and stays down past the due time.
    system.gateway.kill();
    system.status.kill();
    for io in &mut system.io {
        io.kill();
    }
    system.nats.kill();
    tokio::time::sleep(Duration::from_secs(DELAY_SECS + 2)).await;
    let restarted = Instant::now();
    system.nats.restart();
    system.status.restart();
    for io in &mut system.io {
        io.restart();
    }
    system.gateway.restart();
    system.wait_ready().await;

    let verdict = verify(&system.js, &watcher, &loaded.accepted, SETTLE).await;
    let recovery = watcher.first_completion_after(restarted);
    // Runs recorded per job: the attempts its run events name (a quick run records only
    // its outcome, a longer one `started` too).
    let ran_twice: Vec<&String> = verdict
        .events
        .iter()
        .filter(|(_, events)| {
            let runs: HashSet<u64> = events
                .iter()
                .filter(|(t, _)| {
                    matches!(t.as_str(), "started" | "retrying" | "succeeded" | "failed")
                })
                .map(|(_, attempt)| *attempt)
                .collect();
            runs.len() != 1
        })
        .map(|(id, _)| id)
        .collect();
    report::record(&verdict.row(
        17,
        "Delayed jobs: SIGKILL every process and nats-server before they are due, restart them after",
        recovery,
        format!(
            "200 jobs due {DELAY_SECS} s after submission (half of them also expiring in 10 min); \
             everything was down at their due time; {} jobs did not run exactly once",
            ran_twice.len()
        ),
    ));
    verdict.assert_clean();
    assert_eq!(verdict.count_state("succeeded"), loaded.accepted.len());
    assert!(ran_twice.is_empty(), "not run exactly once: {ran_twice:?}");
}
