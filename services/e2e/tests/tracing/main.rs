//! One job, one trace: the gateway, a processor and the status service run in-process
//! against a real nats-server, with spans going to an in-memory exporter and log lines
//! to a buffer. Its own test binary, because the subscriber it installs is global.

// The one system builder, shared with every suite.
use jetjobs_e2e::system as helpers;

mod export;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use helpers::{Options, System, eventually};
use jetjobs::telemetry::{CapturedLogs, LogFormat};
use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tracing_subscriber::prelude::*;

const WAIT: Duration = Duration::from_secs(30);

struct Telemetry {
    spans: InMemorySpanExporter,
    logs: CapturedLogs,
    _provider: SdkTracerProvider,
}

/// Installs, once per process, what `jetjobs::telemetry::init` installs in a service,
/// with an in-memory exporter instead of OTLP and JSON logs into a buffer.
fn telemetry() -> &'static Telemetry {
    static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();
    TELEMETRY.get_or_init(|| {
        jetjobs::telemetry::set_propagator();
        let spans = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let logs = CapturedLogs::default();
        tracing_subscriber::registry()
            .with(jetjobs::telemetry::layers(
                "jetjobs-test",
                Some(&provider),
                LogFormat::Json,
                logs.clone(),
            ))
            .with(tracing_subscriber::EnvFilter::new("info"))
            .try_init()
            .expect("the only subscriber in this test binary");
        Telemetry {
            spans,
            logs,
            _provider: provider,
        }
    })
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The finished spans of one trace.
fn trace_of(telemetry: &Telemetry, trace: TraceId) -> Vec<SpanData> {
    telemetry
        .spans
        .get_finished_spans()
        .expect("finished spans")
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

async fn submit(system: &System, body: Value, traceparent: Option<&str>) -> String {
    let mut request = system.http.post(system.url("/v1/jobs")).json(&body);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.expect("POST /v1/jobs");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let snapshot: Value = response.json().await.expect("snapshot");
    snapshot["id"].as_str().expect("id").to_string()
}

/// The gateway's span for the POST that created job `id`.
fn request_span(telemetry: &Telemetry, id: &str) -> SpanData {
    telemetry
        .spans
        .get_finished_spans()
        .expect("finished spans")
        .into_iter()
        .find(|s| s.name == "POST /v1/jobs" && attr(s, "job_id").as_deref() == Some(id))
        .expect("the gateway exported the request's span")
}

/// A webhook receiver that keeps the `traceparent` of every request.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let kept = Arc::clone(&kept);
        async move {
            let traceparent = headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            kept.lock().expect("receiver state").push(traceparent);
            StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_is_one_trace_across_gateway_processor_status_and_notifier() {
    let telemetry = telemetry();
    let system = System::start_with(Options {
        run_notifier: true,
        ..Options::default()
    })
    .await;
    let (callback_url, traceparents) = receiver().await;
    // Attempt 1 fails and is retried; attempt 2 succeeds, and a webhook says so.
    let id = submit(
        &system,
        json!({
            "kind": "flaky",
            "payload": {"fail": "retryable", "times": 1},
            "max_attempts": 3,
            "callback_url": callback_url,
            "callback_events": ["succeeded"],
        }),
        None,
    )
    .await;
    let done = system
        .wait_for(&id, WAIT, |s| s["state"] == "succeeded")
        .await;
    assert_eq!(done["attempt"], 2);

    let root = request_span(telemetry, &id);
    let trace = root.span_context.trace_id();
    // Spans end after the work they cover: wait for the projection of `succeeded` and
    // for the webhook delivery.
    let spans = eventually(WAIT, || async {
        let spans = trace_of(telemetry, trace);
        let projected = spans.iter().any(|s| {
            s.name == "project job events" && attr(s, "last").as_deref() == Some("succeeded")
        });
        let delivered = spans.iter().any(|s| s.name == "deliver webhook");
        (projected && delivered).then_some(spans)
    })
    .await
    .expect("the status service and the notifier worked within the job's trace");

    // The gateway's request span is the one root.
    let roots: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.parent_span_id == SpanId::INVALID)
        .collect();
    assert_eq!(roots.len(), 1, "one root: {:?}", names(&spans));
    assert_eq!(roots[0].span_context.span_id(), root.span_context.span_id());
    assert_eq!(
        attr(&root, "target").as_deref(),
        Some("jetjobs_gateway::telemetry")
    );
    assert_eq!(
        attr(&root, "http.response.status_code").as_deref(),
        Some("202")
    );

    // Each attempt is its own span, a child of the request, with its number and outcome.
    let mut attempts: Vec<&SpanData> = spans.iter().filter(|s| s.name == "process flaky").collect();
    attempts.sort_by_key(|s| attr(s, "attempt"));
    assert_eq!(attempts.len(), 2, "two attempts: {:?}", names(&spans));
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt.parent_span_id, root.span_context.span_id());
        assert_eq!(attr(attempt, "attempt"), Some((n + 1).to_string()));
        assert_eq!(
            attr(attempt, "target").as_deref(),
            Some("jetjobs::processor")
        );
    }
    assert_eq!(attr(attempts[0], "outcome").as_deref(), Some("retrying"));
    assert!(
        matches!(attempts[0].status, Status::Error { .. }),
        "a retried attempt is an error"
    );
    assert_eq!(attr(attempts[1], "outcome").as_deref(), Some("succeeded"));
    assert!(!matches!(attempts[1].status, Status::Error { .. }));

    // The webhook delivery is a child of the attempt whose event it announces, and the
    // receiver got the trace context.
    let deliveries: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "deliver webhook")
        .collect();
    assert_eq!(deliveries.len(), 1, "{:?}", names(&spans));
    let delivery = deliveries[0];
    assert_eq!(delivery.parent_span_id, attempts[1].span_context.span_id());
    assert_eq!(
        attr(delivery, "target").as_deref(),
        Some("jetjobs_notifier::deliver")
    );
    assert_eq!(attr(delivery, "outcome").as_deref(), Some("delivered"));
    assert_eq!(
        attr(delivery, "http.response.status_code").as_deref(),
        Some("204")
    );
    let received = traceparents.lock().expect("receiver state").clone();
    assert_eq!(
        received,
        [format!("00-{trace}-{}-01", delivery.span_context.span_id())],
        "the webhook request carries the delivery's context"
    );

    // Each projection is a child of the span that published its events: an attempt, or
    // the delivery (its webhook record).
    let attempt_ids: HashSet<SpanId> = attempts
        .iter()
        .chain([&delivery])
        .map(|s| s.span_context.span_id())
        .collect();
    let projections: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "project job events")
        .collect();
    assert!(!projections.is_empty());
    for projection in &projections {
        assert!(
            attempt_ids.contains(&projection.parent_span_id),
            "a projection hangs off an attempt: {:?}",
            names(&spans)
        );
        assert_eq!(
            attr(projection, "target").as_deref(),
            Some("jetjobs_status::projector")
        );
    }
    let succeeded = projections
        .iter()
        .find(|s| attr(s, "last").as_deref() == Some("succeeded"))
        .expect("projection of succeeded");
    assert_eq!(succeeded.parent_span_id, attempts[1].span_context.span_id());

    // Every span names the job.
    for span in &spans {
        assert_eq!(
            attr(span, "job_id").as_deref(),
            Some(id.as_str()),
            "{}",
            span.name
        );
    }

    // Every log line about the job carries its id and trace id at the top level.
    let lines: Vec<Value> = telemetry
        .logs
        .lines()
        .iter()
        .filter(|line| line.contains(&id))
        .map(|line| serde_json::from_str(line).expect("a JSON log line"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "Job attempt failed; will retry."),
        "the retry was logged: {lines:?}"
    );
    for line in &lines {
        assert_eq!(line["job_id"], id.as_str(), "{line}");
        assert_eq!(line["trace_id"], trace.to_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_traceparent_makes_the_job_part_of_the_callers_trace() {
    let telemetry = telemetry();
    let system = System::start().await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let id = submit(
        &system,
        json!({"kind": "noop"}),
        Some(&format!("00-{caller_trace}-{caller_span}-01")),
    )
    .await;
    system.wait_terminal(&id, WAIT).await;

    let root = request_span(telemetry, &id);
    assert_eq!(root.span_context.trace_id().to_string(), caller_trace);
    assert_eq!(root.parent_span_id.to_string(), caller_span);
    assert!(root.parent_span_is_remote);
    let trace = root.span_context.trace_id();
    let attempt = eventually(WAIT, || async {
        trace_of(telemetry, trace)
            .into_iter()
            .find(|s| s.name == "process noop")
    })
    .await
    .expect("the attempt joined the caller's trace");
    assert_eq!(attempt.parent_span_id, root.span_context.span_id());

    // The job's history names its trace, so a dashboard can link to it.
    let history: Value = system
        .http
        .get(system.url(&format!("/v1/jobs/{id}/history")))
        .send()
        .await
        .expect("GET history")
        .json()
        .await
        .expect("history");
    assert_eq!(history["trace_id"], caller_trace, "{history}");
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} ({:?} <- {:?})",
                s.name,
                s.span_context.span_id(),
                s.parent_span_id
            )
        })
        .collect()
}
