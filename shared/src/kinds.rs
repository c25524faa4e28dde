//! The job-kind registry, KV bucket `job_kinds`: each processor registers the kinds it
//! serves when it starts, and the gateway accepts only registered kinds.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::Kind;

/// Default attempts for a kind that does not say otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default per-attempt time limit for a kind that does not say otherwise.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// The value stored under a kind's name in `job_kinds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindInfo {
    pub kind: Kind,
    pub description: String,
    /// The processor service (and durable consumer) that runs this kind.
    pub processor: String,
    pub max_attempts: u32,
    pub timeout_secs: u64,
    /// JSON Schema of the payload, for humans and tools.
    pub payload_schema: Value,
    /// The payload field that takes a `job_blobs` id (uploads), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_field: Option<String>,
    pub registered_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("KV bucket job_kinds: {0}")]
    Nats(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("entry {key:?} in job_kinds is not a valid kind description: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `info` under its kind. Registering again replaces the entry (a new revision).
pub async fn register(
    kinds: &async_nats::jetstream::kv::Store,
    info: &KindInfo,
) -> Result<(), RegistryError> {
    let value: bytes::Bytes = serde_json::to_vec(info)
        .map_err(|e| RegistryError::Nats(e.into()))?
        .into();
    // A processor starting while its cluster elects the bucket's leader (right after
    // provisioning, or during a failover) would otherwise exit; the put is idempotent.
    let mut delay = std::time::Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match kinds.put(info.kind.as_str(), value.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if tries < REGISTER_TRIES => {
                tries += 1;
                tracing::warn!(kind = %info.kind, error = %e, "Cannot register the kind yet; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(3));
            }
            Err(e) => return Err(RegistryError::Nats(e.into())),
        }
    }
}

/// Tries of a kind registration before a processor gives up (about 20 s in all).
const REGISTER_TRIES: u32 = 10;

/// Reads one kind's entry, if registered.
pub async fn lookup(
    kinds: &async_nats::jetstream::kv::Store,
    kind: &Kind,
) -> Result<Option<KindInfo>, RegistryError> {
    match kinds.get(kind.as_str()).await {
        Ok(Some(bytes)) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| RegistryError::Decode {
                    key: kind.to_string(),
                    source,
                })
        }
        Ok(None) => Ok(None),
        Err(e) => Err(RegistryError::Nats(e.into())),
    }
}

pub fn decode(key: &str, bytes: &[u8]) -> Result<KindInfo, RegistryError> {
    serde_json::from_slice(bytes).map_err(|source| RegistryError::Decode {
        key: key.to_string(),
        source,
    })
}
