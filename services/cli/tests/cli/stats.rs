//! `stats`: the queue table once, and refreshed with `--watch` until Ctrl-C.

use std::time::Duration;

use crate::helpers::{System, jetjobs, json, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_once_and_watched() {
    let system = System::start().await;

    let stats = json(&jetjobs(&system, &["stats", "-o", "json"]).await.success());
    let kinds: Vec<&str> = stats["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .filter_map(|k| k["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["flaky", "hash", "noop", "sleep", "thumbnail"],
        "{stats}"
    );
    let table = stdout(&jetjobs(&system, &["stats"]).await.success());
    for expected in [
        "KIND",
        "WAITING",
        "hash",
        "thumbnail",
        "CONSUMER",
        "processor-cpu",
    ] {
        assert!(table.contains(expected), "{expected}: {table}");
    }

    // --watch: a document a second until SIGINT (Ctrl-C), then exit 0.
    for (format, frame_marker) in [("json", "\"kinds\""), ("table", "WAITING")] {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_jetjobs"))
            .args(["stats", "--watch", "-o", format])
            .env("JETJOBS_URL", &system.base)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start jetjobs stats --watch");
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let interrupted = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill -INT");
        assert!(interrupted.success());
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("join")
            .expect("output");
        let out = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{out} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let frames = out.matches(frame_marker).count();
        assert!(frames >= 2, "{format}: {frames} frames in 3 s: {out}");
        if format == "json" {
            for line in out.lines() {
                serde_json::from_str::<serde_json::Value>(line).expect("NDJSON");
            }
        }
    }
}
