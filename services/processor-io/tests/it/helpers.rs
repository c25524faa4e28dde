use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt as _;
use jetjobs::layout::{self, Layout};
use jetjobs::subjects::{self, headers};
use jetjobs::testing::NatsServer;
use jetjobs::{JobEvent, JobId, JobRequest, Kind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use jetjobs_processor_io::{Config, run, spec};

/// A nats-server with the layout provisioned and the processor running in-process.
pub struct Harness {
    _server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    pub async fn start() -> Self {
        let server = NatsServer::start();
        let client = server.client().await;
        let js = jetstream::new(client.clone());
        let layout = Layout {
            processors: vec![spec()],
            ..Layout::default()
        };
        layout::provision(&js, &layout)
            .await
            .expect("provision the layout");
        let mut config = Config::local(server.url());
        config.runtime.pull_expires_ms = 1_000;
        config.runtime.shutdown_grace_secs = 2;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(config, shutdown.clone()));
        Self {
            _server: server,
            client,
            js,
            shutdown,
            task,
        }
    }

    /// Publishes a job as the gateway does and returns its first terminal event.
    pub async fn run_job(&self, kind: &str, payload: serde_json::Value) -> JobEvent {
        let mut events = self.run_job_events(kind, payload).await;
        events.pop().expect("at least the terminal event")
    }

    /// Publishes a job as the gateway does and returns its events up to the first terminal one.
    pub async fn run_job_events(&self, kind: &str, payload: serde_json::Value) -> Vec<JobEvent> {
        let kind = Kind::new(kind).expect("valid kind");
        let request = JobRequest {
            id: JobId::new_v7(),
            kind: kind.clone(),
            payload,
            max_attempts: 3,
            timeout_secs: None,
            created_at: jetjobs::job::now(),
        };
        let mut events = self
            .client
            .subscribe(subjects::event(&kind, request.id))
            .await
            .expect("subscribe to the job's events");
        let mut headers = HeaderMap::new();
        headers.insert(headers::MSG_ID, request.id.to_string().as_str());
        headers.insert(headers::KIND, kind.as_str());
        headers.insert(headers::JOB_ID, request.id.to_string().as_str());
        let body = serde_json::to_vec(&request).expect("encode the request");
        self.js
            .publish_with_headers(subjects::submit(&kind), headers, body.into())
            .await
            .expect("publish the job")
            .await
            .expect("the job is stored");
        let wait = async {
            let mut seen = Vec::new();
            while let Some(message) = events.next().await {
                let event: JobEvent =
                    serde_json::from_slice(&message.payload).expect("events decode");
                let terminal = event.change.state().is_terminal();
                seen.push(event);
                if terminal {
                    return seen;
                }
            }
            panic!("the event subscription ended");
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("the job ends within 20s")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the processor task does not panic")
            .expect("the processor stops cleanly");
    }
}
