//! A provisioned nats-server, events and job requests published as the other services
//! do, and the status service run in-process.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use jetjobs::job::{JobRequest, now};
use jetjobs::layout::{self, Layout};
use jetjobs::state::{JobEvent, JobSnapshot};
use jetjobs::subjects::{self, headers};
use jetjobs::testing::NatsServer;
use jetjobs::{JobId, Kind};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Setup {
    pub nats: NatsServer,
    pub js: jetstream::Context,
}

impl Setup {
    pub async fn start(layout: Layout) -> Self {
        let nats = NatsServer::start();
        let js = jetstream::new(nats.client().await);
        layout::provision(&js, &layout).await.expect("provision");
        Self { nats, js }
    }

    pub fn status_config(&self) -> jetjobs_status::Config {
        let mut config = jetjobs_status::Config::local(&self.nats.url());
        config.shards = 4;
        config
    }

    pub async fn bucket(&self, name: &str) -> kv::Store {
        self.js.get_key_value(name).await.expect("bucket")
    }

    /// Publishes `events` as processors do (`Nats-Msg-Id` and all), pipelining the acks.
    pub async fn publish_events(&self, events: &[JobEvent]) {
        for chunk in events.chunks(256) {
            let mut acks = Vec::with_capacity(chunk.len());
            for event in chunk {
                let mut h = async_nats::HeaderMap::new();
                h.insert(headers::MSG_ID, event.msg_id().as_str());
                h.insert(headers::KIND, event.kind.as_str());
                h.insert(headers::JOB_ID, event.job_id.to_string().as_str());
                let body = serde_json::to_vec(event).expect("encode event");
                acks.push(
                    self.js
                        .publish_with_headers(
                            subjects::event(&event.kind, event.job_id),
                            h,
                            body.into(),
                        )
                        .await
                        .expect("publish event"),
                );
            }
            for ack in acks {
                ack.await.expect("event stored");
            }
        }
    }

    /// Queues `request` as the gateway does: into `JOBS`, then its `queued` snapshot.
    pub async fn submit(&self, request: &JobRequest) {
        self.enqueue(request).await;
        self.record_queued(request).await;
    }

    /// Puts `request` into `JOBS` (for a retry, the gateway does only this).
    pub async fn enqueue(&self, request: &JobRequest) {
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::MSG_ID, request.id.to_string().as_str());
        h.insert(headers::KIND, request.kind.as_str());
        h.insert(headers::JOB_ID, request.id.to_string().as_str());
        let body = serde_json::to_vec(request).expect("encode request");
        self.js
            .publish_with_headers(
                subjects::submit(&request.kind, request.id, Default::default()),
                h,
                body.into(),
            )
            .await
            .expect("publish job")
            .await
            .expect("job stored");
    }

    /// Writes `request`'s `queued` snapshot as the gateway does: create-only.
    pub async fn record_queued(&self, request: &JobRequest) {
        let snapshot = serde_json::to_vec(&JobSnapshot::queued(request)).expect("encode");
        self.bucket(layout::STATUS_BUCKET)
            .await
            .create(request.id.to_string(), snapshot.into())
            .await
            .expect("queued snapshot");
    }

    /// Waits until the status-projector consumer has acked every event stored so far
    /// (its ack floor has reached the stream's last sequence), with nothing pending or
    /// unacked. Pending and unacked counts alone could both read 0 on a loaded machine
    /// before the projection had caught up (seen once in CI).
    pub async fn projection_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut stream = self
                .js
                .get_stream(layout::EVENTS_STREAM)
                .await
                .expect("stream");
            let last = stream
                .info()
                .await
                .expect("stream info")
                .state
                .last_sequence;
            let mut consumer: jetstream::consumer::PullConsumer = stream
                .get_consumer(layout::STATUS_CONSUMER)
                .await
                .expect("consumer");
            let info = consumer.info().await.expect("consumer info");
            if info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.stream_sequence >= last
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the projection did not catch up in {timeout:?}: {} pending, {} unacked",
                info.num_pending,
                info.num_ack_pending
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The status service running in-process.
pub struct Status {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Status {
    pub fn start(config: jetjobs_status::Config) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(jetjobs_status::run(config, shutdown.clone()));
        Self { shutdown, task }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the status task does not panic")
            .expect("the status service stops cleanly");
    }
}

pub fn request(kind: &str) -> JobRequest {
    JobRequest {
        id: JobId::new_v7(),
        kind: Kind::new(kind).expect("kind"),
        payload: json!({}),
        max_attempts: 3,
        timeout_secs: None,
        created_at: now(),
        prior_attempts: 0,
        callback_url: None,
        callback_events: None,
        scheduling: Default::default(),
    }
}

/// Every key of a bucket with its value, parsed.
pub async fn contents(bucket: &kv::Store) -> BTreeMap<String, Value> {
    let mut keys: Vec<String> = match bucket.keys().await {
        Ok(keys) => keys.map(|k| k.expect("key")).collect().await,
        Err(e) => panic!("listing keys: {e}"),
    };
    keys.sort();
    let mut out = BTreeMap::new();
    for key in keys {
        let value = bucket.get(&key).await.expect("get").expect("value");
        out.insert(
            key,
            serde_json::from_slice(&value).expect("snapshots are JSON"),
        );
    }
    out
}
