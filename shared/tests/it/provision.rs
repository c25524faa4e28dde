//! `provision` brings up the layout on an empty server, leaves a provisioned one alone,
//! and refuses to silently change what cannot be changed.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
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
    // Streams, buckets, and the processor, status and notifier consumers.
    assert_eq!(first.created.len(), 3 + 3 + 3, "{first}");

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
    // Not its own records: `jobs.events.<kind>.<id>.webhook` stays out.
    assert_eq!(
        notifier.config.filter_subjects,
        vec!["jobs.events.*.*".to_string()]
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
    // Not its own records: `jobs.events.<kind>.<id>.webhook` stays out.
    assert_eq!(
        notifier.config.filter_subjects,
        vec!["jobs.events.*.*".to_string()]
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
