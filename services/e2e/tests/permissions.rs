//! The deployed NATS users and permissions (`deploy/nats/auth.conf`, the file compose
//! mounts) against a real nats-server: every service does its whole job under its own
//! user, and a service is refused the subjects it must not touch.

use std::time::Duration;

use async_nats::jetstream;
use clap::Parser as _;
use jetjobs::config::NatsArgs;
use jetjobs::layout::{self, Layout};
use jetjobs::testing::{NatsServer, eventually};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const USERS: [(&str, &str); 6] = [
    ("admin", "JETJOBS_ADMIN_PASSWORD"),
    ("gateway", "JETJOBS_GATEWAY_PASSWORD"),
    ("processor-io", "JETJOBS_PROCESSOR_IO_PASSWORD"),
    ("processor-cpu", "JETJOBS_PROCESSOR_CPU_PASSWORD"),
    ("status", "JETJOBS_STATUS_PASSWORD"),
    ("notifier", "JETJOBS_NOTIFIER_PASSWORD"),
];

const WAIT: Duration = Duration::from_secs(30);

fn password(user: &str) -> String {
    format!("{user}-test-password")
}

/// A nats-server running the deployed auth.conf, with a password per user, logging to
/// `log` if given (it logs every permission violation).
fn server(log: Option<&std::path::Path>) -> NatsServer {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/nats/auth.conf");
    let mut auth = std::fs::read_to_string(path).expect("read deploy/nats/auth.conf");
    if let Some(log) = log {
        auth.push_str(&format!("\nlog_file: {:?}\n", log.display().to_string()));
    }
    let passwords: Vec<(&str, String)> = USERS
        .iter()
        .map(|(user, var)| (*var, password(user)))
        .collect();
    let env: Vec<(&str, &str)> = passwords.iter().map(|(k, v)| (*k, v.as_str())).collect();
    NatsServer::start_with_config(&auth, &env)
}

fn nats_args(url: &str, user: &str) -> NatsArgs {
    let mut args = NatsArgs::local(url);
    args.nats_user = Some(user.to_string());
    args.nats_password = Some(password(user));
    args
}

/// A client as `user` that reports the server's errors (permission violations
/// arrive asynchronously, as `-ERR`) on the returned channel.
async fn client_as(url: &str, user: &str) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .custom_inbox_prefix(jetjobs::config::inbox_prefix(user))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .expect("connect");
    (client, rx)
}

/// Publishes to `subject` as the client's user and waits for the server's verdict.
async fn publish_refused(
    client: &async_nats::Client,
    errors: &mut mpsc::UnboundedReceiver<String>,
    subject: &str,
) -> bool {
    client
        .publish(subject.to_string(), "x".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    match tokio::time::timeout(Duration::from_secs(2), errors.recv()).await {
        Ok(Some(error)) => {
            let error = error.to_lowercase();
            assert!(error.contains("permissions violation"), "{error}");
            true
        }
        _ => false,
    }
}

async fn subscribe_refused(
    client: &async_nats::Client,
    errors: &mut mpsc::UnboundedReceiver<String>,
    subject: &str,
) -> bool {
    let _subscription = client
        .subscribe(subject.to_string())
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    matches!(
        tokio::time::timeout(Duration::from_secs(2), errors.recv()).await,
        Ok(Some(e)) if e.to_lowercase().contains("permissions violation")
    )
}

#[tokio::test]
async fn services_are_refused_what_they_must_not_touch() {
    let nats = server(None);
    let url = nats.url();

    // Without a user nothing works at all.
    assert!(
        async_nats::connect(&url).await.is_err(),
        "an anonymous client must be refused"
    );

    let (gateway, mut errors) = client_as(&url, "gateway").await;
    for subject in [
        // Pull jobs as if it were a processor, or ack them.
        "$JS.API.CONSUMER.MSG.NEXT.JOBS.processor-io",
        "$JS.ACK.JOBS.processor-io.1.1.1.1.1.0",
        // Change the layout.
        "$JS.API.STREAM.DELETE.JOBS",
        "$JS.API.STREAM.PURGE.JOBS",
        "$JS.API.CONSUMER.DURABLE.CREATE.JOBS.sneaky",
        "$JS.API.CONSUMER.CREATE.JOBS.sneaky",
        // Forge a dead letter or a webhook record.
        "jobs.dead.noop.0190a5c4-0000-7000-8000-000000000000",
        "jobs.events.noop.0190a5c4-0000-7000-8000-000000000000.webhook",
    ] {
        assert!(
            publish_refused(&gateway, &mut errors, subject).await,
            "gateway may publish to {subject}"
        );
    }
    assert!(
        subscribe_refused(&gateway, &mut errors, "jobs.submit.>").await,
        "gateway may read the job requests off the wire"
    );
    // Allowed: the same check passes for what the gateway does.
    assert!(!publish_refused(&gateway, &mut errors, "jobs.cancel.noop.x").await);

    let (processor, mut errors) = client_as(&url, "processor-io").await;
    for subject in [
        "$KV.job_status.0190a5c4-0000-7000-8000-000000000000",
        "$KV.job_idempotency.key",
        "jobs.submit.noop.0190a5c4-0000-7000-8000-000000000000",
        // Another processor's kinds and consumer.
        "jobs.events.hash.0190a5c4-0000-7000-8000-000000000000",
        "$KV.job_kinds.hash",
        "$JS.API.CONSUMER.MSG.NEXT.JOBS.processor-cpu",
    ] {
        assert!(
            publish_refused(&processor, &mut errors, subject).await,
            "processor-io may publish to {subject}"
        );
    }
    // Replies are private: the gateway's KV reads and watches come back on its inbox.
    for subject in ["_INBOX.gateway.>", "_INBOX.>"] {
        assert!(
            subscribe_refused(&processor, &mut errors, subject).await,
            "processor-io may read the replies on {subject}"
        );
    }
    assert!(!subscribe_refused(&processor, &mut errors, "_INBOX.processor-io.x").await);

    let (status, mut errors) = client_as(&url, "status").await;
    for subject in [
        "jobs.events.noop.0190a5c4-0000-7000-8000-000000000000",
        "jobs.submit.noop.0190a5c4-0000-7000-8000-000000000000",
        "$JS.API.CONSUMER.MSG.NEXT.JOBS.processor-io",
    ] {
        assert!(
            publish_refused(&status, &mut errors, subject).await,
            "status may publish to {subject}"
        );
    }

    let (notifier, mut errors) = client_as(&url, "notifier").await;
    for subject in [
        // Only `.webhook` records, never the job's own event subject.
        "jobs.events.noop.0190a5c4-0000-7000-8000-000000000000",
        "$KV.job_status.0190a5c4-0000-7000-8000-000000000000",
    ] {
        assert!(
            publish_refused(&notifier, &mut errors, subject).await,
            "notifier may publish to {subject}"
        );
    }

    // And through the JetStream API: the processor cannot write a snapshot.
    let admin =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), password("admin"))
            .connect(&url)
            .await
            .expect("admin connects");
    layout::provision(&jetstream::new(admin), &Layout::default())
        .await
        .expect("provision as admin");
    let kv = jetstream::new(processor)
        .get_key_value(layout::STATUS_BUCKET)
        .await
        .expect("processor may look up job_status");
    let put = tokio::time::timeout(
        Duration::from_secs(5),
        kv.put("0190a5c4-0000-7000-8000-000000000000", "{}".into()),
    )
    .await;
    assert!(
        !matches!(put, Ok(Ok(_))),
        "processor-io wrote to KV job_status"
    );
}

/// A webhook receiver that answers 200 to anything and counts the requests.
async fn receiver() -> (String, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                // One request per connection is enough for this test (no keep-alive).
                if socket.read(&mut buf).await.is_ok() {
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = tx.send(());
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn every_service_works_under_its_own_user() {
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("nats-server.log");
    let nats = server(Some(&log));
    let url = nats.url();
    let admin =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), password("admin"))
            .connect(&url)
            .await
            .expect("admin connects");
    let js = jetstream::new(admin);
    let layout = Layout {
        processors: vec![jetjobs_processor_io::spec(), jetjobs_processor_cpu::spec()],
        ..Layout::default()
    };
    layout::provision(&js, &layout).await.expect("provision");

    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut spawn =
        |name: &'static str, run: futures::future::BoxFuture<'static, anyhow::Result<()>>| {
            tasks.push(tokio::spawn(async move {
                if let Err(e) = run.await {
                    panic!("{name} failed: {e:#}");
                }
            }));
        };

    let mut status = jetjobs_status::Config::local(&url);
    status.nats = nats_args(&url, "status");
    status.shards = 4;
    spawn(
        "status",
        Box::pin(jetjobs_status::run(status, shutdown.clone())),
    );

    for (name, user) in [
        ("processor-io", "processor-io"),
        ("processor-cpu", "processor-cpu"),
    ] {
        let argv = [
            name,
            "--nats-url",
            &url,
            "--nats-user",
            user,
            "--nats-password",
            &password(user),
            "--retry-base-ms",
            "50",
            "--shutdown-grace-secs",
            "2",
        ]
        .map(str::to_string);
        if name == "processor-io" {
            let config = jetjobs_processor_io::Config::parse_from(argv);
            spawn(
                "processor-io",
                Box::pin(jetjobs_processor_io::run(config, shutdown.clone())),
            );
        } else {
            let config = jetjobs_processor_cpu::Config::parse_from(argv);
            spawn(
                "processor-cpu",
                Box::pin(jetjobs_processor_cpu::run(config, shutdown.clone())),
            );
        }
    }

    let secret = "whsec_ZGV2ZWxvcG1lbnQtb25seS1zZWNyZXQtMzJieXRlcw==";
    let mut notifier = jetjobs_notifier::Config::local(&url, secret);
    notifier.nats = nats_args(&url, "notifier");
    notifier.allow = "127.0.0.0/8".parse().expect("allow list");
    spawn(
        "notifier",
        Box::pin(jetjobs_notifier::run(notifier, shutdown.clone())),
    );

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut gateway = jetjobs_gateway::Config::local(&url);
    gateway.nats = nats_args(&url, "gateway");
    gateway.webhook_allow = "127.0.0.0/8".parse().expect("allow list");
    spawn(
        "gateway",
        Box::pin(jetjobs_gateway::run(
            gateway,
            Some(listener),
            shutdown.clone(),
        )),
    );

    let http = reqwest::Client::new();
    eventually(WAIT, || async {
        let response = http.get(format!("{base}/readyz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await
    .expect("gateway ready");
    // The processors register their kinds under their own users.
    let kinds = js
        .get_key_value(layout::KINDS_BUCKET)
        .await
        .expect("job_kinds");
    eventually(WAIT, || async {
        for kind in ["flaky", "hash", "noop", "sleep", "thumbnail"] {
            kinds.get(kind).await.ok().flatten()?;
        }
        Some(())
    })
    .await
    .expect("every kind registered");

    let (hook, mut delivered) = receiver().await;
    let png = {
        let mut bytes = Vec::new();
        image::DynamicImage::new_rgb8(16, 16)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("encode png");
        bytes
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let jobs = [
        json!({"kind": "noop", "payload": {}, "callback_url": hook}),
        json!({"kind": "sleep", "payload": {"ms": 50}}),
        json!({"kind": "flaky", "payload": {"fail": "retryable", "times": 1}}),
        json!({"kind": "hash", "payload": {"data_b64": b64.encode(b"jetjobs"), "rounds": 2}}),
        json!({"kind": "thumbnail", "payload": {"image_b64": b64.encode(&png), "width": 4, "height": 4}}),
    ];
    let mut ids = Vec::new();
    for job in &jobs {
        let response = http
            .post(format!("{base}/v1/jobs"))
            .json(job)
            .send()
            .await
            .expect("POST /v1/jobs");
        assert_eq!(response.status(), 202, "submit {job}");
        let body: Value = response.json().await.expect("snapshot");
        ids.push(body["id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        let done = eventually(WAIT, || async {
            let response = http.get(format!("{base}/v1/jobs/{id}")).send().await.ok()?;
            let body: Value = response.json().await.ok()?;
            (body["state"] == "succeeded").then_some(body)
        })
        .await;
        assert!(
            done.is_some(),
            "job {id} did not succeed under per-service users"
        );
    }
    // The notifier delivered the noop job's webhook under its own user.
    assert!(
        tokio::time::timeout(WAIT, delivered.recv()).await.is_ok(),
        "no webhook delivered"
    );

    // Blobs: an upload, a job that reads it, the blob and the result read back, a
    // listing page (direct-get batches on JOBS_INDEX and job_status).
    let response = http
        .post(format!("{base}/v1/blobs"))
        .body(vec![7u8; 300_000])
        .send()
        .await
        .expect("POST /v1/blobs");
    assert_eq!(response.status(), 201, "upload");
    let blob: Value = response.json().await.expect("blob");
    let blob = blob["id"].as_str().expect("blob id").to_string();
    let response = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "hash", "payload": {"data_blob": blob, "rounds": 1}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 202, "a job on a blob");
    let body: Value = response.json().await.expect("snapshot");
    let id = body["id"].as_str().expect("id").to_string();
    let done = eventually(WAIT, || async {
        let response = http.get(format!("{base}/v1/jobs/{id}")).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        (body["state"] == "succeeded").then_some(())
    })
    .await;
    assert!(done.is_some(), "the blob job did not succeed");
    for path in [
        format!("/v1/blobs/{blob}"),
        format!("/v1/jobs/{id}/result"),
        "/v1/jobs?limit=3".to_string(),
    ] {
        let response = http.get(format!("{base}{path}")).send().await.expect("GET");
        assert_eq!(response.status(), 200, "{path}");
        response.bytes().await.expect("body");
    }

    // A cancellation: the gateway records it and tells the processors.
    let response = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "sleep", "payload": {"ms": 20_000}}))
        .send()
        .await
        .expect("POST");
    let body: Value = response.json().await.expect("snapshot");
    let id = body["id"].as_str().expect("id").to_string();
    let response = http
        .delete(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .expect("DELETE");
    assert!(
        response.status().is_success(),
        "cancel: {}",
        response.status()
    );
    let cancelled = eventually(WAIT, || async {
        let response = http.get(format!("{base}/v1/jobs/{id}")).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        (body["state"] == "cancelled").then_some(())
    })
    .await;
    assert!(cancelled.is_some(), "job {id} was not cancelled");

    // Scheduling: a delayed, expiring job runs (the scheduler pulls its firing under the
    // gateway's user); another is cancelled while scheduled (its schedules purged); a
    // recurring schedule is created, fires, is paused, listed and deleted.
    let mut delayed = Vec::new();
    for _ in 0..2 {
        let response = http
            .post(format!("{base}/v1/jobs"))
            .json(&json!({"kind": "noop", "payload": {}, "delay_secs": 1, "expires_in_secs": 30}))
            .send()
            .await
            .expect("POST delayed");
        assert_eq!(response.status(), 202, "a delayed job");
        let body: Value = response.json().await.expect("snapshot");
        delayed.push(body["id"].as_str().expect("id").to_string());
    }
    let response = http
        .delete(format!("{base}/v1/jobs/{}", delayed[1]))
        .send()
        .await
        .expect("DELETE scheduled");
    assert_eq!(response.status(), 200, "cancel a scheduled job");
    let ran = eventually(WAIT, || async {
        let response = http
            .get(format!("{base}/v1/jobs/{}", delayed[0]))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        (body["state"] == "succeeded").then_some(())
    })
    .await;
    assert!(ran.is_some(), "the delayed job did not run");
    let response = http
        .post(format!("{base}/v1/schedules"))
        .json(&json!({"name": "perm", "every": "1s", "job": {"kind": "noop", "payload": {}}}))
        .send()
        .await
        .expect("POST /v1/schedules");
    assert_eq!(response.status(), 201, "create a schedule");
    let fired = eventually(WAIT, || async {
        let response = http
            .get(format!("{base}/v1/schedules/perm"))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        (!body["last_jobs"].as_array()?.is_empty()).then_some(())
    })
    .await;
    assert!(fired.is_some(), "the schedule made no job");
    for (method, path, expected) in [
        (reqwest::Method::POST, "/v1/schedules/perm/pause", 200),
        (reqwest::Method::GET, "/v1/schedules", 200),
        (reqwest::Method::DELETE, "/v1/schedules/perm", 204),
    ] {
        let response = http
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .expect("schedule request");
        assert_eq!(response.status(), expected, "{path}");
    }

    // Limits: set by the gateway, watched and enforced by the processors (leases and
    // start counters in job_leases).
    let response = http
        .put(format!("{base}/v1/kinds/noop/limits"))
        .json(&json!({"max_running": 1, "max_per_second": 100}))
        .send()
        .await
        .expect("PUT limits");
    assert_eq!(response.status(), 200, "set limits");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "noop", "payload": {}, "priority": "high"}))
        .send()
        .await
        .expect("POST limited");
    let body: Value = response.json().await.expect("snapshot");
    let id = body["id"].as_str().expect("id").to_string();
    let limited = eventually(WAIT, || async {
        let response = http.get(format!("{base}/v1/jobs/{id}")).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        (body["state"] == "succeeded").then_some(())
    })
    .await;
    assert!(
        limited.is_some(),
        "the limited, high-priority job did not run"
    );
    let response = http
        .get(format!("{base}/v1/kinds"))
        .send()
        .await
        .expect("GET kinds");
    assert_eq!(response.status(), 200, "list kinds");

    // History, dead letters and stats: batched direct gets, a replayed job's dead letter
    // removed, the processors' presence written and watched.
    let response = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "flaky", "payload": {"fail": "permanent", "times": 1}}))
        .send()
        .await
        .expect("POST a dying job");
    let dead: Value = response.json().await.expect("snapshot");
    let dead_id = dead["id"].as_str().expect("id").to_string();
    let listed = eventually(Duration::from_secs(30), || async {
        let page: Value = http
            .get(format!("{base}/v1/dead-letters?kind=flaky"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        page["dead_letters"]
            .as_array()?
            .iter()
            .any(|l| l["id"] == dead_id.as_str())
            .then_some(())
    })
    .await;
    assert!(listed.is_some(), "the dead job was never listed");
    let replayed: Value = http
        .post(format!("{base}/v1/dead-letters/replay"))
        .json(&json!({"ids": [dead_id]}))
        .send()
        .await
        .expect("POST replay")
        .json()
        .await
        .expect("replay outcome");
    assert_eq!(replayed["replayed"], json!([dead_id]), "{replayed}");
    let response = http
        .get(format!("{base}/v1/jobs/{dead_id}/history"))
        .send()
        .await
        .expect("GET history");
    assert_eq!(response.status(), 200, "history");
    let seen = eventually(Duration::from_secs(30), || async {
        let stats: Value = http
            .get(format!("{base}/v1/stats"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let names: Vec<&str> = stats["processors"]
            .as_array()?
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        (names.contains(&"processor-io") && names.contains(&"processor-cpu")).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "the processors' presence never showed in /v1/stats"
    );

    shutdown.cancel();
    for task in tasks {
        task.await.expect("service task");
    }
    // Services retry or tolerate some failures, so a missing permission could hide
    // behind a passing run: the server's log must show no refusal at all.
    let log = std::fs::read_to_string(&log).expect("read the nats-server log");
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(
        violations.is_empty(),
        "a service was refused something it needs:\n{}",
        violations.join("\n")
    );
}
