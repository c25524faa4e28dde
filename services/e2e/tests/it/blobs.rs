//! Blobs: uploads streamed into `job_blobs`, downloads with ranges, limits that leave
//! nothing behind, compressed request bodies, and unreferenced uploads expiring.

use std::io::Write as _;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::helpers::{Options, System, assert_problem, eventually};

const LIMIT: u64 = 1 << 20;

fn small_blobs() -> Options {
    Options {
        gateway: |config| {
            config.max_blob_bytes = LIMIT;
            config.blob_ttl_secs = 2;
        },
        ..Options::default()
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `bytes`, gzip-compressed.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

async fn upload(
    system: &System,
    body: reqwest::Body,
    content_type: Option<&str>,
) -> reqwest::Response {
    let mut request = system.http.post(system.url("/v1/blobs")).body(body);
    if let Some(ct) = content_type {
        request = request.header(CONTENT_TYPE, ct);
    }
    request.send().await.expect("POST /v1/blobs")
}

/// Chunks (stored, metadata and deleted markers) in `job_blobs`' stream.
async fn stored_messages(system: &System) -> u64 {
    system.stream_messages("OBJ_job_blobs").await
}

#[tokio::test]
async fn an_upload_is_stored_and_read_back_whole_and_in_ranges() {
    let system = System::start_with(small_blobs()).await;
    // Several chunks and a partial last one.
    let bytes = data(300_000);
    let response = upload(&system, bytes.clone().into(), Some("text/csv")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let blob: Value = response.json().await.expect("blob");
    let id = blob["id"].as_str().expect("id");
    assert_eq!(location, format!("/v1/blobs/{id}"));
    assert_eq!(blob["size"], 300_000);
    assert_eq!(blob["sha256"], hex_sha256(&bytes));
    assert_eq!(blob["content_type"], "text/csv");

    let whole = system
        .http
        .get(system.url(&location))
        .send()
        .await
        .expect("GET");
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()[CONTENT_TYPE], "text/csv");
    assert_eq!(whole.headers()[CONTENT_LENGTH], "300000");
    assert_eq!(
        whole.headers()[ETAG].to_str().expect("etag"),
        format!("\"{}\"", hex_sha256(&bytes))
    );
    assert_eq!(whole.bytes().await.expect("body").as_ref(), &bytes[..]);

    for (range, first, last) in [
        ("bytes=0-9", 0, 9),
        ("bytes=131070-131080", 131_070, 131_080),
        ("bytes=299990-", 299_990, 299_999),
        ("bytes=-5", 299_995, 299_999),
    ] {
        let part = system
            .http
            .get(system.url(&location))
            .header(RANGE, range)
            .send()
            .await
            .expect("GET range");
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            part.headers()[CONTENT_RANGE]
                .to_str()
                .expect("content-range"),
            format!("bytes {first}-{last}/300000")
        );
        assert_eq!(
            part.bytes().await.expect("body").as_ref(),
            &bytes[first..=last],
            "{range}"
        );
    }

    let outside = system
        .http
        .get(system.url(&location))
        .header(RANGE, "bytes=300000-")
        .send()
        .await
        .expect("GET range");
    assert_eq!(outside.headers()[CONTENT_RANGE], "bytes */300000");
    assert_problem(outside, StatusCode::RANGE_NOT_SATISFIABLE).await;

    // Without a Content-Type it is octet-stream; an empty body is a blob too.
    let empty = upload(&system, Vec::new().into(), None).await;
    assert_eq!(empty.status(), StatusCode::CREATED);
    let empty: Value = empty.json().await.expect("blob");
    assert_eq!(empty["content_type"], "application/octet-stream");
    assert_eq!(empty["size"], 0);
    assert_eq!(empty["sha256"], hex_sha256(b""));

    for unknown in [
        "/v1/blobs/0190a0a0-0000-7000-8000-000000000000",
        "/v1/blobs/not-a-blob",
    ] {
        let missing = system
            .http
            .get(system.url(unknown))
            .send()
            .await
            .expect("GET");
        assert_problem(missing, StatusCode::NOT_FOUND).await;
    }
}

#[tokio::test]
async fn an_upload_over_the_limit_is_refused_and_leaves_nothing() {
    let system = System::start_with(small_blobs()).await;
    let before = stored_messages(&system).await;

    // Declared too large: refused before the body is read.
    let declared = upload(&system, data(LIMIT as usize + 1).into(), None).await;
    assert_problem(declared, StatusCode::PAYLOAD_TOO_LARGE).await;

    // Chunked, without a length: cut off once it passes the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(data(64 * 1024))).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let chunked = upload(&system, body, None).await;
    assert_problem(chunked, StatusCode::PAYLOAD_TOO_LARGE).await;

    // A compression bomb: 64 KiB of gzip that decodes to 64 MiB.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < LIMIT as usize / 4);
    let response = system
        .http
        .post(system.url("/v1/blobs"))
        .header(CONTENT_ENCODING, "gzip")
        .body(bomb)
        .send()
        .await
        .expect("POST");
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;

    assert_eq!(
        stored_messages(&system).await,
        before,
        "nothing was left in job_blobs"
    );
}

#[tokio::test]
async fn compressed_uploads_are_stored_decoded() {
    let system = System::start_with(small_blobs()).await;
    let bytes = data(200_000);
    let response = system
        .http
        .post(system.url("/v1/blobs"))
        .header(CONTENT_ENCODING, "gzip")
        .body(gzip(&bytes))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    let blob: Value = response.json().await.expect("blob");
    assert_eq!(blob["size"], 200_000);
    assert_eq!(blob["sha256"], hex_sha256(&bytes));

    // An encoding the gateway does not speak is refused, not stored as bytes.
    let response = system
        .http
        .post(system.url("/v1/blobs"))
        .header(CONTENT_ENCODING, "compress")
        .body(vec![1, 2, 3])
        .send()
        .await
        .expect("POST");
    assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

#[tokio::test]
async fn an_upload_no_job_takes_expires() {
    let system = System::start_with(small_blobs()).await;
    let response = upload(&system, data(1000).into(), None).await;
    let blob: Value = response.json().await.expect("blob");
    let url = system.url(&format!("/v1/blobs/{}", blob["id"].as_str().expect("id")));
    assert_eq!(
        system.http.get(&url).send().await.expect("GET").status(),
        StatusCode::OK
    );
    // TTL 2 s; the sweeper passes every second.
    let gone = eventually(Duration::from_secs(20), || async {
        let status = system.http.get(&url).send().await.ok()?.status();
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(gone.is_some(), "an unreferenced upload outlived its TTL");
}

#[tokio::test]
async fn a_blob_a_job_uses_outlives_the_upload_ttl() {
    let system = System::start_with(small_blobs()).await;
    let response = upload(&system, data(2000).into(), None).await;
    let blob: Value = response.json().await.expect("blob");
    let id = blob["id"].as_str().expect("id").to_string();
    let job = system
        .submit("hash", serde_json::json!({"data_blob": id, "rounds": 1}))
        .await;
    system
        .wait_terminal(job["id"].as_str().expect("job id"), Duration::from_secs(30))
        .await;
    // Several sweeps past the 2 s TTL.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let url = system.url(&format!("/v1/blobs/{id}"));
    assert_eq!(
        system.http.get(&url).send().await.expect("GET").status(),
        StatusCode::OK,
        "a referenced blob lives as long as its job"
    );
}

#[tokio::test]
async fn job_submissions_may_be_compressed_and_snapshots_come_back_compressed() {
    let system = System::start().await;
    let body = serde_json::to_vec(&serde_json::json!({"kind": "noop"})).expect("json");
    let response = system
        .http
        .post(system.url("/v1/jobs"))
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_ENCODING, "gzip")
        .body(gzip(&body))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = response.json().await.expect("snapshot");
    let id = job["id"].as_str().expect("id");

    let response = system
        .http
        .get(system.url(&format!("/v1/jobs/{id}")))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.headers()[CONTENT_ENCODING], "gzip");
    let compressed = response.bytes().await.expect("body");
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut decoded,
    )
    .expect("gunzip");
    let snapshot: Value = serde_json::from_slice(&decoded).expect("json");
    assert_eq!(snapshot["id"], id);

    // A JSON body that decodes past the body limit (64 KiB here) is a 413.
    let padding = " ".repeat(1 << 20);
    let inflated = gzip(format!("{{\"kind\": \"noop\"{padding}}}").as_bytes());
    let response = system
        .http
        .post(system.url("/v1/jobs"))
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_ENCODING, "gzip")
        .body(inflated)
        .send()
        .await
        .expect("POST");
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
}
