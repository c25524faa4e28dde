//! Exit codes and error lines: 2 bad usage, 4 not found, 5 unavailable, 1 otherwise; one
//! line on stderr from the server's problem+json `detail`.

use predicates::prelude::*;

use crate::helpers::{System, command, jetjobs, run, stderr};

/// An address where nothing listens (bound, then closed).
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_4_and_other_refusals_1() {
    let system = System::start().await;
    let unknown = "019aa6d2-5c1e-7b43-9a0e-2f2f8c1d9b11";
    for args in [
        vec!["get", unknown],
        vec!["watch", unknown],
        vec!["cancel", unknown],
        vec!["result", unknown],
        vec!["history", unknown],
        vec!["retry", unknown],
    ] {
        let failed = jetjobs(&system, &args).await.code(4);
        let error = stderr(&failed);
        assert_eq!(error.lines().count(), 1, "{args:?}: {error}");
        assert!(
            error.starts_with("error: ") && error.contains(unknown),
            "{args:?}: {error}"
        );
    }

    // The server refuses: its detail on one line, exit 1.
    let refused = jetjobs(&system, &["submit", "transcode"]).await.code(1);
    let error = stderr(&refused);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.contains("unknown kind") && error.contains("422"),
        "{error}"
    );
    jetjobs(
        &system,
        &["submit", "sleep", "--payload", r#"{"ms": "soon"}"#],
    )
    .await
    .code(1)
    .stderr(predicate::str::contains("422"));
    jetjobs(&system, &["get", "not-a-uuid"])
        .await
        .code(1)
        .stderr(predicate::str::contains("400"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_is_not_there_is_5() {
    let url = closed_port_url();
    for args in [
        vec!["get", "x"],
        vec!["ls"],
        vec!["stats"],
        vec!["watch", "x"],
    ] {
        let mut cmd = command(&url, &args);
        cmd.env("JETJOBS_HTTP_TIMEOUT_SECS", "5");
        let failed = run(cmd).await.code(5);
        let error = stderr(&failed);
        assert_eq!(error.lines().count(), 1, "{args:?}: {error}");
        assert!(error.contains("cannot reach the gateway"), "{error}");
    }
    // --url beats JETJOBS_URL.
    let mut cmd = command("http://127.0.0.1:1", &["--url", &url, "ls"]);
    cmd.env("JETJOBS_HTTP_TIMEOUT_SECS", "5");
    run(cmd)
        .await
        .code(5)
        .stderr(predicate::str::contains(&url));
}

#[tokio::test]
async fn bad_usage_is_2() {
    let url = closed_port_url();
    for args in [
        vec![],
        vec!["submit"],
        vec!["frobnicate"],
        vec!["submit", "noop", "--max-attempts", "99"],
        vec!["submit", "noop", "--id", "not-a-uuid"],
        vec![
            "submit",
            "noop",
            "--payload",
            "{}",
            "--payload-file",
            "p.json",
        ],
        vec!["submit", "noop", "--wait", "5"],
        vec!["ls", "-o", "yaml"],
        vec!["ls", "--limit", "0"],
        vec!["dlq", "replay"],
        vec!["dlq", "replay", "--kind", "hash"],
        vec!["completions", "tcsh"],
    ] {
        run(command(&url, &args)).await.code(2);
    }
    // Checked here, not by clap: a payload that is not JSON, a URL that is not http.
    run(command(&url, &["submit", "noop", "--payload", "{"]))
        .await
        .code(2)
        .stderr(predicate::str::contains("not JSON"));
    run(command("localhost:8080", &["ls"])).await.code(2);
}

#[tokio::test]
async fn help_names_the_exit_codes_and_completions_work() {
    let url = closed_port_url();
    let help = run(command(&url, &["--help"])).await.success();
    help.stdout(
        predicate::str::contains("Exit codes:")
            .and(predicate::str::contains("4  not found"))
            .and(predicate::str::contains("5  gateway unavailable")),
    );
    run(command(&url, &["watch", "--help"]))
        .await
        .success()
        .stdout(predicate::str::contains("3  the job was cancelled"));
    for shell in ["bash", "zsh", "fish"] {
        run(command(&url, &["completions", shell]))
            .await
            .success()
            .stdout(predicate::str::contains("jetjobs").and(predicate::str::contains("submit")));
    }
}
