//! The request span: the root of every job's trace.
//!
//! Each request gets one `request` span named `METHOD /route` (the matched template, so
//! span names stay few). A caller's `traceparent` makes it a child of the caller's
//! trace; the job message published while it is open carries its context, so the
//! processors' attempt spans, the status projection and the webhook deliveries are its
//! descendants.

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use jetjobs::JobId;
use tracing::Span;

/// Probes and scrapes, every few seconds from every orchestrator and Prometheus: as
/// traces they would bury the jobs' ones.
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

pub fn request_span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    if UNTRACED.contains(&route) {
        return Span::none();
    }
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", request.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %request.method(),
        http.route = route,
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        job_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    jetjobs::telemetry::join_trace(
        &span,
        jetjobs::trace_context::extract_http(request.headers()),
    );
    span
}

pub fn on_response(response: &Response, latency: Duration, span: &Span) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    tracing::debug!(
        status = status.as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "Answered."
    );
}

/// Names the job a request is about on its span, so every log line of the request and
/// the trace carry `job_id`.
pub fn note_job(id: JobId) {
    Span::current().record("job_id", tracing::field::display(id));
}
