//! A notifier killed (SIGKILL) in the middle of deliveries loses no webhook: events
//! not acked come again, and every job's terminal event reaches the receiver.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::{Options, Receiver, System, eventually, secrets_env};

const JOBS: usize = 100;

fn spawn_notifier(nats_url: &str) -> Child {
    Command::new(jetjobs_e2e::service_binary("jetjobs-notifier"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NATS_URL", nats_url)
        .env("JETJOBS_WEBHOOK_SECRETS", secrets_env())
        .env("JETJOBS_WEBHOOK_ALLOW", "127.0.0.0/8")
        .env("JETJOBS_CONCURRENCY", "8")
        .env("JETJOBS_WEBHOOK_TIMEOUT_SECS", "2")
        .env("JETJOBS_WEBHOOK_RETRY_BASE_MS", "50")
        .env("JETJOBS_WEBHOOK_RETRY_MAX_MS", "200")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn jetjobs-notifier")
}

#[tokio::test]
async fn killing_the_notifier_mid_delivery_loses_no_webhook() {
    let system = System::start_with(Options {
        notifier: false,
        // Deliveries the killed notifier held come back after this.
        notifier_ack_wait: Duration::from_secs(4),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start_slow(vec![], Duration::from_millis(100)).await;
    let mut ids = HashSet::new();
    for _ in 0..JOBS {
        ids.insert(
            system
                .submit_with_callback("noop", json!({}), &receiver.url("/hook"))
                .await,
        );
    }

    let mut notifier = spawn_notifier(&system.nats.url());
    eventually(Duration::from_secs(30), || async {
        (receiver.deliveries().len() >= 10).then_some(())
    })
    .await
    .expect("deliveries begin");
    notifier.kill().expect("SIGKILL the notifier");
    notifier.wait().expect("reap the notifier");
    let before_restart = receiver.deliveries().len();
    assert!(
        before_restart < JOBS,
        "killed mid-way ({before_restart} delivered)"
    );

    let mut restarted = spawn_notifier(&system.nats.url());
    let delivered = eventually(Duration::from_secs(60), || async {
        let seen: HashSet<String> = receiver
            .deliveries()
            .iter()
            .filter(|d| d.answered == 200)
            .filter_map(|d| d.json()["data"]["id"].as_str().map(str::to_string))
            .collect();
        ids.is_subset(&seen).then_some(seen)
    })
    .await;
    restarted.kill().expect("stop the notifier");
    restarted.wait().expect("reap the notifier");
    let delivered = delivered.expect("every job's terminal event was delivered");
    assert_eq!(delivered.len(), JOBS);
    for delivery in receiver.deliveries() {
        assert_eq!(delivery.json()["type"], "job.succeeded");
    }
}

#[tokio::test]
async fn sigterm_stops_the_notifier_cleanly_and_a_restart_delivers_the_rest() {
    let system = System::start_with(Options {
        notifier: false,
        notifier_ack_wait: Duration::from_secs(30),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start_slow(vec![], Duration::from_millis(100)).await;
    let mut ids = HashSet::new();
    for _ in 0..40 {
        ids.insert(
            system
                .submit_with_callback("noop", json!({}), &receiver.url("/hook"))
                .await,
        );
    }
    let mut notifier = spawn_notifier(&system.nats.url());
    eventually(Duration::from_secs(30), || async {
        (!receiver.deliveries().is_empty()).then_some(())
    })
    .await
    .expect("deliveries begin");
    let term = Command::new("kill")
        .args(["-TERM", &notifier.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(term.success());
    let exited = eventually(Duration::from_secs(15), || {
        let status = notifier.try_wait().expect("poll the notifier");
        async move { status }
    })
    .await
    .expect("the notifier exits within its grace period");
    assert!(exited.success(), "a clean exit: {exited:?}");

    // What it handed back comes at once to the next one (ack_wait here is 30 s).
    let mut restarted = spawn_notifier(&system.nats.url());
    let delivered = eventually(Duration::from_secs(20), || async {
        let seen: HashSet<String> = receiver
            .deliveries()
            .iter()
            .filter(|d| d.answered == 200)
            .filter_map(|d| d.json()["data"]["id"].as_str().map(str::to_string))
            .collect();
        ids.is_subset(&seen).then_some(())
    })
    .await;
    restarted.kill().expect("stop the notifier");
    restarted.wait().expect("reap the notifier");
    delivered.expect("every job's webhook was delivered before ack_wait could pass");
}
