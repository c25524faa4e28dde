//! The raw JetStream floor: the shape of a jetjobs job with nothing of jetjobs in it.
//!
//! A producer publishes each job to a work-queue stream and awaits its PubAck; a
//! processor pulls it, publishes a completion event and awaits that PubAck, then acks
//! the job; a projector pulls the event, puts the job's status into a KV bucket and
//! acks; the producer's KV watch sees the job done. Same file storage, same fsync
//! settings, same server as the system it is compared with — so `jetjobs ÷ floor` is
//! what jetjobs costs on top of what the broker must do anyway.
//!
//! Everything it creates is named `FLOOR_*` / `floor_*` and deleted when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::report::Percentiles;

const JOBS: &str = "FLOOR_JOBS";
const EVENTS: &str = "FLOOR_EVENTS";
const STATUS: &str = "floor_status";
/// Jobs the processor and the projector each work on at once, as a jetjobs processor's
/// run slots.
const SLOTS: usize = 64;

/// What one floor run measured.
#[derive(Clone, Debug, Serialize)]
pub struct FloorSummary {
    pub jobs: u64,
    pub concurrency: usize,
    /// Done jobs per second, from the first publish to the last job seen done.
    pub e2e_throughput: f64,
    pub e2e_secs: f64,
    /// From the publish to its PubAck.
    pub submit_latency_ms: Percentiles,
    /// From the publish to the job's status seen in KV.
    pub e2e_latency_ms: Percentiles,
}

impl std::fmt::Display for FloorSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "raw JetStream floor: {} jobs, concurrency {}: {:.1} jobs/s in {:.3} s",
            self.jobs, self.concurrency, self.e2e_throughput, self.e2e_secs
        )?;
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, p: &Percentiles| {
            writeln!(
                f,
                "  {name:<14}p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                p.p50, p.p99, p.max
            )
        };
        row(f, "submit", &self.submit_latency_ms)?;
        row(f, "submit->done", &self.e2e_latency_ms)
    }
}

/// Runs `jobs` jobs through the floor pipeline with `concurrency` publishes in flight.
pub async fn run(
    client: async_nats::Client,
    jobs: u64,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<FloorSummary> {
    let js = jetstream::new(client);
    let layout = Layout::create(&js).await?;
    let result = measure(&js, &layout, jobs, concurrency.max(1), timeout).await;
    layout.delete(&js).await;
    result
}

struct Layout {
    jobs: stream::Stream,
    events: stream::Stream,
    status: kv::Store,
}

impl Layout {
    async fn create(js: &jetstream::Context) -> anyhow::Result<Self> {
        // A leftover of an interrupted run would skew the count.
        let _ = js.delete_stream(JOBS).await;
        let _ = js.delete_stream(EVENTS).await;
        let _ = js.delete_key_value(STATUS).await;
        let jobs = js
            .create_stream(stream::Config {
                name: JOBS.to_string(),
                description: Some("jetjobs-floor: the raw pipeline's work queue".to_string()),
                subjects: vec!["floor.submit.>".to_string()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("creating FLOOR_JOBS")?;
        let events = js
            .create_stream(stream::Config {
                name: EVENTS.to_string(),
                description: Some("jetjobs-floor: the raw pipeline's events".to_string()),
                subjects: vec!["floor.events.>".to_string()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("creating FLOOR_EVENTS")?;
        let status = js
            .create_key_value(kv::Config {
                bucket: STATUS.to_string(),
                description: "jetjobs-floor: the raw pipeline's status".to_string(),
                history: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("creating floor_status")?;
        Ok(Self {
            jobs,
            events,
            status,
        })
    }

    async fn delete(&self, js: &jetstream::Context) {
        for name in [JOBS, EVENTS] {
            if let Err(e) = js.delete_stream(name).await {
                tracing::warn!(stream = name, error = %e, "Could not delete a floor stream.");
            }
        }
        if let Err(e) = js.delete_key_value(STATUS).await {
            tracing::warn!(error = %e, "Could not delete the floor bucket.");
        }
    }
}

async fn measure(
    js: &jetstream::Context,
    layout: &Layout,
    jobs: u64,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<FloorSummary> {
    let stop = CancellationToken::new();
    let workers = TaskTracker::new();
    let processor = pull_consumer(&layout.jobs, "floor-processor").await?;
    let projector = pull_consumer(&layout.events, "floor-projector").await?;
    workers.spawn(process(js.clone(), processor, stop.clone()));
    workers.spawn(project(layout.status.clone(), projector, stop.clone()));

    // Watched before the first publish, so no completion goes by unseen.
    let mut watch = layout
        .status
        .watch_all()
        .await
        .context("watching floor_status")?;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let (acked_tx, mut acked_rx) = mpsc::channel::<Duration>(concurrency * 4);
    let started = Instant::now();
    let producer = tokio::spawn(produce(
        js.clone(),
        jobs,
        concurrency,
        Arc::clone(&sent),
        acked_tx,
    ));

    let mut submit = Histogram::<u64>::new(3).context("histogram")?;
    let mut e2e = Histogram::<u64>::new(3).context("histogram")?;
    let mut done = 0u64;
    let mut last_done = started;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut acks_open = true;
    while done < jobs {
        tokio::select! {
            acked = acked_rx.recv(), if acks_open => match acked {
                Some(latency) => { let _ = submit.record(micros(latency)); }
                None => acks_open = false,
            },
            entry = watch.next() => {
                let entry = entry.context("the floor_status watch ended")?
                    .context("the floor_status watch failed")?;
                let Ok(n) = entry.key.parse::<u64>() else { continue };
                let Some(at) = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.remove(&n) else { continue };
                last_done = Instant::now();
                let _ = e2e.record(micros(last_done - at));
                done += 1;
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    while let Ok(latency) = acked_rx.try_recv() {
        let _ = submit.record(micros(latency));
    }
    stop.cancel();
    producer.abort();
    workers.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), workers.wait()).await;
    anyhow::ensure!(
        done == jobs,
        "only {done} of {jobs} floor jobs finished in time"
    );
    let e2e_secs = (last_done - started).as_secs_f64();
    Ok(FloorSummary {
        jobs,
        concurrency,
        e2e_throughput: if e2e_secs > 0.0 {
            jobs as f64 / e2e_secs
        } else {
            0.0
        },
        e2e_secs,
        submit_latency_ms: Percentiles::from_micros(&submit),
        e2e_latency_ms: Percentiles::from_micros(&e2e),
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

async fn pull_consumer(
    stream: &stream::Stream,
    name: &str,
) -> anyhow::Result<consumer::PullConsumer> {
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.to_string()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 1024,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating the consumer {name}"))
}

/// `concurrency` publishers, each publishing the next job and awaiting its PubAck.
async fn produce(
    js: jetstream::Context,
    jobs: u64,
    concurrency: usize,
    sent: Arc<Mutex<HashMap<u64, Instant>>>,
    acked: mpsc::Sender<Duration>,
) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publishers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (js, next, sent, acked) = (js.clone(), next.clone(), sent.clone(), acked.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= jobs {
                        return;
                    }
                    let at = Instant::now();
                    if let Ok(mut sent) = sent.lock() {
                        sent.insert(n, at);
                    }
                    let mut headers = HeaderMap::new();
                    headers.insert("Nats-Msg-Id", n.to_string().as_str());
                    let body = format!(r#"{{"id":{n},"kind":"noop","payload":{{}}}}"#);
                    let published = match js
                        .publish_with_headers(format!("floor.submit.{n}"), headers, body.into())
                        .await
                    {
                        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match published {
                        Ok(()) => {
                            let _ = acked.send(at.elapsed()).await;
                        }
                        Err(e) => tracing::warn!(job = n, error = %e, "Floor publish failed."),
                    }
                }
            })
        })
        .collect();
    for publisher in publishers {
        let _ = publisher.await;
    }
}

/// The processor: for each job, publish its completion event (PubAck awaited), then ack.
async fn process(js: jetstream::Context, jobs: consumer::PullConsumer, stop: CancellationToken) {
    each_message(jobs, stop, move |message, n| {
        let js = js.clone();
        async move {
            let event = format!(r#"{{"id":{n},"type":"succeeded","result":{{}}}}"#);
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{n}.succeeded").as_str());
            let stored = match js
                .publish_with_headers(format!("floor.events.{n}"), headers, event.into())
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if stored {
                let _ = message.ack().await;
            }
        }
    })
    .await;
}

/// The projector: for each event, put the job's status into KV (acked), then ack.
async fn project(status: kv::Store, events: consumer::PullConsumer, stop: CancellationToken) {
    each_message(events, stop, move |message, n| {
        let status = status.clone();
        async move {
            if status.put(&n, message.payload.clone()).await.is_ok() {
                let _ = message.ack().await;
            }
        }
    })
    .await;
}

/// Pulls until `stop`, running `handle(message, job number)` for each message with at
/// most [`SLOTS`] at once, as a jetjobs processor's run slots would.
async fn each_message<F, Fut>(consumer: consumer::PullConsumer, stop: CancellationToken, handle: F)
where
    F: Fn(jetstream::Message, String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(SLOTS));
    let Ok(mut messages) = consumer.messages().await else {
        tracing::warn!("A floor consumer could not pull.");
        return;
    };
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            next = messages.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => { tracing::warn!(error = %e, "Floor pull failed."); continue }
                None => return,
            },
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        // The job number is the subject's last token (`floor.<stage>.<n>`).
        let n = message
            .subject
            .rsplit('.')
            .next()
            .unwrap_or("0")
            .to_string();
        let work = handle(message, n);
        tokio::spawn(async move {
            work.await;
            drop(slot);
        });
    }
}

/// The machine's bound for the `hash` kind: the same kernel the processor runs, on every
/// core at once, with nothing else. Returns jobs per second.
pub fn hash_bound(size: u64, rounds: u64, duration: Duration) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let input = jetjobs_processor_cpu::kinds::hash::Input::Zeros(size);
    let input = Arc::new(input);
    let started = Instant::now();
    let done: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|_| {
                let input = Arc::clone(&input);
                scope.spawn(move || {
                    let mut n = 0u64;
                    while started.elapsed() < duration {
                        let _ = jetjobs_processor_cpu::kinds::hash::hash_rounds(
                            &input,
                            rounds,
                            |_, _| {},
                            || false,
                        );
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    done as f64 / started.elapsed().as_secs_f64()
}
