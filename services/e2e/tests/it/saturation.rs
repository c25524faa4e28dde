//! CPU-bound jobs run off the async runtime: while every CPU slot is busy, heartbeats
//! still go out (no redelivery of long jobs) and the gateway and I/O jobs still flow
//! (DESIGN invariant 6). Asserted on behaviour, not on timings.

use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::helpers::{Options, System};

/// Rounds of `hash` over 256 KiB that take about `target` on this machine.
fn rounds_lasting(target: Duration) -> u64 {
    let block = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let mut digest = Vec::new();
    let mut rounds = 0u64;
    while start.elapsed() < Duration::from_millis(200) {
        let mut h = Sha256::new();
        h.update(&digest);
        h.update(&block);
        digest = h.finalize().to_vec();
        rounds += 1;
    }
    let per_round = start.elapsed().as_secs_f64() / rounds as f64;
    (target.as_secs_f64() / per_round).ceil() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_cpu_processor_keeps_heartbeats_and_the_gateway_responsive() {
    let ack_wait = Duration::from_secs(1);
    let system = System::start_with(Options {
        ack_wait,
        cpu_concurrency: 4,
        ..Options::default()
    })
    .await;
    // Four jobs on two cores, each needing several times ack_wait of CPU.
    let rounds = rounds_lasting(ack_wait * 4);
    let mut hashes = Vec::new();
    for _ in 0..4 {
        let job = system
            .submit("hash", json!({"size": 256 * 1024, "rounds": rounds}))
            .await;
        hashes.push(job["id"].as_str().expect("id").to_string());
    }
    for id in &hashes {
        system
            .wait_for(id, Duration::from_secs(30), |s| s["state"] == "running")
            .await;
    }

    // While they grind: the gateway answers and I/O jobs complete.
    for _ in 0..20 {
        let health = system
            .http
            .get(system.url("/healthz"))
            .send()
            .await
            .expect("healthz");
        assert!(health.status().is_success());
        let job = system.submit("noop", json!({})).await;
        let done = system
            .wait_terminal(job["id"].as_str().expect("id"), Duration::from_secs(30))
            .await;
        assert_eq!(done["state"], "succeeded");
    }
    let mut still_running = 0;
    for id in &hashes {
        let (_, snapshot) = system.get_job(id).await;
        if snapshot["state"] == "running" {
            still_running += 1;
        }
    }
    assert!(
        still_running > 0,
        "the I/O jobs must have completed while CPU jobs were still running"
    );

    // Each long job finished on its first delivery: heartbeats kept it leased.
    for id in &hashes {
        let done = system.wait_terminal(id, Duration::from_secs(300)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(
            done["attempt"], 1,
            "a CPU job longer than ack_wait was redelivered"
        );
    }
}
