//! The one way the suites start a jetjobs system: [`spawn_system`] starts a nats-server
//! of its own and every service in-process; [`Services::start`] starts the services
//! against a server a scenario owns (a small disk, a cluster, one it kills); the single
//! starters are for scenarios that start and stop services one by one.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use clap::Parser as _;
use futures::StreamExt as _;
use jetjobs::layout::{self, Layout};
use jetjobs::testing::NatsServer;
pub use jetjobs::testing::eventually;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub use crate::{Component, service_binary};

pub const ALL_KINDS: [&str; 5] = ["flaky", "hash", "noop", "sleep", "thumbnail"];

/// Webhook receivers in tests listen on 127.0.0.1, which callbacks may not reach unless
/// allowed (never 169.254.169.254 and the like).
const LOOPBACK: &str = "127.0.0.0/8";

/// Knobs a scenario may turn.
#[derive(Clone, Debug)]
pub struct Options {
    pub ack_wait: Duration,
    pub cpu_concurrency: usize,
    pub run_cpu: bool,
    pub run_io: bool,
    /// Jobs processor-io runs at once.
    pub io_concurrency: usize,
    pub run_status: bool,
    pub max_body_bytes: usize,
    /// `JOBS` holds at most this many jobs (waiting or running).
    pub jobs_max_msgs: i64,
    /// Runs the notifier too, and lets callbacks reach loopback receivers.
    pub run_notifier: bool,
    /// Group commit in the gateway, the processors and the status service.
    pub group_commit: bool,
    /// How the in-process notifier runs (with `run_notifier`).
    pub notifier: NotifierOptions,
    /// The notifier consumer's `ack_wait` (provisioned).
    pub notifier_ack_wait: Duration,
    /// The gateway accepts callbacks to loopback receivers even without an in-process
    /// notifier (scenarios that run the notifier binary).
    pub loopback_callbacks: bool,
    /// Processors store results larger than this by reference (`job_blobs`).
    pub inline_result_max_bytes: usize,
    /// Changes to the provisioned layout (store limits) before provisioning.
    pub layout: fn(&mut Layout),
    /// Changes to the gateway's configuration (timeouts, limits) before it starts.
    pub gateway: fn(&mut jetjobs_gateway::Config),
    /// The processors' `JETJOBS_LOW_PRIORITY_MAX_WAIT_SECS`.
    pub low_priority_max_wait_secs: u64,
}

/// The in-process notifier's settings.
#[derive(Clone, Debug)]
pub struct NotifierOptions {
    /// `JETJOBS_WEBHOOK_SECRETS`.
    pub secrets: String,
    /// `JETJOBS_WEBHOOK_ALLOW`.
    pub allow: String,
    /// `JETJOBS_WEBHOOK_CA_FILE`.
    pub ca_file: Option<std::path::PathBuf>,
    /// Retries after 50–200 ms and a 2 s timeout, for delivery scenarios.
    pub quick_retries: bool,
}

impl Default for NotifierOptions {
    fn default() -> Self {
        Self {
            secrets: jetjobs::webhook::Secret::from_bytes(
                b"a-test-secret-of-32-bytes-length".to_vec(),
            )
            .to_whsec(),
            allow: LOOPBACK.to_string(),
            ca_file: None,
            quick_retries: false,
        }
    }
}

/// A notifier for `url` with `options`' secrets, allow-list, CA file and retry pace.
pub fn notifier_config(url: &str, options: &NotifierOptions) -> jetjobs_notifier::Config {
    let mut config = jetjobs_notifier::Config::local(url, &options.secrets);
    config.allow = options.allow.parse().expect("allow list");
    config.ca_file = options.ca_file.clone();
    if options.quick_retries {
        config.retry_base_ms = 50;
        config.retry_max_ms = 200;
        config.timeout_secs = 2;
    }
    config
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            cpu_concurrency: 2,
            run_cpu: true,
            run_io: true,
            io_concurrency: 64,
            run_status: true,
            max_body_bytes: 64 * 1024,
            jobs_max_msgs: Layout::default().jobs_max_msgs,
            run_notifier: false,
            group_commit: false,
            notifier: NotifierOptions::default(),
            notifier_ack_wait: Layout::default().notifier_ack_wait,
            loopback_callbacks: false,
            inline_result_max_bytes: 64 * 1024,
            layout: |_| {},
            gateway: |_| {},
            low_priority_max_wait_secs: 300,
        }
    }
}

/// Provisions the layout for both processors with `options`' ack waits and limits;
/// returns a JetStream context on `url`.
///
/// # Panics
/// When NATS cannot be reached or provisioning fails.
pub async fn provision(url: &str, options: &Options) -> jetstream::Context {
    // One URL, or a cluster's comma-separated list (as the services take it).
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.trim().parse().expect("a NATS URL"))
        .collect();
    let client = async_nats::ConnectOptions::new()
        .name("jetjobs-e2e")
        .connect(servers)
        .await
        .expect("connect to nats-server");
    let js = jetstream::new(client);
    let mut layout = Layout {
        ack_wait: options.ack_wait,
        jobs_max_msgs: options.jobs_max_msgs,
        notifier_ack_wait: options.notifier_ack_wait,
        processors: vec![jetjobs_processor_io::spec(), jetjobs_processor_cpu::spec()],
        ..Layout::default()
    };
    (options.layout)(&mut layout);
    // Provisioning is idempotent: tried again while a cluster's peers are still coming
    // online ("no suitable peers for placement" right after the servers start).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match layout::provision(&js, &layout).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("provisioning failed, trying again: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => panic!("provision: {e:?}"),
        }
    }
    js
}

/// Every service of a system, in-process, against a nats-server it does not own; and a
/// client of its gateway.
pub struct Services {
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    /// The gateway's base URL, `http://127.0.0.1:<port>`.
    pub base: String,
    pub status: Option<Component>,
    /// Where the in-process notifier serves `/metrics` (with `run_notifier`).
    pub notifier_admin: Option<SocketAddr>,
    nats_url: String,
    /// Gateway, processors and notifier, running until dropped.
    _running: Vec<Component>,
}

impl Services {
    /// Provisions the layout on `url`, starts the services `options` ask for, and waits
    /// until the processors have registered their kinds.
    ///
    /// # Panics
    /// When NATS cannot be reached or a service cannot start.
    pub async fn start(url: &str, options: Options) -> Self {
        let js = provision(url, &options).await;
        let gc = options.group_commit;
        let status = options.run_status.then(|| start_status_with(url, gc));
        let inline = options.inline_result_max_bytes;
        let io = options.run_io.then(|| {
            processor_io(
                url,
                options.io_concurrency,
                gc,
                inline,
                options.low_priority_max_wait_secs,
            )
        });
        let cpu = options.run_cpu.then(|| {
            processor_cpu(
                url,
                options.cpu_concurrency,
                gc,
                inline,
                options.low_priority_max_wait_secs,
            )
        });
        let mut notifier_admin = None;
        let notifier = options.run_notifier.then(|| {
            let mut config = notifier_config(url, &options.notifier);
            let admin = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port");
            config.admin.admin_listen = Some(admin);
            notifier_admin = Some(admin);
            Component::spawn("notifier", move |shutdown| {
                jetjobs_notifier::run(config, shutdown)
            })
        });

        let mut gateway_config = jetjobs_gateway::Config::local(url);
        gateway_config.max_body_bytes = options.max_body_bytes;
        gateway_config.group_commit = gc;
        if options.run_notifier || options.loopback_callbacks {
            gateway_config.webhook_allow = LOOPBACK.parse().expect("allow list");
        }
        (options.gateway)(&mut gateway_config);
        let (gateway, base) = start_gateway(gateway_config);

        let services = Self {
            js,
            http: reqwest::Client::new(),
            base,
            status,
            notifier_admin,
            nats_url: url.to_string(),
            _running: [Some(gateway), io, cpu, notifier]
                .into_iter()
                .flatten()
                .collect(),
        };
        let mut expected = Vec::new();
        if options.run_io {
            expected.extend(["flaky", "noop", "sleep"]);
        }
        if options.run_cpu {
            expected.extend(["hash", "thumbnail"]);
        }
        services.wait_for_kinds(&expected).await;
        services
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits until the processors have registered `kinds` (they do so as they start).
    pub async fn wait_for_kinds(&self, kinds: &[&str]) {
        wait_for_kinds(&self.js, kinds).await;
    }

    pub async fn post(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/jobs"))
            .json(body)
            .send()
            .await
            .expect("POST /v1/jobs")
    }

    /// Submits a job and returns the 202 body.
    pub async fn submit(&self, kind: &str, payload: Value) -> Value {
        let response = self.post(&json!({"kind": kind, "payload": payload})).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "submit {kind}");
        response.json().await.expect("snapshot")
    }

    pub async fn get_job(&self, id: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.url(&format!("/v1/jobs/{id}")))
            .send()
            .await
            .expect("GET job");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls the job until `done` says so, and returns that snapshot.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let (status, snapshot) = self.get_job(id).await;
            assert_eq!(status, StatusCode::OK, "job {id} must be readable");
            if done(&snapshot) {
                return snapshot;
            }
            last = snapshot;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("job {id} did not reach the expected state in {timeout:?}; last seen: {last}");
    }

    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        self.wait_for(id, timeout, |s| {
            matches!(
                s["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .await
    }

    /// Messages ever stored in a stream (work-queue streams delete acked ones, so the
    /// last sequence is the count of publishes that were kept).
    pub async fn stream_last_seq(&self, name: &str) -> u64 {
        let mut stream = self.js.get_stream(name).await.expect("stream");
        stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence
    }

    /// Messages a stream holds now.
    pub async fn stream_messages(&self, name: &str) -> u64 {
        let mut stream = self.js.get_stream(name).await.expect("stream");
        stream.info().await.expect("stream info").state.messages
    }

    pub async fn bucket_last_seq(&self, bucket: &str) -> u64 {
        self.stream_last_seq(&format!("KV_{bucket}")).await
    }

    /// Every event recorded for a job, oldest first, as `(type, attempt)`.
    pub async fn events_of(&self, kind: &str, id: &str) -> Vec<(String, u64)> {
        self.event_documents(kind, id)
            .await
            .iter()
            .map(|event| {
                (
                    event["type"].as_str().expect("type").to_string(),
                    event["attempt"].as_u64().expect("attempt"),
                )
            })
            .collect()
    }

    /// Every event recorded for a job, oldest first, as stored.
    pub async fn event_documents(&self, kind: &str, id: &str) -> Vec<Value> {
        let stream = self.js.get_stream("JOB_EVENTS").await.expect("stream");
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                // The job's own subject and its progress reports.
                filter_subjects: vec![
                    format!("jobs.events.{kind}.{id}"),
                    format!("jobs.events.{kind}.{id}.progress"),
                ],
                ..Default::default()
            })
            .await
            .expect("ordered consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut events = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), messages.next()).await;
            let Ok(Some(Ok(message))) = next else { break };
            events.push(serde_json::from_slice(&message.payload).expect("event"));
        }
        events
    }

    pub async fn stop_status(&mut self) {
        if let Some(status) = self.status.take() {
            status.stop().await;
        }
    }

    pub fn start_status(&mut self) {
        self.status = Some(start_status(&self.nats_url));
    }
}

/// A whole system: a nats-server of its own (stopped on drop) and every service.
pub struct System {
    pub nats: NatsServer,
    services: Services,
}

impl Deref for System {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.services
    }
}

impl DerefMut for System {
    fn deref_mut(&mut self) -> &mut Services {
        &mut self.services
    }
}

impl System {
    pub async fn start() -> Self {
        spawn_system(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        spawn_system(options).await
    }
}

/// Starts a nats-server with JetStream on a free port and the whole system against it.
///
/// # Panics
/// When nats-server or a service cannot start.
pub async fn spawn_system(options: Options) -> System {
    let nats = NatsServer::start();
    let services = Services::start(&nats.url(), options).await;
    System { nats, services }
}

pub fn start_status(url: &str) -> Component {
    start_status_with(url, false)
}

pub fn start_status_with(url: &str, group_commit: bool) -> Component {
    let mut config = jetjobs_status::Config::local(url);
    config.shards = 8;
    config.group_commit = group_commit;
    Component::spawn("status", move |shutdown| {
        jetjobs_status::run(config, shutdown)
    })
}

/// Processor arguments for tests: quick retries, a short shutdown grace.
fn processor_args<'a>(
    name: &'a str,
    url: &'a str,
    concurrency: &'a str,
    group_commit: bool,
    inline_result_max_bytes: &'a str,
    low_max_wait: &'a str,
) -> [&'a str; 15] {
    [
        name,
        "--low-priority-max-wait-secs",
        low_max_wait,
        "--inline-result-max-bytes",
        inline_result_max_bytes,
        "--nats-url",
        url,
        "--concurrency",
        concurrency,
        "--group-commit",
        if group_commit { "true" } else { "false" },
        "--retry-base-ms",
        "50",
        "--shutdown-grace-secs",
        "2",
    ]
}

pub fn start_processor_io(url: &str, concurrency: usize, group_commit: bool) -> Component {
    processor_io(url, concurrency, group_commit, 64 * 1024, 300)
}

fn processor_io(
    url: &str,
    concurrency: usize,
    group_commit: bool,
    inline: usize,
    low_max_wait: u64,
) -> Component {
    let concurrency = concurrency.to_string();
    let inline = inline.to_string();
    let low_max_wait = low_max_wait.to_string();
    let config = jetjobs_processor_io::Config::parse_from(processor_args(
        "jetjobs-processor-io",
        url,
        &concurrency,
        group_commit,
        &inline,
        &low_max_wait,
    ));
    Component::spawn("processor-io", move |shutdown| {
        jetjobs_processor_io::run(config, shutdown)
    })
}

pub fn start_processor_cpu(url: &str, concurrency: usize, group_commit: bool) -> Component {
    processor_cpu(url, concurrency, group_commit, 64 * 1024, 300)
}

fn processor_cpu(
    url: &str,
    concurrency: usize,
    group_commit: bool,
    inline: usize,
    low_max_wait: u64,
) -> Component {
    let concurrency = concurrency.to_string();
    let inline = inline.to_string();
    let low_max_wait = low_max_wait.to_string();
    let config = jetjobs_processor_cpu::Config::parse_from(processor_args(
        "jetjobs-processor-cpu",
        url,
        &concurrency,
        group_commit,
        &inline,
        &low_max_wait,
    ));
    Component::spawn("processor-cpu", move |shutdown| {
        jetjobs_processor_cpu::run(config, shutdown)
    })
}

/// The gateway on a port of its own, bound as in production (listen backlog included);
/// returns it and its base URL.
///
/// # Panics
/// When no port can be bound.
pub fn start_gateway(config: jetjobs_gateway::Config) -> (Component, String) {
    let listener = jetjobs_gateway::serve::bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let gateway = Component::spawn("gateway", move |shutdown| {
        jetjobs_gateway::run(config, Some(listener), shutdown)
    });
    (gateway, base)
}

/// Waits until the processors have registered `kinds` (they do so as they start).
///
/// # Panics
/// When they have not within 30 s (a cluster that has just formed can be slow).
pub async fn wait_for_kinds(js: &jetstream::Context, kinds: &[&str]) {
    let bucket = js
        .get_key_value(layout::KINDS_BUCKET)
        .await
        .expect("job_kinds");
    let missing = eventually(Duration::from_secs(30), || async {
        for kind in kinds {
            bucket.get(*kind).await.ok().flatten()?;
        }
        Some(())
    })
    .await;
    assert!(missing.is_some(), "processors did not register {kinds:?}");
}

/// Checks that `response` is RFC 9457 problem+json with `status` (and a `Retry-After`
/// in seconds for a 503) and a human-readable detail; returns the problem, or why not.
pub async fn problem(response: reqwest::Response, status: StatusCode) -> Result<Value, String> {
    if response.status() != status {
        let got = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(format!("expected {status}, got {got}: {body}"));
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if header("content-type").as_deref() != Some("application/problem+json") {
        return Err(format!("content-type {:?}", header("content-type")));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE
        && header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .is_none()
    {
        return Err("a 503 without a Retry-After in seconds".to_string());
    }
    let problem: Value = response
        .json()
        .await
        .map_err(|e| format!("problem body: {e}"))?;
    if problem["status"] != status.as_u16() {
        return Err(format!("problem status: {problem}"));
    }
    if problem["detail"].as_str().is_none_or(|d| d.len() <= 10) {
        return Err(format!("no human-readable detail: {problem}"));
    }
    if !(problem["type"].is_string() && problem["title"].is_string()) {
        return Err(format!("no type or title: {problem}"));
    }
    Ok(problem)
}
