//! WebSocket `GET /v1/ws`: subscribe to jobs (by id) and kinds, receive their snapshots.
//!
//! Client → server: `{"op":"subscribe","jobs":[ids],"kinds":[kinds]}` and
//! `{"op":"unsubscribe",...}`. Server → client: `{"type":"snapshot","revision":N,"job":{…}}`,
//! `{"type":"subscribed"|"unsubscribed","jobs":[…],"kinds":[…]}`,
//! `{"type":"error","detail":"…"}`. A bad message gets an error; the socket stays open.
//!
//! Outgoing snapshots are coalesced per job: while the client is slow, only each job's
//! newest snapshot waits to be sent. A job's states only move forward and terminal states
//! are final, so a slow client still gets every job's terminal snapshot, and the memory a
//! connection holds is bounded by the jobs it watches (plus [`MAX_KIND_PENDING`] for kind
//! subscriptions, beyond which updates are dropped and the client is told `lagged`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::response::IntoResponse as _;
use axum::response::Response;
use futures::{SinkExt as _, StreamExt as _};
use jetjobs::{JobId, Kind};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::AppState;
use crate::error::ApiError;
use crate::waiting;
use crate::watch::{self, Change};

/// Largest message a client may send.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Job ids plus kinds one connection may watch.
const MAX_SUBSCRIPTIONS: usize = 1000;
/// Kind-matched snapshots (of jobs not subscribed by id) waiting to be sent, at most.
const MAX_KIND_PENDING: usize = 1024;
/// Replies (acks, errors, pings) waiting to be sent; at the cap, client messages are not
/// read until the client reads its replies.
const MAX_CONTROL: usize = 64;
/// How often the server pings; a client that has not answered by the next ping is closed.
const PING_EVERY: Duration = Duration::from_secs(20);
/// KV reads in flight while answering a subscribe.
const READ_CONCURRENCY: usize = 16;

#[utoipa::path(
    get,
    path = "/v1/ws",
    operation_id = "websocket",
    tag = "events",
    summary = "Many jobs' changes (WebSocket)",
    description = "A WebSocket (RFC 6455). Client to server: \
        `{\"op\":\"subscribe\",\"jobs\":[ids],\"kinds\":[kinds]}` and `unsubscribe`. Server to \
        client: `{\"type\":\"subscribed\",…}`, `{\"type\":\"snapshot\",\"revision\":N,\"job\":{…}}` \
        and `{\"type\":\"error\",\"detail\":\"…\"}`. At most 1000 jobs + kinds per \
        connection, 64 KiB per message.",
    responses(
        (status = 101, description = "Switching protocols: the WebSocket is open."),
        (status = 400, description = "Not a WebSocket handshake (missing or wrong `Upgrade`, \
            `Connection`, `Sec-WebSocket-Key` or `Sec-WebSocket-Version`).", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 426, description = "The connection cannot be upgraded.", body = crate::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // axum's own rejection is a text/plain body: every error here is problem+json.
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let status = rejection.status();
            let kind = if status == axum::http::StatusCode::UPGRADE_REQUIRED {
                "upgrade-required"
            } else {
                "bad-request"
            };
            return ApiError::new(status, kind, rejection.body_text()).into_response();
        }
    };
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| connection(state, socket))
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    Subscribe {
        #[serde(default)]
        jobs: Vec<String>,
        #[serde(default)]
        kinds: Vec<String>,
    },
    Unsubscribe {
        #[serde(default)]
        jobs: Vec<String>,
        #[serde(default)]
        kinds: Vec<String>,
    },
}

struct Pending {
    change: Arc<Change>,
    /// Queued only because of a kind subscription (counts against [`MAX_KIND_PENDING`]).
    kind_only: bool,
}

#[derive(Default)]
struct Conn {
    jobs: HashSet<String>,
    kinds: HashSet<String>,
    control: VecDeque<Message>,
    pending: HashMap<String, Pending>,
    order: VecDeque<String>,
    kind_pending: usize,
    /// The last revision sent per job subscribed by id, so re-reads never send it twice.
    sent: HashMap<String, u64>,
    /// Kind updates were dropped and the client has been told; reset once caught up.
    lag_reported: bool,
}

impl Conn {
    fn error(&mut self, detail: impl Into<String>) {
        let detail: String = detail.into();
        self.control
            .push_back(text(json!({"type": "error", "detail": detail})));
    }

    fn enqueue(&mut self, change: Arc<Change>) {
        if !change.is_snapshot() {
            return;
        }
        let by_job = self.jobs.contains(&change.key);
        let by_kind = change
            .kind
            .as_ref()
            .is_some_and(|kind| self.kinds.contains(kind));
        if !by_job && !by_kind {
            return;
        }
        if by_job
            && self
                .sent
                .get(&change.key)
                .is_some_and(|&sent| sent >= change.revision)
        {
            return;
        }
        if let Some(pending) = self.pending.get_mut(&change.key) {
            if change.revision > pending.change.revision {
                pending.change = change;
            }
            if by_job && pending.kind_only {
                pending.kind_only = false;
                self.kind_pending -= 1;
            }
            return;
        }
        if !by_job {
            if self.kind_pending >= MAX_KIND_PENDING {
                if !self.lag_reported {
                    self.lag_reported = true;
                    self.error("lagged: updates for subscribed kinds were dropped because this connection reads too slowly");
                }
                return;
            }
            self.kind_pending += 1;
        }
        self.order.push_back(change.key.clone());
        self.pending.insert(
            change.key.clone(),
            Pending {
                change,
                kind_only: !by_job,
            },
        );
    }

    /// The next message to send: replies first, then the oldest pending job.
    fn next_message(&mut self) -> Option<Message> {
        if let Some(message) = self.control.pop_front() {
            return Some(message);
        }
        while let Some(key) = self.order.pop_front() {
            let Some(pending) = self.pending.remove(&key) else {
                continue;
            };
            if pending.kind_only {
                self.kind_pending -= 1;
                if self.kind_pending == 0 {
                    self.lag_reported = false;
                }
            }
            if self.jobs.contains(&key) {
                self.sent.insert(key, pending.change.revision);
            }
            return snapshot_message(&pending.change);
        }
        None
    }

    fn has_output(&self) -> bool {
        !self.control.is_empty() || !self.pending.is_empty()
    }
}

fn text(value: serde_json::Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

fn snapshot_message(change: &Change) -> Option<Message> {
    // The snapshot is stored as JSON: embedded as is, not re-encoded.
    let job = std::str::from_utf8(&change.value).ok()?;
    Some(Message::Text(Utf8Bytes::from(format!(
        r#"{{"type":"snapshot","revision":{},"job":{job}}}"#,
        change.revision
    ))))
}

async fn connection(state: AppState, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    // Capacity 1: the connection loop hands over one message at a time, so everything
    // still unsent stays in `Conn`, where it is coalesced.
    let (out, mut out_receiver) = mpsc::channel::<Message>(1);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_receiver.recv().await {
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let mut conn = Conn::default();
    let close = run(&state, &mut conn, &mut stream, &out).await;
    if let Some(frame) = close {
        // Best effort, bounded: a client that reads nothing must not hold the task.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            out.send(Message::Close(Some(frame))),
        )
        .await;
    }
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// Serves one connection until the client leaves (`None`) or the server closes it (the
/// close frame to send).
async fn run(
    state: &AppState,
    conn: &mut Conn,
    stream: &mut futures::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Message>,
) -> Option<CloseFrame> {
    let mut subscription = match state.push.hub.subscribe().await {
        Ok(subscription) => subscription,
        Err(e) => {
            return Some(CloseFrame {
                code: close_code::AGAIN,
                reason: Utf8Bytes::from(format!("cannot watch jobs now: {e}")),
            });
        }
    };
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut alive = true;
    let going_away = || CloseFrame {
        code: close_code::AWAY,
        reason: Utf8Bytes::from_static("the gateway is shutting down"),
    };
    loop {
        // Checked first: shutdown also ends the hub, which must not read as a lost watch.
        if state.push.shutdown.is_cancelled() {
            return Some(going_away());
        }
        tokio::select! {
            () = state.push.shutdown.cancelled() => return Some(going_away()),
            permit = out.reserve(), if conn.has_output() => {
                let Ok(permit) = permit else { return None };
                if let Some(message) = conn.next_message() {
                    permit.send(message);
                }
            }
            incoming = stream.next(), if conn.control.len() < MAX_CONTROL => {
                let message = match incoming {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "WebSocket read failed.");
                        return Some(CloseFrame {
                            code: close_code::POLICY,
                            reason: Utf8Bytes::from(truncate(&e.to_string())),
                        });
                    }
                    None => return None,
                };
                alive = true;
                match message {
                    Message::Text(body) => handle(state, conn, body.as_str()).await,
                    Message::Binary(_) => conn.error("send JSON text messages, not binary ones"),
                    // Pings are answered by the WebSocket layer itself.
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Close(_) => return None,
                }
            }
            event = subscription.recv() => match event {
                Ok(watch::Event::Change(change)) => conn.enqueue(change),
                Ok(watch::Event::Lagged) => reread(state, conn).await,
                Err(_) if state.push.shutdown.is_cancelled() => return Some(going_away()),
                Err(e) => {
                    return Some(CloseFrame {
                        code: close_code::AGAIN,
                        reason: Utf8Bytes::from(truncate(&format!("lost the job watch: {e}"))),
                    });
                }
            },
            _ = ping.tick() => {
                if !alive {
                    return Some(CloseFrame {
                        code: close_code::POLICY,
                        reason: Utf8Bytes::from_static("no answer to ping"),
                    });
                }
                alive = false;
                conn.control.push_back(Message::Ping(bytes::Bytes::from_static(b"jetjobs")));
            }
        }
    }
}

/// Close reasons must fit a control frame (123 bytes).
fn truncate(reason: &str) -> String {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// After missing hub changes: every job subscribed by id is read again; kind updates are
/// lost, which the client is told.
async fn reread(state: &AppState, conn: &mut Conn) {
    let keys: Vec<String> = conn.jobs.iter().cloned().collect();
    let changes = read_all(state, keys).await;
    for (_, change) in changes {
        if let Ok(Some(change)) = change {
            conn.enqueue(change);
        }
    }
    if !conn.kinds.is_empty() && !conn.lag_reported {
        conn.lag_reported = true;
        conn.error("lagged: updates for subscribed kinds were missed");
    }
}

type Read = (String, Result<Option<Arc<Change>>, crate::error::ApiError>);

async fn read_all(state: &AppState, keys: Vec<String>) -> Vec<Read> {
    futures::stream::iter(keys)
        .map(|key| async move {
            let change = waiting::read(&state.status, &key).await;
            (key, change)
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await
}

async fn handle(state: &AppState, conn: &mut Conn, body: &str) {
    let request: Request = match serde_json::from_str(body) {
        Ok(request) => request,
        Err(e) => {
            conn.error(format!(
                "cannot read that message ({e}); expected {{\"op\":\"subscribe\"|\"unsubscribe\",\"jobs\":[ids],\"kinds\":[kinds]}}"
            ));
            return;
        }
    };
    let (subscribe, jobs, kinds) = match request {
        Request::Subscribe { jobs, kinds } => (true, jobs, kinds),
        Request::Unsubscribe { jobs, kinds } => (false, jobs, kinds),
    };
    let bad_jobs: Vec<&String> = jobs
        .iter()
        .filter(|id| id.parse::<JobId>().is_err())
        .collect();
    let bad_kinds: Vec<&String> = kinds
        .iter()
        .filter(|kind| Kind::new(kind.as_str()).is_err())
        .collect();
    if !bad_jobs.is_empty() || !bad_kinds.is_empty() {
        let mut problems = Vec::new();
        if !bad_jobs.is_empty() {
            problems.push(format!("not job ids (UUIDs): {bad_jobs:?}"));
        }
        if !bad_kinds.is_empty() {
            problems.push(format!("not kind names: {bad_kinds:?}"));
        }
        conn.error(format!("nothing changed; {}", problems.join("; ")));
        return;
    }
    // Canonical form (lowercase, hyphenated), as the KV keys are.
    let jobs: Vec<String> = jobs
        .iter()
        .filter_map(|id| id.parse::<JobId>().ok())
        .map(|id| id.to_string())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let kinds: Vec<String> = kinds
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if subscribe {
        subscribe_to(state, conn, jobs, kinds).await;
    } else {
        for job in &jobs {
            conn.jobs.remove(job);
            conn.sent.remove(job);
        }
        for kind in &kinds {
            conn.kinds.remove(kind);
        }
        conn.control.push_back(text(
            json!({"type": "unsubscribed", "jobs": jobs, "kinds": kinds}),
        ));
    }
}

async fn subscribe_to(state: &AppState, conn: &mut Conn, jobs: Vec<String>, kinds: Vec<String>) {
    let new = jobs.iter().filter(|j| !conn.jobs.contains(*j)).count()
        + kinds.iter().filter(|k| !conn.kinds.contains(*k)).count();
    if conn.jobs.len() + conn.kinds.len() + new > MAX_SUBSCRIPTIONS {
        conn.error(format!(
            "nothing changed: a connection may watch at most {MAX_SUBSCRIPTIONS} jobs and kinds \
             (it watches {}, this asks for {new} more)",
            conn.jobs.len() + conn.kinds.len()
        ));
        return;
    }
    // Subscribed to the hub already, so reading now misses nothing that follows.
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    let mut failed = Vec::new();
    let mut snapshots = Vec::new();
    for (key, read) in read_all(state, jobs).await {
        match read {
            Ok(Some(change)) => {
                known.push(key);
                snapshots.push(change);
            }
            Ok(None) => unknown.push(key),
            Err(e) => failed.push(format!("{key}: {}", e.detail)),
        }
    }
    for key in &known {
        conn.jobs.insert(key.clone());
        // Subscribing again asks for the current snapshot again.
        conn.sent.remove(key);
    }
    conn.kinds.extend(kinds.iter().cloned());
    conn.control.push_back(text(
        json!({"type": "subscribed", "jobs": known, "kinds": kinds}),
    ));
    if !unknown.is_empty() {
        unknown.sort();
        conn.error(format!(
            "unknown jobs, not subscribed: {}",
            unknown.join(", ")
        ));
    }
    if !failed.is_empty() {
        conn.error(format!(
            "could not read, not subscribed: {}",
            failed.join("; ")
        ));
    }
    for change in snapshots {
        conn.enqueue(change);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::extract::ws::Message;
    use bytes::Bytes;
    use jetjobs::JobState;

    use super::{Conn, MAX_KIND_PENDING};
    use crate::watch::Change;

    fn change(key: &str, revision: u64, state: JobState) -> Arc<Change> {
        Arc::new(Change {
            key: key.to_string(),
            revision,
            value: Bytes::from(format!(
                r#"{{"id":"{key}","kind":"noop","state":"{}"}}"#,
                state.as_str()
            )),
            state: Some(state),
            kind: Some("noop".to_string()),
        })
    }

    fn drain(conn: &mut Conn) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| conn.next_message())
            .map(|message| match message {
                Message::Text(text) => serde_json::from_str(text.as_str()).expect("JSON"),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_slow_client_gets_each_jobs_newest_snapshot_once() {
        let mut conn = Conn::default();
        conn.jobs.insert("a".into());
        conn.jobs.insert("b".into());
        conn.enqueue(change("a", 1, JobState::Queued));
        conn.enqueue(change("b", 2, JobState::Queued));
        conn.enqueue(change("a", 3, JobState::Running));
        conn.enqueue(change("a", 4, JobState::Succeeded));
        conn.enqueue(change("other", 5, JobState::Queued));
        let sent = drain(&mut conn);
        let seen: Vec<(String, u64)> = sent
            .iter()
            .map(|m| {
                (
                    m["job"]["id"].as_str().expect("id").to_string(),
                    m["revision"].as_u64().expect("revision"),
                )
            })
            .collect();
        assert_eq!(seen, [("a".to_string(), 4), ("b".to_string(), 2)]);
        assert_eq!(sent[0]["job"]["state"], "succeeded");
        // A re-read of an older revision after a lag is not sent again.
        conn.enqueue(change("a", 4, JobState::Succeeded));
        conn.enqueue(change("b", 2, JobState::Queued));
        assert!(drain(&mut conn).is_empty());
    }

    #[test]
    fn kind_updates_beyond_the_cap_are_dropped_and_reported_once() {
        let mut conn = Conn::default();
        conn.kinds.insert("noop".into());
        conn.jobs.insert("mine".into());
        let total = MAX_KIND_PENDING as u64 + 10;
        for revision in 1..=total {
            conn.enqueue(change(
                &format!("job-{revision}"),
                revision,
                JobState::Queued,
            ));
        }
        // Jobs subscribed by id are never dropped.
        conn.enqueue(change("mine", total + 1, JobState::Succeeded));
        let sent = drain(&mut conn);
        let errors: Vec<_> = sent.iter().filter(|m| m["type"] == "error").collect();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("lagged"))
        );
        let snapshots = sent.iter().filter(|m| m["type"] == "snapshot").count();
        assert_eq!(snapshots, MAX_KIND_PENDING + 1);
        assert!(sent.iter().any(|m| m["job"]["id"] == "mine"));
    }
}
