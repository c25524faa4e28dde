//! Scheduling and limits on a three-node NATS cluster with everything R3, three gateway
//! replicas and three processor-io replicas: the replica claims of issue 16 where they
//! matter. A schedule kept by the replicated `JOBS_SCHEDULES` fires once per interval (not
//! once per node or per gateway), and `max_running` holds across processor replicas
//! whose leases live in the replicated `job_leases`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures::StreamExt as _;
use jetjobs::testing::NatsCluster;
use jetjobs_e2e::system::{self, Options, Services};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_schedules_fire_once_and_limits_hold_across_replicas() {
    let _turn = crate::serial().await;
    let cluster = NatsCluster::start();
    let urls = cluster.urls();
    let services = Services::start(
        &urls,
        Options {
            layout: |layout| layout.replicas = 3,
            io_concurrency: 4,
            run_cpu: false,
            ..Options::default()
        },
    )
    .await;
    let js = services.js.clone();
    for stream in [
        "JOBS_SCHEDULES",
        "KV_job_leases",
        "KV_job_schedules",
        "KV_job_limits",
    ] {
        let mut stream = js.get_stream(stream).await.expect("stream");
        let info = stream.info().await.expect("info");
        assert_eq!(info.config.num_replicas, 3, "{} is R3", info.config.name);
    }
    // Three of each: two more gateways and two more processor-io replicas.
    let mut bases = vec![services.base.clone()];
    let mut running = Vec::new();
    for _ in 0..2 {
        let (gateway, base) = system::start_gateway(jetjobs_gateway::Config::local(&urls));
        running.push(gateway);
        bases.push(base);
        running.push(system::start_processor_io(&urls, 4, false));
    }
    let http = reqwest::Client::new();
    for base in &bases {
        jetjobs::testing::eventually(WAIT, || async {
            let response = http.get(format!("{base}/readyz")).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await
        .expect("every gateway ready");
    }

    // A schedule every second, made through one gateway, fired by the cluster, handled
    // by whichever gateway's scheduler pulls the firing.
    let created = http
        .post(format!("{}/v1/schedules", bases[1]))
        .json(
            &json!({"name": "cluster-tick", "every": "1s", "job": {"kind": "noop", "payload": {}}}),
        )
        .send()
        .await
        .expect("POST schedule");
    assert_eq!(created.status(), 201);
    let since = Instant::now();

    // Meanwhile: at most two sleep jobs at once across the three processor replicas.
    let limited = http
        .put(format!("{}/v1/kinds/sleep/limits", bases[2]))
        .json(&json!({"max_running": 2}))
        .send()
        .await
        .expect("PUT limits");
    assert_eq!(limited.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let response = http
            .post(format!("{}/v1/jobs", bases[i % 3]))
            .json(&json!({"kind": "sleep", "payload": {"ms": 150}}))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("snapshot");
        ids.push(body["id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        services.wait_terminal(id, WAIT).await;
    }
    let mut running_now: HashSet<String> = HashSet::new();
    let mut peak = 0;
    for event in events(&js, "jobs.events.sleep.*").await {
        let job = event["job_id"].as_str().expect("id").to_string();
        match event["type"].as_str() {
            Some("started") => {
                running_now.insert(job);
            }
            Some("succeeded" | "failed" | "retrying" | "cancelled") => {
                running_now.remove(&job);
            }
            _ => {}
        }
        peak = peak.max(running_now.len());
    }
    assert_eq!(peak, 2, "max_running 2 across three replicas on a cluster");

    // Let the schedule run for a few seconds in all, then stop it.
    let at_least = Duration::from_secs(6);
    if let Some(left) = at_least.checked_sub(since.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let paused = http
        .post(format!("{}/v1/schedules/cluster-tick/pause", bases[0]))
        .send()
        .await
        .expect("pause");
    assert_eq!(paused.status(), 200);
    let elapsed = since.elapsed().as_secs() as usize;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut made: Vec<String> = Vec::new();
    for event in events(&js, "jobs.events.noop.*").await {
        // A noop run is too quick to record `started`: each made job's outcome.
        if event["type"] == "succeeded" && event["scheduling"]["schedule"] == "cluster-tick" {
            made.push(event["job_id"].as_str().expect("id").to_string());
        }
    }
    let distinct: HashSet<&String> = made.iter().collect();
    assert_eq!(distinct.len(), made.len(), "a job ran twice: {made:?}");
    assert!(
        (elapsed.saturating_sub(2)..=elapsed + 1).contains(&made.len()),
        "{} jobs in {elapsed} s from a schedule firing every second",
        made.len()
    );
    drop(running);
}

/// Every event on `filter`, in stream order.
async fn events(js: &jetstream::Context, filter: &str) -> Vec<Value> {
    let stream = js.get_stream("JOB_EVENTS").await.expect("stream");
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut events = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        events.push(serde_json::from_slice(&message.payload).expect("event"));
    }
    events
}
