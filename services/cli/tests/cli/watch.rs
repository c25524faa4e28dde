//! `jetjobs watch`: live over SSE until the job ends; the exit code says how it ended.

use std::time::Duration;

use crate::helpers::{System, jetjobs, json, stdout, submit};

/// The state lines `watch` printed, in order (`12:00:01Z  running  attempt 1/3`).
fn states(out: &str) -> Vec<String> {
    out.lines()
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_a_job_with_progress_to_success() {
    let system = System::start().await;
    // Progress reports while it runs (one per round).
    let id = submit(&system, "hash", r#"{"size": 4000000, "rounds": 50}"#).await;

    let watched = jetjobs(&system, &["watch", &id]).await.code(0);
    let out = stdout(&watched);
    let seen = states(&out);
    assert_eq!(seen.last().map(String::as_str), Some("succeeded"), "{out}");
    assert!(seen.iter().any(|s| s == "running"), "{out}");
    // Then the final snapshot, with the result.
    assert!(out.contains("digest"), "{out}");
    assert!(out.contains(&id), "{out}");

    // A job that already ended: its end at once. With -o json, the final snapshot only.
    let done = json(
        &jetjobs(&system, &["watch", &id, "-o", "json"])
            .await
            .code(0),
    );
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["result"]["rounds"], 50);
    assert!(
        done["progress"].is_object() || done["progress"].is_null(),
        "{done}"
    );

    // On a terminal (`script` gives it one), the progress is a bar: `pos/len pct%`.
    let id = submit(&system, "hash", r#"{"size": 4000000, "rounds": 300}"#).await;
    let mut command = std::process::Command::new("script");
    command
        .args([
            "-qec",
            &format!("{} watch {id}", env!("CARGO_BIN_EXE_jetjobs")),
            "/dev/null",
        ])
        .env("JETJOBS_URL", &system.base);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("script (bsdutils) runs the command on a pseudo-terminal");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{screen}");
    assert!(screen.contains("/300 "), "a progress bar: {screen}");
    assert!(screen.contains("succeeded"), "{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_a_cancelled_job_exits_3() {
    let system = System::start().await;
    let id = submit(&system, "sleep", r#"{"ms": 30000}"#).await;
    system
        .wait_for(&id, Duration::from_secs(30), |s| s["state"] == "running")
        .await;

    // The watcher, started as a process whose output is read as it comes.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jetjobs"))
        .args(["watch", &id])
        .env("JETJOBS_URL", &system.base)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start jetjobs watch");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    // Once it has shown `running`, cancel.
    let (first, mut lines) = tokio::task::spawn_blocking(move || {
        let mut first = String::new();
        std::io::BufRead::read_line(&mut lines, &mut first).expect("read");
        (first, lines)
    })
    .await
    .expect("join");
    assert_eq!(states(&first), ["running"], "{first}");
    jetjobs(&system, &["cancel", &id]).await.success();

    let (out, status) = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut lines, &mut rest).expect("read");
        (rest, child.wait().expect("wait"))
    })
    .await
    .expect("join");
    assert_eq!(status.code(), Some(3), "{first}{out}");
    let seen = states(&out);
    assert_eq!(seen.last().map(String::as_str), Some("cancelled"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_a_failed_job_exits_1() {
    let system = System::start().await;
    let id = submit(&system, "flaky", r#"{"fail": "permanent"}"#).await;

    let watched = jetjobs(&system, &["watch", &id]).await.code(1);
    let out = stdout(&watched);
    assert_eq!(
        states(&out).last().map(String::as_str),
        Some("failed"),
        "{out}"
    );
    // The reason is shown with the state and in the final snapshot.
    assert!(out.contains("error"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_retries() {
    let system = System::start().await;
    // Fails once (retryable), then succeeds on attempt 2.
    let id = submit(&system, "flaky", r#"{"fail": "retryable", "times": 1}"#).await;

    let watched = jetjobs(&system, &["watch", &id]).await.code(0);
    let out = stdout(&watched);
    let seen = states(&out);
    assert_eq!(seen.last().map(String::as_str), Some("succeeded"), "{out}");
    assert!(out.contains("attempt 2/"), "{out}");
}

/// A gateway of the system's own, on `addr` (port 0: any), stopped on drop.
fn gateway_on(system: &System, addr: std::net::SocketAddr) -> (jetjobs_e2e::Component, String) {
    let listener = jetjobs_gateway::serve::bind(addr).expect("bind the gateway");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let config = jetjobs_gateway::Config::local(&system.nats.url());
    let gateway = jetjobs_e2e::Component::spawn("gateway", move |shutdown| {
        jetjobs_gateway::run(config, Some(listener), shutdown)
    });
    (gateway, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reconnects_when_the_gateway_restarts() {
    let system = System::start().await;
    // The watcher talks to a gateway of its own, which is stopped and started again on
    // the same port while the job runs.
    let (gateway, base) = gateway_on(&system, ([127, 0, 0, 1], 0).into());
    let addr: std::net::SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .expect("gateway address");
    let id = submit(&system, "sleep", r#"{"ms": 4000}"#).await;
    system
        .wait_for(&id, Duration::from_secs(30), |s| s["state"] == "running")
        .await;

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jetjobs"))
        .args(["watch", &id])
        .env("JETJOBS_URL", &base)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start jetjobs watch");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let (first, mut lines) = tokio::task::spawn_blocking(move || {
        let mut first = String::new();
        std::io::BufRead::read_line(&mut lines, &mut first).expect("read");
        (first, lines)
    })
    .await
    .expect("join");
    assert_eq!(states(&first), ["running"], "{first}");

    // The stream ends with the gateway; connections are refused for a moment; then a
    // gateway answers on the same address again.
    gateway.stop().await;
    let (_, job) = system.get_job(&id).await;
    assert_eq!(
        job["state"], "running",
        "the watcher lost its stream before the end"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_again, _) = gateway_on(&system, addr);

    let (out, status) = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut lines, &mut rest).expect("read");
        (rest, child.wait().expect("wait"))
    })
    .await
    .expect("join");
    assert_eq!(status.code(), Some(0), "{first}{out}");
    assert_eq!(
        states(&out).last().map(String::as_str),
        Some("succeeded"),
        "{first}{out}"
    );
    assert!(out.contains("slept_ms"), "{out}");
}
