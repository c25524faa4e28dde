//! Redelivered, duplicated, out-of-order and stale events never move a job backwards
//! (DESIGN invariant 3), checked on the real status service through KV history.

use std::time::Duration;

use futures::StreamExt as _;
use jetjobs::job::{JobRequest, now};
use jetjobs::state::{Change, JobEvent};
use jetjobs::{JobId, Kind, Progress, subjects};
use serde_json::{Value, json};

use crate::helpers::{Options, System, eventually};

fn rank(snapshot: &Value) -> (u64, u8) {
    let attempt = snapshot["attempt"].as_u64().expect("attempt");
    let state = match snapshot["state"].as_str().expect("state") {
        "queued" => 0,
        "running" => 1,
        "retrying" => 2,
        _ => 3,
    };
    (attempt, state)
}

async fn publish(system: &System, event: &JobEvent) {
    // No Nats-Msg-Id on purpose: every copy lands in the stream, so the projection
    // itself must cope with duplicates.
    system
        .js
        .publish(
            subjects::event(&event.kind, event.job_id),
            serde_json::to_vec(event).expect("encode").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
}

async fn projection_idle(system: &System) {
    eventually(Duration::from_secs(30), || async {
        let mut stream = system.js.get_stream("JOB_EVENTS").await.ok()?;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("status-projector").await.ok()?;
        let _ = stream.info().await.ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await
    .expect("the status service caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_and_repeated_events_end_in_the_right_state_without_regressions() {
    let mut system = System::start_with(Options {
        run_io: false,
        ..Options::default()
    })
    .await;
    // Two projectors share the consumer and race for the same keys: only the
    // compare-and-set on the revision keeps one from overwriting the other's newer write.
    let second = crate::helpers::start_status(&system.nats.url());
    let kind = Kind::new("hash").expect("kind");
    let jobs: Vec<JobRequest> = (0..40)
        .map(|_| JobRequest {
            id: JobId::new_v7(),
            kind: kind.clone(),
            payload: json!({}),
            max_attempts: 3,
            timeout_secs: None,
            created_at: now(),
            prior_attempts: 0,
            callback_url: None,
            callback_events: None,
            scheduling: Default::default(),
        })
        .collect();

    let mut events = Vec::new();
    for job in &jobs {
        let p = |current| Change::Progress(Progress { current, total: 3 });
        let mut script = vec![
            JobEvent::new(job, 1, Change::Started),
            JobEvent::new(job, 1, p(1)),
            JobEvent::new(job, 1, p(2)),
            JobEvent::new(
                job,
                1,
                Change::Retrying {
                    error: "flaky".into(),
                    retry_in_ms: 10,
                },
            ),
            JobEvent::new(job, 2, Change::Started),
            JobEvent::new(job, 2, p(1)),
            JobEvent::new(
                job,
                2,
                Change::Succeeded {
                    result: json!({"n": 2}),
                    result_ref: None,
                },
            ),
        ];
        // Redeliveries.
        script.push(script[0].clone());
        script.push(script[4].clone());
        events.push(script);
    }
    // A deterministic shuffle per job, and jobs interleaved with each other.
    let mut order: Vec<(usize, usize)> = Vec::new();
    for (j, script) in events.iter().enumerate() {
        let n = script.len();
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by_key(|i| (i * 7 + j * 3) % n);
        order.extend(idx.into_iter().map(|i| (j, i)));
    }
    order.sort_by_key(|(j, i)| (i * 13 + j) % 17);
    for (j, i) in order {
        publish(&system, &events[j][i]).await;
    }
    projection_idle(&system).await;

    let bucket = system.js.get_key_value("job_status").await.expect("bucket");
    for job in &jobs {
        let key = job.id.to_string();
        let (_, snapshot) = system.get_job(&key).await;
        assert_eq!(snapshot["state"], "succeeded", "{snapshot}");
        assert_eq!(snapshot["attempt"], 2);
        assert_eq!(snapshot["result"], json!({"n": 2}));

        let mut history = bucket.history(&key).await.expect("history");
        let mut previous = ((0, 0), 0, 0);
        while let Some(entry) = history.next().await {
            let entry = entry.expect("entry");
            let value: Value = serde_json::from_slice(&entry.value).expect("snapshot");
            let progress = value["progress"]["current"].as_u64().unwrap_or(0);
            // A late `retrying` of attempt 1 still adds its error to the history.
            let errors = value["errors"].as_array().map_or(0, Vec::len);
            let now = (rank(&value), progress, errors);
            let forward = now.0 > previous.0
                || (now.0 == previous.0 && now.1 > previous.1)
                || (now.0 == previous.0 && now.1 == previous.1 && now.2 > previous.2);
            assert!(forward, "job {key} went from {previous:?} to {now:?}");
            previous = now;
        }
    }

    second.stop().await;
    system.stop_status().await;
    system.start_status();

    // Late events after the end change nothing: a stale worker of attempt 1 giving up,
    // a redelivery of attempt 2, a phantom attempt 3.
    for job in &jobs {
        publish(
            &system,
            &JobEvent::new(
                job,
                1,
                Change::Failed {
                    error: "stale".into(),
                },
            ),
        )
        .await;
        publish(&system, &JobEvent::new(job, 2, Change::Started)).await;
        publish(&system, &JobEvent::new(job, 3, Change::Started)).await;
    }
    projection_idle(&system).await;
    for job in &jobs {
        let (_, snapshot) = system.get_job(&job.id.to_string()).await;
        assert_eq!(snapshot["state"], "succeeded");
        assert_eq!(snapshot["attempt"], 2);
        assert_eq!(snapshot["result"], json!({"n": 2}));
    }
}
