//! Blobs: uploads and large results in Object Store bucket `job_blobs` (claim-check:
//! messages carry a blob's id, never its bytes).
//!
//! Writes are ours, not `ObjectStore::put`: a body is streamed in chunk by chunk with a
//! size limit checked as it arrives, its SHA-256 computed off the async runtime, chunk
//! publishes pipelined (a bounded window of acks in flight, where `put` waits for each),
//! and on any failure (too large, client gone, store full) the chunks already stored are
//! purged, so a refused upload leaves nothing behind. The result is an ordinary object:
//! `nats object get job_blobs <id>` reads it, and so does [`Blobs::reader`].
//!
//! Lifetimes: an upload no job references is deleted after the blob TTL by
//! [`Blobs::sweep`]; a referenced blob (its `job` metadata names the job) lives as long
//! as that job's snapshot, and the stream's `max_age` (retention + a day) bounds all.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, object_store};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};

use crate::layout::BLOBS_BUCKET;

/// Chunk size: async-nats' default, so clients of either kind read the same objects.
const CHUNK: usize = 128 * 1024;
/// Chunk publishes awaiting their ack at once: 2 MiB in flight per upload.
const WINDOW: usize = 16;
/// Chunks a reader asks for at once: 1 MiB.
const READ_AHEAD: usize = 8;

/// A blob's bytes, read [`READ_AHEAD`] chunks at a time.
pub type BlobReader = tokio_util::io::StreamReader<
    futures::stream::BoxStream<'static, std::io::Result<Bytes>>,
    Bytes,
>;

/// Where a reader is: the next stream sequence to look from, chunks still to read.
struct Pull {
    next: u64,
    remaining: usize,
}

const META_CONTENT_TYPE: &str = "content_type";
const META_SHA256: &str = "sha256";
const META_CREATED: &str = "created_ms";
/// The job that references the blob (its input or its result).
const META_JOB: &str = "job";

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the body failed: {0}")]
    Body(String),
    #[error("no blob {0}")]
    NotFound(String),
    #[error("the blob store is full")]
    Full,
    #[error("NATS: {0}")]
    Nats(String),
}

impl BlobError {
    fn nats(e: impl std::fmt::Display) -> Self {
        let text = e.to_string();
        // JetStream's "maximum bytes exceeded" / "insufficient resources" on a
        // discard-new stream.
        if text.contains("maximum bytes") || text.contains("insufficient resources") {
            Self::Full
        } else {
            Self::Nats(text)
        }
    }
}

/// What the API shows of a blob.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
    pub content_type: String,
    #[serde(skip)]
    pub job: Option<String>,
    #[serde(skip)]
    pub created_ms: u64,
}

impl BlobInfo {
    fn from_object(info: &object_store::ObjectInfo) -> Self {
        let meta = |key: &str| info.metadata.get(key).cloned();
        Self {
            id: info.name.clone(),
            size: info.size as u64,
            sha256: meta(META_SHA256).unwrap_or_default(),
            content_type: meta(META_CONTENT_TYPE)
                .unwrap_or_else(|| "application/octet-stream".to_string()),
            job: meta(META_JOB).filter(|j| !j.is_empty()),
            created_ms: meta(META_CREATED)
                .and_then(|c| c.parse().ok())
                .unwrap_or_default(),
        }
    }

    /// The strong `ETag` of its bytes.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.sha256)
    }
}

/// The `job_blobs` bucket.
#[derive(Clone)]
pub struct Blobs {
    js: jetstream::Context,
    store: object_store::ObjectStore,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn meta_subject(id: &str) -> String {
    let name = base64::engine::general_purpose::URL_SAFE.encode(id);
    format!("$O.{BLOBS_BUCKET}.M.{name}")
}

impl Blobs {
    /// Opens the provisioned bucket.
    pub async fn open(js: &jetstream::Context) -> Result<Self, BlobError> {
        let store = js
            .get_object_store(BLOBS_BUCKET)
            .await
            .map_err(BlobError::nats)?;
        Ok(Self {
            js: js.clone(),
            store,
        })
    }

    /// Streams `body` into a new blob `id`, refusing it once it passes `limit` bytes.
    /// `job` marks it referenced at once (a result, or an upload made with its job).
    pub async fn put<S, E>(
        &self,
        id: &str,
        content_type: &str,
        job: Option<&str>,
        body: S,
        limit: u64,
    ) -> Result<BlobInfo, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let nuid = uuid::Uuid::now_v7().simple().to_string();
        let chunks_subject = format!("$O.{BLOBS_BUCKET}.C.{nuid}");
        // A blob written again (a job's result, by a rerun) replaces the old one, whose
        // chunks go once the new description is stored.
        let previous = match self.store.info(id).await {
            Ok(info) if !info.deleted => Some(info.nuid),
            _ => None,
        };
        let result = match self.write_chunks(&chunks_subject, body, limit).await {
            Ok((size, chunks, digest)) => {
                let info = BlobInfo {
                    id: id.to_string(),
                    size,
                    sha256: crate::hex(&digest),
                    content_type: content_type.to_string(),
                    job: job.map(str::to_string),
                    created_ms: now_ms(),
                };
                self.write_meta(&info, &nuid, chunks, &digest)
                    .await
                    .map(|()| info)
            }
            Err(e) => Err(e),
        };
        if result.is_ok()
            && let Some(old) = previous
            && let Err(e) = self.purge(&format!("$O.{BLOBS_BUCKET}.C.{old}")).await
        {
            tracing::warn!(error = %e, blob = id, "Could not purge a replaced blob's chunks; max_age will.");
        }
        if result.is_err() {
            // Nothing half-stored: the chunks of a refused upload go at once.
            if let Err(e) = self.purge(&chunks_subject).await {
                tracing::warn!(error = %e, blob = id, "Could not purge a refused upload's chunks; max_age will.");
            }
        }
        result
    }

    async fn write_chunks<S, E>(
        &self,
        subject: &str,
        body: S,
        limit: u64,
    ) -> Result<(u64, usize, [u8; 32]), BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut body = std::pin::pin!(body);
        let mut hasher = Some(Sha256::new());
        let mut buffer = BytesMut::with_capacity(CHUNK);
        let mut size: u64 = 0;
        let mut chunks = 0usize;
        let mut acks = VecDeque::with_capacity(WINDOW);
        let mut done = false;
        while !done {
            match body.next().await {
                Some(Ok(bytes)) => {
                    size += bytes.len() as u64;
                    if size > limit {
                        return Err(BlobError::TooLarge { limit });
                    }
                    buffer.extend_from_slice(&bytes);
                }
                Some(Err(e)) => return Err(BlobError::Body(e.to_string())),
                None => done = true,
            }
            while buffer.len() >= CHUNK || (done && !buffer.is_empty()) {
                let take = buffer.len().min(CHUNK);
                let chunk = buffer.split_to(take).freeze();
                // SHA-256 of 128 KiB is ~0.3 ms of CPU: off the runtime.
                let mut h = hasher.take().unwrap_or_default();
                let hashed = chunk.clone();
                h = tokio::task::spawn_blocking(move || {
                    h.update(&hashed);
                    h
                })
                .await
                .map_err(BlobError::nats)?;
                hasher = Some(h);
                if acks.len() == WINDOW {
                    Self::settle(acks.pop_front()).await?;
                }
                let ack = self
                    .js
                    .publish(subject.to_string(), chunk)
                    .await
                    .map_err(BlobError::nats)?;
                acks.push_back(ack);
                chunks += 1;
            }
        }
        while let Some(ack) = acks.pop_front() {
            Self::settle(Some(ack)).await?;
        }
        let digest = hasher.unwrap_or_default().finalize();
        Ok((size, chunks, digest.into()))
    }

    async fn settle(ack: Option<jetstream::context::PublishAckFuture>) -> Result<(), BlobError> {
        if let Some(ack) = ack {
            ack.await.map_err(BlobError::nats)?;
        }
        Ok(())
    }

    async fn write_meta(
        &self,
        info: &BlobInfo,
        nuid: &str,
        chunks: usize,
        digest: &[u8; 32],
    ) -> Result<(), BlobError> {
        let mut metadata = HashMap::from([
            (META_CONTENT_TYPE.to_string(), info.content_type.clone()),
            (META_SHA256.to_string(), info.sha256.clone()),
            (META_CREATED.to_string(), info.created_ms.to_string()),
        ]);
        if let Some(job) = &info.job {
            metadata.insert(META_JOB.to_string(), job.clone());
        }
        let digest = base64::engine::general_purpose::URL_SAFE.encode(digest);
        // async-nats' ObjectInfo, as JSON (its `modified` is RFC 3339).
        let meta = serde_json::json!({
            "name": info.id,
            "bucket": BLOBS_BUCKET,
            "nuid": nuid,
            "size": info.size,
            "chunks": chunks,
            "mtime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "digest": format!("SHA-256={digest}"),
            "options": {"max_chunk_size": CHUNK},
            "metadata": metadata,
        });
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        let payload = serde_json::to_vec(&meta).map_err(BlobError::nats)?;
        self.js
            .publish_with_headers(meta_subject(&info.id), headers, payload.into())
            .await
            .map_err(BlobError::nats)?
            .await
            .map_err(BlobError::nats)?;
        Ok(())
    }

    async fn purge(&self, subject: &str) -> Result<(), BlobError> {
        let stream = self
            .js
            .get_stream(crate::layout::BLOBS_STREAM)
            .await
            .map_err(BlobError::nats)?;
        stream
            .purge()
            .filter(subject)
            .await
            .map_err(BlobError::nats)?;
        Ok(())
    }

    /// The blob's description, or `None` when there is no such blob.
    pub async fn info(&self, id: &str) -> Result<Option<BlobInfo>, BlobError> {
        Ok(self.object(id).await?.as_ref().map(BlobInfo::from_object))
    }

    /// The stored object description of blob `id`, or `None` (never stored, deleted,
    /// or not a blob id at all).
    async fn object(&self, id: &str) -> Result<Option<object_store::ObjectInfo>, BlobError> {
        if !valid_id(id) {
            return Ok(None);
        }
        match self.store.info(id).await {
            Ok(info) if !info.deleted => Ok(Some(info)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::nats(e)),
        }
    }

    /// The blob's bytes as an `AsyncRead`. Not `ObjectStore::get`: its ordered push
    /// consumer lets the server run ahead of a slow reader (a 1 GiB hash held ~70 MB of
    /// chunks in flight). Here chunks are pulled with batched direct gets, [`READ_AHEAD`]
    /// at a time, so memory stays at a few chunks whatever the blob's size.
    pub async fn reader(&self, id: &str) -> Result<BlobReader, BlobError> {
        let info = self
            .object(id)
            .await?
            .ok_or_else(|| BlobError::NotFound(id.to_string()))?;
        let subject = format!("$O.{BLOBS_BUCKET}.C.{}", info.nuid);
        let client = self.js.client();
        let start = Pull {
            next: 1,
            remaining: info.chunks,
        };
        let chunks = futures::stream::unfold(Some(start), move |pull| {
            let client = client.clone();
            let subject = subject.clone();
            async move {
                let pull = pull?;
                if pull.remaining == 0 {
                    return None;
                }
                let request = crate::direct::Request {
                    seq: Some(pull.next),
                    next_by_subj: Some(subject),
                    batch: pull.remaining.min(READ_AHEAD),
                    ..Default::default()
                };
                let read = crate::direct::batch(
                    &client,
                    crate::layout::BLOBS_STREAM,
                    &request,
                    Duration::from_secs(30),
                )
                .await;
                match read {
                    Ok(batch) if !batch.is_empty() => {
                        let next = Pull {
                            next: batch.last().map_or(pull.next, |m| m.sequence + 1),
                            remaining: pull.remaining.saturating_sub(batch.len()),
                        };
                        let bytes: Vec<std::io::Result<Bytes>> =
                            batch.into_iter().map(|m| Ok(m.payload)).collect();
                        Some((futures::stream::iter(bytes), Some(next)))
                    }
                    Ok(_) => Some((
                        futures::stream::iter(vec![Err(std::io::Error::other(
                            "the blob's chunks are gone (it expired or was replaced)",
                        ))]),
                        None,
                    )),
                    Err(e) => Some((
                        futures::stream::iter(vec![Err(std::io::Error::other(e.to_string()))]),
                        None,
                    )),
                }
            }
        })
        .flatten()
        .boxed();
        Ok(tokio_util::io::StreamReader::new(chunks))
    }

    /// Marks blob `id` as used by `job`, so the sweeper keeps it as long as the job's
    /// snapshot. `NotFound` when the blob does not exist (or expired).
    pub async fn reference(&self, id: &str, job: &str) -> Result<BlobInfo, BlobError> {
        let mut object = self
            .object(id)
            .await?
            .ok_or_else(|| BlobError::NotFound(id.to_string()))?;
        let mut info = BlobInfo::from_object(&object);
        if info.job.as_deref() == Some(job) {
            return Ok(info);
        }
        // Not `ObjectStore::update_metadata`: async-nats 0.51 keeps only the name and
        // description of what it is given, dropping the metadata this is about.
        object
            .metadata
            .insert(META_JOB.to_string(), job.to_string());
        let payload = serde_json::to_vec(&object).map_err(BlobError::nats)?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        self.js
            .publish_with_headers(meta_subject(id), headers, payload.into())
            .await
            .map_err(BlobError::nats)?
            .await
            .map_err(BlobError::nats)?;
        info.job = Some(job.to_string());
        Ok(info)
    }

    pub async fn delete(&self, id: &str) -> Result<(), BlobError> {
        self.store.delete(id).await.map_err(BlobError::nats)
    }

    /// One pass over the bucket: deletes uploads no job references once older than
    /// `ttl`, and blobs whose job no longer has a snapshot (`job_exists` says).
    /// Idempotent, so every gateway replica may run it. Returns how many it deleted.
    pub async fn sweep<F, Fut>(&self, ttl: Duration, job_exists: F) -> Result<usize, BlobError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut list = self.store.list().await.map_err(BlobError::nats)?;
        let now = now_ms();
        let ttl_ms = ttl.as_millis() as u64;
        let mut deleted = 0;
        while let Some(object) = list.next().await {
            let Ok(object) = object else { continue };
            if object.deleted {
                continue;
            }
            let info = BlobInfo::from_object(&object);
            let expired = match &info.job {
                None => now.saturating_sub(info.created_ms) >= ttl_ms,
                // Give a just-made job's snapshot time to appear.
                Some(job) => {
                    now.saturating_sub(info.created_ms) >= ttl_ms.min(60_000)
                        && !job_exists(job.clone()).await
                }
            };
            if expired && self.delete(&info.id).await.is_ok() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// Blob ids are UUIDs: nothing else is looked up (object names could hold anything).
pub fn valid_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}
