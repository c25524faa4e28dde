//! Running the binary against a system, and reading what it printed.

use std::time::Duration;

use assert_cmd::assert::Assert;
use serde_json::Value;

pub use jetjobs_e2e::system::{Options, System};

/// Longest a command may run before the test kills it (and fails).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// `jetjobs` with `args`, against the gateway at `base`, no colour, no inherited settings.
pub fn command(base: &str, args: &[&str]) -> assert_cmd::Command {
    let mut command = assert_cmd::Command::new(env!("CARGO_BIN_EXE_jetjobs"));
    command
        .env("JETJOBS_URL", base)
        .env("NO_COLOR", "1")
        .env_remove("JETJOBS_HTTP_TIMEOUT_SECS")
        .args(args)
        .timeout(COMMAND_TIMEOUT);
    command
}

/// Runs `jetjobs args` against `system` off the async runtime (the services run on it),
/// and returns its outcome to assert on.
pub async fn jetjobs(system: &System, args: &[&str]) -> Assert {
    run(command(&system.base, args)).await
}

/// Runs a prepared command off the async runtime.
pub async fn run(mut command: assert_cmd::Command) -> Assert {
    tokio::task::spawn_blocking(move || command.assert())
        .await
        .expect("the command's thread")
}

/// Stdout as text.
pub fn stdout(assert: &Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(assert: &Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

/// Stdout as one JSON document.
pub fn json(assert: &Assert) -> Value {
    let out = stdout(assert);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out}"))
}

/// Stdout as NDJSON: one document per line.
pub fn ndjson(assert: &Assert) -> Vec<Value> {
    stdout(assert)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect()
}

/// Submits through the CLI and returns the job's id.
pub async fn submit(system: &System, kind: &str, payload: &str) -> String {
    let assert = jetjobs(
        system,
        &["submit", kind, "--payload", payload, "-o", "json"],
    )
    .await
    .success();
    let job = json(&assert);
    job["id"].as_str().expect("an id").to_string()
}

/// Waits until the job is terminal; its snapshot.
pub async fn terminal(system: &System, id: &str) -> Value {
    system.wait_terminal(id, Duration::from_secs(60)).await
}
