//! Files in and out: `upload`, `submit --file`, `result [-o FILE]`.

use std::time::Duration;

use crate::helpers::{Options, System, jetjobs, json, stdout, submit, terminal};

/// A file of `size` bytes that is not all one byte.
fn data_file(dir: &tempfile::TempDir, name: &str, size: usize) -> std::path::PathBuf {
    let path = dir.path().join(name);
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, data).expect("write the file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_then_hash_it_and_submit_with_a_file() {
    let system = System::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = data_file(&dir, "data.csv", 3 * 1024 * 1024 + 17);
    let file = path.to_str().expect("utf-8 path");

    // Upload: the blob's description; its content type guessed from the name.
    let blob = json(
        &jetjobs(&system, &["upload", file, "-o", "json"])
            .await
            .success(),
    );
    assert_eq!(blob["size"], 3 * 1024 * 1024 + 17, "{blob}");
    assert_eq!(blob["content_type"], "text/csv", "{blob}");
    let blob_id = blob["id"].as_str().expect("blob id");
    let sha256 = blob["sha256"].as_str().expect("sha256");
    // Stored as sent.
    let stored = system
        .http
        .get(system.url(&format!("/v1/blobs/{blob_id}")))
        .send()
        .await
        .expect("GET blob")
        .bytes()
        .await
        .expect("blob body");
    assert_eq!(
        stored.as_ref(),
        std::fs::read(&path).expect("read").as_slice()
    );
    // The table names it too.
    let shown = stdout(
        &jetjobs(
            &system,
            &["upload", file, "--content-type", "application/x-test"],
        )
        .await
        .success(),
    );
    assert!(shown.contains("application/x-test"), "{shown}");

    // A job that reads it: `hash` with one round is plain sha256.
    let payload = format!(r#"{{"data_blob": "{blob_id}", "rounds": 1}}"#);
    let id = submit(&system, "hash", &payload).await;
    assert_eq!(terminal(&system, &id).await["result"]["digest"], sha256);

    // Upload and job in one request.
    let done = json(
        &jetjobs(
            &system,
            &[
                "submit",
                "hash",
                "--payload",
                r#"{"rounds": 1}"#,
                "--file",
                file,
                "--wait=20",
                "-o",
                "json",
            ],
        )
        .await
        .success(),
    );
    let done = if done["state"] == "succeeded" {
        done
    } else {
        terminal(&system, done["id"].as_str().expect("id")).await
    };
    assert_eq!(done["result"]["digest"], sha256, "{done}");

    // A kind that takes no file: the server's 422, exit 1, nothing left behind.
    jetjobs(&system, &["submit", "noop", "--file", file])
        .await
        .code(1)
        .stderr(predicates::str::contains("422"));
    // A file that is not there: exit 1, naming it.
    jetjobs(&system, &["upload", "/nonexistent/file"])
        .await
        .code(1)
        .stderr(predicates::str::contains("/nonexistent/file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_to_stdout_and_to_a_file() {
    // Results over 64 bytes are stored by reference: `result` streams them from the blob.
    let system = System::start_with(Options {
        inline_result_max_bytes: 64,
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");

    let id = submit(&system, "hash", r#"{"size": 1000, "rounds": 3}"#).await;
    let done = terminal(&system, &id).await;
    assert!(
        done["result_ref"].is_object(),
        "stored by reference: {done}"
    );
    let shown = stdout(&jetjobs(&system, &["get", &id]).await.success());
    assert!(shown.contains("-o FILE"), "{shown}");

    let printed = json(&jetjobs(&system, &["result", &id]).await.success());
    assert_eq!(printed["rounds"], 3, "{printed}");
    let path = dir.path().join("result.json");
    let out = path.to_str().expect("utf-8 path");
    jetjobs(&system, &["result", &id, "-o", out])
        .await
        .success()
        .stderr(predicates::str::contains("wrote"));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("the file")).expect("JSON");
    assert_eq!(written, printed);

    // A job without a result (still running): 409, exit 1, no file.
    let running = submit(&system, "sleep", r#"{"ms": 20000}"#).await;
    system
        .wait_for(&running, Duration::from_secs(30), |s| {
            s["state"] == "running"
        })
        .await;
    let other = dir.path().join("none.json");
    jetjobs(
        &system,
        &["result", &running, "-o", other.to_str().expect("path")],
    )
    .await
    .code(1)
    .stderr(predicates::str::contains("409"));
    assert!(!other.exists());
}
