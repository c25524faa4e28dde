//! W3C trace context in NATS headers, through the OpenTelemetry propagator API.
//!
//! The globally installed propagator decides the format; until telemetry installs one
//! it is a no-op, so these calls cost nothing when tracing is off.

use async_nats::HeaderMap;
use axum::http;

use crate::subjects::headers::{TRACEPARENT, TRACESTATE};
use opentelemetry::propagation::{Extractor, Injector};

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the given OpenTelemetry context into `headers`.
pub fn inject(cx: &opentelemetry::Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut HeaderInjector(headers));
    });
}

/// Reads a parent context from `headers` (an empty context when there is none).
pub fn extract(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(headers) => {
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
        }
        None => opentelemetry::Context::new(),
    }
}

/// Writes the current context into `headers`. With the OpenTelemetry layer installed,
/// entering a `tracing` span makes its context current, so this is the active span;
/// without it, the current context is empty and nothing is written.
pub fn inject_current(headers: &mut HeaderMap) {
    inject(&opentelemetry::Context::current(), headers);
}

/// The trace headers for messages sent on behalf of a job: the current span's context
/// when there is one, else those of `incoming` (the job's own message) passed on as they
/// are, so a service that does not export still keeps the job in its caller's trace.
pub fn outgoing(incoming: Option<&HeaderMap>) -> HeaderMap {
    let mut out = HeaderMap::new();
    inject_current(&mut out);
    if out.get(TRACEPARENT).is_none()
        && let Some(incoming) = incoming
    {
        for name in [TRACEPARENT, TRACESTATE] {
            if let Some(value) = incoming.get(name) {
                out.insert(name, value.clone());
            }
        }
    }
    out
}

struct HttpExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HttpInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Reads a caller's trace context from HTTP request headers (an empty context when
/// there is none or it is malformed).
pub fn extract_http(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpExtractor(headers)))
}

/// Writes the current context into HTTP request headers (webhooks carry it on).
pub fn inject_http_current(headers: &mut http::HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(
            &opentelemetry::Context::current(),
            &mut HttpInjector(headers),
        );
    });
}
