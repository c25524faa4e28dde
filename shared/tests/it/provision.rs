//! `provision` brings up the layout on an empty server, leaves a provisioned one alone,
//! refuses to silently change what cannot be changed, and makes every store refuse
//! writes when full rather than forget what it holds.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use jetjobs::Kind;
use jetjobs::layout::{self, Layout, ProcessorSpec, ProvisionError, Requirement};
use jetjobs::testing::NatsServer;

fn layout() -> Layout {
    Layout {
        processors: vec![ProcessorSpec {
            name: "processor-test".into(),
            kinds: vec![Kind::new("a").expect("kind"), Kind::new("b").expect("kind")],
        }],
        ..Layout::default()
    }
}

#[tokio::test]
async fn provisioning_is_idempotent_and_describes_what_it_made() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);

    let first = layout::provision(&js, &layout()).await.expect("provision");
    assert!(first.updated.is_empty() && first.unchanged.is_empty());
    // Streams (jobs, events, dead letters, index, blobs, schedules), buckets (status,
    // kinds, schedules, limits, leases, workers, idempotency), and the processor's three
    // (one per priority), status, notifier and scheduler consumers.
    assert_eq!(first.created.len(), 6 + 7 + 6, "{first}");

    let again = layout::provision(&js, &layout())
        .await
        .expect("provision again");
    assert!(
        again.created.is_empty() && again.updated.is_empty(),
        "{again}"
    );
    assert_eq!(again.unchanged.len(), first.created.len());

    let mut jobs = js.get_stream("JOBS").await.expect("JOBS");
    let info = jobs.info().await.expect("info");
    assert_eq!(info.config.retention, stream::RetentionPolicy::WorkQueue);
    assert_eq!(info.config.discard, stream::DiscardPolicy::New);
    // Every store: bounded, and refusing writes when full rather than dropping old ones.
    for name in [
        "JOBS",
        "JOB_EVENTS",
        "JOBS_DEAD",
        "KV_job_status",
        "KV_job_kinds",
        "KV_job_idempotency",
        "KV_job_workers",
    ] {
        let config = stream_config(&js, name).await;
        assert_eq!(config.discard, stream::DiscardPolicy::New, "{name}");
        assert!(config.max_bytes > 0, "{name} is unbounded");
    }
    let claims = stream_config(&js, "KV_job_idempotency").await;
    assert_eq!(claims.max_age, Layout::default().idempotency_ttl);
    assert_eq!(claims.max_bytes, Layout::default().idempotency_max_bytes);
    assert!(info.config.description.is_some());
    assert_eq!(
        info.config
            .metadata
            .get("jetjobs.owner")
            .map(String::as_str),
        Some("jetjobs")
    );
    let events = js.get_stream("JOB_EVENTS").await.expect("JOB_EVENTS");
    let notifier = events
        .consumer_info(layout::NOTIFIER_CONSUMER)
        .await
        .expect("notifier consumer");
    // Every event, unfiltered: a multi-subject filter over JOB_EVENTS costs the server
    // work in proportion to the jobs retained (see `Layout::notifier_consumer`).
    assert!(
        notifier.config.filter_subjects.is_empty() && notifier.config.filter_subject.is_empty(),
        "{:?}",
        notifier.config.filter_subjects
    );
    assert_eq!(notifier.config.max_deliver, -1);
    let consumer = jobs
        .consumer_info("processor-test")
        .await
        .expect("processor consumer");
    assert_eq!(
        consumer.config.filter_subjects,
        vec!["jobs.submit.a.*".to_string(), "jobs.submit.b.*".to_string()]
    );

    layout::require(
        &js,
        &[
            Requirement::Stream("JOB_EVENTS"),
            Requirement::Bucket("job_status"),
            Requirement::Consumer {
                stream: "JOB_EVENTS",
                name: "status-projector".into(),
            },
        ],
    )
    .await
    .expect("everything is there");
}

#[tokio::test]
async fn changed_limits_are_updated_and_a_new_kind_widens_the_filter() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    layout::provision(&js, &layout()).await.expect("provision");

    let mut wider = layout();
    wider.jobs_max_msgs = 500;
    wider.ack_wait = Duration::from_secs(7);
    wider.processors[0]
        .kinds
        .push(Kind::new("c").expect("kind"));
    let report = layout::provision(&js, &wider).await.expect("update");
    assert!(
        report.updated.contains(&"stream JOBS".to_string()),
        "{report}"
    );
    assert!(
        report
            .updated
            .contains(&"consumer JOBS > processor-test".to_string()),
        "{report}"
    );

    let jobs = js.get_stream("JOBS").await.expect("JOBS");
    assert_eq!(jobs.cached_info().config.max_messages, 500);
    let events = js.get_stream("JOB_EVENTS").await.expect("JOB_EVENTS");
    let notifier = events
        .consumer_info(layout::NOTIFIER_CONSUMER)
        .await
        .expect("notifier consumer");
    // Every event, unfiltered: a multi-subject filter over JOB_EVENTS costs the server
    // work in proportion to the jobs retained (see `Layout::notifier_consumer`).
    assert!(
        notifier.config.filter_subjects.is_empty() && notifier.config.filter_subject.is_empty(),
        "{:?}",
        notifier.config.filter_subjects
    );
    assert_eq!(notifier.config.max_deliver, -1);
    let consumer = jobs
        .consumer_info("processor-test")
        .await
        .expect("consumer");
    assert_eq!(consumer.config.ack_wait, Duration::from_secs(7));
    assert_eq!(consumer.config.filter_subjects.len(), 3);
}

#[tokio::test]
async fn a_conflicting_existing_stream_is_a_clear_error_and_is_left_alone() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    js.create_stream(stream::Config {
        name: "JOBS".into(),
        subjects: vec!["jobs.submit.>".into()],
        retention: stream::RetentionPolicy::Limits,
        ..Default::default()
    })
    .await
    .expect("a hand-made JOBS");

    let error = layout::provision(&js, &layout())
        .await
        .expect_err("must refuse");
    match &error {
        ProvisionError::Conflict { object, field, .. } => {
            assert_eq!(object, "stream JOBS");
            assert_eq!(*field, "retention");
        }
        other => panic!("expected a conflict, got {other}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("retention") && message.contains("JOBS"),
        "{message}"
    );

    let mut jobs = js.get_stream("JOBS").await.expect("JOBS");
    assert_eq!(
        jobs.info().await.expect("info").config.retention,
        stream::RetentionPolicy::Limits,
        "not silently changed"
    );
}

#[tokio::test]
async fn require_names_everything_that_is_missing() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    let error = layout::require(
        &js,
        &[
            Requirement::Stream("JOBS"),
            Requirement::Bucket("job_status"),
            Requirement::Consumer {
                stream: "JOBS",
                name: "processor-io".into(),
            },
        ],
    )
    .await
    .expect_err("nothing is provisioned");
    let message = error.to_string();
    for part in [
        "stream JOBS",
        "KV bucket job_status",
        "consumer processor-io on stream JOBS",
        "jetjobs-admin provision",
    ] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

async fn stream_config(js: &jetstream::Context, name: &str) -> stream::Config {
    let mut stream = js.get_stream(name).await.expect("stream");
    stream.info().await.expect("info").config.clone()
}

/// Writes new keys of `size` bytes until the bucket refuses one (at most `limit`);
/// returns the keys stored and the refusal.
async fn fill(
    bucket: &kv::Store,
    key: impl Fn(usize) -> String,
    size: usize,
    limit: usize,
) -> (Vec<String>, Option<kv::CreateError>) {
    let value = Bytes::from(vec![b'x'; size]);
    let mut stored = Vec::new();
    for i in 0..limit {
        match bucket.create(key(i), value.clone()).await {
            Ok(_) => stored.push(key(i)),
            Err(e) => return (stored, Some(e)),
        }
    }
    (stored, None)
}

async fn assert_all_kept(bucket: &kv::Store, keys: &[String]) {
    for key in keys {
        assert!(
            bucket.get(key).await.expect("get").is_some(),
            "{key} was forgotten to make room"
        );
    }
}

#[tokio::test]
async fn a_full_idempotency_bucket_refuses_new_claims_and_forgets_none() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    let small = Layout {
        idempotency_max_bytes: 16 * 1024,
        ..layout()
    };
    layout::provision(&js, &small).await.expect("provision");
    let claims = js
        .get_key_value(layout::IDEMPOTENCY_BUCKET)
        .await
        .expect("job_idempotency");

    // Claim-sized values under claim-shaped keys: about 60 fit.
    let (stored, refused) = fill(&claims, |i| format!("key.{i:064x}"), 200, 1_000).await;
    let error = refused.expect("a full job_idempotency must refuse a new claim");
    assert!(error.to_string().contains("maximum bytes"), "{error}");
    assert!(stored.len() > 10, "only {} claims fit", stored.len());
    // The claim a retried request relies on is still there: no second job.
    assert_all_kept(&claims, &stored).await;
}

#[tokio::test]
async fn a_full_status_bucket_refuses_new_jobs_and_forgets_none() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    let small = Layout {
        status_max_bytes: 32 * 1024,
        ..layout()
    };
    layout::provision(&js, &small).await.expect("provision");
    let status = js
        .get_key_value(layout::STATUS_BUCKET)
        .await
        .expect("job_status");

    let (stored, refused) = fill(
        &status,
        |i| format!("0190a5c4-0000-7000-8000-{i:012x}"),
        500,
        1_000,
    )
    .await;
    let error = refused.expect("a full job_status must refuse a new snapshot");
    assert!(error.to_string().contains("maximum bytes"), "{error}");
    assert!(stored.len() > 10, "only {} snapshots fit", stored.len());
    // Every job that got its snapshot can still be read: no 404 after a 202.
    assert_all_kept(&status, &stored).await;
}

#[tokio::test]
async fn a_full_event_stream_refuses_events_and_drops_none() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = jetstream::new(client);
    let small = Layout {
        events_max_bytes: 16 * 1024,
        ..layout()
    };
    layout::provision(&js, &small).await.expect("provision");

    let payload = Bytes::from(vec![b'e'; 300]);
    let mut stored = 0_u64;
    let mut refused = None;
    for i in 0..1_000_u64 {
        let subject = format!("jobs.events.a.0190a5c4-0000-7000-8000-{i:012x}");
        let ack = match js.publish(subject, payload.clone()).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(_) => stored += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let error = refused.expect("a full JOB_EVENTS must refuse an event");
    assert!(error.to_string().contains("maximum bytes"), "{error}");
    assert!(stored > 10, "only {stored} events fit");
    // Nothing unread was dropped to make room: the first event is still the first.
    let mut events = js.get_stream("JOB_EVENTS").await.expect("JOB_EVENTS");
    let state = events.info().await.expect("info").state.clone();
    assert_eq!((state.first_sequence, state.messages), (1, stored));
}

#[tokio::test]
async fn a_server_provisioned_with_discard_old_is_migrated_and_says_so() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    layout::provision(&js, &layout()).await.expect("provision");
    // What the previous version left behind: these stores dropped their oldest entries.
    let old = [
        "JOB_EVENTS",
        "JOBS_DEAD",
        "KV_job_status",
        "KV_job_kinds",
        "KV_job_idempotency",
    ];
    for name in old {
        let mut config = stream_config(&js, name).await;
        config.discard = stream::DiscardPolicy::Old;
        js.update_stream(config).await.expect("make it discard-old");
    }

    let report = layout::provision(&js, &layout()).await.expect("migrate");
    for object in [
        "stream JOB_EVENTS",
        "stream JOBS_DEAD",
        "KV bucket job_status",
        "KV bucket job_kinds",
        "KV bucket job_idempotency",
    ] {
        assert!(report.updated.contains(&object.to_string()), "{report}");
        assert!(
            report
                .changes
                .iter()
                .any(|c| c.starts_with(object) && c.contains("discard Old → New")),
            "{report}"
        );
    }
    assert!(
        report
            .to_string()
            .contains("refuses writes instead of dropping"),
        "{report}"
    );
    for name in old {
        assert_eq!(
            stream_config(&js, name).await.discard,
            stream::DiscardPolicy::New,
            "{name}"
        );
    }
    let again = layout::provision(&js, &layout()).await.expect("again");
    assert!(
        again.updated.is_empty() && again.changes.is_empty(),
        "{again}"
    );
}

#[tokio::test]
async fn a_store_that_cannot_become_discard_new_is_a_clear_error_and_is_left_alone() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    // A JOB_EVENTS made by hand that schedules messages: JetStream forbids discard-new there.
    js.create_stream(stream::Config {
        name: "JOB_EVENTS".into(),
        subjects: vec!["jobs.events.>".into()],
        allow_message_schedules: true,
        allow_rollup: true,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await
    .expect("a hand-made JOB_EVENTS");

    let error = layout::provision(&js, &layout())
        .await
        .expect_err("must refuse");
    match &error {
        ProvisionError::Conflict { object, field, .. } => {
            assert_eq!((object.as_str(), *field), ("stream JOB_EVENTS", "discard"));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(error.to_string().contains("allow_msg_schedules"), "{error}");
    assert_eq!(
        stream_config(&js, "JOB_EVENTS").await.discard,
        stream::DiscardPolicy::Old,
        "not silently changed"
    );
}

#[tokio::test]
async fn claims_that_would_outlive_snapshots_are_refused_before_anything_is_made() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    let hour = Duration::from_secs(3600);
    let invalid = Layout {
        retention: 24 * hour,
        idempotency_ttl: 48 * hour,
        ..layout()
    };
    let error = layout::provision(&js, &invalid)
        .await
        .expect_err("must refuse");
    assert!(matches!(error, ProvisionError::Invalid(_)), "{error}");
    assert!(error.to_string().contains("idempotency TTL"), "{error}");
    assert!(js.get_stream("JOBS").await.is_err(), "nothing is created");
}

#[tokio::test]
async fn the_default_layout_has_a_consumer_for_every_processor() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    layout::provision(&js, &Layout::default())
        .await
        .expect("provision");
    let jobs = js.get_stream("JOBS").await.expect("JOBS");
    for spec in layout::processors() {
        let consumer = jobs.consumer_info(&spec.name).await.expect("consumer");
        assert_eq!(consumer.config.filter_subjects, spec.filter_subjects());
    }
    assert_eq!(
        layout::processors()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["processor-io", "processor-cpu"]
    );
}
