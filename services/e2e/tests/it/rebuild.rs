//! The KV is a projection (DESIGN invariant 5): after a mixed workload through the real
//! gateway, processors and status service, `jetjobs-status --rebuild` into a fresh bucket
//! recreates exactly the live `job_status`: the same keys, the same snapshots.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Parser as _;
use futures::StreamExt as _;
use jetjobs_status::rebuild::{self, Options as RebuildOptions};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use reqwest::StatusCode;

use crate::helpers::{Options, System, eventually, service_binary};

/// Every key of a bucket with its value, parsed.
async fn contents(js: &jetstream::Context, name: &str) -> BTreeMap<String, Value> {
    let bucket: kv::Store = js.get_key_value(name).await.expect("bucket");
    let mut keys: Vec<String> = bucket
        .keys()
        .await
        .expect("keys")
        .map(|key| key.expect("key"))
        .collect()
        .await;
    keys.sort();
    let mut out = BTreeMap::new();
    for key in keys {
        let value = bucket.get(&key).await.expect("get").expect("a value");
        let snapshot: Value = serde_json::from_slice(&value).expect("snapshots are JSON");
        out.insert(key, snapshot);
    }
    out
}

async fn projection_idle(system: &System) {
    eventually(Duration::from_secs(30), || async {
        let stream = system.js.get_stream("JOB_EVENTS").await.ok()?;
        let mut consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer("status-projector").await.ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await
    .expect("the status service caught up");
}

fn png() -> String {
    let source = image::RgbImage::from_fn(64, 32, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(source)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encode png");
    B64.encode(&png)
}

async fn post_job(system: &System, body: Value) -> String {
    let response = system.post(&body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "submit {body}");
    let accepted: Value = response.json().await.expect("snapshot");
    accepted["id"].as_str().expect("id").to_string()
}

async fn cancel(system: &System, id: &str) {
    let response = system
        .http
        .delete(system.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::OK, "cancel {id}");
}

async fn retry(system: &System, id: &str) {
    let response = system
        .http
        .post(system.url(&format!("/v1/jobs/{id}/retry")))
        .send()
        .await
        .expect("POST retry");
    assert_eq!(response.status(), StatusCode::ACCEPTED, "retry {id}");
}

/// A job of the workload and how it must end: its state, and for some its attempt.
struct Expect {
    id: String,
    state: &'static str,
    attempt: Option<u64>,
}

impl Expect {
    fn new(id: String, state: &'static str) -> Self {
        Self {
            id,
            state,
            attempt: None,
        }
    }

    fn on_attempt(mut self, attempt: u64) -> Self {
        self.attempt = Some(attempt);
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_bucket_equals_the_live_one() {
    // processor-io runs one job at a time, so a job can be held in the queue.
    let system = System::start_with(Options {
        io_concurrency: 1,
        ..Options::default()
    })
    .await;
    let wait = Duration::from_secs(60);
    let mut jobs: Vec<Expect> = Vec::new();

    // Cancellations: one running, one still queued behind it.
    let running = post_job(&system, json!({"kind": "sleep", "payload": {"ms": 60_000}})).await;
    system
        .wait_for(&running, wait, |s| s["state"] == "running")
        .await;
    let queued = post_job(&system, json!({"kind": "sleep", "payload": {"ms": 10}})).await;
    cancel(&system, &queued).await;
    cancel(&system, &running).await;
    jobs.push(Expect::new(running, "cancelled").on_attempt(1));
    jobs.push(Expect::new(queued, "cancelled").on_attempt(0));

    // Retries of failed jobs: one succeeds in its second series of attempts, one fails
    // again.
    let comes_back = post_job(
        &system,
        json!({"kind": "flaky", "payload": {"fail": "retryable", "times": 3}, "max_attempts": 3}),
    )
    .await;
    let fails_again = post_job(
        &system,
        json!({"kind": "flaky", "payload": {"fail": "permanent"}}),
    )
    .await;
    for id in [&comes_back, &fails_again] {
        let dead = system.wait_terminal(id, wait).await;
        assert_eq!(dead["state"], "failed", "{dead}");
        retry(&system, id).await;
    }
    jobs.push(Expect::new(comes_back, "succeeded").on_attempt(4));
    jobs.push(Expect::new(fails_again, "failed").on_attempt(2));

    // Successes, retries and failures of every kind.
    let mut workload: Vec<(&str, Value, &'static str)> = Vec::new();
    for _ in 0..12 {
        workload.push(("noop", json!({}), "succeeded"));
    }
    for ms in [10, 40, 80] {
        workload.push(("sleep", json!({"ms": ms}), "succeeded"));
    }
    // Within its schema, refused by the handler (not base64): fails at once, no retries.
    workload.push((
        "hash",
        json!({"data_b64": "not base64!", "rounds": 1}),
        "failed",
    ));
    for rounds in [1, 50] {
        workload.push(("hash", json!({"size": 4096, "rounds": rounds}), "succeeded"));
    }
    workload.push((
        "thumbnail",
        json!({"image_b64": png(), "width": 16, "height": 16}),
        "succeeded",
    ));
    for fail in ["retryable", "panic"] {
        workload.push(("flaky", json!({"fail": fail, "times": 1}), "succeeded"));
    }
    workload.push((
        "flaky",
        json!({"fail": "retryable", "times": 2}),
        "succeeded",
    ));
    workload.push(("flaky", json!({"fail": "retryable"}), "failed"));
    workload.push(("flaky", json!({"fail": "permanent"}), "failed"));
    for (kind, payload, state) in workload {
        let id = post_job(&system, json!({"kind": kind, "payload": payload})).await;
        jobs.push(Expect::new(id, state));
    }

    // A client-chosen id, and a keyed submission repeated: still one job each.
    let own = jetjobs::JobId::new_v7().to_string();
    let put = system
        .http
        .put(system.url(&format!("/v1/jobs/{own}")))
        .json(&json!({"id": own, "kind": "noop"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), StatusCode::ACCEPTED);
    jobs.push(Expect::new(own, "succeeded"));
    let mut keyed: Option<String> = None;
    for _ in 0..2 {
        let response = system
            .http
            .post(system.url("/v1/jobs"))
            .header("Idempotency-Key", "rebuild-test")
            .json(&json!({"kind": "noop"}))
            .send()
            .await
            .expect("POST");
        let body: Value = response.json().await.expect("body");
        let id = body["id"].as_str().expect("id").to_string();
        assert!(keyed.as_ref().is_none_or(|k| *k == id), "one keyed job");
        keyed = Some(id);
    }
    jobs.push(Expect::new(keyed.expect("keyed job"), "succeeded"));

    // Jobs with a callback, delivered by a notifier: the callback travels in every event,
    // and the notifier's delivery records (on their own subject) are projected too; the
    // rebuild must reproduce both. The receiver fails its first request, so one job's
    // webhook needs a retry. `localhost`: the gateway leaves names to the notifier, which
    // allow-lists loopback here.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let hook = format!(
        "http://localhost:{}/hook",
        receiver.local_addr().expect("addr").port()
    );
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().fallback(move || {
        let n = requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            if n == 0 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }
    });
    tokio::spawn(async move { axum::serve(receiver, app).await });
    let mut notifier = jetjobs_notifier::Config::local(
        &system.nats.url(),
        &jetjobs::webhook::Secret::from_bytes(vec![1_u8; 32]).to_whsec(),
    );
    notifier.allow = "127.0.0.0/8,::1/128".parse().expect("allow list");
    notifier.retry_base_ms = 50;
    notifier.retry_max_ms = 200;
    let stop_notifier = CancellationToken::new();
    let notifier_task = tokio::spawn(jetjobs_notifier::run(notifier, stop_notifier.clone()));
    let mut hooked = Vec::new();
    for events in [json!(null), json!(["started", "succeeded"])] {
        let mut body = json!({"kind": "noop", "callback_url": hook});
        if !events.is_null() {
            body["callback_events"] = events;
        }
        let id = post_job(&system, body).await;
        // One at a time, so the receiver's failure goes to the first job's `succeeded`.
        system
            .wait_for(&id, wait, |s| s["webhook"]["state"] == "delivered")
            .await;
        hooked.push(id.clone());
        jobs.push(Expect::new(id, "succeeded"));
    }

    // Scheduling: a job delayed past the test (its request waits in JOBS_SCHEDULES), one
    // delayed a second that ran, one cancelled while scheduled, a high-priority one with
    // an expiry that ran in time.
    let later = post_job(&system, json!({"kind": "noop", "delay_secs": 3600})).await;
    jobs.push(Expect::new(later, "scheduled"));
    let soon = post_job(&system, json!({"kind": "noop", "delay_secs": 1})).await;
    jobs.push(Expect::new(soon, "succeeded"));
    let dropped = post_job(&system, json!({"kind": "noop", "delay_secs": 3600})).await;
    cancel(&system, &dropped).await;
    jobs.push(Expect::new(dropped, "cancelled").on_attempt(0));
    let urgent = post_job(
        &system,
        json!({"kind": "noop", "priority": "high", "expires_in_secs": 600}),
    )
    .await;
    jobs.push(Expect::new(urgent, "succeeded"));

    for job in &jobs {
        // A retried job was terminal before: wait for the end of its last series.
        let done = system
            .wait_for(&job.id, wait, |s| {
                s["state"] == job.state && job.attempt.is_none_or(|a| s["attempt"] == a)
            })
            .await;
        assert_eq!(done["state"], job.state, "{done}");
    }
    for id in &hooked {
        let done = system
            .wait_for(id, wait, |s| s["webhook"]["state"] == "delivered")
            .await;
        assert_eq!(done["callback_url"], hook.as_str(), "{done}");
    }
    stop_notifier.cancel();
    notifier_task
        .await
        .expect("notifier task")
        .expect("the notifier stops cleanly");
    projection_idle(&system).await;
    let live = contents(&system.js, "job_status").await;
    assert_eq!(
        live[&hooked[0]]["webhook"]["attempts"], 2,
        "the first webhook was retried"
    );
    assert_eq!(live[&hooked[1]]["webhook"]["event"], "succeeded");
    assert_eq!(live.len(), jobs.len(), "one snapshot per job");
    // The workload did what it is meant to: retries, and failures after retries.
    assert!(
        live.values()
            .any(|s| s["state"] == "succeeded" && s["attempt"] == 3)
    );
    assert!(
        live.values()
            .any(|s| s["state"] == "failed" && s["attempt"] == 3)
    );

    // In-process, as a library.
    let shutdown = CancellationToken::new();
    let report = rebuild::rebuild(
        &system.js,
        &RebuildOptions::new("job_status_rebuilt"),
        &shutdown,
    )
    .await
    .expect("rebuild");
    assert!(report.is_complete() && report.created_bucket, "{report}");
    assert_eq!(report.jobs, jobs.len() as u64, "{report}");
    assert_eq!(
        report.jobs_waiting, 1,
        "every job has run but the one scheduled for later: {report}"
    );
    assert_eq!(contents(&system.js, "job_status_rebuilt").await, live);
    // The test server has room for one more bucket as large as job_status, not two.
    system
        .js
        .delete_key_value("job_status_rebuilt")
        .await
        .expect("delete the first copy");

    // Through the binary's command line, into another fresh bucket.
    let output = Command::new(service_binary("jetjobs-status"))
        .args(["--rebuild", "--bucket", "job_status_cli"])
        .env("NATS_URL", system.nats.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run jetjobs-status --rebuild");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Rebuilt KV bucket job_status_cli (created)")
            && stdout.contains(&format!("jobs in the bucket: {}", jobs.len())),
        "{stdout}"
    );
    assert_eq!(contents(&system.js, "job_status_cli").await, live);

    // `--bucket` only makes sense with `--rebuild`.
    assert!(jetjobs_status::Config::try_parse_from(["jetjobs-status", "--bucket", "x"]).is_err());
}
