//! The processor against a real nats-server: provisioned layout, jobs published the way
//! the gateway publishes them, outcomes read from the events the runtime emits.

mod helpers;

use std::io::Cursor;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use image::{DynamicImage, ImageFormat, RgbImage};
use jetjobs::Change;
use serde_json::{Value, json};

use helpers::Harness;

fn succeeded(change: Change) -> Value {
    match change {
        Change::Succeeded { result, .. } => result,
        other => panic!("expected succeeded, got {other:?}"),
    }
}

#[tokio::test]
async fn hash_of_data_and_of_zeros() {
    let harness = Harness::start().await;
    let event = harness
        .run_job(
            "hash",
            json!({"data_b64": STANDARD.encode("abc"), "rounds": 1}),
        )
        .await;
    assert_eq!(
        succeeded(event.change),
        json!({
            "algorithm": "sha256",
            "rounds": 1,
            "digest": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        })
    );
    let event = harness
        .run_job("hash", json!({"size": 0, "rounds": 1}))
        .await;
    assert_eq!(
        succeeded(event.change)["digest"],
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    harness.stop().await;
}

#[tokio::test]
async fn thumbnail_of_a_png() {
    let harness = Harness::start().await;
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(RgbImage::new(400, 200))
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .expect("encode a test image");
    let event = harness
        .run_job(
            "thumbnail",
            json!({"image_b64": STANDARD.encode(&png), "width": 100, "height": 100}),
        )
        .await;
    let result = succeeded(event.change);
    assert_eq!(
        (result["width"].as_u64(), result["height"].as_u64()),
        (Some(100), Some(50))
    );
    let bytes = STANDARD
        .decode(result["image_b64"].as_str().expect("image_b64 is a string"))
        .expect("image_b64 is base64");
    let thumbnail = image::load_from_memory(&bytes).expect("the thumbnail decodes");
    assert_eq!((thumbnail.width(), thumbnail.height()), (100, 50));
    harness.stop().await;
}

#[tokio::test]
async fn bad_input_fails_at_once_without_retries() {
    let harness = Harness::start().await;
    for (kind, payload, expected) in [
        (
            "thumbnail",
            json!({"image_b64": STANDARD.encode("garbage"), "width": 10, "height": 10}),
            "not a PNG or a JPEG",
        ),
        (
            "thumbnail",
            json!({"image_b64": "%%%", "width": 10, "height": 10}),
            "base64",
        ),
        (
            "thumbnail",
            json!({"image_b64": "", "width": 0, "height": 10}),
            "at least 1",
        ),
        ("hash", json!({"data_b64": "%%%", "rounds": 1}), "base64"),
        ("hash", json!({"size": 1, "rounds": 0}), "at least 1"),
        ("hash", json!({"rounds": 1}), "one of"),
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

/// The test runtime has a single thread: progress events can only be published while the
/// hash runs if the hash runs somewhere else.
#[tokio::test]
async fn hashing_does_not_block_the_runtime() {
    let harness = Harness::start().await;
    // About 1.3 GB of SHA-256: a second or so.
    let events = harness
        .run_job_events("hash", json!({"size": 65_536, "rounds": 20_000}))
        .await;
    let progress: Vec<_> = events
        .iter()
        .filter_map(|event| match event.change {
            Change::Progress(progress) => Some(progress),
            _ => None,
        })
        .collect();
    assert!(
        !progress.is_empty(),
        "progress events while hashing: {events:#?}"
    );
    assert!(
        progress
            .iter()
            .all(|p| p.total == 20_000 && p.current <= p.total)
    );
    assert!(matches!(
        events.last().map(|e| &e.change),
        Some(Change::Succeeded { .. })
    ));
    harness.stop().await;
}
