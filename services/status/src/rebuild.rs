//! `jetjobs-status --rebuild`: recreates the `job_status` projection from the streams.
//!
//! Every pass is streamed (memory stays bounded by the shard queues) and only ever moves a
//! snapshot forward, so a rebuild is safe on an existing bucket and next to a running
//! status service:
//!
//! 1. each new job waiting in `JOBS` gets its `queued` snapshot, create-only. `JOBS` is a
//!    work-queue stream, so it is read by sequence (direct get), never through a consumer,
//!    which would take the jobs away from the processors;
//! 2. every event of `JOB_EVENTS`, from the first, goes through the live service's shards
//!    ([`crate::projector`]): the same state machine and the same compare-and-set writes;
//! 3. each retried job still waiting in `JOBS` whose history was not in the events (it
//!    expired) gets its `queued` snapshot, create-only.
//!
//! Why this order: a job leaves `JOBS` only after its outcome event is stored, so a job
//! gone from `JOBS` by the time pass 1 reaches it has its outcome among the events of
//! pass 2 (whose end is taken after pass 1): no job that existed at the start is missed.
//! A new job's `queued` snapshot is exactly what its events start from, so it may come
//! first; a retried job's (queued again after attempt k) stands after everything attempt
//! k did, so written first it would hide the job's failures from the replay: it comes last.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
    kv,
    message::StreamMessage,
    stream::{DirectGetErrorKind, RawMessageErrorKind},
};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use jetjobs::layout::{self, ProvisionError, Requirement};
use jetjobs::state::JobSnapshot;
use jetjobs::{JobRequest, subjects};
use tokio_util::sync::CancellationToken;

use crate::projector::{Mode, Projector, Stats};

/// `queued` snapshots being written at once.
const QUEUED_IN_FLIGHT: usize = 32;
/// Consecutive errors from the event consumer before the rebuild gives up.
const MAX_READ_ERRORS: u32 = 10;
/// Without an event for this long, check whether the rest of the stream is still there.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// What to rebuild, and with how many shards.
#[derive(Clone, Debug)]
pub struct Options {
    /// The bucket to write; created like `job_status` if missing.
    pub bucket: String,
    pub shards: usize,
    pub shard_buffer: usize,
    pub cache_per_shard: usize,
}

impl Options {
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            shards: 16,
            shard_buffer: 256,
            cache_per_shard: 4_096,
        }
    }
}

/// What a rebuild did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub bucket: String,
    /// The bucket did not exist and was created like `job_status`.
    pub created_bucket: bool,
    /// Requests found waiting in `JOBS`, and the `queued` snapshots created for them
    /// (the others already had a snapshot).
    pub jobs_waiting: u64,
    pub queued_written: u64,
    /// Last `JOB_EVENTS` sequence when the replay started: where it stopped.
    pub events_until: u64,
    pub events_read: u64,
    /// Snapshots written by projecting events (events of one job read together are
    /// folded into one write).
    pub snapshots_written: u64,
    /// Keys in the bucket at the end: one per job.
    pub jobs: u64,
    /// Messages that are not valid job requests or events, skipped.
    pub undecodable: u64,
    /// Jobs or events whose snapshot could not be written; run the rebuild again.
    pub failed: u64,
    /// Stopped by a signal before catching up.
    pub interrupted: bool,
}

impl Report {
    /// Everything was read and written: the bucket reflects the streams as of the start.
    pub fn is_complete(&self) -> bool {
        self.failed == 0 && !self.interrupted
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let created = if self.created_bucket {
            " (created)"
        } else {
            ""
        };
        writeln!(f, "Rebuilt KV bucket {}{created}:", self.bucket)?;
        writeln!(
            f,
            "  events read:        {} (JOB_EVENTS up to sequence {})",
            self.events_read, self.events_until
        )?;
        writeln!(f, "  snapshots written:  {}", self.snapshots_written)?;
        writeln!(
            f,
            "  jobs waiting:       {} in JOBS ({} queued snapshots written)",
            self.jobs_waiting, self.queued_written
        )?;
        writeln!(f, "  jobs in the bucket: {}", self.jobs)?;
        if self.undecodable > 0 {
            writeln!(
                f,
                "  skipped:            {} undecodable messages",
                self.undecodable
            )?;
        }
        if self.failed > 0 {
            writeln!(
                f,
                "  FAILED:             {} writes (see the log); run the rebuild again",
                self.failed
            )?;
        }
        if self.interrupted {
            writeln!(f, "  INTERRUPTED before catching up; run the rebuild again")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Layout(#[from] ProvisionError),
    #[error(
        "KV bucket {0} does not exist and neither does {template} to copy its configuration from; \
         run `jetjobs-admin provision` first",
        template = layout::STATUS_BUCKET
    )]
    NoBucket(String),
    #[error("{what}: {source}")]
    Nats {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "reading {stream} failed {MAX_READ_ERRORS} times in a row (at sequence {at} of {until}): {last}",
        stream = layout::EVENTS_STREAM
    )]
    Read { at: u64, until: u64, last: String },
}

fn nats_err<E>(what: impl Into<String>) -> impl FnOnce(E) -> RebuildError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let what = what.into();
    move |source| RebuildError::Nats {
        what,
        source: Box::new(source),
    }
}

/// Rebuilds `options.bucket` from `JOBS` and `JOB_EVENTS` as they are when it starts,
/// and returns once it has caught up (or `shutdown` is cancelled: see
/// [`Report::interrupted`]).
pub async fn rebuild(
    js: &jetstream::Context,
    options: &Options,
    shutdown: &CancellationToken,
) -> Result<Report, RebuildError> {
    layout::require(
        js,
        &[
            Requirement::Stream(layout::JOBS_STREAM),
            Requirement::Stream(layout::EVENTS_STREAM),
        ],
    )
    .await?;
    let (bucket, created_bucket) = open_or_create(js, &options.bucket).await?;
    let mut report = Report {
        bucket: options.bucket.clone(),
        created_bucket,
        ..Report::default()
    };
    tracing::info!(bucket = %options.bucket, created_bucket, "Rebuilding the status projection.");

    let mut jobs = js
        .get_stream(layout::JOBS_STREAM)
        .await
        .map_err(nats_err(format!("opening stream {}", layout::JOBS_STREAM)))?;
    let range = jobs_range(&mut jobs).await?;
    let mut retried = 0;
    if let Some(range) = range {
        retried =
            queue_waiting_jobs(&jobs, range, Waiting::New, &bucket, &mut report, shutdown).await?;
    }
    // Delayed jobs not yet due wait in JOBS_SCHEDULES: `scheduled` snapshots for them
    // (a deployment provisioned before schedules existed has no such stream).
    if !report.interrupted
        && let Ok(mut schedules) = js.get_stream(layout::SCHEDULES_STREAM).await
        && let Some(range) = jobs_range(&mut schedules).await?
    {
        let range = JobsRange {
            subject: "jobs.at.>",
            ..range
        };
        queue_waiting_jobs(
            &schedules,
            range,
            Waiting::New,
            &bucket,
            &mut report,
            shutdown,
        )
        .await?;
    }
    if !report.interrupted {
        replay_events(js, &bucket, options, &mut report, shutdown).await?;
    }
    if let Some(range) = range.filter(|_| retried > 0 && !report.interrupted) {
        queue_waiting_jobs(
            &jobs,
            range,
            Waiting::Retried,
            &bucket,
            &mut report,
            shutdown,
        )
        .await?;
    }

    let mut stream = js
        .get_stream(layout::bucket_stream(&options.bucket))
        .await
        .map_err(nats_err(format!("opening KV bucket {}", options.bucket)))?;
    report.jobs = stream
        .info()
        .await
        .map_err(nats_err(format!("reading KV bucket {}", options.bucket)))?
        .state
        .subjects_count;
    tracing::info!(
        events = report.events_read,
        writes = report.snapshots_written + report.queued_written,
        jobs = report.jobs,
        failed = report.failed,
        "Rebuild finished."
    );
    Ok(report)
}

/// Opens the bucket, or creates it like `job_status` (as provisioned, so replicas, limits
/// and storage match what the operator chose).
async fn open_or_create(
    js: &jetstream::Context,
    name: &str,
) -> Result<(kv::Store, bool), RebuildError> {
    let description = format!(
        "jetjobs job snapshots rebuilt from the streams (like {})",
        layout::STATUS_BUCKET
    );
    match layout::open_or_create_bucket_like(js, name, layout::STATUS_BUCKET, &description).await {
        Ok(opened) => Ok(opened),
        Err(ProvisionError::Missing(_)) => Err(RebuildError::NoBucket(name.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Which requests in `JOBS` a scan writes `queued` snapshots for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// New jobs (pass 1); also counts every waiting job.
    New,
    /// Jobs queued again by a retry (pass 3).
    Retried,
}

/// The part of `JOBS` a rebuild covers: what was there when it started.
#[derive(Clone, Copy, Debug)]
struct JobsRange {
    first: u64,
    last: u64,
    direct: bool,
    /// The requests' subjects: `jobs.submit.>` in `JOBS`, `jobs.at.>` (delayed jobs not
    /// yet due) in `JOBS_SCHEDULES`.
    subject: &'static str,
}

async fn jobs_range(
    stream: &mut jetstream::stream::Stream,
) -> Result<Option<JobsRange>, RebuildError> {
    let info = stream
        .info()
        .await
        .map_err(nats_err(format!("reading stream {}", layout::JOBS_STREAM)))?;
    Ok((info.state.messages > 0).then_some(JobsRange {
        first: info.state.first_sequence,
        last: info.state.last_sequence,
        direct: info.config.allow_direct,
        subject: subjects::SUBMIT_ALL,
    }))
}

/// The first request in `JOBS` at or after `sequence`, skipping the gaps acked jobs leave.
async fn next_request(
    stream: &jetstream::stream::Stream,
    range: JobsRange,
    sequence: u64,
) -> Result<Option<StreamMessage>, RebuildError> {
    let what = || {
        format!(
            "reading stream {} at sequence {sequence}",
            layout::JOBS_STREAM
        )
    };
    if range.direct {
        match stream
            .direct_get_next_for_subject(range.subject, Some(sequence))
            .await
        {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(nats_err(what())(e)),
        }
    } else {
        match stream
            .get_first_raw_message_by_subject(range.subject, sequence)
            .await
        {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats_err(what())(e)),
        }
    }
}

/// Passes 1 and 3: a `queued` snapshot (create-only) for each `which` request in `JOBS`.
/// Returns how many requests of the other sort it saw.
async fn queue_waiting_jobs(
    stream: &jetstream::stream::Stream,
    range: JobsRange,
    which: Waiting,
    bucket: &kv::Store,
    report: &mut Report,
    shutdown: &CancellationToken,
) -> Result<u64, RebuildError> {
    let mut others = 0;
    let mut writes = FuturesUnordered::new();
    let mut next = range.first;
    while next <= range.last {
        if shutdown.is_cancelled() {
            report.interrupted = true;
            break;
        }
        let Some(message) = next_request(stream, range, next).await? else {
            break;
        };
        if message.sequence > range.last {
            break;
        }
        next = message.sequence + 1;
        let request: JobRequest = match serde_json::from_slice(&message.payload) {
            Ok(request) => request,
            Err(e) => {
                if which == Waiting::New {
                    tracing::warn!(sequence = message.sequence, subject = %message.subject, error = %e, "Undecodable job request; skipping it.");
                    report.jobs_waiting += 1;
                    report.undecodable += 1;
                }
                continue;
            }
        };
        if which == Waiting::New {
            report.jobs_waiting += 1;
        }
        let retried = request.prior_attempts > 0;
        if retried != (which == Waiting::Retried) {
            others += 1;
            continue;
        }
        writes.push(create_queued(bucket, JobSnapshot::queued(&request)));
        if writes.len() >= QUEUED_IN_FLIGHT
            && let Some(outcome) = writes.next().await
        {
            tally(report, outcome);
        }
    }
    while let Some(outcome) = writes.next().await {
        tally(report, outcome);
    }
    Ok(others)
}

/// Whether a `queued` snapshot was written (`false`: the job already had one).
type Queued = Result<bool, ()>;

fn tally(report: &mut Report, outcome: Queued) {
    match outcome {
        Ok(true) => report.queued_written += 1,
        Ok(false) => {}
        Err(()) => report.failed += 1,
    }
}

async fn create_queued(bucket: &kv::Store, snapshot: JobSnapshot) -> Queued {
    let key = snapshot.id.to_string();
    let value: bytes::Bytes = match serde_json::to_vec(&snapshot) {
        Ok(value) => value.into(),
        Err(e) => {
            tracing::error!(job_id = %key, error = %e, "Cannot encode a queued snapshot.");
            return Err(());
        }
    };
    let mut delay = Duration::from_millis(100);
    for _ in 0..5 {
        match bucket.create(&key, value.clone()).await {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(false),
            Err(e) => {
                tracing::warn!(job_id = %key, error = %e, "Cannot write a queued snapshot; trying again.");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    tracing::error!(job_id = %key, "Cannot write a queued snapshot; giving up on it.");
    Err(())
}

/// Pass 2: every event of `JOB_EVENTS` up to its last sequence as of now, through the
/// live projection's shards.
async fn replay_events(
    js: &jetstream::Context,
    bucket: &kv::Store,
    options: &Options,
    report: &mut Report,
    shutdown: &CancellationToken,
) -> Result<(), RebuildError> {
    let mut stream = js
        .get_stream(layout::EVENTS_STREAM)
        .await
        .map_err(nats_err(format!(
            "opening stream {}",
            layout::EVENTS_STREAM
        )))?;
    let state = stream
        .info()
        .await
        .map_err(nats_err(format!(
            "reading stream {}",
            layout::EVENTS_STREAM
        )))?
        .state
        .clone();
    let until = state.last_sequence;
    report.events_until = until;
    if state.messages == 0 {
        return Ok(());
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            description: Some("jetjobs-status --rebuild: replays every job event".into()),
            filter_subject: subjects::EVENTS_ALL.into(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(nats_err(format!(
            "creating a consumer on {}",
            layout::EVENTS_STREAM
        )))?;
    let mut messages = consumer.messages().await.map_err(nats_err(format!(
        "reading stream {}",
        layout::EVENTS_STREAM
    )))?;

    let projector = Projector::new(
        bucket.clone(),
        options.shards,
        options.shard_buffer,
        options.cache_per_shard,
    );
    let shards = projector.start(Mode::Replay);
    let mut seen = 0;
    let mut errors = 0;
    let outcome = loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                report.interrupted = true;
                break Ok(());
            }
            next = tokio::time::timeout(IDLE_CHECK, messages.next()) => next,
        };
        let message = match next {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => {
                // The ordered consumer recreates itself after a gap or a lost heartbeat;
                // only a run of errors means it cannot.
                errors += 1;
                tracing::warn!(error = %e, "Reading events failed; continuing.");
                if errors >= MAX_READ_ERRORS {
                    break Err(RebuildError::Read {
                        at: seen,
                        until,
                        last: e.to_string(),
                    });
                }
                continue;
            }
            Ok(None) => {
                break Err(RebuildError::Read {
                    at: seen,
                    until,
                    last: "the consumer ended".into(),
                });
            }
            Err(_idle) => {
                // Nothing came: the events not yet read may have expired (max_age) or
                // been deleted meanwhile.
                match stream.info().await {
                    Ok(info) if info.state.messages == 0 || info.state.first_sequence > until => {
                        break Ok(());
                    }
                    Ok(_) => tracing::info!(at = seen, until, "Waiting for events."),
                    Err(e) => tracing::warn!(error = %e, "Cannot read the event stream's state."),
                }
                continue;
            }
        };
        errors = 0;
        let (sequence, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "Event without metadata; projecting it anyway.");
                (seen, 1)
            }
        };
        if sequence > until {
            // Published after the start: the live service projects it.
            break Ok(());
        }
        seen = sequence;
        report.events_read += 1;
        let sender = shards.sender(&message.subject);
        tokio::select! {
            biased;
            sent = sender.send(message) => {
                if sent.is_err() {
                    tracing::error!("A shard has stopped; the event is not projected.");
                    report.failed += 1;
                }
            }
            () = shutdown.cancelled() => {
                report.interrupted = true;
                break Ok(());
            }
        }
        if sequence >= until || pending == 0 {
            break Ok(());
        }
    };
    drop(messages);
    let stats: Arc<Stats> = shards.finish().await;
    report.snapshots_written += Stats::get(&stats.writes);
    report.undecodable += Stats::get(&stats.undecodable);
    report.failed += Stats::get(&stats.failed);
    outcome
}
