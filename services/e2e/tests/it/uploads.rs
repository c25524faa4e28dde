//! Jobs that take blobs: `hash` and `thumbnail` read uploads as streams with the results
//! the inline forms give, a missing blob is a 422 at submit, and one multipart request
//! carries both the job and its file, leaving nothing behind when it is refused.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::helpers::{Options, System, assert_problem};

/// Room for the inline forms the blob forms are compared with.
async fn start() -> System {
    System::start_with(Options {
        max_body_bytes: 2 << 20,
        ..Options::default()
    })
    .await
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 256) as u8).collect()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

async fn upload(system: &System, bytes: Vec<u8>) -> String {
    let response = system
        .http
        .post(system.url("/v1/blobs"))
        .body(bytes)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), StatusCode::CREATED);
    let blob: Value = response.json().await.expect("blob");
    blob["id"].as_str().expect("id").to_string()
}

async fn run(system: &System, kind: &str, payload: Value) -> Value {
    let job = system.submit(kind, payload).await;
    let done = system
        .wait_terminal(job["id"].as_str().expect("id"), Duration::from_secs(60))
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    done["result"].clone()
}

/// Blobs in `job_blobs` that are not deleted.
async fn live_blobs(system: &System) -> usize {
    let store = system
        .js
        .get_object_store("job_blobs")
        .await
        .expect("job_blobs");
    let mut list = store.list().await.expect("list");
    let mut n = 0;
    while let Some(Ok(object)) = list.next().await {
        if !object.deleted {
            n += 1;
        }
    }
    n
}

/// One part: name, content type, bytes.
type Part<'a> = (&'a str, &'a str, &'a [u8]);

/// A `multipart/form-data` body of `parts`: (name, content type, bytes), in order.
fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "jetjobs-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, content_type, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let filename = if *name == "file" {
            "; filename=\"data.bin\""
        } else {
            ""
        };
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{name}\"{filename}\r\nContent-Type: {content_type}\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post_multipart(
    system: &System,
    parts: &[Part<'_>],
    key: Option<&str>,
) -> reqwest::Response {
    let (content_type, body) = multipart(parts);
    let mut request = system
        .http
        .post(system.url("/v1/jobs"))
        .header(CONTENT_TYPE, content_type)
        .body(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.expect("multipart POST")
}

#[tokio::test]
async fn blob_inputs_give_the_results_of_inline_inputs() {
    let system = start().await;
    let bytes = data(700_000);
    let blob = upload(&system, bytes.clone()).await;
    let streamed = run(&system, "hash", json!({"data_blob": blob, "rounds": 3})).await;
    let inline = run(
        &system,
        "hash",
        json!({"data_b64": b64(&bytes), "rounds": 3}),
    )
    .await;
    assert_eq!(streamed, inline);

    let image = png(120, 80);
    let blob = upload(&system, image.clone()).await;
    let from_blob = run(
        &system,
        "thumbnail",
        json!({"image_blob": blob, "width": 30, "height": 30}),
    )
    .await;
    let inline = run(
        &system,
        "thumbnail",
        json!({"image_b64": b64(&image), "width": 30, "height": 30}),
    )
    .await;
    assert_eq!(from_blob, inline);
    assert_eq!(
        (from_blob["width"].as_u64(), from_blob["height"].as_u64()),
        (Some(30), Some(20))
    );
}

#[tokio::test]
async fn a_blob_that_does_not_exist_is_refused_at_submit() {
    let system = System::start().await;
    for (kind, payload) in [
        (
            "hash",
            json!({"data_blob": "0190a0a0-0000-7000-8000-000000000000", "rounds": 1}),
        ),
        (
            "thumbnail",
            json!({"image_blob": "not-a-blob-id", "width": 10, "height": 10}),
        ),
    ] {
        let response = system
            .post(&json!({"kind": kind, "payload": payload}))
            .await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("does not exist")),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn one_multipart_request_uploads_the_file_and_submits_its_job() {
    let system = start().await;
    let bytes = data(300_000);
    let inline = run(
        &system,
        "hash",
        json!({"data_b64": b64(&bytes), "rounds": 2}),
    )
    .await;
    let job = serde_json::to_vec(&json!({"kind": "hash", "payload": {"rounds": 2}})).expect("json");

    // The job first, then the file; and the other way round.
    for parts in [
        vec![
            ("job", "application/json", &job[..]),
            ("file", "application/octet-stream", &bytes[..]),
        ],
        vec![
            ("file", "application/octet-stream", &bytes[..]),
            ("job", "application/json", &job[..]),
        ],
    ] {
        let response = post_multipart(&system, &parts, None).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let accepted: Value = response.json().await.expect("snapshot");
        let id = accepted["id"].as_str().expect("id");
        let done = system.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["result"], inline);
    }

    // An Idempotency-Key works as for JSON: the same file and job again find the job,
    // and the second upload is not kept.
    let parts = vec![
        ("job", "application/json", &job[..]),
        ("file", "application/octet-stream", &bytes[..]),
    ];
    let first: Value = post_multipart(&system, &parts, Some("upload-1"))
        .await
        .json()
        .await
        .expect("first");
    let blobs = live_blobs(&system).await;
    let again = post_multipart(&system, &parts, Some("upload-1")).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let again: Value = again.json().await.expect("again");
    assert_eq!(first["id"], again["id"]);
    assert_eq!(live_blobs(&system).await, blobs);
}

#[tokio::test]
async fn a_refused_multipart_submit_leaves_no_job_and_no_blob() {
    let system = System::start().await;
    let bytes = data(50_000);
    let noop = serde_json::to_vec(&json!({"kind": "noop"})).expect("json");
    let hash =
        serde_json::to_vec(&json!({"kind": "hash", "payload": {"rounds": 0}})).expect("json");
    let good =
        serde_json::to_vec(&json!({"kind": "hash", "payload": {"rounds": 1}})).expect("json");
    let before = live_blobs(&system).await;
    let jobs_before = system.stream_last_seq("JOBS").await;

    let cases: Vec<(Vec<Part<'_>>, StatusCode)> = vec![
        // A kind that takes no file, with the file before and after the job.
        (
            vec![
                ("job", "application/json", &noop),
                ("file", "text/plain", &bytes),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            vec![
                ("file", "text/plain", &bytes),
                ("job", "application/json", &noop),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // A payload its kind refuses.
        (
            vec![
                ("file", "text/plain", &bytes),
                ("job", "application/json", &hash),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // A part missing.
        (
            vec![("file", "text/plain", &bytes)],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            vec![("job", "application/json", &good)],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // A part nobody asked for.
        (
            vec![
                ("file", "text/plain", &bytes),
                ("extra", "text/plain", b"x"),
                ("job", "application/json", &good),
            ],
            StatusCode::BAD_REQUEST,
        ),
        // Not JSON in the job part.
        (
            vec![
                ("file", "text/plain", &bytes),
                ("job", "application/json", b"{nope"),
            ],
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (parts, status) in cases {
        let names: Vec<&str> = parts.iter().map(|(n, _, _)| *n).collect();
        let response = post_multipart(&system, &parts, None).await;
        assert_eq!(response.status(), status, "{names:?}");
        assert_problem(response, status).await;
    }
    assert_eq!(live_blobs(&system).await, before, "no blob left behind");
    assert_eq!(
        system.stream_last_seq("JOBS").await,
        jobs_before,
        "no job queued"
    );
}
