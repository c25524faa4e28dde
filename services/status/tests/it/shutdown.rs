//! Graceful shutdown: a stopped status service leaves nothing waiting for `ack_wait`.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use jetjobs::layout::{self, Layout};
use jetjobs::state::{Change, JobEvent, JobState};
use jetjobs::{JobSnapshot, Progress};
use serde_json::json;

use crate::helpers::{Setup, Status, request};

async fn consumer_info(setup: &Setup) -> jetstream::consumer::Info {
    let mut consumer: jetstream::consumer::PullConsumer = setup
        .js
        .get_stream(layout::EVENTS_STREAM)
        .await
        .expect("stream")
        .get_consumer(layout::STATUS_CONSUMER)
        .await
        .expect("consumer");
    consumer.info().await.expect("consumer info").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_hands_back_the_events_it_will_not_project() {
    // An ack_wait far longer than the test may take: an event left unacked by the first
    // instance would only come back after it, and the test would time out.
    let setup = Setup::start(Layout {
        status_ack_wait: Duration::from_secs(120),
        ..Layout::default()
    })
    .await;
    let jobs: Vec<_> = (0..1_500).map(|_| request("noop")).collect();
    let events: Vec<JobEvent> = jobs
        .iter()
        .flat_map(|job| {
            [
                JobEvent::new(job, 1, Change::Started),
                JobEvent::new(
                    job,
                    1,
                    Change::Progress(Progress {
                        current: 1,
                        total: 2,
                    }),
                ),
                JobEvent::new(
                    job,
                    1,
                    Change::Succeeded {
                        result: json!({"ok": true}),
                        result_ref: None,
                    },
                ),
            ]
        })
        .collect();
    setup.publish_events(&events).await;
    let total = events.len() as u64;

    // One narrow shard, so the first instance is still busy when it is stopped.
    let mut config = setup.status_config();
    config.shards = 1;
    config.shard_buffer = 8;
    config.batch = 256;
    let first = Status::start(config.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumer_info(&setup).await.delivered.stream_sequence == 0 {
        assert!(Instant::now() < deadline, "the service never pulled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(Duration::from_secs(20), first.stop())
        .await
        .expect("the service stops within 20 s");
    let after_stop = consumer_info(&setup).await;
    assert!(
        after_stop.ack_floor.stream_sequence < total,
        "stopped mid-stream (acked up to {} of {total})",
        after_stop.ack_floor.stream_sequence
    );

    // A new instance gets every event the first one did not project now, not after
    // ack_wait: the projection catches up completely well within it.
    let second = Status::start(config);
    setup.projection_idle(Duration::from_secs(60)).await;
    second.stop().await;

    let bucket = setup.bucket(layout::STATUS_BUCKET).await;
    for job in &jobs {
        let value = bucket
            .get(job.id.to_string())
            .await
            .expect("get")
            .expect("every job has a snapshot");
        let snapshot: JobSnapshot = serde_json::from_slice(&value).expect("snapshot");
        assert_eq!(snapshot.state, JobState::Succeeded, "{snapshot:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_service_stops_promptly() {
    let setup = Setup::start(Layout::default()).await;
    let status = Status::start(setup.status_config());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The open pull request ends within its expiry (2 s); generous bound.
    tokio::time::timeout(Duration::from_secs(15), status.stop())
        .await
        .expect("the service stops");
}
