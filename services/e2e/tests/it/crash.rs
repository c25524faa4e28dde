//! A processor killed mid-job loses nothing: the job is redelivered and finishes once
//! (DESIGN invariant 1, for a processor that dies).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Options, System, service_binary};

fn start_processor_io(system: &System) -> Child {
    Command::new(service_binary("jetjobs-processor-io"))
        .env("NATS_URL", system.nats.url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start jetjobs-processor-io")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_processor_is_killed_is_redelivered_and_succeeds_once() {
    let system = System::start_with(Options {
        ack_wait: Duration::from_secs(2),
        run_io: false,
        ..Options::default()
    })
    .await;
    let mut processor = start_processor_io(&system);
    system.wait_for_kinds(&["sleep"]).await;

    let job = system.submit("sleep", json!({"ms": 3000})).await;
    let id = job["id"].as_str().expect("id").to_string();
    let running = system
        .wait_for(&id, Duration::from_secs(30), |s| s["state"] == "running")
        .await;
    assert_eq!(running["attempt"], 1);

    processor.kill().expect("SIGKILL the processor");
    processor.wait().expect("reap");
    let mut replacement = start_processor_io(&system);

    let done = system.wait_terminal(&id, Duration::from_secs(60)).await;
    replacement.kill().expect("stop the replacement");
    let _ = replacement.wait();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 2, "the second delivery finished it");
    assert_eq!(done["result"], json!({"slept_ms": 3000}));

    let events = system.events_of("sleep", &id).await;
    let successes: Vec<_> = events.iter().filter(|(t, _)| t == "succeeded").collect();
    assert_eq!(
        successes.len(),
        1,
        "ran to success exactly once: {events:?}"
    );
    assert_eq!(system.stream_last_seq("JOBS").await, 1);
}
