//! Delivery as a receiver sees it: signed, retried on the right answers only, recorded in
//! the job's snapshot.

use std::time::Duration;

use jetjobs::webhook::{self, headers};
use serde_json::json;

use crate::harness::{Receiver, System, eventually, secrets};

const WAIT: Duration = Duration::from_secs(30);

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_one_acknowledged_delivery_signed_by_every_secret() {
    let system = System::start().await;
    let receiver = Receiver::start(vec![(500, vec![]), (500, vec![])]).await;
    let id = system
        .submit_with_callback("noop", json!({}), &receiver.url("/hook"))
        .await;

    let job = system.wait_for_webhook(&id, "delivered", WAIT).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["webhook"]["attempts"], 3);
    assert_eq!(job["webhook"]["last_status"], 200);
    assert_eq!(job["webhook"]["event"], "succeeded");

    let deliveries = receiver.deliveries();
    let answered: Vec<u16> = deliveries.iter().map(|d| d.answered).collect();
    assert_eq!(
        answered,
        [500, 500, 200],
        "exactly one 2xx-acknowledged delivery"
    );
    let webhook_id = deliveries[0].header(headers::ID).to_string();
    for delivery in &deliveries {
        assert_eq!(delivery.path, "/hook");
        assert_eq!(
            delivery.header(headers::ID),
            webhook_id,
            "the same id on every retry"
        );
        let signature = delivery.header(headers::SIGNATURE);
        assert_eq!(
            signature.split(' ').count(),
            2,
            "one signature per active secret: {signature}"
        );
        // During a rotation, a receiver with either secret accepts the delivery.
        for secret in secrets() {
            webhook::verify(
                &secret,
                delivery.header(headers::ID),
                delivery.header(headers::TIMESTAMP),
                signature,
                &delivery.body,
                now(),
                300,
            )
            .expect("the signature verifies with each secret");
        }
        let body = delivery.json();
        assert_eq!(body["type"], "job.succeeded");
        assert_eq!(body["data"]["id"], id.as_str());
        assert_eq!(body["data"]["state"], "succeeded");
        assert!(body["timestamp"].is_string());
    }

    // The notifier's /metrics counts each recorded attempt by outcome (just after it is
    // recorded, so possibly a moment after the snapshot shows it).
    let admin = system.notifier_admin.expect("the notifier's admin port");
    let expected = [("retrying", 2), ("delivered", 1)];
    let text = eventually(WAIT, || async {
        let text = system
            .http
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        expected
            .iter()
            .all(|(outcome, count)| {
                let line =
                    format!("jetjobs_webhook_deliveries_total{{outcome=\"{outcome}\"}} {count}");
                text.lines().any(|l| l == line)
            })
            .then_some(text)
    })
    .await
    .expect("/metrics counts 2 retrying and 1 delivered attempt");
    assert!(
        !text.contains(r#"outcome="failed""#),
        "nothing failed:\n{text}"
    );

    // The job's history tells the deliveries too, after the outcome they delivered.
    let history: serde_json::Value = system
        .http
        .get(system.url(&format!("/v1/jobs/{id}/history")))
        .send()
        .await
        .expect("GET history")
        .json()
        .await
        .expect("history");
    let events = history["events"].as_array().expect("events");
    let succeeded = events
        .iter()
        .position(|e| e["type"] == "succeeded")
        .expect("a succeeded event");
    let deliveries: Vec<(u64, &str, u64)> = events
        .iter()
        .filter(|e| e["type"] == "webhook")
        .map(|e| {
            (
                e["delivery_attempt"].as_u64().expect("delivery_attempt"),
                e["outcome"].as_str().expect("outcome"),
                e["status"].as_u64().expect("status"),
            )
        })
        .collect();
    assert_eq!(
        deliveries,
        [
            (1, "retrying", 500),
            (2, "retrying", 500),
            (3, "delivered", 200)
        ],
        "{history}"
    );
    assert!(
        events
            .iter()
            .skip(succeeded)
            .filter(|e| e["type"] == "webhook")
            .count()
            == 3,
        "every delivery comes after the event it delivers: {history}"
    );
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let system = System::start().await;
    let receiver = Receiver::start(vec![(400, vec![])]).await;
    let id = system
        .submit_with_callback("noop", json!({}), &receiver.url("/hook"))
        .await;

    let job = system.wait_for_webhook(&id, "failed", WAIT).await;
    assert_eq!(job["webhook"]["attempts"], 1);
    assert_eq!(job["webhook"]["last_status"], 400);
    assert!(
        job["webhook"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("400")),
        "{job}"
    );
    // Retries come within a few hundred ms here; none comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.deliveries().len(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let system = System::start().await;
    let receiver = Receiver::start(vec![(429, vec![("retry-after", "2".into())])]).await;
    let id = system
        .submit_with_callback("noop", json!({}), &receiver.url("/hook"))
        .await;

    let job = system.wait_for_webhook(&id, "delivered", WAIT).await;
    assert_eq!(job["webhook"]["attempts"], 2);
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 2);
    // The backoff alone would retry within 200 ms; the receiver asked for 2 s.
    let waited = deliveries[1].at - deliveries[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}"
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let system = System::start().await;
    let receiver = Receiver::start(vec![(307, vec![("location", "/elsewhere".into())])]).await;
    let id = system
        .submit_with_callback("noop", json!({}), &receiver.url("/hook"))
        .await;

    let job = system.wait_for_webhook(&id, "failed", WAIT).await;
    assert_eq!(job["webhook"]["last_status"], 307);
    assert!(
        job["webhook"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("redirect")),
        "{job}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paths: Vec<String> = receiver.deliveries().into_iter().map(|d| d.path).collect();
    assert_eq!(paths, ["/hook"], "the redirect target is never called");
}

#[tokio::test]
async fn callback_events_choose_what_is_delivered() {
    let system = System::start().await;
    let receiver = Receiver::start(vec![]).await;
    let response = system
        .post(&json!({
            "kind": "noop",
            "callback_url": receiver.url("/hook"),
            "callback_events": ["started", "succeeded"],
        }))
        .await;
    assert_eq!(response.status(), 202);
    let id = response.json::<serde_json::Value>().await.expect("body")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let types = eventually(WAIT, || async {
        let mut types: Vec<String> = receiver
            .deliveries()
            .iter()
            .map(|d| d.json()["type"].as_str().unwrap_or_default().to_string())
            .collect();
        types.sort();
        (types.len() >= 2).then_some(types)
    })
    .await
    .expect("two deliveries");
    assert_eq!(types, ["job.started", "job.succeeded"]);
    system.wait_for_webhook(&id, "delivered", WAIT).await;
}

#[tokio::test]
async fn a_job_without_a_callback_looks_as_before() {
    let system = System::start().await;
    let response = system.post(&json!({"kind": "noop"})).await;
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.expect("body");
    for field in ["callback_url", "callback_events", "webhook"] {
        assert!(body.get(field).is_none(), "{field} in {body}");
    }
}
