//! One load run: submit `jobs` jobs at `concurrency` while a `job_status` watch reports
//! which have finished, until all are settled, the timeout passes, or the run is stopped.
//!
//! Submitting and watching run in their own tasks and stamp their own times, so a busy
//! bookkeeping loop cannot inflate the latencies it records.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{StreamExt as _, stream};
use indicatif::{ProgressBar, ProgressStyle};
use jetjobs::JobState;
use jetjobs::layout::STATUS_BUCKET;
use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::args::Args;
use crate::report::Summary;
use crate::tracker::{Accepted, RunInfo, SubmitError, Submitted, Terminal, Tracker};

/// A submit request that takes longer than this counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// Terminal entries buffered between the watcher and the bookkeeping loop.
const TERMINAL_BUFFER: usize = 16 * 1024;

/// Runs the load until every job is settled or `--timeout-secs` pass.
pub async fn run(args: Args) -> anyhow::Result<Summary> {
    run_until(args, CancellationToken::new()).await
}

/// Like [`run`], and also stops when `stop` is cancelled; the summary then covers what
/// happened so far.
pub async fn run_until(args: Args, stop: CancellationToken) -> anyhow::Result<Summary> {
    let body = serde_json::to_vec(&serde_json::json!({
        "kind": args.kind,
        "payload": args.payload,
    }))
    .context("encoding the job body")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;

    // Before the watch below, so the waiters' own jobs are not counted.
    let waiting = CancellationToken::new();
    let _stop_waiting = waiting.clone().drop_guard();
    if args.waiters > 0 {
        crate::waiters::hold(&args.url, args.waiters, waiting.clone()).await?;
    }
    let (terminal_tx, mut terminal_rx) = mpsc::channel(TERMINAL_BUFFER);
    // Without a watcher, the channel stays open (and silent) until the run ends.
    let mut watcher = if args.submit_only {
        let idle = terminal_tx;
        tokio::spawn(async move {
            idle.closed().await;
            String::new()
        })
    } else {
        let nats = args.nats.connect(crate::NAME).await?;
        let bucket = jetstream::new(nats)
            .get_key_value(STATUS_BUCKET)
            .await
            .with_context(|| {
                format!("cannot open the KV bucket {STATUS_BUCKET}; is the layout provisioned?")
            })?;
        // Started before the first submit, so no outcome can go by unseen.
        let watch = bucket
            .watch_all()
            .await
            .with_context(|| format!("cannot watch the KV bucket {STATUS_BUCKET}"))?;
        tokio::spawn(watch_terminal(watch, terminal_tx))
    };

    // Clap refuses 0, but `Args` is a plain struct too: 0 would never submit anything.
    let concurrency = args.concurrency.max(1);
    let started = Instant::now();
    let (submitted_tx, mut submitted_rx) = mpsc::channel(concurrency.saturating_mul(4));
    let submitter = tokio::spawn(submit_all(
        http,
        args.submit_url(),
        Bytes::from(body),
        args.jobs,
        concurrency,
        submitted_tx,
    ));

    let bar = progress_bar(&args);
    let mut tracker = Tracker::new(args.jobs);
    let deadline = tokio::time::sleep(Duration::from_secs(args.timeout_secs));
    tokio::pin!(deadline);
    let mut redraw = tokio::time::interval(REDRAW_EVERY);
    let stopped_by = loop {
        if tracker.all_settled(args.jobs) || (args.submit_only && tracker.answered() >= args.jobs) {
            break None;
        }
        tokio::select! {
            Some(submitted) = submitted_rx.recv() => tracker.on_submitted(submitted),
            terminal = terminal_rx.recv() => match terminal {
                Some(terminal) => tracker.on_terminal(terminal),
                None => {
                    let reason = (&mut watcher)
                        .await
                        .unwrap_or_else(|e| format!("the job_status watcher crashed: {e}"));
                    break Some(reason);
                }
            },
            _ = redraw.tick() => draw(&bar, &tracker, args.jobs),
            () = &mut deadline => break Some(format!("timeout after {} s", args.timeout_secs)),
            () = stop.cancelled() => break Some("interrupted".to_string()),
        }
    };
    let ended = Instant::now();
    submitter.abort();
    watcher.abort();
    draw(&bar, &tracker, args.jobs);
    bar.finish_and_clear();

    Ok(tracker.summary(
        RunInfo {
            kind: args.kind,
            jobs: args.jobs,
            concurrency: args.concurrency,
            submit_only: args.submit_only,
            stopped_by,
        },
        started,
        ended,
    ))
}

async fn submit_all(
    http: reqwest::Client,
    url: Url,
    body: Bytes,
    jobs: u64,
    concurrency: usize,
    answers: mpsc::Sender<Submitted>,
) {
    let mut requests = stream::iter(0..jobs)
        .map(|_| submit(&http, &url, body.clone()))
        .buffer_unordered(concurrency);
    while let Some(answer) = requests.next().await {
        if answers.send(answer).await.is_err() {
            return; // the run is over
        }
    }
}

async fn submit(http: &reqwest::Client, url: &Url, body: Bytes) -> Submitted {
    let sent_at = Instant::now();
    let outcome = post_job(http, url, body).await;
    Submitted {
        sent_at,
        received_at: Instant::now(),
        outcome,
    }
}

async fn post_job(http: &reqwest::Client, url: &Url, body: Bytes) -> Result<Accepted, SubmitError> {
    let response = http
        .post(url.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| SubmitError::Transport(error_chain(&e)))?;
    let status = response.status();
    // Read to the end whatever the status, so the connection goes back to the pool.
    let bytes = response
        .bytes()
        .await
        .map_err(|e| SubmitError::Transport(error_chain(&e)))?;
    if !status.is_success() {
        return Err(SubmitError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        SubmitError::InvalidBody(format!(
            "status {status} with a body that is not a job snapshot: {e}"
        ))
    })
}

/// The fields of a `job_status` snapshot that tell whether a job is over.
#[derive(serde::Deserialize)]
struct StatusEntry {
    id: Uuid,
    state: JobState,
}

/// Forwards every terminal entry of the bucket; returns why the watch ended.
async fn watch_terminal(mut watch: kv::Watch, terminal: mpsc::Sender<Terminal>) -> String {
    while let Some(entry) = watch.next().await {
        let entry = match entry {
            Ok(entry) => entry,
            // The ordered consumer already recovers from what it can; this is fatal.
            Err(e) => return format!("the job_status watch failed: {}", error_chain(&e)),
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let seen_at = Instant::now();
        let status: StatusEntry = match serde_json::from_slice(&entry.value) {
            Ok(status) => status,
            Err(e) => {
                tracing::debug!(key = %entry.key, error = %e, "Skipping a job_status entry that is not a snapshot.");
                continue;
            }
        };
        if status.state.is_terminal()
            && terminal
                .send(Terminal {
                    id: status.id,
                    state: status.state,
                    seen_at,
                })
                .await
                .is_err()
        {
            break; // the run is over
        }
    }
    "the job_status watch ended".to_string()
}

fn progress_bar(args: &Args) -> ProgressBar {
    if !args.show_progress() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(args.jobs);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} done  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Updated on a timer rather than per event: cheap at any rate of jobs.
fn draw(bar: &ProgressBar, tracker: &Tracker, jobs: u64) {
    bar.set_position(tracker.done());
    bar.set_message(format!(
        "submitted {}/{jobs}, errors {}",
        tracker.answered(),
        tracker.errors()
    ));
}

/// An error with its causes, which for reqwest and NATS is where the useful part is.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
