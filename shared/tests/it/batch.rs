//! Group commit against a real nats-server: an atomic batch is stored whole or not at
//! all, and the gathering publisher gives every writer the answer it would get alone.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use jetjobs::batch::{self, BatchError, GroupCommit, GroupConfig};
use jetjobs::protocol::{Outgoing, Published};
use jetjobs::testing::NatsServer;
use tokio_util::sync::CancellationToken;

async fn stream_with(js: &jetstream::Context, atomic: bool) -> stream::Stream {
    js.create_stream(stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        storage: stream::StorageType::File,
        allow_atomic_publish: atomic,
        ..Default::default()
    })
    .await
    .expect("stream")
}

fn message(subject: &str, msg_id: &str, body: &str) -> Outgoing {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    Outgoing {
        subject: subject.into(),
        headers,
        payload: Bytes::from(body.to_string()),
    }
}

async fn bodies(stream: &stream::Stream, count: u64) -> Vec<String> {
    let mut out = Vec::new();
    for seq in 1..=count {
        let message = stream.get_raw_message(seq).await.expect("stored message");
        out.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    out
}

#[tokio::test]
async fn a_batch_is_stored_whole_in_order_with_one_ack() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let mut stream = stream_with(&js, true).await;

    let messages: Vec<Outgoing> = (0..50)
        .map(|i| message(&format!("t.{i}"), &format!("m{i}"), &format!("body {i}")))
        .collect();
    let ack = batch::publish_atomic(&client, &messages)
        .await
        .expect("committed");
    assert_eq!(
        (ack.stream.as_str(), ack.count, ack.last_sequence),
        ("T", 50, 50)
    );
    assert_eq!(ack.sequence_of(0), 1);
    assert_eq!(ack.sequence_of(49), 50);
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.messages, 50);
    let stored = bodies(&stream, 50).await;
    assert_eq!(stored.first().map(String::as_str), Some("body 0"));
    assert_eq!(stored.last().map(String::as_str), Some("body 49"));
}

#[tokio::test]
async fn one_duplicate_refuses_the_whole_batch_and_stores_nothing() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let mut stream = stream_with(&js, true).await;
    batch::publish_atomic(&client, &[message("t.0", "dup", "first")])
        .await
        .expect("committed");

    let messages = vec![
        message("t.1", "new-1", "a"),
        message("t.2", "dup", "b"),
        message("t.3", "new-2", "c"),
    ];
    let refused = batch::publish_atomic(&client, &messages).await;
    match refused {
        Err(error @ BatchError::Refused { .. }) => assert!(error.nothing_stored()),
        other => panic!("a batch with a duplicate id is refused: {other:?}"),
    }
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
}

#[tokio::test]
async fn a_stream_without_atomic_publish_refuses_and_limits_are_checked_first() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let mut stream = stream_with(&js, false).await;

    let messages = vec![message("t.1", "a", "a"), message("t.2", "b", "b")];
    assert!(matches!(
        batch::publish_atomic(&client, &messages).await,
        Err(BatchError::Refused { .. })
    ));
    assert_eq!(stream.info().await.expect("info").state.messages, 0);

    assert!(matches!(
        batch::publish_atomic(&client, &[]).await,
        Err(BatchError::Empty)
    ));
    let too_many: Vec<Outgoing> = (0..=batch::MAX_BATCH)
        .map(|i| message(&format!("t.{i}"), &i.to_string(), "x"))
        .collect();
    assert!(matches!(
        batch::publish_atomic(&client, &too_many).await,
        Err(BatchError::TooLarge(n)) if n == batch::MAX_BATCH + 1
    ));
}

/// Many concurrent writers, some of them repeats and some fenced on a stale sequence:
/// each gets exactly the answer a lone publish would give, and every write that should
/// be stored is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_writers_each_get_their_own_answer() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let mut stream = stream_with(&js, true).await;
    // A subject with one message, for writers fenced on it.
    let fenced_seq = match batch::publish_atomic(&client, &[message("t.fenced", "f0", "f0")]).await
    {
        Ok(ack) => ack.last_sequence,
        Err(e) => panic!("seed: {e}"),
    };

    let group = GroupCommit::start(
        client.clone(),
        js.clone(),
        GroupConfig {
            min_batch: 2,
            in_flight: 1,
            ..GroupConfig::default()
        },
        CancellationToken::new(),
    );
    let writers: Vec<_> = (0..300)
        .map(|i| {
            let group = group.clone();
            tokio::spawn(async move {
                let published = if i % 50 == 7 {
                    // Fenced on a sequence that is not the subject's last: refused.
                    let mut stale = message("t.fenced", &format!("fenced-{i}"), "stale");
                    stale.headers.insert(
                        "Nats-Expected-Last-Subject-Sequence",
                        (fenced_seq + 1000).to_string().as_str(),
                    );
                    group.publish(stale).await
                } else {
                    // Every third write repeats an earlier one's id: deduplicated.
                    let id = if i % 3 == 2 { i - 1 } else { i };
                    group
                        .publish(message(&format!("t.w{id}"), &format!("w{id}"), "w"))
                        .await
                };
                (i, published)
            })
        })
        .collect();
    let mut stored = 0;
    for writer in writers {
        let (i, published) = writer.await.expect("writer");
        if i % 50 == 7 {
            assert_eq!(published, Published::WrongLastSequence, "writer {i}");
        } else {
            assert!(published.is_stored(), "writer {i}: {published:?}");
            stored += 1;
        }
    }
    assert_eq!(stored, 294);
    // 294 stored answers, of which every third (i % 3 == 2) repeats another's id.
    let distinct = (0..300u64)
        .filter(|i| i % 50 != 7)
        .map(|i| if i % 3 == 2 { i - 1 } else { i })
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        distinct + 1,
        "each distinct write stored once, plus the seed"
    );
}
