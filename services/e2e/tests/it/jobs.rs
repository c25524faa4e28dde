//! A client submits each kind of job and sees it succeed with the right result.

use std::io::Cursor;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::helpers::System;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_job_is_accepted_at_once_and_succeeds_with_its_result() {
    let system = System::start().await;

    let response = system
        .post(&json!({"kind": "sleep", "payload": {"ms": 200}}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location header")
        .to_string();
    let accepted: serde_json::Value = response.json().await.expect("snapshot");
    let id = accepted["id"].as_str().expect("id").to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    let uuid = uuid::Uuid::parse_str(&id).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 7, "server-made ids are UUIDv7");
    // The 202 carries the job's current snapshot: `queued`, or already `running` when the
    // status service projected its start before the gateway's first write (a loaded
    // machine, a fast processor).
    match accepted["state"].as_str() {
        Some("queued") => assert_eq!(accepted["attempt"], 0, "{accepted}"),
        Some("running") => assert_eq!(accepted["attempt"], 1, "{accepted}"),
        _ => panic!("a fresh 200 ms job is queued or running: {accepted}"),
    }
    assert_eq!(accepted["max_attempts"], 3);
    for field in ["progress", "result", "error"] {
        assert!(accepted[field].is_null(), "{field} starts null");
    }
    for field in ["created_at", "updated_at"] {
        let ts = accepted[field].as_str().expect(field);
        chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339");
        assert!(ts.ends_with('Z'), "UTC: {ts}");
    }

    let done = system.wait_terminal(&id, WAIT).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["result"], json!({"slept_ms": 200}));
    assert!(done["error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_and_options_round_trip() {
    let system = System::start().await;
    let response = system
        .post(&json!({"kind": "noop", "payload": {}, "max_attempts": 5, "timeout_secs": 10}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: serde_json::Value = response.json().await.expect("snapshot");
    assert_eq!(accepted["max_attempts"], 5);
    let done = system
        .wait_terminal(accepted["id"].as_str().expect("id"), WAIT)
        .await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["result"], json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_computes_iterated_sha256_and_reports_progress() {
    let system = System::start().await;
    let data = b"jetjobs";
    let job = system
        .submit("hash", json!({"data_b64": B64.encode(data), "rounds": 3}))
        .await;
    let done = system
        .wait_terminal(job["id"].as_str().expect("id"), WAIT)
        .await;
    let mut digest: Vec<u8> = Vec::new();
    for _ in 0..3 {
        let mut h = Sha256::new();
        h.update(&digest);
        h.update(data);
        digest = h.finalize().to_vec();
    }
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(done["state"], "succeeded");
    assert_eq!(
        done["result"],
        json!({"algorithm": "sha256", "rounds": 3, "digest": hex})
    );

    // Zero bytes of a given size, many rounds: long enough to see progress on the way.
    let job = system
        .submit("hash", json!({"size": 64 * 1024, "rounds": 20_000}))
        .await;
    let id = job["id"].as_str().expect("id");
    let done = system.wait_terminal(id, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["result"]["rounds"], 20_000);
    let progress: Vec<_> = system
        .events_of("hash", id)
        .await
        .into_iter()
        .filter(|(t, _)| t == "progress")
        .collect();
    assert!(!progress.is_empty(), "hash reports progress on the way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnail_keeps_the_aspect_ratio_and_rejects_garbage_at_once() {
    let system = System::start().await;
    let source = image::RgbImage::from_fn(400, 200, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(source)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encode png");
    let job = system
        .submit(
            "thumbnail",
            json!({"image_b64": B64.encode(&png), "width": 100, "height": 100}),
        )
        .await;
    let done = system
        .wait_terminal(job["id"].as_str().expect("id"), WAIT)
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["width"], 100);
    assert_eq!(done["result"]["height"], 50);
    let thumb = B64
        .decode(done["result"]["image_b64"].as_str().expect("image"))
        .expect("base64");
    let decoded =
        image::load_from_memory_with_format(&thumb, image::ImageFormat::Png).expect("a PNG");
    assert_eq!((decoded.width(), decoded.height()), (100, 50));

    let job = system
        .submit(
            "thumbnail",
            json!({"image_b64": B64.encode(b"not an image"), "width": 10, "height": 10}),
        )
        .await;
    let failed = system
        .wait_terminal(job["id"].as_str().expect("id"), WAIT)
        .await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["attempt"], 1, "an undecodable image is not retried");
    assert!(failed["error"].as_str().is_some_and(|e| !e.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_fit_the_kinds_schema_is_refused_at_the_door() {
    let system = System::start().await;
    let response = system
        .post(&json!({"kind": "sleep", "payload": {"seconds": 1}}))
        .await;
    let problem = crate::helpers::assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["type"], "/problems/invalid-payload");
    assert!(
        problem["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "{problem}"
    );
    let response = system
        .post(&json!({"kind": "hash", "payload": {"size": "big", "rounds": 1}}))
        .await;
    let problem = crate::helpers::assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(
        problem["errors"][0]["pointer"]
            .as_str()
            .is_some_and(|p| p.starts_with("/payload/size")),
        "{problem}"
    );
    // The limits the handler checks are in the schema too: nothing that would only
    // fail later is accepted.
    for payload in [
        json!({"size": 1, "rounds": 0}),
        json!({"size": 1, "data_b64": "", "rounds": 1}),
        json!({"rounds": 1}),
    ] {
        let response = system
            .post(&json!({"kind": "hash", "payload": payload}))
            .await;
        crate::helpers::assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    assert_eq!(
        system.stream_last_seq("JOBS").await,
        0,
        "nothing was queued"
    );

    // What a schema cannot say (that the text is base64) the processor checks: the job
    // fails at once, without retries, and is kept in the dead-letter stream.
    let job = system
        .submit("hash", json!({"data_b64": "not base64!", "rounds": 1}))
        .await;
    let failed = system
        .wait_terminal(job["id"].as_str().expect("id"), WAIT)
        .await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["attempt"], 1);
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    assert_eq!(system.stream_last_seq("JOBS_DEAD").await, 1);
}

/// A POST whose PubAck never came may or may not have queued the job. The 503 names the
/// job (body and `Jetjobs-Job-Id`), and retrying it as `PUT /v1/jobs/{id}` with the same
/// body converges on that one job instead of making a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_submission_names_its_job_and_a_put_retry_finds_it() {
    let system = System::start().await;
    let body = json!({"kind": "sleep", "payload": {"ms": 5}});
    let pid = system.nats.pid().expect("nats-server pid").to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig}");
    };

    // A frozen server takes the publish into its socket buffer and answers nothing.
    signal("-STOP");
    let response = system.post(&body).await;
    signal("-CONT");
    let id = response
        .headers()
        .get("jetjobs-job-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let problem = crate::helpers::assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    let id = id.expect("a 503 for a job that may be queued names it in Jetjobs-Job-Id");
    assert_eq!(problem["job_id"], id.as_str(), "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&format!("/v1/jobs/{id}")), "{detail}");

    // The retry the answer asks for: the same body under that id.
    let retried = system
        .http
        .put(system.url(&format!("/v1/jobs/{id}")))
        .json(&body)
        .send()
        .await
        .expect("PUT");
    assert!(
        matches!(retried.status(), StatusCode::ACCEPTED | StatusCode::OK),
        "the retry converges on the job: {}",
        retried.status()
    );
    let done = system.wait_terminal(&id, WAIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        system.stream_last_seq("JOBS").await,
        1,
        "one job message, however the first publish ended"
    );
    let events = system.events_of("sleep", &id).await;
    let runs: std::collections::HashSet<u64> = events.iter().map(|(_, attempt)| *attempt).collect();
    assert_eq!(runs.len(), 1, "the job ran once: {events:?}");
}
