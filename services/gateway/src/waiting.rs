//! Waiting for a job to change: what `Prefer: wait`, long-poll and the streams share.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::submit::nats_unavailable;
use crate::watch::{Change, Event, Hub, Subscription};

/// Everything the push routes need, in one field of `AppState`.
#[derive(Clone)]
pub struct Push {
    pub hub: Hub,
    pub shutdown: CancellationToken,
    /// Longest wait a client may ask for (`Prefer: wait`, `?wait=`).
    pub max_wait: Duration,
    pub sse_keepalive: Duration,
    /// Permits for `GET /v1/events` streams; each one holds a KV consumer.
    pub event_streams: Arc<Semaphore>,
}

impl Push {
    pub fn clamp(&self, secs: u64) -> Duration {
        Duration::from_secs(secs).min(self.max_wait)
    }
}

/// The current snapshot of `key`, as a [`Change`] (with its revision); `None` if there is
/// none (never written, or deleted).
pub async fn read(status: &kv::Store, key: &str) -> Result<Option<Arc<Change>>, ApiError> {
    let entry = status
        .entry(key)
        .await
        .map_err(|e| nats_unavailable("reading the job status", e))?;
    Ok(entry
        .map(Change::from_entry)
        .filter(Change::is_snapshot)
        .map(Arc::new))
}

/// Waits until `key`'s snapshot satisfies `done`, the deadline passes, or the gateway shuts
/// down, and returns the newest snapshot seen. `current` is the snapshot read after
/// `subscription` was made, so no change between the two is missed. Never fails: waiting
/// is a courtesy, and trouble ends it with what is known (a submission that fails here
/// would invite a retry that makes a second job).
pub async fn until(
    push: &Push,
    status: &kv::Store,
    subscription: &mut Subscription,
    key: &str,
    mut current: Option<Arc<Change>>,
    deadline: Instant,
    done: impl Fn(&Change) -> bool,
) -> Option<Arc<Change>> {
    let newer = |candidate: &Change, current: &Option<Arc<Change>>| {
        current
            .as_ref()
            .is_none_or(|c| candidate.revision > c.revision)
    };
    loop {
        if current.as_deref().is_some_and(&done) {
            return current;
        }
        let event = tokio::select! {
            () = tokio::time::sleep_until(deadline) => return current,
            () = push.shutdown.cancelled() => return current,
            event = subscription.recv() => event,
        };
        match event {
            Ok(Event::Change(change)) => {
                if change.key == key && change.is_snapshot() && newer(&change, &current) {
                    current = Some(change);
                }
            }
            Ok(Event::Lagged) => match read(status, key).await {
                Ok(Some(change)) if newer(&change, &current) => current = Some(change),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(detail = %e.detail, "Stopped waiting for a job: cannot re-read it.");
                    return current;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "Stopped waiting for a job: no watch.");
                return current;
            }
        }
    }
}

/// The `wait` preference of a `Prefer` header (RFC 7240), in seconds.
///
/// Preferences are hints: a malformed or unknown one is ignored, as RFC 7240 asks, rather
/// than refused. Several `Prefer` headers and comma-separated lists are both allowed.
pub fn prefer_wait(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|preference| {
            // `wait=10; param` — parameters after `;` are not used by `wait`.
            let token = preference.split(';').next()?.trim();
            let (name, value) = token.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            value.parse::<u64>().ok()
        })
        .next()
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::prefer_wait;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("prefer", HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn wait_is_found_in_lists_in_any_case() {
        assert_eq!(prefer_wait(&headers(&["wait=10"])), Some(10));
        assert_eq!(prefer_wait(&headers(&["respond-async, WAIT=5"])), Some(5));
        assert_eq!(
            prefer_wait(&headers(&["respond-async", "wait = \"7\""])),
            Some(7)
        );
        assert_eq!(prefer_wait(&headers(&["wait=3; foo=bar"])), Some(3));
    }

    #[test]
    fn malformed_waits_are_ignored() {
        assert_eq!(prefer_wait(&headers(&[])), None);
        assert_eq!(prefer_wait(&headers(&["wait=soon"])), None);
        assert_eq!(prefer_wait(&headers(&["wait=-1"])), None);
        assert_eq!(prefer_wait(&headers(&["wait"])), None);
        assert_eq!(prefer_wait(&headers(&["handling=lenient"])), None);
        assert_eq!(prefer_wait(&headers(&["wait=x, wait=4"])), Some(4));
    }
}
