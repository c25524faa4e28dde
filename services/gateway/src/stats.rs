//! `GET /v1/stats` (and `GET /v1/stats/events`, the same every second as Server-Sent
//! Events): the queues at a glance — per kind, per durable consumer, per processor
//! replica — and the rates of the last minute.
//!
//! Where each number comes from, and why it is cheap:
//! - waiting, scheduled and dead-lettered per kind: one batched direct get of one message
//!   on the kind's subjects in `JOBS`, `JOBS_SCHEDULES` and `JOBS_DEAD`; its
//!   `Nats-Num-Pending` counts the rest (the server's subject index, no scan by us);
//! - consumers: one `CONSUMER.LIST` per stream;
//! - running, held (ack-pending), redelivered per kind, and succeeded/failed counts: the
//!   processors' presence records (KV `job_workers`, `jetjobs::presence`), which this
//!   gateway watches, so they cost nothing per request;
//! - rates: a sample every [`SAMPLE_EVERY`] of `JOBS_INDEX`'s last sequence (one entry per
//!   job created) and the replicas' counters, kept for [`WINDOW`].
//!
//! A document is kept for [`FRESH_FOR`]: many pollers and dashboards cost what one does.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use jetjobs::Kind;
use jetjobs::direct;
use jetjobs::layout;
use jetjobs::presence::WorkerRecord;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::ApiError;
use crate::submit::nats_unavailable;

/// The rates' window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How far back `GET /v1/stats/history` goes.
pub const HISTORY: Duration = Duration::from_secs(15 * 60);
/// The spacing of its points.
const STEP: Duration = Duration::from_secs(10);
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How long one computed document answers every request.
const FRESH_FOR: Duration = Duration::from_millis(500);
/// How often `GET /v1/stats/events` sends the document.
const STREAM_EVERY: Duration = Duration::from_secs(1);
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A pull consumer with no waiting pull and no delivery for this long has no processor.
const IDLE_AFTER: Duration = Duration::from_secs(30);

/// The body of `GET /v1/stats`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub at: DateTime<Utc>,
    pub kinds: Vec<KindStats>,
    pub consumers: Vec<ConsumerStats>,
    pub processors: Vec<ProcessorStats>,
    pub rates: Rates,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KindStats {
    pub kind: String,
    /// In `JOBS`, not yet delivered to a processor or waiting for a redelivery.
    pub waiting: u64,
    /// Delayed jobs waiting for their time in `JOBS_SCHEDULES`.
    pub scheduled: u64,
    /// Handlers running now.
    pub running: u64,
    /// Held by processors unacked (running or waiting for a run slot).
    pub ack_pending: u64,
    /// Of those, the ones delivered more than once.
    pub redelivered: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsumerStats {
    pub stream: String,
    pub name: String,
    pub pending: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
    pub waiting_pulls: u64,
    pub last_active: Option<DateTime<Utc>>,
    /// Some client pulls from it now, or took a message in the last 30 s; for a
    /// processor's consumers, also while one of its replicas is alive (its presence).
    pub connected: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProcessorStats {
    pub name: String,
    pub instance: String,
    pub kinds: Vec<String>,
    pub running: u64,
    pub concurrency: usize,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rates {
    pub window_secs: u64,
    pub submitted_per_sec: f64,
    pub succeeded_per_sec: f64,
    pub failed_per_sec: f64,
    /// The mean time from submission (or `run_at`) to success of the jobs that succeeded
    /// in the window, in milliseconds; null if none did.
    pub latency_ms: Option<f64>,
}

/// One point of `GET /v1/stats/history`: the rates over the step that ends at `at`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Point {
    pub at: DateTime<Utc>,
    pub submitted_per_sec: f64,
    pub succeeded_per_sec: f64,
    pub failed_per_sec: f64,
    pub latency_ms: Option<f64>,
}

/// The body of `GET /v1/stats/history`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatsHistory {
    pub step_secs: u64,
    /// Oldest first; as far back as this gateway has been sampling, at most 15 minutes.
    pub points: Vec<Point>,
}

/// What the gateway keeps between requests.
#[derive(Default)]
pub struct Tracker {
    /// Presence records by key, with when this gateway last heard of each.
    workers: Mutex<HashMap<String, (Instant, WorkerRecord)>>,
    samples: Mutex<VecDeque<Sample>>,
    cached: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
}

struct Sample {
    at: Instant,
    wall: DateTime<Utc>,
    /// `JOBS_INDEX`'s last sequence: jobs created so far.
    created: u64,
    /// Per replica, since it started.
    outcomes: HashMap<String, Outcomes>,
}

#[derive(Clone, Copy, Default)]
struct Outcomes {
    succeeded: u64,
    failed: u64,
    latency_ms_total: u64,
}

/// What happened between two samples.
struct Between {
    seconds: f64,
    created: u64,
    succeeded: u64,
    failed: u64,
    latency_ms_total: u64,
}

impl Between {
    fn of(old: &Sample, new: &Sample) -> Self {
        let mut sum = Outcomes::default();
        for (key, now) in &new.outcomes {
            // A replica that started in between counts from zero.
            let then = old.outcomes.get(key).copied().unwrap_or_default();
            sum.succeeded += now.succeeded.saturating_sub(then.succeeded);
            sum.failed += now.failed.saturating_sub(then.failed);
            sum.latency_ms_total += now.latency_ms_total.saturating_sub(then.latency_ms_total);
        }
        Self {
            seconds: new.at.duration_since(old.at).as_secs_f64(),
            created: new.created.saturating_sub(old.created),
            succeeded: sum.succeeded,
            failed: sum.failed,
            latency_ms_total: sum.latency_ms_total,
        }
    }

    fn per_sec(&self, n: u64) -> f64 {
        if self.seconds > 0.0 {
            n as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The mean time from submission to success of the jobs that succeeded in between.
    fn latency_ms(&self) -> Option<f64> {
        (self.succeeded > 0).then(|| self.latency_ms_total as f64 / self.succeeded as f64)
    }
}

impl Tracker {
    fn live_workers(&self) -> Vec<WorkerRecord> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        // The bucket's max age removes a dead replica's record without telling watchers.
        workers.retain(|_, (heard, _)| heard.elapsed() < jetjobs::presence::TTL);
        let mut records: Vec<WorkerRecord> = workers.values().map(|(_, r)| r.clone()).collect();
        records.sort_by(|a, b| (&a.name, &a.instance).cmp(&(&b.name, &b.instance)));
        records
    }

    fn rates(&self) -> Rates {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let Some(newest) = samples.back() else {
            return Rates::zero();
        };
        let Some(oldest) = samples
            .iter()
            .find(|s| newest.at.duration_since(s.at) <= WINDOW)
        else {
            return Rates::zero();
        };
        let between = Between::of(oldest, newest);
        Rates {
            window_secs: WINDOW.as_secs(),
            submitted_per_sec: between.per_sec(between.created),
            succeeded_per_sec: between.per_sec(between.succeeded),
            failed_per_sec: between.per_sec(between.failed),
            latency_ms: between.latency_ms(),
        }
    }

    /// Points [`STEP`] apart over the last [`HISTORY`], oldest first.
    fn points(&self) -> Vec<Point> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut points = Vec::new();
        let mut last: Option<&Sample> = None;
        for sample in samples.iter() {
            let Some(previous) = last else {
                last = Some(sample);
                continue;
            };
            if sample.at.duration_since(previous.at) < STEP {
                continue;
            }
            let between = Between::of(previous, sample);
            points.push(Point {
                at: sample.wall,
                submitted_per_sec: between.per_sec(between.created),
                succeeded_per_sec: between.per_sec(between.succeeded),
                failed_per_sec: between.per_sec(between.failed),
                latency_ms: between.latency_ms(),
            });
            last = Some(sample);
        }
        points
    }
}

impl Rates {
    fn zero() -> Self {
        Self {
            window_secs: WINDOW.as_secs(),
            submitted_per_sec: 0.0,
            succeeded_per_sec: 0.0,
            failed_per_sec: 0.0,
            latency_ms: None,
        }
    }
}

/// Watches the processors' presence and samples the counters until `shutdown`.
pub async fn run(state: AppState, workers: kv::Store, shutdown: CancellationToken) {
    let watching = tokio::spawn(watch_workers(
        Arc::clone(&state.stats),
        workers,
        shutdown.clone(),
    ));
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let created =
            match tokio::time::timeout(READ_TIMEOUT, state.js.get_stream(layout::INDEX_STREAM))
                .await
            {
                Ok(Ok(stream)) => stream.cached_info().state.last_sequence,
                _ => continue,
            };
        let outcomes = state
            .stats
            .live_workers()
            .into_iter()
            .map(|r| {
                let sum = r
                    .kinds
                    .values()
                    .fold(Outcomes::default(), |sum, k| Outcomes {
                        succeeded: sum.succeeded + k.succeeded,
                        failed: sum.failed + k.failed,
                        latency_ms_total: sum.latency_ms_total + k.latency_ms_total,
                    });
                (format!("{}.{}", r.name, r.instance), sum)
            })
            .collect();
        let mut samples = state
            .stats
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        samples.push_back(Sample {
            at: now,
            wall: Utc::now(),
            created,
            outcomes,
        });
        while samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) > HISTORY)
        {
            samples.pop_front();
        }
    }
    watching.abort();
}

async fn watch_workers(tracker: Arc<Tracker>, bucket: kv::Store, shutdown: CancellationToken) {
    loop {
        let mut watch = match bucket.watch_with_history(">").await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::debug!(error = %e, "Cannot watch job_workers; trying again.");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = watch.next() => next,
            };
            let Some(Ok(entry)) = next else { break };
            let mut workers = tracker.workers.lock().unwrap_or_else(|e| e.into_inner());
            match entry.operation {
                kv::Operation::Put => {
                    if let Ok(record) = serde_json::from_slice::<WorkerRecord>(&entry.value) {
                        workers.insert(entry.key, (Instant::now(), record));
                    }
                }
                kv::Operation::Delete | kv::Operation::Purge => {
                    workers.remove(&entry.key);
                }
            }
        }
        // The watch ended (NATS went away): start again, with the history.
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// `GET /v1/stats`.
#[utoipa::path(
    get,
    path = "/v1/stats",
    operation_id = "stats",
    tag = "stats",
    summary = "The queues at a glance",
    description = "Per kind: waiting, scheduled, running, held unacked, redelivered, \
        dead-lettered. Per durable consumer: pending, ack-pending, redelivered, waiting \
        pulls, last activity, whether a processor is connected. Per processor replica: what \
        it runs. And the rates of the last minute. Cheap: fine to poll every second.",
    responses(
        (status = 200, description = "The numbers now.", body = Stats),
        (status = 503, description = "NATS is unavailable; retry.", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds."))),
    )
)]
pub async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let body = document(&state).await?;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// `GET /v1/stats/history`.
#[utoipa::path(
    get,
    path = "/v1/stats/history",
    operation_id = "statsHistory",
    tag = "stats",
    summary = "Throughput and latency of the last 15 minutes",
    description = "Points 10 s apart, oldest first: jobs submitted, succeeded and failed per \
        second, and the mean time from submission to success. Kept in this gateway's memory \
        since it started (at most 15 minutes); another replica has its own.",
    responses(
        (status = 200, description = "The points.", body = StatsHistory),
    )
)]
pub async fn history(State(state): State<AppState>) -> Response {
    axum::Json(StatsHistory {
        step_secs: STEP.as_secs(),
        points: state.stats.points(),
    })
    .into_response()
}

/// `GET /v1/stats/events`: the stats document now and then every second.
#[utoipa::path(
    get,
    path = "/v1/stats/events",
    operation_id = "streamStats",
    tag = "stats",
    summary = "The queues, live (Server-Sent Events)",
    description = "An `event: stats` whose `data` is the `GET /v1/stats` document, at once and \
        then every second. Counts against `JETJOBS_MAX_EVENT_STREAMS`.",
    responses(
        (status = 200, description = "The stream.", content_type = "text/event-stream", body = String),
        (status = 503, description = "Too many event streams, or NATS is unavailable.", body = crate::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds."))),
    )
)]
pub async fn stream(State(state): State<AppState>) -> Result<Response, ApiError> {
    let permit = state
        .push
        .event_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::unavailable(
                "too many event streams are open on this gateway; retry later",
                5,
            )
        })?;
    // Fails now, as a problem, rather than as an empty stream.
    let first = document(&state).await?;
    let shutdown = state.push.shutdown.clone();
    let keepalive = state.push.sse_keepalive;
    let events = futures::stream::unfold(
        (state, Some(first), permit),
        move |(state, first, permit)| {
            let shutdown = shutdown.clone();
            async move {
                let body = match first {
                    Some(body) => body,
                    None => {
                        tokio::select! {
                            () = shutdown.cancelled() => return None,
                            () = tokio::time::sleep(STREAM_EVERY) => {}
                        }
                        // A failed read skips a beat; the stream goes on.
                        loop {
                            match document(&state).await {
                                Ok(body) => break body,
                                Err(_) => tokio::select! {
                                    () = shutdown.cancelled() => return None,
                                    () = tokio::time::sleep(STREAM_EVERY) => {}
                                },
                            }
                        }
                    }
                };
                let text = String::from_utf8_lossy(&body).into_owned();
                let event = Event::default().event("stats").data(text);
                Some((Ok::<_, Infallible>(event), (state, None, permit)))
            }
        },
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

async fn document(state: &AppState) -> Result<Bytes, ApiError> {
    let mut cached = state.stats.cached.lock().await;
    if let Some((at, body)) = cached.as_ref()
        && at.elapsed() < FRESH_FOR
    {
        return Ok(body.clone());
    }
    let stats = compute(state).await?;
    let body =
        Bytes::from(serde_json::to_vec(&stats).map_err(|e| ApiError::internal(e.to_string()))?);
    *cached = Some((Instant::now(), body.clone()));
    Ok(body)
}

async fn compute(state: &AppState) -> Result<Stats, ApiError> {
    let names = state
        .kinds
        .all()
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the kind registry: {e}"), 1))?;
    let mut kinds: Vec<Kind> = names.iter().filter_map(|n| Kind::new(n).ok()).collect();
    kinds.sort();
    let workers = state.stats.live_workers();
    let mut activity: BTreeMap<String, jetjobs::presence::KindActivity> = BTreeMap::new();
    for record in &workers {
        for (kind, a) in &record.kinds {
            let sum = activity.entry(kind.clone()).or_default();
            sum.held += a.held;
            sum.redelivered += a.redelivered;
            sum.running += a.running;
        }
    }
    let activity = &activity;
    let counted = futures::future::try_join_all(kinds.iter().map(|kind| async move {
        let (in_stream, scheduled, dead_lettered) = tokio::try_join!(
            count(state, layout::JOBS_STREAM, format!("jobs.submit.{kind}.>")),
            count(state, layout::SCHEDULES_STREAM, format!("jobs.at.{kind}.*")),
            count(state, layout::DEAD_STREAM, format!("jobs.dead.{kind}.*")),
        )?;
        let a = activity.get(kind.as_str()).copied().unwrap_or_default();
        Ok::<_, ApiError>(KindStats {
            kind: kind.to_string(),
            // A work-queue stream keeps a message until it is acked: the ones processors
            // hold are in the stream too.
            waiting: in_stream.saturating_sub(a.held),
            scheduled,
            running: a.running,
            ack_pending: a.held,
            redelivered: a.redelivered,
            dead_lettered,
        })
    }))
    .await?;
    let mut consumers = Vec::new();
    for stream in [
        layout::JOBS_STREAM,
        layout::EVENTS_STREAM,
        layout::SCHEDULES_STREAM,
    ] {
        consumers.extend(list_consumers(state, stream).await?);
    }
    // A processor's low-priority lane only fetches when nothing else waits: idle, it
    // shows no pull. Its replicas' presence says whether they are there.
    for consumer in &mut consumers {
        let processor = consumer
            .name
            .trim_end_matches("-high")
            .trim_end_matches("-low");
        if consumer.stream == layout::JOBS_STREAM && workers.iter().any(|w| w.name == processor) {
            consumer.connected = true;
        }
    }
    let processors = workers
        .into_iter()
        .map(|r| ProcessorStats {
            running: r.kinds.values().map(|k| k.running).sum(),
            kinds: r.kinds.keys().cloned().collect(),
            name: r.name,
            instance: r.instance,
            concurrency: r.concurrency,
            started_at: r.started_at,
            seen_at: r.seen_at,
        })
        .collect();
    Ok(Stats {
        at: jetjobs::job::now(),
        kinds: counted,
        consumers,
        processors,
        rates: state.stats.rates(),
    })
}

/// Messages on `filter` in `stream` (`direct::count`).
async fn count(state: &AppState, stream: &str, filter: String) -> Result<u64, ApiError> {
    direct::count(&state.client, stream, filter, READ_TIMEOUT)
        .await
        .map_err(|e| nats_unavailable("counting jobs", e))
}

/// `$JS.API.CONSUMER.LIST.<stream>`, read as JSON here: async-nats's consumer info has a
/// time type that depends on a crate feature somewhere in the build.
#[derive(Deserialize)]
struct ConsumerList {
    #[serde(default)]
    consumers: Vec<ConsumerInfo>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ConsumerInfo {
    name: String,
    #[serde(default)]
    config: ConsumerConfig,
    #[serde(default)]
    num_pending: u64,
    #[serde(default)]
    num_ack_pending: u64,
    #[serde(default)]
    num_redelivered: u64,
    #[serde(default)]
    num_waiting: u64,
    #[serde(default)]
    delivered: Option<Delivered>,
}

#[derive(Default, Deserialize)]
struct ConsumerConfig {
    #[serde(default)]
    durable_name: Option<String>,
}

#[derive(Deserialize)]
struct Delivered {
    #[serde(default)]
    last_active: Option<DateTime<Utc>>,
}

async fn list_consumers(state: &AppState, stream: &str) -> Result<Vec<ConsumerStats>, ApiError> {
    let reply = tokio::time::timeout(
        READ_TIMEOUT,
        state.client.request(
            format!("$JS.API.CONSUMER.LIST.{stream}"),
            Bytes::from_static(b"{\"offset\":0}"),
        ),
    )
    .await
    .map_err(|_| ApiError::unavailable("listing consumers timed out", 1))?
    .map_err(|e| nats_unavailable("listing consumers", e))?;
    let list: ConsumerList = serde_json::from_slice(&reply.payload)
        .map_err(|e| nats_unavailable("listing consumers", e))?;
    if let Some(error) = list.error {
        return Err(nats_unavailable("listing consumers", error));
    }
    let now = Utc::now();
    let mut consumers: Vec<ConsumerStats> = list
        .consumers
        .into_iter()
        // Ordered consumers (KV watches, an operator's `nats stream view`) come and go.
        .filter(|c| c.config.durable_name.is_some())
        .map(|c| {
            let last_active = c.delivered.and_then(|d| d.last_active);
            let recent = last_active
                .is_some_and(|t| (now - t).to_std().unwrap_or_default() < IDLE_AFTER || t > now);
            ConsumerStats {
                stream: stream.to_string(),
                name: c.name,
                pending: c.num_pending,
                ack_pending: c.num_ack_pending,
                redelivered: c.num_redelivered,
                waiting_pulls: c.num_waiting,
                connected: c.num_waiting > 0 || recent,
                last_active,
            }
        })
        .collect();
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(consumers)
}
