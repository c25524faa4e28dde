//! What every scenario checks at the end, for every job that got a 202: it reached a
//! terminal state, it ended exactly once, and no snapshot of it ever moved backwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use jetjobs::layout;
use serde_json::Value;

pub use jetjobs::testing::eventually;

/// Where a snapshot stands: `(attempt, step)`, as the state machine orders them.
fn position(snapshot: &Value) -> (u64, u8) {
    let attempt = snapshot["attempt"].as_u64().unwrap_or_default();
    let step = match snapshot["state"].as_str().unwrap_or_default() {
        // Queued again after a failed attempt (a retry) comes after that attempt's end.
        "queued" if attempt > 0 => 5,
        "scheduled" => 0,
        "queued" => 1,
        "running" => 2,
        "retrying" => 3,
        _ => 4,
    };
    (attempt, step)
}

pub fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

#[derive(Default)]
struct Seen {
    last: HashMap<String, Value>,
    regressions: Vec<String>,
    /// When the last snapshot of any job became terminal.
    completions: Vec<Instant>,
}

/// Watches every update of `job_status` during a run, so a snapshot that moves backwards
/// is caught even if a later write hides it (KV keeps only a few revisions).
pub struct Watcher {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    pub async fn start(js: &jetstream::Context) -> Self {
        let status = js
            .get_key_value(layout::STATUS_BUCKET)
            .await
            .expect("job_status");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(watch(status, Arc::clone(&seen)));
        Self { seen, task }
    }

    /// The first time a job completed after `since`: how long the system took to do
    /// work again after a fault.
    pub fn first_completion_after(&self, since: Instant) -> Option<Duration> {
        let seen = self.seen.lock().expect("watcher state");
        seen.completions
            .iter()
            .find(|at| **at >= since)
            .map(|at| at.duration_since(since))
    }

    fn regressions(&self) -> Vec<String> {
        self.seen.lock().expect("watcher state").regressions.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch(status: kv::Store, seen: Arc<Mutex<Seen>>) {
    // The watch resumes by itself across reconnects (an ordered consumer underneath);
    // if it ends (the server restarted), start again from the updates after the last.
    loop {
        let Ok(mut updates) = status.watch_all().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Some(update) = updates.next().await {
            let Ok(entry) = update else { break };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let Ok(snapshot) = serde_json::from_slice::<Value>(&entry.value) else {
                continue;
            };
            let mut guard = seen.lock().expect("watcher state");
            let seen = &mut *guard;
            let state = snapshot["state"].as_str().unwrap_or_default().to_string();
            if let Some(previous) = seen.last.get(&entry.key) {
                let was = previous["state"].as_str().unwrap_or_default();
                let backwards = position(&snapshot) < position(previous);
                let left_terminal =
                    is_terminal(was) && was != state && !(was == "failed" && state == "queued");
                // Same position: only progress may change, and only upward.
                if backwards || left_terminal {
                    seen.regressions
                        .push(format!("{}: {} -> {}", entry.key, previous, snapshot));
                }
            }
            if is_terminal(&state) {
                seen.completions.push(Instant::now());
            }
            seen.last.insert(entry.key.clone(), snapshot);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The verdict on a run.
#[derive(Debug, Default)]
pub struct Verdict {
    pub jobs: usize,
    /// No terminal snapshot.
    pub lost: Vec<String>,
    /// More than one terminal event, or more than one `succeeded`.
    pub duplicated: Vec<String>,
    pub regressions: Vec<String>,
    /// Final snapshots by job id.
    pub snapshots: HashMap<String, Value>,
    /// Events by job id, in stream order, as `(type, attempt)`.
    pub events: HashMap<String, Vec<(String, u64)>>,
}

impl Verdict {
    pub fn assert_clean(&self) {
        assert!(
            self.lost.is_empty() && self.duplicated.is_empty() && self.regressions.is_empty(),
            "lost {:?}\nduplicated {:?}\nregressions {:?}",
            self.lost,
            self.duplicated,
            self.regressions
        );
    }

    pub fn row(
        &self,
        number: u32,
        scenario: &str,
        recovery: Option<Duration>,
        notes: String,
    ) -> crate::report::Row {
        crate::report::Row {
            number,
            scenario: scenario.to_string(),
            jobs: self.jobs,
            lost: self.lost.len(),
            duplicated: self.duplicated.len(),
            regressions: self.regressions.len(),
            recovery,
            notes,
        }
    }

    /// Jobs whose last run was not their first.
    pub fn rerun(&self) -> usize {
        self.snapshots
            .values()
            .filter(|s| s["attempt"].as_u64().is_some_and(|a| a > 1))
            .count()
    }

    pub fn count_state(&self, state: &str) -> usize {
        self.snapshots
            .values()
            .filter(|s| s["state"] == state)
            .count()
    }
}

/// Waits up to `timeout` for every job in `ids` to be terminal, then judges the run.
pub async fn verify(
    js: &jetstream::Context,
    watcher: &Watcher,
    ids: &[String],
    timeout: Duration,
) -> Verdict {
    let status = js
        .get_key_value(layout::STATUS_BUCKET)
        .await
        .expect("job_status");
    let mut snapshots = HashMap::new();
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<String> = ids.to_vec();
    loop {
        let mut still = Vec::new();
        for id in pending {
            let snapshot = status
                .get(&id)
                .await
                .ok()
                .flatten()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
            match snapshot {
                Some(s) if s["state"].as_str().is_some_and(is_terminal) => {
                    snapshots.insert(id, s);
                }
                _ => still.push(id),
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Late events (a stale worker's) must not change anything either: let them land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = all_events(js).await;
    let duplicated = ids
        .iter()
        .filter(|id| {
            let Some(list) = events.get(*id) else {
                return false;
            };
            let ends = list.iter().filter(|(t, _)| is_terminal(t)).count();
            let successes = list.iter().filter(|(t, _)| t == "succeeded").count();
            ends > 1 || successes > 1
        })
        .cloned()
        .collect();
    Verdict {
        jobs: ids.len(),
        lost: pending,
        duplicated,
        regressions: watcher.regressions(),
        snapshots,
        events,
    }
}

/// Every event in `JOB_EVENTS`, by job id, in stream order.
async fn all_events(js: &jetstream::Context) -> HashMap<String, Vec<(String, u64)>> {
    let stream = js
        .get_stream(layout::EVENTS_STREAM)
        .await
        .expect("JOB_EVENTS");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut events: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(1), messages.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        let Ok(event) = serde_json::from_slice::<Value>(&message.payload) else {
            continue;
        };
        let (Some(id), Some(kind)) = (event["job_id"].as_str(), event["type"].as_str()) else {
            continue;
        };
        events.entry(id.to_string()).or_default().push((
            kind.to_string(),
            event["attempt"].as_u64().unwrap_or_default(),
        ));
    }
    events
}
