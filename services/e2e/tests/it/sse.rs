//! Server-Sent Events: one job's stream to its end, resume with `Last-Event-ID`, and the
//! all-jobs stream filtered by kind.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{System, assert_problem};
use crate::sse_client::{SseEvent, SseStream};

const WITHIN: Duration = Duration::from_secs(30);

fn is_terminal(event: &SseEvent) -> bool {
    matches!(
        event.data["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// Revisions KV still holds for `key`, oldest first.
async fn kv_history(system: &System, key: &str) -> Vec<u64> {
    let bucket: kv::Store = system.js.get_key_value("job_status").await.expect("bucket");
    let mut history = bucket.history(key).await.expect("history");
    let mut revisions = Vec::new();
    while let Some(entry) = tokio::time::timeout(WITHIN, history.next())
        .await
        .expect("history in time")
    {
        revisions.push(entry.expect("entry").revision);
    }
    revisions
}

fn assert_increasing(events: &[SseEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].id < pair[1].id,
            "ids must strictly increase: {} then {}",
            pair[0].id,
            pair[1].id
        );
    }
}

#[tokio::test]
async fn a_job_is_streamed_to_its_terminal_snapshot_with_progress() {
    let system = System::start().await;
    let job = system.submit("sleep", json!({"ms": 2500})).await;
    let id = job["id"].as_str().expect("id");

    let mut stream = SseStream::open(&system, &format!("/v1/jobs/{id}/events"), None).await;
    let events = stream.collect_until_closed(WITHIN).await;

    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e.event == "snapshot" && e.data["id"] == id)
    );
    assert_increasing(&events);
    let last = events.last().expect("events");
    assert_eq!(last.data["state"], "succeeded", "{:?}", last.data);
    assert_eq!(last.data["result"]["slept_ms"], 2500);
    assert!(
        events
            .iter()
            .any(|e| e.data["progress"].is_object() && e.data["state"] == "running"),
        "progress is streamed: {events:?}"
    );
    assert_eq!(events.iter().filter(|e| is_terminal(e)).count(), 1);
    // The terminal snapshot is the one KV holds now.
    let revisions = kv_history(&system, id).await;
    assert_eq!(revisions.last(), Some(&last.id));
}

#[tokio::test]
async fn an_unknown_job_is_a_404_and_a_bad_last_event_id_a_400() {
    let system = System::start().await;
    let response = SseStream::request(
        &system,
        "/v1/jobs/019aa6d2-5c1e-7b43-9a0e-2f2f8c1d9b11/events",
        None,
    )
    .await;
    assert_problem(response, StatusCode::NOT_FOUND).await;
    let job = system.submit("noop", json!({})).await;
    let id = job["id"].as_str().expect("id");
    let response = system
        .http
        .get(system.url(&format!("/v1/jobs/{id}/events")))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .expect("request");
    assert_problem(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn a_stream_resumes_after_last_event_id_without_gap_or_repeat() {
    let system = System::start().await;
    let job = system.submit("sleep", json!({"ms": 3000})).await;
    let id = job["id"].as_str().expect("id");
    let path = format!("/v1/jobs/{id}/events");

    let mut first = SseStream::open(&system, &path, None).await;
    let mut seen = vec![first.next(WITHIN).await.expect("first event")];
    // Read on until the job runs (queued → running), so the resume has work left.
    while seen.last().is_some_and(|e| e.data["state"] == "queued") {
        seen.push(first.next(WITHIN).await.expect("an event"));
    }
    assert!(
        !is_terminal(seen.last().expect("seen")),
        "the job ended too soon: {seen:?}"
    );
    drop(first);

    let resume_from = seen.last().expect("seen").id;
    let mut second = SseStream::open(&system, &path, Some(resume_from)).await;
    let rest = second.collect_until_closed(WITHIN).await;
    assert!(
        rest.iter().all(|e| e.id > resume_from),
        "no repeat: {rest:?}"
    );
    assert!(rest.last().is_some_and(is_terminal), "{rest:?}");

    let union: Vec<SseEvent> = seen.iter().chain(rest.iter()).cloned().collect();
    assert_increasing(&union);
    // Every revision KV still holds from the first one seen on was delivered: no gap.
    let ids: Vec<u64> = union.iter().map(|e| e.id).collect();
    let first_id = ids[0];
    for revision in kv_history(&system, id).await {
        if revision >= first_id {
            assert!(
                ids.contains(&revision),
                "revision {revision} missing from {ids:?}"
            );
        }
    }

    // Resuming after the terminal snapshot: nothing more, the stream ends at once.
    let terminal = rest.last().expect("terminal").id;
    let mut after_end = SseStream::open(&system, &path, Some(terminal)).await;
    assert!(
        after_end
            .collect_until_closed(Duration::from_secs(5))
            .await
            .is_empty()
    );
    // Resuming from before the end replays only what came after.
    let mut replay = SseStream::open(&system, &path, Some(resume_from)).await;
    let replayed = replay.collect_until_closed(WITHIN).await;
    assert_eq!(
        replayed.iter().map(|e| e.id).collect::<Vec<_>>(),
        rest.iter().map(|e| e.id).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_events_stream_filters_by_kind_and_resumes() {
    let system = System::start().await;
    let mut stream = SseStream::open(&system, "/v1/events?kind=noop", None).await;
    let other = system.submit("sleep", json!({"ms": 10})).await;
    let job = system.submit("noop", json!({})).await;
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e: &SseEvent| e.data["id"] == job["id"] && is_terminal(e))
    {
        events.push(stream.next(WITHIN).await.expect("the stream stays open"));
    }
    assert!(
        events.iter().all(|e| e.data["kind"] == "noop"),
        "{events:?}"
    );
    assert!(events.iter().all(|e| e.data["id"] != other["id"]));
    assert_increasing(&events);
    drop(stream);

    // Changes while disconnected are delivered on resume.
    let last = events.last().expect("events").id;
    let missed = system.submit("noop", json!({})).await;
    system
        .wait_terminal(missed["id"].as_str().expect("id"), WITHIN)
        .await;
    let mut resumed = SseStream::open(&system, "/v1/events?kind=noop", Some(last)).await;
    let mut more = Vec::new();
    while !more
        .iter()
        .any(|e: &SseEvent| e.data["id"] == missed["id"] && is_terminal(e))
    {
        more.push(resumed.next(WITHIN).await.expect("the stream stays open"));
    }
    assert!(
        more.iter().all(|e| e.id > last && e.data["kind"] == "noop"),
        "{more:?}"
    );
    // Every change to the missed job is replayed, from its first snapshot on — whichever
    // that was: `queued` when the gateway's create landed first, `running` when the
    // status service projected the processor's events before it.
    let replayed: Vec<u64> = more
        .iter()
        .filter(|e| e.data["id"] == missed["id"])
        .map(|e| e.id)
        .collect();
    let stored = kv_history(&system, missed["id"].as_str().expect("id")).await;
    assert_eq!(
        replayed, stored,
        "the resumed stream replays the job's whole history"
    );

    let response = SseStream::request(&system, "/v1/events?kind=Not%20A%20Kind", None).await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;
}
