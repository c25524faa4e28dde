//! An operator scrapes the gateway's `/metrics` after a run and finds what happened:
//! jobs submitted by kind, requests by route and status, and every queue's depth.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{System, eventually};

use jetjobs::testing::metric_sample as sample;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_submissions_requests_and_queues() {
    let system = System::start().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(system.submit("noop", json!({})).await["id"].clone());
    }
    for _ in 0..2 {
        ids.push(system.submit("sleep", json!({"ms": 10})).await["id"].clone());
    }
    // A keyed submission sent twice is one job: counted once.
    for _ in 0..2 {
        let response = system
            .http
            .post(system.url("/v1/jobs"))
            .header("Idempotency-Key", "metrics-test")
            .json(&json!({"kind": "noop"}))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let unknown_kind = system.post(&json!({"kind": "transcode"})).await;
    assert_eq!(unknown_kind.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = system.get_job("0193a5b2-0000-7000-8000-000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let scan = system
        .http
        .get(system.url("/wp-admin/setup.php"))
        .send()
        .await
        .expect("GET");
    assert_eq!(scan.status(), StatusCode::NOT_FOUND);
    // Any token is a valid HTTP method: each must not become a series of its own.
    for method in ["PROPFIND", "BREW", "X-SCAN-1", "X-SCAN-2"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a token");
        let response = system
            .http
            .request(method, system.url("/v1/jobs"))
            .send()
            .await
            .expect("request");
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    for id in &ids {
        let id = id.as_str().expect("id");
        system.wait_terminal(id, Duration::from_secs(30)).await;
    }

    let processor_io = r#"stream="JOBS",consumer="processor-io""#;
    let projector = r#"stream="JOB_EVENTS",consumer="status-projector""#;
    // Acks and projections trail the last snapshot a little: wait for the queues to drain.
    let text = eventually(Duration::from_secs(20), || async {
        let response = system.http.get(system.url("/metrics")).send().await.ok()?;
        let text = response.text().await.ok()?;
        let drained = [processor_io, projector].iter().all(|labels| {
            sample(&text, "jetjobs_consumer_pending_messages", labels) == Some(0.0)
                && sample(&text, "jetjobs_consumer_ack_pending_messages", labels) == Some(0.0)
        });
        drained.then_some(text)
    })
    .await
    .expect("/metrics shows every queue drained");
    let value = |name: &str, labels: &str| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
    };

    assert_eq!(value("jetjobs_jobs_submitted_total", r#"kind="noop""#), 6.0);
    assert_eq!(
        value("jetjobs_jobs_submitted_total", r#"kind="sleep""#),
        2.0
    );
    assert!(sample(&text, "jetjobs_jobs_submitted_total", r#"kind="transcode""#).is_none());
    assert_eq!(
        value(
            "jetjobs_http_requests_total",
            r#"method="POST",route="/v1/jobs",status="202""#
        ),
        9.0
    );
    assert_eq!(
        value(
            "jetjobs_http_requests_total",
            r#"method="POST",route="/v1/jobs",status="422""#
        ),
        1.0
    );
    assert_eq!(
        value(
            "jetjobs_http_requests_total",
            r#"method="GET",route="/v1/jobs/{id}",status="404""#
        ),
        1.0
    );
    assert_eq!(
        value(
            "jetjobs_http_requests_total",
            r#"method="GET",route="unmatched",status="404""#
        ),
        1.0
    );
    let others: f64 = ["404", "405"]
        .iter()
        .filter_map(|status| {
            sample(
                &text,
                "jetjobs_http_requests_total",
                &format!(r#"method="other",route="/v1/jobs",status="{status}""#),
            )
            .or_else(|| {
                sample(
                    &text,
                    "jetjobs_http_requests_total",
                    &format!(r#"method="other",route="unmatched",status="{status}""#),
                )
            })
        })
        .sum();
    assert_eq!(others, 4.0, "extension methods counted as `other`:\n{text}");
    for method in ["PROPFIND", "BREW", "X-SCAN"] {
        assert!(
            !text.contains(&format!("method=\"{method}")),
            "{method} has a series"
        );
    }
    assert_eq!(
        value(
            "jetjobs_http_request_duration_seconds_count",
            r#"method="POST",route="/v1/jobs""#
        ),
        10.0
    );
    // Every durable consumer of both streams is listed, processors and projector alike.
    for labels in [
        processor_io,
        r#"stream="JOBS",consumer="processor-cpu""#,
        projector,
    ] {
        assert_eq!(value("jetjobs_consumer_pending_messages", labels), 0.0);
        assert_eq!(value("jetjobs_consumer_ack_pending_messages", labels), 0.0);
    }
    assert_eq!(
        value("jetjobs_consumer_info_up", r#"stream="JOBS",consumer="""#),
        1.0
    );
}
