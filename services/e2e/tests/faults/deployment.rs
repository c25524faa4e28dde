//! A whole jetjobs deployment of real processes — nats-server, gateway, status service,
//! processor-io replicas — that a scenario can break piece by piece.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use jetjobs::layout::{self, Layout};
use jetjobs::testing::NatsServer;
use tempfile::TempDir;

use crate::check::eventually;
use crate::procs::{Service, free_port};

pub struct Setup {
    pub ack_wait: Duration,
    pub duplicate_window: Duration,
    pub io_replicas: usize,
    pub io_concurrency: usize,
    /// Start the processors at once (or later, with `start_io`).
    pub start_io: bool,
    pub gateway_env: Vec<(&'static str, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(3),
            duplicate_window: Duration::from_secs(120),
            io_replicas: 1,
            io_concurrency: 64,
            start_io: true,
            gateway_env: Vec::new(),
        }
    }
}

pub struct Deployment {
    pub nats: NatsServer,
    pub js: jetstream::Context,
    pub base: String,
    pub gateway: Service,
    pub status: Service,
    pub io: Vec<Service>,
    io_env: Vec<(&'static str, String)>,
    logs: TempDir,
}

impl Deployment {
    pub async fn start(setup: Setup) -> Self {
        let nats = NatsServer::start();
        let js = jetstream::new(nats.client().await);
        let layout = Layout {
            ack_wait: setup.ack_wait,
            duplicate_window: setup.duplicate_window,
            processors: vec![jetjobs_processor_io::spec(), jetjobs_processor_cpu::spec()],
            ..Layout::default()
        };
        layout::provision(&js, &layout).await.expect("provision");
        let logs = tempfile::Builder::new()
            .prefix("jetjobs-faults-")
            .tempdir()
            .expect("log dir");
        let url = nats.url();
        let port = free_port();
        let mut gateway_env = vec![
            ("NATS_URL", url.clone()),
            ("JETJOBS_LISTEN", format!("127.0.0.1:{port}")),
        ];
        gateway_env.extend(setup.gateway_env.iter().cloned());
        let io_env = vec![
            ("NATS_URL", url.clone()),
            ("JETJOBS_CONCURRENCY", setup.io_concurrency.to_string()),
            ("JETJOBS_RETRY_BASE_MS", "100".to_string()),
            ("JETJOBS_RETRY_MAX_MS", "1000".to_string()),
            ("JETJOBS_SHUTDOWN_GRACE_SECS", "2".to_string()),
        ];
        let status = Service::start(
            "status",
            "jetjobs-status",
            &[("NATS_URL", url.clone())],
            logs.path(),
        );
        let gateway = Service::start("gateway", "jetjobs-gateway", &gateway_env, logs.path());
        let mut deployment = Self {
            nats,
            js,
            base: format!("http://127.0.0.1:{port}"),
            gateway,
            status,
            io: Vec::new(),
            io_env,
            logs,
        };
        if setup.start_io {
            for _ in 0..setup.io_replicas {
                deployment.start_io();
            }
            deployment.wait_for_kinds().await;
        }
        deployment.wait_ready().await;
        deployment
    }

    /// Starts one more processor-io replica.
    pub fn start_io(&mut self) {
        let name = format!("processor-io-{}", self.io.len() + 1);
        let replica = Service::start(
            &name,
            "jetjobs-processor-io",
            &self.io_env,
            self.logs.path(),
        );
        self.io.push(replica);
    }

    pub async fn wait_for_kinds(&self) {
        jetjobs_e2e::system::wait_for_kinds(&self.js, &["flaky", "noop", "sleep"]).await;
    }

    /// Waits until the gateway answers `/readyz` with 200.
    pub async fn wait_ready(&self) -> Duration {
        let started = Instant::now();
        let http = reqwest::Client::new();
        let url = format!("{}/readyz", self.base);
        eventually(Duration::from_secs(60), || async {
            let response = http.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "the gateway never became ready:\n{}",
                self.gateway.log_tail()
            )
        });
        started.elapsed()
    }
}
