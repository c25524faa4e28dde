//! The NATS objects jetjobs lives in, and the one idempotent function that provisions them.
//!
//! [`provision`] runs with an admin user (the local runner, the compose `provision` step,
//! tests). It creates what is missing, updates limits that may change, and refuses with a
//! clear error when an existing object conflicts in a way that cannot be changed in place
//! (retention, storage, ack policy, ...). Services never provision: they call [`require`]
//! at start and say exactly what is missing.
//!
//! Every store is bounded by age and size, and every one is **discard-new**: a full store
//! refuses the write (the writer sees an error and the gateway answers 503) instead of
//! making room by dropping its oldest entries, which would forget accepted work — a
//! claim on an `Idempotency-Key`, the snapshot of a job that got its 202, an event nobody
//! has read yet. Room comes back as entries reach their `max_age`, or when an operator
//! raises the limit (provisioning again with a bigger one).

mod processors;
mod provision;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{self, AckPolicy, DeliverPolicy},
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

use crate::job::{Kind, Priority};
use crate::subjects;

pub use processors::{
    PROCESSOR_CPU, PROCESSOR_IO, ProcessorSpec, processor, processor_cpu, processor_io, processors,
};
pub use provision::{
    ProvisionError, ProvisionReport, Requirement, open_or_create_bucket_like, provision, require,
};

pub const JOBS_STREAM: &str = "JOBS";
pub const EVENTS_STREAM: &str = "JOB_EVENTS";
pub const DEAD_STREAM: &str = "JOBS_DEAD";
pub const STATUS_BUCKET: &str = "job_status";
pub const KINDS_BUCKET: &str = "job_kinds";
/// Claims on job ids and `Idempotency-Key`s: the arbiter for "the same request makes one job".
pub const IDEMPOTENCY_BUCKET: &str = "job_idempotency";
/// Object Store bucket of uploads and large results (claim-check: messages carry an id).
pub const BLOBS_BUCKET: &str = "job_blobs";
/// The stream behind `job_blobs`.
pub const BLOBS_STREAM: &str = "OBJ_job_blobs";
/// One small message per job, in creation order: what `GET /v1/jobs` pages over.
pub const INDEX_STREAM: &str = "JOBS_INDEX";
/// Delayed jobs, expiries and recurring schedules, kept by the broker (ADR-51).
pub const SCHEDULES_STREAM: &str = "JOBS_SCHEDULES";
/// Recurring schedules' definitions (`GET /v1/schedules`), key = name.
pub const SCHEDULES_BUCKET: &str = "job_schedules";
/// Per-kind limits (`max_running`, `max_per_second`), key = kind.
pub const LIMITS_BUCKET: &str = "job_limits";
/// Running leases and start counters that enforce the limits across replicas.
pub const LEASES_BUCKET: &str = "job_leases";
/// KV `job_workers`: each processor replica's presence and activity (`crate::presence`).
pub const WORKERS_BUCKET: &str = "job_workers";
/// The consumer that turns firings into jobs; every gateway replica pulls from it.
pub const SCHEDULER_CONSUMER: &str = "scheduler";
pub const STATUS_CONSUMER: &str = "status-projector";
pub const NOTIFIER_CONSUMER: &str = "notifier";

/// Metadata key naming the component that owns an object, visible in `nats stream info`.
const OWNER_KEY: &str = "jetjobs.owner";

/// The stream behind KV bucket `bucket` (`nats stream info KV_job_status`).
pub fn bucket_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// Every tunable of the NATS layout. `Default` is the documented production default.
#[derive(Clone, Debug)]
pub struct Layout {
    pub replicas: usize,
    pub storage: StorageType,
    /// `JOBS` limits; with discard-new a full queue rejects the publish (the gateway's 503).
    pub jobs_max_msgs: i64,
    pub jobs_max_bytes: i64,
    /// Window in which a re-published job (same `Nats-Msg-Id`) is dropped as a duplicate.
    pub duplicate_window: Duration,
    /// How long events, dead letters and snapshots are kept (`max_age` of `JOB_EVENTS`,
    /// `JOBS_DEAD` and `job_status`).
    pub retention: Duration,
    /// `JOB_EVENTS` size. Full, it refuses events: processors cannot record outcomes, so
    /// their jobs stay unacked and come back after `ack_wait` until there is room again.
    pub events_max_bytes: i64,
    /// `JOBS_DEAD` size. Full, it refuses dead letters: the failed job stays unacked.
    pub dead_max_bytes: i64,
    /// `job_status` size. Full, it refuses new snapshots (the gateway answers 503) and
    /// updates of jobs whose history is not yet full (the status service retries them).
    pub status_max_bytes: i64,
    /// Revisions kept per job in `job_status` (`nats kv history job_status <id>`); a job
    /// makes three or four (queued, running, progress, outcome).
    pub status_history: i64,
    /// How long a claim on a job id (`PUT`) or an `Idempotency-Key` is kept: within it, the
    /// same request returns the same job. At most [`Layout::retention`]: a claim that
    /// outlived its job's snapshot would make a repeat queue the finished job again.
    pub idempotency_ttl: Duration,
    /// `job_idempotency` size. Full, it refuses new claims (the gateway answers 503 before
    /// anything is queued); a claim is about 300 bytes.
    pub idempotency_max_bytes: i64,
    /// `job_blobs` size (uploads and results stored by reference).
    pub blobs_max_bytes: i64,
    /// `JOBS_INDEX` size; an entry is about 150 bytes.
    pub index_max_bytes: i64,
    /// `JOBS_SCHEDULES` limits. It cannot be discard-new (the server refuses message
    /// schedules on such a stream), so the gateway refuses new delayed jobs once it is
    /// nearly full instead (`crate::layout::SCHEDULES_HEADROOM`).
    pub schedules_max_msgs: i64,
    pub schedules_max_bytes: i64,
    /// Processor consumers: how long a delivered job may go without an ack or heartbeat.
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub status_ack_wait: Duration,
    pub status_max_ack_pending: i64,
    /// Notifier: above its delivery timeout, so an event being delivered is not handed
    /// to another replica meanwhile.
    pub notifier_ack_wait: Duration,
    /// Events being delivered at once, across notifier replicas (including those waiting
    /// for their retry after a nak with delay).
    pub notifier_max_ack_pending: i64,
    /// The processors whose `JOBS` consumers to provision; by default all of jetjobs'
    /// ([`processors`]).
    pub processors: Vec<ProcessorSpec>,
}

/// Seven days.
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for Layout {
    fn default() -> Self {
        const GIB: i64 = 1 << 30;
        Self {
            replicas: 1,
            storage: StorageType::File,
            jobs_max_msgs: 1_000_000,
            jobs_max_bytes: GIB,
            duplicate_window: Duration::from_secs(120),
            retention: DEFAULT_RETENTION,
            events_max_bytes: 2 * GIB,
            dead_max_bytes: GIB / 2,
            status_max_bytes: 8 * GIB,
            status_history: 5,
            idempotency_ttl: DEFAULT_RETENTION,
            idempotency_max_bytes: GIB,
            blobs_max_bytes: 16 * GIB,
            index_max_bytes: GIB,
            schedules_max_msgs: 1_000_000,
            schedules_max_bytes: GIB,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            // Projecting an event takes milliseconds; what this bounds is how long an
            // event delivered by a consumer leader that then died waits to come back.
            status_ack_wait: Duration::from_secs(10),
            status_max_ack_pending: 20_000,
            notifier_ack_wait: Duration::from_secs(60),
            notifier_max_ack_pending: 10_000,
            processors: processors(),
        }
    }
}

impl Layout {
    /// Checks the tunables that depend on each other; [`provision`] refuses an invalid
    /// layout before touching the server.
    pub fn validate(&self) -> Result<(), ProvisionError> {
        let forever = |d: Duration| d.is_zero();
        // A zero max_age is "keep forever" to JetStream.
        let ttl_fits = if forever(self.retention) {
            true
        } else {
            !forever(self.idempotency_ttl) && self.idempotency_ttl <= self.retention
        };
        if !ttl_fits {
            return Err(ProvisionError::Invalid(format!(
                "the idempotency TTL ({}) must not exceed the retention of job snapshots ({}): \
                 a claim that outlives its job's snapshot would queue the finished job again \
                 when the request is repeated",
                describe(self.idempotency_ttl),
                describe(self.retention)
            )));
        }
        Ok(())
    }

    pub fn jobs_stream(&self) -> stream::Config {
        stream::Config {
            name: JOBS_STREAM.into(),
            description: Some(
                "jetjobs job requests, one subject per kind; a job leaves when a processor acks it"
                    .into(),
            ),
            subjects: vec![subjects::SUBMIT_ALL.into()],
            retention: RetentionPolicy::WorkQueue,
            storage: self.storage,
            num_replicas: self.replicas,
            max_messages: self.jobs_max_msgs,
            max_bytes: self.jobs_max_bytes,
            discard: DiscardPolicy::New,
            // One subject per job: a job is queued at most once, even when a retried
            // submission comes after the duplicate window.
            max_messages_per_subject: 1,
            discard_new_per_subject: true,
            // The gateway checks whether a job still waits; `--rebuild` reads waiting jobs.
            allow_direct: true,
            // Group commit: concurrent submissions are stored as one atomic batch, one
            // fsync for many jobs (`crate::batch`).
            allow_atomic_publish: true,
            duplicate_window: self.duplicate_window,
            metadata: owner("gateway publishes, processors consume"),
            ..Default::default()
        }
    }

    pub fn events_stream(&self) -> stream::Config {
        stream::Config {
            name: EVENTS_STREAM.into(),
            description: Some(
                "jetjobs job lifecycle events (started, progress, retrying, succeeded, failed, cancelled)"
                    .into(),
            ),
            subjects: vec![subjects::EVENTS_ALL.into()],
            retention: RetentionPolicy::Limits,
            storage: self.storage,
            num_replicas: self.replicas,
            max_age: self.retention,
            max_messages: -1,
            max_bytes: self.events_max_bytes,
            // Full, the stream refuses the event rather than drop one the status service
            // or the notifier has not read yet: the processor keeps the job unacked and
            // it comes back once there is room.
            discard: DiscardPolicy::New,
            // Processors read a job's last event to count its runs.
            allow_direct: true,
            // Group commit of events from many jobs at once (`crate::batch`).
            allow_atomic_publish: true,
            duplicate_window: self.duplicate_window,
            metadata: owner("processors and gateway publish, status and notifier consume"),
            ..Default::default()
        }
    }

    pub fn dead_stream(&self) -> stream::Config {
        stream::Config {
            name: DEAD_STREAM.into(),
            description: Some(
                "jetjobs dead letters: jobs that exhausted their attempts, replayable".into(),
            ),
            subjects: vec![subjects::DEAD_ALL.into()],
            retention: RetentionPolicy::Limits,
            storage: self.storage,
            num_replicas: self.replicas,
            max_age: self.retention,
            max_messages: -1,
            max_bytes: self.dead_max_bytes,
            // Full, a dead letter is refused rather than an older one dropped unseen.
            discard: DiscardPolicy::New,
            // `POST /v1/jobs/{id}/retry` reads the dead job's request by its subject.
            allow_direct: true,
            duplicate_window: self.duplicate_window,
            metadata: owner("processors publish dead letters"),
            ..Default::default()
        }
    }

    /// `JOBS_INDEX`: `jobs.index.<kind>.<id>`, one entry per job written by the gateway
    /// before the job is queued. Listing reads it newest first by stream sequence (the
    /// cursor), with direct-get batches: O(page) reads however many jobs there are, which
    /// KV key listing cannot give (no order, no range scan).
    pub fn index_stream(&self) -> stream::Config {
        stream::Config {
            name: INDEX_STREAM.into(),
            description: Some("jetjobs jobs in creation order, for listing".into()),
            subjects: vec![subjects::INDEX_ALL.into()],
            retention: RetentionPolicy::Limits,
            storage: self.storage,
            num_replicas: self.replicas,
            max_age: self.retention,
            max_messages: -1,
            max_bytes: self.index_max_bytes,
            // Full, it refuses new entries rather than drop listed jobs: a job still
            // queues (and is readable by id) but is not listed, and the gateway warns.
            discard: DiscardPolicy::New,
            allow_direct: true,
            duplicate_window: self.duplicate_window,
            metadata: owner("gateway writes, gateway lists"),
            ..Default::default()
        }
    }

    /// `JOBS_SCHEDULES`: delayed jobs (`jobs.at.<kind>.<id>`, `@at` schedules), expiries
    /// (`jobs.expiry.<kind>.<id>`) and recurring schedules (`jobs.cron.<name>`), each a
    /// message the server keeps time for and fires into the same stream
    /// (`jobs.due.>`, `jobs.expired.>`, `jobs.fire.>`), where the gateways' `scheduler`
    /// consumer takes them. Work-queue: a firing leaves when it is acked; the schedules
    /// have no consumer, so nothing acks them away.
    pub fn schedules_stream(&self) -> stream::Config {
        stream::Config {
            name: SCHEDULES_STREAM.into(),
            description: Some(
                "jetjobs delayed jobs, expiries and recurring schedules (ADR-51 message schedules) and their firings"
                    .into(),
            ),
            subjects: subjects::SCHEDULES_ALL.map(String::from).to_vec(),
            retention: RetentionPolicy::WorkQueue,
            storage: self.storage,
            num_replicas: self.replicas,
            max_messages: self.schedules_max_msgs,
            max_bytes: self.schedules_max_bytes,
            // nats-server refuses message schedules on a discard-new stream; the gateway
            // stops accepting delayed jobs well before the limits instead.
            discard: DiscardPolicy::Old,
            allow_message_schedules: true,
            // Implied by schedules (each one is a rollup of its subject); said here so
            // the config provisioning compares with is the one the server keeps.
            allow_rollup: true,
            allow_direct: true,
            duplicate_window: self.duplicate_window,
            metadata: owner("gateway schedules, nats-server fires, gateway's scheduler queues"),
            ..Default::default()
        }
    }

    pub fn scheduler_consumer(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(SCHEDULER_CONSUMER.into()),
            description: Some(
                "jetjobs scheduler (every gateway replica): queues delayed jobs, cancels expired ones, makes recurring schedules' jobs"
                    .into(),
            ),
            filter_subjects: subjects::FIRED.map(String::from).to_vec(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            max_ack_pending: 10_000,
            num_replicas: self.replicas,
            metadata: owner("gateway"),
            ..Default::default()
        }
    }

    /// The stream of Object Store bucket `job_blobs`, as async-nats creates it (so
    /// `nats object` reads it), with jetjobs' limits. Blobs outlive the snapshots of the
    /// jobs that use them by a day; the gateway deletes earlier the ones no job
    /// references ([`crate::blobs`]).
    pub fn blobs_stream(&self) -> stream::Config {
        let max_age = if self.retention.is_zero() {
            Duration::ZERO
        } else {
            self.retention + Duration::from_secs(24 * 3600)
        };
        stream::Config {
            name: BLOBS_STREAM.into(),
            description: Some("jetjobs uploads and large results (Object Store job_blobs)".into()),
            subjects: vec![
                format!("$O.{BLOBS_BUCKET}.C.>"),
                format!("$O.{BLOBS_BUCKET}.M.>"),
            ],
            retention: RetentionPolicy::Limits,
            storage: self.storage,
            num_replicas: self.replicas,
            max_age,
            max_messages: -1,
            max_bytes: self.blobs_max_bytes,
            discard: DiscardPolicy::New,
            allow_rollup: true,
            allow_direct: true,
            duplicate_window: self.duplicate_window,
            metadata: owner("gateway and processors write, gateway serves"),
            ..Default::default()
        }
    }

    pub fn processor_consumer(&self, spec: &ProcessorSpec) -> consumer::pull::Config {
        self.processor_consumer_for(spec, Priority::Normal)
    }

    /// The consumer of `spec`'s jobs of one priority (a processor pulls from all three).
    pub fn processor_consumer_for(
        &self,
        spec: &ProcessorSpec,
        priority: Priority,
    ) -> consumer::pull::Config {
        let lane = match priority {
            Priority::Normal => String::new(),
            other => format!(", {} priority", other.as_str()),
        };
        consumer::pull::Config {
            durable_name: Some(spec.consumer_name(priority)),
            description: Some(format!(
                "jetjobs processor {} (kinds: {}{lane})",
                spec.name,
                spec.kinds
                    .iter()
                    .map(Kind::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            filter_subjects: spec.filter_subjects_for(priority),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: self.ack_wait,
            // Attempts are counted by the processor runtime against each job's own
            // `max_attempts`; it ends a job past its last attempt without running it.
            // A server-side limit could only strand a job silently, so there is none.
            max_deliver: -1,
            max_ack_pending: self.max_ack_pending,
            num_replicas: self.replicas,
            metadata: owner(&spec.name),
            ..Default::default()
        }
    }

    pub fn status_consumer(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(STATUS_CONSUMER.into()),
            description: Some(
                "jetjobs status service: projects job events into KV job_status".into(),
            ),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: self.status_ack_wait,
            max_deliver: -1,
            max_ack_pending: self.status_max_ack_pending,
            num_replicas: self.replicas,
            metadata: owner("status"),
            ..Default::default()
        }
    }

    pub fn notifier_consumer(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(NOTIFIER_CONSUMER.into()),
            description: Some(
                "jetjobs notifier: delivers webhooks for job events (skips its own records)".into(),
            ),
            // No filter, on purpose. With two filter subjects (the jobs' events and their
            // progress, leaving out the notifier's own `.webhook` records) nats-server
            // finds each next message by intersecting the filters with the subject tree of
            // JOB_EVENTS — which holds three subjects per job for the whole retention:
            // measured, its CPU per job tripled within 60,000 jobs and kept growing. The
            // notifier acks its own records without a delivery instead (one message per
            // webhook attempt, only for jobs with a callback).
            filter_subjects: Vec::new(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: self.notifier_ack_wait,
            // The notifier gives up on an event after its retry period, measured from the
            // event's time; a delivery count limit would drop webhooks silently.
            max_deliver: -1,
            max_ack_pending: self.notifier_max_ack_pending,
            num_replicas: self.replicas,
            metadata: owner("notifier"),
            ..Default::default()
        }
    }

    /// The KV buckets. async-nats makes every bucket discard-new, which is what jetjobs
    /// wants: a full bucket refuses writes and forgets nothing.
    pub fn buckets(&self) -> Vec<jetstream::kv::Config> {
        let bucket = |name: &str, description: &str, history: i64, max_age, max_bytes| {
            jetstream::kv::Config {
                bucket: name.into(),
                description: description.into(),
                history,
                max_age,
                max_bytes,
                storage: self.storage,
                num_replicas: self.replicas,
                ..Default::default()
            }
        };
        vec![
            bucket(
                STATUS_BUCKET,
                "jetjobs job snapshots, key = job id; a projection of JOB_EVENTS",
                self.status_history,
                self.retention,
                self.status_max_bytes,
            ),
            bucket(
                KINDS_BUCKET,
                "jetjobs job kinds registered by processors, key = kind",
                5,
                Duration::ZERO,
                64 << 20,
            ),
            bucket(
                SCHEDULES_BUCKET,
                "jetjobs recurring schedules, key = name",
                1,
                Duration::ZERO,
                64 << 20,
            ),
            bucket(
                LIMITS_BUCKET,
                "jetjobs limits per kind (max_running, max_per_second), key = kind",
                5,
                Duration::ZERO,
                64 << 20,
            ),
            // A lease outlives a replica that died holding it by at most this long; a
            // running job writes its lease again every third of it.
            bucket(
                LEASES_BUCKET,
                "jetjobs running leases and start counters enforcing the limits per kind",
                1,
                self.ack_wait,
                64 << 20,
            ),
            // A replica that died without a word disappears after this long.
            bucket(
                WORKERS_BUCKET,
                "jetjobs processor replicas: what each runs now, key = processor.instance",
                1,
                crate::presence::TTL,
                16 << 20,
            ),
            bucket(
                IDEMPOTENCY_BUCKET,
                "jetjobs claims on job ids and Idempotency-Keys",
                1,
                self.idempotency_ttl,
                self.idempotency_max_bytes,
            ),
        ]
    }
}

fn owner(role: &str) -> HashMap<String, String> {
    HashMap::from([
        (OWNER_KEY.to_string(), "jetjobs".to_string()),
        ("jetjobs.role".to_string(), role.to_string()),
    ])
}

/// `168 h`, `90 s`, or `forever` (JetStream's zero).
fn describe(d: Duration) -> String {
    let secs = d.as_secs();
    if d.is_zero() {
        "forever".to_string()
    } else if secs > 0 && secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else {
        format!("{d:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_is_discard_new() {
        let layout = Layout::default();
        for stream in [
            layout.jobs_stream(),
            layout.events_stream(),
            layout.dead_stream(),
            layout.index_stream(),
            layout.blobs_stream(),
        ] {
            assert_eq!(stream.discard, DiscardPolicy::New, "{}", stream.name);
            assert!(stream.max_bytes > 0, "{} is unbounded", stream.name);
        }
        // The one exception, forced by the server; bounded all the same.
        let schedules = layout.schedules_stream();
        assert!(schedules.max_bytes > 0 && schedules.max_messages > 0);
        for bucket in layout.buckets() {
            assert!(bucket.max_bytes > 0, "{} is unbounded", bucket.bucket);
        }
    }

    #[test]
    fn claims_may_not_outlive_snapshots() {
        let hour = Duration::from_secs(3600);
        let layout = |retention, idempotency_ttl| Layout {
            retention,
            idempotency_ttl,
            ..Layout::default()
        };
        assert!(Layout::default().validate().is_ok());
        assert!(layout(24 * hour, 24 * hour).validate().is_ok());
        assert!(layout(24 * hour, hour).validate().is_ok());
        assert!(layout(Duration::ZERO, Duration::ZERO).validate().is_ok());
        assert!(layout(Duration::ZERO, hour).validate().is_ok());
        let error = layout(24 * hour, 48 * hour)
            .validate()
            .expect_err("a claim outliving its snapshot");
        assert!(error.to_string().contains("48 h"), "{error}");
        assert!(layout(24 * hour, Duration::ZERO).validate().is_err());
    }
}
