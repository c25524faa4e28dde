//! Create-or-update of the layout on a server, the checks services make at start, and
//! the matching of JetStream's "not found" answers, in one place.

use std::collections::HashMap;
use std::fmt;

use async_nats::jetstream::{
    self, consumer,
    stream::{self, DiscardPolicy},
};

use super::{EVENTS_STREAM, JOBS_STREAM, Layout, SCHEDULES_STREAM, STATUS_BUCKET, bucket_stream};

/// A store this full (of its `max_bytes` or `max_msgs`) when provisioning changes it is
/// worth a warning: discard-new means it is about to refuse writes.
const NEARLY_FULL_PERCENT: u64 = 90;

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
    /// The layout itself does not hold together; nothing was changed.
    #[error("invalid layout: {0}")]
    Invalid(String),
}

fn nats_err<E>(object: impl fmt::Display) -> impl FnOnce(E) -> ProvisionError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let object = object.to_string();
    move |source| {
        // JetStream reserves each stream's max_bytes against max_file_store, which
        // nats-server sizes from free disk space unless configured: say so, since the
        // server's own words ("insufficient resources") do not.
        let text = source.to_string();
        let object = if text.contains("insufficient") {
            format!(
                "{object} (its max_bytes does not fit in the server's JetStream storage limit: \
                 set `jetstream {{ max_file_store: ... }}` in the nats-server config, as \
                 deploy/nats/nats.conf does, or lower the store limits)"
            )
        } else {
            object
        };
        ProvisionError::Nats {
            object,
            source: Box::new(source),
        }
    }
}

/// What [`provision`] did to each object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProvisionReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    /// For each updated object, what changed (`stream JOB_EVENTS: discard Old → New, ...`).
    pub changes: Vec<String>,
}

impl ProvisionReport {
    fn update(&mut self, object: String, changes: &Changes) {
        self.changes.push(format!("{object}: {changes}"));
        self.updated.push(object);
    }
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
        for (i, change) in self.changes.iter().enumerate() {
            let label = if i == 0 { "changes" } else { "" };
            writeln!(f, "{label:>9}: {change}")?;
        }
        Ok(())
    }
}

/// The differences between an existing object and the layout, as an operator reads them.
#[derive(Default)]
struct Changes(Vec<String>);

impl Changes {
    fn field<T: fmt::Debug + PartialEq>(&mut self, field: &str, existing: &T, wanted: &T) {
        if existing != wanted {
            self.0.push(format!("{field} {existing:?} → {wanted:?}"));
        }
    }

    /// A change whose values are too long to print (descriptions, metadata).
    fn named(&mut self, field: &str, changed: bool) {
        if changed {
            self.0.push(field.to_string());
        }
    }

    /// The move to discard-new, spelled out: it changes what a full store does.
    fn discard(&mut self, existing: DiscardPolicy, wanted: DiscardPolicy) {
        if existing == DiscardPolicy::Old && wanted == DiscardPolicy::New {
            self.0.push(
                "discard Old → New (when full it now refuses writes instead of dropping its oldest entries)"
                    .to_string(),
            );
        } else {
            self.field("discard", &existing, &wanted);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// Creates or updates every stream, consumer and bucket of `layout`. Safe to run again
/// and again, on an empty server or a provisioned one.
///
/// An object provisioned by an earlier version is brought to this layout where JetStream
/// can change it in place (limits, discard policy, filters), and each such change is
/// logged and listed in [`ProvisionReport::changes`]; what cannot change in place is a
/// [`ProvisionError::Conflict`], and the object is left as it was.
pub async fn provision(
    js: &jetstream::Context,
    layout: &Layout,
) -> Result<ProvisionReport, ProvisionError> {
    layout.validate()?;
    let mut report = ProvisionReport::default();
    for config in [
        layout.jobs_stream(),
        layout.events_stream(),
        layout.dead_stream(),
        layout.index_stream(),
        layout.blobs_stream(),
        layout.schedules_stream(),
    ] {
        ensure_stream(js, config, &mut report).await?;
    }
    for config in layout.buckets() {
        ensure_bucket(js, config, &mut report).await?;
    }
    ensure_atomic_bucket(js, STATUS_BUCKET, &mut report).await?;
    for spec in &layout.processors {
        for priority in crate::job::Priority::ALL {
            ensure_consumer(
                js,
                JOBS_STREAM,
                layout.processor_consumer_for(spec, priority),
                &mut report,
            )
            .await?;
        }
    }
    ensure_consumer(js, EVENTS_STREAM, layout.status_consumer(), &mut report).await?;
    ensure_consumer(
        js,
        SCHEDULES_STREAM,
        layout.scheduler_consumer(),
        &mut report,
    )
    .await?;
    ensure_consumer(js, EVENTS_STREAM, layout.notifier_consumer(), &mut report).await?;
    Ok(report)
}

/// The stream's configuration and state, or `None` if there is no such stream.
async fn stream_info(
    js: &jetstream::Context,
    name: &str,
    object: &str,
) -> Result<Option<stream::Info>, ProvisionError> {
    match js.get_stream(name).await {
        // `get_stream` has just asked the server for the info.
        Ok(stream) => Ok(Some(stream.cached_info().clone())),
        Err(e) if stream_not_found(&e) => Ok(None),
        Err(e) => Err(nats_err(object)(e)),
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let object = format!("stream {}", wanted.name);
    let Some(info) = stream_info(js, &wanted.name, &object).await? else {
        js.create_stream(wanted)
            .await
            .map_err(nats_err(format!("creating {object}")))?;
        report.created.push(object);
        return Ok(());
    };
    let existing = &info.config;
    conflict(&object, "retention", &existing.retention, &wanted.retention)?;
    conflict(&object, "storage", &existing.storage, &wanted.storage)?;
    discard_can_change(&object, existing, wanted.discard)?;
    let mut changes = Changes::default();
    changes.field("subjects", &existing.subjects, &wanted.subjects);
    changes.field("max_msgs", &existing.max_messages, &wanted.max_messages);
    changes.field("max_bytes", &existing.max_bytes, &wanted.max_bytes);
    changes.field("max_age", &existing.max_age, &wanted.max_age);
    changes.discard(existing.discard, wanted.discard);
    // The server stores "no limit" as -1 whatever was sent (0 or -1).
    changes.field(
        "max_msgs_per_subject",
        &existing.max_messages_per_subject.max(0),
        &wanted.max_messages_per_subject.max(0),
    );
    changes.field(
        "discard_new_per_subject",
        &existing.discard_new_per_subject,
        &wanted.discard_new_per_subject,
    );
    changes.field("allow_direct", &existing.allow_direct, &wanted.allow_direct);
    changes.field(
        "allow_atomic",
        &existing.allow_atomic_publish,
        &wanted.allow_atomic_publish,
    );
    changes.field(
        "duplicate_window",
        &existing.duplicate_window,
        &wanted.duplicate_window,
    );
    changes.field("replicas", &existing.num_replicas, &wanted.num_replicas);
    changes.named("description", existing.description != wanted.description);
    changes.named(
        "metadata",
        !metadata_contains(&existing.metadata, &wanted.metadata),
    );
    if changes.is_empty() {
        report.unchanged.push(object);
        return Ok(());
    }
    warn_if_full(&object, &info.state, wanted.max_bytes, wanted.max_messages);
    tracing::warn!(%object, %changes, "Updating an existing stream to the configured layout.");
    js.update_stream(merge_metadata(wanted, &existing.metadata))
        .await
        .map_err(nats_err(format!("updating {object} ({changes})")))?;
    report.update(object, &changes);
    Ok(())
}

/// JetStream refuses discard-new on streams that schedule or count messages; say so
/// before trying, rather than pass on its error halfway through an update.
fn discard_can_change(
    object: &str,
    existing: &stream::Config,
    wanted: DiscardPolicy,
) -> Result<(), ProvisionError> {
    let blocker = if existing.allow_message_schedules {
        Some("allow_msg_schedules")
    } else if existing.allow_message_counter {
        Some("allow_msg_counter")
    } else {
        None
    };
    match blocker {
        Some(feature) if wanted == DiscardPolicy::New && existing.discard != wanted => {
            Err(ProvisionError::Conflict {
                object: object.to_string(),
                field: "discard",
                existing: format!("{:?} (with {feature}, which forbids New)", existing.discard),
                wanted: format!("{wanted:?}"),
            })
        }
        _ => Ok(()),
    }
}

/// Warns when a store that is being changed is close to its limits: with discard-new it
/// then refuses writes until entries expire or the limit is raised.
fn warn_if_full(object: &str, state: &stream::State, max_bytes: i64, max_msgs: i64) {
    let percent = |used: u64, limit: i64| {
        u64::try_from(limit)
            .ok()
            .filter(|limit| *limit > 0)
            .map(|limit| used.saturating_mul(100) / limit)
    };
    let fullest = [
        percent(state.bytes, max_bytes),
        percent(state.messages, max_msgs),
    ]
    .into_iter()
    .flatten()
    .max();
    if let Some(full) = fullest.filter(|full| *full >= NEARLY_FULL_PERCENT) {
        tracing::warn!(
            %object,
            percent_full = full,
            bytes = state.bytes,
            messages = state.messages,
            "Nearly full: it refuses new writes once full, until entries expire or its limit is raised."
        );
    }
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
    let Some(info) = stream_info(js, &bucket_stream(&wanted.bucket), &object).await? else {
        js.create_key_value(wanted)
            .await
            .map_err(nats_err(format!("creating {object}")))?;
        report.created.push(object);
        return Ok(());
    };
    let existing = &info.config;
    conflict(&object, "storage", &existing.storage, &wanted.storage)?;
    // What async-nats writes for every bucket, create or update.
    let discard = DiscardPolicy::New;
    discard_can_change(&object, existing, discard)?;
    let mut changes = Changes::default();
    changes.field(
        "history",
        &existing.max_messages_per_subject,
        &wanted.history,
    );
    changes.field("max_age", &existing.max_age, &wanted.max_age);
    changes.field("max_bytes", &existing.max_bytes, &wanted.max_bytes);
    changes.field("replicas", &existing.num_replicas, &wanted.num_replicas);
    changes.discard(existing.discard, discard);
    changes.named(
        "description",
        existing.description.as_deref() != Some(wanted.description.as_str()),
    );
    if changes.is_empty() {
        report.unchanged.push(object);
        return Ok(());
    }
    warn_if_full(&object, &info.state, wanted.max_bytes, -1);
    tracing::warn!(%object, %changes, "Updating an existing bucket to the configured layout.");
    js.update_key_value(wanted)
        .await
        .map_err(nats_err(format!("updating {object} ({changes})")))?;
    report.update(object, &changes);
    Ok(())
}

/// Lets a bucket take atomic batches (group commit of snapshots, `crate::batch`). A KV
/// config has no such flag, and every `update_key_value` writes the stream without it,
/// so it is set on the bucket's stream after the bucket itself is in shape.
async fn ensure_atomic_bucket(
    js: &jetstream::Context,
    bucket: &str,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let object = format!("KV bucket {bucket}");
    let Some(info) = stream_info(js, &bucket_stream(bucket), &object).await? else {
        return Ok(());
    };
    if info.config.allow_atomic_publish {
        return Ok(());
    }
    let mut config = info.config;
    config.allow_atomic_publish = true;
    js.update_stream(config)
        .await
        .map_err(nats_err(format!("allowing atomic batches on {object}")))?;
    // Part of creating the bucket when this run created it; an update otherwise.
    if !report.created.contains(&object) {
        let mut changes = Changes::default();
        changes.named("allow_atomic", true);
        report.update(object, &changes);
    }
    Ok(())
}

/// Opens KV bucket `name`; if it does not exist, creates it with the limits, history,
/// storage and replicas that bucket `template` has on the server (as provisioned, so as
/// the operator chose them), discard-new like every jetjobs bucket. Returns the bucket and
/// whether it was created. `jetjobs-status --rebuild --bucket` uses it.
pub async fn open_or_create_bucket_like(
    js: &jetstream::Context,
    name: &str,
    template: &str,
    description: &str,
) -> Result<(jetstream::kv::Store, bool), ProvisionError> {
    let object = format!("KV bucket {name}");
    let exists = stream_info(js, &bucket_stream(name), &object)
        .await?
        .is_some();
    if !exists {
        let template_object = format!("KV bucket {template}");
        if name == template {
            return Err(ProvisionError::Missing(vec![object]));
        }
        let Some(info) = stream_info(js, &bucket_stream(template), &template_object).await? else {
            return Err(ProvisionError::Missing(vec![template_object]));
        };
        let like = &info.config;
        js.create_key_value(jetstream::kv::Config {
            bucket: name.to_string(),
            description: description.to_string(),
            history: like.max_messages_per_subject,
            max_age: like.max_age,
            max_bytes: like.max_bytes,
            max_value_size: like.max_message_size,
            storage: like.storage,
            num_replicas: like.num_replicas,
            compression: like
                .compression
                .as_ref()
                .is_some_and(|c| *c != stream::Compression::None),
            ..Default::default()
        })
        .await
        .map_err(nats_err(format!(
            "creating {object} like {template_object} (max_bytes {})",
            like.max_bytes
        )))?;
    }
    let bucket = js
        .get_key_value(name)
        .await
        .map_err(nats_err(format!("opening {object}")))?;
    Ok((bucket, !exists))
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
        .map_err(nats_err(&object))?;
    let info = match stream.consumer_info(&name).await {
        Ok(info) => info,
        Err(e) if consumer_not_found(&e) => {
            stream
                .create_consumer(wanted)
                .await
                .map_err(nats_err(format!("creating {object}")))?;
            report.created.push(object);
            return Ok(());
        }
        Err(e) => return Err(nats_err(&object)(e)),
    };
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
    let mut changes = Changes::default();
    changes.field(
        "filter_subjects",
        &existing_filters,
        &wanted.filter_subjects,
    );
    changes.field("ack_wait", &existing.ack_wait, &wanted.ack_wait);
    changes.field("max_deliver", &existing.max_deliver, &wanted.max_deliver);
    changes.field(
        "max_ack_pending",
        &existing.max_ack_pending,
        &wanted.max_ack_pending,
    );
    changes.field("replicas", &existing.num_replicas, &wanted.num_replicas);
    changes.named("description", existing.description != wanted.description);
    changes.named(
        "metadata",
        !metadata_contains(&existing.metadata, &wanted.metadata),
    );
    if changes.is_empty() {
        report.unchanged.push(object);
        return Ok(());
    }
    tracing::warn!(%object, %changes, "Updating an existing consumer to the configured layout.");
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
        .map_err(nats_err(format!("updating {object} ({changes})")))?;
    report.update(object, &changes);
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
            Requirement::Bucket(name) => bucket_stream(name),
        };
        let found = match js.get_stream(&stream_name).await {
            Ok(stream) => match requirement {
                Requirement::Consumer { name, .. } => match stream.consumer_info(name).await {
                    Ok(_) => true,
                    Err(e) if consumer_not_found(&e) => false,
                    Err(e) => return Err(nats_err(&object)(e)),
                },
                _ => true,
            },
            Err(e) if stream_not_found(&e) => false,
            Err(e) => return Err(nats_err(&object)(e)),
        };
        if !found {
            missing.push(object);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ProvisionError::Missing(missing))
    }
}
