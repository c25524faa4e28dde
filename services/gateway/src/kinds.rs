//! The gateway's view of `job_kinds`: kept in memory by a KV watch, so accepting a job
//! costs no extra round trip, with a direct read on a miss so a processor that has just
//! registered is never refused.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use jetjobs::Kind;
use jetjobs::kinds::{self, KindInfo, RegistryError};

use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct KindCache {
    bucket: kv::Store,
    /// `Arc`: a submission takes its kind's entry without deep-cloning its JSON schema.
    known: Arc<RwLock<BTreeMap<Kind, Arc<Registered>>>>,
}

/// A registered kind, with its payload schema compiled once.
#[derive(Clone)]
pub struct Registered {
    pub info: KindInfo,
    validator: Option<Arc<jsonschema::Validator>>,
}

impl Registered {
    fn new(info: KindInfo) -> Self {
        let validator = match jsonschema::validator_for(&info.payload_schema) {
            Ok(validator) => Some(Arc::new(validator)),
            Err(e) => {
                tracing::warn!(kind = %info.kind, error = %e, "Unusable payload schema; payloads of this kind go unchecked.");
                None
            }
        };
        Self { info, validator }
    }

    /// Checks a payload against the kind's schema; the errors say where and what.
    pub fn check(&self, payload: &serde_json::Value) -> Result<(), Vec<(String, String)>> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let errors: Vec<(String, String)> = validator
            .iter_errors(payload)
            .take(10)
            .map(|e| (format!("/payload{}", e.instance_path()), e.to_string()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl KindCache {
    /// Starts the watch; it stops with `shutdown`.
    pub fn start(bucket: kv::Store, shutdown: CancellationToken) -> Self {
        let cache = Self {
            bucket,
            known: Arc::default(),
        };
        let watcher = cache.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = watcher.watch() => {}
                () = shutdown.cancelled() => {}
            }
        });
        cache
    }

    async fn watch(&self) {
        loop {
            match self.bucket.watch_with_history(">").await {
                Ok(mut entries) => {
                    while let Some(entry) = entries.next().await {
                        match entry {
                            Ok(entry) => self.apply(&entry),
                            Err(e) => {
                                tracing::warn!(error = %e, "Kind registry watch interrupted.");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Cannot watch the kind registry."),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    fn apply(&self, entry: &kv::Entry) {
        let Ok(kind) = Kind::new(entry.key.clone()) else {
            return;
        };
        // The schema is compiled before the lock is taken: readers (every submission)
        // never wait for a compilation.
        let registered = match entry.operation {
            kv::Operation::Put => match kinds::decode(&entry.key, &entry.value) {
                Ok(info) => Some(Arc::new(Registered::new(info))),
                Err(e) => {
                    tracing::warn!(error = %e, "Ignoring a bad kind registration.");
                    return;
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        match registered {
            Some(registered) => {
                known.insert(kind, registered);
            }
            None => {
                known.remove(&kind);
            }
        }
    }

    pub async fn lookup(&self, kind: &Kind) -> Result<Option<Arc<Registered>>, RegistryError> {
        if let Some(registered) = self
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind)
        {
            return Ok(Some(Arc::clone(registered)));
        }
        let Some(info) = kinds::lookup(&self.bucket, kind).await? else {
            return Ok(None);
        };
        let registered = Arc::new(Registered::new(info));
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind.clone(), registered.clone());
        Ok(Some(registered))
    }

    /// Every registered kind. From the watched cache (a client sending unknown kinds
    /// costs no NATS round trip); from the bucket only while the cache is still empty.
    pub async fn all(&self) -> Result<Vec<String>, RegistryError> {
        let cached: Vec<String> = self
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .map(|k| k.to_string())
            .collect();
        if !cached.is_empty() {
            return Ok(cached);
        }
        let keys = self
            .bucket
            .keys()
            .await
            .map_err(|e| RegistryError::Nats(e.into()))?;
        let mut kinds: Vec<String> = keys.filter_map(|k| async move { k.ok() }).collect().await;
        kinds.sort();
        Ok(kinds)
    }
}
