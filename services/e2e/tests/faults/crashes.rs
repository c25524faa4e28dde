//! Scenarios 1–4 and 8: a service (or the server) dies or freezes in the middle of a run.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::check::{Watcher, verify};
use crate::deployment::{Deployment, Setup};
use crate::load::Load;
use crate::report;

const SETTLE: Duration = Duration::from_secs(90);

fn sleep_job(ms: u64) -> impl Fn(usize) -> serde_json::Value + Send + Sync + 'static {
    move |_| json!({"kind": "sleep", "payload": {"ms": ms}})
}

fn mixed(i: usize) -> serde_json::Value {
    if i.is_multiple_of(2) {
        json!({"kind": "noop", "payload": {}})
    } else {
        json!({"kind": "sleep", "payload": {"ms": 20 + (i % 5) as u64 * 20}})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s1_a_processor_killed_mid_job_is_redelivered_and_succeeds() {
    let _turn = crate::serial().await;
    let mut system = Deployment::start(Setup::default()).await;
    let watcher = Watcher::start(&system.js).await;
    let load = Load::start(system.base.clone(), 300, 16, sleep_job(400));
    load.wait_accepted(150).await;
    // Mid-run: some jobs are running on the processor, more are queued behind them.
    system.io[0].kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Instant::now();
    system.io[0].restart();
    let loaded = load.finish().await;
    let verdict = verify(&system.js, &watcher, &loaded.accepted, SETTLE).await;
    let recovery = watcher.first_completion_after(restarted);
    let rerun = verdict.rerun();
    report::record(&verdict.row(
        1,
        "SIGKILL processor-io mid-job, restart it",
        recovery,
        format!(
            "300 × sleep 400 ms, 16 clients, ack_wait 3 s; {rerun} jobs were running at the kill and ran again (attempt 2)"
        ),
    ));
    verdict.assert_clean();
    assert_eq!(verdict.count_state("succeeded"), loaded.accepted.len());
    assert!(rerun > 0, "some job was running when the processor died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s2_the_status_service_killed_mid_run_catches_up() {
    let _turn = crate::serial().await;
    let mut system = Deployment::start(Setup::default()).await;
    let watcher = Watcher::start(&system.js).await;
    let load = Load::start(system.base.clone(), 1000, 32, mixed);
    load.wait_accepted(300).await;
    system.status.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    system.status.restart();
    let loaded = load.finish().await;
    let verdict = verify(&system.js, &watcher, &loaded.accepted, SETTLE).await;
    let recovery = watcher.first_completion_after(restarted);
    report::record(&verdict.row(
        2,
        "SIGKILL the status service mid-run, restart it 2 s later",
        recovery,
        "1,000 jobs (noop and sleep 20–100 ms), 32 clients; the projection caught up from its durable consumer".into(),
    ));
    verdict.assert_clean();
    assert_eq!(verdict.count_state("succeeded"), loaded.accepted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_every_job_accepted_by_a_gateway_that_is_then_killed_completes() {
    let _turn = crate::serial().await;
    let mut system = Deployment::start(Setup::default()).await;
    let watcher = Watcher::start(&system.js).await;
    let load = Load::start(system.base.clone(), 1000, 32, mixed);
    load.wait_accepted(300).await;
    system.gateway.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Instant::now();
    system.gateway.restart();
    let loaded = load.finish().await;
    let verdict = verify(&system.js, &watcher, &loaded.accepted, SETTLE).await;
    let recovery = loaded.first_accept_after(restarted);
    report::record(&verdict.row(
        3,
        "SIGKILL the gateway during a load run, restart it 1 s later",
        recovery,
        format!(
            "1,000 jobs, 32 clients retrying failed requests with the same Idempotency-Key; {} requests failed while it was down; each key made one job",
            loaded.errors
        ),
    ));
    verdict.assert_clean();
    assert_eq!(loaded.abandoned, 0);
    assert_eq!(verdict.count_state("succeeded"), loaded.accepted.len());
    assert_eq!(
        loaded
            .accepted
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        loaded.accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s4_nats_server_killed_mid_run_loses_no_accepted_job() {
    let _turn = crate::serial().await;
    let mut system = Deployment::start(Setup::default()).await;
    let watcher = Watcher::start(&system.js).await;
    let load = Load::start(system.base.clone(), 1000, 32, mixed);
    load.wait_accepted(300).await;
    system.nats.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    system.nats.restart();
    let loaded = load.finish().await;
    // The test's own connection reconnects too; the watcher resumes with it.
    let verdict = verify(&system.js, &watcher, &loaded.accepted, SETTLE).await;
    let recovery = loaded.first_accept_after(restarted);
    report::record(&verdict.row(
        4,
        "SIGKILL nats-server (file storage) mid-run, restart it 2 s later",
        recovery,
        format!(
            "1,000 jobs, 32 clients; {} requests got a 503 or no answer while it was down and were retried with the same key",
            loaded.errors
        ),
    ));
    verdict.assert_clean();
    assert_eq!(loaded.abandoned, 0);
    assert_eq!(verdict.count_state("succeeded"), loaded.accepted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s8_a_stale_worker_that_wakes_up_late_changes_nothing() {
    let _turn = crate::serial().await;
    let system = Deployment::start(Setup {
        ack_wait: Duration::from_secs(2),
        io_replicas: 2,
        ..Setup::default()
    })
    .await;
    let watcher = Watcher::start(&system.js).await;
    // Jobs longer than ack_wait: while both replicas run them, heartbeats keep them.
    let load = Load::start(system.base.clone(), 200, 32, sleep_job(3_000));
    let loaded = load.finish().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Freeze replica 1 with its jobs: no heartbeats, so after ack_wait replica 2 gets
    // them, runs them again and finishes them; only then replica 1 wakes up and
    // completes its runs, too late.
    system.io[0].freeze();
    let frozen = Instant::now();
    tokio::time::sleep(Duration::from_secs(9)).await;
    system.io[0].thaw();
    let verdict = verify(&system.js, &watcher, &loaded.accepted, SETTLE).await;
    let recovery = watcher.first_completion_after(frozen);
    // Jobs replica 1 held: started on attempt 1, finished by attempt 2.
    let taken_over: Vec<&String> = loaded
        .accepted
        .iter()
        .filter(|id| {
            verdict
                .snapshots
                .get(*id)
                .is_some_and(|s| s["attempt"] == 2)
        })
        .collect();
    report::record(&verdict.row(
        8,
        "SIGSTOP a processor mid-job for 9 s (ack_wait 2 s), another replica finishes its jobs, then SIGCONT",
        recovery,
        format!(
            "200 × sleep 3 s on 2 replicas; {} jobs were taken over by the other replica; the frozen one's late outcomes were refused by the fence on the job's events",
            taken_over.len()
        ),
    ));
    verdict.assert_clean();
    assert!(!taken_over.is_empty(), "the frozen replica held some jobs");
    for id in &taken_over {
        let events = &verdict.events[*id];
        let ends: Vec<&(String, u64)> = events
            .iter()
            .filter(|(t, _)| crate::check::is_terminal(t))
            .collect();
        assert_eq!(ends, [&("succeeded".to_string(), 2)], "{id}: {events:?}");
    }
    assert_eq!(verdict.count_state("succeeded"), loaded.accepted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s12_a_clean_shutdown_of_every_service_leaves_nothing_waiting_for_ack_wait() {
    let _turn = crate::serial().await;
    // An ack_wait far longer than the run: a job a clean shutdown left unacked would
    // sit out the minute and fail the deadline below.
    let ack_wait = Duration::from_secs(60);
    let mut system = Deployment::start(Setup {
        ack_wait,
        ..Setup::default()
    })
    .await;
    let watcher = Watcher::start(&system.js).await;
    // Jobs longer than the processors' 2 s grace period, so some must be handed back.
    let load = Load::start(system.base.clone(), 300, 32, sleep_job(3_000));
    load.wait_accepted(150).await;
    // SIGTERM everything mid-run: processors finish what they can in their 2 s grace and
    // hand back the rest; the status service acks what it projected and hands back the
    // rest; the gateway finishes in-flight requests.
    system.io[0].terminate().await;
    system.status.terminate().await;
    system.gateway.terminate().await;
    let restarted = Instant::now();
    system.status.restart();
    system.gateway.restart();
    system.io[0].restart();
    let loaded = load.finish().await;
    let verdict = verify(&system.js, &watcher, &loaded.accepted, ack_wait / 2).await;
    let recovery = watcher.first_completion_after(restarted);
    report::record(&verdict.row(
        12,
        "SIGTERM every service mid-run (ack_wait 60 s), start them again",
        recovery,
        format!(
            "300 × sleep 3 s (longer than the 2 s shutdown grace), 32 clients; {} jobs handed back at shutdown ran again at once; every job done within 30 s of the restart, so none waited for ack_wait",
            verdict.rerun()
        ),
    ));
    verdict.assert_clean();
    assert_eq!(verdict.count_state("succeeded"), loaded.accepted.len());
    assert!(verdict.rerun() > 0, "some jobs were handed back");
}
