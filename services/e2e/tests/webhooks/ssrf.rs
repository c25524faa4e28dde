//! Callbacks must not reach inside the network unless an operator allows it. No test
//! ever allow-lists 169.254.169.254 or sends traffic to it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Component, Options, Receiver, System};

async fn problem(system: &System, base: &str, body: Value) -> (u16, Value) {
    let response = system
        .http
        .post(format!("{base}/v1/jobs"))
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    (status, response.json().await.expect("problem"))
}

#[tokio::test]
async fn the_gateway_refuses_bad_and_internal_callbacks() {
    let system = System::start().await;
    // The system's gateway allow-lists 127.0.0.0/8; start one that allows nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let strict = format!("http://{}", listener.local_addr().expect("addr"));
    let config = jetjobs_gateway::Config::local(&system.nats.url());
    let _gateway = Component::spawn("strict gateway", move |s| {
        jetjobs_gateway::run(config, Some(listener), s)
    });

    let cases = [
        (&strict, "http://127.0.0.1:9/hook", "loopback"),
        (&strict, "http://[::1]:9/hook", "loopback"),
        (&strict, "http://[::ffff:127.0.0.1]:9/hook", "loopback"),
        (&strict, "http://10.0.0.1/hook", "private"),
        // Allow-listing loopback does not open the metadata endpoint.
        (
            &system.base,
            "http://169.254.169.254/latest/meta-data",
            "link-local",
        ),
        (&system.base, "ftp://example.com/hook", "http or https"),
        (
            &system.base,
            "https://user:secret@example.com/",
            "user name",
        ),
        (&system.base, "example.com/hook", "absolute"),
        // https is judged like http: a literal inside the network is refused.
        (&strict, "https://127.0.0.1:9/hook", "loopback"),
    ];
    for (base, callback, expected) in cases {
        let (status, body) = problem(
            &system,
            base,
            json!({"kind": "noop", "callback_url": callback}),
        )
        .await;
        assert_eq!(status, 422, "{callback}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(expected), "{callback}: {detail}");
    }
    let long = format!("https://example.com/{}", "a".repeat(2048));
    let (status, body) = problem(
        &system,
        &system.base,
        json!({"kind": "noop", "callback_url": long}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = problem(
        &system,
        &system.base,
        json!({"kind": "noop", "callback_events": ["succeeded"]}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = problem(
        &system,
        &system.base,
        json!({"kind": "noop", "callback_url": "https://example.com/", "callback_events": ["exploded"]}),
    )
    .await;
    assert_eq!(status, 422, "{body}");

    // The allow-list opens loopback on the system's gateway, for http and https alike.
    for callback in ["http://127.0.0.1:9/hook", "https://127.0.0.1:9/hook"] {
        let response = system
            .post(&json!({"kind": "noop", "callback_url": callback}))
            .await;
        assert_eq!(response.status(), 202, "{callback}");
    }
}

#[tokio::test]
async fn the_notifier_refuses_internal_addresses_without_sending() {
    // The gateway allows loopback (so the job is accepted); the notifier does not.
    let system = System::start_with(Options {
        notifier_allow: "",
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start(vec![]).await;
    let port = receiver.base.rsplit(':').next().expect("port").to_string();

    // A name that resolves to loopback: the resolver drops it at connect time.
    let by_name = system
        .submit_with_callback("noop", json!({}), &format!("http://localhost:{port}/hook"))
        .await;
    // A literal: checked before sending.
    let by_literal = system
        .submit_with_callback("noop", json!({}), &receiver.url("/hook"))
        .await;
    for id in [by_name, by_literal] {
        let job = system
            .wait_for_webhook(&id, "failed", Duration::from_secs(30))
            .await;
        assert_eq!(job["webhook"]["attempts"], 1, "never retried: {job}");
        let error = job["webhook"]["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("refused"), "{error}");
        assert!(error.contains("JETJOBS_WEBHOOK_ALLOW"), "{error}");
    }
    assert!(
        receiver.deliveries().is_empty(),
        "nothing was sent to a refused address"
    );
}
