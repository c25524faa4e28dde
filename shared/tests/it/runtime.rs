//! The processor runtime against a real nats-server: retries with backoff, giving up into
//! the dead-letter stream, timeouts, panics, and bounded concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt as _;
use jetjobs::job::{JobRequest, now};
use jetjobs::layout::{self, Layout};
use jetjobs::processor::{Handler, JobContext, JobError, KindDef, Processor, RuntimeConfig};
use jetjobs::state::{Change, JobEvent};
use jetjobs::testing::NatsServer;
use jetjobs::{JobId, Kind, subjects};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Deserialize, JsonSchema)]
struct Flaky {
    /// Attempts that fail before one succeeds.
    fail_first: u32,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    panic: bool,
    #[serde(default)]
    hang: bool,
    #[serde(default)]
    busy_ms: u64,
    /// Report progress as soon as the run begins.
    #[serde(default)]
    progress: bool,
}

/// A test kind that fails, panics or hangs on request, and counts how many run at once.
#[derive(Clone, Default)]
struct Tester {
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Runs that began, and runs whose work (`busy_ms`) was done.
    began: Arc<AtomicUsize>,
    worked: Arc<AtomicUsize>,
}

impl Handler for Tester {
    type Payload = Flaky;
    type Output = Value;

    fn def(&self) -> KindDef {
        KindDef::new("flaky", "fails on request").timeout_secs(2)
    }

    async fn handle(&self, p: Flaky, ctx: JobContext) -> Result<Value, JobError> {
        self.began.fetch_add(1, Ordering::SeqCst);
        let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now_running, Ordering::SeqCst);
        if p.progress {
            ctx.progress(1, 2);
        }
        tokio::time::sleep(Duration::from_millis(p.busy_ms)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.worked.fetch_add(1, Ordering::SeqCst);
        if p.hang {
            std::future::pending::<()>().await;
        }
        if ctx.attempt() <= p.fail_first {
            if p.panic {
                panic!("boom on attempt {}", ctx.attempt());
            }
            let message = format!("failure on attempt {}", ctx.attempt());
            return Err(if p.permanent {
                JobError::permanent(message)
            } else {
                JobError::retryable(message)
            });
        }
        Ok(json!({"attempt": ctx.attempt()}))
    }
}

struct Harness {
    _nats: NatsServer,
    js: jetstream::Context,
    shutdown: CancellationToken,
    tester: Tester,
}

impl Harness {
    async fn start(concurrency: usize) -> Self {
        Self::start_with(concurrency, None).await
    }

    /// With `admin`, the processor also serves `/metrics` there.
    async fn start_with(concurrency: usize, admin: Option<std::net::SocketAddr>) -> Self {
        Self::provisioned(concurrency, admin).await.run()
    }

    /// The streams and consumers exist; the processor is not running yet.
    async fn provisioned(concurrency: usize, admin: Option<std::net::SocketAddr>) -> Provisioned {
        let nats = NatsServer::start();
        let client = nats.client().await;
        let js = jetstream::new(client.clone());
        let tester = Tester::default();
        let processor = Processor::new("processor-test").handler(tester.clone());
        let layout = Layout {
            processors: vec![processor.spec()],
            ..Layout::default()
        };
        layout::provision(&js, &layout).await.expect("provision");
        let config = RuntimeConfig {
            concurrency,
            retry_base_ms: 20,
            retry_max_ms: 100,
            admin: jetjobs::metrics::AdminArgs {
                admin_listen: admin,
            },
            ..RuntimeConfig::default()
        };
        let harness = Self {
            _nats: nats,
            js,
            shutdown: CancellationToken::new(),
            tester,
        };
        Provisioned {
            harness,
            client,
            processor,
            config,
        }
    }

    async fn submit(&self, payload: Value, max_attempts: u32) -> JobId {
        self.submit_request(self.request(payload, max_attempts))
            .await
    }

    fn request(&self, payload: Value, max_attempts: u32) -> JobRequest {
        JobRequest {
            id: JobId::new_v7(),
            kind: Kind::new("flaky").expect("kind"),
            payload,
            max_attempts,
            timeout_secs: None,
            created_at: now(),
            prior_attempts: 0,
            callback_url: None,
            callback_events: None,
            scheduling: Default::default(),
        }
    }

    async fn submit_request(&self, request: JobRequest) -> JobId {
        self.js
            .publish(
                subjects::submit(&request.kind, request.id, Default::default()),
                serde_json::to_vec(&request).expect("encode").into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
        request.id
    }

    /// The job's events as `(type, attempt, event)`, waiting until one is terminal.
    async fn outcome(&self, id: JobId) -> Vec<(String, u64, Value)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.events(id).await;
            if events
                .iter()
                .any(|(t, _, _)| matches!(t.as_str(), "succeeded" | "failed" | "cancelled"))
            {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not finish: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn events(&self, id: JobId) -> Vec<(String, u64, Value)> {
        self.events_on(vec![format!("jobs.events.flaky.{id}")])
            .await
    }

    /// The job's events and its progress reports, in the order they were stored.
    async fn events_with_progress(&self, id: JobId) -> Vec<(String, u64, Value)> {
        self.events_on(vec![
            format!("jobs.events.flaky.{id}"),
            format!("jobs.events.flaky.{id}.progress"),
        ])
        .await
    }

    async fn events_on(&self, subjects: Vec<String>) -> Vec<(String, u64, Value)> {
        let stream = self.js.get_stream("JOB_EVENTS").await.expect("stream");
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subjects: subjects,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut events = Vec::new();
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(300), messages.next()).await
        {
            let event: Value = serde_json::from_slice(&message.payload).expect("event");
            events.push((
                event["type"].as_str().expect("type").to_string(),
                event["attempt"].as_u64().expect("attempt"),
                event,
            ));
        }
        events
    }

    async fn dead_letters(&self) -> u64 {
        let mut stream = self.js.get_stream("JOBS_DEAD").await.expect("stream");
        stream.info().await.expect("info").state.messages
    }
}

/// A harness whose processor has not started: what is in the stream before it does.
struct Provisioned {
    harness: Harness,
    client: async_nats::Client,
    processor: Processor,
    config: RuntimeConfig,
}

impl Provisioned {
    fn run(self) -> Harness {
        let Self {
            harness,
            client,
            processor,
            config,
        } = self;
        let stop = harness.shutdown.clone();
        tokio::spawn(async move {
            processor
                .run(client, config, stop)
                .await
                .expect("processor runs");
        });
        harness
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn types(events: &[(String, u64, Value)]) -> Vec<(&str, u64)> {
    events.iter().map(|(t, a, _)| (t.as_str(), *a)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_is_retried_with_backoff_until_it_succeeds() {
    let harness = Harness::start(4).await;
    let id = harness.submit(json!({"fail_first": 2}), 3).await;
    let events = harness.outcome(id).await;
    assert_eq!(
        types(&events),
        // Runs shorter than `started_after_ms` record no `started`: each goes straight
        // to its outcome.
        vec![("retrying", 1), ("retrying", 2), ("succeeded", 3)]
    );
    let retrying = &events[0].2;
    assert_eq!(retrying["error"], "failure on attempt 1");
    assert!(retrying["retry_in_ms"].as_u64().is_some_and(|ms| ms >= 10));
    assert_eq!(events[2].2["result"], json!({"attempt": 3}));
    assert_eq!(harness.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_failed_attempt_fails_the_job_and_dead_letters_it() {
    let harness = Harness::start(4).await;
    let id = harness.submit(json!({"fail_first": 99}), 2).await;
    let events = harness.outcome(id).await;
    assert_eq!(types(&events), vec![("retrying", 1), ("failed", 2)]);
    assert_eq!(events[1].2["error"], "failure on attempt 2");
    assert_eq!(harness.dead_letters().await, 1);

    let dead = harness
        .js
        .get_stream("JOBS_DEAD")
        .await
        .expect("stream")
        .get_last_raw_message_by_subject(&format!("jobs.dead.flaky.{id}"))
        .await
        .expect("dead letter");
    let request: JobRequest = serde_json::from_slice(&dead.payload).expect("the job, as submitted");
    assert_eq!(request.id, id);
    assert_eq!(
        dead.headers.get("Jetjobs-Error").map(|v| v.as_str()),
        Some("failure on attempt 2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_fails_at_once() {
    let harness = Harness::start(4).await;
    let id = harness
        .submit(json!({"fail_first": 99, "permanent": true}), 5)
        .await;
    let events = harness.outcome(id).await;
    assert_eq!(types(&events), vec![("failed", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_retryable_failure_and_the_processor_keeps_serving() {
    let harness = Harness::start(4).await;
    let id = harness
        .submit(json!({"fail_first": 1, "panic": true}), 3)
        .await;
    let events = harness.outcome(id).await;
    assert_eq!(types(&events), vec![("retrying", 1), ("succeeded", 2)]);
    assert!(
        events[0].2["error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked") && e.contains("boom on attempt 1")),
        "{:?}",
        events[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_timeout_is_stopped_and_counted_as_a_failed_attempt() {
    let harness = Harness::start(4).await;
    let id = harness
        .submit(json!({"fail_first": 0, "hang": true}), 1)
        .await;
    let events = harness.outcome(id).await;
    assert_eq!(types(&events), vec![("started", 1), ("failed", 1)]);
    assert!(
        events[1].2["error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out after 2s")),
        "{:?}",
        events[1]
    );
    // The processor still serves other jobs; a quick one records no `started` (a
    // long one, like the one above, does).
    let next = harness.submit(json!({"fail_first": 0}), 1).await;
    let events = harness.outcome(next).await;
    assert_eq!(types(&events), vec![("succeeded", 1)]);
}

/// The fence is what keeps a run that lost its job from recording anything, whether it
/// claimed the job first or not: a job whose subject already ends in `cancelled` (the
/// client cancelled it while it was queued) is run by its first delivery, which skips
/// the lookup, but neither a quick run's outcome nor a long run's late `started` is
/// stored, the long run is stopped, and the job is acked, not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_job_cancelled_while_queued_records_nothing() {
    let harness = Harness::start(4).await;
    let mut ids = Vec::new();
    for busy_ms in [0, 1_000] {
        let request = harness.request(json!({"fail_first": 0, "busy_ms": busy_ms}), 3);
        let cancelled = JobEvent::new(
            &request,
            0,
            Change::Cancelled {
                reason: "cancelled by the client".into(),
            },
        );
        harness
            .js
            .publish(
                subjects::event(&request.kind, request.id),
                serde_json::to_vec(&cancelled).expect("encode").into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
        ids.push(harness.submit_request(request).await);
    }
    // Both acked: JOBS empties, with nothing in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut jobs = harness.js.get_stream("JOBS").await.expect("JOBS");
        if jobs.info().await.expect("info").state.messages == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the jobs were not acked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in ids {
        assert_eq!(types(&harness.events(id).await), vec![("cancelled", 0)]);
    }
    assert_eq!(harness.tester.began.load(Ordering::SeqCst), 2);
    assert_eq!(
        harness.tester.worked.load(Ordering::SeqCst),
        1,
        "the long run was stopped when its claim was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_job_redelivered_after_a_run_that_recorded_nothing_claims_before_it_runs() {
    let provisioned = Harness::provisioned(4, None).await;
    let id = provisioned
        .harness
        .submit(json!({"fail_first": 0}), 3)
        .await;
    // A processor took the job and died before it recorded anything (a crash inside a
    // quick run, whose `started` is deferred): the delivery comes back.
    let consumer_name = provisioned
        .processor
        .spec()
        .consumer_name(Default::default());
    let consumer: PullConsumer = provisioned
        .harness
        .js
        .get_stream("JOBS")
        .await
        .expect("JOBS")
        .get_consumer(&consumer_name)
        .await
        .expect("consumer");
    let mut taken = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let lost = taken.next().await.expect("a delivery").expect("message");
    lost.ack_with(jetstream::AckKind::Nak(None))
        .await
        .expect("nak");

    let harness = provisioned.run();
    let events = harness.outcome(id).await;
    // The redelivery claims before it runs, quick as it is: had it died too, its
    // `started` would have used up an attempt, so a job that kills its processor every
    // time runs out of attempts instead of looping.
    assert_eq!(types(&events), vec![("started", 1), ("succeeded", 1)]);
    assert_eq!(harness.tester.began.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_recorded_only_after_the_run_shows_as_started() {
    let harness = Harness::start(4).await;
    // Reported at once, while the run's claim is still deferred; then the run goes on
    // long enough to claim.
    let long = harness
        .submit(
            json!({"fail_first": 0, "progress": true, "busy_ms": 300}),
            3,
        )
        .await;
    // Reported, then done before any claim: the outcome is the whole record.
    let quick = harness
        .submit(json!({"fail_first": 0, "progress": true}), 3)
        .await;
    harness.outcome(long).await;
    harness.outcome(quick).await;
    // Progress reports are not awaited; give a late one the time to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        types(&harness.events_with_progress(long).await),
        vec![("started", 1), ("progress", 1), ("succeeded", 1)]
    );
    assert_eq!(
        types(&harness.events_with_progress(quick).await),
        vec![("succeeded", 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_jobs_in_flight_than_the_concurrency_limit() {
    let harness = Harness::start(3).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(
            harness
                .submit(json!({"fail_first": 0, "busy_ms": 50}), 1)
                .await,
        );
    }
    let stream = harness.js.get_stream("JOBS").await.expect("JOBS");
    let mut consumer: PullConsumer = stream
        .get_consumer("processor-test")
        .await
        .expect("consumer");
    let mut max_ack_pending = 0;
    for _ in 0..40 {
        let info = consumer.info().await.expect("info");
        max_ack_pending = max_ack_pending.max(info.num_ack_pending);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for id in ids {
        harness.outcome(id).await;
    }
    assert_eq!(
        harness.tester.peak.load(Ordering::SeqCst),
        3,
        "ran 3 at once at most (and at least)"
    );
    // Three running, and at most three more held ready to start (the default prefetch
    // is the concurrency), never the whole backlog. The server counts an ack when it
    // gets to it, which may be after the pull that the freed room sent: each slot may
    // have one job acked here and still pending there.
    assert!(
        max_ack_pending <= 3 + 3 + 3,
        "the processor held {max_ack_pending} jobs with 3 slots and a prefetch of 3"
    );
}

/// A free port on the loopback interface, for a server that binds it itself.
fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

use jetjobs::testing::metric_sample as sample;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_outcome_by_kind() {
    let admin = free_port();
    let harness = Harness::start_with(4, Some(admin)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(harness.submit(json!({"fail_first": 0}), 3).await);
    }
    // Retried once, then succeeds.
    ids.push(harness.submit(json!({"fail_first": 1}), 3).await);
    // Retried once, then fails on its last attempt.
    ids.push(harness.submit(json!({"fail_first": 9}), 2).await);
    // Fails at once.
    ids.push(
        harness
            .submit(json!({"fail_first": 1, "permanent": true}), 3)
            .await,
    );
    // Not a job at all: failed and dead-lettered without running.
    let poison = JobId::new_v7();
    harness
        .js
        .publish(
            subjects::submit(
                &Kind::new("flaky").expect("kind"),
                poison,
                Default::default(),
            ),
            "not json".into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    ids.push(poison);
    for id in &ids {
        harness.outcome(*id).await;
    }

    let http = reqwest::Client::new();
    let url = format!("http://{admin}/metrics");
    let flaky = r#"kind="flaky""#;
    let consumer = r#"stream="JOBS",consumer="processor-test""#;
    // The last ack lands just after the last outcome event: wait for the queue to drain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let response = http.get(&url).send().await.expect("GET /metrics");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/openmetrics-text")),
        );
        let text = response.text().await.expect("body");
        let drained = sample(&text, "jetjobs_consumer_ack_pending_messages", consumer) == Some(0.0)
            && sample(&text, "jetjobs_consumer_pending_messages", consumer) == Some(0.0);
        if drained || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let value = |name: &str, labels: &str| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
    };
    // 3 + 2 + 2 + 1 runs; the poison message never ran.
    assert_eq!(value("jetjobs_jobs_started_total", flaky), 8.0);
    assert_eq!(value("jetjobs_jobs_succeeded_total", flaky), 4.0);
    assert_eq!(value("jetjobs_jobs_retried_total", flaky), 2.0);
    assert_eq!(value("jetjobs_jobs_failed_total", flaky), 3.0);
    assert_eq!(value("jetjobs_jobs_dead_lettered_total", flaky), 3.0);
    assert_eq!(value("jetjobs_job_run_seconds_count", flaky), 8.0);
    assert!(value("jetjobs_job_run_seconds_sum", flaky) > 0.0);
    // Only first runs waited in the queue.
    assert_eq!(value("jetjobs_job_queue_wait_seconds_count", flaky), 6.0);
    assert_eq!(
        value(
            "jetjobs_job_run_seconds_bucket",
            r#"le="+Inf",kind="flaky""#
        ),
        8.0
    );
    assert_eq!(value("jetjobs_consumer_pending_messages", consumer), 0.0);
    assert_eq!(
        value("jetjobs_consumer_ack_pending_messages", consumer),
        0.0
    );
    assert_eq!(value("jetjobs_consumer_info_up", consumer), 1.0);
    assert!(
        text.contains("# TYPE jetjobs_job_run_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("# HELP jetjobs_jobs_started "), "{text}");
}
