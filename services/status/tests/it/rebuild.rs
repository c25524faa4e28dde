//! `--rebuild` recreates the projection from the streams (DESIGN invariant 5), here with
//! events and requests published directly; `services/e2e/tests/it/rebuild.rs` does
//! the same through the whole system.

use std::time::Duration;

use jetjobs::JobRequest;
use jetjobs::layout::{self, Layout};
use jetjobs::state::{Change, JobEvent};
use jetjobs::{JobSnapshot, Progress};
use jetjobs_status::rebuild::{self, Options, RebuildError};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Setup, Status, contents, request};

fn retrying(error: &str) -> Change {
    Change::Retrying {
        error: error.into(),
        retry_in_ms: 10,
    }
}

/// Jobs in every situation, as the gateway and processors leave them: a job that ran has
/// left `JOBS` (its processor acked it), a running or waiting one is still there.
/// Returns the number of events and of jobs waiting in `JOBS`.
async fn history(setup: &Setup) -> (u64, u64) {
    let mut events = Vec::new();

    // Succeeded, with progress.
    let ok = request("hash");
    setup.record_queued(&ok).await;
    events.extend([
        JobEvent::new(&ok, 1, Change::Started),
        JobEvent::new(
            &ok,
            1,
            Change::Progress(Progress {
                current: 1,
                total: 4,
            }),
        ),
        JobEvent::new(
            &ok,
            1,
            Change::Succeeded {
                result: json!({"digest": "ab"}),
                result_ref: None,
            },
        ),
    ]);
    // Retried, then succeeded.
    let flaky = request("flaky");
    setup.record_queued(&flaky).await;
    events.extend([
        JobEvent::new(&flaky, 1, Change::Started),
        JobEvent::new(&flaky, 1, retrying("first")),
        JobEvent::new(&flaky, 2, Change::Started),
        JobEvent::new(
            &flaky,
            2,
            Change::Succeeded {
                result: json!({}),
                result_ref: None,
            },
        ),
    ]);
    // Failed after three attempts, then queued again by a retry (its request waits in
    // JOBS again, with the attempts it already had).
    let dead = request("flaky");
    setup.record_queued(&dead).await;
    events.extend([
        JobEvent::new(&dead, 1, Change::Started),
        JobEvent::new(&dead, 1, retrying("one")),
        JobEvent::new(&dead, 2, Change::Started),
        JobEvent::new(&dead, 2, retrying("two")),
        JobEvent::new(&dead, 3, Change::Started),
        JobEvent::new(
            &dead,
            3,
            Change::Failed {
                error: "three".into(),
            },
        ),
    ]);
    let retried = JobRequest {
        max_attempts: 6,
        prior_attempts: 3,
        ..dead.clone()
    };
    events.push(JobEvent::new(&retried, 3, Change::Requeued));
    // Failed for good.
    let failed = request("sleep");
    setup.record_queued(&failed).await;
    events.extend([
        JobEvent::new(&failed, 1, Change::Started),
        JobEvent::new(
            &failed,
            1,
            Change::Failed {
                error: "too long".into(),
            },
        ),
    ]);
    // Cancelled while running.
    let cancelled = request("sleep");
    setup.record_queued(&cancelled).await;
    events.extend([
        JobEvent::new(&cancelled, 1, Change::Started),
        JobEvent::new(
            &cancelled,
            1,
            Change::Cancelled {
                reason: "by client".into(),
            },
        ),
    ]);
    // Running.
    let running = request("sleep");
    setup.submit(&running).await;
    events.push(JobEvent::new(&running, 1, Change::Started));
    // A fast job whose events were projected before the gateway's snapshot (none here).
    let fast = request("noop");
    events.push(JobEvent::new(
        &fast,
        1,
        Change::Succeeded {
            result: json!({}),
            result_ref: None,
        },
    ));
    // Waiting: new jobs, and the retried one.
    let new = 5;
    for _ in 0..new {
        setup.submit(&request("noop")).await;
    }
    setup.enqueue(&retried).await;
    let waiting = new + 2; // and `running`

    setup.publish_events(&events).await;
    (events.len() as u64, waiting)
}

/// The live projection keeps the snapshots of running jobs in a bounded cache per shard;
/// at its bound it forgets the oldest job's and reads it again when it is needed. With a
/// cache of one entry on one shard, almost every event is such a case, and the bucket
/// must still be exactly what a rebuild makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_projection_with_a_one_entry_cache_equals_a_rebuild() {
    let setup = Setup::start(Layout::default()).await;
    let mut config = setup.status_config();
    config.shards = 1;
    config.cache_per_shard = 1;
    let status = Status::start(config);
    let (events, _) = history(&setup).await;
    setup.projection_idle(Duration::from_secs(30)).await;
    status.stop().await;
    let live = contents(&setup.bucket(layout::STATUS_BUCKET).await).await;
    let report = rebuild::rebuild(
        &setup.js,
        &Options::new("job_status_rebuilt"),
        &CancellationToken::new(),
    )
    .await
    .expect("rebuild");
    assert_eq!(report.events_read, events, "{report}");
    assert_eq!(
        contents(&setup.bucket("job_status_rebuilt").await).await,
        live
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_bucket_equals_the_live_one() {
    let setup = Setup::start(Layout::default()).await;
    let status = Status::start(setup.status_config());
    let (events, waiting) = history(&setup).await;
    setup.projection_idle(Duration::from_secs(30)).await;
    status.stop().await;
    let live = contents(&setup.bucket(layout::STATUS_BUCKET).await).await;

    let shutdown = CancellationToken::new();
    let report = rebuild::rebuild(&setup.js, &Options::new("job_status_rebuilt"), &shutdown)
        .await
        .expect("rebuild");
    assert!(report.is_complete(), "{report}");
    assert!(report.created_bucket);
    assert_eq!(report.events_read, events, "{report}");
    assert_eq!(report.jobs_waiting, waiting, "{report}");
    assert_eq!(report.jobs, live.len() as u64, "{report}");
    let rebuilt = contents(&setup.bucket("job_status_rebuilt").await).await;
    assert_eq!(rebuilt, live);

    // Created like job_status: same history, limits and discard policy.
    let config = |name: String| {
        let js = setup.js.clone();
        async move {
            let mut stream = js.get_stream(name).await.expect("stream");
            stream.info().await.expect("info").config.clone()
        }
    };
    let (a, b) = (
        config("KV_job_status".into()).await,
        config("KV_job_status_rebuilt".into()).await,
    );
    assert_eq!(a.max_messages_per_subject, b.max_messages_per_subject);
    assert_eq!((a.max_age, a.max_bytes), (b.max_age, b.max_bytes));
    assert_eq!((a.discard, a.storage), (b.discard, b.storage));
    // A full rebuilt bucket refuses writes (the rebuild reports them as failed) rather
    // than dropping the oldest snapshots it has just written.
    assert_eq!(b.discard, async_nats::jetstream::stream::DiscardPolicy::New);

    // Again onto the same bucket: nothing moves.
    let again = rebuild::rebuild(&setup.js, &Options::new("job_status_rebuilt"), &shutdown)
        .await
        .expect("rebuild again");
    assert!(!again.created_bucket);
    assert_eq!(
        (again.snapshots_written, again.queued_written),
        (0, 0),
        "{again}"
    );
    assert_eq!(
        contents(&setup.bucket("job_status_rebuilt").await).await,
        live
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_repairs_the_live_bucket_in_place() {
    let setup = Setup::start(Layout::default()).await;
    let status = Status::start(setup.status_config());
    history(&setup).await;
    setup.projection_idle(Duration::from_secs(30)).await;
    let bucket = setup.bucket(layout::STATUS_BUCKET).await;
    let live = contents(&bucket).await;

    // Damage: keys lost, a value corrupted, a snapshot set back to `queued`.
    let keys: Vec<&String> = live.keys().collect();
    bucket.delete(keys[0]).await.expect("delete");
    bucket.purge(keys[1]).await.expect("purge");
    bucket
        .put(keys[2], "not json".into())
        .await
        .expect("corrupt");
    let snapshot: JobSnapshot = serde_json::from_value(live[keys[3]].clone()).expect("snapshot");
    let request = JobRequest {
        id: snapshot.id,
        kind: snapshot.kind,
        payload: Value::Null,
        max_attempts: snapshot.max_attempts,
        timeout_secs: None,
        created_at: snapshot.created_at,
        prior_attempts: 0,
        callback_url: None,
        callback_events: None,
        scheduling: Default::default(),
    };
    let stale = serde_json::to_vec(&JobSnapshot::queued(&request)).expect("encode");
    bucket.put(keys[3], stale.into()).await.expect("set back");

    // While the service runs: both write with compare-and-set.
    let shutdown = CancellationToken::new();
    let report = rebuild::rebuild(&setup.js, &Options::new(layout::STATUS_BUCKET), &shutdown)
        .await
        .expect("rebuild");
    assert!(report.is_complete(), "{report}");
    assert!(!report.created_bucket);
    assert_eq!(contents(&bucket).await, live);
    status.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_without_buckets_says_to_provision() {
    let setup = Setup::start(Layout::default()).await;
    setup
        .js
        .delete_key_value(layout::STATUS_BUCKET)
        .await
        .expect("delete the bucket");
    let shutdown = CancellationToken::new();
    for bucket in [layout::STATUS_BUCKET, "elsewhere"] {
        let error = rebuild::rebuild(&setup.js, &Options::new(bucket), &shutdown)
            .await
            .expect_err("no bucket to write or copy");
        assert!(matches!(error, RebuildError::NoBucket(_)), "{error}");
        assert!(
            error.to_string().contains("jetjobs-admin provision"),
            "{error}"
        );
    }
}
