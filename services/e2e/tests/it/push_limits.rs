//! Limits and lifecycle of the push routes: the cap on `/v1/events` streams, streams and
//! sockets ending on shutdown, the shared watch going away when nobody waits, and the
//! wait cap clamped below the request timeout.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::helpers::{System, assert_problem, eventually};
use crate::sse_client::SseStream;

const WITHIN: Duration = Duration::from_secs(20);

/// A second gateway on the system's NATS server, with its own config.
async fn gateway(
    system: &System,
    tune: impl FnOnce(&mut jetjobs_gateway::Config),
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut config = jetjobs_gateway::Config::local(&system.nats.url());
    tune(&mut config);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(jetjobs_gateway::run(
        config,
        Some(listener),
        shutdown.clone(),
    ));
    (base, shutdown, handle)
}

#[tokio::test]
async fn event_streams_beyond_the_cap_are_503_and_shutdown_ends_streams_and_sockets() {
    let system = System::start().await;
    let (base, shutdown, handle) = gateway(&system, |c| c.max_event_streams = 1).await;
    let http = reqwest::Client::new();
    let open = || http.get(format!("{base}/v1/events")).send();
    let first = eventually(WITHIN, || async { open().await.ok() })
        .await
        .expect("the second gateway answers");
    assert_eq!(first.status(), StatusCode::OK);
    let second = open().await.expect("request");
    let retry_after = second.headers().get("retry-after").cloned();
    assert_problem(second, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(retry_after.is_some(), "503 has Retry-After");

    // A per-job stream and a socket, open while the gateway shuts down.
    let job = system.submit("sleep", json!({"ms": 60000})).await;
    let id = job["id"].as_str().expect("id");
    let mut job_stream = http
        .get(format!("{base}/v1/jobs/{id}/events"))
        .send()
        .await
        .expect("job stream");
    assert_eq!(job_stream.status(), StatusCode::OK);
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("{}/v1/ws", base.replacen("http", "ws", 1)))
            .await
            .expect("socket");

    shutdown.cancel();
    let mut first = first;
    tokio::time::timeout(WITHIN, async {
        while first.chunk().await.expect("events body").is_some() {}
        while job_stream.chunk().await.expect("job body").is_some() {}
    })
    .await
    .expect("SSE streams end on shutdown");
    let close = tokio::time::timeout(WITHIN, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("the socket is closed on shutdown");
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001), "going away");
    tokio::time::timeout(WITHIN, handle)
        .await
        .expect("the gateway stops in time")
        .expect("gateway task")
        .expect("gateway run");
}

#[tokio::test]
async fn the_shared_watch_goes_away_when_nobody_waits() {
    let system = System::start().await;
    // Consumers on job_status someone listens to. A consumer nobody listens to any more
    // lingers on the server for its inactivity threshold (30 s), unbound.
    let listened = || async {
        let stream = system.js.get_stream("KV_job_status").await.expect("stream");
        let mut infos = stream.consumers();
        let mut bound = 0;
        while let Some(info) = infos.next().await {
            if info.expect("consumer info").push_bound {
                bound += 1;
            }
        }
        bound
    };
    let job = system.submit("sleep", json!({"ms": 1000})).await;
    let id = job["id"].as_str().expect("id");
    let mut one = SseStream::open(&system, &format!("/v1/jobs/{id}/events"), None).await;
    let mut two = SseStream::open(&system, &format!("/v1/jobs/{id}/events"), None).await;
    assert_eq!(listened().await, 1, "streams share one watch");
    one.collect_until_closed(WITHIN).await;
    two.collect_until_closed(WITHIN).await;
    drop((one, two));
    eventually(WITHIN, || async { (listened().await == 0).then_some(()) })
        .await
        .expect("the watch stops once nobody listens");
    // And starts again for the next waiter.
    let response = system
        .http
        .get(system.url(&format!("/v1/jobs/{id}?wait=1")))
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .expect("long-poll");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_wait_cap_is_clamped_below_the_request_timeout() {
    let system = System::start().await;
    let (base, _shutdown, _handle) = gateway(&system, |c| {
        c.max_wait_secs = 30;
        c.request_timeout_secs = 3;
    })
    .await;
    let http = reqwest::Client::new();
    let submit = || {
        http.post(format!("{base}/v1/jobs"))
            .header("prefer", "wait=30")
            .json(&json!({"kind": "sleep", "payload": {"ms": 10000}}))
            .send()
    };
    let response = eventually(WITHIN, || async { submit().await.ok() })
        .await
        .expect("the gateway answers");
    // Not cut off by the 3 s request timeout (a 503): the wait ended first.
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response
            .headers()
            .get("preference-applied")
            .and_then(|v| v.to_str().ok()),
        Some("wait=2")
    );
}
