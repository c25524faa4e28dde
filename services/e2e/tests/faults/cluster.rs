//! Scenario 5: a three-node NATS cluster with every stream, consumer and bucket replicated
//! three times (R3). In the middle of a run the node leading the `JOBS` stream is
//! SIGKILLed, and restarted a few seconds later. No job that got a 202 may be lost, run to
//! success twice, or move backwards, and no client may see errors for longer than the
//! failover takes.
//!
//! Gateway, status and processor-io run in-process and connect with the list of all three
//! nodes (`NATS_URL=nats://a,nats://b,nats://c`). Clients submit with an
//! `Idempotency-Key` per job and retry a failed request (connection error or 5xx) with the
//! same key until they get their 202, as the README tells them to.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use clap::Parser as _;
use futures::StreamExt as _;
use jetjobs::layout::{self, Layout};
use jetjobs::testing::NatsCluster;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Concurrent HTTP clients, each submitting its share of the jobs one after another.
const CLIENTS: usize = 8;
const JOBS_PER_CLIENT: usize = 100;
/// Pause between two submissions of one client, so the run lasts ~20 s and the kill lands
/// in the middle of it, with jobs queued, running and being projected.
const SUBMIT_PACE: Duration = Duration::from_millis(200);
const KILL_AFTER: Duration = Duration::from_secs(7);
const RESTART_AFTER_KILL: Duration = Duration::from_secs(8);
/// For both the processors' and the status projector's consumers. A message the dying
/// consumer leader had just delivered (or whose ack or nak died with it) comes again only
/// after `ack_wait`: with the 30 s default a few jobs would show `running` for 30 s after
/// the failover, long done. Short, so the run measures the failover, not that wait.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// A client gives up on a job after this long in errors (the correctness bound below).
const CLIENT_GIVE_UP: Duration = Duration::from_secs(45);
const MAX_ERROR_WINDOW: Duration = Duration::from_secs(30);
const CLIENT_RETRY_DELAY: Duration = Duration::from_millis(100);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_sigkill_the_jobs_leader() {
    let _turn = crate::serial().await;
    if std::env::var_os("RUST_LOG").is_some() {
        // The services' own logs, when asked for (they are silent otherwise).
        jetjobs::telemetry::init_logs("faults");
    }
    let mut cluster = NatsCluster::start();
    let control = cluster.client().await;
    let js = jetstream::new(control.clone());
    let layout = Layout {
        replicas: 3,
        ack_wait: ACK_WAIT,
        status_ack_wait: ACK_WAIT,
        processors: vec![jetjobs_processor_io::spec()],
        ..Layout::default()
    };
    provision(&js, &layout).await;
    for stream in [
        layout::JOBS_STREAM,
        layout::EVENTS_STREAM,
        "KV_job_status",
        "KV_job_idempotency",
    ] {
        let info = stream_info(&js, stream).await.expect("stream info");
        assert_eq!(info.config.num_replicas, 3, "{stream} is R3");
    }

    // The regression checker watches job_status from before the first job.
    let status_kv = js
        .get_key_value(layout::STATUS_BUCKET)
        .await
        .expect("job_status");
    let checker = Arc::new(Mutex::new(Monotonic::default()));
    let watcher_stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_status(
        status_kv,
        Arc::clone(&checker),
        watcher_stop.clone(),
    ));

    // Services get every node's URL, as NATS_URL gives it to them; each connects to one
    // of them at random and must fail over if that one dies.
    assert!(
        accepts_url_list(&cluster.urls()).await,
        "NATS_URL must take a comma-separated list of servers"
    );
    let services_url = cluster.urls();
    let mut services = Services::start(&services_url).await;
    services.wait_ready(&js, &["noop", "sleep"]).await;

    // The run: clients submit while the JOBS leader is killed and later restarted.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("http client");
    let run_started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(http.clone(), services.base.clone(), c)))
        .collect();

    tokio::time::sleep(KILL_AFTER).await;
    let jobs_leader = leader_of(&js, layout::JOBS_STREAM)
        .await
        .expect("the JOBS stream has a leader before the kill");
    let victim = cluster
        .node_named(&jobs_leader)
        .expect("the leader is one of ours");
    let meta_leader = cluster.meta_leader().unwrap_or_default();
    let consumer_leader = consumer_leader(&js, layout::JOBS_STREAM, jetjobs_processor_io::NAME)
        .await
        .unwrap_or_default();
    // The failover is timed through a node that stays up, so the test's own reconnect is
    // not part of it.
    let survivor = (0..cluster.len())
        .find(|&i| i != victim)
        .expect("a node that stays up");
    let survivor_js = jetstream::new(
        async_nats::connect(cluster.url(survivor))
            .await
            .expect("connect to a surviving node"),
    );
    let mut on_victim = cluster.connection_names(victim);
    on_victim.retain(|name| name != "test");
    let killed_at = Instant::now();
    cluster.kill(victim);
    eprintln!(
        "cluster: SIGKILLed node {victim} ({jobs_leader}: JOBS leader; meta leader {meta_leader}, \
         processor-io consumer leader {consumer_leader}; connections there: {on_victim:?}) at {:.1}s",
        run_started.elapsed().as_secs_f64()
    );
    let failover = wait_new_leader(&survivor_js, layout::JOBS_STREAM, &jobs_leader).await;
    eprintln!(
        "cluster: JOBS has a new leader {} after {:.2}s",
        failover.1,
        failover.0.as_secs_f64()
    );
    let until_restart = RESTART_AFTER_KILL.saturating_sub(killed_at.elapsed());
    tokio::time::sleep(until_restart).await;
    let restart_began = Instant::now();
    // `restart` blocks until the node is healthy (caught up); keep it off the runtime.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(victim);
        cluster
    })
    .await
    .expect("restart the killed node");
    let rejoin = restart_began.elapsed();
    eprintln!(
        "cluster: node {victim} restarted and healthy after {:.2}s",
        rejoin.as_secs_f64()
    );

    let mut submissions = Vec::new();
    for handle in clients {
        submissions.extend(handle.await.expect("client task"));
    }
    let submitted_for = run_started.elapsed();

    // Every accepted job must reach a terminal state.
    let accepted: Vec<&Submission> = submissions.iter().filter(|s| s.id.is_some()).collect();
    let ids: HashSet<String> = accepted.iter().filter_map(|s| s.id.clone()).collect();
    let drain_started = Instant::now();
    let mut reported_slow = false;
    while drain_started.elapsed() < DRAIN_TIMEOUT {
        let done = {
            let checker = checker.lock().expect("checker");
            ids.iter().all(|id| checker.is_terminal(id))
        };
        if done {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(3) && !reported_slow {
            reported_slow = true;
            let checker = checker.lock().expect("checker");
            let pending: Vec<String> = ids
                .iter()
                .filter(|id| !checker.is_terminal(id))
                .map(|id| format!("{id} ({})", checker.state_of(id)))
                .collect();
            eprintln!(
                "cluster: 3 s after the last submission {} jobs are not terminal yet: {:?}",
                pending.len(),
                pending.iter().take(10).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_after = drain_started.elapsed();

    // What the gateway answers for each job, after the fact.
    let mut states: HashMap<String, usize> = HashMap::new();
    let mut lost_ids = Vec::new();
    for id in &ids {
        let state = job_state(&http, &services.base, id).await;
        if state != "succeeded" {
            lost_ids.push(format!("{id}: {state}"));
        }
        *states.entry(state).or_default() += 1;
    }

    // Duplicates: more than one terminal event for a job in JOB_EVENTS.
    let events = read_events(&js).await;
    let mut duplicated = Vec::new();
    let mut reruns = 0;
    for id in &ids {
        let tally = events.get(id).cloned().unwrap_or_default();
        if tally.terminal > 1 {
            duplicated.push(format!(
                "{id}: {} succeeded, {} terminal",
                tally.succeeded, tally.terminal
            ));
        }
        if tally.runs.len() > 1 {
            reruns += 1;
        }
    }

    // The watcher has seen every snapshot write once it reached the bucket's last revision.
    let last_revision = stream_info(&js, "KV_job_status")
        .await
        .map(|info| info.state.last_sequence)
        .unwrap_or(0);
    let caught_up = Instant::now();
    while checker.lock().expect("checker").last_revision < last_revision
        && caught_up.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let watched_to = checker.lock().expect("checker").last_revision;
    watcher_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), watcher).await;
    let checker = checker.lock().expect("checker").clone();

    let service_failures = services.stop().await;

    // The clients' view: how long the longest stretch of errors lasted.
    let never_accepted: Vec<&Submission> = submissions.iter().filter(|s| s.id.is_none()).collect();
    let window = submissions
        .iter()
        .filter_map(|s| s.error_window)
        .max()
        .unwrap_or_default();
    let disrupted = submissions
        .iter()
        .filter(|s| s.error_window.is_some())
        .count();
    let slowest = submissions
        .iter()
        .map(|s| s.slowest_request)
        .max()
        .unwrap_or_default();
    let mut errors: HashMap<String, usize> = HashMap::new();
    for s in &submissions {
        for e in &s.errors {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    let mut error_summary: Vec<String> = errors.iter().map(|(e, n)| format!("{n}× {e}")).collect();
    error_summary.sort();

    eprintln!(
        "cluster: {} submissions in {:.1}s, {} accepted, {} never accepted; drained {:.1}s after the last submission",
        submissions.len(),
        submitted_for.as_secs_f64(),
        ids.len(),
        never_accepted.len(),
        drained_after.as_secs_f64()
    );
    eprintln!(
        "cluster: {disrupted} submissions saw errors; longest error window {:.2}s; slowest request {:.2}s",
        window.as_secs_f64(),
        slowest.as_secs_f64()
    );
    for line in error_summary.iter().take(20) {
        eprintln!("cluster: client error: {line}");
    }
    eprintln!("cluster: final states: {states:?}; jobs run more than once: {reruns}");
    eprintln!(
        "cluster: {} snapshot writes watched, {} regressions",
        checker.updates,
        checker.regressions.len()
    );
    for line in checker.regressions.iter().take(20) {
        eprintln!("cluster: regression: {line}");
    }
    for line in duplicated.iter().take(20) {
        eprintln!("cluster: duplicate: {line}");
    }
    for line in lost_ids.iter().take(20) {
        eprintln!("cluster: lost: {line}");
    }

    crate::report::record(&crate::report::Row {
        number: 5,
        scenario: "NATS cluster of 3, everything R3: SIGKILL the JOBS stream leader mid-run, restart it 8 s later"
            .into(),
        jobs: ids.len(),
        lost: lost_ids.len(),
        duplicated: duplicated.len(),
        regressions: checker.regressions.len(),
        recovery: Some(window),
        notes: format!(
            "{CLIENTS} clients × {JOBS_PER_CLIENT} noop/sleep jobs with Idempotency-Key, retrying 5xx/connection errors; \
             services connected with all three URLs; on the killed node: {}; the killed node led JOBS{}{}. New JOBS leader after {:.2} s; the restarted node was healthy after {:.2} s. \
             {disrupted} submissions saw errors ({}), the longest for {:.2} s (time to recover); slowest request {:.2} s. \
             {reruns} jobs ran more than once; {} never accepted; every job was done {:.1} s after the last submission \
             (ack_wait 5 s for processors and status).",
            if on_victim.is_empty() { "none".to_string() } else { on_victim.join(", ") },
            if meta_leader == jobs_leader { ", the meta group" } else { "" },
            if consumer_leader == jobs_leader { ", the processor-io consumer" } else { "" },
            failover.0.as_secs_f64(),
            rejoin.as_secs_f64(),
            if error_summary.is_empty() { "none".to_string() } else { error_summary.join("; ") },
            window.as_secs_f64(),
            slowest.as_secs_f64(),
            never_accepted.len(),
            drained_after.as_secs_f64(),
        ),
    });

    assert!(
        service_failures.is_empty(),
        "services failed under failover: {service_failures:?}"
    );
    assert!(
        never_accepted.is_empty(),
        "{} submissions never got a 202 within {CLIENT_GIVE_UP:?}: {:?}",
        never_accepted.len(),
        never_accepted
            .iter()
            .take(5)
            .map(|s| &s.errors)
            .collect::<Vec<_>>()
    );
    assert!(
        watched_to >= last_revision,
        "the job_status watch saw revisions up to {watched_to} of {last_revision}: regressions may be missing"
    );
    assert!(lost_ids.is_empty(), "lost jobs: {lost_ids:?}");
    assert!(duplicated.is_empty(), "duplicated jobs: {duplicated:?}");
    assert!(
        checker.regressions.is_empty(),
        "regressions: {:?}",
        checker.regressions
    );
    assert!(
        window < MAX_ERROR_WINDOW,
        "a client saw errors for {window:?} (bound {MAX_ERROR_WINDOW:?})"
    );
    drop(cluster);
}

// ---------------------------------------------------------------------------------------
// Services, in-process.

struct Services {
    base: String,
    nats_url: String,
    tokens: Vec<CancellationToken>,
    handles: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

impl Services {
    async fn start(nats_url: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let mut services = Self {
            base,
            nats_url: nats_url.to_string(),
            tokens: Vec::new(),
            handles: Vec::new(),
        };
        services.spawn("status", None);
        services.spawn("processor-io", None);
        services.spawn("gateway", Some(listener));
        services
    }

    fn spawn(&mut self, name: &'static str, listener: Option<TcpListener>) {
        let nats_url = self.nats_url.clone();
        let token = self.token();
        let handle = match name {
            "status" => {
                let mut status = jetjobs_status::Config::local(&nats_url);
                status.shards = 8;
                tokio::spawn(jetjobs_status::run(status, token))
            }
            "processor-io" => {
                let io = jetjobs_processor_io::Config::parse_from([
                    "jetjobs-processor-io",
                    "--nats-url",
                    &nats_url,
                    "--retry-base-ms",
                    "50",
                    "--shutdown-grace-secs",
                    "2",
                ]);
                tokio::spawn(jetjobs_processor_io::run(io, token))
            }
            "gateway" => {
                let gateway = jetjobs_gateway::Config::local(&nats_url);
                tokio::spawn(jetjobs_gateway::run(gateway, listener, token))
            }
            other => panic!("no service {other}"),
        };
        self.handles.push((name, handle));
    }

    /// Waits until the processors have registered `kinds`. A service that gave up while
    /// the cluster that has just formed still elected its leaders (its start is bounded)
    /// is reported and started again: the scenario is the failover later, not this.
    async fn wait_ready(&mut self, js: &jetstream::Context, kinds: &[&str]) {
        let bucket = js
            .get_key_value(layout::KINDS_BUCKET)
            .await
            .expect("job_kinds");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut registered = true;
            for kind in kinds {
                if !matches!(bucket.get(*kind).await, Ok(Some(_))) {
                    registered = false;
                    break;
                }
            }
            if registered {
                return;
            }
            let ended: Vec<usize> = (0..self.handles.len())
                .filter(|&i| self.handles[i].1.is_finished())
                .collect();
            for i in ended.into_iter().rev() {
                let (name, handle) = self.handles.remove(i);
                let how = match handle.await {
                    Ok(Ok(())) => "ended".to_string(),
                    Ok(Err(e)) => format!("failed: {e:#}"),
                    Err(e) => format!("panicked: {e}"),
                };
                assert_ne!(
                    name, "gateway",
                    "the gateway {how} while the cluster formed"
                );
                eprintln!("cluster: {name} {how} while the cluster formed; starting it again");
                self.spawn(name, None);
            }
            assert!(
                Instant::now() < deadline,
                "processors did not register {kinds:?} within 90 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn token(&mut self) -> CancellationToken {
        let token = CancellationToken::new();
        self.tokens.push(token.clone());
        token
    }

    /// Stops every service cleanly; returns how each one that failed (or ended early) did.
    async fn stop(self) -> Vec<String> {
        let mut failures = Vec::new();
        for (name, handle) in &self.handles {
            if handle.is_finished() {
                failures.push(format!("{name} ended before it was stopped"));
            }
        }
        for token in &self.tokens {
            token.cancel();
        }
        for (name, handle) in self.handles {
            match tokio::time::timeout(Duration::from_secs(15), handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => failures.push(format!("{name} failed: {e:#}")),
                Ok(Err(e)) => failures.push(format!("{name} panicked: {e}")),
                Err(_) => failures.push(format!("{name} did not stop within 15s")),
            }
        }
        failures
    }
}

/// Provisions `layout`, retrying for a while: a cluster that has just formed may still
/// refuse an R3 stream for a moment (say, while its meta leader learns of every peer).
async fn provision(js: &jetstream::Context, layout: &Layout) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match layout::provision(js, layout).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("cluster: provisioning R3 failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("provisioning R3 failed: {e}"),
        }
    }
}

/// Whether the services' NATS config connects with a comma-separated list of URLs.
async fn accepts_url_list(urls: &str) -> bool {
    let mut args = jetjobs::config::NatsArgs::local(urls);
    args.connect_timeout_secs = 1;
    match args.connect("probe").await {
        Ok(client) => {
            drop(client);
            true
        }
        Err(e) => {
            eprintln!("cluster: connecting with {urls:?} failed: {e:#}");
            false
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients.

/// One job's submission, as its client saw it.
#[derive(Debug)]
struct Submission {
    /// The job id from the 202; `None` if the client gave up.
    id: Option<String>,
    /// From the start of the first failed request to the 202.
    error_window: Option<Duration>,
    slowest_request: Duration,
    /// Each failure, shortened to its kind ("503 unavailable", "connection error: …").
    errors: Vec<String>,
}

async fn client(http: reqwest::Client, base: String, client: usize) -> Vec<Submission> {
    let mut out = Vec::with_capacity(JOBS_PER_CLIENT);
    for n in 0..JOBS_PER_CLIENT {
        let i = client * JOBS_PER_CLIENT + n;
        let body = if i.is_multiple_of(2) {
            json!({"kind": "noop"})
        } else {
            // 20–200 ms, spread evenly, no RNG needed.
            json!({"kind": "sleep", "payload": {"ms": 20 + (i * 37) % 181}})
        };
        let key = format!("cluster-{}", uuid::Uuid::now_v7());
        out.push(submit(&http, &base, &key, &body).await);
        tokio::time::sleep(SUBMIT_PACE).await;
    }
    out
}

async fn submit(http: &reqwest::Client, base: &str, key: &str, body: &Value) -> Submission {
    let mut submission = Submission {
        id: None,
        error_window: None,
        slowest_request: Duration::ZERO,
        errors: Vec::new(),
    };
    let mut first_error: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        let response = http
            .post(format!("{base}/v1/jobs"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        submission.slowest_request = submission.slowest_request.max(sent.elapsed());
        let error = match response {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                let snapshot: Value = response.json().await.unwrap_or(Value::Null);
                match snapshot["id"].as_str() {
                    Some(id) => {
                        submission.id = Some(id.to_string());
                        submission.error_window = first_error.map(|t| t.elapsed());
                        return submission;
                    }
                    None => format!("202 without an id: {snapshot}"),
                }
            }
            Ok(response) => {
                let status = response.status();
                let problem: Value = response.json().await.unwrap_or(Value::Null);
                let detail = problem["detail"].as_str().unwrap_or_default();
                // Keep the kind of failure, not the ids and numbers in it.
                let mut short: String = detail.chars().take(70).collect();
                if short.len() < detail.len() {
                    short.push('…');
                }
                first_seen(&format!("{status} {short}"), detail);
                if !status.is_server_error() {
                    // Not something a retry can fix: a bug, reported as such.
                    submission.errors.push(format!("{status} {short}"));
                    submission.error_window = first_error.map(|t| t.elapsed());
                    return submission;
                }
                format!("{} {short}", status.as_u16())
            }
            Err(e) if e.is_timeout() => "request timed out (15 s)".to_string(),
            Err(e) => format!("connection error: {e}"),
        };
        submission.errors.push(error);
        let since = *first_error.get_or_insert(sent);
        if since.elapsed() > CLIENT_GIVE_UP {
            submission.error_window = Some(since.elapsed());
            return submission;
        }
        tokio::time::sleep(CLIENT_RETRY_DELAY).await;
    }
}

/// Prints the full text of each kind of client error once, for the record.
fn first_seen(kind: &str, detail: &str) {
    static SEEN: std::sync::LazyLock<Mutex<HashSet<String>>> =
        std::sync::LazyLock::new(Mutex::default);
    if SEEN.lock().expect("seen").insert(kind.to_string()) {
        eprintln!("cluster: first {kind}: {detail}");
    }
}

async fn job_state(http: &reqwest::Client, base: &str, id: &str) -> String {
    for _ in 0..5 {
        if let Ok(response) = http.get(format!("{base}/v1/jobs/{id}")).send().await {
            let status = response.status();
            if status == reqwest::StatusCode::OK
                && let Ok(snapshot) = response.json::<Value>().await
            {
                return snapshot["state"].as_str().unwrap_or("?").to_string();
            }
            if status == reqwest::StatusCode::NOT_FOUND {
                return "404".into();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    "unreadable".into()
}

// ---------------------------------------------------------------------------------------
// Cluster state.

async fn stream_info(js: &jetstream::Context, name: &str) -> Option<jetstream::stream::Info> {
    stream_info_within(js, name, Duration::from_secs(2)).await
}

async fn stream_info_within(
    js: &jetstream::Context,
    name: &str,
    timeout: Duration,
) -> Option<jetstream::stream::Info> {
    // `get_stream` is one STREAM.INFO request; its answer is the cached info.
    let info = async { Some(js.get_stream(name).await.ok()?.cached_info().clone()) };
    tokio::time::timeout(timeout, info).await.ok().flatten()
}

async fn leader_of(js: &jetstream::Context, stream: &str) -> Option<String> {
    stream_info(js, stream).await?.cluster?.leader
}

async fn consumer_leader(js: &jetstream::Context, stream: &str, consumer: &str) -> Option<String> {
    let info = async {
        let stream = js.get_stream(stream).await.ok()?;
        stream.consumer_info(consumer).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(2), info)
        .await
        .ok()
        .flatten()?
        .cluster?
        .leader
}

/// Waits until `stream` has a leader other than `old`; returns how long it took and who.
async fn wait_new_leader(js: &jetstream::Context, stream: &str, old: &str) -> (Duration, String) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let info = stream_info_within(js, stream, Duration::from_millis(500)).await;
        if let Some(leader) = info.and_then(|i| i.cluster?.leader)
            && leader != old
        {
            return (started.elapsed(), leader);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{stream} had no new leader 30s after its leader was killed");
}

// ---------------------------------------------------------------------------------------
// Events: how often each job ran and ended.

#[derive(Clone, Debug, Default)]
struct Tally {
    /// The attempts the job's run events name: a quick run records only its outcome, a
    /// longer one `started` too.
    runs: std::collections::BTreeSet<u64>,
    succeeded: usize,
    terminal: usize,
}

/// Every event in `JOB_EVENTS`, tallied per job id.
async fn read_events(js: &jetstream::Context) -> HashMap<String, Tally> {
    let last = stream_info(js, layout::EVENTS_STREAM)
        .await
        .expect("JOB_EVENTS info")
        .state
        .last_sequence;
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    if last == 0 {
        return tallies;
    }
    let stream = js
        .get_stream(layout::EVENTS_STREAM)
        .await
        .expect("JOB_EVENTS");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "jobs.events.>".into(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer on JOB_EVENTS");
    let mut messages = consumer.messages().await.expect("messages");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        else {
            continue;
        };
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let event: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
        if let (Some(id), Some(kind)) = (event["job_id"].as_str(), event["type"].as_str()) {
            let tally = tallies.entry(id.to_string()).or_default();
            if matches!(kind, "started" | "retrying" | "succeeded" | "failed")
                && let Some(attempt) = event["attempt"].as_u64()
            {
                tally.runs.insert(attempt);
            }
            match kind {
                "succeeded" => {
                    tally.succeeded += 1;
                    tally.terminal += 1;
                }
                "failed" | "cancelled" => tally.terminal += 1,
                _ => {}
            }
        }
        if seq >= last {
            return tallies;
        }
    }
    panic!("could not read JOB_EVENTS up to sequence {last} within 30s");
}

// ---------------------------------------------------------------------------------------
// The regression checker: every snapshot write must move its job forward.

/// Watches every write to `job_status` and checks that no job moves backwards: within an
/// attempt the state only goes `queued < running < retrying < terminal`, attempts never
/// decrease, a terminal state is final, and no snapshot disappears.
#[derive(Clone, Debug, Default)]
struct Monotonic {
    last: HashMap<String, Seen>,
    regressions: Vec<String>,
    updates: usize,
    last_revision: u64,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    attempt: u64,
    rank: u8,
    state: &'static str,
    revision: u64,
}

impl Monotonic {
    fn rank(state: &str) -> Option<(u8, &'static str)> {
        Some(match state {
            "queued" => (0, "queued"),
            "running" => (1, "running"),
            "retrying" => (2, "retrying"),
            "succeeded" => (3, "succeeded"),
            "failed" => (3, "failed"),
            "cancelled" => (3, "cancelled"),
            _ => return None,
        })
    }

    fn observe(&mut self, key: &str, revision: u64, operation: kv::Operation, value: &[u8]) {
        self.updates += 1;
        self.last_revision = self.last_revision.max(revision);
        if operation != kv::Operation::Put {
            self.regressions.push(format!(
                "{key}@{revision}: the snapshot was removed ({operation:?})"
            ));
            return;
        }
        let snapshot: Value = serde_json::from_slice(value).unwrap_or(Value::Null);
        let (Some((rank, state)), Some(attempt)) = (
            snapshot["state"].as_str().and_then(Self::rank),
            snapshot["attempt"].as_u64(),
        ) else {
            self.regressions
                .push(format!("{key}@{revision}: not a snapshot: {snapshot}"));
            return;
        };
        let next = Seen {
            attempt,
            rank,
            state,
            revision,
        };
        if let Some(prev) = self.last.get(key).copied() {
            if revision <= prev.revision {
                // A replay of what was seen already (the watch was re-opened).
                return;
            }
            let why = if prev.rank == 3 && (prev.state != state || prev.attempt != attempt) {
                Some("a terminal state changed")
            } else if attempt < prev.attempt {
                Some("the attempt went down")
            } else if attempt == prev.attempt && rank < prev.rank {
                Some("the state went back within an attempt")
            } else {
                None
            };
            if let Some(why) = why {
                self.regressions.push(format!(
                    "{key}: {why}: {}#{} (rev {}) -> {state}#{attempt} (rev {revision})",
                    prev.state, prev.attempt, prev.revision
                ));
            }
        }
        self.last.insert(key.to_string(), next);
    }

    fn state_of(&self, key: &str) -> String {
        self.last.get(key).map_or_else(
            || "no snapshot".to_string(),
            |seen| format!("{}#{}", seen.state, seen.attempt),
        )
    }

    fn is_terminal(&self, key: &str) -> bool {
        self.last.get(key).is_some_and(|seen| seen.rank == 3)
    }
}

/// Feeds every write to `job_status` into `checker` until `stop`, re-opening the watch
/// where it left off whenever it breaks (it does when its node dies).
async fn watch_status(bucket: kv::Store, checker: Arc<Mutex<Monotonic>>, stop: CancellationToken) {
    // The bucket is empty when the watch starts, so revision 1 is "everything".
    let mut from = 1;
    while !stop.is_cancelled() {
        let mut watch = match bucket.watch_all_from_revision(from).await {
            Ok(watch) => watch,
            Err(e) => {
                eprintln!("cluster: status watch could not open ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let entry = tokio::select! {
                () = stop.cancelled() => return,
                entry = watch.next() => entry,
            };
            match entry {
                Some(Ok(entry)) => {
                    let mut checker = checker.lock().expect("checker");
                    checker.observe(&entry.key, entry.revision, entry.operation, &entry.value);
                    from = checker.last_revision + 1;
                }
                Some(Err(e)) => {
                    eprintln!("cluster: status watch broke ({e}); re-opening");
                    break;
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod checker_tests {
    use super::*;

    fn put(checker: &mut Monotonic, rev: u64, state: &str, attempt: u64) {
        let value = serde_json::to_vec(&json!({"state": state, "attempt": attempt})).expect("json");
        checker.observe("job", rev, kv::Operation::Put, &value);
    }

    #[test]
    fn forward_moves_and_retries_are_fine() {
        let mut c = Monotonic::default();
        put(&mut c, 1, "queued", 0);
        put(&mut c, 2, "running", 1);
        put(&mut c, 3, "running", 1);
        put(&mut c, 4, "retrying", 1);
        put(&mut c, 5, "running", 2);
        put(&mut c, 6, "succeeded", 2);
        put(&mut c, 6, "succeeded", 2);
        assert!(c.regressions.is_empty(), "{:?}", c.regressions);
        assert!(c.is_terminal("job"));
    }

    #[test]
    fn backward_moves_are_regressions() {
        for (from, to) in [
            (("running", 1), ("queued", 0)),
            (("retrying", 1), ("running", 1)),
            (("running", 2), ("retrying", 1)),
            (("succeeded", 1), ("running", 2)),
            (("succeeded", 1), ("failed", 1)),
        ] {
            let mut c = Monotonic::default();
            put(&mut c, 1, from.0, from.1);
            put(&mut c, 2, to.0, to.1);
            assert_eq!(c.regressions.len(), 1, "{from:?} -> {to:?}");
        }
        let mut c = Monotonic::default();
        put(&mut c, 1, "queued", 0);
        c.observe("job", 2, kv::Operation::Delete, b"");
        assert_eq!(c.regressions.len(), 1);
    }
}
