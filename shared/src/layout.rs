//! The NATS objects jetjobs lives in, and the one idempotent function that provisions them.
//!
//! [`provision`] runs with an admin user (the local runner, the compose `provision` step,
//! tests). It creates what is missing, updates limits that may change, and refuses with a
//! clear error when an existing object conflicts in a way that cannot be changed in place
//! (retention, storage, ack policy, ...). Services never provision: they call [`require`]
//! at start and say exactly what is missing.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{self, AckPolicy, DeliverPolicy},
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

use crate::job::Kind;
use crate::subjects;

pub const JOBS_STREAM: &str = "JOBS";
pub const EVENTS_STREAM: &str = "JOB_EVENTS";
pub const DEAD_STREAM: &str = "JOBS_DEAD";
pub const STATUS_BUCKET: &str = "job_status";
pub const KINDS_BUCKET: &str = "job_kinds";
/// Claims on job ids and `Idempotency-Key`s: the arbiter for "the same request makes one job".
pub const IDEMPOTENCY_BUCKET: &str = "job_idempotency";
pub const STATUS_CONSUMER: &str = "status-projector";
pub const NOTIFIER_CONSUMER: &str = "notifier";

/// Metadata key naming the component that owns an object, visible in `nats stream info`.
const OWNER_KEY: &str = "jetjobs.owner";

/// A processor service as the layout sees it: its durable consumer and the kinds it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessorSpec {
    /// Service name, also the durable consumer's name (`processor-io`).
    pub name: String,
    pub kinds: Vec<Kind>,
}

impl ProcessorSpec {
    pub fn filter_subjects(&self) -> Vec<String> {
        let mut subjects: Vec<String> = self.kinds.iter().map(subjects::submit_filter).collect();
        subjects.sort();
        subjects
    }
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
    /// How long events and snapshots are kept.
    pub retention: Duration,
    pub events_max_bytes: i64,
    pub dead_max_bytes: i64,
    pub status_max_bytes: i64,
    /// Revisions kept per job in `job_status` (`nats kv history job_status <id>`); a job
    /// makes three or four (queued, running, progress, outcome).
    pub status_history: i64,
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
    pub processors: Vec<ProcessorSpec>,
}

impl Default for Layout {
    fn default() -> Self {
        const GIB: i64 = 1 << 30;
        Self {
            replicas: 1,
            storage: StorageType::File,
            jobs_max_msgs: 1_000_000,
            jobs_max_bytes: GIB,
            duplicate_window: Duration::from_secs(120),
            retention: Duration::from_secs(7 * 24 * 3600),
            events_max_bytes: 2 * GIB,
            dead_max_bytes: GIB / 2,
            status_max_bytes: 8 * GIB,
            status_history: 5,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            // Projecting an event takes milliseconds; what this bounds is how long an
            // event delivered by a consumer leader that then died waits to come back.
            status_ack_wait: Duration::from_secs(10),
            status_max_ack_pending: 20_000,
            notifier_ack_wait: Duration::from_secs(60),
            notifier_max_ack_pending: 10_000,
            processors: Vec::new(),
        }
    }
}

impl Layout {
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
            discard: DiscardPolicy::Old,
            // Processors read a job's last event to count its runs.
            allow_direct: true,
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
            discard: DiscardPolicy::Old,
            // `POST /v1/jobs/{id}/retry` reads the dead job's request by its subject.
            allow_direct: true,
            duplicate_window: self.duplicate_window,
            metadata: owner("processors publish dead letters"),
            ..Default::default()
        }
    }

    pub fn processor_consumer(&self, spec: &ProcessorSpec) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(spec.name.clone()),
            description: Some(format!(
                "jetjobs processor {} (kinds: {})",
                spec.name,
                spec.kinds
                    .iter()
                    .map(Kind::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            filter_subjects: spec.filter_subjects(),
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
                "jetjobs notifier: delivers webhooks for job events (not its own records)".into(),
            ),
            filter_subjects: vec![subjects::EVENTS_JOBS_ONLY.into()],
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
                IDEMPOTENCY_BUCKET,
                "jetjobs claims on job ids and Idempotency-Keys",
                1,
                self.retention,
                self.status_max_bytes,
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

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "{object} exists with {field} = {existing}, but jetjobs needs {wanted}; this cannot be changed in place: \
         fix it by hand (nats stream/consumer edit) or remove the object, then provision again"
    )]
    Conflict {
        object: String,
        field: &'static str,
        existing: String,
        wanted: String,
    },
    #[error("{object}: {source}")]
    Nats {
        object: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "NATS is missing {}; run `jetjobs-admin provision` (or the compose `provision` service) first",
        .0.join(", ")
    )]
    Missing(Vec<String>),
}

fn nats_err(
    object: impl fmt::Display,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> ProvisionError {
    let object = object.to_string();
    move |source| ProvisionError::Nats { object, source }
}

/// What [`provision`] did to each object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProvisionReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
}

impl fmt::Display for ProvisionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (label, list) in [
            ("created", &self.created),
            ("updated", &self.updated),
            ("unchanged", &self.unchanged),
        ] {
            if !list.is_empty() {
                writeln!(f, "{label:>9}: {}", list.join(", "))?;
            }
        }
        Ok(())
    }
}

/// Creates or updates every stream, consumer and bucket of `layout`. Safe to run again
/// and again, on an empty server or a provisioned one.
pub async fn provision(
    js: &jetstream::Context,
    layout: &Layout,
) -> Result<ProvisionReport, ProvisionError> {
    let mut report = ProvisionReport::default();
    for config in [
        layout.jobs_stream(),
        layout.events_stream(),
        layout.dead_stream(),
    ] {
        ensure_stream(js, config, &mut report).await?;
    }
    for config in layout.buckets() {
        ensure_bucket(js, config, &mut report).await?;
    }
    for spec in &layout.processors {
        ensure_consumer(
            js,
            JOBS_STREAM,
            layout.processor_consumer(spec),
            &mut report,
        )
        .await?;
    }
    ensure_consumer(js, EVENTS_STREAM, layout.status_consumer(), &mut report).await?;
    ensure_consumer(js, EVENTS_STREAM, layout.notifier_consumer(), &mut report).await?;
    Ok(report)
}

async fn ensure_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let object = format!("stream {}", wanted.name);
    let existing = match js.get_stream(&wanted.name).await {
        Ok(mut stream) => stream
            .info()
            .await
            .map_err(|e| nats_err(&object)(e.into()))?
            .config
            .clone(),
        Err(e) if stream_not_found(&e) => {
            js.create_stream(wanted)
                .await
                .map_err(|e| nats_err(&object)(e.into()))?;
            report.created.push(object);
            return Ok(());
        }
        Err(e) => return Err(nats_err(&object)(e.into())),
    };
    conflict(&object, "retention", &existing.retention, &wanted.retention)?;
    conflict(&object, "storage", &existing.storage, &wanted.storage)?;
    let changed = existing.subjects != wanted.subjects
        || existing.max_messages != wanted.max_messages
        || existing.max_bytes != wanted.max_bytes
        || existing.max_age != wanted.max_age
        || existing.discard != wanted.discard
        // The server stores "no limit" as -1 whatever was sent (0 or -1).
        || existing.max_messages_per_subject.max(0) != wanted.max_messages_per_subject.max(0)
        || existing.discard_new_per_subject != wanted.discard_new_per_subject
        || existing.allow_direct != wanted.allow_direct
        || existing.duplicate_window != wanted.duplicate_window
        || existing.num_replicas != wanted.num_replicas
        || existing.description != wanted.description
        || !metadata_contains(&existing.metadata, &wanted.metadata);
    if changed {
        tracing::warn!(%object, "Updating limits of an existing stream to the configured layout.");
        js.update_stream(merge_metadata(wanted, &existing.metadata))
            .await
            .map_err(|e| nats_err(&object)(e.into()))?;
        report.updated.push(object);
    } else {
        report.unchanged.push(object);
    }
    Ok(())
}

fn merge_metadata(
    mut wanted: stream::Config,
    existing: &HashMap<String, String>,
) -> stream::Config {
    // The server adds its own `_nats.*` keys; keep them so an update is not a removal.
    for (k, v) in existing {
        wanted
            .metadata
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    wanted
}

fn metadata_contains(existing: &HashMap<String, String>, wanted: &HashMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| existing.get(k) == Some(v))
}

fn conflict<T: fmt::Debug + PartialEq>(
    object: &str,
    field: &'static str,
    existing: &T,
    wanted: &T,
) -> Result<(), ProvisionError> {
    if existing == wanted {
        Ok(())
    } else {
        Err(ProvisionError::Conflict {
            object: object.to_string(),
            field,
            existing: format!("{existing:?}"),
            wanted: format!("{wanted:?}"),
        })
    }
}

async fn ensure_bucket(
    js: &jetstream::Context,
    wanted: jetstream::kv::Config,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let object = format!("KV bucket {}", wanted.bucket);
    let stream_name = format!("KV_{}", wanted.bucket);
    match js.get_stream(&stream_name).await {
        Ok(mut stream) => {
            let existing = stream
                .info()
                .await
                .map_err(|e| nats_err(&object)(e.into()))?
                .config
                .clone();
            conflict(&object, "storage", &existing.storage, &wanted.storage)?;
            let changed = existing.max_messages_per_subject != wanted.history
                || existing.max_age != wanted.max_age
                || existing.max_bytes != wanted.max_bytes
                || existing.num_replicas != wanted.num_replicas
                || existing.discard != DiscardPolicy::Old;
            if changed {
                tracing::warn!(%object, "Updating limits of an existing bucket to the configured layout.");
                js.update_key_value(wanted)
                    .await
                    .map_err(|e| nats_err(&object)(e.into()))?;
                discard_oldest(js, &stream_name, &object).await?;
                report.updated.push(object);
            } else {
                report.unchanged.push(object);
            }
        }
        Err(e) if stream_not_found(&e) => {
            js.create_key_value(wanted)
                .await
                .map_err(|e| nats_err(&object)(e.into()))?;
            discard_oldest(js, &stream_name, &object).await?;
            report.created.push(object);
        }
        Err(e) => return Err(nats_err(&object)(e.into())),
    }
    Ok(())
}

/// KV buckets are created with discard-new, so a full bucket refuses every write: the
/// gateway could not record new jobs and the projection would stall. Dropping the oldest
/// entries instead keeps the system running; old jobs also expire with `max_age`.
async fn discard_oldest(
    js: &jetstream::Context,
    stream_name: &str,
    object: &str,
) -> Result<(), ProvisionError> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| nats_err(object)(e.into()))?;
    let mut config = stream
        .info()
        .await
        .map_err(|e| nats_err(object)(e.into()))?
        .config
        .clone();
    if config.discard != DiscardPolicy::Old {
        config.discard = DiscardPolicy::Old;
        js.update_stream(config)
            .await
            .map_err(|e| nats_err(object)(e.into()))?;
    }
    Ok(())
}

async fn ensure_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    wanted: consumer::pull::Config,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let name = wanted.durable_name.clone().unwrap_or_default();
    let object = format!("consumer {stream_name} > {name}");
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| nats_err(&object)(e.into()))?;
    match stream.consumer_info(&name).await {
        Ok(info) => {
            let existing = &info.config;
            conflict(
                &object,
                "ack_policy",
                &existing.ack_policy,
                &wanted.ack_policy,
            )?;
            conflict(
                &object,
                "deliver_policy",
                &existing.deliver_policy,
                &wanted.deliver_policy,
            )?;
            if existing.deliver_subject.is_some() {
                return Err(ProvisionError::Conflict {
                    object,
                    field: "deliver_subject",
                    existing: format!("{:?}", existing.deliver_subject),
                    wanted: "a pull consumer (none)".into(),
                });
            }
            let mut existing_filters = existing.filter_subjects.clone();
            if !existing.filter_subject.is_empty() {
                existing_filters.push(existing.filter_subject.clone());
            }
            existing_filters.sort();
            let changed = existing_filters != wanted.filter_subjects
                || existing.ack_wait != wanted.ack_wait
                || existing.max_deliver != wanted.max_deliver
                || existing.max_ack_pending != wanted.max_ack_pending
                || existing.num_replicas != wanted.num_replicas
                || existing.description != wanted.description
                || !metadata_contains(&existing.metadata, &wanted.metadata);
            if changed {
                tracing::warn!(%object, "Updating an existing consumer to the configured layout.");
                let mut update = wanted;
                for (k, v) in &existing.metadata {
                    update
                        .metadata
                        .entry(k.clone())
                        .or_insert_with(|| v.clone());
                }
                stream
                    .update_consumer(update)
                    .await
                    .map_err(|e| nats_err(&object)(e.into()))?;
                report.updated.push(object);
            } else {
                report.unchanged.push(object);
            }
        }
        Err(e) if consumer_not_found(&e) => {
            stream
                .create_consumer(wanted)
                .await
                .map_err(|e| nats_err(&object)(e.into()))?;
            report.created.push(object);
        }
        Err(e) => return Err(nats_err(&object)(e.into())),
    }
    Ok(())
}

fn stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(err)
            if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

fn consumer_not_found(e: &jetstream::context::ConsumerInfoError) -> bool {
    match e.kind() {
        jetstream::context::ConsumerInfoErrorKind::NotFound => true,
        jetstream::context::ConsumerInfoErrorKind::JetStream(err) => {
            err.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
        }
        _ => false,
    }
}

/// Something a service needs to find on the server at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Stream(&'static str),
    Consumer { stream: &'static str, name: String },
    Bucket(&'static str),
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stream(name) => write!(f, "stream {name}"),
            Self::Consumer { stream, name } => write!(f, "consumer {name} on stream {stream}"),
            Self::Bucket(name) => write!(f, "KV bucket {name}"),
        }
    }
}

/// Checks that every requirement exists; the error names all that are missing at once.
pub async fn require(
    js: &jetstream::Context,
    requirements: &[Requirement],
) -> Result<(), ProvisionError> {
    let mut missing = Vec::new();
    for requirement in requirements {
        // Only "not found" means missing; a timeout or a permission error is reported as
        // what it is, so nobody re-provisions a server that is merely slow or locked down.
        let object = requirement.to_string();
        let stream_name = match requirement {
            Requirement::Stream(name) | Requirement::Consumer { stream: name, .. } => {
                (*name).to_string()
            }
            Requirement::Bucket(name) => format!("KV_{name}"),
        };
        let found = match js.get_stream(&stream_name).await {
            Ok(stream) => match requirement {
                Requirement::Consumer { name, .. } => match stream.consumer_info(name).await {
                    Ok(_) => true,
                    Err(e) if consumer_not_found(&e) => false,
                    Err(e) => return Err(nats_err(&object)(e.into())),
                },
                _ => true,
            },
            Err(e) if stream_not_found(&e) => false,
            Err(e) => return Err(nats_err(&object)(e.into())),
        };
        if !found {
            missing.push(requirement.to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ProvisionError::Missing(missing))
    }
}
