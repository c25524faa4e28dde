//! Submitting, reading, listing, cancelling and retrying jobs.

use std::time::Duration;

use predicates::prelude::*;

use crate::helpers::{System, jetjobs, json, ndjson, stdout, submit, terminal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_then_get_then_ls() {
    let system = System::start().await;

    // Submit: the 202 snapshot, as a table and as JSON.
    let shown = jetjobs(&system, &["submit", "sleep", "--payload", r#"{"ms": 50}"#])
        .await
        .success();
    let table = stdout(&shown);
    let first = table
        .lines()
        .find_map(|l| l.strip_prefix("id"))
        .map(str::trim)
        .expect("an id line")
        .to_string();
    assert!(table.contains("sleep"), "{table}");
    let second = submit(&system, "noop", "{}").await;
    terminal(&system, &first).await;
    terminal(&system, &second).await;

    // Get: the snapshot, succeeded with its result.
    let got = jetjobs(&system, &["get", &first]).await.success();
    let table = stdout(&got);
    assert!(table.contains("succeeded"), "{table}");
    assert!(table.contains(r#"{"slept_ms":50}"#), "{table}");
    let got = json(
        &jetjobs(&system, &["get", &first, "-o", "json"])
            .await
            .success(),
    );
    assert_eq!(got["state"], "succeeded");
    assert_eq!(got["result"]["slept_ms"], 50);
    // The format may go before the command too.
    let got = json(
        &jetjobs(&system, &["-o", "json", "get", &second])
            .await
            .success(),
    );
    assert_eq!(got["kind"], "noop");

    // ls: newest first, one row each, and filters.
    let listed = jetjobs(&system, &["ls"]).await.success();
    let table = stdout(&listed);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "a header and two jobs: {table}");
    assert!(rows[0].starts_with("ID"), "{table}");
    assert!(
        rows[1].starts_with(&second) && rows[2].starts_with(&first),
        "{table}"
    );

    let page = json(
        &jetjobs(&system, &["ls", "--kind", "sleep", "-o", "json"])
            .await
            .success(),
    );
    let jobs = page["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "{page}");
    assert_eq!(jobs[0]["id"], first.as_str());
    assert!(page["next_cursor"].is_null(), "{page}");

    let none = jetjobs(&system, &["ls", "--state", "failed,cancelled"])
        .await
        .success();
    assert!(stdout(&none).is_empty());
    none.stderr(predicate::str::contains("no jobs"));

    // --limit pages; --all follows the cursors, and with -o json prints NDJSON.
    for _ in 0..3 {
        submit(&system, "noop", "{}").await;
    }
    let page = jetjobs(&system, &["ls", "--limit", "2"]).await.success();
    assert_eq!(stdout(&page).lines().count(), 3, "{}", stdout(&page));
    page.stderr(predicate::str::contains("--all"));
    let every = ndjson(
        &jetjobs(&system, &["ls", "--all", "--limit", "2", "-o", "json"])
            .await
            .success(),
    );
    assert_eq!(every.len(), 5, "{every:?}");
    assert_eq!(every[4]["id"], first.as_str(), "oldest last");
    let table = stdout(
        &jetjobs(&system, &["ls", "--all", "--limit", "2"])
            .await
            .success(),
    );
    assert_eq!(table.lines().count(), 6, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_wait_for_the_result() {
    let system = System::start().await;

    let done = json(
        &jetjobs(
            &system,
            &[
                "submit",
                "sleep",
                "--payload",
                r#"{"ms": 200}"#,
                "--wait=10",
                "-o",
                "json",
            ],
        )
        .await
        .success(),
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["slept_ms"], 200);

    // `--wait` alone waits the default (20 s, capped by the gateway); the table shows it.
    let shown = jetjobs(&system, &["submit", "noop", "--wait"])
        .await
        .success();
    let table = stdout(&shown);
    assert!(table.contains("succeeded"), "{table}");

    // The options reach the job; a job that outlives the wait comes back as it is now.
    let queued = json(
        &jetjobs(
            &system,
            &[
                "submit",
                "sleep",
                "--payload",
                r#"{"ms": 3000}"#,
                "--max-attempts",
                "2",
                "--timeout-secs",
                "60",
                "--wait=1",
                "-o",
                "json",
            ],
        )
        .await
        .success(),
    );
    assert_ne!(queued["state"], "succeeded", "{queued}");
    assert_eq!(queued["max_attempts"], 2, "{queued}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_with_an_id_or_a_key_is_safe_to_repeat() {
    let system = System::start().await;
    let id = "6f1c1f0e-8a4b-4d7e-9d55-1d1f4b0f2a10";

    let args = ["submit", "noop", "--id", id, "-o", "json"];
    let first = json(&jetjobs(&system, &args).await.success());
    assert_eq!(first["id"], id);
    let again = json(&jetjobs(&system, &args).await.success());
    assert_eq!(again["id"], id);
    // The same id with another body is a conflict: exit 1, the server's reason on one line.
    let conflict = jetjobs(
        &system,
        &["submit", "sleep", "--payload", r#"{"ms":1}"#, "--id", id],
    )
    .await
    .code(1);
    let error = crate::helpers::stderr(&conflict);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.starts_with("error: ") && error.contains("409"),
        "{error}"
    );

    let keyed = [
        "submit",
        "noop",
        "--idempotency-key",
        "invoice-4711",
        "-o",
        "json",
    ];
    let one = json(&jetjobs(&system, &keyed).await.success());
    let two = json(&jetjobs(&system, &keyed).await.success());
    assert_eq!(one["id"], two["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_retry() {
    let system = System::start().await;

    // Cancel a job that would run for 30 s.
    let id = submit(&system, "sleep", r#"{"ms": 30000}"#).await;
    let cancelled = jetjobs(&system, &["cancel", &id]).await.success();
    assert!(
        stdout(&cancelled).contains("cancelled"),
        "{}",
        stdout(&cancelled)
    );
    assert_eq!(terminal(&system, &id).await["state"], "cancelled");
    // Again: it already ended (409), exit 1.
    jetjobs(&system, &["cancel", &id])
        .await
        .code(1)
        .stderr(predicate::str::starts_with("error: ").and(predicate::str::contains("409")));

    // Retry a failed job: queued again, and it runs on (it fails the first time only).
    let id = submit(&system, "flaky", r#"{"fail": "permanent", "times": 1}"#).await;
    assert_eq!(terminal(&system, &id).await["state"], "failed");
    let retried = json(
        &jetjobs(&system, &["retry", &id, "-o", "json"])
            .await
            .success(),
    );
    assert_eq!(retried["id"], id.as_str());
    assert_ne!(retried["state"], "failed", "{retried}");
    let done = system
        .wait_for(&id, Duration::from_secs(60), |s| s["state"] == "succeeded")
        .await;
    assert_eq!(done["attempt"], 2, "{done}");
    // Only a failed job can be retried.
    jetjobs(&system, &["retry", &id]).await.code(1);
}

/// Runs `jetjobs ls` with stdout on a terminal (`script` gives it a pseudo-terminal).
async fn ls_on_a_terminal(system: &System, no_color: Option<&str>) -> String {
    let mut command = std::process::Command::new("script");
    command
        .args([
            "-qec",
            &format!("{} ls", env!("CARGO_BIN_EXE_jetjobs")),
            "/dev/null",
        ])
        .env("JETJOBS_URL", &system.base)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE");
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("script (bsdutils) runs the command on a pseudo-terminal");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colour_only_on_a_terminal_and_never_with_no_color() {
    let system = System::start().await;
    let id = submit(&system, "noop", "{}").await;
    terminal(&system, &id).await;
    let escape = "\x1b[";

    let coloured = ls_on_a_terminal(&system, None).await;
    assert!(
        coloured.contains(&id) && coloured.contains(escape),
        "{coloured:?}"
    );
    let plain = ls_on_a_terminal(&system, Some("1")).await;
    assert!(plain.contains(&id) && !plain.contains(escape), "{plain:?}");
    // An empty NO_COLOR does not count (no-color.org).
    let coloured = ls_on_a_terminal(&system, Some("")).await;
    assert!(coloured.contains(escape), "{coloured:?}");

    // Piped: no colour, with or without NO_COLOR.
    let mut piped = crate::helpers::command(&system.base, &["ls"]);
    piped.env_remove("NO_COLOR");
    let out = stdout(&crate::helpers::run(piped).await.success());
    assert!(out.contains(&id) && !out.contains(escape), "{out:?}");
}
