//! Accepting a job: validate, claim the id (idempotency), publish to `JOBS`, write the
//! first snapshot.
//!
//! The order is what makes the invariants hold:
//! 1. A claim in `job_idempotency` (create-only) decides which request owns an id or an
//!    `Idempotency-Key`; every later request with the same id/key and the same body
//!    converges on the same job, one with a different body is refused.
//! 2. The job is published with `Nats-Msg-Id` = job id, so racing or retried publishes of
//!    the same job are one message.
//! 3. Only after the PubAck is the `queued` snapshot created (create-only: the status
//!    service may already have written a later one for a fast job), and only then does
//!    the client get its 202. So a 202 always means "in the stream and readable".

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use bytes::Bytes;
use jetjobs::job::{JobRequest, MAX_ATTEMPTS_LIMIT, MAX_TIMEOUT_SECS, now};
use jetjobs::webhook::CallbackEvent;
use jetjobs::{JobId, JobSnapshot, Kind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// The body of `POST /v1/jobs` and `PUT /v1/jobs/{id}`.
/// (The schema in `/openapi.json` is `oneOf` one per registered kind, with its payload
/// schema: see `openapi::with_kinds`.)
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// Only on PUT, and then it must equal the path's id.
    #[serde(default, skip_serializing)]
    pub id: Option<uuid::Uuid>,
    pub kind: Kind,
    /// The job's input; its schema is the kind's (`GET /v1/kinds/{kind}`). Default `{}`.
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// Attempts at most (default per kind, 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 25)]
    pub max_attempts: Option<u32>,
    /// Per-attempt time limit (default per kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_secs: Option<u64>,
    /// Where to POST the job's events (webhooks): an absolute `http` or `https` URL
    /// without user or password; an IP literal must be public (or allow-listed).
    // Absent fields leave the fingerprint of a body without them as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uri", max_length = 2048)]
    pub callback_url: Option<String>,
    /// Which events to deliver (needs `callback_url`); default: how the job ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1)]
    pub callback_events: Option<Vec<CallbackEvent>>,
    /// Run no earlier than this (RFC 3339); or `delay_secs` from now. Not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Run no earlier than this many seconds from now (at most `JETJOBS_MAX_DELAY_SECS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub delay_secs: Option<f64>,
    /// Not started by this time (RFC 3339), or `expires_in_secs` after it could first
    /// start, the job is cancelled. Not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0)]
    pub expires_in_secs: Option<f64>,
    /// `high`, `normal` (the default) or `low`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<jetjobs::job::Priority>,
}

fn empty_object() -> Value {
    json!({})
}

/// How a job id was chosen, which decides what a repeat means.
pub enum Identity {
    /// `POST` without a key: a fresh UUIDv7, no claim needed.
    Fresh,
    /// `PUT /v1/jobs/{id}`.
    ClientId(JobId),
    /// `POST` with `Idempotency-Key`.
    IdempotencyKey(String),
}

/// The job a submission ended with, and its current snapshot.
pub struct Accepted {
    pub id: JobId,
    pub snapshot: Bytes,
    /// An earlier request with the same id or key created it; this one found it.
    pub replayed: bool,
}

#[derive(Serialize, Deserialize)]
struct Claim {
    job_id: JobId,
    fingerprint: String,
    /// The job's creation time, so every request that converges on the job builds the
    /// very same `JobRequest` (and the same first snapshot).
    created_at: chrono::DateTime<chrono::Utc>,
}

/// A file uploaded with its job (multipart): its blob id is in the payload's upload
/// field, and the request is fingerprinted with the file's SHA-256 instead, so a retry
/// that uploads the same file again converges on the same job.
pub struct Upload {
    pub field: String,
    pub sha256: String,
}

/// The checks of a job's body that need no payload validation: its kind is registered,
/// its options are in range, its callback may be called. The kind's registration, for
/// the payload check.
pub(crate) async fn check_options(
    state: &AppState,
    body: &SubmitBody,
) -> Result<std::sync::Arc<crate::kinds::Registered>, ApiError> {
    let registered = match state.kinds.lookup(&body.kind).await {
        Ok(Some(registered)) => registered,
        Ok(None) => return Err(unknown_kind(state, &body.kind).await),
        Err(e) => {
            return Err(ApiError::unavailable(
                format!("cannot read the kind registry: {e}"),
                1,
            ));
        }
    };
    if let Some(n) = body.max_attempts
        && !(1..=MAX_ATTEMPTS_LIMIT).contains(&n)
    {
        return Err(ApiError::invalid(format!(
            "max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {n}"
        )));
    }
    if let Some(secs) = body.timeout_secs
        && !(1..=MAX_TIMEOUT_SECS).contains(&secs)
    {
        return Err(ApiError::invalid(format!(
            "timeout_secs must be between 1 and {MAX_TIMEOUT_SECS}, got {secs}"
        )));
    }
    check_callback(state, body)?;
    Ok(registered)
}

pub async fn submit(
    state: &AppState,
    identity: Identity,
    body: SubmitBody,
    body_bytes: usize,
    upload: Option<&Upload>,
) -> Result<Accepted, ApiError> {
    let registered = check_options(state, &body).await?;
    let accepted_at = now();
    let mut scheduling = crate::delay::timing(&body, accepted_at, state.max_delay)?;

    // Validating and fingerprinting a large payload is milliseconds of CPU: off the
    // runtime, like its parsing.
    let file = upload.map(|u| (u.field.clone(), format!("sha256:{}", u.sha256)));
    let (body, fingerprint, registered) = if body_bytes >= crate::extract::BLOCKING_BODY_BYTES {
        tokio::task::spawn_blocking(move || {
            check_payload(&registered, &body)?;
            let fingerprint = fingerprint(&body, file.as_ref())?;
            Ok::<_, ApiError>((body, fingerprint, registered))
        })
        .await
        .map_err(|e| ApiError::internal(format!("checking the payload: {e}")))??
    } else {
        check_payload(&registered, &body)?;
        let fingerprint = fingerprint(&body, file.as_ref())?;
        (body, fingerprint, registered)
    };
    let info = &registered.info;
    // An uploaded blob the job names must exist now: a 422 at submit, not a failed job.
    let upload = match &info.upload_field {
        Some(field) => match body.payload.get(field).and_then(Value::as_str) {
            Some(blob) => {
                let found = state.blobs.info(blob).await.map_err(ApiError::from)?;
                if found.is_none() {
                    return Err(ApiError::invalid(format!(
                        "{field}: blob {blob} does not exist (or has expired); upload it with POST /v1/blobs"
                    ))
                    .with("field", json!(field)));
                }
                Some(blob.to_string())
            }
            None => None,
        },
        None => None,
    };
    let mut created_at = accepted_at;
    let fresh = matches!(identity, Identity::Fresh);
    let (id, claim_key, repeat) = match identity {
        Identity::Fresh => (JobId::new_v7(), None, false),
        Identity::ClientId(id) => {
            let key = format!("id.{id}");
            match claim(state, &key, id, &fingerprint, created_at).await? {
                ClaimOutcome::Won(revision) => {
                    // Jobs made by POST have no id claim: the id may still be taken.
                    if read_snapshot(state, id).await?.is_some() {
                        release_claim(state, &key, revision).await;
                        return Err(ApiError::conflict(format!(
                            "job {id} already exists (it was not created by this PUT)"
                        )));
                    }
                    (id, Some((key, revision)), false)
                }
                ClaimOutcome::Held(held) if held.fingerprint == fingerprint => {
                    created_at = held.created_at;
                    scheduling = crate::delay::timing(&body, created_at, state.max_delay)?;
                    (id, None, true)
                }
                ClaimOutcome::Held(_) => {
                    return Err(ApiError::conflict(format!(
                        "job {id} already exists with a different kind, payload or options"
                    )));
                }
            }
        }
        Identity::IdempotencyKey(idempotency_key) => {
            let key = format!(
                "key.{}",
                jetjobs::hex(&Sha256::digest(idempotency_key.as_bytes()))
            );
            let candidate = JobId::new_v7();
            match claim(state, &key, candidate, &fingerprint, created_at).await? {
                ClaimOutcome::Won(revision) => (candidate, Some((key, revision)), false),
                ClaimOutcome::Held(held) if held.fingerprint == fingerprint => {
                    created_at = held.created_at;
                    scheduling = crate::delay::timing(&body, created_at, state.max_delay)?;
                    (held.job_id, None, true)
                }
                ClaimOutcome::Held(_) => {
                    return Err(ApiError::new(
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency-key-reused",
                        "this Idempotency-Key was already used with a different request body",
                    ));
                }
            }
        }
    };
    crate::telemetry::note_job(id);
    if let Some(blob) = &upload {
        // Marked as the job's, so the sweeper keeps it as long as the job's snapshot.
        if let Err(e) = state.blobs.reference(blob, &id.to_string()).await {
            tracing::warn!(job_id = %id, %blob, error = %e, "Could not mark a blob as the job's; it expires with the upload TTL.");
        }
    }

    if repeat {
        // The job may be long finished and gone from JOBS: never publish it again if
        // it has a snapshot. Without one, the first request is still on its way (or died
        // between claim and publish), and publishing the same job again is safe.
        if let Some(snapshot) = read_snapshot(state, id).await? {
            return Ok(Accepted {
                id,
                snapshot,
                replayed: true,
            });
        }
    }

    let request = JobRequest {
        id,
        kind: body.kind,
        payload: body.payload,
        max_attempts: body.max_attempts.unwrap_or(info.max_attempts),
        timeout_secs: body.timeout_secs,
        created_at,
        prior_attempts: 0,
        callback_url: body.callback_url,
        callback_events: body.callback_events,
        scheduling,
    };
    // The expiry first: a job is never queued without it. Alone, it fires into a job
    // that does not exist, which the scheduler ignores.
    if let Err(failure) = crate::delay::schedule_expiry(state, &request).await {
        if let Some((key, revision)) = claim_key {
            release_claim(state, &key, revision).await;
        }
        return Err(failure.error);
    }
    // The listing entry and the job go out together; the entry is written once per job
    // (create-only on its subject), so a repeat never lists a job twice. A delayed job
    // goes to its schedule instead of `JOBS`.
    let (indexed, published) = tokio::join!(write_index(state, &request), async {
        if request.scheduling.run_at.is_some() {
            crate::delay::schedule_run(state, &request).await
        } else {
            publish(state, &request).await
        }
    });
    if let Err(failure) = published {
        // Free the id/key only when the server certainly stored nothing. After a timeout
        // the job may be queued: the claim must stay, so the client's retry with the same
        // id/key finds this job instead of making a second one.
        if failure.nothing_stored {
            if let Some((key, revision)) = claim_key {
                release_claim(state, &key, revision).await;
            }
            return Err(failure.error);
        }
        return Err(uncertain(state, &request, fresh, &fingerprint, failure.error).await);
    }
    if let Err(e) = indexed {
        // The job is queued; only its listing entry is missing. Tried once more before
        // the answer, then left (it is still readable by id).
        if let Err(again) = write_index(state, &request).await {
            tracing::warn!(job_id = %request.id, error = %e, again = %again, "A queued job could not be indexed for listing.");
        }
    }
    failpoint("submit-after-publish");
    let snapshot = write_first_snapshot(state, &request).await?;
    Ok(Accepted {
        id,
        snapshot,
        replayed: repeat,
    })
}

/// The payload fits its kind's schema, or the answer is a 422 that says where not.
pub(crate) fn check_payload(
    registered: &crate::kinds::Registered,
    body: &SubmitBody,
) -> Result<(), ApiError> {
    let Err(errors) = registered.check(&body.payload) else {
        return Ok(());
    };
    let detail = format!(
        "the payload does not fit kind {}: {}",
        body.kind,
        errors
            .iter()
            .map(|(path, message)| format!("{path}: {message}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let errors: Vec<Value> = errors
        .into_iter()
        .map(|(pointer, detail)| json!({"pointer": pointer, "detail": detail}))
        .collect();
    Err(ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-payload",
        detail,
    )
    .with("errors", json!(errors)))
}

/// The answer when the job may or may not be queued (its PubAck did not come): a 503
/// that names the job, so the client's retry converges on it. A plain POST has no claim
/// yet, so one is written now for its id: `PUT /v1/jobs/{id}` with the same body then
/// finds this job (and publishes it again under the same `Nats-Msg-Id`, which JetStream
/// deduplicates) instead of answering 409 or making a second one.
async fn uncertain(
    state: &AppState,
    request: &JobRequest,
    fresh: bool,
    fingerprint: &str,
    error: ApiError,
) -> ApiError {
    let id = request.id;
    let mut detail = error.detail.clone();
    if fresh {
        let key = format!("id.{id}");
        match claim(state, &key, id, fingerprint, request.created_at).await {
            Ok(_) => {
                detail.push_str(&format!(
                    "; retry with PUT /v1/jobs/{id} and the same body: it finds this job \
                     instead of making a second one"
                ));
            }
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e.detail, "Could not record the id of an unconfirmed job.");
                detail.push_str(&format!(
                    "; look it up at /v1/jobs/{id} before submitting it again"
                ));
            }
        }
    } else {
        detail.push_str("; retry with the same id or Idempotency-Key: it finds this job");
    }
    ApiError { detail, ..error }.for_job(id)
}

/// A callback must be a well-formed http(s) URL, and an IP literal must not point inside
/// the network (SSRF). Host names are judged by the notifier on each connection, since
/// what a name resolves to can change between now and then.
fn check_callback(state: &AppState, body: &SubmitBody) -> Result<(), ApiError> {
    let Some(raw) = &body.callback_url else {
        if body.callback_events.is_some() {
            return Err(ApiError::invalid(
                "callback_events was given without a callback_url",
            ));
        }
        return Ok(());
    };
    let url = jetjobs::webhook::parse_callback_url(raw)
        .map_err(|e| ApiError::invalid(e.to_string()).with("field", json!("callback_url")))?;
    state
        .webhook_allow
        .check_url(&url)
        .map_err(|e| ApiError::invalid(e.to_string()).with("field", json!("callback_url")))?;
    if body.callback_events.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::invalid(format!(
            "callback_events must name at least one of: {}",
            CallbackEvent::ALL.map(CallbackEvent::as_str).join(", ")
        ))
        .with("field", json!("callback_events")));
    }
    Ok(())
}

/// Dies here if the fault-injection suite asked for it (feature `failpoints` only): a
/// crash at the worst moment, when the job is queued but the client has no answer.
fn failpoint(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("JETJOBS_FAILPOINT").is_ok_and(|set| set == name) {
        tracing::error!(failpoint = name, "Failpoint reached; aborting.");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

async fn unknown_kind(state: &AppState, kind: &Kind) -> ApiError {
    let (detail, kinds) = match state.kinds.all().await {
        Ok(kinds) if kinds.is_empty() => (
            format!("unknown kind \"{kind}\": no processor has registered any kind yet"),
            kinds,
        ),
        Ok(kinds) => (
            format!(
                "unknown kind \"{kind}\"; registered kinds: {}",
                kinds.join(", ")
            ),
            kinds,
        ),
        Err(e) => {
            return ApiError::unavailable(format!("cannot read the kind registry: {e}"), 1);
        }
    };
    ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "unknown-kind",
        detail,
    )
    .with("kinds", json!(kinds))
}

/// A stable digest of everything that defines the job, to tell a retry from a new request.
/// An uploaded file counts by its content (`file`: its field and `sha256:<hex>`), not
/// by the blob id each upload gets.
fn fingerprint(body: &SubmitBody, file: Option<&(String, String)>) -> Result<String, ApiError> {
    let replaced;
    let body = match file {
        Some((field, digest)) => {
            let mut copy = body.clone();
            if let Some(payload) = copy.payload.as_object_mut() {
                payload.insert(field.clone(), Value::String(digest.clone()));
            }
            replaced = copy;
            &replaced
        }
        None => body,
    };
    // serde_json's maps are sorted, so equal bodies serialize to equal bytes.
    let canonical = serde_json::to_vec(body).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(jetjobs::hex(&Sha256::digest(&canonical)))
}

enum ClaimOutcome {
    /// This request owns the id/key; the claim's revision, to release only our own claim.
    Won(u64),
    Held(Claim),
}

async fn release_claim(state: &AppState, key: &str, revision: u64) {
    if let Err(e) = state
        .claims
        .delete_expect_revision(key, Some(revision))
        .await
    {
        tracing::warn!(%key, error = %e, "Could not release an idempotency claim.");
    }
}

async fn claim(
    state: &AppState,
    key: &str,
    id: JobId,
    fingerprint: &str,
    created_at: chrono::DateTime<chrono::Utc>,
) -> Result<ClaimOutcome, ApiError> {
    let value = serde_json::to_vec(&Claim {
        job_id: id,
        fingerprint: fingerprint.to_string(),
        created_at,
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    match state.claims.create(key, value.into()).await {
        Ok(revision) => Ok(ClaimOutcome::Won(revision)),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let held = state
                .claims
                .get(key)
                .await
                .map_err(|e| nats_unavailable("reading an idempotency claim", e))?
                .ok_or_else(|| {
                    ApiError::unavailable(
                        "an idempotency claim changed while it was read; retry",
                        1,
                    )
                })?;
            let held: Claim = serde_json::from_slice(&held).map_err(|e| {
                ApiError::internal(format!("a stored idempotency claim is invalid: {e}"))
            })?;
            Ok(ClaimOutcome::Held(held))
        }
        Err(e) => Err(nats_unavailable("recording the idempotency claim", e)),
    }
}

pub(crate) struct PublishFailure {
    pub error: ApiError,
    /// The server refused the message (or it never left): the job is certainly not queued.
    pub nothing_stored: bool,
}

/// Publishes a job request to `JOBS`, with `msg_id` as its deduplication id.
pub(crate) async fn publish(state: &AppState, request: &JobRequest) -> Result<(), PublishFailure> {
    publish_as(state, request, &request.id.to_string()).await
}

pub(crate) async fn publish_as(
    state: &AppState,
    request: &JobRequest,
    msg_id: &str,
) -> Result<(), PublishFailure> {
    let mut trace = HeaderMap::new();
    jetjobs::trace_context::inject_current(&mut trace);
    let message =
        jetjobs::protocol::job_message(request, msg_id, trace).map_err(|e| PublishFailure {
            error: ApiError::internal(e.to_string()),
            nothing_stored: true,
        })?;
    use jetjobs::protocol::Published;
    let refused = |error| PublishFailure {
        error,
        nothing_stored: true,
    };
    match state.writers.jobs.publish(message).await {
        // `JOBS` holds one message per job: a repeat after the duplicate window finds this
        // job queued already, which is what the publish wanted.
        Published::Stored(_) | Published::SubjectFull => Ok(()),
        Published::TooLarge => Err(refused(ApiError::too_large(
            "the job is larger than the NATS server accepts in one message",
        ))),
        Published::StoreFull => Err(refused(
            ApiError::unavailable("the job queue is full; retry later", 5)
                .with("queue", json!("full")),
        )),
        Published::WrongLastSequence | Published::NotConfirmed => Err(PublishFailure {
            error: ApiError::unavailable(
                "the job could not be confirmed as queued (JetStream did not answer in time)",
                1,
            ),
            nothing_stored: false,
        }),
    }
}

/// A job's entry in `JOBS_INDEX`: what listing reads before the snapshots.
#[derive(Serialize, Deserialize)]
pub struct IndexEntry {
    pub id: JobId,
    pub kind: Kind,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Writes the job's listing entry, once: create-only on its own subject (a repeat of
/// the submission, even after the duplicate window, finds it there).
pub(crate) async fn write_index(state: &AppState, request: &JobRequest) -> Result<(), String> {
    let entry = IndexEntry {
        id: request.id,
        kind: request.kind.clone(),
        created_at: request.created_at,
    };
    let payload = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(jetjobs::subjects::headers::EXPECTED_LAST_SUBJECT_SEQ, "0");
    let outgoing = jetjobs::protocol::Outgoing {
        subject: jetjobs::subjects::index(&request.kind, request.id),
        headers,
        payload: payload.into(),
    };
    use jetjobs::protocol::Published;
    // Not through group commit: a batch is of one stream.
    match jetjobs::protocol::publish(&state.js, outgoing, jetjobs::protocol::Retries::REQUEST).await
    {
        Published::Stored(_) | Published::WrongLastSequence | Published::SubjectFull => Ok(()),
        Published::StoreFull => Err("JOBS_INDEX is full".to_string()),
        Published::TooLarge => Err("the entry is too large".to_string()),
        Published::NotConfirmed => Err("JetStream did not confirm the entry".to_string()),
    }
}

/// How long the gateway keeps trying to write a queued job's first snapshot.
const FIRST_SNAPSHOT_BUDGET: std::time::Duration = std::time::Duration::from_secs(8);

pub(crate) async fn write_first_snapshot(
    state: &AppState,
    request: &JobRequest,
) -> Result<Bytes, ApiError> {
    let snapshot = JobSnapshot::queued(request);
    let bytes: Bytes = serde_json::to_vec(&snapshot)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .into();
    let key = request.id.to_string();
    let mut last_error = None;
    // Long enough to ride out a KV leader election in a cluster (a few seconds): the job
    // is queued already, and a client without an Idempotency-Key that retried our 503
    // would make a second job. Bounded in time, not tries: a server that does not answer
    // at all (a full disk) must not hold the client for many request timeouts.
    let deadline = tokio::time::Instant::now() + FIRST_SNAPSHOT_BUDGET;
    let mut delay = std::time::Duration::ZERO;
    loop {
        // Not `sleep(ZERO)` on the first try: tokio rounds every sleep up to its next
        // 1 ms tick, which cost each submission ~0.5 ms of latency for nothing.
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // A KV create, as `kv::Store::create` sends it (expected last subject sequence
        // 0), through group commit: snapshots of concurrent submissions share a batch.
        let mut headers = HeaderMap::new();
        headers.insert(jetjobs::subjects::headers::EXPECTED_LAST_SUBJECT_SEQ, "0");
        let create = jetjobs::protocol::Outgoing {
            subject: format!("$KV.{}.{key}", jetjobs::layout::STATUS_BUCKET),
            headers,
            payload: bytes.clone(),
        };
        use jetjobs::protocol::Published;
        match tokio::time::timeout(left, state.writers.snapshots.publish(create)).await {
            Ok(Published::Stored(_)) => return Ok(bytes),
            // The status service got there first: its snapshot is newer than ours.
            Ok(Published::WrongLastSequence) => {
                if let Some(current) = read_snapshot(state, request.id).await? {
                    return Ok(current);
                }
            }
            Ok(Published::StoreFull) => {
                last_error = Some("the job_status bucket is full (maximum bytes)".to_string());
            }
            Ok(Published::TooLarge) => {
                last_error = Some("the snapshot is larger than NATS accepts".to_string());
            }
            Ok(_) => last_error = Some("JetStream did not confirm the write".to_string()),
            Err(_) => last_error = Some("no answer in time".to_string()),
        }
        delay = (delay * 2).clamp(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(2),
        );
        if tokio::time::Instant::now() + delay >= deadline {
            break;
        }
    }
    // The job is queued and will run; only its first snapshot is missing, and the status
    // service will write one as soon as the job starts.
    Err(ApiError::unavailable(
        format!(
            "job {id} was queued and will run, but its status could not be recorded yet ({}); \
             it appears at /v1/jobs/{id} once the job starts",
            last_error.unwrap_or_default(),
            id = request.id,
        ),
        1,
    )
    .for_job(request.id))
}

pub async fn read_snapshot(state: &AppState, id: JobId) -> Result<Option<Bytes>, ApiError> {
    state
        .status
        .get(id.to_string())
        .await
        .map_err(|e| nats_unavailable("reading the job status", e))
}

pub fn nats_unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!("{what} failed: {e}"), 1)
}
