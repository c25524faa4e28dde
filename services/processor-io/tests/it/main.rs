//! The processor against a real nats-server: provisioned layout, jobs published the way
//! the gateway publishes them, outcomes read from the events the runtime emits.

mod helpers;

use std::time::Duration;

use futures::StreamExt as _;
use jetjobs::Change;
use serde_json::json;

use helpers::Harness;

#[tokio::test]
async fn noop_succeeds_with_an_empty_object() {
    let harness = Harness::start().await;
    let event = harness.run_job("noop", json!({})).await;
    assert_eq!(event.attempt, 1);
    assert_eq!(
        event.change,
        Change::Succeeded {
            result: json!({}),
            result_ref: None
        }
    );
    harness.stop().await;
}

#[tokio::test]
async fn sleep_succeeds_with_the_time_slept() {
    let harness = Harness::start().await;
    let event = harness.run_job("sleep", json!({"ms": 30})).await;
    assert_eq!(
        event.change,
        Change::Succeeded {
            result: json!({"slept_ms": 30}),
            result_ref: None
        }
    );
    harness.stop().await;
}

#[tokio::test]
async fn bad_payloads_fail_at_once_without_retries() {
    let harness = Harness::start().await;
    for (kind, payload, expected) in [
        ("sleep", json!({"ms": 60_001}), "above the limit"),
        ("sleep", json!({"ms": 1, "extra": true}), "invalid payload"),
        ("noop", json!({"x": 1}), "invalid payload"),
    ] {
        let event = harness.run_job(kind, payload).await;
        assert_eq!(event.attempt, 1, "{kind}: no retry for a permanent error");
        match event.change {
            Change::Failed { error } => assert!(error.contains(expected), "{kind}: {error}"),
            other => panic!("{kind}: expected failed, got {other:?}"),
        }
    }
    harness.stop().await;
}

#[tokio::test]
async fn stops_promptly_on_shutdown() {
    let harness = Harness::start().await;
    harness.run_job("noop", json!({})).await;
    tokio::time::timeout(Duration::from_secs(15), harness.stop())
        .await
        .expect("the processor stops within the pull expiry");
}

/// After a burst, the runtime must go on asking for jobs once its pull requests expire.
#[tokio::test]
async fn keeps_pulling_after_a_burst() {
    let harness = Harness::start().await;
    // A few jobs at a time, as HTTP clients send them: the runtime refills its free slots
    // with small pull requests, so several are open when the jobs stop coming.
    let events: Vec<_> = futures::stream::iter(0..200)
        .map(|_| harness.run_job("noop", json!({})))
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        events
            .iter()
            .all(|event| matches!(event.change, Change::Succeeded { .. }))
    );
    // Let every pull request of the burst expire (the harness uses 1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let event = harness.run_job("noop", json!({})).await;
    assert!(matches!(event.change, Change::Succeeded { .. }));
    harness.stop().await;
}
